"""The benchmark script runs every variant end to end (tiny windows; figures not checked)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_script


@pytest.mark.slow  # about a minute: four subprocesses, each training a few batches
def test_benchmark_runs_all_variants(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    result = run_script(
        "benchmarks/benchmark.py",
        "--recipes",
        "recipe_004",
        "--reps",
        "1",
        "--images",
        "300",
        "--warmup",
        "2",
        "--data-root",
        str(data_root),
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert [r["variant"] for r in summary["results"]] == ["a", "b", "c", "d"]
    assert all(r["images_per_s"] > 0 and r["peak_rss_mb"] > 0 for r in summary["results"])
    assert summary["results"][3]["batch_size"] == 256
    assert "| recipe_004 |" in summary["table"] and "ratio to a" in summary["table"]
