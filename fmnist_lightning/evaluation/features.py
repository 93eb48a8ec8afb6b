"""The one rule for a network's penultimate features: the input of its last ``nn.Linear`` (in
``net.modules()`` order), taken by a forward pre-hook. The TensorBoard projector of the test
report and the Mahalanobis score of ``fmnist-ood`` both use it; a network of one's own whose
features are elsewhere (or that has no ``nn.Linear``) gets neither, with a note."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

#: Why a network has no penultimate features under this rule, for the notes that say so.
NO_LINEAR = "the network has no nn.Linear layer, whose input would be its penultimate features"


def penultimate_layer(net: nn.Module) -> nn.Linear | None:
    """The last ``nn.Linear`` of ``net`` in ``net.modules()`` order (the classifier head of
    every shipped network), or ``None`` when it has none."""
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


@contextmanager
def penultimate_features(net: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Within the block, every forward pass of ``net`` appends its penultimate features, float32
    ``(B, D)`` on the CPU (flattened, detached), to the yielded list; the hook is removed after.

    Raises:
        ValueError: ``net`` has no ``nn.Linear`` (``NO_LINEAR``).
    """
    layer = penultimate_layer(net)
    if layer is None:
        raise ValueError(NO_LINEAR)
    taken: list[torch.Tensor] = []

    def keep(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        taken.append(args[0].detach().float().flatten(1).cpu())

    handle = layer.register_forward_pre_hook(keep)
    try:
        yield taken
    finally:
        handle.remove()
