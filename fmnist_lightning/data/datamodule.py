"""The LightningDataModule of IDX datasets (FashionMNIST and those like it) and its in-memory
splits."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from fmnist_lightning.data.augment import BatchRandomHorizontalFlip, build_preprocess
from fmnist_lightning.data.idx import IdxDataset, ensure_files, load_split, verify_files
from fmnist_lightning.data.splits import random_split, stratified_fold
from fmnist_lightning.errors import require

log = logging.getLogger(__name__)


class InMemoryBatches(Dataset):
    """One split as uint8 images ``(N, 1, 28, 28)`` and int64 labels ``(N,)`` on any device; the DataLoader's
    ``__getitems__`` fetches a whole batch in one indexing operation."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images
        self.labels = labels

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images, labels)``."""
        return self.images, self.labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices, device=self.images.device)
        return self.images[index], self.labels[index]

    def to(self, device: torch.device) -> InMemoryBatches:
        """The same split on ``device``."""
        return InMemoryBatches(self.images.to(device), self.labels.to(device))


def keep_batch(batch):
    """collate_fn for ``InMemoryBatches``: its batches come already stacked."""
    return batch


#: The project's own data folder: a ``data.root`` inside it (relative to the working directory)
#: is created, and filled from ``data.local_copy``, when it does not exist.
CACHE_DIR = Path("data")


class IdxDataModule(L.LightningDataModule):
    """A dataset of four IDX files, as ``conf/data/<dataset>.yaml`` describes it (FashionMNIST by default):
    a seeded train/validation split of the official training images, and the official test images.

    Each split is one uint8 tensor, on the training device when that is a GPU; resizing, scaling to
    [0, 1], augmentation (training only) and normalisation run per batch on its device
    (``on_after_batch_transfer``), giving float32 ``(B, 1, image_size, image_size)`` images and int64
    ``(B,)`` labels. ``name`` to ``torchvision_dataset`` describe the dataset (``IdxDataset.from_config``).

    Args:
        root: Folder for the IDX files (``ensure_files`` fills it); only one inside ``CACHE_DIR`` is
            created when missing, so a typo does not fill a new folder.
        local_copy: Folder with a copy of the files (Debian's ``dataset-fashion-mnist``), or ``None``.
        download: Whether to try torchvision's download as a last resort.
        val_fraction: Fraction of the training images held out for validation, in (0, 1).
        split_seed: Seed of the split, apart from the training seed so seeds share validation images.
        folds: ``None`` for the ``val_fraction`` split; ``K >= 2`` for K stratified folds
            (scikit-learn's ``StratifiedKFold``, shuffled with ``split_seed``), fold ``fold`` validating.
        fold: The validation fold, in ``[0, folds)``; sweep it with ``-m data.fold=range(K)``.
        image_size: Side of the images the network sees, in pixels (28, or 16 for recipes 003 and 004).
        normalize: ``{"mean": m, "std": s}`` applied after scaling pixels to [0, 1], or ``None``.
        eval_batch_size: Images per validation and test batch; ``None`` uses ``batch_size``.
        num_workers: DataLoader worker processes; 0 is fastest, the data being in memory.
        augment: Named batched augmentations (``fmnist_lightning.data.augment``; ``None`` entries are
            off), applied in order to [0, 1]-scaled training batches before normalisation.
        alternating_flip: airbench's alternating flips (Jordan, 2024, arXiv:2404.00498, §3.6) instead
            of random ones: a random half of the training images is flipped in the first epoch, and each
            image is flipped in every other epoch after it, so every pair of epochs sees both mirror
            images. The half is drawn from torch's generator when the training split is loaded.

    Raises:
        ArgumentError: An argument is out of range, the dataset's description is
            inconsistent, ``root`` is outside ``CACHE_DIR`` and does not exist, or ``alternating_flip``
            comes with random flips (``augment.flip.p`` > 0).
    """

    def __init__(
        self,
        name: str,
        class_names: Sequence[str],
        num_classes: int,
        files: Mapping[str, Mapping[str, Any]],
        how_to_get: str,
        root: str,
        torchvision_dataset: str | None = None,
        local_copy: str | None = None,
        download: bool = True,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        folds: int | None = None,
        fold: int = 0,
        image_size: int = 28,
        normalize: Mapping[str, float] | None = None,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        augment: Mapping[str, nn.Module | None] | None = None,
        alternating_flip: bool = False,
    ) -> None:
        super().__init__()
        #: What the dataset's files hold, and its class names.
        self.dataset = IdxDataset.from_config(name, class_names, num_classes, files, how_to_get, torchvision_dataset)
        require(0 < val_fraction < 1, "val_fraction", val_fraction, "a fraction in (0, 1)")
        require(batch_size >= 1, "batch_size", batch_size, "an integer >= 1")
        require(
            eval_batch_size is None or eval_batch_size >= 1,
            "eval_batch_size",
            eval_batch_size,
            "an integer >= 1 or null",
        )
        require(num_workers >= 0, "num_workers", num_workers, "an integer >= 0")
        require(split_seed >= 0, "split_seed", split_seed, "an integer >= 0")
        require(folds is None or folds >= 2, "folds", folds, "null (the val_fraction split) or an integer >= 2")
        require(
            folds is not None or fold == 0,
            "fold",
            fold,
            "0 without data.folds (the val_fraction split has one validation set); set data.folds=K for K folds",
        )
        require(
            folds is None or 0 <= fold < folds,
            "fold",
            fold,
            f"a fold number in [0, {folds}) for data.folds={folds}, e.g. -m data.fold='range({folds})'",
        )
        self.root = Path(root).expanduser()
        require(
            self.root.is_dir() or (not self.root.is_absolute() and self.root.parts[:1] == CACHE_DIR.parts),
            "root",
            root,
            f"an existing folder (no such folder here); give the folder that holds the IDX files, or a folder "
            f"under {CACHE_DIR}/ (relative to the working directory), which is created and filled from "
            "data.local_copy",
        )
        self.local_copy = local_copy
        self.download = download
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.folds = folds
        self.fold = fold
        self.image_size = image_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        #: uint8 (B, 1, H, W) -> float32 (B, 1, S, S): resize, scale to [0, 1], normalise.
        self.preprocess = build_preprocess(image_size, dict(normalize) if normalize else None)
        scale, normalise = self.preprocess.transforms[:2], self.preprocess.transforms[2:]
        augmentations = [a for a in (augment or {}).values() if a is not None]
        require(
            not alternating_flip or not any(isinstance(a, BatchRandomHorizontalFlip) and a.p for a in augmentations),
            "alternating_flip",
            alternating_flip,
            "either alternating flips or random ones (data.augment.flip.p > 0), not both",
        )
        self.alternating_flip = alternating_flip
        #: The training batches' path: scale, the augmentations in order, normalise.
        self.train_transform = v2.Compose([*scale, *augmentations, *normalise])
        self.data_train: InMemoryBatches | None = None
        self.data_val: InMemoryBatches | None = None
        self.data_test: InMemoryBatches | None = None

    @property
    def class_names(self) -> tuple[str, ...]:
        """The class names in label order."""
        return self.dataset.class_names

    def prepare_data(self) -> None:
        """Puts the four IDX files into ``root`` if missing, and checks them all before training."""
        ensure_files(self.root, self.local_copy, self.download, self.dataset)
        verify_files(self.root, self.dataset)

    def setup(self, stage: str | None = None) -> None:
        """Loads and verifies the splits that ``stage`` needs (all when ``None``)."""
        if stage in (None, "fit", "validate") and self.data_train is None:
            images, labels = load_split(self.root, "train", self.dataset)
            images = images.unsqueeze(1)
            train_idx, val_idx = self.split_indices(labels)
            device = self._device()
            train_images = images[train_idx]
            if self.alternating_flip:  # the first epoch's flips; every odd epoch flips them all
                half = (torch.rand(len(train_idx)) < 0.5).view(-1, 1, 1, 1)
                train_images = torch.where(half, train_images.flip(-1), train_images)
            self.data_train = InMemoryBatches(train_images, labels[train_idx]).to(device)
            self.data_val = InMemoryBatches(images[val_idx], labels[val_idx]).to(device)
            which = f" (fold {self.fold} of {self.folds})" if self.folds else ""
            log.info(
                "%s split%s: %d train, %d validation images on %s",
                self.dataset.name,
                which,
                len(train_idx),
                len(val_idx),
                device,
            )
        if stage in (None, "test", "predict") and self.data_test is None:
            images, labels = load_split(self.root, "test", self.dataset)
            self.data_test = InMemoryBatches(images.unsqueeze(1), labels).to(self._device())

    def split_indices(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(train, val)`` indices of the training images, given their int64 ``(N,)`` ``labels``.

        Raises:
            ArgumentError: A class has fewer than ``folds`` images.
        """
        if self.folds is None:
            return random_split(len(labels), self.val_fraction, self.split_seed)
        return stratified_fold(labels, self.folds, self.fold, self.split_seed)

    def _device(self) -> torch.device:
        """Where the data is kept: the trainer's device if not the CPU."""
        if self.trainer is not None:
            device = self.trainer.strategy.root_device
            if device.type != "cpu":
                return device
        return torch.device("cpu")

    def _loader(self, dataset: InMemoryBatches | None, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before asking for a loader")
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=keep_batch,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches of ``(uint8 (B, 1, 28, 28), int64 (B,))``."""
        return self._loader(self.data_train, train=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in a fixed order."""
        return self._loader(self.data_val, train=False)

    def test_dataloader(self) -> DataLoader:
        """The official test images in file order."""
        return self._loader(self.data_test, train=False)

    def predict_dataloader(self) -> DataLoader:
        """The test images, as for ``test_dataloader``."""
        return self._loader(self.data_test, train=False)

    def on_after_batch_transfer(self, batch: tuple[torch.Tensor, torch.Tensor], dataloader_idx: int):
        """uint8 ``(B, 1, 28, 28)`` → float32 ``(B, 1, image_size, image_size)``, augmented when training
        (and, with ``alternating_flip``, all flipped in odd epochs). A bare float tensor (the LightningModule's
        ``example_input_array``, which Lightning's model summary sends through here) passes unchanged."""
        if isinstance(batch, torch.Tensor) and batch.is_floating_point():
            return batch
        images, labels = batch
        training = self.trainer is not None and self.trainer.training
        if training and self.alternating_flip and self.trainer.current_epoch % 2:
            images = images.flip(-1)
        return (self.train_transform if training else self.preprocess)(images), labels
