"""The training/validation splits of the training images: a seeded random fraction, or one
fold of a stratified K-fold cross-validation."""

from __future__ import annotations

import torch

from fmnist_lightning.errors import require


def validation_size(n: int, val_fraction: float, folds: int | None = None) -> int:
    """How many of ``n`` training images validate: ``round(n * val_fraction)`` (``random_split``), or
    with ``folds`` ``n // folds``, exact when ``folds`` divides ``n`` (``StratifiedKFold``'s folds
    otherwise hold that or one more)."""
    return n // folds if folds else round(n * val_fraction)


def random_split(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, val)`` int64 indices: the first ``validation_size(n, val_fraction)`` of
    ``torch.randperm(n)`` seeded with ``seed`` validate."""
    n_val = validation_size(n, val_fraction)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_val:], order[:n_val]


def stratified_fold(labels: torch.Tensor, folds: int, fold: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, val)`` int64 indices of fold ``fold`` of scikit-learn's ``StratifiedKFold(folds, shuffle=True,
    random_state=seed)`` over the int64 ``(N,)`` ``labels``.

    Raises:
        ArgumentError: A class has fewer than ``folds`` images.
    """
    from sklearn.model_selection import StratifiedKFold  # only here: slow to import

    smallest = int(torch.bincount(labels).min())
    require(smallest >= folds, "folds", folds, f"at most {smallest}, the number of images of the rarest class")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    train, val = list(splitter.split(labels.numpy(), labels.numpy()))[fold]
    return torch.from_numpy(train), torch.from_numpy(val)
