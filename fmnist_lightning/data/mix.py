"""Batch mixing of training batches, MixUp and CutMix, for ``conf/mix/``.

The mixing itself is torchvision's (``torchvision.transforms.v2.MixUp`` and ``CutMix``);
``RandomMix`` adds a probability of mixing a batch and always returns soft targets, so the
loss receives one kind of target in every step.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.transforms import v2

from fmnist_lightning.errors import require


class RandomMix(nn.Module):
    """Mixes a whole batch with probability ``p``, else passes it through.

    Args:
        mix: A torchvision batch transform called as ``mix(images, targets)`` with one-hot
            targets, returning mixed images and soft targets (``v2.MixUp``, ``v2.CutMix``).
        p: Probability that a batch is mixed, in [0, 1]. With 1 (the default) no extra
            random number is drawn.

    Raises:
        ArgumentError: ``p`` outside [0, 1].
    """

    def __init__(self, mix: nn.Module, p: float = 1.0) -> None:
        super().__init__()
        require(0.0 <= p <= 1.0, "p", p, "a probability in [0, 1]")
        self.mix = mix
        self.p = float(p)

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Float ``(B, 1, H, W)`` images and float ``(B, C)`` one-hot targets → the same
        shapes, mixed (targets then hold the mixing weights, each row summing to 1)."""
        if self.p < 1.0 and torch.rand(()) >= self.p:
            return images, targets
        return self.mix(images, targets)


class BetaMix(RandomMix):
    """A torchvision mixing whose weight is drawn from ``Beta(alpha, alpha)`` once per batch,
    mixed with probability ``p``: ``MixUp`` and ``CutMix`` differ only in ``transform``.

    Args:
        alpha: The Beta distribution's parameter, > 0; 1.0 is torchvision's default (and
            the papers').
        p: Probability that a batch is mixed.

    Raises:
        ArgumentError: ``alpha <= 0`` or ``p`` outside [0, 1].
    """

    #: The torchvision batch transform, built as ``transform(alpha=alpha)``.
    transform: type[nn.Module]

    def __init__(self, alpha: float = 1.0, p: float = 1.0) -> None:
        require(alpha > 0, "alpha", alpha, "a number > 0 (the Beta(alpha, alpha) distribution's parameter)")
        super().__init__(self.transform(alpha=alpha), p)


class MixUp(BetaMix):
    """MixUp (Zhang et al., 2018, arXiv:1710.09412): each image and its target become a
    convex combination with another image of the batch, with a weight drawn from
    ``Beta(alpha, alpha)`` (torchvision's ``v2.MixUp``; 1.0, uniform weights, by default).
    Arguments as for ``BetaMix``."""

    transform = v2.MixUp


class CutMix(BetaMix):
    """CutMix (Yun et al., 2019, arXiv:1905.04899): a rectangle of each image is replaced by
    the same rectangle of another image of the batch, and the targets are mixed by the area,
    whose fraction is drawn from ``Beta(alpha, alpha)`` (torchvision's ``v2.CutMix``).
    Arguments as for ``BetaMix``."""

    transform = v2.CutMix
