"""Issue 11, "nothing lost": the trainer keeps the trained model and the training progress when things go wrong
(bad evaluation data, a kill while a checkpoint is written, divergence, Ctrl-C, a reused output folder)."""

import json
import logging
import os
import re
import signal

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from tests.helpers.tiny_data import truncate, write_karpathy
from sisc_train.loop.checkpoints import checkpoint_steps, find_checkpoint
from sisc_train.loop.stopping import TrainingDiverged
from sisc_train.tasks import pretraining as pretrain
from sisc_train.data.pairs import BadEvaluationData

TINY = ["--image_size", "16", "--hidden_size", "32", "--per_device_batch_size", "4", "--num_workers", "0",
        "--report_to", "none", "--warmup_steps", "1", "--logging_steps", "1", "--diagnostics_steps", "1000"]


@pytest.fixture(scope="module")
def karpathy(tmp_path_factory):
    """10 training images (20 pairs), 4 validation and 7 test images, two captions each."""
    return write_karpathy(tmp_path_factory.mktemp("karpathy"))


@pytest.fixture(scope="module")
def karpathy_bad(tmp_path_factory):
    """The same with a truncated test image (15.png) and a truncated validation image (10.png)."""
    path = write_karpathy(tmp_path_factory.mktemp("karpathy_bad"))
    truncate(path.parent / "images" / "15.png")
    truncate(path.parent / "images" / "10.png")
    return path


def train(data, out, *extra):
    return pretrain.main(["--dataset", str(data), "--output_dir", str(out), *TINY, *extra])


def weights(folder, name="model.safetensors"):
    return load_file(os.path.join(folder, name))


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.fixture
def at_step(monkeypatch):
    """at_step(n, action): run `action()` when the trainer logs step n (every step with --logging_steps 1), i.e.
    after that optimizer step; deterministic, unlike a signal sent from another process after some time.
    A later call replaces the earlier one."""
    original, wanted = Accelerator.log, {}

    def log(self, values, step=None, **kwargs):
        original(self, values, step=step, **kwargs)
        if step == wanted.get("step"):
            wanted["action"]()

    monkeypatch.setattr(Accelerator, "log", log)

    def install(step, action):
        wanted.update(step=step, action=action)

    return install


# ---- 5: bad evaluation data ------------------------------------------------------------------------------------


def test_final_evaluation_leaves_out_an_unreadable_image_and_reports_it(karpathy_bad, tmp_path, capsys):
    train(karpathy_bad, tmp_path, "--max_steps", "2", "--eval_split", "test", "--max_bad_fraction", "0.2")
    summary = json.loads((tmp_path / "results.json").read_text())
    skipped = summary["eval_skipped"]
    assert (skipped["images"], skipped["of_images"], skipped["pairs"], skipped["of_pairs"]) == (1, 7, 2, 14)
    assert skipped["reasons"] == {"bad image (OSError)": 2} and skipped["examples"][0].endswith("15.png")
    assert "r_mean" in summary["metrics"]
    assert "left out 2 of 14 (image, caption) pairs" in capsys.readouterr().out


def test_too_much_bad_evaluation_data_fails_after_the_model_is_saved(karpathy_bad, tmp_path):
    with pytest.raises(BadEvaluationData, match=r"2 of 14 samples.*max_bad_fraction.*15\.png"):
        train(karpathy_bad, tmp_path, "--max_steps", "2", "--eval_split", "test", "--max_bad_fraction", "0.1")
    for name in ("model.safetensors", "config.json", "processor_config.json", "README.md"):
        assert (tmp_path / name).is_file(), name  # a complete, loadable checkpoint
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["global_step"] == 2 and summary["metrics"] == {}


def test_too_much_bad_validation_data_stops_with_a_checkpoint(karpathy_bad, tmp_path):
    # one epoch = 5 steps of 4 pairs; the validation after it meets the truncated 10.png (2 of 8 pairs)
    with pytest.raises(BadEvaluationData, match=r"training so far is saved in .*step_5.*resume_from_checkpoint latest"):
        train(karpathy_bad, tmp_path, "--num_epochs", "2", "--eval_split", "", "--validation_split", "val")
    assert find_checkpoint(str(tmp_path), "latest").endswith("step_5")


# ---- 6: checkpoints are complete or ignored ---------------------------------------------------------------------


def test_a_checkpoint_killed_while_written_is_never_resumed(karpathy, tmp_path, monkeypatch, caplog):
    one_go = tmp_path / "one_go"
    train(karpathy, one_go, "--max_steps", "3", "--eval_split", "")

    # the kill comes while step 3's checkpoint is written: after Accelerate's files, before the progress file
    original = Accelerator.save_state

    def killed_at_step_3(self, output_dir=None, **kwargs):
        original(self, output_dir, **kwargs)
        if "step_3" in str(output_dir):
            raise KeyboardInterrupt

    monkeypatch.setattr(Accelerator, "save_state", killed_at_step_3)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(karpathy, out, "--max_steps", "3", "--eval_split", "", "--checkpointing_steps", "1")
    monkeypatch.setattr(Accelerator, "save_state", original)
    assert sorted(os.listdir(out / "checkpoints")) == ["step_1", "step_2", "step_3.partial"]

    # an older-style incomplete folder under a final name is skipped too
    (out / "checkpoints" / "step_9").mkdir()
    (out / "checkpoints" / "step_9" / "model.safetensors").write_bytes(b"half")
    with caplog.at_level(logging.WARNING):
        assert find_checkpoint(str(out), "latest").endswith("step_2")
    assert "step_9" in caplog.text and "step_3.partial" in caplog.text
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        find_checkpoint(str(out), str(out / "checkpoints" / "step_9"))
    (out / "checkpoints" / "step_9" / "model.safetensors").unlink()
    (out / "checkpoints" / "step_9").rmdir()

    result = train(karpathy, out, "--max_steps", "3", "--eval_split", "", "--checkpointing_steps", "1",
                   "--resume_from_checkpoint", "latest")
    assert result["global_step"] == 3
    assert sorted(os.listdir(out / "checkpoints")) == ["step_1", "step_2", "step_3"]  # the partial one was replaced
    assert_same_weights(weights(one_go), weights(out))


def test_save_total_limit_keeps_the_newest_checkpoints(karpathy, tmp_path):
    train(karpathy, tmp_path, "--max_steps", "4", "--eval_split", "", "--checkpointing_steps", "1", "--save_total_limit", "2")
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step_3", "step_4"]


# ---- 7: divergence -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["infonce", "srcl"])
def test_divergence_stops_before_the_update_and_saves_nothing_non_finite(karpathy, tmp_path, loss):
    with pytest.raises(TrainingDiverged) as error:
        train(karpathy, tmp_path, "--loss", loss, "--learning_rate", "1e3", "--warmup_steps", "0", "--max_steps", "6",
              "--eval_split", "", "--checkpointing_steps", "1")
    message = str(error.value)
    step = int(message.split("diverged at step ")[1].split(":")[0])
    assert "itc" in message and "itm" in message and "mlm" in message and "learning rate" in message
    assert "--learning_rate" in message and "--max_grad_norm" in message
    assert not (tmp_path / "model.safetensors").exists()  # the diverged weights are not the final model
    checkpoints = checkpoint_steps(str(tmp_path))
    assert [s for s, _ in checkpoints] == list(range(1, step))  # the last good step is the latest checkpoint
    for _, folder in checkpoints:
        for name, tensor in weights(folder).items():
            assert torch.isfinite(tensor).all(), (folder, name)


def test_non_finite_similarities_are_reported_as_divergence(karpathy, tmp_path, monkeypatch):
    """The regulation weights refuse non-finite similarities; the user sees the trainer's error with its context."""
    from modeling_sisc import SiscForPreTraining

    original, calls = SiscForPreTraining.forward, []

    def forward(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise ValueError("similarity must be finite and > 0 (it is exp(cos) in the paper); got non-positive values")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SiscForPreTraining, "forward", forward)
    with pytest.raises(TrainingDiverged, match=r"diverged at step 3: the model's similarities are not finite.*step 2: loss"):
        train(karpathy, tmp_path, "--max_steps", "4", "--eval_split", "")


# ---- 8: one run per output folder, compatible resumes, Ctrl-C, rotation -------------------------------------------


def test_a_used_output_folder_is_refused_or_replaced(karpathy, tmp_path):
    train(karpathy, tmp_path, "--max_steps", "2", "--eval_split", "", "--checkpointing_steps", "1")
    with pytest.raises(FileExistsError, match=rf"{re.escape(str(tmp_path))}.*--resume_from_checkpoint.*--overwrite_output_dir"):
        train(karpathy, tmp_path, "--max_steps", "1", "--eval_split", "")
    assert (tmp_path / "checkpoints" / "step_2").is_dir()  # untouched
    train(karpathy, tmp_path, "--max_steps", "1", "--eval_split", "", "--overwrite_output_dir")
    assert not (tmp_path / "checkpoints").exists()  # 'latest' cannot pick the old run's checkpoints
    assert json.loads((tmp_path / "results.json").read_text())["global_step"] == 1
    with pytest.raises(ValueError, match="only one of the two"):
        train(karpathy, tmp_path, "--max_steps", "1", "--overwrite_output_dir", "--resume_from_checkpoint", "latest")


def test_resume_with_other_settings_is_refused(karpathy, tmp_path):
    train(karpathy, tmp_path, "--max_steps", "2", "--eval_split", "", "--checkpointing_steps", "1")
    with pytest.raises(ValueError, match=r"other training settings: --learning_rate 0\.001 in the checkpoint, 0\.01 now; "
                                         r"total_steps 2 in the checkpoint, 3 now"):
        train(karpathy, tmp_path, "--max_steps", "3", "--eval_split", "", "--learning_rate", "0.01",
              "--resume_from_checkpoint", "latest")


def test_ctrl_c_saves_a_checkpoint_and_the_resumed_run_equals_one_run(karpathy, tmp_path, at_step, capsys):
    one_go = tmp_path / "one_go"
    train(karpathy, one_go, "--max_steps", "4", "--eval_split", "")

    out = tmp_path / "run"
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN when the tests run as a background job
    at_step(2, lambda: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(SystemExit) as stopped:
        train(karpathy, out, "--max_steps", "4", "--eval_split", "")  # no --checkpointing_steps
    assert stopped.value.code == 128 + signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is before  # the handlers are back
    assert "stopped by SIGINT after step 2" in capsys.readouterr().err
    assert checkpoint_steps(str(out)) == [(2, str(out / "checkpoints" / "step_2"))]
    assert json.loads((out / "checkpoints" / "step_2" / "sisc_progress.json").read_text())["skips"]["seen"] == 8

    at_step(None, None)
    result = train(karpathy, out, "--max_steps", "4", "--eval_split", "", "--resume_from_checkpoint", "latest")
    assert result["global_step"] == 4
    assert_same_weights(weights(one_go), weights(out))
    summary = json.loads((out / "results.json").read_text())
    assert summary["seen_samples"] == 4 * 4  # the counter of the first two steps survived the resume
    assert [h["step"] for h in summary["history"]] == [1, 2, 3, 4]


def test_a_second_ctrl_c_stops_at_once(karpathy, tmp_path, at_step):
    def twice():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)
    at_step(1, twice)
    with pytest.raises(KeyboardInterrupt):
        train(karpathy, tmp_path, "--max_steps", "3", "--eval_split", "")
    assert not (tmp_path / "checkpoints").exists()
    assert signal.getsignal(signal.SIGINT) is before


# ---- 12: a contrastive batch needs negatives ---------------------------------------------------------------------


def test_a_batch_of_one_is_refused(karpathy, tmp_path):
    with pytest.raises(ValueError, match="no negatives.*ITC loss is identically 0"):
        train(karpathy, tmp_path, "--max_steps", "1", "--eval_split", "", "--per_device_batch_size", "1")


# ---- several processes -------------------------------------------------------------------------------------------

WORKER = os.path.join(os.path.dirname(__file__), "helpers", "pretrain_worker.py")


def run_two_processes(args, extra_env=None, timeout=300):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(ACCELERATE_USE_CPU="true", **(extra_env or {}))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", WORKER, *args]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        subprocess.run(["pkill", "-9", "-f", args[args.index("--output_dir") + 1]], check=False)  # by the unique folder
        pytest.fail("2-process training timed out")
    return proc.returncode, stdout, stderr


def test_two_processes_checkpoint_stop_together_and_skip_the_same_bad_items(karpathy_bad, tmp_path):
    common = ["--dataset", str(karpathy_bad), *TINY, "--per_device_batch_size", "2", "--max_steps", "2"]
    out = tmp_path / "run"
    code, stdout, stderr = run_two_processes(
        [*common, "--output_dir", str(out), "--checkpointing_steps", "1", "--eval_split", "test", "--max_bad_fraction", "0.2"]
    )
    assert code == 0, stderr[:3000] + stderr[-3000:]
    for step in (1, 2):  # complete, with both processes' random states
        folder = out / "checkpoints" / f"step_{step}"
        assert {"sisc_progress.json", "random_states_0.pkl", "random_states_1.pkl"} <= set(os.listdir(folder))
    assert json.loads((out / "results.json").read_text())["eval_skipped"]["images"] == 1

    # SIGTERM reaches only the second process, after step 1: both stop there, with one checkpoint
    stopped = tmp_path / "stopped"
    code, _, stderr = run_two_processes(
        [*common, "--output_dir", str(stopped), "--eval_split", ""], extra_env={"SISC_TEST_SIGTERM": "1:1"}
    )
    assert code != 0 and "stopped by" in stderr and "after step 1" in stderr, stderr[-3000:]
    assert checkpoint_steps(str(stopped)) == [(1, str(stopped / "checkpoints" / "step_1"))]
    assert (stopped / "checkpoints" / "step_1" / "sisc_progress.json").is_file()


def test_a_resumed_run_keeps_its_validation_history_and_best_model(karpathy, tmp_path, at_step):
    """Stopped at the last step of epoch 1 (before its validation): the resumed run validates epoch 1, then 2."""
    args = ["--num_epochs", "2", "--eval_split", "", "--validation_split", "val"]
    one_go = tmp_path / "one_go"
    train(karpathy, one_go, *args)
    out = tmp_path / "run"
    at_step(5, lambda: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(SystemExit):
        train(karpathy, out, *args)
    at_step(None, None)
    train(karpathy, out, *args, "--resume_from_checkpoint", "latest")
    expected, resumed = (json.loads((folder / "results.json").read_text()) for folder in (one_go, out))
    assert [(h["epoch"], h["step"]) for h in resumed["validation_history"]] == [(1, 5), (2, 10)]
    assert resumed["best_model"]["step"] == expected["best_model"]["step"]
    assert_same_weights(weights(one_go), weights(out))
