"""FashionMNISTClassifier logs the documented metric keys with correct values, and its parts
(loss, mix, metrics) behave as documented."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from fmnist_lightning.data.mix import CutMix, MixUp
from fmnist_lightning.errors import ArgumentError
from fmnist_lightning.models.classifier import FashionMNISTClassifier
from fmnist_lightning.models.losses import FocalLoss

NET = {"_target_": "fmnist_lightning.models.TwoConv5x5Net", "image_size": 16}
SGD_LR0 = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.0}
ACC = {"acc": {"_target_": "torchmetrics.classification.MulticlassAccuracy", "num_classes": 10, "average": "micro"}}


def test_logged_keys_and_exact_epoch_means(tmp_path) -> None:
    torch.manual_seed(0)
    images = torch.rand(70, 1, 16, 16)
    labels = torch.randint(0, 10, (70,))
    # Batches of 32, 32 and 6: the epoch values must be means over images, not batches.
    loader = DataLoader(TensorDataset(images, labels), batch_size=32)
    model = FashionMNISTClassifier(NET, metrics=ACC, optimizer=SGD_LR0)

    class SeesLogits(L.Callback):
        """Whatever a callback computes from the validation and test steps' logits."""

        def __init__(self) -> None:
            self.seen: list[tuple[str, tuple, tuple]] = []

        def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
            self.seen.append(("val", tuple(outputs.shape), tuple(batch[1].shape)))

        def on_test_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
            self.seen.append(("test", tuple(outputs.shape), tuple(batch[1].shape)))

    sees = SeesLogits()
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        callbacks=[sees],
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, loader, loader)
    fit_metrics = dict(trainer.callback_metrics)
    trainer.test(model, loader)
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best"} <= set(fit_metrics)
    assert {"test/loss", "test/acc"} <= set(trainer.callback_metrics)
    sizes = [((32, 10), (32,)), ((32, 10), (32,)), ((6, 10), (6,))]
    assert sees.seen == [("val", *s) for s in sizes] + [("test", *s) for s in sizes]

    with torch.no_grad():
        logits = model.net.eval()(images)
    loss = torch.nn.functional.cross_entropy(logits, labels)
    acc = (logits.argmax(1) == labels).float().mean()
    torch.testing.assert_close(trainer.callback_metrics["test/loss"], loss)
    torch.testing.assert_close(trainer.callback_metrics["test/acc"], acc)
    torch.testing.assert_close(fit_metrics["val/acc_best"], fit_metrics["val/acc"])


def test_the_training_loss_is_the_configs_and_validation_stays_cross_entropy() -> None:
    torch.manual_seed(0)
    smoothing = {"_target_": "torch.nn.CrossEntropyLoss", "label_smoothing": 0.1}
    model = FashionMNISTClassifier(NET, loss=smoothing, metrics=ACC, optimizer=SGD_LR0)
    batch = (torch.rand(8, 1, 16, 16), torch.randint(0, 10, (8,)))
    logits = model.net(batch[0])
    train_loss = model.training_step(batch, 0)
    model._eval_step(batch, "val")
    assert torch.allclose(train_loss, F.cross_entropy(logits, batch[1], label_smoothing=0.1))
    assert torch.allclose(model.val_loss.compute(), F.cross_entropy(logits, batch[1]))
    assert model.logged_keys("val") == ["val/loss", "val/acc", "val/acc_best"]


def test_focal_loss_is_cross_entropy_at_gamma_zero_and_takes_soft_targets() -> None:
    torch.manual_seed(0)
    logits, labels = torch.randn(16, 10), torch.randint(0, 10, (16,))
    one_hot = F.one_hot(labels, 10).float()
    torch.testing.assert_close(FocalLoss(gamma=0.0)(logits, labels), F.cross_entropy(logits, labels))
    focal = FocalLoss(gamma=2.0)
    torch.testing.assert_close(focal(logits, labels), focal(logits, one_hot))
    p_t = logits.softmax(1).gather(1, labels[:, None]).squeeze(1)
    torch.testing.assert_close(focal(logits, labels), (-((1 - p_t) ** 2) * p_t.log()).mean())
    assert FocalLoss(gamma=2.0, alpha=0.25)(logits, labels) < focal(logits, labels)
    with pytest.raises(ArgumentError, match="gamma=-1"):
        FocalLoss(gamma=-1)


@pytest.mark.parametrize("mix", [MixUp, CutMix])
def test_mixing_gives_soft_targets_on_training_batches_only(mix) -> None:
    torch.manual_seed(0)
    images, labels = torch.rand(8, 1, 16, 16), torch.randint(0, 10, (8,))
    mixed, targets = mix(alpha=1.0)(images, F.one_hot(labels, 10).float())
    assert mixed.shape == images.shape and targets.shape == (8, 10)
    torch.testing.assert_close(targets.sum(1), torch.ones(8))
    assert not torch.equal(mixed, images)
    same, one_hot = mix(p=0.0)(images, F.one_hot(labels, 10).float())
    assert same is images and torch.equal(one_hot, F.one_hot(labels, 10).float())
    with pytest.raises(ArgumentError, match="p=2"):
        mix(p=2)

    config = {"_target_": f"fmnist_lightning.data.mix.{mix.__name__}"}
    model = FashionMNISTClassifier(NET, mix=config, metrics=ACC, optimizer=SGD_LR0)
    model.training_step((images, labels), 0)  # mixed: train/acc counts the dominant label
    acc = model.train_metrics["acc"]
    assert int(acc.tp.sum() + acc.fn.sum()) == 8
    assert torch.equal(model._eval_step((images, labels), "val"), model(images))  # not mixed


def test_metrics_are_a_collection_logged_per_stage() -> None:
    from omegaconf import OmegaConf

    from conftest import CONF

    metrics = {}
    for name in ("accuracy", "top2", "f1_macro", "ece"):
        metrics.update(OmegaConf.to_container(OmegaConf.load(CONF / "metrics" / f"{name}.yaml")))
    for entry in metrics.values():
        entry["num_classes"] = 10
    model = FashionMNISTClassifier(NET, metrics=metrics)
    assert sorted(model.logged_keys("test")) == ["test/acc", "test/ece", "test/f1_macro", "test/loss", "test/top2"]
    logits, labels = torch.randn(50, 10), torch.randint(0, 10, (50,))
    model.update_metrics("test", torch.tensor(1.0), logits, labels)
    values = model.test_metrics.compute()
    assert values["test/top2"] >= values["test/acc"] and 0 <= values["test/ece"] <= 1
