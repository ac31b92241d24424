"""Fine-tune a pretrained SISC checkpoint for NLVR2-style visual reasoning (`SiscForVisualReasoning`).

    accelerate launch train/finetune_nlvr.py --model_name_or_path outputs/sisc-small
    accelerate launch train/finetune_nlvr.py --model_name_or_path M --dataset my_nlvr2_folder --validation_split dev \
        --text_assignment_data my_caption_pairs.jsonl

First ALBEF's text-assignment step (train/text_assignment.py: caption + two images -> first / second / neither, 20,000
examples, on the embedded captions when the NLVR data is the embedded one; `--text_assignment_examples 0` skips it),
then the true / false fine-tuning. The image tower trains at the full learning rate by default.

Data: a DatasetDict in the NLVR2 layout (`sentence`, `left_image`, `right_image`, `label`: 0/1, bool or
"True"/"False"); "shapes" (default) is the embedded synthetic two-image data (train/shapes_tasks.py). Rows without a
second image or a readable label are skipped and counted (`skipped_train_rows`). After every epoch the dev accuracy
picks the kept epoch; dev and test accuracy (with the majority-label baseline) go to `results.json` and the model
card. Evaluate a saved model again with `train/evaluate_nlvr.py`.
"""

from __future__ import annotations

import json


from accelerate.utils import set_seed
from transformers import HfArgumentParser

from modeling_sisc import SiscForVisualReasoning
from sisc_train.evaluation.nlvr import NlvrCollator, evaluate_nlvr, majority_baseline, usable_rows
from sisc_train.tasks.text_assignment import TextAssignmentArguments, run_text_assignment, text_assignment_source
from sisc_train.loop.trainer import (
    TaskTrainingArguments,
    check_common_args,
    fine_tune,
    limit,
    load_processor,
    load_task_data,
    save_and_report,
)


def main(argv=None) -> dict:
    parser = HfArgumentParser((TaskTrainingArguments, TextAssignmentArguments))
    parser.set_defaults(output_dir="outputs/sisc-small-nlvr", validation_split="dev", num_epochs=3)
    args, ta_args = parser.parse_args_into_dataclasses(args=argv)
    if args.vision_learning_rate is None:
        # unlike VQA's lr / 4: comparing two images needs the small image tower to keep learning (measured, README)
        args.vision_learning_rate = args.learning_rate
    check_common_args(args, "finetune_nlvr.py")
    processor = load_processor(args.model_name_or_path)
    data = load_task_data("nlvr", args.dataset, args.data_cache_dir, args.shapes_num_train)
    train_split = limit(data[args.train_split], args.max_train_samples)
    keep, skipped = usable_rows(train_split)
    if skipped:
        print(f"[nlvr] skipping {skipped} training rows without a second image or a readable label", flush=True)
    if not keep:
        raise ValueError("no usable training row (sentence, two images, label)")
    train_rows = train_split.select(keep)
    set_seed(args.seed)  # the new heads' initialisation is part of the run
    model = SiscForVisualReasoning.from_pretrained(args.model_name_or_path)
    source = text_assignment_source(ta_args, args.dataset)
    text_assignment = run_text_assignment(model, processor, args, ta_args, source) if source else None

    dev = limit(data[args.validation_split], args.max_eval_samples) if args.validation_split else None
    validate = (lambda m: evaluate_nlvr(m, processor, dev, args.eval_batch_size)) if dev is not None else None
    result = fine_tune(model, train_rows, NlvrCollator(processor), args, validate=validate, metric="accuracy", log_prefix="nlvr")
    model, accelerator = result.pop("model"), result.pop("accelerator")
    summary = {**result, "text_assignment": text_assignment, "skipped_train_rows": skipped, "train_examples": len(train_rows), "metrics": {}}
    if accelerator.is_main_process:
        for name in dict.fromkeys(s for s in (args.validation_split, args.eval_split) if s):
            split = limit(data[name], args.max_eval_samples)
            metrics = evaluate_nlvr(model, processor, split, args.eval_batch_size)
            metrics["majority_baseline_accuracy"] = majority_baseline(train_split, split)["majority_accuracy"]
            summary["metrics"][name] = metrics
            print(f"[nlvr] {name}: accuracy {metrics['accuracy']:.2f} (majority label {metrics['majority_baseline_accuracy']:.2f})"
                  f" after {summary['global_step']} steps in {summary['train_seconds']}s", flush=True)
            by_type = {k.removeprefix("accuracy_"): round(v, 1) for k, v in metrics.items() if k.startswith("accuracy_")}
            if by_type:
                print(f"[nlvr] {name} accuracy by statement type: {by_type}", flush=True)
        save_and_report(model, processor, args, summary, card_kwargs=dict(
            dataset_description=("embedded synthetic two-image statements about coloured-shape scenes (train/shapes_tasks.py)"
                                 if args.dataset == "shapes" else "NLVR2-layout data"),
            num_train_pairs=len(train_rows),
            extra_hyperparameters={
                "text_assignment_examples": text_assignment["examples"] if text_assignment else 0,
                "text_assignment_data": source or "-",
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
                           if text_assignment else "")),
                    "results_description": "Accuracy of the true/false prediction, in percent.",
                    "usage_code": (
                        "from PIL import Image\nfrom transformers import AutoModelForSequenceClassification, AutoProcessor\n\n"
                        f"path = {json.dumps(args.output_dir)}\n"
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
    return summary


if __name__ == "__main__":
    main()
