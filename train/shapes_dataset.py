"""Build and inspect the embedded shapes dataset.

    python train/shapes_dataset.py --help

Entry point only: the code is `sisc_train.synthetic.shapes` (see its docstring, or `--help`).
"""

from sisc_train.synthetic.shapes import main

if __name__ == "__main__":
    main()
