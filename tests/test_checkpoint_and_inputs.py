"""Hub-style checkpoints (fresh-process reload, pipeline) and clear errors on bad input."""

import json
import os
import subprocess

import pytest
import torch
from PIL import Image

from tests.helpers.fresh_process import python_without_repo
from configuration_sisc import SiscConfig
from modeling_sisc import SiscForPreTraining, SiscModel
from processing_sisc import build_default_processor


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random pretraining checkpoint with its processor, plus fixed inputs and the logits they give."""
    folder = tmp_path_factory.mktemp("ckpt")
    processor = build_default_processor(image_size=32)
    torch.manual_seed(0)
    config = SiscConfig.small(vocab_size=len(processor.tokenizer), image_size=32, hidden_size=32, embed_dim=16)
    model = SiscForPreTraining(config).eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    images = [Image.new("RGB", (40, 30), (200, 20, 20)), Image.new("RGB", (30, 40), (20, 20, 200))]
    inputs = processor(images=images, text=["a red square", "a blue circle", "two stars"], return_tensors="pt")
    torch.save(dict(inputs), folder / "inputs.pt")
    with torch.no_grad():
        logits = model.sisc(**inputs).logits_per_image
    return folder, model, inputs, logits


def test_checkpoint_files_and_auto_map(checkpoint):
    folder = checkpoint[0]
    names = set(os.listdir(folder))
    assert {"model.safetensors", "config.json", "configuration_sisc.py", "modeling_sisc.py", "processing_sisc.py"} <= names
    auto_map = json.load(open(folder / "config.json"))["auto_map"]
    assert auto_map["AutoConfig"] == "configuration_sisc.SiscConfig"
    assert auto_map["AutoModel"] == "modeling_sisc.SiscModel"
    assert auto_map["AutoModelForPreTraining"] == "modeling_sisc.SiscForPreTraining"
    assert auto_map["AutoModelForZeroShotImageClassification"] == "modeling_sisc.SiscModel"


FRESH_PROCESS = r"""
import sys, torch
from transformers import AutoConfig, AutoModel, AutoModelForPreTraining, AutoProcessor
folder = sys.argv[1]
assert not any(p.endswith("main") and "sisc" in p for p in sys.path)
try:
    import modeling_sisc  # noqa: F401
    raise SystemExit("the repository must not be importable here")
except ImportError:
    pass
config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
assert type(config).__name__ == "SiscConfig"
inputs = torch.load(folder + "/inputs.pt")
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
out = {}
with torch.no_grad():
    base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    out["base"] = base(**inputs).logits_per_image
    pre = AutoModelForPreTraining.from_pretrained(folder, trust_remote_code=True).eval()
    out["pretraining"] = pre.sisc(**inputs).logits_per_image
    out["tied"] = pre.mlm_head.predictions.decoder.weight.data_ptr() == pre.sisc.text_model.embeddings.word_embeddings.weight.data_ptr()
out["classes"] = [type(base).__name__, type(pre).__name__, type(processor).__name__]
assert all(type(x).__module__.startswith("transformers_modules.") for x in (config, base, pre, processor))
torch.save(out, folder + "/fresh_out.pt")
"""


def test_fresh_process_reload_gives_the_same_logits(checkpoint, tmp_path):
    folder, _, _, logits = checkpoint
    python, env = python_without_repo()
    env["HF_HUB_OFFLINE"] = "1"
    result = subprocess.run(
        [*python, "-c", FRESH_PROCESS, str(folder)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = torch.load(folder / "fresh_out.pt")
    assert out["classes"] == ["SiscModel", "SiscForPreTraining", "SiscProcessor"]
    torch.testing.assert_close(out["base"], logits)
    torch.testing.assert_close(out["pretraining"], logits)
    assert out["tied"]


def test_zero_shot_pipeline(checkpoint):
    from transformers import pipeline

    folder = checkpoint[0]
    classifier = pipeline("zero-shot-image-classification", model=str(folder), trust_remote_code=True)
    result = classifier(Image.new("RGB", (50, 50), (0, 200, 0)), candidate_labels=["a green square", "a red star", "a cat"])
    assert len(result) == 3 and sum(r["score"] for r in result) == pytest.approx(1.0, abs=1e-4)
    assert {r["label"] for r in result} == {"a green square", "a red star", "a cat"}


def test_gradient_checkpointing_gives_the_same_gradients(checkpoint):
    _, model, inputs, _ = checkpoint
    model = SiscForPreTraining(model.config)
    model.load_state_dict(checkpoint[1].state_dict())
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    batch = {k: v[:2] for k, v in inputs.items() if k != "pixel_values"} | {"pixel_values": inputs["pixel_values"]}

    def grads():
        model.zero_grad()
        torch.manual_seed(3)
        out = model(**batch)
        out.loss.backward()
        return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss_plain, grads_plain = grads()
    model.activation_checkpointing_enable()
    assert model.sisc.fusion_model.layer[0].gradient_checkpointing
    loss_ckpt, grads_ckpt = grads()
    torch.testing.assert_close(loss_ckpt, loss_plain)
    assert grads_plain.keys() == grads_ckpt.keys()
    for name in grads_plain:
        torch.testing.assert_close(grads_ckpt[name], grads_plain[name], rtol=1e-4, atol=1e-6, msg=name)


def test_features_are_normalised_and_match_forward(checkpoint):
    _, model, inputs, _ = checkpoint
    sisc = model.sisc
    with torch.no_grad():
        out = sisc(**inputs, return_loss=False)
        image = sisc.get_image_features(inputs["pixel_values"])
        text = sisc.get_text_features(inputs["input_ids"], inputs["attention_mask"])
    torch.testing.assert_close(image, out.image_embeds)
    torch.testing.assert_close(text, out.text_embeds)
    torch.testing.assert_close(image.norm(dim=-1), torch.ones(2))
    assert out.logits_per_image.shape == (2, 3)
    torch.testing.assert_close(out.logits_per_text, out.logits_per_image.t())


def test_infonce_model_loss_equals_clip_loss(checkpoint):
    from transformers.models.clip import modeling_clip

    clip_loss = getattr(modeling_clip, "clip_loss", None) or modeling_clip.image_text_contrastive_loss
    _, model, inputs, _ = checkpoint
    model.config.contrastive_loss = "infonce"
    try:
        pairs = {k: v[:2] for k, v in inputs.items() if k != "pixel_values"} | {"pixel_values": inputs["pixel_values"]}
        with torch.no_grad():
            out = model.sisc(**pairs, return_loss=True)
        torch.testing.assert_close(out.loss, clip_loss(out.logits_per_text))
    finally:
        model.config.contrastive_loss = "srcl"


def test_bad_inputs_raise_clear_errors(checkpoint):
    _, model, inputs, _ = checkpoint
    sisc = model.sisc
    ids, mask, pixels = inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"]
    with pytest.raises(ValueError, match="aligned pairs"):
        sisc(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=True)  # 3 texts, 2 images
    with pytest.raises(ValueError, match="aligned pairs"):
        model(input_ids=ids, attention_mask=mask, pixel_values=pixels)
    empty = mask[:2].clone()
    empty[1] = 0
    with pytest.raises(ValueError, match="empty text"):
        sisc(input_ids=ids[:2], attention_mask=empty, pixel_values=pixels)
    with pytest.raises(ValueError, match="pixel_values must be"):
        sisc(input_ids=ids, attention_mask=mask, pixel_values=pixels[0])
    with pytest.raises(ValueError, match="channels"):
        sisc(input_ids=ids, attention_mask=mask, pixel_values=pixels[:, :1])
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        sisc(input_ids=ids, attention_mask=mask, pixel_values=torch.randn(2, 3, 48, 48))
    with torch.no_grad():  # a larger image works with interpolated position embeddings
        out = sisc(input_ids=ids, attention_mask=mask, pixel_values=torch.randn(2, 3, 48, 48), interpolate_pos_encoding=True)
    assert out.logits_per_image.shape == (2, 3)
    with pytest.raises(ValueError, match="alpha"):
        sisc(input_ids=ids[:2], attention_mask=mask[:2], pixel_values=pixels, return_loss=True,
             teacher_image_embeds=torch.randn(2, 16), teacher_text_embeds=torch.randn(2, 16))


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"contrastive_loss": "triplet"}, "contrastive_loss"),
        ({"weight_norm": "max"}, "weight_norm"),
        ({"delta": -1.0}, "delta"),
        ({"alpha_start": 1.5}, "alpha_start"),
        ({"embed_dim": 0}, "embed_dim"),
        ({"alpha_schedule": "step"}, "alpha_schedule"),
        ({"fusion_encoder_config": {"hidden_size": 64, "num_attention_heads": 4}}, "fusion_encoder_config"),
    ],
)
def test_invalid_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SiscConfig(**kwargs)


def test_from_pretrained_encoders(tmp_path):
    from transformers import BertConfig, BertForMaskedLM, CLIPVisionConfig, CLIPVisionModel, ViTConfig, ViTModel

    torch.manual_seed(0)
    vit = ViTModel(ViTConfig(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64), add_pooling_layer=False)
    vit.save_pretrained(tmp_path / "vit")
    clip = CLIPVisionModel(CLIPVisionConfig(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                            num_attention_heads=2, intermediate_size=64))
    clip.save_pretrained(tmp_path / "clip")
    bert = BertForMaskedLM(BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                      intermediate_size=64))
    bert.save_pretrained(tmp_path / "bert")

    special = dict(cls_token_id=2, sep_token_id=3, mask_token_id=4)  # this tiny BERT's vocabulary has 60 tokens
    model = SiscForPreTraining.from_pretrained_encoders(tmp_path / "vit", tmp_path / "bert", num_text_layers=2,
                                                        num_fusion_layers=2, embed_dim=16, **special)
    vision_state = model.sisc.vision_model.state_dict()
    for name, value in vit.state_dict().items():
        torch.testing.assert_close(vision_state[name], value, msg=name)
    bert_state = bert.bert.state_dict()
    text_state = model.sisc.text_model.state_dict()
    fusion_state = model.sisc.fusion_model.state_dict()
    torch.testing.assert_close(text_state["encoder.layer.1.attention.self.query.weight"],
                               bert_state["encoder.layer.1.attention.self.query.weight"])
    torch.testing.assert_close(fusion_state["layer.0.attention.self.query.weight"],
                               bert_state["encoder.layer.2.attention.self.query.weight"])
    torch.testing.assert_close(fusion_state["layer.1.output.dense.weight"], bert_state["encoder.layer.3.output.dense.weight"])
    torch.testing.assert_close(model.mlm_head.predictions.transform.dense.weight, bert.cls.predictions.transform.dense.weight)

    from_clip = SiscModel.from_pretrained_encoders(tmp_path / "clip", tmp_path / "bert", embed_dim=16, **special)
    assert from_clip.config.vision_config.model_type == "clip_vision_model"
    clip_state = from_clip.vision_model.state_dict()
    for name, value in clip.state_dict().items():
        torch.testing.assert_close(clip_state[name], value, msg=name)
    with pytest.raises(ValueError, match="cannot take"):
        SiscModel.from_pretrained_encoders(tmp_path / "vit", tmp_path / "bert", num_text_layers=3, num_fusion_layers=2,
                                           **special)
