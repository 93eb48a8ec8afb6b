"""Are the probabilities honest? Calibration metrics, reliability bins and temperature scaling.

- NLL: the mean negative log-likelihood of the true class, in nats.
- Brier score: the mean of Σ_k (p_k − y_k)², y one-hot (Brier, 1950), in [0, 2].
- ECE and MCE over ``N_BINS`` equal-width bins of top-1 confidence (Naeini et al., 2015; Guo et
  al., 2017, eq. 3 and 5), as fractions, in float64 with 1 in the last bin (torchmetrics' float32
  ``multiclass_calibration_error`` gives 1 a bin of its own).
- Temperature scaling (Guo et al., 2017, §4.2): ``softmax(z / T)``, T > 0 minimising the validation NLL.
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
    """``nll`` (nats), ``brier``, ``ece`` and ``mce`` (fractions) of ``softmax(logits / temperature)`` in
    float64, of float ``(N, C)`` logits and int64 ``(N,)`` targets."""
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
    """The ``N_BINS`` bins of top-1 confidence, [i/n, (i+1)/n) with 1 in the last, of float ``(N, C)`` logits
    and int64 ``(N,)`` targets: ``lower``, ``upper``, ``count``, ``confidence``, ``accuracy`` (``None`` if empty)."""
    confidence, preds = (logits.double() / temperature).softmax(dim=1).max(dim=1)
    correct = (preds == targets).double()
    edges = torch.linspace(0, 1, N_BINS + 1, dtype=torch.float64)
    index = (torch.bucketize(confidence, edges, right=True) - 1).clamp(0, N_BINS - 1)
    bins = []
    for i in range(N_BINS):
        members = index == i
        count = int(members.sum())
        mean_conf, acc = (t[members].mean().item() if count else None for t in (confidence, correct))
        lower, upper = edges[i].item(), edges[i + 1].item()
        bins.append({"lower": lower, "upper": upper, "count": count, "confidence": mean_conf, "accuracy": acc})
    return bins


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 100) -> float:
    """The temperature T minimising the NLL of ``softmax(logits / T)`` (Guo et al., 2017, §4.2), float
    ``(N, C)`` logits and int64 ``(N,)`` targets: L-BFGS (strong Wolfe) over log T in float64 from T = 1.

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
    """A test report's calibration: ``calibration_metrics`` and ``reliability_bins`` at T = 1 (``before``)
    and at ``temperature`` (``after``; ``None`` without one), with ``temperature``, ``fitted_on``, ``n_bins``."""
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
    """Writes ``temperature.json``: ``temperature`` and how many validation ``images`` it was fitted on."""
    record = {"temperature": temperature, "fitted_on": f"{images} validation images", "method": "Guo et al. 2017"}
    write_atomically(folder / TEMPERATURE_FILE, json.dumps(record, indent=2) + "\n")


def read_temperature(folder: str | Path) -> float | None:
    """The temperature in ``folder/temperature.json``; ``None`` when the folder has none.

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


def check_probabilities(probs: torch.Tensor, labels: torch.Tensor, purpose: str, min_images: int = 1) -> None:
    """Refuses what is not class probabilities with labels: ``probs`` a finite float ``(N, C)``
    tensor with N ≥ ``min_images``, ``labels`` an integer ``(N,)`` tensor.

    Raises:
        ValueError: Saying what ``purpose`` (e.g. "conformal prediction") needs and what it got.
    """
    if probs.ndim != 2 or not probs.is_floating_point() or len(probs) < min_images:
        raise ValueError(f"{purpose} needs float (N, C) probabilities, N ≥ {min_images}; got {tuple(probs.shape)}")
    if labels.shape != (len(probs),) or labels.is_floating_point() or labels.is_complex():
        got = f"{labels.dtype} {tuple(labels.shape)}"
        raise ValueError(f"{purpose} needs integer labels of shape ({len(probs)},), got {got}")
    if not torch.isfinite(probs).all():
        raise ValueError(f"{purpose} needs finite probabilities: they hold a NaN or an infinity")
