"""One training run: build everything from the config once, fit, test the best checkpoint, and
write the run folder (docs/runs.md): ``.hydra/`` (Hydra's), ``checkpoints/`` (the best
``epoch_NNN.ckpt`` and ``last.ckpt``), ``net.pt`` (the tested network's plain state_dict), the
test report (``report.json``, ``report.md``, ``confusion_matrix.png``, ``reliability.png``,
``predictions.npz``, ``temperature.json``), ``history.csv`` and ``curves.png``, the loggers'
files and ``metrics.json`` (``callbacks.RunStatus``).
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fmnist_lightning.artifacts import write_atomically
from fmnist_lightning.errors import ConfigError, RunError
from fmnist_lightning.evaluation.figures import curves_figure
from fmnist_lightning.evaluation.runs import check_checkpoint_fits
from fmnist_lightning.evaluation.summaries import hparams_of, log_hparams_session, log_run_start
from fmnist_lightning.evaluation.test_report import TestReport
from fmnist_lightning.overrides import key_of
from fmnist_lightning.run_folder import RunFolder, check_writable
from fmnist_lightning.training.build import Run, build_run
from fmnist_lightning.training.callbacks import Attempt, RunStatus, logged_metrics
from fmnist_lightning.training.loggers import EpochHistory
from fmnist_lightning.training.precision import record_precision
from fmnist_lightning.training.processes import (
    command_line,
    cpu_threads,
    is_child_rank,
    sigterm_as_ctrl_c,
)
from fmnist_lightning.training.resume import start_checkpoint
from fmnist_lightning.trust import TRUST_KEY

log = logging.getLogger(__name__)

# The dataset is held in memory as tensors: DataLoader workers would only add copies.
warnings.filterwarnings("ignore", ".*does not have many workers.*")
# Raised inside Lightning's own pytree helper with this torch release; nothing a user can change.
warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")


def write_curves(run_dir: Path) -> bool:
    """Writes ``curves.png`` from the run's ``history.csv``; ``False`` when it has no epoch."""
    history = RunFolder(run_dir).read_history()
    if not history:
        return False
    curves_figure(history).savefig(run_dir / "curves.png", dpi=110)
    return True


def train(cfg: DictConfig) -> dict[str, float]:
    """Trains on the composed ``conf/train.yaml``, tests the best checkpoint, and writes the
    run folder ``cfg.output_dir``, all checked before any data is read or any file written.

    Returns:
        The last epoch's ``val/*``, ``val/acc_best``, and the best checkpoint's ``test/loss``
        and ``test/acc``, as floats (accuracies are fractions).

    Raises:
        ConfigError: The config has bad values (all are listed).
        RunError: The start checkpoint or the run folder cannot be used, or another process
            is training in the folder.
        DatasetError: The dataset files are missing or corrupt.
        NonFiniteLossError: The loss became NaN or infinite (the run is marked failed).
        RunInterrupted: Ctrl-C or SIGTERM; ``checkpoints/last.ckpt`` holds the state.
        TrialPruned: An Optuna search pruned the run (``metrics.json``: ``status: pruned``).
    """
    folder = RunFolder(cfg.output_dir)
    with folder.locked(held=not is_child_rank()):  # DDP: rank 0 holds it for all processes
        torch.set_num_threads(cpu_threads(cfg.trainer))
        status, report = RunStatus(folder.path), TestReport(folder.path)
        run, start = _build_checked(cfg, folder, [status, report])  # every refusal, before any data is read
        model, datamodule, trainer = run.model, run.datamodule, run.trainer
        _log_start(cfg, run, folder, start)
        resolved = OmegaConf.to_container(cfg, resolve=True)
        with Attempt(cfg, trainer, status, folder.read_status() if start is not None else {}) as attempt:
            for logger in trainer.loggers:
                logger.log_hyperparams(resolved)
            log_run_start(trainer.loggers, OmegaConf.to_yaml(resolved), command_line())
            status.write(trainer, "running", epochs=attempt.epochs, metrics={})
            if attempt.trained_earlier:
                test_from = attempt.training_done_earlier(start)
            else:
                trainer.fit(model, datamodule=datamodule, ckpt_path=start)
                test_from = attempt.fitted()
            attempt.stage = "test"
            # SIGTERM stops the test and the report as Ctrl-C does.
            with sigterm_as_ctrl_c():
                status.write(trainer, "running", epochs=attempt.epochs, metrics=attempt.metrics, trained=True)
                trainer.test(model, datamodule=datamodule, ckpt_path=test_from)  # TestReport writes the report
                attempt.metrics.update(logged_metrics(trainer))
                attempt.stage = "report"
                if trainer.is_global_zero:
                    save_weights(model, attempt.best_path, folder)
                    write_curves(folder.path)
                    log_hparams_session(trainer.loggers, hparams_of(resolved, run_overrides()), attempt.metrics)
                status.write(trainer, "finished", epochs=attempt.epochs, metrics=attempt.metrics)
    log.info("Run folder %s: %s", folder.path, {k: round(v, 4) for k, v in attempt.metrics.items() if "test/" in k})
    return attempt.metrics


def _build_checked(cfg: DictConfig, folder: RunFolder, callbacks: list) -> tuple[Run, Path | None]:
    """The run's objects and start checkpoint, checked before anything is written (a refused
    resume's Hydra files are removed)."""
    try:
        run = build_run(cfg, extra_callbacks=callbacks, extra_loggers=[EpochHistory(folder.path)])
        start = start_checkpoint(cfg)
        if start is not None:
            check_checkpoint_fits(run.model.net, start, run_overrides())
        if not is_child_rank():  # bytes: 2 checkpoints of the weights and 2 optimizer moments, net.pt, 50 MiB logs
            weight_bytes = sum(p.numel() * p.element_size() for p in run.model.net.parameters())
            check_writable(folder.path, 7 * weight_bytes + 50 * 2**20)
    except (ConfigError, RunError):
        if cfg.get("resume") and HydraConfig.initialized():  # the refused attempt's Hydra files
            folder.discard_attempt(HydraConfig.get().output_subdir)
        raise
    return run, start


def _log_start(cfg: DictConfig, run: Run, folder: RunFolder, start: Path | None) -> None:
    """Logs how the run computes (and records ``trainer.precision=auto``'s choice)."""
    trainer = run.trainer
    if run.precision_reason is not None and not is_child_rank():
        record_precision(folder.path, cfg.trainer.precision, run.precision_reason)
    log.info(
        "Seed %s; %s with %d device(s), precision %s; %d intra-op CPU threads",
        cfg.get("seed"),
        type(trainer.accelerator).__name__,
        trainer.num_devices,
        trainer.precision,
        torch.get_num_threads(),
    )
    if trainer.world_size > 1:  # which process this is, and who said so (SLURM, torchrun, Lightning)
        environment = getattr(trainer.strategy, "cluster_environment", None)
        log.info(
            "Process rank %d of %d (node %d), from %s",
            trainer.global_rank,
            trainer.world_size,
            trainer.node_rank,
            type(environment).__name__,
        )
    if start is not None:
        log.info("Continuing from %s", start)


def save_weights(model: L.LightningModule, best_path: str, folder: RunFolder) -> None:
    """Writes the tested network's plain ``state_dict`` (``best_path``'s, else the model's
    own) atomically as the run's ``net.pt``."""
    if best_path:
        model.load_state_dict(torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"])
    weights = io.BytesIO()
    torch.save(model.net.state_dict(), weights)
    write_atomically(folder.weights_file, weights.getbuffer())


def run_overrides() -> list[str]:
    """This run's command-line overrides (empty outside a Hydra app)."""
    if not HydraConfig.initialized():
        return []
    return [o for o in HydraConfig.get().overrides.task if key_of(o) not in ("resume", TRUST_KEY)]
