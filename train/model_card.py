"""Render the model card of a checkpoint folder from its results.

    python -m train.model_card OUTPUT_DIR --metrics OUTPUT_DIR/results.json

Entry point only: the code is `sisc_train.publishing.model_card` (see its docstring, or `--help`).
"""

from sisc_train.publishing.model_card import main

if __name__ == "__main__":
    main()
