"""The real-data tooling on data the tests write: tools/prepare_tabler.py (split by concept, captions, images),
relevance from shared captions in retrieval sets, and benchmarks/real_data.py's starting model and statistics."""

import json
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import prepare_tabler  # noqa: E402
import real_data  # noqa: E402
from sisc_train.data.pairs import load_pairs  # noqa: E402
from sisc_train.evaluation.retrieval import load_retrieval_set, shared_caption_relevance  # noqa: E402
from sisc_train.evaluation.retrieval_metrics import retrieval_metrics  # noqa: E402

# name: (category, tags, has a filled drawing); names a folder loader would take for split markers on purpose
ICONS = {
    "test-pipe": ("Design", ["pipe", "Arrow"], True),
    "train": ("Vehicles", ["rail", None, 2], False),
    "arrow-left": ("Arrows", ["arrow", "left"], True),
    "arrow-right": ("Arrows", ["arrow", "right"], False),
    "heart": ("Shapes", ["love", "heart"], True),
    "star": ("Shapes", ["favourite"], False),
    "val-dev": ("System", ["eval"], False),
    "cloud": ("Weather", ["sky"], True),
    "sun": ("Weather", ["sky", "day"], False),
    "moon": ("Weather", ["night"], False),
    "no-png": ("System", ["missing"], False),  # in icons.json, without a drawing: left out
}


def write_fake_tabler(folder, version=prepare_tabler.VERSION):
    modules = folder / "node_modules" / "@tabler"
    entries = {}
    for name, (category, tags, filled) in ICONS.items():
        styles = {"outline": {}, **({"filled": {}} if filled else {})}
        entries[name] = {"name": name, "category": category, "tags": tags, "styles": styles}
        for style in styles:
            if name == "no-png":
                continue
            path = modules / "icons-png" / "icons" / style / f"{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            image = Image.new("RGBA", (24, 24), (0, 0, 0, 0))  # transparent: black in RGB, white once composited
            image.paste((0, 0, 0, 255), (4, 4, 20, 20) if style == "filled" else (10, 4, 14, 20))
            image.save(path)
    (modules / "icons").mkdir(parents=True, exist_ok=True)
    (modules / "icons" / "icons.json").write_text(json.dumps(entries))
    for package in ("icons", "icons-png"):
        (modules / package / "package.json").write_text(json.dumps({"version": version}))
    return folder


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    npm = write_fake_tabler(tmp_path_factory.mktemp("npm"))
    output = tmp_path_factory.mktemp("out") / "tabler"
    dataset = prepare_tabler.main(["--npm_dir", str(npm), "--output", str(output), "--image_size", "16",
                                   "--validation_fraction", "0.2", "--test_fraction", "0.2", "--seed", "3"])
    return npm, output, dataset


def test_prepare_splits_by_concept_with_captions_and_white_images(prepared):
    npm, output, dataset = prepared
    assert list(dataset) == ["train", "validation", "test"]
    names = {split: set(rows["name"]) for split, rows in dataset.items()}
    assert len(names["validation"]) == len(names["test"]) == 2 and len(names["train"]) == 6  # 10 concepts with a PNG
    assert not (names["train"] & names["test"]) and not (names["train"] & names["validation"]) and not (names["validation"] & names["test"])
    all_rows = [row for rows in dataset.values() for row in rows]
    assert len(all_rows) == 14 and "no-png" not in {row["name"] for row in all_rows}  # 10 outline + 4 filled
    assert sorted(row["image_id"] for row in all_rows) == list(range(14))
    by_key = {(row["name"], row["style"]): row for row in all_rows}
    # outline and filled drawings of one concept: same split (checked by names above), same captions
    assert by_key[("heart", "filled")]["caption"] == by_key[("heart", "outline")]["caption"] == ["heart", "Shapes", "love"]
    assert by_key[("test-pipe", "outline")]["caption"] == ["test pipe", "Design", "pipe", "Arrow"]
    assert by_key[("train", "outline")]["caption"] == ["train", "Vehicles", "rail", "2"]  # null tag dropped, int as text
    image = by_key[("heart", "filled")]["image"]
    assert image.size == (16, 16) and image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 255, 255) and image.getpixel((8, 8)) == (0, 0, 0)
    # deterministic: the same seed gives the same split
    again = prepare_tabler.build_dataset(*prepare_tabler.package_paths(str(npm)), image_size=16, seed=3,
                                         validation_fraction=0.2, test_fraction=0.2)
    assert {split: set(rows["name"]) for split, rows in again.items()} == names
    # the trainer's loader: one row per (image, caption), image ids kept
    pairs = load_pairs(str(output), "test")
    assert len(pairs) == sum(len(c) for c in dataset["test"]["caption"])
    assert set(pairs["image_id"]) == set(dataset["test"]["image_id"])


def test_prepare_names_the_npm_command_and_checks_versions(tmp_path):
    with pytest.raises(SystemExit, match="npm install --prefix .*@tabler/icons@3.48.0 @tabler/icons-png@3.48.0"):
        prepare_tabler.main(["--npm_dir", str(tmp_path / "none"), "--output", str(tmp_path / "out")])
    npm = write_fake_tabler(tmp_path / "npm", version="3.99.0")
    with pytest.raises(SystemExit, match="is 3.99.0, this script needs 3.48.0"):
        prepare_tabler.main(["--npm_dir", str(npm), "--output", str(tmp_path / "out")])


def test_relevance_from_shared_captions_by_hand(tmp_path):
    rows = [
        {"image": "a.png", "caption": ["Arrow", "left arrow"]},
        {"image": "b.png", "caption": ["arrow ", "right"]},
        {"image": "c.png", "caption": ["heart"]},
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows))
    data = load_retrieval_set(str(path))
    assert data.captions == ["Arrow", "left arrow", "arrow", "right", "heart"]
    assert data.caption_to_image == [0, 0, 1, 1, 2]
    expected = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1]], dtype=bool)
    np.testing.assert_array_equal(data.relevance, expected)
    np.testing.assert_array_equal(shared_caption_relevance(["A  b", "a b"], [0, 1], 2), np.ones((2, 2), dtype=bool))
    # the relevance-aware metrics then exist: an "arrow" caption that finds the other arrow first is a hit
    similarity = torch.tensor([[0.1, 0.9, 0.3, 0.0, 0.0], [0.8, 0.0, 0.2, 0.7, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0]])
    metrics = retrieval_metrics(similarity, data.caption_to_image, data.relevance, ks=(1,))
    assert metrics["ir_r1"] == pytest.approx(60.0)  # captions 1, 3, 4 find their own image first; 0 finds b, 2 finds a
    assert metrics["ir_r1_any"] == pytest.approx(100.0)
    assert metrics["tr_r1"] == pytest.approx(200 / 3) and metrics["tr_r1_any"] == pytest.approx(100.0)  # b finds "Arrow"
    assert metrics["ir_map_r"] == pytest.approx(100.0)  # each arrow caption (R = 2) has both arrows on top
    assert "tr_map_r" in metrics
    # a cut (max_images) keeps the relevance of the kept items only
    assert load_retrieval_set(str(path), max_images=2).relevance.shape == (4, 2)


def test_prepared_test_split_has_shared_caption_relevance(prepared):
    _, output, dataset = prepared
    chance = real_data.chance_level(str(output), draws=3)
    assert set(chance) == set(real_data.METRICS) and 0 < chance["ir_r1_any"] <= 100
    data = load_retrieval_set(str(output), "test")
    assert data.relevance is not None and data.relevance.shape == (len(data.captions), len(data.images))
    for c, caption in enumerate(data.captions):
        holders = {i for i, other in zip(data.caption_to_image, data.captions) if other.lower() == caption.lower()}
        assert set(np.flatnonzero(data.relevance[c])) == holders


def test_benchmark_statistics_by_hand():
    def run(value):
        return {"metrics": {m: value for m in real_data.METRICS}, "wall_seconds": 60.0}

    results = {"srcl": [run(11.0), run(14.0), run(15.0)], "infonce": [run(10.0), run(12.0), run(14.0)],
               "srcl_random_text": [run(1.0), run(2.0), run(3.0)]}
    table = real_data.summarise(results)
    cell = table["variants"]["srcl"]["tr_map_r"]
    assert cell["mean"] == pytest.approx(40 / 3) and cell["sd"] == pytest.approx(2.0817, abs=1e-4)
    # differences 1, 2, 1: mean 4/3, sd 0.57735; half width 4.303 * 0.57735 / sqrt(3) = 1.4343
    paired = table["comparisons"]["srcl - infonce"]["tr_map_r"]
    assert paired["diff"] == pytest.approx(4 / 3) and paired["ci95"] == pytest.approx([4 / 3 - 1.4343, 4 / 3 + 1.4343], abs=1e-3)
    assert table["comparisons"]["srcl - srcl_random_text"]["r_mean"]["diffs"] == [10.0, 12.0, 12.0]
    markdown = real_data.format_markdown(table)
    assert "| srcl - infonce | +1.33 [-0.10, +2.77]" in markdown and "| infonce | 12.00 ± 2.00" in markdown
    table["chance"] = {m: 0.5 for m in real_data.METRICS}
    assert "| chance (random scores) | 0.50 |" in real_data.format_markdown(table)
    single = real_data.paired_difference([2.0], [1.0])
    assert single["diff"] == 1.0 and all(np.isnan(single["ci95"]))
    with pytest.raises(ValueError, match="as many values"):
        real_data.paired_difference([1.0, 2.0], [1.0])


def test_start_model_random_text_tower_differs_only_in_text(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"arrow heart left right sky".split()]
    bert_folder = tmp_path / "bert"
    BertForMaskedLM(BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64)).save_pretrained(bert_folder)
    (bert_folder / "vocab.txt").write_text("\n".join(words) + "\n")
    tiny = dict(image_size=16, vision_hidden_size=32, vision_layers=1, embed_dim=16, num_text_layers=1, num_fusion_layers=1)
    pretrained = real_data.build_start_model(str(tmp_path / "a"), str(bert_folder), seed=0, **tiny)
    random_text = real_data.build_start_model(str(tmp_path / "b"), str(bert_folder), seed=0, random_text=True, **tiny)
    from modeling_sisc import SiscForPreTraining

    a = SiscForPreTraining.from_pretrained(pretrained).state_dict()
    b = SiscForPreTraining.from_pretrained(random_text).state_dict()
    bert = BertForMaskedLM.from_pretrained(bert_folder).state_dict()
    assert torch.equal(a["sisc.text_model.embeddings.word_embeddings.weight"], bert["bert.embeddings.word_embeddings.weight"])
    changed = {key for key in a if not torch.equal(a[key], b[key])}
    assert "sisc.text_model.embeddings.word_embeddings.weight" in changed
    assert all(key.startswith(("sisc.text_model.", "sisc.fusion_model.", "mlm_head.")) for key in changed)
    assert not any(key.startswith("sisc.vision_model.") for key in changed)
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["cls_token_id"] == 2 and config["mask_token_id"] == 4  # the tokenizer's own special tokens
    # more layers than the text model has: all of its layers in the text tower, new fusion layers on top
    tiny |= dict(num_text_layers=2, num_fusion_layers=1)
    whole = SiscForPreTraining.from_pretrained(real_data.build_start_model(str(tmp_path / "c"), str(bert_folder), seed=0, **tiny))
    assert whole.config.text_config.num_hidden_layers == 2 and whole.config.fusion_encoder_config.num_hidden_layers == 1
    key = "encoder.layer.1.attention.self.query.weight"
    assert torch.equal(whole.sisc.text_model.state_dict()[key], bert[f"bert.{key}"])
