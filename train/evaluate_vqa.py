"""Evaluate a SISC VQA model (VQA accuracy, predictions in the official format).

    python train/evaluate_vqa.py --model_name_or_path outputs/sisc-small-vqa [--split test]

Entry point only: the code is `sisc_train.evaluation.vqa` (see its docstring, or `--help`).
"""

from sisc_train.evaluation.vqa import main

if __name__ == "__main__":
    main()
