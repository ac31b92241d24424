"""Fine-tune a pretrained SISC checkpoint for NLVR2-style visual reasoning (`SiscForVisualReasoning`).

    accelerate launch train/finetune_nlvr.py --model_name_or_path outputs/sisc-small
    accelerate launch train/finetune_nlvr.py --model_name_or_path M --dataset my_nlvr2_folder --validation_split dev \
        --text_assignment_data my_caption_pairs.jsonl
    accelerate launch train/finetune_nlvr.py --model_name_or_path M --dataset nlvr/nlvr2/data --image_root nlvr2_images/
    accelerate launch train/finetune_nlvr.py --text_model_name_or_path bert-base-uncased \
        --vision_model_name_or_path google/vit-base-patch16-224-in21k --model_config base   # from encoders

First ALBEF's text-assignment step (sisc_train/tasks/text_assignment.py: caption + two images -> first / second / neither, 20,000
examples, on the embedded captions when the NLVR data is the embedded one; `--text_assignment_examples 0` skips it),
then the true / false fine-tuning. The image tower trains at the full learning rate by default.

Data (`--dataset`, `sisc_train/data/tasks.py`): "shapes" (default), the embedded synthetic two-image data
(sisc_train/synthetic/shapes_tasks.py); the official NLVR2 JSON-lines files (`train.json` / `dev.json` / `test1.json`
or their folder: splits train / dev / test; images `<identifier without -N>-img0.png` / `-img1.png` under
`--image_root`, in its train/ dev/ test1/ and numbered sub-folders when there are such); ALBEF's NLVR files
(`nlvr_train.json`, ...: `{"images": [left, right], "sentence", "label"}`); a saved DatasetDict or a Hub dataset
(`--dataset_config`) in the NLVR2 layout (`sentence`, `left_image`, `right_image`, `label`: 0/1, bool or
"True"/"False"). Rows without a
second image or a readable label are skipped and counted (`skipped_train_rows`). After every epoch the dev accuracy
picks the kept epoch; dev and test accuracy (with the majority-label baseline) go to `results.json` and the model
card. Evaluate a saved model again with `train/evaluate_nlvr.py`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from modeling_sisc import SiscForVisualReasoning
from sisc_train.data.tasks import TaskDataArguments, limit
from sisc_train.evaluation.nlvr import NlvrCollator, evaluate_nlvr, majority_baseline, usable_rows
from sisc_train.loop.arguments import TrainingArguments, parse_args
from sisc_train.loop.trainer import train
from sisc_train.tasks.common import FineTuningTask, save_task_card
from sisc_train.tasks.encoders import EncoderArguments
from sisc_train.tasks.text_assignment import TextAssignmentArguments, run_text_assignment, text_assignment_source


@dataclass
class NlvrDataArguments(TaskDataArguments):
    validation_split: str | None = field(default="dev", metadata={"help": "Evaluated after every epoch ('' = none)."})


@dataclass
class NlvrTrainingArguments(TrainingArguments):
    output_dir: str = "outputs/sisc-small-nlvr"
    num_epochs: int = 3
    # the image tower at the full learning rate (unlike VQA's lr / 4): comparing two images needs the small image
    # tower to keep learning (measured, README)
    vision_learning_rate_factor: float = 1.0
    metric_for_best_model: str = field(default="accuracy", metadata={"help": "Validation metric that picks the kept model."})


class NlvrTask(FineTuningTask):
    name = data_name = "nlvr"
    script = "finetune_nlvr.py"

    def __init__(self, data_args: NlvrDataArguments, ta_args: TextAssignmentArguments, args: NlvrTrainingArguments,
                 encoder_args: EncoderArguments | None = None):
        super().__init__(data_args, args, encoder_args)
        self.ta_args = ta_args
        self.ta_source = text_assignment_source(ta_args, data_args.dataset)
        self.text_assignment = None

    def settings(self) -> dict:
        return {**super().settings(), "text_assignment_data": self.ta_source,
                "text_assignment_examples": self.ta_args.text_assignment_examples}

    def load_data(self):
        self.load_splits()
        keep, self.skipped = usable_rows(self.train_split)
        if self.skipped:
            self.accelerator.print(f"[nlvr] skipping {self.skipped} training rows without a second image or a readable label")
        if not keep:
            raise ValueError("no usable training row (sentence, two images, label)")
        self.train_rows = self.train_split.select(keep)
        return self.train_rows, NlvrCollator(self.processor)

    def build_model(self, total_steps: int) -> SiscForVisualReasoning:
        model = self.start_model(SiscForVisualReasoning)
        if self.ta_source and not self.args.resume_from_checkpoint:
            self.text_assignment = run_text_assignment(
                model, self.processor, self.args, self.ta_args, self.ta_source, self.data_args.data_cache_dir
            )
        elif self.ta_source:  # a resumed run's checkpoint holds the step's effect; its report is on disk
            report = os.path.join(self.args.output_dir, "text_assignment", "results.json")
            if os.path.exists(report):
                with open(report) as f:
                    saved = json.load(f)
                self.text_assignment = {**saved, "examples": saved["args"]["text_assignment_examples"], "data": self.ta_source}
        return model

    def validate(self, model) -> dict:
        return evaluate_nlvr(model, self.processor, self.validation, self.args.eval_batch_size)

    def summary_fields(self) -> dict:
        return {"text_assignment": self.text_assignment, "skipped_train_rows": self.skipped, "train_examples": len(self.train_rows)}

    def final_evaluation(self, model, summary: dict) -> None:
        if not self.accelerator.is_main_process:
            return
        for name in dict.fromkeys(s for s in (self.data_args.validation_split, self.data_args.eval_split) if s):
            split = limit(self.data[name], self.data_args.max_eval_samples)
            metrics = evaluate_nlvr(model, self.processor, split, self.args.eval_batch_size)
            metrics["majority_baseline_accuracy"] = majority_baseline(self.train_split, split)["majority_accuracy"]
            summary["metrics"][name] = metrics
            print(f"[nlvr] {name}: accuracy {metrics['accuracy']:.2f} (majority label {metrics['majority_baseline_accuracy']:.2f})"
                  f" after {summary['global_step']} steps in {summary['train_seconds']}s", flush=True)
            by_type = {k.removeprefix("accuracy_"): round(v, 1) for k, v in metrics.items() if k.startswith("accuracy_")}
            if by_type:
                print(f"[nlvr] {name} accuracy by statement type: {by_type}", flush=True)

    def write_card(self, model, summary: dict) -> None:
        save_task_card(self.args, self.data_args, model, summary, encoder_args=self.encoder_args, card_kwargs=dict(
            dataset_description=("embedded synthetic two-image statements about coloured-shape scenes (sisc_train/synthetic/shapes_tasks.py)"
                                 if self.data_args.dataset == "shapes" else "NLVR2-layout data"),
            num_train_pairs=len(self.train_rows),
            extra_hyperparameters={
                "text_assignment_examples": summary['text_assignment']["examples"] if summary['text_assignment'] else 0,
                "text_assignment_data": self.ta_source or "-",
            },
            task="text-classification",
            fine_tuned_for="visual reasoning over two images (NLVR2)",
            task_results={
                "task_type": "visual-reasoning",
                "task_name": "Visual reasoning (NLVR2)",
                "metrics": summary["metrics"],
                "display_names": {"accuracy": "Accuracy (%)", "majority_baseline_accuracy": "Majority-label baseline (%)",
                                  "num_examples": "Examples", "skipped": "Skipped rows"},
                "tags": ["nlvr2", "visual-reasoning"],
                "template_vars": {
                    "head_description": (
                        "The sentence attends to both images in every fusion layer: one cross-attention branch per image "
                        "(the second starts as a copy of the pretrained one), merged by a linear layer, as in ALBEF's NLVR2 "
                        "model; an MLP on the fused [CLS] predicts false / true."
                        + (" Before the true / false training, ALBEF's text-assignment step (a caption and two images: "
                           "the first, the second or neither) taught the two branches to keep the images apart."
                           if summary['text_assignment'] else "")),
                    "results_description": "Accuracy of the true/false prediction, in percent.",
                    "usage_code": (
                        "from PIL import Image\nfrom transformers import AutoModelForSequenceClassification, AutoProcessor\n\n"
                        f"path = {json.dumps(self.args.output_dir)}\n"
                        "model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True).eval()\n"
                        "processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)\n"
                        "inputs = processor(text=[\"both images contain a star\"], images=[Image.open(\"left.png\"), "
                        "Image.open(\"right.png\")])\n"
                        "logits = model(input_ids=inputs[\"input_ids\"], attention_mask=inputs[\"attention_mask\"],\n"
                        "               pixel_values=inputs[\"pixel_values\"][:1], pixel_values_2=inputs[\"pixel_values\"][1:]).logits\n"
                        "print(bool(logits.argmax(-1)))"
                    ),
                },
            },
        ))


def main(argv=None) -> dict:
    data_args, ta_args, args, encoder_args = parse_args(
        (NlvrDataArguments, TextAssignmentArguments, NlvrTrainingArguments, EncoderArguments), argv
    )
    summary = train(NlvrTask(data_args, ta_args, args, encoder_args), args)
    summary.pop("model")
    return summary


if __name__ == "__main__":
    main()
