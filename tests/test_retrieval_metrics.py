"""Retrieval metrics on hand-worked cases, tie handling, edge cases, errors, and a brute-force cross-check."""

import math

import numpy as np
import pytest
import torch

from sisc_train.evaluation.retrieval_metrics import retrieval_metrics

# 3 images x 5 captions. Captions 0, 1 belong to image 0; captions 2, 3 to image 1; caption 4 to image 2.
OWNER = [0, 0, 1, 1, 2]
SIM = torch.tensor(
    [
        # c0    c1    c2    c3    c4
        [0.90, 0.30, 0.80, 0.10, 0.20],  # image 0
        [0.70, 0.20, 0.40, 0.60, 0.50],  # image 1
        [0.10, 0.50, 0.45, 0.20, 0.40],  # image 2
    ]
)
# Ground truth beyond the own pairs: c1 is also true of image 2, c2 of image 0, c4 of image 1.
RELEVANCE = torch.tensor(
    [
        # i0 i1 i2
        [1, 0, 0],  # c0
        [1, 0, 1],  # c1
        [1, 1, 0],  # c2
        [0, 1, 0],  # c3
        [0, 1, 1],  # c4
    ],
    dtype=torch.bool,
)


def test_standard_recall_by_hand():
    m = retrieval_metrics(SIM, OWNER, ks=(1, 2, 3))
    # TR (image rows, a hit if ANY own caption is in the top K):
    #   image 0 ranks c0 .9, c2 .8, c1 .3, ...       own {c0, c1}: first own at rank 1
    #   image 1 ranks c0 .7, c3 .6, c4 .5, c2 .4, ... own {c2, c3}: first own at rank 2
    #   image 2 ranks c1 .5, c2 .45, c4 .4, ...       own {c4}:     rank 3
    assert m["tr_r1"] == pytest.approx(100 / 3)
    assert m["tr_r2"] == pytest.approx(200 / 3)
    assert m["tr_r3"] == pytest.approx(100.0)
    # IR (caption columns, a hit if the own image is in the top K):
    #   c0 [.9 .7 .1] own i0 -> rank 1;  c1 [.3 .2 .5] own i0 -> rank 2;  c2 [.8 .4 .45] own i1 -> rank 3
    #   c3 [.1 .6 .2] own i1 -> rank 1;  c4 [.2 .5 .4] own i2 -> rank 2
    assert m["ir_r1"] == pytest.approx(40.0)  # 2 / 5
    assert m["ir_r2"] == pytest.approx(80.0)  # 4 / 5
    assert m["ir_r3"] == pytest.approx(100.0)
    # mean of the six recalls: (33.3 + 66.7 + 100 + 40 + 80 + 100) / 6 = 420 / 6
    assert m["r_mean"] == pytest.approx(70.0)
    assert m["tr_no_caption"] == 0
    assert "tr_map_r" not in m and "ir_r1_any" not in m  # relevance-aware metrics only with relevance


def test_default_ks_keys_and_values():
    m = retrieval_metrics(SIM, OWNER)
    assert {"tr_r1", "tr_r5", "tr_r10", "ir_r1", "ir_r5", "ir_r10", "r_mean"} <= set(m)
    # K >= number of candidates => every query is a hit
    assert m["tr_r5"] == m["tr_r10"] == m["ir_r5"] == m["ir_r10"] == 100.0
    assert m["r_mean"] == pytest.approx((100 / 3 + 100 + 100 + 40 + 100 + 100) / 6)


def test_relevance_aware_metrics_by_hand():
    m = retrieval_metrics(SIM, OWNER, RELEVANCE, ks=(1, 2))
    # TR, relevant captions per image (relevance columns):
    #   image 0: {c0, c1, c2}, R=3; ranking c0 (rel) c2 (rel) c1 (rel) -> P@1 + P@2 + P@3 = 3 -> AP 3/3 = 1
    #   image 1: {c2, c3, c4}, R=3; ranking c0 (no) c3 (rel) c4 (rel) -> (1/2 + 2/3) / 3 = 7/18
    #   image 2: {c1, c4},     R=2; ranking c1 (rel) c2 (no)          -> 1 / 2
    #   mAP@R = (1 + 7/18 + 1/2) / 3 = 17/27
    assert m["tr_map_r"] == pytest.approx(100 * 17 / 27)
    # first relevant rank: image 0 -> 1, image 1 -> 2, image 2 -> 1
    assert m["tr_r1_any"] == pytest.approx(200 / 3) and m["tr_r2_any"] == pytest.approx(100.0)
    # IR, relevant images per caption (relevance rows):
    #   c0 {i0}: ranking i0 -> AP 1;   c1 {i0, i2}: ranking i2 i0 -> AP 1;   c2 {i0, i1}: ranking i0 i2 -> AP 1/2
    #   c3 {i1}: ranking i1 -> AP 1;   c4 {i1, i2}: ranking i1 i2 -> AP 1     => mAP@R = 4.5 / 5
    assert m["ir_map_r"] == pytest.approx(90.0)
    # every caption's top image is relevant (the standard ir_r1 is only 40: c1, c2, c4 hit another true image)
    assert m["ir_r1_any"] == pytest.approx(100.0) and m["ir_r1"] == pytest.approx(40.0)
    assert m["tr_no_relevant"] == 0 and m["ir_no_relevant"] == 0
    # the standard metrics do not change when relevance is given
    standard = retrieval_metrics(SIM, OWNER, ks=(1, 2))
    assert all(m[key] == standard[key] for key in standard)


def test_query_without_relevant_item_is_skipped_and_counted():
    # image 2 has no caption and no caption is true of it: no TR query can be scored for it
    sim = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.95, 0.05]])
    relevance = torch.tensor([[1, 0, 0], [0, 1, 0]], dtype=torch.bool)
    m = retrieval_metrics(sim, [0, 1], relevance, ks=(1,))
    assert m["tr_no_caption"] == 1 and m["tr_no_relevant"] == 1 and m["ir_no_relevant"] == 0
    # images 0 and 1 rank their own caption first; image 2 is left out rather than counted as a miss
    assert m["tr_r1"] == 100.0 and m["tr_r1_any"] == 100.0 and m["tr_map_r"] == 100.0
    # IR: c0 ranks image 2 (.95) above its own image 0 (.9); c1 ranks image 1 first
    assert m["ir_r1"] == 50.0 and m["ir_map_r"] == 50.0


def test_image_without_own_caption_but_relevant_caption():
    # image 1 has no own caption but caption 0 is true of it: skipped by the standard TR, scored by mAP@R
    sim = torch.tensor([[0.9], [0.8]])
    relevance = torch.tensor([[1, 1]], dtype=torch.bool)
    m = retrieval_metrics(sim, [0], relevance, ks=(1,))
    assert m["tr_no_caption"] == 1 and m["tr_r1"] == 100.0
    assert m["tr_no_relevant"] == 0 and m["tr_map_r"] == 100.0 and m["tr_r1_any"] == 100.0
    assert m["ir_map_r"] == 100.0  # c0: R=2, both images in the top 2


def test_no_scorable_query_gives_nan_not_an_error():
    m = retrieval_metrics(torch.zeros(2, 0), [], torch.zeros(0, 2, dtype=torch.bool), ks=(1,))
    assert math.isnan(m["tr_r1"]) and math.isnan(m["ir_r1"]) and math.isnan(m["tr_map_r"]) and math.isnan(m["ir_map_r"])
    assert m["tr_no_caption"] == 2 and m["tr_no_relevant"] == 2 and m["ir_no_relevant"] == 0


def test_ties_are_ranked_pessimistically():
    # everything equal (a collapsed model): every own / relevant item ranks after all its tied wrong ones
    m = retrieval_metrics(torch.zeros(3, 5), OWNER, RELEVANCE, ks=(1, 2, 3, 4, 5))
    # TR: image 0 has 2 own captions -> rank 5 - 2 + 1 = 4; image 1 likewise 4; image 2 (1 own) -> 5
    assert [m[f"tr_r{k}"] for k in (1, 2, 3, 4, 5)] == pytest.approx([0, 0, 0, 200 / 3, 100])
    # IR: own image after the 2 other images -> rank 3
    assert [m[f"ir_r{k}"] for k in (1, 2, 3)] == pytest.approx([0, 0, 100])
    # mAP@R: relevant items sit in the last R positions; image 0 (R=3 of 5): positions 3..5, only pos 3 <= R:
    # (1/3)/3 = 1/9; image 1 same 1/9; image 2 (R=2): positions 4, 5 > 2 -> 0
    assert m["tr_map_r"] == pytest.approx(100 * (1 / 9 + 1 / 9 + 0) / 3)
    # IR: R=1 of 3 -> 0; R=2 of 3 -> relevant at 2, 3: P@2 = 1/2 -> AP 1/4; captions have R = 1 2 2 1 2
    assert m["ir_map_r"] == pytest.approx(100 * (0 + 0.25 + 0.25 + 0 + 0.25) / 5)


def test_tie_between_own_items_is_not_a_penalty_and_tie_with_wrong_item_is():
    sim = torch.tensor([[0.9, 0.9, 0.1], [0.5, 0.1, 0.5]])
    m = retrieval_metrics(sim, [0, 0, 1], ks=(1, 2))
    # image 0: own c0, c1 tied at the top -> rank 1. image 1: own c2 tied with c0 (not own) -> rank 2
    assert m["tr_r1"] == 50.0 and m["tr_r2"] == 100.0
    # c0: own i0 .9 vs .5 -> 1; c1: .9 vs .1 -> 1; c2: own i1 .5 vs i0 .1 -> 1
    assert m["ir_r1"] == 100.0


def test_map_at_r_with_a_tie_inside_the_top_r():
    # one caption query, relevant images {i0, i1}; i1 ties with the irrelevant i2 -> ranking i0, i2, i1
    sim = torch.tensor([[0.9], [0.5], [0.5]])
    relevance = torch.tensor([[1, 1, 0]], dtype=torch.bool)
    m = retrieval_metrics(sim, [0], relevance, ks=(1, 2))
    assert m["ir_map_r"] == pytest.approx(50.0)  # P@1 = 1, position 2 not relevant -> 1 / R = 1/2
    assert m["ir_r1_any"] == 100.0


def test_tie_group_cut_at_depth_r_is_filled_pessimistically():
    # one caption query over 5 images, relevant {i0, i1}: R=2, only the top 2 positions matter, and position 2
    # falls inside the tie group {i1, i2, i3, i4} at 0.5 -> the pessimistic ranking puts an irrelevant one there
    sim = torch.tensor([[0.9], [0.5], [0.5], [0.5], [0.5]])
    relevance = torch.tensor([[1, 1, 0, 0, 0]], dtype=torch.bool)
    m = retrieval_metrics(sim, [0], relevance, ks=(1,))
    assert m["ir_map_r"] == pytest.approx(50.0)
    # all four tied images relevant: position 2 is relevant whichever of them is placed there
    m = retrieval_metrics(sim, [0], torch.ones(1, 5, dtype=torch.bool), ks=(1,))
    assert m["ir_map_r"] == pytest.approx(100.0)


def test_ties_do_not_depend_on_the_order_of_items():
    rng = np.random.default_rng(0)
    sim = rng.integers(0, 3, size=(6, 14)).astype(np.float32)  # many ties
    owner = rng.integers(0, 6, size=14)
    relevance = rng.random((14, 6)) < 0.3
    relevance[np.arange(14), owner] = True
    ref = retrieval_metrics(sim, owner, relevance, ks=(1, 3))
    image_perm, caption_perm = rng.permutation(6), rng.permutation(14)
    inverse_image = np.argsort(image_perm)
    shuffled = retrieval_metrics(
        sim[image_perm][:, caption_perm], inverse_image[owner[caption_perm]], relevance[caption_perm][:, image_perm], ks=(1, 3)
    )
    assert shuffled == pytest.approx(ref)


def test_perfect_and_worst():
    eye = torch.eye(4)
    relevance = torch.eye(4, dtype=torch.bool)
    best = retrieval_metrics(eye, [0, 1, 2, 3], relevance, ks=(1, 4))
    assert all(best[key] == 100.0 for key in ("tr_r1", "ir_r1", "r_mean", "tr_map_r", "ir_map_r", "tr_r1_any"))
    worst = retrieval_metrics(-eye, [0, 1, 2, 3], relevance, ks=(1, 3, 4))
    assert worst["tr_r1"] == worst["tr_r3"] == worst["ir_r1"] == worst["ir_r3"] == 0.0
    assert worst["tr_r4"] == worst["ir_r4"] == 100.0  # last place is still within the top n
    assert worst["tr_map_r"] == worst["ir_map_r"] == 0.0
    assert worst["r_mean"] == pytest.approx(100 / 3)


def _brute_force(sim, owner, relevance, ks):
    """One query at a time, straight from the definitions (pessimistic ties: wrong items first)."""
    sim = np.asarray(sim, dtype=np.float64)
    n_images, n_captions = sim.shape
    own = np.zeros((n_captions, n_images), dtype=bool)
    own[np.arange(n_captions), owner] = True

    def ranking(scores, correct):
        return sorted(range(len(scores)), key=lambda j: (-scores[j], bool(correct[j])))

    def first_hit(scores, correct):
        ranked = ranking(scores, correct)
        return next((pos for pos, j in enumerate(ranked) if correct[j]), None)

    def ap_at_r(scores, correct):
        ranked, r = ranking(scores, correct), int(np.sum(correct))
        hits, total = 0, 0.0
        for pos, j in enumerate(ranked[:r], start=1):
            if correct[j]:
                hits += 1
                total += hits / pos
        return total / r

    out = {}
    for name, queries, truth in (("tr", sim, own.T), ("ir", sim.T, own), ("tr_any", sim, relevance.T), ("ir_any", sim.T, relevance)):
        firsts = [first_hit(q, t) for q, t in zip(queries, truth) if t.any()]
        prefix, suffix = name.split("_")[0], ("_any" if name.endswith("any") else "")
        for k in ks:
            out[f"{prefix}_r{k}{suffix}"] = 100.0 * np.mean([f < k for f in firsts])
        if suffix:
            out[f"{prefix}_map_r"] = 100.0 * np.mean([ap_at_r(q, t) for q, t in zip(queries, truth) if t.any()])
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("chunk_elements", [7, 1 << 22])
@pytest.mark.parametrize("ks", [(1,), (1, 2, 5, 10)])
def test_matches_brute_force(seed, chunk_elements, ks):
    rng = np.random.default_rng(seed)
    n_images, n_captions = 9, 23
    sim = rng.integers(0, 4, size=(n_images, n_captions)).astype(np.float32)  # many ties
    sim[:, :5] = rng.normal(size=(n_images, 5))  # and some distinct values
    owner = np.concatenate([np.arange(n_images), rng.integers(0, n_images, size=n_captions - n_images)])
    relevance = rng.random((n_captions, n_images)) < 0.25
    relevance[np.arange(n_captions), owner] = True
    got = retrieval_metrics(torch.from_numpy(sim), owner, relevance, ks=ks, chunk_elements=chunk_elements)
    expected = _brute_force(sim, owner, relevance, ks)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key


def test_chunking_does_not_change_results_and_accepts_numpy_and_float64():
    rng = np.random.default_rng(3)
    sim = rng.normal(size=(40, 200))
    owner = np.repeat(np.arange(40), 5)
    relevance = rng.random((200, 40)) < 0.05
    relevance[np.arange(200), owner] = True
    whole = retrieval_metrics(sim, owner, relevance)
    chunked = retrieval_metrics(torch.from_numpy(sim), torch.from_numpy(owner), torch.from_numpy(relevance), chunk_elements=333)
    assert chunked == pytest.approx(whole)
    assert retrieval_metrics(sim.tolist(), owner.tolist()) == pytest.approx(retrieval_metrics(sim, owner))


def test_infinite_scores_are_ranked_not_rejected():
    sim = torch.tensor([[float("inf"), 0.0], [float("-inf"), float("-inf")]])
    m = retrieval_metrics(sim, [0, 1], ks=(1,))
    # image 1: own c1 (-inf) ties with c0 (-inf) -> rank 2; c1: own i1 (-inf) below i0 (0.0) -> rank 2
    assert m["tr_r1"] == 50.0 and m["ir_r1"] == 50.0


def test_bad_inputs():
    with pytest.raises(ValueError, match="2 entries for 5 captions"):
        retrieval_metrics(SIM, [0, 1])
    with pytest.raises(ValueError, match=r"caption_to_image\[4\] = 3 is outside \[0, 3\)"):
        retrieval_metrics(SIM, [0, 0, 1, 1, 3])
    with pytest.raises(ValueError, match="outside"):
        retrieval_metrics(SIM, [0, -1, 1, 1, 2])
    with pytest.raises(ValueError, match="integer"):
        retrieval_metrics(SIM, [0, 0.5, 1, 1, 2])
    with pytest.raises(ValueError, match=r"relevance must have shape .*\(5, 3\).*transposed"):
        retrieval_metrics(SIM, OWNER, RELEVANCE.t())
    with pytest.raises(ValueError, match="relevance must have shape"):
        retrieval_metrics(SIM, OWNER, torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"relevance\[3, 1\] is False.*own image"):
        no_own = RELEVANCE.clone()
        no_own[3, 1] = False
        retrieval_metrics(SIM, OWNER, no_own)
    nan_sim = SIM.clone()
    nan_sim[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(nan_sim, OWNER)
    with pytest.raises(ValueError, match="2-D"):
        retrieval_metrics(torch.zeros(5), OWNER)
    with pytest.raises(ValueError, match="ks"):
        retrieval_metrics(SIM, OWNER, ks=(0, 1))
    with pytest.raises(ValueError, match="ks"):
        retrieval_metrics(SIM, OWNER, ks=())


def test_separate_image_retrieval_scores_only_change_the_ir_metrics():
    """After re-ranking, TR and IR rank by different matrices: each direction must read its own."""
    torch.manual_seed(0)
    text_side, image_side = torch.randn(6, 12), torch.randn(6, 12)
    owner = [i // 2 for i in range(12)]
    relevance = torch.zeros(12, 6, dtype=torch.bool)
    relevance[torch.arange(12), torch.tensor(owner)] = True
    relevance[0, 3] = True
    mixed = retrieval_metrics(text_side, owner, relevance, image_retrieval_similarity=image_side)
    tr_only, ir_only = retrieval_metrics(text_side, owner, relevance), retrieval_metrics(image_side, owner, relevance)
    for key, value in mixed.items():
        if key.startswith("tr_"):
            assert value == tr_only[key], key
        elif key.startswith("ir_"):
            assert value == ir_only[key], key
    recalls = [tr_only[f"tr_r{k}"] for k in (1, 5, 10)] + [ir_only[f"ir_r{k}"] for k in (1, 5, 10)]
    assert mixed["r_mean"] == pytest.approx(sum(recalls) / 6)
    same = retrieval_metrics(text_side, owner, relevance, image_retrieval_similarity=text_side)
    assert same == tr_only
    with pytest.raises(ValueError, match="image_retrieval_similarity has shape"):
        retrieval_metrics(text_side, owner, image_retrieval_similarity=image_side[:, :5])
