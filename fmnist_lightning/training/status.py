"""A run folder's ``metrics.json``: how far the run got, kept up to date while it trains.

Written by ``fmnist_lightning.training.callbacks.RunStatus`` (and by ``train.py`` for a
job that failed before training); read by resume, sweep summaries and the notebook.
"""

from __future__ import annotations

import json
from pathlib import Path

from fmnist_lightning.artifacts import read_json, write_atomically
from fmnist_lightning.errors import DamagedFileError

#: The run-status file of a run folder (see fmnist_lightning.training.callbacks.RunStatus).
STATUS_FILE = "metrics.json"


#: What to do about a damaged ``metrics.json``.
STATUS_FIX = (
    "It is the run's status: delete it and run the command again (a resume continues from "
    "checkpoints/last.ckpt and writes it anew; a sweep summary lists the job as not started)."
)
#: The fields a reader relies on, and their types.
STATUS_FIELDS = {
    "status": str,
    "epochs": int,
    "trained": bool,
    "global_step": int,
    "metrics": dict,
    "stopped_by": str,
    "limits": dict,
}


def read_status(run_dir: Path) -> dict:
    """A run folder's ``metrics.json`` (see ``RunStatus``), or ``{}`` when it has none.

    Raises:
        DamagedFileError: The file is unreadable, or a field has the wrong type.
    """
    path = Path(run_dir) / STATUS_FILE
    if not path.is_file():
        return {}
    status = read_json(path, STATUS_FIX)
    for name, kind in STATUS_FIELDS.items():
        if status.get(name) is not None and not isinstance(status[name], kind):
            raise DamagedFileError(path, f"its {name} is {status[name]!r}, not a {kind.__name__}", STATUS_FIX)
    for key, value in (status.get("metrics") or {}).items():
        if not isinstance(value, int | float):
            raise DamagedFileError(path, f"its metric {key} is {value!r}, not a number", STATUS_FIX)
    return status


def write_status(
    output_dir: Path,
    status: str,
    epochs: int = 0,
    global_step: int = 0,
    best_checkpoint: str | None = None,
    wall_time_s: float | None = None,
    metrics: dict[str, float] | None = None,
    error: str | None = None,
    trained: bool = False,
    first_step_s: float | None = None,
    stopped_by: str | None = None,
    limits: dict | None = None,
) -> None:
    """Writes a run folder's ``metrics.json`` (the fields are described in
    ``RunStatus``), atomically: a reader never sees half
    of it.

    Raises:
        OSError: The file cannot be written (the earlier one is then left as it was).
    """
    summary = {
        "status": status,
        "epochs": epochs,
        "trained": trained,
        "global_step": global_step,
        "best_checkpoint": best_checkpoint,
        "wall_time_s": wall_time_s,
        "first_step_s": first_step_s,
        "metrics": metrics or {},
        "error": error,
        "stopped_by": stopped_by,
        "limits": limits,
    }
    write_atomically(output_dir / STATUS_FILE, json.dumps(summary, indent=2) + "\n")


def record_failure(output_dir: Path, error: str) -> None:
    """Marks a run ``failed`` in its ``metrics.json`` with ``error``, unless the run already
    wrote its own failed status (which has more: epochs, step, metrics)."""
    if read_status(output_dir).get("status") == "failed":
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    write_status(output_dir, "failed", error=error)
