"""ALBEF extras (momentum encoder, regulated queue, soft targets) and the training diagnostics."""

import copy

import pytest
import torch

from configuration_sisc import SiscConfig
from modeling_sisc import SiscForPreTraining, anchor_contrastive_loss
from sisc_train.tasks.pretraining import regulation_diagnostics


def tiny_config(**kwargs):
    config = SiscConfig.small(vocab_size=60, image_size=16, hidden_size=32, embed_dim=16, **kwargs)
    config.vision_config.patch_size = 8
    return config


def batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 60, (n, 9), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3
    return {
        "input_ids": ids,
        "pixel_values": torch.randn(n, 3, 16, 16, generator=g),
        "attention_mask": torch.ones_like(ids),
        "image_ids": torch.arange(n) + 100 * seed,
    }


def test_momentum_zero_without_queue_matches_plain_itc():
    # momentum 0 makes the momentum encoder an exact copy, no queue and no distillation: the same ITC value
    torch.manual_seed(0)
    plain = SiscForPreTraining(tiny_config()).eval()
    with_momentum = SiscForPreTraining(
        tiny_config(use_momentum_distillation=True, momentum=0.0, queue_size=0, distill_alpha=0.0)
    ).eval()
    with_momentum.load_state_dict(plain.state_dict(), strict=False)
    with_momentum.momentum_encoder.update(with_momentum.sisc, 0.0)
    inputs = batch()
    torch.manual_seed(1)
    a = plain(**inputs).loss_itc
    torch.manual_seed(1)
    b = with_momentum(**inputs).loss_itc
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_queue_fills_regulates_and_survives_save(tmp_path):
    torch.manual_seed(0)
    model = SiscForPreTraining(tiny_config(use_momentum_distillation=True, queue_size=10)).train()
    momentum_before = copy.deepcopy(model.momentum_encoder.visual_projection.weight)
    shapes = []
    for step in range(3):
        out = model(**batch(seed=step), teacher_image_embeds=torch.randn(6, 16), teacher_text_embeds=torch.randn(6, 16), alpha=0.5)
        out.loss.backward()
        model.sisc.visual_projection.weight.data.add_(0.1)  # a parameter change the EMA must follow, slowly
        shapes.append(tuple(out.weights_t2i.shape))
        assert torch.isfinite(out.loss)
    assert shapes == [(6, 6), (6, 12), (6, 16)]  # in-batch + queued candidates (queue capped at 10)
    assert int(model.momentum_encoder.queue_len) == 10
    moved = (model.momentum_encoder.visual_projection.weight - momentum_before).abs().max()
    assert 0 < moved < 0.1  # EMA followed, but not all the way
    assert not any(p.requires_grad for p in model.momentum_encoder.parameters())
    # queued negatives are regulated like in-batch ones: their weights average 1 with the rest of the row
    w = out.weights_t2i
    off = torch.ones_like(w, dtype=torch.bool)
    off[torch.arange(6), torch.arange(6)] = False
    assert torch.allclose(w[off].view(6, -1).mean(1), torch.ones(6), atol=1e-5)
    model.save_pretrained(tmp_path)
    reloaded = SiscForPreTraining.from_pretrained(tmp_path)
    assert int(reloaded.momentum_encoder.queue_len) == 10
    torch.testing.assert_close(reloaded.momentum_encoder.image_queue, model.momentum_encoder.image_queue)


def test_soft_targets_generalise_the_one_hot_loss():
    logits = torch.randn(4, 7)
    weights = torch.rand(4, 7) + 0.5
    one_hot = torch.zeros(4, 7)
    one_hot[torch.arange(4), torch.arange(4)] = 1
    torch.testing.assert_close(anchor_contrastive_loss(logits, weights, one_hot), anchor_contrastive_loss(logits, weights))
    # a dropped column (weight 0) gets no target mass and gives no NaN
    weights[0, 5] = 0.0
    soft = torch.softmax(torch.randn(4, 7), dim=1)
    assert torch.isfinite(anchor_contrastive_loss(logits, weights, soft))


def test_queue_needs_momentum():
    with pytest.raises(ValueError, match="queue_size"):
        tiny_config(queue_size=8)


def test_regulation_diagnostics():
    weights = torch.tensor([[1.0, 0.1, 1.9, 0.0], [0.6, 1.0, 1.4, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 1.5, 1.5, 1.0]])
    relevance = torch.tensor([[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 1]], dtype=torch.bool)
    image_ids = torch.tensor([0, 1, 2, 0])  # pairs 0 and 3 show one image: not negatives
    stats = regulation_diagnostics(weights, relevance, image_ids)
    negatives = [0.1, 1.9, 0.6, 1.4, 1.0, 1.0, 1.0, 1.5, 1.5, 1.0]
    assert stats["weights/mean"] == pytest.approx(sum(negatives) / 10)
    assert stats["weights/frac_below_0.2"] == pytest.approx(0.1)
    assert stats["weights/frac_below_0.7"] == pytest.approx(0.2)
    # true false negatives among the 10 negative pairs: (0,1) with weight 0.1 and (2,3) with weight 1.0
    assert stats["false_negatives/fraction_of_pairs"] == pytest.approx(0.2)
    assert stats["false_negatives/frac_weight_below_0.5"] == pytest.approx(0.5)
    assert regulation_diagnostics(None) == {}
