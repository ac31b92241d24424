"""ALBEF's text-assignment (TA) step, which prepares a `SiscForVisualReasoning` model for two images before NLVR2
fine-tuning: given a caption and two images, say whether the caption belongs to the first image, the second, or
neither (a 3-way head on the fused [CLS], thrown away afterwards).

The fresh model has two identical cross-attention branches merged by an average, so it cannot yet tell the left
image from the right one; TA teaches the branches and the merge to keep them apart, and the fusion layers to
ground a sentence in one image. ALBEF runs it for one epoch over its pretraining images; here it runs on an
image-caption dataset (by default the embedded shapes captions of the pretraining job). `finetune_nlvr.py` runs it
first (20,000 examples by default; `--text_assignment_examples 0` switches it off).

Negatives: with shapes data (`scene` / `caption_facts` columns) an image is used as "not this caption's" only if the
caption is false of it (exact relevance); other data falls back to any other image (as ALBEF: a false negative now
and then).
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass, field, replace

import datasets
import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from sisc_train.data.pairs import load_pairs
from sisc_train.evaluation.nlvr import NlvrCollator
from sisc_train.loop.arguments import TrainingArguments
from sisc_train.loop.trainer import Task, train
from sisc_train.synthetic.shapes import caption_matches, load_shapes_dataset

logger = logging.getLogger(__name__)

TEXT_ASSIGNMENT_LABELS = ("first image", "second image", "neither")


@dataclass
class TextAssignmentArguments:
    text_assignment_examples: int = field(
        default=20000, metadata={"help": "Examples of the text-assignment step before NLVR fine-tuning (0 = no TA step)."}
    )
    text_assignment_data: str | None = field(
        default=None,
        metadata={"help": "Image-caption data of the TA step: 'shapes' (the embedded captions; the default when the NLVR "
                          "data is the embedded one) or anything sisc_train/data/pairs.py reads (a saved dataset folder, "
                          "imagefolder, jsonl/csv/parquet, Karpathy JSON), e.g. the pretraining pairs. Other NLVR data "
                          "without it: the step is skipped, with a warning."},
    )
    text_assignment_epochs: int = 1
    text_assignment_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the TA step (default: the fine-tuning learning rate)."}
    )


def caption_pairs(source: str, cache_dir: str = "data_cache/shapes"):
    """The train split of an image-caption dataset, images left undecoded."""
    if source == "shapes":
        pairs = load_shapes_dataset(cache_dir=cache_dir)["train"]
        return pairs.cast_column("image", datasets.Image(decode=False))
    return load_pairs(source, "train")


def text_assignment_rows(pairs, num_examples: int, seed: int = 0):
    """A `datasets.Dataset` in the NLVR2 layout (`sentence`, `left_image`, `right_image`, `label`) with labels 0 (the
    caption belongs to the left image), 1 (to the right image) and 2 (to neither), in equal shares. `pairs`: rows with
    `image`, `caption`, `image_id` (and, for exact negatives, `scene` / `caption_facts`)."""
    if len(pairs) < 3:
        raise ValueError(f"the text-assignment step needs at least 3 image-caption rows, got {len(pairs)}")
    # plain lists: indexing a lazy datasets Column queries the Arrow table on every access
    image_ids = list(pairs["image_id"])
    if len(set(image_ids)) < 3:
        raise ValueError("the text-assignment step needs captions of at least 3 different images")
    exact = {"scene", "caption_facts"} <= set(pairs.column_names)
    scenes = list(pairs["scene"]) if exact else None
    facts = list(pairs["caption_facts"]) if exact else None
    captions, images = list(pairs["caption"]), list(pairs["image"])
    rng = random.Random(seed)

    def other_image(index: int, exclude: set) -> int:
        """A row whose image is not `index`'s, not in `exclude`, and (shapes data) of which the caption is false."""
        for _ in range(1000):
            candidate = rng.randrange(len(pairs))
            if image_ids[candidate] == image_ids[index] or image_ids[candidate] in exclude:
                continue
            if exact and caption_matches(facts[index], scenes[candidate]):
                continue
            return candidate
        raise ValueError(f"found no image that caption {index} is false of in 1000 draws")

    columns = {"sentence": [], "left_image": [], "right_image": [], "label": []}
    order = list(range(len(pairs)))
    rng.shuffle(order)
    for n in range(num_examples):
        index = order[n % len(order)]
        label = n % 3
        negative = other_image(index, set())
        if label == 0:
            left, right = index, negative
        elif label == 1:
            left, right = negative, index
        else:
            left, right = negative, other_image(index, {image_ids[negative]})
        columns["sentence"].append(captions[index])
        columns["left_image"].append(images[left])
        columns["right_image"].append(images[right])
        columns["label"].append(label)
    image = datasets.Image()  # decoded on access, like the NLVR datasets
    features = datasets.Features(
        {"sentence": datasets.Value("string"), "left_image": image, "right_image": image, "label": datasets.Value("int64")}
    )
    return datasets.Dataset.from_dict(columns, features=features)


class TextAssignmentCollator(NlvrCollator):
    @staticmethod
    def read_label(value):
        return int(value) if value in (0, 1, 2) else None


@dataclass
class TextAssignmentOutput(ModelOutput):
    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None


class TextAssignmentModel(nn.Module):
    """A `SiscForVisualReasoning` with a 3-way TA head on its fused [CLS] (the head is not part of the checkpoint)."""

    def __init__(self, reasoning_model):
        super().__init__()
        self.model = reasoning_model
        self.head = nn.Linear(reasoning_model.config.fusion_encoder_config.hidden_size, len(TEXT_ASSIGNMENT_LABELS))

    def forward(self, labels=None, **inputs) -> TextAssignmentOutput:
        logits = self.head(self.model.fuse(**inputs)[:, 0])
        loss = F.cross_entropy(logits.float(), labels.long()) if labels is not None else None
        return TextAssignmentOutput(loss=loss, logits=logits)


@torch.no_grad()
def text_assignment_accuracy(wrapper: TextAssignmentModel, processor, rows, batch_size: int = 128) -> float:
    collate = TextAssignmentCollator(processor)
    device = next(wrapper.parameters()).device
    correct = 0
    for start in range(0, len(rows), batch_size):
        batch = {k: v.to(device) for k, v in collate([rows[i] for i in range(start, min(start + batch_size, len(rows)))]).items()}
        labels = batch.pop("labels")
        correct += int((wrapper(**batch).logits.argmax(-1) == labels).sum())
    return 100.0 * correct / max(len(rows), 1)


def text_assignment_source(ta_args: TextAssignmentArguments, nlvr_dataset: str) -> str | None:
    """The caption data the TA step runs on, or None when it is skipped (0 examples, or no caption data for NLVR data
    other than the embedded one: warned, since the shapes captions would not match real photographs)."""
    if ta_args.text_assignment_examples <= 0:
        return None
    if ta_args.text_assignment_data:
        return ta_args.text_assignment_data
    if nlvr_dataset == "shapes":
        return "shapes"
    logger.warning(
        "no --text_assignment_data for NLVR data %r: skipping ALBEF's text-assignment step (pass image-caption data, "
        "e.g. the pretraining pairs, to run it; --text_assignment_examples 0 silences this)", nlvr_dataset,
    )
    return None


class TextAssignmentTask(Task):
    """ALBEF's text-assignment step before NLVR fine-tuning: a caption and two images -> the first, the second or
    neither. Trains the NLVR model in place (through `TextAssignmentModel`); its checkpoints and results go to
    `<NLVR output_dir>/text_assignment`, the model itself is saved by the NLVR run that follows."""

    name = "text-assignment"
    publishes = False

    def __init__(self, model, processor, args: TrainingArguments, source: str, num_examples: int, cache_dir: str):
        super().__init__(args)
        self.model, self.processor, self.source = model, processor, source
        self.num_examples, self.cache_dir = num_examples, cache_dir
        self.held_out = None

    def settings(self) -> dict:
        return {"text_assignment_data": self.source, "text_assignment_examples": self.num_examples}

    def load_data(self):
        pairs = caption_pairs(self.source, self.cache_dir)
        # every 20th image is held out: the accuracy after the step is measured on images it did not train on
        held_out_image = [image_id % 20 == 0 for image_id in list(pairs["image_id"])]
        train_pairs = pairs.select([i for i, held in enumerate(held_out_image) if not held])
        held_out_pairs = pairs.select([i for i, held in enumerate(held_out_image) if held])
        self.train_rows = text_assignment_rows(train_pairs, self.num_examples, seed=self.args.seed)
        if len(set(held_out_pairs["image_id"])) >= 3:
            self.held_out = text_assignment_rows(held_out_pairs, min(300, 3 * len(held_out_pairs)), seed=self.args.seed)
        else:
            self.accelerator.print("[text-assignment] fewer than 60 images: no held-out accuracy")
        return self.train_rows, TextAssignmentCollator(self.processor)

    def build_model(self, total_steps: int) -> TextAssignmentModel:
        return TextAssignmentModel(self.model)

    def has_validation(self) -> bool:
        return self.held_out is not None

    def validate(self, wrapper) -> dict:
        return {"accuracy": text_assignment_accuracy(wrapper, self.processor, self.held_out, self.args.eval_batch_size)}


def run_text_assignment(model, processor, args: TrainingArguments, ta_args: TextAssignmentArguments, source: str,
                        cache_dir: str) -> dict:
    """Train `model` (in place) on the TA task over the captions of `source`; returns the step's summary (steps,
    seconds, held-out TA accuracy)."""
    ta_training = replace(
        args,
        output_dir=os.path.join(args.output_dir, "text_assignment"),
        num_epochs=ta_args.text_assignment_epochs,
        learning_rate=ta_args.text_assignment_learning_rate or args.learning_rate,
        max_steps=None,
        metric_for_best_model="accuracy",
        push_to_hub=None,
    )
    task = TextAssignmentTask(model, processor, ta_training, source, ta_args.text_assignment_examples, cache_dir)
    result = train(task, ta_training)
    result.pop("model")
    return {**result, "examples": len(task.train_rows), "data": source}
