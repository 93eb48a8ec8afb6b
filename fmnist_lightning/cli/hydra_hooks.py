"""What Hydra calls besides a command's task: its callbacks (``conf/hydra/default.yaml``,
``conf/evaluate.yaml``, ``conf/robustness.yaml``) and, through ``exits_on_refusal``, this
project's sweepers (``hydra_plugins/fmnist_lightning_sweepers``), with a refusal ending the
command in one ``error:`` line.

Hydra prints a traceback for any ``Exception`` raised in them (its ``run_and_report``); a
``SystemExit`` passes through it. So here, at the edge between Hydra and the library, a
``UserError`` becomes the command's exit, as ``train_run`` does for the task.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from fmnist_lightning.errors import RunError, UserError
from fmnist_lightning.training import run_dirs

log = logging.getLogger(__name__)


def exits_on_refusal(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method``, with a ``UserError`` it raises turned into ``SystemExit("error: ...")``
    (exit status 1).

    Raises:
        SystemExit: In place of a ``UserError``.
    """

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except UserError as err:
            raise SystemExit(f"error: {err}") from None

    return wrapper


class RunFolderGuard(run_dirs.RunFolderGuard):
    """``fmnist_lightning.training.run_dirs.RunFolderGuard``; its refusals end the command."""

    on_run_start = exits_on_refusal(run_dirs.RunFolderGuard.on_run_start)
    on_multirun_start = exits_on_refusal(run_dirs.RunFolderGuard.on_multirun_start)


class SweepSummary(Callback):
    """Hydra callback (``conf/hydra/default.yaml``): when a multirun ends, writes its summary
    into the sweep folder (``fmnist_lightning.sweeps.summary``) and prints it; a sweep with a
    job that did not finish ends with ``error: ...`` and exit status 1.

    Args:
        metric: The metric configurations are ranked by; ``None`` uses the config's
            ``optimized_metric``.
    """

    def __init__(self, metric: str | None = None) -> None:
        self.metric = metric

    @exits_on_refusal
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from fmnist_lightning.sweeps.summary import summarize

        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            markdown, jobs = summarize(sweep_dir, self.metric or config.get("optimized_metric") or "val/acc_best")
        except FileNotFoundError as err:
            log.warning("No sweep summary: %s", err)
            return
        except UserError as err:  # a job's files are damaged
            raise RunError(f"no sweep summary: {err}") from None
        print(
            f"\n{markdown}\nSummary files: {sweep_dir}/summary.md, summary.csv, summary_jobs.csv, summary.png",
            flush=True,
        )
        unfinished = [j for j in jobs if not j.ended]
        if unfinished:
            raise RunError(
                f"{len(unfinished)} of {len(jobs)} jobs did not finish "
                f"(jobs {', '.join(j.folder.name for j in unfinished)}); see {sweep_dir / 'summary.md'}"
            )
