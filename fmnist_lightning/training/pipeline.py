"""One training run: build everything from the config once, fit, test the best checkpoint, and
write the run folder.

The run folder then holds ``.hydra/`` (written by Hydra), ``checkpoints/`` (``epoch_NNN.ckpt``
for the best ``val/acc`` and ``last.ckpt``), ``net.pt`` (the tested network's plain
state_dict), the test report (``report.json``, ``report.md``, ``confusion_matrix.png``,
``reliability.png``, ``predictions.npz``, and ``temperature.json``, fitted on the validation
split), ``history.csv`` and ``curves.png`` (the metrics of every epoch), the logger's files
(TensorBoard's events by default, in the folder itself, with the report's figures and text, PR
curves, projector and an HParams session) and ``metrics.json`` (the run's status, kept up to
date while it trains; see ``run_status.RunStatus``). ``run_folder.RunFolder`` reads them back.
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
from fmnist_lightning.run_folder import RunFolder
from fmnist_lightning.training.build import Run, build_run
from fmnist_lightning.training.history import EpochHistory
from fmnist_lightning.training.precision import record_precision
from fmnist_lightning.training.processes import (
    command_line,
    cpu_threads,
    is_child_rank,
    sigterm_as_ctrl_c,
)
from fmnist_lightning.training.run_dirs import check_writable
from fmnist_lightning.training.run_status import Attempt, RunStatus, logged_metrics
from fmnist_lightning.training.starting import start_checkpoint
from fmnist_lightning.trust import TRUST_KEY

log = logging.getLogger(__name__)

# The dataset is held in memory as tensors, so DataLoader workers would only add copies;
# Lightning's advice to add workers does not apply.
warnings.filterwarnings("ignore", ".*does not have many workers.*")
# Raised inside Lightning's own pytree helper with this torch release; nothing a user can change.
warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")


def min_free_bytes(net: torch.nn.Module) -> int:
    """Disk space a run needs, in bytes: two checkpoints (best and last) of the weights and
    two optimizer moments each, the exported net.pt, and 50 MiB for logs and figures."""
    weight_bytes = sum(p.numel() * p.element_size() for p in net.parameters())
    return 7 * weight_bytes + 50 * 2**20


def write_curves(run_dir: Path) -> bool:
    """Writes ``curves.png`` from the run's ``history.csv``; ``False`` when it has no epoch."""
    history = RunFolder(run_dir).read_history()
    if not history:
        return False
    curves_figure(history).savefig(run_dir / "curves.png", dpi=110)
    return True


def train(cfg: DictConfig) -> dict[str, float]:
    """Trains, tests the best checkpoint, and writes the run folder ``cfg.output_dir``.
    Everything that can be checked is checked before any data is read or any file written
    (``_build_checked``). The errors it raises are all from ``fmnist_lightning.errors``.

    Args:
        cfg: The composed ``conf/train.yaml``.

    Returns:
        The final metrics as floats: ``val/*`` of the last epoch, ``val/acc_best``, and
        ``test/loss`` and ``test/acc`` of the best checkpoint (of the last weights when no
        checkpoint was saved, e.g. under ``debug=fdr``). Accuracies are fractions.

    Raises:
        ConfigError: The config has bad values (all are listed).
        RunError: The start checkpoint or the run folder cannot be used, or another process
            is training in the folder (it holds the folder's lock, see ``locks``).
        DatasetError: The dataset files are missing or corrupt.
        NonFiniteLossError: The loss became NaN or infinite; the run is marked failed and its
            last end-of-epoch checkpoint kept.
        RunInterrupted: Ctrl-C or SIGTERM; ``checkpoints/last.ckpt`` holds the state.
        TrialPruned: An Optuna search pruned the run (``metrics.json``: ``status: pruned``).
    """
    folder = RunFolder(cfg.output_dir)
    with folder.locked(held=not is_child_rank()):  # DDP: rank 0 holds it for all processes
        torch.set_num_threads(cpu_threads(cfg))
        status, report = RunStatus(folder.path), TestReport(folder.path)
        run, start = _build_checked(cfg, folder, [status, report])  # every refusal, before any data is read
        model, datamodule, trainer = run.model, run.datamodule, run.trainer
        _log_start(cfg, run, folder, start)
        datamodule.prepare_data()  # missing or bad files refused before any training work
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
            # SIGTERM stops the test and the report as Ctrl-C does (Lightning's own SIGTERM
            # handler, installed during trainer.test, calls this one too).
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
    """The run's objects, built once from the config (``build_run``, which reports every bad
    value by its key), and the checkpoint it starts from (``resume`` or ``ckpt_path``, see
    ``start_checkpoint``), checked before anything is written: the checkpoint fits the
    network, the folder is writable with enough free space. A refused ``resume=`` attempt's
    Hydra files are removed again.

    Raises:
        ConfigError, RunError: As ``train``.
    """
    try:
        run = build_run(cfg, extra_callbacks=callbacks, extra_loggers=[EpochHistory(folder.path)])
        start = start_checkpoint(cfg)
        if start is not None:
            check_checkpoint_fits(run.model.net, start, run_overrides())
        if not is_child_rank():
            check_writable(folder.path, min_free_bytes(run.model.net))
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
    """Writes the tested network's plain ``state_dict`` as the run's ``net.pt``: the best
    checkpoint's (``best_path``; the model's own weights where there is none), whichever
    process the test ran in. Serialised first, then written atomically
    (``checkpoint_io.AtomicCheckpointIO``)."""
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
