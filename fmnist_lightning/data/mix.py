"""Batch mixing of training batches for ``conf/mix/``: torchvision's ``v2.MixUp`` and ``v2.CutMix``, mixing
a batch with a probability."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.transforms import v2

from fmnist_lightning.errors import require


class RandomMix(nn.Module):
    """Mixes a whole batch with probability ``p``, else passes it through.

    Args:
        mix: A torchvision batch transform ``mix(images, one_hot_targets)`` (``v2.MixUp``, ``v2.CutMix``).
        p: Probability that a batch is mixed, in [0, 1]; 1 draws no random number.

    Raises:
        ArgumentError: ``p`` outside [0, 1].
    """

    def __init__(self, mix: nn.Module, p: float = 1.0) -> None:
        super().__init__()
        require(0.0 <= p <= 1.0, "p", p, "a probability in [0, 1]")
        self.mix = mix
        self.p = float(p)

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Float ``(B, 1, H, W)`` images and float ``(B, C)`` one-hot targets → the same shapes, mixed."""
        if self.p < 1.0 and torch.rand(()) >= self.p:
            return images, targets
        return self.mix(images, targets)


class BetaMix(RandomMix):
    """A torchvision mixing, its weight drawn from ``Beta(alpha, alpha)`` per batch, with probability ``p``.

    Args:
        alpha: The Beta distribution's parameter, > 0; 1.0 is torchvision's default (and the papers').

    Raises:
        ArgumentError: ``alpha <= 0`` or ``p`` outside [0, 1].
    """

    #: The torchvision batch transform, built as ``transform(alpha=alpha)``.
    transform: type[nn.Module]

    def __init__(self, alpha: float = 1.0, p: float = 1.0) -> None:
        require(alpha > 0, "alpha", alpha, "a number > 0 (the Beta(alpha, alpha) distribution's parameter)")
        super().__init__(self.transform(alpha=alpha), p)


class MixUp(BetaMix):
    """MixUp (Zhang et al., 2018, arXiv:1710.09412), torchvision's ``v2.MixUp``; arguments as ``BetaMix``'s."""

    transform = v2.MixUp


class CutMix(BetaMix):
    """CutMix (Yun et al., 2019, arXiv:1905.04899), torchvision's ``v2.CutMix``; arguments as ``BetaMix``'s."""

    transform = v2.CutMix
