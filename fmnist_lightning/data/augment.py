"""The preprocessing of every image the networks see (``build_preprocess``), and batched training
augmentations drawing random parameters per image (torchvision's v2 draws one set per call).

Each augmentation is an ``nn.Module`` mapping float ``(B, C, S, S)`` images in [0, 1] (0 = black) to
the same shape, dtype and device; a new one is one more such class and one more ``data.augment`` entry.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.transforms import v2

from fmnist_lightning.errors import require

#: torchvision.transforms.RandomErasing's defaults: erased area as a fraction of the image,
#: and the range of the rectangle's aspect ratio (height / width), drawn log-uniformly.
ERASE_SCALE = (0.02, 0.33)
ERASE_RATIO = (0.3, 3.3)


def _probability(p: float) -> None:
    require(isinstance(p, (int, float)) and 0.0 <= p <= 1.0, "p", p, "a probability in [0, 1]")


class BatchRandomCrop(nn.Module):
    """torchvision's ``RandomCrop(S, padding=padding)``, batched: pad each side with ``padding`` black
    pixels (0: off), then cut an ``S × S`` window at a random offset per image.

    Raises:
        ArgumentError: ``padding`` < 0.
    """

    def __init__(self, padding: int = 0) -> None:
        super().__init__()
        require(isinstance(padding, int) and padding >= 0, "padding", padding, "an integer >= 0 (0 = off)")
        self.padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.padding:
            return x
        b, _, h, w = x.shape
        p = self.padding
        padded = F.pad(x, (p, p, p, p), value=0.0)
        top = torch.randint(0, 2 * p + 1, (b, 1, 1), device=x.device)
        left = torch.randint(0, 2 * p + 1, (b, 1, 1), device=x.device)
        rows = top + torch.arange(h, device=x.device).view(1, h, 1)
        cols = left + torch.arange(w, device=x.device).view(1, 1, w)
        batch = torch.arange(b, device=x.device).view(b, 1, 1)
        return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


class BatchRandomHorizontalFlip(nn.Module):
    """torchvision's ``RandomHorizontalFlip(p)``, batched: each image mirrored with probability ``p``.

    Raises:
        ArgumentError: ``p`` outside [0, 1].
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        _probability(p)
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.p:
            return x
        flip = (torch.rand(x.shape[0], device=x.device) < self.p).view(-1, 1, 1, 1)
        return torch.where(flip, x.flip(-1), x)


class BatchRandomErasing(nn.Module):
    """torchvision's ``RandomErasing(p, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=value)`` (Zhong et al.,
    2017), batched: with probability ``p`` one rectangle per image is set to ``value`` (on the [0, 1]
    scale); where torchvision retries a rectangle that does not fit, its sides are clipped here.

    Raises:
        ArgumentError: ``p`` outside [0, 1].
    """

    def __init__(self, p: float = 0.5, value: float = 0.0) -> None:
        super().__init__()
        _probability(p)
        self.p = p
        self.value = float(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.p:
            return x
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
        erase = inside & (torch.rand(b, device=device) < self.p).view(b, 1, 1)
        return x.masked_fill(erase.unsqueeze(1), self.value)


def _check(image_size: int, normalize: Mapping[str, float] | None) -> None:
    require(isinstance(image_size, int) and image_size >= 1, "image_size", image_size, "a number of pixels >= 1")
    if normalize is not None:
        keys = set(normalize)
        require(keys == {"mean", "std"}, "normalize", dict(normalize), "null or exactly the keys mean and std")
        require(normalize["std"] > 0, "normalize", dict(normalize), "std must be > 0")


def build_preprocess(image_size: int = 28, normalize: Mapping[str, float] | None = None) -> nn.Module:
    """The recipes' ``Resize`` → ``ToTensor`` → ``Normalize`` (``{"mean", "std"}`` on the [0, 1] scale, or
    ``None``) as one module: uint8 ``(B, 1, H, W)`` → float32 ``(B, 1, image_size, image_size)``.

    Raises:
        ArgumentError: ``image_size`` < 1, or ``normalize`` lacks ``mean``/``std`` or has std <= 0.
    """
    _check(image_size, normalize)
    steps: list[nn.Module] = [
        v2.Resize((image_size, image_size), antialias=True),
        v2.ToDtype(torch.float32, scale=True),
    ]
    if normalize is not None:
        steps.append(v2.Normalize([float(normalize["mean"])], [float(normalize["std"])]))
    return v2.Compose(steps)
