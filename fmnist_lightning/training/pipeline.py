"""One training run: build everything from the config once, fit, test the best checkpoint, and
write the run folder."""

from __future__ import annotations

import io
import logging
import shlex
import warnings
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fmnist_lightning.artifacts import write_atomically
from fmnist_lightning.errors import ConfigError, NonFiniteLossError, RunError, RunInterrupted, TrialPruned
from fmnist_lightning.evaluation.figures import curves_figure
from fmnist_lightning.evaluation.runs import check_checkpoint_fits
from fmnist_lightning.evaluation.summaries import hparams_of, log_hparams_session, log_run_start
from fmnist_lightning.evaluation.test_report import TestReport
from fmnist_lightning.overrides import key_of
from fmnist_lightning.run_folder import RunFolder
from fmnist_lightning.training.build import build_run
from fmnist_lightning.training.callbacks import RunStatus, stop_reason
from fmnist_lightning.training.history import EpochHistory
from fmnist_lightning.training.loggers import end_runs
from fmnist_lightning.training.precision import record_precision
from fmnist_lightning.training.processes import (
    command_line,
    cpu_threads,
    is_child_rank,
    sigterm_as_ctrl_c,
    train_command,
)
from fmnist_lightning.training.run_dirs import check_writable, write_failure
from fmnist_lightning.training.starting import start_checkpoint, stop_limits
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

    Everything that can be checked is checked before any data is read or any file written:
    the run's objects are built once from the config (``build_run``,
    which reports every bad value by its key), the checkpoint to start from (``resume`` or
    ``ckpt_path``, see ``start_checkpoint``) must fit
    the network, and the folder must be writable with enough free space.

    The run folder then holds ``.hydra/`` (written by Hydra), ``checkpoints/``
    (``epoch_NNN.ckpt`` for the best ``val/acc`` and ``last.ckpt``), ``net.pt`` (the tested
    network's plain state_dict), the test report (``report.json``, ``report.md``,
    ``confusion_matrix.png``, ``reliability.png``, ``predictions.npz``, and
    ``temperature.json``, fitted on the validation split), ``history.csv`` and ``curves.png`` (the metrics of every
    epoch), the logger's files (TensorBoard's events by default, in the folder itself, with the
    report's figures and text, PR curves, projector and an HParams session) and
    ``metrics.json`` (the run's status, kept up to date while it trains; see
    ``RunStatus``).

    The errors it raises are all from ``fmnist_lightning.errors``.

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
    output_dir = Path(cfg.output_dir)
    if is_child_rank():  # DDP: rank 0 holds the folder's lock for all processes
        return _train(cfg)
    RunFolder(output_dir).lock()  # before anything is written; already held after resume='s preflight
    try:
        return _train(cfg)
    finally:
        RunFolder(output_dir).release()


def _train(cfg: DictConfig) -> dict[str, float]:  # noqa: C901, PLR0912, PLR0915 (split by issue 42, step 5)
    """``train``'s work, in a folder this process may write."""
    output_dir = Path(cfg.output_dir)
    torch.set_num_threads(cpu_threads(cfg))
    status, report = RunStatus(output_dir), TestReport(output_dir)
    try:  # nothing is logged or written before these pass, so a refusal changes no folder
        run = build_run(cfg, extra_callbacks=[status, report], extra_loggers=[EpochHistory(output_dir)])
        start = start_checkpoint(cfg)
        if start is not None:
            check_checkpoint_fits(run.model.net, start, run_overrides())
        if not is_child_rank():
            check_writable(output_dir, min_free_bytes(run.model.net))
    except (ConfigError, RunError):
        if cfg.get("resume") and HydraConfig.initialized():  # the refused attempt's Hydra files
            RunFolder(output_dir).discard_attempt(HydraConfig.get().output_subdir)
        raise
    datamodule, model, trainer = run.datamodule, run.model, run.trainer
    if run.precision_reason is not None and not is_child_rank():
        record_precision(output_dir, cfg.trainer.precision, run.precision_reason)
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
    datamodule.prepare_data()  # fail on missing or bad files before any training work

    resolved = OmegaConf.to_container(cfg, resolve=True)
    if start is not None:
        log.info("Continuing from %s", start)
    previous = RunFolder(output_dir).read_status() if start is not None else {}
    # Stopped in its test or report: training is complete, and the resume only tests and reports.
    trained = bool(previous.get("trained")) and previous.get("status") != "finished"
    stage = "training"  # what a signal or an error interrupts
    epochs = previous.get("epochs", 0)
    resume = f"{train_command()} {shlex.quote(f'resume={output_dir}')}"
    try:
        for logger in trainer.loggers:
            logger.log_hyperparams(resolved)
        log_run_start(trainer.loggers, OmegaConf.to_yaml(resolved), command_line())
        status.write(trainer, "running", epochs=epochs, metrics={})
        if trained:
            log.info("Training finished earlier (%d epochs); testing and reporting again", epochs)
            metrics = {k: v for k, v in previous.get("metrics", {}).items() if not k.startswith("test/")}
            best = previous.get("best_checkpoint")
            best_path = str(output_dir / best) if best else ""
            test_from = best_path or str(start)
            status.resume_at(previous.get("global_step", 0), best_path)
            status.training_ended(previous.get("stopped_by"), previous.get("limits"))
        else:
            trainer.fit(model, datamodule=datamodule, ckpt_path=start)
            epochs = _trained(trainer)
            status.training_ended(stop_reason(trainer), stop_limits(cfg))
            # trainer.test replaces callback_metrics, so keep the last epoch's train/val values.
            metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
            checkpoint = trainer.checkpoint_callback
            best_path = checkpoint.best_model_path if checkpoint is not None else ""
            test_from = best_path or None
        stage = "test"
        # SIGTERM stops the test and the report as Ctrl-C does (Lightning's own SIGTERM handler,
        # installed during trainer.test, calls this one too).
        with sigterm_as_ctrl_c():
            status.write(trainer, "running", epochs=epochs, metrics=metrics, trained=True)
            # One pass over the test set: the TestReport callback writes the report from it.
            trainer.test(model, datamodule=datamodule, ckpt_path=test_from)
            metrics.update({key: float(value) for key, value in trainer.callback_metrics.items()})
            stage = "report"
            if trainer.is_global_zero:
                if best_path:  # the tested weights, whichever process the test ran in
                    model.load_state_dict(torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"])
                weights = io.BytesIO()  # serialised first: see checkpoint_io.AtomicCheckpointIO
                torch.save(model.net.state_dict(), weights)
                write_atomically(RunFolder(output_dir).weights_file, weights.getbuffer())
                write_curves(output_dir)
                log_hparams_session(trainer.loggers, hparams_of(resolved, run_overrides()), metrics)
            status.write(trainer, "finished", epochs=epochs, metrics=metrics)
    except NonFiniteLossError as err:
        status.write_or_warn(trainer, "failed", epochs=_completed(trainer), error=str(err))
        raise
    except TrialPruned as err:  # after an epoch's validation: that epoch is done, nothing is tested
        metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
        status.write_or_warn(trainer, "pruned", epochs=trainer.current_epoch + 1, metrics=metrics, error=str(err))
        raise
    except (SystemExit, KeyboardInterrupt):  # Lightning's ways out after Ctrl-C and SIGTERM
        last = RunFolder(output_dir).last_checkpoint(cfg)
        if stage != "training":  # last.ckpt is the end of the last epoch: the resume only tests
            status.write_or_warn(
                trainer, "interrupted", epochs=epochs, metrics=metrics, trained=True,
                error=f"stopped by Ctrl-C or SIGTERM during the {stage}, after training finished ({epochs} epochs)",
            )  # fmt: skip
            raise RunInterrupted(
                f"stopped during the {stage}, after training finished ({epochs} epochs, kept in {last}); "
                f"test and report it with: {resume}"
            ) from None
        where = f"in epoch {trainer.current_epoch} (step {trainer.global_step})"
        status.write_or_warn(
            trainer, "interrupted", epochs=_completed(trainer), error=f"stopped by Ctrl-C or SIGTERM {where}"
        )
        if not last.is_file():
            raise RunInterrupted(f"training stopped {where}, before any checkpoint was saved; start it again") from None
        raise RunInterrupted(f"training stopped {where}; continue it from {last} with: {resume}") from None
    except OSError as err:  # a full disk, a folder made read-only, a lost mount: any write of the run
        message = write_failure(err, output_dir)
        failed_epochs = epochs if stage != "training" else _completed(trainer)
        status.write_or_warn(trainer, "failed", epochs=failed_epochs, error=message, trained=stage != "training")
        raise RunError(f"{message}; then continue the run with: {resume}") from None
    except Exception as err:
        failed_epochs = epochs if stage != "training" else _completed(trainer)
        error = f"{type(err).__name__}: {err}"
        status.write_or_warn(trainer, "failed", epochs=failed_epochs, error=error, trained=stage != "training")
        raise
    finally:
        end_runs(trainer.loggers)
    log.info("Run folder %s: %s", output_dir, {k: round(v, 4) for k, v in metrics.items() if k.startswith("test/")})
    return metrics


def _completed(trainer: L.Trainer) -> int:
    """Training epochs completed so far, for a fit that raised: an epoch whose end hooks
    (its checkpoints) failed is not counted."""
    return trainer.fit_loop.epoch_progress.current.completed


def _trained(trainer: L.Trainer) -> int:
    """Training epochs completed, for a fit that returned. Lightning counts an epoch
    ``processed`` before its ``on_train_epoch_end`` hooks (where checkpoints are written) and
    ``completed`` after them, so a checkpoint holds one fewer ``completed``; a resumed fit
    catches up when its loop starts. One whose loop never starts (a ``trainer.max_time``
    already spent) keeps the lag, so the processed epochs are the count."""
    return trainer.fit_loop.epoch_progress.current.processed


def run_overrides() -> list[str]:
    """This run's command-line overrides (empty outside a Hydra app)."""
    if not HydraConfig.initialized():
        return []
    return [o for o in HydraConfig.get().overrides.task if key_of(o) not in ("resume", TRUST_KEY)]
