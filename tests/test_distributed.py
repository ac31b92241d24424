"""With N processes the contrastive negatives (and regulation weights) cover the global batch: 2 processes give
the same loss and the same gradients as 1 process on the concatenated batch."""

import os
import subprocess
import sys

import signal

import pytest
import torch

WORKER = os.path.join(os.path.dirname(__file__), "helpers", "distributed_itc.py")


def run(tmp_path, processes: int, norm: str):
    out = tmp_path / f"result_{processes}_{norm}.pt"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    if processes == 1:
        command = [sys.executable, WORKER, str(out), norm]
    else:
        # --standalone: torchrun picks a free local port for the rendezvous itself
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
            WORKER, str(out), norm,
        ]
    # own process group, so that a hung run is killed whole (workers included) instead of outliving the test
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        # torchrun may start its workers in sessions of their own: kill them by their unique output path
        subprocess.run(["pkill", "-9", "-f", str(out)], check=False)
        pytest.fail(f"{processes}-process run timed out after 180 s")
    assert proc.returncode == 0, stderr[-3000:]
    return torch.load(out)


@pytest.mark.parametrize("norm", ["mean", "softmax"])
def test_two_processes_equal_one_process(tmp_path, norm):
    single = run(tmp_path, 1, norm)
    double = run(tmp_path, 2, norm)
    assert double["world"] == 2
    torch.testing.assert_close(double["loss"], single["loss"], rtol=1e-5, atol=1e-6)
    # the weights were computed over the global batch (8 x 8), not the local half
    assert double["weights_t2i"].shape == (8, 8)
    torch.testing.assert_close(double["weights_t2i"], single["weights_t2i"], rtol=1e-5, atol=1e-6)
    assert single["grads"].keys() == double["grads"].keys() and len(single["grads"]) > 10
    for name, grad in single["grads"].items():
        # float sums in another order: an element near zero of a large gradient differs by rounding at that scale
        torch.testing.assert_close(double["grads"][name], grad, rtol=1e-4, atol=1e-6 + 1e-5 * grad.abs().max().item(), msg=name)
