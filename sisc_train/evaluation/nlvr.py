"""Evaluate a SISC visual-reasoning model (NLVR2 layout: sentence, left image, right image, label): accuracy in percent
on each split given, with the majority-label baseline.

    python train/evaluate_nlvr.py --model_name_or_path outputs/sisc-small-nlvr [--dataset shapes] [--splits dev test]

Labels may be 0/1, booleans or the strings "True"/"False" (the raw NLVR2 json). Rows without a second image or with
an unreadable label are counted (`skipped`) and left out.
"""

from __future__ import annotations

import json

import datasets
import torch
from transformers import AutoModelForSequenceClassification

from sisc_train.data.images import decode_image
from sisc_train.data.tasks import load_processor, load_task_data, task_evaluation_parser

COLUMNS = {"sentence": "sentence", "left_image": "left_image", "right_image": "right_image", "label": "label"}
TYPE_COLUMN = "statement_type"  # optional: accuracy is also reported per statement type


def label_value(value) -> int | None:
    """0 / 1 from an int, a bool or "True"/"False" (any case); None when it is none of these."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and value in (0, 1):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return int(value.strip().lower() == "true")
    return None


def usable_rows(split, columns=None) -> tuple[list[int], int]:
    """Indices of rows with both images and a readable label, and the number of rows left out."""
    columns = {**COLUMNS, **(columns or {})}
    view = split
    for name in (columns["left_image"], columns["right_image"]):
        if isinstance(split.features.get(name), datasets.Image):
            view = view.cast_column(name, datasets.Image(decode=False))
    left, right, labels = view[columns["left_image"]], view[columns["right_image"]], view[columns["label"]]
    keep = [i for i in range(len(split)) if left[i] is not None and right[i] is not None and label_value(labels[i]) is not None]
    return keep, len(split) - len(keep)


class NlvrCollator:
    """Rows (sentence, two images, label) -> `SiscForVisualReasoning` inputs; `read_label` turns a row's label into
    the class index (None = unreadable, then the batch has no labels)."""

    read_label = staticmethod(label_value)

    def __init__(self, processor, columns=None):
        self.processor = processor
        self.columns = {**COLUMNS, **(columns or {})}

    def __call__(self, rows):
        c = self.columns
        for index, row in enumerate(rows):
            if row[c["left_image"]] is None or row[c["right_image"]] is None:
                raise ValueError(f"row {index} of the batch lacks its {'left' if row[c['left_image']] is None else 'right'} image")
        images = [decode_image(r[c["left_image"]]) for r in rows] + [decode_image(r[c["right_image"]]) for r in rows]
        inputs = self.processor(text=[r[c["sentence"]] for r in rows], images=images, return_tensors="pt")
        n = len(rows)
        labels = [self.read_label(r[c["label"]]) for r in rows]
        batch = {
            "input_ids": inputs["input_ids"],
            "attention_mask": inputs["attention_mask"],
            "pixel_values": inputs["pixel_values"][:n],
            "pixel_values_2": inputs["pixel_values"][n:],
        }
        if all(label is not None for label in labels):
            batch["labels"] = torch.tensor(labels)
        return batch


@torch.no_grad()
def evaluate_nlvr(model, processor, split, batch_size: int = 128, columns=None) -> dict:
    """{"accuracy": percent, "num_examples", "skipped"} of `model` on `split`, plus `accuracy_<type>` per value of
    its `statement_type` column when it has one."""
    keep, skipped = usable_rows(split, columns)
    split = split.select(keep)
    collate = NlvrCollator(processor, columns)
    model.eval()
    hits = []
    for start in range(0, len(split), batch_size):
        rows = [split[i] for i in range(start, min(start + batch_size, len(split)))]
        batch = {k: v.to(model.device) for k, v in collate(rows).items()}
        labels = batch.pop("labels")
        hits += (model(**batch).logits.argmax(dim=1) == labels).tolist()
    metrics = {"accuracy": 100.0 * sum(hits) / max(len(split), 1), "num_examples": len(split), "skipped": skipped}
    if TYPE_COLUMN in split.column_names:  # e.g. the embedded data's statement kinds
        by_type: dict[str, list[bool]] = {}
        for hit, kind in zip(hits, split[TYPE_COLUMN]):
            by_type.setdefault(kind, []).append(hit)
        for kind, values in sorted(by_type.items()):
            metrics[f"accuracy_{kind}"] = 100.0 * sum(values) / len(values)
    return metrics


def majority_baseline(train_split, eval_split, columns=None) -> dict:
    """Accuracy of always predicting the most frequent training label."""
    columns = {**COLUMNS, **(columns or {})}
    train = [label_value(v) for v in train_split[columns["label"]]]
    train = [v for v in train if v is not None]
    majority = int(sum(train) * 2 >= len(train))
    gold = [label_value(v) for v in eval_split[columns["label"]]]
    gold = [v for v in gold if v is not None]
    return {"majority_label": majority, "majority_accuracy": 100.0 * sum(g == majority for g in gold) / max(len(gold), 1)}


def main(argv=None) -> dict:
    parser = task_evaluation_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--splits", nargs="+", default=["dev", "test"])
    parser.add_argument("--baseline_split", default="train", help="split the majority label comes from ('' = none)")
    args = parser.parse_args(argv)


    model = AutoModelForSequenceClassification.from_pretrained(args.model_name_or_path, trust_remote_code=True)
    processor = load_processor(args.model_name_or_path)
    data = load_task_data("nlvr", args.dataset, args.data_cache_dir, args.shapes_num_train,
                          dataset_config=args.dataset_config, data_format=args.data_format, image_root=args.image_root,
                          splits=[*args.splits, *([args.baseline_split] if args.baseline_split else [])])
    results = {}
    for name in args.splits:
        results[name] = evaluate_nlvr(model, processor, data[name], args.batch_size)
        if args.baseline_split:
            results[name]["majority_baseline_accuracy"] = majority_baseline(data[args.baseline_split], data[name])["majority_accuracy"]
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
