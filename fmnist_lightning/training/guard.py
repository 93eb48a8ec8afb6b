"""The check that no spelling of a folder writes into an earlier run: a Hydra callback that
runs once Hydra has resolved the run's or the sweep's folder, and before Hydra writes into it
(``conf/hydra/default.yaml``, ``conf/evaluate.yaml``)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, read_write

from fmnist_lightning.errors import RunError
from fmnist_lightning.run_folder import RunFolder
from fmnist_lightning.training.run_dirs import claim_folder


def _named_folder(config: DictConfig, key: str) -> Path:
    """The folder that ``config``'s ``key`` (``hydra.run.dir`` or ``hydra.sweep.dir``) names,
    as spelled, with its interpolations resolved (pure patterns: ``${now:...}``, labels).

    Hydra sets its ``HydraConfig`` (which ``${hydra:...}`` in a folder name reads) only after
    ``on_run_start``; it is set here from the same config, as Hydra then sets it again.
    """
    if not HydraConfig.initialized():
        HydraConfig.instance().set_config(config)
    return Path(str(OmegaConf.select(config, key))).expanduser()


#: The module of the sweepers that continue a sweep in its folder (``conf/hydra/sweeper/``).
CONTINUABLE = "hydra_plugins.fmnist_lightning_sweepers."


def _timestamped(config: DictConfig, key: str) -> bool:
    """Whether the folder at ``key`` is named from the time (``${now:...}`` in its pattern):
    a new name for every run, which ``claim_folder`` makes unique."""
    return "${now:" in str(OmegaConf.to_container(config, resolve=False)["hydra"][key.split(".")[1]]["dir"])


def _pin(config: DictConfig, key: str, folder: Path) -> None:
    """Sets ``key`` (``hydra.run.dir``, ``hydra.sweep.dir``) to the folder claimed for it:
    Hydra reads it back after the callbacks' ``on_run_start``/``on_multirun_start``."""
    with read_write(config.hydra):
        OmegaConf.update(config, key, str(folder), merge=False)


class RunFolderGuard(Callback):
    """Hydra callback (``conf/hydra/default.yaml``, and ``conf/evaluate.yaml``'s): before
    Hydra writes into the folder of a run or a sweep, claims it: resolves the folder's name
    (a pure pattern), creates it (``run_dirs.claim_folder``), takes its lock, and sets it as
    the folder Hydra uses. No spelling of ``hydra.run.dir`` or ``hydra.sweep.dir`` (quotes,
    ``./``, ``..``, a trailing slash, a symlink, an interpolation) can write into an earlier run.

    - A run: the folder must not hold a run (``RunFolder.holds_run``); this process then
      holds its lock (``fmnist_lightning.locks``) until it ends, so two processes given the
      same new folder cannot both write there. ``resume=`` took its run's lock before Hydra
      started (``training.resume.resumed_config``). A task of a multi-process job other than
      rank 0 writes no Hydra files (``hydra.output_subdir=null``): rank 0 writes them.
    - A sweep: this process holds the sweep folder's lock until it ends, so a second sweep
      into the same folder is refused before any of its jobs starts. A folder that holds the
      jobs of an earlier sweep is continued by this project's sweepers (``CONTINUABLE``),
      which check that the command makes the same jobs (``fmnist_lightning.sweeps.continuing``);
      under any other sweeper it is refused.

    Raises:
        RunError: A refusal, before Hydra writes anything (``cli.hydra_hooks`` ends the
            command with it in one ``error:`` line).
    """

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
            RunError: It cannot be created, or holds a run (``FolderInUseError`` while that
                run trains).
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
