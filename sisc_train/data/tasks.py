"""Data of the downstream tasks (VQA v2 and NLVR2 layouts): where it comes from, and the processor of a checkpoint."""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass, field

import datasets
from transformers import AutoProcessor

from processing_sisc import build_default_processor
from sisc_train.synthetic.shapes_tasks import ShapesTaskConfig, load_task_dataset

logger = logging.getLogger(__name__)


@dataclass
class TaskDataArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "The pretrained SISC checkpoint to start from (or a new model: --model_config, encoder flags)."}
    )
    dataset: str = field(
        default="shapes",
        metadata={"help": "'shapes' (the embedded task data), a dataset folder saved with save_to_disk, or a Hub dataset name."},
    )
    data_cache_dir: str = field(default="data_cache/shapes", metadata={"help": "Where the embedded task data is cached."})
    shapes_num_train: int | None = field(default=None, metadata={"help": "Override the size of the embedded train split."})
    train_split: str = "train"
    validation_split: str | None = field(default="validation", metadata={"help": "Evaluated after every epoch ('' = none)."})
    eval_split: str | None = field(default="test", metadata={"help": "Evaluated at the end ('' = none)."})
    max_train_samples: int | None = None
    max_eval_samples: int | None = None


def task_evaluation_parser(description: str) -> argparse.ArgumentParser:
    """The arguments the task-evaluation scripts share: the model, its data (as for the trainers) and the batch size."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model_name_or_path", required=True)
    parser.add_argument("--dataset", default=TaskDataArguments.dataset)
    parser.add_argument("--data_cache_dir", default=TaskDataArguments.data_cache_dir)
    parser.add_argument("--shapes_num_train", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=128)
    return parser


def load_processor(path: str):
    try:
        return AutoProcessor.from_pretrained(path, trust_remote_code=True)
    except (OSError, ValueError):  # a checkpoint without a processor: the default one
        logger.warning("%s has no processor: using build_default_processor()", path)
        return build_default_processor()


# rows of the embedded task data when --shapes_num_train is not given (the ShapesTaskConfig default otherwise);
# NLVR: one true / false bit per pair, and 8,000 pairs left counting at chance (README)
SHAPES_TASK_NUM_TRAIN = {"vqa": None, "nlvr": 24000}


def load_task_data(task: str, dataset: str, cache_dir: str = "data_cache/shapes", num_train: int | None = None):
    """The DatasetDict of `task` ("vqa" / "nlvr"): the embedded shapes task data, a saved dataset folder, or a Hub
    dataset."""
    if dataset == "shapes":
        num_train = num_train if num_train is not None else SHAPES_TASK_NUM_TRAIN[task]
        config = ShapesTaskConfig(**({"num_train": num_train} if num_train is not None else {}))
        return load_task_dataset(task, config, cache_dir)
    if os.path.isdir(dataset):
        return datasets.load_from_disk(dataset)
    return datasets.load_dataset(dataset)


def limit(split, n: int | None):
    return split if n is None or n >= len(split) else split.select(range(n))
