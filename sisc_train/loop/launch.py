"""Checks that a script runs as the processes and threads it was launched for.

Two ways `accelerate launch` quietly gives less than was asked on a machine without a GPU (Accelerate 1.x):
- `--cpu --num_processes N` starts ONE process (its simple launcher only runs several CPU processes under MPI), and
  `--multi_gpu --num_processes N` starts N processes that each train alone (no GPU, so no process group), all writing
  the same output folder. Several CPU processes need `ACCELERATE_USE_CPU=true` with the multi-process launcher
  (torchrun underneath): `check_launch` refuses the other two and prints that command.
- every CPU process gets `OMP_NUM_THREADS=1` unless `--num_cpu_threads_per_process` is given, so a single training
  process uses one core of many: `check_launch` warns with the flag to pass.
"""

from __future__ import annotations

import logging
import os
import sys

import torch

logger = logging.getLogger(__name__)

WORKING_CPU_COMMAND = (
    "ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes {n} --num_cpu_threads_per_process {threads} "
    "{script} ..."
)


def launch_problem(env: dict, num_processes: int, script: str = "train/pretrain.py", cpu_count: int | None = None) -> str | None:
    """Why this process does not run as launched (an error message), or None. Pure: `env` is the environment,
    `num_processes` what Accelerate actually runs."""
    cores = cpu_count or os.cpu_count() or 1
    world_size = int(env.get("WORLD_SIZE", "1") or 1)
    if world_size > 1 and num_processes == 1:
        # torchrun / --multi_gpu started several processes, but Accelerate found no GPU and no CPU flag: each would
        # train alone and overwrite the others' output
        return (
            f"this is one of {world_size} launched processes, but Accelerate runs it as a single process (no GPU, and "
            f"ACCELERATE_USE_CPU is not set): the {world_size} processes would each train alone into the same output "
            f"folder. On a CPU-only machine run: "
            + WORKING_CPU_COMMAND.format(n=world_size, threads=max(cores // world_size, 1), script=script)
        )
    launched_for_several = "MASTER_PORT" in env and "WORLD_SIZE" not in env and "LOCAL_RANK" not in env
    if env.get("ACCELERATE_USE_CPU", "").lower() in ("true", "1") and launched_for_several and num_processes == 1:
        # accelerate's simple launcher sets MASTER_ADDR / MASTER_PORT only for --num_processes > 1, then starts one
        return (
            "`accelerate launch --cpu --num_processes N` starts a single process on a machine without MPI (Accelerate "
            "runs several CPU processes only under mpirun). To run N processes on the CPU use: "
            + WORKING_CPU_COMMAND.format(n="N", threads="T", script=script)
            + f" (N x T <= {cores} cores)"
        )
    return None


def check_launch(accelerator, script: str | None = None) -> None:
    """Refuse a launch that silently runs fewer (or duplicated) processes; warn when a lone CPU process uses one
    thread on a machine with more cores. Call right after creating the Accelerator."""
    if script is None:
        script = os.path.relpath(sys.argv[0]) if sys.argv and sys.argv[0].endswith(".py") else "train/pretrain.py"
    problem = launch_problem(dict(os.environ), accelerator.num_processes, script)
    if problem:
        raise SystemExit(f"error: {problem}")
    cores = os.cpu_count() or 1
    if accelerator.device.type == "cpu" and accelerator.num_processes == 1 and torch.get_num_threads() == 1 and cores > 1:
        logger.warning(
            "running on the CPU with 1 thread of %d cores (accelerate launch sets OMP_NUM_THREADS=1 unless told "
            "otherwise): pass `accelerate launch --num_cpu_threads_per_process %d ...` to use the machine, or keep 1 "
            "when other jobs share the cores", cores, cores,
        )
