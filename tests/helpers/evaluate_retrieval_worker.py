"""Runs train/evaluate_retrieval.py's main() in this process (1 process, or one torchrun worker) with the given
arguments, then leaves without waiting for gloo's teardown (which can hang on CPU after the work is done)."""

import os
import sys

from sisc_train.evaluation.retrieval import main

if __name__ == "__main__":
    main(sys.argv[1:])
    sys.stdout.flush()
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    os._exit(0)
