"""The image tower's convolutional stem (`SiscConfig.vision_conv_stem`) and image pooling (`image_pooling`): shapes,
initialisation, checkpoints, the summary vector each pooling reads, and the errors for settings that cannot work."""

import pytest
import torch

from configuration_sisc import SiscConfig
from modeling_sisc import ConvPatchStem, SiscForPreTraining, SiscModel, image_summary
from tests.test_modeling import IMAGE, make_pixels, pairs, tiny_config

STEM = [8, 16, 16]  # 3 stride-2 stages: patch 8, as tiny_config's


def test_conv_stem_gives_one_token_per_patch_and_he_initialisation():
    torch.manual_seed(0)
    plain, hybrid = SiscModel(tiny_config()), SiscModel(tiny_config(vision_conv_stem=STEM))
    projection = hybrid.vision_model.embeddings.patch_embeddings.projection
    assert isinstance(projection, ConvPatchStem)
    pixels = make_pixels(3)
    with torch.no_grad():
        tokens = hybrid.vision_model(pixel_values=pixels).last_hidden_state
        assert tokens.shape == plain.vision_model(pixel_values=pixels).last_hidden_state.shape == (3, 1 + (IMAGE // 8) ** 2, 32)
    first = projection[0]  # 3 -> 8 channels, 3x3: fan-in 27; He: std sqrt(2 / 27) = 0.27, not the transformer's 0.02
    assert 0.15 < first.weight.std().item() < 0.4 and torch.count_nonzero(first.bias) == 0
    assert projection.weight is projection[-1].weight  # ViTModel reads it for the input dtype


@pytest.mark.parametrize("pooling", ["cls", "max"])
def test_image_pooling_reads_the_documented_states(pooling):
    torch.manual_seed(0)
    model = SiscModel(tiny_config(image_pooling=pooling)).eval()
    pixels = make_pixels(2)
    with torch.no_grad():
        outputs, embedding = model.encode_image(pixels)
        states = outputs.last_hidden_state
        summary = states[:, 1:].amax(dim=1) if pooling == "max" else states[:, 0]
        expected = torch.nn.functional.normalize(model.visual_projection(summary), dim=-1)
    torch.testing.assert_close(embedding, expected)
    torch.testing.assert_close(model.get_image_features(pixels), expected)


def test_max_pooling_skips_every_prefix_token():
    states = torch.arange(2 * 5 * 3, dtype=torch.float).reshape(2, 5, 3).flip(1)  # prefix tokens hold the maxima
    outputs = type("Outputs", (), {"last_hidden_state": states, "pooler_output": None})()
    assert torch.equal(image_summary(outputs, "max", "vit"), states[:, 1:].amax(1))
    assert torch.equal(image_summary(outputs, "max", "deit"), states[:, 2:].amax(1))  # [CLS] + distillation token
    assert torch.equal(image_summary(outputs, "max", "siglip_vision_model"), states.amax(1))  # no [CLS]
    assert torch.equal(image_summary(outputs, "cls", "vit"), states[:, 0])


def test_hybrid_max_model_round_trips_and_trains(tmp_path):
    torch.manual_seed(0)
    model = SiscForPreTraining(tiny_config(vision_conv_stem=STEM, image_pooling="max"))
    batch = pairs(4)
    loss = model(**batch).loss
    loss.backward()
    stem_grads = [p.grad for p in model.sisc.vision_model.embeddings.patch_embeddings.projection.parameters()]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in stem_grads)
    model.eval().save_pretrained(tmp_path)
    reloaded = SiscForPreTraining.from_pretrained(tmp_path).eval()
    assert reloaded.config.vision_conv_stem == STEM and reloaded.config.image_pooling == "max"
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded.sisc.get_image_features(batch["pixel_values"]), model.sisc.get_image_features(batch["pixel_values"])
        )


def test_momentum_encoder_pools_like_the_model():
    torch.manual_seed(0)
    config = tiny_config(image_pooling="max", vision_conv_stem=STEM, use_momentum_distillation=True, queue_size=8)
    model = SiscForPreTraining(config).eval()
    batch = pairs(3)
    with torch.no_grad():
        momentum_image, _ = model.momentum_encoder.encode(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
        torch.testing.assert_close(momentum_image, model.sisc.get_image_features(batch["pixel_values"]))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(image_pooling="mean"), "image_pooling must be one of"),
        (dict(vision_conv_stem=[]), "non-empty list of positive channel counts"),
        (dict(vision_conv_stem=[8, 0, 8]), "non-empty list of positive channel counts"),
        (dict(vision_conv_stem="8,16"), "non-empty list of positive channel counts"),
        (dict(vision_conv_stem=[8, 16]), "patch_size must be 4, got 8"),
    ],
)
def test_bad_image_tower_settings_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**kwargs)


def test_conv_stem_is_refused_for_towers_without_a_patch_projection_and_for_pretrained_towers(tmp_path):
    clip_vision = dict(model_type="clip_vision_model", image_size=16, patch_size=8, hidden_size=32,
                       num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    with pytest.raises(ValueError, match="vision_conv_stem replaces the patch projection of"):
        SiscConfig(vision_config=clip_vision, text_config=dict(vocab_size=100, hidden_size=32, num_attention_heads=2),
                   fusion_encoder_config=dict(vocab_size=100, hidden_size=32, num_attention_heads=2),
                   vision_conv_stem=[8, 8, 8], cls_token_id=2, sep_token_id=3, mask_token_id=4)
    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64), add_pooling_layer=False).save_pretrained(tmp_path / "vit")
    with pytest.raises(ValueError, match="trained from scratch"):
        SiscModel.from_pretrained_encoders(vision_model_name_or_path=str(tmp_path / "vit"),
                                           config=tiny_config(vision_conv_stem=STEM))
