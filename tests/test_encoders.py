"""SISC started from pretrained encoders (tiny random-weight folders saved as transformers saves real ones): every
vision tower kind (ViT, DeiT, CLIP and SigLIP, vision-only and full dual encoders) loads its weights, a BERT is split
into the text and fusion encoders, the processor takes the encoders' tokenizer and normalisation, and bad encoders
get errors that name the problem. The paper-sized preset (`SiscConfig.base()`) builds, trains a step, saves and
reloads (the slowest test here, ~22 s on 2 CPU cores)."""

import time

import pytest
import torch
from transformers import AutoModel, AutoProcessor, RobertaConfig

from configuration_sisc import SiscConfig
from modeling_sisc import SiscForPreTraining, SiscForQuestionAnswering, SiscForVisualReasoning, SiscModel
from processing_sisc import SiscProcessor, special_token_ids
from tests.helpers.tiny_encoders import IMAGE_SIZE, VISION_MEAN, VISION_STD, save_bert, save_tokenizer, save_vision

VISION_KINDS = ["vit", "deit", "clip_vision", "clip", "siglip_vision", "siglip"]
MODEL_TYPES = {"vit": "vit", "deit": "deit", "clip_vision": "clip_vision_model", "clip": "clip_vision_model",
               "siglip_vision": "siglip_vision_model", "siglip": "siglip_vision_model"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoders")
    sources = {kind: save_vision(root / kind, kind) for kind in VISION_KINDS}
    bert = save_bert(root / "bert")
    save_bert(root / "bert_no_head", mlm_head=False)
    return root, sources, bert


def tower_weights(module) -> dict:
    """A vision tower's weights by name, without the `vision_model.` prefix a CLIP/SigLIP vision model adds."""
    return {k.removeprefix("vision_model."): v for k, v in module.state_dict().items()}


def inputs(processor, n=2):
    images = [torch.randint(0, 255, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=torch.uint8).numpy() for _ in range(n)]
    batch = processor(images=images, text=["a red circle", "two blue squares and a star"][:n])
    return {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}


@pytest.mark.parametrize("kind", VISION_KINDS)
def test_vision_tower_weights_equal_the_checkpoints(folders, kind):
    root, sources, _ = folders
    processor = SiscProcessor.from_pretrained_encoders(root / "bert", root / kind, image_size=IMAGE_SIZE)
    model = SiscForPreTraining.from_pretrained_encoders(root / kind, root / "bert", embed_dim=16,
                                                        **special_token_ids(processor.tokenizer))
    assert model.config.vision_config.model_type == MODEL_TYPES[kind]
    got, want = tower_weights(model.sisc.vision_model), tower_weights(sources[kind])
    assert set(want) <= set(got), sorted(set(want) - set(got))
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)
    # the summary: CLIP's post-layernormed [CLS] / SigLIP's attention pooling (their poolers), ViT/DeiT's last [CLS]
    batch = inputs(processor)
    with torch.no_grad():
        vision_out = model.sisc.vision_model(pixel_values=batch["pixel_values"])
        reference = sources[kind](pixel_values=batch["pixel_values"])
        expected = reference.pooler_output if kind in ("clip_vision", "clip", "siglip_vision", "siglip") \
            else reference.last_hidden_state[:, 0]
        torch.testing.assert_close(model.sisc.encode_image(batch["pixel_values"])[1],
                                   torch.nn.functional.normalize(model.sisc.visual_projection(expected), dim=-1))
    assert vision_out.last_hidden_state.shape[1] >= 4  # patch tokens reach the fusion encoder
    torch.manual_seed(0)
    model(**batch).loss.backward()


def test_bert_is_split_into_text_and_fusion_layers(folders):
    root, _, bert = folders
    model = SiscForPreTraining.from_pretrained_encoders(root / "vit", root / "bert", num_text_layers=1, embed_dim=16,
                                                        cls_token_id=2, sep_token_id=3, mask_token_id=4)
    assert model.config.text_config.num_hidden_layers == 1 and model.config.fusion_encoder_config.num_hidden_layers == 3
    bert_state, text_state = bert.bert.state_dict(), model.sisc.text_model.state_dict()
    fusion_state = model.sisc.fusion_model.state_dict()
    for key, value in bert_state.items():
        if key.startswith("embeddings.") or key.startswith("encoder.layer.0."):
            torch.testing.assert_close(text_state[key], value, rtol=0, atol=0, msg=key)
        elif key.startswith("encoder.layer."):
            index, rest = key.removeprefix("encoder.layer.").split(".", 1)
            torch.testing.assert_close(fusion_state[f"layer.{int(index) - 1}.{rest}"], value, rtol=0, atol=0, msg=key)
    for key, value in bert.cls.state_dict().items():
        torch.testing.assert_close(model.mlm_head.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_bert_without_mlm_head_starts_a_random_head(folders, caplog):
    root = folders[0]
    model = SiscForPreTraining.from_pretrained_encoders(None, root / "bert_no_head", embed_dim=16, cls_token_id=2,
                                                        sep_token_id=3, mask_token_id=4)
    assert model.mlm_head.predictions.decoder.weight is model.sisc.text_model.embeddings.word_embeddings.weight
    assert model.config.vision_config.model_type == "vit"  # no vision model: the base config's random ViT


def test_task_models_build_from_encoders(folders):
    root, _, bert = folders
    special = dict(cls_token_id=2, sep_token_id=3, mask_token_id=4, embed_dim=16)
    vqa = SiscForQuestionAnswering.from_pretrained_encoders(root / "vit", root / "bert", vqa_answers=["yes", "no"],
                                                            **special)
    decoder = vqa.answer_decoder.bert.encoder.layer[0].attention.self.query.weight
    torch.testing.assert_close(decoder, bert.bert.encoder.layer[2].attention.self.query.weight, rtol=0, atol=0)
    torch.testing.assert_close(vqa.answer_decoder.cls.predictions.transform.dense.weight,
                               bert.cls.predictions.transform.dense.weight, rtol=0, atol=0)
    nlvr = SiscForVisualReasoning.from_pretrained_encoders(root / "deit", root / "bert", **special)
    first = nlvr.sisc.fusion_model.layer[0].crossattention.state_dict()
    for key, value in nlvr.second_crossattention[0].state_dict().items():
        torch.testing.assert_close(value, first[key], rtol=0, atol=0)


def test_position_embeddings_are_interpolated_to_another_image_size(folders):
    root, sources, _ = folders
    for kind in ("vit", "clip", "siglip_vision"):
        model = SiscModel.from_pretrained_encoders(root / kind, root / "bert", image_size=2 * IMAGE_SIZE, embed_dim=16,
                                                   cls_token_id=2, sep_token_id=3, mask_token_id=4)
        assert model.config.vision_config.image_size == 2 * IMAGE_SIZE
        with torch.no_grad():
            out = model.vision_model(pixel_values=torch.randn(1, 3, 2 * IMAGE_SIZE, 2 * IMAGE_SIZE))
            # the same as the source tower's own interpolation at run time
            reference = sources[kind](pixel_values=torch.randn(1, 3, 2 * IMAGE_SIZE, 2 * IMAGE_SIZE),
                                      interpolate_pos_encoding=True)
        assert out.last_hidden_state.shape == reference.last_hidden_state.shape


def test_errors_name_the_problem(folders, tmp_path):
    root = folders[0]
    special = dict(cls_token_id=2, sep_token_id=3, mask_token_id=4)
    with pytest.raises(ValueError, match=r"cannot take 4 text \+ 0 fusion layers from a 4-layer BERT"):
        SiscModel.from_pretrained_encoders(root / "vit", root / "bert", num_text_layers=4, **special)
    with pytest.raises(ValueError, match=r"num_text_layers must lie in \[1, 3\]"):
        SiscModel.from_pretrained_encoders(root / "vit", root / "bert", num_text_layers=0, **special)
    RobertaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64).save_pretrained(tmp_path / "roberta")
    with pytest.raises(ValueError, match="a 'roberta' model cannot be split.*BERT-family"):
        SiscModel.from_pretrained_encoders(root / "vit", tmp_path / "roberta", **special)
    with pytest.raises(ValueError, match="a 'bert' model cannot be SISC's image tower"):
        SiscModel.from_pretrained_encoders(root / "bert", None, **special)
    with pytest.raises(ValueError, match="the tokenizer has 999 tokens.*embeds only"):
        SiscModel.from_pretrained_encoders(root / "vit", root / "bert", vocab_size=999, **special)
    save_tokenizer(tmp_path / "no_mask", special=["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    with pytest.raises(ValueError, match=r"lacks the special tokens \[MASK\] \(mask_token\)"):
        SiscProcessor.from_pretrained_encoders(tmp_path / "no_mask")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no tokenizer could be loaded from"):
        SiscProcessor.from_pretrained_encoders(tmp_path / "empty")


def test_processor_takes_the_encoders_tokenizer_and_normalisation(folders):
    root = folders[0]
    processor = SiscProcessor.from_pretrained_encoders(root / "bert", root / "clip", image_size=IMAGE_SIZE, max_length=12)
    assert processor.tokenizer.convert_ids_to_tokens(processor(text="a red star")["input_ids"][0].tolist()) == \
        ["[CLS]", "a", "red", "star", "[SEP]"]
    assert processor.tokenizer.model_max_length == 12
    assert list(processor.image_processor.image_mean) == VISION_MEAN
    assert list(processor.image_processor.image_std) == VISION_STD
    assert processor.image_processor.size["height"] == IMAGE_SIZE


def test_base_config_is_the_paper_model_and_trains_a_step(tmp_path):
    config = SiscConfig.base()
    assert config.vision_config.image_size == 256 and config.vision_config.patch_size == 16
    assert config.text_config.num_hidden_layers == config.fusion_encoder_config.num_hidden_layers == 6
    assert config.text_config.hidden_size == 768 and config.text_config.vocab_size == 30522
    assert (config.cls_token_id, config.sep_token_id, config.mask_token_id, config.text_config.pad_token_id) == (101, 102, 103, 0)
    assert config.embed_dim == 256 and config.temperature_init == 0.07 and config.queue_size == 0
    with_md = SiscConfig.base(use_momentum_distillation=True)
    assert with_md.queue_size == 65536 and with_md.momentum == 0.995

    torch.manual_seed(0)
    model = SiscForPreTraining(config)
    parameters = sum(p.numel() for p in model.parameters())
    assert parameters == 209_937_725  # ALBEF: about 210M (ViT-B/16 + BERT-base + 6 cross-attention layers + heads)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ids = torch.randint(1000, 2000, (2, 12))
    ids[:, 0], ids[:, -1] = 101, 102
    started = time.time()
    # at 128 px (interpolated position embeddings) to keep the test short: a step at 256 px takes ~20 CPU seconds
    outputs = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=torch.randn(2, 3, 128, 128),
                    interpolate_pos_encoding=True)
    outputs.loss.backward()
    optimizer.step()
    print(f"base model: {parameters} parameters, one step at batch 2 in {time.time() - started:.1f} s")
    assert torch.isfinite(outputs.loss)
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path, trust_remote_code=True)
    torch.testing.assert_close(reloaded.text_model.embeddings.word_embeddings.weight,
                               model.sisc.text_model.embeddings.word_embeddings.weight)
