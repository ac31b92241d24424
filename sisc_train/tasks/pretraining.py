"""Pretrain SISC with Accelerate: regulated ITC (SRCL) + ITM + MLM, optional frozen teacher with an alpha schedule.

    accelerate launch train/pretrain.py [--config FILE.yaml|json] [--key value ...]

With no arguments it builds (or loads from cache) the embedded shapes dataset, trains the small default model on the
CPU for a few minutes, evaluates zero-shot retrieval on the held-out split and saves a checkpoint (safetensors,
config, processor, code, model card) to `--output_dir`. The repository's main job (scripts/run_main.sh) adds
`--image_tower_steps 1000 --num_epochs 7 --text_dropout 0`: the image tower and its word head alone first, then every
loss from there.

Data (`--dataset`): the embedded shapes data, or the formats of `sisc_train/data/pairs.py`, detected from the file
or folder (`--data_format` overrides): ALBEF's annotation files, Karpathy JSON, COCO captions, img2dataset's
webdataset shards (`--streaming`), a saved dataset, an imagefolder, or a Hub dataset (`--dataset_config`):

    accelerate launch train/pretrain.py --dataset coco/annotations/captions_train2017.json \
        --eval_dataset coco/annotations/captions_val2017.json     # images in coco/train2017/, coco/val2017/
    accelerate launch train/pretrain.py --dataset 'cc3m/{00000..00331}.tar' --streaming --eval_dataset coco_test.json

Start from pretrained encoders, or build the paper-sized model (sisc_train/tasks/encoders.py):

    accelerate launch train/pretrain.py --model_config base --vision_model_name_or_path google/vit-base-patch16-224-in21k \
        --text_model_name_or_path bert-base-uncased --output_dir outputs/sisc-base

Train a teacher with plain InfoNCE on the clean split, then the student with it:

    accelerate launch train/pretrain.py --loss infonce --train_split annotated --output_dir outputs/teacher
    accelerate launch train/pretrain.py --teacher outputs/teacher --output_dir outputs/student

Nothing is lost: the model is saved before the final evaluation (whose unreadable items are left out and counted);
an output folder holding another run is refused unless --resume_from_checkpoint or --overwrite_output_dir is given;
a checkpoint (`checkpoints/step_N`, every --checkpointing_steps, the newest --save_total_limit kept) is written under
a temporary name and renamed when complete, and records the training settings, which a resume must share;
Ctrl-C / SIGTERM saves a checkpoint after the current step and exits; a non-finite loss or gradient stops the run
before the optimizer applies it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

import datasets
import matplotlib
import torch
from accelerate import PartialState
from transformers import AutoProcessor

from configuration_sisc import SiscConfig
from modeling_sisc import SiscForPreTraining, SiscModel
from sisc_train.data.formats import FORMAT_HELP
from sisc_train.data.grouping import GroupedOrder, group_keys
from sisc_train.data.pairs import (
    CAPTION_COLUMNS,
    IMAGE_COLUMNS,
    PairCollator,
    check_caption_vocabulary,
    has_own_splits,
    load_pairs,
    missing_split,
)
from sisc_train.data.teacher_cache import EMBEDDING_COLUMNS, attach_teacher_cache, load_teacher_cache
from sisc_train.evaluation.retrieval import (
    evaluate_retrieval,
    format_table,
    load_retrieval_set,
    shapes_retrieval_set,
    skip_report,
)
from sisc_train.evaluation.retrieval_metrics import RERANK_SCORES, rerank_mode, retrieval_metrics
from sisc_train.loop.arguments import TrainingArguments, parse_args
from sisc_train.loop.trainer import Task, train
from sisc_train.publishing.model_card import render_model_card
from sisc_train.synthetic.shapes import ShapesConfig, batch_relevance, load_shapes_dataset, with_caption_negatives
from sisc_train.tasks.encoders import (
    ENCODER_SETTINGS,
    EncoderArguments,
    base_model_names,
    build_new_model,
    build_processor,
    check_start,
)

matplotlib.use("Agg")  # weight plots are written to files, never shown
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Start from this SISC checkpoint; default: a new model (--model_config, encoder flags)."},
    )
    loss: str = field(
        default="srcl",
        metadata={"help": "Contrastive loss: 'srcl' (regulated), 'infonce', or a peer objective: 'soft_infonce', 'debiased', "
                          "'hard_negatives', 'siglip', 'multi_positive' (see SiscConfig and benchmarks/README.md)."},
    )
    weight_norm: str = field(default="mean", metadata={"help": "Weight normalisation: 'mean' or 'softmax'."})
    delta: float = field(
        default=8.0, metadata={"help": "Scaling factor delta of w = Norm(delta / s); a sharpness with --weight_norm softmax."}
    )
    removal_threshold: float | None = field(
        default=None, metadata={"help": "Paper sec. 4.3 heuristic: drop negatives whose weight is below this."}
    )
    alpha_start: float = field(default=1.0, metadata={"help": "Teacher share of the mixed similarity at step 0."})
    alpha_end: float = field(default=0.0, metadata={"help": "Teacher share at the end of the alpha schedule."})
    alpha_steps: int | None = field(default=None, metadata={"help": "Length of the alpha schedule (default: all steps)."})
    alpha_schedule: str = field(default="linear", metadata={"help": "'linear', 'cosine' or 'constant'."})
    label_smoothing: float | None = field(
        default=None, metadata={"help": "Target mass spread over all candidates (softmax objectives; default: the config's)."}
    )
    soft_infonce_alpha: float | None = field(
        default=None, metadata={"help": "Soft-InfoNCE's alpha / beta: how strongly likely matches lose weight (default: the config's)."}
    )
    soft_infonce_temperature: float | None = field(
        default=None, metadata={"help": "Temperature of Soft-InfoNCE's similarity softmax (default: the config's)."}
    )
    debiased_prior: float | None = field(
        default=None, metadata={"help": "Class prior tau+ of 'debiased' / 'hard_negatives' (default: the config's)."}
    )
    hard_negative_beta: float | None = field(
        default=None, metadata={"help": "Concentration beta of 'hard_negatives' (default: the config's)."}
    )
    teacher: str | None = field(default=None, metadata={"help": "Frozen teacher checkpoint (a SISC model)."})
    teacher_cache: str | None = field(
        default=None, metadata={"help": "Precomputed teacher embeddings (train/cache_teacher.py) instead of running it."}
    )
    mlm_loss_weight: float | None = field(
        default=None, metadata={"help": "Weight of the MLM loss (0 switches it off; default: the config's)."}
    )
    negative_caption_loss_weight: float | None = field(
        default=None,
        metadata={"help": "Weight of the negative-caption loss: each image against its caption and a copy with one word "
                          "swapped (the data's 'negative_caption' column; the shapes data derives one). 0 switches it off; "
                          "default: the config's."},
    )
    itm_loss_weight: float | None = field(
        default=None, metadata={"help": "Weight of the ITM loss (0 switches it off; default: the config's)."}
    )
    word_prediction_loss_weight: float | None = field(
        default=None,
        metadata={"help": "Weight of the word-prediction loss: the caption's words predicted from the image by a linear "
                          "head (CLIP's bag-of-words objective as an auxiliary; 0 switches it off; default: the config's)."},
    )
    itm_random_negatives: float | None = field(
        default=None,
        metadata={"help": "Share of ITM negatives drawn uniformly instead of by similarity (0 = ALBEF's hard negatives "
                          "only; default: the config's)."},
    )
    itm_random_negatives_end: float | None = field(
        default=None,
        metadata={"help": "ITM curriculum: the share of uniformly drawn negatives moves linearly from "
                          "--itm_random_negatives to this over the run (e.g. 1 -> 0: easy negatives first)."},
    )
    itm_skip_negatives_above_pair: bool | None = field(
        default=None,
        metadata={"help": "Leave out of the ITM negatives those the contrastive similarity scores at or above the pair "
                          "(often false negatives once ITC is good; default: the config's)."},
    )
    momentum_distillation: bool = field(
        default=False, metadata={"help": "ALBEF's momentum encoder, queue and soft targets (new models only)."}
    )
    freeze_text_tower: bool = field(
        default=False,
        metadata={"help": "Keep the text encoder's weights fixed (LiT-style locked tuning of a pretrained text tower: "
                          "the image tower, fusion encoder and heads learn; about half the cost of a step)."},
    )
    oracle_false_negatives: bool = field(
        default=False,
        metadata={"help": "Benchmark upper bound: never use pairs the dataset's ground truth marks as matching as negatives (shapes, 1 process)."},
    )


@dataclass
class DataArguments:
    dataset: str = field(
        default="shapes",
        metadata={"help": "'shapes' (embedded dataset), a saved dataset folder, an imagefolder, a json/jsonl/csv/parquet file "
                          "(ALBEF's pretraining / retrieval files among them), Karpathy JSON, a COCO captions file, webdataset "
                          "shards (a .tar, a folder of them, or a glob / {00000..00099} pattern) or a Hub dataset id."},
    )
    dataset_config: str | None = field(
        default=None, metadata={"help": "Configuration of a Hub dataset (load_dataset's name=); its splits are the data's own."}
    )
    data_format: str | None = field(default=None, metadata={"help": FORMAT_HELP})
    train_split: str = field(default="train", metadata={"help": "Split to train on ('annotated' = the clean split)."})
    eval_split: str | None = field(
        default="test",
        metadata={"help": "Held-out split evaluated at the end ('' = none); a data file has no such split: see --eval_dataset."},
    )
    validation_split: str | None = field(
        default=None, metadata={"help": "Split evaluated after every epoch; the best epoch's model is kept (--metric_for_best_model)."}
    )
    eval_dataset: str | None = field(
        default=None,
        metadata={"help": "A separate file/folder for evaluation when --dataset has no such split (a data file has none): "
                          "read whole, or its --eval_split when it has splits."},
    )
    validation_dataset: str | None = field(
        default=None,
        metadata={"help": "A separate file/folder for validation when --dataset has no such split (as --eval_dataset; "
                          "--validation_split defaults to 'validation' then)."},
    )
    image_root: str | None = field(default=None, metadata={"help": "Folder that relative image paths are under."})
    shapes_preset: str = field(default="default", metadata={"help": "Shapes dataset preset: 'default', 'low' or 'high'."})
    shapes_num_train: int | None = field(default=None, metadata={"help": "Override the number of shapes training images."})
    data_cache_dir: str = field(default="data_cache/shapes", metadata={"help": "Where the shapes dataset is cached."})
    image_column: str | None = field(
        default=None, metadata={"help": f"Image column (default: the first of {', '.join(IMAGE_COLUMNS)} present)."}
    )
    caption_column: str | None = field(
        default=None, metadata={"help": f"Caption column (default: the first of {', '.join(CAPTION_COLUMNS)} present)."}
    )
    streaming: bool = field(default=False, metadata={"help": "Stream the data (datasets.IterableDataset)."})
    max_bad_fraction: float = field(default=0.05, metadata={"help": "Fail when more than this fraction is unreadable."})
    batch_groups: str | None = field(
        default=None,
        metadata={"help": "Harder in-batch negatives: rows sharing this column's value (or a derived key: 'colors', the "
                          "set of colours of a shapes scene) share batches, in groups of --batch_group_size "
                          "(sisc_train/data/grouping.py). Default: random batches."},
    )
    batch_group_size: int = field(default=4, metadata={"help": "Rows per group with --batch_groups."})


@dataclass
class PretrainingArguments(TrainingArguments):
    output_dir: str = "outputs/sisc-small"
    # 6 epochs (936 steps, ~13 CPU minutes): at 2 the from-scratch towers spend a third of the run on the ln(N)
    # plateau, and retrieval R mean was 5.3 instead of ~39
    num_epochs: int = 6
    learning_rate: float = field(default=1e-3, metadata={"help": "Learning rate of text/fusion/heads."})
    weight_decay: float = 0.01
    warmup_steps: int = 50
    num_workers: int = field(default=2, metadata={"help": "DataLoader worker processes decoding images."})
    logging_steps: int = 10
    metric_for_best_model: str = field(default="r_mean", metadata={"help": "Validation metric (higher is better) that picks the kept model."})
    diagnostics_steps: int = field(default=200, metadata={"help": "Save weight heat map + histogram every N steps."})
    rerank_k: int = field(default=16, metadata={"help": "Final evaluation also with ITM re-ranking of the top k ITC candidates (0: ITC only)."})
    rerank_score: str = field(
        default="itm+itc",
        metadata={"help": "What orders the re-ranked top k in the results and the model card: 'itm+itc' (the ITM "
                          "head's log-odds plus the ITC logit, as BLIP's evaluation adds the ITC similarity: with a "
                          "strong ITC the ITM score alone throws its order away) or 'itm' (ALBEF: the ITM log-odds "
                          "alone). The final evaluation prints both."},
    )
    image_tower_only: bool = field(
        default=False,
        metadata={"help": "Train only the image tower and its word head, on the word-prediction loss (each caption's "
                          "words from its image; the text tower and the fusion encoder are not run): a first stage, "
                          "then pretrain from it with --model_name_or_path. Needs word_prediction_loss_weight > 0 (the "
                          "small model's default); no retrieval evaluation (the text side is untrained)."},
    )
    image_tower_steps: int = field(
        default=0,
        metadata={"help": "Two stages in one run (the main job: 1000): first the image tower and its word head alone "
                          "for this many steps (as --image_tower_only, at --image_tower_learning_rate, saved to "
                          "<output_dir>-tower), then this run from that checkpoint. 0: one stage."},
    )
    image_tower_learning_rate: float = field(
        default=3e-3, metadata={"help": "The first stage's learning rate (--image_tower_steps)."}
    )

# what a resumed run must share with the run that wrote the checkpoint besides the training settings: the model, the
# objective and the data order
MODEL_SETTINGS = (
    "model_name_or_path", "loss", "weight_norm", "delta", "removal_threshold", "alpha_start", "alpha_end",
    "alpha_steps", "alpha_schedule", "teacher", "teacher_cache", "mlm_loss_weight", "itm_loss_weight",
    "momentum_distillation", "oracle_false_negatives",
)
# the peer objectives' knobs: recorded for a resume only when given (runs from before they existed still resume)
PEER_OBJECTIVE_SETTINGS = ("label_smoothing", "soft_infonce_alpha", "soft_infonce_temperature", "debiased_prior",
                           "hard_negative_beta")
DATA_SETTINGS = ("dataset", "dataset_config", "data_format", "train_split", "shapes_preset", "shapes_num_train", "image_column",
                 "caption_column", "streaming")


def build_model(model_args: ModelArguments, processor, total_steps: int,
                encoder_args: EncoderArguments | None = None) -> SiscForPreTraining:
    regulation = dict(
        contrastive_loss=model_args.loss,
        weight_norm=model_args.weight_norm,
        delta=model_args.delta,
        removal_threshold=model_args.removal_threshold,
        alpha_start=model_args.alpha_start,
        alpha_end=model_args.alpha_end,
        alpha_steps=model_args.alpha_steps if model_args.alpha_steps is not None else total_steps,
        alpha_schedule=model_args.alpha_schedule,
    )
    for name in ("mlm_loss_weight", "itm_loss_weight", "negative_caption_loss_weight",
                 "word_prediction_loss_weight", "itm_random_negatives", "itm_random_negatives_end",
                 "itm_skip_negatives_above_pair", *PEER_OBJECTIVE_SETTINGS):
        if getattr(model_args, name) is not None:
            regulation[name] = getattr(model_args, name)
    checkpoint = SiscConfig.from_pretrained(model_args.model_name_or_path) if model_args.model_name_or_path else None
    if model_args.itm_random_negatives_end is not None:
        regulation["itm_curriculum_steps"] = total_steps
    elif checkpoint is not None and checkpoint.itm_random_negatives_end is not None:
        # a checkpoint pretrained with an ITM curriculum goes on where it ended, not with a second curriculum
        regulation["itm_random_negatives_end"] = None
        regulation.setdefault("itm_random_negatives", checkpoint.itm_random_negatives_end)
    if model_args.momentum_distillation:
        regulation["use_momentum_distillation"] = True
    if checkpoint is not None:
        model = SiscForPreTraining.from_pretrained(model_args.model_name_or_path, **regulation)
        if model.momentum_encoder is not None and not checkpoint.use_momentum_distillation:
            model.momentum_encoder.update(model.sisc, momentum=0.0)  # the checkpoint has none: start as a copy
        return model
    return build_new_model(SiscForPreTraining, encoder_args or EncoderArguments(), processor.tokenizer, **regulation)


def shapes_config_from_args(data_args: DataArguments) -> ShapesConfig:
    overrides = {} if data_args.shapes_num_train is None else {"num_train": data_args.shapes_num_train}
    return ShapesConfig.preset(data_args.shapes_preset, **overrides)


def load_data(data_args: DataArguments):
    """(train rows, {split name: RetrievalSet} of the validation / eval splits, dataset description).

    Validation / eval data come from `--validation_dataset` / `--eval_dataset` when given, else from the splits of
    `--dataset`. A split the data does not have fails here, before training: a data file has only "train", and
    reading it as "test" would evaluate on the training rows."""
    # a separate file needs a split name to log and report its results under
    if data_args.validation_dataset and not data_args.validation_split:
        data_args.validation_split = "validation"
    if data_args.eval_dataset and not data_args.eval_split:
        data_args.eval_split = "test"
    wanted = {"validation": data_args.validation_split, "eval": data_args.eval_split}
    separate = {"validation": data_args.validation_dataset, "eval": data_args.eval_dataset}
    if wanted["validation"] and wanted["validation"] == wanted["eval"] and separate["validation"] != separate["eval"]:
        raise ValueError(f"--validation_split and --eval_split are both {wanted['eval']!r} but come from different data: "
                         "give them different names")
    from_dataset = list(dict.fromkeys(name for kind, name in wanted.items() if name and not separate[kind]))
    columns = dict(image_root=data_args.image_root, image_column=data_args.image_column, caption_column=data_args.caption_column)
    form = dict(data_format=data_args.data_format, dataset_config=data_args.dataset_config)
    if data_args.dataset == "shapes":
        splits = load_shapes_dataset(shapes_config_from_args(data_args), cache_dir=data_args.data_cache_dir)
        description = f"embedded shapes dataset, preset '{data_args.shapes_preset}'"
        for name in [data_args.train_split, *from_dataset]:
            if name not in splits:
                raise ValueError(f"the shapes dataset has no split {name!r}; it has {sorted(splits)}")
        train_rows = load_pairs_from_split(splits[data_args.train_split], data_args.streaming)
        evaluation = {name: shapes_retrieval_set(splits[name], f"{description} ({name})") for name in from_dataset}
    else:
        for kind, name in wanted.items():
            problem = name and not separate[kind] and missing_split(data_args.dataset, name, **form)
            if problem:
                instead = "skip the final evaluation" if kind == "eval" else "train without validation"
                raise ValueError(f"--{kind}_split {name!r}: {problem}. Pass a separate file/folder with --{kind}_dataset, "
                                 f"or --{kind}_split '' to {instead}")
        train_rows = load_pairs(
            data_args.dataset,
            data_args.train_split,
            image_column=data_args.image_column,
            caption_column=data_args.caption_column,
            streaming=data_args.streaming,
            image_root=data_args.image_root,
            **form,
        )
        description = f"{data_args.dataset} ({data_args.train_split})"
        evaluation = {name: load_retrieval_set(data_args.dataset, name, **columns, **form) for name in from_dataset}
    for kind, source in separate.items():
        if source:  # read whole, or its own split of that name when it has splits (its format detected on its own)
            split = wanted[kind] if has_own_splits(source) else None
            evaluation[wanted[kind]] = load_retrieval_set(source, split, **columns)
    return train_rows, evaluation, description


def load_pairs_from_split(split, streaming: bool):
    ds = split.cast_column("image", datasets.Image(decode=False))
    return ds.to_iterable_dataset() if streaming else ds


def regulation_diagnostics(
    weights: torch.Tensor | None, relevance: torch.Tensor | None = None, image_ids: torch.Tensor | None = None
) -> dict[str, float]:
    """Mean / spread of the negatives' weights, fractions under 0.2 / 0.5 / 0.7, and true false negatives.

    Negatives are the off-diagonal pairs of different images (pairs of one image are not negatives at all)."""
    if weights is None:
        return {}
    off_diagonal = ~torch.eye(weights.shape[0], dtype=torch.bool, device=weights.device)
    if image_ids is not None:
        ids = image_ids.to(weights.device)
        off_diagonal &= ids.view(-1, 1) != ids.view(1, -1)
    negatives = weights[off_diagonal]
    stats = {
        "weights/mean": negatives.mean().item(),
        "weights/std": negatives.std().item() if negatives.numel() > 1 else 0.0,
        "weights/max": negatives.max().item() if negatives.numel() else 0.0,
    }
    for threshold in (0.2, 0.5, 0.7):
        stats[f"weights/frac_below_{threshold}"] = (negatives < threshold).float().mean().item()
    if relevance is not None:
        false_negatives = relevance.to(weights.device).bool() & off_diagonal
        stats["false_negatives/fraction_of_pairs"] = false_negatives.float().sum().item() / max(off_diagonal.sum().item(), 1)
        if false_negatives.any():
            stats["false_negatives/frac_weight_below_0.5"] = (weights[false_negatives] < 0.5).float().mean().item()
            stats["false_negatives/mean_weight"] = weights[false_negatives].mean().item()
    return stats


def local_block(weights: torch.Tensor | None, batch_size: int) -> torch.Tensor | None:
    """This process's own pairs in the global weight matrix: the main process's rows and columns come first."""
    return None if weights is None else weights[:batch_size, :batch_size]


def save_weight_plots(weights: torch.Tensor, path_prefix: str, step: int) -> None:
    """Heat map of one batch's weight matrix and a histogram of its negatives' weights (paper figs. 3b and 7)."""
    w = weights.detach().float().cpu()
    fig, (ax_map, ax_hist) = plt.subplots(1, 2, figsize=(10, 4))
    image = ax_map.imshow(w.numpy(), cmap="viridis")
    ax_map.set_title(f"regulation weights, step {step}")
    ax_map.set_xlabel("candidate image")
    ax_map.set_ylabel("anchor text")
    fig.colorbar(image, ax=ax_map)
    off_diagonal = ~torch.eye(w.shape[0], dtype=torch.bool)
    ax_hist.hist(w[off_diagonal].numpy(), bins=50)
    ax_hist.set_title("negative weights")
    ax_hist.set_xlabel("weight")
    fig.tight_layout()
    fig.savefig(f"{path_prefix}_step{step:06d}.png", dpi=80)
    plt.close(fig)


def check_contrastive_batch(config, per_device_batch_size: int, num_processes: int) -> None:
    """A contrastive batch of one pair has no negatives: the ITC loss would be identically 0 (the queue of ALBEF's
    momentum distillation does bring negatives)."""
    if config.itc_loss_weight > 0 and not config.use_momentum_distillation and per_device_batch_size * num_processes < 2:
        raise ValueError(
            f"--per_device_batch_size {per_device_batch_size} x {num_processes} process(es) gives a contrastive batch of "
            f"one pair: it has no negatives, so the ITC loss is identically 0 and nothing is learned from it; use a "
            f"batch of at least 2 pairs"
        )


def check_negative_captions(config, rows) -> None:
    """The negative-caption loss needs a caption false of each image: fail before training when the data has none."""
    columns = getattr(rows, "column_names", None)  # unknown for some streams: the model then names the problem
    if config.negative_caption_loss_weight > 0 and columns is not None and "negative_caption" not in columns:
        raise ValueError(
            f"negative_caption_loss_weight is {config.negative_caption_loss_weight} but the training data has no "
            f"'negative_caption' column (a caption false of each row's image; columns: {sorted(columns)}): add one, "
            f"or pass --negative_caption_loss_weight 0"
        )


def check_metric_name(name: str, data) -> None:
    """Fail before training, not after it, when --metric_for_best_model is not a metric of this data."""
    relevance = None if data.relevance is None else [[True, False], [False, True]]
    known = retrieval_metrics([[1.0, 0.0], [0.0, 1.0]], [0, 1], relevance)
    if name not in known:
        raise ValueError(f"--metric_for_best_model {name!r} is not a retrieval metric of this data; choose one of {sorted(known)}")


def write_card(args, model_args, data_args, config, metrics, data_description, num_pairs, *, rerank_metrics=None, fine_tuned_for=None,
               encoder_args=None, batch_groups=None) -> None:
    hyperparameters = {
        "per_device_batch_size": args.per_device_batch_size,
        "batches": f"grouped by {batch_groups}, {data_args.batch_group_size} rows per group" if batch_groups else "random",
        "learning_rate": args.learning_rate,
        "vision_learning_rate": args.vision_lr(),
        "weight_decay": args.weight_decay,
        "warmup_steps": args.warmup_steps,
        "num_epochs": args.num_epochs,
        "max_steps": args.max_steps,
        "mixed_precision": args.mixed_precision,
        "seed": args.seed,
    }
    if args.image_tower_only:
        hyperparameters["trained"] = ("the image tower and its word head only, on the word-prediction loss (a first stage: "
                                      "the text tower, the fusion encoder and the other heads are untrained)")
    if data_args.validation_split:
        hyperparameters["model_selection"] = f"best {args.metric_for_best_model} on the {data_args.validation_split} split"
    render_model_card(
        args.output_dir,
        model_config=config.to_dict(),
        metrics=metrics,
        dataset_name=data_args.dataset,
        dataset_description=data_description,
        num_train_pairs=num_pairs,
        hyperparameters=hyperparameters,
        base_model=base_model_names(model_args.model_name_or_path, encoder_args),
        teacher=model_args.teacher or model_args.teacher_cache,
        eval_split=data_args.eval_split or "none",
        eval_dataset_name=data_args.eval_dataset,
        rerank_metrics=rerank_metrics,
        rerank_k=args.rerank_k or None,
        rerank_mode=rerank_mode(args.rerank_k, args.rerank_score) if args.rerank_k else None,
        fine_tuned_for=fine_tuned_for,
        repo_id=args.push_to_hub,
    )




class PretrainingTask(Task):
    """Regulated ITC (SRCL) + ITM + MLM on image-caption pairs; retrieval on the validation / evaluation splits."""

    name = "pretrain"
    fine_tuned_for: str | None = None  # set by retrieval fine-tuning: the model card says so

    def __init__(self, model_args: ModelArguments, data_args: DataArguments, args: PretrainingArguments,
                 encoder_args: EncoderArguments | None = None):
        super().__init__(args)
        self.model_args, self.data_args = model_args, data_args
        self.encoder_args = encoder_args or EncoderArguments()
        check_start(model_args.model_name_or_path, self.encoder_args)
        self.skips.max_bad_fraction = data_args.max_bad_fraction
        # a switched-off loss leaves its head without gradients, which DDP must be told about
        self.find_unused_parameters = 0 in (model_args.mlm_loss_weight, model_args.itm_loss_weight) or args.image_tower_only
        self.teacher = None
        self.config = None

    def settings(self) -> dict:
        # a new model's settings only: a checkpoint brings its own (and resumes of runs from before they existed work)
        new_model = {} if self.model_args.model_name_or_path else {name: getattr(self.encoder_args, name) for name in ENCODER_SETTINGS}
        # flags added later are recorded only when used, so that checkpoints written before they existed resume
        later = {"freeze_text_tower": True} if self.model_args.freeze_text_tower else {}
        if not self.model_args.model_name_or_path and self.config is not None:
            # the image tower built (flags or the small model's defaults), when it is not the plain ViT read at [CLS]
            # that checkpoints from before these options have
            stem, pooling = self.config.vision_conv_stem, self.config.image_pooling
            if stem or pooling != "cls":
                later["image_tower"] = f"conv stem {stem}, {pooling} read-out"
            if self.config.word_prediction_loss_weight > 0:  # the small model's default adds a word head
                later["word_prediction_loss_weight"] = self.config.word_prediction_loss_weight
            if self.encoder_args.text_dropout is not None:
                later["text_dropout"] = self.encoder_args.text_dropout
        for name in ("itm_random_negatives", "itm_random_negatives_end", "negative_caption_loss_weight",
                     "word_prediction_loss_weight", "itm_skip_negatives_above_pair", *PEER_OBJECTIVE_SETTINGS):
            if getattr(self.model_args, name) is not None:
                later[name] = getattr(self.model_args, name)
        if self.args.image_tower_only:
            later["image_tower_only"] = True
        if self.data_args.batch_groups:
            later.update(batch_groups=self.data_args.batch_groups, batch_group_size=self.data_args.batch_group_size)
        return {**{name: getattr(self.model_args, name) for name in MODEL_SETTINGS}, **new_model, **later,
                **{name: getattr(self.data_args, name) for name in DATA_SETTINGS}}

    def load_data(self):
        model_args, data_args, accelerator = self.model_args, self.data_args, self.accelerator
        rerank_mode(self.args.rerank_k, self.args.rerank_score)  # an unknown --rerank_score fails before training
        if model_args.oracle_false_negatives and (data_args.dataset != "shapes" or accelerator.num_processes > 1):
            raise ValueError("--oracle_false_negatives needs the embedded shapes dataset (its ground truth) and one process")
        self.processor = (
            AutoProcessor.from_pretrained(model_args.model_name_or_path, trust_remote_code=True)
            if model_args.model_name_or_path
            else build_processor(self.encoder_args)
        )
        self.train_rows, self.eval_sets, self.data_description = load_data(data_args)
        if data_args.validation_split:
            check_metric_name(self.args.metric_for_best_model, self.eval_sets[data_args.validation_split])
        if model_args.teacher:
            self.teacher = SiscModel.from_pretrained(model_args.teacher)
            self.teacher.requires_grad_(False).eval().to(accelerator.device)
        passthrough = ()
        if model_args.teacher_cache:
            cache = load_teacher_cache(model_args.teacher_cache, self.train_rows, self.teacher)
            self.train_rows = attach_teacher_cache(self.train_rows, cache)
            passthrough, self.teacher = EMBEDDING_COLUMNS, None  # the cache replaces the online teacher
        if data_args.dataset == "shapes" and self.negative_caption_loss_weight() > 0:
            # derived only when used: the column costs start-up and collation time and changes the rows' fingerprint
            # (after the teacher cache, which is keyed to the rows without it)
            self.train_rows = with_caption_negatives(self.train_rows, shapes_config_from_args(data_args))
        relevance_fn = batch_relevance if data_args.dataset == "shapes" else None
        # before any training step: stop on captions the vocabulary cannot read (all [UNK]), warn on poorly read ones
        check_caption_vocabulary(self.train_rows, self.processor.tokenizer)
        return self.train_rows, PairCollator(self.processor, passthrough=passthrough, relevance_fn=relevance_fn)

    def negative_caption_loss_weight(self) -> float:
        """The weight the model will have: the flag, else the checkpoint's, else a new model's default."""
        if self.model_args.negative_caption_loss_weight is not None:
            return self.model_args.negative_caption_loss_weight
        if self.model_args.model_name_or_path:
            return SiscConfig.from_pretrained(self.model_args.model_name_or_path).negative_caption_loss_weight
        return SiscConfig.negative_caption_loss_weight

    def train_order(self, rows, seed: int):
        key = self.data_args.batch_groups
        if not key:
            return None
        if self.data_args.streaming:
            raise ValueError("--batch_groups needs the whole training set (it orders every epoch): drop --streaming")
        image_ids = rows["image_id"] if "image_id" in rows.column_names else None
        return GroupedOrder(group_keys(rows, key), self.data_args.batch_group_size, seed, image_ids)

    def build_model(self, total_steps: int) -> SiscForPreTraining:
        model = build_model(self.model_args, self.processor, total_steps, self.encoder_args)
        if self.model_args.freeze_text_tower:  # its parameters then get no gradients and no optimizer state
            model.sisc.text_model.requires_grad_(False)
        check_contrastive_batch(model.config, self.args.per_device_batch_size, self.accelerator.num_processes)
        check_negative_captions(model.config, self.train_rows)
        if self.args.image_tower_only and model.config.word_prediction_loss_weight <= 0:
            raise ValueError("--image_tower_only trains the image tower on the word-prediction loss, but this model has "
                             "word_prediction_loss_weight 0: pass --word_prediction_loss_weight (e.g. 5)")
        if self.args.image_tower_only and model.momentum_encoder is not None:  # its copy of the tower would go stale
            raise ValueError("--image_tower_only does not train the momentum copy: add --momentum_distillation in the "
                             "second stage instead (the copy then starts from the trained tower)")
        self.config = model.config
        return model

    def training_step(self, model, batch: dict, step: int):
        if self.args.image_tower_only:
            return model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                         attention_mask=batch["attention_mask"], word_prediction_only=True)
        extra = {}
        if self.teacher is not None:
            with torch.no_grad():
                extra["teacher_image_embeds"] = self.teacher.get_image_features(batch["pixel_values"])
                extra["teacher_text_embeds"] = self.teacher.get_text_features(batch["input_ids"], batch["attention_mask"])
        elif "teacher_image_embeds" in batch:
            extra["teacher_image_embeds"] = batch["teacher_image_embeds"]
            extra["teacher_text_embeds"] = batch["teacher_text_embeds"]
        if extra:
            extra["alpha"] = self.config.alpha_at(step - 1)
        if self.model_args.oracle_false_negatives:
            extra["false_negative_mask"] = batch["relevance"]
        if self.config.itm_random_negatives_end is not None:
            extra["itm_random_negatives"] = self.config.itm_random_share_at(step - 1)
        if self.config.negative_caption_loss_weight > 0:
            extra["negative_input_ids"] = batch["negative_input_ids"]
            extra["negative_attention_mask"] = batch["negative_attention_mask"]
        return model(
            input_ids=batch["input_ids"],
            pixel_values=batch["pixel_values"],
            attention_mask=batch["attention_mask"],
            image_ids=batch["image_ids"],
            caption_ids=batch.get("caption_ids"),
            **extra,
        )

    def divergence_reason(self, error: Exception) -> str | None:
        if "similarity must be finite" in str(error):  # the model refuses non-finite similarities
            return "the model's similarities are not finite (the last update overflowed the weights)"
        return None

    def step_logs(self, model, batch: dict, outputs, step: int) -> dict:
        if self.args.image_tower_only:  # no contrastive step: no temperature or regulation weights to report
            return {}
        uses_teacher = self.teacher is not None or "teacher_image_embeds" in batch
        sisc = self.accelerator.unwrap_model(model).sisc
        return {
            "alpha": self.config.alpha_at(step - 1) if uses_teacher else 0.0,
            **({"itm_random_share": self.config.itm_random_share_at(step - 1)} if self.config.itm_loss_weight > 0 else {}),
            "temperature": 1.0 / sisc.logit_scale_value().item(),
            **({"logit_bias": sisc.logit_bias.item()} if sisc.logit_bias is not None else {}),  # SigLIP's
            **regulation_diagnostics(
                local_block(outputs.weights_t2i, len(batch["input_ids"])), batch.get("relevance"), batch["image_ids"]
            ),
        }

    def after_step(self, model, outputs, step: int, total_steps: int) -> None:
        if (
            self.accelerator.is_main_process
            and outputs.weights_t2i is not None
            and (step % self.args.diagnostics_steps == 0 or step == total_steps)
        ):
            plots_dir = os.path.join(self.args.output_dir, "diagnostics")
            os.makedirs(plots_dir, exist_ok=True)
            save_weight_plots(outputs.weights_t2i, os.path.join(plots_dir, "weights"), step)

    def has_validation(self) -> bool:
        return bool(self.data_args.validation_split) and not self.args.image_tower_only

    def validate(self, model) -> dict:
        results = evaluate_retrieval(
            model.sisc, self.processor, self.eval_sets[self.data_args.validation_split], image_batch_size=self.args.eval_batch_size,
            accelerator=self.accelerator, max_bad_fraction=self.data_args.max_bad_fraction,
        )
        if skip_report(results.get("skipped")):
            self.accelerator.print(f"validation data: {skip_report(results['skipped'])}")
        return results["itc"]

    def summary_fields(self) -> dict:
        return {
            "rerank_k": self.args.rerank_k or None,
            "rerank_score": self.args.rerank_score if self.args.rerank_k else None,
            "rerank_metrics": None,
            "other_rerank_metrics": None,
            "eval_split": self.data_args.eval_split or None,
            "eval_timing": None,
            "eval_skipped": None,
            "validation_split": self.data_args.validation_split,
        }

    def evaluation_hint(self) -> str:
        data_args = self.data_args
        return (f"train/evaluate_retrieval.py --model {self.args.output_dir} --data {data_args.dataset} --split {data_args.eval_split}"
                + (f" --image_root {data_args.image_root}" if data_args.image_root else ""))

    def final_evaluation(self, model, summary: dict) -> None:
        if not self.data_args.eval_split or self.args.image_tower_only:
            return
        results = evaluate_retrieval(
            model.sisc, self.processor, self.eval_sets[self.data_args.eval_split], rerank_k=self.args.rerank_k,
            image_batch_size=self.args.eval_batch_size, accelerator=self.accelerator, max_bad_fraction=self.data_args.max_bad_fraction,
        )
        reranked = {name: results[name] for name in (rerank_mode(self.args.rerank_k, score) for score in RERANK_SCORES)
                    if name in results}
        summary.update(
            metrics=results["itc"], rerank_metrics=reranked.pop(rerank_mode(self.args.rerank_k, self.args.rerank_score), None),
            other_rerank_metrics=reranked or None, eval_timing=results["timing"], eval_skipped=results.get("skipped"),
        )

    def write_card(self, model, summary: dict) -> None:
        write_card(
            self.args, self.model_args, self.data_args, model.config, summary["metrics"], self.data_description,
            len_or_none(self.train_rows), rerank_metrics=summary["rerank_metrics"], fine_tuned_for=self.fine_tuned_for,
            encoder_args=self.encoder_args, batch_groups=self.data_args.batch_groups,
        )

    def print_results(self, summary: dict) -> None:
        metrics, rerank_metrics = summary["metrics"], summary["rerank_metrics"]
        if metrics:
            modes = {"itc": metrics}
            if rerank_metrics:
                modes[rerank_mode(self.args.rerank_k, self.args.rerank_score)] = rerank_metrics
                modes.update(summary.get("other_rerank_metrics") or {})
            print("retrieval on the held-out split:")
            if skip_report(summary["eval_skipped"]):
                print(f"  ({skip_report(summary['eval_skipped'])}; the metrics are those of the readable items)")
            print(format_table(modes))


def len_or_none(rows):
    try:
        return len(rows)
    except TypeError:
        return None


# the encoder arguments last: a task takes them as its optional fourth argument
ARGUMENTS = (ModelArguments, DataArguments, PretrainingArguments, EncoderArguments)


def image_tower_stage(model_args: ModelArguments, data_args: DataArguments, args: PretrainingArguments,
                      encoder_args: EncoderArguments) -> str:
    """The first stage of --image_tower_steps: trains the new model's image tower and word head alone into
    <output_dir>-tower and returns that folder (the second stage's --model_name_or_path). A resumed run reuses the
    finished first stage instead of training it again."""
    if args.image_tower_only:
        raise ValueError("--image_tower_steps runs --image_tower_only as its first stage: pass only one of the two")
    if model_args.model_name_or_path:
        raise ValueError(f"--image_tower_steps trains a new model's image tower first, but --model_name_or_path "
                         f"{model_args.model_name_or_path} is a trained one: pass --image_tower_steps 0 to go on from it")
    tower_dir = args.output_dir.rstrip("/\\") + "-tower"
    if args.resume_from_checkpoint:
        if not os.path.exists(os.path.join(tower_dir, "results.json")):
            raise FileNotFoundError(f"--resume_from_checkpoint with --image_tower_steps: the first stage's model "
                                    f"{tower_dir} is missing or unfinished, so the second stage cannot go on from it")
        return tower_dir
    stage_args = replace(
        args, output_dir=tower_dir, overwrite_output_dir=True, image_tower_only=True, image_tower_steps=0,
        max_steps=args.image_tower_steps, learning_rate=args.image_tower_learning_rate, vision_learning_rate=None,
        vision_learning_rate_factor=1.0, push_to_hub=None,
    )
    # the teacher and the momentum copy belong to the second stage (the first trains neither)
    stage_model_args = replace(model_args, teacher=None, teacher_cache=None, momentum_distillation=False)
    train(PretrainingTask(stage_model_args, data_args, stage_args, encoder_args), stage_args)
    return tower_dir


def main(argv=None, defaults: dict | None = None, task_class: type[PretrainingTask] = PretrainingTask) -> dict:
    """Parse the arguments (`defaults`: a preset of another job, e.g. retrieval fine-tuning) and train."""
    model_args, data_args, args, encoder_args = parse_args(ARGUMENTS, argv, defaults)
    if args.image_tower_steps > 0:
        PartialState().print(f"stage 1 of 2: the image tower and its word head alone, {args.image_tower_steps} steps")
        tower_dir = image_tower_stage(model_args, data_args, args, encoder_args)
        PartialState().print(f"stage 2 of 2: every loss, from {tower_dir}")
        # the tower's checkpoint holds the new model the encoder flags described
        model_args, encoder_args = replace(model_args, model_name_or_path=tower_dir), EncoderArguments()
    task = task_class(model_args, data_args, args, encoder_args)
    summary = train(task, task.args)
    return {"metrics": summary["metrics"], "rerank_metrics": summary["rerank_metrics"],
            "global_step": summary["global_step"], "best_model": summary["best_model"]}


if __name__ == "__main__":
    main()
