"""Build and inspect the embedded VQA / NLVR task data.

    python train/shapes_tasks.py --help

Entry point only: the code is `sisc_train.synthetic.shapes_tasks` (see its docstring, or `--help`).
"""

from sisc_train.synthetic.shapes_tasks import main

if __name__ == "__main__":
    main()
