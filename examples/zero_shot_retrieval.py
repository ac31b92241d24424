"""Zero-shot image-text retrieval on the bundled example images, through the Hub-style loading path.

    python examples/zero_shot_retrieval.py --model outputs/sisc-small     # a trained checkpoint
    python examples/zero_shot_retrieval.py                                # a fresh random small model

Without --model, a small random-weight SISC model is built, saved with its processor, and reloaded with
`AutoModel` / `AutoProcessor` and `trust_remote_code=True`, exactly as a Hub checkpoint would be: the ranking is
then meaningless, but the whole save / load / retrieve path runs. For each example image the captions are ranked
by the model's similarity (image -> text); a check mark shows captions that are true of the image.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples", "shapes")


def load_examples():
    with open(os.path.join(EXAMPLES, "captions.json")) as f:
        entries = json.load(f)
    with open(os.path.join(EXAMPLES, "relevance.json")) as f:
        relevance = json.load(f)["captions"]
    # no .convert("RGB"): the processor converts every mode the way training does (transparency onto white)
    images = [Image.open(os.path.join(EXAMPLES, e["image"])) for e in entries]
    names = [e["image"] for e in entries]
    captions = [c for e in entries for c in e["captions"]]
    true_of = {c["caption"]: set(c["relevant_images"]) for c in relevance} if relevance and "caption" in relevance[0] else {}
    return images, names, captions, true_of


def build_random_checkpoint(folder: str) -> None:
    sys.path.insert(0, ROOT)
    from configuration_sisc import SiscConfig
    from modeling_sisc import SiscModel
    from processing_sisc import build_default_processor

    processor = build_default_processor(image_size=64)
    torch.manual_seed(0)
    SiscModel(SiscConfig.small(vocab_size=len(processor.tokenizer))).save_pretrained(folder)
    processor.save_pretrained(folder)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a SISC checkpoint folder (default: a fresh random small model)")
    parser.add_argument("--top", type=int, default=3, help="captions shown per image")
    args = parser.parse_args(argv)

    from transformers import AutoModel, AutoProcessor

    with tempfile.TemporaryDirectory() as scratch:
        folder = args.model
        if folder is None:
            folder = os.path.join(scratch, "sisc-random")
            build_random_checkpoint(folder)
            print(f"built, saved and reloading a random small model ({folder})")
        model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)

    images, names, captions, true_of = load_examples()
    with torch.inference_mode():
        outputs = model(**processor(images=images, text=captions, return_tensors="pt"))
    probs = outputs.logits_per_image.softmax(dim=-1)

    hits = 0
    print(f"\n{'image':<16} {'rank':>4}  {'p':>6}  caption")
    for i, name in enumerate(names):
        order = probs[i].argsort(descending=True)[: args.top].tolist()
        for rank, j in enumerate(order, start=1):
            mark = ""
            if true_of:
                relevant = name in true_of.get(captions[j], set())
                hits += rank == 1 and relevant
                mark = "  [true]" if relevant else "  [false]"
            print(f"{name if rank == 1 else '':<16} {rank:>4}  {probs[i, j].item():6.3f}  {captions[j]}{mark}")
    if true_of:
        print(f"\ntop-1 caption true of its image for {hits} of {len(names)} images")


if __name__ == "__main__":
    main()
