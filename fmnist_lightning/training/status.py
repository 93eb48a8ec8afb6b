"""A run folder's ``metrics.json``: how far the run got, kept up to date while it trains.

Written by ``fmnist_lightning.training.callbacks.RunStatus`` (and by ``train.py`` for a
job that failed before training); read by resume, sweep summaries and the notebook.
"""

from __future__ import annotations

import json
from pathlib import Path

#: The run-status file of a run folder (see fmnist_lightning.training.callbacks.RunStatus).
STATUS_FILE = "metrics.json"


def read_status(run_dir: Path) -> dict:
    """A run folder's ``metrics.json`` (see ``RunStatus``),
    or ``{}`` when it has none."""
    path = run_dir / STATUS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def write_status(
    output_dir: Path,
    status: str,
    epochs: int = 0,
    global_step: int = 0,
    best_checkpoint: str | None = None,
    wall_time_s: float | None = None,
    metrics: dict[str, float] | None = None,
    error: str | None = None,
) -> None:
    """Writes a run folder's ``metrics.json`` (the fields are described in
    ``RunStatus``), atomically: a reader never sees half
    of it."""
    summary = {
        "status": status,
        "epochs": epochs,
        "global_step": global_step,
        "best_checkpoint": best_checkpoint,
        "wall_time_s": wall_time_s,
        "metrics": metrics or {},
        "error": error,
    }
    path = output_dir / STATUS_FILE
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(summary, indent=2) + "\n")
    partial.replace(path)


def record_failure(output_dir: Path, error: str) -> None:
    """Marks a run ``failed`` in its ``metrics.json`` with ``error``, unless the run already
    wrote its own failed status (which has more: epochs, step, metrics)."""
    if read_status(output_dir).get("status") == "failed":
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    write_status(output_dir, "failed", error=error)
