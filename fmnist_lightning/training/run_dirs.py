"""New run folders, never shared or clobbered.

- Every run gets a folder of its own. ``conf/hydra/default.yaml`` names run and sweep
  folders by pure patterns (``outputs/runs/${now:...}_${fmnist.run_label:...}``);
  ``RunFolderGuard``, a Hydra callback, claims the folder Hydra resolved, whatever its
  spelling, before Hydra writes anything into it: it creates it (``claim_folder``:
  ``os.mkdir``, atomic; ``_1``, ``_2`` ... when another run started in the same second
  already took the name) and takes its lock.
- A folder that cannot be written, or whose disk is nearly full, is refused before any work.

``resume=<run folder>`` (writing into an earlier run on purpose) is in
``fmnist_lightning.training.resume``.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, read_write

from fmnist_lightning.errors import RunError
from fmnist_lightning.overrides import key_of, parse_overrides
from fmnist_lightning.run_folder import RunFolder
from fmnist_lightning.trust import TRUST_KEY

#: Command-line keys that say where or how a run is kept, not what it trains: left out of
#: folder names.
PLUMBING = (
    "hydra.",
    "data.root",
    "output_dir",
    "resume",
    "ckpt_path",
    TRUST_KEY,
    "callbacks.",
    "logger",
    "trainer.accelerator",
)
#: The longest readable part of a folder name, in characters.
MAX_LABEL = 60


def _short_key(key: str) -> str:
    """A key's last part (``optimizer.lr`` → ``lr``), or its last two when the last is
    a single character (``data.augment.flip.p`` → ``flip.p``)."""
    parts = key.split(".")
    return ".".join(parts[-2:]) if len(parts[-1]) == 1 else parts[-1]


def _label(overrides: list[str]) -> str:
    """``key-value`` pairs with short keys (``optimizer.lr=0.01`` → ``lr-0.01``), joined by
    ``_``, with anything but letters, digits and ``._+-`` made ``-``, and cut to ``MAX_LABEL``
    characters. No ``=`` or ``,``: a folder name must pass unquoted as a Hydra override's value
    (``resume=<run folder>``, ``run_dir=...``), where ``=`` is an error and ``,`` a sweep."""
    pairs = [(o.key, o.typed) for o in parse_overrides(overrides)]
    text = "_".join(f"{_short_key(key)}-{value}" for key, value in pairs if value is not None)
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text)[:MAX_LABEL].strip("-_")


def run_label(experiment: str | None, model: str | None, overrides: list[str]) -> str:
    """The readable part of a run folder's name: the experiment (else the model) and the
    other command-line overrides, e.g. ``three_conv_max_epochs-10`` for ``python train.py
    model=three_conv trainer.max_epochs=10``, ``fast_seed-1`` for ``experiment=fast seed=1``.
    At most ``MAX_LABEL`` characters. The ``fmnist.run_label`` resolver of
    ``conf/hydra/default.yaml``."""
    plain = ("experiment", "model")
    kept = [o for o in overrides if (k := key_of(o)) not in plain and not k.startswith(PLUMBING)]
    name = re.sub(r"[^A-Za-z0-9._+-]+", "-", str(experiment or model or "run"))
    label = _label(kept)
    return f"{name}_{label}"[:MAX_LABEL].strip("-_") if label else name[:MAX_LABEL]


def job_dir(number: int, overrides: list[str], swept: Sequence[str] | None = None) -> str:
    """A sweep job's folder name: its number and its swept values, e.g. ``3_lr-0.01_seed-1``.

    Args:
        number: The job's number.
        overrides: The job's command-line overrides.
        swept: The keys the sweep varies (this project's sweepers name them, see
            ``sweeps.grid.launch``); ``None`` (another sweeper, through the ``fmnist.job_dir``
            resolver of ``conf/hydra/default.yaml``): every override but the plumbing.
    """
    if swept is not None:
        kept = [o for o in overrides if key_of(o) in set(swept)]
    else:
        kept = [o for o in overrides if not key_of(o).startswith(PLUMBING)]
    label = _label(kept)
    return f"{number}_{label}" if label else str(number)


def job_number(folder: Path) -> int:
    """The job number a sweep job's folder name starts with (``3`` of ``3_lr-0.01``); -1 if none."""
    head = folder.name.split("_", 1)[0]
    return int(head) if head.isdigit() else -1


def register_resolvers() -> None:
    """Registers the ``fmnist.*`` OmegaConf resolvers of ``conf/hydra/``: pure functions of
    their arguments, for folder names."""
    if not OmegaConf.has_resolver("fmnist.run_label"):
        OmegaConf.register_new_resolver("fmnist.run_label", lambda e, m, o: run_label(e, m, list(o)))
    if not OmegaConf.has_resolver("fmnist.job_dir"):
        OmegaConf.register_new_resolver("fmnist.job_dir", lambda n, o: job_dir(n, list(o)))


def claim_folder(folder: Path, timestamped: bool) -> Path:
    """Creates ``folder`` for a new run or sweep and returns it. A folder named from the time
    (``outputs/runs/<date>_<time>_...``) that another run started in the same second took
    already becomes ``folder_1``, ``folder_2``, ...; one named explicitly is used as it is
    (the callers refuse one that holds a run). ``os.mkdir`` fails when the folder exists, so
    two processes never get the same new folder.

    Raises:
        RunError: The folder cannot be created (``check_can_create``).
    """
    check_can_create(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    candidate, n = folder, 0
    while True:
        try:
            os.mkdir(candidate)
            return candidate
        except FileExistsError:
            if not timestamped:
                return candidate
            n += 1
            candidate = folder.with_name(f"{folder.name}_{n}")


def _existing_ancestor(path: Path) -> Path:
    """``path`` itself if it exists, else its nearest existing ancestor (absolute)."""
    ancestor = path.expanduser().absolute()
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    return ancestor


def write_failure(err: OSError, output_dir: Path) -> str:
    """What a failed write of a run means, in one line: the file (``output_dir`` when the
    error names none), the system's reason, and the free space on that disk, in MiB.

    >>> write_failure(OSError(28, "No space left on device", "/"), Path("/"))  # doctest: +ELLIPSIS
    'could not write /: No space left on device (... MiB free on its disk); free some space or fix the folder'
    """
    path = Path(err.filename) if err.filename else output_dir
    try:
        free = f"{shutil.disk_usage(_existing_ancestor(path)).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    return f"could not write {path}: {err.strerror or err} ({free} on its disk); free some space or fix the folder"


def check_can_create(folder: Path) -> None:
    """Refuses a run folder that cannot be created: tries a probe folder in its nearest
    existing ancestor (permission bits alone do not tell, e.g. for root on a read-only disk).

    Raises:
        RunError: The probe cannot be created.
    """
    ancestor = _existing_ancestor(folder)
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
    parent, name = key.rsplit(".", 1)
    return "${now:" in str(OmegaConf.to_container(OmegaConf.select(config, parent), resolve=False)[name])


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
