"""FashionMNISTClassifier logs the documented metric keys with correct values."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from fmnist_lightning.models.classifier import FashionMNISTClassifier

NET = {"_target_": "fmnist_lightning.models.TwoConv5x5Net", "image_size": 16}
SGD_LR0 = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.0}


def test_logged_keys_and_exact_epoch_means(tmp_path) -> None:
    torch.manual_seed(0)
    images = torch.rand(70, 1, 16, 16)
    labels = torch.randint(0, 10, (70,))
    # Batches of 32, 32 and 6: the epoch values must be means over images, not batches.
    loader = DataLoader(TensorDataset(images, labels), batch_size=32)
    model = FashionMNISTClassifier(NET, optimizer=SGD_LR0)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
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

    with torch.no_grad():
        logits = model.net.eval()(images)
    loss = torch.nn.functional.cross_entropy(logits, labels)
    acc = (logits.argmax(1) == labels).float().mean()
    torch.testing.assert_close(trainer.callback_metrics["test/loss"], loss)
    torch.testing.assert_close(trainer.callback_metrics["test/acc"], acc)
    torch.testing.assert_close(fit_metrics["val/acc_best"], fit_metrics["val/acc"])


def test_label_smoothing_applies_to_the_training_loss_only() -> None:
    import pytest
    from torch.nn import functional as F

    torch.manual_seed(0)
    model = FashionMNISTClassifier(NET, optimizer=SGD_LR0, label_smoothing=0.1)
    net = model.net
    batch = (torch.rand(8, 1, 16, 16), torch.randint(0, 10, (8,)))
    logits = net(batch[0])
    train_loss, _ = model._shared_step(batch, "train")
    val_loss, _ = model._shared_step(batch, "val")
    assert torch.allclose(train_loss, F.cross_entropy(logits, batch[1], label_smoothing=0.1))
    assert torch.allclose(val_loss, F.cross_entropy(logits, batch[1]))
    assert not torch.allclose(train_loss, val_loss)
    with pytest.raises(ValueError, match=r"label_smoothing=1.0: a fraction in \[0, 1\)"):
        FashionMNISTClassifier(NET, optimizer=SGD_LR0, label_smoothing=1.0)
