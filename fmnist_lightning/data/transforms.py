"""Preprocessing and augmentation, batched (the default) and per sample (as the recipes do).

The batched path works on whole uint8 batches on the training device: resize (bilinear,
antialiased), augment with per-sample random parameters, scale to [0, 1], normalise. The
per-sample path is the recipes' torchvision pipeline on PIL images, kept for comparison
(``data.pipeline=per_sample``): ``Resize`` → ``RandomCrop`` → ``RandomHorizontalFlip`` →
``ToTensor`` → ``Normalize`` → ``RandomErasing``. Without random augmentation both give the
same images, up to one grey level where resizing (tensor vs PIL antialiasing) is involved.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F
from torchvision import transforms as T
from torchvision.transforms import v2


def _check(image_size: int, normalize: Mapping[str, float] | None) -> None:
    if image_size < 1:
        raise ValueError(f"data.image_size must be a positive number of pixels, got {image_size}")
    if normalize is not None:
        if set(normalize) != {"mean", "std"}:
            raise ValueError(
                f"data.normalize must be null or have exactly the keys mean and std, got {dict(normalize)}"
            )
        if not normalize["std"] > 0:
            raise ValueError(f"data.normalize.std must be > 0, got {normalize['std']}")


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
        ValueError: ``image_size`` < 1, or ``normalize`` lacks ``mean``/``std`` or has std <= 0.
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


# torchvision.transforms.RandomErasing's defaults: erased area as a fraction of the image,
# and the range of the rectangle's aspect ratio (height / width), drawn log-uniformly.
ERASE_SCALE = (0.02, 0.33)
ERASE_RATIO = (0.3, 3.3)


class BatchAugment(nn.Module):
    """Random crops of a padded image, horizontal flips and random erasing, drawn per sample.

    The batched equivalent of torchvision's ``RandomCrop(size, padding=crop_padding)``,
    ``RandomHorizontalFlip(flip_p)`` and, after normalisation, ``RandomErasing(erase_p)``
    (Zhong et al., 2017, "Random Erasing Data Augmentation"), applied in that order to
    preprocessed ``(B, C, S, S)`` batches. Each image gets its own offset, flip and
    rectangle; the output has the input's shape, dtype and device.

    Erasing follows torchvision's defaults: the rectangle covers a uniform 2-33 % of the
    image, with a log-uniform aspect ratio in [0.3, 3.3], and is set to 0 (the dataset's
    mean grey after normalisation). torchvision retries up to 10 times when the drawn
    rectangle does not fit; here its sides are clipped to the image instead.

    Args:
        flip_p: Probability of flipping each image left-right.
        crop_padding: Pixels of padding on each side before a random ``S × S`` crop; 0
            turns cropping off.
        erase_p: Probability of erasing one random rectangle of each image.
        fill: Value of the padding: that of a black pixel after normalisation, so that it
            matches the per-sample pipeline, which pads the PIL image with black.

    Raises:
        ValueError: ``flip_p`` or ``erase_p`` outside [0, 1], or negative ``crop_padding``.
    """

    def __init__(self, flip_p: float = 0.0, crop_padding: int = 0, erase_p: float = 0.0, fill: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= flip_p <= 1.0:
            raise ValueError(f"data.augment.flip_p must be in [0, 1], got {flip_p}")
        if crop_padding < 0:
            raise ValueError(f"data.augment.crop_padding must be >= 0, got {crop_padding}")
        if not 0.0 <= erase_p <= 1.0:
            raise ValueError(f"data.augment.erase_p must be in [0, 1], got {erase_p}")
        self.flip_p = flip_p
        self.crop_padding = crop_padding
        self.erase_p = erase_p
        self.fill = fill

    @property
    def active(self) -> bool:
        """Whether this augmentation changes anything."""
        return self.flip_p > 0 or self.crop_padding > 0 or self.erase_p > 0

    def _erase(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        device = x.device
        area = h * w * torch.empty(b, device=device).uniform_(*ERASE_SCALE)
        log_ratio = torch.empty(b, device=device).uniform_(math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1]))
        ratio = log_ratio.exp()
        eh = (area * ratio).sqrt().round().clamp(1, h)
        ew = (area / ratio).sqrt().round().clamp(1, w)
        top = (torch.rand(b, device=device) * (h - eh + 1)).floor()
        left = (torch.rand(b, device=device) * (w - ew + 1)).floor()
        rows = torch.arange(h, device=device).view(1, h, 1)
        cols = torch.arange(w, device=device).view(1, 1, w)
        inside = (
            (rows >= top.view(b, 1, 1))
            & (rows < (top + eh).view(b, 1, 1))
            & (cols >= left.view(b, 1, 1))
            & (cols < (left + ew).view(b, 1, 1))
        )
        erase = inside & (torch.rand(b, device=device) < self.erase_p).view(b, 1, 1)
        return x.masked_fill(erase.unsqueeze(1), 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        if self.crop_padding:
            p = self.crop_padding
            padded = F.pad(x, (p, p, p, p), value=self.fill)
            top = torch.randint(0, 2 * p + 1, (b, 1, 1), device=x.device)
            left = torch.randint(0, 2 * p + 1, (b, 1, 1), device=x.device)
            rows = top + torch.arange(h, device=x.device).view(1, h, 1)
            cols = left + torch.arange(w, device=x.device).view(1, 1, w)
            batch = torch.arange(b, device=x.device).view(b, 1, 1)
            x = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
        if self.flip_p:
            flip = (torch.rand(b, device=x.device) < self.flip_p).view(b, 1, 1, 1)
            x = torch.where(flip, x.flip(-1), x)
        if self.erase_p:
            x = self._erase(x)
        return x


def build_per_sample_transform(
    image_size: int = 28,
    normalize: Mapping[str, float] | None = None,
    flip_p: float = 0.0,
    crop_padding: int = 0,
    erase_p: float = 0.0,
) -> T.Compose:
    """The recipes' per-image torchvision pipeline on PIL images, for ``data.pipeline=per_sample``.

    Returns:
        A transform mapping a PIL ``L`` image to float32 ``(1, image_size, image_size)``.
    """
    _check(image_size, normalize)
    steps: list = [] if image_size == 28 else [T.Resize((image_size, image_size))]
    if crop_padding:
        steps.append(T.RandomCrop(image_size, padding=crop_padding))
    if flip_p:
        steps.append(T.RandomHorizontalFlip(flip_p))
    steps.append(T.ToTensor())
    if normalize is not None:
        steps.append(T.Normalize([float(normalize["mean"])], [float(normalize["std"])]))
    if erase_p:
        steps.append(T.RandomErasing(erase_p, scale=ERASE_SCALE, ratio=ERASE_RATIO, value=0))
    return T.Compose(steps)
