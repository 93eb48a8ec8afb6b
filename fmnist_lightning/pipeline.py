"""One training run: build everything from the config, fit, test the best checkpoint, and
write the run folder."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from lightning.pytorch.loggers import Logger
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fmnist_lightning.callbacks import RunStatus
from fmnist_lightning.checks import ConfigError, validate_config
from fmnist_lightning.evaluation import hparams_of, log_test_summaries, report_test_set, write_curves
from fmnist_lightning.module import FashionMNISTClassifier, NonFiniteLossError
from fmnist_lightning.run_dirs import (
    check_writable,
    checkpoint_dir,
    discard_resume_attempt,
    in_multirun,
    is_child_rank,
    read_status,
    start_checkpoint,
)
from fmnist_lightning.runs import NET_WEIGHTS, RunError, check_checkpoint_fits

log = logging.getLogger(__name__)

# The batched pipeline holds the dataset in memory as tensors, so DataLoader workers would
# only add copies; Lightning's advice to add workers does not apply.
warnings.filterwarnings("ignore", ".*does not have many workers.*")
# Raised inside Lightning's own pytree helper with this torch release; nothing a user can change.
warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")


def instantiate_group(group: DictConfig | None, what: str) -> list[Any]:
    """Instantiates every entry of a config group such as ``callbacks`` or ``logger``.

    Entries set to ``null`` are switched off and skipped.

    Raises:
        ValueError: An entry is neither ``null`` nor a config with ``_target_``.
    """
    objects = []
    for name, entry in (group or {}).items():
        if entry is None:
            continue
        if not isinstance(entry, DictConfig) or "_target_" not in entry:
            raise ValueError(
                f"{what}.{name} must be null (off) or a config with _target_, got {entry!r}"
            )
        objects.append(hydra.utils.instantiate(entry))
    return objects


def cpu_threads(cfg: DictConfig) -> int:
    """Intra-op threads for this process: the cores it may use (containers and taskset limit
    them), shared out among the jobs a parallel launcher runs at once
    (``hydra.launcher.n_jobs``) and the processes of a multi-process CPU run
    (``trainer=ddp``), so that they do not oversubscribe the cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    devices = cfg.trainer.get("devices")
    on_cpu = cfg.trainer.get("accelerator") == "cpu" or not torch.cuda.is_available()
    processes = devices if on_cpu and isinstance(devices, int) and devices > 1 else 1
    if in_multirun():
        n_jobs = HydraConfig.get().launcher.get("n_jobs") or 1
        processes *= cores if n_jobs < 0 else n_jobs
    return max(1, cores // processes)


def launch_strategy(cfg: DictConfig) -> Any:
    """``trainer.strategy``, with ``ddp`` replaced by ``ddp_spawn`` inside a Hydra multirun.

    Lightning's ``ddp`` starts its other processes by re-running the command line, which
    under ``-m`` would start the whole sweep again in each of them; ``ddp_spawn`` starts
    them from inside this job instead.
    """
    strategy = cfg.trainer.get("strategy", "auto")
    if strategy == "ddp" and in_multirun():
        log.info("trainer.strategy=ddp inside a multirun: using ddp_spawn, so the sweep is not re-run")
        return "ddp_spawn"
    return strategy


def build(
    cfg: DictConfig, extra_callbacks: list[Callback] | None = None
) -> tuple[L.LightningDataModule, FashionMNISTClassifier, L.Trainer]:
    """Instantiates the DataModule, the LightningModule and the Trainer of ``cfg``.

    Args:
        cfg: The composed ``conf/train.yaml``.
        extra_callbacks: Callbacks added to those of ``cfg.callbacks``.

    Returns:
        ``(datamodule, model, trainer)``.
    """
    datamodule = hydra.utils.instantiate(cfg.data)
    scheduler = hydra.utils.instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    model = FashionMNISTClassifier(
        net=hydra.utils.instantiate(cfg.model),
        optimizer=hydra.utils.instantiate(cfg.optimizer),
        scheduler=scheduler,
        channels_last=cfg.get("channels_last", False),
        label_smoothing=cfg.get("label_smoothing", 0.0),
    )
    if cfg.get("compile"):
        model.net.compile()  # in place: state_dict keys stay those of the plain network
    callbacks: list[Callback] = instantiate_group(cfg.get("callbacks"), "callbacks") + (extra_callbacks or [])
    loggers: list[Logger] = instantiate_group(cfg.get("logger"), "logger")
    if not loggers and any(isinstance(c, LearningRateMonitor) for c in callbacks):
        log.info("No logger configured: the learning-rate monitor is skipped")
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, strategy=launch_strategy(cfg)
    )
    return datamodule, model, trainer


def min_free_bytes(net: torch.nn.Module) -> int:
    """Disk space a run needs, in bytes: two checkpoints (best and last) of the weights and
    two optimizer moments each, the exported net.pt, and 50 MiB for logs and figures."""
    weight_bytes = sum(p.numel() * p.element_size() for p in net.parameters())
    return 7 * weight_bytes + 50 * 2**20


class RunInterrupted(RuntimeError):
    """Training was stopped by Ctrl-C or SIGTERM; the message says how to resume."""


def train(cfg: DictConfig) -> dict[str, float]:
    """Trains, tests the best checkpoint, and writes the run folder ``cfg.output_dir``.

    Everything that can be checked is checked before any data is read or any file written:
    the config's values (:func:`~fmnist_lightning.checks.validate_config`), the checkpoint
    to start from (``resume`` or ``ckpt_path``, see
    :func:`~fmnist_lightning.run_dirs.start_checkpoint`) and that the folder is writable
    with enough free space.

    The run folder then holds ``.hydra/`` (written by Hydra), ``checkpoints/``
    (``epoch_NNN.ckpt`` for the best ``val/acc`` and ``last.ckpt``), ``net.pt`` (the tested
    network's plain state_dict), the test report (``report.json``, ``report.md``,
    ``confusion_matrix.png``), ``curves.png``, the logger's files (``tensorboard/`` by
    default, with the report's figures, per-class metrics and an HParams session) and
    ``metrics.json`` (the run's status, kept up to date while it trains; see
    :class:`~fmnist_lightning.callbacks.RunStatus`).

    Args:
        cfg: The composed ``conf/train.yaml``.

    Returns:
        The final metrics as floats: ``val/*`` of the last epoch, ``val/acc_best``, and
        ``test/loss`` and ``test/acc`` of the best checkpoint (of the last weights when no
        checkpoint was saved, e.g. under ``debug=fdr``). Accuracies are fractions.

    Raises:
        fmnist_lightning.checks.ConfigError: The config has bad values (all are listed).
        fmnist_lightning.runs.RunError: The start checkpoint or the run folder cannot be
            used.
        fmnist_lightning.data.DatasetError: The dataset files are missing or corrupt.
        fmnist_lightning.module.NonFiniteLossError: The loss became NaN or infinite; the
            run is marked failed and its last end-of-epoch checkpoint kept.
        RunInterrupted: Ctrl-C or SIGTERM; ``checkpoints/last.ckpt`` holds the state.
    """
    output_dir = Path(cfg.output_dir)
    try:  # nothing is logged or written before these pass, so a refusal changes no folder
        validate_config(cfg)
        start = start_checkpoint(cfg)
        net = hydra.utils.instantiate(cfg.model)
        if start is not None:
            check_checkpoint_fits(net, start, run_overrides())
        if not is_child_rank():
            check_writable(output_dir, min_free_bytes(net))
    except (ConfigError, RunError):
        discard_resume_attempt(cfg)
        raise
    torch.set_num_threads(cpu_threads(cfg))
    log.info("%d intra-op CPU threads", torch.get_num_threads())
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    status = RunStatus(output_dir)
    datamodule, model, trainer = build(cfg, extra_callbacks=[status])
    datamodule.prepare_data()  # fail on missing or bad files before any training work

    resolved = OmegaConf.to_container(cfg, resolve=True)
    for logger in trainer.loggers:
        logger.log_hyperparams(resolved)
    if start is not None:
        log.info("Continuing from %s", start)
    status.write(trainer, "running", epochs=read_status(output_dir).get("epochs", 0) if start else 0, metrics={})

    def completed() -> int:
        return trainer.fit_loop.epoch_progress.current.completed

    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=start)
        # trainer.test replaces callback_metrics, so keep the last epoch's train/val values.
        metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
        checkpoint = trainer.checkpoint_callback
        best_path = checkpoint.best_model_path if checkpoint is not None else ""
        trainer.test(model, datamodule=datamodule, ckpt_path="best" if best_path else None)
        metrics.update({key: float(value) for key, value in trainer.callback_metrics.items()})
        if trainer.is_global_zero:
            if best_path:  # the tested weights, whichever process the test ran in
                model.load_state_dict(torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"])
            torch.save(model.net.state_dict(), output_dir / NET_WEIGHTS)
            report, predictions = report_test_set(model.net, datamodule, output_dir, trainer.strategy.root_device)
            write_curves(output_dir)
            log_test_summaries(trainer.loggers, report, predictions, hparams_of(resolved), metrics, trainer.global_step)
    except NonFiniteLossError as err:
        status.write(trainer, "failed", epochs=completed(), error=str(err))
        raise
    except (SystemExit, KeyboardInterrupt):  # Lightning's ways out after Ctrl-C and SIGTERM
        where = f"in epoch {trainer.current_epoch} (step {trainer.global_step})"
        status.write(trainer, "interrupted", epochs=completed(), error=f"stopped by Ctrl-C or SIGTERM {where}")
        last = checkpoint_dir(cfg) / "last.ckpt"
        if not last.is_file():
            raise RunInterrupted(f"training stopped {where}, before any checkpoint was saved; start it again") from None
        raise RunInterrupted(
            f"training stopped {where}; continue it from {last} with: python train.py resume={output_dir}"
        ) from None
    except Exception as err:
        status.write(trainer, "failed", epochs=completed(), error=f"{type(err).__name__}: {err}")
        raise
    status.write(trainer, "finished", epochs=completed(), metrics=metrics)
    log.info("Run folder %s: %s", output_dir, {k: round(v, 4) for k, v in metrics.items() if k.startswith("test/")})
    return metrics


def run_overrides() -> list[str]:
    """This run's command-line overrides (empty outside a Hydra app)."""
    if not HydraConfig.initialized():
        return []
    return [o for o in HydraConfig.get().overrides.task if not o.startswith("++resume=")]
