"""Batched training augmentations: each image of a batch gets its own random parameters.

torchvision's v2 transforms draw one set of random parameters per call, so on a whole batch
every image would get the same crop, flip or rectangle. These modules draw per image and run
on the batch's device, so augmentation costs no per-image Python work.

Each is one ``nn.Module`` mapping float ``(B, C, S, S)`` images with pixel values in [0, 1]
(0 = black) to the same shape, dtype and device. The DataModule applies them to training
batches only, after scaling to [0, 1] and before normalisation, in the order of
``data.augment`` (``conf/data/fashion_mnist.yaml``). A new augmentation is one more class like
these (here or in any importable module) and one more entry under ``data.augment``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from fmnist_lightning.errors import require

#: torchvision.transforms.RandomErasing's defaults: erased area as a fraction of the image,
#: and the range of the rectangle's aspect ratio (height / width), drawn log-uniformly.
ERASE_SCALE = (0.02, 0.33)
ERASE_RATIO = (0.3, 3.3)


def _probability(p: float) -> None:
    require(isinstance(p, (int, float)) and 0.0 <= p <= 1.0, "p", p, "a probability in [0, 1]")


class BatchRandomCrop(nn.Module):
    """torchvision's ``RandomCrop(S, padding=padding)``, batched: pad each side with black,
    then cut an ``S × S`` window at a random offset per image.

    Args:
        padding: Pixels of padding on each side; 0 turns cropping off.

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
    """torchvision's ``RandomHorizontalFlip(p)``, batched: each image is mirrored left-right
    with probability ``p``.

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
    """torchvision's ``RandomErasing(p, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=value)``
    (Zhong et al., 2017, "Random Erasing Data Augmentation"), batched.

    With probability ``p`` one rectangle of each image is set to ``value``. It covers a
    uniform 2-33 % of the image with a log-uniform aspect ratio in [0.3, 3.3].
    torchvision retries up to 10 times when the drawn rectangle does not fit; here its sides
    are clipped to the image instead.

    Args:
        p: Probability of erasing a rectangle of each image.
        value: Fill of the rectangle on the [0, 1] pixel scale (0 = black;
            ``experiment=best`` uses the dataset's mean grey, ``${data.normalize.mean}``).

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
