"""Pretrain SISC (the main job): regulated ITC (SRCL) + ITM + MLM, optional teacher.

    accelerate launch train/pretrain.py [--config FILE.yaml|json] [--key value ...]

Entry point only: the code is `sisc_train.tasks.pretraining` (see its docstring, or `--help`).
"""

from sisc_train.tasks.pretraining import main

if __name__ == "__main__":
    main()
