"""The peer objectives of the false-negative benchmark against hand-computed values and independent references:
Soft-InfoNCE, the debiased and hard-negative losses, SigLIP's sigmoid loss, multi-positive targets, label smoothing."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from configuration_sisc import SiscConfig
from modeling_sisc import (
    SiscModel,
    anchor_contrastive_loss,
    debiased_contrastive_loss,
    hard_negative_weights,
    sigmoid_pairwise_loss,
    soft_infonce_weights,
    target_distribution,
)
from sisc_train.data.pairs import caption_id
from tests.test_modeling import tiny_config


def random_logits(n=5, seed=0, scale=5.0):
    g = torch.Generator().manual_seed(seed)
    return scale * (torch.rand(n, n, generator=g) * 2 - 1)


def logsumexp(values):
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


# ---------------------------------------------------------------- Soft-InfoNCE


def test_soft_infonce_weights_by_hand():
    cos = torch.tensor([[0.9, 0.8, 0.1], [0.2, 0.7, 0.6], [0.3, 0.0, 0.5]])
    weights = soft_infonce_weights(cos.exp(), alpha=1.5, temperature=0.1, min_weight=0.1)
    for i in range(3):
        others = [j for j in range(3) if j != i]
        norm = sum(math.exp(cos[i, k].item() / 0.1) for k in others)
        for j in others:
            q = math.exp(cos[i, j].item() / 0.1) / norm
            expected = max((1 - 1.5 * q) / (1 - 1.5 / 2), 0.1)
            assert weights[i, j].item() == pytest.approx(expected, rel=1e-5)
        assert weights[i, i] == 1.0
    # row 0: q = (0.99909, 0.00091) over its negatives (cos 0.8, 0.1) -> (1 - 1.5 q) / 0.25 = (-2.0 -> 0.1, 3.9945)
    assert weights[0, 1].item() == pytest.approx(0.1) and weights[0, 2].item() == pytest.approx(3.9945, abs=1e-4)


def test_soft_infonce_weights_mean_one_before_clipping_and_alpha_zero_is_infonce():
    similarity = random_logits(6, scale=1.0).exp()
    weights = soft_infonce_weights(similarity, alpha=0.5, temperature=1.0, min_weight=0.0)
    off = ~torch.eye(6, dtype=torch.bool)
    assert torch.allclose(weights[off].view(6, 5).mean(dim=1), torch.ones(6), atol=1e-6)
    assert torch.equal(soft_infonce_weights(similarity, alpha=0.0), torch.ones(6, 6))


def test_soft_infonce_weights_ignored_pairs_and_too_large_alpha():
    similarity = random_logits(4, scale=1.0).exp()
    ignore = torch.zeros(4, 4, dtype=torch.bool)
    ignore[0, 1] = True
    weights = soft_infonce_weights(similarity, alpha=1.0, ignore_mask=ignore)
    assert weights[0, 1] == 0.0 and weights[0, 0] == 1.0
    with pytest.raises(ValueError, match="smaller than every anchor's number of negatives"):
        soft_infonce_weights(similarity, alpha=3.0)


# ---------------------------------------------------------------- debiased and hard-negative losses


def test_debiased_with_no_prior_and_no_beta_is_infonce():
    logits = random_logits(6)
    assert torch.allclose(debiased_contrastive_loss(logits, logit_floor=-5.0), F.cross_entropy(logits, torch.arange(6)))


def test_debiased_loss_by_hand():
    logits = torch.tensor([[3.0, 0.5, 0.2], [0.0, 1.0, 3.0], [-1.0, 0.5, 0.2]])
    prior, floor = 0.2, -5.0
    expected = []
    for i in range(3):
        negatives = [logits[i, j].item() for j in range(3) if j != i]
        positive = logits[i, i].item()
        ng = (sum(math.exp(v) for v in negatives) / 2 - prior * math.exp(positive)) / (1 - prior)
        ng = max(ng, math.exp(floor))
        expected.append(-math.log(math.exp(positive) / (math.exp(positive) + 2 * ng)))
    got = debiased_contrastive_loss(logits, logit_floor=floor, prior=prior)
    assert got.item() == pytest.approx(sum(expected) / 3, rel=1e-5)
    # row 0's correction exceeds its negatives' mass: its Ng is the floor e^-5
    assert sum(math.exp(v) for v in (0.5, 0.2)) / 2 < prior * math.exp(3.0)


def test_hard_negative_loss_by_hand():
    logits = torch.tensor([[1.0, 2.0, -1.0, 0.0], [0.5, 0.3, 0.2, 0.1], [0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0]])
    beta, prior, floor = 0.7, 0.1, -4.0
    weights = hard_negative_weights(logits, beta)
    expected = []
    for i in range(4):
        negatives = [logits[i, j].item() for j in range(4) if j != i]
        imp = [math.exp(beta * v) for v in negatives]
        w = [3 * x / sum(imp) for x in imp]
        for j, value in zip([j for j in range(4) if j != i], w):
            assert weights[i, j].item() == pytest.approx(value, rel=1e-5)
        positive = logits[i, i].item()
        ng = (sum(wk * math.exp(v) for wk, v in zip(w, negatives)) / 3 - prior * math.exp(positive)) / (1 - prior)
        ng = max(ng, math.exp(floor))
        expected.append(math.log(math.exp(positive) + 3 * ng) - positive)
    got = debiased_contrastive_loss(logits, logit_floor=floor, prior=prior, beta=beta)
    assert got.item() == pytest.approx(sum(expected) / 4, rel=1e-5)


def test_hard_negative_weights_up_weight_the_hardest_and_beta_zero_is_uniform():
    logits = random_logits(5)
    weights = hard_negative_weights(logits, beta=1.0)
    off = ~torch.eye(5, dtype=torch.bool)
    assert torch.allclose(weights[off].view(5, 4).mean(dim=1), torch.ones(5), atol=1e-5)
    for i in range(5):
        row = [(logits[i, j].item(), weights[i, j].item()) for j in range(5) if j != i]
        assert max(row)[1] == max(w for _, w in row)  # the most similar negative has the largest weight
    assert torch.equal(hard_negative_weights(logits, beta=0.0), torch.ones(5, 5))


def test_debiased_gradient_matches_a_float64_reference():
    logits = random_logits(4, seed=3).double().requires_grad_()
    floor = -5.0

    def reference(l):
        total = 0
        for i in range(4):
            neg = torch.stack([l[i, j] for j in range(4) if j != i])
            w = (torch.softmax(0.5 * neg.detach(), 0) * 3)
            ng = ((w * neg.exp()).mean() - 0.1 * l[i, i].exp()) / 0.9
            ng = torch.clamp(ng, min=math.exp(floor))
            total = total - torch.log(l[i, i].exp() / (l[i, i].exp() + 3 * ng))
        return total / 4

    reference(logits).backward()
    expected = logits.grad.clone()
    logits.grad = None
    debiased_contrastive_loss(logits, logit_floor=floor, prior=0.1, beta=0.5).backward()
    assert torch.allclose(logits.grad.double(), expected, atol=1e-5)


def test_debiased_loss_is_finite_at_large_logit_scales():
    logits = random_logits(6, scale=900.0).requires_grad_()
    loss = debiased_contrastive_loss(logits, logit_floor=-900.0, prior=0.1, beta=1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


# ---------------------------------------------------------------- SigLIP


def test_sigmoid_loss_by_hand():
    logits = torch.tensor([[3.0, -1.0], [0.5, 2.0]])
    bias = -1.0
    expected = 0.0
    for i in range(2):
        for j in range(2):
            z = 1.0 if i == j else -1.0
            expected -= math.log(1 / (1 + math.exp(-z * (logits[i, j].item() + bias))))
    assert sigmoid_pairwise_loss(logits, bias).item() == pytest.approx(expected / 2, rel=1e-6)


def test_sigmoid_loss_ignored_and_extra_positive_pairs():
    logits = random_logits(4)
    ignore = torch.zeros(4, 4, dtype=torch.bool)
    ignore[0, 1] = True
    positive = torch.zeros(4, 4, dtype=torch.bool)
    positive[2, 3] = True
    terms = F.logsigmoid(torch.where(torch.eye(4, dtype=torch.bool) | positive, 1.0, -1.0) * (logits - 2.0))
    terms[0, 1] = 0.0
    got = sigmoid_pairwise_loss(logits, -2.0, ignore_mask=ignore, positive_mask=positive)
    assert got.item() == pytest.approx(-terms.sum().item() / 4, rel=1e-6)


# ---------------------------------------------------------------- multi-positive targets and label smoothing


def test_label_smoothing_matches_torch_cross_entropy():
    logits = random_logits(5)
    targets = target_distribution(torch.zeros(5, 5, dtype=torch.bool), None, 0.1)
    expected = F.cross_entropy(logits, torch.arange(5), label_smoothing=0.1)
    assert anchor_contrastive_loss(logits, None, targets).item() == pytest.approx(expected.item(), rel=1e-6)


def test_multi_positive_loss_by_hand():
    logits = torch.tensor([[2.0, 1.5, 0.0], [1.0, 3.0, -1.0], [0.5, 0.5, 0.5]])
    positives = torch.zeros(3, 3, dtype=torch.bool)
    positives[0, 1] = positives[1, 0] = True  # e.g. the same caption text
    targets = target_distribution(positives)
    expected = 0.0
    for i, row_positives in enumerate([[0, 1], [0, 1], [2]]):
        norm = logsumexp(logits[i].tolist())
        expected -= sum(logits[i, j].item() - norm for j in row_positives) / len(row_positives)
    assert anchor_contrastive_loss(logits, None, targets).item() == pytest.approx(expected / 3, rel=1e-6)


def test_smoothing_skips_dropped_candidates():
    positives = torch.zeros(3, 3, dtype=torch.bool)
    kept = torch.ones(3, 3, dtype=torch.bool)
    kept[0, 2] = False
    targets = target_distribution(positives, kept, 0.2)
    assert targets[0].tolist() == pytest.approx([0.8 + 0.1, 0.1, 0.0])
    assert targets.sum(dim=1).tolist() == pytest.approx([1.0, 1.0, 1.0])


# ---------------------------------------------------------------- through the model


def embeddings(n=6, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (F.normalize(torch.randn(n, dim, generator=g), dim=-1), F.normalize(torch.randn(n, dim, generator=g), dim=-1))


@pytest.mark.parametrize("loss, knobs", [
    ("soft_infonce", {"soft_infonce_alpha": 0.0}),
    ("debiased", {"debiased_prior": 0.0}),
    ("hard_negatives", {"debiased_prior": 0.0, "hard_negative_beta": 0.0}),
    ("multi_positive", {}),
])
def test_peer_objectives_reduce_to_infonce(loss, knobs):
    image, text = embeddings()
    reference = SiscModel(tiny_config(contrastive_loss="infonce")).contrastive_loss(image, text)[0]
    model = SiscModel(tiny_config(contrastive_loss=loss, **knobs))
    model.load_state_dict(SiscModel(tiny_config(contrastive_loss="infonce")).state_dict())
    # multi-positive without shared images or captions has only the diagonal as positives
    got = model.contrastive_loss(image, text, image_ids=torch.arange(6), caption_ids=torch.arange(6))[0]
    assert got.item() == pytest.approx(reference.item(), rel=1e-5)


def test_multi_positive_model_uses_shared_captions_and_images():
    image, text = embeddings()
    model = SiscModel(tiny_config(contrastive_loss="multi_positive"))
    image_ids = torch.tensor([0, 0, 1, 2, 3, 4])  # pairs 0 and 1 share an image
    caption_ids = torch.tensor([7, 8, 9, 9, 10, 11])  # pairs 2 and 3 share a caption text
    loss = model.contrastive_loss(image, text, image_ids=image_ids, caption_ids=caption_ids)[0]
    positives = torch.zeros(6, 6, dtype=torch.bool)
    positives[0, 1] = positives[1, 0] = positives[2, 3] = positives[3, 2] = True
    logits = model.logit_scale_value() * text @ image.t()
    expected = (anchor_contrastive_loss(logits, None, target_distribution(positives))
                + anchor_contrastive_loss(logits.t(), None, target_distribution(positives.t()))) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_siglip_model_has_a_learned_bias_and_its_loss():
    model = SiscModel(tiny_config(contrastive_loss="siglip"))
    assert model.logit_bias.item() == -10.0 and model.logit_bias.requires_grad
    assert SiscModel(tiny_config()).logit_bias is None  # the other objectives' checkpoints are unchanged
    image, text = embeddings()
    loss, weights, _ = model.contrastive_loss(image, text)
    expected = sigmoid_pairwise_loss(model.logit_scale_value() * text @ image.t(), -10.0)
    assert weights is None and loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert model.logit_bias.grad is not None


def test_siglip_from_a_checkpoint_of_another_objective_starts_its_bias_at_the_init(tmp_path):
    SiscModel(tiny_config(contrastive_loss="infonce")).save_pretrained(tmp_path)
    model = SiscModel.from_pretrained(tmp_path, contrastive_loss="siglip", siglip_bias_init=-7.0)
    assert model.logit_bias.item() == -7.0


@pytest.mark.parametrize("settings, message", [
    ({"contrastive_loss": "siglip", "label_smoothing": 0.1}, "label_smoothing"),
    ({"label_smoothing": 1.0}, "label_smoothing"),
    ({"contrastive_loss": "siglip", "use_momentum_distillation": True}, "use_momentum_distillation"),
    ({"soft_infonce_alpha": -1.0}, "soft_infonce_alpha"),
    ({"soft_infonce_temperature": 0.0}, "soft_infonce_temperature"),
    ({"debiased_prior": 1.0}, "debiased_prior"),
    ({"hard_negative_beta": float("nan")}, "hard_negative_beta"),
    ({"contrastive_loss": "triplet"}, "contrastive_loss"),
])
def test_config_rejects_impossible_peer_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        SiscConfig(**settings)


def test_caption_ids_identify_equal_texts():
    assert caption_id("A red  circle") == caption_id("a red circle ") != caption_id("a red square")
    assert 0 <= caption_id("x") < 2**63


# ---------------------------------------------------------------- through the trainer


@pytest.mark.parametrize("loss, extra", [
    ("soft_infonce", ["--soft_infonce_alpha", "2"]),
    ("debiased", ["--debiased_prior", "0.2"]),
    ("hard_negatives", ["--hard_negative_beta", "0.5"]),
    ("siglip", []),
    ("multi_positive", ["--label_smoothing", "0.1"]),
])
def test_pretraining_with_each_peer_objective(loss, extra, tmp_path):
    from PIL import Image

    from sisc_train.tasks import pretraining as pretrain
    from tests.test_pretrain import TINY

    data = tmp_path / "pairs.jsonl"
    rows = []  # 4 caption texts shared by 4 images each: multi-positive has extra positives
    for i in range(16):
        Image.new("RGB", (20, 20), (10 * i, 200 - 10 * i, 30)).save(tmp_path / f"img{i}.png")
        rows.append({"image": f"img{i}.png", "caption": [f"a colour {i % 4}", f"shade {i}"]})
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = pretrain.main(["--dataset", str(data), "--output_dir", str(tmp_path / "out"), *TINY, "--loss", loss,
                            *extra, "--max_steps", "2"])
    assert result["global_step"] == 2
    config = SiscConfig.from_pretrained(tmp_path / "out")
    assert config.contrastive_loss == loss
    if extra:
        assert getattr(config, extra[0].lstrip("-")) == float(extra[1])
    assert math.isfinite(json.load(open(tmp_path / "out" / "results.json"))["last_logs"]["loss"])
