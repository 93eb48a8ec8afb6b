"""FashionMNISTClassifier: the one LightningModule, wrapping any plain network."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import hydra
import lightning as L
import numpy as np
import torch
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from fmnist_lightning.errors import NonFiniteLossError, require


def rng_states() -> dict[str, Any]:
    """The states of torch's, CUDA's, numpy's and Python's global random generators, as
    tensors and plain Python values only (checkpoints load with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "python": random.getstate(),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Restores what ``rng_states`` returned."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(states["python"])


class FashionMNISTClassifier(L.LightningModule):
    """Trains a network with cross-entropy and logs per-epoch loss and accuracy.

    Logged keys (all per epoch; accuracy is a fraction in [0, 1], loss is the mean
    cross-entropy per image in nats): ``train/loss``, ``train/acc``, ``val/loss``,
    ``val/acc``, ``val/acc_best`` (highest ``val/acc`` so far this fit), ``test/loss``,
    ``test/acc``.

    Checkpoints also hold the random number generators' states (torch, CUDA, numpy, Python),
    so a run resumed from an end-of-epoch checkpoint draws the same batches, dropout masks
    and augmentations as one that was never stopped.

    The network, optimizer and scheduler are given as configs (plain dicts with Hydra's
    ``_target_``) and saved as hyperparameters, so checkpoints hold no pickled objects and
    ``FashionMNISTClassifier.load_from_checkpoint(path)`` rebuilds the model from any
    checkpoint a run writes, without its run folder.

    The test loop's ``test_step`` returns each batch's logits, so callbacks (the report's
    ``TestReport``) collect predictions
    from the one pass over the test set.

    Args:
        net: Config of the network (``conf/model/``), e.g. ``{"_target_":
            "fmnist_lightning.models.ThreeConvNet", "image_size": 28, "dropout": 0.5}``: an
            ``nn.Module`` mapping float ``(B, 1, H, W)`` images to ``(B, num_classes)`` logits.
        optimizer: Config of the optimizer with ``_partial_: true`` (``conf/optimizer/``),
            finished with the network's parameters; ``None`` for a model that is only
            evaluated.
        scheduler: Config of an LR scheduler with ``_partial_: true``, finished with the
            optimizer and stepped once per epoch, or per optimizer step with ``interval:
            step`` (see ``build_scheduler``); ``None`` for a constant learning rate.
        num_classes: Number of classes (10 for FashionMNIST).
        channels_last: Keep the network's weights and its input batches in the
            channels-last memory format, which oneDNN and cuDNN convolutions run faster.
        label_smoothing: Label smoothing of the training loss (Szegedy et al., 2016), a
            fraction in [0, 1): the target puts ``1 - label_smoothing`` on the true class
            plus an equal share of ``label_smoothing`` on every class. ``train/loss`` is that
            smoothed loss; ``val/loss`` and ``test/loss`` are always plain cross-entropy.
        compile: Compile the network with ``torch.compile`` (in place, so ``state_dict``
            keys stay those of the plain network).

    Raises:
        ArgumentError: ``label_smoothing`` outside [0, 1).
        hydra.errors.InstantiationException: The network cannot be built from ``net``.
    """

    #: The metrics logged while fitting, which callbacks may monitor.
    FIT_METRICS = ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best")
    #: The metrics logged by the test.
    TEST_METRICS = ("test/loss", "test/acc")

    def __init__(
        self,
        net: Mapping[str, Any],
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        num_classes: int = 10,
        channels_last: bool = False,
        label_smoothing: float = 0.0,
        compile: bool = False,
    ) -> None:
        super().__init__()
        require(0.0 <= label_smoothing < 1.0, "label_smoothing", label_smoothing, "a fraction in [0, 1)")
        # Lightning saves these in every checkpoint; the run's loggers get the whole config.
        self.save_hyperparameters(logger=False)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net: nn.Module = hydra.utils.instantiate(net).to(memory_format=self.memory_format)
        if compile:
            self.net.compile()
        self.criterion = nn.CrossEntropyLoss()
        self.train_criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        # Inputs come from our own DataModule, so torchmetrics' per-batch argument checks
        # (which sync with the device) are skipped.
        accuracy = dict(num_classes=num_classes, average="micro", validate_args=False)
        self.train_acc = MulticlassAccuracy(**accuracy)
        self.val_acc = MulticlassAccuracy(**accuracy)
        self.test_acc = MulticlassAccuracy(**accuracy)
        self.train_loss = MeanMetric()
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()
        self.val_acc_best = MaxMetric()
        # Saved in checkpoints, so a resumed run keeps its best-so-far.
        self.val_acc_best.persistent(True)
        self._optimizer: torch.optim.Optimizer | None = None
        self._scheduler: torch.optim.lr_scheduler.LRScheduler | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Float ``(B, 1, H, W)`` images → float ``(B, num_classes)`` logits."""
        return self.net(x.contiguous(memory_format=self.memory_format))

    def _shared_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Updates the stage's loss and accuracy; returns the batch's mean loss and its
        ``(B, num_classes)`` logits."""
        images, labels = batch
        logits = self(images)
        loss = (self.train_criterion if stage == "train" else self.criterion)(logits, labels)
        # Only update() per step: the values are computed and logged once per epoch
        # (_log_epoch), so a step costs no per-batch metric values, state copies or log calls.
        # The loss is weighted by batch size, so the epoch value is the exact mean over
        # images even when the last batch is smaller.
        getattr(self, f"{stage}_loss").update(loss.detach(), weight=labels.numel())
        getattr(self, f"{stage}_acc").update(logits.detach(), labels)
        return loss, logits

    def _log_epoch(self, stage: str) -> None:
        loss_metric: MeanMetric = getattr(self, f"{stage}_loss")
        acc_metric: MulticlassAccuracy = getattr(self, f"{stage}_acc")
        acc = acc_metric.compute()
        # The metrics are already reduced over processes by compute(); sync_dist only
        # tells Lightning so (it averages equal values) instead of warning under DDP.
        self.log(f"{stage}/loss", loss_metric.compute(), prog_bar=stage != "test", sync_dist=True)
        self.log(f"{stage}/acc", acc, prog_bar=stage != "train", sync_dist=True)
        # The sanity check before training must not count towards the best.
        if stage == "val" and not self.trainer.sanity_checking:
            self.val_acc_best.update(acc)
            self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True, sync_dist=True)
        loss_metric.reset()
        acc_metric.reset()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Returns the batch's mean loss.

        Raises:
            NonFiniteLossError: The loss is NaN or infinite (checked every step, before the
                optimizer step; on a GPU this waits for the step's forward pass).
        """
        loss, _ = self._shared_step(batch, "train")
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"the training loss became {loss.item()} at step {self.global_step} (epoch "
                f"{self.current_epoch}, batch {batch_idx}); lower optimizer.lr or set trainer.gradient_clip_val"
            )
        return loss

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Updates the test metrics; returns the batch's float ``(B, num_classes)`` logits.

        The test runs in fp32 whatever ``trainer.precision`` trained the network (a mixed
        precision's autocast is switched off here), so ``test/acc`` and the report describe
        the weights as ``fmnist-evaluate``, ``fmnist-predict`` and the exported graphs use
        them, to the image."""
        with torch.autocast(self.device.type, enabled=False):
            return self._shared_step(batch, "test")[1]

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rng_states"] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "rng_states" in checkpoint:
            set_rng_states(checkpoint["rng_states"])

    def build_optimizer(self) -> torch.optim.Optimizer:
        """The optimizer over the network's parameters, built once from ``optimizer``.

        Raises:
            TypeError: ``optimizer`` is ``None`` or does not build a ``torch.optim.Optimizer``.
        """
        if self._optimizer is None:
            if self.hparams.optimizer is None:
                raise TypeError("this model was made for evaluation only: it has no optimizer config")
            optimizer = hydra.utils.instantiate(self.hparams.optimizer)(self.parameters())
            if not isinstance(optimizer, torch.optim.Optimizer):
                raise TypeError(f"builds a {type(optimizer).__name__}, not a torch.optim.Optimizer")
            self._optimizer = optimizer
        return self._optimizer

    def build_scheduler(self) -> torch.optim.lr_scheduler.LRScheduler | None:
        """The LR scheduler of the optimizer, built once from ``scheduler`` (``None`` if none).

        The config's ``interval`` key (``epoch``, the default, or ``step``) is Lightning's: it
        says when the scheduler steps and is not passed to the scheduler. A ``total_steps:
        null`` (``OneCycleLR``'s argument) is filled in with the run's number of optimizer
        steps, Lightning's ``estimated_stepping_batches``. Before a Trainer is attached
        (the config check in ``build_run``), such a scheduler is built with one step to check
        its arguments, and not kept.

        Raises:
            TypeError: ``scheduler`` does not build a ``torch.optim.lr_scheduler.LRScheduler``.
            ValueError: ``interval`` is neither ``epoch`` nor ``step``.
        """
        if self._scheduler is not None or self.hparams.scheduler is None:
            return self._scheduler
        config = dict(self.hparams.scheduler)
        interval = config.pop("interval", "epoch")
        if interval not in ("epoch", "step"):
            raise ValueError(f"interval={interval!r}: use epoch or step")
        keep = True
        if "total_steps" in config and config["total_steps"] is None:
            keep = self._trainer is not None
            config["total_steps"] = int(self.trainer.estimated_stepping_batches) if keep else 1
        scheduler = hydra.utils.instantiate(config)(self.build_optimizer())
        if not isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler):
            raise TypeError(f"builds a {type(scheduler).__name__}, not a torch.optim.lr_scheduler.LRScheduler")
        if keep:
            self._scheduler = scheduler
        return scheduler

    def configure_optimizers(self):
        """The optimizer and the scheduler, if any (the same objects every call), stepped per
        epoch or per optimizer step as the scheduler config's ``interval`` says."""
        optimizer, scheduler = self.build_optimizer(), self.build_scheduler()
        if scheduler is None:
            return optimizer
        # "monitor" is only read by ReduceLROnPlateau.
        interval = self.hparams.scheduler.get("interval", "epoch")
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": interval, "monitor": "val/loss"},
        }
