"""The jobs of a sweep folder, as written by ``train.py -m``: what each set, how it ended.

Each job folder holds ``.hydra/overrides.yaml`` and ``metrics.json`` (its status and metrics, see
``fmnist_lightning.training.callbacks.RunStatus``), written by ``train.py`` even for a job that
failed before training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fmnist_lightning.overrides import parse_override
from fmnist_lightning.run_folder import OVERRIDES_FILE, RunFolder, job_number


@dataclass
class Job:
    """One job of a sweep.

    Attributes:
        overrides: ``key → value`` from its ``.hydra/overrides.yaml`` (values as written).
        status: ``finished``, ``pruned`` (by an Optuna search), ``failed``, ``interrupted``,
            ``running`` (or crashed), or ``not started`` (no ``metrics.json``).
        metrics: Its final metrics (accuracies as fractions).
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
    overrides = {o.key: o.typed or "" for o in map(parse_override, RunFolder(folder).read_overrides(fix))}
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
    """The subfolders of a sweep folder with ``.hydra/overrides.yaml`` (none for a run folder)."""
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
