"""The training/validation splits of the training images: a seeded random fraction, or one
fold of a stratified K-fold cross-validation."""

from __future__ import annotations

import torch

from fmnist_lightning.errors import require


def random_split(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random ``val_fraction`` of ``n`` images for validation, the rest for training.

    Returns:
        ``(train, val)``: int64 index tensors; the first ``round(n * val_fraction)`` of
        ``torch.randperm(n)`` seeded with ``seed`` are the validation images.
    """
    n_val = round(n * val_fraction)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_val:], order[:n_val]


def stratified_fold(labels: torch.Tensor, folds: int, fold: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold ``fold`` of a stratified K-fold split: scikit-learn's
    ``StratifiedKFold(folds, shuffle=True, random_state=seed)``, so every fold has the class
    proportions of the whole, and each image is in exactly one validation fold.

    Args:
        labels: (N,) int64, the labels of the training images.
        folds: K >= 2.
        fold: The validation fold, in ``[0, folds)``.
        seed: The shuffle's seed (``data.split_seed``).

    Returns:
        ``(train, val)``: int64 index tensors into the N images.

    Raises:
        ArgumentError: A class has fewer than ``folds`` images.
    """
    from sklearn.model_selection import StratifiedKFold  # only here: 0.5 s to import

    smallest = int(torch.bincount(labels).min())
    require(smallest >= folds, "folds", folds, f"at most {smallest}, the number of images of the rarest class")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    train, val = list(splitter.split(labels.numpy(), labels.numpy()))[fold]
    return torch.from_numpy(train), torch.from_numpy(val)
