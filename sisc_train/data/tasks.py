"""Data of the downstream tasks (VQA v2 and NLVR2 layouts): where it comes from, and the processor of a checkpoint.

`load_task_data` reads (the format detected from the file / folder contents, or `--data_format`):
- "shapes": the embedded task data (`sisc_train/synthetic/shapes_tasks.py`, whose row layout every reader produces);
- VQA: "vqa_v2", the official questions + annotations files (a folder of them: splits train / validation / test /
  test-dev from train2014 / val2014 / test2015 / test-dev2015; or one questions file, its annotations found beside
  it), and "albef_vqa", ALBEF's `vqa_train.json` / `vqa_val.json` / `vg_qa.json` / `vqa_test.json` (a folder: splits
  train / val / vg_qa / test; or one file: the split named by the file);
- NLVR: "nlvr2", the official JSON-lines `train.json` / `dev.json` / `test1.json` (splits train / dev / test), and
  "albef_nlvr", ALBEF's `nlvr_train.json` / `nlvr_dev.json` / `nlvr_test.json` (train / dev / test);
- "saved" (save_to_disk) and "hub" (a Hub id, or a local folder laid out as one, with `--dataset_config`).
Image paths are relative to `--image_root` (default: the data file's folder) and decoded lazily by the collators.
A split name may join splits with "+" (ALBEF's VQA trains on `train+val+vg_qa`).
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass, field

import datasets
from transformers import AutoProcessor

from processing_sisc import build_default_processor
from sisc_train.data.formats import (
    DATA_FORMATS,
    FORMAT_HELP,
    TASK_FORMATS,
    detect_format,
    load_hub,
    read_task_split,
    resolve_image_paths,
    task_file_splits,
)
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
        metadata={"help": "'shapes' (the embedded task data), official VQA v2 / NLVR2 files (a file or their folder), ALBEF's "
                          "VQA / NLVR files, a dataset folder saved with save_to_disk, or a Hub dataset id."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Configuration of a Hub dataset (load_dataset's name=)."})
    data_format: str | None = field(default=None, metadata={"help": FORMAT_HELP})
    image_root: str | None = field(
        default=None,
        metadata={"help": "Folder the image paths of the data files are under (default: the data file's folder); for "
                          "ALBEF's VQA files also per source: vqa=coco/images,vg=visual_genome."},
    )
    data_cache_dir: str = field(default="data_cache/shapes", metadata={"help": "Where the embedded task data is cached."})
    shapes_num_train: int | None = field(default=None, metadata={"help": "Override the size of the embedded train split."})
    train_split: str = field(default="train", metadata={"help": "Split to train on; 'a+b' joins splits (e.g. train+val+vg_qa)."})
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
    parser.add_argument("--dataset_config", default=None, help="configuration of a Hub dataset")
    parser.add_argument("--data_format", default=None, choices=DATA_FORMATS, help=FORMAT_HELP)
    parser.add_argument("--image_root", default=None, help="folder the image paths of the data files are under")
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


def load_task_data(task: str, dataset: str, cache_dir: str = "data_cache/shapes", num_train: int | None = None, *,
                   dataset_config: str | None = None, data_format: str | None = None, image_root: str | None = None,
                   splits: list[str] | None = None) -> datasets.DatasetDict:
    """The DatasetDict of `task` ("vqa" / "nlvr"): the embedded shapes task data, or `dataset` in one of the formats
    of the module docstring. `splits`: read only these (names joined with "+" are concatenated), and fail, naming
    the splits there are, when one is missing."""
    if dataset == "shapes":
        num_train = num_train if num_train is not None else SHAPES_TASK_NUM_TRAIN[task]
        config = ShapesTaskConfig(**({"num_train": num_train} if num_train is not None else {}))
        return select_splits(load_task_dataset(task, config, cache_dir), splits, dataset)
    kind = detect_format(dataset, data_format, dataset_config, TASK_FORMATS[task])
    if kind in ("saved", "hub"):
        data = (datasets.load_from_disk(dataset) if kind == "saved" else load_hub(dataset, None, dataset_config))
        data = select_splits(data, splits, dataset)
        root = image_root or (os.path.abspath(dataset) if kind == "hub" and os.path.isdir(dataset) else None)
        return resolve_image_paths(data, root) if root else data  # image paths relative to a local folder
    sources = task_file_splits(dataset, kind)
    wanted = list(dict.fromkeys(p for name in (splits or sources) for p in name.split("+")))
    missing = [name for name in wanted if name not in sources]
    if missing:
        raise ValueError(f"{dataset!r} ({kind}) has no split {missing[0]!r}; its splits are {sorted(sources)}")
    read = datasets.DatasetDict({name: read_task_split(kind, sources[name], image_root) for name in wanted})
    return select_splits(read, splits, dataset)


def select_splits(data, splits: list[str] | None, dataset: str):
    """`data` with only `splits` (all when None); "a+b" is the concatenation of the splits a and b."""
    if splits is None:
        return data
    chosen = {}
    for name in dict.fromkeys(splits):
        parts = name.split("+")
        for part in parts:
            if part not in data:
                raise ValueError(f"{dataset!r} has no split {part!r}; its splits are {sorted(data)}")
        chosen[name] = data[parts[0]] if len(parts) == 1 else datasets.concatenate_datasets([data[p] for p in parts])
    return datasets.DatasetDict(chosen)


def limit(split, n: int | None):
    return split if n is None or n >= len(split) else split.select(range(n))
