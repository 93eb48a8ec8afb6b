"""The documentation site builds with no warning: every page in the nav, every link and
anchor found, every docstring of the API reference parsed (mkdocs.yml is strict)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO


@pytest.mark.slow  # about 3 s; CI runs it, and `mkdocs build --strict` is the same check by hand
def test_site_builds_strictly(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert result.returncode == 0 and "WARNING" not in result.stderr, result.stderr
    site = tmp_path / "site"
    pages = [
        "configuration",
        "runs",
        "sweeps",
        "tensorboard",
        "evaluate",
        "models",
        "performance",
        "REPRODUCTION",
        "clusters",
    ]
    assert (site / "index.html").is_file() and all((site / page / "index.html").is_file() for page in pages)
    assert "Training throughput" in (site / "performance" / "index.html").read_text()  # RESULTS.md, included
    reference = (site / "reference" / "index.html").read_text()
    assert 'id="fmnist_lightning.evaluation.runs.load_trained"' in reference
    assert 'id="fmnist_lightning.models.nets.ThreeConvNet"' in reference
