"""Tiny random-weight encoder folders, saved as transformers saves pretrained ones (no download): a BERT with its
MLM head and WordPiece tokenizer, and vision checkpoints of every kind SISC takes (ViT, DeiT, CLIP, SigLIP)."""

import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertModel,
    BertTokenizer,
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    DeiTConfig,
    DeiTModel,
    SiglipConfig,
    SiglipModel,
    SiglipVisionConfig,
    SiglipVisionModel,
    ViTConfig,
    ViTImageProcessor,
    ViTModel,
)
from transformers.models.bert.tokenization_bert import load_vocab

# every word of the shapes captions' vocabulary that the tests meet is not needed: [UNK] stands for the rest
WORDS = ["a", "an", "the", "red", "green", "blue", "yellow", "circle", "square", "triangle", "star", "and", "of",
         "two", "three", "small", "large", "left", "right", "is", "there", "how", "many", "what", "color", "yes", "no",
         "one", "four", "image", "both", "images", "contain", "##s", "shape", "shapes", "on", "in", "with", "?",
         "something"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TOWER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
IMAGE_SIZE, PATCH = 16, 8
# a normalisation no default has, so that tests see it was read from the checkpoint
VISION_MEAN, VISION_STD = [0.1, 0.2, 0.3], [0.4, 0.5, 0.6]


def save_tokenizer(folder, special=SPECIAL) -> BertTokenizer:
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join([*special, *WORDS]) + "\n")
    kwargs = {} if "[MASK]" in special else {"mask_token": None}
    tokenizer = BertTokenizer(vocab=load_vocab(str(vocab_file)), do_lower_case=True, **kwargs)
    tokenizer.save_pretrained(folder)
    return tokenizer


def save_bert(folder, num_layers: int = 4, mlm_head: bool = True):
    """A BERT (with its MLM head unless `mlm_head=False`, as a sentence-embedding model is saved) and its tokenizer."""
    tokenizer = save_tokenizer(folder)
    config = BertConfig(vocab_size=len(tokenizer), max_position_embeddings=64, pad_token_id=0,
                        **{**TOWER, "num_hidden_layers": num_layers})
    torch.manual_seed(1)
    model = BertForMaskedLM(config) if mlm_head else BertModel(config)
    model.save_pretrained(folder)
    return model


def save_vision(folder, kind: str):
    """A vision checkpoint of `kind` with an image processor config; returns the module whose weights SISC's tower
    must equal (a dual encoder's vision half)."""
    torch.manual_seed(2)
    vision = dict(image_size=IMAGE_SIZE, patch_size=PATCH, **TOWER)
    text = dict(vocab_size=50, **TOWER)
    if kind == "vit":
        model = source = ViTModel(ViTConfig(**vision), add_pooling_layer=False)
    elif kind == "deit":
        model = source = DeiTModel(DeiTConfig(**vision), add_pooling_layer=False)
    elif kind == "clip_vision":
        model = source = CLIPVisionModel(CLIPVisionConfig(**vision))
    elif kind == "clip":
        model = CLIPModel(CLIPConfig(vision_config=vision, text_config={**text, "bos_token_id": 0, "eos_token_id": 1,
                                                                         "pad_token_id": 1}, projection_dim=16))
        source = model.vision_model
    elif kind == "siglip_vision":
        model = source = SiglipVisionModel(SiglipVisionConfig(**vision))
    elif kind == "siglip":
        model = SiglipModel(SiglipConfig(vision_config=vision, text_config=text))
        source = model.vision_model
    else:
        raise ValueError(kind)
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=VISION_MEAN,
                      image_std=VISION_STD).save_pretrained(folder)
    return source
