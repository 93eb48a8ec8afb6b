"""The preprocessing of every image the networks see: the recipes' ``Resize`` → ``ToTensor``
→ ``Normalize``, as one batched transform on uint8 batches (training, evaluation, prediction).

Training augmentations are in ``fmnist_lightning.data.augment``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torchvision.transforms import v2

from fmnist_lightning.errors import require


def _check(image_size: int, normalize: Mapping[str, float] | None) -> None:
    require(isinstance(image_size, int) and image_size >= 1, "image_size", image_size, "a number of pixels >= 1")
    if normalize is not None:
        keys = set(normalize)
        require(keys == {"mean", "std"}, "normalize", dict(normalize), "null or exactly the keys mean and std")
        require(normalize["std"] > 0, "normalize", dict(normalize), "std must be > 0")


def build_preprocess(image_size: int = 28, normalize: Mapping[str, float] | None = None) -> nn.Module:
    """Builds the recipes' preprocessing (``Resize`` → ``ToTensor`` → ``Normalize``) as one
    batched transform.

    Args:
        image_size: Output side in pixels; 28 keeps the dataset's size.
        normalize: ``{"mean": float, "std": float}`` on the [0, 1] scale, or ``None`` to keep
            values in [0, 1].

    Returns:
        A module mapping ``torch.uint8`` ``(B, 1, H, W)`` (any H, W; 28 × 28 for the dataset)
        to ``torch.float32`` ``(B, 1, image_size, image_size)``.

    Raises:
        ArgumentError: ``image_size`` < 1, or ``normalize`` lacks ``mean``/``std`` or has std <= 0.
    """
    _check(image_size, normalize)
    # Resizing to the input's own size returns the input unchanged, so 28 px costs nothing.
    steps: list[nn.Module] = [
        v2.Resize((image_size, image_size), antialias=True),
        v2.ToDtype(torch.float32, scale=True),
    ]
    if normalize is not None:
        steps.append(v2.Normalize([float(normalize["mean"])], [float(normalize["std"])]))
    return v2.Compose(steps)
