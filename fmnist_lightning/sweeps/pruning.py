"""Pruning of Optuna trials while they train: ``callbacks.optuna_pruning`` (added by the
``hparams_search`` configs), optuna-integration's Lightning callback made to work in sweep
jobs of any process."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
from optuna_integration.pytorch_lightning import PyTorchLightningPruningCallback

from fmnist_lightning.errors import TrialPruned
from fmnist_lightning.sweeps.optuna_storage import current_trial

log = logging.getLogger(__name__)


class OptunaPruning(PyTorchLightningPruningCallback):
    """Reports ``monitor`` (e.g. ``val/acc_best``) to the job's Optuna trial, found through the
    study's storage, after every validation, at step ``fold × max_epochs + epoch``, and stops the
    run when the study's pruner prunes the trial. Outside an Optuna search's jobs it does nothing.

    Raises:
        TrialPruned: From ``on_validation_end``, when the pruner prunes the trial.
    """

    def __init__(self, monitor: str) -> None:
        super().__init__(current_trial(), monitor)
        if self._trial is None:
            log.info("callbacks.optuna_pruning: not a job of an Optuna search, so nothing is pruned")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._trial is not None:
            super().on_fit_start(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._trial is None or trainer.sanity_checking:
            return
        if self.is_ddp_backend:
            super().on_validation_end(trainer, pl_module)
            return
        score = trainer.callback_metrics.get(self.monitor)
        if score is None:
            log.warning("callbacks.optuna_pruning: %s is not logged, so the trial is not pruned", self.monitor)
            return
        datamodule: Any = trainer.datamodule
        fold = getattr(datamodule, "fold", 0) if getattr(datamodule, "folds", None) else 0
        step = fold * (trainer.max_epochs or 0) + pl_module.current_epoch
        self._trial.report(float(score), step=step)
        if self._trial.should_prune():
            raise TrialPruned(
                f"pruned by the study's pruner after epoch {pl_module.current_epoch + 1}: "
                f"{self.monitor} = {float(score):.4f}"
            )

    def check_pruned(self) -> None:
        if self._trial is not None:
            super().check_pruned()
