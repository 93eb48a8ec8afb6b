"""The FashionMNIST LightningDataModule."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from fmnist_lightning.data.idx import DEBIAN_DATASET_DIR, ensure_files, load_split
from fmnist_lightning.data.transforms import build_preprocess

log = logging.getLogger(__name__)


class FashionMNISTDataModule(L.LightningDataModule):
    """The real FashionMNIST: a seeded train/validation split of the official 60,000
    training images, and the official 10,000 test images as the test set.

    Images stay ``torch.uint8`` ``(B, 1, 28, 28)`` through the DataLoader; resizing and
    normalisation run on whole batches after they reach the device
    (:meth:`on_after_batch_transfer`), so the network receives ``torch.float32``
    ``(B, 1, image_size, image_size)`` and labels ``torch.int64`` ``(B,)``.

    Args:
        root: Folder for the IDX files (relative paths are relative to the working
            directory). See :func:`fmnist_lightning.data.idx.ensure_files` for where files
            come from when it lacks them.
        local_copy: Folder with an existing copy of the files (Debian's
            ``dataset-fashion-mnist`` by default), or ``None``.
        download: Whether to try torchvision's download as a last resort.
        val_fraction: Fraction of the 60,000 training images held out for validation,
            in (0, 1).
        split_seed: Seed of the train/validation split. It is separate from the training
            seed so that runs with different seeds are validated on the same images.
        image_size: Side of the images the network sees, in pixels (28, or 16 for
            recipes 003 and 004).
        normalize: ``{"mean": m, "std": s}`` applied after scaling pixels to [0, 1], or
            ``None`` for no normalisation.
        batch_size: Images per batch for every stage.
        num_workers: DataLoader worker processes. 0 (the default) is fastest here: the
            dataset is already in memory, and workers would only copy it.

    Raises:
        ValueError: An argument is out of range; the message names the config key.
    """

    num_classes = 10

    def __init__(
        self,
        root: str = "data/fashion-mnist",
        local_copy: str | None = DEBIAN_DATASET_DIR,
        download: bool = True,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        image_size: int = 28,
        normalize: Mapping[str, float] | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if not 0 < val_fraction < 1:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {num_workers}")
        self.root = Path(root).expanduser()
        self.local_copy = local_copy
        self.download = download
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.preprocess = build_preprocess(image_size, dict(normalize) if normalize else None)
        self.data_train: TensorDataset | None = None
        self.data_val: TensorDataset | None = None
        self.data_test: TensorDataset | None = None

    def prepare_data(self) -> None:
        """Puts the four IDX files into ``root`` if they are not there yet."""
        ensure_files(self.root, self.local_copy, self.download)

    def setup(self, stage: str | None = None) -> None:
        """Loads and verifies the splits that ``stage`` needs (all when ``None``)."""
        if stage in (None, "fit", "validate") and self.data_train is None:
            images, labels = load_split(self.root, "train")
            images = images.unsqueeze(1)
            n_val = round(len(images) * self.val_fraction)
            generator = torch.Generator().manual_seed(self.split_seed)
            order = torch.randperm(len(images), generator=generator)
            val_idx, train_idx = order[:n_val], order[n_val:]
            self.data_train = TensorDataset(images[train_idx], labels[train_idx])
            self.data_val = TensorDataset(images[val_idx], labels[val_idx])
            log.info("FashionMNIST split: %d train, %d validation images", len(train_idx), n_val)
        if stage in (None, "test", "predict") and self.data_test is None:
            images, labels = load_split(self.root, "test")
            self.data_test = TensorDataset(images.unsqueeze(1), labels)

    def _loader(self, dataset: TensorDataset | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("FashionMNISTDataModule.setup() must run before asking for a loader")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches of ``(uint8 (B, 1, 28, 28), int64 (B,))``."""
        return self._loader(self.data_train, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in a fixed order."""
        return self._loader(self.data_val, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """The official 10,000 test images in file order."""
        return self._loader(self.data_test, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The test images, as for :meth:`test_dataloader`."""
        return self._loader(self.data_test, shuffle=False)

    def on_after_batch_transfer(self, batch: tuple[torch.Tensor, torch.Tensor], dataloader_idx: int):
        """Resizes and normalises a batch on its device: uint8 ``(B, 1, 28, 28)`` →
        float32 ``(B, 1, image_size, image_size)``; labels pass through."""
        images, labels = batch
        return self.preprocess(images), labels
