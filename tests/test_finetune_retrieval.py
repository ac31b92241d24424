"""train/finetune_retrieval.py on tiny data: SRCL (alpha 0) + ITM, validation every epoch, best model kept, test
metrics with ITM re-ranking in results.json and the model card."""

import json

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from tests.helpers.tiny_data import write_karpathy
from sisc_train.tasks import retrieval as finetune_retrieval

TINY = ["--per_device_batch_size", "4", "--num_workers", "0", "--report_to", "none", "--warmup_steps", "1",
        "--logging_steps", "1", "--validation_split", "val", "--rerank_k", "3"]


@pytest.fixture(scope="module")
def karpathy(tmp_path_factory):
    return write_karpathy(tmp_path_factory.mktemp("karpathy"))


def finetune(pretrained, karpathy, out, *extra):
    return finetune_retrieval.main(
        ["--model_name_or_path", str(pretrained), "--dataset", str(karpathy), "--output_dir", str(out), *TINY, *extra]
    )


def test_finetune_keeps_the_best_epoch_and_reports_test_metrics(pretrained, karpathy, tmp_path):
    result = finetune(pretrained, karpathy, tmp_path, "--num_epochs", "2")
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["global_step"] == result["global_step"] == 2 * (20 // 4)  # 10 train images (restval too) x 2 captions
    history = summary["validation_history"]
    assert [h["epoch"] for h in history] == [1, 2] and summary["validation_split"] == "val"
    best = summary["best_model"]
    assert best["metric"] == "r_mean" and best["value"] == max(h["r_mean"] for h in history)
    assert summary["eval_split"] == "test" and summary["rerank_k"] == 3
    assert {"tr_r1", "ir_r10", "r_mean"} <= set(summary["metrics"]) and {"tr_r1", "r_mean"} <= set(summary["rerank_metrics"])
    # the saved model is the kept one, fine-tuned as the paper does: regulated ITC without teacher, ITM, no MLM
    final, kept = load_file(tmp_path / "model.safetensors"), load_file(tmp_path / "checkpoints" / "best" / "model.safetensors")
    assert final.keys() == kept.keys() and all(torch.equal(final[k], kept[k]) for k in final)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["contrastive_loss"] == "srcl" and config["alpha_start"] == config["alpha_end"] == 0.0
    assert config["mlm_loss_weight"] == 0.0 and config["itm_loss_weight"] > 0
    card = ModelCard.load(tmp_path / "README.md")
    assert "fine-tuned for image-text retrieval" in card.text and "`itm_itc_top3_tr_r1`" in card.text
    assert "plus the ITC logit" in card.text
    types = {result.metric_type: result.metric_value for result in card.data.eval_results}
    assert types["tr_r1"] == pytest.approx(summary["metrics"]["tr_r1"], abs=1e-3)
    assert types["itm_itc_top3_r_mean"] == pytest.approx(summary["rerank_metrics"]["r_mean"], abs=1e-3)
    assert "after fine-tuning" in card.data.eval_results[0].task_name


def test_the_card_reports_the_chosen_rerank_score_and_results_keep_both(pretrained, karpathy, tmp_path):
    finetune(pretrained, karpathy, tmp_path, "--num_epochs", "1", "--rerank_score", "itm")  # ALBEF's: ITM alone
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["rerank_score"] == "itm" and set(summary["other_rerank_metrics"]) == {"itm_itc_top3"}
    card = ModelCard.load(tmp_path / "README.md")
    types = {result.metric_type: result.metric_value for result in card.data.eval_results}
    assert types["itm_top3_r_mean"] == pytest.approx(summary["rerank_metrics"]["r_mean"], abs=1e-3)
    assert "itm_itc_top3_r_mean" not in types and "plus the ITC logit" not in card.text


def test_an_unknown_rerank_score_is_refused_before_training(pretrained, karpathy, tmp_path):
    with pytest.raises(ValueError, match="unknown re-ranking score 'itc'"):
        finetune(pretrained, karpathy, tmp_path, "--rerank_score", "itc")
    assert not (tmp_path / "model.safetensors").exists()


def test_an_earlier_better_epoch_is_restored(pretrained, karpathy, tmp_path, monkeypatch):
    """Validation scores scripted to peak at epoch 1: the final weights are epoch 1's, not the last epoch's."""
    import sisc_train.tasks.pretraining as pretraining

    scores = iter([60.0, 10.0, 20.0])
    monkeypatch.setattr(pretraining, "evaluate_retrieval", lambda *a, **k: {"itc": {"r_mean": next(scores)}, "timing": {}})
    finetune(pretrained, karpathy, tmp_path, "--num_epochs", "3", "--eval_split", "")
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["best_model"]["epoch"] == 1 and summary["best_model"]["step"] == 5
    assert [h["r_mean"] for h in summary["validation_history"]] == [60.0, 10.0, 20.0]
    final, kept = load_file(tmp_path / "model.safetensors"), load_file(tmp_path / "checkpoints" / "best" / "model.safetensors")
    assert all(torch.equal(final[k], kept[k]) for k in final)
    start = load_file(pretrained / "model.safetensors")
    assert any(not torch.equal(final[k], start[k]) for k in final)  # epoch 1 did train


def test_bad_settings_fail_before_training(pretrained, karpathy, tmp_path):
    with pytest.raises(ValueError, match="--metric_for_best_model 'r_best' is not a retrieval metric.*r_mean"):
        finetune(pretrained, karpathy, tmp_path, "--metric_for_best_model", "r_best")
    assert not (tmp_path / "model.safetensors").exists()
    with pytest.raises(SystemExit, match="needs --model_name_or_path"):
        finetune_retrieval.main(["--dataset", str(karpathy)])


def test_help_prints_the_options(capsys):
    for flag in ("--help", "-h"):
        with pytest.raises(SystemExit) as stopped:
            finetune_retrieval.main([flag])
        assert stopped.value.code == 0
        printed = capsys.readouterr().out
        assert "--model_name_or_path" in printed and "--eval_dataset" in printed
