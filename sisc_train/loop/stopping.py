"""Stopping cleanly: SIGINT / SIGTERM end the run after the current optimizer step with a checkpoint, and a non-finite
loss or gradient stops it before the optimizer applies it (`TrainingDiverged`)."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading

import torch
from accelerate import Accelerator

from sisc_train.data.pairs import BadEvaluationData


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
    """The loss parts of one step (`loss` and any `loss_*` field of the model output), detached: no host sync; read
    to log them and to report a divergence."""
    return {name: value.detach() for name, value in outputs.items() if name.startswith("loss") and torch.is_tensor(value)}


def format_losses(losses: dict | None) -> str:
    if not losses:
        return "no loss"
    value = {name: float(tensor) for name, tensor in losses.items()}
    parts = ", ".join(f"{name.removeprefix('loss_')} {v:.4g}" for name, v in value.items() if name != "loss")
    return f"loss {value['loss']:.4g}" + (f" ({parts})" if parts else "")


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


def clip_and_check_gradients(accelerator: Accelerator, model, outputs, step: int, scheduler, args, last_losses: dict | None) -> None:
    """Clip the gradients to --max_grad_norm; raise TrainingDiverged when the loss or the gradient norm is not
    finite (called before optimizer.step(), so that such an update is never applied)."""
    grad_norm = measure_and_clip_gradients(accelerator, model, args.max_grad_norm)
    if not is_finite_step(accelerator, outputs.loss, grad_norm):
        losses = detached_losses(outputs)
        reason = "the gradient norm is not finite" if torch.isfinite(losses["loss"]) else "the loss is not finite"
        raise divergence(step, reason, losses, grad_norm, scheduler, args, last_losses)


