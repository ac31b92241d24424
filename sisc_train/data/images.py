"""Image decoding: the one place a datasets image value, a path or raw bytes becomes a PIL image."""

from __future__ import annotations

import io
import os

from PIL import Image


def decode_image(value) -> Image.Image:
    """A fully loaded PIL image from a datasets Image value, a path or raw bytes; raises on anything unreadable.

    The image keeps its own mode (16-bit, RGBA, palette, ...): converting it to RGB is the processor's job
    (`processing_sisc.SiscProcessor` maps 16-bit to 8-bit and composites transparency onto white), so training,
    evaluation and inference see the same pixels. `modeling_sisc.SiscModel._load_image` is the model file's
    standalone twin of this function (it cannot import from sisc_train) and must stay equivalent.
    """
    if isinstance(value, Image.Image):
        value.load()
        return value
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            source = io.BytesIO(value["bytes"])
        elif value.get("path"):
            source = value["path"]
        else:
            raise ValueError("image entry has neither bytes nor path")
    elif isinstance(value, (bytes, bytearray)):
        source = io.BytesIO(value)
    elif isinstance(value, (str, os.PathLike)):
        source = value
    else:
        raise ValueError(f"cannot read an image from {type(value).__name__}")
    with Image.open(source) as opened:
        return opened.copy()  # decodes now (a truncated file fails here, in the collator) and closes the file
