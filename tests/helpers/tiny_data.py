"""Tiny image-caption data written on the fly for the tests."""

import json
import os

from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 230, 30)}


def write_karpathy(folder, splits=("train",) * 8 + ("restval",) * 2 + ("val",) * 4 + ("test",) * 7):
    """Coloured squares in an images/ sub-folder and a Karpathy-split JSON describing them (two captions each)."""
    os.makedirs(folder / "images", exist_ok=True)
    entries = []
    for i, split in enumerate(splits):
        name = list(COLOURS)[i % 4]
        Image.new("RGB", (20, 20), tuple(max(0, c - 5 * i) for c in COLOURS[name])).save(folder / "images" / f"{i}.png")
        sentences = [{"raw": f"a {name} square", "tokens": []}, {"raw": f"something {name} number {i}"}]
        entries.append({"filepath": "images", "filename": f"{i}.png", "split": split, "sentences": sentences})
    entries.append({"filepath": "images", "filename": "0.png", "split": "test", "sentences": []})  # no caption: left out
    path = folder / "dataset_tiny.json"
    path.write_text(json.dumps({"dataset": "tiny", "images": entries}))
    return path


def save_tiny_checkpoint(folder):
    """A random-weight SISC pretraining checkpoint (16 px images, hidden 32, seed 0) with its processor; returns
    the folder."""
    import torch

    from configuration_sisc import SiscConfig
    from modeling_sisc import SiscForPreTraining
    from processing_sisc import build_default_processor

    processor = build_default_processor(image_size=16)
    torch.manual_seed(0)
    SiscForPreTraining(SiscConfig.small(vocab_size=len(processor.tokenizer), image_size=16, hidden_size=32)).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def truncate(path):
    """Cut an image file in half: it opens, but decoding it fails (a download or copy that stopped midway)."""
    data = open(path, "rb").read()
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 2])
