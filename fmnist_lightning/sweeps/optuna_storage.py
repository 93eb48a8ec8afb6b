"""Where an Optuna search keeps its study (``hydra.sweeper.storage``), and the trial a sweep job is.
``storage`` is ``null`` (``<sweep>/optuna.journal``), ``journal:<file>`` (Optuna's
``JournalFileBackend``, for workers sharing a file system) or an SQLAlchemy database URL
(``sqlite:///...``, ``postgresql://...``), the only kind that records heartbeats.
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
    """``storage``, or ``journal:<sweep>/optuna.journal`` for ``None``; a journal file made absolute."""
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
    """Opens a storage and creates its tables if it is new; a worker that loses the race to
    create a new database's tables (*duplicate key value violates unique constraint*) waits and
    opens it again.

    Args:
        spec: ``journal:<file>`` or a database URL.
        heartbeat_interval: Seconds between heartbeats (databases only); ``None``: none.
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
    """An ``optuna.storages.JournalStorage`` on the file of ``journal:<file>``, its folder made."""
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
    """An ``optuna.storages.RDBStorage`` on ``spec``, tried ``attempts`` times 0.5 s × the attempt apart."""
    import optuna
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry) if heartbeat_interval else None
    for attempt in range(1, attempts + 1):
        try:
            heartbeat = {"heartbeat_interval": heartbeat_interval, "grace_period": grace_period}
            return optuna.storages.RDBStorage(spec, **heartbeat, heartbeat_stale_trial_callback=retry)
        except (IntegrityError, ProgrammingError):  # another worker is creating the tables
            if attempt == attempts:
                raise
            time.sleep(0.5 * attempt)
        except (OperationalError, ImportError, ValueError) as err:  # ImportError: no driver for the URL
            hint = "install its driver (PostgreSQL: pip install -e '.[cluster]'), " * isinstance(err, ImportError)
            raise RunError(
                f"hydra.sweeper.storage={spec}: cannot open the database ({str(err).strip().splitlines()[0]}); "
                f"{hint}check the URL, that the server is up, and that the database exists"
            ) from None
    raise AssertionError("unreachable")


def sweep_study(sweep_dir: str | Path) -> Any:
    """The ``optuna.Study`` a search kept in its sweep folder with the default storage and name.

    Raises:
        RunError: The journal file cannot be opened.
        KeyError: The folder's journal holds no such study.
    """
    import optuna

    sweep_dir = Path(sweep_dir)
    return optuna.load_study(study_name=sweep_dir.name, storage=open_storage(storage_spec(None, sweep_dir)))


def trial_overrides(number: int, spec: str, study_name: str) -> list[str]:
    """The ``hydra.*`` overrides that tell a sweep job which trial it is (``current_trial``)."""
    fields = {"trial": number, "storage": quoted(spec), "study_name": quoted(study_name)}
    return [f"hydra.sweeper.{key}={value}" for key, value in fields.items()]


def current_trial() -> Any:
    """The ``optuna.trial.Trial`` this sweep job is, in the study's storage with the sweep's pruner
    (which Optuna does not store); ``None`` outside the jobs of ``hydra/sweeper=optuna``."""
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
