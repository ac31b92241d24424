"""The tiny fixtures the task tests share. The repository root is importable through pytest's `pythonpath` setting
(pyproject.toml); the model files and `sisc_train` also through the editable install (scripts/setup_env.sh)."""

import pytest
from accelerate.state import AcceleratorState, GradientState


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Accelerate's process state is a singleton that one process sets up once; the tests run many trainers with
    other settings in one process, so each test starts from a clean state (as accelerate's own AccelerateTestCase
    does). The training code never resets it: a training process runs one job."""
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


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
