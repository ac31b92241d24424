"""Fine-tune a pretrained SISC checkpoint for visual question answering (`SiscForQuestionAnswering`).

    accelerate launch train/finetune_vqa.py --model_name_or_path outputs/sisc-small
    accelerate launch train/finetune_vqa.py --model_name_or_path M --vqa_head classify --output_dir outputs/vqa-cls
    accelerate launch train/finetune_vqa.py --model_name_or_path M --dataset my_vqa_v2_folder --answer_list answers.json
    accelerate launch train/finetune_vqa.py --model_name_or_path M --dataset vqav2/ --image_root coco/ --eval_split test-dev
    accelerate launch train/finetune_vqa.py --text_model_name_or_path bert-base-uncased \
        --vision_model_name_or_path google/vit-base-patch16-224-in21k --model_config base   # from encoders

Data (`--dataset`, `sisc_train/data/tasks.py`): "shapes" (default), the embedded synthetic VQA data
(sisc_train/synthetic/shapes_tasks.py); the official VQA v2 questions + annotations files (their folder, or one
questions file; images `COCO_<subtype>_<id>.jpg` under `--image_root`, or its train2014/ val2014/ ... sub-folders;
splits train / validation / test / test-dev); ALBEF's VQA files (`vqa_train.json`, `vg_qa.json`, ...: splits train /
val / vg_qa / test, joined with "+": `--train_split train+val+vg_qa`); a saved DatasetDict or a Hub dataset
(`--dataset_config`) in the VQA v2 layout (`question`, `answers` = the annotators' [{"answer": ...}], `image`,
`question_id`, optionally `answer_type` / `question_type`). A split without answers (VQA v2 test / test-dev, ALBEF's
vqa_test.json) is only predicted: the file is for the evaluation server. The closed answer list is `--answer_list` (a JSON list) or the training answers
given by at least `--min_answer_count` annotators, the `--max_answers` most frequent (ALBEF / VQA v2 use 3,128 or
3,129). Training questions none of whose answers is in the list are skipped and counted (`skipped_no_valid_answer`).

Answer head (`--vqa_head`): "generate" = ALBEF's answer decoder (targets: each answer weighted by its share of the
annotators; inference ranks the list, the `--k_test` best first tokens scored fully), "classify" = classifier over
the list (targets: the VQA soft scores). After every epoch the validation split's VQA accuracy picks the kept epoch;
the test accuracy (with the majority-answer baselines), predictions (official format) and the model card are
written to `--output_dir`.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field

import torch

from modeling_sisc import SiscForQuestionAnswering
from sisc_train.data.images import decode_image
from sisc_train.data.tasks import TaskDataArguments, limit
from sisc_train.evaluation.vqa import COLUMNS, evaluate_vqa, majority_baselines
from sisc_train.evaluation.vqa_metrics import normalize_answer, soft_targets
from sisc_train.loop.arguments import TrainingArguments, parse_args
from sisc_train.loop.trainer import train
from sisc_train.tasks.common import FineTuningTask, save_task_card
from sisc_train.tasks.encoders import EncoderArguments


@dataclass
class VqaArguments:
    vqa_head: str = field(default="generate", metadata={"help": "'generate' (ALBEF answer decoder) or 'classify'."})
    answer_list: str | None = field(default=None, metadata={"help": "JSON file with the closed answer list."})
    max_answers: int = field(default=3129, metadata={"help": "Keep at most this many (most frequent) training answers."})
    min_answer_count: int = field(default=1, metadata={"help": "Keep training answers given at least this often."})
    k_test: int | None = field(default=None, metadata={"help": "Answers the decoder scores fully (default 128)."})
    official_score: bool = field(default=False, metadata={"help": "Leave-one-annotator-out average of the soft score."})


def build_answer_list(train_split, args: VqaArguments) -> list[str]:
    if args.answer_list:
        with open(args.answer_list, encoding="utf-8") as handle:
            answers = json.load(handle)
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise ValueError(f"{args.answer_list} must hold a JSON list of answer strings")
        answers = list(dict.fromkeys(normalize_answer(a) for a in answers))
    else:
        counts = Counter(
            normalize_answer(a["answer"] if isinstance(a, dict) else a) for row in train_split[COLUMNS["answers"]] for a in row
        )
        answers = [a for a, c in counts.most_common() if c >= args.min_answer_count and a][: args.max_answers]
    if not answers:
        raise ValueError("the answer list is empty")
    return answers


class VqaCollator:
    """Rows -> question/image inputs + `labels` (batch, num_answers) over the answer list (+ the tokenised list for
    the decoder)."""

    def __init__(self, processor, answers: list[str], head: str, answer_list_tokens: dict | None = None):
        self.processor, self.head = processor, head
        self.index = {a: i for i, a in enumerate(answers)}
        self.answer_list_tokens = answer_list_tokens or {}

    def __call__(self, rows):
        inputs = self.processor(
            text=[r[COLUMNS["question"]] for r in rows], images=[decode_image(r[COLUMNS["image"]]) for r in rows], return_tensors="pt"
        )
        labels = torch.zeros(len(rows), len(self.index))
        kind = "share" if self.head == "generate" else "score"
        for i, row in enumerate(rows):
            for j, value in soft_targets(row[COLUMNS["answers"]], self.index, kind).items():
                labels[i, j] = value
        batch = {k: inputs[k] for k in ("input_ids", "attention_mask", "pixel_values")}
        return {**batch, "labels": labels, **self.answer_list_tokens}


def valid_rows(split, answers: list[str]) -> list[int]:
    index = {a: i for i, a in enumerate(answers)}
    return [i for i, row in enumerate(split[COLUMNS["answers"]]) if soft_targets(row, index)]


@dataclass
class VqaTrainingArguments(TrainingArguments):
    output_dir: str = "outputs/sisc-small-vqa"
    num_epochs: int = 2
    vision_learning_rate_factor: float = field(
        default=0.25, metadata={"help": "The image encoder's learning rate relative to --learning_rate (default lr / 4, as in ALBEF's VQA)."}
    )
    metric_for_best_model: str = field(default="vqa_accuracy", metadata={"help": "Validation metric that picks the kept model."})


class VqaTask(FineTuningTask):
    name = data_name = "vqa"
    script = "finetune_vqa.py"

    def __init__(self, data_args: TaskDataArguments, vqa_args: VqaArguments, args: VqaTrainingArguments,
                 encoder_args: EncoderArguments | None = None):
        super().__init__(data_args, args, encoder_args)
        self.vqa_args = vqa_args

    def settings(self) -> dict:
        return {**super().settings(), "vqa_head": self.vqa_args.vqa_head}

    def load_data(self):
        self.load_splits()
        self.answers = build_answer_list(self.train_split, self.vqa_args)
        keep = valid_rows(self.train_split, self.answers)
        self.skipped = len(self.train_split) - len(keep)
        if self.skipped:
            self.accelerator.print(f"[vqa] skipping {self.skipped} training questions with no answer in the {len(self.answers)}-answer list")
        if not keep:
            raise ValueError("no training question has an answer in the answer list")
        self.train_rows = self.train_split.select(keep)
        # the decoder's tokenised answer list comes with the model: build_model hands it to the collator
        self.collator = VqaCollator(self.processor, self.answers, self.vqa_args.vqa_head)
        return self.train_rows, self.collator

    def build_model(self, total_steps: int) -> SiscForQuestionAnswering:
        overrides = {"vqa_head": self.vqa_args.vqa_head, "vqa_answers": self.answers}
        if self.vqa_args.k_test is not None:
            overrides["vqa_k_test"] = self.vqa_args.k_test
        model = self.start_model(SiscForQuestionAnswering, **overrides)
        tokens = model.tokenize_answer_list(self.processor.tokenizer) if self.vqa_args.vqa_head == "generate" else None
        if tokens is not None:
            tokens = {k: v.cpu() for k, v in tokens.items()}
        self.collator.answer_list_tokens = tokens or {}
        return model

    def validate(self, model) -> dict:
        return evaluate_vqa(model, self.processor, self.validation, self.args.eval_batch_size, official=self.vqa_args.official_score)

    def summary_fields(self) -> dict:
        return {"num_answers": len(self.answers), "skipped_no_valid_answer": self.skipped, "train_questions": len(self.train_rows)}

    def final_evaluation(self, model, summary: dict) -> None:
        data_args = self.data_args
        if not data_args.eval_split or not self.accelerator.is_main_process:
            return
        test = limit(self.data[data_args.eval_split], data_args.max_eval_samples)
        predictions_file = os.path.join(self.args.output_dir, f"predictions_{data_args.eval_split}.json")
        metrics = evaluate_vqa(model, self.processor, test, self.args.eval_batch_size, official=self.vqa_args.official_score,
                               output_file=predictions_file)
        summary.update(eval_split=data_args.eval_split, metrics=metrics, baselines={})
        if "vqa_accuracy" not in metrics:  # test / test-dev: no answers here, the evaluation server scores the file
            print(f"[vqa] {data_args.eval_split}: no annotator answers to score against; predictions of "
                  f"{metrics['num_questions']} questions written to {predictions_file}", flush=True)
            return
        baselines = majority_baselines(self.train_split, test, self.vqa_args.official_score)
        summary["baselines"] = baselines
        print(f"[vqa] {data_args.eval_split}: VQA accuracy {metrics['vqa_accuracy']:.2f} "
              f"(majority answer {baselines['majority_accuracy']:.2f}"
              + (f", per-question-type prior {baselines['type_prior_accuracy']:.2f}" if "type_prior_accuracy" in baselines else "")
              + f") after {summary['global_step']} steps in {summary['train_seconds']}s", flush=True)

    def write_card(self, model, summary: dict) -> None:
        split_metrics = {}
        if summary["metrics"] and "vqa_accuracy" in summary["metrics"]:
            split_metrics[self.data_args.eval_split] = {**summary["metrics"], "majority_baseline_accuracy": summary["baselines"]["majority_accuracy"]}
        if summary["validation_history"]:
            best = max(summary["validation_history"], key=lambda h: h["vqa_accuracy"])
            split_metrics.setdefault(self.data_args.validation_split, {"vqa_accuracy": best["vqa_accuracy"]})
        head = ("an answer decoder (BERT decoder with cross-attention to the fused question) whose answers are ranked "
                f"over a closed list of {len(self.answers)} answers" if self.vqa_args.vqa_head == "generate"
                else f"a classifier over a closed list of {len(self.answers)} answers")
        save_task_card(self.args, self.data_args, model, summary, encoder_args=self.encoder_args, card_kwargs=dict(
            dataset_description=("embedded synthetic VQA questions about coloured-shape scenes (sisc_train/synthetic/shapes_tasks.py)"
                                 if self.data_args.dataset == "shapes" else "VQA v2-layout data"),
            num_train_pairs=len(self.train_rows),
            task="visual-question-answering",
            fine_tuned_for="visual question answering",
            extra_hyperparameters={"vqa_head": self.vqa_args.vqa_head, "num_answers": len(self.answers)},
            task_results={
                "task_type": "visual-question-answering",
                "task_name": "Visual question answering",
                "metrics": split_metrics,
                "display_names": {"vqa_accuracy": "VQA accuracy (soft score, %)",
                                  "majority_baseline_accuracy": "Majority-answer baseline (%)",
                                  "num_questions": "Questions"},
                "tags": ["visual-question-answering"],
                "template_vars": {
                    "head_description": f"The question is fused with the image by the fusion encoder, then {head}.",
                    "results_description": "VQA accuracy: the mean of min(#annotators who gave the predicted answer / 3, 1), "
                                           "in percent.",
                    "usage_code": (
                        "from PIL import Image\nfrom transformers import AutoModelForVisualQuestionAnswering, AutoProcessor\n\n"
                        f"path = {json.dumps(self.args.output_dir)}\n"
                        "model = AutoModelForVisualQuestionAnswering.from_pretrained(path, trust_remote_code=True).eval()\n"
                        "processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)\n"
                        "print(model.answer([\"how many circles are there?\"], [Image.open(\"image.png\")], processor))"
                    ),
                },
            },
        ))


def main(argv=None) -> dict:
    data_args, vqa_args, args, encoder_args = parse_args(
        (TaskDataArguments, VqaArguments, VqaTrainingArguments, EncoderArguments), argv
    )
    task = VqaTask(data_args, vqa_args, args, encoder_args)
    summary = train(task, args)
    summary.pop("model")
    return summary


if __name__ == "__main__":
    main()
