"""Run folders that are never shared or clobbered.

- Every run gets a folder of its own. ``conf/hydra/default.yaml`` names run and sweep
  folders with ``${fmnist.new_dir:outputs/runs/${now:...}}``: the resolver creates the folder
  itself with ``os.mkdir`` (atomic) and adds ``_1``, ``_2`` ... when another run started in
  the same second already took the name.
- A folder that cannot be written, or whose disk is nearly full, is refused before any work.

``resume=<run folder>`` (writing into an earlier run on purpose) is in
``fmnist_lightning.training.resume``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from fmnist_lightning.errors import RunError
from fmnist_lightning.training.status import STATUS_FILE


def new_dir(path: str) -> str:
    """Creates and returns a folder that did not exist before: ``path``, else ``path_1``,
    ``path_2``, ...

    ``os.mkdir`` fails when the folder exists, so two processes can never get the same one.
    Registered as the ``fmnist.new_dir`` resolver (cached, so every later read of the same
    config node gives the same folder).
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    candidate, n = path, 0
    while True:
        try:
            os.mkdir(candidate)
            return candidate
        except FileExistsError:
            n += 1
            candidate = f"{path}_{n}"


def register_resolvers() -> None:
    """Registers the ``fmnist.*`` OmegaConf resolvers used by ``conf/hydra/``."""
    if not OmegaConf.has_resolver("fmnist.new_dir"):
        OmegaConf.register_new_resolver("fmnist.new_dir", new_dir, use_cache=True)


def is_run_folder(folder: Path) -> bool:
    """True if ``folder`` has a run's config (Hydra's ``.hydra/config.yaml``)."""
    return (folder / ".hydra" / "config.yaml").is_file()


def holds_run(folder: Path) -> bool:
    """True if a run started training in ``folder`` (it has a config and a ``metrics.json``
    or ``checkpoints/``). A run refused by the checks leaves neither, so its folder can be
    used again once the typo is fixed."""
    return is_run_folder(folder) and ((folder / STATUS_FILE).is_file() or (folder / "checkpoints").is_dir())


def check_can_create(folder: Path) -> None:
    """Refuses a run folder that cannot be created: tries a probe folder in its nearest
    existing ancestor (permission bits alone do not tell, e.g. for root on a read-only disk).

    Raises:
        RunError: The probe cannot be created.
    """
    ancestor = folder.expanduser().absolute()
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".fmnist_probe_", dir=ancestor))
    except OSError as err:
        raise RunError(
            f"cannot create the run folder {folder}: {ancestor} is not writable ({err.strerror or err}); "
            "make it writable, or write elsewhere with hydra.run.dir=<folder> (hydra.sweep.dir=<folder> with -m)"
        ) from None


def check_writable(output_dir: Path, min_free_bytes: int) -> None:
    """Refuses a run folder that cannot be written or is on a nearly full disk.

    Raises:
        RunError: Writing a probe file fails, or fewer than ``min_free_bytes`` are free.
    """
    probe = output_dir / ".write_test"
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise RunError(
            f"cannot write to the run folder {output_dir} ({err.strerror or err}); make it writable, "
            "or write elsewhere with hydra.run.dir=<folder>"
        ) from None
    free = shutil.disk_usage(output_dir).free
    if free < min_free_bytes:
        raise RunError(
            f"the run folder {output_dir} has {free / 2**20:.1f} MiB free, and this run needs about "
            f"{min_free_bytes / 2**20:.0f} MiB for its checkpoints and logs; free some space, or write "
            "elsewhere with hydra.run.dir=<folder>"
        )


def checkpoint_dir(cfg: DictConfig) -> Path:
    """The folder ``ModelCheckpoint`` writes to (``callbacks.model_checkpoint.dirpath``)."""
    dirpath = OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath", default=None)
    return Path(dirpath) if dirpath else Path(cfg.output_dir) / "checkpoints"
