"""Run folders that are never shared or clobbered.

- Every run gets a folder of its own. ``conf/hydra/default.yaml`` names run and sweep
  folders by pure patterns (``outputs/runs/${now:...}_${fmnist.run_label:...}``);
  ``guard.RunFolderGuard``, which takes the folder's lock, creates it (``claim_folder``:
  ``os.mkdir``, atomic) and adds ``_1``, ``_2`` ... when another run started in the same
  second already took the name.
- A folder that cannot be written, or whose disk is nearly full, is refused before any work.
- ``fmnist_lightning.training.guard.RunFolderGuard`` claims the folder Hydra
  resolved, whatever its spelling, before Hydra writes anything into it.

``resume=<run folder>`` (writing into an earlier run on purpose) is in
``fmnist_lightning.training.resume``.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from fmnist_lightning.errors import RunError
from fmnist_lightning.overrides import key_of, parse_overrides
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
