"""Embedded downstream-task data: visual question answering (VQA v2 layout) and two-image visual reasoning (NLVR2
layout) over the synthetic shapes scenes of `sisc_train/synthetic/shapes.py`, with answers and labels KNOWN exactly.

VQA (`load_shapes_vqa`, splits train / validation / test; one row per question, several questions per image)::

    what colour is the square?          -> "red"      (asked only when exactly one square is in the scene)
    what shape is the blue object?      -> "circle"   (only when exactly one object is blue)
    how many circles are there?         -> "2"        (also "0": shapes absent from the scene are asked about)
    how many objects are there?         -> "3"
    is there a red star?                -> "yes" / "no" (half of them absent)

Columns follow the VQA v2 layout (as in the Hub's VQAv2 datasets): `question_id`, `question`, `question_type`,
`answer_type` ("yes/no", "number", "other"), `multiple_choice_answer` (the true answer), `answers` (10 simulated
annotators: [{"answer", "answer_confidence", "answer_id"}]; each annotator gives a plausible wrong answer with
probability `annotator_noise`, so the soft VQA score is not just 0/1), `image_id`, `image`, and `scene` (JSON).

NLVR (`load_shapes_nlvr`, splits train / dev / test; one row per (sentence, left image, right image))::

    the left image has more triangles than the right image
    there are more objects in the right image than in the left image
    both images contain a star / both images contain a red object
    the two images have the same number of objects

Columns follow the NLVR2 layout: `identifier`, `sentence`, `left_image`, `right_image`, `label` (ClassLabel
False/True), plus `statement_type` (more_shape / more_objects / both_shape / both_colour / same_number: the
evaluation reports accuracy per type) and `left_scene` / `right_scene` (JSON). Labels are balanced 50/50 by
construction (and close to it within each statement type, whose truth alone is no cue).

Both datasets are cached like the captions dataset: `<cache_dir>/shapes-vqa-<fingerprint>` and
`shapes-nlvr-<fingerprint>`, the fingerprint hashing the task config, `TASKS_VERSION` and the shapes generator's
`GENERATOR_VERSION`.

    python train/shapes_tasks.py vqa|nlvr [--num_train N] [--cache_dir DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import random
from collections import Counter
from dataclasses import dataclass

import datasets

from sisc_train.synthetic.shapes import (
    COLORS,
    GENERATOR_VERSION,
    SHAPES,
    ShapesConfig,
    load_or_build,
    plural,
    png_bytes,
    random_scene,
    render_scene,
    scene_to_json,
)

TASKS_VERSION = "2"  # bump whenever generated questions, statements or images change
VQA_SPLITS = ("train", "validation", "test")
NLVR_SPLITS = ("train", "dev", "test")
NUM_ANNOTATORS = 10
VQA_QUESTION_TYPES = ("what colour", "what shape", "how many shape", "how many objects", "is there")
NLVR_STATEMENT_TYPES = ("more shape", "more objects", "both shape", "both colour", "same number")


@dataclass
class ShapesTaskConfig:
    """Everything that determines a task dataset (its fingerprint hashes all fields).

    seed, image_size, num_colors, num_shapes, min_objects, max_objects, grid_size: the scenes (as in `ShapesConfig`).
    num_train / num_validation / num_test: VQA: number of IMAGES per split (x `questions_per_image` rows);
        NLVR: number of (sentence, image pair) rows per split (validation = the NLVR "dev" split).
    questions_per_image: VQA questions asked about each image (distinct when possible).
    annotator_noise: probability that a simulated VQA annotator gives a plausible wrong answer.
    """

    seed: int = 0
    image_size: int = 64
    num_colors: int = 6
    num_shapes: int = 4
    min_objects: int = 1
    max_objects: int = 4
    grid_size: int = 3
    num_train: int = 6000
    num_validation: int = 300
    num_test: int = 500
    questions_per_image: int = 3
    annotator_noise: float = 0.1

    def __post_init__(self):
        self.scenes()  # validates the scene settings
        for name in ("num_train", "num_validation", "num_test"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.questions_per_image < 1:
            raise ValueError("questions_per_image must be >= 1")
        if not 0.0 <= self.annotator_noise <= 1.0:
            raise ValueError("annotator_noise must be in [0, 1]")

    def scenes(self) -> ShapesConfig:
        return ShapesConfig(
            seed=self.seed, image_size=self.image_size, num_colors=self.num_colors, num_shapes=self.num_shapes,
            min_objects=self.min_objects, max_objects=self.max_objects, grid_size=self.grid_size,
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def colors(self) -> tuple[str, ...]:
        return COLORS[: self.num_colors]

    def shapes(self) -> tuple[str, ...]:
        return SHAPES[: self.num_shapes]


def task_fingerprint(task: str, config: ShapesTaskConfig) -> str:
    payload = json.dumps(
        {"task": task, "config": config.to_dict(), "tasks_version": TASKS_VERSION, "generator_version": GENERATOR_VERSION},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def _scene_and_png(config: ShapesTaskConfig, rng: random.Random) -> tuple[dict, bytes]:
    scene = random_scene(rng, config.scenes())
    return scene, png_bytes(render_scene(scene, rng, config.image_size))


# ----------------------------------------------------------------------------------------------------------------
# VQA


def vqa_answer_space(config: ShapesTaskConfig) -> list[str]:
    """Every answer the generator can give (true or noisy): colours, shapes, counts 0..max_objects, yes, no."""
    return [*config.colors(), *config.shapes(), *[str(n) for n in range(config.max_objects + 1)], "yes", "no"]


def _count(scene: dict, **attributes) -> int:
    return sum(all(obj[k] == v for k, v in attributes.items()) for obj in scene["objects"])


def _question(scene: dict, kind: str, rng: random.Random, config: ShapesTaskConfig):
    """(question, true answer, answer type) of the given kind, or None when the scene does not allow it."""
    objects = scene["objects"]
    if kind == "what colour":
        unique = [o for o in objects if _count(scene, shape=o["shape"]) == 1]
        if not unique:
            return None
        obj = rng.choice(unique)
        return f"what colour is the {obj['shape']}?", obj["color"], "other"
    if kind == "what shape":
        unique = [o for o in objects if _count(scene, color=o["color"]) == 1]
        if not unique:
            return None
        obj = rng.choice(unique)
        return f"what shape is the {obj['color']} object?", obj["shape"], "other"
    if kind == "how many shape":
        present = sorted({o["shape"] for o in objects})
        shape = rng.choice(present) if rng.random() < 0.75 else rng.choice(config.shapes())
        return f"how many {plural(shape)} are there?", str(_count(scene, shape=shape)), "number"
    if kind == "how many objects":
        return "how many objects are there?", str(len(objects)), "number"
    if kind == "is there":
        if rng.random() < 0.5:
            obj = rng.choice(objects)
            color, shape = obj["color"], obj["shape"]
        else:
            color, shape = rng.choice(config.colors()), rng.choice(config.shapes())
        answer = "yes" if _count(scene, color=color, shape=shape) else "no"
        return f"is there a {color} {shape}?", answer, "yes/no"
    raise ValueError(f"unknown question kind {kind!r}")


def _noisy_answer(answer: str, answer_type: str, rng: random.Random, config: ShapesTaskConfig) -> str:
    if answer_type == "yes/no":
        return "no" if answer == "yes" else "yes"
    if answer_type == "number":
        n = int(answer) + rng.choice((-1, 1))
        return str(min(max(n, 0), config.max_objects)) if n != int(answer) else answer
    pool = config.colors() if answer in config.colors() else config.shapes()
    return rng.choice([a for a in pool if a != answer] or [answer])


def generate_vqa_rows(config: ShapesTaskConfig, split: str) -> dict[str, list]:
    sizes = {"train": config.num_train, "validation": config.num_validation, "test": config.num_test}
    offsets = {"train": 0, "validation": config.num_train, "test": config.num_train + config.num_validation}
    columns: dict[str, list] = {
        k: [] for k in ("question_id", "question", "question_type", "answer_type", "multiple_choice_answer", "answers",
                        "image_id", "image", "scene")
    }
    for index in range(sizes[split]):
        rng = random.Random(f"{config.seed}:vqa:{split}:{index}")
        scene, png = _scene_and_png(config, rng)
        image_id = offsets[split] + index
        kinds = list(VQA_QUESTION_TYPES)
        rng.shuffle(kinds)
        asked = set()
        for q in range(config.questions_per_image):
            made = None
            for kind in kinds * 2:
                made = _question(scene, kind, rng, config)
                if made is not None and made[0] not in asked:
                    made = (kind, *made)
                    break
                made = None
            if made is None:
                break
            kind, question, answer, answer_type = made
            asked.add(question)
            kinds.append(kinds.pop(0))  # vary the kind of the next question
            annotators = [
                _noisy_answer(answer, answer_type, rng, config) if rng.random() < config.annotator_noise else answer
                for _ in range(NUM_ANNOTATORS)
            ]
            columns["question_id"].append(image_id * 100 + q)
            columns["question"].append(question)
            columns["question_type"].append(kind)
            columns["answer_type"].append(answer_type)
            columns["multiple_choice_answer"].append(answer)
            columns["answers"].append(
                [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(annotators)]
            )
            columns["image_id"].append(image_id)
            columns["image"].append({"bytes": png, "path": None})
            columns["scene"].append(scene_to_json(scene))
    return columns


def _vqa_features():
    return datasets.Features(
        {
            "question_id": datasets.Value("int64"),
            "question": datasets.Value("string"),
            "question_type": datasets.Value("string"),
            "answer_type": datasets.Value("string"),
            "multiple_choice_answer": datasets.Value("string"),
            "answers": [
                {
                    "answer": datasets.Value("string"),
                    "answer_confidence": datasets.Value("string"),
                    "answer_id": datasets.Value("int64"),
                }
            ],
            "image_id": datasets.Value("int64"),
            "image": datasets.Image(),
            "scene": datasets.Value("string"),
        }
    )


# ----------------------------------------------------------------------------------------------------------------
# NLVR


def _statement(left: dict, right: dict, kind: str, rng: random.Random, config: ShapesTaskConfig) -> tuple[str, bool]:
    if kind == "more shape":
        shape = rng.choice(config.shapes())
        a, b = _count(left, shape=shape), _count(right, shape=shape)
        if rng.random() < 0.5:
            return f"the left image has more {plural(shape)} than the right image", a > b
        return f"the right image has more {plural(shape)} than the left image", b > a
    if kind == "more objects":
        a, b = len(left["objects"]), len(right["objects"])
        if rng.random() < 0.5:
            return "there are more objects in the left image than in the right image", a > b
        return "there are more objects in the right image than in the left image", b > a
    if kind == "both shape":
        shape = rng.choice(config.shapes())
        return f"both images contain a {shape}", bool(_count(left, shape=shape) and _count(right, shape=shape))
    if kind == "both colour":
        color = rng.choice(config.colors())
        return f"both images contain a {color} object", bool(_count(left, color=color) and _count(right, color=color))
    if kind == "same number":
        return "the two images have the same number of objects", len(left["objects"]) == len(right["objects"])
    raise ValueError(f"unknown statement kind {kind!r}")


def generate_nlvr_rows(config: ShapesTaskConfig, split: str) -> dict[str, list]:
    sizes = {"train": config.num_train, "dev": config.num_validation, "test": config.num_test}
    columns: dict[str, list] = {
        k: []
        for k in ("identifier", "sentence", "left_image", "right_image", "label", "statement_type", "left_scene", "right_scene")
    }
    shapes_config = config.scenes()
    for index in range(sizes[split]):
        rng = random.Random(f"{config.seed}:nlvr:{split}:{index}")
        target = index % 2 == 1  # balanced labels
        kind = rng.choice(NLVR_STATEMENT_TYPES)
        for _attempt in range(200):
            left, right = random_scene(rng, shapes_config), random_scene(rng, shapes_config)
            sentence, truth = _statement(left, right, kind, rng, config)
            if truth == target:
                break
        else:  # pragma: no cover - every kind can be made true and false
            raise AssertionError(f"could not draw a {target} statement of kind {kind!r}")
        columns["identifier"].append(f"{split}-{index}-{kind.replace(' ', '_')}")
        columns["sentence"].append(sentence)
        columns["left_image"].append({"bytes": png_bytes(render_scene(left, rng, config.image_size)), "path": None})
        columns["right_image"].append({"bytes": png_bytes(render_scene(right, rng, config.image_size)), "path": None})
        columns["label"].append(int(truth))
        columns["statement_type"].append(kind.replace(" ", "_"))
        columns["left_scene"].append(scene_to_json(left))
        columns["right_scene"].append(scene_to_json(right))
    return columns


def _nlvr_features():
    return datasets.Features(
        {
            "identifier": datasets.Value("string"),
            "sentence": datasets.Value("string"),
            "left_image": datasets.Image(),
            "right_image": datasets.Image(),
            "label": datasets.ClassLabel(names=["False", "True"]),
            "statement_type": datasets.Value("string"),
            "left_scene": datasets.Value("string"),
            "right_scene": datasets.Value("string"),
        }
    )


# ----------------------------------------------------------------------------------------------------------------
# building and caching


def build_task_dataset(task: str, config: ShapesTaskConfig | None = None):
    """The DatasetDict of `task` ("vqa" or "nlvr") in memory (see `load_shapes_vqa` / `load_shapes_nlvr`)."""
    config = config or ShapesTaskConfig()
    if task == "vqa":
        splits, generate, features = VQA_SPLITS, generate_vqa_rows, _vqa_features()
    elif task == "nlvr":
        splits, generate, features = NLVR_SPLITS, generate_nlvr_rows, _nlvr_features()
    else:
        raise ValueError(f"unknown task {task!r}: 'vqa' or 'nlvr'")
    description = json.dumps(
        {"task": task, "fingerprint": task_fingerprint(task, config), "config": config.to_dict()}, sort_keys=True
    )
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(
                generate(config, split), features=features, info=datasets.DatasetInfo(description=description, features=features)
            )
            for split in splits
        }
    )


def load_task_dataset(task: str, config: ShapesTaskConfig | None = None, cache_dir: str = "data_cache/shapes"):
    """Load `task`'s dataset from `<cache_dir>/shapes-<task>-<fingerprint>`, building and saving it the first time."""
    config = config or ShapesTaskConfig()
    path = os.path.join(cache_dir, f"shapes-{task}-{task_fingerprint(task, config)}")
    return load_or_build(path, lambda: build_task_dataset(task, config), f"{task} dataset")


def load_shapes_vqa(config: ShapesTaskConfig | None = None, cache_dir: str = "data_cache/shapes"):
    return load_task_dataset("vqa", config, cache_dir)


def load_shapes_nlvr(config: ShapesTaskConfig | None = None, cache_dir: str = "data_cache/shapes"):
    return load_task_dataset("nlvr", config, cache_dir)


def answer_counts(answers) -> Counter:
    """Counter of the annotators' answers of one VQA row (`answers`: list of {"answer": ...} dicts or strings)."""
    return Counter(a["answer"] if isinstance(a, dict) else a for a in answers)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Build (and cache) the embedded VQA or NLVR dataset.")
    parser.add_argument("task", choices=("vqa", "nlvr"))
    parser.add_argument("--num_train", type=int, default=None)
    parser.add_argument("--cache_dir", default="data_cache/shapes")
    args = parser.parse_args(argv)
    config = ShapesTaskConfig(**({"num_train": args.num_train} if args.num_train is not None else {}))
    dataset = load_task_dataset(args.task, config, args.cache_dir)
    for name, split in dataset.items():
        print(name, len(split), split[0][("question" if args.task == "vqa" else "sentence")])


if __name__ == "__main__":
    main()
