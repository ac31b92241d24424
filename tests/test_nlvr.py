"""NLVR2-style visual reasoning: the two-branch head (shapes, loss, initialisation, errors), save / fresh-process reload
through the auto class, a few trainer steps and the evaluation script."""

import json

import datasets
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image

from modeling_sisc import SiscForPreTraining, SiscForVisualReasoning
from tests.helpers.fresh_process import logits_in_fresh_process
from sisc_train.evaluation import nlvr as evaluate_nlvr
from sisc_train.tasks import nlvr as finetune_nlvr
from sisc_train.evaluation.nlvr import label_value, usable_rows
from sisc_train.synthetic.shapes_tasks import ShapesTaskConfig, build_task_dataset


def _batch(processor):
    left = [Image.new("RGB", (16, 16), c) for c in ("red", "blue")]
    right = [Image.new("RGB", (16, 16), c) for c in ("green", "white")]
    inputs = processor(text=["both images contain a star", "the left image has more circles than the right image"],
                       images=left + right)
    return {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"],
            "pixel_values": inputs["pixel_values"][:2], "pixel_values_2": inputs["pixel_values"][2:]}


def test_head_shapes_loss_and_initialisation(pretrained, processor):
    model = SiscForVisualReasoning.from_pretrained(pretrained)
    pre = SiscForPreTraining.from_pretrained(pretrained)
    for layer, second, merge in zip(pre.sisc.fusion_model.layer, model.second_crossattention, model.branch_merge):
        assert torch.equal(second.self.value.weight, layer.crossattention.self.value.weight)  # starts as a copy
        hidden = merge.out_features
        assert torch.equal(merge.weight, 0.5 * torch.cat([torch.eye(hidden), torch.eye(hidden)], dim=1))
    batch = _batch(processor)
    labels = torch.tensor([1, 0])
    out = model(**batch, labels=labels)
    assert out.logits.shape == (2, 2)
    assert out.loss.item() == pytest.approx(torch.nn.functional.cross_entropy(out.logits, labels).item(), rel=1e-5)
    out.loss.backward()
    assert model.second_crossattention[0].self.key.weight.grad is not None
    model.eval()
    with torch.no_grad():
        stacked = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        pixel_values=torch.stack([batch["pixel_values"], batch["pixel_values_2"]], dim=1)).logits
        assert torch.allclose(stacked, model(**batch).logits, atol=1e-5)
        # at initialisation the two branches are identical and merged by their mean: swapping the images changes nothing
        swapped = model(**{**batch, "pixel_values": batch["pixel_values_2"], "pixel_values_2": batch["pixel_values"]}).logits
        assert torch.allclose(swapped, model(**batch).logits, atol=1e-5)


def test_bad_inputs_give_clear_errors(pretrained, processor):
    model = SiscForVisualReasoning.from_pretrained(pretrained)
    batch = _batch(processor)
    with pytest.raises(ValueError, match="TWO images.*pixel_values_2 is missing"):
        model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"])
    with pytest.raises(ValueError, match="2 sentences, 2 left and 1 right"):
        model(**{**batch, "pixel_values_2": batch["pixel_values_2"][:1]})
    with pytest.raises(ValueError, match="labels must be"):
        model(**batch, labels=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="5-D pixel_values"):
        model(input_ids=batch["input_ids"], pixel_values=torch.zeros(2, 3, 3, 16, 16))
    assert [label_value(v) for v in (True, 0, "True", "false", "maybe", 2)] == [1, 0, 1, 0, None, None]


def test_save_and_reload_in_a_fresh_process(pretrained, processor, tmp_path):
    model = SiscForVisualReasoning.from_pretrained(pretrained).eval()
    folder = tmp_path / "nlvr"
    model.save_pretrained(folder)
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForSequenceClassification"] == "modeling_sisc.SiscForVisualReasoning"
    batch = _batch(processor)
    with torch.no_grad():
        expected = model(**batch).logits
    name, logits = logits_in_fresh_process("AutoModelForSequenceClassification", folder, batch, tmp_path)
    assert name == "SiscForVisualReasoning"
    assert torch.allclose(torch.tensor(json.loads(logits)), expected, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_nlvr(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nlvr_data")
    data = build_task_dataset("nlvr", ShapesTaskConfig(image_size=16, num_train=10, num_validation=4, num_test=4))
    # an NLVR2-json-like train split: string labels and one row whose right image is missing
    train = data["train"].to_dict()
    train["label"] = ["True" if v else "False" for v in train["label"]]
    train["right_image"][3] = None
    features = data["train"].features.copy()
    features["label"] = datasets.Value("string")
    data["train"] = datasets.Dataset.from_dict(train, features=features)
    data.save_to_disk(folder)
    return folder


def test_finetune_nlvr_and_evaluate(pretrained, tiny_nlvr, tmp_path):
    assert usable_rows(datasets.load_from_disk(tiny_nlvr)["train"]) == ([i for i in range(10) if i != 3], 1)
    summary = finetune_nlvr.main([
        "--model_name_or_path", str(pretrained), "--dataset", str(tiny_nlvr), "--output_dir", str(tmp_path),
        "--per_device_batch_size", "4", "--num_epochs", "2", "--warmup_steps", "1", "--logging_steps", "1",
    ])
    assert summary["skipped_train_rows"] == 1 and summary["train_examples"] == 9
    assert summary["text_assignment"] is None  # NLVR data of its own and no caption data: the TA step is skipped
    assert summary["global_step"] == 4 and [h["epoch"] for h in summary["validation_history"]] == [1, 2]
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["metrics"]) == {"dev", "test"}
    assert results["args"]["vision_learning_rate"] == results["args"]["learning_rate"]  # NLVR's default
    for metrics in results["metrics"].values():
        assert metrics["num_examples"] == 4 and metrics["majority_baseline_accuracy"] == 50.0
    card = ModelCard.load(tmp_path / "README.md")
    assert "NLVR2" in card.text and "`accuracy`" in card.text
    assert {r.dataset_split for r in card.data.eval_results} == {"dev", "test"}
    again = evaluate_nlvr.main(["--model_name_or_path", str(tmp_path), "--dataset", str(tiny_nlvr)])
    assert again["test"]["accuracy"] == pytest.approx(results["metrics"]["test"]["accuracy"])
    # accuracy per statement type (the embedded data's `statement_type` column) averages back to the accuracy
    types = datasets.load_from_disk(tiny_nlvr)["test"]["statement_type"]
    per_type = {k.removeprefix("accuracy_"): v for k, v in again["test"].items() if k.startswith("accuracy_")}
    assert set(per_type) == set(types)
    assert sum(per_type[t] for t in types) / len(types) == pytest.approx(again["test"]["accuracy"])
