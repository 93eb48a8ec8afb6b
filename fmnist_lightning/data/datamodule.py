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

from fmnist_lightning.data.datasets import IdxDataset
from fmnist_lightning.data.idx import ensure_files, load_split, verify_files
from fmnist_lightning.data.splits import random_split, stratified_fold
from fmnist_lightning.data.transforms import build_preprocess
from fmnist_lightning.errors import require

log = logging.getLogger(__name__)


class InMemoryBatches(Dataset):
    """One split held as two tensors, fetched a whole batch at a time.

    The DataLoader hands ``__getitems__`` the batch's indices, so a batch is one indexing
    operation on uint8 images ``(N, 1, 28, 28)`` and int64 labels ``(N,)``, on whatever
    device the tensors are (a GPU keeps the whole split in its memory: 55 MB).
    """

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


def _check_arguments(
    val_fraction: float,
    batch_size: int,
    eval_batch_size: int | None,
    num_workers: int,
    split_seed: int,
    folds: int | None,
    fold: int,
) -> None:
    """Checks ``IdxDataModule``'s numeric arguments (see its Args), in this order.

    Raises:
        ArgumentError: Naming the first argument that is out of range.
    """
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


class IdxDataModule(L.LightningDataModule):
    """A dataset of four IDX files, as ``conf/data/<dataset>.yaml`` describes it (FashionMNIST
    by default): a seeded train/validation split of the official training images, and the
    official test images as the test set.

    Each split is one uint8 tensor, kept on the training device when that is a GPU; a batch
    is one indexing operation, and resizing, scaling to [0, 1], augmentation (training
    batches only) and normalisation run on the whole batch on its device
    (``on_after_batch_transfer``). The network receives ``torch.float32``
    ``(B, 1, image_size, image_size)`` and labels ``torch.int64`` ``(B,)``. Everything
    downstream (reports, figures, TensorBoard, predictions, exports, the server) takes the
    class names from ``class_names``.

    Args:
        name: The dataset's name in messages, e.g. ``"FashionMNIST"``.
        class_names: Its class names in label order.
        num_classes: Their number (checked against ``class_names``).
        files: What its four IDX files hold; see ``IdxDataset.from_config``.
        how_to_get: Where to get good copies of the files, for the messages.
        torchvision_dataset: The ``torchvision.datasets`` class that downloads it, or ``None``.
        root: Folder for the IDX files (relative paths are relative to the working
            directory). See ``fmnist_lightning.data.idx.ensure_files`` for where files
            come from when it lacks them. Only a folder inside ``CACHE_DIR`` is created when
            it does not exist; any other folder must exist (a typo would otherwise fill a new
            folder with 54 MB of copied files).
        local_copy: Folder with an existing copy of the files (Debian's
            ``dataset-fashion-mnist`` for FashionMNIST), or ``None``.
        download: Whether to try torchvision's download as a last resort.
        val_fraction: Fraction of the training images held out for validation, in (0, 1).
        split_seed: Seed of the train/validation split. It is separate from the training
            seed so that runs with different seeds are validated on the same images.
        folds: ``None`` for the ``val_fraction`` split; ``K >= 2`` for K-fold
            cross-validation: the training images are split into K stratified folds
            (scikit-learn's ``StratifiedKFold``, shuffled with ``split_seed``), and fold
            ``fold`` is the validation split (``val_fraction`` is then unused).
        fold: The validation fold, in ``[0, folds)``; sweep it with ``-m data.fold=range(K)``.
        image_size: Side of the images the network sees, in pixels (28, or 16 for
            recipes 003 and 004).
        normalize: ``{"mean": m, "std": s}`` applied after scaling pixels to [0, 1], or
            ``None`` for no normalisation.
        batch_size: Images per training batch.
        eval_batch_size: Images per validation and test batch (no gradients, so larger
            batches are cheap); ``None`` uses ``batch_size``.
        num_workers: DataLoader worker processes. 0 (the default) is fastest: the dataset
            is already in memory, and workers would only copy it.
        augment: Named batched augmentations, applied to training batches in this order on
            [0, 1]-scaled images before normalisation (entries that are ``None`` are off); see
            ``fmnist_lightning.data.augment``. Hydra builds them from ``data.augment``.

    Raises:
        ArgumentError: An argument is out of range, the dataset's description is
            inconsistent, or ``root`` is outside ``CACHE_DIR`` and does not exist.
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
    ) -> None:
        super().__init__()
        #: What the dataset's files hold, and its class names.
        self.dataset = IdxDataset.from_config(name, class_names, num_classes, files, how_to_get, torchvision_dataset)
        _check_arguments(val_fraction, batch_size, eval_batch_size, num_workers, split_seed, folds, fold)
        self._keep_source(root, local_copy, download)
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.folds = folds
        self.fold = fold
        self.image_size = image_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self._keep_transforms(image_size, normalize, augment)
        self.data_train: InMemoryBatches | None = None
        self.data_val: InMemoryBatches | None = None
        self.data_test: InMemoryBatches | None = None

    def _keep_source(self, root: str, local_copy: str | None, download: bool) -> None:
        """Checks and keeps where the IDX files are and come from (``root``, ``local_copy``,
        ``download``; see the class's Args).

        Raises:
            ArgumentError: ``root`` is outside ``CACHE_DIR`` and does not exist.
        """
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

    def _keep_transforms(
        self, image_size: int, normalize: Mapping[str, float] | None, augment: Mapping[str, nn.Module | None] | None
    ) -> None:
        """Builds the batches' transforms (``preprocess``, ``train_transform``) from the class's
        ``image_size``, ``normalize`` and ``augment``."""
        #: uint8 (B, 1, H, W) -> float32 (B, 1, S, S): resize, scale to [0, 1], normalise.
        self.preprocess = build_preprocess(image_size, dict(normalize) if normalize else None)
        scale, normalise = self.preprocess.transforms[:2], self.preprocess.transforms[2:]
        augmentations = [a for a in (augment or {}).values() if a is not None]
        #: The training batches' path: scale, the augmentations in order, normalise.
        self.train_transform = v2.Compose([*scale, *augmentations, *normalise])

    @property
    def class_names(self) -> tuple[str, ...]:
        """The class names in label order."""
        return self.dataset.class_names

    def prepare_data(self) -> None:
        """Puts the four IDX files into ``root`` if they are not there yet, and checks all of
        them (a fraction of a second), so a bad test file is found before training."""
        ensure_files(self.root, self.local_copy, self.download, self.dataset)
        verify_files(self.root, self.dataset)

    def setup(self, stage: str | None = None) -> None:
        """Loads and verifies the splits that ``stage`` needs (all when ``None``)."""
        if stage in (None, "fit", "validate") and self.data_train is None:
            images, labels = load_split(self.root, "train", self.dataset)
            images = images.unsqueeze(1)
            train_idx, val_idx = self.split_indices(labels)
            device = self._device()
            self.data_train = InMemoryBatches(images[train_idx], labels[train_idx]).to(device)
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
        """``(train, val)`` indices into the training images of ``labels`` ((N,) int64): the
        ``val_fraction`` split, or fold ``fold`` of ``folds`` (``fmnist_lightning.data.splits``).

        Raises:
            ArgumentError: A class has fewer than ``folds`` images.
        """
        if self.folds is None:
            return random_split(len(labels), self.val_fraction, self.split_seed)
        return stratified_fold(labels, self.folds, self.fold, self.split_seed)

    def _device(self) -> torch.device:
        """Where the data is kept: the training device if the trainer
        runs on one with separate memory (a GPU), else the CPU."""
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
        """uint8 ``(B, 1, 28, 28)`` → float32 ``(B, 1, image_size, image_size)`` on the
        batch's device: preprocessed, and augmented when the trainer is training. Labels
        pass through."""
        images, labels = batch
        training = self.trainer is not None and self.trainer.training
        return (self.train_transform if training else self.preprocess)(images), labels
