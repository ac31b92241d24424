"""Image-text retrieval metrics: the paper's R@K (TR / IR) and, with ground-truth relevance, R@K-any and mAP@R.

Conventions
-----------
* ``similarity`` is (n_images, n_captions): image rows, caption columns.
* TR (text retrieval, image -> text): each image queries all captions; IR (image retrieval, text -> image):
  each caption queries all images.
* Recalls are percentages (0-100). mAP@R is also reported x 100.
* **Ties are ranked pessimistically**: a correct (own / relevant) item that ties with an incorrect one is
  ranked after it. The result therefore does not depend on the order of images or captions, and a collapsed
  model whose similarities are all equal scores 0 rather than whatever the index order happens to give.
  (Ties between correct items do not change any metric.)
* A query that has no correct item at all (an image without any caption in the standard protocol; a query
  whose ``relevance`` row is empty) cannot be scored: it is left out of the means of its direction and counted
  (``tr_no_caption``, ``tr_no_relevant``, ``ir_no_relevant``). A mean over no query is NaN, never a division
  by zero.

Efficiency: the standard metrics need no sort at all (a correct item's rank is a count of the candidates that
score at least as high), and the relevance-aware ones sort one chunk of queries at a time, so a 5k x 25k
matrix runs in bounded memory; there is no Python loop over queries. The relevance-aware metrics only look at
the top max(R, max K) of each ranking (``torch.topk``), which is fast while R (relevant items per query) is small.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

STANDARD_KS = (1, 5, 10)
DEFAULT_CHUNK_ELEMENTS = 1 << 22  # scores per chunk (4M): ~80 MB peak working memory


def _as_similarity(similarity) -> torch.Tensor:
    if isinstance(similarity, torch.Tensor):
        sim = similarity.detach()
    else:
        sim = torch.as_tensor(np.asarray(similarity))
    if sim.dim() != 2:
        raise ValueError(f"similarity must be 2-D (n_images x n_captions), got shape {tuple(sim.shape)}")
    if sim.dtype == torch.bool or sim.is_complex():
        raise ValueError(f"similarity must hold real numbers, got dtype {sim.dtype}")
    if sim.dtype != torch.float64:
        sim = sim.float()  # half / bfloat16 / integers -> float32 (float64 is kept: no new ties)
    if torch.isnan(sim).any():
        raise ValueError(f"similarity contains NaN ({int(torch.isnan(sim).sum())} entries)")
    return sim


def _as_ks(ks) -> tuple[int, ...]:
    try:
        ks = tuple(sorted({int(k) for k in ks}))
    except (TypeError, ValueError) as error:
        raise ValueError(f"ks must be positive integers, got {ks!r}") from error
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks!r}")
    return ks


def _chunk_rows(n_columns: int, chunk_elements: int) -> int:
    return max(1, chunk_elements // max(1, n_columns))


def _percent_hits(rank: torch.Tensor, valid: torch.Tensor, ks: Sequence[int]) -> dict[int, float]:
    """100 * fraction of the valid queries whose (0-based) rank is < k; NaN when no query is valid."""
    n_valid = int(valid.sum())
    if n_valid == 0:
        return {k: math.nan for k in ks}
    return {k: 100.0 * int(((rank < k) & valid).sum()) / n_valid for k in ks}


def _standard_ranks(sim: torch.Tensor, ir_sim: torch.Tensor, owner: torch.Tensor, chunk_elements: int):
    """0-based pessimistic rank of the first correct item per query, for TR (per image, ranked by `sim`) and IR (per
    caption, ranked by `ir_sim`; the same tensor unless re-ranking scored the two directions differently).

    IR: caption c's own image scores s_c = sim[owner[c], c]; its rank is #{images scoring >= s_c} - 1.
    TR: image i's best own caption scores b_i = max of s_c over its captions; its rank is
    #{captions scoring >= b_i in row i} - #{own captions scoring exactly b_i} (those ties are all correct).
    """
    n_images, n_captions = sim.shape
    device = sim.device
    captions = torch.arange(n_captions, device=device)
    own_score = sim[owner, captions]
    own_ir_score = ir_sim[owner, captions]

    ir_rank = torch.empty(n_captions, dtype=torch.long, device=device)
    step = _chunk_rows(n_images, chunk_elements)
    for start in range(0, n_captions, step):
        block = ir_sim[:, start : start + step]  # (n_images, chunk)
        ir_rank[start : start + step] = (block >= own_ir_score[start : start + step]).sum(0) - 1

    has_caption = torch.bincount(owner, minlength=n_images) > 0
    best = torch.full((n_images,), -math.inf, dtype=sim.dtype, device=device)
    best = best.scatter_reduce(0, owner, own_score, reduce="amax", include_self=True)
    n_best = torch.bincount(owner[own_score == best[owner]], minlength=n_images)
    tr_rank = torch.zeros(n_images, dtype=torch.long, device=device)
    step = _chunk_rows(n_captions, chunk_elements)
    for start in range(0, n_images, step):
        block = sim[start : start + step]  # (chunk, n_captions)
        tr_rank[start : start + step] = (block >= best[start : start + step, None]).sum(1) - n_best[start : start + step]
    return tr_rank, has_caption, ir_rank


def _relevance_ranking(scores: torch.Tensor, relevant: torch.Tensor, ks: Sequence[int], chunk_elements: int):
    """Per query (rows of `scores`): number of relevant items R, 0-based rank of the first relevant item, and
    AP@R = (1/R) * sum over ranks r <= R holding a relevant item of precision@r (Musgrave et al. 2020).

    Only the first D = max(R, max k) positions of each ranking matter, so each chunk of queries takes its top D
    with `torch.topk` instead of a full sort. Pessimistic ties: inside the top D, items are re-sorted by
    descending score with relevant items after irrelevant ones (a stable sort on relevance, then a stable sort
    on score). The tie group straddling position D (score equal to the D-th score) may have been cut arbitrarily
    by topk, so its positions are refilled from counts over the whole row: its irrelevant members first.
    """
    n_queries, n_candidates = scores.shape
    device = scores.device
    counts = relevant.sum(1)
    first = torch.full((n_queries,), n_candidates, dtype=torch.long, device=device)
    ap = torch.zeros(n_queries, dtype=torch.float64, device=device)
    step = _chunk_rows(n_candidates, chunk_elements)
    for start in range(0, n_queries, step):
        s, rel, r = scores[start : start + step], relevant[start : start + step], counts[start : start + step]
        depth = min(n_candidates, max(int(r.max()), max(ks)))
        if depth == 0:  # no candidates at all
            continue
        top_scores, top_index = torch.topk(s, depth, dim=1)  # sorted, descending; tie order unspecified
        top_rel = torch.gather(rel, 1, top_index)
        by_relevance = torch.sort(top_rel.to(torch.uint8), dim=1, stable=True).indices
        by_score = torch.sort(torch.gather(top_scores, 1, by_relevance), dim=1, descending=True, stable=True).indices
        ranked = torch.gather(top_rel, 1, torch.gather(by_relevance, 1, by_score))  # (chunk, depth) bool
        # the boundary tie group: positions from n_above on hold items scoring exactly the D-th score
        boundary = top_scores[:, -1:]
        n_above = (top_scores > boundary).sum(1, keepdim=True)
        n_irrelevant_tied = ((s == boundary) & ~rel).sum(1, keepdim=True)
        offset = torch.arange(depth, device=device)[None, :] - n_above
        ranked = torch.where(offset >= 0, offset >= n_irrelevant_tied, ranked)

        any_hit = ranked.any(1)
        first[start : start + step] = torch.where(any_hit, ranked.to(torch.uint8).argmax(1), torch.full_like(r, n_candidates))
        positions = torch.arange(1, depth + 1, device=device, dtype=torch.float64)
        hits = ranked.to(torch.float64)
        precision = hits.cumsum(1) / positions
        within_r = positions[None, :] <= r[:, None]
        ap[start : start + step] = (precision * hits * within_r).sum(1) / r.clamp(min=1)
    return counts, first, ap


def retrieval_metrics(
    similarity,
    caption_to_image,
    relevance=None,
    ks: Sequence[int] = STANDARD_KS,
    *,
    image_retrieval_similarity=None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> dict[str, float]:
    """Image-text retrieval metrics of a similarity matrix.

    Args:
        similarity: (n_images, n_captions) scores (torch tensor, numpy array or nested lists; any device).
        caption_to_image: length n_captions, the index of each caption's own image (several captions may share
            an image, COCO / Flickr style).
        relevance: optional bool (n_captions, n_images), ``relevance[c, i]`` = caption c is true of image i.
            It must mark every caption's own image as relevant.
        ks: the K of the R@K metrics.
        image_retrieval_similarity: optional (n_images, n_captions) scores that rank the images for each caption
            (IR) when they differ from those ranking the captions for each image (TR), as after ITM re-ranking
            of each direction's top-k candidates; default: ``similarity`` for both. Keyword only.
        chunk_elements: scores processed at once (memory bound), keyword only.

    Returns:
        Standard protocol (ALBEF / paper tables), percentages: ``tr_r{K}`` (an image is a hit when ANY of its own
        captions is in its top K), ``ir_r{K}`` (a caption is a hit when its own image is in its top K),
        ``r_mean`` (mean of all the tr/ir recalls), and ``tr_no_caption`` (images without a caption, left out).
        With ``relevance``: ``tr_r{K}_any`` / ``ir_r{K}_any`` (hit when any relevant item is in the top K),
        ``tr_map_r`` / ``ir_map_r`` (mAP@R x 100) and ``tr_no_relevant`` / ``ir_no_relevant`` (queries without
        any relevant item, left out of these means).

    Raises:
        ValueError: similarity not 2-D, not numeric, or with NaN; caption_to_image of the wrong length, not
            integral, or with an index outside [0, n_images); relevance of the wrong shape or not marking a
            caption's own image; invalid ks.
    """
    sim = _as_similarity(similarity)
    ir_sim = sim
    if image_retrieval_similarity is not None:
        ir_sim = _as_similarity(image_retrieval_similarity).to(sim.device)
        if ir_sim.shape != sim.shape:
            raise ValueError(
                f"image_retrieval_similarity has shape {tuple(ir_sim.shape)}, similarity has {tuple(sim.shape)}"
            )
    ks = _as_ks(ks)
    n_images, n_captions = sim.shape
    device = sim.device

    owner_np = np.asarray(caption_to_image.detach().cpu() if isinstance(caption_to_image, torch.Tensor) else caption_to_image)
    owner_np = owner_np.reshape(-1)
    if owner_np.size != n_captions:
        raise ValueError(f"caption_to_image has {owner_np.size} entries for {n_captions} captions (similarity columns)")
    integral = np.issubdtype(owner_np.dtype, np.integer) or (
        np.issubdtype(owner_np.dtype, np.floating) and bool(np.all(np.mod(owner_np, 1) == 0))
    )
    if owner_np.size and not integral:
        raise ValueError(f"caption_to_image must hold integer image indices, got {owner_np.dtype} values")
    owner = torch.as_tensor(owner_np.astype(np.int64), device=device)
    if n_captions and (int(owner.min()) < 0 or int(owner.max()) >= n_images):
        bad = int(((owner < 0) | (owner >= n_images)).nonzero()[0])
        raise ValueError(
            f"caption_to_image[{bad}] = {int(owner[bad])} is outside [0, {n_images}) (similarity has {n_images} image rows)"
        )

    tr_rank, has_caption, ir_rank = _standard_ranks(sim, ir_sim, owner, chunk_elements)
    tr = _percent_hits(tr_rank, has_caption, ks)
    ir = _percent_hits(ir_rank, torch.ones_like(ir_rank, dtype=torch.bool), ks)
    metrics: dict[str, float] = {f"tr_r{k}": tr[k] for k in ks}
    metrics |= {f"ir_r{k}": ir[k] for k in ks}
    recalls = [*tr.values(), *ir.values()]
    metrics["r_mean"] = float(np.mean(recalls))
    metrics["tr_no_caption"] = int((~has_caption).sum())

    if relevance is not None:
        rel_np = np.asarray(relevance.detach().cpu() if isinstance(relevance, torch.Tensor) else relevance)
        if rel_np.shape != (n_captions, n_images):
            hint = " (transposed? it is caption rows, image columns)" if rel_np.shape == (n_images, n_captions) else ""
            raise ValueError(
                f"relevance must have shape (n_captions, n_images) = {(n_captions, n_images)}, got {rel_np.shape}{hint}"
            )
        rel = torch.as_tensor(rel_np.astype(bool), device=device)
        own_ok = rel[torch.arange(n_captions, device=device), owner]
        if not bool(own_ok.all()):
            bad = int((~own_ok).nonzero()[0])
            raise ValueError(
                f"relevance[{bad}, {int(owner[bad])}] is False: relevance must mark every caption's own image "
                f"(caption_to_image) as relevant"
            )
        for name, scores, relevant in (("tr", sim, rel.t()), ("ir", ir_sim.t(), rel)):
            counts, first, ap = _relevance_ranking(scores, relevant, ks, chunk_elements)
            valid = counts > 0
            n_valid = int(valid.sum())
            metrics |= {f"{name}_r{k}_any": v for k, v in _percent_hits(first, valid, ks).items()}
            metrics[f"{name}_map_r"] = 100.0 * float(ap[valid].mean()) if n_valid else math.nan
            metrics[f"{name}_no_relevant"] = int((~valid).sum())
    return metrics


RERANK_SCORES = ("itm", "itm+itc")


def rerank_mode(k: int, score: str = "itm") -> str:
    """The results key of a re-ranked ranking: "itm_top{k}" (ITM alone) or "itm_itc_top{k}" (ITM + ITC)."""
    if score not in RERANK_SCORES:
        raise ValueError(f"unknown re-ranking score {score!r}: use one of {', '.join(RERANK_SCORES)}")
    return f"itm_top{k}" if score == "itm" else f"itm_itc_top{k}"
