"""Selective classification: how much the error rate falls when the classifier abstains on its
least confident test images (Geifman & El-Yaniv, NeurIPS 2017, "Selective classification for
deep neural networks"; Geifman et al., ICLR 2019, "Bias-reduced uncertainty estimation for deep
neural classifiers"), computed by torch-uncertainty's metrics.

The confidence of an image is its largest class probability (the softmax response). The test
report passes the probabilities the run serves, in float64: ``softmax(logits / T)`` with the
temperature T fitted on the validation split, or ``softmax(logits)`` when none was fitted.

With the N images sorted by descending confidence (ties in the order ``torch.argsort`` leaves
them), the coverage of the k most confident is ``k / N`` and their risk is their error rate
``r(k / N) = (1 / k) Σ_{i ≤ k} 1[ŷ_i ≠ y_i]``. All values are fractions.
"""

from __future__ import annotations

from typing import Any

import torch

from fmnist_lightning.evaluation.calibration import check_probabilities

#: Coverages of the report's ``risk_at_coverage``.
RISK_COVERAGES = (0.8, 0.95)
#: Fractions of least confident images abstained on, for ``accuracy_abstaining``.
ABSTENTIONS = (0.05, 0.1, 0.2)
#: The curve's points: coverages 1/CURVE_POINTS, 2/CURVE_POINTS, ..., 1.
CURVE_POINTS = 100


def selective_report(probs: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
    """The risk–coverage curve and its summaries, of class probabilities and true labels.

    Computed with torch-uncertainty 0.13.0's ``AURC`` and ``RiskAtxCov``
    (``torch_uncertainty.metrics.classification.risk_coverage``), which rank the images by their
    largest probability and predict its class:

    - ``aurc``: the area under the risk–coverage curve (Geifman & El-Yaniv, 2017), the library's
      trapezoid over the N points ``(k / N, r(k / N))``, normalised by its width ``1 − 1 / N``:
      ``AURC = (1 / (N − 1)) Σ_{k=1}^{N−1} (r(k / N) + r((k + 1) / N)) / 2``. Lower is better.
    - ``aurc_oracle``: the same for the oracle ranking, every correct image before every error
      (the lowest AURC at this error rate; Geifman et al., 2019), which gives
      ``r(k / N) = max(0, k − n_correct) / k``.
    - ``eaurc``: the excess AURC of Geifman et al. (2019), ``E-AURC = AURC − AURC_oracle``, both
      by the library's convention: 0 when every error ranks below every correct image, so that
      it measures the ranking alone, whatever the error rate. (For large N, ``AURC_oracle`` tends
      to their closed form ``r̂ + (1 − r̂) ln(1 − r̂)``, r̂ the error rate over all N images.)
    - ``risk_at_coverage``: ``{"0.8": r, "0.95": r}``, the error rate of the ``⌈c N⌉`` most
      confident images (``RiskAtxCov(c)``).
    - ``accuracy_abstaining``: ``{"0.05": a, "0.1": a, "0.2": a}``, the accuracy of the rest when
      the least confident fraction ``f`` is left out, ``1 − RiskAtxCov(1 − f)``.
    - ``curve``: ``coverage`` ``[1/100, ..., 1]``, with ``risk`` and ``oracle_risk`` at each,
      ``r`` of the ``⌈c N⌉`` most confident (as ``RiskAtxCov``), rounded to 6 decimals.

    Args:
        probs: Float ``(N, C)`` class probabilities (each row summing to 1), any float dtype, on
            any device.
        targets: Int64 ``(N,)`` true labels in ``[0, C)``, on any device.

    Returns:
        A JSON-ready dict of Python floats (fractions), keys as above.

    Raises:
        ValueError: ``probs`` is not a float ``(N, C)`` tensor with N ≥ 2, ``targets`` not an integer
            ``(N,)`` tensor, or ``probs`` holds a NaN or an infinity.
    """
    check_probabilities(probs, targets, "selective classification", 2)
    return _report(probs.detach().cpu(), targets.cpu())


def _report(probs: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
    """``selective_report`` of CPU tensors."""
    from torch_uncertainty.metrics.classification.risk_coverage import AURC, RiskAtxCov

    wrong = (probs.argmax(dim=1) != targets).long()
    # The oracle ranks every error last: confidence 1 when right, 0.5 when wrong, as rows
    # (c, c − 1) whose argmax, column 0, is wrong exactly where the label (``wrong``) is 1.
    oracle_confidence = 1.0 - 0.5 * wrong.to(probs.dtype)
    oracle_ranked = torch.stack([oracle_confidence, oracle_confidence - 1], dim=1)
    # Only rank 0 writes the report: a metric that synchronised processes under DDP would wait forever.
    local = {"sync_on_compute": False}
    model, oracle = AURC(**local), AURC(**local)
    model.update(probs, targets)
    oracle.update(oracle_ranked, wrong)
    risks = {}
    for coverage in sorted({*RISK_COVERAGES, *(round(1.0 - f, 6) for f in ABSTENTIONS)}):
        metric = RiskAtxCov(coverage, **local)
        metric.update(probs, targets)
        risks[coverage] = float(metric.compute())
    aurc, aurc_oracle = float(model.compute()), float(oracle.compute())
    n = len(wrong)
    points = [-(-n * j // CURVE_POINTS) - 1 for j in range(1, CURVE_POINTS + 1)]  # ⌈c N⌉ − 1, exactly
    return {
        "aurc": aurc,
        "aurc_oracle": aurc_oracle,
        "eaurc": aurc - aurc_oracle,
        "risk_at_coverage": {str(c): risks[c] for c in RISK_COVERAGES},
        "accuracy_abstaining": {str(f): 1.0 - risks[round(1.0 - f, 6)] for f in ABSTENTIONS},
        "curve": {
            "coverage": [j / CURVE_POINTS for j in range(1, CURVE_POINTS + 1)],
            "risk": _rounded(model.partial_compute()[points]),
            "oracle_risk": _rounded(oracle.partial_compute()[points]),
        },
    }


def _rounded(values: torch.Tensor) -> list[float]:
    """``values`` as a list of floats rounded to 6 decimals (a small report.json)."""
    return [round(v, 6) for v in values.tolist()]
