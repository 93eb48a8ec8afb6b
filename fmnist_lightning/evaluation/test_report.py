"""The test report, made by the ``TestReport`` callback from the logits of the test loop that computes
``test/acc``, for ``fmnist-train`` and ``fmnist-evaluate`` alike."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from matplotlib.figure import Figure
from torch import nn
from torch.nn import functional as F

from fmnist_lightning.data.augment import build_preprocess
from fmnist_lightning.evaluation.attribution import NO_CONV, Explainer, gradcam_layer_name, last_conv
from fmnist_lightning.evaluation.calibration import (
    TEMPERATURE_FILE,
    calibration_report,
    fit_temperature,
    write_temperature,
)
from fmnist_lightning.evaluation.conformal import CONFORMAL_FILE, conformal_report, write_conformal
from fmnist_lightning.evaluation.features import penultimate_layer
from fmnist_lightning.evaluation.figures import confused_pairs_gradcam_figure, misclassified_gradcam_figure
from fmnist_lightning.evaluation.predictions import write_predictions
from fmnist_lightning.evaluation.report import classification_report, figure_arrays, report_images, write_report
from fmnist_lightning.evaluation.selective import selective_report
from fmnist_lightning.evaluation.summaries import log_test_summaries, takes_images

log = logging.getLogger(__name__)

#: The most error images of one (true, predicted) pair the confused pairs' mean Grad-CAM map is taken over.
PAIR_IMAGES = 64
#: The Grad-CAM figures: files ``<name>.png`` in the report's folder, loggers' images ``test/<name>``.
GRADCAM_FIGURES = ("misclassified_gradcam", "confused_pairs_gradcam")


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


def keep_errors_by_pair(
    kept: dict[tuple[int, int], list[torch.Tensor]],
    images: torch.Tensor,
    targets: torch.Tensor,
    preds: torch.Tensor,
    limit: int = PAIR_IMAGES,
) -> None:
    """Adds a batch's misclassified images to ``kept[(true, predicted)]``, the first ``limit`` of each
    pair over all batches, as float32 ``(n, 1, S, S)`` tensors on the CPU.

    Args:
        kept: Lists of images by pair, changed in place.
        images: float ``(B, 1, S, S)`` as the network saw them.
        targets, preds: int64 ``(B,)`` true and predicted labels, on the images' device.
    """
    wrong = (preds != targets).nonzero().flatten()
    pairs = list(zip(targets[wrong].tolist(), preds[wrong].tolist(), strict=True))
    room = {pair: limit - sum(len(x) for x in kept.get(pair, ())) for pair in set(pairs)}
    chosen: dict[tuple[int, int], list[int]] = {}
    for row, pair in zip(wrong.tolist(), pairs, strict=True):
        rows = chosen.setdefault(pair, [])
        if len(rows) < room[pair]:
            rows.append(row)
    chosen = {pair: rows for pair, rows in chosen.items() if rows}
    if chosen:  # one gather and one copy to the CPU a batch
        taken = images[torch.tensor([r for rows in chosen.values() for r in rows], device=images.device)]
        for pair, x in zip(chosen, taken.float().cpu().split([len(rows) for rows in chosen.values()]), strict=True):
            kept.setdefault(pair, []).append(x)


@contextmanager
def gradients(net: nn.Module, device: torch.device) -> Iterator[None]:
    """Within the block, autograd records in fp32 even inside Lightning's test loop (which runs under
    ``torch.inference_mode``; tensors made there must be cloned in the block to take gradients), with
    autocast off on ``device``; every module's train/eval mode is restored after (``Explainer`` puts
    the network in eval mode)."""
    modes = [(module, module.training) for module in net.modules()]
    try:
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
            yield
    finally:
        for module, training in modes:
            module.training = training


def gradcam_maps(
    explainer: Explainer, images: torch.Tensor, targets: torch.Tensor, device: torch.device, chunk: int = 256
) -> torch.Tensor:
    """Grad-CAM maps (``Explainer.attribute``), ``chunk`` images at a time on ``device``: float ``(N, 1, S, S)``
    images and int64 ``(N,)`` classes on the CPU → float32 ``(N, S, S)`` on the CPU. Call within ``gradients``."""
    batches = zip(images.split(chunk), targets.split(chunk), strict=True)
    return torch.cat([explainer.attribute(x.to(device).clone(), t).maps for x, t in batches])


class TestReport(Callback):
    """On rank 0 when ``trainer.test`` ends, writes ``report.json``, ``report.md``, ``confusion_matrix.png``,
    ``reliability.png``, ``risk_coverage.png``, ``predictions.npz``, ``temperature.json`` and
    ``conformal.json`` (from the validation split when it has one with finite logits) into ``folder``,
    and logs the report (``log_test_summaries``). With attributions, also the Grad-CAM figures
    (Selvaraju et al., ICCV 2017, at ``attribution.gradcam_layer``'s layer), written as
    ``<name>.png`` and logged as ``test/<name>`` (``GRADCAM_FIGURES``): ``misclassified_gradcam``, the
    maps of the kept misclassified images for their predicted and their true class, and
    ``confused_pairs_gradcam``, the mean map for the predicted class over the first ``PAIR_IMAGES``
    errors of each of the report's most confused pairs; and the report's ``attribution`` section.

    Args:
        extra: Entries added to ``report.json``, e.g. the weights file it was made with.
        max_images: How many misclassified images to keep for the figure.
        attributions: Whether to make the Grad-CAM figures: ``None``, only when a logger takes images
            (``summaries.takes_images``); never under DDP, nor for a network without a convolution
            (a log line says so).

    Attributes:
        report: The last test's ``classification_report``, or ``None``.
        predictions: The ``Predictions`` it was made from.
    """

    def __init__(
        self,
        folder: str | Path,
        extra: dict[str, Any] | None = None,
        max_images: int = 32,
        attributions: bool | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.extra = extra or {}
        self.max_images = max_images
        self.attributions = attributions
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
        self._attribute = False
        self._pairs: dict[tuple[int, int], list[torch.Tensor]] = {}

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
        self._attribute = self._wants_attributions(trainer, pl_module.net)

    def _wants_attributions(self, trainer: L.Trainer, net: nn.Module) -> bool:
        """Whether this test makes the Grad-CAM figures (see ``attributions``)."""
        if not (self.attributions if self.attributions is not None else takes_images(trainer.loggers)):
            return False
        if trainer.world_size > 1:  # as the projector: not from images spread over the processes
            if trainer.is_global_zero:
                log.info("No Grad-CAM figures in the test report under DDP")
            return False
        if last_conv(net) is None:
            log.info("No Grad-CAM figures in the test report: %s", NO_CONV)
            return False
        return True

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
        if self._attribute:
            keep_errors_by_pair(self._pairs, images, targets, logits.argmax(1))

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
        images |= self._attribution_images(trainer, pl_module, report)
        write_report(report, self.folder, images=images)
        for name in set(GRADCAM_FIGURES) - set(images):  # an earlier report's would not describe these weights
            (self.folder / f"{name}.png").unlink(missing_ok=True)
        log_test_summaries(trainer.loggers, report, self.predictions, trainer.global_step, images)
        log.info("Test report in %s: accuracy %.4f", self.folder, report["accuracy"])
        self.report = report

    def _attribution_images(
        self, trainer: L.Trainer, pl_module: L.LightningModule, report: dict[str, Any]
    ) -> dict[str, np.ndarray]:
        """Rank 0: the Grad-CAM figures that have images, as uint8 RGB ``(H, W, 3)`` arrays by name, and
        the report's ``attribution`` section; none when not wanted (``attributions``) or when
        attributing fails (a warning says why)."""
        pairs, self._pairs = self._pairs, {}  # freed after this test
        if not self._attribute:
            return {}
        net, device = pl_module.net, pl_module.device
        # A DataModule of one's own without the run's preprocessing: its images shown as if unnormalised.
        preprocess = getattr(trainer.datamodule, "preprocess", None)
        if not isinstance(preprocess, nn.Module):
            preprocess = build_preprocess(self.predictions.misclassified.shape[-1])
        try:  # optional figures: no failure of theirs may cost the report
            layer = gradcam_layer_name(net)
            with gradients(net, device):
                explainer = Explainer(net, preprocess, "gradcam")
                figures = self._misclassified_gradcam(explainer, report["class_names"], layer, device)
                figures |= _confused_pairs_gradcam(explainer, pairs, report["most_confused"], layer, device)
        except Exception as err:  # out of memory, bf16-true weights, a layer refused: the report goes on
            log.warning("No Grad-CAM figures in the test report: %s", err)
            return {}
        if figures:
            report["attribution"] = {
                "method": "gradcam",
                "layer": layer,
                "images_per_pair": PAIR_IMAGES,
                "figures": [name for name in GRADCAM_FIGURES if name in figures],
            }
        return figure_arrays(figures)

    def _misclassified_gradcam(
        self, explainer: Explainer, names: list[str], layer: str, device: torch.device
    ) -> dict[str, Figure]:
        """``misclassified_gradcam``'s figure for the kept misclassified images, or none without any."""
        p = self.predictions
        k = len(p.misclassified)
        if k == 0:
            return {}
        images = torch.cat([p.misclassified, p.misclassified])
        maps = gradcam_maps(explainer, images, torch.cat([p.misclassified_preds, p.misclassified_targets]), device)
        seen = explainer.as_seen(p.misclassified)
        figure = misclassified_gradcam_figure(
            seen, maps[:k], maps[k:], p.misclassified_targets, p.misclassified_preds, names, layer
        )
        return {"misclassified_gradcam": figure}

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


def _confused_pairs_gradcam(
    explainer: Explainer,
    kept: dict[tuple[int, int], list[torch.Tensor]],
    most_confused: list[dict[str, Any]],
    layer: str,
    device: torch.device,
) -> dict[str, Figure]:
    """``confused_pairs_gradcam``'s figure: for each pair of the report's ``most_confused`` with kept
    errors (``keep_errors_by_pair``), the mean map for the predicted class over them, on their mean
    image; none without any."""
    pairs = [
        (c, torch.cat(kept[(c["true"], c["predicted"])])) for c in most_confused if (c["true"], c["predicted"]) in kept
    ]
    if not pairs:
        return {}
    sizes = [len(images) for _, images in pairs]
    images = torch.cat([images for _, images in pairs])
    targets = torch.cat([torch.full((len(x),), c["predicted"], dtype=torch.int64) for c, x in pairs])
    maps = gradcam_maps(explainer, images, targets, device).split(sizes)
    seen = explainer.as_seen(images).split(sizes)
    used = [f"{n} of {c['count']}" if n < c["count"] else str(n) for (c, _), n in zip(pairs, sizes, strict=True)]
    titles = [f"{c['true_name']} → {c['predicted_name']}\n({u} errors)" for (c, _), u in zip(pairs, used, strict=True)]
    mean_images = torch.stack([s.mean(dim=0) for s in seen])
    figure = confused_pairs_gradcam_figure(mean_images, torch.stack([m.mean(dim=0) for m in maps]), titles, layer)
    return {"confused_pairs_gradcam": figure}
