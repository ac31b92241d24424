"""The regulated contrastive loss against independent references: CLIP's loss, hand-computed cases, gradients."""

import math

import pytest
import torch
from transformers.models.clip import modeling_clip

from modeling_sisc import (
    anchor_contrastive_loss,
    mixed_similarity,
    regulated_contrastive_loss,
    regulation_weights,
    same_id_mask,
)

# transformers 5 renamed CLIP's `clip_loss` to `image_text_contrastive_loss`; either is the reference.
clip_loss = getattr(modeling_clip, "clip_loss", None) or modeling_clip.image_text_contrastive_loss


def random_logits(n=6, seed=0, scale=10.0):
    g = torch.Generator().manual_seed(seed)
    return scale * (torch.rand(n, n, generator=g) * 2 - 1)


# ---------------------------------------------------------------- plain InfoNCE as the special case


@pytest.mark.parametrize("n", [1, 2, 7])
def test_no_weights_equals_clip_loss(n):
    logits = random_logits(n)
    assert torch.allclose(regulated_contrastive_loss(logits), clip_loss(logits), atol=1e-6)


def test_all_one_weights_equal_clip_loss():
    logits = random_logits(5)
    ones = torch.ones(5, 5)
    assert torch.allclose(regulated_contrastive_loss(logits, ones, ones), clip_loss(logits), atol=1e-6)


def test_loss_matches_formula_by_hand():
    # METHOD.md: loss_i = -log( f_ii / (f_ii + sum_{j != i} w_ij f_ij) ), f = exp(logit).
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.3], [1.5, -0.5, 0.7]])
    w_t2i = torch.tensor([[1.0, 0.5, 1.5], [2.0, 1.0, 0.0], [0.25, 1.75, 1.0]])
    w_i2t = torch.tensor([[1.0, 1.2, 0.8], [0.6, 1.0, 1.4], [1.0, 1.0, 1.0]])

    def by_hand(lg, w):
        total = 0.0
        for i in range(3):
            pos = math.exp(lg[i][i])
            neg = sum(w[i][j] * math.exp(lg[i][j]) for j in range(3) if j != i)
            total += -math.log(pos / (pos + neg))
        return total / 3

    expected = (by_hand(logits.tolist(), w_t2i.tolist()) + by_hand(logits.t().tolist(), w_i2t.tolist())) / 2
    got = regulated_contrastive_loss(logits, w_t2i, w_i2t)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_diagonal_weight_is_ignored():
    # The positive always counts once, whatever the weight matrix says on its diagonal.
    logits = random_logits(4)
    w = torch.rand(4, 4) + 0.5
    w_diag = w.clone()
    w_diag.fill_diagonal_(7.0)
    assert torch.allclose(anchor_contrastive_loss(logits, w), anchor_contrastive_loss(logits, w_diag))


# ---------------------------------------------------------------- the weights


def test_mixed_similarity():
    student = torch.tensor([[0.2, -0.1], [0.4, 0.9]])
    teacher = torch.tensor([[0.5, 0.0], [-0.3, 1.0]])
    assert torch.allclose(mixed_similarity(student), student.exp())
    assert torch.allclose(mixed_similarity(student, teacher, alpha=1.0), teacher.exp())
    assert torch.allclose(mixed_similarity(student, teacher, alpha=0.25), 0.25 * teacher.exp() + 0.75 * student.exp())
    with pytest.raises(ValueError, match="alpha"):
        mixed_similarity(student, teacher, alpha=1.5)
    with pytest.raises(ValueError, match="shape"):
        mixed_similarity(student, teacher[:1])


def test_mean_norm_by_hand():
    s = torch.tensor([[math.e, 1.0, 2.0], [4.0, math.e, 1.0], [1.0, 1.0, 1.0]])
    w = regulation_weights(s, norm="mean")
    # row 0: negatives 1/1 and 1/2, mean 0.75 -> 4/3 and 2/3
    assert torch.allclose(w[0], torch.tensor([1.0, 4 / 3, 2 / 3]))
    # row 1: negatives 1/4 and 1/1, mean 0.625 -> 0.4 and 1.6
    assert torch.allclose(w[1], torch.tensor([0.4, 1.0, 1.6]))
    assert torch.allclose(w[2], torch.ones(3))
    # delta cancels out under the mean normalisation
    assert torch.allclose(regulation_weights(s, norm="mean", delta=5.0), w)


def test_softmax_norm_by_hand():
    s = torch.tensor([[math.e, 1.0, 2.0], [4.0, math.e, 1.0], [1.0, 1.0, 1.0]])
    delta = 2.0
    w = regulation_weights(s, norm="softmax", delta=delta)
    a, b = math.exp(delta / 1.0), math.exp(delta / 2.0)
    assert torch.allclose(w[0], torch.tensor([1.0, 2 * a / (a + b), 2 * b / (a + b)]))
    a, b = math.exp(delta / 4.0), math.exp(delta / 1.0)
    assert torch.allclose(w[1], torch.tensor([2 * a / (a + b), 1.0, 2 * b / (a + b)]))
    # a larger delta sharpens the weights
    sharp = regulation_weights(s, norm="softmax", delta=10.0)
    assert sharp[0, 1] > w[0, 1] and sharp[0, 2] < w[0, 2]


def test_threshold_removal_by_hand():
    s = torch.tensor([[math.e, 1.0, 2.0], [4.0, math.e, 1.0], [1.0, 1.0, 1.0]])
    w = regulation_weights(s, norm="mean", threshold=0.7)
    # normalised weights: row 0 (4/3, 2/3), row 1 (0.4, 1.6), row 2 (1, 1)
    expected = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    assert torch.equal(w, expected)


@pytest.mark.parametrize("norm", ["mean", "softmax"])
@pytest.mark.parametrize("delta", [0.5, 1.0, 4.0])
def test_row_conditions(norm, delta):
    # Appendix A.3: mean over each anchor's negatives is 1; more similar => smaller weight.
    g = torch.Generator().manual_seed(3)
    cos = torch.rand(9, 9, generator=g) * 2 - 1
    s = mixed_similarity(cos)
    w = regulation_weights(s, norm=norm, delta=delta)
    off = ~torch.eye(9, dtype=torch.bool)
    assert torch.allclose(w[off].view(9, 8).mean(dim=1), torch.ones(9), atol=1e-5)
    assert torch.allclose(w.diagonal(), torch.ones(9))
    for i in range(9):
        order = torch.argsort(cos[i][off[i]])  # increasing similarity
        assert torch.all(torch.diff(w[i][off[i]][order]) <= 1e-6)


def test_ignore_mask_drops_pairs_and_renormalises():
    s = mixed_similarity(torch.tensor([[0.9, 0.8, 0.1, -0.2]] * 4))
    ids = torch.tensor([0, 0, 1, 2])  # pairs 0 and 1 show the same image
    mask = same_id_mask(ids, ids)
    w = regulation_weights(s, ignore_mask=mask)
    assert w[0, 1] == 0 and w[1, 0] == 0
    assert w[0, 2:].mean().item() == pytest.approx(1.0, rel=1e-6)


def test_weights_carry_no_gradient_but_logits_do():
    cos = (torch.rand(5, 5) * 2 - 1).requires_grad_(True)
    logits = (cos / 0.07).clone()
    logits.retain_grad()
    w_t2i = regulation_weights(mixed_similarity(cos))
    w_i2t = regulation_weights(mixed_similarity(cos.t()))
    assert not w_t2i.requires_grad and not w_i2t.requires_grad
    loss = regulated_contrastive_loss(logits, w_t2i, w_i2t)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_gradient_matches_autograd_of_explicit_formula():
    torch.manual_seed(0)
    logits = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    w = torch.rand(4, 4, dtype=torch.float64) + 0.1

    def explicit(lg):
        f = lg.exp()
        eye = torch.eye(4, dtype=torch.bool)
        denom = f.diagonal() + (w * f).masked_fill(eye, 0).sum(1)
        return -(f.diagonal() / denom).log().mean()

    (grad_ours,) = torch.autograd.grad(anchor_contrastive_loss(logits, w), logits)
    (grad_ref,) = torch.autograd.grad(explicit(logits), logits)
    assert torch.allclose(grad_ours.double(), grad_ref, atol=1e-6)


def test_zero_weights_give_no_nan():
    logits = random_logits(4).requires_grad_(True)
    w = torch.zeros(4, 4)
    loss = regulated_contrastive_loss(logits, w, w)
    loss.backward()
    # every negative removed: only the positive is left, loss 0, and no NaN anywhere
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(logits.grad).all()


def test_batch_of_one_is_finite():
    logits = torch.tensor([[3.0]], requires_grad=True)
    s = mixed_similarity(torch.tensor([[0.5]]))
    for norm in ("mean", "softmax"):
        w = regulation_weights(s, norm=norm)
        assert torch.equal(w, torch.ones(1, 1))
        loss = regulated_contrastive_loss(logits, w, w)
        assert torch.isfinite(loss) and loss.item() == pytest.approx(0.0, abs=1e-6)


def test_duplicated_captions_in_a_batch():
    # Two identical (image, caption) pairs: each is the other's perfect false negative.
    emb = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    emb[1] = emb[0]
    cos = emb @ emb.t()
    for norm in ("mean", "softmax"):
        w = regulation_weights(mixed_similarity(cos), norm=norm)
        assert torch.isfinite(w).all()
        # the duplicate is the most similar negative, so it gets the smallest weight of its row
        assert w[0, 1] == w[0][1:].min()
    loss = regulated_contrastive_loss(cos / 0.07, w, w)
    assert torch.isfinite(loss)
    # with the same-image mask the duplicate is no negative at all
    mask = same_id_mask(torch.tensor([0, 0, 1, 2]), torch.tensor([0, 0, 1, 2]))
    w = regulation_weights(mixed_similarity(cos), ignore_mask=mask)
    assert w[0, 1] == 0 and w[1, 0] == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_extreme_similarities_and_low_precision(dtype):
    logits = torch.tensor([[1e4, -1e4, 1e4], [-1e4, 1e4, -1e4], [1e4, 1e4, 1e4]], dtype=dtype, requires_grad=True)
    cos = torch.tensor([[1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, 1.0, 1.0]], dtype=dtype)
    for norm, delta in (("mean", 1.0), ("softmax", 50.0)):
        w = regulation_weights(mixed_similarity(cos), norm=norm, delta=delta)
        assert torch.isfinite(w).all()
        loss = regulated_contrastive_loss(logits, w, w.t())
        assert torch.isfinite(loss)
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.isfinite(grad).all()


def test_bfloat16_matches_float32():
    logits = random_logits(8, scale=14.0)
    w = regulation_weights(mixed_similarity(logits / 14.0))
    ref = regulated_contrastive_loss(logits, w, w.t())
    low = regulated_contrastive_loss(logits.bfloat16(), w.bfloat16(), w.t().bfloat16())
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(ref.item(), rel=2e-2)


def test_regulation_lowers_the_push_on_a_false_negative():
    # The gradient pushing a near-duplicate negative away is smaller under SRCL than under InfoNCE.
    emb = torch.nn.functional.normalize(torch.randn(6, 16), dim=-1)
    emb[1] = torch.nn.functional.normalize(emb[0] + 0.05 * torch.randn(16), dim=-1)
    cos = emb @ emb.t()
    logits = (cos / 0.07).requires_grad_(True)
    w = regulation_weights(mixed_similarity(cos))
    (g_srcl,) = torch.autograd.grad(anchor_contrastive_loss(logits, w), logits)
    (g_info,) = torch.autograd.grad(anchor_contrastive_loss(logits), logits)
    assert 0 < g_srcl[0, 1] < g_info[0, 1]


# ---------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="square"):
        regulated_contrastive_loss(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="2-D"):
        regulated_contrastive_loss(torch.zeros(3))
    with pytest.raises(ValueError, match="weights have shape"):
        regulated_contrastive_loss(torch.zeros(3, 3), torch.ones(2, 2))
    with pytest.raises(ValueError, match="norm"):
        regulation_weights(torch.ones(3, 3), norm="max")
    with pytest.raises(ValueError, match="delta"):
        regulation_weights(torch.ones(3, 3), delta=-1.0)
    with pytest.raises(ValueError, match="> 0"):
        regulation_weights(-torch.ones(3, 3))
    with pytest.raises(ValueError, match="more anchors"):
        regulation_weights(torch.ones(3, 2))
