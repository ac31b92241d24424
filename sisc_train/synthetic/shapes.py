"""The embedded default dataset of SISC: synthetic coloured-shape scenes with captions of KNOWN relevance.

Why it exists: SISC's loss (SRCL) down-weights in-batch negatives that are really (partial) positives. To train,
evaluate and benchmark that on a CPU in minutes we need image-caption data that is many-to-many *by construction*
and whose ground truth is exact: for every caption and every image we know whether the caption is true of the image.

Scenes and images
    A scene is 1..`max_objects` objects on a plain dark background, each object a (colour, shape, size, grid cell)
    with distinct cells of a `grid_size` x `grid_size` grid. Images are drawn with PIL at twice `image_size` and
    box-downsampled (anti-aliased); the exact position inside the cell, the radius, the object colours and the
    background tint are jittered per image, so two images of the same scene content differ in their pixels.

Captions and their meaning
    Every caption is generated *from* a structured meaning, its facts (JSON in the `caption_facts` column)::

        {"objects":   [{"color": "red"|null, "shape": "circle"|null, "size": "small"|"large"|null,
                        "region": "left"|"right"|"top"|"bottom"|"center"|null}, ...],
         "relations": [{"a": 0, "rel": "above"|"below"|"left_of"|"right_of", "b": 1}, ...],
         "counts":    [{"color": str|null, "shape": str|null, "n": 2}, ...],
         "total":     3 | null}

    A caption is true of (relevant to) a scene iff (`caption_matches`):
      * the object facts can be matched to pairwise DIFFERENT objects of the scene (every stated attribute equal;
        a region holds when the object's cell lies in it) such that every relation holds between the matched
        objects (rows for above/below, columns for left_of/right_of);
      * every count fact holds exactly (exactly n objects have the stated colour and/or shape);
      * the number of objects equals `total` when it is given.
    Full captions describe every object of their scene (e.g. "a red circle and two blue squares",
    "three objects: ...", "a red circle on the left and a blue star at the top", "a blue square above a yellow
    circle"); partial captions describe a part only ("a red circle" for a scene with more objects, "a red shape",
    "there are two triangles", "an image with three objects", "a green star on the left", relations between two of
    several objects). A partial caption is relevant to every scene that contains what it states, which is what makes
    in-batch false negatives. Each caption is checked to be relevant to its own scene when it is generated.

Splits (`load_shapes_dataset`), all with ONE ROW PER (image, caption) PAIR, rows of an image consecutive:
    train      `num_train` images x `captions_per_image` captions; a caption is partial with probability
               `partial_caption_prob`; with `content_pool_size` the scene contents are drawn from a pool of that
               many distinct contents (many images share their content => more false negatives).
    annotated  `num_annotated` fresh images x `annotated_captions_per_image` FULL captions (the clean,
               human-annotation-like split the teacher is trained on).
    test       `num_test` fresh held-out images x `test_captions_per_image` captions; the first caption of an
               image is full, the others are partial with probability `partial_caption_prob`.
    validation `num_validation` further held-out images, built like test (model selection while fine-tuning, so
               that the test split stays unseen).
               `retrieval_view(split)` turns it into (images, captions, caption -> image, relevance matrix).
    Columns: image (datasets.Image, PNG), image_id (int64, unique per image across the splits: train ids first,
    then annotated, then test, then validation), caption (str), caption_index (int32, index of the caption among its image's),
    partial (bool, the caption was drawn as a partial one), num_objects (int32), scene (JSON str), caption_facts
    (JSON str).

Caching: the DatasetDict is built once and saved under `<cache_dir>/shapes-<fingerprint>`; the fingerprint
(`shapes_fingerprint(config)`) hashes the config and `GENERATOR_VERSION`, and is stored in each split's
`info.description` (`dataset_fingerprint(ds)`) and in `shapes_meta.json` beside the data.

Command line::

    python train/shapes_dataset.py [--preset default|low|high] [--num_train N ...] [--out DIR]
    python train/shapes_dataset.py --preset high --export_examples examples/shapes --n 8
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import logging
import os
import random
import re
import shutil
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Sequence

import datasets
import numpy as np
from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

GENERATOR_VERSION = "1"  # bump whenever generated images or captions change: it invalidates every cache

SPLITS = ("train", "annotated", "test", "validation")

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 205),
    "orange": (245, 140, 20),
    "white": (240, 240, 240),
    "cyan": (40, 210, 220),
    "pink": (245, 130, 190),
    "brown": (140, 85, 40),
}
COLORS = tuple(PALETTE)
# ordered from most to least distinguishable at small sizes: `num_shapes` takes a prefix
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond", "ring", "hexagon", "pentagon")
SIZES = ("small", "large")
REGIONS = ("left", "right", "top", "bottom", "center")
RELATIONS = ("above", "below", "left_of", "right_of")

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
REGION_PHRASES = {
    "left": ("on the left",),
    "right": ("on the right",),
    "top": ("at the top",),
    "bottom": ("at the bottom",),
    "center": ("in the center", "in the middle"),
}
RELATION_PHRASES = {"above": "above", "below": "below", "left_of": "to the left of", "right_of": "to the right of"}
PREFIXES = ("", "", "an image with ", "a picture of ", "a scene showing ", "a drawing of ", "a picture containing ")
BACKGROUND = (40, 40, 40)
RENDER_SCALE = 2  # draw at this multiple of image_size, then box-downsample (anti-aliasing)


# ----------------------------------------------------------------------------------------------------------------
# configuration


@dataclass
class ShapesConfig:
    """Everything that determines the dataset (its fingerprint hashes all fields). Defaults: ~4.7% of the in-batch
    negatives of the train split are false negatives at batch size 64 (`false_negative_rate`).

    seed: master seed; the same config gives byte-identical images and captions.
    image_size: side of the square RGB images in pixels.
    num_train / num_annotated / num_test / num_validation: number of IMAGES in each split (rows = images x captions
        per image).
    captions_per_image / annotated_captions_per_image / test_captions_per_image: captions per image of each split
        (validation uses test_captions_per_image).
    num_colors / num_shapes: how many colours (of `COLORS`) and shapes (of `SHAPES`) scenes use; fewer => more
        scenes share facts => more false negatives.
    min_objects / max_objects: number of objects per scene, uniform in [min, max].
    grid_size: objects sit in distinct cells of a grid_size x grid_size grid (regions: left/right/top/bottom
        columns/rows, and the center cell when grid_size is odd).
    partial_caption_prob: probability that a train (and non-first test) caption describes only part of its scene.
    content_pool_size: None = every train scene drawn fresh; an int = train scene contents drawn from a pool of that
        many distinct contents (images of one content differ only by jitter), which raises the false-negative rate.
    size_in_caption_prob: probability that a caption of a kind that names objects also names their sizes.
    background_noise: std of per-pixel Gaussian noise on the background (0 = plain); noise makes PNGs larger.
    """

    seed: int = 0
    image_size: int = 64
    num_train: int = 5000
    captions_per_image: int = 2
    num_annotated: int = 1000
    annotated_captions_per_image: int = 2
    num_test: int = 500
    test_captions_per_image: int = 3
    num_validation: int = 300
    num_colors: int = 8
    num_shapes: int = 6
    min_objects: int = 1
    max_objects: int = 3
    grid_size: int = 3
    partial_caption_prob: float = 0.25
    content_pool_size: int | None = None
    size_in_caption_prob: float = 0.25
    background_noise: float = 0.0

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if not 1 <= self.num_colors <= len(COLORS):
            raise ValueError(f"num_colors must be in 1..{len(COLORS)}, got {self.num_colors}")
        if not 1 <= self.num_shapes <= len(SHAPES):
            raise ValueError(f"num_shapes must be in 1..{len(SHAPES)}, got {self.num_shapes}")
        if self.grid_size < 1:
            raise ValueError(f"grid_size must be >= 1, got {self.grid_size}")
        if not 1 <= self.min_objects <= self.max_objects <= self.grid_size**2:
            raise ValueError(
                f"need 1 <= min_objects <= max_objects <= grid_size**2, got {self.min_objects}, {self.max_objects}, "
                f"grid {self.grid_size}"
            )
        if self.max_objects >= len(NUMBER_WORDS):
            raise ValueError(f"max_objects must be < {len(NUMBER_WORDS)}")
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")
        for name in ("num_train", "num_annotated", "num_test", "num_validation"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("captions_per_image", "annotated_captions_per_image", "test_captions_per_image"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("partial_caption_prob", "size_in_caption_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        if self.content_pool_size is not None and self.content_pool_size < 1:
            raise ValueError("content_pool_size must be None or >= 1")
        if self.background_noise < 0:
            raise ValueError("background_noise must be >= 0")

    @classmethod
    def low_false_negatives(cls, **overrides) -> "ShapesConfig":
        """Few false negatives (~1.4% of in-batch negatives at batch 64): the default colours and shapes, 2-3
        objects per scene (no one-object scenes, whose full captions are as broad as partial ones), rare partial
        captions (10%), every scene fresh."""
        values = dict(min_objects=2, partial_caption_prob=0.1)
        values.update(overrides)
        return cls(**values)

    @classmethod
    def high_false_negatives(cls, **overrides) -> "ShapesConfig":
        """Many false negatives (~15.5% at batch 64): fewer colours (6) and shapes (5), frequent partial captions
        (70%), and train scenes drawn from a pool of 100 contents (~50 images per content at 5000 images)."""
        values = dict(num_colors=6, num_shapes=5, partial_caption_prob=0.7, content_pool_size=100)
        values.update(overrides)
        return cls(**values)

    @classmethod
    def preset(cls, name: str, **overrides) -> "ShapesConfig":
        """`"default"`, `"low"` or `"high"`."""
        presets = {"default": cls, "low": cls.low_false_negatives, "high": cls.high_false_negatives}
        if name not in presets:
            raise ValueError(f"unknown shapes preset {name!r}; choose one of {sorted(presets)}")
        return presets[name](**overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def shapes_fingerprint(config: ShapesConfig | None = None) -> str:
    """Hash of the config and GENERATOR_VERSION: names the cache folder, keys downstream caches to this data."""
    config = config or ShapesConfig()
    payload = json.dumps({"config": config.to_dict(), "generator_version": GENERATOR_VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def dataset_fingerprint(dataset) -> str | None:
    """The shapes fingerprint stored in a loaded split (or any split of a DatasetDict), None if there is none."""
    if hasattr(dataset, "values") and not hasattr(dataset, "info"):  # DatasetDict
        for split in dataset.values():
            return dataset_fingerprint(split)
        return None
    try:
        return json.loads(dataset.info.description or "{}").get("shapes_fingerprint")
    except (ValueError, AttributeError):
        return None


# ----------------------------------------------------------------------------------------------------------------
# scenes


def _regions_of_cell(row: int, col: int, grid: int) -> frozenset[str]:
    mid = (grid - 1) / 2
    regions = set()
    if col < mid:
        regions.add("left")
    elif col > mid:
        regions.add("right")
    if row < mid:
        regions.add("top")
    elif row > mid:
        regions.add("bottom")
    if row == mid and col == mid:
        regions.add("center")
    return frozenset(regions)


def random_scene(rng: random.Random, config: ShapesConfig) -> dict:
    """A scene's semantic content (no pixels, no jitter), in canonical order (by cell)."""
    n = rng.randint(config.min_objects, config.max_objects)
    cells = sorted(rng.sample(range(config.grid_size**2), n))
    objects = [
        {
            "color": rng.choice(COLORS[: config.num_colors]),
            "shape": rng.choice(SHAPES[: config.num_shapes]),
            "size": rng.choice(SIZES),
            "cell": [cell // config.grid_size, cell % config.grid_size],
        }
        for cell in cells
    ]
    return {"grid": config.grid_size, "objects": objects}


def scene_to_json(scene: dict) -> str:
    return json.dumps(scene, sort_keys=True, separators=(",", ":"))


def _content_pool(config: ShapesConfig) -> list[dict]:
    """`content_pool_size` distinct scene contents (deterministic given the seed)."""
    pool, seen = [], set()
    attempts = 0
    while len(pool) < config.content_pool_size:
        content = random_scene(random.Random(f"{config.seed}:pool:{attempts}"), config)
        attempts += 1
        key = scene_to_json(content)
        if key not in seen:
            seen.add(key)
            pool.append(content)
        elif attempts > 50 * config.content_pool_size + 1000:
            raise ValueError(f"cannot draw {config.content_pool_size} distinct scene contents with this config")
    return pool


# ----------------------------------------------------------------------------------------------------------------
# rendering


def _polygon(cx: float, cy: float, radius: float, points: int, rotation: float = -90.0, inner: float | None = None):
    vertices = []
    count = points * 2 if inner is not None else points
    for k in range(count):
        r = radius if inner is None or k % 2 == 0 else radius * inner
        angle = np.deg2rad(rotation + 360.0 * k / count)
        vertices.append((cx + r * np.cos(angle), cy + r * np.sin(angle)))
    return vertices


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(2, round(r * 0.38)))
    elif shape == "square":
        h = r * 0.82
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy + r * 0.15, r * 1.05, 3), fill=fill)
    elif shape == "star":
        draw.polygon(_polygon(cx, cy + r * 0.08, r * 1.05, 5, inner=0.45), fill=fill)
    elif shape == "diamond":
        draw.polygon(_polygon(cx, cy, r, 4), fill=fill)
    elif shape == "hexagon":
        draw.polygon(_polygon(cx, cy, r, 6, rotation=0.0), fill=fill)
    elif shape == "pentagon":
        draw.polygon(_polygon(cx, cy + r * 0.05, r, 5), fill=fill)
    elif shape == "cross":
        a = r * 0.34
        draw.rectangle([cx - r, cy - a, cx + r, cy + a], fill=fill)
        draw.rectangle([cx - a, cy - r, cx + a, cy + r], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def render_scene(scene: dict, rng: random.Random, image_size: int = 64, background_noise: float = 0.0) -> Image.Image:
    """Draw a scene with per-image jitter of position, radius, colours and background tint (RGB, image_size^2)."""
    side = image_size * RENDER_SCALE
    grid = scene["grid"]
    cell = side / grid
    tint = tuple(min(255, max(0, c + rng.randint(-6, 6))) for c in BACKGROUND)
    image = Image.new("RGB", (side, side), tint)
    if background_noise > 0:
        noise = np.random.default_rng(rng.getrandbits(64)).normal(0.0, background_noise, (side, side, 3))
        image = Image.fromarray(np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for obj in scene["objects"]:
        row, col = obj["cell"]
        half = cell / 2
        radius = half * (0.82 if obj["size"] == "large" else 0.48) * rng.uniform(0.9, 1.08)
        slack = max(0.0, half - radius - RENDER_SCALE)
        cx = col * cell + half + rng.uniform(-slack, slack)
        cy = row * cell + half + rng.uniform(-slack, slack)
        fill = tuple(min(255, max(0, c + rng.randint(-12, 12))) for c in PALETTE[obj["color"]])
        _draw_shape(draw, obj["shape"], cx, cy, radius, fill)
    return image.reduce(RENDER_SCALE) if RENDER_SCALE > 1 else image


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------------------------
# captions: facts first, then text rendered from the facts


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x", "ch", "sh")) else "s")


def _with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _join(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _object_fact(obj: dict, *, color=True, shape=True, size=False, region=None) -> dict:
    return {
        "color": obj["color"] if color else None,
        "shape": obj["shape"] if shape else None,
        "size": obj["size"] if size else None,
        "region": region,
    }


def _noun_phrase(fact: dict, count: int, rng: random.Random) -> str:
    """'a small red circle', 'two blue squares', 'a red shape', 'something red', 'two circles'."""
    adjectives = [w for w in (fact["size"], fact["color"]) if w]
    if fact["shape"] is None:
        if count == 1 and not fact["size"] and rng.random() < 0.3:
            return f"something {fact['color']}"
        noun = rng.choice(("shape", "object"))
        noun = noun if count == 1 else noun + "s"
    else:
        noun = fact["shape"] if count == 1 else plural(fact["shape"])
    body = " ".join(adjectives + [noun])
    return _with_article(body) if count == 1 else f"{NUMBER_WORDS[count]} {body}"


def _grouped_list(facts: list[dict], rng: random.Random) -> str:
    """Noun phrases of object facts, identical facts grouped ('two red circles'), in order of first appearance."""
    groups: dict[str, list] = {}
    for fact in facts:
        groups.setdefault(json.dumps(fact, sort_keys=True), [fact, 0])[1] += 1
    return _join([_noun_phrase(fact, count, rng) for fact, count in groups.values()])


def _empty_facts() -> dict:
    return {"objects": [], "relations": [], "counts": [], "total": None}


def _relation_between(a: dict, b: dict, rng: random.Random) -> str | None:
    (ra, ca), (rb, cb) = a["cell"], b["cell"]
    options = []
    if ra != rb:
        options.append("above" if ra < rb else "below")
    if ca != cb:
        options.append("left_of" if ca < cb else "right_of")
    return rng.choice(options) if options else None


def _relation_caption(objects: list[dict], pair: tuple[int, int], rng: random.Random, size: bool):
    a, b = objects[pair[0]], objects[pair[1]]
    rel = _relation_between(a, b, rng)
    facts = _empty_facts()
    facts["objects"] = [_object_fact(a, size=size), _object_fact(b, size=size)]
    facts["relations"] = [{"a": 0, "rel": rel, "b": 1}]
    text = f"{_noun_phrase(facts['objects'][0], 1, rng)} {RELATION_PHRASES[rel]} {_noun_phrase(facts['objects'][1], 1, rng)}"
    return rng.choice(PREFIXES[:3]) + text, facts


def _region_phrase(region: str, rng: random.Random) -> str:
    return rng.choice(REGION_PHRASES[region])


def full_caption(scene: dict, rng: random.Random, size_prob: float = 0.25) -> tuple[str, dict]:
    """A caption describing every object of the scene (colour and shape always; sizes sometimes)."""
    objects = scene["objects"]
    size = rng.random() < size_prob
    kind = rng.choices(("list", "total", "regions", "relation"), weights=(0.45, 0.2, 0.2, 0.15))[0]
    if kind == "relation" and len(objects) != 2:
        kind = "list"
    if kind == "relation":
        return _relation_caption(objects, (0, 1) if rng.random() < 0.5 else (1, 0), rng, size)
    facts = _empty_facts()
    if kind == "regions":
        grid = scene["grid"]
        order = list(range(len(objects)))
        rng.shuffle(order)
        parts = []
        for i in order:
            region = rng.choice(sorted(_regions_of_cell(*objects[i]["cell"], grid)))
            fact = _object_fact(objects[i], size=size, region=region)
            facts["objects"].append(fact)
            parts.append(f"{_noun_phrase(fact, 1, rng)} {_region_phrase(region, rng)}")
        return rng.choice(PREFIXES) + _join(parts), facts
    shuffled = list(objects)
    rng.shuffle(shuffled)
    facts["objects"] = [_object_fact(o, size=size) for o in shuffled]
    listing = _grouped_list(facts["objects"], rng)
    if kind == "total":
        n = len(objects)
        facts["total"] = n
        noun = rng.choice(("object", "shape")) + ("s" if n > 1 else "")
        head = rng.choice((f"there {'is' if n == 1 else 'are'} {NUMBER_WORDS[n]} {noun}: ", f"{NUMBER_WORDS[n]} {noun}: "))
        return head + listing, facts
    return rng.choice(PREFIXES) + listing, facts


def partial_caption(scene: dict, rng: random.Random, size_prob: float = 0.25) -> tuple[str, dict]:
    """A caption stating only part of what is in the scene (true of every scene that contains that part)."""
    objects = scene["objects"]
    n = len(objects)
    size = rng.random() < size_prob
    if n == 1:
        kind = rng.choices(("attribute", "count"), weights=(0.6, 0.4))[0]
    else:
        kinds = ("subset", "attribute", "count", "region", "relation")
        kind = rng.choices(kinds, weights=(0.35, 0.15, 0.2, 0.15, 0.15 if n >= 3 else 0.0))[0]
    facts = _empty_facts()
    if kind == "subset":
        k = rng.randint(1, n - 1)
        chosen = rng.sample(objects, k)
        facts["objects"] = [_object_fact(o, size=size) for o in chosen]
        return rng.choice(PREFIXES) + _grouped_list(facts["objects"], rng), facts
    if kind == "attribute":
        obj = rng.choice(objects)
        keep_color = rng.random() < 0.5
        fact = _object_fact(obj, color=keep_color, shape=not keep_color)
        facts["objects"] = [fact]
        return rng.choice(PREFIXES) + _noun_phrase(fact, 1, rng), facts
    if kind == "region":
        obj = rng.choice(objects)
        region = rng.choice(sorted(_regions_of_cell(*obj["cell"], scene["grid"])))
        fact = _object_fact(obj, size=size, region=region)
        facts["objects"] = [fact]
        return rng.choice(PREFIXES[:3]) + f"{_noun_phrase(fact, 1, rng)} {_region_phrase(region, rng)}", facts
    if kind == "relation":
        return _relation_caption(objects, tuple(rng.sample(range(n), 2)), rng, size)
    # counts: of a shape, of a colour, or of all objects
    what = rng.choices(("shape", "color", "total"), weights=(0.45, 0.25, 0.3))[0]
    if what == "total":
        facts["total"] = n
        noun = rng.choice(("object", "shape")) + ("s" if n > 1 else "")
        head = rng.choice(("an image with ", "a picture of ", "there are " if n > 1 else "there is "))
        return head + f"{NUMBER_WORDS[n]} {noun}", facts
    obj = rng.choice(objects)
    key = obj[what]
    count = sum(o[what] == key for o in objects)
    fact = {"color": key if what == "color" else None, "shape": key if what == "shape" else None, "n": count}
    facts["counts"] = [fact]
    phrase = _noun_phrase({"color": fact["color"], "shape": fact["shape"], "size": None}, count, rng)
    if count == 1 and phrase.startswith("something"):
        phrase = f"one {fact['color']} object"
    elif count == 1:
        phrase = "one " + phrase.split(" ", 1)[1]
    head = rng.choice((f"there {'is' if count == 1 else 'are'} ", f"there {'is' if count == 1 else 'are'} ", "an image with "))
    return head + phrase, facts


def facts_to_json(facts: dict) -> str:
    return json.dumps(facts, sort_keys=True, separators=(",", ":"))


# ----------------------------------------------------------------------------------------------------------------
# relevance


def _compile_scene(scene: dict) -> tuple:
    grid = scene["grid"]
    return tuple(
        (o["color"], o["shape"], o["size"], o["cell"][0], o["cell"][1], _regions_of_cell(o["cell"][0], o["cell"][1], grid))
        for o in scene["objects"]
    )


def _compile_facts(facts: dict) -> tuple:
    objects = tuple((f.get("color"), f.get("shape"), f.get("size"), f.get("region")) for f in facts.get("objects", ()))
    relations = tuple((r["a"], r["rel"], r["b"]) for r in facts.get("relations", ()))
    counts = tuple((c.get("color"), c.get("shape"), c["n"]) for c in facts.get("counts", ()))
    return objects, relations, counts, facts.get("total")


@lru_cache(maxsize=65536)
def _compiled_scene_json(text: str) -> tuple:
    return _compile_scene(json.loads(text))


@lru_cache(maxsize=65536)
def _compiled_facts_json(text: str) -> tuple:
    return _compile_facts(json.loads(text))


def _as_compiled_scene(scene) -> tuple:
    return _compiled_scene_json(scene) if isinstance(scene, str) else _compile_scene(scene)


def _as_compiled_facts(facts) -> tuple:
    return _compiled_facts_json(facts) if isinstance(facts, str) else _compile_facts(facts)


def _relation_holds(rel: str, a: tuple, b: tuple) -> bool:
    if rel == "above":
        return a[3] < b[3]
    if rel == "below":
        return a[3] > b[3]
    if rel == "left_of":
        return a[4] < b[4]
    if rel == "right_of":
        return a[4] > b[4]
    raise ValueError(f"unknown relation {rel!r}")


def _matches_compiled(facts: tuple, scene: tuple) -> bool:
    objects, relations, counts, total = facts
    if total is not None and total != len(scene):
        return False
    for color, shape, n in counts:
        if sum((color is None or o[0] == color) and (shape is None or o[1] == shape) for o in scene) != n:
            return False
    if not objects:
        return True
    candidates = []
    for color, shape, size, region in objects:
        options = [
            i
            for i, o in enumerate(scene)
            if (color is None or o[0] == color)
            and (shape is None or o[1] == shape)
            and (size is None or o[2] == size)
            and (region is None or region in o[5])
        ]
        if not options:
            return False
        candidates.append(options)
    if len(objects) > len(scene):
        return False
    if len(objects) == 1:
        return True
    # injective assignment of object facts to scene objects satisfying every relation (tiny: backtracking)
    assignment: list[int] = []

    def extend(k: int) -> bool:
        if k == len(objects):
            return all(_relation_holds(rel, scene[assignment[a]], scene[assignment[b]]) for a, rel, b in relations)
        for i in candidates[k]:
            if i not in assignment:
                assignment.append(i)
                if extend(k + 1):
                    return True
                assignment.pop()
        return False

    return extend(0)


def caption_matches(caption_facts: dict | str, scene: dict | str) -> bool:
    """Whether a caption (its facts, dict or JSON) is true of a scene (dict or JSON). See the module docstring."""
    return _matches_compiled(_as_compiled_facts(caption_facts), _as_compiled_scene(scene))


def relevance_matrix(caption_facts_list: Sequence[dict | str], scenes_list: Sequence[dict | str]) -> np.ndarray:
    """Boolean (n_captions, n_images) matrix: [c, i] = caption c is true of scene i. Duplicates are computed once."""
    fact_keys = [f if isinstance(f, str) else facts_to_json(f) for f in caption_facts_list]
    scene_keys = [s if isinstance(s, str) else scene_to_json(s) for s in scenes_list]
    unique_facts = {k: i for i, k in enumerate(dict.fromkeys(fact_keys))}
    unique_scenes = {k: i for i, k in enumerate(dict.fromkeys(scene_keys))}
    compiled_facts = [_compiled_facts_json(k) for k in unique_facts]
    compiled_scenes = [_compiled_scene_json(k) for k in unique_scenes]
    small = np.zeros((len(compiled_facts), len(compiled_scenes)), dtype=bool)
    for r, facts in enumerate(compiled_facts):
        row = small[r]
        for c, scene in enumerate(compiled_scenes):
            row[c] = _matches_compiled(facts, scene)
    rows = np.fromiter((unique_facts[k] for k in fact_keys), dtype=np.int64, count=len(fact_keys))
    cols = np.fromiter((unique_scenes[k] for k in scene_keys), dtype=np.int64, count=len(scene_keys))
    return small[np.ix_(rows, cols)] if len(rows) and len(cols) else np.zeros((len(rows), len(cols)), dtype=bool)


def batch_relevance(rows: Sequence[dict]) -> np.ndarray:
    """(n, n) ground truth of a batch of rows (each with `caption_facts` and `scene`): [i, j] = caption i is true
    of image j. The diagonal is always True. Used by the training collator for false-negative diagnostics."""
    return relevance_matrix([r["caption_facts"] for r in rows], [r["scene"] for r in rows])


# ----------------------------------------------------------------------------------------------------------------
# caption negatives: a caption false of its image that differs from the true one in one word


def _swap_word(text: str, old: str, new: str) -> str:
    """`old` -> `new` as whole words (plurals too), then every article fitted to its next word ("an orange" -> "a red")."""
    text = re.sub(rf"\b{re.escape(plural(old))}\b", plural(new), text)
    text = re.sub(rf"\b{re.escape(old)}\b", new, text)
    return re.sub(r"\b(a|an) (\w+)", lambda m: _with_article(m.group(2)), text)


def _swap_fact(facts: dict, key: str, old: str, new: str) -> dict:
    swapped = json.loads(json.dumps(facts))
    for fact in swapped["objects"] + swapped["counts"]:
        if fact.get(key) == old:
            fact[key] = new
    return swapped


def caption_negative(caption: str, caption_facts: dict | str, scene: dict | str, rng: random.Random,
                     shapes: Sequence[str] = SHAPES, colors: Sequence[str] = COLORS) -> str:
    """A hard negative caption for contrastive training (NegCLIP-style word swap): one shape the caption names
    replaced by another shape ("a red star" -> "a red circle"), or, when it names no shape, one colour by another;
    checked (`caption_matches`) to be false of the caption's own scene. "" when no swap makes it false.

    Shapes come first because they are what a from-scratch image tower learns last: in-batch negatives almost
    always differ in colour or count, so nothing asks the image embedding for shapes (benchmarks/README.md)."""
    facts = json.loads(caption_facts) if isinstance(caption_facts, str) else caption_facts
    stated = facts["objects"] + facts["counts"]
    for key, vocabulary in (("shape", shapes), ("color", colors)):
        named = sorted({fact[key] for fact in stated if fact.get(key)})
        rng.shuffle(named)
        for old in named:
            for new in rng.sample([w for w in vocabulary if w != old], len(vocabulary) - 1):
                if not caption_matches(_swap_fact(facts, key, old, new), scene):
                    return _swap_word(caption, old, new)
    return ""


def with_caption_negatives(split, config: ShapesConfig):
    """The split with a `negative_caption` column (`caption_negative` of each row within the config's shapes and
    colours, "" where there is none), drawn per (seed, image, caption): the same on every run. datasets caches the
    result beside the split; a stream (`IterableDataset`) derives it as it is read."""
    shapes, colors = SHAPES[: config.num_shapes], COLORS[: config.num_colors]

    def add(batch):
        negatives = []
        for caption, facts, scene, image_id, index in zip(batch["caption"], batch["caption_facts"], batch["scene"],
                                                          batch["image_id"], batch["caption_index"]):
            rng = random.Random(f"{config.seed}:negative:{image_id}:{index}")
            negatives.append(caption_negative(caption, facts, scene, rng, shapes, colors))
        return {"negative_caption": negatives}

    progress = {"desc": "caption negatives"} if isinstance(split, datasets.Dataset) else {}  # a stream has no bar
    return split.map(add, batched=True, **progress)


# ----------------------------------------------------------------------------------------------------------------
# generation


def _caption_for(scene: dict, rng: random.Random, partial: bool, config: ShapesConfig) -> tuple[str, dict]:
    text, facts = (partial_caption if partial else full_caption)(scene, rng, config.size_in_caption_prob)
    if not caption_matches(facts, scene):  # generator and relevance must agree exactly
        raise AssertionError(f"generated caption {text!r} is not true of its own scene {scene}")
    return text, facts


def _split_layout(config: ShapesConfig) -> dict[str, tuple[int, int, int]]:
    """split -> (number of images, captions per image, first image_id)."""
    layout, offset = {}, 0
    for split, n, per in (
        ("train", config.num_train, config.captions_per_image),
        ("annotated", config.num_annotated, config.annotated_captions_per_image),
        ("test", config.num_test, config.test_captions_per_image),
        ("validation", config.num_validation, config.test_captions_per_image),
    ):
        layout[split] = (n, per, offset)
        offset += n
    return layout


def generate_split_rows(config: ShapesConfig, split: str, num_images: int | None = None) -> dict[str, list]:
    """Columns (dict of lists, image as {"bytes", "path"}) of one split; deterministic per (seed, split, index)."""
    n, per, first_id = _split_layout(config)[split]
    n = n if num_images is None else num_images
    pool = _content_pool(config) if split == "train" and config.content_pool_size else None
    columns: dict[str, list] = {k: [] for k in ("image", "image_id", "caption", "caption_index", "partial", "num_objects", "scene", "caption_facts")}
    for index in range(n):
        rng = random.Random(f"{config.seed}:{split}:{index}")
        scene = pool[rng.randrange(len(pool))] if pool is not None else random_scene(rng, config)
        scene_json = scene_to_json(scene)
        png = png_bytes(render_scene(scene, rng, config.image_size, config.background_noise))
        for k in range(per):
            if split == "annotated":
                partial = False
            elif split in ("test", "validation") and k == 0:
                partial = False
            else:
                partial = rng.random() < config.partial_caption_prob
            text, facts = _caption_for(scene, rng, partial, config)
            columns["image"].append({"bytes": png, "path": None})
            columns["image_id"].append(first_id + index)
            columns["caption"].append(text)
            columns["caption_index"].append(k)
            columns["partial"].append(partial)
            columns["num_objects"].append(len(scene["objects"]))
            columns["scene"].append(scene_json)
            columns["caption_facts"].append(facts_to_json(facts))
    return columns


def _features():
    return datasets.Features(
        {
            "image": datasets.Image(),
            "image_id": datasets.Value("int64"),
            "caption": datasets.Value("string"),
            "caption_index": datasets.Value("int32"),
            "partial": datasets.Value("bool"),
            "num_objects": datasets.Value("int32"),
            "scene": datasets.Value("string"),
            "caption_facts": datasets.Value("string"),
        }
    )


def _description(config: ShapesConfig) -> str:
    return json.dumps(
        {
            "shapes_fingerprint": shapes_fingerprint(config),
            "generator_version": GENERATOR_VERSION,
            "config": config.to_dict(),
        },
        sort_keys=True,
    )


def build_shapes_dataset(config: ShapesConfig | None = None):
    """Generate the DatasetDict in memory (no caching; see `load_shapes_dataset`)."""
    config = config or ShapesConfig()
    config.validate()
    features = _features()
    splits = {}
    for split in SPLITS:
        info = datasets.DatasetInfo(description=_description(config), features=features)
        splits[split] = datasets.Dataset.from_dict(generate_split_rows(config, split), features=features, info=info)
    return datasets.DatasetDict(splits)


def shapes_cache_path(config: ShapesConfig | None = None, cache_dir: str = "data_cache/shapes") -> str:
    return os.path.join(cache_dir, f"shapes-{shapes_fingerprint(config or ShapesConfig())}")


def _write_meta(path: str, config: ShapesConfig, sizes: dict[str, int], seconds: float | None = None) -> None:
    meta = {
        "shapes_fingerprint": shapes_fingerprint(config),
        "generator_version": GENERATOR_VERSION,
        "config": config.to_dict(),
        "rows": sizes,
        "build_seconds": seconds,
    }
    with open(os.path.join(path, "shapes_meta.json"), "w") as handle:
        json.dump(meta, handle, indent=2, sort_keys=True)


def load_shapes_dataset(config: ShapesConfig | None = None, cache_dir: str = "data_cache/shapes"):
    """The dataset for `config`: loaded from `<cache_dir>/shapes-<fingerprint>` if it was built before, otherwise
    built, saved there (atomically: written to a temporary folder, then renamed) and returned."""
    config = config or ShapesConfig()
    config.validate()
    return load_or_build(
        shapes_cache_path(config, cache_dir),
        lambda: build_shapes_dataset(config),
        f"dataset (fingerprint {shapes_fingerprint(config)})",
        write_meta=lambda tmp, dataset, seconds: _write_meta(tmp, config, {k: len(v) for k, v in dataset.items()}, seconds),
    )


def load_or_build(path: str, build, what: str, write_meta=None):
    """`datasets.load_from_disk(path)`, after building the DatasetDict with `build()` and saving it there when it is
    not cached yet. Saved atomically (a temporary folder, then a rename), so concurrent processes never read half a
    dataset; `write_meta(tmp_folder, dataset, seconds)` adds files beside it before the rename."""
    if os.path.exists(os.path.join(path, "dataset_dict.json")):
        print(f"[shapes] loading cached dataset {path}", file=sys.stderr, flush=True)
        logger.info("loading cached shapes dataset from %s", path)
        return datasets.load_from_disk(path)
    print(f"[shapes] building {what} into {path}", file=sys.stderr, flush=True)
    logger.info("building shapes %s into %s", what, path)
    start = time.perf_counter()
    dataset = build()
    seconds = time.perf_counter() - start
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}-{time.time_ns()}"
    dataset.save_to_disk(tmp)
    if write_meta is not None:
        write_meta(tmp, dataset, seconds)
    try:
        os.replace(tmp, path)
    except OSError:  # another process finished first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"[shapes] built in {seconds:.1f}s: " + ", ".join(f"{k} {len(v)} rows" for k, v in dataset.items()), file=sys.stderr, flush=True)
    return datasets.load_from_disk(path)


# ----------------------------------------------------------------------------------------------------------------
# measurements and views


def _text_columns(split, names: Iterable[str]) -> dict[str, list]:
    return split.select_columns(list(names))[:]


def false_negative_rate(dataset_split, batch_size: int = 64, num_batches: int = 200, seed: int = 0) -> float:
    """Expected fraction of in-batch negatives that are in fact relevant: over `num_batches` random batches
    (rows drawn without replacement, as a shuffled DataLoader does), the share of off-diagonal (caption i, image j)
    pairs of DIFFERENT images for which caption i is true of image j."""
    columns = _text_columns(dataset_split, ("caption_facts", "scene", "image_id"))
    n = len(columns["image_id"])
    if n < 2:
        return 0.0
    batch_size = min(batch_size, n)
    facts = np.asarray(columns["caption_facts"], dtype=object)
    scenes = np.asarray(columns["scene"], dtype=object)
    ids = np.asarray(columns["image_id"])
    rng = np.random.default_rng(seed)
    relevant = total = 0
    for _ in range(num_batches):
        idx = rng.choice(n, size=batch_size, replace=False)
        rel = relevance_matrix(list(facts[idx]), list(scenes[idx]))
        negative = ids[idx][:, None] != ids[idx][None, :]
        relevant += int((rel & negative).sum())
        total += int(negative.sum())
    return relevant / max(total, 1)


def retrieval_view(test_split):
    """(images, captions, caption_to_image, relevance) of a split with one row per (image, caption):
    images: the image values (datasets' {"bytes", "path"} dicts, undecoded), one per distinct image_id, in order of first
    appearance;
    captions: list of all captions (str); caption_to_image: index into `images` of each caption's own image;
    relevance: bool array (n_captions, n_images), [c, i] = caption c is true of image i (own image always True)."""
    columns = _text_columns(test_split, ("image_id", "caption", "scene", "caption_facts"))
    first_row: dict[int, int] = {}
    for row, image_id in enumerate(columns["image_id"]):
        first_row.setdefault(int(image_id), row)
    order = {image_id: k for k, image_id in enumerate(first_row)}
    rows = list(first_row.values())
    images = list(test_split.select(rows)[:]["image"]) if rows else []
    caption_to_image = [order[int(i)] for i in columns["image_id"]]
    relevance = relevance_matrix(columns["caption_facts"], [columns["scene"][r] for r in rows])
    if len(caption_to_image) and not relevance[np.arange(len(caption_to_image)), caption_to_image].all():
        raise AssertionError("a caption is not relevant to its own image: the split is inconsistent")
    return images, list(columns["caption"]), caption_to_image, relevance


def export_examples(out_dir: str, n: int = 8, config: ShapesConfig | None = None) -> list[dict]:
    """Write the first `n` test-split images of `config` as PNG files, `captions.json` ([{"image": file name,
    "captions": [...]}], `test_captions_per_image` captions each) and `relevance.json` (the scenes, and for every
    caption its facts and the file names of ALL example images it is true of). Returns the captions.json entries."""
    config = config or ShapesConfig()
    columns = generate_split_rows(config, "test", num_images=n)
    os.makedirs(out_dir, exist_ok=True)
    entries, by_id = [], {}
    for row, image_id in enumerate(columns["image_id"]):
        if image_id not in by_id:
            name = f"shapes_{len(by_id):02d}.png"
            with open(os.path.join(out_dir, name), "wb") as handle:
                handle.write(columns["image"][row]["bytes"])
            by_id[image_id] = {"image": name, "captions": [], "scene": columns["scene"][row]}
            entries.append(by_id[image_id])
        by_id[image_id]["captions"].append(columns["caption"][row])
    names = [e["image"] for e in entries]
    scenes = [e.pop("scene") for e in entries]
    relevance = relevance_matrix(columns["caption_facts"], scenes)
    details = [
        {
            "caption": columns["caption"][r],
            "image": by_id[columns["image_id"][r]]["image"],
            "partial": columns["partial"][r],
            "caption_facts": json.loads(columns["caption_facts"][r]),
            "relevant_images": [names[i] for i in np.flatnonzero(relevance[r])],
        }
        for r in range(len(columns["caption"]))
    ]
    with open(os.path.join(out_dir, "captions.json"), "w") as handle:
        json.dump(entries, handle, indent=1)
        handle.write("\n")
    with open(os.path.join(out_dir, "relevance.json"), "w") as handle:
        json.dump({"scenes": {name: json.loads(s) for name, s in zip(names, scenes)}, "captions": details}, handle, indent=1)
        handle.write("\n")
    return entries


# ----------------------------------------------------------------------------------------------------------------
# command line


def _parse_optional_int(text: str) -> int | None:
    return None if text.lower() in ("none", "null", "") else int(text)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=("default", "low", "high"), default="default")
    parser.add_argument("--out", help="save the DatasetDict to exactly this folder (default: the cache folder)")
    parser.add_argument("--cache_dir", default="data_cache/shapes")
    parser.add_argument("--export_examples", metavar="DIR", help="write N example PNGs + captions.json and stop")
    parser.add_argument("--n", type=int, default=8, help="number of examples for --export_examples")
    parser.add_argument("--batch_size", type=int, default=64, help="batch size of the false-negative measurement")
    fields = dataclasses.fields(ShapesConfig)
    for field in fields:  # every config field can override the preset; absent flags leave the preset's value
        kind = _parse_optional_int if field.name == "content_pool_size" else type(field.default)
        parser.add_argument(f"--{field.name}", type=kind, default=argparse.SUPPRESS, help=f"ShapesConfig field (default config: {field.default})")
    args = parser.parse_args(argv)
    overrides = {f.name: getattr(args, f.name) for f in fields if hasattr(args, f.name)}
    config = ShapesConfig.preset(args.preset, **overrides)
    if args.export_examples:
        entries = export_examples(args.export_examples, args.n, config)
        print(f"wrote {len(entries)} examples to {args.export_examples}")
        return
    start = time.perf_counter()
    if args.out:
        dataset = build_shapes_dataset(config)
        dataset.save_to_disk(args.out)
        _write_meta(args.out, config, {k: len(v) for k, v in dataset.items()}, time.perf_counter() - start)
        where = args.out
    else:
        dataset = load_shapes_dataset(config, args.cache_dir)
        where = shapes_cache_path(config, args.cache_dir)
    print(f"shapes dataset ({args.preset}, fingerprint {shapes_fingerprint(config)}) at {where} in {time.perf_counter() - start:.1f}s")
    for split, ds in dataset.items():
        images = len(set(ds.select_columns(["image_id"])[:]["image_id"]))
        rate = false_negative_rate(ds, args.batch_size) if len(ds) > 1 else 0.0
        print(f"  {split:9s} {len(ds):6d} rows, {images:5d} images, false negatives at batch {args.batch_size}: {rate:.2%}")


if __name__ == "__main__":
    main()
