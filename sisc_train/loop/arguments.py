"""The arguments every trainer shares (`TrainingArguments`) and the parser of all of them.

A task adds only its own fields, and sets its own defaults by subclassing (`PretrainingArguments`, ...): the per-task
defaults are the dataclass defaults of `sisc_train/tasks/*.py`, and the README lists them. Precedence:
dataclass defaults < `--config FILE` (YAML or JSON) < command-line flags.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field

import yaml
from transformers import HfArgumentParser


@dataclass
class TrainingArguments:
    output_dir: str = "outputs/sisc-run"
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Train into an --output_dir that holds another run: its checkpoints, logs, diagnostics and results.json are deleted first."},
    )
    seed: int = 42
    per_device_batch_size: int = 64
    eval_batch_size: int = 128
    num_epochs: int = 3
    max_steps: int | None = field(default=None, metadata={"help": "Stop after this many optimiser steps."})
    learning_rate: float = field(default=2e-4, metadata={"help": "Learning rate of text/fusion/heads."})
    vision_learning_rate: float | None = field(
        default=None, metadata={"help": "Image encoder learning rate (default: --learning_rate x --vision_learning_rate_factor)."}
    )
    vision_learning_rate_factor: float = field(
        default=1.0, metadata={"help": "The image encoder's learning rate relative to --learning_rate, when --vision_learning_rate is not given."}
    )
    weight_decay: float = 0.05
    warmup_steps: int = 20
    max_grad_norm: float = 1.0
    gradient_accumulation_steps: int = 1
    mixed_precision: str = field(default="no", metadata={"help": "'no', 'bf16' or 'fp16' (Accelerate)."})
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes decoding images."})
    fused_adamw: bool = field(
        default=False,
        metadata={"help": "torch's fused AdamW (one kernel for all parameters, CPU or CUDA): faster, the same update up to "
                          "float rounding (benchmarks/throughput.py measures it)."},
    )
    logging_steps: int = 20
    checkpointing_steps: int | None = field(default=None, metadata={"help": "accelerator.save_state every N steps."})
    save_total_limit: int | None = field(
        default=None, metadata={"help": "Keep only the newest N step checkpoints (checkpoints/best is always kept)."}
    )
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "'latest' (the newest complete checkpoint of --output_dir) or a checkpoint folder."}
    )
    report_to: str = field(default="auto", metadata={"help": "Accelerate trackers: 'auto' (tensorboard if installed), 'none', ..."})
    metric_for_best_model: str = field(
        default="accuracy", metadata={"help": "Validation metric (higher is better) that picks the kept model."}
    )
    push_to_hub: str | None = field(default=None, metadata={"help": "Hub repo id to push the final checkpoint to."})
    hub_private: bool = field(default=False, metadata={"help": "Create the Hub repo as private."})

    def vision_lr(self) -> float:
        if self.vision_learning_rate is not None:
            return self.vision_learning_rate
        return self.learning_rate * self.vision_learning_rate_factor


# what a resumed run must share with the run that wrote the checkpoint (a task adds its model and data settings)
RESUME_SETTINGS = (
    "seed", "per_device_batch_size", "gradient_accumulation_steps", "learning_rate", "vision_learning_rate",
    "weight_decay", "warmup_steps", "max_grad_norm", "mixed_precision",
)


def parse_args(dataclass_types, argv=None, defaults: dict | None = None) -> tuple:
    """The dataclasses filled from `defaults` (a preset) < `--config FILE` (YAML or JSON) < the flags in `argv`."""
    parser = HfArgumentParser(dataclass_types)
    if defaults:
        parser.set_defaults(**defaults)
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" in argv:
        index = argv.index("--config")
        path = argv[index + 1]
        del argv[index : index + 2]
        with open(path) as f:
            if path.endswith((".yaml", ".yml")):
                values = yaml.safe_load(f) or {}
            else:
                values = json.load(f)
        known = {name for dc in parser.dataclass_types for name in dc.__dataclass_fields__}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown keys in {path}: {unknown}")
        parser.set_defaults(**values)
    return tuple(parser.parse_args_into_dataclasses(args=argv))
