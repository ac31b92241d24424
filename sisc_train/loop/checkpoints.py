"""The output folder of a run and its checkpoints: one run per folder, atomic `checkpoints/step_N` folders written
with `accelerator.save_state`, exact resume (`--resume_from_checkpoint latest|PATH`) with a check that the resumed run
has the same settings, and the best model by validation kept on disk (`checkpoints/best`).

Why not Accelerate's `ProjectConfiguration(automatic_checkpoint_naming=True, total_limit=N)`: it writes straight
into `checkpoints/checkpoint_<i>` (a run killed while writing leaves a half checkpoint under a final name, which
issue 11 forbids), numbers checkpoints by save calls rather than optimizer steps, and would rename the `step_N`
folders that `--resume_from_checkpoint latest` and users' scripts find today. So the folders are named and rotated
here (`--save_total_limit`), and `save_state` does the writing.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil

from accelerate import Accelerator
from safetensors.torch import load_model, save_model

logger = logging.getLogger(__name__)

# files that make a folder another run's output; --overwrite_output_dir deletes what a run writes besides the model
# files (which the new run's save replaces; they may also be this run's --model_name_or_path)
RUN_MARKERS = ("checkpoints", "model.safetensors", "results.json")
OVERWRITTEN = ("checkpoints", "logs", "diagnostics", "results.json")
PROGRESS_FILE = "sisc_progress.json"  # written last into a checkpoint: a checkpoint without it is incomplete
PARTIAL_SUFFIX = ".partial"


def prepare_output_dir(accelerator: Accelerator, args) -> None:
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


def check_resume_settings(checkpoint: str, saved: dict | None, current: dict) -> None:
    """Refuse to resume a checkpoint written with other training settings (listed), which would silently mix two
    runs (another learning rate or schedule, other data)."""
    if saved is None:
        logger.warning("%s records no training settings (an older checkpoint): they are not checked", checkpoint)
        return
    # JSON turned the saved tuples into lists; compare like with like
    derived = ("total_steps", "num_processes", "image_tower")  # not flags of their own

    def label(name: str) -> str:
        return name if name in derived else f"--{name}"

    differences = [
        f"{label(name)} {saved.get(name)!r} in the checkpoint, {value!r} now"
        for name, value in json.loads(json.dumps(current)).items()
        if saved.get(name) != value
    ]
    # flags added later are recorded only when used: one the checkpoint used and this run lacks is a difference too
    differences += [f"{label(name)} {value!r} in the checkpoint, not now"
                    for name, value in saved.items() if name not in current]
    if differences:
        raise ValueError(
            f"cannot resume from {checkpoint}: it was written with other training settings: {'; '.join(differences)}. "
            f"Resume with the settings of that run, or start a new run (another --output_dir, or --overwrite_output_dir)"
        )


class KeepBest:
    """After each epoch, `evaluate(model)` gives the validation metrics; the best model so far by `metric` (higher is
    better) is saved under `<output_dir>/checkpoints/best` and restored at the end of training. Does nothing when
    `evaluate` is None."""

    STEP_FILE = "sisc_best_step.json"

    def __init__(self, output_dir: str, metric: str, evaluate, accelerator: Accelerator):
        self.evaluate, self.metric, self.accelerator = evaluate, metric, accelerator
        self.folder = os.path.join(output_dir, "checkpoints", "best")
        self.best = {"metric": metric, "value": None, "epoch": None, "step": None}
        self.history: list[dict] = []

    def run(self, model, epoch: float, step: int) -> None:
        if self.evaluate is None or (self.history and self.history[-1]["step"] == step):
            return
        was_training = model.training
        model.eval()
        metrics = self.evaluate(model)
        model.train(was_training)
        if self.metric not in metrics:
            raise ValueError(f"--metric_for_best_model {self.metric!r} is not a validation metric; choose one of {sorted(metrics)}")
        value = metrics[self.metric]
        self.history.append({"epoch": epoch, "step": step, **metrics})
        self.accelerator.log({f"validation/{key}": v for key, v in metrics.items() if isinstance(v, (int, float))}, step=step)
        improved = self.best["value"] is None or value > self.best["value"]  # NaN never improves
        self.accelerator.print(
            f"validation after epoch {epoch:g} (step {step}): {self.metric} = {value:.2f}" + (" (best so far)" if improved else "")
        )
        if improved:
            self.best.update(value=value, epoch=epoch, step=step)
            if self.accelerator.is_main_process:  # written aside, then renamed: a kill never leaves half a model
                partial = self.folder + PARTIAL_SUFFIX
                save_weights(model, partial)
                with open(os.path.join(partial, self.STEP_FILE), "w") as f:
                    json.dump({"step": step}, f)
                replace_folder(partial, self.folder)
            self.accelerator.wait_for_everyone()

    def state(self) -> dict:
        return {"best": self.best, "history": self.history}

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

    def restore_best(self, model) -> None:
        """Load the kept weights back into `model` (on every process)."""
        if self.best["step"] is None or self.history[-1]["step"] == self.best["step"]:
            return  # the current weights are the best ones
        load_weights(model, self.folder)
        self.accelerator.print(f"restored the best model (epoch {self.best['epoch']:g}, step {self.best['step']})")


def save_weights(model, folder: str) -> None:
    """A Transformers model with `save_pretrained` (a loadable checkpoint), any other module as model.safetensors."""
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(folder)
    else:
        os.makedirs(folder, exist_ok=True)
        save_model(model, os.path.join(folder, "model.safetensors"))


def load_weights(model, folder: str) -> None:
    if hasattr(model, "save_pretrained"):  # from_pretrained resolves tied and renamed weights
        model.load_state_dict(type(model).from_pretrained(folder).state_dict())
    else:
        load_model(model, os.path.join(folder, "model.safetensors"))
