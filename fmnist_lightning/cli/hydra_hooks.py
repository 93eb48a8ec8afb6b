"""What Hydra calls besides a command's task: its callbacks (``conf/hydra/default.yaml``,
``conf/evaluate.yaml``, ``conf/robustness.yaml``) and this project's sweepers. Hydra prints a
traceback for an ``Exception`` raised there, not for a ``SystemExit``, so ``exits_on_refusal``
ends the command with a ``UserError`` in one ``error:`` line.
"""

from __future__ import annotations

import functools
import logging
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, read_write

from fmnist_lightning.errors import RunError, UserError
from fmnist_lightning.run_folder import RunFolder, claim_folder

log = logging.getLogger(__name__)


def exits_on_refusal(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method``, raising ``SystemExit("error: ...")`` (exit status 1) in place of a ``UserError``."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except UserError as err:
            raise SystemExit(f"error: {err}") from None

    return wrapper


def _named_folder(config: DictConfig, key: str) -> Path:
    """The folder ``key`` names, as spelled, resolved (``HydraConfig``, which ``${hydra:...}``
    reads, is set here from the same config, as Hydra sets it only later)."""
    if not HydraConfig.initialized():
        HydraConfig.instance().set_config(config)
    return Path(str(OmegaConf.select(config, key))).expanduser()


#: The module of the sweepers that continue a sweep in its folder (``conf/hydra/sweeper/``).
CONTINUABLE = "hydra_plugins.fmnist_lightning_sweepers."


def _timestamped(config: DictConfig, key: str) -> bool:
    """Whether the folder at ``key`` is named from the time (``${now:...}``)."""
    parent, name = key.rsplit(".", 1)
    return "${now:" in str(OmegaConf.to_container(OmegaConf.select(config, parent), resolve=False)[name])


def _pin(config: DictConfig, key: str, folder: Path) -> None:
    """Sets ``key`` to the folder claimed for it, which Hydra reads back after the callbacks."""
    with read_write(config.hydra):
        OmegaConf.update(config, key, str(folder), merge=False)


class RunFolderGuard(Callback):
    """Hydra callback: before Hydra writes into a run's or a sweep's folder, resolves its name,
    creates it (``claim_folder``), takes its lock until the process ends, and pins it, so no
    spelling of ``hydra.run.dir``/``hydra.sweep.dir`` can write into an earlier run. A run's
    folder must not hold a run (``resume=`` took its lock earlier; ranks other than 0 write no
    Hydra files); a sweep folder holding an earlier sweep's jobs is continued only by this
    project's sweepers (``CONTINUABLE``).

    Raises:
        RunError: A refusal, before Hydra writes anything.
    """

    @exits_on_refusal
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from fmnist_lightning.training.processes import is_child_rank

        if is_child_rank():  # rank 0 holds the lock and writes the Hydra files for all
            with read_write(config.hydra):
                config.hydra.output_subdir = None
            return
        if config.get("resume"):
            return
        _pin(config, "hydra.run.dir", self.claim_run(config))

    @staticmethod
    def claim_run(config: DictConfig) -> Path:
        """The new run's folder, created and locked, as spelled (a suffix added where taken).

        Raises:
            RunError: It cannot be created, or holds a run (``FolderInUseError`` while that trains).
        """
        named = claim_folder(_named_folder(config, "hydra.run.dir"), _timestamped(config, "hydra.run.dir"))
        folder = named.resolve()  # whatever its spelling: ./, .., a trailing slash, a symlink
        if RunFolder(folder).holds_run():
            RunFolder(folder).lock()  # FolderInUseError naming the holder's PID while that run trains
            RunFolder(folder).release()
            resume = shlex.quote(f"resume={folder}")
            raise RunError(
                f"the run folder {folder} (hydra.run.dir) already holds a run, and a new run there would "
                f"overwrite its files. Pick a new folder, or continue that run with {resume}"
            )
        RunFolder(folder).lock()
        return named

    @exits_on_refusal
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        continuable = str(config.hydra.sweeper.get("_target_", "")).startswith(CONTINUABLE)
        # Only this project's sweepers hand a claimed name with a suffix on to their jobs.
        timestamped = continuable and _timestamped(config, "hydra.sweep.dir")
        named = claim_folder(_named_folder(config, "hydra.sweep.dir"), timestamped)
        folder = named.resolve()
        RunFolder(folder).lock(kind="sweep")
        if not continuable and any(RunFolder(job).holds_run() for job in folder.iterdir() if job.is_dir()):
            RunFolder(folder).release()
            raise RunError(
                f"the sweep folder {folder} (hydra.sweep.dir) already holds the jobs of a sweep, and "
                "new jobs there would overwrite them. Pick a new folder, or continue that sweep with "
                "this project's sweepers (hydra/sweeper=grid or optuna)."
            )
        _pin(config, "hydra.sweep.dir", named)


class SweepSummary(Callback):
    """Hydra callback: when a multirun ends, writes its summary into the sweep folder and
    prints it; a sweep with a job that did not finish ends with ``error: ...`` (exit status 1).

    Args:
        metric: The metric configurations are ranked by; ``None``: ``optimized_metric``.
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
