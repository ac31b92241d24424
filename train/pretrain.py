"""Pretrain SISC with Accelerate: regulated ITC (SRCL) + ITM + MLM, optional frozen teacher with an alpha schedule.

    accelerate launch train/pretrain.py [--config FILE.yaml|json] [--key value ...]

With no arguments this is the repository's main job: it builds (or loads from cache) the embedded shapes dataset,
trains the small default model on the CPU for a few minutes, evaluates zero-shot retrieval on the held-out split
and saves a checkpoint (safetensors, config, processor, code, model card) to `--output_dir`.

Train a teacher with plain InfoNCE on the clean split, then the student with it:

    accelerate launch train/pretrain.py --loss infonce --train_split annotated --output_dir outputs/teacher
    accelerate launch train/pretrain.py --teacher outputs/teacher --output_dir outputs/student
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402
from transformers import AutoProcessor, HfArgumentParser, get_cosine_schedule_with_warmup  # noqa: E402

from configuration_sisc import SiscConfig  # noqa: E402
from modeling_sisc import SiscForPreTraining, SiscModel  # noqa: E402
from processing_sisc import build_default_processor  # noqa: E402
from train.data import PairCollator, SkipCounter, load_pairs, pop_bookkeeping  # noqa: E402



@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Start from this SISC checkpoint; default: the small model from scratch."}
    )
    loss: str = field(default="srcl", metadata={"help": "Contrastive loss: 'srcl' (regulated) or 'infonce'."})
    weight_norm: str = field(default="mean", metadata={"help": "Weight normalisation: 'mean' or 'softmax'."})
    delta: float = field(default=1.0, metadata={"help": "Scaling factor delta of w = Norm(delta / s)."})
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
    eval_split: str | None = field(default="test", metadata={"help": "Held-out split for zero-shot retrieval (shapes)."})
    shapes_preset: str = field(default="default", metadata={"help": "Shapes dataset preset: 'default', 'low' or 'high'."})
    shapes_num_train: int | None = field(default=None, metadata={"help": "Override the number of shapes training images."})
    data_cache_dir: str = field(default="data_cache/shapes", metadata={"help": "Where the shapes dataset is cached."})
    image_column: str = "image"
    caption_column: str = "caption"
    streaming: bool = field(default=False, metadata={"help": "Stream the data (datasets.IterableDataset)."})
    num_workers: int = field(default=2, metadata={"help": "DataLoader worker processes decoding images."})
    max_bad_fraction: float = field(default=0.05, metadata={"help": "Fail when more than this fraction is unreadable."})


@dataclass
class PretrainArguments:
    output_dir: str = "outputs/sisc-small"
    seed: int = 42
    per_device_batch_size: int = 64
    num_epochs: int = 2
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
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "'latest' or a checkpoint folder."})
    report_to: str = field(default="auto", metadata={"help": "Accelerate trackers: 'auto' (tensorboard if installed), 'none', ..."})
    eval_batch_size: int = 128


def parse_args(argv=None):
    """HfArgumentParser dataclasses; `--config FILE` (YAML or JSON) gives defaults that flags override."""
    parser = HfArgumentParser((ModelArguments, DataArguments, PretrainArguments))
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
    if model_args.model_name_or_path:
        return SiscForPreTraining.from_pretrained(model_args.model_name_or_path, **regulation)
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


def load_data(data_args: DataArguments):
    """(train rows, eval split or None, dataset description) for the chosen source."""
    if data_args.dataset == "shapes":
        from train.shapes_dataset import ShapesConfig, load_shapes_dataset

        presets = {
            "default": ShapesConfig,
            "low": ShapesConfig.low_false_negatives,
            "high": ShapesConfig.high_false_negatives,
        }
        if data_args.shapes_preset not in presets:
            raise ValueError(f"--shapes_preset must be one of {sorted(presets)}, got {data_args.shapes_preset!r}")
        shapes_config = presets[data_args.shapes_preset]()
        if data_args.shapes_num_train is not None:
            shapes_config.num_train = data_args.shapes_num_train
        splits = load_shapes_dataset(shapes_config, cache_dir=data_args.data_cache_dir)
        description = f"embedded shapes dataset, preset '{data_args.shapes_preset}'"
        train = load_pairs_from_split(splits[data_args.train_split], data_args.streaming)
        evaluation = splits[data_args.eval_split] if data_args.eval_split else None
        return train, evaluation, description
    train = load_pairs(
        data_args.dataset,
        data_args.train_split,
        image_column=data_args.image_column,
        caption_column=data_args.caption_column,
        streaming=data_args.streaming,
    )
    return train, None, f"{data_args.dataset} ({data_args.train_split})"


def load_pairs_from_split(split, streaming: bool):
    import datasets

    ds = split.cast_column("image", datasets.Image(decode=False))
    return ds.to_iterable_dataset() if streaming else ds


def param_groups(model: SiscForPreTraining, args: PretrainArguments):
    """AdamW groups: vision tower vs the rest (separate learning rates, as in the paper); no decay on norms/biases."""
    groups = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        vision = name.startswith("sisc.vision_model.")
        no_decay = param.dim() < 2 or "LayerNorm" in name or "layernorm" in name
        key = (vision, no_decay)
        if key not in groups:
            lr = (args.vision_learning_rate or args.learning_rate) if vision else args.learning_rate
            groups[key] = {"params": [], "lr": lr, "weight_decay": 0.0 if no_decay else args.weight_decay}
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


def find_checkpoint(output_dir: str, resume: str) -> str:
    if resume != "latest":
        if not os.path.isdir(resume):
            raise FileNotFoundError(f"--resume_from_checkpoint {resume!r} is not a folder")
        return resume
    folder = os.path.join(output_dir, "checkpoints")
    steps = sorted(
        (int(m.group(1)), name)
        for name in (os.listdir(folder) if os.path.isdir(folder) else [])
        if (m := re.fullmatch(r"step_(\d+)", name))
    )
    if not steps:
        raise FileNotFoundError(f"--resume_from_checkpoint latest: no checkpoint under {folder}")
    return os.path.join(folder, steps[-1][1])


def main(argv=None) -> dict:
    try:
        return run(*parse_args(argv))
    finally:
        # Accelerate's process state is a singleton: reset it so that main() can run again in this process with
        # other settings (tests, benchmarks comparing objectives).
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def run(model_args: ModelArguments, data_args: DataArguments, args: PretrainArguments) -> dict:
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
    )
    set_seed(args.seed)
    os.makedirs(args.output_dir, exist_ok=True)

    processor = (
        AutoProcessor.from_pretrained(model_args.model_name_or_path, trust_remote_code=True)
        if model_args.model_name_or_path
        else build_default_processor(image_size=model_args.image_size, max_length=model_args.max_length)
    )
    with accelerator.main_process_first():
        train_rows, eval_split, data_description = load_data(data_args)

    teacher = None
    if model_args.teacher:
        teacher = SiscModel.from_pretrained(model_args.teacher)
        teacher.requires_grad_(False).eval().to(accelerator.device)
    passthrough = ()
    if model_args.teacher_cache:
        from train.cache_teacher import EMBEDDING_COLUMNS, attach_teacher_cache, load_teacher_cache

        cache = load_teacher_cache(model_args.teacher_cache, train_rows, teacher)
        train_rows = attach_teacher_cache(train_rows, cache)
        passthrough, teacher = EMBEDDING_COLUMNS, None  # the cache replaces the online teacher
    relevance_fn = None
    if data_args.dataset == "shapes":
        from train.shapes_dataset import batch_relevance as relevance_fn
    collator = PairCollator(processor, passthrough=passthrough, relevance_fn=relevance_fn)
    loader = DataLoader(
        train_rows,
        batch_size=args.per_device_batch_size,
        shuffle=not data_args.streaming,
        drop_last=True,  # equal batch sizes on every process: the global contrastive batch is gathered
        num_workers=data_args.num_workers,
        collate_fn=collator,
        persistent_workers=data_args.num_workers > 0,
        # its own generator: starting an epoch's iterator must not draw from the global RNG, or a resumed run's
        # masking / hard-negative sampling would drift from an uninterrupted one
        generator=torch.Generator().manual_seed(args.seed),
    )
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

    optimizer = torch.optim.AdamW(param_groups(model, args))
    scheduler = get_cosine_schedule_with_warmup(optimizer, args.warmup_steps, total_steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    global_step, start_epoch, skip_batches = 0, 0, 0
    if args.resume_from_checkpoint:
        checkpoint = find_checkpoint(args.output_dir, args.resume_from_checkpoint)
        accelerator.load_state(checkpoint)
        with open(os.path.join(checkpoint, "sisc_progress.json")) as f:
            global_step = json.load(f)["global_step"]
        if steps_per_epoch:
            start_epoch = global_step // steps_per_epoch
            skip_batches = (global_step % steps_per_epoch) * args.gradient_accumulation_steps
        accelerator.print(f"resumed from {checkpoint} at step {global_step}")

    if accelerator.is_main_process:
        tracker_config = {**asdict(model_args), **asdict(data_args), **asdict(args)}
        accelerator.init_trackers("sisc-pretrain", {k: v for k, v in tracker_config.items() if isinstance(v, (int, float, str, bool))})
    config = accelerator.unwrap_model(model).config
    skips = SkipCounter(max_bad_fraction=data_args.max_bad_fraction)
    progress = tqdm(total=total_steps, initial=global_step, disable=not accelerator.is_local_main_process, desc="pretrain")
    plots_dir = os.path.join(args.output_dir, "diagnostics")
    last_logs: dict[str, float] = {}
    history: list[dict] = []
    started = time.time()
    epoch = start_epoch
    model.train()
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
            with accelerator.accumulate(model):
                outputs = model(
                    input_ids=batch["input_ids"],
                    pixel_values=batch["pixel_values"],
                    attention_mask=batch["attention_mask"],
                    image_ids=batch["image_ids"],
                    **extra,
                )
                accelerator.backward(outputs.loss)
                if accelerator.sync_gradients and args.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            global_step += 1
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
                history.append({"step": global_step, **{k: logs[k] for k in ("loss", "loss_itc", "loss_itm", "loss_mlm")}})
            if (
                accelerator.is_main_process
                and outputs.weights_t2i is not None
                and (global_step % args.diagnostics_steps == 0 or global_step == total_steps)
            ):
                os.makedirs(plots_dir, exist_ok=True)
                save_weight_plots(outputs.weights_t2i, os.path.join(plots_dir, "weights"), global_step)
            if args.checkpointing_steps and global_step % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, args.output_dir, global_step)
            if global_step >= total_steps:
                break
        else:
            epoch += 1
            skips.check()
            accelerator.print(f"epoch {epoch}: {skips.report()}")
            continue
        break
    progress.close()
    skips.check()
    train_seconds = time.time() - started

    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    metrics = {}
    if eval_split is not None:
        from train.evaluate_zero_shot import evaluate_shapes_split

        metrics = evaluate_shapes_split(unwrapped.sisc, processor, eval_split, accelerator, args.eval_batch_size)
    if accelerator.is_main_process:
        unwrapped.save_pretrained(args.output_dir)
        processor.save_pretrained(args.output_dir)
        summary = {
            "metrics": metrics,
            "train_seconds": round(train_seconds, 1),
            "global_step": global_step,
            "skipped_samples": skips.skipped,
            "seen_samples": skips.seen,
            "last_logs": last_logs,
            "history": history,
        }
        with open(os.path.join(args.output_dir, "results.json"), "w") as f:
            json.dump(summary, f, indent=2)
        write_card(args, model_args, data_args, unwrapped.config, metrics, data_description, len_or_none(train_rows))
        print_summary(metrics, args.output_dir, train_seconds, skips)
    accelerator.end_training()
    return {"metrics": metrics, "global_step": global_step}


def len_or_none(rows):
    try:
        return len(rows)
    except TypeError:
        return None


def save_checkpoint(accelerator: Accelerator, output_dir: str, global_step: int) -> None:
    path = os.path.join(output_dir, "checkpoints", f"step_{global_step}")
    accelerator.save_state(path)
    if accelerator.is_main_process:
        with open(os.path.join(path, "sisc_progress.json"), "w") as f:
            json.dump({"global_step": global_step}, f)


def write_card(args, model_args, data_args, config, metrics, data_description, num_pairs) -> None:
    from train.model_card import render_model_card

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
    )


def print_summary(metrics: dict, output_dir: str, seconds: float, skips: SkipCounter) -> None:
    print(f"\ntrained in {seconds:.0f} s; {skips.report()}")
    if metrics:
        print("zero-shot retrieval on the held-out split:")
        for key, value in metrics.items():
            print(f"  {key:>20s}: {value:7.2f}")
    print(f"checkpoint saved to {output_dir}")


if __name__ == "__main__":
    main()
