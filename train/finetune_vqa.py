"""Fine-tune a pretrained SISC checkpoint for visual question answering.

    accelerate launch train/finetune_vqa.py --model_name_or_path outputs/sisc-small

Entry point only: the code is `sisc_train.tasks.vqa` (see its docstring, or `--help`).
"""

from sisc_train.tasks.vqa import main

if __name__ == "__main__":
    main()
