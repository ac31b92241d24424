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
