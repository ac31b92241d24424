"""Evaluate a SISC VQA model: VQA accuracy (soft score min(#annotators who gave the answer / 3, 1), in percent, also
per answer type) and the predictions as JSON in the official result format [{"question_id", "answer"}].

    python train/evaluate_vqa.py --model_name_or_path outputs/sisc-small-vqa [--dataset shapes] [--split test] \\
        [--output_file predictions.json] [--official] [--k_test 128]

The data are read as by the trainer (`--dataset` / `--dataset_config` / `--data_format` / `--image_root`: the
official VQA v2 files, ALBEF's VQA files, a saved or Hub dataset) into the VQA v2 layout: `question_id`, `question`,
`answers` ([{"answer": ...}] of the annotators), `image`, optionally `answer_type` and `question_type`. A split
without answers (test-dev / test) gets predictions only. `--baseline_split train` also reports the majority-answer
baselines (the most frequent training answer for every question, and per question type).
"""

from __future__ import annotations

import json
import os
from collections import Counter

import torch
from transformers import AutoModelForVisualQuestionAnswering

from sisc_train.data.images import decode_image
from sisc_train.data.tasks import limit, load_processor, load_task_data, task_evaluation_parser
from sisc_train.evaluation.vqa_metrics import majority_answers, normalize_answer, vqa_accuracy, write_results

COLUMNS = {"question": "question", "answers": "answers", "image": "image", "question_id": "question_id",
           "answer_type": "answer_type", "question_type": "question_type"}


@torch.no_grad()
def predict_vqa(model, processor, split, batch_size: int = 128, k: int | None = None, columns=None) -> list[str]:
    """The model's answer (a string of `model.config.vqa_answers`) for every row of `split`."""
    columns = {**COLUMNS, **(columns or {})}
    model.eval()
    answers = model.config.vqa_answers
    answer_list = model.tokenize_answer_list(processor.tokenizer) if model.answer_decoder is not None else {}
    predictions = []
    for start in range(0, len(split), batch_size):
        rows = split[start : start + batch_size]
        inputs = processor(
            text=list(rows[columns["question"]]), images=[decode_image(i) for i in rows[columns["image"]]], return_tensors="pt"
        ).to(model.device)
        ids = model.predict(inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"], k=k, **answer_list)
        predictions += [answers[i] for i in ids.tolist()]
    return predictions


def evaluate_vqa(model, processor, split, batch_size: int = 128, k: int | None = None, official: bool = False,
                 output_file: str | None = None, columns=None) -> dict:
    """VQA accuracy of `model` on `split`; writes the predictions to `output_file` (official format) if given."""
    columns = {**COLUMNS, **(columns or {})}
    predictions = predict_vqa(model, processor, split, batch_size, k, columns)
    gold = split[columns["answers"]]
    if any(len(a) for a in gold):
        types = split[columns["answer_type"]] if columns["answer_type"] in split.column_names else None
        metrics = vqa_accuracy(predictions, gold, types, official=official)
    else:  # a test split without answers (VQA v2 test-dev / test): predictions only, for the evaluation server
        metrics = {"num_questions": len(predictions)}
    if output_file:
        ids = split[columns["question_id"]] if columns["question_id"] in split.column_names else list(range(len(split)))
        write_results(output_file, ids, predictions)
    return metrics


def _most_common_answer(answers) -> str:
    return Counter(normalize_answer(a["answer"] if isinstance(a, dict) else a) for a in answers).most_common(1)[0][0]


def majority_baselines(train_split, eval_split, official: bool = False, columns=None) -> dict:
    """VQA accuracy of answering every question with the most frequent training answer (`majority_accuracy`), and
    with the most frequent answer of its question type (`type_prior_accuracy`, when there is a question_type)."""
    columns = {**COLUMNS, **(columns or {})}
    train_answers = [_most_common_answer(a) for a in train_split[columns["answers"]]]
    has_types = columns["question_type"] in train_split.column_names and columns["question_type"] in eval_split.column_names
    overall, per_type = majority_answers(train_answers, train_split[columns["question_type"]] if has_types else None)
    gold = eval_split[columns["answers"]]
    result = {
        "majority_answer": overall,
        "majority_accuracy": vqa_accuracy([overall] * len(gold), gold, official=official)["vqa_accuracy"],
    }
    if has_types:
        guesses = [per_type.get(t, overall) for t in eval_split[columns["question_type"]]]
        result["type_prior_accuracy"] = vqa_accuracy(guesses, gold, official=official)["vqa_accuracy"]
    return result


def main(argv=None) -> dict:
    parser = task_evaluation_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--split", default="test")
    parser.add_argument("--baseline_split", default="train", help="split the majority baselines come from ('' = none)")
    parser.add_argument("--k_test", type=int, default=None, help="answers the decoder scores fully (default: config)")
    parser.add_argument("--official", action="store_true", help="average over the 10 leave-one-out annotator subsets")
    parser.add_argument("--max_samples", type=int, default=None)
    parser.add_argument("--output_file", default=None, help="default: <model>/predictions_<split>.json")
    args = parser.parse_args(argv)


    model = AutoModelForVisualQuestionAnswering.from_pretrained(args.model_name_or_path, trust_remote_code=True)
    processor = load_processor(args.model_name_or_path)
    data = load_task_data("vqa", args.dataset, args.data_cache_dir, args.shapes_num_train,
                          dataset_config=args.dataset_config, data_format=args.data_format, image_root=args.image_root,
                          splits=[args.split, *([args.baseline_split] if args.baseline_split else [])])
    split = limit(data[args.split], args.max_samples)
    output_file = args.output_file or os.path.join(args.model_name_or_path, f"predictions_{args.split}.json")
    metrics = evaluate_vqa(model, processor, split, args.batch_size, args.k_test, args.official, output_file)
    if args.baseline_split and "vqa_accuracy" in metrics:
        metrics["baselines"] = majority_baselines(data[args.baseline_split], split, args.official)
    print(json.dumps(metrics, indent=2))
    print(f"predictions written to {output_file}")
    return metrics


if __name__ == "__main__":
    main()
