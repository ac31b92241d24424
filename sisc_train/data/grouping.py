"""Harder in-batch negatives: an epoch order that puts rows sharing a key into the same batch, in small groups.

With random batches, a contrastive model needs only the coarsest cue that tells a batch's images apart (on the
shapes data: their colours). Groups of rows that share that cue (`--batch_groups colors`: the same set of colours)
make every batch hold images that differ only in finer content (which shapes, how many), so ITC and the ITM hard
negatives must learn it. The order is a permutation of all rows (each row once per epoch) and depends only on the
seed and the epoch, so a resumed run sees the batches an uninterrupted one would. On the shapes data it taught the
small model no shapes and made its ITM head worse (benchmarks/README.md, "Why the main job's image tower does not
see shapes", part 4), so it is off by default.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from typing import Sequence

from torch.utils.data import Sampler


class GroupedOrder(Sampler[int]):
    """Row order for a DataLoader (`sampler=`, consecutive `batch_size` rows form a batch): rows of one key come in
    runs of `group_size`, runs of all keys shuffled together. A key with fewer rows left than a group gives a shorter
    run. Two rows of one image (`image_ids`) go to different runs where the key has enough images: a duplicated image
    would be a false negative, not a hard one."""

    def __init__(self, keys: Sequence, group_size: int, seed: int = 0, image_ids: Sequence | None = None):
        if group_size < 2:
            raise ValueError(f"--batch_group_size must be >= 2 (1 would be a plain shuffle), got {group_size}")
        if image_ids is not None and len(image_ids) != len(keys):
            raise ValueError(f"{len(image_ids)} image ids for {len(keys)} rows")
        self.group_size, self.seed, self.epoch = group_size, seed, 0
        self.buckets: dict = defaultdict(list)
        for index, key in enumerate(keys):
            self.buckets[key].append(index)
        self.num_rows = len(keys)
        # occurrence rank of each row among the rows of its image: rank-0 rows are ordered before rank-1 rows of a key
        self.rank = [0] * len(keys)
        if image_ids is not None:
            seen: dict = defaultdict(int)
            for index, image in enumerate(image_ids):
                self.rank[index], seen[image] = seen[image], seen[image] + 1

    def set_epoch(self, epoch: int) -> None:  # Accelerate calls this at every epoch's start (through the DataLoader)
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_rows

    def runs(self) -> list[list[int]]:
        rng = random.Random(f"{self.seed}:{self.epoch}")
        runs = []
        for key in sorted(self.buckets, key=str):  # a fixed key order: the shuffle alone decides
            rows = list(self.buckets[key])
            rng.shuffle(rows)
            rows.sort(key=lambda index: self.rank[index])  # stable: shuffled within each rank
            runs += [rows[start : start + self.group_size] for start in range(0, len(rows), self.group_size)]
        rng.shuffle(runs)
        return runs

    def __iter__(self):
        for run in self.runs():
            yield from run


def colors_key(scene_json: str) -> str:
    """The shapes data's grouping key `colors`: the set of colours in a scene (`scene` column), e.g. "blue,red"."""
    return ",".join(sorted({obj["color"] for obj in json.loads(scene_json)["objects"]}))


DERIVED_KEYS = {"colors": ("scene", colors_key)}  # key name: (column it is computed from, function)


def group_keys(rows, column: str) -> list:
    """The grouping key of every row: a column of the data, or a key derived from one (`DERIVED_KEYS`)."""
    names = list(rows.column_names)
    if column in names:
        return list(rows[column])
    if column in DERIVED_KEYS and DERIVED_KEYS[column][0] in names:
        source, function = DERIVED_KEYS[column]
        return [function(value) for value in rows[source]]
    derived = [name for name, (source, _) in DERIVED_KEYS.items() if source in names]
    raise ValueError(f"--batch_groups {column!r}: the training data has no such column; it has {names}"
                     + (f", and the derived key(s) {derived}" if derived else ""))
