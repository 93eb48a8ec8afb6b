"""FashionMNISTClassifier: the LightningModule, composed from a network, a loss, a batch mixing,
metrics, an optimizer and a scheduler, each given as a config."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import hydra
import lightning as L
import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics import MaxMetric, MeanMetric, MetricCollection

from fmnist_lightning.errors import NonFiniteLossError
from fmnist_lightning.models.compose import build_net, build_part
from fmnist_lightning.models.rng import rng_states, set_rng_states
from fmnist_lightning.trust import check_checkpoint

#: Training images the patch whitening is computed from (airbench: 5,000 of CIFAR-10's).
WHITENING_IMAGES = 5000


class FashionMNISTClassifier(L.LightningModule):
    """Trains a network with a configured loss, optional batch mixing, and metrics logged per epoch,
    each composed from a config (a dict with Hydra's ``_target_``, saved as a hyperparameter), so
    ``load_from_checkpoint(path)`` rebuilds the model from any run's checkpoint (no pickled objects).

    Logged per epoch (``logged_keys``): ``{stage}/loss`` and ``{stage}/<metric>`` for ``train``,
    ``val``, ``test``, and ``val/acc_best`` with an ``acc`` metric. ``train/loss`` is ``loss`` (on
    mixed batches with ``mix``, the metrics then use the dominant label); ``val/loss`` and
    ``test/loss`` are plain cross-entropy (mean nats per image), comparable across losses.
    Checkpoints hold the RNG states (torch, CUDA, numpy, Python), so a resumed run draws what an
    unstopped one would. ``validation_step`` and ``test_step`` return the float ``(B, num_classes)``
    logits, a callback's ``outputs``. A subclass changes a step's loss through ``training_loss``; one
    overriding ``training_step`` calls ``mix_batch`` and ``update_metrics``, and extends ``logged_keys``
    with any values it logs.

    Args:
        net: Config of an ``nn.Module`` mapping float ``(B, 1, H, W)`` images to ``(B, num_classes)``
            logits, e.g. ``{"_target_": "fmnist_lightning.models.ThreeConvNet", "image_size": 28}``.
        loss: Config of ``loss(logits, target)`` → mean loss, target int64 ``(B,)`` labels or, with
            ``mix``, float ``(B, num_classes)`` probabilities. ``None``: plain cross-entropy.
        mix: Config of a batch mixing (``fmnist_lightning.data.mix``), ``mix(images, one_hot_targets)``.
        metrics: ``{name: config}`` of torchmetrics metrics, ``metric(logits, labels)``; ``None``
            entries are off.
        optimizer: Config of the optimizer with ``_partial_: true``; ``None`` for evaluation only.
        scheduler: Config of an LR scheduler with ``_partial_: true`` (``build_scheduler``); ``None``
            for a constant learning rate.
        num_classes: The dataset's ``data.num_classes``: the network's output width.
        channels_last: Weights and input batches in the channels-last memory format.
        compile: ``torch.compile`` the network in place (``state_dict`` keys unchanged).
        image_size: The data's ``data.image_size``: sets ``example_input_array`` (one float32 ``(1, 1, S, S)``
            blank image), from which Lightning's model summary gives each layer's shapes and the FLOPs
            of one image's forward pass (torch's ``FlopCounterMode``); ``None``: no summary input.

    Raises:
        PartError: A part cannot be built; it names the argument (``net``, ``loss``, ``mix`` or
            ``metrics.<name>``), including a ``net`` config whose ``num_classes`` differs.
    """

    def __init__(
        self,
        net: Mapping[str, Any],
        loss: Mapping[str, Any] | None = None,
        mix: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Mapping[str, Any] | None] | None = None,
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        num_classes: int = 10,
        channels_last: bool = False,
        compile: bool = False,
        image_size: int | None = None,
    ) -> None:
        super().__init__()
        # Lightning saves these in every checkpoint; the run's loggers get the whole config.
        self.save_hyperparameters(logger=False)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net: nn.Module = build_net(net, num_classes).to(memory_format=self.memory_format)
        if compile:
            self.net.compile()
        self.train_criterion = build_part("loss", loss) if loss is not None else nn.CrossEntropyLoss()
        self.mix = build_part("mix", mix) if mix is not None else None
        chosen = {name: config for name, config in (metrics or {}).items() if config}
        self.train_metrics, self.val_metrics, self.test_metrics = (
            MetricCollection({name: build_part(f"metrics.{name}", c) for name, c in chosen.items()}, prefix=f"{stage}/")
            for stage in ("train", "val", "test")
        )
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        self.val_acc_best = MaxMetric()
        # Saved in checkpoints, so a resumed run keeps its best-so-far.
        self.val_acc_best.persistent(True)
        self._optimizer: torch.optim.Optimizer | None = None
        self._scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        if image_size is not None:
            self.example_input_array = torch.zeros(1, 1, image_size, image_size)

    def setup(self, stage: str) -> None:
        """Puts ``example_input_array`` in the precision plugin's input dtype. Before fitting, a network's
        ``whitening`` layer (``VGGBNNet(whiten=...)``, ``PatchWhitening``) is fitted to the first
        ``WHITENING_IMAGES`` training images, preprocessed as the network sees them (a resumed run then
        loads its checkpoint's values over these).

        Raises:
            RuntimeError: The network needs them and the DataModule holds no ``data_train``.
        """
        if self.example_input_array is not None:  # in the weights' dtype under bf16-true and the like
            self.example_input_array = self.trainer.precision_plugin.convert_input(self.example_input_array)
        whitening = getattr(self.net, "whitening", None)
        if stage != "fit" or whitening is None:
            return
        data = getattr(self.trainer.datamodule, "data_train", None)
        if data is None:
            raise RuntimeError(
                "the network's patch whitening is computed from the training images: fit with the project's "
                "IdxDataModule (or set model.whiten=0)"
            )
        images = data.images[:WHITENING_IMAGES].to(self.device)
        whitening.fit(self.trainer.datamodule.preprocess(images))

    def logged_keys(self, stage: str) -> list[str]:
        """The keys this module logs in ``stage`` (``train``, ``val`` or ``test``), for callbacks and sweeps."""
        keys = [f"{stage}/loss", *(f"{stage}/{name}" for name in self.train_metrics.keys(keep_base=True))]
        if stage == "val" and "val/acc" in keys:
            keys.append("val/acc_best")
        return keys

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Float ``(B, 1, H, W)`` images → float ``(B, num_classes)`` logits."""
        return self.net(x.contiguous(memory_format=self.memory_format))

    def update_metrics(self, stage: str, loss: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Adds a batch's float scalar mean loss and float ``(B, num_classes)`` logits to ``stage``'s metrics;
        ``target``: int64 ``(B,)`` labels, or float ``(B, num_classes)`` mixed targets (their dominant label)."""
        labels = target.argmax(dim=1) if target.dim() == 2 else target
        # Weighted by batch size: the exact mean over images with a smaller last batch.
        getattr(self, f"{stage}_loss").update(loss.detach(), weight=labels.numel())
        getattr(self, f"{stage}_metrics").update(logits.detach(), labels)

    def mix_batch(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """With ``mix``, float ``(B, 1, H, W)`` images and int64 ``(B,)`` labels → mixed images and float
        ``(B, num_classes)`` soft targets; without, the batch unchanged."""
        if self.mix is None:
            return images, labels
        return self.mix(images, F.one_hot(labels, self.hparams.num_classes).to(images.dtype))

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        """Updates ``stage``'s cross-entropy and metrics; returns the float ``(B, num_classes)`` logits."""
        images, labels = batch
        logits = self(images)
        self.update_metrics(stage, F.cross_entropy(logits, labels), logits, labels)
        return logits

    def _log_epoch(self, stage: str) -> None:
        loss_metric: MeanMetric = getattr(self, f"{stage}_loss")
        metrics: MetricCollection = getattr(self, f"{stage}_metrics")
        # compute() already reduced over processes; sync_dist only stops Lightning's DDP warning.
        self.log(f"{stage}/loss", loss_metric.compute(), prog_bar=stage != "test", sync_dist=True)
        values = metrics.compute() if len(metrics) else {}
        self.log_dict(values, prog_bar=stage == "val", sync_dist=True)
        # The sanity check before training must not count towards the best.
        if stage == "val" and "val/acc" in values and not self.trainer.sanity_checking:
            self.val_acc_best.update(values["val/acc"])
            self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True, sync_dist=True)
        loss_metric.reset()
        metrics.reset()

    def training_loss(self, images: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean training loss (a float scalar) of a batch and the float ``(B, num_classes)`` logits the
        training metrics see; ``images`` float ``(B, 1, H, W)``, ``target`` as ``loss`` takes it. A subclass
        changing what a step trains on (e.g. ``AdversarialClassifier``) overrides this."""
        logits = self(images)
        return self.train_criterion(logits, target), logits

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Mixes the batch (when ``mix`` is set) and returns its mean training loss.

        Raises:
            NonFiniteLossError: The loss is NaN or infinite (checked before the optimizer step).
        """
        images, target = self.mix_batch(*batch)
        loss, logits = self.training_loss(images, target)
        self.update_metrics("train", loss, logits, target)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"the training loss became {loss.item()} at step {self.global_step} (epoch "
                f"{self.current_epoch}, batch {batch_idx}); lower optimizer.lr or set trainer.gradient_clip_val"
            )
        return loss

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Updates the validation metrics; returns the batch's float ``(B, num_classes)`` logits."""
        return self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Updates the test metrics in fp32 whatever ``trainer.precision`` (as ``fmnist-evaluate``,
        ``fmnist-predict`` and exports run); returns the batch's float ``(B, num_classes)`` logits."""
        with torch.autocast(self.device.type, enabled=False):
            return self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, trusted_modules: Any = (), **kwargs: Any) -> Any:
        """Lightning's ``load_from_checkpoint`` once the checkpoint's configs pass
        ``fmnist_lightning.trust.check_checkpoint`` (``trusted_modules``: modules of one's own to trust).

        Raises:
            UntrustedConfigError: They name a callable that is not trusted.
        """
        check_checkpoint(checkpoint_path, trusted_modules)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

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

        ``interval`` (``epoch``, the default, or ``step``) is Lightning's and not passed on; ``total_steps:
        null`` (``OneCycleLR``) becomes Lightning's ``estimated_stepping_batches``, or 1 (not kept)
        before a Trainer is attached.

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
        """The optimizer and the scheduler, if any (the same objects every call), with its ``interval``."""
        optimizer, scheduler = self.build_optimizer(), self.build_scheduler()
        if scheduler is None:
            return optimizer
        # "monitor" is only read by ReduceLROnPlateau.
        interval = self.hparams.scheduler.get("interval", "epoch")
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": interval, "monitor": "val/loss"},
        }
