"""What Hydra calls besides a command's task: its callbacks (``conf/hydra/default.yaml``,
``conf/evaluate.yaml``, ``conf/robustness.yaml``) and this project's sweepers
(``hydra_plugins/fmnist_lightning_sweepers``), with a refusal ending the command in one
``error:`` line.

Hydra prints a traceback for any ``Exception`` raised in them (its ``run_and_report``); a
``SystemExit`` passes through it. So here, at the edge between Hydra and the library, a
``UserError`` becomes the command's exit, as ``train_run`` does for the task.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from fmnist_lightning.errors import UserError
from fmnist_lightning.sweeps import callback, grid, optuna_search
from fmnist_lightning.training import guard


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


class RunFolderGuard(guard.RunFolderGuard):
    """``fmnist_lightning.training.guard.RunFolderGuard``; its refusals end the command."""

    on_run_start = exits_on_refusal(guard.RunFolderGuard.on_run_start)
    on_multirun_start = exits_on_refusal(guard.RunFolderGuard.on_multirun_start)


class SweepSummary(callback.SweepSummary):
    """``fmnist_lightning.sweeps.callback.SweepSummary``; a sweep with unfinished jobs ends
    with exit status 1."""

    on_multirun_end = exits_on_refusal(callback.SweepSummary.on_multirun_end)


class GridSweeper(grid.GridSweeper):
    """``fmnist_lightning.sweeps.grid.GridSweeper``; its refusals end the command."""

    sweep = exits_on_refusal(grid.GridSweeper.sweep)


class OptunaSweeper(optuna_search.OptunaSweeper):
    """``fmnist_lightning.sweeps.optuna_search.OptunaSweeper``; its refusals end the command."""

    setup = exits_on_refusal(optuna_search.OptunaSweeper.setup)
    sweep = exits_on_refusal(optuna_search.OptunaSweeper.sweep)
