"""The check that no spelling of a folder writes into an earlier run: a Hydra callback that
runs once Hydra has resolved the run's or the sweep's folder, and before Hydra writes into it
(``conf/hydra/default.yaml``, ``conf/evaluate.yaml``)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from fmnist_lightning.errors import RunError, UserError
from fmnist_lightning.run_folder import RunFolder
from fmnist_lightning.training.run_dirs import check_can_create


def _resolved_folder(config: DictConfig, key: str) -> Path:
    """The absolute folder that ``config``'s ``key`` (``hydra.run.dir`` or ``hydra.sweep.dir``)
    names, as Hydra will use it: interpolations resolved (the same folder Hydra then gets, since
    the resolvers that make folders are cached), ``.``, ``..`` and symlinks followed.

    Hydra sets its ``HydraConfig`` (which ``${hydra:...}`` in a folder name reads) only after
    ``on_run_start``; it is set here from the same config, as Hydra then sets it again.

    Raises:
        SystemExit: ``error: ...`` when the folder cannot be made (a read-only disk, say).
    """
    if not HydraConfig.initialized():
        HydraConfig.instance().set_config(config)
    try:
        folder = str(OmegaConf.select(config, key))
    except Exception as err:  # OmegaConf wraps a resolver's error; the UserError is its cause
        cause = err
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        raise SystemExit(f"error: {cause}") from None
    return Path(folder).expanduser().resolve()


#: The module of the sweepers that continue a sweep in its folder (``conf/hydra/sweeper/``).
CONTINUABLE = "hydra_plugins.fmnist_lightning_sweepers."


class RunFolderGuard(Callback):
    """Hydra callback (``conf/hydra/default.yaml``, and ``conf/evaluate.yaml``'s): before
    Hydra writes into the folder of a run or a sweep, checks the folder it resolved, so that no
    spelling of ``hydra.run.dir`` or ``hydra.sweep.dir`` (quotes, ``./``, ``..``, a trailing
    slash, a symlink, an interpolation) can write into an earlier run.

    - A run: the folder must not hold a run (``holds_run``) unless this is ``resume=``, and
      this process then holds its lock (``fmnist_lightning.locks``) until it ends, so two
      processes given the same new folder cannot both write there.
    - A sweep: this process holds the sweep folder's lock until it ends, so a second sweep
      into the same folder is refused before any of its jobs starts. A folder that holds the
      jobs of an earlier sweep is continued by this project's sweepers (``CONTINUABLE``),
      which check that the command makes the same jobs (``fmnist_lightning.sweeps.continuing``);
      under any other sweeper it is refused.

    Refusals end the process with one ``error: ...`` line, before Hydra writes anything.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from fmnist_lightning.training.processes import is_child_rank

        if config.get("resume") or is_child_rank():  # resume's preflight holds the lock already
            return
        folder = _resolved_folder(config, "hydra.run.dir")
        try:
            check_can_create(folder)
            if RunFolder(folder).holds_run():
                RunFolder(folder).lock()  # FolderInUseError naming the holder's PID while that run trains
                RunFolder(folder).release()
                resume = shlex.quote(f"resume={folder}")
                raise RunError(
                    f"the run folder {folder} (hydra.run.dir) already holds a run, and a new run there would "
                    f"overwrite its files. Pick a new folder, or continue that run with {resume}"
                )
            RunFolder(folder).lock()
        except RunError as err:
            raise SystemExit(f"error: {err}") from None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        folder = _resolved_folder(config, "hydra.sweep.dir")
        try:
            check_can_create(folder)
            RunFolder(folder).lock(kind="sweep")
            continuable = str(config.hydra.sweeper.get("_target_", "")).startswith(CONTINUABLE)
            if not continuable and any(RunFolder(job).holds_run() for job in folder.iterdir() if job.is_dir()):
                RunFolder(folder).release()
                raise RunError(
                    f"the sweep folder {folder} (hydra.sweep.dir) already holds the jobs of a sweep, and "
                    "new jobs there would overwrite them. Pick a new folder, or continue that sweep with "
                    "this project's sweepers (hydra/sweeper=grid or optuna)."
                )
        except RunError as err:
            raise SystemExit(f"error: {err}") from None
