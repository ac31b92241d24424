"""Tests of the SISC model classes on tiny random-weight configs (CPU, well under a minute in all).

Covered: SiscModel outputs and contrastive loss (CLIP equality for InfoNCE, teacher-regulated weights),
SiscForPreTraining (loss composition, ITM hard negatives, MLM masking, gradients, tied MLM decoder), checkpoints
(files, auto_map, reload in a fresh process where the repository is not importable, cross-class loading), the
zero-shot-image-classification pipeline, clear errors on bad inputs and configs, gradient checkpointing,
initialisation from ViT / CLIP / BERT folders, and eager vs SDPA attention.
"""

import copy
import json
import math
import os
import subprocess

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import modeling_sisc
from tests.helpers.fresh_process import python_without_repo
from configuration_sisc import SiscConfig
from modeling_sisc import (
    SiscForPreTraining,
    SiscModel,
    bag_of_words_cross_entropy,
    mixed_similarity,
    regulated_contrastive_loss,
    regulation_weights,
)

VOCAB = 100
PAD, CLS, SEP, MASK = 0, 2, 3, 4
IMAGE = 32


def tiny_config(vocab_size=VOCAB, image_size=IMAGE, dropout=0.0, **kwargs):
    """2 heads, hidden 32, 2 layers per tower; dropout 0 so that train-mode runs are deterministic given a seed."""
    bert = dict(
        vocab_size=vocab_size,
        pad_token_id=PAD,
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    vision = dict(
        model_type="vit",
        image_size=image_size,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    kwargs.setdefault("embed_dim", 16)
    return SiscConfig(
        vision_config=vision,
        text_config={**bert, "num_hidden_layers": 2},
        fusion_encoder_config={**bert, "num_hidden_layers": 2},
        cls_token_id=CLS,
        sep_token_id=SEP,
        mask_token_id=MASK,
        **kwargs,
    )


def make_text(batch, length=10, seed=0, vocab_size=VOCAB):
    """[CLS] words [SEP] [PAD]...: random lengths (>= 3 tokens), row 0 full length. Returns (input_ids, attention_mask)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab_size, (batch, length), generator=g)
    lengths = torch.randint(3, length + 1, (batch,), generator=g)
    lengths[0] = length
    positions = torch.arange(length).expand(batch, length)
    mask = (positions < lengths[:, None]).long()
    ids[:, 0] = CLS
    ids[torch.arange(batch), lengths - 1] = SEP
    ids[mask == 0] = PAD
    return ids, mask


def make_pixels(batch, size=IMAGE, seed=0):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def base_model():
    torch.manual_seed(0)
    return SiscModel(tiny_config()).eval()


@pytest.fixture(scope="module")
def pretraining_model():
    torch.manual_seed(1)
    return SiscForPreTraining(tiny_config()).eval()


def pairs(batch, seed=0):
    ids, mask = make_text(batch, seed=seed)
    return dict(input_ids=ids, attention_mask=mask, pixel_values=make_pixels(batch, seed=seed))


# --------------------------------------------------------------------------------------------------------------
# 1. SiscModel
# --------------------------------------------------------------------------------------------------------------


def test_small_config_builds_and_runs():
    config = SiscConfig.small(vocab_size=VOCAB, image_size=IMAGE, hidden_size=32)
    model = SiscModel(config).eval()
    with torch.no_grad():
        out = model(**pairs(2), return_loss=True)
    assert out.logits_per_image.shape == (2, 2) and torch.isfinite(out.loss)


def test_forward_shapes_normalisation_and_features(base_model):
    ids, mask = make_text(5, seed=1)
    pixels = make_pixels(3, seed=1)
    with torch.no_grad():
        out = base_model(input_ids=ids, attention_mask=mask, pixel_values=pixels)
        image_features = base_model.get_image_features(pixels)
        text_features = base_model.get_text_features(ids, mask)
    embed_dim = base_model.config.embed_dim
    assert out.loss is None
    assert out.logits_per_image.shape == (3, 5)
    assert out.logits_per_text.shape == (5, 3)
    torch.testing.assert_close(out.logits_per_text, out.logits_per_image.t())
    assert out.image_embeds.shape == (3, embed_dim) and out.text_embeds.shape == (5, embed_dim)
    torch.testing.assert_close(out.image_embeds.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(out.text_embeds.norm(dim=-1), torch.ones(5))
    torch.testing.assert_close(image_features, out.image_embeds)
    torch.testing.assert_close(text_features, out.text_embeds)
    # logits are the cosine similarities scaled by 1 / temperature (initially 1 / 0.07)
    scale = base_model.logit_scale_value()
    torch.testing.assert_close(scale, torch.tensor(1 / 0.07))
    torch.testing.assert_close(out.logits_per_text, scale * out.text_embeds @ out.image_embeds.t())
    # the tuple form holds the same tensors
    with torch.no_grad():
        as_tuple = base_model(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_dict=False)
    torch.testing.assert_close(as_tuple[0], out.logits_per_image)


def test_return_loss_is_finite_and_weights_are_regulated(base_model):
    with torch.no_grad():
        out = base_model(**pairs(4), return_loss=True)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.weights_t2i.shape == out.weights_i2t.shape == (4, 4)
    off_diagonal = ~torch.eye(4, dtype=torch.bool)
    # mean 1 over each anchor's negatives, weight 1 on the positive
    torch.testing.assert_close(out.weights_t2i[off_diagonal].view(4, 3).mean(dim=1), torch.ones(4))
    torch.testing.assert_close(out.weights_i2t.diagonal(), torch.ones(4))
    expected = regulated_contrastive_loss(out.logits_per_text, out.weights_t2i, out.weights_i2t)
    torch.testing.assert_close(out.loss, expected)


def test_infonce_loss_equals_transformers_clip_loss():
    from transformers.models.clip import modeling_clip

    clip_loss = getattr(modeling_clip, "clip_loss", None) or modeling_clip.image_text_contrastive_loss
    torch.manual_seed(0)
    model = SiscModel(tiny_config(contrastive_loss="infonce")).eval()
    with torch.no_grad():
        out = model(**pairs(4), return_loss=True)
    assert out.weights_t2i is None and out.weights_i2t is None
    torch.testing.assert_close(out.loss, clip_loss(out.logits_per_text))


def test_teacher_embeddings_give_the_teacher_regulated_weights(base_model):
    batch = pairs(4)
    g = torch.Generator().manual_seed(5)
    teacher_image = torch.randn(4, 8, generator=g)  # any width: only the teacher's cosine similarities are used
    teacher_text = torch.randn(4, 8, generator=g)
    with torch.no_grad():
        out = base_model(**batch, return_loss=True, teacher_image_embeds=teacher_image,
                         teacher_text_embeds=teacher_text, alpha=1.0)
    student_cos = out.text_embeds @ out.image_embeds.t()
    teacher_cos = F.normalize(teacher_text, dim=-1) @ F.normalize(teacher_image, dim=-1).t()
    similarity = mixed_similarity(student_cos, teacher_cos, 1.0)
    torch.testing.assert_close(out.weights_t2i, regulation_weights(similarity))
    torch.testing.assert_close(out.weights_i2t, regulation_weights(similarity.t()))
    torch.testing.assert_close(out.loss, regulated_contrastive_loss(out.logits_per_text, out.weights_t2i, out.weights_i2t))
    # alpha = 1: the weights come from the teacher alone
    torch.testing.assert_close(out.weights_t2i, regulation_weights(teacher_cos.exp()))

    with pytest.raises(ValueError, match="alpha"):
        base_model(**batch, return_loss=True, teacher_image_embeds=teacher_image, teacher_text_embeds=teacher_text)

    # the precomputed teacher similarity matrix gives exactly what the embeddings give
    with torch.no_grad():
        from_embeds = base_model(**batch, return_loss=True, teacher_image_embeds=teacher_image,
                                 teacher_text_embeds=teacher_text, alpha=0.3)
        from_matrix = base_model(**batch, return_loss=True, teacher_similarity=teacher_cos, alpha=0.3)
    torch.testing.assert_close(from_matrix.loss, from_embeds.loss)
    torch.testing.assert_close(from_matrix.weights_t2i, from_embeds.weights_t2i)
    torch.testing.assert_close(from_matrix.weights_i2t, from_embeds.weights_i2t)
    # and alpha = 0.3 really mixes: the weights differ from the teacher-only ones
    assert not torch.allclose(from_embeds.weights_t2i, out.weights_t2i)


def _fusion_inputs(rows, images=8, length=12, seed=0):
    """Text states of `rows` captions of mixed lengths (row 0 full), `images` images' patch states, a row -> image index."""
    g = torch.Generator().manual_seed(seed)
    _, mask = make_text(rows, length=length, seed=seed)
    text = torch.randn(rows, length, 32, generator=g)
    image_states = torch.randn(images, 5, 32, generator=g)
    index = torch.randint(images, (rows,), generator=g)
    return text, mask, image_states, index


@pytest.mark.parametrize("rows", [6, 40])  # one pass; two length groups
def test_fusion_with_an_image_index_equals_fusing_the_gathered_images(base_model, rows):
    text, mask, image_states, index = _fusion_inputs(rows)
    image_mask = torch.ones(8, 5, dtype=torch.long)
    image_mask[3, 2:] = 0
    with torch.no_grad():
        for kwargs, gathered in (({}, {}), ({"image_attention_mask": image_mask}, {"image_attention_mask": image_mask[index]})):
            indexed = base_model.fuse(text, mask, image_states, image_index=index, **kwargs)
            reference = base_model.fuse(text, mask, image_states[index], **gathered)
            real = mask.bool()  # padding positions may differ (see the next test)
            torch.testing.assert_close(indexed[real], reference[real], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="image_index must give one image per text row"):
        base_model.fuse(text, mask, image_states, image_index=index[:-1])
    with torch.no_grad():  # and the ITM scores of texts paired with shared images (re-ranking's top-k)
        shared = base_model.get_itm_logits(attention_mask=mask, text_hidden_states=text, image_hidden_states=image_states,
                                           image_index=index)
        aligned = base_model.get_itm_logits(attention_mask=mask, text_hidden_states=text,
                                            image_hidden_states=image_states[index])
    torch.testing.assert_close(shared, aligned, atol=1e-5, rtol=1e-5)


def test_fusion_runs_mixed_lengths_as_two_groups_with_the_one_pass_states_and_gradients():
    torch.manual_seed(0)
    model = SiscModel(tiny_config())  # train mode, dropout 0
    text, mask, image_states, index = _fusion_inputs(40, length=12, seed=1)
    mask[1:] = 0
    mask[1:, :3] = 1  # row 0 has 12 tokens, every other row 3: the short group is cut to 3 positions
    groups = modeling_sisc.length_groups(mask)
    assert [length for _, length in groups] == [3, 12] and sorted(torch.cat([g for g, _ in groups]).tolist()) == list(range(40))

    def run(fuse):
        states = text.clone().requires_grad_(True)
        images = image_states.clone().requires_grad_(True)
        out = fuse(states, images)
        (out * mask[..., None]).square().sum().backward()
        return out, states.grad, images.grad

    grouped = run(lambda states, images: model.fuse(states, mask, images[index]))
    one_pass = run(lambda states, images: model.fusion_model._fuse(states, mask, images[index], None, None))
    real = mask.bool()
    torch.testing.assert_close(grouped[0][real], one_pass[0][real], atol=1e-5, rtol=1e-5)
    short_rows = groups[0][0]
    assert grouped[0][short_rows, 3:].abs().max() == 0  # beyond the short group's length: zeros
    for got, want in zip(grouped[1:], one_pass[1:]):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_length_groups_split_only_when_a_group_gets_shorter():
    length_groups = modeling_sisc.length_groups
    full = torch.ones(40, 6, dtype=torch.long)
    assert length_groups(full) is None  # nothing to cut
    assert length_groups(None) is None
    short = full.clone()
    short[:, 4:] = 0
    assert length_groups(short[:31]) is None  # too few rows to split
    left_padded = short.flip(1)  # tokens at the end: every row still needs all 6 positions
    assert length_groups(left_padded) is None
    mixed = full.clone()
    mixed[:20, 2:] = 0
    mixed[25] = 0  # an all-padding row counts as full length
    groups = length_groups(mixed)
    assert [length for _, length in groups] == [2, 6]
    assert sorted(groups[0][0].tolist()) == list(range(20))


def test_similarities_stay_float32_under_bf16_autocast(base_model):
    torch.manual_seed(0)
    a, b = F.normalize(torch.randn(5, 16), dim=-1), F.normalize(torch.randn(7, 16), dim=-1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cos = modeling_sisc.cosine_matrix(a, b)
        out = base_model(**pairs(4), return_loss=True)
    assert cos.dtype == torch.float32
    torch.testing.assert_close(cos, a @ b.t())
    assert out.logits_per_text.dtype == torch.float32 and torch.isfinite(out.loss)


# --------------------------------------------------------------------------------------------------------------
# 2. SiscForPreTraining
# --------------------------------------------------------------------------------------------------------------


def test_pretraining_loss_is_the_weighted_sum_and_itm_layout():
    torch.manual_seed(2)
    model = SiscForPreTraining(tiny_config(itc_loss_weight=0.5, itm_loss_weight=2.0, mlm_loss_weight=0.25)).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        out = model(**pairs(4))
    for name in ("loss", "loss_itc", "loss_itm", "loss_mlm"):
        assert torch.isfinite(getattr(out, name)), name
    torch.testing.assert_close(out.loss, 0.5 * out.loss_itc + 2.0 * out.loss_itm + 0.25 * out.loss_mlm)
    assert out.itm_logits.shape == (12, 2)
    assert out.itm_labels.tolist() == [1] * 4 + [0] * 8
    torch.testing.assert_close(out.loss_itm, F.cross_entropy(out.itm_logits, out.itm_labels))
    assert out.mlm_logits.shape == (4, 10, VOCAB)
    assert out.logits_per_text.shape == (4, 4)


def test_negative_caption_loss_by_hand_and_in_the_total():
    torch.manual_seed(2)
    model = SiscForPreTraining(tiny_config(negative_caption_loss_weight=0.5)).eval()
    batch = pairs(4)
    negative_ids, negative_mask = make_text(4, length=8, seed=5)
    negative_mask[2] = 0  # pair 2 has no negative caption
    torch.manual_seed(0)
    with torch.no_grad():
        out = model(**batch, negative_input_ids=negative_ids, negative_attention_mask=negative_mask)
        image = model.sisc.get_image_features(batch["pixel_values"])
        text = model.sisc.get_text_features(batch["input_ids"], batch["attention_mask"])
        rows = [0, 1, 3]
        negative = model.sisc.get_text_features(negative_ids[rows], negative_mask[rows])
    scale = model.sisc.logit_scale_value().item()
    expected = sum(
        -math.log(1 / (1 + math.exp(scale * (image[r] @ negative[k] - image[r] @ text[r]).item()))) for k, r in enumerate(rows)
    ) / 3
    assert out.loss_negative_caption.item() == pytest.approx(expected, rel=1e-4)
    torch.testing.assert_close(out.loss, out.loss_itc + out.loss_itm + out.loss_mlm + 0.5 * out.loss_negative_caption)


def test_negative_caption_loss_is_off_by_default_needed_when_on_and_teaches_the_image_tower():
    torch.manual_seed(2)
    batch = pairs(3)
    negative_ids, negative_mask = make_text(3, length=8, seed=5)
    plain = SiscForPreTraining(tiny_config()).eval()
    assert plain(**batch, negative_input_ids=negative_ids).loss_negative_caption is None  # weight 0: not computed
    model = SiscForPreTraining(tiny_config(negative_caption_loss_weight=1.0, itc_loss_weight=0.0, itm_loss_weight=0.0,
                                           mlm_loss_weight=0.0))
    with pytest.raises(ValueError, match="negative_caption"):
        model(**batch)
    none = model(**batch, negative_input_ids=negative_ids, negative_attention_mask=torch.zeros_like(negative_mask))
    assert none.loss_negative_caption.item() == 0.0
    model(**batch, negative_input_ids=negative_ids, negative_attention_mask=negative_mask).loss.backward()
    assert model.sisc.vision_model.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="negative_input_ids has 2 rows"):
        model(**batch, negative_input_ids=negative_ids[:2])
    with pytest.raises(ValueError, match="negative_caption_loss_weight"):
        tiny_config(negative_caption_loss_weight=-1.0)


def test_word_prediction_loss_by_hand_and_in_the_total():
    torch.manual_seed(2)
    model = SiscForPreTraining(tiny_config(word_prediction_loss_weight=0.5)).eval()
    ids = torch.tensor([[CLS, 7, 8, 7, SEP, PAD], [CLS, 9, SEP, PAD, PAD, PAD], [CLS, SEP, PAD, PAD, PAD, PAD]])
    mask = (ids != PAD).long()
    pixels = make_pixels(3)
    torch.manual_seed(0)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels)
        summary = model.sisc.image_summary(model.sisc.encode_image(pixels)[0])
        log_probs = torch.log_softmax(model.word_head(summary), dim=-1)
    # caption 0 uses words 7 and 8 (7 twice: a bag of words counts it once), caption 1 word 9, caption 2 none: left out
    expected = (-(log_probs[0, 7] + log_probs[0, 8]) / 2 - log_probs[1, 9]) / 2
    assert out.loss_word_prediction.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(out.loss, out.loss_itc + out.loss_itm + out.loss_mlm + 0.5 * out.loss_word_prediction)


def test_bag_of_words_cross_entropy_leaves_out_texts_without_words():
    logits = torch.randn(2, 5, requires_grad=True)
    targets = torch.tensor([[0.0, 1.0, 1.0, 0.0, 0.0], [0.0] * 5])
    expected = -(torch.log_softmax(logits[0], dim=-1)[[1, 2]]).mean()
    torch.testing.assert_close(bag_of_words_cross_entropy(logits, targets), expected)
    none = bag_of_words_cross_entropy(logits, torch.zeros(2, 5))
    assert none.item() == 0.0 and none.requires_grad  # a zero that keeps the graph connected (DDP)


def test_word_prediction_is_off_by_default_and_teaches_the_image_tower():
    torch.manual_seed(2)
    plain = SiscForPreTraining(tiny_config())
    assert plain.word_head is None and plain(**pairs(2)).loss_word_prediction is None
    model = SiscForPreTraining(tiny_config(word_prediction_loss_weight=1.0, itc_loss_weight=0.0, itm_loss_weight=0.0,
                                           mlm_loss_weight=0.0))
    model(**pairs(3)).loss.backward()
    assert model.sisc.vision_model.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="word_prediction_loss_weight"):
        tiny_config(word_prediction_loss_weight=-1.0)


def test_word_prediction_only_runs_the_image_tower_alone():
    torch.manual_seed(2)
    model = SiscForPreTraining(tiny_config(word_prediction_loss_weight=3.0)).eval()
    batch = pairs(3)
    with torch.no_grad():
        full = model(**batch)
    only = model(**batch, word_prediction_only=True)
    torch.testing.assert_close(only.loss, full.loss_word_prediction)  # the loss unweighted
    assert only.loss_itc is None and only.logits_per_text is None
    only.loss.backward()
    with_grad = {name for name, param in model.named_parameters() if param.grad is not None}
    assert with_grad and all(name.startswith(("sisc.vision_model.", "word_head.")) for name in with_grad)
    with pytest.raises(ValueError, match="needs the word head"):
        SiscForPreTraining(tiny_config())(**batch, word_prediction_only=True)


def test_hard_negatives_never_pick_a_positive_on_a_crafted_similarity(pretraining_model):
    image_ids = torch.tensor([0, 0, 1, 2])  # pairs 0 and 1 show the same image
    not_negative = torch.eye(4, dtype=torch.bool) | (image_ids[:, None] == image_ids[None, :])
    similarity = torch.zeros(4, 4)
    similarity[0, 1] = similarity[1, 0] = 50.0  # the same-image pair is by far the most similar
    similarity[2, 3] = math.log(8.0)  # row 2: candidates 0, 1, 3 with odds 1 : 1 : 8
    torch.manual_seed(0)
    picks = {row: [] for row in range(4)}
    for _ in range(1000):
        rows, columns = pretraining_model._sample_hard_negatives(similarity, not_negative)
        assert rows.tolist() == [0, 1, 2, 3]
        for row, column in zip(rows.tolist(), columns.tolist()):
            picks[row].append(column)
    assert set(picks[0]) == {2, 3} and set(picks[1]) == {2, 3}
    assert set(picks[2]) <= {0, 1, 3} and set(picks[3]) <= {0, 1, 2}
    assert picks[2].count(3) / 1000 == pytest.approx(0.8, abs=0.05)  # in proportion to softmax(similarity)
    # a row without any negative is left out
    rows, columns = pretraining_model._sample_hard_negatives(similarity[:2, :2], not_negative[:2, :2])
    assert rows.numel() == 0 and columns.numel() == 0


def test_itm_random_negatives_mix_a_uniform_draw_into_the_hard_one():
    torch.manual_seed(1)
    model = SiscForPreTraining(tiny_config(itm_random_negatives=0.5)).eval()
    not_negative = torch.eye(4, dtype=torch.bool)
    similarity = torch.zeros(4, 4)
    similarity[0, 1] = 50.0  # row 0: a hard negative draw always picks column 1
    torch.manual_seed(0)
    picks = [model._sample_hard_negatives(similarity, not_negative)[1][0].item() for _ in range(3000)]
    # half the time the hard draw (column 1), half a uniform one over columns 1, 2, 3
    assert set(picks) == {1, 2, 3}
    assert picks.count(1) / 3000 == pytest.approx(0.5 + 0.5 / 3, abs=0.03)
    assert picks.count(2) / 3000 == pytest.approx(0.5 / 3, abs=0.03)
    model.config.itm_random_negatives = 1.0  # uniform alone, still never a positive
    picks = [model._sample_hard_negatives(similarity, not_negative)[1][0].item() for _ in range(3000)]
    assert set(picks) == {1, 2, 3} and picks.count(1) / 3000 == pytest.approx(1 / 3, abs=0.03)


def test_itm_random_share_schedule_and_its_checks():
    config = tiny_config(itm_random_negatives=1.0, itm_random_negatives_end=0.0, itm_curriculum_steps=10)
    assert [config.itm_random_share_at(s) for s in (0, 5, 10, 50)] == pytest.approx([1.0, 0.5, 0.0, 0.0])
    assert tiny_config(itm_random_negatives=0.3).itm_random_share_at(7) == pytest.approx(0.3)  # no curriculum
    for kwargs, field in ((dict(itm_random_negatives_end=1.5), "itm_random_negatives_end"),
                          (dict(itm_curriculum_steps=-1), "itm_curriculum_steps")):
        with pytest.raises(ValueError, match=field):
            tiny_config(**kwargs)


def test_forward_itm_share_overrides_the_config(monkeypatch):
    torch.manual_seed(0)
    model = SiscForPreTraining(tiny_config()).eval()
    shares = []
    original = model._sample_hard_negatives
    monkeypatch.setattr(model, "_sample_hard_negatives", lambda s, m, share=None: shares.append(share) or original(s, m, share))
    with torch.no_grad():
        model(**pairs(4), itm_random_negatives=0.75)
        model(**pairs(4))
    assert shares == [0.75, 0.75, None, None]  # both directions; None: the config's share


def test_hard_negatives_in_forward_respect_image_ids(pretraining_model, monkeypatch):
    calls = []
    original = pretraining_model._sample_hard_negatives

    def spy(similarity, not_negative, share=None):
        rows, columns = original(similarity, not_negative, share)
        calls.append((rows, columns, not_negative.clone()))
        return rows, columns

    monkeypatch.setattr(pretraining_model, "_sample_hard_negatives", spy)
    image_ids = torch.tensor([0, 0, 1, 2])
    batch = pairs(4)
    torch.manual_seed(0)
    with torch.no_grad():
        for _ in range(5):
            out = pretraining_model(**batch, image_ids=image_ids)
            assert out.itm_logits.shape == (12, 2)
    assert len(calls) == 10  # one text->image and one image->text draw per forward
    for rows, columns, not_negative in calls:
        assert not not_negative[rows, columns].any()
        for row, column in zip(rows.tolist(), columns.tolist()):
            assert column != row
            if row in (0, 1):
                assert column not in (0, 1)


def _spy_on_negative_draws(model, monkeypatch) -> list:
    """Records (similarity, not_negative) of each ITM negative draw: text rows first, then image rows."""
    calls = []
    original = model._sample_hard_negatives

    def spy(similarity, not_negative, share=None):
        calls.append((similarity.detach().clone(), not_negative.clone()))
        return original(similarity, not_negative, share)

    monkeypatch.setattr(model, "_sample_hard_negatives", spy)
    return calls


def test_itm_image_rows_see_the_false_negative_mask_transposed(pretraining_model, monkeypatch):
    calls = _spy_on_negative_draws(pretraining_model, monkeypatch)
    known = torch.zeros(4, 4, dtype=torch.bool)
    known[0, 2] = True  # caption 0 is true of image 2 (not caption 2 of image 0)
    with torch.no_grad():
        pretraining_model(**pairs(4), false_negative_mask=known)
    (_, text_rows), (_, image_rows) = calls
    assert text_rows[0, 2] and not text_rows[2, 0]  # caption 0 never gets image 2 as a negative
    assert image_rows[2, 0] and not image_rows[0, 2]  # image 2 never gets caption 0 as a negative


def test_itm_can_skip_the_negatives_scored_at_or_above_the_pair(monkeypatch):
    torch.manual_seed(0)
    model = SiscForPreTraining(tiny_config(itm_skip_negatives_above_pair=True)).eval()
    calls = _spy_on_negative_draws(model, monkeypatch)
    with torch.no_grad():
        model(**pairs(6))
    eye = torch.eye(6, dtype=torch.bool)
    for similarity, not_negative in calls:  # rows: the anchors; the diagonal: each anchor's own pair
        above = similarity >= similarity.diagonal()[:, None]
        assert (above & ~eye).any() and (~above).any()  # the random model ranks some negatives above their pair
        assert torch.equal(not_negative, above | eye)
    assert not SiscForPreTraining(tiny_config()).config.itm_skip_negatives_above_pair  # off by default


def test_batch_of_one_has_no_negatives_and_finite_losses(pretraining_model):
    torch.manual_seed(0)
    with torch.no_grad():
        out = pretraining_model(**pairs(1))
    assert out.itm_logits.shape == (1, 2) and out.itm_labels.tolist() == [1]
    for name in ("loss", "loss_itc", "loss_itm", "loss_mlm"):
        assert torch.isfinite(getattr(out, name)), name


def test_mask_tokens_skips_special_tokens_and_padding(pretraining_model):
    ids, mask = make_text(512, length=24, seed=3)
    # padding that is not the [PAD] token must not be masked either
    ids[(mask == 0) & (torch.arange(24) % 2 == 0)] = 50
    torch.manual_seed(0)
    masked_ids, labels = pretraining_model.mask_tokens(ids, mask)
    special = (ids == PAD) | (ids == CLS) | (ids == SEP) | (mask == 0)
    predicted = labels != -100
    assert not (predicted & special).any()
    assert torch.equal(labels[predicted], ids[predicted])
    assert torch.equal(masked_ids[~predicted], ids[~predicted])
    share = predicted.sum().item() / (~special).sum().item()
    assert share == pytest.approx(0.15, abs=0.02)
    replaced = (masked_ids == MASK) & predicted
    assert replaced.sum().item() / predicted.sum().item() == pytest.approx(0.8, abs=0.05)
    unchanged = (masked_ids == ids) & predicted
    assert 0.05 < unchanged.sum().item() / predicted.sum().item() < 0.2  # 10% kept (+ random draws of the same id)


def test_explicit_mlm_inputs_are_used(pretraining_model):
    batch = pairs(3)
    ids = batch["input_ids"]
    mlm_input_ids = ids.clone()
    mlm_labels = torch.full_like(ids, -100)
    mlm_input_ids[:, 1] = MASK
    mlm_labels[:, 1] = ids[:, 1]
    with torch.no_grad():
        torch.manual_seed(0)
        first = pretraining_model(**batch, mlm_input_ids=mlm_input_ids, mlm_labels=mlm_labels)
        torch.manual_seed(123)  # other ITM draws, but no masking of our own
        second = pretraining_model(**batch, mlm_input_ids=mlm_input_ids, mlm_labels=mlm_labels)
        unmasked = pretraining_model(**batch, mlm_input_ids=ids, mlm_labels=mlm_labels)
    torch.testing.assert_close(first.mlm_logits, second.mlm_logits)
    torch.testing.assert_close(first.loss_mlm, second.loss_mlm)
    torch.testing.assert_close(first.loss_mlm, F.cross_entropy(first.mlm_logits[:, 1], ids[:, 1]))
    assert not torch.allclose(unmasked.mlm_logits, first.mlm_logits)  # the given masked ids are what is encoded
    with pytest.raises(ValueError, match="mlm_labels"):
        pretraining_model(**batch, mlm_input_ids=mlm_input_ids)
    # nothing to predict: a zero loss, still part of the graph
    with torch.no_grad():
        none = pretraining_model(**batch, mlm_input_ids=ids, mlm_labels=torch.full_like(ids, -100))
    assert none.loss_mlm.item() == 0.0


def test_backward_reaches_every_parameter():
    torch.manual_seed(3)
    model = SiscForPreTraining(tiny_config(dropout=0.1)).train()
    torch.manual_seed(0)
    model(**pairs(4)).loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert missing == []
    not_finite = [name for name, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not_finite == []


def test_mlm_decoder_is_tied_and_stays_tied_after_reload(pretraining_model, tmp_path):
    def assert_tied(model):
        decoder = model.mlm_head.predictions.decoder
        assert decoder.weight is model.sisc.text_model.embeddings.word_embeddings.weight
        assert decoder.weight is model.get_input_embeddings().weight
        assert decoder.bias is model.mlm_head.predictions.bias

    assert_tied(pretraining_model)
    pretraining_model.save_pretrained(tmp_path)
    reloaded = SiscForPreTraining.from_pretrained(tmp_path)
    assert_tied(reloaded)
    torch.testing.assert_close(
        reloaded.mlm_head.predictions.decoder.weight, pretraining_model.sisc.text_model.embeddings.word_embeddings.weight
    )


# --------------------------------------------------------------------------------------------------------------
# 3. Checkpoints: files, fresh-process Auto* reload, cross-class loading
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, base_model, pretraining_model):
    folder = tmp_path_factory.mktemp("checkpoints")
    base_model.save_pretrained(folder / "base")
    pretraining_model.save_pretrained(folder / "pretraining")
    inputs = dict(pairs(3, seed=7))
    inputs["pixel_values"] = inputs["pixel_values"][:2]  # 2 images, 3 texts
    torch.save(inputs, folder / "inputs.pt")
    return folder, inputs


def logits_of(sisc, inputs):
    with torch.no_grad():
        logits = sisc(**inputs).logits_per_image
        itm = sisc.get_itm_logits(
            inputs["input_ids"][:2], inputs["attention_mask"][:2], inputs["pixel_values"][:2]
        )  # exercises the fusion encoder
    return logits, itm


@pytest.mark.parametrize("name", ["base", "pretraining"])
def test_checkpoint_files_and_auto_map(checkpoints, name):
    folder = checkpoints[0] / name
    files = set(os.listdir(folder))
    assert {"model.safetensors", "config.json", "configuration_sisc.py", "modeling_sisc.py"} <= files
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "sisc"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_sisc.SiscConfig",
        "AutoModel": "modeling_sisc.SiscModel",
        "AutoModelForPreTraining": "modeling_sisc.SiscForPreTraining",
        "AutoModelForZeroShotImageClassification": "modeling_sisc.SiscModel",
    }
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for module in ("configuration_sisc.py", "modeling_sisc.py"):
        with open(os.path.join(repo, module)) as original:
            assert (folder / module).read_text() == original.read()


FRESH_PROCESS = r"""
import sys, torch
folder = sys.argv[1]
try:
    import modeling_sisc  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("the repository must not be importable in this process")
from transformers import AutoConfig, AutoModel, AutoModelForPreTraining
inputs = torch.load(folder + "/inputs.pt")
out = {}
config = AutoConfig.from_pretrained(folder + "/pretraining", trust_remote_code=True)
out["config"] = (type(config).__name__, type(config).__module__, config.embed_dim, config.contrastive_loss,
                 config.vision_config.image_size, config.fusion_encoder_config.num_hidden_layers)
for name in ("base", "pretraining"):
    for auto in (AutoModel, AutoModelForPreTraining):
        model = auto.from_pretrained(folder + "/" + name, trust_remote_code=True).eval()
        sisc = model.sisc if hasattr(model, "sisc") else model
        with torch.no_grad():
            logits = sisc(**inputs).logits_per_image
            itm = sisc.get_itm_logits(inputs["input_ids"][:2], inputs["attention_mask"][:2], inputs["pixel_values"])
        out[name, auto.__name__] = dict(
            cls=type(model).__name__, module=type(model).__module__, logits=logits, itm=itm,
            state={k: v.clone() for k, v in model.state_dict().items()},
        )
torch.save(out, folder + "/fresh_out.pt")
"""


def test_fresh_process_auto_classes_reload_the_same_model(checkpoints, base_model, pretraining_model, tmp_path):
    folder, inputs = checkpoints
    python, env = python_without_repo()
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    result = subprocess.run(
        [*python, "-c", FRESH_PROCESS, str(folder)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    out = torch.load(folder / "fresh_out.pt")
    name, module, embed_dim, loss, image_size, fusion_layers = out["config"]
    assert name == "SiscConfig" and module.startswith("transformers_modules")
    assert (embed_dim, loss, image_size, fusion_layers) == (16, "srcl", IMAGE, 2)

    expected = {"base": logits_of(base_model, inputs), "pretraining": logits_of(pretraining_model.sisc, inputs)}
    for (name, auto), loaded in ((k, v) for k, v in out.items() if k != "config"):
        assert loaded["cls"] == ("SiscModel" if auto == "AutoModel" else "SiscForPreTraining")
        assert loaded["module"].startswith("transformers_modules")  # the checkpoint's copy of modeling_sisc.py
        torch.testing.assert_close(loaded["logits"], expected[name][0], msg=f"{name} as {auto}")
        torch.testing.assert_close(loaded["itm"], expected[name][1], msg=f"{name} as {auto}")
    # same class: every tensor comes back exactly
    for name, original in (("base", base_model), ("pretraining", pretraining_model)):
        auto = "AutoModel" if name == "base" else "AutoModelForPreTraining"
        state = out[name, auto]["state"]
        assert state.keys() == original.state_dict().keys()
        for key, value in original.state_dict().items():
            torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)


def test_cross_class_loading_in_process(checkpoints, base_model, pretraining_model):
    folder, inputs = checkpoints
    # a pretraining checkpoint loads as the base model (MLM head ignored) ...
    base_from_pretraining = SiscModel.from_pretrained(folder / "pretraining").eval()
    for got, want in zip(logits_of(base_from_pretraining, inputs), logits_of(pretraining_model.sisc, inputs)):
        torch.testing.assert_close(got, want)
    # ... and a base checkpoint as a pretraining model (fresh MLM head, tied to the loaded word embeddings)
    pretraining_from_base = SiscForPreTraining.from_pretrained(folder / "base").eval()
    for got, want in zip(logits_of(pretraining_from_base.sisc, inputs), logits_of(base_model, inputs)):
        torch.testing.assert_close(got, want)
    decoder = pretraining_from_base.mlm_head.predictions.decoder.weight
    assert decoder is pretraining_from_base.sisc.text_model.embeddings.word_embeddings.weight
    torch.testing.assert_close(decoder, base_model.text_model.embeddings.word_embeddings.weight)


# --------------------------------------------------------------------------------------------------------------
# 4. zero-shot-image-classification pipeline
# --------------------------------------------------------------------------------------------------------------


def _save_processor(folder, kind):
    """Save image processor + tokenizer into the checkpoint folder; returns (tokenizer, image_processor, vocab)."""
    if kind == "sisc_processor":
        from processing_sisc import build_default_processor

        processor = build_default_processor(image_size=IMAGE)
        processor.save_pretrained(folder)
        return processor.tokenizer, processor.image_processor, len(processor.tokenizer)
    from transformers import BertTokenizerFast, ViTImageProcessorPil
    from transformers.models.bert.tokenization_bert import load_vocab

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "this", "is", "a", "photo", "of", ".", "red", "green",
             "star", "square", "cat"]
    vocab_file = folder.parent / "vocab.txt"
    vocab_file.write_text("\n".join(words) + "\n")
    # transformers 5: `vocab_file=` is not read by the tokenizers-backed BertTokenizerFast; pass the vocab itself.
    tokenizer = BertTokenizerFast(vocab=load_vocab(str(vocab_file)), do_lower_case=True)
    image_processor = ViTImageProcessorPil(size={"height": IMAGE, "width": IMAGE}, image_mean=0.5, image_std=0.5)
    tokenizer.save_pretrained(folder)
    image_processor.save_pretrained(folder)
    return tokenizer, image_processor, len(words)


@pytest.mark.parametrize("kind", ["sisc_processor", "plain_tokenizer_and_image_processor"])
def test_zero_shot_pipeline(tmp_path, kind):
    """What the pipeline needs: a checkpoint folder holding the model (config.json whose auto_map has
    AutoModelForZeroShotImageClassification -> SiscModel, written by `save_pretrained`) and the tokenizer and
    image processor files (either `SiscProcessor.save_pretrained` or a plain tokenizer + ViT image processor).
    `pipeline("zero-shot-image-classification", model=folder, trust_remote_code=True)` then finds all three;
    no `tokenizer=` / `image_processor=` arguments are needed."""
    from transformers import pipeline

    folder = tmp_path / "checkpoint"
    folder.mkdir()
    tokenizer, image_processor, vocab_size = _save_processor(folder, kind)
    torch.manual_seed(0)
    model = SiscModel(tiny_config(vocab_size=vocab_size)).eval()
    model.save_pretrained(folder)

    classifier = pipeline("zero-shot-image-classification", model=str(folder), trust_remote_code=True)
    assert type(classifier.model).__name__ == "SiscModel"
    image = Image.new("RGB", (50, 40), (20, 200, 20))
    labels = ["a green square", "a red star", "a cat"]
    result = classifier(image, candidate_labels=labels)
    assert len(result) == 3 and {r["label"] for r in result} == set(labels)
    assert sum(r["score"] for r in result) == pytest.approx(1.0, abs=1e-5)

    # the scores are the softmax of the model's logits_per_image on the pipeline's default prompt
    text = tokenizer([f"This is a photo of {label}." for label in labels], padding=True, return_tensors="pt")
    pixels = image_processor(images=[image], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = model(**text, pixel_values=pixels).logits_per_image.softmax(dim=-1)[0]
    scores = {r["label"]: r["score"] for r in result}
    torch.testing.assert_close(torch.tensor([scores[label] for label in labels]), expected, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------------------------
# 5. Clear errors on bad inputs and invalid configs
# --------------------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_value_errors(base_model, pretraining_model):
    ids, mask = make_text(3, seed=4)
    pixels = make_pixels(3, seed=4)
    with pytest.raises(ValueError, match="3 images and 2 texts"):
        base_model(input_ids=ids[:2], attention_mask=mask[:2], pixel_values=pixels, return_loss=True)
    with pytest.raises(ValueError, match="3 images and 2 texts"):
        pretraining_model(input_ids=ids[:2], attention_mask=mask[:2], pixel_values=pixels)
    with torch.no_grad():  # without a loss, different numbers of images and texts are fine
        assert base_model(input_ids=ids[:2], attention_mask=mask[:2], pixel_values=pixels).logits_per_image.shape == (3, 2)

    empty = mask.clone()
    empty[1] = 0
    with pytest.raises(ValueError, match=r"empty text .*\[1\]"):
        base_model(input_ids=ids, attention_mask=empty, pixel_values=pixels)
    with pytest.raises(ValueError, match="empty text"):
        pretraining_model(input_ids=ids, attention_mask=empty, pixel_values=pixels)

    with pytest.raises(ValueError, match=r"pixel_values must be a \(batch, 3, height, width\)"):
        base_model(input_ids=ids, attention_mask=mask, pixel_values=pixels[0])
    with pytest.raises(ValueError, match="1 channels, the model expects 3"):
        base_model(input_ids=ids, attention_mask=mask, pixel_values=pixels[:, :1])
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        base_model(input_ids=ids, attention_mask=mask, pixel_values=make_pixels(3, size=48))
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        base_model.get_image_features(make_pixels(3, size=48))
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        pretraining_model(input_ids=ids, attention_mask=mask, pixel_values=make_pixels(3, size=48))


def test_out_of_range_ids_long_text_and_non_finite_pixels_are_named(base_model, pretraining_model):
    ids, mask = make_text(3, seed=6)
    pixels = make_pixels(3, seed=6)
    bad_ids = ids.clone()
    bad_ids[1, 2] = VOCAB + 7
    for model in (base_model, pretraining_model):
        with pytest.raises(ValueError, match=rf"token ids in \[0, {VOCAB + 7}\], outside the vocabulary \[0, {VOCAB}\)"):
            model(input_ids=bad_ids, attention_mask=mask, pixel_values=pixels)
    bad_ids[1, 2] = -1
    with pytest.raises(ValueError, match=r"token ids in \[-1, "):
        base_model.get_text_features(bad_ids, mask)
    long_ids, long_mask = make_text(2, length=40, seed=6)  # 40 > max_position_embeddings 32
    with pytest.raises(ValueError, match=r"40 tokens long, more than the 32 positions .*max_position_embeddings"):
        base_model.get_text_features(long_ids, long_mask)
    broken = pixels.clone()
    broken[0, 0, :2, :2] = float("nan")
    broken[2, 1, 0, 0] = float("inf")
    for model in (base_model, pretraining_model):
        with pytest.raises(ValueError, match=r"pixel_values hold 5 non-finite values \(NaN or inf\)"):
            model(input_ids=ids, attention_mask=mask, pixel_values=broken)


def test_interpolate_pos_encoding_accepts_larger_images(base_model, pretraining_model):
    ids, mask = make_text(2, seed=5)
    large = make_pixels(2, size=48, seed=5)
    with torch.no_grad():
        out = base_model(input_ids=ids, attention_mask=mask, pixel_values=large, interpolate_pos_encoding=True,
                         return_loss=True)
        assert out.vision_model_output.last_hidden_state.shape[1] == 1 + (48 // 8) ** 2
        torch.manual_seed(0)
        pre = pretraining_model(input_ids=ids, attention_mask=mask, pixel_values=large, interpolate_pos_encoding=True)
    assert out.logits_per_image.shape == (2, 2) and torch.isfinite(out.loss)
    assert torch.isfinite(pre.loss)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"contrastive_loss": "triplet"}, "contrastive_loss"),
        ({"weight_norm": "max"}, "weight_norm"),
        ({"delta": -1.0}, "delta"),
        ({"delta": 0.0}, "delta"),
        ({"alpha_start": 1.5}, "alpha_start"),
        ({"itm_random_negatives": 1.5}, "itm_random_negatives"),
        ({"embed_dim": 0}, "embed_dim"),
        ({"fusion_encoder_config": {"hidden_size": 64, "num_attention_heads": 2}}, "fusion_encoder_config"),
        ({"text_config": {"hidden_size": -8, "num_attention_heads": 2}, "fusion_encoder_config": {"hidden_size": -8}},
         "text_config.hidden_size"),
        ({"text_config": {"num_hidden_layers": 0}}, "text_config.num_hidden_layers"),
        ({"fusion_encoder_config": {"num_attention_heads": -1}}, "fusion_encoder_config.num_attention_heads"),
        ({"fusion_encoder_config": {"intermediate_size": 0}}, "fusion_encoder_config.intermediate_size"),
        ({"text_config": {"max_position_embeddings": 0}}, "text_config.max_position_embeddings"),
        ({"text_config": {"vocab_size": 0}}, "text_config.vocab_size"),
        ({"vision_config": {"model_type": "vit", "image_size": 0}}, "vision_config.image_size"),
        ({"vision_config": {"model_type": "vit", "patch_size": -16}}, "vision_config.patch_size"),
        ({"vision_config": {"model_type": "vit", "hidden_size": 0}}, "vision_config.hidden_size"),
        ({"vision_config": {"model_type": "vit", "num_attention_heads": 5}}, "vision_config.num_attention_heads"),
    ],
)
def test_invalid_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"SiscConfig\.{field}\b"):
        SiscConfig(**kwargs)


def test_invalid_setting_made_after_construction_is_caught_on_save(tmp_path):
    config = tiny_config()
    config.weight_norm = "max"
    with pytest.raises(ValueError, match="weight_norm"):
        config.save_pretrained(tmp_path)


# --------------------------------------------------------------------------------------------------------------
# 6. Gradient checkpointing
# --------------------------------------------------------------------------------------------------------------


def _checkpointing_case(name):
    """(model in train mode, a function computing its loss) for one model class; the ITM hard negatives and MLM
    masks are drawn under a fixed seed, so that two runs compute the same loss."""
    from modeling_sisc import SiscForQuestionAnswering, SiscForVisualReasoning

    torch.manual_seed(4)
    batch = pairs(4, seed=6)
    if name == "SiscModel":
        model = SiscModel(tiny_config())  # the ITC loss and the ITM logits (which run the fusion layers)
        return model.train(), lambda: model(**batch, return_loss=True).loss + model.get_itm_logits(**batch).logsumexp(-1).mean()
    if name == "SiscForPreTraining":
        model = SiscForPreTraining(tiny_config())
        mlm_input_ids, mlm_labels = model.mask_tokens(batch["input_ids"], batch["attention_mask"])

        def loss():
            torch.manual_seed(11)  # the same ITM hard negatives
            return model(**batch, mlm_input_ids=mlm_input_ids, mlm_labels=mlm_labels).loss

        return model.train(), loss
    if name == "SiscForQuestionAnswering":
        model = SiscForQuestionAnswering(tiny_config(vqa_answers=["a", "b", "c"]))
        answers, answer_mask = make_text(3, length=4, seed=8)
        labels = torch.tensor([[1.0, 0, 0], [0, 0.6, 0], [0, 0, 1], [0.3, 1, 0]])
        return model.train(), lambda: model(**batch, labels=labels, answer_list_input_ids=answers,
                                            answer_list_attention_mask=answer_mask).loss
    model = SiscForVisualReasoning(tiny_config())
    right = make_pixels(4, seed=9)
    return model.train(), lambda: model(**batch, pixel_values_2=right, labels=torch.tensor([0, 1, 1, 0])).loss


@pytest.mark.filterwarnings("ignore:.*gradient_checkpointing.*:FutureWarning")  # renamed activation_* in v5
@pytest.mark.parametrize("name", ["SiscModel", "SiscForPreTraining", "SiscForQuestionAnswering", "SiscForVisualReasoning"])
def test_gradient_checkpointing_recomputes_every_layer_and_keeps_the_gradients(name):
    from transformers.modeling_layers import GradientCheckpointingLayer

    model, compute_loss = _checkpointing_case(name)
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    assert len(layers) >= 6  # 2 ViT + 2 BERT + 2 fusion (+ the VQA answer decoder's layers)
    runs = [0] * len(layers)  # how often each layer's computation ran: its first sub-module's forward calls
    for index, layer in enumerate(layers):
        next(layer.children()).register_forward_hook(lambda *_, i=index: runs.__setitem__(i, runs[i] + 1))

    def run():
        model.zero_grad(set_to_none=True)
        runs[:] = [0] * len(layers)
        loss = compute_loss()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, list(runs)

    loss_plain, grads_plain, runs_plain = run()
    model.activation_checkpointing_enable()
    assert model.is_activation_checkpointing and all(layer.gradient_checkpointing for layer in layers)
    loss_ckpt, grads_ckpt, runs_ckpt = run()
    # every layer ran once more than without checkpointing: its forward was recomputed in the backward pass
    assert all(ckpt == plain + plain for ckpt, plain in zip(runs_ckpt, runs_plain)) and min(runs_plain) > 0, (runs_plain, runs_ckpt)
    torch.testing.assert_close(loss_ckpt, loss_plain)
    assert grads_ckpt.keys() == grads_plain.keys() and len(grads_plain) > 20
    for n in grads_plain:
        torch.testing.assert_close(grads_ckpt[n], grads_plain[n], rtol=1e-4, atol=1e-6, msg=n)


# --------------------------------------------------------------------------------------------------------------
# 7. Initialisation from pretrained ViT / CLIP / BERT folders
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder_folders(tmp_path_factory):
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        CLIPConfig,
        CLIPModel,
        CLIPVisionConfig,
        CLIPVisionModel,
        ViTConfig,
        ViTModel,
    )

    folder = tmp_path_factory.mktemp("encoders")
    torch.manual_seed(0)
    tower = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    vit = ViTModel(ViTConfig(image_size=16, patch_size=8, **tower), add_pooling_layer=False)
    vit.save_pretrained(folder / "vit")
    clip_vision = CLIPVisionModel(CLIPVisionConfig(image_size=16, patch_size=8, **tower))
    clip_vision.save_pretrained(folder / "clip_vision")
    clip = CLIPModel(CLIPConfig(vision_config=dict(image_size=16, patch_size=8, **tower),
                                text_config=dict(vocab_size=50, bos_token_id=0, eos_token_id=1, pad_token_id=1, **tower),
                                projection_dim=16))
    clip.save_pretrained(folder / "clip")
    bert = BertForMaskedLM(BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                      intermediate_size=64))
    bert.save_pretrained(folder / "bert")
    return folder, {"vit": vit, "clip_vision": clip_vision, "clip": clip.vision_model}, bert


SPECIAL_IDS = dict(cls_token_id=2, sep_token_id=3, mask_token_id=4, embed_dim=16)  # the tiny BERT has 60 tokens


def assert_same_weights(got, want, label):
    assert set(want) <= set(got), f"{label}: missing {sorted(set(want) - set(got))}"
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=f"{label}: {key}")


def test_from_pretrained_encoders_copies_vit_and_bert(encoder_folders):
    folder, vision, bert = encoder_folders
    model = SiscForPreTraining.from_pretrained_encoders(
        folder / "vit", folder / "bert", num_text_layers=2, num_fusion_layers=2, **SPECIAL_IDS
    )
    assert_same_weights(model.sisc.vision_model.state_dict(), vision["vit"].state_dict(), "vision")
    bert_state = bert.bert.state_dict()
    text_state = model.sisc.text_model.state_dict()
    fusion_state = model.sisc.fusion_model.state_dict()
    for key, value in bert_state.items():
        if key.startswith("embeddings."):
            torch.testing.assert_close(text_state[key], value, rtol=0, atol=0, msg=key)
    for index in range(4):
        prefix = f"encoder.layer.{index}."
        layer = {k[len(prefix):]: v for k, v in bert_state.items() if k.startswith(prefix)}
        assert layer
        if index < 2:
            assert_same_weights({k[len(prefix):]: v for k, v in text_state.items() if k.startswith(prefix)}, layer,
                                f"text layer {index}")
        else:
            fusion_prefix = f"layer.{index - 2}."
            fused = {k[len(fusion_prefix):]: v for k, v in fusion_state.items() if k.startswith(fusion_prefix)}
            assert_same_weights(fused, layer, f"fusion layer {index - 2}")  # self-attention, intermediate, output
            assert any(k.startswith("crossattention.") for k in fused)
    assert_same_weights(model.mlm_head.state_dict(), bert.cls.state_dict(), "mlm head")
    assert model.mlm_head.predictions.decoder.weight is model.sisc.text_model.embeddings.word_embeddings.weight
    assert model.config.text_config.num_hidden_layers == 2 and model.config.fusion_encoder_config.num_hidden_layers == 2

    # the initialised model trains: a forward/backward on its own 16 px input and 60-token vocabulary
    ids, mask = make_text(2, vocab_size=60)
    torch.manual_seed(0)
    model(input_ids=ids, attention_mask=mask, pixel_values=make_pixels(2, size=16)).loss.backward()


@pytest.mark.parametrize("vision_folder", ["clip_vision", "clip"])
def test_from_pretrained_encoders_with_a_clip_folder(encoder_folders, vision_folder):
    folder, vision, _ = encoder_folders
    model = SiscModel.from_pretrained_encoders(folder / vision_folder, folder / "bert", **SPECIAL_IDS)
    assert model.config.vision_config.model_type == "clip_vision_model"
    assert model.config.text_config.num_hidden_layers == 2 and model.config.fusion_encoder_config.num_hidden_layers == 2
    assert type(model.vision_model).__name__ == "CLIPVisionModel"
    assert_same_weights(model.vision_model.state_dict(), vision[vision_folder].state_dict(), "clip vision")
    ids, mask = make_text(2, vocab_size=60)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, pixel_values=make_pixels(2, size=16), return_loss=True)
    assert out.logits_per_image.shape == (2, 2) and torch.isfinite(out.loss)


def test_from_pretrained_encoders_rejects_too_many_layers(encoder_folders):
    folder = encoder_folders[0]
    with pytest.raises(ValueError, match="3 text \\+ 2 fusion layers from a 4-layer BERT"):
        SiscModel.from_pretrained_encoders(folder / "vit", folder / "bert", num_text_layers=3, num_fusion_layers=2,
                                           **SPECIAL_IDS)
    with pytest.raises(ValueError, match="cannot take"):
        SiscModel.from_pretrained_encoders(folder / "vit", folder / "bert", num_text_layers=0, **SPECIAL_IDS)


# --------------------------------------------------------------------------------------------------------------
# 8. Attention implementations
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["from_config", "config_attribute"])
def test_eager_and_sdpa_give_the_same_logits(base_model, via):
    models = {}
    for implementation in ("eager", "sdpa"):
        config = copy.deepcopy(base_model.config)  # one config per model: the kernel choice lives on the config
        if via == "from_config":
            model = SiscModel._from_config(config, attn_implementation=implementation)
        else:
            config._attn_implementation = implementation
            model = SiscModel(config)
        model.load_state_dict(base_model.state_dict())
        models[implementation] = model.eval()
    for implementation, model in models.items():
        assert model.text_model.config._attn_implementation == implementation
        assert model.vision_model.config._attn_implementation == implementation
        assert model.fusion_model.config._attn_implementation == implementation
    inputs = pairs(3, seed=8)  # padded captions: the attention masks matter
    eager, sdpa = (logits_of(models[k], inputs) for k in ("eager", "sdpa"))
    for got, want in zip(sdpa, eager):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------------------
# known false negatives (the benchmark's oracle) and switched-off losses


def test_false_negative_mask_removes_exactly_those_negatives(base_model):
    """The oracle: pairs marked as false negatives get weight 0, which equals the loss of the explicit weights."""
    batch = pairs(4, seed=3)
    with torch.no_grad():
        _, image_embeds = base_model.encode_image(batch["pixel_values"])
        _, text_embeds = base_model.encode_text(batch["input_ids"], batch["attention_mask"])
        known = torch.zeros(4, 4, dtype=torch.bool)
        known[0, 2] = known[3, 1] = True
        known[1, 1] = True  # a positive marked too: it must stay the positive
        loss, w_t2i, w_i2t = base_model.contrastive_loss(image_embeds, text_embeds, false_negative_mask=known)
        assert w_t2i[0, 2] == 0 and w_t2i[3, 1] == 0 and w_i2t[2, 0] == 0 and w_i2t[1, 3] == 0
        assert (w_t2i[~known & ~torch.eye(4, dtype=torch.bool)] > 0).all()
        logits = base_model.logit_scale_value() * text_embeds @ image_embeds.t()
        assert torch.allclose(loss, regulated_contrastive_loss(logits, w_t2i, w_i2t))
        with pytest.raises(ValueError, match="false_negative_mask has shape"):
            base_model.contrastive_loss(image_embeds, text_embeds, false_negative_mask=known[:3])


def test_zero_weight_losses_are_skipped():
    torch.manual_seed(0)
    model = SiscForPreTraining(tiny_config(itm_loss_weight=0.0, mlm_loss_weight=0.0)).eval()
    with torch.no_grad():
        out = model(**pairs(4))
    assert out.itm_logits is None and out.mlm_logits is None
    assert out.loss_itm.item() == 0 and out.loss_mlm.item() == 0 and torch.equal(out.loss, out.loss_itc)
