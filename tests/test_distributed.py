"""With N processes the contrastive negatives (and regulation weights) cover the global batch: 2 processes give
the same loss and the same gradients as 1 process on the concatenated batch."""

import os
import subprocess
import sys

import socket

import pytest
import torch

WORKER = os.path.join(os.path.dirname(__file__), "helpers", "distributed_itc.py")


def run(tmp_path, processes: int, norm: str):
    out = tmp_path / f"result_{processes}_{norm}.pt"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    if processes == 1:
        command = [sys.executable, WORKER, str(out), norm]
    else:
        with socket.socket() as sock:  # a free port for the rendezvous
            sock.bind(("127.0.0.1", 0))
            port = str(sock.getsockname()[1])
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
            "--master_addr", "127.0.0.1", "--master_port", port, WORKER, str(out), norm,
        ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
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
        torch.testing.assert_close(double["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
