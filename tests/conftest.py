"""Make the repository root importable (the model files live at top level, as in a Hub model repo), and the tiny
fixtures the task tests share."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture(scope="module")
def processor():
    """The default processor at 16 px (a test file may define its own `processor`)."""
    from processing_sisc import build_default_processor

    return build_default_processor(image_size=16)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny random-weight pretraining checkpoint, one per test module."""
    from tests.helpers.tiny_data import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("pretrained"))
