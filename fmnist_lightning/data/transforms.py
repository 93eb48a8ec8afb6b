"""Batched preprocessing: uint8 image batches in, network-ready float batches out."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.transforms import v2

#: Mean and standard deviation of the 60,000 FashionMNIST training images, pixel values
#: scaled to [0, 1]; computed with ``fmnist_lightning.data.load_split`` (see README, "Data").
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530


def build_preprocess(image_size: int = 28, normalize: dict | None = None) -> nn.Module:
    """Builds the preprocessing that the recipes apply per image, as one batched transform.

    The recipes use ``Resize(image_size)`` (on PIL images) → ``ToTensor()`` →
    ``Normalize(mean, std)``. Here the same steps run on a whole batch: resize with bilinear
    antialiasing on uint8 (torchvision's tensor resize, which matches PIL's to within one grey
    level), scale to [0, 1], then normalise.

    Args:
        image_size: Output side in pixels; 28 keeps the dataset's size.
        normalize: ``{"mean": float, "std": float}`` on the [0, 1] scale, or ``None`` to keep
            values in [0, 1].

    Returns:
        A module mapping ``torch.uint8`` ``(B, 1, H, W)`` (any H, W; 28 × 28 for the dataset)
        to ``torch.float32`` ``(B, 1, image_size, image_size)``.

    Raises:
        ValueError: ``image_size`` < 1, or ``normalize`` lacks ``mean``/``std`` or has std <= 0.
    """
    if image_size < 1:
        raise ValueError(f"data.image_size must be a positive number of pixels, got {image_size}")
    # Resizing to the input's own size returns the input unchanged, so 28 px costs nothing.
    steps: list[nn.Module] = [
        v2.Resize((image_size, image_size), antialias=True),
        v2.ToDtype(torch.float32, scale=True),
    ]
    if normalize is not None:
        if set(normalize) != {"mean", "std"}:
            raise ValueError(
                f"data.normalize must be null or have exactly the keys mean and std, got {dict(normalize)}"
            )
        if not normalize["std"] > 0:
            raise ValueError(f"data.normalize.std must be > 0, got {normalize['std']}")
        steps.append(v2.Normalize([float(normalize["mean"])], [float(normalize["std"])]))
    return v2.Compose(steps)
