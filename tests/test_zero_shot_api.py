"""Tests of the notebook-friendly zero-shot retrieval API: `SiscModel.rank_images` and `SiscModel.rank_texts`.

A tiny random model is enough: the rankings are checked against cosine similarities computed directly with
`get_image_features` / `get_text_features`, not against any notion of a correct answer.
"""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from configuration_sisc import SiscConfig
from modeling_sisc import SiscModel
from processing_sisc import build_default_processor

IMAGE_SIZE = 32
CAPTIONS = [
    "a red circle",
    "two blue squares",
    "a small green star at the top",
    "a purple cross",
    "an orange triangle and a yellow square",
]


@pytest.fixture(scope="module")
def processor():
    return build_default_processor(image_size=IMAGE_SIZE)


@pytest.fixture(scope="module")
def model(processor):
    torch.manual_seed(0)
    config = SiscConfig.small(vocab_size=len(processor.tokenizer), image_size=IMAGE_SIZE, hidden_size=32)
    return SiscModel(config).eval()


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in range(7)]


def cosines(model, processor, images, texts):
    """(n_texts, n_images) cosine similarities, computed the plain way in one batch."""
    with torch.no_grad():
        image_embeds = model.get_image_features(processor(images=images)["pixel_values"])
        encoded = processor(text=texts)
        text_embeds = model.get_text_features(
            encoded["input_ids"], encoded["attention_mask"], encoded["token_type_ids"]
        )
    return text_embeds @ image_embeds.t()


def check_ranking(ranking, expected_scores, item_key, candidates):
    assert [set(entry) for entry in ranking] == [{"index", "score", "probability", item_key}] * len(ranking)
    assert sorted(entry["index"] for entry in ranking) == list(range(len(candidates)))
    scores = [entry["score"] for entry in ranking]
    assert scores == sorted(scores, reverse=True)
    for entry in ranking:
        assert entry["score"] == pytest.approx(expected_scores[entry["index"]].item(), abs=1e-5)
        assert entry[item_key] is candidates[entry["index"]]
    assert math.fsum(entry["probability"] for entry in ranking) == pytest.approx(1.0, abs=1e-5)


def assert_same_ranking(actual, expected, abs=1e-5):
    """Same order and items, scores and probabilities equal up to float noise (pytest.approx does not nest)."""
    assert [entry["index"] for entry in actual] == [entry["index"] for entry in expected]
    for key in ("score", "probability"):
        assert [entry[key] for entry in actual] == pytest.approx([entry[key] for entry in expected], abs=abs)


def test_rank_images_matches_cosine_similarity(model, processor, images):
    # batch_size 3 splits the 7 images into uneven batches
    ranking = model.rank_images(CAPTIONS[1], images, processor, batch_size=3)
    check_ranking(ranking, cosines(model, processor, images, [CAPTIONS[1]])[0], "image", images)


def test_rank_texts_matches_cosine_similarity(model, processor, images):
    ranking = model.rank_texts(images[2], CAPTIONS, processor, batch_size=2)
    check_ranking(ranking, cosines(model, processor, [images[2]], CAPTIONS)[:, 0], "text", CAPTIONS)


def test_probabilities_use_the_model_temperature(model, processor, images):
    ranking = model.rank_texts(images[0], CAPTIONS, processor)
    scores = torch.tensor([entry["score"] for entry in ranking])
    expected = (model.logit_scale_value().detach() * scores).softmax(dim=0)
    assert [entry["probability"] for entry in ranking] == pytest.approx(expected.tolist(), abs=1e-5)


def test_top_k_keeps_the_best_and_probabilities_stay_over_all_candidates(model, processor, images):
    full = model.rank_images(CAPTIONS[0], images, processor)
    top = model.rank_images(CAPTIONS[0], images, processor, top_k=3)
    assert top == full[:3]
    assert len(model.rank_texts(images[0], CAPTIONS, processor, top_k=100)) == len(CAPTIONS)


def test_image_paths_rank_like_the_images(model, processor, images, tmp_path):
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"image_{i}.png")
        image.save(paths[-1])
    from_images = model.rank_images(CAPTIONS[3], images, processor)
    from_paths = model.rank_images(CAPTIONS[3], [str(p) for p in paths[:4]] + paths[4:], processor, batch_size=4)
    assert_same_ranking(from_paths, from_images)
    assert {str(entry["image"]) for entry in from_paths} == {str(p) for p in paths}  # the paths, as passed
    from_path = model.rank_texts(paths[5], CAPTIONS, processor)
    assert_same_ranking(from_path, model.rank_texts(images[5], CAPTIONS, processor))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m, p, imgs: m.rank_images("a red circle", [], p), "empty"),
        (lambda m, p, imgs: m.rank_texts(imgs[0], [], p), "empty"),
        (lambda m, p, imgs: m.rank_images("a red circle", imgs[0], p), "list"),
        (lambda m, p, imgs: m.rank_texts(imgs[0], "a red circle", p), "list"),
        (lambda m, p, imgs: m.rank_images(42, imgs, p), "query text"),
        (lambda m, p, imgs: m.rank_images("  ", imgs, p), "query text"),
        (lambda m, p, imgs: m.rank_texts(imgs[0], ["a red circle", None], p), "caption 1"),
        (lambda m, p, imgs: m.rank_texts(imgs, CAPTIONS, p), "one query image"),
        (lambda m, p, imgs: m.rank_images("a red circle", imgs, p, top_k=0), "top_k"),
        (lambda m, p, imgs: m.rank_texts(imgs[0], CAPTIONS, p, top_k=-2), "top_k"),
        (lambda m, p, imgs: m.rank_texts(imgs[0], CAPTIONS, p, top_k=1.5), "top_k"),
        (lambda m, p, imgs: m.rank_images("a red circle", imgs, p, batch_size=0), "batch_size"),
    ],
)
def test_bad_arguments_raise_a_clear_value_error(model, processor, images, call, message):
    with pytest.raises(ValueError, match=message):
        call(model, processor, images)


def test_training_flag_is_restored_and_dropout_is_off(processor, images):
    torch.manual_seed(1)
    config = SiscConfig.small(vocab_size=len(processor.tokenizer), image_size=IMAGE_SIZE, hidden_size=32)
    model = SiscModel(config)
    assert config.text_config.hidden_dropout_prob > 0  # else eval mode would make no difference
    model.train()
    first = model.rank_images(CAPTIONS[2], images, processor)
    assert model.training and all(module.training for module in model.modules())
    assert model.rank_images(CAPTIONS[2], images, processor) == first  # no dropout noise
    model.eval()
    assert_same_ranking(model.rank_images(CAPTIONS[2], images, processor), first, abs=1e-6)
    assert not any(module.training for module in model.modules())
    # restored even when the call fails
    model.train()
    with pytest.raises(ValueError):
        model.rank_texts(images[0], ["a red circle", ""], processor)
    with pytest.raises(FileNotFoundError):
        model.rank_images("a red circle", images + ["/nonexistent/image.png"], processor)  # fails mid-encoding
    assert model.training


def test_available_after_auto_model_reload(model, processor, images, tmp_path):
    """The methods live in modeling_sisc.py, which save_pretrained copies into the checkpoint (remote code)."""
    from transformers import AutoModel, AutoProcessor

    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path, trust_remote_code=True)
    reloaded_processor = AutoProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(reloaded).__module__.startswith("transformers_modules")  # the checkpoint's copy, not the repo's
    assert_same_ranking(
        reloaded.rank_texts(images[4], CAPTIONS, reloaded_processor), model.rank_texts(images[4], CAPTIONS, processor)
    )
    top_two = reloaded.rank_images(CAPTIONS[4], images, reloaded_processor, top_k=2)
    assert len(top_two) == 2
    assert_same_ranking(top_two, model.rank_images(CAPTIONS[4], images, processor, top_k=2))
