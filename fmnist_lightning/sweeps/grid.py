"""The grid sweeper of ``python train.py -m a=1,2 b=x,y`` (``conf/hydra/sweeper/grid.yaml``): the
jobs of Hydra's ``BasicSweeper``, numbered alike, made continuable (``sweeps.continuing``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from omegaconf import DictConfig, OmegaConf, open_dict

from fmnist_lightning.overrides import parse_overrides, quoted, sweep_overrides
from fmnist_lightning.run_folder import SWEEP_CONFIG, RunFolder, job_dir
from fmnist_lightning.sweeps import continuing

log = logging.getLogger(__name__)


def composer(sweeper: Any) -> Any:
    """A function composing a job's config (its ``hydra`` node dropped) from its overrides."""

    def compose(overrides: list[str]) -> DictConfig:
        config = sweeper.hydra_context.config_loader.load_sweep_config(sweeper.config, overrides)
        with open_dict(config):
            config.pop("hydra")
        return config

    return compose


def launch(
    sweeper: Any,
    jobs: dict[int, list[str]],
    batch_size: int | None = None,
    complete: bool = True,
    wanted: set[int] | None = None,
) -> continuing.Plan:
    """Launches the jobs the sweep folder still needs (``continuing.plan``, whose arguments these
    are) in runs of consecutive job numbers of at most ``batch_size``; returns the plan.

    Raises:
        RunError: The folder holds a sweep this command cannot continue (nothing is launched).
    """
    sweep_dir = Path(sweeper.config.hydra.sweep.dir)
    plan = continuing.plan(sweep_dir, jobs, composer(sweeper), complete, wanted)
    continuing.report(plan, len(jobs))
    swept = swept_keys(sweeper.config)
    for numbers in continuing.runs_of(plan.run, batch_size):
        batch = [[*plan.run[n], *job_folder(sweep_dir, n, plan.run[n], swept)] for n in numbers]
        sweeper.validate_batch_is_legal(batch)
        for result in sweeper.launcher.launch(batch, initial_job_idx=numbers[0]):
            _ = result.return_value  # re-raises what stopped a job (Ctrl-C stops the sweep)
    return plan


def swept_keys(config: DictConfig) -> list[str]:
    """The keys a sweep varies: its command line's sweeps, its sweeper's ``params``, and
    ``data.fold`` for an Optuna search of K-fold trials."""
    keys = [o.key for o in parse_overrides(list(config.hydra.overrides.task)) if o.sweep]
    keys += list(config.hydra.sweeper.get("params") or {})
    if config.hydra.sweeper.get("folds"):
        keys.append("data.fold")
    return list(dict.fromkeys(keys))


def job_folder(sweep_dir: Path, number: int, overrides: list[str], swept: list[str]) -> list[str]:
    """The overrides that put job ``number`` into ``<sweep_dir>/<number>_<swept values>``
    (``run_folder.job_dir``): the sweep folder as ``hydra_hooks.RunFolderGuard`` claimed it, and the
    job's own folder name, handed to the job by the sweeper that launches it."""
    return [
        f"hydra.sweep.dir={quoted(str(sweep_dir))}",
        f"hydra.sweep.subdir={quoted(job_dir(number, overrides, swept))}",
    ]


def save_sweep_config(config: DictConfig) -> None:
    """Writes ``multirun.yaml`` into the sweep folder unless a sweep continued there wrote it already."""
    sweep_dir = Path(config.hydra.sweep.dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if not RunFolder.is_sweep(sweep_dir):
        OmegaConf.save(config, sweep_dir / SWEEP_CONFIG)


class GridSweeper(BasicSweeper):
    """Hydra's ``BasicSweeper``, continuable: jobs whose folders hold a result are not run
    again, interrupted ones continue from their ``last.ckpt``.

    Args:
        max_batch_size: At most this many jobs per launch (``None``: all).

    Raises:
        RunError: From ``sweep``: the sweep folder holds jobs another command made.
    """

    def __init__(self, max_batch_size: int | None = None, params: dict[str, str] | None = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)

    def sweep(self, arguments: list[str]) -> Any:
        params = self._parse_config() + list(arguments)
        parsed = sweep_overrides(params, self.hydra_context.config_loader)
        batches = self.split_arguments(parsed, None)
        jobs = {number: list(job) for number, job in enumerate(job for batch in batches for job in batch)}
        save_sweep_config(self.config)
        return launch(self, jobs, self.max_batch_size)
