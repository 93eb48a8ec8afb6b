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


class FashionMNISTClassifier(L.LightningModule):
    """Trains a network with a loss of the config's choosing, optional batch mixing, and a
    collection of metrics logged per epoch. The seams are composed from configs (plain dicts
    with Hydra's ``_target_``, saved as hyperparameters): ``net`` (``conf/model/``),
    ``loss`` (``conf/loss/``), ``mix`` (``conf/mix/``), ``metrics`` (``conf/metrics/``),
    ``optimizer`` and ``scheduler``. Checkpoints hold no pickled objects, and
    ``FashionMNISTClassifier.load_from_checkpoint(path)`` (or a subclass's) rebuilds the
    model from any checkpoint a run writes, without its run folder.

    Logged keys, all per epoch (``logged_keys`` lists them): ``{stage}/loss`` and
    ``{stage}/<name>`` for each metric of ``metrics``, for the stages ``train``, ``val`` and
    ``test``; and ``val/acc_best`` (the highest ``val/acc`` so far this fit) when a metric is
    named ``acc``. ``train/loss`` is the training loss (``loss``, on mixed batches when
    ``mix`` is set); ``val/loss`` and ``test/loss`` are always plain cross-entropy (mean
    nats per image), so runs trained with different losses stay comparable. On a mixed
    batch, the training metrics compare the predictions with the dominant label (the
    ``argmax`` of the mixed target).

    Checkpoints also hold the random number generators' states (torch, CUDA, numpy, Python),
    so a run resumed from an end-of-epoch checkpoint draws the same batches, dropout masks,
    augmentations and mixes as one that was never stopped.

    For callbacks, ``validation_step`` and ``test_step`` return the batch's float
    ``(B, num_classes)`` logits: a callback's ``on_validation_batch_end`` and
    ``on_test_batch_end`` receive them as ``outputs``, with the labels in ``batch[1]``.

    A subclass may override ``training_step`` (calling ``mix_batch`` and ``update_metrics``
    to keep the run's mixing and logged values) or log values of its own; it then extends
    ``logged_keys`` so that callbacks can monitor them.

    Args:
        net: Config of the network, e.g. ``{"_target_":
            "fmnist_lightning.models.ThreeConvNet", "image_size": 28, "dropout": 0.5}``: an
            ``nn.Module`` mapping float ``(B, 1, H, W)`` images to ``(B, num_classes)`` logits.
            It gets ``num_classes`` as its own ``num_classes`` argument (``build_net``).
        loss: Config of the training loss, called as ``loss(logits, target)`` with float
            ``(B, num_classes)`` logits and int64 ``(B,)`` labels, or float
            ``(B, num_classes)`` target probabilities when ``mix`` is set; returns the mean
            loss. ``None``: plain cross-entropy.
        mix: Config of a batch mixing (``fmnist_lightning.data.mix``), called on each
            training batch as ``mix(images, one_hot_targets)`` on the batch's device, or
            ``None`` for none.
        metrics: ``{name: config}`` of torchmetrics metrics, called as ``metric(logits,
            labels)``, collected in a ``torchmetrics.MetricCollection`` per stage;
            ``None`` entries are off. ``None``: only the losses are logged.
        optimizer: Config of the optimizer with ``_partial_: true`` (``conf/optimizer/``),
            finished with the network's parameters; ``None`` for a model that is only
            evaluated.
        scheduler: Config of an LR scheduler with ``_partial_: true``, finished with the
            optimizer and stepped once per epoch, or per optimizer step with ``interval:
            step`` (see ``build_scheduler``); ``None`` for a constant learning rate.
        num_classes: Number of classes (the dataset's ``data.num_classes``): the network's
            output width (given to the network, see ``net``) and the width of mixed targets.
        channels_last: Keep the network's weights and its input batches in the
            channels-last memory format, which oneDNN and cuDNN convolutions run faster.
        compile: Compile the network with ``torch.compile`` (in place, so ``state_dict``
            keys stay those of the plain network).

    Raises:
        PartError: A seam cannot be built from its config; it names the argument
            (``net``, ``loss``, ``mix`` or ``metrics.<name>``) and chains the cause; for
            ``net``, also a ``num_classes`` in its config that differs from ``num_classes``.
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
        # One collection per stage, each built from the configs (cheaper than deep copies).
        self.train_metrics, self.val_metrics, self.test_metrics = (
            MetricCollection({name: build_part(f"metrics.{name}", c) for name, c in chosen.items()}, prefix=f"{stage}/")
            for stage in ("train", "val", "test")
        )
        self.train_loss = MeanMetric()
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()
        self.val_acc_best = MaxMetric()
        # Saved in checkpoints, so a resumed run keeps its best-so-far.
        self.val_acc_best.persistent(True)
        self._optimizer: torch.optim.Optimizer | None = None
        self._scheduler: torch.optim.lr_scheduler.LRScheduler | None = None

    def logged_keys(self, stage: str) -> list[str]:
        """The keys this module logs in ``stage`` (``train``, ``val`` or ``test``), which
        callbacks may monitor and sweeps optimise. A subclass that logs more adds them."""
        keys = [f"{stage}/loss", *(f"{stage}/{name}" for name in self.train_metrics.keys(keep_base=True))]
        if stage == "val" and "val/acc" in keys:
            keys.append("val/acc_best")
        return keys

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Float ``(B, 1, H, W)`` images → float ``(B, num_classes)`` logits."""
        return self.net(x.contiguous(memory_format=self.memory_format))

    def update_metrics(self, stage: str, loss: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Adds a batch to ``stage``'s loss and metrics (computed and logged once per epoch).

        Args:
            stage: ``train``, ``val`` or ``test``.
            loss: The batch's mean loss, a float scalar.
            logits: Float ``(B, num_classes)``.
            target: Int64 ``(B,)`` labels, or float ``(B, num_classes)`` mixed targets,
                compared through their dominant label.
        """
        labels = target.argmax(dim=1) if target.dim() == 2 else target
        # Weighted by batch size, so the epoch value is the exact mean over images even when
        # the last batch is smaller.
        getattr(self, f"{stage}_loss").update(loss.detach(), weight=labels.numel())
        getattr(self, f"{stage}_metrics").update(logits.detach(), labels)

    def mix_batch(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A training batch as the loss sees it: with ``mix``, float ``(B, 1, H, W)`` images and
        int64 ``(B,)`` labels become mixed images and float ``(B, num_classes)`` soft targets
        (the labels one-hot encoded, then mixed); without, the batch as it is. A subclass that
        overrides ``training_step`` calls it to keep the run's mixing."""
        if self.mix is None:
            return images, labels
        return self.mix(images, F.one_hot(labels, self.hparams.num_classes).to(images.dtype))

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        """Updates ``stage``'s plain cross-entropy and metrics; returns the float
        ``(B, num_classes)`` logits."""
        images, labels = batch
        logits = self(images)
        self.update_metrics(stage, F.cross_entropy(logits, labels), logits, labels)
        return logits

    def _log_epoch(self, stage: str) -> None:
        loss_metric: MeanMetric = getattr(self, f"{stage}_loss")
        metrics: MetricCollection = getattr(self, f"{stage}_metrics")
        # The metrics are already reduced over processes by compute(); sync_dist only
        # tells Lightning so (it averages equal values) instead of warning under DDP.
        self.log(f"{stage}/loss", loss_metric.compute(), prog_bar=stage != "test", sync_dist=True)
        values = metrics.compute() if len(metrics) else {}
        self.log_dict(values, prog_bar=stage == "val", sync_dist=True)
        # The sanity check before training must not count towards the best.
        if stage == "val" and "val/acc" in values and not self.trainer.sanity_checking:
            self.val_acc_best.update(values["val/acc"])
            self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True, sync_dist=True)
        loss_metric.reset()
        metrics.reset()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Mixes the batch (when ``mix`` is set) and returns its mean training loss.

        Raises:
            NonFiniteLossError: The loss is NaN or infinite (checked every step, before the
                optimizer step; on a GPU this waits for the step's forward pass).
        """
        images, target = self.mix_batch(*batch)
        logits = self(images)
        loss = self.train_criterion(logits, target)
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
        """Updates the test metrics; returns the batch's float ``(B, num_classes)`` logits.

        The test runs in fp32 whatever ``trainer.precision`` trained the network (a mixed
        precision's autocast is switched off here), so ``test/acc`` and the report describe
        the weights as ``fmnist-evaluate``, ``fmnist-predict`` and the exported graphs use
        them, to the image."""
        with torch.autocast(self.device.type, enabled=False):
            return self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, trusted_modules: Any = (), **kwargs: Any) -> Any:
        """Lightning's ``load_from_checkpoint``, once the checkpoint's hyperparameters (its
        ``net``, ``loss``, ``mix``, ``metrics``, ``optimizer`` and ``scheduler`` configs) pass
        the rule for configs read back from disk (``fmnist_lightning.trust.check_checkpoint``;
        ``trusted_modules``: modules of one's own to trust).

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
