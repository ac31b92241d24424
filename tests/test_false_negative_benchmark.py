"""benchmarks/false_negatives.py on a toy budget: the runs, the paired differences, the saved table and plot."""

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import false_negatives  # noqa: E402
from tests.helpers.tiny_data import save_tiny_checkpoint  # noqa: E402


def test_summary_statistics_by_hand():
    """Paired differences to InfoNCE with a 95% t-interval over seeds, worked by hand."""
    def run(value):
        return {"metrics": {m: value for m in false_negatives.METRICS}, "history": [{"weights/std": 0.5}]}

    table = false_negatives.summarise({"infonce": [run(10.0), run(12.0), run(14.0)], "x": [run(11.0), run(14.0), run(15.0)]})
    cell = table["x"]["tr_map_r"]
    # differences 1, 2, 1: mean 4/3, std 0.57735; half width 4.303 * 0.57735 / sqrt(3) = 1.4343
    assert cell["mean"] == pytest.approx(40 / 3) and cell["diff"] == pytest.approx(4 / 3)
    assert cell["ci95"] == pytest.approx([4 / 3 - 1.4343, 4 / 3 + 1.4343], abs=1e-3)
    assert table["infonce"]["tr_map_r"]["std"] == pytest.approx(2.0) and "diff" not in table["infonce"]["tr_map_r"]
    assert table["x"]["weights/std"] == 0.5 and table["x"]["false_negatives/mean_weight"] != table["x"]["false_negatives/mean_weight"]  # NaN: never logged


def test_toy_benchmark_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "fn"
    start = str(save_tiny_checkpoint(tmp_path / "start"))
    args = ["--settings", "high", "--seeds", "0", "--objectives", "srcl_teacher_mean", "albef_md", "oracle",
            "--steps", "2", "--warm_start", start, "--teacher", start, "--shapes_num_train", "64", "--batch_size", "16",
            "--data_cache_dir", str(tmp_path / "cache"), "--out", str(out)]
    summaries = false_negatives.main(args)
    assert list(summaries["high"]) == ["infonce", "srcl_teacher_mean", "albef_md", "oracle"]  # InfoNCE: the reference
    saved = json.loads((out / "summary.json").read_text())
    assert saved["summaries"]["high"]["oracle"]["false_negatives/mean_weight"] == pytest.approx(0.0)  # oracle drops them
    assert set(saved["teachers"]["high"]) == {"warm_start", "teacher"}
    assert "### Setting `high`" in (out / "summary.md").read_text() and (out / "summary.png").stat().st_size > 0
    capsys.readouterr()
    false_negatives.main(args)  # finished runs are reused, not trained again
    assert "finished" not in capsys.readouterr().out


def test_peer_objectives_are_trainer_flags_and_the_peers_list_expands(tmp_path):
    """Every peer objective's flags parse into a config the model accepts; '--objectives peers' expands."""
    from sisc_train.loop.arguments import parse_args
    from sisc_train.tasks.pretraining import DataArguments, ModelArguments, PretrainingArguments, build_model

    start = str(save_tiny_checkpoint(tmp_path / "start"))
    for name in false_negatives.PEER_OBJECTIVES:
        flags, _ = false_negatives.OBJECTIVES[name]
        model_args, _, _ = parse_args((ModelArguments, DataArguments, PretrainingArguments),
                                      [*flags, "--model_name_or_path", start])
        if model_args.oracle_false_negatives:
            continue
        config = build_model(model_args, None, total_steps=10).config
        assert config.contrastive_loss == model_args.loss
    assert set(false_negatives.PEER_OBJECTIVES) <= set(false_negatives.OBJECTIVES)


def test_ir_diagnostic_counts_false_negatives_per_direction_and_fits_probes():
    import numpy as np
    import torch

    import ir_diagnostic

    # captions 0 and 1 are true of images 0, 1 and 2; caption 2 only of its own image; rows 0 and 3 share an image
    relevance = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 1, 0], [1, 0, 0, 1]], dtype=bool)
    stats = ir_diagnostic.direction_false_negatives(relevance, np.array([5, 6, 7, 5]))
    # other-image hits: caption 0 -> images 1, 2; caption 1 -> 0, 2, 3; caption 2 -> none; caption 3 -> none (0 is its image)
    assert stats["caption_anchor_mean"] == pytest.approx(5 / 4) and stats["caption_anchor_share_with_any"] == 0.5
    # seen from the images: image 0 <- caption 1; 1 <- 0; 2 <- 0, 1; 3 <- 1
    assert stats["image_anchor_mean"] == pytest.approx(5 / 4) and stats["image_anchor_share_with_any"] == 1.0
    g = torch.Generator().manual_seed(0)
    features = torch.randn(200, 8, generator=g)
    labels = torch.stack([features[:, 0] > 0, features[:, 1] + features[:, 2] > 0.5])
    weight, bias = ir_diagnostic.fit_probes(features, labels, steps=200)
    accuracy = ((weight @ features.t() + bias[:, None] > 0) == labels).float().mean()
    assert accuracy > 0.95
