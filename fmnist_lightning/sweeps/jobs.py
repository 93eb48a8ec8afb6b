"""The jobs of a sweep folder, as written by ``train.py -m``: what each set, how it ended.

A sweep folder (``outputs/multirun/<date>_<time>/``) holds one folder per job, each with
``.hydra/overrides.yaml`` (what the command line set for that job) and ``metrics.json``
(its status and metrics, see ``fmnist_lightning.training.run_status.RunStatus``). A job that
failed before training has no ``metrics.json`` of its own making; ``train.py`` writes one
with ``status: failed`` and the error line for it, so every job is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fmnist_lightning.overrides import parse_override
from fmnist_lightning.run_folder import OVERRIDES_FILE, RunFolder
from fmnist_lightning.training.run_dirs import job_number


@dataclass
class Job:
    """One job of a sweep.

    Attributes:
        folder: The job's folder.
        overrides: ``key → value`` from its ``.hydra/overrides.yaml`` (values as written).
        status: ``finished``, ``pruned`` (by an Optuna search), ``failed``, ``interrupted``,
            ``running`` (or crashed), or ``not started`` (no ``metrics.json``).
        metrics: Its final metrics (accuracies as fractions).
        epochs: Training epochs completed.
        wall_time_s: Seconds the job ran.
        error: Why it stopped, on one line, or ``None``.
    """

    folder: Path
    overrides: dict[str, str]
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    epochs: int | None = None
    wall_time_s: float | None = None
    error: str | None = None

    @property
    def ended(self) -> bool:
        """Whether the job ended as asked: it finished, or its search pruned it."""
        return self.status in ENDED


#: The states of a job that ended as asked.
ENDED = ("finished", "pruned")


def read_job(folder: Path) -> Job:
    """Reads one job folder.

    Raises:
        DamagedFileError: Its ``.hydra/overrides.yaml`` or ``metrics.json`` is damaged.
    """
    fix = "It lists the job's command-line overrides: restore it (e.g. [] for none), or move the job out of the sweep."
    overrides = {}
    for line in RunFolder(folder).read_overrides(fix):
        override = parse_override(line)
        key, value = override.key, override.typed
        overrides[key] = value or ""
    status = RunFolder(folder).read_status()
    if not status:
        return Job(folder, overrides, "not started")
    return Job(
        folder,
        overrides,
        status.get("status", "unknown"),
        {k: float(v) for k, v in (status.get("metrics") or {}).items()},
        status.get("epochs"),
        status.get("wall_time_s"),
        " ".join(str(status["error"]).split()) if status.get("error") else None,  # one line
    )


def job_folders(sweep_dir: Path) -> list[Path]:
    """The job folders of a sweep folder: its subfolders with ``.hydra/overrides.yaml``
    (none when it is not a folder, or holds no job, as a run folder does not)."""
    if not sweep_dir.is_dir():
        return []
    return [p for p in sweep_dir.iterdir() if RunFolder(p).overrides_file.is_file()]


def read_sweep(sweep_dir: str | Path) -> list[Job]:
    """All jobs of a sweep folder, in job-number order.

    Raises:
        FileNotFoundError: ``sweep_dir`` holds no job folders.
    """
    sweep_dir = Path(sweep_dir)
    folders = job_folders(sweep_dir)
    if not folders:
        raise FileNotFoundError(
            f"{sweep_dir} holds no sweep jobs (folders with {OVERRIDES_FILE}); pass a folder under outputs/multirun/"
        )
    return sorted((read_job(p) for p in folders), key=lambda j: (job_number(j.folder), j.folder.name))
