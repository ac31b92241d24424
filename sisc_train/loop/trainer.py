"""Shared fine-tuning loop of the downstream-task trainers (`finetune_vqa.py`, `finetune_nlvr.py`), with Accelerate.

AdamW (weight decay, a lower learning rate for the image encoder as in the paper's fine-tuning), linear warm-up then
cosine decay, gradient clipping; after every epoch the validation split is evaluated and the best epoch's weights
are kept (restored at the end); the final model and processor are saved, the test metrics go to `results.json`
and a model card, and `--push_to_hub` uploads the folder (train/hub.py).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field


import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from transformers import get_cosine_schedule_with_warmup

from sisc_train.loop.launch import check_launch

logger = logging.getLogger(__name__)


@dataclass
class TaskTrainingArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "The pretrained SISC checkpoint to start from (required)."}
    )
    dataset: str = field(
        default="shapes",
        metadata={"help": "'shapes' (the embedded task data), a dataset folder saved with save_to_disk, or a Hub dataset name."},
    )
    data_cache_dir: str = field(default="data_cache/shapes", metadata={"help": "Where the embedded task data is cached."})
    shapes_num_train: int | None = field(default=None, metadata={"help": "Override the size of the embedded train split."})
    train_split: str = "train"
    validation_split: str | None = field(default="validation", metadata={"help": "Evaluated after every epoch ('' = none)."})
    eval_split: str | None = field(default="test", metadata={"help": "Evaluated at the end ('' = none)."})
    output_dir: str = "outputs/sisc-small-task"
    seed: int = 42
    per_device_batch_size: int = 64
    eval_batch_size: int = 128
    num_epochs: int = 3
    max_steps: int | None = field(default=None, metadata={"help": "Stop after this many optimiser steps."})
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    learning_rate: float = field(default=2e-4, metadata={"help": "Learning rate of text/fusion/heads."})
    vision_learning_rate: float | None = field(default=None, metadata={"help": "Image encoder learning rate (default: lr / 4)."})
    weight_decay: float = 0.05
    warmup_steps: int = 20
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"
    logging_steps: int = 20
    num_workers: int = 0
    push_to_hub: str | None = field(default=None, metadata={"help": "Hub repo id to push the final checkpoint to."})
    hub_private: bool = False


def check_common_args(args: TaskTrainingArguments, script: str) -> None:
    if not args.model_name_or_path:
        raise SystemExit(f"{script} needs --model_name_or_path: the pretrained SISC checkpoint to start from")
    if args.per_device_batch_size < 1 or args.eval_batch_size < 1:
        raise SystemExit("batch sizes must be >= 1")


def task_evaluation_parser(description: str) -> argparse.ArgumentParser:
    """The arguments the task-evaluation scripts share: the model, its data (as for the trainers) and the batch size."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model_name_or_path", required=True)
    parser.add_argument("--dataset", default=TaskTrainingArguments.dataset)
    parser.add_argument("--data_cache_dir", default=TaskTrainingArguments.data_cache_dir)
    parser.add_argument("--shapes_num_train", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=TaskTrainingArguments.eval_batch_size)
    return parser


def load_processor(path: str):
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(path, trust_remote_code=True)
    except (OSError, ValueError):  # a checkpoint without a processor: the default one
        from processing_sisc import build_default_processor

        logger.warning("%s has no processor: using build_default_processor()", path)
        return build_default_processor()


# rows of the embedded task data when --shapes_num_train is not given (the ShapesTaskConfig default otherwise);
# NLVR: one true / false bit per pair, and 8,000 pairs left counting at chance (README)
SHAPES_TASK_NUM_TRAIN = {"vqa": None, "nlvr": 24000}


def load_task_data(task: str, dataset: str, cache_dir: str = "data_cache/shapes", num_train: int | None = None):
    """The DatasetDict of `task` ("vqa" / "nlvr"): the embedded shapes task data, a saved dataset folder, or a Hub
    dataset."""
    import datasets

    if dataset == "shapes":
        from sisc_train.synthetic.shapes_tasks import ShapesTaskConfig, load_task_dataset

        num_train = num_train if num_train is not None else SHAPES_TASK_NUM_TRAIN[task]
        config = ShapesTaskConfig(**({"num_train": num_train} if num_train is not None else {}))
        return load_task_dataset(task, config, cache_dir)
    if os.path.isdir(dataset):
        return datasets.load_from_disk(dataset)
    return datasets.load_dataset(dataset)


def limit(split, n: int | None):
    return split if n is None or n >= len(split) else split.select(range(n))


def fine_tune(model, train_rows, collate, args: TaskTrainingArguments, *, validate=None, metric: str, log_prefix: str) -> dict:
    """Train `model` on `train_rows` (a datasets split) with `collate` (rows -> model kwargs incl. the loss target).

    `validate(model)` -> metrics dict (higher `metric` is better) runs after every epoch; the best epoch's weights
    are restored at the end. Returns {"global_step", "train_seconds", "validation_history", "best_model",
    "last_loss", "accelerator"}.
    """
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    check_launch(accelerator)
    set_seed(args.seed)
    loader = DataLoader(
        train_rows, batch_size=args.per_device_batch_size, shuffle=True, collate_fn=collate, num_workers=args.num_workers,
        drop_last=len(train_rows) > args.per_device_batch_size,
    )
    steps_per_epoch = math.ceil(len(loader) / accelerator.num_processes) if accelerator.num_processes > 1 else len(loader)
    total_steps = steps_per_epoch * args.num_epochs
    if args.max_steps is not None:
        total_steps = min(total_steps, args.max_steps)
    from sisc_train.tasks.pretraining import param_groups

    vision_lr = args.vision_learning_rate if args.vision_learning_rate is not None else args.learning_rate / 4
    optimizer = torch.optim.AdamW(param_groups(model, args.learning_rate, vision_lr, args.weight_decay))
    scheduler = get_cosine_schedule_with_warmup(optimizer, min(args.warmup_steps, max(total_steps - 1, 0)), max(total_steps, 1))
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    history, best, best_state = [], None, None
    step, last_loss, start = 0, None, time.perf_counter()
    model.train()
    for epoch in range(1, args.num_epochs + 1):
        if step >= total_steps:
            break
        running, count = 0.0, 0
        for batch in loader:
            outputs = model(**batch)
            accelerator.backward(outputs.loss)
            if args.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            last_loss = outputs.loss.item()
            running, count = running + last_loss, count + 1
            if args.logging_steps and step % args.logging_steps == 0 and accelerator.is_main_process:
                print(
                    f"[{log_prefix}] epoch {epoch} step {step}/{total_steps} loss {running / count:.4f} "
                    f"lr {scheduler.get_last_lr()[-1]:.2e} ({time.perf_counter() - start:.0f}s)",
                    flush=True,
                )
                running, count = 0.0, 0
            if step >= total_steps:
                break
        if validate is not None:
            unwrapped = accelerator.unwrap_model(model)
            unwrapped.eval()
            metrics = validate(unwrapped)
            unwrapped.train()
            history.append({"epoch": epoch, "step": step, **metrics})
            if accelerator.is_main_process:
                print(f"[{log_prefix}] validation after epoch {epoch}: {metric} {metrics[metric]:.2f}", flush=True)
            if best is None or metrics[metric] > best["value"]:
                best = {"metric": metric, "value": metrics[metric], "epoch": epoch, "step": step}
                best_state = copy.deepcopy(unwrapped.state_dict())
    unwrapped = accelerator.unwrap_model(model)
    if best_state is not None and best["epoch"] != history[-1]["epoch"]:
        unwrapped.load_state_dict(best_state)
    unwrapped.eval()
    return {
        "global_step": step,
        "train_seconds": round(time.perf_counter() - start, 1),
        "validation_history": history,
        "best_model": best,
        "last_loss": last_loss,
        "accelerator": accelerator,
        "model": unwrapped,
    }


def save_and_report(model, processor, args: TaskTrainingArguments, summary: dict, *, card_kwargs: dict) -> None:
    """Save model + processor, write results.json and the model card, push to the Hub when asked."""
    from sisc_train.publishing.model_card import render_model_card

    os.makedirs(args.output_dir, exist_ok=True)
    model.save_pretrained(args.output_dir)
    processor.save_pretrained(args.output_dir)
    with open(os.path.join(args.output_dir, "results.json"), "w") as handle:
        json.dump({**summary, "args": asdict(args)}, handle, indent=2, default=str)
    hyperparameters = {
        key: getattr(args, key)
        for key in ("learning_rate", "vision_learning_rate", "per_device_batch_size", "num_epochs", "max_steps",
                    "weight_decay", "warmup_steps", "seed")
    }
    hyperparameters.update(card_kwargs.pop("extra_hyperparameters", {}))
    render_model_card(
        args.output_dir,
        model_config=model.config.to_dict(),
        metrics={},
        dataset_name=args.dataset,
        hyperparameters=hyperparameters,
        base_model=args.model_name_or_path,
        **card_kwargs,
    )
    if args.push_to_hub:
        from sisc_train.publishing.hub import push_checkpoint

        url = push_checkpoint(args.output_dir, args.push_to_hub, private=args.hub_private)
        print(f"pushed to {url}", flush=True)
