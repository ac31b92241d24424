"""Grouped batches (--batch_groups): a permutation per epoch, groups of one key, no image twice in a group, resumable."""

import json

import datasets
import pytest

from sisc_train.data.grouping import GroupedOrder, colors_key, group_keys


def test_every_row_once_per_epoch_in_runs_of_one_key():
    keys = [i % 5 for i in range(103)]
    order = GroupedOrder(keys, group_size=4, seed=1)
    runs = order.runs()
    assert sorted(i for run in runs for i in run) == list(range(103))
    assert all(len({keys[i] for i in run}) == 1 and 1 <= len(run) <= 4 for run in runs)
    assert sum(len(run) == 4 for run in runs) >= 103 // 4 - 5  # short runs only at each key's end
    assert list(order) == [i for run in runs for i in run]
    assert len(order) == 103


def test_order_depends_on_seed_and_epoch_only():
    keys = [i % 7 for i in range(200)]
    a, b = GroupedOrder(keys, 4, seed=3), GroupedOrder(keys, 4, seed=3)
    first = list(a)
    assert first == list(b) == list(a)  # iterating again without a new epoch repeats it (a resumed epoch)
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(GroupedOrder(keys, 4, seed=4)) != first


def test_two_captions_of_one_image_go_to_different_runs():
    images = [i // 2 for i in range(80)]  # two rows per image
    keys = [image % 2 for image in images]  # 20 images per key
    for epoch in range(5):
        order = GroupedOrder(keys, 4, seed=0, image_ids=images)
        order.set_epoch(epoch)
        for run in order.runs():
            assert len({images[i] for i in run}) == len(run)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="batch_group_size"):
        GroupedOrder([0, 1], group_size=1)
    with pytest.raises(ValueError, match="image ids"):
        GroupedOrder([0, 1], 2, image_ids=[0])


def test_keys_from_a_column_or_derived_from_the_scene():
    scene = lambda *colors: json.dumps({"objects": [{"color": c, "shape": "star"} for c in colors]})
    assert colors_key(scene("red", "blue", "red")) == "blue,red"
    rows = datasets.Dataset.from_dict({"scene": [scene("red"), scene("blue", "red")], "caption": ["a", "b"]})
    assert group_keys(rows, "colors") == ["red", "blue,red"]
    assert group_keys(rows, "caption") == ["a", "b"]
    with pytest.raises(ValueError, match="no such column.*'colors'"):
        group_keys(rows, "category")
