#!/usr/bin/env bash
# The main job: sets up the environment (first run: a few minutes), then pretrains the small default SISC model
# on the embedded shapes dataset in two stages, evaluates zero-shot retrieval and saves the checkpoint to
# outputs/sisc-small: first the image tower and its word head alone for 1,000 steps (saved to
# outputs/sisc-small-tower; from scratch the joint losses leave the tower blind to shapes, benchmarks/README.md
# part 6), then every loss for 7 epochs from there, without dropout in the text and fusion encoders (faster
# steps, and the ITM head learns in fewer of them: benchmarks/README.md part 8). Extra arguments go to
# train/pretrain.py after these and override them (e.g. --loss infonce, --num_epochs 2; --image_tower_steps 0: one
# stage from scratch).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
# accelerate launch gives a CPU process one thread unless told otherwise: use every core (SISC_NUM_THREADS=1 when
# other jobs share them)
accelerate launch --num_cpu_threads_per_process "${SISC_NUM_THREADS:-$(nproc)}" train/pretrain.py \
    --image_tower_steps 1000 --num_epochs 7 --text_dropout 0 "$@"
