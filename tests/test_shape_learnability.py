"""benchmarks/shape_learnability.py: its labels and every variant's training loop, on a tiny shapes dataset."""

import argparse
import json

import pytest

from benchmarks.shape_learnability import VARIANTS, caption_word_targets, labelled_images, train_variant
from sisc_train.synthetic.shapes import COLORS, SHAPES, ShapesConfig, load_shapes_dataset
from sisc_train.tasks.encoders import EncoderArguments, build_processor


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    config = ShapesConfig(num_train=12, num_annotated=1, num_test=4, num_validation=1)  # 64 px: the small model's
    dataset = load_shapes_dataset(config, cache_dir=str(tmp_path_factory.mktemp("shapes")))
    processor = build_processor(EncoderArguments())
    colors, shapes = COLORS[: config.num_colors], SHAPES[: config.num_shapes]
    return {split: labelled_images(dataset[split], processor, colors, shapes) for split in ("train", "test")}, dataset, config


def test_labels_are_the_colours_and_shapes_of_each_image_once(data):
    splits, dataset, config = data
    pixels, labels = splits["train"]
    assert pixels.shape == (12, 3, 64, 64)  # one row per image, not per caption
    assert labels.shape == (12, config.num_colors + config.num_shapes)
    scene = json.loads(dataset["train"][0]["scene"])
    present = [c for c, flag in zip(COLORS, labels[0, : config.num_colors]) if flag]
    assert set(present) == {o["color"] for o in scene["objects"]}
    present = [s for s, flag in zip(SHAPES, labels[0, config.num_colors :]) if flag]
    assert set(present) == {o["shape"] for o in scene["objects"]}


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_trains_and_reports_its_curve(data, variant):
    splits, _, config = data
    args = argparse.Namespace(seed=0, learning_rate=1e-3, steps=2, batch_size=4, eval_every=1, targets="labels")
    result = train_variant(variant, splits, config.num_colors, args)
    assert [point["step"] for point in result["curve"]] == [1, 2]
    assert 0 <= result["curve"][-1]["shape_accuracy"] <= 100 and result["parameters"] > 0


def test_grounding_probe_reads_the_trained_tower():
    import torch

    from benchmarks.shape_learnability import build_variant, grounding_probe

    encoder, config = build_variant("hybrid16_max")
    seen = {}
    grounding_probe(encoder, config, None, "unused", run_probes=lambda model, processor, cache_dir: seen.update(model=model))
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(seen["model"].encode_image(pixels)[0].last_hidden_state,
                                   encoder.vision_model.eval()(pixel_values=pixels).last_hidden_state)
    assert config.vision_conv_stem == [16, 32, 64] and config.image_pooling == "cls"  # the tower, read out by VitReadout


@pytest.mark.parametrize("word_loss", ["softmax", "bce"])
def test_caption_words_train_the_tower_and_the_probes_score_it(data, monkeypatch, word_loss):
    import benchmarks.shape_learnability as module

    splits, dataset, config = data
    processor = build_processor(EncoderArguments())
    pixels, targets = caption_word_targets(dataset["train"], processor)
    assert pixels.shape[0] == targets.shape[0] == len(dataset["train"])  # every pair, not every image
    words = set(processor.tokenizer.convert_ids_to_tokens(targets[0].nonzero().flatten().tolist()))
    assert words == set(dataset["train"][0]["caption"].split()) - {","}  # its caption's words, no special tokens
    probed = []
    monkeypatch.setattr(module, "grounding_probe", lambda encoder, *rest: probed.append(encoder) or [{"probe": 1}])
    args = argparse.Namespace(seed=0, learning_rate=1e-3, steps=2, batch_size=4, eval_every=1, targets="caption_words",
                              word_loss=word_loss, data_cache_dir="unused")
    result = train_variant("hybrid16_max", {**splits, "train": (pixels, targets), "processor": processor},
                           config.num_colors, args)
    assert [point["step"] for point in result["curve"]] == [1, 2] and "shape_accuracy" not in result["curve"][0]
    # the softmax starts near ln(vocabulary size); per-word binary cross-entropy near ln 2 and falls fast (mostly 0s)
    first_loss = result["curve"][0]["train_loss"]
    assert first_loss > 3.0 if word_loss == "softmax" else first_loss < 1.0
    assert len(probed) == 1 and result["grounding_probe"] == [{"probe": 1}]
