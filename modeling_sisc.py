"""SISC: ALBEF-style vision-language model with similarity-regulated contrastive learning (SRCL).

Paper: Jiang et al., "Vision Language Pre-training by Contrastive Learning with Cross-Modal Similarity
Regulation", ACL 2023. The image-text contrastive loss weights each in-batch negative by how unlike the anchor
it is, so that (partial) false negatives are not pushed away as hard as true negatives.

The loss is usable on its own by any dual encoder (rows are anchors, columns candidates, the diagonal holds the
positives):

    s = mixed_similarity(student_cos, teacher_cos, alpha)           # text x image
    w_t2i = regulation_weights(s, delta=1.0, norm="mean")          # rows: texts
    w_i2t = regulation_weights(s.T, delta=1.0, norm="mean")        # rows: images
    loss = regulated_contrastive_loss(logits_per_text, w_t2i, w_i2t)

The model reuses transformers' vision towers (ViT, DeiT, CLIP, SigLIP) and BERT modules (SDPA attention, gradient checkpointing);
only the fusion layer (bidirectional self-attention + cross-attention to image patches, which stock `BertLayer`
does not allow) and the heads are assembled here, from BERT's own sub-modules.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from transformers import AutoConfig, AutoModel, BertConfig, CLIPVisionModel, PreTrainedModel, ViTModel
from transformers import initialization as init
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.bert.modeling_bert import (
    BertAttention,
    BertForMaskedLM,
    BertIntermediate,
    BertModel,
    BertOnlyMLMHead,
    BertOutput,
    eager_attention_forward,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput, logging

try:  # loaded as a Hub/remote-code module
    from .configuration_sisc import DUAL_ENCODER_TYPES, VISION_MODEL_TYPES, SiscConfig
except ImportError:  # imported from the repository root
    from configuration_sisc import DUAL_ENCODER_TYPES, VISION_MODEL_TYPES, SiscConfig

logger = logging.get_logger(__name__)

AUTO_MAP = {
    "AutoConfig": "configuration_sisc.SiscConfig",
    "AutoModel": "modeling_sisc.SiscModel",
    "AutoModelForPreTraining": "modeling_sisc.SiscForPreTraining",
    "AutoModelForZeroShotImageClassification": "modeling_sisc.SiscModel",
}
# ALBEF keeps the learned temperature within [0.001, 0.5].
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.001, 0.5


# --------------------------------------------------------------------------------------------------------------
# The regulated contrastive loss (SRCL)
# --------------------------------------------------------------------------------------------------------------


def _check_matrix(name: str, matrix: torch.Tensor) -> None:
    if not isinstance(matrix, torch.Tensor) or matrix.dim() != 2:
        raise ValueError(f"{name} must be a 2-D tensor (anchors x candidates), got {getattr(matrix, 'shape', type(matrix))}")
    if matrix.shape[0] > matrix.shape[1]:
        raise ValueError(
            f"{name} has more anchors ({matrix.shape[0]}) than candidates ({matrix.shape[1]}): "
            "the positive of anchor i must be candidate i"
        )


def mixed_similarity(
    student_cos: torch.Tensor, teacher_cos: torch.Tensor | None = None, alpha: float = 0.0
) -> torch.Tensor:
    """The paper's mixed similarity s_ij = alpha * exp(teacher_cos_ij) + (1 - alpha) * exp(student_cos_ij).

    Both inputs are cosine similarities (anchors x candidates). Without a teacher the student alone is used
    (alpha is then irrelevant). The result is detached and float32: the regulation weights carry no gradient.
    """
    _check_matrix("student_cos", student_cos)
    student = student_cos.detach().float().exp()
    if teacher_cos is None:
        return student
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if teacher_cos.shape != student_cos.shape:
        raise ValueError(
            f"teacher_cos has shape {tuple(teacher_cos.shape)} but student_cos has shape {tuple(student_cos.shape)}"
        )
    teacher = teacher_cos.detach().float().to(student.device).exp()
    return alpha * teacher + (1.0 - alpha) * student


def _negatives_mask(shape: torch.Size, device: torch.device, ignore_mask: torch.Tensor | None) -> torch.Tensor:
    """True where column j is a negative of anchor row i: everything but the positive (diagonal) and ignored pairs."""
    rows, cols = shape
    negatives = torch.ones(rows, cols, dtype=torch.bool, device=device)
    negatives[torch.arange(rows, device=device), torch.arange(rows, device=device)] = False
    if ignore_mask is not None:
        if ignore_mask.shape != shape:
            raise ValueError(f"ignore_mask has shape {tuple(ignore_mask.shape)}, expected {tuple(shape)}")
        negatives &= ~ignore_mask.to(device=device, dtype=torch.bool)
    return negatives


def _softmax_over_negatives(scores: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """Row-wise softmax of `scores` over each row's negatives (bool mask); 0 elsewhere, and a row without negatives
    (all -inf) gives zeros instead of NaNs."""
    scores = torch.where(negatives, scores, torch.full_like(scores, float("-inf")))
    scores = torch.where(negatives.any(dim=1, keepdim=True), scores, torch.zeros_like(scores))
    return torch.where(negatives, torch.softmax(scores, dim=1), torch.zeros_like(scores))


@torch.no_grad()
def regulation_weights(
    similarity: torch.Tensor,
    *,
    delta: float = 1.0,
    norm: str = "mean",
    threshold: float | None = None,
    ignore_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weights w_ij of the negatives of each anchor (row), from the (positive) similarity s_ij, e.g. mixed_similarity.

    - `norm="mean"`: w_ij = (1 / s_ij) / mean_k(1 / s_ik) over the row's negatives (delta cancels out);
    - `norm="softmax"`: w_ij = (number of negatives) * softmax_j(delta / s_ij) over the row's negatives, so delta acts
      as a sharpness;
    - `threshold`: the paper's removal heuristic (sec. 4.3): weight 0 where the normalised weight is below the
      threshold, 1 elsewhere.

    Either way the mean over each row's negatives is 1 (before thresholding) and more similar => smaller weight.
    The positive (diagonal) gets weight 1. `ignore_mask` (bool, same shape) marks pairs that are not negatives
    though off the diagonal, e.g. another caption of the same image: they get weight 0 and are left out of the
    normalisation. No gradient flows through the weights. Returns float32.
    """
    _check_matrix("similarity", similarity)
    if norm not in ("mean", "softmax"):
        raise ValueError(f"norm must be 'mean' or 'softmax', got {norm!r}")
    if not (math.isfinite(delta) and delta > 0):
        raise ValueError(f"delta must be a finite number > 0, got {delta}")
    s = similarity.detach().float()
    if not bool(torch.isfinite(s).all() and (s > 0).all()):
        raise ValueError("similarity must be finite and > 0 (it is exp(cos) in the paper); got non-positive values")
    negatives = _negatives_mask(s.shape, s.device, ignore_mask)
    num_negatives = negatives.sum(dim=1, keepdim=True)
    if norm == "mean":
        inverse = torch.where(negatives, 1.0 / s, torch.zeros_like(s))
        row_mean = inverse.sum(dim=1, keepdim=True) / num_negatives.clamp(min=1)
        weights = inverse / row_mean.clamp(min=torch.finfo(s.dtype).tiny)
    else:
        weights = _softmax_over_negatives(delta / s, negatives) * num_negatives
    if threshold is not None:
        weights = (weights >= threshold).float()
    weights = torch.where(negatives, weights, torch.zeros_like(weights))
    rows = torch.arange(s.shape[0], device=s.device)
    weights[rows, rows] = 1.0
    return weights


def anchor_contrastive_loss(
    logits: torch.Tensor, weights: torch.Tensor | None = None, targets: torch.Tensor | None = None
) -> torch.Tensor:
    """One direction of SRCL, averaged over anchors: rows are anchors, column i the positive of row i.

    loss_i = logsumexp_j(logits_ij + log w_ij) - logits_ii with w_ii = 1: plain InfoNCE (cross-entropy) when
    `weights` is None. Computed in float32; a zero weight drops that negative (log 0 = -inf) without NaNs.
    `targets` (rows summing to 1, e.g. ALBEF's momentum-distillation soft targets) replace the one-hot positive:
    loss_i = -sum_j targets_ij * log p_ij under the same weighted softmax; dropped columns get no target mass.
    """
    _check_matrix("logits", logits)
    logits = logits.float()
    rows = torch.arange(logits.shape[0], device=logits.device)
    if weights is None and targets is None:
        return F.cross_entropy(logits, rows)
    if weights is None:
        weights = torch.ones_like(logits)
    if weights.shape != logits.shape:
        raise ValueError(f"weights have shape {tuple(weights.shape)}, logits have shape {tuple(logits.shape)}")
    log_weights = torch.log(weights.detach().float().to(logits.device))
    log_weights[rows, rows] = 0.0
    adjusted = logits + log_weights
    log_norm = torch.logsumexp(adjusted, dim=1)
    if targets is None:
        return (log_norm - logits[rows, rows]).mean()
    if targets.shape != logits.shape:
        raise ValueError(f"targets have shape {tuple(targets.shape)}, logits have shape {tuple(logits.shape)}")
    kept = torch.isfinite(log_weights)
    targets = torch.where(kept, targets.detach().float(), torch.zeros_like(logits))
    targets = targets / targets.sum(dim=1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny)
    log_probs = adjusted - log_norm.unsqueeze(1)
    return -torch.where(targets > 0, targets * log_probs, torch.zeros_like(log_probs)).sum(dim=1).mean()


# --------------------------------------------------------------------------------------------------------------
# Peer objectives: the other published answers to false negatives (each from its paper's formula)
# --------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def soft_infonce_weights(
    similarity: torch.Tensor,
    *,
    alpha: float = 1.0,
    temperature: float = 0.07,
    min_weight: float = 0.1,
    ignore_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Soft-InfoNCE's weights of each anchor's negatives (Li et al., EMNLP 2023, "Rethinking Negative Pairs in Code
    Search"), from the same (positive) similarity s_ij as `regulation_weights`:

        q_ij = softmax_j(log(s_ij) / temperature) over the row's K negatives    (log s = cos for one model)
        w_ij = max((1 - alpha * q_ij) / (1 - alpha / K), min_weight)

    Linear in the estimated probability q of being the match, 1 where q is uniform (1 / K), so the weights average
    1 before clipping and alpha = 0 is InfoNCE; alpha is the paper's alpha / beta (only the ratio matters). The most
    similar negatives get the least weight, but never less than `min_weight`. The positive gets 1, ignored pairs 0.
    """
    _check_matrix("similarity", similarity)
    s = similarity.detach().float()
    if not bool(torch.isfinite(s).all() and (s > 0).all()):
        raise ValueError("similarity must be finite and > 0 (it is exp(cos)); got non-positive values")
    negatives = _negatives_mask(s.shape, s.device, ignore_mask)
    count = negatives.sum(dim=1, keepdim=True).float()
    if bool(((count > 0) & (alpha >= count)).any()):
        raise ValueError(f"soft_infonce_alpha ({alpha}) must be smaller than every anchor's number of negatives "
                         f"(smallest: {int(count[count > 0].min())}): the weights' normaliser 1 - alpha / K must stay > 0")
    q = _softmax_over_negatives(s.log() / temperature, negatives)
    weights = ((1.0 - alpha * q) / (1.0 - alpha / count.clamp(min=1))).clamp(min=min_weight)
    weights = torch.where(negatives, weights, torch.zeros_like(weights))
    rows = torch.arange(s.shape[0], device=s.device)
    weights[rows, rows] = 1.0
    return weights


@torch.no_grad()
def hard_negative_weights(logits: torch.Tensor, beta: float, ignore_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Robinson et al.'s (ICLR 2021) importance weights of the negatives: K * softmax_j(beta * logits_ij) over each
    row's K negatives (mean 1; the hardest negatives up), positive 1, ignored pairs 0. beta = 0 gives all ones."""
    _check_matrix("logits", logits)
    logits = logits.detach().float()
    negatives = _negatives_mask(logits.shape, logits.device, ignore_mask)
    count = negatives.sum(dim=1, keepdim=True)
    weights = _softmax_over_negatives(beta * logits, negatives) * count
    rows = torch.arange(logits.shape[0], device=logits.device)
    weights[rows, rows] = 1.0
    return weights


def debiased_contrastive_loss(
    logits: torch.Tensor,
    *,
    logit_floor: float | torch.Tensor,
    prior: float = 0.0,
    beta: float = 0.0,
    ignore_mask: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """One direction of the debiased contrastive loss (Chuang et al., NeurIPS 2020) and of its hard-negative variant
    (Robinson et al., ICLR 2021), averaged over anchors; rows are anchors, column i the positive of row i.

    With the row's K negatives, their importance weights w_ij (`hard_negative_weights`, all 1 for beta = 0) and the
    class prior tau+ = `prior` (the share of an anchor's negatives expected to match it):

        Ng_i = max((mean_j w_ij exp(l_ij) - tau+ exp(l_ii)) / (1 - tau+), exp(logit_floor))
        loss_i = -log(exp(l_ii) / (exp(l_ii) + K * Ng_i))

    The positive's exp(l_ii) estimates how much of the negatives' mass is false negatives and removes it; the floor is
    the papers' e^(-1/t), the smallest value a negative's term can take (pass -1 / temperature for cosine logits).
    prior = beta = 0 is InfoNCE. The weights are detached (a sampling distribution); Ng carries the gradient.
    `weights`: `hard_negative_weights(logits, beta, ignore_mask)` when the caller already has them.
    Computed in log space in float32.
    """
    _check_matrix("logits", logits)
    if not 0.0 <= prior < 1.0:
        raise ValueError(f"prior must lie in [0, 1), got {prior}")
    logits = logits.float()
    rows = torch.arange(logits.shape[0], device=logits.device)
    negatives = _negatives_mask(logits.shape, logits.device, ignore_mask)
    count = negatives.sum(dim=1).float()
    if weights is None:
        weights = hard_negative_weights(logits, beta, ignore_mask)
    # log(mean_j w_ij exp(l_ij)) over the negatives
    weighted = torch.where(negatives, logits + weights.clamp(min=torch.finfo(torch.float32).tiny).log(),
                           torch.full_like(logits, float("-inf")))
    log_mean = torch.logsumexp(weighted, dim=1) - count.clamp(min=1).log()
    positive = logits[rows, rows]
    floor = torch.as_tensor(logit_floor, dtype=torch.float32, device=logits.device).expand_as(positive)
    if prior > 0:
        # log((e^a - tau e^b) / (1 - tau)) = a + log(1 - tau e^(b - a)) - log(1 - tau), where that stays positive
        remaining = 1.0 - prior * torch.exp((positive - log_mean).clamp(max=80.0))
        corrected = log_mean + remaining.clamp(min=torch.finfo(torch.float32).tiny).log() - math.log(1.0 - prior)
        log_ng = torch.where(remaining > 0, torch.maximum(corrected, floor), floor)
    else:
        log_ng = torch.maximum(log_mean, floor)
    log_negatives = torch.where(count > 0, count.clamp(min=1).log() + log_ng, torch.full_like(log_ng, float("-inf")))
    return (torch.logaddexp(positive, log_negatives) - positive).mean()


def sigmoid_pairwise_loss(
    logits: torch.Tensor,
    bias: torch.Tensor | float,
    *,
    ignore_mask: torch.Tensor | None = None,
    positive_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """SigLIP's loss (Zhai et al., ICCV 2023): every (text, image) pair is its own binary problem,

        loss = -1/N sum_ij log sigmoid(z_ij * (l_ij + bias)),  z_ij = +1 for the pair (and `positive_mask`), -1 else

    over the N x N scaled similarities `logits` (text x image); `ignore_mask` pairs (another caption of the same
    image) are left out. Symmetric by construction: one sum serves both directions."""
    _check_matrix("logits", logits)
    logits = logits.float()
    rows = torch.arange(logits.shape[0], device=logits.device)
    labels = -torch.ones_like(logits)
    labels[rows, rows] = 1.0
    if positive_mask is not None:
        labels = torch.where(positive_mask.to(logits.device, torch.bool), torch.ones_like(labels), labels)
    terms = F.logsigmoid(labels * (logits + bias))
    if ignore_mask is not None:
        if ignore_mask.shape != logits.shape:
            raise ValueError(f"ignore_mask has shape {tuple(ignore_mask.shape)}, expected {tuple(logits.shape)}")
        keep = ~ignore_mask.to(logits.device, torch.bool)
        keep[rows, rows] = True
        terms = torch.where(keep, terms, torch.zeros_like(terms))
    return -terms.sum() / logits.shape[0]


def target_distribution(
    positives: torch.Tensor, kept: torch.Tensor | None = None, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Soft targets for `anchor_contrastive_loss`: each row's mass split evenly over its positives (`positives`, bool,
    the diagonal always included), and with `label_smoothing` = eps, (1 - eps) of it so, eps spread evenly over the
    row's `kept` candidates (those with a non-zero weight; default all), as torch's cross-entropy smooths labels."""
    positives = positives.clone().bool()
    rows = torch.arange(positives.shape[0], device=positives.device)
    positives[rows, rows] = True
    kept = torch.ones_like(positives) if kept is None else kept.bool() | positives
    targets = positives.float() / positives.sum(dim=1, keepdim=True)
    if label_smoothing:
        uniform = kept.float() / kept.sum(dim=1, keepdim=True)
        targets = (1.0 - label_smoothing) * targets + label_smoothing * uniform
    return targets


def regulated_contrastive_loss(
    logits_per_text: torch.Tensor,
    weights_t2i: torch.Tensor | None = None,
    weights_i2t: torch.Tensor | None = None,
) -> torch.Tensor:
    """SRCL image-text contrastive loss: mean of the text-to-image and image-to-text losses.

    Args:
        logits_per_text: (N, N) scaled similarities, text i x image j (= cos / temperature); pair i is (t_i, v_i).
        weights_t2i: (N, N) weights of the images as negatives of each text (rows: texts), or None.
        weights_i2t: (N, N) weights of the texts as negatives of each image (rows: images, i.e. the layout of
            `logits_per_text.T`), or None.

    With both weights None (or all ones) this is exactly CLIP's / ALBEF's InfoNCE loss.
    """
    _check_matrix("logits_per_text", logits_per_text)
    if logits_per_text.shape[0] != logits_per_text.shape[1]:
        raise ValueError(f"logits_per_text must be square (N texts x N images), got {tuple(logits_per_text.shape)}")
    text_loss = anchor_contrastive_loss(logits_per_text, weights_t2i)
    image_loss = anchor_contrastive_loss(logits_per_text.t(), weights_i2t)
    return (text_loss + image_loss) / 2.0


def bag_of_words(input_ids: torch.Tensor, attention_mask: torch.Tensor, vocab_size: int, ignore_ids) -> torch.Tensor:
    """(batch, vocab_size) 0/1: which token ids each text uses inside its attention mask, `ignore_ids` (special tokens)
    left out."""
    words = torch.zeros(input_ids.shape[0], vocab_size, device=input_ids.device)
    words.scatter_(1, input_ids, attention_mask.to(words.dtype))
    words[:, list(ignore_ids)] = 0.0
    return words


def bag_of_words_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of a softmax over the vocabulary (`logits`, (batch, vocab)) against bags of words (`targets`, 0/1
    from `bag_of_words`), each distinct word of a text an equal share of its target. Rows with no word are left out;
    0 when none has one."""
    words = targets.sum(dim=1)
    rows = words > 0
    if not bool(rows.any()):
        return logits.sum() * 0.0
    log_probs = torch.log_softmax(logits[rows].float(), dim=-1)
    return -((targets[rows] / words[rows, None]) * log_probs).sum(dim=1).mean()


def cosine_matrix(rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """(n, m) cosine similarities of unit vectors, always in float32 with autocast off: under bf16 autocast the
    matmul would round them to about 3 significant digits, errors that the contrastive temperature (logits of
    cos / 0.07) multiplies into the loss's logits."""
    with torch.autocast(device_type=rows.device.type, enabled=False):
        return rows.float() @ columns.float().t()


def same_id_mask(row_ids: torch.Tensor, col_ids: torch.Tensor) -> torch.Tensor:
    """Bool mask of off-diagonal pairs that share an id (e.g. two captions of one image): not negatives."""
    mask = row_ids.view(-1, 1) == col_ids.view(1, -1)
    rows = torch.arange(mask.shape[0], device=mask.device)
    mask[rows, rows] = False
    return mask


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from all processes along dim 0, keeping gradients (identity outside distributed runs).

    All processes must pass the same batch size (drop the last incomplete batch).
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return tensor
    if torch.distributed.get_world_size() == 1:
        return tensor
    import warnings

    import torch.distributed.nn.functional as dist_fn

    # The synchronous autograd all-gather (its backward sums every process's gradient for its own slice, which
    # DDP's averaging undoes). torch deprecates it in favour of functional collectives, whose asynchronous
    # backward we saw hang with gloo; keep the proven one until that is resolved.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(dist_fn.all_gather(tensor.contiguous()), dim=0)


# --------------------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------------------


@dataclass
class SiscOutput(ModelOutput):
    """Output of `SiscModel`, with CLIP's field names.

    Args:
        loss: the image-text contrastive loss (SRCL or InfoNCE per config), when `return_loss=True`.
        logits_per_image: (n_images, n_texts) scaled cosine similarities.
        logits_per_text: (n_texts, n_images), the transpose.
        text_embeds / image_embeds: L2-normalised projected embeddings.
        text_model_output / vision_model_output: the unimodal encoders' outputs.
        weights_t2i / weights_i2t: the regulation weights used by the loss (rows: texts / images), over the global
            batch in distributed runs; None for InfoNCE.
    """

    loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None
    weights_t2i: torch.FloatTensor | None = None
    weights_i2t: torch.FloatTensor | None = None

    def to_tuple(self) -> tuple[Any]:
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in self.values())


@dataclass
class SiscForPreTrainingOutput(ModelOutput):
    """Output of `SiscForPreTraining`: the weighted sum `loss` of the three pretraining losses and each of them.

    Args:
        loss: itc_loss_weight * loss_itc + itm_loss_weight * loss_itm + mlm_loss_weight * loss_mlm
            (+ negative_caption_loss_weight * loss_negative_caption + word_prediction_loss_weight * loss_word_prediction).
        loss_itc: regulated image-text contrastive loss (SRCL, or InfoNCE per config).
        loss_itm: image-text matching loss (positives + one hard negative text per image and image per text).
        loss_mlm: masked language modelling loss, predicting masked tokens from the fusion encoder.
        loss_negative_caption: each image's own caption against its negative caption (`negative_caption_loss`).
        loss_word_prediction: the caption's words predicted from its image (`word_prediction_loss`).
        itm_logits / itm_labels: (3B, 2) match logits and their 0/1 labels.
        mlm_logits: (B, L, vocab) token logits of the masked captions.
    """

    loss: torch.FloatTensor | None = None
    loss_itc: torch.FloatTensor | None = None
    loss_itm: torch.FloatTensor | None = None
    loss_mlm: torch.FloatTensor | None = None
    loss_negative_caption: torch.FloatTensor | None = None
    loss_word_prediction: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    itm_logits: torch.FloatTensor | None = None
    itm_labels: torch.LongTensor | None = None
    mlm_logits: torch.FloatTensor | None = None
    weights_t2i: torch.FloatTensor | None = None
    weights_i2t: torch.FloatTensor | None = None


# --------------------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------------------


class SiscFusionLayer(GradientCheckpointingLayer):
    """BERT layer with bidirectional self-attention then cross-attention to image patches (ALBEF's fusion layer).

    Built from BERT's own sub-modules (attention kernels selected by `config._attn_implementation`); parameter
    names match `BertLayer`, so the layers of a pretrained BERT load directly (cross-attention starts fresh).
    """

    def __init__(self, config: BertConfig, layer_idx: int):
        super().__init__()
        self.attention = BertAttention(config, is_causal=False, layer_idx=layer_idx)
        self.crossattention = BertAttention(config, is_causal=False, layer_idx=layer_idx, is_cross_attention=True)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(
        self,
        hidden_states,
        attention_mask,
        encoder_hidden_states,
        encoder_attention_mask=None,
        second_encoder_hidden_states=None,
        encoder_index=None,
        *,
        second_crossattention: nn.Module | None = None,
        branch_merge: nn.Module | None = None,
    ):
        """`second_encoder_hidden_states` (NLVR's second image): the text also attends to them with
        `second_crossattention`, and `branch_merge` merges the two branches' outputs before the feed-forward block.
        `encoder_index` (rows,): text row r attends to `encoder_hidden_states[encoder_index[r]]` (see
        `indexed_cross_attention`). Tensors are positional so that gradient checkpointing carries their gradients."""
        hidden_states, _ = self.attention(hidden_states, attention_mask)
        if encoder_index is None:
            attended, _ = self.crossattention(hidden_states, None, encoder_hidden_states, encoder_attention_mask)
        else:
            attended = self.indexed_cross_attention(hidden_states, encoder_hidden_states, encoder_attention_mask, encoder_index)
        if second_encoder_hidden_states is not None:
            second, _ = second_crossattention(hidden_states, None, second_encoder_hidden_states)
            attended = branch_merge(torch.cat([attended, second], dim=-1))
        return self.output(self.intermediate(attended), attended)

    def indexed_cross_attention(self, hidden_states, encoder_hidden_states, encoder_attention_mask, encoder_index):
        """`self.crossattention` for rows that share images: row r attends to `encoder_hidden_states[encoder_index[r]]`.
        The keys and values are projected once per image and then gathered, the same numbers as projecting the
        gathered states: ITM scores each image with three captions, and its key / value projections of all the
        image tokens are the largest part of a fusion layer's work on short captions."""
        attention = self.crossattention.self
        query_shape = (*hidden_states.shape[:-1], -1, attention.attention_head_size)
        query = attention.query(hidden_states).view(query_shape).transpose(1, 2)
        image_shape = (*encoder_hidden_states.shape[:-1], -1, attention.attention_head_size)
        key = attention.key(encoder_hidden_states).view(image_shape).transpose(1, 2)[encoder_index]
        value = attention.value(encoder_hidden_states).view(image_shape).transpose(1, 2)[encoder_index]
        # the kernel BertCrossAttention would use (config._attn_implementation), called as it calls it
        interface = ALL_ATTENTION_FUNCTIONS.get_interface(attention.config._attn_implementation, eager_attention_forward)
        attended, _ = interface(
            attention, query, key, value, encoder_attention_mask,
            dropout=attention.dropout.p if attention.training else 0.0, scaling=attention.scaling,
        )
        return self.crossattention.output(attended.reshape(*hidden_states.shape[:-1], -1).contiguous(), hidden_states)


class SiscFusionEncoder(nn.Module):
    """Stack of fusion layers: text hidden states attend to themselves and to the image patch states."""

    def __init__(self, config: BertConfig, image_hidden_size: int):
        super().__init__()
        self.config = config
        # Cross-attention keys/values are BERT-sized; project image states when the towers' widths differ.
        self.image_projection = (
            nn.Identity() if image_hidden_size == config.hidden_size else nn.Linear(image_hidden_size, config.hidden_size)
        )
        self.layer = nn.ModuleList([SiscFusionLayer(config, i) for i in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False

    def forward(self, text_hidden_states, text_attention_mask, image_hidden_states, image_attention_mask=None,
                image_index=None):
        """`image_index` (rows,): text row r is fused with image `image_index[r]` of `image_hidden_states` (and
        `image_attention_mask`), whose keys and values are then computed once per image; default: row r with image r.

        A batch of captions of mixed lengths runs as two groups of rows sorted by length, each cut to its longest
        caption (`length_groups`): captions are padded to the batch's longest, often twice their mean, and the fusion
        layers' work grows with the padded length. The real tokens' states are those of one pass (up to float
        rounding); padding positions beyond a group's longest caption come back as zeros."""
        rows = text_hidden_states.shape[0]
        if image_index is not None and (image_index.dim() != 1 or image_index.shape[0] != rows):
            raise ValueError(f"image_index must give one image per text row: shape ({rows},), got {tuple(image_index.shape)}")
        image_hidden_states = self.image_projection(image_hidden_states)
        groups = length_groups(text_attention_mask)
        if groups is None:
            return self._fuse(text_hidden_states, text_attention_mask, image_hidden_states, image_attention_mask, image_index)
        padded_length, outputs = text_hidden_states.shape[1], []
        for group, length in groups:
            if image_index is None:  # aligned rows: the group's own images
                image_mask = None if image_attention_mask is None else image_attention_mask[group]
                images, index = image_hidden_states[group], None
            else:
                images, image_mask, index = image_hidden_states, image_attention_mask, image_index[group]
            fused = self._fuse(text_hidden_states[group, :length], text_attention_mask[group, :length], images, image_mask, index)
            outputs.append(F.pad(fused, (0, 0, 0, padded_length - length)))
        order = torch.cat([group for group, _ in groups])
        return torch.cat(outputs)[torch.argsort(order)]

    def _fuse(self, text_hidden_states, text_attention_mask, image_hidden_states, image_attention_mask, image_index):
        attention_mask = create_bidirectional_mask(
            config=self.config, inputs_embeds=text_hidden_states, attention_mask=text_attention_mask
        )
        encoder_attention_mask = None
        if image_attention_mask is not None:
            if image_index is not None:
                image_attention_mask = image_attention_mask[image_index]
            encoder_attention_mask = create_bidirectional_mask(
                config=self.config,
                inputs_embeds=text_hidden_states,
                attention_mask=image_attention_mask,
                encoder_hidden_states=image_hidden_states if image_index is None else image_hidden_states[image_index],
            )
        hidden_states = text_hidden_states
        for layer in self.layer:
            hidden_states = layer(hidden_states, attention_mask, image_hidden_states, encoder_attention_mask, None, image_index)
        return hidden_states


# Fewer rows than this run as one group: splitting small batches saves little and costs a pass per group.
MIN_ROWS_PER_LENGTH_GROUP = 16


def length_groups(attention_mask: torch.Tensor | None, num_groups: int = 2) -> list[tuple[torch.Tensor, int]] | None:
    """Rows of a (rows, padded length) mask split into `num_groups` groups by the extent of their tokens (the
    position after the last real token, so left padding is safe too), as [(row indices, the group's longest extent)],
    shortest first; None when splitting would not shorten any group (or the batch is small)."""
    if attention_mask is None or attention_mask.dim() != 2 or attention_mask.shape[0] < num_groups * MIN_ROWS_PER_LENGTH_GROUP:
        return None
    padded_length = attention_mask.shape[1]
    extent = padded_length - (attention_mask != 0).flip(1).int().argmax(dim=1)  # all-padding rows count as full
    order = torch.argsort(extent, stable=True)
    groups = [(group, int(extent[group[-1]])) for group in order.chunk(num_groups)]
    if all(length == padded_length for _, length in groups):
        return None
    return groups


# Tokens before the patch states in each tower's output ([CLS]; DeiT adds a distillation token; SigLIP has none).
_PREFIX_TOKENS = {"vit": 1, "deit": 2, "clip_vision_model": 1, "siglip_vision_model": 0}


def image_summary(vision_outputs, pooling: str = "cls", model_type: str = "vit") -> torch.Tensor:
    """The image's summary vector. `pooling="cls"`: the pooler output where the tower has one (CLIP: its
    post-layernormed [CLS]; SigLIP, which has no [CLS] token: its pretrained attention-pooling head), else the last
    [CLS] state (ViT and DeiT are built without their pooler, a layer most checkpoints leave untrained; their last
    state is layer-normed). `pooling="max"`: the maximum of each feature over the last patch states.
    """
    if pooling == "max":
        return vision_outputs.last_hidden_state[:, _PREFIX_TOKENS[model_type]:].amax(dim=1)
    if vision_outputs.pooler_output is not None:
        return vision_outputs.pooler_output
    return vision_outputs.last_hidden_state[:, 0]


class ConvPatchStem(nn.Sequential):
    """A convolutional stem in place of a ViT's linear patch projection (`SiscConfig.vision_conv_stem`): per entry of
    `channels` a 3x3 convolution, ReLU and 2x2 max-pooling, then a 1x1 convolution to the tower's width. Like the
    projection it maps (batch, 3, H, W) to (batch, hidden, H / patch, W / patch), one token per patch; unlike it,
    the features of a patch do not depend on where inside the patch an edge falls: with the max-pooled read-out
    (`image_pooling="max"`) a small ViT trained from scratch then learns shapes as fast as a CNN
    (`benchmarks/shape_learnability.py`)."""

    def __init__(self, num_channels: int, channels: list[int], hidden_size: int):
        layers, previous = [], num_channels
        for width in channels:
            layers += [nn.Conv2d(previous, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            previous = width
        super().__init__(*layers, nn.Conv2d(previous, hidden_size, 1))

    @property
    def weight(self) -> torch.Tensor:
        # ViTModel reads its patch projection's weight for the input dtype.
        return self[-1].weight


# Constructor arguments of the vision towers: no pooler for ViT / DeiT (see image_summary).
_VISION_TOWER_KWARGS = {"vit": {"add_pooling_layer": False}, "deit": {"add_pooling_layer": False}}


def _build_vision_model(vision_config, conv_stem: list[int] | None = None) -> nn.Module:
    # ViT and CLIP are built by their classes as before, so that old checkpoints keep their parameter names.
    if vision_config.model_type == "vit":
        tower = ViTModel(vision_config, add_pooling_layer=False)
    elif vision_config.model_type == "clip_vision_model":
        tower = CLIPVisionModel(vision_config)
    else:
        tower = AutoModel.from_config(vision_config, **_VISION_TOWER_KWARGS.get(vision_config.model_type, {}))
    if conv_stem:  # checked by SiscConfig: a ViT / DeiT with patch_size 2 ** len(conv_stem)
        tower.embeddings.patch_embeddings.projection = ConvPatchStem(
            vision_config.num_channels, conv_stem, vision_config.hidden_size
        )
    return tower


def vision_encoder_config(vision_model_name_or_path):
    """The config of a vision checkpoint's image tower: the checkpoint's own, or the vision half of a CLIP / SigLIP
    dual encoder. Raises ValueError for architectures SISC cannot use as its image tower."""
    config = AutoConfig.from_pretrained(vision_model_name_or_path)
    if config.model_type in DUAL_ENCODER_TYPES:
        config = config.vision_config
    if config.model_type not in VISION_MODEL_TYPES:
        raise ValueError(
            f"vision model {vision_model_name_or_path}: a {config.model_type!r} model cannot be SISC's image tower; "
            f"use a checkpoint of {VISION_MODEL_TYPES} (or a full {DUAL_ENCODER_TYPES} model, whose vision tower is taken)"
        )
    return config


def _resize_position_embeddings(state: dict, pretrained: nn.Module, target: nn.Module, image_size: int) -> dict:
    """`state` (the pretrained tower's) with its position embeddings interpolated to `target`'s image size, by the
    tower's own `interpolate_pos_encoding` (as ALBEF starts its 256 px ViT from a 224 px one)."""
    target_state = target.state_dict()
    modules = dict(pretrained.named_modules())
    for key, value in list(state.items()):
        if key not in target_state or target_state[key].shape == value.shape:
            continue
        prefix = key.rsplit(".", 1)[0]
        while prefix and not hasattr(modules.get(prefix), "interpolate_pos_encoding"):
            prefix = prefix.rsplit(".", 1)[0] if "." in prefix else ""
        if not prefix or "position" not in key:
            raise ValueError(f"vision weights {key}: shape {tuple(value.shape)} in the checkpoint, "
                             f"{tuple(target_state[key].shape)} in SISC's tower")
        wanted = target_state[key]
        tokens = wanted.shape[-2] if wanted.dim() == 3 else wanted.shape[0]
        with torch.no_grad():
            resized = modules[prefix].interpolate_pos_encoding(
                torch.zeros(1, tokens, wanted.shape[-1], dtype=value.dtype), image_size, image_size
            )
        state[key] = resized.reshape(wanted.shape)
    return state


class SiscPreTrainedModel(PreTrainedModel):
    config: SiscConfig
    config_class = SiscConfig
    base_model_prefix = "sisc"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["SiscFusionLayer", "BertLayer", "ViTLayer", "DeiTLayer", "CLIPEncoderLayer", "SiglipEncoderLayer"]

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, SiscModel):
            init.constant_(module.logit_scale, math.log(1.0 / self.config.temperature_init))
            if module.logit_bias is not None:
                init.constant_(module.logit_bias, self.config.siglip_bias_init)
            # The convolutional stem feeds ReLUs: He initialisation, not the N(0, 0.02) that the vision tower's own
            # initialisation (run before this, on its whole sub-tree) gave every convolution.
            stem = getattr(getattr(module.vision_model, "embeddings", None), "patch_embeddings", None)
            if isinstance(getattr(stem, "projection", None), ConvPatchStem):
                for conv in stem.projection:
                    if isinstance(conv, nn.Conv2d):
                        init.kaiming_normal_(conv.weight, nonlinearity="relu")
                        init.zeros_(conv.bias)

    def save_pretrained(self, save_directory, *args, **kwargs):
        # One checkpoint serves every Auto class (the pipeline needs the zero-shot entry); transformers itself
        # records only the class being saved.
        self.config.auto_map = {**AUTO_MAP, **(getattr(self.config, "auto_map", None) or {})}
        super().save_pretrained(save_directory, *args, **kwargs)

    # ---- initialisation from pretrained unimodal checkpoints (as in the paper) ----
    @classmethod
    def config_from_encoders(
        cls,
        vision_model_name_or_path: str | None = None,
        text_model_name_or_path: str | None = None,
        num_text_layers: int | None = None,
        num_fusion_layers: int | None = None,
        config: SiscConfig | None = None,
        image_size: int | None = None,
        vocab_size: int | None = None,
        pad_token_id: int | None = None,
        text_dropout: float | None = None,
        **config_kwargs,
    ) -> SiscConfig:
        """The SiscConfig of a model built from pretrained encoders: the towers' sizes come from the encoders'
        configs, everything else from `config` (default `SiscConfig()`, the paper's model) and `config_kwargs`.
        `text_dropout`: the dropout of the text and fusion encoders' hidden states and attention probabilities
        (default: the BERT checkpoint's, else `config`'s).

        `image_size`: the image tower's input size (default: the vision checkpoint's; position embeddings are
        interpolated when it differs). `vocab_size` / `pad_token_id`: the tokenizer's; with a text checkpoint the
        vocabulary must fit in its embeddings. Raises ValueError naming the problem (an architecture SISC cannot
        use, a split out of range, a vocabulary that does not fit).
        """
        fields = (config or SiscConfig()).to_dict()
        for key in ("architectures", "transformers_version", "_name_or_path", "auto_map"):
            fields.pop(key, None)
        if vision_model_name_or_path:
            fields["vision_config"] = vision_encoder_config(vision_model_name_or_path).to_dict()
        if image_size is not None:
            fields["vision_config"]["image_size"] = image_size
        if text_model_name_or_path:
            bert_config = AutoConfig.from_pretrained(text_model_name_or_path)
            if bert_config.model_type != "bert":
                raise ValueError(
                    f"text model {text_model_name_or_path}: a {bert_config.model_type!r} model cannot be split into "
                    "SISC's text and fusion encoders, which are BERT layers; use a BERT-family checkpoint (model_type "
                    "'bert': BERT, MiniLM, ...)"
                )
            total = bert_config.num_hidden_layers
            num_text_layers = num_text_layers if num_text_layers is not None else total // 2
            num_fusion_layers = num_fusion_layers if num_fusion_layers is not None else total - num_text_layers
            if num_text_layers < 1 or num_fusion_layers < 1 or num_text_layers + num_fusion_layers > total:
                raise ValueError(
                    f"text model {text_model_name_or_path}: cannot take {num_text_layers} text + {num_fusion_layers} "
                    f"fusion layers from a {total}-layer BERT (--num_text_layers must lie in [1, {total - 1}])"
                )
            if vocab_size is not None and vocab_size > bert_config.vocab_size:
                raise ValueError(
                    f"the tokenizer has {vocab_size} tokens, the text model {text_model_name_or_path} embeds only "
                    f"{bert_config.vocab_size}: use the text model's own tokenizer"
                )
            bert_dict = bert_config.to_dict()
            for key in ("architectures", "model_type", "transformers_version", "_name_or_path"):
                bert_dict.pop(key, None)
            if pad_token_id is not None:
                bert_dict["pad_token_id"] = pad_token_id
            fields["text_config"] = {**bert_dict, "num_hidden_layers": num_text_layers}
            fields["fusion_encoder_config"] = {**bert_dict, "num_hidden_layers": num_fusion_layers}
        elif num_text_layers is not None or num_fusion_layers is not None:
            raise ValueError("num_text_layers / num_fusion_layers split a pretrained BERT: give text_model_name_or_path")
        else:
            for name in ("text_config", "fusion_encoder_config"):
                if vocab_size is not None:
                    fields[name]["vocab_size"] = vocab_size
                if pad_token_id is not None:
                    fields[name]["pad_token_id"] = pad_token_id
        if text_dropout is not None:
            if not 0.0 <= text_dropout < 1.0:
                raise ValueError(f"text_dropout must lie in [0, 1), got {text_dropout}")
            for name in ("text_config", "fusion_encoder_config"):
                fields[name]["hidden_dropout_prob"] = fields[name]["attention_probs_dropout_prob"] = text_dropout
        return SiscConfig.from_dict({**fields, **config_kwargs})

    @classmethod
    def from_pretrained_encoders(
        cls,
        vision_model_name_or_path: str | None = None,
        text_model_name_or_path: str | None = None,
        num_text_layers: int | None = None,
        num_fusion_layers: int | None = None,
        **config_kwargs,
    ):
        """Build a SISC model whose encoders start from pretrained checkpoints (folders or Hub ids), as in the paper.

        The image encoder loads a ViT, DeiT, CLIP-vision or SigLIP-vision checkpoint, or the vision tower of a full
        CLIP / SigLIP one. From a BERT-family checkpoint, the text encoder takes the first `num_text_layers` layers
        and the fusion encoder the next `num_fusion_layers` layers (default: an even split) plus freshly initialised
        cross-attention. The MLM head (`SiscForPreTraining`; the answer decoder's LM head of
        `SiscForQuestionAnswering`) is BERT's when the checkpoint has one, random otherwise (logged). Projections,
        ITM head, cross-attention and task heads start from random weights; an encoder not given starts random too.
        `config_kwargs` (and `config`, the base of everything else) go to `config_from_encoders`.
        """
        config = cls.config_from_encoders(
            vision_model_name_or_path, text_model_name_or_path, num_text_layers, num_fusion_layers, **config_kwargs
        )
        if vision_model_name_or_path and config.vision_conv_stem:
            raise ValueError(f"vision_conv_stem={config.vision_conv_stem} replaces the patch projection that the "
                             f"pretrained image tower {vision_model_name_or_path} was trained with: use it only for a "
                             "tower trained from scratch (set vision_conv_stem=None)")
        model = cls(config)
        sisc = getattr(model, "sisc", model)  # the task models and SiscForPreTraining hold a SiscModel

        if vision_model_name_or_path:
            checkpoint_config = vision_encoder_config(vision_model_name_or_path)
            pretrained_vision, info = AutoModel.from_pretrained(
                vision_model_name_or_path, config=checkpoint_config, output_loading_info=True,
                **_VISION_TOWER_KWARGS.get(checkpoint_config.model_type, {}),
            )
            if info["missing_keys"]:  # a silently random tower would look like a pretrained one
                raise ValueError(f"vision model {vision_model_name_or_path} lacks weights of its image tower: "
                                 f"{sorted(info['missing_keys'])[:5]}")
            state = _resize_position_embeddings(
                pretrained_vision.state_dict(), pretrained_vision, sisc.vision_model, config.vision_config.image_size
            )
            sisc.vision_model.load_state_dict(state)

        mlm_head_state = None
        if text_model_name_or_path:
            # a checkpoint saved with its MLM head says so in `architectures`; a sentence-embedding model (BertModel)
            # is loaded without its pooler, which SISC does not use
            architectures = AutoConfig.from_pretrained(text_model_name_or_path).architectures or []
            if any(name.endswith(("ForMaskedLM", "ForPreTraining")) for name in architectures):
                bert_mlm, info = BertForMaskedLM.from_pretrained(text_model_name_or_path, output_loading_info=True)
                bert, head_missing = bert_mlm.bert, any(k.startswith("cls.") for k in info["missing_keys"])
                if not head_missing:
                    mlm_head_state = bert_mlm.cls.state_dict()
            else:
                bert, info = BertModel.from_pretrained(text_model_name_or_path, add_pooling_layer=False,
                                                       output_loading_info=True)
            missing = [k for k in info["missing_keys"] if not k.startswith("cls.")]
            if missing:
                raise ValueError(f"text model {text_model_name_or_path} lacks BERT weights: {sorted(missing)[:5]}")
            if mlm_head_state is None and (hasattr(model, "mlm_head") or getattr(model, "answer_decoder", None) is not None):
                logger.warning(f"text model {text_model_name_or_path} has no MLM head: the MLM head (VQA: the answer "
                               "decoder's LM head) starts from random weights, its decoder tied to the word embeddings")
            text_state, fusion_state = {}, {}
            for key, value in bert.state_dict().items():
                match = re.match(r"encoder\.layer\.(\d+)\.(.*)", key)
                if match is None:
                    if key.startswith("embeddings."):
                        text_state[key] = value
                    continue
                index, rest = int(match.group(1)), match.group(2)
                if index < config.text_config.num_hidden_layers:
                    text_state[key] = value
                elif index < config.text_config.num_hidden_layers + config.fusion_encoder_config.num_hidden_layers:
                    fusion_state[f"layer.{index - config.text_config.num_hidden_layers}.{rest}"] = value
            missing, unexpected = sisc.text_model.load_state_dict(text_state, strict=False)
            if unexpected or [k for k in missing if not k.endswith("position_ids")]:
                raise ValueError(f"text encoder weights do not match: missing {missing}, unexpected {unexpected}")
            missing, unexpected = sisc.fusion_model.load_state_dict(fusion_state, strict=False)
            not_cross = [k for k in missing if ".crossattention." not in k and not k.startswith("image_projection")]
            if unexpected or not_cross:
                raise ValueError(f"fusion encoder weights do not match: missing {not_cross}, unexpected {unexpected}")
        model.init_heads_from_encoders(mlm_head_state)
        logger.info(
            f"SISC initialised from {vision_model_name_or_path or 'a random image tower'} and "
            f"{text_model_name_or_path or 'random text towers'} ({config.text_config.num_hidden_layers} text + "
            f"{config.fusion_encoder_config.num_hidden_layers} fusion layers)"
        )
        return model

    def init_heads_from_encoders(self, mlm_head_state: dict | None) -> None:
        """Start the heads that copy pretrained parts once the encoders are loaded (`mlm_head_state`: BERT's MLM
        head, None when the text checkpoint has none)."""


# --------------------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------------------


class SiscModel(SiscPreTrainedModel):
    """Image encoder + unimodal text encoder + fusion encoder with the regulated contrastive head and the ITM head.

    `forward` behaves like `CLIPModel.forward` (logits_per_image / logits_per_text, optional loss), so CLIP-style
    code and the `zero-shot-image-classification` pipeline work. `get_itm_logits` scores image-text pairs through
    the fusion encoder (ALBEF-style re-ranking).
    """

    # a pretraining checkpoint also holds the MLM head, momentum encoder and word head, which the base model does not use
    _keys_to_ignore_on_load_unexpected = [r"^mlm_head\.", r"^momentum_encoder\.", r"^word_head\."]

    def __init__(self, config: SiscConfig):
        super().__init__(config)
        vision_hidden = config.vision_config.hidden_size
        text_hidden = config.text_config.hidden_size
        self.vision_model = _build_vision_model(config.vision_config, config.vision_conv_stem)
        self.text_model = BertModel(config.text_config, add_pooling_layer=False)
        # The fusion layers are BERT modules outside a PreTrainedModel: give them the text tower's resolved kernel.
        config.fusion_encoder_config._attn_implementation_internal = self.text_model.config._attn_implementation
        self.fusion_model = SiscFusionEncoder(config.fusion_encoder_config, vision_hidden)
        self.visual_projection = nn.Linear(vision_hidden, config.embed_dim)
        self.text_projection = nn.Linear(text_hidden, config.embed_dim)
        self.itm_head = nn.Linear(config.fusion_encoder_config.hidden_size, 2)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.temperature_init)))
        # SigLIP's learned bias exists only for that objective (checkpoints of the others stay as they were)
        self.logit_bias = nn.Parameter(torch.tensor(config.siglip_bias_init)) if config.contrastive_loss == "siglip" else None
        self.post_init()

    def get_input_embeddings(self):
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.text_model.set_input_embeddings(value)

    # ---- input checks: a clear error instead of a cryptic one deep inside an encoder ----
    def _check_pixel_values(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool) -> None:
        vc = self.config.vision_config
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4:
            raise ValueError(
                f"pixel_values must be a (batch, {vc.num_channels}, height, width) tensor, "
                f"got {getattr(pixel_values, 'shape', type(pixel_values))}"
            )
        if pixel_values.shape[1] != vc.num_channels:
            raise ValueError(f"pixel_values have {pixel_values.shape[1]} channels, the model expects {vc.num_channels}")
        if not interpolate_pos_encoding and tuple(pixel_values.shape[2:]) != (vc.image_size, vc.image_size):
            raise ValueError(
                f"pixel_values are {tuple(pixel_values.shape[2:])} pixels, the model expects "
                f"({vc.image_size}, {vc.image_size}); resize them with the processor or pass "
                "interpolate_pos_encoding=True"
            )
        if pixel_values.is_floating_point() and not torch.isfinite(pixel_values).all():  # one reduction, one sync
            bad = int((~torch.isfinite(pixel_values)).sum())
            raise ValueError(f"pixel_values hold {bad} non-finite values (NaN or inf) of {pixel_values.numel()}")

    def _check_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ValueError(
                f"input_ids must be a non-empty (batch, sequence) tensor, got {getattr(input_ids, 'shape', type(input_ids))}"
            )
        if attention_mask is not None:
            if attention_mask.shape != input_ids.shape:
                raise ValueError(
                    f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids have {tuple(input_ids.shape)}"
                )
            empty = (attention_mask.sum(dim=1) == 0).nonzero().flatten().tolist()
            if empty:
                raise ValueError(f"empty text (attention_mask all zero) at batch index(es) {empty}")
        positions = self.config.text_config.max_position_embeddings
        if input_ids.shape[1] > positions:
            raise ValueError(
                f"input_ids are {input_ids.shape[1]} tokens long, more than the {positions} positions of the text encoder "
                "(text_config.max_position_embeddings): truncate them (the processor does, with truncation=True)"
            )
        vocab_size = self.text_model.get_input_embeddings().num_embeddings
        low, high = torch.stack(torch.aminmax(input_ids)).tolist() if input_ids.numel() else (0, 0)  # one sync
        if low < 0 or high >= vocab_size:
            raise ValueError(
                f"input_ids hold token ids in [{low}, {high}], outside the vocabulary [0, {vocab_size}) "
                "(text_config.vocab_size): was the text tokenized with another tokenizer?"
            )

    # ---- encoders ----
    def image_summary(self, vision_outputs) -> torch.Tensor:
        """The vector the image embedding is projected from (`config.image_pooling`, see `image_summary`)."""
        return image_summary(vision_outputs, self.config.image_pooling, self.config.vision_config.model_type)

    def encode_image(self, pixel_values, interpolate_pos_encoding: bool = False, **kwargs):
        """Vision tower output and the normalised projected image embedding (from `image_summary`)."""
        self._check_pixel_values(pixel_values, interpolate_pos_encoding)
        outputs = self.vision_model(
            pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True, **kwargs
        )
        return outputs, F.normalize(self.visual_projection(self.image_summary(outputs)), dim=-1)

    def encode_text(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, **kwargs):
        """Text encoder output and the normalised projected text embedding (from the [CLS] token)."""
        self._check_text(input_ids, attention_mask)
        outputs = self.text_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            return_dict=True,
            **kwargs,
        )
        return outputs, F.normalize(self.text_projection(outputs.last_hidden_state[:, 0]), dim=-1)

    def get_image_features(self, pixel_values, interpolate_pos_encoding: bool = False) -> torch.FloatTensor:
        """L2-normalised image embeddings, shape (batch, embed_dim)."""
        return self.encode_image(pixel_values, interpolate_pos_encoding)[1]

    def get_text_features(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None) -> torch.FloatTensor:
        """L2-normalised text embeddings, shape (batch, embed_dim)."""
        return self.encode_text(input_ids, attention_mask, token_type_ids, position_ids)[1]

    def fuse(self, text_hidden_states, text_attention_mask, image_hidden_states, image_attention_mask=None, image_index=None):
        """Fusion encoder output (batch, seq, hidden) for aligned batches of text and image hidden states, or with
        `image_index` (batch,) for texts that share images: text i is fused with image `image_index[i]`."""
        return self.fusion_model(text_hidden_states, text_attention_mask, image_hidden_states, image_attention_mask, image_index)

    def get_itm_logits(
        self,
        input_ids=None,
        attention_mask=None,
        pixel_values=None,
        token_type_ids=None,
        *,
        text_hidden_states=None,
        image_hidden_states=None,
        image_index=None,
        interpolate_pos_encoding: bool = False,
    ) -> torch.FloatTensor:
        """Image-text matching logits (batch, 2) for aligned pairs; column 1 is "match".

        Pass raw inputs, or hidden states cached from `encode_text` / `encode_image` (re-ranking many candidates
        for one query without re-encoding). With `image_index` (batch,), text i is scored against image
        `image_index[i]` of the images given (each image encoded and its keys / values projected once).
        """
        if text_hidden_states is None:
            text_hidden_states = self.encode_text(input_ids, attention_mask, token_type_ids)[0].last_hidden_state
        if image_hidden_states is None:
            image_hidden_states = self.encode_image(pixel_values, interpolate_pos_encoding)[0].last_hidden_state
        if image_index is None and text_hidden_states.shape[0] != image_hidden_states.shape[0]:
            raise ValueError(
                f"get_itm_logits scores aligned pairs: got {text_hidden_states.shape[0]} texts and "
                f"{image_hidden_states.shape[0]} images (pass image_index to pair texts with shared images)"
            )
        fused = self.fuse(text_hidden_states, attention_mask, image_hidden_states, image_index=image_index)
        return self.itm_head(fused[:, 0])

    # ---- contrastive head ----
    def logit_scale_value(self) -> torch.Tensor:
        """exp(logit_scale) = 1 / temperature, with the temperature kept in [MIN_TEMPERATURE, MAX_TEMPERATURE]."""
        return self.logit_scale.clamp(math.log(1 / MAX_TEMPERATURE), math.log(1 / MIN_TEMPERATURE)).exp()

    def negative_weights(
        self,
        cos: torch.Tensor,
        teacher_cos: torch.Tensor | None = None,
        alpha: float | None = None,
        ignore_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """Weights of the candidates (columns) as negatives of each anchor (row) per config, from the student's
        cosine similarities and, mixed in by `alpha`, the teacher's: SRCL's regulation weights or Soft-InfoNCE's; for
        the other objectives ones (zero on ignored pairs), or None when no pair is ignored.

        `ignore_mask` (anchors x candidates, bool) marks off-diagonal pairs that are not negatives (same image)."""
        config = self.config
        if teacher_cos is not None and alpha is None:
            raise ValueError("teacher similarities were given without alpha: pass alpha (see SiscConfig.alpha_at)")
        if config.contrastive_loss not in ("srcl", "soft_infonce"):
            if ignore_mask is None:
                return None
            return torch.ones_like(cos, dtype=torch.float32).masked_fill(ignore_mask, 0.0)
        similarity = mixed_similarity(cos, teacher_cos, alpha if alpha is not None else 0.0)
        if config.contrastive_loss == "soft_infonce":
            return soft_infonce_weights(
                similarity, alpha=config.soft_infonce_alpha, temperature=config.soft_infonce_temperature,
                min_weight=config.soft_infonce_min_weight, ignore_mask=ignore_mask,
            )
        return regulation_weights(
            similarity, ignore_mask=ignore_mask, delta=config.delta, norm=config.weight_norm, threshold=config.removal_threshold
        )

    def itc_loss(
        self,
        cos_t2i: torch.Tensor,
        cos_i2t: torch.Tensor,
        *,
        teacher_t2i: torch.Tensor | None = None,
        teacher_i2t: torch.Tensor | None = None,
        alpha: float | None = None,
        ignore_t2i: torch.Tensor | None = None,
        ignore_i2t: torch.Tensor | None = None,
        targets_t2i: torch.Tensor | None = None,
        targets_i2t: torch.Tensor | None = None,
        positives_t2i: torch.Tensor | None = None,
    ):
        """The one place the contrastive loss is assembled, for in-batch negatives and for a queue of them.

        `cos_t2i` (texts x candidate images) and `cos_i2t` (images x candidate texts): cosine similarities whose
        column i is row i's positive; `teacher_*` the teacher's cosines in the same layout; `ignore_*` pairs that
        are not negatives; `targets_*` soft targets (momentum distillation), default the positive alone;
        `positives_t2i` (square, text x image) extra positives of `"multi_positive"` (and `"siglip"`). The weights
        come from the detached similarities. Returns (loss, weights_t2i, weights_i2t): the weights each negative got
        (None where the objective has none: InfoNCE without ignored pairs, SigLIP)."""
        config = self.config
        scale = self.logit_scale_value()
        if config.contrastive_loss == "siglip":
            loss = sigmoid_pairwise_loss(scale * cos_t2i, self.logit_bias, ignore_mask=ignore_t2i, positive_mask=positives_t2i)
            return loss, None, None
        if config.contrastive_loss in ("debiased", "hard_negatives"):
            beta = config.hard_negative_beta if config.contrastive_loss == "hard_negatives" else 0.0
            losses, weights = [], []
            for cos, ignore in ((cos_t2i, ignore_t2i), (cos_i2t, ignore_i2t)):
                weights.append(hard_negative_weights(scale * cos, beta, ignore))
                losses.append(debiased_contrastive_loss(
                    scale * cos, logit_floor=-scale.detach(), prior=config.debiased_prior, ignore_mask=ignore,
                    weights=weights[-1],
                ))
            return (losses[0] + losses[1]) / 2.0, weights[0], weights[1]
        weights_t2i = self.negative_weights(cos_t2i.detach(), teacher_t2i, alpha, ignore_t2i)
        weights_i2t = self.negative_weights(cos_i2t.detach(), teacher_i2t, alpha, ignore_i2t)
        if targets_t2i is None and (positives_t2i is not None or config.label_smoothing):
            positives_t2i = torch.zeros_like(cos_t2i, dtype=torch.bool) if positives_t2i is None else positives_t2i.bool()
            targets_t2i = target_distribution(
                positives_t2i, None if weights_t2i is None else weights_t2i > 0, config.label_smoothing
            )
            targets_i2t = target_distribution(
                positives_t2i.t(), None if weights_i2t is None else weights_i2t > 0, config.label_smoothing
            )
        loss = (
            anchor_contrastive_loss(scale * cos_t2i, weights_t2i, targets_t2i)
            + anchor_contrastive_loss(scale * cos_i2t, weights_i2t, targets_i2t)
        ) / 2.0
        return loss, weights_t2i, weights_i2t

    def contrastive_loss(
        self,
        image_embeds: torch.Tensor,
        text_embeds: torch.Tensor,
        *,
        teacher_image_embeds: torch.Tensor | None = None,
        teacher_text_embeds: torch.Tensor | None = None,
        teacher_similarity: torch.Tensor | None = None,
        alpha: float | None = None,
        image_ids: torch.Tensor | None = None,
        caption_ids: torch.Tensor | None = None,
        false_negative_mask: torch.Tensor | None = None,
    ):
        """Regulated ITC over the (global, when distributed) batch. Returns (loss, weights_t2i, weights_i2t).

        `image_ids` (batch,): pairs that share an image are not negatives of each other; for `"multi_positive"` they
        are extra positives, and so are pairs with equal `caption_ids` (batch,: the same caption text).
        `false_negative_mask` (global text x image, bool): pairs known to match although they are not the pair (the
        ground truth of a synthetic dataset), never used as negatives: the "oracle" upper bound of knowing the
        false negatives, for benchmarks."""
        if image_embeds.shape[0] != text_embeds.shape[0]:
            raise ValueError(
                f"the contrastive loss needs aligned pairs: got {image_embeds.shape[0]} images and "
                f"{text_embeds.shape[0]} texts"
            )
        if (teacher_image_embeds is None) != (teacher_text_embeds is None):
            raise ValueError("pass both teacher_image_embeds and teacher_text_embeds, or neither")
        if teacher_similarity is not None and teacher_image_embeds is not None:
            raise ValueError("pass teacher embeddings or teacher_similarity, not both")
        gather = gather_with_grad if self.config.gather_distributed else (lambda tensor: tensor)
        image_embeds, text_embeds = gather(image_embeds), gather(text_embeds)
        teacher_cos = teacher_similarity
        if teacher_image_embeds is not None:
            teacher_image = F.normalize(gather(teacher_image_embeds.detach()).float(), dim=-1)
            teacher_text = F.normalize(gather(teacher_text_embeds.detach()).float(), dim=-1)
            if teacher_image.shape[0] != image_embeds.shape[0] or teacher_text.shape[0] != text_embeds.shape[0]:
                raise ValueError(
                    f"teacher embeddings have {teacher_image.shape[0]} image / {teacher_text.shape[0]} text rows "
                    f"for a batch of {image_embeds.shape[0]} pairs"
                )
            teacher_cos = cosine_matrix(teacher_text, teacher_image)
        ignore_mask = positives = None
        if image_ids is not None:
            ids = gather(image_ids)
            ignore_mask = same_id_mask(ids, ids)
        if self.config.contrastive_loss == "multi_positive":
            # pairs known to match are positives: another caption of the same image, the same caption text
            positives, ignore_mask = ignore_mask, None
            if caption_ids is not None:
                ids = gather(caption_ids)
                positives = same_id_mask(ids, ids) if positives is None else positives | same_id_mask(ids, ids)
        if false_negative_mask is not None:
            if false_negative_mask.shape != (text_embeds.shape[0], image_embeds.shape[0]):
                raise ValueError(
                    f"false_negative_mask has shape {tuple(false_negative_mask.shape)}, the global batch is "
                    f"{text_embeds.shape[0]} texts x {image_embeds.shape[0]} images"
                )
            known = false_negative_mask.to(text_embeds.device, torch.bool)
            known = known & ~torch.eye(known.shape[0], dtype=torch.bool, device=known.device)  # positives stay
            ignore_mask = known if ignore_mask is None else ignore_mask | known
        cos = cosine_matrix(text_embeds, image_embeds)
        return self.itc_loss(
            cos, cos.t(), teacher_t2i=teacher_cos, teacher_i2t=None if teacher_cos is None else teacher_cos.t(), alpha=alpha,
            ignore_t2i=ignore_mask, ignore_i2t=None if ignore_mask is None else ignore_mask.t(), positives_t2i=positives,
        )

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        return_loss: bool | None = None,
        teacher_image_embeds: torch.FloatTensor | None = None,
        teacher_text_embeds: torch.FloatTensor | None = None,
        teacher_similarity: torch.FloatTensor | None = None,
        alpha: float | None = None,
        image_ids: torch.LongTensor | None = None,
        caption_ids: torch.LongTensor | None = None,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SiscOutput | tuple:
        r"""
        Args:
            input_ids, attention_mask, token_type_ids, position_ids: the captions, as from `SiscProcessor`.
            pixel_values: (n_images, 3, H, W) images, as from `SiscProcessor`.
            return_loss: compute the regulated contrastive loss (needs as many images as texts, pair i = (v_i, t_i)).
            teacher_image_embeds / teacher_text_embeds: a frozen teacher's embeddings of the same pairs; or
            teacher_similarity: the teacher's (text x image) cosine similarity matrix (global batch when distributed).
            alpha: teacher share of the mixed similarity (required with a teacher; see `SiscConfig.alpha_at`).
            image_ids: (batch,) ids; off-diagonal pairs with the same image id are not used as negatives.
            caption_ids: (batch,) ids of the caption texts (equal text, equal id): extra positives of `"multi_positive"`.
        """
        if input_ids is None or pixel_values is None:
            raise ValueError("SiscModel.forward needs both input_ids and pixel_values (use get_*_features for one)")
        vision_outputs, image_embeds = self.encode_image(pixel_values, interpolate_pos_encoding, **kwargs)
        text_outputs, text_embeds = self.encode_text(input_ids, attention_mask, token_type_ids, position_ids, **kwargs)
        logits_per_text = self.logit_scale_value() * cosine_matrix(text_embeds, image_embeds)

        loss = weights_t2i = weights_i2t = None
        if return_loss:
            loss, weights_t2i, weights_i2t = self.contrastive_loss(
                image_embeds,
                text_embeds,
                teacher_image_embeds=teacher_image_embeds,
                teacher_text_embeds=teacher_text_embeds,
                teacher_similarity=teacher_similarity,
                alpha=alpha,
                image_ids=image_ids,
                caption_ids=caption_ids,
            )
        output = SiscOutput(
            loss=loss,
            logits_per_image=logits_per_text.t(),
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
            weights_t2i=weights_t2i,
            weights_i2t=weights_i2t,
        )
        return_dict = return_dict if return_dict is not None else True
        return output if return_dict else output.to_tuple()

    # ---- zero-shot retrieval for notebooks: ranked, plain-Python results ----
    @staticmethod
    def _check_ranking_args(candidates, kind: str, top_k: int | None, batch_size: int) -> list:
        """The candidates as a list; ValueError for arguments that would otherwise fail deep inside the encoders."""
        if not isinstance(candidates, (list, tuple)):
            raise ValueError(f"pass the candidate {kind} as a list or tuple, got {type(candidates).__name__}")
        if len(candidates) == 0:
            raise ValueError(f"the list of candidate {kind} is empty: pass at least one")

        def is_positive_int(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and value >= 1

        if top_k is not None and not is_positive_int(top_k):
            raise ValueError(f"top_k must be a positive integer or None (all candidates), got {top_k!r}")
        if not is_positive_int(batch_size):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        return list(candidates)

    @staticmethod
    def _check_query_text(text, what: str) -> None:
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{what} must be a non-empty string, got {text!r}")

    @staticmethod
    def _load_image(image):
        """A file path (str / os.PathLike) opened with PIL and fully loaded; anything else is passed to the processor
        as it is. No mode conversion here: the processor converts (16-bit to 8-bit, transparency onto white), so these
        are the pixels `sisc_train.data.pairs.decode_image` gives in training (this file cannot import from train/)."""
        import os

        if isinstance(image, (str, os.PathLike)):
            from PIL import Image

            with Image.open(image) as opened:
                return opened.copy()  # loads the pixels, so the file is closed on return
        return image

    def _image_embeddings(self, images: list, processor, batch_size: int) -> torch.Tensor:
        """(n, embed_dim) float32 embeddings, encoded `batch_size` images at a time (paths are opened per batch)."""
        chunks = []
        for start in range(0, len(images), batch_size):
            batch = [self._load_image(image) for image in images[start : start + batch_size]]
            pixel_values = processor(images=batch, return_tensors="pt")["pixel_values"]
            pixel_values = pixel_values.to(device=self.device, dtype=self.visual_projection.weight.dtype)
            chunks.append(self.get_image_features(pixel_values).float())
        return torch.cat(chunks)

    def _text_embeddings(self, texts: list[str], processor, batch_size: int) -> torch.Tensor:
        """(n, embed_dim) float32 embeddings, encoded `batch_size` captions at a time."""
        chunks = []
        for start in range(0, len(texts), batch_size):
            encoded = processor(text=texts[start : start + batch_size], return_tensors="pt")
            chunks.append(
                self.get_text_features(
                    encoded["input_ids"].to(self.device),
                    attention_mask=encoded["attention_mask"].to(self.device),
                    token_type_ids=encoded["token_type_ids"].to(self.device) if "token_type_ids" in encoded else None,
                ).float()
            )
        return torch.cat(chunks)

    def _ranked(self, scores: torch.Tensor, candidates: list, item_key: str, top_k: int | None) -> list[dict]:
        # Probabilities are over all candidates (the model's temperature), whatever top_k keeps.
        probabilities = (self.logit_scale_value().float() * scores).softmax(dim=0)
        order = scores.argsort(descending=True, stable=True)[:top_k].tolist()
        return [
            {
                "index": i,
                "score": scores[i].item(),
                "probability": probabilities[i].item(),
                item_key: candidates[i],
            }
            for i in order
        ]

    @torch.inference_mode()
    def rank_images(self, text: str, images, processor, top_k: int | None = None, batch_size: int = 64) -> list[dict]:
        """Rank candidate images for one caption by cosine similarity of their embeddings (text -> image retrieval).

        Args:
            text: the query caption.
            images: a list of PIL images, HWC numpy arrays, or image file paths (opened a batch at a time).
            processor: the model's `SiscProcessor` (e.g. from `AutoProcessor.from_pretrained`).
            top_k: how many of the best images to return (default: all).
            batch_size: images encoded per forward pass.

        Returns:
            Best first, dicts with "index" (position in `images`), "score" (cosine similarity), "probability"
            (softmax over all candidates at the model's temperature) and "image" (the candidate as passed).
        """
        self._check_query_text(text, "the query text")
        images = self._check_ranking_args(images, "images", top_k, batch_size)
        was_training = self.training
        self.eval()  # no dropout: the same inputs always rank the same way
        try:
            query = self._text_embeddings([text], processor, 1)
            scores = (self._image_embeddings(images, processor, batch_size) @ query[0]).cpu()
            return self._ranked(scores, images, "image", top_k)
        finally:
            self.train(was_training)

    @torch.inference_mode()
    def rank_texts(
        self, image, texts: list[str], processor, top_k: int | None = None, batch_size: int = 256
    ) -> list[dict]:
        """Rank candidate captions for one image by cosine similarity of their embeddings (image -> text retrieval).

        Args:
            image: the query image: a PIL image, an HWC numpy array or an image file path.
            texts: the candidate captions (non-empty strings).
            processor, top_k, batch_size: as in `rank_images` (batch_size counts captions).

        Returns:
            Best first, dicts with "index" (position in `texts`), "score", "probability" and "text" (the caption).
        """
        texts = self._check_ranking_args(texts, "texts", top_k, batch_size)
        for index, caption in enumerate(texts):
            self._check_query_text(caption, f"caption {index}")
        if image is None or isinstance(image, (list, tuple)):
            raise ValueError(f"pass one query image (PIL image, array or path), got {type(image).__name__}")
        was_training = self.training
        self.eval()
        try:
            query = self._image_embeddings([image], processor, 1)
            scores = (self._text_embeddings(texts, processor, batch_size) @ query[0]).cpu()
            return self._ranked(scores, texts, "text", top_k)
        finally:
            self.train(was_training)


class SiscMomentumEncoder(nn.Module):
    """ALBEF's momentum (EMA) copy of the unimodal towers and projections, with queues of its past features.

    The queues also keep each entry's image id (a queued caption of the same image is no negative) and, when a
    teacher is used, the teacher's embeddings, so queued negatives are regulated like in-batch ones.
    """

    def __init__(self, sisc: "SiscModel", config: SiscConfig):
        super().__init__()
        for name in ("vision_model", "text_model", "visual_projection", "text_projection"):
            setattr(self, name, copy.deepcopy(getattr(sisc, name)))
        self.image_pooling = (config.image_pooling, config.vision_config.model_type)
        self.requires_grad_(False)
        size, dim = config.queue_size, config.embed_dim
        self.register_buffer("image_queue", torch.zeros(size, dim))
        self.register_buffer("text_queue", torch.zeros(size, dim))
        self.register_buffer("teacher_image_queue", torch.zeros(size, dim))
        self.register_buffer("teacher_text_queue", torch.zeros(size, dim))
        self.register_buffer("id_queue", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_len", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, sisc: "SiscModel", momentum: float) -> None:
        for name in ("vision_model", "text_model", "visual_projection", "text_projection"):
            for p_m, p in zip(getattr(self, name).parameters(), getattr(sisc, name).parameters()):
                p_m.mul_(momentum).add_(p.detach(), alpha=1.0 - momentum)

    @torch.no_grad()
    def encode(self, pixel_values, input_ids, attention_mask):
        vision = self.vision_model(pixel_values=pixel_values, return_dict=True)
        text = self.text_model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        return (
            F.normalize(self.visual_projection(image_summary(vision, *self.image_pooling)), dim=-1),
            F.normalize(self.text_projection(text.last_hidden_state[:, 0]), dim=-1),
        )

    def queued(self) -> dict[str, torch.Tensor]:
        n = int(self.queue_len)
        return {
            "image": self.image_queue[:n],
            "text": self.text_queue[:n],
            "teacher_image": self.teacher_image_queue[:n],
            "teacher_text": self.teacher_text_queue[:n],
            "ids": self.id_queue[:n],
        }

    @torch.no_grad()
    def enqueue(self, image, text, ids, teacher_image=None, teacher_text=None) -> None:
        size = self.image_queue.shape[0]
        if size == 0:
            return
        n = min(image.shape[0], size)
        slots = (self.queue_ptr + torch.arange(n, device=image.device)) % size
        self.image_queue[slots] = image[-n:].to(self.image_queue.dtype)
        self.text_queue[slots] = text[-n:].to(self.text_queue.dtype)
        self.id_queue[slots] = ids[-n:]
        if teacher_image is not None:
            self.teacher_image_queue[slots] = teacher_image[-n:].to(self.teacher_image_queue.dtype)
            self.teacher_text_queue[slots] = teacher_text[-n:].to(self.teacher_text_queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + n) % size)
        self.queue_len.copy_(torch.clamp(self.queue_len + n, max=size))


class SiscForPreTraining(SiscPreTrainedModel):
    """SISC with the three pretraining objectives: regulated ITC + ITM with hard negatives + MLM."""

    _tied_weights_keys = {
        "mlm_head.predictions.decoder.weight": "sisc.text_model.embeddings.word_embeddings.weight",
        "mlm_head.predictions.decoder.bias": "mlm_head.predictions.bias",
    }
    # a checkpoint pretrained with word prediction, loaded with it switched off (retrieval fine-tuning)
    _keys_to_ignore_on_load_unexpected = [r"^word_head\."]

    def __init__(self, config: SiscConfig):
        super().__init__(config)
        self.sisc = SiscModel(config)
        self.mlm_head = BertOnlyMLMHead(config.text_config)
        # only with the word-prediction loss: it predicts the caption's words from the image summary
        self.word_head = (
            nn.Linear(config.vision_config.hidden_size, config.text_config.vocab_size)
            if config.word_prediction_loss_weight > 0 else None
        )
        self.post_init()
        # Created after post_init so that it starts as an exact copy of the initialised towers.
        self.momentum_encoder = SiscMomentumEncoder(self.sisc, config) if config.use_momentum_distillation else None

    @torch.no_grad()
    def init_heads_from_encoders(self, mlm_head_state: dict | None) -> None:
        if mlm_head_state is not None:
            self.mlm_head.load_state_dict(mlm_head_state)
        self.tie_weights()
        if self.momentum_encoder is not None:  # the copy of the towers just loaded
            self.momentum_encoder.update(self.sisc, momentum=0.0)

    def momentum_contrastive_loss(
        self,
        image_embeds,
        text_embeds,
        pixel_values,
        input_ids,
        attention_mask,
        *,
        teacher_image_embeds=None,
        teacher_text_embeds=None,
        alpha=None,
        image_ids=None,
    ):
        """ALBEF-style ITC with SRCL weights: student anchors vs momentum candidates (global batch + queue),
        soft targets from the momentum similarities. Returns (loss, weights_t2i, weights_i2t) over the in-batch
        block and the queue."""
        config, sisc, momentum = self.config, self.sisc, self.momentum_encoder
        if self.training:
            momentum.update(sisc, config.momentum)
        gather = gather_with_grad if config.gather_distributed else (lambda tensor: tensor)
        image_m, text_m = momentum.encode(pixel_values, input_ids, attention_mask)
        image_m, text_m = gather(image_m), gather(text_m)
        image_embeds, text_embeds = gather(image_embeds), gather(text_embeds)
        batch = image_embeds.shape[0]
        ids = gather(image_ids) if image_ids is not None else torch.arange(batch, device=image_embeds.device) - batch
        queue = momentum.queued()
        image_candidates = torch.cat([image_m, queue["image"]])
        text_candidates = torch.cat([text_m, queue["text"]])
        candidate_ids = torch.cat([ids, queue["ids"]])
        ignore = same_id_mask(ids, candidate_ids)

        teacher_t2i = teacher_i2t = None
        teacher_image = teacher_text = None
        if teacher_image_embeds is not None:
            teacher_image = F.normalize(gather(teacher_image_embeds.detach()).float(), dim=-1)
            teacher_text = F.normalize(gather(teacher_text_embeds.detach()).float(), dim=-1)
            teacher_t2i = cosine_matrix(teacher_text, torch.cat([teacher_image, queue["teacher_image"]]))
            teacher_i2t = cosine_matrix(teacher_image, torch.cat([teacher_text, queue["teacher_text"]]))

        scale = sisc.logit_scale_value()
        with torch.no_grad():
            soft_t2i = torch.softmax(scale.detach() * cosine_matrix(text_m, image_candidates), dim=1)
            soft_i2t = torch.softmax(scale.detach() * cosine_matrix(image_m, text_candidates), dim=1)
            one_hot = torch.zeros_like(soft_t2i)
            one_hot[torch.arange(batch), torch.arange(batch)] = 1.0
            targets_t2i = config.distill_alpha * soft_t2i + (1 - config.distill_alpha) * one_hot
            targets_i2t = config.distill_alpha * soft_i2t + (1 - config.distill_alpha) * one_hot
        loss, weights_t2i, weights_i2t = sisc.itc_loss(
            cosine_matrix(text_embeds, image_candidates), cosine_matrix(image_embeds, text_candidates), teacher_t2i=teacher_t2i,
            teacher_i2t=teacher_i2t, alpha=alpha, ignore_t2i=ignore, ignore_i2t=ignore, targets_t2i=targets_t2i,
            targets_i2t=targets_i2t,
        )
        if self.training:
            momentum.enqueue(image_m, text_m, ids, teacher_image, teacher_text)
        return loss, weights_t2i, weights_i2t

    def get_input_embeddings(self):
        return self.sisc.get_input_embeddings()

    def get_output_embeddings(self):
        return self.mlm_head.predictions.decoder

    def set_output_embeddings(self, new_embeddings):
        self.mlm_head.predictions.decoder = new_embeddings
        self.mlm_head.predictions.bias = new_embeddings.bias

    def mask_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """BERT masking: `mlm_probability` of the real tokens; of those 80% [MASK], 10% random, 10% unchanged.

        Returns (masked_input_ids, labels) with labels -100 where nothing is predicted. Special tokens ([CLS],
        [SEP], [PAD]) and padding are never masked.
        """
        config = self.config
        labels = input_ids.clone()
        special = torch.zeros_like(input_ids, dtype=torch.bool)
        for token_id in (config.text_config.pad_token_id, config.cls_token_id, config.sep_token_id):
            if token_id is not None:
                special |= input_ids == token_id
        if attention_mask is not None:
            special |= attention_mask == 0
        probability = torch.full(input_ids.shape, config.mlm_probability, device=input_ids.device)
        masked = torch.bernoulli(probability).bool() & ~special
        labels[~masked] = -100
        masked_ids = input_ids.clone()
        replace = torch.bernoulli(torch.full(input_ids.shape, 0.8, device=input_ids.device)).bool() & masked
        masked_ids[replace] = config.mask_token_id
        randomise = torch.bernoulli(torch.full(input_ids.shape, 0.5, device=input_ids.device)).bool() & masked & ~replace
        random_tokens = torch.randint(config.text_config.vocab_size, input_ids.shape, device=input_ids.device)
        masked_ids[randomise] = random_tokens[randomise]
        return masked_ids, labels

    def _sample_hard_negatives(self, similarity: torch.Tensor, not_negative: torch.Tensor, share: float | None = None):
        """For each row, one column drawn with probability softmax(similarity) over its negatives (mixed with a
        uniform draw by `share`, default `config.itm_random_negatives`).

        Returns (row_indices, column_indices) for the rows that have at least one negative.
        """
        probs = torch.softmax(similarity.detach().float(), dim=1).masked_fill(not_negative, 0.0)
        share = self.config.itm_random_negatives if share is None else share
        if share > 0:  # a mixture with the uniform draw over each row's negatives
            probs = probs / probs.sum(dim=1, keepdim=True).clamp_min(1e-12)
            uniform = (~not_negative).float()
            probs = (1 - share) * probs + share * uniform / uniform.sum(dim=1, keepdim=True).clamp_min(1)
        has_negative = probs.sum(dim=1) > 0
        rows = has_negative.nonzero().flatten()
        if rows.numel() == 0:
            return rows, rows
        columns = torch.multinomial(probs[rows], 1).flatten()
        return rows, columns

    def itm_loss(self, text_states, attention_mask, image_states, logits_per_text, image_ids=None, false_negative_mask=None,
                 random_share: float | None = None):
        """ITM: the pairs, plus for each text a hard negative image and for each image a hard negative text, drawn in
        proportion to the contrastive similarity (positives, same-image pairs and known false negatives excluded, and
        with `config.itm_skip_negatives_above_pair` those the similarity scores at or above the pair), mixed with a
        uniform draw by `random_share` (default `config.itm_random_negatives`).
        Returns (loss, logits, labels)."""
        batch = text_states.shape[0]
        device = text_states.device
        not_negative = torch.eye(batch, dtype=torch.bool, device=device)
        if image_ids is not None:
            not_negative |= image_ids.view(-1, 1) == image_ids.view(1, -1)
        if false_negative_mask is not None:  # the global mask: this process's pairs are its diagonal block
            start = 0 if false_negative_mask.shape[0] == batch else torch.distributed.get_rank() * batch
            block = false_negative_mask[start : start + batch, start : start + batch]
            not_negative |= block.to(device, torch.bool)
        # the image rows see the mask transposed (a false-negative mask is text x image, not symmetric)
        not_negative_text_rows, not_negative_image_rows = not_negative, not_negative.t()
        if self.config.itm_skip_negatives_above_pair:
            # a negative the similarity puts at or above the pair itself is often a caption true of both images
            pair = logits_per_text.diagonal().detach()
            not_negative_text_rows = not_negative_text_rows | (logits_per_text.detach() >= pair[:, None])
            not_negative_image_rows = not_negative_image_rows | (logits_per_text.t().detach() >= pair[:, None])
        text_rows, negative_images = self._sample_hard_negatives(logits_per_text, not_negative_text_rows, random_share)
        image_rows, negative_texts = self._sample_hard_negatives(logits_per_text.t(), not_negative_image_rows, random_share)
        itm_text_states = torch.cat([text_states, text_states[text_rows], text_states[negative_texts]])
        itm_text_mask = torch.cat([attention_mask, attention_mask[text_rows], attention_mask[negative_texts]])
        # each image is fused with three captions: its keys / values are projected once (`image_index`)
        image_index = torch.cat([torch.arange(batch, device=device), negative_images, image_rows])
        fused = self.sisc.fuse(itm_text_states, itm_text_mask, image_states, image_index=image_index)
        logits = self.sisc.itm_head(fused[:, 0])
        labels = torch.cat(
            [
                torch.ones(batch, dtype=torch.long, device=device),
                torch.zeros(text_rows.numel() + image_rows.numel(), dtype=torch.long, device=device),
            ]
        )
        return F.cross_entropy(logits.float(), labels), logits, labels

    def mlm_loss(self, input_ids, attention_mask, token_type_ids, image_states, mlm_input_ids=None, mlm_labels=None):
        """MLM: masked caption tokens predicted by the fusion encoder, conditioned on the paired image; the captions
        are masked here (`mask_tokens`) unless already masked ones are given. Returns (loss, logits)."""
        if (mlm_input_ids is None) != (mlm_labels is None):
            raise ValueError("pass both mlm_input_ids and mlm_labels, or neither")
        if mlm_input_ids is None:
            mlm_input_ids, mlm_labels = self.mask_tokens(input_ids, attention_mask)
        sisc = self.sisc
        text = sisc.text_model(input_ids=mlm_input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        logits = self.mlm_head(sisc.fuse(text.last_hidden_state, attention_mask, image_states))
        if bool((mlm_labels != -100).any()):
            return F.cross_entropy(logits.float().flatten(0, 1), mlm_labels.flatten(), ignore_index=-100), logits
        return logits.sum() * 0.0, logits  # nothing masked (very short captions): a zero that keeps the graph connected

    def word_prediction_loss(self, image_summary: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """The caption's words from its image: cross-entropy of the word head's softmax over the vocabulary against
        the caption's bag of words (each distinct word of the caption an equal share of the target; special tokens
        and padding left out). Captions with no word are left out; 0 when none has one."""
        config = self.config
        special = [config.cls_token_id, config.sep_token_id, config.mask_token_id, config.text_config.pad_token_id]
        targets = bag_of_words(input_ids, attention_mask, config.text_config.vocab_size, [i for i in special if i is not None])
        return bag_of_words_cross_entropy(self.word_head(image_summary), targets)

    def _word_prediction_only(self, pixel_values, input_ids, attention_mask, interpolate_pos_encoding, return_dict):
        if self.word_head is None:
            raise ValueError("word_prediction_only needs the word head: set word_prediction_loss_weight > 0")
        vision_outputs = self.sisc.encode_image(pixel_values, interpolate_pos_encoding)[0]  # its embedding is unused
        loss = self.word_prediction_loss(self.sisc.image_summary(vision_outputs), input_ids, attention_mask)
        output = SiscForPreTrainingOutput(loss=loss, loss_word_prediction=loss)
        return output if return_dict is not False else output.to_tuple()

    def negative_caption_loss(self, image_embeds, text_embeds, negative_input_ids, negative_attention_mask):
        """Each image against its own caption and its negative caption (a copy with a word swapped that makes it
        false, NegCLIP-style): cross-entropy over the two scaled cosines, the own caption the target. Rows whose
        `negative_attention_mask` is all zeros have no negative and are left out; 0 when no row has one."""
        if negative_input_ids.shape[0] != image_embeds.shape[0]:
            raise ValueError(f"negative_input_ids has {negative_input_ids.shape[0]} rows for a batch of {image_embeds.shape[0]} pairs")
        if negative_attention_mask is None:
            negative_attention_mask = torch.ones_like(negative_input_ids)
        rows = negative_attention_mask.bool().any(dim=1).nonzero().flatten()
        if rows.numel() == 0:
            return image_embeds.new_zeros((), dtype=torch.float32)
        negative_embeds = self.sisc.encode_text(negative_input_ids[rows], negative_attention_mask[rows])[1]
        image = image_embeds[rows]
        cosines = torch.stack([(image * text_embeds[rows]).sum(-1), (image * negative_embeds).sum(-1)], dim=1)
        logits = self.sisc.logit_scale_value() * cosines
        return F.cross_entropy(logits.float(), torch.zeros(rows.numel(), dtype=torch.long, device=logits.device))

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        teacher_image_embeds: torch.FloatTensor | None = None,
        teacher_text_embeds: torch.FloatTensor | None = None,
        teacher_similarity: torch.FloatTensor | None = None,
        alpha: float | None = None,
        image_ids: torch.LongTensor | None = None,
        caption_ids: torch.LongTensor | None = None,
        mlm_input_ids: torch.LongTensor | None = None,
        mlm_labels: torch.LongTensor | None = None,
        false_negative_mask: torch.Tensor | None = None,
        itm_random_negatives: float | None = None,
        negative_input_ids: torch.LongTensor | None = None,
        negative_attention_mask: torch.Tensor | None = None,
        word_prediction_only: bool = False,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SiscForPreTrainingOutput | tuple:
        r"""
        Same inputs as `SiscModel.forward` (pair i = image i, caption i), plus:
            mlm_input_ids / mlm_labels: already-masked captions and their labels (-100 = not predicted), e.g. from
                `DataCollatorForLanguageModeling`; when absent the captions are masked here (`mask_tokens`).
            false_negative_mask: (batch, batch) bool, text x image pairs known to match (dataset ground truth): not
                used as contrastive or ITM negatives (the oracle baseline of the false-negative benchmark).
            itm_random_negatives: this step's share of uniformly drawn ITM negatives (default the config's; the
                trainer passes `config.itm_random_share_at(step)` for a curriculum).
            negative_input_ids / negative_attention_mask: (batch, L') a negative caption of each pair's image, for
                the negative-caption loss (`negative_caption_loss_weight` > 0, which then needs them); a row whose
                mask is all zeros has none.
            word_prediction_only: the image tower's warm-up (`train/pretrain.py --image_tower_only`): only the
                word-prediction loss, from the image tower alone (the text tower and the fusion encoder are not run);
                `loss` is that loss, unweighted.

        A loss whose weight in the config is 0 (`itm_loss_weight`, `mlm_loss_weight`) is not computed at all: it is
        returned as 0 and its logits as None.
        """
        sisc = self.sisc
        if input_ids is None or pixel_values is None:
            raise ValueError("SiscForPreTraining needs both input_ids and pixel_values")
        if input_ids.shape[0] != pixel_values.shape[0]:
            raise ValueError(
                f"pretraining needs aligned pairs: got {pixel_values.shape[0]} images and {input_ids.shape[0]} texts"
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if word_prediction_only:
            return self._word_prediction_only(pixel_values, input_ids, attention_mask, interpolate_pos_encoding, return_dict)
        vision_outputs, image_embeds = sisc.encode_image(pixel_values, interpolate_pos_encoding)
        text_outputs, text_embeds = sisc.encode_text(input_ids, attention_mask, token_type_ids)
        image_states = vision_outputs.last_hidden_state
        text_states = text_outputs.last_hidden_state

        # ITC: regulated contrastive loss over the (global) batch, optionally ALBEF's momentum/queue variant.
        if self.momentum_encoder is not None:
            if teacher_similarity is not None:
                raise ValueError("with use_momentum_distillation pass teacher embeddings (queued), not teacher_similarity")
            if false_negative_mask is not None:
                raise ValueError("false_negative_mask is not supported with use_momentum_distillation (queued negatives)")
            loss_itc, weights_t2i, weights_i2t = self.momentum_contrastive_loss(
                image_embeds,
                text_embeds,
                pixel_values,
                input_ids,
                attention_mask,
                teacher_image_embeds=teacher_image_embeds,
                teacher_text_embeds=teacher_text_embeds,
                alpha=alpha,
                image_ids=image_ids,
            )
        else:
            loss_itc, weights_t2i, weights_i2t = sisc.contrastive_loss(
                image_embeds,
                text_embeds,
                teacher_image_embeds=teacher_image_embeds,
                teacher_text_embeds=teacher_text_embeds,
                teacher_similarity=teacher_similarity,
                alpha=alpha,
                image_ids=image_ids,
                caption_ids=caption_ids,
                false_negative_mask=false_negative_mask,
            )
        logits_per_text = sisc.logit_scale_value() * cosine_matrix(text_embeds, image_embeds)
        config = self.config
        zero = image_embeds.new_zeros((), dtype=torch.float32)
        itm_logits = itm_labels = mlm_logits = None
        loss_itm = loss_mlm = zero
        loss_negative_caption = loss_word_prediction = None

        if config.itm_loss_weight > 0:
            loss_itm, itm_logits, itm_labels = self.itm_loss(
                text_states, attention_mask, image_states, logits_per_text, image_ids, false_negative_mask,
                random_share=itm_random_negatives,
            )
        if config.mlm_loss_weight > 0:
            loss_mlm, mlm_logits = self.mlm_loss(
                input_ids, attention_mask, token_type_ids, image_states, mlm_input_ids, mlm_labels
            )

        loss = (
            config.itc_loss_weight * loss_itc + config.itm_loss_weight * loss_itm + config.mlm_loss_weight * loss_mlm
        )
        if config.negative_caption_loss_weight > 0:
            if negative_input_ids is None:
                raise ValueError(
                    "negative_caption_loss_weight > 0 needs negative captions (negative_input_ids): a data column "
                    "'negative_caption' (the embedded shapes data derives one), or set the weight to 0"
                )
            loss_negative_caption = self.negative_caption_loss(
                image_embeds, text_embeds, negative_input_ids, negative_attention_mask
            )
            loss = loss + config.negative_caption_loss_weight * loss_negative_caption
        if self.word_head is not None:
            loss_word_prediction = self.word_prediction_loss(sisc.image_summary(vision_outputs), input_ids, attention_mask)
            loss = loss + config.word_prediction_loss_weight * loss_word_prediction
        output = SiscForPreTrainingOutput(
            loss=loss,
            loss_itc=loss_itc,
            loss_itm=loss_itm,
            loss_mlm=loss_mlm,
            loss_negative_caption=loss_negative_caption,
            loss_word_prediction=loss_word_prediction,
            logits_per_image=logits_per_text.t(),
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            itm_logits=itm_logits,
            itm_labels=itm_labels,
            mlm_logits=mlm_logits,
            weights_t2i=weights_t2i,
            weights_i2t=weights_i2t,
        )
        return_dict = return_dict if return_dict is not None else True
        return output if return_dict else output.to_tuple()


SiscModel.register_for_auto_class("AutoModel")
SiscForPreTraining.register_for_auto_class("AutoModelForPreTraining")

__all__ = [
    "SiscModel",
    "SiscForPreTraining",
    "SiscPreTrainedModel",
    "SiscOutput",
    "SiscForPreTrainingOutput",
    "mixed_similarity",
    "regulation_weights",
    "regulated_contrastive_loss",
    "anchor_contrastive_loss",
    "soft_infonce_weights",
    "hard_negative_weights",
    "debiased_contrastive_loss",
    "sigmoid_pairwise_loss",
    "target_distribution",
    "gather_with_grad",
]


# --------------------------------------------------------------------------------------------------------------
# Downstream tasks: visual question answering and visual reasoning (NLVR2)
# --------------------------------------------------------------------------------------------------------------

from transformers.models.bert.modeling_bert import BertLMHeadModel  # noqa: E402


@dataclass
class SiscQuestionAnsweringOutput(ModelOutput):
    """
    loss: training loss (weighted answer-decoder NLL for `vqa_head="generate"`, soft-score BCE for `"classify"`).
    logits: (batch, num_answers) scores over the answer list: classifier logits, or for the decoder the answers'
        full log-likelihoods (only the top-k candidates are scored; the others are -inf). None in training without
        an answer list.
    answer_ids: (batch,) index into the answer list of the predicted answer (when `logits` is given).
    question_states: (batch, seq, hidden) fusion-encoder output of the question.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    answer_ids: torch.LongTensor | None = None
    question_states: torch.FloatTensor | None = None


@dataclass
class SiscVisualReasoningOutput(ModelOutput):
    """loss: cross-entropy (when labels are given); logits: (batch, 2), column 1 = "the statement is true"."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None


def _local_or_hub_file(path, filename: str):
    """A file of a checkpoint (local folder or Hub cache), None when it cannot be found (no download errors)."""
    import os

    if os.path.isdir(str(path)):
        candidate = os.path.join(str(path), filename)
        return candidate if os.path.isfile(candidate) else None
    try:
        from transformers.utils import cached_file

        return cached_file(path, filename, _raise_exceptions_for_missing_entries=False)
    except Exception:  # offline / not a repo: the fallback initialisation is used
        return None


class _SiscTaskModel(SiscPreTrainedModel):
    """Shared loading rule of the task models: weights a checkpoint does not have (a pretraining checkpoint has no
    task head) start from the pretrained parts they are copies of (`_init_missing_from_pretrained`)."""

    _keys_to_ignore_on_load_unexpected = [r"^mlm_head\.", r"^momentum_encoder\.", r"^sisc\.itm_head\.", r"^word_head\."]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        missing = set(info.get("missing_keys", ()))
        if missing:
            model._init_missing_from_pretrained(missing, pretrained_model_name_or_path)
        return (model, info) if want_info else model

    def _init_missing_from_pretrained(self, missing_keys: set, pretrained_model_name_or_path) -> None:
        pass


class SiscForQuestionAnswering(_SiscTaskModel):
    """Visual question answering on top of SISC (ALBEF-style).

    The question is encoded by the text encoder and fused with the image patches by the fusion encoder. Then, as
    `config.vqa_head` chooses:

    - `"generate"`: an answer decoder (transformers' `BertLMHeadModel` with cross-attention to the fused question
      states) generates the answer. Training: teacher-forced NLL of each target answer, weighted by its weight
      (ALBEF: the share of annotators who gave it), summed per question and averaged over questions. Inference
      (`predict`): constrained to the closed answer list: the `vqa_k_test` answers whose first token is most
      likely are scored fully (sum of token log-probabilities, [SEP] included) and the best one is returned.
      Loaded from a pretraining checkpoint, the decoder starts from the fusion encoder's layers (self-attention,
      cross-attention, feed-forward), the text encoder's embeddings and the MLM head.
    - `"classify"`: an MLP over the fusion [CLS] with one logit per answer of `config.vqa_answers`, trained with
      binary cross-entropy on soft scores (VQA: min(#annotators who gave the answer / 3, 1)).

    Inputs: `input_ids` / `attention_mask` (the question), `pixel_values` (the image); for training `labels`
    (batch, num_answers) float targets over the answer list (soft scores for the classifier, weights for the
    decoder), or, for the decoder only, explicit answers (`answer_input_ids`, `answer_attention_mask`,
    `answer_weights`, `answer_question_index`: which question each answer belongs to). The decoder needs the
    tokenised answer list (`answer_list_input_ids` / `answer_list_attention_mask`, see `tokenize_answer_list`) to
    rank answers and to turn `labels` into answers.
    """

    def __init__(self, config: SiscConfig):
        super().__init__(config)
        if config.vqa_head == "classify" and not config.vqa_answers:
            raise ValueError("SiscConfig.vqa_answers is required with vqa_head='classify' (one output per answer)")
        self.sisc = SiscModel(config)
        hidden = config.fusion_encoder_config.hidden_size
        self.answer_decoder = None
        self.vqa_classifier = None
        if config.vqa_head == "generate":
            decoder_config = BertConfig(
                **{
                    **config.fusion_encoder_config.to_dict(),
                    "is_decoder": True,
                    "add_cross_attention": True,
                    "num_hidden_layers": config.answer_decoder_layers or config.fusion_encoder_config.num_hidden_layers,
                    "tie_word_embeddings": True,
                }
            )
            decoder_config._attn_implementation_internal = self.sisc.text_model.config._attn_implementation
            self.answer_decoder = BertLMHeadModel(decoder_config)
        else:
            self.vqa_classifier = nn.Sequential(
                nn.Linear(hidden, 2 * hidden),
                nn.GELU(),
                nn.LayerNorm(2 * hidden, eps=config.fusion_encoder_config.layer_norm_eps),
                nn.Linear(2 * hidden, len(config.vqa_answers)),
            )
        self.post_init()

    def get_input_embeddings(self):
        return self.sisc.get_input_embeddings()

    # ---- initialisation of a fresh head from a pretraining checkpoint ----
    def _init_missing_from_pretrained(self, missing_keys: set, pretrained_model_name_or_path) -> None:
        if self.answer_decoder is None or not any(k.startswith("answer_decoder.") for k in missing_keys):
            return
        self.init_answer_decoder_from_fusion(pretrained_model_name_or_path)

    @torch.no_grad()
    def init_heads_from_encoders(self, mlm_head_state: dict | None) -> None:
        if self.answer_decoder is None:
            return
        self.init_answer_decoder_from_fusion()
        if mlm_head_state is not None:  # the decoder's LM head is BERT's MLM head (its decoder weight is tied)
            self.answer_decoder.cls.load_state_dict(
                {k: v for k, v in mlm_head_state.items() if not k.endswith("decoder.weight")}, strict=False
            )
        self.answer_decoder.tie_weights()

    @torch.no_grad()
    def init_answer_decoder_from_fusion(self, pretrained_model_name_or_path=None) -> None:
        """Start the answer decoder from the pretrained fusion encoder (ALBEF initialises its decoder from BERT's
        last layers too): layer i of the decoder copies fusion layer i (the parameter names match `BertLayer`),
        the embeddings the text encoder's, and the LM head the pretraining MLM head when the checkpoint has one."""
        decoder = self.answer_decoder.bert
        decoder.embeddings.load_state_dict(self.sisc.text_model.embeddings.state_dict())
        fusion_layers = self.sisc.fusion_model.layer
        for index, layer in enumerate(decoder.encoder.layer[: len(fusion_layers)]):
            missing, unexpected = layer.load_state_dict(fusion_layers[index].state_dict(), strict=False)
            if unexpected:
                raise ValueError(f"fusion layer {index} does not match the decoder layer: unexpected {unexpected}")
        weights_file = _local_or_hub_file(pretrained_model_name_or_path, "model.safetensors") if pretrained_model_name_or_path else None
        if weights_file is not None:
            from safetensors import safe_open

            head = {}
            with safe_open(weights_file, framework="pt") as handle:
                for key in handle.keys():
                    if key.startswith("mlm_head.") and not key.endswith("decoder.weight"):
                        head[key[len("mlm_head."):]] = handle.get_tensor(key)
            if head:
                self.answer_decoder.cls.load_state_dict(head, strict=False)
        self.answer_decoder.tie_weights()

    # ---- inputs ----
    def tokenize_answer_list(self, tokenizer, answers: list[str] | None = None) -> dict[str, torch.Tensor]:
        """`answer_list_input_ids` / `answer_list_attention_mask` ([CLS] answer [SEP], padded) of the answer list."""
        answers = answers if answers is not None else self.config.vqa_answers
        if not answers:
            raise ValueError("no answer list: set config.vqa_answers or pass answers")
        tokens = tokenizer(list(answers), padding="longest", return_tensors="pt")
        device = self.device
        return {
            "answer_list_input_ids": tokens["input_ids"].to(device),
            "answer_list_attention_mask": tokens["attention_mask"].to(device),
        }

    def _check_answer_list(self, ids, mask) -> None:
        if ids is None:
            raise ValueError(
                "the answer decoder needs the tokenised answer list: pass answer_list_input_ids / "
                "answer_list_attention_mask (model.tokenize_answer_list(tokenizer))"
            )
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[1] < 2:
            raise ValueError(
                f"answer_list_input_ids must be a (num_answers, length >= 2) tensor of [CLS] answer [SEP] tokens, "
                f"got shape {tuple(getattr(ids, 'shape', ()))}"
            )
        if mask is None or mask.shape != ids.shape:
            raise ValueError(
                f"answer_list_attention_mask must have the shape of answer_list_input_ids {tuple(ids.shape)}, "
                f"got {None if mask is None else tuple(mask.shape)}"
            )
        if self.config.vqa_answers is not None and ids.shape[0] != len(self.config.vqa_answers):
            raise ValueError(
                f"the answer list has {ids.shape[0]} answers but config.vqa_answers has {len(self.config.vqa_answers)}"
            )

    def _check_labels(self, labels: torch.Tensor, batch: int, num_answers: int) -> None:
        if labels.dim() != 2 or labels.shape != (batch, num_answers):
            raise ValueError(
                f"labels must be (batch, num_answers) = ({batch}, {num_answers}) targets over the answer list, "
                f"got {tuple(labels.shape)}"
            )
        empty = (labels.sum(dim=1) <= 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(
                f"question(s) at batch index {empty} have no valid answer in the answer list (all targets are 0): "
                "drop them before the batch is built"
            )

    def encode_question(self, input_ids, attention_mask, pixel_values, token_type_ids=None, interpolate_pos_encoding=False):
        """Fusion-encoder states (batch, seq, hidden) of the questions over their images."""
        sisc = self.sisc
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if pixel_values is None:
            raise ValueError("SiscForQuestionAnswering needs pixel_values (the image the question is about)")
        if input_ids.shape[0] != pixel_values.shape[0]:
            raise ValueError(f"got {input_ids.shape[0]} questions and {pixel_values.shape[0]} images")
        image_states = sisc.encode_image(pixel_values, interpolate_pos_encoding)[0].last_hidden_state
        text_states = sisc.encode_text(input_ids, attention_mask, token_type_ids)[0].last_hidden_state
        return sisc.fuse(text_states, attention_mask, image_states), attention_mask

    def _answer_log_likelihood(self, question_states, question_mask, answer_ids, answer_mask) -> torch.Tensor:
        """Sum of the log-probabilities of each answer's tokens after [CLS] ([SEP] included), one per row."""
        logits = self.answer_decoder(
            input_ids=answer_ids,
            attention_mask=answer_mask,
            encoder_hidden_states=question_states,
            encoder_attention_mask=question_mask,
            use_cache=False,
        ).logits
        targets = answer_ids[:, 1:].masked_fill(answer_mask[:, 1:] == 0, -100)
        token_loss = F.cross_entropy(
            logits[:, :-1].float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="none"
        ).view(targets.shape)
        return -token_loss.sum(dim=1)

    @torch.no_grad()
    def rank_answers(self, question_states, question_mask, answer_list_input_ids, answer_list_attention_mask, k=None):
        """Answer-list scores (batch, num_answers): full log-likelihoods of the k answers whose first token is most
        likely, -inf for the rest (ALBEF's constrained ranking)."""
        batch, num_answers = question_states.shape[0], answer_list_input_ids.shape[0]
        k = min(k or self.config.vqa_k_test, num_answers)
        start = answer_list_input_ids[:1, :1].expand(batch, 1)
        first_logits = self.answer_decoder(
            input_ids=start,
            attention_mask=torch.ones_like(start),
            encoder_hidden_states=question_states,
            encoder_attention_mask=question_mask,
            use_cache=False,
        ).logits[:, 0]
        first_scores = first_logits.float().log_softmax(dim=-1)[:, answer_list_input_ids[:, 1]]  # (batch, N)
        top = first_scores.topk(k, dim=1).indices  # (batch, k)
        ids = answer_list_input_ids[top.flatten()]
        mask = answer_list_attention_mask[top.flatten()]
        states = question_states.repeat_interleave(k, dim=0)
        smask = question_mask.repeat_interleave(k, dim=0)
        full = self._answer_log_likelihood(states, smask, ids, mask).view(batch, k)
        scores = torch.full((batch, num_answers), float("-inf"), device=question_states.device)
        return scores.scatter(1, top, full)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        labels: torch.FloatTensor | None = None,
        answer_list_input_ids: torch.LongTensor | None = None,
        answer_list_attention_mask: torch.LongTensor | None = None,
        answer_input_ids: torch.LongTensor | None = None,
        answer_attention_mask: torch.LongTensor | None = None,
        answer_weights: torch.FloatTensor | None = None,
        answer_question_index: torch.LongTensor | None = None,
        k: int | None = None,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SiscQuestionAnsweringOutput | tuple:
        if input_ids is None:
            raise ValueError("SiscForQuestionAnswering needs input_ids (the question)")
        states, mask = self.encode_question(input_ids, attention_mask, pixel_values, token_type_ids, interpolate_pos_encoding)
        batch = states.shape[0]
        loss = logits = answer_ids = None
        if self.vqa_classifier is not None:
            logits = self.vqa_classifier(states[:, 0])
            if labels is not None:
                self._check_labels(labels, batch, logits.shape[1])
                loss = F.binary_cross_entropy_with_logits(logits.float(), labels.float()) * logits.shape[1]
            answer_ids = logits.argmax(dim=1)
        else:
            if labels is not None:
                if answer_input_ids is not None:
                    raise ValueError("pass labels (targets over the answer list) or explicit answers, not both")
                self._check_answer_list(answer_list_input_ids, answer_list_attention_mask)
                self._check_labels(labels, batch, answer_list_input_ids.shape[0])
                answer_question_index, answer_index = labels.nonzero(as_tuple=True)
                answer_weights = labels[answer_question_index, answer_index]
                answer_input_ids = answer_list_input_ids[answer_index]
                answer_attention_mask = answer_list_attention_mask[answer_index]
            if answer_input_ids is not None:
                if answer_attention_mask is None:
                    answer_attention_mask = torch.ones_like(answer_input_ids)
                if answer_question_index is None:
                    if answer_input_ids.shape[0] != batch:
                        raise ValueError(
                            f"{answer_input_ids.shape[0]} answers for {batch} questions: pass answer_question_index"
                        )
                    answer_question_index = torch.arange(batch, device=states.device)
                if answer_weights is None:
                    answer_weights = torch.ones(answer_input_ids.shape[0], device=states.device)
                if not (answer_question_index.shape[0] == answer_weights.shape[0] == answer_input_ids.shape[0]):
                    raise ValueError("answer_input_ids, answer_weights and answer_question_index must have one row per answer")
                log_likelihood = self._answer_log_likelihood(
                    states[answer_question_index], mask[answer_question_index], answer_input_ids, answer_attention_mask
                )
                loss = -(answer_weights.float() * log_likelihood).sum() / batch
            if not self.training and answer_list_input_ids is not None:
                self._check_answer_list(answer_list_input_ids, answer_list_attention_mask)
                logits = self.rank_answers(states, mask, answer_list_input_ids, answer_list_attention_mask, k)
                answer_ids = logits.argmax(dim=1)
        output = SiscQuestionAnsweringOutput(loss=loss, logits=logits, answer_ids=answer_ids, question_states=states)
        return_dict = return_dict if return_dict is not None else True
        return output if return_dict else output.to_tuple()

    @torch.no_grad()
    def predict(self, input_ids, pixel_values, attention_mask=None, answer_list_input_ids=None,
                answer_list_attention_mask=None, k=None) -> torch.LongTensor:
        """Index into the answer list of each question's answer (the decoder is constrained to the list)."""
        was_training = self.training
        self.eval()
        try:
            output = self(
                input_ids=input_ids,
                pixel_values=pixel_values,
                attention_mask=attention_mask,
                answer_list_input_ids=answer_list_input_ids,
                answer_list_attention_mask=answer_list_attention_mask,
                k=k,
            )
        finally:
            self.train(was_training)
        if output.answer_ids is None:
            self._check_answer_list(answer_list_input_ids, answer_list_attention_mask)
        return output.answer_ids

    @torch.no_grad()
    def answer(self, questions, images, processor, k: int | None = None, batch_size: int = 64) -> list[str]:
        """Answers (strings of `config.vqa_answers`) to `questions` about `images` (PIL images or paths)."""
        if isinstance(questions, str):
            questions, images = [questions], [images]
        if len(questions) != len(images):
            raise ValueError(f"got {len(questions)} questions and {len(images)} images")
        if not self.config.vqa_answers:
            raise ValueError("config.vqa_answers is empty: the model has no answer list")
        answer_list = self.tokenize_answer_list(processor.tokenizer) if self.answer_decoder is not None else {}
        results = []
        for start in range(0, len(questions), batch_size):
            pil = [SiscModel._load_image(image) for image in images[start : start + batch_size]]
            inputs = processor(text=list(questions[start : start + batch_size]), images=pil, return_tensors="pt").to(self.device)
            ids = self.predict(
                inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"], k=k, **answer_list
            )
            results += [self.config.vqa_answers[i] for i in ids.tolist()]
        return results


class SiscBranchMerge(nn.Linear):
    """Merges the outputs of the two cross-attention branches of a visual-reasoning fusion layer
    (concatenated, 2 x hidden -> hidden); it starts as their average."""


class SiscForVisualReasoning(_SiscTaskModel):
    """NLVR2-style visual reasoning: one sentence, two images, is the sentence true?

    As ALBEF's NLVR2 model: in every fusion layer, after the self-attention over the sentence, the text attends to
    the left image's patches (the pretrained cross-attention) and to the right image's patches (a second
    cross-attention, starting as a copy of the first) in two branches; a linear layer merges the two outputs
    (starting as their average), then comes the feed-forward block. An MLP on the fused [CLS] predicts
    false (0) / true (1).

    Inputs: `input_ids` / `attention_mask` (the sentence), `pixel_values` (left images) and `pixel_values_2`
    (right images), or `pixel_values` of shape (batch, 2, channels, height, width); optional `labels` (batch,).
    """

    def __init__(self, config: SiscConfig):
        super().__init__(config)
        self.sisc = SiscModel(config)
        fusion = config.fusion_encoder_config
        hidden = fusion.hidden_size
        self.second_crossattention = nn.ModuleList(
            [BertAttention(fusion, is_causal=False, layer_idx=i, is_cross_attention=True) for i in range(fusion.num_hidden_layers)]
        )
        self.branch_merge = nn.ModuleList([SiscBranchMerge(2 * hidden, hidden) for _ in range(fusion.num_hidden_layers)])
        self.reasoning_head = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2))
        self.post_init()

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, SiscBranchMerge):
            hidden = module.out_features
            eye = torch.eye(hidden, dtype=module.weight.dtype, device=module.weight.device)
            init.copy_(module.weight, 0.5 * torch.cat([eye, eye], dim=1))
            init.zeros_(module.bias)

    def get_input_embeddings(self):
        return self.sisc.get_input_embeddings()

    def _init_missing_from_pretrained(self, missing_keys: set, pretrained_model_name_or_path) -> None:
        if any(k.startswith("second_crossattention.") for k in missing_keys):
            self.init_second_branch_from_first()

    def init_heads_from_encoders(self, mlm_head_state: dict | None) -> None:
        self.init_second_branch_from_first()

    @torch.no_grad()
    def init_second_branch_from_first(self) -> None:
        """Copy each fusion layer's (pretrained) image cross-attention into the second image's branch."""
        for layer, second in zip(self.sisc.fusion_model.layer, self.second_crossattention):
            second.load_state_dict(layer.crossattention.state_dict())

    def fuse(
        self,
        input_ids: torch.LongTensor | None,
        pixel_values: torch.FloatTensor | None,
        pixel_values_2: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> torch.Tensor:
        """The sentence fused with both images: the last fusion layer's hidden states (batch, tokens, hidden); the
        [CLS] row feeds the reasoning head (and the text-assignment head of `sisc_train/tasks/text_assignment.py`)."""
        if input_ids is None:
            raise ValueError("SiscForVisualReasoning needs input_ids (the sentence)")
        if isinstance(pixel_values, torch.Tensor) and pixel_values.dim() == 5:
            if pixel_values_2 is not None or pixel_values.shape[1] != 2:
                raise ValueError(
                    f"5-D pixel_values must be (batch, 2, channels, height, width) without pixel_values_2, got "
                    f"{tuple(pixel_values.shape)}"
                )
            pixel_values, pixel_values_2 = pixel_values[:, 0], pixel_values[:, 1]
        if pixel_values is None or pixel_values_2 is None:
            raise ValueError(
                "SiscForVisualReasoning needs TWO images per sentence: pixel_values (left) and pixel_values_2 (right)"
                + (" - pixel_values_2 is missing" if pixel_values is not None else "")
            )
        if not (input_ids.shape[0] == pixel_values.shape[0] == pixel_values_2.shape[0]):
            raise ValueError(
                f"got {input_ids.shape[0]} sentences, {pixel_values.shape[0]} left and {pixel_values_2.shape[0]} right images"
            )
        sisc = self.sisc
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        batch = input_ids.shape[0]
        images = sisc.encode_image(torch.cat([pixel_values, pixel_values_2]), interpolate_pos_encoding)[0].last_hidden_state
        fusion = sisc.fusion_model
        images = fusion.image_projection(images)
        left, right = images[:batch], images[batch:]
        hidden_states = sisc.encode_text(input_ids, attention_mask, token_type_ids)[0].last_hidden_state
        mask = create_bidirectional_mask(config=fusion.config, inputs_embeds=hidden_states, attention_mask=attention_mask)
        for layer, second, merge in zip(fusion.layer, self.second_crossattention, self.branch_merge):
            hidden_states = layer(hidden_states, mask, left, None, right, second_crossattention=second, branch_merge=merge)
        return hidden_states

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        pixel_values_2: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SiscVisualReasoningOutput | tuple:
        hidden_states = self.fuse(input_ids, pixel_values, pixel_values_2, attention_mask, token_type_ids, interpolate_pos_encoding)
        batch = hidden_states.shape[0]
        logits = self.reasoning_head(hidden_states[:, 0])
        loss = None
        if labels is not None:
            labels = labels.long().view(-1)
            if labels.shape[0] != batch or bool(((labels != 0) & (labels != 1)).any()):
                raise ValueError(f"labels must be ({batch},) zeros (false) and ones (true), got {labels.tolist()[:8]}")
            loss = F.cross_entropy(logits.float(), labels)
        output = SiscVisualReasoningOutput(loss=loss, logits=logits)
        return_dict = return_dict if return_dict is not None else True
        return output if return_dict else output.to_tuple()


SiscForQuestionAnswering.register_for_auto_class("AutoModelForVisualQuestionAnswering")
SiscForVisualReasoning.register_for_auto_class("AutoModelForSequenceClassification")

__all__ += [
    "SiscForQuestionAnswering",
    "SiscForVisualReasoning",
    "SiscQuestionAnsweringOutput",
    "SiscVisualReasoningOutput",
]
