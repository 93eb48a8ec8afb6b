"""A run folder: the one module that knows its layout and its rules (docs/runs.md, "What a
run writes").

A run folder holds its config (``.hydra/config.yaml``, written by Hydra, with the command's
``overrides.yaml`` beside it), its status (``metrics.json``), its per-epoch history
(``history.csv``), its checkpoints (``checkpoints/last.ckpt`` and the best
``epoch_NNN.ckpt``), the tested network's weights (``net.pt``), and, while a process writes
it, a lock (``fmnist_lightning.locks``). A sweep folder holds ``multirun.yaml`` and one run
folder per job.

``RunFolder`` is the only reader of these files by name: every command that takes a run
(evaluate, predict, export, serve, compare, robustness, resume, sweep continuation and
reproduction) reads its config through ``RunFolder.load_config``, which brings an older
run's config to today's keys (``upgrade_config``) and accepts only what this machine trusts
(``fmnist_lightning.trust``).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from importlib import resources
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from fmnist_lightning.artifacts import read_csv, read_json, read_yaml, write_atomically
from fmnist_lightning.data.datasets import DATASET_KEYS
from fmnist_lightning.errors import DamagedFileError, RunError
from fmnist_lightning.locks import LOCK_FILE, holder_pid, lock_run_folder, release_run_folder
from fmnist_lightning.trust import check_config

#: Hydra's files of a run: the config, the command's overrides, Hydra's own settings.
HYDRA_DIR = ".hydra"
CONFIG_FILE = f"{HYDRA_DIR}/config.yaml"
OVERRIDES_FILE = f"{HYDRA_DIR}/overrides.yaml"
#: The run's status, kept up to date while it trains (``training.run_status.RunStatus``).
STATUS_FILE = "metrics.json"
#: One row per epoch of every ``train/*`` and ``val/*`` metric (``training.history``).
HISTORY_FILE = "history.csv"
#: The tested network's plain ``state_dict``.
NET_WEIGHTS = "net.pt"
#: The checkpoint folder of a run whose config names none, and the resume point's file name.
CHECKPOINTS = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
#: The file in which Hydra keeps a sweep's composed config, overrides included.
SWEEP_CONFIG = "multirun.yaml"
#: The folder of a resume attempt's Hydra files, inside the run's ``.hydra/``.
RESUME_SUBDIR_PREFIX = "resume_"

#: What to do about a damaged ``metrics.json``.
STATUS_FIX = (
    "It is the run's status: delete it and run the command again (a resume continues from "
    "checkpoints/last.ckpt and writes it anew; a sweep summary lists the job as not started)."
)
#: The fields of ``metrics.json`` a reader relies on, and their types.
STATUS_FIELDS = {
    "status": str,
    "epochs": int,
    "trained": bool,
    "global_step": int,
    "metrics": dict,
    "stopped_by": str,
    "limits": dict,
}
CONFIG_FIX = "It is the run's config, which every use of the run needs: restore it from a copy, or train the run again."
HISTORY_FIX = "It is the run's per-epoch record (curves.png): delete it, and a resumed run starts a new one."
BEST_FIX = "Delete it and give the weights another way: weights=last, weights=net.pt or a .ckpt file."


class RunFolder:
    """A run's folder (``outputs/runs/<run>``, or a sweep's ``<sweep>/<job>``).

    Attributes:
        path: The folder, as given (not resolved).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # Its files ---------------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def status_file(self) -> Path:
        return self.path / STATUS_FILE

    @property
    def history_file(self) -> Path:
        return self.path / HISTORY_FILE

    @property
    def weights_file(self) -> Path:
        return self.path / NET_WEIGHTS

    def is_run(self) -> bool:
        """True if the folder has a run's config (Hydra's ``.hydra/config.yaml``)."""
        return self.config_file.is_file()

    def holds_run(self) -> bool:
        """True if a run started training here (it has a config and a ``metrics.json`` or
        ``checkpoints/``). A run refused by the checks leaves neither, so its folder can be
        used again once the typo is fixed."""
        return self.is_run() and (self.status_file.is_file() or (self.path / CHECKPOINTS).is_dir())

    # Its config --------------------------------------------------------------------------
    def load_config(self, trusted_modules: Sequence[str] = ()) -> DictConfig:
        """The config the run was made with, which may come from someone else: accepted only
        if it names nothing this machine does not trust (``fmnist_lightning.trust``); its
        interpolations are checked before ``upgrade_config`` resolves any, its targets after
        (an old run's renamed classes are today's names then).

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
        """The config, unchecked, of a run this process (or the script that started it) made
        itself: what Hydra just saved for this run, or a benchmark's own runs. Any other run
        is read with ``load_config``.

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
        """Replaces the saved config whole (written beside it, then renamed)."""
        write_atomically(self.config_file, OmegaConf.to_yaml(config))

    @property
    def overrides_file(self) -> Path:
        return self.path / OVERRIDES_FILE

    def read_overrides(self, fix: str) -> list[str]:
        """The command-line overrides Hydra saved for the run (``.hydra/overrides.yaml``).

        Raises:
            DamagedFileError: The file is damaged or holds something other than override
                strings (``fix`` says what to do about it).
        """
        lines = read_yaml(self.overrides_file, list, fix)
        if not all(isinstance(line, str) for line in lines):
            raise DamagedFileError(self.overrides_file, "it holds something other than override strings", fix)
        return lines

    # Its status and history --------------------------------------------------------------
    def read_status(self) -> dict:
        """``metrics.json`` (see ``training.run_status.RunStatus``), or ``{}`` when it has none.

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
        """Writes ``metrics.json`` (the fields are described in ``RunStatus``) atomically:
        a reader never sees half of it.

        Raises:
            OSError: The file cannot be written (the earlier one is then left as it was).
        """
        summary = {
            "status": status,
            "epochs": epochs,
            "trained": trained,
            "global_step": global_step,
            "best_checkpoint": best_checkpoint,
            "wall_time_s": wall_time_s,
            "first_step_s": first_step_s,
            "metrics": metrics or {},
            "error": error,
            "stopped_by": stopped_by,
            "limits": limits,
        }
        write_atomically(self.status_file, json.dumps(summary, indent=2) + "\n")

    def record_failure(self, error: str) -> None:
        """Marks the run ``failed`` with ``error``, unless it already wrote its own failed
        status (which has more: epochs, step, metrics).

        Raises:
            OSError: The file cannot be written.
        """
        if self.read_status().get("status") == "failed":
            return
        self.path.mkdir(parents=True, exist_ok=True)
        self.write_status("failed", error=error)

    def read_history(self) -> dict[str, dict[int, float]]:
        """``history.csv`` as ``{metric: {epoch: value}}``, epochs counted from 1 (accuracies
        are fractions); empty when the run has no history yet.

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

    # Its checkpoints and weights ---------------------------------------------------------
    def last_checkpoint(self, cfg: DictConfig | None = None) -> Path:
        """Where ``last.ckpt`` is (the resume point): in ``callbacks.last_checkpoint.dirpath``
        of the run's config ``cfg``, else (a run saved before that callback existed)
        ``callbacks.model_checkpoint.dirpath``, else ``checkpoints/``."""
        for key in ("callbacks.last_checkpoint.dirpath", "callbacks.model_checkpoint.dirpath"):
            dirpath = OmegaConf.select(cfg, key, default=None) if cfg is not None else None
            if dirpath:
                return Path(dirpath) / LAST_CHECKPOINT
        return self.path / CHECKPOINTS / LAST_CHECKPOINT

    def left_unfinished(self, cfg: DictConfig) -> bool:
        """Whether an earlier attempt left the run unfinished and it can be continued:
        ``status: interrupted`` (stopped by a signal) or ``running`` (the attempt died
        without a word), with a ``last.ckpt``. The one rule for a sweep job continued in its
        folder (``training.resume.continue_job``, ``sweeps.continuing``)."""
        status = self.read_status().get("status")
        return status in ("interrupted", "running") and self.last_checkpoint(cfg).is_file()

    def best_checkpoint(self) -> Path | None:
        """The best checkpoint: ``best_checkpoint`` of ``metrics.json``, else the one
        ``epoch_*.ckpt`` in ``checkpoints/``; ``None`` when neither says.

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
        """A weights file of the run.

        Args:
            weights: ``"net.pt"`` (the best network's plain state_dict), ``"best"`` (the best
                checkpoint), ``"last"`` (``checkpoints/last.ckpt``), or a path to a ``.pt`` or
                ``.ckpt`` file (relative to the folder, or absolute).

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
        found = sorted(
            str(p.relative_to(self.path)) for p in [*self.path.glob("*.pt"), *self.path.glob(f"{CHECKPOINTS}/*.ckpt")]
        )
        has = (
            f"it has: {', '.join(found)}"
            if found
            else "it has no checkpoint or net.pt at all; did it finish its first epoch?"
        )
        pid = self.lock_holder()
        training = (
            f" The run is still training (process {pid} is writing it): use weights=last, or wait." if pid else ""
        )
        raise RunError(f"Run {self.path} has no {weights!r} weights ({has}).{training}")

    # Its lock and its resume attempts ----------------------------------------------------
    def lock(self, kind: str = "run") -> None:
        """Takes the folder's lock until ``release`` or this process ends (``locks``).

        Raises:
            FolderInUseError: Another process holds it.
            RunError: The lock file cannot be made.
        """
        lock_run_folder(self.path, kind=kind)

    @contextmanager
    def locked(self, held: bool = True) -> Iterator[RunFolder]:
        """Holds the folder's lock (``lock``) while the block runs, then releases it; with
        ``held`` false (a process whose rank 0 holds it for all), only runs the block.

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

    def lock_holder(self) -> int | None:
        """The PID of the process that holds the folder's lock, or ``None``."""
        return holder_pid(self.path / LOCK_FILE)

    def has_hydra_configs(self) -> bool:
        """Whether ``.hydra/`` holds a ``hydra/`` folder: no run writes one, and Hydra would
        look for its own configs there when the folder is its config path."""
        return (self.path / HYDRA_DIR / "hydra").exists()

    @staticmethod
    def is_sweep(folder: Path) -> bool:
        """True if ``folder`` is a sweep's folder (Hydra wrote its ``multirun.yaml`` there)."""
        return (folder / SWEEP_CONFIG).is_file()

    @staticmethod
    def new_attempt() -> str:
        """The output subfolder (Hydra's ``hydra.output_subdir``) of a new resume attempt's
        Hydra files, ``.hydra/resume_<date>_<time>``; the original ones stay untouched."""
        return f"{HYDRA_DIR}/{RESUME_SUBDIR_PREFIX}{datetime.now():%Y-%m-%d_%H-%M-%S_%f}"

    def discard_attempt(self, subdir: str | None) -> None:
        """Removes the Hydra files of a refused resume attempt (its ``hydra.output_subdir``),
        so that a refusal leaves the run folder as it was; other subfolders are kept."""
        if subdir and Path(subdir).name.startswith(RESUME_SUBDIR_PREFIX):
            shutil.rmtree(self.path / subdir, ignore_errors=True)


def read_sweep_overrides(folder: Path) -> dict:
    """The overrides of a sweep (``hydra.overrides`` of its ``multirun.yaml``): ``{"hydra":
    [...], "task": [...]}``.

    Raises:
        DamagedFileError: ``multirun.yaml`` is damaged.
    """
    fix = "It is the sweep's config, written when the sweep started; without it, run the sweep's command again."
    return read_yaml(folder / SWEEP_CONFIG, dict, fix).get("hydra", {}).get("overrides", {})


#: The DataModule's name in run configs written before datasets became configs.
OLD_DATAMODULE = "fmnist_lightning.data.FashionMNISTDataModule"


def upgrade_config(cfg: DictConfig) -> DictConfig:
    """Brings a run's config written before the LightningModule's parts and the datasets
    became config groups (commit 97bf8f4 and earlier) to today's keys, in place; a newer
    config is left as it is. The one compatibility mapping, applied by ``RunFolder``'s
    loaders:

    - ``data._target_: fmnist_lightning.data.FashionMNISTDataModule`` becomes ``IdxDataModule``
      with the dataset keys of ``conf/data/fashion_mnist.yaml`` (then the only dataset);
    - the top-level ``label_smoothing`` becomes ``loss: conf/loss/cross_entropy.yaml`` with it;
    - a missing ``mix`` is none, missing ``metrics`` are ``conf/metrics/accuracy.yaml`` (then
      the only metric), and a missing ``module`` is ``conf/train.yaml``'s.

    The run then builds the same network, logs the same keys and loads its checkpoints.
    """
    conf = resources.files("fmnist_lightning.conf")

    def default(path: str) -> DictConfig:
        return OmegaConf.load(str(conf / path))

    with open_dict(cfg):
        if cfg.data.get("_target_") == OLD_DATAMODULE:
            dataset = default("data/fashion_mnist.yaml")
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
