"""One training run: build everything from the config, fit, test the best checkpoint, and
write the run folder."""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from fmnist_lightning.evaluation import hparams_of, log_test_summaries, report_test_set, write_curves
from fmnist_lightning.module import FashionMNISTClassifier
from fmnist_lightning.runs import NET_WEIGHTS

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


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, FashionMNISTClassifier, L.Trainer]:
    """Instantiates the DataModule, the LightningModule and the Trainer of ``cfg``.

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
    )
    if cfg.get("compile"):
        model.net.compile()  # in place: state_dict keys stay those of the plain network
    callbacks: list[Callback] = instantiate_group(cfg.get("callbacks"), "callbacks")
    loggers: list[Logger] = instantiate_group(cfg.get("logger"), "logger")
    if not loggers and any(isinstance(c, LearningRateMonitor) for c in callbacks):
        log.info("No logger configured: the learning-rate monitor is skipped")
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return datamodule, model, trainer


def train(cfg: DictConfig) -> dict[str, float]:
    """Trains, tests the best checkpoint, and writes the run folder ``cfg.output_dir``.

    The run folder then holds ``.hydra/`` (written by Hydra), ``checkpoints/``
    (``epoch_NNN.ckpt`` for the best ``val/acc`` and ``last.ckpt``), ``net.pt`` (the tested
    network's plain state_dict), the test report (``report.json``, ``report.md``,
    ``confusion_matrix.png``), ``curves.png``, the logger's files (``tensorboard/`` by
    default, with the report's figures, per-class metrics and an HParams session) and
    ``metrics.json``.

    Args:
        cfg: The composed ``conf/train.yaml``.

    Returns:
        The final metrics as floats: ``val/*`` of the last epoch, ``val/acc_best``, and
        ``test/loss`` and ``test/acc`` of the best checkpoint (of the last weights when no
        checkpoint was saved, e.g. under ``debug=fdr``). Accuracies are fractions.

    Raises:
        fmnist_lightning.data.DatasetError: The dataset files are missing or corrupt
            (checked before training starts).
    """
    start = time.perf_counter()
    # One intra-op thread per core this process may use (containers and taskset limit it).
    torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    datamodule, model, trainer = build(cfg)
    datamodule.prepare_data()  # fail on missing or bad files before any training work

    resolved = OmegaConf.to_container(cfg, resolve=True)
    for logger in trainer.loggers:
        logger.log_hyperparams(resolved)

    trainer.fit(model, datamodule=datamodule)
    # trainer.test replaces callback_metrics, so keep the last epoch's train/val values.
    metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
    checkpoint = trainer.checkpoint_callback
    best_path = checkpoint.best_model_path if checkpoint is not None else ""
    if not trainer.interrupted:
        trainer.test(model, datamodule=datamodule, ckpt_path="best" if best_path else None)
        metrics.update({key: float(value) for key, value in trainer.callback_metrics.items()})
        if trainer.is_global_zero:
            # model.net now holds the tested (best) weights.
            torch.save(model.net.state_dict(), output_dir / NET_WEIGHTS)
            report, predictions = report_test_set(model.net, datamodule, output_dir, trainer.strategy.root_device)
            write_curves(output_dir)
            log_test_summaries(trainer.loggers, report, predictions, hparams_of(resolved), metrics, trainer.global_step)
    summary = {
        "status": "interrupted" if trainer.interrupted else "finished",
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "best_checkpoint": os.path.relpath(best_path, output_dir.resolve()) if best_path else None,
        "wall_time_s": round(time.perf_counter() - start, 2),
        "metrics": metrics,
    }
    (output_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info("Run folder %s: %s", output_dir, {k: round(v, 4) for k, v in metrics.items() if k.startswith("test/")})
    return metrics
