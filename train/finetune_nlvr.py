"""Fine-tune a pretrained SISC checkpoint for NLVR2-style visual reasoning (text assignment first).

    accelerate launch train/finetune_nlvr.py --model_name_or_path outputs/sisc-small

Entry point only: the code is `sisc_train.tasks.nlvr` (see its docstring, or `--help`).
"""

from sisc_train.tasks.nlvr import main

if __name__ == "__main__":
    main()
