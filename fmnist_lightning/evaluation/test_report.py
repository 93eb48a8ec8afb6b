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
from fmnist_lightning.evaluation.conformal import CONFORMAL_FILE, conformal_report, write_conformal
from fmnist_lightning.evaluation.features import penultimate_layer
from fmnist_lightning.evaluation.predictions import write_predictions
from fmnist_lightning.evaluation.report import classification_report, report_images, write_report
from fmnist_lightning.evaluation.selective import selective_report
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
    ``reliability.png``, ``risk_coverage.png``, ``predictions.npz``, ``temperature.json`` and
    ``conformal.json`` (from the validation split when it has one with finite logits) into ``folder``,
    and logs the report (``log_test_summaries``).

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
        # A logger's projector_images: the penultimate features (features.penultimate_layer's
        # rule), hooked in this pass; not under DDP (interleaved images). DummyLogger answers
        # every attribute with a function.
        wanted = max(
            (n for logger in trainer.loggers if isinstance(n := getattr(logger, "projector_images", 0), int)), default=0
        )
        layer = penultimate_layer(pl_module.net)
        if wanted > 0 and layer is not None and trainer.world_size == 1:
            self._features_wanted = wanted
            self._hook = layer.register_forward_pre_hook(self._keep_features)

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
        """Rank 0: the temperature (fitted on the validation images at even positions), the conformal
        thresholds (calibrated on those at odd positions), the report files and the loggers' summaries."""
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
        temperature = self._trust_sections(report, validation_logits(trainer, pl_module))
        report.update(self.extra)
        self.folder.mkdir(parents=True, exist_ok=True)
        # An earlier report's temperature or thresholds would no longer describe these weights.
        if temperature is not None:
            write_temperature(self.folder, temperature, report["calibration"]["fitted_on"])
        else:
            (self.folder / TEMPERATURE_FILE).unlink(missing_ok=True)
        if "conformal" in report:
            write_conformal(self.folder, report["conformal"])
        else:
            (self.folder / CONFORMAL_FILE).unlink(missing_ok=True)
        write_predictions(self.folder, self.predictions.logits, self.predictions.targets, temperature, names)
        images = report_images(report)  # each figure drawn once, for the files and the loggers
        write_report(report, self.folder, images=images)
        log_test_summaries(trainer.loggers, report, self.predictions, trainer.global_step, images)
        log.info("Test report in %s: accuracy %.4f", self.folder, report["accuracy"])
        self.report = report

    def _trust_sections(
        self, report: dict[str, Any], validation: tuple[torch.Tensor, torch.Tensor] | None
    ) -> float | None:
        """Adds the report's ``calibration``, ``selective`` and ``conformal`` sections; returns the
        temperature, fitted on the validation images at even positions (the conformal thresholds are
        calibrated on those at odd positions), or ``None`` without validation logits that are finite."""
        logits, targets = self.predictions.logits, self.predictions.targets
        if validation is not None and not torch.isfinite(validation[0]).all():
            log.warning("No temperature, no conformal sets: the network gives NaN or infinite validation logits")
            validation = None
        temperature, fitted_on = None, 0
        if validation is not None:
            temperature, fitted_on = fit_temperature(validation[0][0::2], validation[1][0::2]), len(validation[1][0::2])
        report["calibration"] = calibration_report(logits, targets, temperature, fitted_on)
        # The probabilities the run serves, in float64, which ties fewer images at a probability of 1.
        probs = (logits.double() / (temperature or 1.0)).softmax(dim=1)
        try:
            report["selective"] = {"temperature": temperature} | selective_report(probs, targets)
        except ValueError as err:  # one test image, or NaN logits
            log.warning("No selective classification in the report: %s", err)
        if validation is not None:
            calibration_probs = (validation[0][1::2].double() / (temperature or 1.0)).softmax(dim=1)
            try:
                sets = conformal_report(calibration_probs, validation[1][1::2], probs, targets)
                report["conformal"] = {"temperature": temperature} | sets
            except ValueError as err:  # too few calibration images for an α, or NaN test logits
                log.warning("No conformal prediction sets in the report: %s", err)
        return temperature
