"""Evaluate a SISC visual-reasoning model (accuracy with the majority-label baseline).

    python train/evaluate_nlvr.py --model_name_or_path outputs/sisc-small-nlvr [--splits dev test]

Entry point only: the code is `sisc_train.evaluation.nlvr` (see its docstring, or `--help`).
"""

from sisc_train.evaluation.nlvr import main

if __name__ == "__main__":
    main()
