"""Training losses torch lacks that take hard labels or soft targets (MixUp, CutMix), for ``conf/loss/``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from fmnist_lightning.errors import require


class FocalLoss(nn.Module):
    """The focal loss of Lin et al., 2017 ("Focal Loss for Dense Object Detection",
    arXiv:1708.02002, eq. 5), in its softmax form for one label per image (as in Mukhoti et
    al., 2020, arXiv:2002.09437): ``-sum_c t_c * alpha_c * (1 - p_c) ** gamma * log p_c``,
    averaged over the batch, where ``p = softmax(logits)`` and ``t`` is the target
    distribution (one-hot for a hard label, mixed for MixUp and CutMix).

    ``gamma=0`` without ``alpha`` is cross-entropy. (torchvision's is the sigmoid form; kornia's takes hard
    labels only.)

    Args:
        gamma: Focusing parameter ``>= 0``; the paper's best is 2.
        alpha: Class weights: one number for every class, one weight per class, or ``None``.

    Raises:
        ArgumentError: ``gamma < 0`` or a weight in ``alpha`` is not positive.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | Sequence[float] | None = None) -> None:
        super().__init__()
        require(gamma >= 0, "gamma", gamma, "a number >= 0 (0 is cross-entropy)")
        weights = [alpha] if isinstance(alpha, int | float) else list(alpha or [])
        require(all(w > 0 for w in weights), "alpha", alpha, "null, a number > 0 or a list of one weight > 0 per class")
        self.gamma = float(gamma)
        self.alpha = weights or None

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Float ``(B, C)`` logits and int64 ``(B,)`` labels or float ``(B, C)`` targets → the mean loss (nats).

        Raises:
            ValueError: ``alpha`` has a number of weights other than 1 or ``C``.
        """
        log_p = F.log_softmax(logits.float(), dim=1)
        if target.dim() == 1:
            target = F.one_hot(target, logits.shape[1]).to(log_p.dtype)
        weight = (1 - log_p.exp()).pow(self.gamma)
        if self.alpha is not None:
            if len(self.alpha) not in (1, logits.shape[1]):
                raise ValueError(f"alpha has {len(self.alpha)} weights for {logits.shape[1]} classes")
            weight = weight * torch.tensor(self.alpha, dtype=log_p.dtype, device=log_p.device)
        return -(target * weight * log_p).sum(dim=1).mean()
