"""Tests of the embedded shapes dataset: determinism, exact ground-truth relevance, caching, presets, layout."""

from __future__ import annotations

import json
import os
import random
import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from sisc_train.data.images import decode_image
from sisc_train.synthetic import shapes as sd
from sisc_train.synthetic.shapes import (
    COLORS,
    SHAPES,
    ShapesConfig,
    batch_relevance,
    caption_matches,
    dataset_fingerprint,
    false_negative_rate,
    generate_split_rows,
    load_shapes_dataset,
    relevance_matrix,
    retrieval_view,
    shapes_fingerprint,
)

REQUIRED_COLUMNS = {"image", "caption", "image_id", "scene", "caption_facts"}


def tiny(**overrides) -> ShapesConfig:
    values = dict(num_train=12, num_annotated=6, num_test=5, num_validation=4, image_size=32)
    values.update(overrides)
    return ShapesConfig(**values)


def scene(*objects, grid=3):
    """scene(("red", "circle", "large", 0, 0), ...) -> scene dict."""
    return {
        "grid": grid,
        "objects": [{"color": c, "shape": s, "size": z, "cell": [r, k]} for c, s, z, r, k in objects],
    }


def obj(color=None, shape=None, size=None, region=None):
    return {"color": color, "shape": shape, "size": size, "region": region}


def facts(objects=(), relations=(), counts=(), total=None):
    return {"objects": list(objects), "relations": list(relations), "counts": list(counts), "total": total}


# ------------------------------------------------------------------------------------------------ determinism


def test_same_seed_gives_identical_bytes_and_captions():
    config = tiny(partial_caption_prob=0.5)
    for split in sd.SPLITS:
        first, second = generate_split_rows(config, split), generate_split_rows(config, split)
        assert first == second  # image bytes included
    other = generate_split_rows(tiny(seed=1, partial_caption_prob=0.5), "train")
    assert other["caption"] != first["caption"] or other["image"] != generate_split_rows(config, "train")["image"]


def test_same_content_gives_different_pixels():
    config = tiny(num_train=40, content_pool_size=2)
    rows = generate_split_rows(config, "train")
    by_scene = {}
    for image, scene_json in zip(rows["image"], rows["scene"]):
        by_scene.setdefault(scene_json, set()).add(image["bytes"])
    assert len(by_scene) == 2  # two contents only ...
    assert all(len(images) > 1 for images in by_scene.values())  # ... drawn with different jitter


# ------------------------------------------------------------------------------------------------ relevance


def test_every_caption_is_relevant_to_its_own_scene():
    for config in (
        tiny(num_train=150, partial_caption_prob=0.7, max_objects=5, captions_per_image=3),
        tiny(num_train=150, grid_size=2, max_objects=4, partial_caption_prob=0.7),
        ShapesConfig.high_false_negatives(num_train=100, num_annotated=0, num_test=0),
    ):
        rows = generate_split_rows(config, "train")
        rel = relevance_matrix(rows["caption_facts"], rows["scene"])
        assert rel.diagonal().all()
        for text, facts_json, scene_json in list(zip(rows["caption"], rows["caption_facts"], rows["scene"]))[:50]:
            assert caption_matches(json.loads(facts_json), json.loads(scene_json)), text


def test_partial_caption_matches_any_scene_containing_the_subset():
    red_circle = facts([obj("red", "circle")])
    two = scene(("red", "circle", "small", 0, 0), ("blue", "square", "large", 1, 1))
    other = scene(("green", "star", "large", 2, 2), ("red", "circle", "large", 0, 2), ("red", "square", "small", 1, 0))
    missing = scene(("blue", "square", "large", 1, 1), ("red", "square", "small", 0, 0), ("green", "circle", "small", 0, 1))
    assert caption_matches(red_circle, two)
    assert caption_matches(red_circle, other)
    assert not caption_matches(red_circle, missing)  # red things and circles, but no red circle
    pair = facts([obj("red", "circle"), obj("blue", "square")])
    assert caption_matches(pair, two)
    assert not caption_matches(pair, other)
    # attribute-only facts
    assert caption_matches(facts([obj(color="red")]), missing)
    assert not caption_matches(facts([obj(shape="triangle")]), missing)
    # sizes
    assert caption_matches(facts([obj("red", "circle", size="small")]), two)
    assert not caption_matches(facts([obj("red", "circle", size="large")]), two)


def test_object_facts_need_distinct_objects():
    one_red_circle = scene(("red", "circle", "small", 0, 0), ("blue", "square", "large", 1, 1))
    two_red_circles = scene(("red", "circle", "small", 0, 0), ("red", "circle", "large", 1, 1))
    twice = facts([obj("red", "circle"), obj("red", "circle")])
    assert not caption_matches(twice, one_red_circle)
    assert caption_matches(twice, two_red_circles)
    # a shape fact and a colour fact may not both be satisfied by the only red circle
    split = facts([obj(color="red"), obj(shape="circle")])
    assert not caption_matches(split, one_red_circle)
    assert caption_matches(split, two_red_circles)


def test_count_and_total_facts_are_exact():
    two_triangles = scene(("red", "triangle", "small", 0, 0), ("blue", "triangle", "large", 1, 1), ("red", "star", "small", 2, 2))
    three_triangles = scene(("red", "triangle", "small", 0, 0), ("red", "triangle", "large", 1, 1), ("red", "triangle", "small", 2, 2))
    counted = facts(counts=[{"color": None, "shape": "triangle", "n": 2}])
    assert caption_matches(counted, two_triangles)
    assert not caption_matches(counted, three_triangles)
    reds = facts(counts=[{"color": "red", "shape": None, "n": 2}])
    assert caption_matches(reds, two_triangles) and not caption_matches(reds, three_triangles)
    assert caption_matches(facts(total=3), two_triangles)
    assert not caption_matches(facts(total=2), two_triangles)
    assert not caption_matches(facts([obj("red", "star")], total=2), two_triangles)


def test_position_and_relation_facts():
    # 3x3 grid: column 0 is left, column 2 right, row 0 top, row 2 bottom, (1, 1) the center
    s = scene(("red", "circle", "small", 0, 0), ("blue", "square", "large", 1, 1), ("green", "star", "small", 2, 1))
    assert caption_matches(facts([obj("red", "circle", region="left")]), s)
    assert caption_matches(facts([obj("red", "circle", region="top")]), s)
    assert not caption_matches(facts([obj("red", "circle", region="right")]), s)
    assert not caption_matches(facts([obj("red", "circle", region="bottom")]), s)
    assert caption_matches(facts([obj("blue", "square", region="center")]), s)
    assert not caption_matches(facts([obj("blue", "square", region="left")]), s)
    assert caption_matches(facts([obj("green", "star", region="bottom")]), s)
    assert not caption_matches(facts([obj("green", "star", region="left")]), s)  # middle column: neither side

    def rel(a, r, b):
        return facts([a, b], relations=[{"a": 0, "rel": r, "b": 1}])

    circle, square, star = obj("red", "circle"), obj("blue", "square"), obj("green", "star")
    assert caption_matches(rel(circle, "above", square), s)
    assert not caption_matches(rel(circle, "below", square), s)
    assert caption_matches(rel(star, "below", square), s)
    assert caption_matches(rel(circle, "left_of", star), s)
    assert not caption_matches(rel(square, "left_of", star), s)  # same column
    assert caption_matches(rel(star, "right_of", circle), s)
    # the relation must hold for the SAME objects that satisfy the object facts
    twin = scene(("red", "circle", "small", 2, 0), ("red", "circle", "small", 0, 2), ("blue", "square", "small", 1, 1))
    assert caption_matches(rel(circle, "above", square), twin)
    assert caption_matches(rel(circle, "below", square), twin)
    assert caption_matches(rel(circle, "above", circle), twin)  # two different red circles
    assert not caption_matches(rel(circle, "above", circle), s)  # only one red circle
    # regions of a 2x2 grid: every cell is in one row region and one column region
    s2 = scene(("red", "circle", "small", 1, 0), grid=2)
    assert caption_matches(facts([obj("red", "circle", region="bottom")]), s2)
    assert caption_matches(facts([obj("red", "circle", region="left")]), s2)
    assert not caption_matches(facts([obj("red", "circle", region="center")]), s2)


def test_relevance_matrix_and_batch_relevance_agree_with_caption_matches():
    rows = generate_split_rows(tiny(num_train=30, partial_caption_prob=0.6), "train")
    rel = relevance_matrix(rows["caption_facts"], rows["scene"])
    assert rel.shape == (60, 60) and rel.dtype == bool
    rng = random.Random(0)
    for _ in range(200):
        c, i = rng.randrange(60), rng.randrange(60)
        assert rel[c, i] == caption_matches(rows["caption_facts"][c], rows["scene"][i])
    batch = [{"caption_facts": f, "scene": s} for f, s in zip(rows["caption_facts"][:16], rows["scene"][:16])]
    assert (batch_relevance(batch) == rel[:16, :16]).all()
    assert rel.sum() > rel.shape[0]  # some partial captions match other images


_PLURALS = {sd.plural(s): s for s in SHAPES}
_NUMBERS = {w: n for n, w in enumerate(sd.NUMBER_WORDS)}


def _words(text):
    return re.findall(r"[a-z_]+", text)


def test_caption_text_states_exactly_its_facts():
    rows = generate_split_rows(tiny(num_train=120, partial_caption_prob=0.5, max_objects=4), "train")
    seen_kinds = Counter()
    for text, facts_json in zip(rows["caption"], rows["caption_facts"]):
        f = json.loads(facts_json)
        words = _words(text)
        stated_colors = {o["color"] for o in f["objects"] + f["counts"] if o["color"]}
        stated_shapes = {o["shape"] for o in f["objects"] + f["counts"] if o["shape"]}
        assert {w for w in words if w in COLORS} == stated_colors, text
        assert {_PLURALS.get(w, w) for w in words if w in SHAPES or w in _PLURALS} == stated_shapes, text
        sizes = {o["size"] for o in f["objects"] if o["size"]}
        assert {w for w in words if w in sd.SIZES} == sizes, text
        for o in f["objects"]:
            if o["region"]:
                assert any(p in text for p in sd.REGION_PHRASES[o["region"]]), text
                seen_kinds["region"] += 1
        for r in f["relations"]:
            assert sd.RELATION_PHRASES[r["rel"]] in text, text
            seen_kinds["relation"] += 1
        numbers = [_NUMBERS[w] for w in words if w in _NUMBERS]
        if f["total"] is not None:
            assert f["total"] in numbers, text
            seen_kinds["total"] += 1
        for c in f["counts"]:
            assert c["n"] in numbers, text
            seen_kinds["count"] += 1
        if not f["counts"] and f["total"] is None:
            # numbers only group identical object facts ("two red circles")
            groups = Counter(json.dumps(o, sort_keys=True) for o in f["objects"])
            assert sorted(numbers) == sorted(n for n in groups.values() if n > 1), text
            assert len(f["objects"]) >= 1
    assert set(seen_kinds) == {"region", "relation", "total", "count"}


def test_full_captions_describe_every_object_of_the_annotated_split():
    rows = generate_split_rows(tiny(num_annotated=60, max_objects=4), "annotated")
    assert not any(rows["partial"])
    for facts_json, scene_json in zip(rows["caption_facts"], rows["scene"]):
        f, s = json.loads(facts_json), json.loads(scene_json)
        assert not f["counts"]
        described = Counter((o["color"], o["shape"]) for o in f["objects"])
        assert described == Counter((o["color"], o["shape"]) for o in s["objects"])


# ------------------------------------------------------------------------------------------------ dataset, caching


def test_splits_columns_and_images(tmp_path):
    config = tiny()
    ds = load_shapes_dataset(config, cache_dir=str(tmp_path))
    assert set(ds) == {"train", "annotated", "test", "validation"}
    assert len(ds["train"]) == config.num_train * config.captions_per_image
    assert len(ds["annotated"]) == config.num_annotated * config.annotated_captions_per_image
    assert len(ds["test"]) == config.num_test * config.test_captions_per_image
    assert len(ds["validation"]) == config.num_validation * config.test_captions_per_image
    ids = {}
    for name, split in ds.items():
        assert REQUIRED_COLUMNS <= set(split.column_names)
        ids[name] = set(split.select_columns(["image_id"])[:]["image_id"])
        row = split[0]
        assert isinstance(row["image"], Image.Image)
        assert row["image"].mode == "RGB" and row["image"].size == (config.image_size, config.image_size)
        assert isinstance(row["caption"], str) and row["caption"]
        json.loads(row["scene"]), json.loads(row["caption_facts"])
    assert len(ids["train"]) == config.num_train and len(ids["test"]) == config.num_test
    assert len(ids["validation"]) == config.num_validation
    all_ids = [ids[name] for name in ("train", "annotated", "test", "validation")]
    assert sum(map(len, all_ids)) == len(set().union(*all_ids)), "image ids must be unique across the splits"
    assert dataset_fingerprint(ds) == dataset_fingerprint(ds["test"]) == shapes_fingerprint(config)


def test_cache_is_reused_and_keyed_by_config(tmp_path, monkeypatch):
    config = tiny()
    first = load_shapes_dataset(config, cache_dir=str(tmp_path))
    folder = tmp_path / f"shapes-{shapes_fingerprint(config)}"
    assert (folder / "dataset_dict.json").exists()
    meta = json.loads((folder / "shapes_meta.json").read_text())
    assert meta["shapes_fingerprint"] == shapes_fingerprint(config)

    def no_build(*args, **kwargs):
        raise AssertionError("the cached dataset should have been loaded, not regenerated")

    monkeypatch.setattr(sd, "build_shapes_dataset", no_build)
    second = load_shapes_dataset(tiny(), cache_dir=str(tmp_path))  # equal config => same fingerprint
    assert second["train"][:]["caption"] == first["train"][:]["caption"]
    with pytest.raises(AssertionError, match="regenerated"):
        load_shapes_dataset(tiny(seed=3), cache_dir=str(tmp_path))
    assert shapes_fingerprint(tiny(seed=3)) != shapes_fingerprint(config)
    assert shapes_fingerprint(tiny(partial_caption_prob=0.5)) != shapes_fingerprint(config)
    monkeypatch.undo()
    load_shapes_dataset(tiny(seed=3), cache_dir=str(tmp_path))
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert folders == sorted(f"shapes-{shapes_fingerprint(c)}" for c in (config, tiny(seed=3)))


def test_fingerprint_depends_on_generator_version(monkeypatch):
    before = shapes_fingerprint(tiny())
    monkeypatch.setattr(sd, "GENERATOR_VERSION", sd.GENERATOR_VERSION + "-next")
    assert shapes_fingerprint(tiny()) != before


def test_retrieval_view(tmp_path):
    config = tiny(num_test=7, partial_caption_prob=0.8)
    test = load_shapes_dataset(config, cache_dir=str(tmp_path))["test"]
    images, captions, caption_to_image, relevance = retrieval_view(test)
    images = [decode_image(image) for image in images]
    assert len(images) == 7 and len(captions) == 7 * config.test_captions_per_image == len(caption_to_image)
    assert all(im.mode == "RGB" and im.size == (32, 32) for im in images)
    assert relevance.shape == (len(captions), 7) and relevance.dtype == bool
    assert relevance[np.arange(len(captions)), caption_to_image].all()
    assert sorted(Counter(caption_to_image).values()) == [config.test_captions_per_image] * 7
    rows = test[:]
    for c, caption in enumerate(captions):
        assert rows["caption"][c] == caption
        assert json.loads(rows["scene"][c]) == json.loads(test[[i for i, k in enumerate(caption_to_image) if k == caption_to_image[c]][0]]["scene"])


# ------------------------------------------------------------------------------------------------ false negatives


def test_presets_order_false_negative_rates():
    rates = {}
    for name in ("low", "default", "high"):
        config = ShapesConfig.preset(name, num_train=300, num_annotated=0, num_test=0, image_size=16)
        import datasets

        rows = generate_split_rows(config, "train")
        rows.pop("image")
        rates[name] = false_negative_rate(datasets.Dataset.from_dict(rows), batch_size=64, num_batches=40)
    assert 0.0 < rates["low"] < rates["default"] < rates["high"]
    assert rates["low"] < 0.04 and rates["high"] > 0.08


def test_false_negative_rate_ignores_captions_of_the_same_image():
    import datasets

    one_image = {"caption_facts": [sd.facts_to_json(facts([obj("red", "circle")]))] * 4, "scene": [sd.scene_to_json(scene(("red", "circle", "small", 0, 0)))] * 4, "image_id": [7] * 4}
    assert false_negative_rate(datasets.Dataset.from_dict(one_image), batch_size=4, num_batches=2) == 0.0
    two_images = dict(one_image, image_id=[1, 1, 2, 2])
    assert false_negative_rate(datasets.Dataset.from_dict(two_images), batch_size=4, num_batches=2) == 1.0


# ------------------------------------------------------------------------------------------------ command line


def test_cli_build_and_export(tmp_path, capsys):
    out = tmp_path / "built"
    sd.main(["--out", str(out), "--num_train", "6", "--num_annotated", "2", "--num_test", "3", "--image_size", "16", "--preset", "high"])
    printed = capsys.readouterr().out
    assert "false negatives" in printed and "train" in printed
    import datasets

    loaded = datasets.load_from_disk(str(out))
    assert len(loaded["train"]) == 12 and dataset_fingerprint(loaded) == json.loads((out / "shapes_meta.json").read_text())["shapes_fingerprint"]

    examples = tmp_path / "examples"
    sd.main(["--export_examples", str(examples), "--n", "4", "--image_size", "24"])
    entries = json.loads((examples / "captions.json").read_text())
    assert len(entries) == 4
    for entry in entries:
        assert set(entry) == {"image", "captions"} and len(entry["captions"]) == 3
        with Image.open(examples / entry["image"]) as im:
            assert im.size == (24, 24)


def test_bundled_examples_are_consistent():
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "shapes")
    entries = json.load(open(os.path.join(root, "captions.json")))
    details = json.load(open(os.path.join(root, "relevance.json")))
    assert len(entries) == 8
    for entry in entries:
        with Image.open(os.path.join(root, entry["image"])) as im:
            assert im.mode == "RGB" and im.size == (64, 64)
        assert 2 <= len(entry["captions"]) <= 3
    names = [e["image"] for e in entries]
    scenes = [details["scenes"][n] for n in names]
    for item in details["captions"]:
        truth = [names[i] for i in np.flatnonzero(relevance_matrix([item["caption_facts"]], scenes)[0])]
        assert truth == item["relevant_images"] and item["image"] in truth
    assert any(len(item["relevant_images"]) > 1 for item in details["captions"] if item["partial"])


# ------------------------------------------------------------------------------------------------ caption negatives


def test_caption_negative_swaps_one_shape_and_is_false_of_the_scene():
    rows = generate_split_rows(tiny(num_train=150, partial_caption_prob=0.5), "train")
    kinds = Counter()
    for text, facts_json, scene_json in zip(rows["caption"], rows["caption_facts"], rows["scene"]):
        negative = sd.caption_negative(text, facts_json, scene_json, random.Random(0), SHAPES[:6], COLORS[:8])
        f = json.loads(facts_json)
        stated = f["objects"] + f["counts"]
        key = "shape" if any(o["shape"] for o in stated) else "color"
        if not negative:  # only captions naming neither a shape nor a colour ("there are two objects")
            assert not any(o["color"] or o["shape"] for o in stated), text
            kinds["none"] += 1
            continue
        kinds[key] += 1

        def named(caption):  # the shapes (or colours) a caption names
            words = _words(caption)
            return {_PLURALS.get(w, w) for w in words if w in SHAPES or w in _PLURALS} if key == "shape" else set(words) & set(COLORS)

        changed = (set(_words(negative)) ^ set(_words(text))) - {"a", "an"}  # articles follow the swapped word
        assert changed and changed <= set(SHAPES) | set(_PLURALS) | set(COLORS), (text, negative)
        (old,) = named(text) - named(negative)  # one word swapped, wherever it occurs
        swaps = named(negative) - named(text) or named(negative)  # or into a word the caption already had
        swapped = [json.loads(json.dumps(f)) for _ in swaps]
        for new_facts, new in zip(swapped, swaps):
            for o in new_facts["objects"] + new_facts["counts"]:
                o[key] = new if o[key] == old else o[key]
        assert any(not caption_matches(g, scene_json) for g in swapped), (text, negative)
    assert kinds["shape"] > 5 * kinds["color"] > 0 and kinds["none"] > 0


def test_caption_negative_fits_the_article_and_gives_up_when_nothing_is_false():
    one_orange = scene(("orange", "circle", "large", 0, 0))
    colour_only = facts([obj(color="orange")])
    negative = sd.caption_negative("an orange object", colour_only, one_orange, random.Random(0), colors=("orange", "red"))
    assert negative == "a red object"
    # every shape of the vocabulary is in the scene: swapping "circle" keeps the caption true, so colours are tried
    two = scene(("red", "circle", "large", 0, 0), ("red", "star", "large", 1, 1))
    negative = sd.caption_negative("a red circle", facts([obj("red", "circle")]), two, random.Random(0),
                                   shapes=("circle", "star"), colors=("red", "blue"))
    assert negative == "a blue circle"
    assert sd.caption_negative("there are two objects", facts(total=2), two, random.Random(0)) == ""


def test_with_caption_negatives_is_deterministic(tmp_path):
    config = tiny()
    split = load_shapes_dataset(config, cache_dir=str(tmp_path))["train"]
    first = sd.with_caption_negatives(split, config)["negative_caption"]
    assert first == sd.with_caption_negatives(split, config)["negative_caption"]
    assert sum(bool(n) for n in first) >= len(first) - 3
