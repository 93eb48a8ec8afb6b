"""Are the probabilities honest? Calibration metrics, reliability bins and temperature scaling.

- NLL: the mean negative log-likelihood of the true class (cross-entropy), in nats.
- Brier score: the mean over images of Σ_k (p_k − y_k)² with y one-hot (Brier, 1950), in
  [0, 2]; torchmetrics has no multiclass Brier score, so it is computed here.
- ECE and MCE over ``N_BINS`` equal-width bins of the top-1 confidence (Naeini et al.,
  2015; Guo et al., 2017, eq. 3 and 5): the image-weighted mean and the largest gap between
  a bin's accuracy and its mean confidence, as fractions, from ``reliability_bins``.
  torchmetrics' ``multiclass_calibration_error`` computes the same for confidences below 1,
  but it casts them to float32 and gives a confidence of exactly 1 (a margin of about 17 in
  the logits, common for a well-trained network) a 16th bin of its own, so the report's
  figures would not match its own reliability diagram; the bins are computed here in float64
  with bin 15 holding 1.
- Temperature scaling (Guo et al., 2017, §4.2): one scalar T > 0 divides the logits,
  ``softmax(z / T)``; it is fitted by minimising the NLL on the validation split with L-BFGS,
  as the paper does. The predicted class, hence accuracy, does not change.

A run's temperature is kept in ``temperature.json`` in its folder; ``fmnist-predict``, the
server and the exported graphs divide by it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from fmnist_lightning.artifacts import read_json, write_atomically
from fmnist_lightning.errors import DamagedFileError

#: Equal-width confidence bins of ECE, MCE and the reliability diagram (Guo et al., 2017, use 15).
N_BINS = 15
#: The file that holds a run's fitted temperature.
TEMPERATURE_FILE = "temperature.json"


def calibration_metrics(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> dict[str, float]:
    """NLL, Brier score, ECE and MCE of ``softmax(logits / temperature)``.

    Args:
        logits: Float ``(N, C)``.
        targets: Int64 ``(N,)`` labels.
        temperature: The temperature T > 0 dividing the logits (1: the network's own).

    Returns:
        ``nll`` (nats), ``brier`` (in [0, 2]), ``ece`` and ``mce`` (fractions), computed in float64.
    """
    scaled = logits.double() / temperature
    probs = scaled.softmax(dim=1)
    one_hot = F.one_hot(targets, logits.shape[1]).double()
    bins = [b for b in reliability_bins(logits, targets, temperature) if b["count"]]
    gaps = [abs(b["accuracy"] - b["confidence"]) for b in bins]
    return {
        "nll": F.cross_entropy(scaled, targets).item(),
        "brier": (probs - one_hot).pow(2).sum(dim=1).mean().item(),
        "ece": sum(b["count"] * gap for b, gap in zip(bins, gaps, strict=True)) / len(targets),
        "mce": max(gaps),
    }


def reliability_bins(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> list[dict[str, Any]]:
    """The ``N_BINS`` equal-width bins of top-1 confidence that ECE and MCE are computed over:
    bin i holds confidences in [i/n, (i+1)/n), the last one includes 1 (float64 throughout).

    Args:
        logits: Float ``(N, C)``.
        targets: Int64 ``(N,)`` labels.
        temperature: Divides the logits, as in ``calibration_metrics``.

    Returns:
        One dict per bin: ``lower``, ``upper``, ``count`` (images), and ``confidence`` and
        ``accuracy`` (fractions, ``None`` for an empty bin).
    """
    confidence, preds = (logits.double() / temperature).softmax(dim=1).max(dim=1)
    correct = (preds == targets).double()
    edges = torch.linspace(0, 1, N_BINS + 1, dtype=torch.float64)
    index = (torch.bucketize(confidence, edges, right=True) - 1).clamp(0, N_BINS - 1)
    bins = []
    for i in range(N_BINS):
        members = index == i
        count = int(members.sum())
        bins.append(
            {
                "lower": edges[i].item(),
                "upper": edges[i + 1].item(),
                "count": count,
                "confidence": confidence[members].mean().item() if count else None,
                "accuracy": correct[members].mean().item() if count else None,
            }
        )
    return bins


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 100) -> float:
    """Fits the temperature T that minimises the NLL of ``softmax(logits / T)`` (Guo et al.,
    2017, §4.2): L-BFGS with a strong-Wolfe line search over log T (which keeps T positive),
    in float64, from T = 1. Deterministic: the same logits give the same T.

    Args:
        logits: Float ``(N, C)``, e.g. of the validation split; may be inference tensors.
        targets: Int64 ``(N,)`` labels.
        max_iter: L-BFGS iterations at most.

    Returns:
        T > 0 (a float).

    Raises:
        ValueError: ``logits`` is empty or holds a NaN or an infinity.
    """
    if logits.numel() == 0 or not torch.isfinite(logits).all():
        raise ValueError("temperature scaling needs finite logits of at least one image")
    with torch.inference_mode(False), torch.enable_grad():
        logits, targets = logits.detach().double().clone(), targets.clone()
        log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS(
            [log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-9
        )

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(logits / log_t.exp(), targets)
            loss.backward()
            return loss

        optimizer.step(closure)
    return math.exp(log_t.item())


def calibration_report(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float | None, fitted_on: int = 0
) -> dict[str, Any]:
    """The calibration section of a test report.

    Args:
        logits: Float ``(N, C)`` test logits.
        targets: Int64 ``(N,)`` labels.
        temperature: The temperature fitted on the validation split, or ``None`` (none fitted).
        fitted_on: How many validation images it was fitted on.

    Returns:
        ``temperature``, ``fitted_on``, ``before`` and ``after`` (``calibration_metrics`` at
        T = 1 and at the temperature; ``after`` is ``None`` without one), ``bins_before`` and
        ``bins_after`` (``reliability_bins``), and ``n_bins``.
    """
    scaled = temperature is not None
    return {
        "temperature": temperature,
        "fitted_on": fitted_on,
        "n_bins": N_BINS,
        "before": calibration_metrics(logits, targets),
        "after": calibration_metrics(logits, targets, temperature) if scaled else None,
        "bins_before": reliability_bins(logits, targets),
        "bins_after": reliability_bins(logits, targets, temperature) if scaled else None,
    }


def write_temperature(folder: Path, temperature: float, images: int) -> None:
    """Writes ``temperature.json``: ``temperature``, and ``fitted_on`` (how many validation
    images it was fitted on)."""
    record = {"temperature": temperature, "fitted_on": f"{images} validation images", "method": "Guo et al. 2017"}
    write_atomically(folder / TEMPERATURE_FILE, json.dumps(record, indent=2) + "\n")


def read_temperature(folder: str | Path) -> float | None:
    """The temperature in ``folder/temperature.json``; ``None`` when the folder has none (a run
    made before temperature scaling, or without a validation split).

    Raises:
        DamagedFileError: The file is unreadable or its temperature is not a positive number.
    """
    path = Path(folder) / TEMPERATURE_FILE
    if not path.is_file():
        return None
    fix = "Delete it (the probabilities are then the network's own), or evaluate and train the run again."
    value = read_json(path, fix).get("temperature")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise DamagedFileError(path, f"its temperature is {value!r}, not a positive number", fix)
    return float(value)
