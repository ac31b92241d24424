"""Precompute a frozen teacher's embeddings for a training split, once.

    python train/cache_teacher.py --teacher outputs/teacher [--cache_dir DIR]

Entry point only: the code is `sisc_train.tasks.teacher_cache` (see its docstring, or `--help`).
"""

from sisc_train.tasks.teacher_cache import main

if __name__ == "__main__":
    main()
