"""A run folder: the one module that knows its layout and its rules (docs/runs.md).

A run folder holds its config (``.hydra/config.yaml``, with the command's ``overrides.yaml``),
its status (``metrics.json``), its per-epoch history (``history.csv``), its checkpoints
(``checkpoints/last.ckpt`` and the best ``epoch_NNN.ckpt``), the tested network's weights
(``net.pt``) and, while a process writes it, a lock (``.lock``). A sweep folder holds
``multirun.yaml`` and one run folder per job. Every command that takes a run reads its config
through ``RunFolder.load_config``.

New folders are never shared or clobbered: ``claim_folder`` creates the folder Hydra resolved
with an atomic ``os.mkdir`` (``_1``, ``_2`` ... when a run started in the same second took the
name), before Hydra writes into it.

One writer per folder: a process that trains in a run folder holds ``fcntl.flock`` on its
``.lock`` (created empty, never written) from before it writes anything until it is done. The
operating system releases it however the process ends, so a stale lock never blocks a resume.
A second writer is refused at once, with the holder's PID (from ``/proc/locks``). Under DDP
only rank 0 holds it; a sweep folder's lock is held by the process that runs the sweep; reading
a run takes no lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from importlib import resources
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from fmnist_lightning.artifacts import read_csv, read_json, read_yaml, write_atomically
from fmnist_lightning.errors import DamagedFileError, FolderInUseError, RunError
from fmnist_lightning.overrides import key_of, parse_overrides
from fmnist_lightning.trust import TRUST_KEY, check_config

#: Hydra's files of a run: the config, the command's overrides, Hydra's own settings.
HYDRA_DIR = ".hydra"
CONFIG_FILE = f"{HYDRA_DIR}/config.yaml"
OVERRIDES_FILE = f"{HYDRA_DIR}/overrides.yaml"
STATUS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
NET_WEIGHTS = "net.pt"
#: The checkpoint folder of a run whose config names none, and the resume point's file name.
CHECKPOINTS = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
SWEEP_CONFIG = "multirun.yaml"
#: The folder of a resume attempt's Hydra files, inside the run's ``.hydra/``.
RESUME_SUBDIR_PREFIX = "resume_"

#: What to do about a damaged ``metrics.json``.
STATUS_FIX = (
    "It is the run's status: delete it and run the command again (a resume continues from "
    "checkpoints/last.ckpt and writes it anew; a sweep summary lists the job as not started)."
)
#: The fields of ``metrics.json`` a reader relies on, and their types.
STATUS_FIELDS = dict(status=str, epochs=int, trained=bool, global_step=int, metrics=dict, stopped_by=str, limits=dict)
CONFIG_FIX = "It is the run's config, which every use of the run needs: restore it from a copy, or train the run again."
HISTORY_FIX = "It is the run's per-epoch record (curves.png): delete it, and a resumed run starts a new one."
BEST_FIX = "Delete it and give the weights another way: weights=last, weights=net.pt or a .ckpt file."


class RunFolder:
    """A run's folder (``outputs/runs/<run>``, or a sweep's ``<sweep>/<job>``); ``path`` is
    as given (not resolved), ``config_file`` ... ``weights_file`` are its files."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config_file = self.path / CONFIG_FILE
        self.overrides_file = self.path / OVERRIDES_FILE
        self.status_file = self.path / STATUS_FILE
        self.history_file = self.path / HISTORY_FILE
        self.weights_file = self.path / NET_WEIGHTS

    def is_run(self) -> bool:
        """True if the folder has a run's config (Hydra's ``.hydra/config.yaml``)."""
        return self.config_file.is_file()

    def holds_run(self) -> bool:
        """True if a run started training here (a config and a ``metrics.json`` or
        ``checkpoints/``); a run refused by the checks leaves neither."""
        return self.is_run() and (self.status_file.is_file() or (self.path / CHECKPOINTS).is_dir())

    def load_config(self, trusted_modules: Sequence[str] = ()) -> DictConfig:
        """The config the run was made with, upgraded (``upgrade_config``) and accepted only
        if it names nothing this machine does not trust (``fmnist_lightning.trust``).

        Args:
            trusted_modules: Modules of one's own that this command trusts (``trusted_modules=``).

        Raises:
            RunError: The folder is not a run folder.
            DamagedFileError: The config file is damaged or not a run's config.
            UntrustedConfigError: It names a callable that is not trusted, or calls a resolver.
        """
        what = f"the run folder {self.path}"
        raw = self.saved_config()
        check_config(raw, what=what, targets=False)
        config = upgrade_config(raw)
        check_config(config, trusted_modules, what)
        return config

    def read_config(self) -> DictConfig:
        """The upgraded config, unchecked, of a run this process (or its script) made itself;
        any other run is read with ``load_config``.

        Raises:
            RunError, DamagedFileError: As ``saved_config``.
        """
        return upgrade_config(self.saved_config())

    def saved_config(self) -> DictConfig:
        """``.hydra/config.yaml`` as saved: unresolved, not upgraded, unchecked.

        Raises:
            RunError: The folder is not a run folder.
            DamagedFileError: The config file is damaged or not a run's config.
        """
        path = self.config_file
        if not path.is_file():
            raise RunError(
                f"{self.path} is not a run folder: it has no {CONFIG_FILE}. "
                "Pass a folder under outputs/runs/ or outputs/multirun/<sweep>/<job>/."
            )
        saved = read_yaml(path, dict, CONFIG_FIX)
        for section, key in (("model", "_target_"), ("data", "image_size"), ("trainer", "max_epochs")):
            if not isinstance(saved.get(section), dict) or key not in saved[section]:
                raise DamagedFileError(path, f"it has no {section}.{key}, so it is not a run's config", CONFIG_FIX)
        return OmegaConf.load(path)

    def write_config(self, config: DictConfig) -> None:
        """Replaces the saved config whole, atomically."""
        write_atomically(self.config_file, OmegaConf.to_yaml(config))

    def read_overrides(self, fix: str) -> list[str]:
        """The command-line overrides Hydra saved for the run (``.hydra/overrides.yaml``).

        Raises:
            DamagedFileError: The file is damaged or holds something other than strings.
        """
        lines = read_yaml(self.overrides_file, list, fix)
        if not all(isinstance(line, str) for line in lines):
            raise DamagedFileError(self.overrides_file, "it holds something other than override strings", fix)
        return lines

    def read_status(self) -> dict:
        """``metrics.json`` (``training.callbacks.RunStatus``), or ``{}`` when it has none.

        Raises:
            DamagedFileError: The file is unreadable, or a field has the wrong type.
        """
        path = self.status_file
        if not path.is_file():
            return {}
        status = read_json(path, STATUS_FIX)
        for name, kind in STATUS_FIELDS.items():
            if status.get(name) is not None and not isinstance(status[name], kind):
                raise DamagedFileError(path, f"its {name} is {status[name]!r}, not a {kind.__name__}", STATUS_FIX)
        for key, value in (status.get("metrics") or {}).items():
            if not isinstance(value, int | float):
                raise DamagedFileError(path, f"its metric {key} is {value!r}, not a number", STATUS_FIX)
        return status

    def write_status(
        self,
        status: str,
        epochs: int = 0,
        global_step: int = 0,
        best_checkpoint: str | None = None,
        wall_time_s: float | None = None,
        metrics: dict[str, float] | None = None,
        error: str | None = None,
        trained: bool = False,
        first_step_s: float | None = None,
        stopped_by: str | None = None,
        limits: dict | None = None,
    ) -> None:
        """Writes ``metrics.json`` (fields: ``training.callbacks.RunStatus``) atomically.

        Raises:
            OSError: The file cannot be written (the earlier one is left as it was).
        """
        summary = dict(status=status, epochs=epochs, trained=trained, global_step=global_step)
        summary |= dict(best_checkpoint=best_checkpoint, wall_time_s=wall_time_s, first_step_s=first_step_s)
        summary |= dict(metrics=metrics or {}, error=error, stopped_by=stopped_by, limits=limits)
        write_atomically(self.status_file, json.dumps(summary, indent=2) + "\n")

    def record_failure(self, error: str) -> None:
        """Marks the run ``failed`` with ``error``, unless it wrote its own failed status.

        Raises:
            OSError: The file cannot be written.
        """
        if self.read_status().get("status") == "failed":
            return
        self.path.mkdir(parents=True, exist_ok=True)
        self.write_status("failed", error=error)

    def read_history(self) -> dict[str, dict[int, float]]:
        """``history.csv`` as ``{metric: {epoch: value}}``, epochs counted from 1; empty when
        the run has no history yet.

        Raises:
            DamagedFileError: The file is unreadable or holds something that is not a number.
        """
        path = self.history_file
        history: dict[str, dict[int, float]] = {}
        if not path.is_file():
            return history
        for line, row in enumerate(read_csv(path, ("epoch",), HISTORY_FIX), start=2):
            try:
                epoch = int(row.pop("epoch"))
                for key, value in row.items():
                    if value:
                        history.setdefault(str(key), {})[epoch] = float(value)
            except (TypeError, ValueError):
                raise DamagedFileError(path, f"line {line} holds something that is not a number", HISTORY_FIX) from None
        return history

    def last_checkpoint(self, cfg: DictConfig | None = None) -> Path:
        """Where ``last.ckpt`` (the resume point) is: in ``cfg``'s ``callbacks.last_checkpoint.dirpath``,
        else (older runs) ``callbacks.model_checkpoint.dirpath``, else ``checkpoints/``."""
        for key in ("callbacks.last_checkpoint.dirpath", "callbacks.model_checkpoint.dirpath"):
            dirpath = OmegaConf.select(cfg, key, default=None) if cfg is not None else None
            if dirpath:
                return Path(dirpath) / LAST_CHECKPOINT
        return self.path / CHECKPOINTS / LAST_CHECKPOINT

    def left_unfinished(self, cfg: DictConfig) -> bool:
        """Whether an earlier attempt left the run ``interrupted`` or ``running`` (it died
        without a word) with a ``last.ckpt``: the rule for continuing a sweep job."""
        status = self.read_status().get("status")
        return status in ("interrupted", "running") and self.last_checkpoint(cfg).is_file()

    def best_checkpoint(self) -> Path | None:
        """``best_checkpoint`` of ``metrics.json``, else the one ``epoch_*.ckpt`` in
        ``checkpoints/``; ``None`` when neither says.

        Raises:
            DamagedFileError: ``metrics.json`` is damaged.
        """
        best = read_json(self.status_file, BEST_FIX).get("best_checkpoint") if self.status_file.is_file() else None
        if best is not None and not isinstance(best, str):
            raise DamagedFileError(self.status_file, f"its best_checkpoint is {best!r}, not a file name", BEST_FIX)
        if best:
            return self.path / best
        candidates = sorted((self.path / CHECKPOINTS).glob("epoch_*.ckpt"))
        return candidates[-1] if len(candidates) == 1 else None

    def weights(self, weights: str = NET_WEIGHTS) -> Path:
        """A weights file of the run: ``"net.pt"``, ``"best"`` (the best checkpoint), ``"last"``,
        or a ``.pt``/``.ckpt`` path (relative to the folder, or absolute).

        Raises:
            RunError: The file does not exist; the message lists what the run does have.
        """
        if weights == "best":
            path = self.best_checkpoint()
        elif weights == "last":
            path = self.path / CHECKPOINTS / LAST_CHECKPOINT
        else:
            path = Path(weights) if Path(weights).is_absolute() else self.path / weights
        if path is not None and path.is_file():
            return path
        files = [*self.path.glob("*.pt"), *self.path.glob(f"{CHECKPOINTS}/*.ckpt")]
        found = ", ".join(sorted(str(p.relative_to(self.path)) for p in files))
        has = f"it has: {found}" if found else "it has no checkpoint or net.pt at all; did it finish its first epoch?"
        pid = holder_pid(self.path / LOCK_FILE)
        training = (
            f" The run is still training (process {pid} is writing it): use weights=last, or wait." if pid else ""
        )
        raise RunError(f"Run {self.path} has no {weights!r} weights ({has}).{training}")

    def lock(self, kind: str = "run") -> None:
        """Takes the folder's lock until ``release`` or this process ends.

        Raises:
            FolderInUseError, RunError: As ``lock_run_folder``.
        """
        lock_run_folder(self.path, kind=kind)

    @contextmanager
    def locked(self, held: bool = True) -> Iterator[RunFolder]:
        """Holds the folder's lock while the block runs; with ``held`` false (a DDP process
        whose rank 0 holds it), only runs the block.

        Raises:
            FolderInUseError: Another process holds it.
        """
        if held:
            self.lock()
        try:
            yield self
        finally:
            if held:
                self.release()

    def release(self) -> None:
        """Releases the lock this process holds (a no-op where it holds none)."""
        release_run_folder(self.path)

    def has_hydra_configs(self) -> bool:
        """Whether ``.hydra/`` holds a ``hydra/`` folder, which no run writes (Hydra would read
        its own configs there)."""
        return (self.path / HYDRA_DIR / "hydra").exists()

    @staticmethod
    def is_sweep(folder: Path) -> bool:
        """True if ``folder`` is a sweep's folder (Hydra wrote its ``multirun.yaml`` there)."""
        return (folder / SWEEP_CONFIG).is_file()

    @staticmethod
    def new_attempt() -> str:
        """A new resume attempt's ``hydra.output_subdir``: ``.hydra/resume_<date>_<time>``."""
        return f"{HYDRA_DIR}/{RESUME_SUBDIR_PREFIX}{datetime.now():%Y-%m-%d_%H-%M-%S_%f}"

    def discard_attempt(self, subdir: str | None) -> None:
        """Removes a refused resume attempt's Hydra files (its ``hydra.output_subdir``)."""
        if subdir and Path(subdir).name.startswith(RESUME_SUBDIR_PREFIX):
            shutil.rmtree(self.path / subdir, ignore_errors=True)


def read_sweep_overrides(folder: Path) -> dict:
    """``hydra.overrides`` of a sweep's ``multirun.yaml``: ``{"hydra": [...], "task": [...]}``.

    Raises:
        DamagedFileError: ``multirun.yaml`` is damaged.
    """
    fix = "It is the sweep's config, written when the sweep started; without it, run the sweep's command again."
    return read_yaml(folder / SWEEP_CONFIG, dict, fix).get("hydra", {}).get("overrides", {})


#: The DataModule's name in run configs written before datasets became configs.
OLD_DATAMODULE = "fmnist_lightning.data.FashionMNISTDataModule"


def upgrade_config(cfg: DictConfig) -> DictConfig:
    """Brings an older run's config (before the module's parts and the datasets became config
    groups) to today's keys, in place, so that it builds the same network and loads its
    checkpoints: ``FashionMNISTDataModule`` becomes ``IdxDataModule`` with
    ``conf/data/fashion_mnist.yaml``'s keys, ``label_smoothing`` moves to
    ``conf/loss/cross_entropy.yaml``, a missing ``mix`` is none, missing ``metrics`` and
    ``module`` are ``conf/metrics/accuracy.yaml`` and ``conf/train.yaml``'s.
    """
    conf = resources.files("fmnist_lightning.conf")

    def default(path: str) -> DictConfig:
        return OmegaConf.load(str(conf / path))

    with open_dict(cfg):
        if cfg.data.get("_target_") == OLD_DATAMODULE:
            dataset = default("data/fashion_mnist.yaml")
            from fmnist_lightning.data.idx import DATASET_KEYS  # torch: only for a run this old

            described = OmegaConf.create({k: dataset[k] for k in DATASET_KEYS} | {"_target_": dataset._target_})
            cfg.data = OmegaConf.merge(cfg.data, described)
        if "loss" not in cfg:
            cfg.loss = default("loss/cross_entropy.yaml")
            cfg.loss.label_smoothing = cfg.pop("label_smoothing", 0.0)
        if "mix" not in cfg:
            cfg.mix = {}  # as conf/mix/none.yaml composes
        if "metrics" not in cfg:
            cfg.metrics = default("metrics/accuracy.yaml")
        if "module" not in cfg:
            cfg.module = default("train.yaml").module
    return cfg


#: The lock file inside a run folder.
LOCK_FILE = ".lock"

#: The run folders this process holds, with the open file descriptor that holds each.
_held: dict[Path, int] = {}


def holder_pid(path: Path) -> int | None:
    """The PID holding an ``flock`` on ``path`` (Linux's ``/proc/locks``), else ``None``."""
    try:
        st = os.stat(path)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == device and fields[4].lstrip("-").isdigit():
            return int(fields[4])
    return None


def lock_run_folder(folder: str | Path, kind: str = "run") -> None:
    """Takes a run or sweep folder's lock until ``release_run_folder`` or the end of the
    process; a no-op if this process holds it already.

    Args:
        kind: ``"run"`` or ``"sweep"``: what the refusal calls the folder.

    Raises:
        FolderInUseError: Another process holds it (the message names the folder and the PID).
        RunError: The folder or its lock file cannot be created.
    """
    folder = Path(folder).resolve()
    if folder in _held:
        return
    path = folder / LOCK_FILE
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as err:
        raise RunError(f"cannot create the run folder's lock file {path}: {err.strerror or err}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        pid = holder_pid(path)
        who = f"process {pid}" if pid is not None else "another process"
        doing = "training in it" if kind == "run" else "running a sweep in it"
        raise FolderInUseError(
            f"the {kind} folder {folder} is in use: {who} is {doing} (it holds {path}). "
            "Wait for it to finish or stop it (Ctrl-C, or kill), then continue with resume= if needed."
        ) from None
    _held[folder] = fd


def release_run_folder(folder: str | Path) -> None:
    """Gives up this process's lock on the folder, if it holds it."""
    fd = _held.pop(Path(folder).resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the only descriptor releases the flock


#: Command-line keys that say where or how a run is kept: left out of folder names.
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
    """``optimizer.lr`` → ``lr``; ``data.augment.flip.p`` → ``flip.p`` (a one-letter last part)."""
    parts = key.split(".")
    return ".".join(parts[-2:]) if len(parts[-1]) == 1 else parts[-1]


def _label(overrides: list[str]) -> str:
    """``lr-0.01_seed-1``: only ``[A-Za-z0-9._+-]``, so a folder name passes unquoted in ``resume=``."""
    pairs = [(o.key, o.typed) for o in parse_overrides(overrides)]
    text = "_".join(f"{_short_key(key)}-{value}" for key, value in pairs if value is not None)
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text)[:MAX_LABEL].strip("-_")


def run_label(experiment: str | None, model: str | None, overrides: list[str]) -> str:
    """The readable part of a run folder's name (the ``fmnist.run_label`` resolver): the
    experiment (else the model) and the other overrides, at most ``MAX_LABEL`` characters,
    e.g. ``three_conv_max_epochs-10`` for ``model=three_conv trainer.max_epochs=10``."""
    plain = ("experiment", "model")
    kept = [o for o in overrides if (k := key_of(o)) not in plain and not k.startswith(PLUMBING)]
    name = re.sub(r"[^A-Za-z0-9._+-]+", "-", str(experiment or model or "run"))
    label = _label(kept)
    return f"{name}_{label}"[:MAX_LABEL].strip("-_") if label else name[:MAX_LABEL]


def job_dir(number: int, overrides: list[str], swept: Sequence[str] | None = None) -> str:
    """A sweep job's folder name: its number and its swept values, e.g. ``3_lr-0.01_seed-1``.

    Args:
        swept: The keys the sweep varies; ``None`` (another sweeper, through the
            ``fmnist.job_dir`` resolver): every override but the plumbing.
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
    """Registers the ``fmnist.*`` OmegaConf resolvers of ``conf/hydra/`` (folder names)."""
    if not OmegaConf.has_resolver("fmnist.run_label"):
        OmegaConf.register_new_resolver("fmnist.run_label", lambda e, m, o: run_label(e, m, list(o)))
    if not OmegaConf.has_resolver("fmnist.job_dir"):
        OmegaConf.register_new_resolver("fmnist.job_dir", lambda n, o: job_dir(n, list(o)))


def claim_folder(folder: Path, timestamped: bool) -> Path:
    """Creates ``folder`` for a new run or sweep and returns it; a ``timestamped`` one that
    exists already becomes ``folder_1``, ``folder_2``, ... (``os.mkdir`` is atomic), an
    explicit one is used as it is.

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
    """A failed write in one line: the file (else ``output_dir``), the reason, and the free MiB.

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
    """Refuses a run folder that cannot be created (a probe folder in its nearest existing
    ancestor: permission bits do not tell for root on a read-only disk).

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
