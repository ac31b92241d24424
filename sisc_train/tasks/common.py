"""What the downstream tasks (VQA, NLVR) share besides the loop: argument checks and their model card."""

from __future__ import annotations

from sisc_train.data.tasks import TaskDataArguments
from sisc_train.loop.arguments import TrainingArguments
from sisc_train.publishing.model_card import render_model_card


def check_task_args(data_args: TaskDataArguments, args: TrainingArguments, script: str) -> None:
    if not data_args.model_name_or_path:
        raise SystemExit(f"{script} needs --model_name_or_path: the pretrained SISC checkpoint to start from")
    if args.per_device_batch_size < 1 or args.eval_batch_size < 1:
        raise SystemExit("batch sizes must be >= 1")


def save_task_card(args: TrainingArguments, data_args: TaskDataArguments, model, summary: dict, *, card_kwargs: dict) -> None:
    """The model card of a fine-tuned task model in `args.output_dir`."""
    hyperparameters = {
        "learning_rate": args.learning_rate,
        "vision_learning_rate": args.vision_lr(),
        "per_device_batch_size": args.per_device_batch_size,
        "num_epochs": args.num_epochs,
        "max_steps": args.max_steps,
        "weight_decay": args.weight_decay,
        "warmup_steps": args.warmup_steps,
        "seed": args.seed,
        **card_kwargs.pop("extra_hyperparameters", {}),
    }
    render_model_card(
        args.output_dir,
        model_config=model.config.to_dict(),
        metrics={},
        dataset_name=data_args.dataset,
        hyperparameters=hyperparameters,
        base_model=data_args.model_name_or_path,
        **card_kwargs,
    )
