"""SiscProcessor: shipped vocabulary, outputs, image-mode handling, input errors, save / reload."""

import json
import os
import shutil
import string
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers.fresh_process import python_without_repo
from processing_sisc import SiscProcessor, build_default_processor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = os.path.join(ROOT, "sisc_vocab.txt")
CAPTIONS = ["a red circle", "Two BLUE squares above a green star!", "An image of 3 tiny hexagons, left corner"]


@pytest.fixture(scope="module")
def processor():
    return build_default_processor(image_size=64, max_length=32)


def random_rgb(seed=0, size=(40, 50)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))


# ---------------------------------------------------------------- vocabulary


def test_vocab_file_unique_ordered_and_up_to_date():
    with open(VOCAB, encoding="utf-8") as f:
        tokens = f.read().splitlines()
    assert len(tokens) == len(set(tokens))
    assert 600 <= len(tokens) <= 1200
    assert tokens[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert all(t and t == t.strip() and t == t.lower() for t in tokens[5:])
    for c in string.ascii_lowercase + string.digits:
        assert c in tokens and "##" + c in tokens
    for word in ["red", "magenta", "circle", "hexagons", "twelve", "tiny", "corner", "background", "containing"]:
        assert word in tokens
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "build_vocab.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_special_token_ids(processor):
    tok = processor.tokenizer
    assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (0, 1, 2, 3, 4)
    assert tok.model_max_length == 32 and len(tok) == tok.vocab_size > 600


def test_any_ascii_text_tokenizes_without_unk(processor):
    tok = processor.tokenizer
    rng = np.random.default_rng(0)
    alphabet = np.array(list(string.ascii_letters + string.digits + string.punctuation + "   "))
    texts = ["".join(rng.choice(alphabet, size=60)) for _ in range(50)]
    texts += ["Xylophones QUIZZICALLY jumped over the Lazy dog", "A RED Circle (left) & 2 squares: 100% #1 ~ok~"]
    for text in texts:
        ids = tok(text)["input_ids"]
        assert tok.unk_token_id not in ids, (text, tok.convert_ids_to_tokens(ids))
    assert tok.tokenize("A Red CIRCLE") == ["a", "red", "circle"]
    assert tok.tokenize("hexagons") == ["hexagons"]


# ---------------------------------------------------------------- outputs


def test_output_shapes_and_dtypes(processor):
    images = [random_rgb(0), random_rgb(1, (64, 30)), random_rgb(2, (10, 90))]
    batch = processor(images=images, text=CAPTIONS)
    assert batch["pixel_values"].shape == (3, 3, 64, 64) and batch["pixel_values"].dtype == torch.float32
    assert -1.0 <= batch["pixel_values"].min() and batch["pixel_values"].max() <= 1.0  # mean = std = 0.5
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.dtype == torch.long and mask.dtype == torch.long and ids.shape == mask.shape
    assert ids.shape[0] == 3 and ids.shape[1] <= 32
    assert (ids[:, 0] == 2).all()  # [CLS]
    lengths = mask.sum(1)
    assert lengths.max() == ids.shape[1]  # padded to the longest caption
    for row, n in zip(ids, lengths):
        assert row[n - 1] == 3 and (row[n:] == 0).all()  # [SEP] then [PAD]


def test_text_only_image_only_and_overrides(processor):
    text = processor(text="a red circle")
    assert set(text) >= {"input_ids", "attention_mask"} and "pixel_values" not in text
    assert text["input_ids"].tolist() == [[2, *processor.tokenizer.convert_tokens_to_ids(["a", "red", "circle"]), 3]]
    image = processor(images=random_rgb())
    assert set(image) == {"pixel_values"} and image["pixel_values"].shape == (1, 3, 64, 64)
    assert processor(text=["word " * 100])["input_ids"].shape == (1, 32)  # truncated to model_max_length
    assert processor(text=["a", "b c"], padding="max_length")["input_ids"].shape == (2, 32)
    assert processor(text=["word " * 100], max_length=8)["input_ids"].shape == (1, 8)
    assert isinstance(processor(text=["a"], return_tensors="np")["input_ids"], np.ndarray)


def test_image_size_and_max_length_arguments():
    proc = build_default_processor(image_size=32, max_length=12)
    batch = proc(images=[random_rgb()], text=["word " * 50])
    assert batch["pixel_values"].shape == (1, 3, 32, 32) and batch["input_ids"].shape == (1, 12)


# ---------------------------------------------------------------- image modes


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "PA", "CMYK", "1", "I;16", "I", "F", "YCbCr"])
def test_any_pil_mode_gives_three_channels(processor, mode):
    image = random_rgb().convert(mode) if mode not in ("I;16",) else random_rgb().convert("L").convert("I;16")
    pixels = processor(images=[image])["pixel_values"]
    assert pixels.shape == (1, 3, 64, 64) and torch.isfinite(pixels).all()


def test_rgb_conversions_match_reference(processor):
    rgb = random_rgb()
    reference = processor(images=rgb)["pixel_values"]
    assert torch.equal(processor(images=rgb.convert("RGBA"))["pixel_values"], reference)  # opaque alpha
    gray = rgb.convert("L")
    gray_ref = processor(images=gray)["pixel_values"]
    assert torch.equal(gray_ref[:, 0], gray_ref[:, 1]) and torch.equal(gray_ref[:, 0], gray_ref[:, 2])
    # transparency is composited onto white
    clear = rgb.convert("RGBA")
    clear.putalpha(0)
    assert torch.allclose(processor(images=clear)["pixel_values"], torch.ones(1, 3, 64, 64))
    # real 16-bit images are scaled to 8 bits, not clipped to white
    gray8 = np.asarray(gray)
    gray16 = Image.fromarray(gray8.astype(np.uint16) * 257)
    assert gray16.mode == "I;16"
    assert torch.equal(processor(images=gray16)["pixel_values"], gray_ref)
    assert torch.equal(processor(images=Image.fromarray(gray8.astype(np.int32) * 257))["pixel_values"], gray_ref)


def test_training_collator_and_inference_see_the_same_pixels(processor, tmp_path):
    """One decoding path: a 16-bit PNG and a half-transparent RGBA PNG give the training collator the pixels the
    processor (inference) gives, not an image clipped to white or the colour under the alpha."""
    from modeling_sisc import SiscModel
    from sisc_train.data.images import decode_image
    from sisc_train.data.pairs import PairCollator

    gray8 = np.asarray(random_rgb(5).convert("L"))
    Image.fromarray(gray8.astype(np.uint16) * 257).save(tmp_path / "deep.png")
    rgba = random_rgb(6).convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.arange(0, 250, 5, dtype=np.uint8), (40, 1))))  # alpha 0 .. 245
    rgba.save(tmp_path / "clear.png")
    paths = [str(tmp_path / "deep.png"), str(tmp_path / "clear.png")]
    with Image.open(paths[0]) as opened:
        assert opened.mode == "I;16"  # a real 16-bit file
    rows = [{"image": path, "caption": "a picture", "image_id": i} for i, path in enumerate(paths)]
    batch = PairCollator(processor)(rows)
    assert batch["num_skipped"] == 0
    for i, path in enumerate(paths):
        inference = processor(images=Image.open(path))["pixel_values"][0]
        assert torch.equal(batch["pixel_values"][i], inference), path
        assert torch.equal(processor(images=SiscModel._load_image(path))["pixel_values"][0], inference), path
        with open(path, "rb") as f:  # a datasets image value (bytes) decodes the same
            assert torch.equal(processor(images=decode_image({"bytes": f.read(), "path": None}))["pixel_values"][0], inference)
    # and they are the right pixels: the 16-bit image is the 8-bit one, the transparent one lies over white
    assert torch.equal(batch["pixel_values"][0], processor(images=Image.fromarray(gray8))["pixel_values"][0])
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    composite = Image.alpha_composite(white, rgba).convert("RGB")
    assert torch.equal(batch["pixel_values"][1], processor(images=composite)["pixel_values"][0])


def test_numpy_input(processor):
    rgb = random_rgb()
    reference = processor(images=rgb)["pixel_values"]
    array = np.asarray(rgb)
    assert torch.equal(processor(images=array)["pixel_values"], reference)
    assert torch.equal(processor(images=[array, rgb])["pixel_values"], torch.cat([reference, reference]))
    gray = rgb.convert("L")
    assert torch.equal(processor(images=np.asarray(gray))["pixel_values"], processor(images=gray)["pixel_values"])


# ---------------------------------------------------------------- errors


def test_errors(processor):
    with pytest.raises(ValueError, match="neither"):
        processor()
    with pytest.raises(ValueError, match="caption 0 is empty"):
        processor(text="")
    with pytest.raises(ValueError, match="caption 1 is empty or whitespace"):
        processor(text=["a red circle", " \t\n"])
    with pytest.raises(ValueError, match="caption 2 is of type int"):
        processor(text=["a", "b", 3])
    with pytest.raises(ValueError, match="caption 0 is of type NoneType"):
        processor(images=[random_rgb()], text=[None])
    with pytest.raises(ValueError, match="string or a list of strings"):
        processor(text=7)
    with pytest.raises(ValueError, match="empty list"):
        processor(text=[])


# ---------------------------------------------------------------- other tokenizers


def test_from_bert_tokenizer(tmp_path, processor):
    vocab_only = tmp_path / "vocab_only"
    vocab_only.mkdir()
    (vocab_only / "vocab.txt").write_text(open(VOCAB, encoding="utf-8").read(), encoding="utf-8")
    saved = tmp_path / "saved"
    processor.tokenizer.save_pretrained(saved)
    for source in (vocab_only, saved, processor.tokenizer):
        proc = SiscProcessor.from_bert_tokenizer(source, image_size=(32, 48), max_length=16)
        batch = proc(images=[random_rgb()], text=CAPTIONS[1])
        assert batch["pixel_values"].shape == (1, 3, 32, 48)
        assert batch["input_ids"].tolist() == processor(text=CAPTIONS[1])["input_ids"].tolist()
        assert proc.tokenizer.model_max_length == 16
    assert processor.tokenizer.model_max_length == 32  # a tokenizer object passed in is not modified
    with pytest.raises(ValueError, match="no tokenizer"):
        SiscProcessor.from_bert_tokenizer(tmp_path)


# ---------------------------------------------------------------- save / reload


def _save_inputs(folder):
    """Images in several modes as PNG files plus the captions, for the reload subprocess to read back."""
    rgb = random_rgb(3, (37, 53))
    images = {"rgb.png": rgb, "rgba.png": rgb.convert("RGBA"), "p.png": rgb.convert("P"), "l.png": rgb.convert("L")}
    for name, image in images.items():
        image.save(folder / name)
    (folder / "captions.json").write_text(json.dumps(CAPTIONS + ["x"]))
    return sorted(images)


def test_save_and_reload_in_fresh_process(tmp_path, processor):
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, BertTokenizer, ViTImageProcessorPil

    saved = tmp_path / "processor"
    processor.save_pretrained(saved)
    files = set(os.listdir(saved))
    assert {"processing_sisc.py", "processor_config.json", "tokenizer_config.json", "tokenizer.json"} <= files
    config = json.loads((saved / "processor_config.json").read_text())
    assert config["auto_map"]["AutoProcessor"] == "processing_sisc.SiscProcessor"
    assert config["image_processor"]["do_convert_rgb"] is True

    # built-in halves load without remote code (as the zero-shot-image-classification pipeline loads them)
    tokenizer = AutoTokenizer.from_pretrained(saved)
    assert isinstance(tokenizer, BertTokenizer) and tokenizer.model_max_length == 32
    assert tokenizer(CAPTIONS)["input_ids"] == processor.tokenizer(CAPTIONS)["input_ids"]
    image_processor = AutoImageProcessor.from_pretrained(saved)
    assert isinstance(image_processor, ViTImageProcessorPil) and image_processor.do_convert_rgb
    rgba = random_rgb().convert("RGBA")
    assert torch.equal(
        image_processor(rgba, return_tensors="pt")["pixel_values"], processor(images=rgba)["pixel_values"]
    )

    # the whole processor in this process ...
    reloaded = AutoProcessor.from_pretrained(saved, trust_remote_code=True)
    assert type(reloaded).__name__ == "SiscProcessor"

    # a checkpoint folder also holds the model's config.json (model_type "sisc", unknown to transformers)
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(saved, checkpoint)
    (checkpoint / "config.json").write_text(json.dumps({"model_type": "sisc"}))
    assert type(AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)).__name__ == "SiscProcessor"
    assert isinstance(AutoTokenizer.from_pretrained(checkpoint), BertTokenizer)
    assert isinstance(AutoImageProcessor.from_pretrained(checkpoint), ViTImageProcessorPil)

    # ... and in a fresh process that cannot import the repo
    data = tmp_path / "data"
    data.mkdir()
    names = _save_inputs(data)
    images = [Image.open(data / n) for n in names]
    captions = json.loads((data / "captions.json").read_text())
    expected = processor(images=images, text=captions)
    assert torch.equal(reloaded(images=images, text=captions)["pixel_values"], expected["pixel_values"])

    script = textwrap.dedent(
        f"""
        import importlib.util, json, sys
        import torch
        from PIL import Image
        from transformers import AutoProcessor
        assert importlib.util.find_spec("processing_sisc") is None, sys.path
        proc = AutoProcessor.from_pretrained({str(saved)!r}, trust_remote_code=True)
        assert type(proc).__module__.startswith("transformers_modules."), type(proc).__module__
        images = [Image.open({str(data)!r} + "/" + n) for n in {names!r}]
        captions = json.load(open({str(data)!r} + "/captions.json"))
        torch.save(dict(proc(images=images, text=captions)), "out.pt")
        """
    )
    python, env = python_without_repo()
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    result = subprocess.run(
        [*python, "-c", script], cwd=workdir, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    got = torch.load(workdir / "out.pt")
    assert set(got) == set(expected)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
