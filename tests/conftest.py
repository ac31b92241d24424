"""The tiny fixtures the task tests share. The repository root is importable through pytest's `pythonpath` setting
(pyproject.toml); the model files and `sisc_train` also through the editable install (scripts/setup_env.sh)."""

import pytest


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
