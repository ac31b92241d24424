"""Runs examples/zero_shot_retrieval.ipynb headless, on the random-model fallback (no trained checkpoint needed)."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "examples", "zero_shot_retrieval.ipynb")


def test_zero_shot_notebook_runs_on_a_random_model(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="notebook tests need the test extras (nbformat)")
    nbclient = pytest.importorskip("nbclient", reason="notebook tests need the test extras (nbclient)")
    pytest.importorskip("ipykernel", reason="notebook tests need the test extras (ipykernel)")

    # The kernel inherits this environment: no trained model (-> random fallback), no display, no downloads.
    monkeypatch.setenv("SISC_MODEL", str(tmp_path / "no-such-checkpoint"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    # Prefer this environment's "python3" kernelspec over one a user may have installed for another python.
    monkeypatch.setenv("JUPYTER_PREFER_ENV_PATH", "1")

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), (
        "commit the notebook with its outputs cleared"
    )
    # Extra cells, only in this in-memory copy: which python ran the notebook, and what the figure holds (with the
    # Agg backend plt.show() displays nothing, so the figure is inspected rather than its output).
    probe = nbformat.v4.new_code_cell(
        "import sys\n"
        "print('KERNEL_PYTHON', sys.prefix)\n"
        "print('FIGURE_TITLES', [axis.get_title().splitlines()[0] for axis in figure.axes])"
    )
    notebook.cells.append(probe)
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": ROOT}}
    )
    client.execute()  # raises CellExecutionError, with the traceback, if a cell fails

    def printed(cell_id):
        cell = next(cell for cell in notebook.cells if cell.get("id") == cell_id)
        return "".join(output.get("text", "") for output in cell.outputs if output.output_type == "stream")

    assert f"KERNEL_PYTHON {sys.prefix}\n" in printed(probe.id), "the kernel is not this environment's python"
    assert "torch " in printed("setup")
    assert "RANDOM small model" in printed("load-model")
    assert "8 images, 24 captions" in printed("load-examples")

    ranked_images = printed("rank-images").splitlines()
    assert len(ranked_images) == 4 and ranked_images[0].startswith("1. shapes_0")
    top_names = [line.split()[1] for line in ranked_images]
    assert f"FIGURE_TITLES {[f'{rank}. {name}' for rank, name in enumerate(top_names, start=1)]}" in printed(probe.id)

    ranked_captions = printed("rank-texts").splitlines()
    assert ranked_captions[0] == "captions ranked for shapes_03.png:"
    assert len(ranked_captions) == 9
    assert all(("[true]" in line) != ("[false]" in line) for line in ranked_captions[1:])
