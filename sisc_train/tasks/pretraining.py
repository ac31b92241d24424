"""Pretrain SISC with Accelerate: regulated ITC (SRCL) + ITM + MLM, optional frozen teacher with an alpha schedule.

    accelerate launch train/pretrain.py [--config FILE.yaml|json] [--key value ...]

With no arguments this is the repository's main job: it builds (or loads from cache) the embedded shapes dataset,
trains the small default model on the CPU for a few minutes, evaluates zero-shot retrieval on the held-out split
and saves a checkpoint (safetensors, config, processor, code, model card) to `--output_dir`.

Train a teacher with plain InfoNCE on the clean split, then the student with it:

    accelerate launch train/pretrain.py --loss infonce --train_split annotated --output_dir outputs/teacher
    accelerate launch train/pretrain.py --teacher outputs/teacher --output_dir outputs/student

Nothing is lost: the model is saved before the final evaluation (whose unreadable items are left out and counted);
an output folder holding another run is refused unless --resume_from_checkpoint or --overwrite_output_dir is given;
a checkpoint (`checkpoints/step_N`, every --checkpointing_steps, the newest --save_total_limit kept) is written under
a temporary name and renamed when complete, and records the training settings, which a resume must share;
Ctrl-C / SIGTERM saves a checkpoint after the current step and exits; a non-finite loss or gradient stops the run
before the optimizer applies it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field


import torch
from accelerate import Accelerator
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedDataParallelKwargs,
    ProjectConfiguration,
    set_seed,
)
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoProcessor, HfArgumentParser, get_cosine_schedule_with_warmup

from configuration_sisc import SiscConfig
from modeling_sisc import SiscForPreTraining, SiscModel
from processing_sisc import build_default_processor
from sisc_train.data.pairs import (
    CAPTION_COLUMNS,
    IMAGE_COLUMNS,
    PairCollator,
    SkipCounter,
    check_caption_vocabulary,
    has_own_splits,
    load_pairs,
    missing_split,
    pop_bookkeeping,
)
from sisc_train.data.pairs import BadEvaluationData
from sisc_train.evaluation.retrieval import skip_report
from sisc_train.loop.launch import check_launch

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Start from this SISC checkpoint; default: the small model from scratch."}
    )
    loss: str = field(default="srcl", metadata={"help": "Contrastive loss: 'srcl' (regulated) or 'infonce'."})
    weight_norm: str = field(default="mean", metadata={"help": "Weight normalisation: 'mean' or 'softmax'."})
    delta: float = field(
        default=8.0, metadata={"help": "Scaling factor delta of w = Norm(delta / s); a sharpness with --weight_norm softmax."}
    )
    removal_threshold: float | None = field(
        default=None, metadata={"help": "Paper sec. 4.3 heuristic: drop negatives whose weight is below this."}
    )
    alpha_start: float = field(default=1.0, metadata={"help": "Teacher share of the mixed similarity at step 0."})
    alpha_end: float = field(default=0.0, metadata={"help": "Teacher share at the end of the alpha schedule."})
    alpha_steps: int | None = field(default=None, metadata={"help": "Length of the alpha schedule (default: all steps)."})
    alpha_schedule: str = field(default="linear", metadata={"help": "'linear', 'cosine' or 'constant'."})
    teacher: str | None = field(default=None, metadata={"help": "Frozen teacher checkpoint (a SISC model)."})
    teacher_cache: str | None = field(
        default=None, metadata={"help": "Precomputed teacher embeddings (train/cache_teacher.py) instead of running it."}
    )
    mlm_loss_weight: float | None = field(
        default=None, metadata={"help": "Weight of the MLM loss (0 switches it off; default: the config's)."}
    )
    itm_loss_weight: float | None = field(
        default=None, metadata={"help": "Weight of the ITM loss (0 switches it off; default: the config's)."}
    )
    momentum_distillation: bool = field(
        default=False, metadata={"help": "ALBEF's momentum encoder, queue and soft targets (new models only)."}
    )
    oracle_false_negatives: bool = field(
        default=False,
        metadata={"help": "Benchmark upper bound: never use pairs the dataset's ground truth marks as matching as negatives (shapes, 1 process)."},
    )
    image_size: int = field(default=64, metadata={"help": "Image size of the small default model."})
    hidden_size: int = field(default=128, metadata={"help": "Hidden size of the small default model."})
    max_length: int = field(default=32, metadata={"help": "Maximum caption length in tokens."})


@dataclass
class DataArguments:
    dataset: str = field(
        default="shapes",
        metadata={"help": "'shapes' (embedded dataset), a saved dataset folder, an imagefolder, or a json/jsonl/csv/parquet file."},
    )
    train_split: str = field(default="train", metadata={"help": "Split to train on ('annotated' = the clean split)."})
    eval_split: str | None = field(
        default="test",
        metadata={"help": "Held-out split evaluated at the end ('' = none); a data file has no such split: see --eval_dataset."},
    )
    validation_split: str | None = field(
        default=None, metadata={"help": "Split evaluated after every epoch; the best epoch's model is kept (--metric_for_best_model)."}
    )
    eval_dataset: str | None = field(
        default=None,
        metadata={"help": "A separate file/folder for evaluation when --dataset has no such split (a data file has none): "
                          "read whole, or its --eval_split when it has splits."},
    )
    validation_dataset: str | None = field(
        default=None,
        metadata={"help": "A separate file/folder for validation when --dataset has no such split (as --eval_dataset; "
                          "--validation_split defaults to 'validation' then)."},
    )
    image_root: str | None = field(default=None, metadata={"help": "Folder that relative image paths are under."})
    shapes_preset: str = field(default="default", metadata={"help": "Shapes dataset preset: 'default', 'low' or 'high'."})
    shapes_num_train: int | None = field(default=None, metadata={"help": "Override the number of shapes training images."})
    data_cache_dir: str = field(default="data_cache/shapes", metadata={"help": "Where the shapes dataset is cached."})
    image_column: str | None = field(
        default=None, metadata={"help": f"Image column (default: the first of {', '.join(IMAGE_COLUMNS)} present)."}
    )
    caption_column: str | None = field(
        default=None, metadata={"help": f"Caption column (default: the first of {', '.join(CAPTION_COLUMNS)} present)."}
    )
    streaming: bool = field(default=False, metadata={"help": "Stream the data (datasets.IterableDataset)."})
    num_workers: int = field(default=2, metadata={"help": "DataLoader worker processes decoding images."})
    max_bad_fraction: float = field(default=0.05, metadata={"help": "Fail when more than this fraction is unreadable."})


@dataclass
class PretrainArguments:
    output_dir: str = "outputs/sisc-small"
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Train into an --output_dir that holds another run: its checkpoints, logs, diagnostics and results.json are deleted first."},
    )
    seed: int = 42
    per_device_batch_size: int = 64
    # 6 epochs (936 steps, ~13 CPU minutes): at 2 the from-scratch towers spend a third of the run on the ln(N)
    # plateau, and retrieval R mean was 5.3 instead of ~39
    num_epochs: int = 6
    max_steps: int | None = field(default=None, metadata={"help": "Stop after this many optimiser steps."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Learning rate of text/fusion/heads."})
    vision_learning_rate: float | None = field(default=None, metadata={"help": "Vision tower learning rate (default: same)."})
    weight_decay: float = 0.01
    warmup_steps: int = 50
    max_grad_norm: float = 1.0
    gradient_accumulation_steps: int = 1
    mixed_precision: str = field(default="no", metadata={"help": "'no', 'bf16' or 'fp16' (Accelerate)."})
    logging_steps: int = 10
    diagnostics_steps: int = field(default=200, metadata={"help": "Save weight heat map + histogram every N steps."})
    checkpointing_steps: int | None = field(default=None, metadata={"help": "accelerator.save_state every N steps."})
    save_total_limit: int | None = field(
        default=None, metadata={"help": "Keep only the newest N step checkpoints (checkpoints/best is always kept)."}
    )
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "'latest' (the newest complete checkpoint of --output_dir) or a checkpoint folder."}
    )
    report_to: str = field(default="auto", metadata={"help": "Accelerate trackers: 'auto' (tensorboard if installed), 'none', ..."})
    eval_batch_size: int = 128
    metric_for_best_model: str = field(default="r_mean", metadata={"help": "Validation metric (higher is better) that picks the kept model."})
    rerank_k: int = field(default=0, metadata={"help": "Final evaluation also with ITM re-ranking of the top k (0: ITC only)."})
    push_to_hub: str | None = field(default=None, metadata={"help": "Hub repo id to push the final checkpoint to."})
    hub_private: bool = field(default=False, metadata={"help": "Create the Hub repo as private."})


def parse_args(argv=None, defaults: dict | None = None):
    """HfArgumentParser dataclasses; `defaults` (a trainer's own) < `--config FILE` (YAML or JSON) < flags."""
    parser = HfArgumentParser((ModelArguments, DataArguments, PretrainArguments))
    if defaults:
        parser.set_defaults(**defaults)
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" in argv:
        index = argv.index("--config")
        path = argv[index + 1]
        del argv[index : index + 2]
        with open(path) as f:
            if path.endswith((".yaml", ".yml")):
                import yaml

                values = yaml.safe_load(f) or {}
            else:
                values = json.load(f)
        known = {name for dc in parser.dataclass_types for name in dc.__dataclass_fields__}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown keys in {path}: {unknown}")
        parser.set_defaults(**values)
    return parser.parse_args_into_dataclasses(args=argv)


def build_model(model_args: ModelArguments, processor, total_steps: int) -> SiscForPreTraining:
    regulation = dict(
        contrastive_loss=model_args.loss,
        weight_norm=model_args.weight_norm,
        delta=model_args.delta,
        removal_threshold=model_args.removal_threshold,
        alpha_start=model_args.alpha_start,
        alpha_end=model_args.alpha_end,
        alpha_steps=model_args.alpha_steps if model_args.alpha_steps is not None else total_steps,
        alpha_schedule=model_args.alpha_schedule,
    )
    for name in ("mlm_loss_weight", "itm_loss_weight"):
        if getattr(model_args, name) is not None:
            regulation[name] = getattr(model_args, name)
    if model_args.momentum_distillation:
        regulation["use_momentum_distillation"] = True
    if model_args.model_name_or_path:
        model = SiscForPreTraining.from_pretrained(model_args.model_name_or_path, **regulation)
        if model.momentum_encoder is not None and not SiscConfig.from_pretrained(model_args.model_name_or_path).use_momentum_distillation:
            model.momentum_encoder.update(model.sisc, momentum=0.0)  # the checkpoint has none: start as a copy
        return model
    tokenizer = processor.tokenizer
    config = SiscConfig.small(
        vocab_size=len(tokenizer),
        image_size=model_args.image_size,
        hidden_size=model_args.hidden_size,
        pad_token_id=tokenizer.pad_token_id,
        cls_token_id=tokenizer.cls_token_id,
        sep_token_id=tokenizer.sep_token_id,
        mask_token_id=tokenizer.mask_token_id,
        **regulation,
    )
    return SiscForPreTraining(config)


def shapes_config_from_args(data_args: DataArguments):
    from sisc_train.synthetic.shapes import ShapesConfig

    overrides = {} if data_args.shapes_num_train is None else {"num_train": data_args.shapes_num_train}
    return ShapesConfig.preset(data_args.shapes_preset, **overrides)


def load_data(data_args: DataArguments):
    """(train rows, {split name: RetrievalSet} of the validation / eval splits, dataset description).

    Validation / eval data come from `--validation_dataset` / `--eval_dataset` when given, else from the splits of
    `--dataset`. A split the data does not have fails here, before training: a data file has only "train", and
    reading it as "test" would evaluate on the training rows."""
    from sisc_train.evaluation.retrieval import load_retrieval_set, shapes_retrieval_set

    # a separate file needs a split name to log and report its results under
    if data_args.validation_dataset and not data_args.validation_split:
        data_args.validation_split = "validation"
    if data_args.eval_dataset and not data_args.eval_split:
        data_args.eval_split = "test"
    wanted = {"validation": data_args.validation_split, "eval": data_args.eval_split}
    separate = {"validation": data_args.validation_dataset, "eval": data_args.eval_dataset}
    if wanted["validation"] and wanted["validation"] == wanted["eval"] and separate["validation"] != separate["eval"]:
        raise ValueError(f"--validation_split and --eval_split are both {wanted['eval']!r} but come from different data: "
                         "give them different names")
    from_dataset = list(dict.fromkeys(name for kind, name in wanted.items() if name and not separate[kind]))
    columns = dict(image_root=data_args.image_root, image_column=data_args.image_column, caption_column=data_args.caption_column)
    if data_args.dataset == "shapes":
        from sisc_train.synthetic.shapes import load_shapes_dataset

        splits = load_shapes_dataset(shapes_config_from_args(data_args), cache_dir=data_args.data_cache_dir)
        description = f"embedded shapes dataset, preset '{data_args.shapes_preset}'"
        for name in [data_args.train_split, *from_dataset]:
            if name not in splits:
                raise ValueError(f"the shapes dataset has no split {name!r}; it has {sorted(splits)}")
        train = load_pairs_from_split(splits[data_args.train_split], data_args.streaming)
        evaluation = {name: shapes_retrieval_set(splits[name], f"{description} ({name})") for name in from_dataset}
    else:
        for kind, name in wanted.items():
            problem = name and not separate[kind] and missing_split(data_args.dataset, name)
            if problem:
                instead = "skip the final evaluation" if kind == "eval" else "train without validation"
                raise ValueError(f"--{kind}_split {name!r}: {problem}. Pass a separate file/folder with --{kind}_dataset, "
                                 f"or --{kind}_split '' to {instead}")
        train = load_pairs(
            data_args.dataset,
            data_args.train_split,
            image_column=data_args.image_column,
            caption_column=data_args.caption_column,
            streaming=data_args.streaming,
            image_root=data_args.image_root,
        )
        description = f"{data_args.dataset} ({data_args.train_split})"
        evaluation = {name: load_retrieval_set(data_args.dataset, name, **columns) for name in from_dataset}
    for kind, source in separate.items():
        if source:  # read whole, or its own split of that name when it has splits
            split = wanted[kind] if has_own_splits(source) else None
            evaluation[wanted[kind]] = load_retrieval_set(source, split, **columns)
    return train, evaluation, description


def load_pairs_from_split(split, streaming: bool):
    import datasets

    ds = split.cast_column("image", datasets.Image(decode=False))
    return ds.to_iterable_dataset() if streaming else ds


def param_groups(model, learning_rate: float, vision_learning_rate: float, weight_decay: float) -> list[dict]:
    """AdamW groups of any SISC model: vision tower vs the rest (separate learning rates, as in the paper); no decay
    on norms and biases. Shared by every trainer."""
    groups = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        vision = ".sisc.vision_model." in f".{name}"  # also inside a wrapper (text_assignment.py)
        no_decay = param.dim() < 2 or "LayerNorm" in name or "layernorm" in name
        key = (vision, no_decay)
        if key not in groups:
            lr = vision_learning_rate if vision else learning_rate
            groups[key] = {"params": [], "lr": lr, "weight_decay": 0.0 if no_decay else weight_decay}
        groups[key]["params"].append(param)
    return list(groups.values())


def regulation_diagnostics(
    weights: torch.Tensor | None, relevance: torch.Tensor | None = None, image_ids: torch.Tensor | None = None
) -> dict[str, float]:
    """Mean / spread of the negatives' weights, fractions under 0.2 / 0.5 / 0.7, and true false negatives.

    Negatives are the off-diagonal pairs of different images (pairs of one image are not negatives at all)."""
    if weights is None:
        return {}
    off_diagonal = ~torch.eye(weights.shape[0], dtype=torch.bool, device=weights.device)
    if image_ids is not None:
        ids = image_ids.to(weights.device)
        off_diagonal &= ids.view(-1, 1) != ids.view(1, -1)
    negatives = weights[off_diagonal]
    stats = {
        "weights/mean": negatives.mean().item(),
        "weights/std": negatives.std().item() if negatives.numel() > 1 else 0.0,
        "weights/max": negatives.max().item() if negatives.numel() else 0.0,
    }
    for threshold in (0.2, 0.5, 0.7):
        stats[f"weights/frac_below_{threshold}"] = (negatives < threshold).float().mean().item()
    if relevance is not None:
        false_negatives = relevance.to(weights.device).bool() & off_diagonal
        stats["false_negatives/fraction_of_pairs"] = false_negatives.float().sum().item() / max(off_diagonal.sum().item(), 1)
        if false_negatives.any():
            stats["false_negatives/frac_weight_below_0.5"] = (weights[false_negatives] < 0.5).float().mean().item()
            stats["false_negatives/mean_weight"] = weights[false_negatives].mean().item()
    return stats


def local_block(weights: torch.Tensor | None, batch_size: int) -> torch.Tensor | None:
    """This process's own pairs in the global weight matrix: the main process's rows and columns come first."""
    return None if weights is None else weights[:batch_size, :batch_size]


def save_weight_plots(weights: torch.Tensor, path_prefix: str, step: int) -> None:
    """Heat map of one batch's weight matrix and a histogram of its negatives' weights (paper figs. 3b and 7)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = weights.detach().float().cpu()
    fig, (ax_map, ax_hist) = plt.subplots(1, 2, figsize=(10, 4))
    image = ax_map.imshow(w.numpy(), cmap="viridis")
    ax_map.set_title(f"regulation weights, step {step}")
    ax_map.set_xlabel("candidate image")
    ax_map.set_ylabel("anchor text")
    fig.colorbar(image, ax=ax_map)
    off_diagonal = ~torch.eye(w.shape[0], dtype=torch.bool)
    ax_hist.hist(w[off_diagonal].numpy(), bins=50)
    ax_hist.set_title("negative weights")
    ax_hist.set_xlabel("weight")
    fig.tight_layout()
    fig.savefig(f"{path_prefix}_step{step:06d}.png", dpi=80)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------
# the output folder and its checkpoints

# files that make a folder another run's output; --overwrite_output_dir deletes what a run writes besides the model
# files (which the new run's save replaces; they may also be this run's --model_name_or_path)
RUN_MARKERS = ("checkpoints", "model.safetensors", "results.json")
OVERWRITTEN = ("checkpoints", "logs", "diagnostics", "results.json")
PROGRESS_FILE = "sisc_progress.json"  # written last into a checkpoint: a checkpoint without it is incomplete
PARTIAL_SUFFIX = ".partial"


def prepare_output_dir(accelerator: Accelerator, args: "PretrainArguments") -> None:
    """Refuse to mix two runs in one output folder: a folder holding another run's model, results or checkpoints
    is only used to resume that run (--resume_from_checkpoint) or replaced (--overwrite_output_dir)."""
    folder = args.output_dir
    found = [name for name in RUN_MARKERS if os.path.exists(os.path.join(folder, name))]
    if args.overwrite_output_dir and args.resume_from_checkpoint and _resumes_from_inside(folder, args.resume_from_checkpoint):
        raise ValueError(
            f"--overwrite_output_dir deletes the checkpoints of {folder}, and --resume_from_checkpoint "
            f"{args.resume_from_checkpoint} wants to resume from one of them: pass only one of the two"
        )
    if found and not args.resume_from_checkpoint:
        if not args.overwrite_output_dir:
            raise FileExistsError(
                f"--output_dir {folder} holds another run ({', '.join(found)}): pass --resume_from_checkpoint latest "
                f"to continue it, --overwrite_output_dir to replace it, or choose another folder"
            )
        accelerator.wait_for_everyone()  # every process has looked before anything is deleted
        if accelerator.is_main_process:
            for name in OVERWRITTEN:
                path = os.path.join(folder, name)
                if os.path.isdir(path):
                    shutil.rmtree(path)
                elif os.path.exists(path):
                    os.remove(path)
            logger.warning("--overwrite_output_dir: deleted the previous run's %s in %s", ", ".join(OVERWRITTEN), folder)
    accelerator.wait_for_everyone()
    os.makedirs(folder, exist_ok=True)


def _resumes_from_inside(folder: str, resume: str) -> bool:
    if resume == "latest":
        return True
    folder, resume = os.path.realpath(folder), os.path.realpath(resume)
    return os.path.commonpath([folder, resume]) == folder


def checkpoint_steps(output_dir: str) -> list[tuple[int, str]]:
    """(step, folder) of the `checkpoints/step_N` folders, oldest first, complete or not."""
    folder = os.path.join(output_dir, "checkpoints")
    names = os.listdir(folder) if os.path.isdir(folder) else []
    steps = [(int(m.group(1)), os.path.join(folder, name)) for name in names if (m := re.fullmatch(r"step_(\d+)", name))]
    return sorted(steps)


def is_complete_checkpoint(path: str) -> bool:
    return os.path.isfile(os.path.join(path, PROGRESS_FILE))


def find_checkpoint(output_dir: str, resume: str) -> str:
    """The checkpoint folder that --resume_from_checkpoint names: a folder, or 'latest' (the newest complete
    `step_N` of `output_dir`; incomplete ones, left by a run killed while writing them, are skipped with a warning)."""
    if resume != "latest":
        if not os.path.isdir(resume):
            raise FileNotFoundError(f"--resume_from_checkpoint {resume!r} is not a folder")
        if not is_complete_checkpoint(resume):
            raise ValueError(
                f"--resume_from_checkpoint {resume!r} is not a complete checkpoint (it has no {PROGRESS_FILE}: the run "
                f"stopped while writing it); resume from an earlier one or 'latest'"
            )
        return resume
    folder = os.path.join(output_dir, "checkpoints")
    for name in sorted(os.listdir(folder) if os.path.isdir(folder) else []):
        if name.endswith(PARTIAL_SUFFIX):
            logger.warning("ignoring %s: a checkpoint the run stopped writing", os.path.join(folder, name))
    for step, path in reversed(checkpoint_steps(output_dir)):
        if is_complete_checkpoint(path):
            return path
        logger.warning("skipping %s: an incomplete checkpoint (no %s; the run stopped while writing it)", path, PROGRESS_FILE)
    raise FileNotFoundError(f"--resume_from_checkpoint latest: no complete checkpoint under {folder}")


def save_checkpoint(
    accelerator: Accelerator, output_dir: str, global_step: int, progress: dict | None = None, total_limit: int | None = None
) -> str:
    """`accelerator.save_state` into `<output_dir>/checkpoints/step_N`, atomically: every process writes into
    `step_N.partial`, the main process adds the progress file (`global_step` and `progress`) last and renames the
    folder, so a folder named `step_N` is always complete. Then only the newest `total_limit` step checkpoints are
    kept (`checkpoints/best` is not one of them). Returns the folder."""
    final = os.path.join(output_dir, "checkpoints", f"step_{global_step}")
    partial = final + PARTIAL_SUFFIX
    if accelerator.is_main_process and os.path.exists(partial):
        shutil.rmtree(partial)  # left by a run killed while writing it
    accelerator.wait_for_everyone()
    accelerator.save_state(partial)  # every process: each writes its own RNG state
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with open(os.path.join(partial, PROGRESS_FILE), "w") as f:
            json.dump({"global_step": global_step, **(progress or {})}, f, indent=1)
        replace_folder(partial, final)
        if total_limit:
            for _, old in checkpoint_steps(output_dir)[:-total_limit]:
                if is_complete_checkpoint(old):
                    shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def replace_folder(source: str, target: str) -> None:
    """Rename `source` to `target`, replacing an older `target` (the same step saved again by a resumed run)."""
    if os.path.exists(target):
        shutil.rmtree(target)
    os.replace(source, target)


def read_progress(checkpoint: str) -> dict:
    with open(os.path.join(checkpoint, PROGRESS_FILE)) as f:
        return json.load(f)


# what a resumed run must share with the run that wrote the checkpoint: the model, the objective, the data order
# and the optimisation schedule (the total steps stand for --num_epochs / --max_steps)
RESUME_SETTINGS = {
    "model": (
        "model_name_or_path", "loss", "weight_norm", "delta", "removal_threshold", "alpha_start", "alpha_end",
        "alpha_steps", "alpha_schedule", "teacher", "teacher_cache", "mlm_loss_weight", "itm_loss_weight",
        "momentum_distillation", "oracle_false_negatives", "image_size", "hidden_size", "max_length",
    ),
    "data": ("dataset", "train_split", "shapes_preset", "shapes_num_train", "image_column", "caption_column", "streaming"),
    "training": (
        "seed", "per_device_batch_size", "gradient_accumulation_steps", "learning_rate", "vision_learning_rate",
        "weight_decay", "warmup_steps", "max_grad_norm", "mixed_precision",
    ),
}


def run_settings(model_args, data_args, args, total_steps: int, num_processes: int) -> dict:
    values = {}
    for names, source in zip(RESUME_SETTINGS.values(), (model_args, data_args, args)):
        values.update({name: getattr(source, name) for name in names})
    return {**values, "total_steps": total_steps, "num_processes": num_processes}


def check_resume_settings(checkpoint: str, saved: dict | None, current: dict) -> None:
    """Refuse to resume a checkpoint written with other training settings (listed), which would silently mix two
    runs (another learning rate or schedule, other data)."""
    if saved is None:
        logger.warning("%s records no training settings (an older checkpoint): they are not checked", checkpoint)
        return
    # JSON turned the saved tuples into lists; compare like with like
    derived = ("total_steps", "num_processes")  # not flags of their own
    differences = [
        f"{name if name in derived else '--' + name} {saved.get(name)!r} in the checkpoint, {value!r} now"
        for name, value in json.loads(json.dumps(current)).items()
        if saved.get(name) != value
    ]
    if differences:
        raise ValueError(
            f"cannot resume from {checkpoint}: it was written with other training settings: {'; '.join(differences)}. "
            f"Resume with the settings of that run, or start a new run (another --output_dir, or --overwrite_output_dir)"
        )


# ---------------------------------------------------------------------------------------------------------------
# stopping cleanly


class StopSignals:
    """While training, SIGINT (Ctrl-C) and SIGTERM ask to stop after the current optimizer step, with a checkpoint;
    a second one stops at once. The previous handlers are restored on exit. (Python allows handlers in the main
    thread only; elsewhere the signals keep their usual effect.)"""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, verbose: bool = True):
        self.received: int | None = None
        self.verbose = verbose
        self._previous: dict = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.received is not None:  # the second one: stop now
            self.__exit__()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        self.received = signum
        if self.verbose:
            print(
                f"\n{signal.Signals(signum).name}: stopping after this step with a checkpoint (send it again to stop at once)",
                file=sys.stderr, flush=True,
            )


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers leave SIGINT / SIGTERM to the training process, which stops them after saving: a worker
    that died on Ctrl-C would fail the step still in progress."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def stop_with_checkpoint(accelerator: Accelerator, signals: StopSignals, step: int, checkpoint: str) -> None:
    name = signal.Signals(signals.received).name if signals.received else "a signal to another process"
    accelerator.end_training()  # flush the trackers
    accelerator.print(
        f"\nstopped by {name} after step {step}; the checkpoint is {checkpoint}. Resume with the same arguments and "
        f"--resume_from_checkpoint latest (or {checkpoint})", file=sys.stderr,
    )
    raise SystemExit(128 + (signals.received or signal.SIGTERM))


@contextlib.contextmanager
def checkpoint_on_bad_data(checkpoint):
    """Too much unreadable validation data stops the run, but not before the training so far is saved."""
    try:
        yield
    except BadEvaluationData as error:
        path = checkpoint()
        raise BadEvaluationData(
            f"{error}\nThe training so far is saved in {path}: fix the data (or raise --max_bad_fraction) and resume "
            f"with --resume_from_checkpoint latest"
        ) from error


# ---------------------------------------------------------------------------------------------------------------
# divergence


class TrainingDiverged(RuntimeError):
    """The loss or the gradients are not finite: training stopped before the optimizer applied them."""


def detached_losses(outputs) -> dict:
    """The loss parts of one step, detached (no host sync; read only to report a divergence)."""
    return {name: getattr(outputs, name).detach() for name in ("loss", "loss_itc", "loss_itm", "loss_mlm")}


def format_losses(losses: dict | None) -> str:
    if not losses:
        return "no loss"
    value = {name: float(tensor) for name, tensor in losses.items()}
    return f"loss {value['loss']:.4g} (itc {value['loss_itc']:.4g}, itm {value['loss_itm']:.4g}, mlm {value['loss_mlm']:.4g})"


def measure_and_clip_gradients(accelerator: Accelerator, model, max_grad_norm: float | None):
    """The total gradient norm (clipped to `max_grad_norm` when set), or None with fp16, whose loss scaler skips
    steps with non-finite gradients by design."""
    if accelerator.scaler is not None:
        if max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
        return None
    return accelerator.clip_grad_norm_(model.parameters(), max_grad_norm or float("inf"))


def is_finite_step(accelerator: Accelerator, loss: torch.Tensor, grad_norm) -> bool:
    """Whether the loss and the gradient norm are finite, on every process. Costs one host sync per optimizer step
    (and one small all-reduce with several processes, whose losses differ): the price of never applying a
    non-finite update."""
    bad = ~torch.isfinite(loss.detach().float())
    if grad_norm is not None:
        bad = bad | ~torch.isfinite(torch.as_tensor(grad_norm, device=bad.device).float())
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad.float().to(accelerator.device), reduction="sum")
    return not bool(bad)


def stop_requested(accelerator: Accelerator, signals: StopSignals) -> bool:
    """Whether any process received a stop signal (one small all-reduce with several processes: a signal may reach
    only one of them, and they must stop together)."""
    flag = signals.received is not None
    if accelerator.num_processes > 1:
        flag = bool(accelerator.reduce(torch.tensor(float(flag), device=accelerator.device), reduction="sum"))
    return flag


def divergence(step: int, reason: str, losses: dict | None, grad_norm, scheduler, args, last_losses: dict | None = None) -> TrainingDiverged:
    rates = ", ".join(f"{lr:g}" for lr in sorted(set(scheduler.get_last_lr())))
    norm = "" if grad_norm is None else f", gradient norm {float(grad_norm):.4g}"
    previous = f" (step {step - 1}: {format_losses(last_losses)})" if last_losses else ""
    advice = (
        f"Start again with a lower --learning_rate (now {args.learning_rate:g}), a --max_grad_norm "
        f"(now {args.max_grad_norm:g}) or more --warmup_steps (now {args.warmup_steps})"
    )
    if args.mixed_precision == "fp16":
        advice += ", or --mixed_precision bf16 (fp16 overflows)"
    return TrainingDiverged(
        f"training diverged at step {step}: {reason}; {format_losses(losses)}{norm}{previous}; learning rate {rates}. "
        f"The optimizer did not apply it: the checkpoints written so far are finite and no final model was saved. "
        f"{advice}."
    )


def training_forward(model, batch: dict, extra: dict, step: int, scheduler, args, last_losses: dict | None):
    """The model's outputs on a batch. The model refuses non-finite similarities (in the regulation weights): the
    last update overflowed the weights, and the user gets the trainer's divergence error, with its context."""
    try:
        return model(
            input_ids=batch["input_ids"],
            pixel_values=batch["pixel_values"],
            attention_mask=batch["attention_mask"],
            image_ids=batch["image_ids"],
            **extra,
        )
    except ValueError as error:
        if "similarity must be finite" not in str(error):
            raise
        reason = "the model's similarities are not finite (the last update overflowed the weights)"
        raise divergence(step, reason, None, None, scheduler, args, last_losses) from error


def clip_and_check_gradients(accelerator: Accelerator, model, outputs, step: int, scheduler, args, last_losses: dict | None) -> None:
    """Clip the gradients to --max_grad_norm; raise TrainingDiverged when the loss or the gradient norm is not
    finite (called before optimizer.step(), so that such an update is never applied)."""
    grad_norm = measure_and_clip_gradients(accelerator, model, args.max_grad_norm)
    if not is_finite_step(accelerator, outputs.loss, grad_norm):
        losses = detached_losses(outputs)
        reason = "the gradient norm is not finite" if torch.isfinite(losses["loss"]) else "the loss is not finite"
        raise divergence(step, reason, losses, grad_norm, scheduler, args, last_losses)


def check_contrastive_batch(config, per_device_batch_size: int, num_processes: int) -> None:
    """A contrastive batch of one pair has no negatives: the ITC loss would be identically 0 (the queue of ALBEF's
    momentum distillation does bring negatives)."""
    if config.itc_loss_weight > 0 and not config.use_momentum_distillation and per_device_batch_size * num_processes < 2:
        raise ValueError(
            f"--per_device_batch_size {per_device_batch_size} x {num_processes} process(es) gives a contrastive batch of "
            f"one pair: it has no negatives, so the ITC loss is identically 0 and nothing is learned from it; use a "
            f"batch of at least 2 pairs"
        )


def progress_of(skips: SkipCounter, validation: "Validation", history: list) -> dict:
    """What a checkpoint keeps besides Accelerate's state, so that a resumed run reports the whole run."""
    return {
        "skips": {"seen": skips.seen, "skipped": skips.skipped, "reasons": dict(skips.reasons)},
        "validation": {"best": validation.best, "history": validation.history},
        "history": history,
    }


def restore_progress(state: dict, skips: SkipCounter, validation: "Validation", history: list) -> None:
    if "skips" in state:
        skips.update(**state["skips"])
    if "validation" in state:
        validation.restore(state["validation"])
    history.extend(state.get("history", []))


def main(argv=None, defaults: dict | None = None, fine_tuned_for: str | None = None) -> dict:
    """Parse the arguments and train. `defaults` and `fine_tuned_for` let a fine-tuning script reuse this trainer."""
    try:
        return run(*parse_args(argv, defaults), fine_tuned_for=fine_tuned_for)
    finally:
        reset_accelerate_state()


def reset_accelerate_state() -> None:
    """Accelerate's process state is a singleton: every script's main() resets it on the way out, so that another
    main() can run in this process with other settings (tests, benchmarks comparing objectives)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def run(model_args: ModelArguments, data_args: DataArguments, args: PretrainArguments, fine_tuned_for: str | None = None) -> dict:
    job = "finetune" if fine_tuned_for else "pretrain"
    log_with = None
    if args.report_to == "auto":
        try:
            import tensorboard  # noqa: F401

            log_with = "tensorboard"
        except ImportError:
            log_with = None
    elif args.report_to != "none":
        log_with = args.report_to.split(",")
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=log_with,
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, "logs")),
        # dispatch_batches=False: every process reads its own shard (batches carry non-tensor bookkeeping)
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed, dispatch_batches=False),
        # a switched-off loss leaves its head without gradients, which DDP must be told about
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=0 in (model_args.mlm_loss_weight, model_args.itm_loss_weight))],
    )
    check_launch(accelerator)
    if model_args.oracle_false_negatives and (data_args.dataset != "shapes" or accelerator.num_processes > 1):
        raise ValueError("--oracle_false_negatives needs the embedded shapes dataset (its ground truth) and one process")
    set_seed(args.seed)
    prepare_output_dir(accelerator, args)
    if args.push_to_hub and accelerator.is_main_process:
        from sisc_train.publishing.hub import check_hub_token

        if check_hub_token() is None:
            logger.warning(
                "--push_to_hub %s: no Hugging Face token found (run `hf auth login` or set HF_TOKEN); the push at the "
                "end will fail, after the checkpoint is saved locally", args.push_to_hub,
            )

    processor = (
        AutoProcessor.from_pretrained(model_args.model_name_or_path, trust_remote_code=True)
        if model_args.model_name_or_path
        else build_default_processor(image_size=model_args.image_size, max_length=model_args.max_length)
    )
    with accelerator.main_process_first():
        train_rows, eval_sets, data_description = load_data(data_args)
    if data_args.validation_split:
        check_metric_name(args.metric_for_best_model, eval_sets[data_args.validation_split])

    teacher = None
    if model_args.teacher:
        teacher = SiscModel.from_pretrained(model_args.teacher)
        teacher.requires_grad_(False).eval().to(accelerator.device)
    passthrough = ()
    if model_args.teacher_cache:
        from sisc_train.tasks.teacher_cache import EMBEDDING_COLUMNS, attach_teacher_cache, load_teacher_cache

        cache = load_teacher_cache(model_args.teacher_cache, train_rows, teacher)
        train_rows = attach_teacher_cache(train_rows, cache)
        passthrough, teacher = EMBEDDING_COLUMNS, None  # the cache replaces the online teacher
    relevance_fn = None
    if data_args.dataset == "shapes":
        from sisc_train.synthetic.shapes import batch_relevance as relevance_fn
    collator = PairCollator(processor, passthrough=passthrough, relevance_fn=relevance_fn)
    loader = DataLoader(
        train_rows,
        batch_size=args.per_device_batch_size,
        shuffle=not data_args.streaming,
        drop_last=True,  # equal batch sizes on every process: the global contrastive batch is gathered
        num_workers=data_args.num_workers,
        collate_fn=collator,
        persistent_workers=data_args.num_workers > 0,
        worker_init_fn=ignore_stop_signals,  # Ctrl-C is the training process's to handle (a checkpoint first)
        # its own generator: starting an epoch's iterator must not draw from the global RNG, or a resumed run's
        # masking / hard-negative sampling would drift from an uninterrupted one
        generator=torch.Generator().manual_seed(args.seed),
    )
    # before any training step: stop on captions the vocabulary cannot read (all [UNK]), warn on poorly read ones
    check_caption_vocabulary(train_rows, processor.tokenizer)
    if data_args.streaming:
        steps_per_epoch = None
        total_steps = args.max_steps
        if total_steps is None:
            raise ValueError("--streaming needs --max_steps (the length of a stream is unknown)")
    else:
        steps_per_epoch = len(train_rows) // (args.per_device_batch_size * accelerator.num_processes)
        steps_per_epoch = max(steps_per_epoch // args.gradient_accumulation_steps, 1)
        total_steps = args.max_steps or steps_per_epoch * args.num_epochs
    model = build_model(model_args, processor, total_steps)
    check_contrastive_batch(model.config, args.per_device_batch_size, accelerator.num_processes)

    optimizer = torch.optim.AdamW(
        param_groups(model, args.learning_rate, args.vision_learning_rate or args.learning_rate, args.weight_decay)
    )
    scheduler = get_cosine_schedule_with_warmup(optimizer, args.warmup_steps, total_steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    global_step, start_epoch, skip_batches, resumed = 0, 0, 0, {}
    settings = run_settings(model_args, data_args, args, total_steps, accelerator.num_processes)
    if args.resume_from_checkpoint:
        resume_path = find_checkpoint(args.output_dir, args.resume_from_checkpoint)
        resumed = read_progress(resume_path)
        check_resume_settings(resume_path, resumed.get("settings"), settings)
        accelerator.load_state(resume_path)
        global_step = resumed["global_step"]
        if steps_per_epoch:
            start_epoch = global_step // steps_per_epoch
            skip_batches = (global_step % steps_per_epoch) * args.gradient_accumulation_steps
        accelerator.print(f"resumed from {resume_path} at step {global_step}")

    if accelerator.is_main_process:
        tracker_config = {**asdict(model_args), **asdict(data_args), **asdict(args)}
        accelerator.init_trackers(f"sisc-{job}", {k: v for k, v in tracker_config.items() if isinstance(v, (int, float, str, bool))})
    config = accelerator.unwrap_model(model).config
    skips = SkipCounter(max_bad_fraction=data_args.max_bad_fraction)
    progress = tqdm(total=total_steps, initial=global_step, disable=not accelerator.is_local_main_process, desc=job)
    plots_dir = os.path.join(args.output_dir, "diagnostics")
    last_logs: dict[str, float] = {}
    history: list[dict] = []
    started = time.time()
    epoch = start_epoch
    validation = Validation(args, data_args, eval_sets, processor, accelerator)
    restore_progress(resumed, skips, validation, history)
    saved_step, saved_path = None, None

    def checkpoint() -> str:
        """The checkpoint of the last completed step (written once per step)."""
        nonlocal saved_step, saved_path
        if saved_step != global_step:
            progress_state = {"settings": settings, **progress_of(skips, validation, history)}
            saved_path = save_checkpoint(accelerator, args.output_dir, global_step, progress_state, args.save_total_limit)
            saved_step = global_step
        return saved_path

    if resumed and steps_per_epoch and global_step % steps_per_epoch == 0 and global_step < total_steps:
        # a checkpoint of an epoch's last step is written before that epoch's validation: catch up on it
        with checkpoint_on_bad_data(checkpoint):
            validation.run(accelerator.unwrap_model(model), epochs_done(global_step, steps_per_epoch, epoch), global_step)
    model.train()
    last_losses = None
    with StopSignals(verbose=accelerator.is_local_main_process) as signals:
        while global_step < total_steps:
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch)
            epoch_loader = accelerator.skip_first_batches(loader, skip_batches) if skip_batches else loader
            skip_batches = 0
            for batch in epoch_loader:
                seen, skipped, reasons, relevance = pop_bookkeeping(batch)
                skips.update(seen, skipped, reasons)
                alpha = config.alpha_at(global_step)
                extra = {}
                if teacher is not None:
                    with torch.no_grad():
                        extra["teacher_image_embeds"] = teacher.get_image_features(batch["pixel_values"])
                        extra["teacher_text_embeds"] = teacher.get_text_features(batch["input_ids"], batch["attention_mask"])
                elif "teacher_image_embeds" in batch:
                    extra["teacher_image_embeds"] = batch["teacher_image_embeds"]
                    extra["teacher_text_embeds"] = batch["teacher_text_embeds"]
                uses_teacher = bool(extra)
                if uses_teacher:
                    extra["alpha"] = alpha
                if model_args.oracle_false_negatives:
                    extra["false_negative_mask"] = relevance
                with accelerator.accumulate(model):
                    outputs = training_forward(model, batch, extra, global_step + 1, scheduler, args, last_losses)
                    accelerator.backward(outputs.loss)
                    if accelerator.sync_gradients:
                        # before optimizer.step(): a non-finite loss or gradient never reaches the weights
                        clip_and_check_gradients(accelerator, model, outputs, global_step + 1, scheduler, args, last_losses)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                if not accelerator.sync_gradients:
                    continue
                global_step += 1
                last_losses = detached_losses(outputs)
                progress.update(1)
                if global_step % args.logging_steps == 0 or global_step == total_steps:
                    logs = {
                        "loss": outputs.loss.item(),
                        "loss_itc": outputs.loss_itc.item(),
                        "loss_itm": outputs.loss_itm.item(),
                        "loss_mlm": outputs.loss_mlm.item(),
                        "alpha": alpha if uses_teacher else 0.0,
                        "temperature": 1.0 / accelerator.unwrap_model(model).sisc.logit_scale_value().item(),
                        "lr": scheduler.get_last_lr()[-1],
                        "epoch": epoch,
                        **regulation_diagnostics(
                            local_block(outputs.weights_t2i, len(batch["input_ids"])), relevance, batch["image_ids"]
                        ),
                    }
                    accelerator.log(logs, step=global_step)
                    progress.set_postfix(loss=f"{logs['loss']:.3f}", itc=f"{logs['loss_itc']:.3f}")
                    last_logs = logs
                    history.append({"step": global_step, **{k: v for k, v in logs.items() if k not in ("lr", "epoch")}})
                if (
                    accelerator.is_main_process
                    and outputs.weights_t2i is not None
                    and (global_step % args.diagnostics_steps == 0 or global_step == total_steps)
                ):
                    os.makedirs(plots_dir, exist_ok=True)
                    save_weight_plots(outputs.weights_t2i, os.path.join(plots_dir, "weights"), global_step)
                if args.checkpointing_steps and global_step % args.checkpointing_steps == 0:
                    checkpoint()
                if stop_requested(accelerator, signals):  # after a whole optimizer step, never within one
                    stop_with_checkpoint(accelerator, signals, global_step, checkpoint())
                if global_step >= total_steps:
                    break
            else:
                epoch += 1
                skips.check()
                accelerator.print(f"epoch {epoch}: {skips.report()}")
                with checkpoint_on_bad_data(checkpoint):
                    validation.run(accelerator.unwrap_model(model), epochs_done(global_step, steps_per_epoch, epoch), global_step)
                if stop_requested(accelerator, signals):  # a signal during the validation: stop before the next epoch
                    stop_with_checkpoint(accelerator, signals, global_step, checkpoint())
                continue
            break
    progress.close()
    skips.check()
    train_seconds = time.time() - started

    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    with checkpoint_on_bad_data(checkpoint):
        validation.run(unwrapped, epochs_done(global_step, steps_per_epoch, epoch), global_step)  # no-op when just validated
    validation.restore_best(unwrapped)
    summary = {
        "metrics": {},
        "rerank_k": args.rerank_k or None,
        "rerank_metrics": None,
        "eval_split": data_args.eval_split or None,
        "eval_timing": None,
        "eval_skipped": None,
        "validation_split": data_args.validation_split,
        "best_model": validation.best if data_args.validation_split else None,
        "validation_history": validation.history,
        "train_seconds": round(train_seconds, 1),
        "global_step": global_step,
        "skipped_samples": skips.skipped,
        "seen_samples": skips.seen,
        "skip_reasons": dict(skips.reasons),
        "last_logs": last_logs,
        "history": history,
    }

    def write_results() -> None:
        with open(os.path.join(args.output_dir, "results.json"), "w") as f:
            json.dump(summary, f, indent=2)
        write_card(
            args, model_args, data_args, unwrapped.config, summary["metrics"], data_description, len_or_none(train_rows),
            rerank_metrics=summary["rerank_metrics"], fine_tuned_for=fine_tuned_for,
        )

    # the trained model is saved before the final evaluation, which reads data that may be bad
    if accelerator.is_main_process:
        unwrapped.save_pretrained(args.output_dir)
        processor.save_pretrained(args.output_dir)
        write_results()
    accelerator.wait_for_everyone()
    if data_args.eval_split:
        from sisc_train.evaluation.retrieval import evaluate_retrieval

        try:
            results = evaluate_retrieval(
                unwrapped.sisc, processor, eval_sets[data_args.eval_split], rerank_k=args.rerank_k,
                image_batch_size=args.eval_batch_size, accelerator=accelerator, max_bad_fraction=data_args.max_bad_fraction,
            )
        except BaseException:
            command = f"train/evaluate_retrieval.py --model {args.output_dir} --data {data_args.dataset} --split {data_args.eval_split}"
            accelerator.print(
                f"\nthe final evaluation did not finish; the trained model is saved in {args.output_dir} (evaluate it "
                f"again with {command}{' --image_root ' + data_args.image_root if data_args.image_root else ''})",
                file=sys.stderr,
            )
            raise
        summary.update(
            metrics=results["itc"], rerank_metrics=results.get(f"itm_top{args.rerank_k}"), eval_timing=results["timing"],
            eval_skipped=results.get("skipped"),
        )
        if accelerator.is_main_process:
            write_results()
    metrics, rerank_metrics = summary["metrics"], summary["rerank_metrics"]
    if accelerator.is_main_process:
        print_summary(metrics, rerank_metrics, args, train_seconds, skips, validation, summary["eval_skipped"])
    accelerator.end_training()
    if args.push_to_hub and accelerator.is_main_process:
        from sisc_train.publishing.hub import push_checkpoint

        # after the local save: a failed push (no token, no network) loses nothing and says how to retry
        url = push_checkpoint(args.output_dir, args.push_to_hub, private=args.hub_private)
        print(f"pushed to {url}")
    return {"metrics": metrics, "rerank_metrics": rerank_metrics, "global_step": global_step, "best_model": validation.best}


def epochs_done(global_step: int, steps_per_epoch: int | None, epoch: int) -> float:
    """Epochs completed so far (fractional when training stopped mid-epoch; the epoch count for streams)."""
    return round(global_step / steps_per_epoch, 2) if steps_per_epoch else epoch


def len_or_none(rows):
    try:
        return len(rows)
    except TypeError:
        return None


def write_card(args, model_args, data_args, config, metrics, data_description, num_pairs, *, rerank_metrics=None, fine_tuned_for=None) -> None:
    from sisc_train.publishing.model_card import render_model_card

    hyperparameters = {
        "per_device_batch_size": args.per_device_batch_size,
        "learning_rate": args.learning_rate,
        "vision_learning_rate": args.vision_learning_rate or args.learning_rate,
        "weight_decay": args.weight_decay,
        "warmup_steps": args.warmup_steps,
        "num_epochs": args.num_epochs,
        "max_steps": args.max_steps,
        "mixed_precision": args.mixed_precision,
        "seed": args.seed,
    }
    if data_args.validation_split:
        hyperparameters["model_selection"] = f"best {args.metric_for_best_model} on the {data_args.validation_split} split"
    render_model_card(
        args.output_dir,
        model_config=config.to_dict(),
        metrics=metrics,
        dataset_name=data_args.dataset,
        dataset_description=data_description,
        num_train_pairs=num_pairs,
        hyperparameters=hyperparameters,
        base_model=model_args.model_name_or_path,
        teacher=model_args.teacher or model_args.teacher_cache,
        eval_split=data_args.eval_split or "none",
        eval_dataset_name=data_args.eval_dataset,
        rerank_metrics=rerank_metrics,
        rerank_k=args.rerank_k or None,
        fine_tuned_for=fine_tuned_for,
        repo_id=args.push_to_hub,
    )


def print_summary(
    metrics, rerank_metrics, args, seconds: float, skips: SkipCounter, validation: "Validation", eval_skipped: dict | None = None
) -> None:
    print(f"\ntrained in {seconds:.0f} s; {skips.report()}")
    if validation.best["step"] is not None:
        best = validation.best
        print(f"kept the model of epoch {best['epoch']:g} (step {best['step']}): {best['metric']} = {best['value']:.2f}")
    if metrics:
        from sisc_train.evaluation.retrieval import format_table

        modes = {"itc": metrics, **({f"itm_top{args.rerank_k}": rerank_metrics} if rerank_metrics else {})}
        print("retrieval on the held-out split:")
        if skip_report(eval_skipped):
            print(f"  ({skip_report(eval_skipped)}; the metrics are those of the readable items)")
        print(format_table(modes))
    print(f"checkpoint saved to {args.output_dir}")


def check_metric_name(name: str, data) -> None:
    """Fail before training, not after it, when --metric_for_best_model is not a metric of this data."""
    from sisc_train.evaluation.retrieval_metrics import retrieval_metrics

    relevance = None if data.relevance is None else [[True, False], [False, True]]
    known = retrieval_metrics([[1.0, 0.0], [0.0, 1.0]], [0, 1], relevance)
    if name not in known:
        raise ValueError(f"--metric_for_best_model {name!r} is not a retrieval metric of this data; choose one of {sorted(known)}")


class Validation:
    """Retrieval on the validation split after each epoch; the best model so far is saved under
    `<output_dir>/checkpoints/best` and restored at the end of training. Does nothing without a validation split."""

    def __init__(self, args: PretrainArguments, data_args: DataArguments, eval_sets: dict, processor, accelerator):
        self.data = eval_sets.get(data_args.validation_split) if data_args.validation_split else None
        self.metric = args.metric_for_best_model
        self.batch_size = args.eval_batch_size
        self.max_bad_fraction = data_args.max_bad_fraction
        self.processor, self.accelerator = processor, accelerator
        self.folder = os.path.join(args.output_dir, "checkpoints", "best")
        self.best = {"metric": self.metric, "value": None, "epoch": None, "step": None}
        self.history: list[dict] = []

    def run(self, model: SiscForPreTraining, epoch: int, step: int) -> None:
        if self.data is None or (self.history and self.history[-1]["step"] == step):
            return
        from sisc_train.evaluation.retrieval import evaluate_retrieval

        results = evaluate_retrieval(
            model.sisc, self.processor, self.data, image_batch_size=self.batch_size, accelerator=self.accelerator,
            max_bad_fraction=self.max_bad_fraction,
        )
        metrics = results["itc"]
        value = metrics[self.metric]
        if skip_report(results.get("skipped")):
            self.accelerator.print(f"validation data: {skip_report(results['skipped'])}")
        self.history.append({"epoch": epoch, "step": step, **metrics})
        self.accelerator.log({f"validation/{key}": v for key, v in metrics.items()}, step=step)
        improved = self.best["value"] is None or value > self.best["value"]  # NaN never improves
        self.accelerator.print(f"validation after epoch {epoch:g} (step {step}): {self.metric} = {value:.2f}" + (" (best so far)" if improved else ""))
        if improved:
            self.best.update(value=value, epoch=epoch, step=step)
            if self.accelerator.is_main_process:  # written aside, then renamed: a kill never leaves half a model
                partial = self.folder + PARTIAL_SUFFIX
                model.save_pretrained(partial)
                with open(os.path.join(partial, self.STEP_FILE), "w") as f:
                    json.dump({"step": step}, f)
                replace_folder(partial, self.folder)
            self.accelerator.wait_for_everyone()

    STEP_FILE = "sisc_best_step.json"

    def restore(self, state: dict) -> None:
        """The best model and history of a resumed run (from its checkpoint), if `checkpoints/best` still holds that
        model (not when resuming into another folder, or from a checkpoint older than a later best model)."""
        self.history = list(state["history"])
        self.best = dict(state["best"])
        if self.best["step"] is None:
            return
        try:
            with open(os.path.join(self.folder, self.STEP_FILE)) as f:
                saved_step = json.load(f)["step"]
        except (OSError, ValueError, KeyError):
            saved_step = None
        if saved_step != self.best["step"]:
            logger.warning(
                "the best model so far (step %s) is not in %s: the model selection starts again from the resumed step",
                self.best["step"], self.folder,
            )
            self.best = {"metric": self.metric, "value": None, "epoch": None, "step": None}

    def restore_best(self, model: SiscForPreTraining) -> None:
        """Load the kept weights back into `model` (on every process)."""
        if self.best["step"] is None or self.history[-1]["step"] == self.best["step"]:
            return  # the current weights are the best ones
        best = type(model).from_pretrained(self.folder)
        model.load_state_dict(best.state_dict())
        self.accelerator.print(f"restored the best model (epoch {self.best['epoch']:g}, step {self.best['step']})")


if __name__ == "__main__":
    main()
