"""notebooks/explore_run.ipynb runs top to bottom on a real run and shows its figures."""

from __future__ import annotations

import os
from pathlib import Path

import nbclient
import nbformat
import pytest

from conftest import REPO


@pytest.mark.slow  # a Jupyter kernel: a new process that imports the package (about 9 s)
def test_explore_run_notebook(trained_run: Path, monkeypatch) -> None:
    monkeypatch.setenv("FMNIST_RUN_DIR", str(trained_run))
    notebook = nbformat.read(REPO / "notebooks" / "explore_run.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO / "notebooks")}}
    )
    client.execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3  # curves, confusion matrix, misclassified examples
    assert any("Shirt" in o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert os.environ["FMNIST_RUN_DIR"] == str(trained_run)
