"""Image-text retrieval metrics: the paper's R@K (TR / IR) and, with ground-truth relevance, R@K-any and mAP@R.

Ties are ranked deterministically: a stable sort by descending score, the lower index first.
"""

from __future__ import annotations

import numpy as np
import torch


def _ranks_of_relevant(scores: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    """(queries, candidates) bool: `relevant`, reordered by each query's ranking (stable, descending score)."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    return torch.gather(relevant, 1, order)


def _recall_at(ranked_relevant: torch.Tensor, ks) -> dict[int, float]:
    # first relevant position per query (len = no relevant item)
    n = ranked_relevant.shape[1]
    first = torch.where(ranked_relevant.any(1), ranked_relevant.float().argmax(1), torch.full_like(ranked_relevant[:, 0], n, dtype=torch.long))
    return {k: 100.0 * (first < k).float().mean().item() for k in ks}


def _map_at_r(ranked_relevant: torch.Tensor) -> tuple[float, int]:
    """Mean over queries with R > 0 relevant items of (1/R) sum_{i <= R, item i relevant} precision@i."""
    counts = ranked_relevant.sum(1)
    valid = counts > 0
    if not bool(valid.any()):
        return float("nan"), int((~valid).sum())
    rr = ranked_relevant[valid].float()
    r = counts[valid].float()
    positions = torch.arange(1, rr.shape[1] + 1, dtype=torch.float32)
    precision = rr.cumsum(1) / positions
    within_r = positions.unsqueeze(0) <= r.unsqueeze(1)
    ap = (precision * rr * within_r).sum(1) / r
    return 100.0 * ap.mean().item(), int((~valid).sum())


def retrieval_metrics(similarity, caption_to_image, relevance=None, ks=(1, 5, 10)) -> dict[str, float]:
    """TR@K / IR@K (percent) and their mean `r_mean`; with `relevance` also `*_any` recalls and mAP@R.

    Args:
        similarity: (n_images, n_captions) scores.
        caption_to_image: length n_captions, the index of each caption's own image.
        relevance: optional bool (n_captions, n_images): every caption's relevance to every image.
    """
    sim = torch.as_tensor(np.asarray(similarity, dtype=np.float32) if not isinstance(similarity, torch.Tensor) else similarity).float().cpu()
    if sim.dim() != 2:
        raise ValueError(f"similarity must be 2-D (images x captions), got shape {tuple(sim.shape)}")
    if torch.isnan(sim).any():
        raise ValueError("similarity contains NaN")
    n_images, n_captions = sim.shape
    owner = torch.as_tensor(np.asarray(caption_to_image), dtype=torch.long).flatten()
    if owner.numel() != n_captions:
        raise ValueError(f"caption_to_image has {owner.numel()} entries for {n_captions} captions")
    if n_captions and (owner.min() < 0 or owner.max() >= n_images):
        raise ValueError(f"caption_to_image has an image index outside [0, {n_images})")
    own = torch.zeros(n_captions, n_images, dtype=torch.bool)
    own[torch.arange(n_captions), owner] = True

    tr = _recall_at(_ranks_of_relevant(sim, own.t()), ks)
    ir = _recall_at(_ranks_of_relevant(sim.t(), own), ks)
    metrics = {f"tr_r{k}": tr[k] for k in ks} | {f"ir_r{k}": ir[k] for k in ks}
    metrics["r_mean"] = float(np.mean([*tr.values(), *ir.values()]))
    if relevance is not None:
        rel = torch.as_tensor(np.asarray(relevance), dtype=torch.bool)
        if tuple(rel.shape) != (n_captions, n_images):
            raise ValueError(f"relevance must be (n_captions, n_images) = {(n_captions, n_images)}, got {tuple(rel.shape)}")
        ranked_tr = _ranks_of_relevant(sim, rel.t())
        ranked_ir = _ranks_of_relevant(sim.t(), rel)
        metrics |= {f"tr_r{k}_any": v for k, v in _recall_at(ranked_tr, ks).items()}
        metrics |= {f"ir_r{k}_any": v for k, v in _recall_at(ranked_ir, ks).items()}
        metrics["tr_map_r"], metrics["tr_no_relevant"] = _map_at_r(ranked_tr)
        metrics["ir_map_r"], metrics["ir_no_relevant"] = _map_at_r(ranked_ir)
    return metrics
