"""The test report, made by the ``TestReport`` callback from the logits of the test loop that computes
``test/acc``, for ``fmnist-train`` and ``fmnist-evaluate`` alike."""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.nn import functional as F

from fmnist_lightning.evaluation.calibration import (
    TEMPERATURE_FILE,
    calibration_report,
    fit_temperature,
    write_temperature,
)
from fmnist_lightning.evaluation.predictions import write_predictions
from fmnist_lightning.evaluation.report import classification_report, report_images, write_report
from fmnist_lightning.evaluation.summaries import log_test_summaries

log = logging.getLogger(__name__)


@dataclass
class Predictions:
    """A network's outputs on the test set, in the test set's order.

    Attributes:
        logits: float32 ``(N, num_classes)``, on the CPU.
        targets: int64 ``(N,)``.
        misclassified: The first misclassified images as the network saw them, float32 ``(K, 1, S, S)``.
        misclassified_targets: Their true labels, int64 ``(K,)``; ``misclassified_preds`` the predicted.
    """

    logits: torch.Tensor
    targets: torch.Tensor
    misclassified: torch.Tensor
    misclassified_targets: torch.Tensor
    misclassified_preds: torch.Tensor
    #: The input of the network's last linear layer, float32 ``(M, D)``, for the first M test images, or ``None``.
    features: torch.Tensor | None = None
    #: Those M images as the network saw them, float32 ``(M, 1, S, S)``.
    feature_images: torch.Tensor | None = None

    @property
    def preds(self) -> torch.Tensor:
        """Predicted labels, int64 ``(N,)``."""
        return self.logits.argmax(dim=1)

    @property
    def loss(self) -> float:
        """Mean cross-entropy over the N images, in nats."""
        return F.cross_entropy(self.logits, self.targets).item()


def validation_logits(trainer: L.Trainer, module: L.LightningModule) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The module's fp32 logits on its DataModule's validation split (within ``limit_val_batches``),
    preprocessed as test batches are, for temperature scaling.

    Returns:
        Float32 ``(N, C)`` logits and int64 ``(N,)`` labels on the CPU, or ``None`` without a validation batch.
    """
    datamodule = trainer.datamodule
    if datamodule is None or not callable(getattr(datamodule, "val_dataloader", None)):
        return None
    datamodule.setup("validate")
    loader = datamodule.val_dataloader()
    limit = trainer.limit_val_batches
    batches = limit if isinstance(limit, int) else int(len(loader) * limit)  # as Lightning rounds a fraction
    logits, labels = [], []
    with torch.no_grad(), torch.autocast(module.device.type, enabled=False):
        for batch in itertools.islice(loader, batches):
            images, targets = trainer.strategy.batch_to_device(batch)
            logits.append(module(images).float().cpu())
            labels.append(targets.cpu())
    return (torch.cat(logits), torch.cat(labels)) if logits else None


def _gather_in_order(module: L.LightningModule, tensor: torch.Tensor, size: int) -> torch.Tensor:
    """Each process's ``tensor`` in the test set's order (DistributedSampler's round robin), cut to ``size``."""
    gathered = module.all_gather(tensor)  # (world_size, n, ...)
    return gathered.transpose(0, 1).reshape(-1, *tensor.shape[1:])[:size]


class TestReport(Callback):
    """On rank 0 when ``trainer.test`` ends, writes ``report.json``, ``report.md``, ``confusion_matrix.png``,
    ``reliability.png``, ``predictions.npz`` and ``temperature.json`` (fitted on the validation split
    when it has one with finite logits) into ``folder``, and logs the report (``log_test_summaries``).

    Args:
        extra: Entries added to ``report.json``, e.g. the weights file it was made with.
        max_images: How many misclassified images to keep for the figure.

    Attributes:
        report: The last test's ``classification_report``, or ``None``.
        predictions: The ``Predictions`` it was made from.
    """

    def __init__(self, folder: str | Path, extra: dict[str, Any] | None = None, max_images: int = 32) -> None:
        self.folder = Path(folder)
        self.extra = extra or {}
        self.max_images = max_images
        self.report: dict[str, Any] | None = None
        self.predictions: Predictions | None = None
        self._reset()

    def _reset(self) -> None:
        self._logits: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []
        self._wrong: list[torch.Tensor] = []
        self._wrong_targets: list[torch.Tensor] = []
        self._wrong_preds: list[torch.Tensor] = []
        self._features: list[torch.Tensor] = []
        self._feature_images: list[torch.Tensor] = []
        self._features_wanted = 0
        self._take_features = False
        self._hook: torch.utils.hooks.RemovableHandle | None = None

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset()
        # A logger's projector_images: the last linear layer's inputs, hooked in this pass; not
        # under DDP (interleaved images). DummyLogger answers every attribute with a function.
        wanted = max(
            (n for logger in trainer.loggers if isinstance(n := getattr(logger, "projector_images", 0), int)), default=0
        )
        linears = [m for m in pl_module.net.modules() if isinstance(m, torch.nn.Linear)]
        if wanted > 0 and linears and trainer.world_size == 1:
            self._features_wanted = wanted
            self._hook = linears[-1].register_forward_pre_hook(self._keep_features)

    def _keep_features(self, module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if self._take_features:  # once per batch: flip TTA runs the network a second time
            self._take_features = False
            self._features.append(args[0].detach().float().flatten(1).cpu())

    def on_test_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._take_features = sum(len(f) for f in self._features) < self._features_wanted

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        images, targets = batch
        logits = outputs.detach().float()
        self._logits.append(logits)
        self._targets.append(targets)
        needed = self._features_wanted - sum(len(x) for x in self._feature_images)
        if needed > 0:
            self._feature_images.append(images[:needed].float().cpu())
        kept = sum(len(w) for w in self._wrong)
        if kept < self.max_images:
            preds = logits.argmax(1)
            wrong = (preds != targets).nonzero().flatten()[: self.max_images - kept]
            self._wrong.append(images[wrong].float().cpu())
            self._wrong_targets.append(targets[wrong].cpu())
            self._wrong_preds.append(preds[wrong].cpu())

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._hook is not None:
            self._hook.remove()
        if not self._logits:  # no test batch ran (trainer.limit_test_batches=0)
            return
        logits, targets = torch.cat(self._logits), torch.cat(self._targets)
        if trainer.world_size > 1:
            size = len(trainer.test_dataloaders.dataset)
            logits, targets = _gather_in_order(pl_module, logits, size), _gather_in_order(pl_module, targets, size)
        try:
            if trainer.is_global_zero:
                self._write(trainer, pl_module, logits, targets)
        finally:
            # The ranks leave together, or gloo may abort a rank while rank 0 still writes.
            trainer.strategy.barrier("test_report")

    def _write(
        self, trainer: L.Trainer, pl_module: L.LightningModule, logits: torch.Tensor, targets: torch.Tensor
    ) -> None:
        """Rank 0: the temperature, the report files and the loggers' summaries."""
        self.predictions = Predictions(
            logits.cpu(),
            targets.cpu(),
            torch.cat(self._wrong),
            torch.cat(self._wrong_targets),
            torch.cat(self._wrong_preds),
            torch.cat(self._features)[: self._features_wanted] if self._features else None,
            torch.cat(self._feature_images) if self._feature_images else None,
        )
        # A DataModule of one's own without class names gets its labels' numbers, never clothes.
        names = getattr(trainer.datamodule, "class_names", None) or [str(i) for i in range(logits.shape[1])]
        report = classification_report(self.predictions.preds, self.predictions.targets, names, self.predictions.loss)
        validation = validation_logits(trainer, pl_module)
        temperature, fitted_on = None, 0
        if validation is not None and torch.isfinite(validation[0]).all():
            temperature, fitted_on = fit_temperature(*validation), len(validation[0])
        elif validation is not None:
            log.warning("No temperature fitted: the network gives NaN or infinite logits on the validation split")
        report["calibration"] = calibration_report(
            self.predictions.logits, self.predictions.targets, temperature, fitted_on
        )
        report.update(self.extra)
        self.folder.mkdir(parents=True, exist_ok=True)
        if temperature is not None:
            write_temperature(self.folder, temperature, fitted_on)
        else:  # an earlier report's temperature would no longer describe these weights
            (self.folder / TEMPERATURE_FILE).unlink(missing_ok=True)
        write_predictions(self.folder, self.predictions.logits, self.predictions.targets, temperature, names)
        images = report_images(report)  # each figure drawn once, for the files and the loggers
        write_report(report, self.folder, images=images)
        log_test_summaries(trainer.loggers, report, self.predictions, trainer.global_step, images)
        log.info("Test report in %s: accuracy %.4f", self.folder, report["accuracy"])
        self.report = report
