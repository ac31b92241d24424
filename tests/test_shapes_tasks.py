"""The embedded VQA / NLVR task data: layouts, answers and labels that agree with the scenes, determinism, caching."""

import json
import re

import pytest

from sisc_train.synthetic.shapes_tasks import (
    NUM_ANNOTATORS,
    ShapesTaskConfig,
    generate_nlvr_rows,
    generate_vqa_rows,
    load_task_dataset,
    vqa_answer_space,
)

CONFIG = ShapesTaskConfig(image_size=16, num_train=60, num_validation=4, num_test=6)


def _count(scene, **attributes):
    return sum(all(o[k] == v for k, v in attributes.items()) for o in scene["objects"])


def _singular(word):
    return word[:-2] if word.endswith("es") and word[:-2] in ("cross",) else word[:-1]


def test_vqa_answers_are_true_of_the_scene():
    rows = generate_vqa_rows(CONFIG, "train")
    assert len(rows["question"]) == 60 * CONFIG.questions_per_image
    assert len(set(rows["question_id"])) == len(rows["question_id"])
    space = set(vqa_answer_space(CONFIG))
    for question, answer, answers, scene, kind in zip(
        rows["question"], rows["multiple_choice_answer"], rows["answers"], rows["scene"], rows["question_type"]
    ):
        scene = json.loads(scene)
        assert len(answers) == NUM_ANNOTATORS and {a["answer"] for a in answers} <= space
        if m := re.fullmatch(r"what colour is the (\w+)\?", question):
            assert kind == "what colour" and [o["color"] for o in scene["objects"] if o["shape"] == m[1]] == [answer]
        elif m := re.fullmatch(r"what shape is the (\w+) object\?", question):
            assert [o["shape"] for o in scene["objects"] if o["color"] == m[1]] == [answer]
        elif m := re.fullmatch(r"how many (\w+) are there\?", question):
            expected = len(scene["objects"]) if m[1] == "objects" else _count(scene, shape=_singular(m[1]))
            assert answer == str(expected)
        elif m := re.fullmatch(r"is there a (\w+) (\w+)\?", question):
            assert answer == ("yes" if _count(scene, color=m[1], shape=m[2]) else "no")
        else:
            pytest.fail(f"unexpected question {question!r}")
    kinds = set(rows["question_type"])
    assert {"what colour", "how many shape", "is there"} <= kinds
    # annotator noise: some questions have disagreeing annotators, most answers are right
    majority_right = sum(sum(a["answer"] == t for a in answers) >= 5 for answers, t in zip(rows["answers"], rows["multiple_choice_answer"]))
    assert majority_right == len(rows["answers"])
    assert generate_vqa_rows(CONFIG, "train")["answers"] == rows["answers"]  # deterministic


def test_nlvr_labels_are_true_of_the_two_scenes_and_balanced():
    rows = generate_nlvr_rows(CONFIG, "train")
    assert sum(rows["label"]) == 30 and len(rows["label"]) == 60
    rows_by_type = {}
    for sentence, label, kind, left, right in zip(
        rows["sentence"], rows["label"], rows["statement_type"], rows["left_scene"], rows["right_scene"]
    ):
        left, right = json.loads(left), json.loads(right)
        rows_by_type.setdefault(kind, []).append(label)
        if m := re.fullmatch(r"the (left|right) image has more (\w+) than the (left|right) image", sentence):
            a, b = _count(left, shape=_singular(m[2])), _count(right, shape=_singular(m[2]))
            assert label == int(a > b if m[1] == "left" else b > a) and kind == "more_shape"
        elif m := re.fullmatch(r"there are more objects in the (left|right) image than in the (left|right) image", sentence):
            a, b = len(left["objects"]), len(right["objects"])
            assert label == int(a > b if m[1] == "left" else b > a) and kind == "more_objects"
        elif m := re.fullmatch(r"both images contain a (\w+)", sentence):
            assert label == int(bool(_count(left, shape=m[1]) and _count(right, shape=m[1]))) and kind == "both_shape"
        elif m := re.fullmatch(r"both images contain a (\w+) object", sentence):
            assert label == int(bool(_count(left, color=m[1]) and _count(right, color=m[1]))) and kind == "both_colour"
        else:
            assert sentence == "the two images have the same number of objects" and kind == "same_number"
            assert label == int(len(left["objects"]) == len(right["objects"]))
    assert set(rows_by_type) == {"more_shape", "more_objects", "both_shape", "both_colour", "same_number"}


def test_task_datasets_have_the_benchmark_layouts_and_are_cached(tmp_path):
    small = ShapesTaskConfig(image_size=16, num_train=4, num_validation=2, num_test=2)
    vqa = load_task_dataset("vqa", small, str(tmp_path))
    assert set(vqa) == {"train", "validation", "test"}
    assert {"question_id", "question", "answers", "image", "answer_type", "multiple_choice_answer"} <= set(vqa["train"].column_names)
    assert vqa["train"][0]["image"].size == (16, 16)
    nlvr = load_task_dataset("nlvr", small, str(tmp_path))
    assert set(nlvr) == {"train", "dev", "test"}
    assert nlvr["train"].features["label"].names == ["False", "True"]
    assert {"sentence", "left_image", "right_image"} <= set(nlvr["dev"].column_names)
    again = load_task_dataset("nlvr", small, str(tmp_path))  # from the cache
    assert again["train"]["sentence"] == nlvr["train"]["sentence"]
    with pytest.raises(ValueError, match="task"):
        load_task_dataset("captions", small, str(tmp_path))
    with pytest.raises(ValueError):
        ShapesTaskConfig(annotator_noise=2.0)
