"""ALBEF's text-assignment step before NLVR fine-tuning (sisc_train/tasks/text_assignment.py)."""

import json

import datasets
import pytest
import torch
import torch.nn.functional as F

from modeling_sisc import SiscForVisualReasoning
from sisc_train.tasks import nlvr as finetune_nlvr
from sisc_train.synthetic.shapes import ShapesConfig, build_shapes_dataset, caption_matches
from sisc_train.tasks.text_assignment import (
    TextAssignmentCollator,
    TextAssignmentModel,
    caption_pairs,
    text_assignment_rows,
)

TINY_SHAPES = ShapesConfig(image_size=16, num_train=60, num_annotated=2, num_test=2, num_validation=2)


@pytest.fixture(scope="module")
def caption_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("captions")
    build_shapes_dataset(TINY_SHAPES).save_to_disk(folder)
    return folder


def _scene_of_image(pairs):
    """PNG bytes -> scene JSON (every rendered image differs by its jitter)."""
    return {row["image"]["bytes"]: row["scene"] for row in pairs}


def test_rows_have_balanced_labels_and_exact_negatives(caption_folder):
    pairs = caption_pairs(str(caption_folder))
    rows = text_assignment_rows(pairs, 30, seed=1)
    assert rows.column_names == ["sentence", "left_image", "right_image", "label"]
    assert rows["label"] == [0, 1, 2] * 10
    scene_of = _scene_of_image(pairs)
    facts_of = dict(zip(pairs["caption"], pairs["caption_facts"]))
    raw = rows.cast_column("left_image", datasets.Image(decode=False)).cast_column("right_image", datasets.Image(decode=False))
    for row in raw:
        facts = facts_of[row["sentence"]]
        left = caption_matches(facts, scene_of[row["left_image"]["bytes"]])
        right = caption_matches(facts, scene_of[row["right_image"]["bytes"]])
        assert (left, right) == {0: (True, False), 1: (False, True), 2: (False, False)}[row["label"]], row
    # deterministic for a seed
    assert text_assignment_rows(pairs, 30, seed=1)["sentence"] == rows["sentence"]


def test_rows_without_scenes_use_other_images_and_reject_tiny_data(caption_folder):
    pairs = caption_pairs(str(caption_folder)).remove_columns(["scene", "caption_facts"])
    rows = text_assignment_rows(pairs, 9, seed=0)
    raw = rows.cast_column("left_image", datasets.Image(decode=False)).cast_column("right_image", datasets.Image(decode=False))
    id_of = {row["image"]["bytes"]: row["image_id"] for row in pairs}
    id_of_caption = dict(zip(pairs["caption"], pairs["image_id"]))
    for row in raw:
        ids = id_of[row["left_image"]["bytes"]], id_of[row["right_image"]["bytes"]]
        owner = id_of_caption[row["sentence"]]
        assert ids[0] != ids[1]
        assert [i == owner for i in ids] == {0: [True, False], 1: [False, True], 2: [False, False]}[row["label"]]
    two_images = pairs.filter(lambda r: r["image_id"] < 2)
    with pytest.raises(ValueError, match="at least 3 different images"):
        text_assignment_rows(two_images, 3)


def test_head_sits_on_the_fused_cls_of_the_reasoning_model(pretrained, processor, caption_folder):
    model = SiscForVisualReasoning.from_pretrained(pretrained).eval()
    wrapper = TextAssignmentModel(model)
    rows = text_assignment_rows(caption_pairs(str(caption_folder)), 6)
    batch = TextAssignmentCollator(processor)([rows[i] for i in range(6)])
    assert batch["labels"].tolist() == [0, 1, 2, 0, 1, 2]
    labels = batch.pop("labels")
    with torch.no_grad():
        fused = model.fuse(**batch)
        out = wrapper(labels=labels, **batch)
        assert torch.allclose(out.logits, wrapper.head(fused[:, 0]))
        assert torch.allclose(out.loss, F.cross_entropy(out.logits, labels))
        # the reasoning head reads the same fused [CLS]
        assert torch.allclose(model(**batch).logits, model.reasoning_head(fused[:, 0]))
    # the TA head is not part of the reasoning model's checkpoint
    assert not any(k.startswith("head") for k in model.state_dict())


def test_finetune_nlvr_runs_the_text_assignment_step_first(pretrained, caption_folder, tmp_path):
    from sisc_train.synthetic.shapes_tasks import ShapesTaskConfig, build_task_dataset

    nlvr = tmp_path / "nlvr"
    build_task_dataset("nlvr", ShapesTaskConfig(image_size=16, num_train=8, num_validation=4, num_test=4)).save_to_disk(nlvr)
    out = tmp_path / "model"
    summary = finetune_nlvr.main([
        "--model_name_or_path", str(pretrained), "--dataset", str(nlvr), "--output_dir", str(out),
        "--per_device_batch_size", "4", "--num_epochs", "1", "--warmup_steps", "1",
        "--text_assignment_examples", "8", "--text_assignment_data", str(caption_folder),
    ])
    ta = summary["text_assignment"]
    assert ta["examples"] == 8 and ta["global_step"] == 2 and ta["data"] == str(caption_folder)
    # 3 of the 60 images (ids 0, 20, 40) are held out and give the step's accuracy
    assert 0.0 <= ta["validation_history"][0]["accuracy"] <= 100.0 and ta["validation_history"][0]["epoch"] == 1
    assert summary["global_step"] == 2
    assert json.loads((out / "results.json").read_text())["text_assignment"]["examples"] == 8
    card = (out / "README.md").read_text()
    assert "text-assignment step" in card and "text_assignment_examples" in card
    assert (out / "text_assignment" / "results.json").exists() and not (out / "text_assignment" / "model.safetensors").exists()


def test_a_resumed_nlvr_run_skips_the_text_assignment_step_and_keeps_its_report(pretrained, caption_folder, tmp_path):
    from sisc_train.synthetic.shapes_tasks import ShapesTaskConfig, build_task_dataset

    nlvr = tmp_path / "nlvr"
    build_task_dataset("nlvr", ShapesTaskConfig(image_size=16, num_train=8, num_validation=4, num_test=4)).save_to_disk(nlvr)
    out = tmp_path / "model"
    argv = ["--model_name_or_path", str(pretrained), "--dataset", str(nlvr), "--output_dir", str(out),
            "--per_device_batch_size", "4", "--num_epochs", "2", "--warmup_steps", "1", "--checkpointing_steps", "2",
            "--text_assignment_examples", "8", "--text_assignment_data", str(caption_folder)]
    first = finetune_nlvr.main(argv)
    (out / "checkpoints" / "step_4").rename(out / "checkpoints" / "step_4.old")  # as if stopped after epoch 1
    resumed = finetune_nlvr.main([*argv, "--resume_from_checkpoint", "latest"])
    assert resumed["global_step"] == first["global_step"] == 4
    assert resumed["text_assignment"]["examples"] == 8 and resumed["text_assignment"]["global_step"] == 2
    reloaded = SiscForVisualReasoning.from_pretrained(out)
    assert not any(k.startswith("head.") for k in reloaded.state_dict())


def test_the_step_runs_on_the_embedded_captions_only_for_the_embedded_nlvr_data(caplog):
    from sisc_train.tasks.text_assignment import TextAssignmentArguments, text_assignment_source

    assert text_assignment_source(TextAssignmentArguments(), "shapes") == "shapes"
    assert text_assignment_source(TextAssignmentArguments(text_assignment_data="pairs.jsonl"), "my_nlvr2") == "pairs.jsonl"
    assert text_assignment_source(TextAssignmentArguments(text_assignment_examples=0), "shapes") is None
    with caplog.at_level("WARNING"):
        assert text_assignment_source(TextAssignmentArguments(), "my_nlvr2") is None
    assert "skipping ALBEF's text-assignment step" in caplog.text and "--text_assignment_data" in caplog.text
