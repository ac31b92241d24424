"""train/launch.py: launches that would silently run one process, or duplicate ones, are refused with the command
that works; a lone CPU process on one thread of several cores is warned about."""

import logging
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from sisc_train.loop.launch import check_launch, launch_problem

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKING = "ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes"


def test_cpu_flag_with_several_processes_is_refused_with_the_working_command():
    # what `accelerate launch --cpu --num_processes 2` gives the script: the CPU flag, a rendezvous, one process
    env = {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    problem = launch_problem(env, 1, "train/pretrain.py", cpu_count=8)
    assert "starts a single process" in problem and f"{WORKING} N" in problem and "train/pretrain.py" in problem


def test_processes_that_would_each_train_alone_are_refused():
    # `accelerate launch --multi_gpu --num_processes 2` without a GPU: two processes, each a world of one
    env = {"WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_PORT": "29500"}
    problem = launch_problem(env, 1, "train/evaluate_retrieval.py", cpu_count=8)
    assert "each train alone" in problem
    assert f"{WORKING} 2 --num_cpu_threads_per_process 4 train/evaluate_retrieval.py" in problem


@pytest.mark.parametrize(
    "env, processes",
    [
        ({}, 1),  # plain python or accelerate launch, one process
        ({"ACCELERATE_USE_CPU": "True"}, 1),  # accelerate launch --cpu
        ({"ACCELERATE_USE_CPU": "true", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_PORT": "1234"}, 2),  # works
        ({"MASTER_PORT": "29500"}, 1),  # a rendezvous port left in the environment, no CPU launch
    ],
)
def test_launches_that_run_as_asked_pass(env, processes):
    assert launch_problem(env, processes) is None


def test_one_thread_on_a_multi_core_cpu_is_warned_about(caplog, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    threads = torch.get_num_threads()
    accelerator = SimpleNamespace(num_processes=1, device=torch.device("cpu"))
    try:
        torch.set_num_threads(1)
        with caplog.at_level(logging.WARNING, logger="sisc_train.loop.launch"):
            check_launch(accelerator, "train/pretrain.py")
        assert "--num_cpu_threads_per_process 4" in caplog.text
        caplog.clear()
        torch.set_num_threads(2)
        with caplog.at_level(logging.WARNING, logger="sisc_train.loop.launch"):
            check_launch(accelerator, "train/pretrain.py")
        assert caplog.text == ""
    finally:
        torch.set_num_threads(threads)


def test_accelerate_launch_cpu_with_two_processes_stops_before_work(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    proc = subprocess.run(
        [accelerate, "launch", "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "train/evaluate_retrieval.py", "--model", str(tmp_path / "not-read")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode != 0
    assert "starts a single process" in proc.stderr and WORKING in proc.stderr
