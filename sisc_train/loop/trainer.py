"""The one training loop of SISC: pretraining, retrieval fine-tuning, VQA, NLVR and the text-assignment step.

A task (`Task`) supplies what differs: its data and collator, its model, its training step (the loss) and its
evaluation. `train(task, args)` does the rest, the same for every task: Accelerate (processes, mixed precision,
gradient accumulation), AdamW with the vision tower's own learning rate, warm-up + cosine decay, gradient clipping,
trackers, a tqdm bar, periodic `save_state` checkpoints with exact resume, the best model by a validation metric kept
on disk, bad-sample counting, clean stops on signals and divergence, then the final save, evaluation, model card and
optional Hub push.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
import traceback
from dataclasses import asdict

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, ProjectConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from sisc_train.data.pairs import SkipCounter, pop_bookkeeping
from sisc_train.loop.arguments import RESUME_SETTINGS, TrainingArguments
from sisc_train.loop.checkpoints import (
    KeepBest,
    check_resume_settings,
    find_checkpoint,
    prepare_output_dir,
    read_progress,
    save_checkpoint,
)
from sisc_train.loop.launch import check_launch
from sisc_train.loop.stopping import (
    StopSignals,
    checkpoint_on_bad_data,
    clip_and_check_gradients,
    detached_losses,
    divergence,
    ignore_stop_signals,
    stop_requested,
    stop_with_checkpoint,
)
from sisc_train.publishing.hub import check_hub_token, push_checkpoint

logger = logging.getLogger(__name__)


class Task:
    """What one job trains. Subclasses set `name` and implement `load_data` and `build_model`; the other hooks have
    defaults that suit a plain supervised task (the model returns an output with `.loss` from the collated batch)."""

    name = "task"
    find_unused_parameters = False  # a switched-off head gets no gradients, which DDP must be told about
    publishes = True  # the final model, processor and model card are saved to --output_dir (and pushed)

    def __init__(self, args: TrainingArguments):
        self.args = args
        self.accelerator: Accelerator | None = None  # set by train(), for every hook
        self.processor = None
        self.skips = SkipCounter()

    # -- data and model ------------------------------------------------------------------------------------------
    def load_data(self):
        """-> (training rows, collator); sets `self.processor`. Runs on the main process first (dataset caching)."""
        raise NotImplementedError

    def build_model(self, total_steps: int) -> torch.nn.Module:
        raise NotImplementedError

    def train_order(self, rows, seed: int):
        """A sampler giving the training rows' order within an epoch (with `set_epoch`); None: a seeded shuffle (or the
        stream's own order)."""
        return None

    def settings(self) -> dict:
        """The model and data settings a resumed run must share with the run that wrote its checkpoint."""
        return {}

    # -- training ------------------------------------------------------------------------------------------------
    def training_step(self, model, batch: dict, step: int):
        """The model's outputs (with `.loss` and any `loss_*` parts) on one batch; `step` is the optimizer step being
        made (1-based)."""
        return model(**batch)

    def step_logs(self, model, batch: dict, outputs, step: int) -> dict:
        """Values logged with the losses every --logging_steps."""
        return {}

    def after_step(self, model, outputs, step: int, total_steps: int) -> None:
        """Work after an optimizer step (plots, ...)."""

    def divergence_reason(self, error: Exception) -> str | None:
        """When the model's refusal `error` (raised by `training_step`) means that training diverged: the reason."""
        return None

    # -- evaluation and results ----------------------------------------------------------------------------------
    def validate(self, model) -> dict | None:
        """Validation metrics after an epoch (higher --metric_for_best_model is better); None: no validation."""
        return None

    def has_validation(self) -> bool:
        return False

    def summary_fields(self) -> dict:
        """Fields of results.json known before the final evaluation."""
        return {}

    def final_evaluation(self, model, summary: dict) -> None:
        """Evaluate the kept model after it is saved; fill `summary` (its "metrics" and anything else)."""

    def write_card(self, model, summary: dict) -> None:
        """The model card of the saved model (`summary` holds the results)."""

    def print_summary(self, summary: dict) -> None:
        skips = f"; {self.skips.report()}" if self.skips.seen else ""  # collators that count bad samples
        print(f"\ntrained in {summary['train_seconds']:.0f} s{skips}")
        best = summary["best_model"]
        if best and best["step"] is not None:
            print(f"kept the model of epoch {best['epoch']:g} (step {best['step']}): {best['metric']} = {best['value']:.2f}")
        self.print_results(summary)
        print(f"checkpoint saved to {self.args.output_dir}")

    def print_results(self, summary: dict) -> None:
        """The final evaluation's results, printed in the summary."""

    def evaluation_hint(self) -> str:
        """How to run the final evaluation again when it fails (the model is saved already)."""
        return ""


def param_groups(model, learning_rate: float, vision_learning_rate: float, weight_decay: float) -> list[dict]:
    """AdamW groups of any SISC model: vision tower vs the rest (separate learning rates, as in the paper); no decay
    on norms and biases."""
    groups = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        vision = ".sisc.vision_model." in f".{name}"  # also inside a wrapper (the text-assignment model)
        no_decay = param.dim() < 2 or "LayerNorm" in name or "layernorm" in name
        key = (vision, no_decay)
        if key not in groups:
            lr = vision_learning_rate if vision else learning_rate
            groups[key] = {"params": [], "lr": lr, "weight_decay": 0.0 if no_decay else weight_decay}
        groups[key]["params"].append(param)
    return list(groups.values())


def parameter_counts(model) -> dict[str, int]:
    """Parameters of `model` (tied weights once): all, trainable, and without ALBEF's momentum copy (a frozen EMA of the
    towers, which the paper's parameter counts leave out)."""
    named = dict(model.named_parameters())  # deduplicated: a tied weight appears once
    momentum = sum(p.numel() for name, p in named.items() if "momentum_encoder." in f".{name}")
    total = sum(p.numel() for p in named.values())
    return {"total": total, "trainable": sum(p.numel() for p in named.values() if p.requires_grad),
            "without_momentum_copy": total - momentum}


def trackers(report_to: str):
    if report_to == "auto":  # tensorboard when it is installed, else none
        return "tensorboard" if importlib.util.find_spec("tensorboard") else None
    return None if report_to == "none" else report_to.split(",")


def make_accelerator(task: Task, args: TrainingArguments) -> Accelerator:
    return Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=trackers(args.report_to),
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, "logs")),
        # dispatch_batches=False: every process reads its own shard (batches carry non-tensor bookkeeping)
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed, dispatch_batches=False,
                                                  non_blocking=True),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=task.find_unused_parameters)],
    )


def schedule(rows, args: TrainingArguments, num_processes: int, streaming: bool) -> tuple[int | None, int]:
    """(optimizer steps per epoch (None for a stream), total optimizer steps)."""
    if streaming:
        if args.max_steps is None:
            raise ValueError("--streaming needs --max_steps (the length of a stream is unknown)")
        return None, args.max_steps
    batches = len(rows) // (args.per_device_batch_size * num_processes)
    if batches == 0:
        raise ValueError(f"{len(rows)} training examples do not fill one batch of --per_device_batch_size "
                         f"{args.per_device_batch_size} x {num_processes} process(es): use a smaller batch or more data")
    steps_per_epoch = max(batches // args.gradient_accumulation_steps, 1)
    return steps_per_epoch, args.max_steps or steps_per_epoch * args.num_epochs


def epochs_done(global_step: int, steps_per_epoch: int | None, epoch: int) -> float:
    """Epochs completed so far (fractional when training stopped mid-epoch; the epoch count for streams)."""
    return round(global_step / steps_per_epoch, 2) if steps_per_epoch else epoch


def train(task: Task, args: TrainingArguments) -> dict:
    """Train `task`; returns its summary (also written to `<output_dir>/results.json`)."""
    accelerator = task.accelerator = make_accelerator(task, args)
    check_launch(accelerator)
    set_seed(args.seed)
    prepare_output_dir(accelerator, args)
    if args.push_to_hub and accelerator.is_main_process and check_hub_token() is None:
        logger.warning("--push_to_hub %s: no Hugging Face token found (run `hf auth login` or set HF_TOKEN); the push "
                       "at the end will fail, after the checkpoint is saved locally", args.push_to_hub)

    with accelerator.main_process_first():
        rows, collator = task.load_data()
    streaming = isinstance(rows, torch.utils.data.IterableDataset)
    order = task.train_order(rows, args.seed)  # a task refuses an order it cannot give a stream
    loader = DataLoader(
        rows,
        batch_size=args.per_device_batch_size,
        shuffle=not streaming and order is None,
        sampler=order,
        drop_last=True,  # equal batch sizes on every process: the global contrastive batch is gathered
        num_workers=args.num_workers,
        collate_fn=collator,
        persistent_workers=args.num_workers > 0,
        # page-locked batches copy to a GPU asynchronously (with the non-blocking transfer set in make_accelerator)
        pin_memory=accelerator.device.type == "cuda",
        worker_init_fn=ignore_stop_signals,  # Ctrl-C is the training process's to handle (a checkpoint first)
        # its own generator: starting an epoch's iterator must not draw from the global RNG, or a resumed run's
        # masking / hard-negative sampling would drift from an uninterrupted one
        generator=torch.Generator().manual_seed(args.seed),
    )
    steps_per_epoch, total_steps = schedule(rows, args, accelerator.num_processes, streaming)
    model = task.build_model(total_steps)
    parameters = parameter_counts(model)
    accelerator.print(f"{type(model).__name__}: {parameters['total']:,} parameters, {parameters['trainable']:,} trainable, "
                      f"{parameters['without_momentum_copy']:,} without the momentum copy")
    # fused: one kernel for all parameters; the same update up to float rounding, so opt-in (--fused_adamw)
    optimizer = torch.optim.AdamW(param_groups(model, args.learning_rate, args.vision_lr(), args.weight_decay),
                                  **({"fused": True} if args.fused_adamw else {}))
    scheduler = get_cosine_schedule_with_warmup(optimizer, min(args.warmup_steps, max(total_steps - 1, 0)), max(total_steps, 1))
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    try:

        settings = {**task.settings(), **{name: getattr(args, name) for name in RESUME_SETTINGS},
                    "total_steps": total_steps, "num_processes": accelerator.num_processes}
        keep_best = KeepBest(args.output_dir, args.metric_for_best_model, task.validate if task.has_validation() else None, accelerator)
        global_step, epoch, skip_batches, history, resumed = 0, 0, 0, [], {}
        if args.resume_from_checkpoint:
            resume_path = find_checkpoint(args.output_dir, args.resume_from_checkpoint)
            resumed = read_progress(resume_path)
            check_resume_settings(resume_path, resumed.get("settings"), settings)
            accelerator.load_state(resume_path)
            global_step = resumed["global_step"]
            if steps_per_epoch:
                epoch = global_step // steps_per_epoch
                skip_batches = (global_step % steps_per_epoch) * args.gradient_accumulation_steps
            task.skips.update(**resumed.get("skips", {}))
            if "validation" in resumed:
                keep_best.restore(resumed["validation"])
            history.extend(resumed.get("history", []))
            accelerator.print(f"resumed from {resume_path} at step {global_step}")

        saved = {"step": None, "path": None}

        def checkpoint() -> str:
            """The checkpoint of the last completed step (written once per step)."""
            if saved["step"] != global_step:
                skips = {"seen": task.skips.seen, "skipped": task.skips.skipped, "reasons": dict(task.skips.reasons)}
                state = {"settings": settings, "skips": skips, "validation": keep_best.state(), "history": history}
                saved.update(step=global_step, path=save_checkpoint(accelerator, args.output_dir, global_step, state, args.save_total_limit))
            return saved["path"]

        def validate() -> None:
            with checkpoint_on_bad_data(checkpoint):  # bad validation data stops the run, after saving it
                keep_best.run(accelerator.unwrap_model(model), epochs_done(global_step, steps_per_epoch, epoch), global_step)

        if accelerator.is_main_process:
            config = {k: v for k, v in {**settings, **asdict(args)}.items() if isinstance(v, (int, float, str, bool))}
            accelerator.init_trackers(f"sisc-{task.name}", config)
        if resumed and steps_per_epoch and global_step % steps_per_epoch == 0 and global_step < total_steps:
            validate()  # a checkpoint of an epoch's last step is written before that epoch's validation: catch up on it
        progress = tqdm(total=total_steps, initial=global_step, disable=not accelerator.is_local_main_process, desc=task.name)
        started, last_losses, last_logs = time.time(), None, {}
        model.train()
        with StopSignals(verbose=accelerator.is_local_main_process) as signals:
            while global_step < total_steps:
                if hasattr(loader, "set_epoch"):
                    loader.set_epoch(epoch)
                epoch_loader = accelerator.skip_first_batches(loader, skip_batches) if skip_batches else loader
                skip_batches = 0
                for batch in epoch_loader:
                    if "num_seen" in batch:  # the collator counted bad samples it left out
                        seen, skipped, reasons, batch["relevance"] = pop_bookkeeping(batch)
                        task.skips.update(seen, skipped, reasons)
                    with accelerator.accumulate(model):
                        try:
                            outputs = task.training_step(model, batch, global_step + 1)
                        except ValueError as error:
                            reason = task.divergence_reason(error)
                            if reason is None:
                                raise
                            raise divergence(global_step + 1, reason, None, None, scheduler, args, last_losses) from error
                        accelerator.backward(outputs.loss)
                        if accelerator.sync_gradients:  # a non-finite loss or gradient never reaches the weights
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
                        last_logs = {name: value.item() for name, value in last_losses.items()}
                        last_logs.update(task.step_logs(model, batch, outputs, global_step))
                        accelerator.log({**last_logs, "lr": scheduler.get_last_lr()[-1], "epoch": epoch}, step=global_step)
                        progress.set_postfix(loss=f"{last_logs['loss']:.3f}")
                        history.append({"step": global_step, **last_logs})
                    task.after_step(model, outputs, global_step, total_steps)
                    if args.checkpointing_steps and global_step % args.checkpointing_steps == 0:
                        checkpoint()
                    if stop_requested(accelerator, signals):  # after a whole optimizer step, never within one
                        stop_with_checkpoint(accelerator, signals, global_step, checkpoint())
                    if global_step >= total_steps:
                        break
                else:
                    epoch += 1
                    task.skips.check()
                    accelerator.print(f"epoch {epoch}: {task.skips.report()}")
                    validate()
                    if stop_requested(accelerator, signals):  # a signal during the validation: stop before the next epoch
                        stop_with_checkpoint(accelerator, signals, global_step, checkpoint())
                    continue
                break
        progress.close()
        task.skips.check()
        train_seconds = round(time.time() - started, 1)
        accelerator.wait_for_everyone()
        unwrapped = accelerator.unwrap_model(model)
        validate()  # no-op when the last epoch was just validated
        keep_best.restore_best(unwrapped)
        unwrapped.eval()
        summary = {
            "metrics": {},
            **task.summary_fields(),
            "train_seconds": train_seconds,
            "global_step": global_step,
            "validation_history": keep_best.history,
            "best_model": keep_best.best if task.has_validation() else None,
            "parameters": parameters,
            "skipped_samples": task.skips.skipped,
            "seen_samples": task.skips.seen,
            "skip_reasons": dict(task.skips.reasons),
            "last_logs": last_logs,
            "history": history,
            # the run's settings, with the learning rate the image encoder actually had
            "args": {**task.settings(), **asdict(args), "vision_learning_rate": args.vision_lr()},
        }
        finish(task, unwrapped, accelerator, summary)
    except BaseException as error:
        traceback.clear_frames(error.__traceback__)  # the finished frames of an error may hold the DDP wrapper too
        raise
    finally:
        # The DDP wrapper holds the process group: release it before end_training() destroys the group. A wrapper
        # freed after the group (when this frame goes) can hang in gloo's teardown (seen with two CPU processes).
        model = optimizer = loader = scheduler = None
        accelerator.free_memory()
        accelerator.end_training()  # flushes the trackers
    return {**summary, "model": unwrapped}


def finish(task: Task, model, accelerator: Accelerator, summary: dict) -> None:
    """Save the kept model before the final evaluation (which reads data that may be bad), evaluate it, write the
    results and the model card, push to the Hub when asked."""
    args = task.args

    def write_results() -> None:
        if accelerator.is_main_process:
            with open(os.path.join(args.output_dir, "results.json"), "w") as f:
                json.dump(summary, f, indent=2, default=str)
            if task.publishes:
                task.write_card(model, summary)

    if accelerator.is_main_process and task.publishes:
        model.save_pretrained(args.output_dir)
        task.processor.save_pretrained(args.output_dir)
    write_results()
    accelerator.wait_for_everyone()
    try:
        task.final_evaluation(model, summary)
    except BaseException:
        accelerator.print(f"\nthe final evaluation did not finish; the trained model is saved in {args.output_dir}"
                          + (f" (evaluate it again with {task.evaluation_hint()})" if task.evaluation_hint() else ""))
        raise
    write_results()
    if accelerator.is_main_process and task.publishes:
        task.print_summary(summary)
    if args.push_to_hub and accelerator.is_main_process and task.publishes:
        # after the local save: a failed push (no token, no network) loses nothing and says how to retry
        print(f"pushed to {push_checkpoint(args.output_dir, args.push_to_hub, private=args.hub_private)}")
