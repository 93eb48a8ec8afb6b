"""A sweep continued in its own folder (the same ``hydra.sweep.dir``, or ``resume=<sweep folder>``):
``plan`` compares the numbered jobs the command makes with the job folders there. A job that
``finished``, ``failed`` or was ``pruned`` is kept untouched; one interrupted with a ``last.ckpt``
continues from it in its folder; one without is moved to ``<sweep>/.abandoned/`` and run again; a
job with no folder is run. A folder whose overrides or saved config differ from the command's job of
the same number refuses the whole continuation before any job runs.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from fmnist_lightning.artifacts import read_yaml
from fmnist_lightning.errors import FolderInUseError, RunError
from fmnist_lightning.overrides import parse_overrides
from fmnist_lightning.run_folder import LAST_CHECKPOINT, RunFolder, job_number
from fmnist_lightning.sweeps.jobs import job_folders, read_job
from fmnist_lightning.training.precision import AUTO
from fmnist_lightning.trust import TRUST_KEY

log = logging.getLogger(__name__)

#: Job states that are a result, kept as they are when a sweep is continued.
DONE = ("finished", "failed", "pruned")
#: Where a job killed before its first checkpoint is moved, inside the sweep folder.
ABANDONED = ".abandoned"
#: Config keys that say where a run is kept rather than what it trains.
PLUMBING_KEYS = ("resume", "output_dir", "ckpt_path", TRUST_KEY)
#: The precision key, which a run with ``auto`` rewrites in its saved config.
PRECISION = "trainer.precision"


@dataclass
class Plan:
    """What a continued sweep does with its jobs.

    Attributes:
        done: Numbers of the jobs that are results already, with their folders.
        run: ``number → overrides`` of the jobs to launch, in number order.
        continued: Numbers of the jobs continued from their ``last.ckpt``.
    """

    done: dict[int, Path]
    run: dict[int, list[str]]
    continued: list[int]


def existing_jobs(sweep_dir: Path) -> dict[int, Path]:
    """The job folders of ``sweep_dir`` by job number.

    Raises:
        RunError: Two folders have the same number (the folder holds two sweeps).
    """
    found: dict[int, Path] = {}
    for folder in job_folders(sweep_dir):
        number = job_number(folder)
        if number in found:
            raise RunError(
                f"the sweep folder {sweep_dir} holds two jobs numbered {number} ({found[number].name}, "
                f"{folder.name}); it is not one sweep, so it cannot be continued. Pick a new folder."
            )
        found[number] = folder
    return found


def _flat(config: object, prefix: str = "") -> dict[str, object]:
    """``dotted key → value`` of a nested container."""
    if isinstance(config, dict):
        items: dict[str, object] = {}
        for key, value in config.items():
            items.update(_flat(value, f"{prefix}{key}."))
        return items or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): config}


def config_changes(saved: Path, composed: DictConfig) -> list[str]:
    """``key: saved → now`` for each key that differs between a job's saved config and the one
    composed now (unresolved; ``PLUMBING_KEYS`` and ``trainer.precision=auto`` left out)."""
    before = _flat(read_yaml(saved, dict, "It is the job's config: restore it, or move the job out of the sweep."))
    now = _flat(OmegaConf.to_container(composed, resolve=False))
    keys = sorted(k for k in set(before) | set(now) if k.split(".")[0] not in PLUMBING_KEYS)
    if now.get(PRECISION) == AUTO:  # the run wrote the precision auto chose (training.precision)
        keys.remove(PRECISION)
    return [f"{k}: {before.get(k, '(none)')} → {now.get(k, '(none)')}" for k in keys if before.get(k) != now.get(k)]


def _refuse(sweep_dir: Path, why: str) -> RunError:
    return RunError(
        f"the sweep folder {sweep_dir} holds an earlier sweep that this command cannot continue: {why}. Continue it "
        "with the command that started it (python train.py resume=<sweep folder> repeats it), or pick a new folder."
    )


def plan(
    sweep_dir: Path,
    jobs: dict[int, Sequence[str]],
    compose: Callable[[list[str]], DictConfig],
    complete: bool = True,
    wanted: set[int] | None = None,
) -> Plan:
    """Compares the jobs a sweep command makes with the job folders in ``sweep_dir``.

    Args:
        jobs: ``job number → overrides`` of every job the command makes (a search's trials so far).
        compose: Composes a job's config (without its ``hydra`` node) from its overrides.
        complete: Whether ``jobs`` are all the sweep's jobs, so that a folder of another number
            is a stray; ``False`` for the next trials of a search.
        wanted: The jobs that may run (``None``: all); the others are only checked.

    Raises:
        RunError: A job folder's overrides or config differ from this command's job of the same
            number, the folder holds a job this command does not make, or a job folder is in use.
    """
    found = existing_jobs(sweep_dir)
    strays = sorted(set(found) - set(jobs))
    if complete and strays:
        raise _refuse(sweep_dir, f"it has job {found[strays[0]].name}, which this command does not make")
    done: dict[int, Path] = {}
    run: dict[int, list[str]] = {}
    continued: list[int] = []
    for number in sorted(jobs):
        overrides = list(jobs[number])
        folder = found.get(number)
        if folder is None:
            if wanted is None or number in wanted:
                run[number] = overrides
            continue
        job = read_job(folder)
        own = [(o.key, o.typed) for o in parse_overrides(overrides) if not o.text.startswith(("hydra.", "hydra/"))]
        own = [(k, v) for k, v in own if k != TRUST_KEY]  # this command's trust, not the job's
        ran = {k: v for k, v in job.overrides.items() if k != TRUST_KEY}
        if list(ran.items()) != [(k, v or "") for k, v in own]:
            written = " ".join(f"{k}={v}" for k, v in ran.items())
            mine = " ".join(f"{k}={v}" for k, v in own)  # not the hydra.* ones: a database URL has a password
            why = f"its job {folder.name} ran {written}, and this command's job {number} does {mine}"
            raise _refuse(sweep_dir, why)
        config = compose(overrides)
        changes = config_changes(RunFolder(folder).config_file, config)
        if changes:
            listed = "; ".join(changes[:3])
            raise _refuse(sweep_dir, f"the config of its job {folder.name} has changed since it ran ({listed})")
        if job.status in DONE or (wanted is not None and number not in wanted):
            done[number] = folder
            continue
        _check_idle(folder)
        with open_dict(config):
            config.output_dir = str(folder)  # where the job's checkpoint_dir is
        if RunFolder(folder).left_unfinished(config):  # the job will continue itself (training.resume.continue_job)
            run[number] = [*overrides, f"hydra.output_subdir={RunFolder.new_attempt()}"]
            continued.append(number)
        else:
            if job.status != "not started":  # killed before its first checkpoint: nothing to keep
                abandon(sweep_dir, folder)
            run[number] = overrides
    return Plan(done, run, continued)


def _check_idle(folder: Path) -> None:
    """Refuses a job folder that a process still writes in (a job that outlived its killed sweep)."""
    try:
        RunFolder(folder).lock()
    except FolderInUseError as err:
        raise RunError(f"{err} The sweep is continued once that job has ended.") from None
    RunFolder(folder).release()


def abandon(sweep_dir: Path, folder: Path) -> Path:
    """Moves a job killed before its first checkpoint into ``<sweep>/.abandoned/``."""
    target = sweep_dir / ABANDONED / f"{folder.name}_{datetime.now():%Y-%m-%d_%H-%M-%S_%f}"
    target.parent.mkdir(exist_ok=True)
    shutil.move(folder, target)
    log.info("Job %s was killed before its first checkpoint; moved to %s and run again", folder.name, target)
    return target


def runs_of(numbers: Iterable[int], size: int | None) -> list[list[int]]:
    """``numbers`` (sorted) cut into runs of consecutive numbers of at most ``size`` each
    (``None``: no limit): a launcher numbers the jobs of one launch consecutively."""
    runs: list[list[int]] = []
    for number in sorted(numbers):
        if runs and number == runs[-1][-1] + 1 and (size is None or len(runs[-1]) < size):
            runs[-1].append(number)
        else:
            runs.append([number])
    return runs


def report(plan: Plan, total: int) -> None:
    """Logs what a continued sweep skips and continues."""
    if plan.done or plan.continued:
        cont, names = len(plan.continued), ", ".join(map(str, plan.continued)) or "none"
        message = "Continuing the sweep: %d of %d jobs done and kept, %d continued from %s (%s), %d to run"
        log.info(message, len(plan.done), total, cont, LAST_CHECKPOINT, names, len(plan.run) - cont)
