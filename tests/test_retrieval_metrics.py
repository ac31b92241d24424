"""Retrieval metrics on hand-worked cases."""

import pytest
import torch

from train.retrieval_metrics import retrieval_metrics

# 2 images, 3 captions: captions 0 and 1 belong to image 0, caption 2 to image 1.
SIM = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.8, 0.7]])
OWNER = [0, 0, 1]


def test_standard_recall_by_hand():
    m = retrieval_metrics(SIM, OWNER, ks=(1, 2))
    # TR: image 0 ranks c0 first (its own) -> hit; image 1 ranks c1, c2 -> own caption at rank 2
    assert m["tr_r1"] == pytest.approx(50.0) and m["tr_r2"] == pytest.approx(100.0)
    # IR: c0 -> image 0 (hit), c1 -> image 1 (miss), c2 -> image 1 (hit)
    assert m["ir_r1"] == pytest.approx(200 / 3) and m["ir_r2"] == pytest.approx(100.0)
    assert m["r_mean"] == pytest.approx((50 + 100 + 200 / 3 + 100) / 4)


def test_relevance_aware_metrics_by_hand():
    # caption 1 is also true of image 1 (a false negative under the standard protocol)
    relevance = torch.tensor([[1, 0], [1, 1], [0, 1]], dtype=torch.bool)
    m = retrieval_metrics(SIM, OWNER, relevance, ks=(1, 2))
    assert m["tr_r1_any"] == pytest.approx(100.0) and m["ir_r1_any"] == pytest.approx(100.0)
    # mAP@R, TR: image 0 (R=2): c0 rel, c2 not -> (1)/2; image 1 (R=2): c1, c2 both rel -> 1 => 0.75
    assert m["tr_map_r"] == pytest.approx(75.0)
    # IR: every caption's relevant images come first => 1
    assert m["ir_map_r"] == pytest.approx(100.0)
    assert m["tr_no_relevant"] == 0 and m["ir_no_relevant"] == 0


def test_ties_rank_the_lower_index_first():
    sim = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    m = retrieval_metrics(sim, [1, 0], ks=(1,))
    # image 0's own caption is 1, tied with caption 0 which comes first => miss; same for image 1 => hit
    assert m["tr_r1"] == pytest.approx(50.0)


def test_query_without_relevant_item_is_skipped_and_counted():
    relevance = torch.tensor([[1, 0], [0, 0], [0, 1]], dtype=torch.bool)  # caption 1 is true of no image
    m = retrieval_metrics(SIM, OWNER, relevance, ks=(1,))
    assert m["ir_no_relevant"] == 1
    assert m["ir_map_r"] == pytest.approx(100.0)  # the two other captions rank their image first


def test_perfect_and_worst():
    eye = torch.eye(4)
    assert retrieval_metrics(eye, [0, 1, 2, 3], ks=(1,))["r_mean"] == pytest.approx(100.0)
    assert retrieval_metrics(-eye, [0, 1, 2, 3], ks=(1, 3))["tr_r1"] == 0.0


def test_bad_inputs():
    with pytest.raises(ValueError, match="entries"):
        retrieval_metrics(SIM, [0, 1])
    with pytest.raises(ValueError, match="outside"):
        retrieval_metrics(SIM, [0, 0, 2])
    with pytest.raises(ValueError, match="relevance"):
        retrieval_metrics(SIM, OWNER, torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(torch.full((2, 3), float("nan")), OWNER)
