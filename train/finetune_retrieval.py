"""Fine-tune a pretrained SISC checkpoint for image-text retrieval.

    accelerate launch train/finetune_retrieval.py --model_name_or_path outputs/sisc-small

Entry point only: the code is `sisc_train.tasks.retrieval` (see its docstring, or `--help`).
"""

from sisc_train.tasks.retrieval import main

if __name__ == "__main__":
    main()
