#!/usr/bin/env bash
# The main job: sets up the environment (first run: a few minutes), then pretrains the small default SISC model
# on the embedded shapes dataset, evaluates zero-shot retrieval and saves the checkpoint to outputs/sisc-small.
# Extra arguments go to train/pretrain.py (e.g. --loss infonce, --max_steps 50).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
# accelerate launch gives a CPU process one thread unless told otherwise: use every core (SISC_NUM_THREADS=1 when
# other jobs share them)
accelerate launch --num_cpu_threads_per_process "${SISC_NUM_THREADS:-$(nproc)}" train/pretrain.py "$@"
