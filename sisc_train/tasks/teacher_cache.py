"""`train/cache_teacher.py`: build the teacher cache (`sisc_train.data.teacher_cache`) of a training split, once."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from transformers import AutoProcessor, HfArgumentParser

from modeling_sisc import SiscModel
from sisc_train.data.teacher_cache import build_teacher_cache, data_key, teacher_key
from sisc_train.tasks.pretraining import DataArguments, load_data


@dataclass
class CacheArguments:
    teacher: str = field(metadata={"help": "Frozen teacher checkpoint (a SISC model folder)."})
    cache_dir: str | None = field(default=None, metadata={"help": "Output folder (default: beside the data)."})
    batch_size: int = 256


def main(argv=None) -> str:
    cache_args, data_args = HfArgumentParser((CacheArguments, DataArguments)).parse_args_into_dataclasses(args=argv)
    if data_args.streaming:
        raise ValueError("the teacher cache needs a map-style dataset (not --streaming)")
    teacher = SiscModel.from_pretrained(cache_args.teacher)
    processor = AutoProcessor.from_pretrained(cache_args.teacher, trust_remote_code=True)
    # only the training rows: no evaluation data (which a data file without a test split does not have)
    only_train = dict(eval_split=None, validation_split=None, eval_dataset=None, validation_dataset=None)
    rows = load_data(replace(data_args, **only_train))[0]
    output_dir = cache_args.cache_dir or os.path.join(
        data_args.data_cache_dir if data_args.dataset == "shapes" else os.path.dirname(os.path.abspath(data_args.dataset)),
        f"teacher_cache_{teacher_key(teacher)}_{data_key(rows)[:12]}",
    )
    build_teacher_cache(teacher, processor, rows, output_dir, cache_args.batch_size)
    print(f"teacher cache for {len(rows)} rows written to {output_dir}")
    return output_dir


if __name__ == "__main__":
    main()
