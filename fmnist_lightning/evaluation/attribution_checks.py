"""Sanity checks of attribution maps: do they depend on what the network learned, do they add up,
and do they point at the pixels the prediction needs?

- **Model randomisation** (Adebayo et al., NeurIPS 2018, "Sanity checks for saliency maps", §3.1,
  full randomisation): the maps of the trained network against those of the same architecture with
  freshly initialised weights (each module's ``reset_parameters``, seeded), compared per image by
  Spearman's rank correlation of the flattened maps (``scipy.stats.spearmanr``'s definition: the
  Pearson correlation of the ranks, ties averaged). A map that survives re-initialisation reads the
  image, not the network. A constant map (all zero, say, where Grad-CAM's ReLU cuts everything) has no
  ranking and no correlation: such images are left out of the statistics and counted
  (``constant_maps``).
- **Completeness** (Sundararajan, Taly & Yan, ICML 2017, axiom of completeness): integrated
  gradients' attributions sum to f(x) − f(baseline); the error is Captum's convergence delta,
  reported relative to |f(x)|, f the target logit.
- **Deletion** (Petsiuk, Das & Saenko, BMVC 2018, "RISE", §4.2): the pixels are set to black (0 on
  the [0, 1] scale, i.e. the normalised baseline) in the order of the map, most attributed first, in
  ``steps`` equal fractions; the probability of the class predicted on the intact image is read after
  each. The area under that curve (fraction deleted on [0, 1], trapezoids) is low when the map's first
  pixels are the ones the prediction needs. The same deletion in a random order (seeded) is the
  reference.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import nn

from fmnist_lightning.evaluation.attribution import COMPLETENESS_TOLERANCE, Explainer


def randomized_copy(net: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of ``net`` with every module's parameters and buffers re-initialised by its own
    ``reset_parameters`` (PyTorch's default initialisation; BatchNorm's running statistics
    reset too), under ``torch.manual_seed(seed)``; ``net`` is unchanged. The copy is in eval mode."""
    fresh = copy.deepcopy(net)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in fresh.modules():
            if callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
    return fresh.eval()


def rank_correlations(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Spearman's ρ of each pair of maps, float64 ``(B,)``, NaN where either map is constant.

    Args:
        a: float ``(B, S, S)`` maps.
        b: float ``(B, S, S)`` maps of the same images.
    """
    x, y = a.flatten(1).double().numpy(), b.flatten(1).double().numpy()
    ranks_x, ranks_y = stats.rankdata(x, axis=1), stats.rankdata(y, axis=1)
    rho = np.full(len(x), np.nan)
    for i in range(len(x)):
        if np.ptp(x[i]) > 0 and np.ptp(y[i]) > 0:
            rho[i] = np.corrcoef(ranks_x[i], ranks_y[i])[0, 1]
    return rho


@torch.no_grad()
def deletion_curves(
    net: nn.Module, x: torch.Tensor, maps: torch.Tensor, black: torch.Tensor, classes: torch.Tensor, steps: int = 20
) -> torch.Tensor:
    """The probability of ``classes`` as the pixels are deleted in the order of ``maps``.

    Args:
        net: The network, in eval mode.
        x: float ``(B, 1, S, S)`` preprocessed images.
        maps: float ``(B, S, S)``: the pixel with the largest value is deleted first (ties in pixel order).
        black: float ``(1, 1, S, S)``, the black image after the normalisation (``Explainer.baseline``).
        classes: int64 ``(B,)``, the class whose probability (``softmax(logits)``) is read.
        steps: Deletions, each of ``1 / steps`` of the pixels.

    Returns:
        float64 ``(B, steps + 1)``: the probability with 0, 1/steps, ..., all of the pixels deleted.
    """
    batch, pixels = len(x), maps[0].numel()
    order = maps.flatten(1).argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(pixels).expand(batch, -1))
    rank = rank.view_as(maps).unsqueeze(1).to(x.device)
    rows = torch.arange(batch, device=x.device)
    curves = []
    for step in range(steps + 1):
        deleted = rank < round(step * pixels / steps)
        probs = net(torch.where(deleted, black, x)).float().softmax(dim=1)
        curves.append(probs[rows, classes.to(x.device)].double().cpu())
    return torch.stack(curves, dim=1)


def curve_area(curves: torch.Tensor) -> torch.Tensor:
    """The area under each deletion curve, fraction deleted on [0, 1] (trapezoids), float64 ``(B,)``."""
    return torch.trapezoid(curves, dx=1.0 / (curves.shape[1] - 1), dim=1)


def sanity_checks(explainer: Explainer, x: torch.Tensor, seed: int = 0, steps: int = 20) -> dict[str, Any]:
    """The three checks of one method on preprocessed images ``x`` (float ``(B, 1, S, S)``), each
    image's map explaining its predicted class.

    Returns:
        A JSON-ready dict: ``images``; ``randomisation``: ``median_abs_rho``, ``mean_rho``,
        ``fraction_below_0_3`` (of |ρ| < 0.3) and ``constant_maps`` (images left out: either map
        constant); ``deletion``: the mean area under the curve of the map's order (``auc``) and of a
        random order (``random_auc``), ``fraction_map_lower`` and the two-sided Wilcoxon signed-rank
        p-value of the paired areas (``scipy.stats.wilcoxon``); for integrated gradients
        ``completeness``: ``median_relative_delta``, ``max_relative_delta`` and ``fraction_within_1pct``
        of |delta| / |f(x)|.
    """
    net = explainer.net
    with torch.no_grad():
        classes = net(x).argmax(dim=1)
    trained = explainer.attribute(x, classes)
    fresh = dataclasses.replace(explainer, net=randomized_copy(net, seed))
    rho = rank_correlations(trained.maps, fresh.attribute(x, classes).maps)
    known = rho[~np.isnan(rho)]
    generator = torch.Generator().manual_seed(seed)
    shuffled = torch.rand(trained.maps.shape, generator=generator)
    black = explainer.baseline(x.device)
    ours = curve_area(deletion_curves(net, x, trained.maps, black, classes, steps))
    random = curve_area(deletion_curves(net, x, shuffled, black, classes, steps))
    result: dict[str, Any] = {
        "images": len(x),
        "randomisation": {
            "median_abs_rho": float(np.median(np.abs(known))) if len(known) else None,
            "mean_rho": float(known.mean()) if len(known) else None,
            "fraction_below_0_3": float((np.abs(known) < 0.3).mean()) if len(known) else None,
            "constant_maps": int(np.isnan(rho).sum()),
        },
        "deletion": {
            "auc": ours.mean().item(),
            "random_auc": random.mean().item(),
            "fraction_map_lower": (ours < random).double().mean().item(),
            "wilcoxon_p": float(stats.wilcoxon(ours.numpy(), random.numpy()).pvalue),
        },
    }
    relative = trained.relative_delta()
    if relative is not None:
        result["completeness"] = {
            "median_relative_delta": relative.median().item(),
            "max_relative_delta": relative.max().item(),
            "fraction_within_1pct": (relative <= COMPLETENESS_TOLERANCE).double().mean().item(),
        }
    return result
