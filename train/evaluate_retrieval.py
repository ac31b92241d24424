"""Image-text retrieval evaluation: ITC ranking and ITM re-ranking of the top k.

    accelerate launch train/evaluate_retrieval.py --model outputs/sisc-small [--rerank_k 16]

Entry point only: the code is `sisc_train.evaluation.retrieval` (see its docstring, or `--help`).
"""

from sisc_train.evaluation.retrieval import main

if __name__ == "__main__":
    main()
