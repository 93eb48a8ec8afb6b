"""The test report's Grad-CAM figures (``Report(attributions=...)``): made in Lightning's test
loop for a small network on synthetic images, written beside the other figures and logged as
``test/<name>``; kept by pair as asked; never for a network without a convolution, under DDP, or
without a logger that takes images unless asked."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import Logger
from lightning.pytorch.loggers.logger import DummyLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fmnist_lightning.data.augment import build_preprocess
from fmnist_lightning.evaluation.attribution import NO_CONV, Explainer
from fmnist_lightning.evaluation.test_report import GRADCAM_FIGURES, gradcam_maps, gradients, keep_errors_by_pair
from fmnist_lightning.evaluation.test_report import TestReport as Report  # named so, pytest collects no class

NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
SIZE = 16


def conv_net() -> nn.Module:
    """float ``(B, 1, 16, 16)`` → ``(B, 10)``: one convolution, an in-place ReLU (as the project's nets)."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(4), nn.Flatten(), nn.Linear(64, 10)
    )


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, 10))


class Classifier(L.LightningModule):
    """The least a TestReport reads: ``net``, and ``test_step`` returning the logits."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(batch[0])


class Images(L.LightningDataModule):
    """200 random uint8 test images in batches of 100, preprocessed as the project's DataModule does."""

    class_names = NAMES
    val_dataloader = None  # no validation split: no temperature, no conformal sets

    def __init__(self) -> None:
        super().__init__()
        self.preprocess = build_preprocess(SIZE, {"mean": 0.286, "std": 0.353})

    def test_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (200, 1, 28, 28), dtype=torch.uint8, generator=generator)
        labels = torch.randint(0, 10, (200,), generator=generator)
        return DataLoader(TensorDataset(images, labels), batch_size=100)

    def on_after_batch_transfer(self, batch: tuple[torch.Tensor, torch.Tensor], dataloader_idx: int):
        images, labels = batch
        return self.preprocess(images), labels


class ImageLogger(Logger):
    """A logger that takes images, keeping them by key."""

    name, version = "images", 0

    def __init__(self) -> None:
        super().__init__()
        self.images: dict[str, np.ndarray] = {}

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_hyperparams(self, params: object, *args: object, **kwargs: object) -> None:
        pass

    def log_image(self, key: str, images: list[np.ndarray], step: int | None = None, **kwargs: object) -> None:
        self.images[key] = images[0]


class ScalarLogger(ImageLogger):
    """A logger without ``log_image``, as CSV's."""

    log_image = property()  # hasattr(..., "log_image") is False


def run_test_loop(report: Report, net: nn.Module, folder: Path, loggers: list[Logger]) -> Classifier:
    """Runs Lightning's test loop over ``Images`` with ``report`` and ``loggers``."""
    module = Classifier(net)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=loggers,
        callbacks=[report],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(folder),
    )
    trainer.test(module, datamodule=Images(), verbose=False)
    return module


def test_figures_written_logged_and_listed(tmp_path: Path) -> None:
    torch.manual_seed(0)
    logger, report = ImageLogger(), Report(tmp_path / "r")
    module = run_test_loop(report, conv_net(), tmp_path, [logger])
    for name in GRADCAM_FIGURES:
        image = logger.images[f"test/{name}"]
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert (tmp_path / "r" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {"test/confusion_matrix", "test/misclassified"} <= set(logger.images)
    section = json.loads((tmp_path / "r" / "report.json").read_text())["attribution"]
    assert section == {"method": "gradcam", "layer": "1", "images_per_pair": 64, "figures": list(GRADCAM_FIGURES)}
    assert "confused_pairs_gradcam.png" in (tmp_path / "r" / "report.md").read_text()
    # The pairs' images were freed; the in-place ReLU is in place again.
    assert report._pairs == {} and module.net[1].inplace


def test_asked_for_without_an_image_logger_then_not(tmp_path: Path) -> None:
    torch.manual_seed(0)
    run_test_loop(Report(tmp_path, attributions=True), conv_net(), tmp_path, [])
    assert all((tmp_path / f"{name}.png").is_file() for name in GRADCAM_FIGURES)
    # A later report without them removes an earlier report's: they would not describe these weights.
    logger = ImageLogger()
    run_test_loop(Report(tmp_path, attributions=False), conv_net(), tmp_path, [logger])
    assert not any((tmp_path / f"{name}.png").exists() for name in GRADCAM_FIGURES)
    assert "test/misclassified" in logger.images and not any("gradcam" in key for key in logger.images)
    assert "attribution" not in json.loads((tmp_path / "report.json").read_text())


def started(report: Report, net: nn.Module, loggers: list[Logger], world_size: int = 1) -> Report:
    """``report`` after its ``on_test_epoch_start`` and one batch of 8 images, all misclassified."""
    trainer = SimpleNamespace(loggers=loggers, world_size=world_size, is_global_zero=True)
    module = SimpleNamespace(net=net)
    report.on_test_epoch_start(trainer, module)
    images, targets = torch.rand(8, 1, SIZE, SIZE), torch.zeros(8, dtype=torch.int64)
    report.on_test_batch_end(trainer, module, torch.eye(10)[torch.ones(8, dtype=torch.int64)], (images, targets), 0)
    return report


@pytest.mark.parametrize(
    ("attributions", "loggers", "world_size", "kept"),
    [
        (None, [ImageLogger()], 1, True),
        (None, [ScalarLogger()], 1, False),  # CSV only: nothing kept, nothing computed
        (None, [DummyLogger()], 1, False),  # fast_dev_run's logger keeps nothing
        (None, [], 1, False),
        (False, [ImageLogger()], 1, False),
        (True, [], 1, True),
        (True, [ImageLogger()], 2, False),  # DDP
    ],
)
def test_when_images_are_kept(attributions: bool | None, loggers: list[Logger], world_size: int, kept: bool) -> None:
    report = started(Report(".", attributions=attributions), conv_net(), loggers, world_size)
    assert report._attribute is kept
    assert bool(report._pairs) is kept


def test_network_without_a_convolution(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="fmnist_lightning.evaluation.test_report"):
        report = started(Report(".", attributions=True), mlp(), [ImageLogger()])
    assert not report._attribute and report._pairs == {}
    assert [r.getMessage() for r in caplog.records] == [f"No Grad-CAM figures in the test report: {NO_CONV}"]


def test_errors_kept_by_pair() -> None:
    kept: dict[tuple[int, int], list[torch.Tensor]] = {}
    images = torch.arange(6, dtype=torch.float64).reshape(6, 1, 1, 1).expand(6, 1, 2, 2)
    targets, preds = torch.tensor([0, 0, 0, 1, 2, 2]), torch.tensor([1, 1, 1, 1, 0, 2])
    keep_errors_by_pair(kept, images, targets, preds, limit=2)
    keep_errors_by_pair(kept, images + 10, targets, preds, limit=2)
    assert sorted(kept) == [(0, 1), (2, 0)]  # right answers (1 → 1, 2 → 2) are not kept
    assert [x.flatten(1)[:, 0].tolist() for x in kept[(0, 1)]] == [[0.0, 1.0]]  # the first two, then none
    assert [x.flatten(1)[:, 0].tolist() for x in kept[(2, 0)]] == [[4.0], [14.0]]
    assert all(x.dtype == torch.float32 and x.device.type == "cpu" and x.shape[1:] == (1, 2, 2) for x in kept[(2, 0)])


def test_gradients_inside_the_test_loop_match_maps_outside_it() -> None:
    torch.manual_seed(0)
    net = conv_net().train()
    preprocess = build_preprocess(SIZE, {"mean": 0.286, "std": 0.353})
    x, targets = torch.randn(5, 1, SIZE, SIZE), torch.arange(5)
    expected = Explainer(net, preprocess, "gradcam").attribute(x, targets).maps
    net.train()
    with torch.inference_mode():  # as Lightning's test loop
        x_inference = x.clone()
        with gradients(net, torch.device("cpu")):
            maps = gradcam_maps(
                Explainer(net, preprocess, "gradcam"), x_inference, targets, torch.device("cpu"), chunk=2
            )
    torch.testing.assert_close(maps, expected)
    assert maps.shape == (5, SIZE, SIZE) and maps.dtype == torch.float32 and maps.abs().sum() > 0
    assert all(module.training for module in net.modules())  # train mode restored
