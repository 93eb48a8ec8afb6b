"""Where an Optuna search keeps its study (``hydra.sweeper.storage``), and the trial a sweep
job is.

``storage`` is one of:

- ``null`` (the default): a journal file in the sweep folder, ``<sweep>/optuna.journal``, so
  a search continued in its folder continues its study, and jobs in other processes
  (``hydra/launcher=joblib``, SLURM) report to it;
- ``journal:<file>``: Optuna's journal file storage (``JournalFileBackend``), for several
  workers on machines that share a file system but have no database server;
- a database URL (SQLAlchemy's): ``sqlite:///outputs/optuna.db``, or
  ``postgresql://user:password@host:5432/optuna`` for workers on many machines.

Only a database records heartbeats (Optuna's ``RDBStorage``): with
``hydra.sweeper.heartbeat_interval`` set, a trial whose worker died is marked FAIL after the
grace period, and run again (``RetryHeartbeatStaleTrialCallback``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fmnist_lightning.errors import RunError
from fmnist_lightning.overrides import quoted

#: The prefix of a journal file storage.
JOURNAL = "journal:"
#: The default storage's file, in the sweep folder.
JOURNAL_FILE = "optuna.journal"


def storage_spec(storage: str | None, sweep_dir: Path) -> str:
    """The storage a search uses: ``storage``, or ``journal:<sweep>/optuna.journal`` for
    ``None``; a relative journal file made absolute, so jobs anywhere find the same file."""
    if not storage:
        return f"{JOURNAL}{(sweep_dir / JOURNAL_FILE).resolve()}"
    if storage.startswith(JOURNAL):
        return f"{JOURNAL}{Path(storage.removeprefix(JOURNAL)).expanduser().resolve()}"
    return storage


def open_storage(
    spec: str,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    max_retry: int = 0,
    attempts: int = 5,
) -> Any:
    """Opens a storage (see the module docstring) and creates its tables if it is new.

    Optuna creates a database's tables the first time a process opens it. Two workers
    started together on a new PostgreSQL database would both try, and the second would stop
    with *duplicate key value violates unique constraint*; the loser of that race waits and
    opens the database again, which then finds the tables.

    Args:
        spec: ``journal:<file>`` or a database URL.
        heartbeat_interval: Seconds between heartbeats of running trials (databases only);
            ``None``: no heartbeats.
        grace_period: Seconds without a heartbeat after which a trial is failed; ``None``:
            Optuna's default, twice the interval.
        max_retry: How often a trial failed that way is run again.
        attempts: How often to open the database while another process creates its tables.

    Returns:
        An ``optuna.storages.JournalStorage`` or ``RDBStorage``.

    Raises:
        RunError: The database cannot be opened (a bad URL, a missing driver, an unreachable
            server, a missing folder), or the journal file cannot be made.
    """
    if spec.startswith(JOURNAL):
        return _open_journal(spec)
    return _open_database(spec, heartbeat_interval, grace_period, max_retry, attempts)


def _open_journal(spec: str) -> Any:
    """An ``optuna.storages.JournalStorage`` on the file of ``journal:<file>``, its folder made.

    Raises:
        RunError: The journal file cannot be made.
    """
    import optuna

    path = Path(spec.removeprefix(JOURNAL))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    except OSError as err:
        why = err.strerror or err
        raise RunError(f"hydra.sweeper.storage={spec}: cannot write {path} ({why})") from None


def _open_database(
    spec: str, heartbeat_interval: int | None, grace_period: int | None, max_retry: int, attempts: int
) -> Any:
    """An ``optuna.storages.RDBStorage`` on the database URL ``spec``, opened up to ``attempts``
    times, 0.5 s × the attempt apart, while another process creates its tables (the other
    arguments are ``open_storage``'s).

    Raises:
        RunError: The database cannot be opened (a bad URL, a missing driver, an unreachable
            server, a missing folder).
        sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError: Its tables were still
            being created at the last attempt.
    """
    import optuna
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry) if heartbeat_interval else None
    for attempt in range(1, attempts + 1):
        try:
            return optuna.storages.RDBStorage(
                spec,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=retry,
            )
        except (IntegrityError, ProgrammingError):  # another worker is creating the tables
            if attempt == attempts:
                raise
            time.sleep(0.5 * attempt)
        except (OperationalError, ImportError, ValueError) as err:  # ImportError: no driver for the URL
            hint = "install its driver (PostgreSQL: pip install -e '.[cluster]'), " * isinstance(err, ImportError)
            raise RunError(
                f"hydra.sweeper.storage={spec}: cannot open the database "
                f"({str(err).strip().splitlines()[0]}); {hint}check the URL, that the server is up, "
                "and that the database exists"
            ) from None
    raise AssertionError("unreachable")


def sweep_study(sweep_dir: str | Path) -> Any:
    """The ``optuna.Study`` a search kept in its sweep folder (the default storage, a journal
    file named ``optuna.journal``, and study name, the folder's name), to read from Python.

    Raises:
        RunError: The journal file cannot be opened.
        KeyError: The folder's journal holds no such study.
    """
    import optuna

    sweep_dir = Path(sweep_dir)
    return optuna.load_study(study_name=sweep_dir.name, storage=open_storage(storage_spec(None, sweep_dir)))


def trial_overrides(number: int, spec: str, study_name: str) -> list[str]:
    """The Hydra overrides that tell a sweep job which trial it is (read back by
    ``current_trial``); ``hydra.*`` overrides, so they are not among the job's own."""
    return [
        f"hydra.sweeper.trial={number}",
        f"hydra.sweeper.storage={quoted(spec)}",
        f"hydra.sweeper.study_name={quoted(study_name)}",
    ]


def current_trial() -> Any:
    """The Optuna trial this sweep job is (an ``optuna.trial.Trial`` in the study's storage,
    so reports reach the sweeper whatever process runs the job, judged by the sweep's pruner,
    ``hydra.sweeper.pruner``, which Optuna does not store), or ``None`` outside the jobs of
    ``hydra/sweeper=optuna``."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    if not HydraConfig.initialized():
        return None
    sweeper = HydraConfig.get().sweeper
    if sweeper.get("trial") is None:
        return None
    import optuna

    pruner = instantiate(sweeper.pruner) if sweeper.get("pruner") else optuna.pruners.NopPruner()
    study = optuna.load_study(study_name=sweeper.study_name, storage=open_storage(sweeper.storage), pruner=pruner)
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, int(sweeper.trial))
    return optuna.trial.Trial(study, trial_id)
