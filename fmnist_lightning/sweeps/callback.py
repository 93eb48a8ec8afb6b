"""The Hydra callbacks of every multirun (``conf/hydra/default.yaml``): the swept keys for the
jobs' folder names, an Optuna study's database ready before the sweeper opens it, and the
summary at the end."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from fmnist_lightning.errors import UserError
from fmnist_lightning.sweeps.summary import summarize
from fmnist_lightning.training.run_dirs import SWEPT_KEYS_ENV

log = logging.getLogger(__name__)


class SweptKeys(Callback):
    """Hydra callback: when a multirun starts, puts the keys it varies (command-line sweeps
    such as ``optimizer.lr=0.01,0.1`` and a sweeper's ``params``, e.g. Optuna's) into
    ``FMNIST_SWEPT_KEYS``, which names its job folders (``run_dirs.job_dir``); jobs started in
    other processes inherit it."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
        keys = [o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override()]
        keys += list(config.hydra.sweeper.get("params") or {})
        os.environ[SWEPT_KEYS_ENV] = ",".join(dict.fromkeys(keys))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        os.environ.pop(SWEPT_KEYS_ENV, None)


class OptunaStorage(Callback):
    """Hydra callback: when a multirun with an Optuna database starts
    (``hydra.sweeper.storage``, e.g. ``postgresql://...``), opens it once, so that a bad URL,
    a missing driver or an unreachable server stops the sweep with one line saying so, and
    creates Optuna's tables if the database is new.

    Optuna creates them the first time a process opens the database. Two workers started
    together on a new PostgreSQL database would both try, and the second would stop with
    *duplicate key value violates unique constraint*; here the loser of that race waits and
    opens the database again, which then finds the tables.

    Args:
        attempts: How often to open the database while another process creates the tables.
    """

    def __init__(self, attempts: int = 5) -> None:
        self.attempts = attempts

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        storage = config.hydra.sweeper.get("storage")
        if not storage:
            return
        try:
            import optuna
            from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
        except ImportError:  # not an Optuna sweep
            return
        for attempt in range(1, self.attempts + 1):
            try:
                optuna.storages.RDBStorage(storage)
                return
            except (IntegrityError, ProgrammingError):  # another worker is creating the tables
                if attempt == self.attempts:
                    raise
                time.sleep(0.5 * attempt)
            except (OperationalError, ImportError, ValueError) as err:  # ImportError: no driver for the URL
                hint = "install its driver (PostgreSQL: pip install -e '.[cluster]'), " * isinstance(err, ImportError)
                raise SystemExit(
                    f"error: hydra.sweeper.storage={storage}: cannot open the database "
                    f"({str(err).strip().splitlines()[0]}); {hint}check the URL, that the server is up, "
                    "and that the database exists"
                ) from None


class SweepSummary(Callback):
    """Hydra callback (``conf/hydra/default.yaml``): when a multirun ends, writes and prints
    its summary, and exits with status 1 if any job did not finish.

    Args:
        metric: The metric configurations are ranked by; ``None`` uses the config's
            ``optimized_metric``.
    """

    def __init__(self, metric: str | None = None) -> None:
        self.metric = metric

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            markdown, jobs = summarize(sweep_dir, self.metric or config.get("optimized_metric") or "val/acc_best")
        except FileNotFoundError as err:
            log.warning("No sweep summary: %s", err)
            return
        except UserError as err:  # a job's files are damaged
            raise SystemExit(f"error: no sweep summary: {err}") from None
        print(
            f"\n{markdown}\nSummary files: {sweep_dir}/summary.md, summary.csv, summary_jobs.csv, summary.png",
            flush=True,
        )
        unfinished = [j for j in jobs if j.status != "finished"]
        if unfinished:
            raise SystemExit(
                f"error: {len(unfinished)} of {len(jobs)} jobs did not finish "
                f"(jobs {', '.join(j.folder.name for j in unfinished)}); see {sweep_dir / 'summary.md'}"
            )
