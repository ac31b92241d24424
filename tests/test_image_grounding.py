"""benchmarks/image_grounding.py: the linear probe it reports."""

import torch

from benchmarks.image_grounding import probe_accuracy


def test_image_grounding_probe_separates_what_the_features_hold():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(400, 8, generator=generator)
    visible = (features[:, 0] > 0).long().tolist()  # a linear function of the features
    hidden = torch.randint(0, 2, (400,), generator=generator).tolist()  # unrelated to them
    accuracy, majority = probe_accuracy(features, visible)
    assert accuracy > 95 and 35 < majority < 65
    accuracy, majority = probe_accuracy(features, hidden)
    assert accuracy < 70


def test_itm_as_pretrained_scores_every_caption_against_a_false_image(pretrained, tmp_path):
    from benchmarks.image_grounding import itm_as_pretrained
    from modeling_sisc import SiscModel
    from sisc_train.data.tasks import load_processor
    from sisc_train.synthetic.shapes import ShapesConfig, load_shapes_dataset

    config = ShapesConfig(num_train=4, num_annotated=1, num_test=12, num_validation=1)
    test = load_shapes_dataset(config, cache_dir=str(tmp_path))["test"]
    model = SiscModel.from_pretrained(pretrained).eval()
    results, false_negatives = itm_as_pretrained(model, load_processor(pretrained), test, batch=16)
    assert [r["negatives"] for r in results] == ["hard", "random"]
    for result in results:
        assert 0 < result["captions"] <= len(test)  # a caption true of every image of its batch has no negative
        assert 0 <= result["accuracy"] <= 100 and 0 <= result["true_pair_scores_higher"] <= 100
    # the false negatives among each caption's other images, counted against the ground truth
    images = len(set(test["image_id"]))
    assert false_negatives["most_similar"]["negatives"] == false_negatives["random"]["negatives"] == len(test)
    assert 0 <= false_negatives["scored_at_or_above_the_pair"]["negatives"] <= len(test) * (images - 1)
    for kind in false_negatives.values():
        assert 0 <= kind["false_negatives"] <= kind["negatives"]
