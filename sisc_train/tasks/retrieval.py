"""Fine-tune a pretrained SISC checkpoint for image-text retrieval: SRCL + ITM, model selection on a validation split.

    accelerate launch train/finetune_retrieval.py --model_name_or_path outputs/sisc-small
    accelerate launch train/finetune_retrieval.py --text_model_name_or_path bert-base-uncased \\
        --vision_model_name_or_path openai/clip-vit-base-patch16 --model_config base   # straight from encoders
    accelerate launch train/finetune_retrieval.py --model_name_or_path M --dataset coco_karpathy.json \\
        --image_root coco/ --train_split train --validation_split val --eval_split test --push_to_hub me/sisc-coco

As in the paper's retrieval fine-tuning, the contrastive loss stays regulated but without a teacher: the weights come
from the fine-tuned model's own (detached) similarities (alpha = 0), the ITM loss with hard negatives is kept and the
MLM loss (and the optional auxiliaries: negative captions, word prediction) is switched off. After every epoch the
model is evaluated on the validation split (ITC ranking) and the best one by `--metric_for_best_model` is kept; the
final test metrics, with ITM re-ranking of the top `--rerank_k`, go to `results.json` and the model card.
This is `train/pretrain.py`'s trainer with these defaults: every option of that script can be given here too.
"""

from __future__ import annotations

import sys

from sisc_train.tasks.encoders import START_FLAGS
from sisc_train.tasks.pretraining import PretrainingTask
from sisc_train.tasks.pretraining import main as pretraining_main

# the preset: pretraining's arguments with the paper's retrieval fine-tuning settings (README, 'Defaults')
FINETUNE_DEFAULTS = {
    "loss": "srcl",
    "alpha_start": 0.0,  # no teacher: the regulation weights come from the model being fine-tuned
    "alpha_end": 0.0,
    "alpha_schedule": "constant",
    "mlm_loss_weight": 0.0,
    "negative_caption_loss_weight": 0.0,  # the pretraining-only auxiliaries, like MLM
    "word_prediction_loss_weight": 0.0,
    "train_split": "train",
    "validation_split": "validation",
    "eval_split": "test",
    "output_dir": "outputs/sisc-small-retrieval",
    "num_epochs": 3,
    "learning_rate": 2e-4,
    "warmup_steps": 20,
    "rerank_k": 16,
    "metric_for_best_model": "r_mean",
}


class RetrievalFinetuningTask(PretrainingTask):
    name = "finetune"
    fine_tuned_for = "image-text retrieval"


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    given = {arg.split("=", 1)[0] for arg in argv}
    starts = {"--model_name_or_path", *(f"--{name}" for name in START_FLAGS)}
    if not given & {*starts, "--config", "--help", "-h"}:  # --help prints the options instead
        raise SystemExit("finetune_retrieval.py needs --model_name_or_path (the pretrained SISC checkpoint to start from) "
                         "or the parts of a new model (--text_model_name_or_path, --vision_model_name_or_path, "
                         "--model_config)")
    return pretraining_main(argv, defaults=FINETUNE_DEFAULTS, task_class=RetrievalFinetuningTask)


if __name__ == "__main__":
    main()
