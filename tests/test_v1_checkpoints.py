"""Checkpoints saved by an earlier version of the code (tests/fixtures/checkpoints_v1, made by
tests/fixtures/make_v1_checkpoints.py) load into today's classes with every parameter in place and give the outputs
that version gave: restructuring the code must not rename parameters or change the arithmetic."""

import os

import torch
from safetensors.torch import load_file

from modeling_sisc import SiscForPreTraining, SiscForQuestionAnswering, SiscForVisualReasoning

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "checkpoints_v1")


def load(cls, name):
    folder = os.path.join(FIXTURES, name)
    model, info = cls.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval(), load_file(os.path.join(folder, "expected_outputs.safetensors"))


def close(got, want, name):
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=name)


@torch.no_grad()
def test_pretraining_checkpoint():
    model, x = load(SiscForPreTraining, "pretraining")
    ids, mask, pixels = x["input_ids"], x["attention_mask"], x["pixel_values"]
    out = model.sisc(input_ids=ids, attention_mask=mask, pixel_values=pixels)
    for name in ("logits_per_image", "image_embeds", "text_embeds"):
        close(getattr(out, name), x[name], name)
    close(model.sisc.get_itm_logits(ids, mask, pixels), x["itm_logits"], "itm_logits")
    fused = model.sisc.fuse(model.sisc.encode_text(ids, mask)[0].last_hidden_state, mask,
                            model.sisc.encode_image(pixels)[0].last_hidden_state)
    close(model.mlm_head(fused), x["mlm_logits"], "mlm_logits")
    close(model.momentum_encoder.encode(pixels, ids, mask)[0], x["momentum_image_embeds"], "momentum_image_embeds")


@torch.no_grad()
def test_vqa_checkpoint():
    model, x = load(SiscForQuestionAnswering, "vqa")
    out = model(input_ids=x["input_ids"], attention_mask=x["attention_mask"], pixel_values=x["pixel_values"],
                answer_list_input_ids=x["answer_list_input_ids"], answer_list_attention_mask=x["answer_list_attention_mask"])
    close(out.question_states, x["question_states"], "question_states")
    close(out.logits, x["answer_scores"], "answer_scores")


@torch.no_grad()
def test_nlvr_checkpoint():
    model, x = load(SiscForVisualReasoning, "nlvr")
    args = (x["input_ids"], x["pixel_values"], x["pixel_values_2"], x["attention_mask"])
    close(model.fuse(*args), x["fused_states"], "fused_states")
    out = model(input_ids=x["input_ids"], attention_mask=x["attention_mask"], pixel_values=x["pixel_values"],
                pixel_values_2=x["pixel_values_2"])
    close(out.logits, x["logits"], "logits")
