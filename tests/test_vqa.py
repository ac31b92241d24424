"""VQA: the soft score on hand-worked cases, both answer heads (shapes, losses, errors), generation constrained to the
answer list, save / fresh-process reload through the auto class, and a few steps of the trainer + evaluation."""

import json

import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image

from configuration_sisc import SiscConfig
from modeling_sisc import SiscForPreTraining, SiscForQuestionAnswering
from tests.helpers.fresh_process import logits_in_fresh_process
from sisc_train.evaluation import vqa as evaluate_vqa
from sisc_train.tasks import vqa as finetune_vqa
from sisc_train.synthetic.shapes_tasks import ShapesTaskConfig, build_task_dataset
from sisc_train.evaluation.vqa_metrics import normalize_answer, soft_targets, vqa_accuracy, vqa_score, write_results

ANSWERS = ["red", "blue", "2", "yes", "no"]
HUMANS = ["2"] * 2 + ["3"] * 8


# ---- the metric ----
def test_soft_score_hand_worked():
    assert vqa_score("3", HUMANS) == 1.0
    assert vqa_score("2", HUMANS) == pytest.approx(2 / 3)
    assert vqa_score("4", HUMANS) == 0.0
    assert vqa_score("Two.", HUMANS) == pytest.approx(2 / 3)  # normalised: lower case, punctuation, number words
    assert vqa_score("3", [{"answer": "three"}] * 3) == 1.0
    # official: mean over the 10 leave-one-out subsets; 2 matches: 2 subsets hold 1 (1/3), 8 hold 2 (2/3)
    assert vqa_score("2", HUMANS, official=True) == pytest.approx((2 * (1 / 3) + 8 * (2 / 3)) / 10)
    assert vqa_score("3", HUMANS, official=True) == 1.0  # 7 or 8 matches of 9: always >= 3
    assert normalize_answer("  The Red ") == "red" and normalize_answer("1.5") == "1.5"
    with pytest.raises(ValueError):
        vqa_score("a", [])


def test_accuracy_targets_and_result_file(tmp_path):
    metrics = vqa_accuracy(["3", "2", "no"], [HUMANS, HUMANS, ["yes"] * 10], ["number", "number", "yes/no"])
    assert metrics["vqa_accuracy"] == pytest.approx(100 * (1 + 2 / 3 + 0) / 3)
    assert metrics["accuracy_number"] == pytest.approx(100 * (1 + 2 / 3) / 2) and metrics["accuracy_yes_no"] == 0.0
    index = {"2": 0, "3": 1}
    assert soft_targets(HUMANS, index) == {0: pytest.approx(2 / 3), 1: 1.0}
    assert soft_targets(HUMANS, index, kind="share") == {0: 0.2, 1: 0.8}
    assert soft_targets(["7"] * 10, index) == {}  # no valid answer in the list
    write_results(tmp_path / "r.json", [5, 7], ["2", "yes"])
    assert json.loads((tmp_path / "r.json").read_text()) == [{"question_id": 5, "answer": "2"}, {"question_id": 7, "answer": "yes"}]


# ---- the model ----
def _inputs(processor, n=3):
    images = [Image.new("RGB", (16, 16), c) for c in ("red", "blue", "green")][:n]
    return processor(text=["what colour is it?", "how many circles are there?", "is there a star?"][:n], images=images)


def _batch(processor, n=3):
    inputs = _inputs(processor, n)
    return {k: inputs[k] for k in ("input_ids", "attention_mask", "pixel_values")}


def test_decoder_starts_from_the_fusion_encoder_and_mlm_head(pretrained):
    model = SiscForQuestionAnswering.from_pretrained(pretrained, vqa_answers=ANSWERS)
    pre = SiscForPreTraining.from_pretrained(pretrained)
    for i, layer in enumerate(model.answer_decoder.bert.encoder.layer):
        fusion = pre.sisc.fusion_model.layer[i]
        assert torch.equal(layer.crossattention.self.key.weight, fusion.crossattention.self.key.weight)
        assert torch.equal(layer.intermediate.dense.weight, fusion.intermediate.dense.weight)
    assert torch.equal(model.answer_decoder.cls.predictions.transform.dense.weight, pre.mlm_head.predictions.transform.dense.weight)
    assert torch.equal(model.answer_decoder.cls.predictions.decoder.weight, model.answer_decoder.bert.embeddings.word_embeddings.weight)


def test_generate_head_loss_and_constrained_ranking(pretrained, processor):
    model = SiscForQuestionAnswering.from_pretrained(pretrained, vqa_answers=ANSWERS).eval()
    answer_list = model.tokenize_answer_list(processor.tokenizer)
    batch = _batch(processor)
    labels = torch.tensor([[1.0, 0, 0, 0, 0], [0, 0, 0.7, 0, 0.3], [0, 0, 0, 1.0, 0]])
    loss = model(**batch, labels=labels, **answer_list).loss
    # the same loss from explicit answers: weighted NLL summed per question, averaged over the 3 questions
    states = model(**batch).question_states
    ll = model._answer_log_likelihood(
        states.repeat_interleave(len(ANSWERS), 0), batch["attention_mask"].repeat_interleave(len(ANSWERS), 0),
        answer_list["answer_list_input_ids"].repeat(3, 1), answer_list["answer_list_attention_mask"].repeat(3, 1),
    ).view(3, len(ANSWERS))
    assert loss.item() == pytest.approx(-(labels * ll).sum().item() / 3, rel=1e-4)

    full = model(**batch, **answer_list, k=len(ANSWERS))
    assert full.logits.shape == (3, len(ANSWERS)) and torch.isfinite(full.logits).all()
    assert torch.allclose(full.logits, ll, atol=1e-4)  # every answer scored fully = brute force
    assert torch.equal(full.answer_ids, ll.argmax(dim=1))
    top2 = model(**batch, **answer_list, k=2)
    assert (torch.isfinite(top2.logits).sum(dim=1) == 2).all()  # only the top-k by first token are scored
    assert set(top2.answer_ids.tolist()) <= set(range(len(ANSWERS)))
    assert model.answer(["what colour is it?"], [Image.new("RGB", (16, 16))], processor)[0] in ANSWERS


def test_classifier_head_shapes_and_loss(pretrained, processor):
    model = SiscForQuestionAnswering.from_pretrained(pretrained, vqa_head="classify", vqa_answers=ANSWERS)
    labels = torch.tensor([[1.0, 0, 0, 0, 0], [0, 0, 2 / 3, 0, 0], [0, 0, 0, 1.0, 0]])
    out = model(**_batch(processor), labels=labels)
    assert out.logits.shape == (3, len(ANSWERS)) and out.answer_ids.shape == (3,)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, labels) * len(ANSWERS)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    out.loss.backward()
    assert model.vqa_classifier[0].weight.grad is not None
    with pytest.raises(ValueError, match="vqa_answers is required"):
        SiscForQuestionAnswering(SiscConfig.small(vocab_size=len(processor.tokenizer), image_size=16, hidden_size=32, vqa_head="classify"))


def test_bad_inputs_give_clear_errors(pretrained, processor):
    model = SiscForQuestionAnswering.from_pretrained(pretrained, vqa_answers=ANSWERS)
    answer_list = model.tokenize_answer_list(processor.tokenizer)
    batch = _batch(processor)
    no_valid = torch.tensor([[1.0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 1.0, 0]])
    with pytest.raises(ValueError, match=r"batch index \[1\] have no valid answer"):
        model(**batch, labels=no_valid, **answer_list)
    with pytest.raises(ValueError, match="labels must be"):
        model(**batch, labels=torch.ones(3, 4), **answer_list)
    with pytest.raises(ValueError, match="answer_list_input_ids must be"):
        model(**batch, labels=torch.ones(3, 5), answer_list_input_ids=torch.ones(5, dtype=torch.long),
              answer_list_attention_mask=torch.ones(5, dtype=torch.long))
    with pytest.raises(ValueError, match="answer list has 4 answers"):
        model.eval()(**batch, answer_list_input_ids=answer_list["answer_list_input_ids"][:4],
                     answer_list_attention_mask=answer_list["answer_list_attention_mask"][:4])
    with pytest.raises(ValueError, match="needs the tokenised answer list"):
        model.predict(batch["input_ids"], batch["pixel_values"], batch["attention_mask"])
    with pytest.raises(ValueError, match="distinct"):
        SiscConfig.small(vocab_size=len(processor.tokenizer), vqa_answers=["a", "a"])
    with pytest.raises(ValueError, match="vqa_head"):
        SiscConfig.small(vocab_size=len(processor.tokenizer), vqa_head="span")


@pytest.mark.parametrize("head", ["generate", "classify"])
def test_save_and_reload_in_a_fresh_process(pretrained, processor, tmp_path, head):
    model = SiscForQuestionAnswering.from_pretrained(pretrained, vqa_head=head, vqa_answers=ANSWERS).eval()
    folder = tmp_path / "vqa"
    model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForVisualQuestionAnswering"] == "modeling_sisc.SiscForQuestionAnswering"
    assert config["vqa_answers"] == ANSWERS and config["vqa_head"] == head
    inputs = {**_batch(processor), **(model.tokenize_answer_list(processor.tokenizer) if head == "generate" else {})}
    with torch.no_grad():
        expected = model(**inputs).logits
    name, logits = logits_in_fresh_process("AutoModelForVisualQuestionAnswering", folder, inputs, tmp_path)
    assert name == "SiscForQuestionAnswering"
    got = torch.tensor(json.loads(logits.replace("-Infinity", "-1e30").replace("Infinity", "1e30")))
    assert torch.allclose(got, expected.clamp(min=-1e30), atol=1e-4)


# ---- the trainer and the evaluation script ----
@pytest.fixture(scope="module")
def tiny_vqa(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vqa_data")
    build_task_dataset("vqa", ShapesTaskConfig(image_size=16, num_train=8, num_validation=2, num_test=3)).save_to_disk(folder)
    return folder


@pytest.mark.parametrize("head", ["generate", "classify"])
def test_finetune_vqa_and_evaluate(pretrained, tiny_vqa, tmp_path, head):
    answer_list = tmp_path / "answers.json"
    answer_list.write_text(json.dumps(["yes", "no", "1", "2", "3"]))  # colour/shape questions have no valid answer
    out = tmp_path / "out"
    summary = finetune_vqa.main([
        "--model_name_or_path", str(pretrained), "--dataset", str(tiny_vqa), "--output_dir", str(out), "--vqa_head", head,
        "--answer_list", str(answer_list), "--per_device_batch_size", "4", "--num_epochs", "1", "--max_steps", "2",
        "--warmup_steps", "1", "--logging_steps", "1",
    ])
    assert summary["global_step"] == 2 and summary["skipped_no_valid_answer"] > 0
    assert summary["train_questions"] + summary["skipped_no_valid_answer"] == 24
    results = json.loads((out / "results.json").read_text())
    assert 0 <= results["metrics"]["vqa_accuracy"] <= 100 and "majority_accuracy" in results["baselines"]
    predictions = json.loads((out / "predictions_test.json").read_text())
    assert len(predictions) == 9 and set(predictions[0]) == {"question_id", "answer"}
    assert {p["answer"] for p in predictions} <= {"yes", "no", "1", "2", "3"}
    card = ModelCard.load(out / "README.md")
    assert "visual question answering" in card.text and "`vqa_accuracy`" in card.text
    assert any(r.metric_type == "vqa_accuracy" and r.task_type == "visual-question-answering" for r in card.data.eval_results)
    metrics = evaluate_vqa.main(["--model_name_or_path", str(out), "--dataset", str(tiny_vqa), "--split", "test"])
    assert metrics["vqa_accuracy"] == pytest.approx(results["metrics"]["vqa_accuracy"])
    assert "type_prior_accuracy" in metrics["baselines"]


def test_finetune_vqa_needs_a_checkpoint():
    with pytest.raises(SystemExit):
        finetune_vqa.main(["--output_dir", "/tmp/never"])
