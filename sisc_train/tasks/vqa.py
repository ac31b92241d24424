"""Fine-tune a pretrained SISC checkpoint for visual question answering (`SiscForQuestionAnswering`).

    accelerate launch train/finetune_vqa.py --model_name_or_path outputs/sisc-small
    accelerate launch train/finetune_vqa.py --model_name_or_path M --vqa_head classify --output_dir outputs/vqa-cls
    accelerate launch train/finetune_vqa.py --model_name_or_path M --dataset my_vqa_v2_folder --answer_list answers.json

Data: a `datasets` DatasetDict in the VQA v2 layout (`question`, `answers` = the annotators' [{"answer": ...}],
`image`, `question_id`, optionally `answer_type` / `question_type`); "shapes" (default) is the embedded synthetic
VQA data (train/shapes_tasks.py). The closed answer list is `--answer_list` (a JSON list) or the training answers
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
from accelerate.utils import set_seed
from transformers import HfArgumentParser

from modeling_sisc import SiscForQuestionAnswering
from sisc_train.data.images import decode_image
from sisc_train.evaluation.vqa import COLUMNS, evaluate_vqa, majority_baselines
from sisc_train.loop.trainer import (
    TaskTrainingArguments,
    check_common_args,
    fine_tune,
    limit,
    load_processor,
    load_task_data,
    save_and_report,
)
from sisc_train.evaluation.vqa_metrics import normalize_answer, soft_targets


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


def main(argv=None) -> dict:
    parser = HfArgumentParser((TaskTrainingArguments, VqaArguments))
    parser.set_defaults(output_dir="outputs/sisc-small-vqa", validation_split="validation", num_epochs=2)
    args, vqa_args = parser.parse_args_into_dataclasses(args=argv)
    check_common_args(args, "finetune_vqa.py")
    processor = load_processor(args.model_name_or_path)
    data = load_task_data("vqa", args.dataset, args.data_cache_dir, args.shapes_num_train)
    train_split = limit(data[args.train_split], args.max_train_samples)
    answers = build_answer_list(train_split, vqa_args)
    keep = valid_rows(train_split, answers)
    skipped = len(train_split) - len(keep)
    if skipped:
        print(f"[vqa] skipping {skipped} training questions with no answer in the {len(answers)}-answer list", flush=True)
    if not keep:
        raise ValueError("no training question has an answer in the answer list")
    train_rows = train_split.select(keep)

    overrides = {"vqa_head": vqa_args.vqa_head, "vqa_answers": answers}
    if vqa_args.k_test is not None:
        overrides["vqa_k_test"] = vqa_args.k_test
    set_seed(args.seed)  # the new heads' initialisation is part of the run
    model = SiscForQuestionAnswering.from_pretrained(args.model_name_or_path, **overrides)
    tokens = model.tokenize_answer_list(processor.tokenizer) if vqa_args.vqa_head == "generate" else None
    if tokens is not None:
        tokens = {k: v.cpu() for k, v in tokens.items()}
    collate = VqaCollator(processor, answers, vqa_args.vqa_head, tokens)

    validation = limit(data[args.validation_split], args.max_eval_samples) if args.validation_split else None
    validate = None
    if validation is not None:
        def validate(m):
            return evaluate_vqa(m, processor, validation, args.eval_batch_size, official=vqa_args.official_score)

    result = fine_tune(model, train_rows, collate, args, validate=validate, metric="vqa_accuracy", log_prefix="vqa")
    model, accelerator = result.pop("model"), result.pop("accelerator")
    summary = {**result, "num_answers": len(answers), "skipped_no_valid_answer": skipped, "train_questions": len(train_rows)}
    test_metrics, baselines = None, None
    if args.eval_split and accelerator.is_main_process:
        test = limit(data[args.eval_split], args.max_eval_samples)
        os.makedirs(args.output_dir, exist_ok=True)
        predictions_file = os.path.join(args.output_dir, f"predictions_{args.eval_split}.json")
        test_metrics = evaluate_vqa(model, processor, test, args.eval_batch_size, official=vqa_args.official_score,
                                    output_file=predictions_file)
        baselines = majority_baselines(train_split, test, vqa_args.official_score)
        summary.update(eval_split=args.eval_split, metrics=test_metrics, baselines=baselines)
        print(f"[vqa] {args.eval_split}: VQA accuracy {test_metrics['vqa_accuracy']:.2f} "
              f"(majority answer {baselines['majority_accuracy']:.2f}"
              + (f", per-question-type prior {baselines['type_prior_accuracy']:.2f}" if "type_prior_accuracy" in baselines else "")
              + f") after {summary['global_step']} steps in {summary['train_seconds']}s", flush=True)
    if accelerator.is_main_process:
        split_metrics = {}
        if test_metrics:
            split_metrics[args.eval_split] = {**test_metrics, "majority_baseline_accuracy": baselines["majority_accuracy"]}
        if result["validation_history"]:
            best = max(result["validation_history"], key=lambda h: h["vqa_accuracy"])
            split_metrics.setdefault(args.validation_split, {"vqa_accuracy": best["vqa_accuracy"]})
        head = ("an answer decoder (BERT decoder with cross-attention to the fused question) whose answers are ranked "
                f"over a closed list of {len(answers)} answers" if vqa_args.vqa_head == "generate"
                else f"a classifier over a closed list of {len(answers)} answers")
        save_and_report(model, processor, args, summary, card_kwargs=dict(
            dataset_description=("embedded synthetic VQA questions about coloured-shape scenes (train/shapes_tasks.py)"
                                 if args.dataset == "shapes" else "VQA v2-layout data"),
            num_train_pairs=len(train_rows),
            task="visual-question-answering",
            fine_tuned_for="visual question answering",
            extra_hyperparameters={"vqa_head": vqa_args.vqa_head, "num_answers": len(answers)},
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
                        f"path = {json.dumps(args.output_dir)}\n"
                        "model = AutoModelForVisualQuestionAnswering.from_pretrained(path, trust_remote_code=True).eval()\n"
                        "processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)\n"
                        "print(model.answer([\"how many circles are there?\"], [Image.open(\"image.png\")], processor))"
                    ),
                },
            },
        ))
    return summary


if __name__ == "__main__":
    main()
