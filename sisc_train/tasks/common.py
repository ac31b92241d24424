"""What the downstream tasks (VQA, NLVR) share besides the loop: their start (a SISC checkpoint, or a new model from
pretrained encoders: sisc_train/tasks/encoders.py), their data splits, their model card."""

from __future__ import annotations

from sisc_train.data.tasks import TaskDataArguments, limit, load_processor, load_task_data
from sisc_train.loop.arguments import TrainingArguments
from sisc_train.loop.trainer import Task
from sisc_train.publishing.model_card import render_model_card
from sisc_train.tasks.encoders import (
    ENCODER_SETTINGS,
    EncoderArguments,
    base_model_names,
    build_new_model,
    build_processor,
    check_start,
    starts_new_model,
)


class FineTuningTask(Task):
    """A task fine-tuned from a pretrained SISC checkpoint, or from a new model (encoder flags), on task data (VQA v2 /
    NLVR2 layouts, or the embedded data `data_name`)."""

    data_name = ""  # "vqa" / "nlvr": which embedded task data "shapes" means
    script = ""  # the entry point, named in errors

    def __init__(self, data_args: TaskDataArguments, args: TrainingArguments, encoder_args: EncoderArguments | None = None):
        super().__init__(args)
        self.data_args = data_args
        self.encoder_args = encoder_args or EncoderArguments()
        if not data_args.model_name_or_path and not starts_new_model(self.encoder_args):
            raise SystemExit(f"{self.script} needs --model_name_or_path (the pretrained SISC checkpoint to start from) or "
                             "the parts of a new model (--text_model_name_or_path, --vision_model_name_or_path, "
                             "--model_config)")
        check_start(data_args.model_name_or_path, self.encoder_args)
        if args.per_device_batch_size < 1 or args.eval_batch_size < 1:
            raise SystemExit("batch sizes must be >= 1")
        self.validation = None

    def settings(self) -> dict:
        # a new model's settings only: a checkpoint brings its own (and resumes of runs from before they existed work)
        new_model = ({name: getattr(self.encoder_args, name) for name in ENCODER_SETTINGS}
                     if starts_new_model(self.encoder_args) else {})
        return {"model_name_or_path": self.data_args.model_name_or_path, "dataset": self.data_args.dataset,
                "dataset_config": self.data_args.dataset_config, "data_format": self.data_args.data_format,
                "max_train_samples": self.data_args.max_train_samples, **new_model}

    def load_splits(self) -> None:
        """The checkpoint's (or the new model's) processor, the task data, its (limited) train split and its
        validation split (None without --validation_split)."""
        data_args = self.data_args
        if data_args.model_name_or_path:
            self.processor = load_processor(data_args.model_name_or_path)
        else:
            self.processor = build_processor(self.encoder_args)
        wanted = [s for s in (data_args.train_split, data_args.validation_split, data_args.eval_split) if s]
        self.data = load_task_data(self.data_name, data_args.dataset, data_args.data_cache_dir, data_args.shapes_num_train,
                                   dataset_config=data_args.dataset_config, data_format=data_args.data_format,
                                   image_root=data_args.image_root, splits=wanted)
        self.train_split = limit(self.data[data_args.train_split], data_args.max_train_samples)
        if data_args.validation_split:
            self.validation = limit(self.data[data_args.validation_split], data_args.max_eval_samples)

    def has_validation(self) -> bool:
        return self.validation is not None

    def start_model(self, model_class, **config_kwargs):
        """The task model: from the SISC checkpoint (`config_kwargs` override its config), or new from the encoders."""
        if self.data_args.model_name_or_path:
            return model_class.from_pretrained(self.data_args.model_name_or_path, **config_kwargs)
        return build_new_model(model_class, self.encoder_args, self.processor.tokenizer, **config_kwargs)


def save_task_card(args: TrainingArguments, data_args: TaskDataArguments, model, summary: dict, *, card_kwargs: dict,
                   encoder_args: EncoderArguments | None = None) -> None:
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
        base_model=base_model_names(data_args.model_name_or_path, encoder_args),
        **card_kwargs,
    )
