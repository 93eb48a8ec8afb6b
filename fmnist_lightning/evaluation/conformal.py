"""Split-conformal prediction sets: sets of classes that hold the true class with probability at
least 1 − α (Vovk et al., 2005; Angelopoulos & Bates, 2021, "A gentle introduction to conformal
prediction and distribution-free uncertainty quantification", §1).

Each method gives every class c of an image a nonconformity score s(x, c), larger for a class
less likely to be the true one, computed from the probabilities the run serves (``softmax(logits
/ T)``, the temperature T fitted on the validation split, or T = 1 without one), in float64:

- ``lac`` (least ambiguous set-valued classifier; THR in torch-uncertainty; Sadinle, Lei &
  Wasserman, JASA 2019): ``s(x, c) = 1 − p_c``.
- ``aps`` (adaptive prediction sets; Romano, Sesia & Candès, NeurIPS 2020, eq. 7, randomized):
  with the classes sorted by descending probability (ties in class order), ``s(x, c)`` is the
  probability of every class ranked before c plus ``U · p_c``.
- ``raps`` (regularized APS; Angelopoulos, Bates, Malik & Jordan, ICLR 2021, "Uncertainty sets
  for image classifiers using conformal prediction", randomized): the APS score plus
  ``λ · max(0, k − k_reg)``, k the 1-based rank of c.

U in [0, 1) is the papers' random term, one per image (``uniforms``). Here it is drawn from the
image's own probabilities: the first 8 bytes of a BLAKE2b hash of their float32 values. The same
probabilities therefore give the same set in the report, ``fmnist-predict``, the server and an
export, with no seed to carry. Since U is a fixed function of the image, the scores of calibration
and test images stay exchangeable and the guarantee below holds; spread like a uniform draw over
images, U breaks the ties that make the non-randomized APS over-cover (a network that puts 0.9999
on its top class gives nearly every correct image the same score). An image whose float32
probabilities differ by one bit (another backend, e.g. ONNX Runtime) draws another U.

Calibration (``calibrate``) takes the scores of the true classes of n calibration images and
keeps, for each α, q̂ = their ⌈(n + 1)(1 − α)⌉-th smallest (Angelopoulos & Bates, 2021, eq. 1;
NumPy's ``np.quantile(scores, ceil((n+1)(1-α))/n, method="inverted_cdf")``; their code's
``method="higher"`` interpolates at (n − 1) · level and mostly takes the next score up, a rank
more conservative). The set of an image (``prediction_sets``) is ``{c : s(x, c) ≤ q̂}``. It may be
empty: the method is unsure of every class at this α, and an empty set counts as a miss. (A
network right on more than 1 − α of its images can reach coverage 1 − α only with empty sets;
forcing the most probable class into them gives coverage of at least its accuracy.) If the
calibration and test images are exchangeable, the true class is in the set with probability at
least 1 − α (below 1 − α + 1 / (n + 1) where scores do not tie), over the draw of both.

Own code, not torch-uncertainty 0.13.0's ``ConformalClsTHR``, ``ConformalClsAPS`` and
``ConformalClsRAPS``: those calibrate only in ``fit(DataLoader)``, with
``torch.quantile(scores, 1 − α)`` (no finite-sample correction), compute the softmax of their
model's output themselves, draw a U per class (not per image) from torch's global generator, put
the top class into every set that would be empty, and give the APS and RAPS scores only through
private methods. With U = 1 (``scores(..., u=None)``) and that top class, the sets are theirs with
``randomized=False``: the classes whose score is at most q̂ (the class whose cumulative probability
crosses q̂ is left out, as in their code and in Angelopoulos & Bates' APS code).
``tests/test_conformal.py`` checks that the sets are those of the library's classes.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fmnist_lightning.artifacts import read_json, write_atomically
from fmnist_lightning.errors import DamagedFileError, RunError, require
from fmnist_lightning.evaluation.calibration import check_probabilities
from fmnist_lightning.evaluation.statistics import wilson_interval

#: The methods, in the report's order.
METHODS = ("lac", "aps", "raps")
#: The miscoverage levels α of the report: sets for 90 % and 95 % coverage.
ALPHAS = (0.1, 0.05)
#: RAPS's penalty per rank beyond ``RAPS_K_REG`` (λ; the value of the authors' README example and
#: of their tuning grid).
RAPS_LAMBDA = 0.01
#: RAPS's number of classes without penalty (k_reg): their tuning rule (the 1 − α quantile of the
#: true class's rank) gives 1 at α = 0.1 and 2 at α = 0.05 for a network of about 92 % accuracy.
RAPS_K_REG = 2
#: The file that holds a run's conformal thresholds, beside ``temperature.json``.
CONFORMAL_FILE = "conformal.json"
#: Which validation images calibrate the sets (the others fit the temperature).
CALIBRATED_ON = "odd positions of the validation split"


def uniforms(probs: torch.Tensor) -> torch.Tensor:
    """Each image's U in [0, 1): the first 8 bytes of a BLAKE2b hash of its float32 probabilities,
    over 2⁶⁴ (the module's note on U).

    Args:
        probs: Float ``(N, C)`` probabilities, any float dtype and device.

    Returns:
        Float64 ``(N,)`` on ``probs``' device.
    """
    rows = probs.detach().float().cpu().contiguous().numpy()
    drawn = [int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little") for row in rows]
    return torch.tensor(drawn, dtype=torch.float64, device=probs.device) / 2.0**64


def scores(
    probs: torch.Tensor,
    method: str,
    lam: float = RAPS_LAMBDA,
    k_reg: int = RAPS_K_REG,
    u: torch.Tensor | None = None,
) -> torch.Tensor:
    """Every class's nonconformity score under ``method`` (the module's formulas).

    Args:
        probs: Float ``(N, C)`` class probabilities, rows summing to 1, any float dtype.
        method: ``"lac"``, ``"aps"`` or ``"raps"``.
        lam: RAPS's λ.
        k_reg: RAPS's k_reg.
        u: Float ``(N,)`` U of APS and RAPS, in [0, 1] (``uniforms``); ``None`` for U = 1 (the
            non-randomized scores). LAC ignores it.

    Returns:
        Float64 ``(N, C)`` scores, in class order.

    Raises:
        ValueError: An unknown ``method``.
    """
    probs = probs.double()
    if method == "lac":
        return 1.0 - probs
    if method not in ("aps", "raps"):
        raise ValueError(f"unknown conformal method {method!r}: choose one of {', '.join(METHODS)}")
    order = probs.argsort(dim=1, descending=True, stable=True)
    ranked = probs.gather(1, order)
    cumulative = ranked.cumsum(dim=1)
    if u is not None:
        cumulative = cumulative - (1.0 - u.double().view(-1, 1)) * ranked
    if method == "raps":
        ranks = torch.arange(1, probs.shape[1] + 1, dtype=torch.float64, device=probs.device)
        cumulative = cumulative + lam * (ranks - k_reg).clamp(min=0)
    return torch.empty_like(cumulative).scatter_(1, order, cumulative)


def conformal_quantile(true_scores: torch.Tensor, alpha: float) -> float:
    """q̂: the ⌈(n + 1)(1 − α)⌉-th smallest of the n calibration scores (Angelopoulos & Bates, 2021, eq. 1).

    Args:
        true_scores: Float ``(n,)`` scores of the calibration images' true classes.
        alpha: The miscoverage level, in (0, 1).

    Raises:
        ValueError: ``alpha`` is not in (0, 1), or n < 1/α − 1 (the rank would be above n: no finite q̂).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"α must be in (0, 1), got {alpha}")
    n = len(true_scores)
    # (n + 1)(1 − α) in floating point can land a hair above an integer (90 × 0.7 = 63.00000000000001).
    rank = math.ceil((n + 1) * (1 - alpha) - 1e-9)
    if rank > n:
        needed = math.ceil((1 - alpha) / alpha - 1e-9)
        raise ValueError(f"α = {alpha} needs at least {needed} calibration images, got {n}")
    return true_scores.double().sort().values[rank - 1].item()


def calibrate(
    probs: torch.Tensor,
    labels: torch.Tensor,
    alphas: Sequence[float] = ALPHAS,
    methods: Sequence[str] = METHODS,
    lam: float = RAPS_LAMBDA,
    k_reg: int = RAPS_K_REG,
) -> dict[str, dict[str, float]]:
    """The thresholds q̂ of the calibration images, ``{method: {str(alpha): q̂}}``.

    Args:
        probs: Float ``(n, C)`` probabilities of the calibration images.
        labels: Int64 ``(n,)`` their true classes.

    Raises:
        ValueError: Tensors of the wrong kind or with a NaN or an infinity, an unknown method, or
            ``conformal_quantile``'s.
    """
    check_probabilities(probs, labels, "conformal prediction", 1)
    u = uniforms(probs)
    thresholds = {}
    for method in methods:
        true_scores = scores(probs, method, lam, k_reg, u).gather(1, labels.view(-1, 1)).squeeze(1)
        thresholds[method] = {str(alpha): conformal_quantile(true_scores, alpha) for alpha in alphas}
    return thresholds


def prediction_sets(
    probs: torch.Tensor, method: str, threshold: float, lam: float = RAPS_LAMBDA, k_reg: int = RAPS_K_REG
) -> torch.Tensor:
    """The prediction sets ``{c : s(x, c) ≤ threshold}``, with each image's U from ``uniforms``;
    a set may be empty (the module's note).

    Args:
        probs: Float ``(N, C)`` probabilities, as calibrated (same temperature).
        method: ``"lac"``, ``"aps"`` or ``"raps"``.
        threshold: That method's q̂ for the wanted α (``calibrate``'s, or ``read_conformal``'s).

    Returns:
        Bool ``(N, C)``: True where the class is in the image's set.

    Raises:
        ValueError: An unknown ``method``.
    """
    u = None if method == "lac" else uniforms(probs)
    return scores(probs, method, lam, k_reg, u) <= threshold


def set_choices(record: dict[str, Any]) -> dict[str, list[float]]:
    """The methods of a ``read_conformal`` record and the α each was calibrated for, ``{method: [α, ...]}``."""
    return {method: [float(alpha) for alpha in by_alpha] for method, by_alpha in record["thresholds"].items()}


def set_threshold(record: dict[str, Any], method: Any, alpha: Any, temperature: float | None) -> float:
    """q̂ of ``method`` at ``alpha`` in a ``read_conformal`` record, for probabilities scaled by ``temperature``.

    Args:
        method: A method of the record, e.g. ``"aps"``.
        alpha: One of its calibrated α, as a number or a string (``0.1``, ``"0.10"``).
        temperature: The temperature of the probabilities the sets will be made of (``None``: T = 1).

    Raises:
        ArgumentError: The record has no such method (``sets=...``), or no threshold at that α (``alpha=...``).
        RunError: The record's thresholds were calibrated at another temperature.
    """
    thresholds = record["thresholds"]
    known = isinstance(method, str) and method in thresholds
    require(known, "sets", method, f"one of the calibrated methods: {', '.join(thresholds)}")
    by_alpha = thresholds[method]
    key = next((a for a in by_alpha if _same_alpha(a, alpha)), None)
    require(key is not None, "alpha", alpha, f"one of the calibrated α: {', '.join(by_alpha)}")
    calibrated_at = record.get("temperature")
    if (calibrated_at is None) != (temperature is None) or not math.isclose(calibrated_at or 1, temperature or 1):
        raise RunError(
            f"the conformal thresholds were calibrated at temperature {calibrated_at or 'none'} (conformal.json), "
            f"but the probabilities are scaled by {temperature or 'none'} (temperature.json): copy both files "
            "from the same fmnist-evaluate output folder into the run folder (docs/uncertainty.md)"
        )
    return by_alpha[key]


class GivesSets:
    """Prediction sets of a model that carries a ``read_conformal`` record (``conformal``, ``None``
    without one) and the ``temperature`` of its ``predict_proba`` (``None``: T = 1): a run's
    ``runs.TrainedModel`` and an export's ``serving.export.ExportedModel`` alike. A subclass says in
    ``no_sets`` why it has no record and how to get one."""

    conformal: dict[str, Any] | None
    temperature: float | None

    def no_sets(self) -> str:
        """Why there is no record, and how to get one (the ``RunError``'s message)."""
        raise NotImplementedError

    def check_sets(self, method: Any, alpha: Any) -> float:
        """The threshold q̂ of ``method`` at ``alpha`` (``set_threshold``).

        Raises:
            RunError: The model has no conformal record, or one calibrated at another temperature.
            ArgumentError: ``method`` or ``alpha`` is not one the record was calibrated for.
        """
        if self.conformal is None:
            raise RunError(self.no_sets())
        return set_threshold(self.conformal, method, alpha, self.temperature)

    def predict_sets(self, inputs: Any, method: str, alpha: float | str) -> torch.Tensor:
        """The conformal prediction sets (``prediction_sets``, with the record's threshold and RAPS
        parameters), bool ``(B, num_classes)``, of uint8 ``(B, 1, H, W)`` images or of float
        ``(B, num_classes)`` probabilities from ``predict_proba``.

        Raises:
            RunError, ArgumentError: As ``check_sets``.
        """
        threshold = self.check_sets(method, alpha)
        probs = inputs if torch.is_tensor(inputs) and inputs.is_floating_point() else self.predict_proba(inputs)
        raps = self.conformal["raps"]
        return prediction_sets(probs, method, threshold, raps["lambda"], raps["k_reg"])


def _same_alpha(key: str, alpha: Any) -> bool:
    """Whether a record's α ``key`` (``"0.1"``) is ``alpha`` (a number or a string)."""
    if isinstance(alpha, bool):
        return False
    try:
        return float(key) == float(alpha)
    except (TypeError, ValueError):
        return False


def conformal_report(
    calibration_probs: torch.Tensor,
    calibration_labels: torch.Tensor,
    probs: torch.Tensor,
    targets: torch.Tensor,
    alphas: Sequence[float] = ALPHAS,
    methods: Sequence[str] = METHODS,
) -> dict[str, Any]:
    """The thresholds calibrated on the calibration images, and their sets on the test images.

    Args:
        calibration_probs: Float ``(n, C)`` probabilities of the calibration images.
        calibration_labels: Their int64 ``(n,)`` labels.
        probs: Float ``(N, C)`` probabilities of the test images, with the same temperature.
        targets: Their int64 ``(N,)`` labels.

    Returns:
        A JSON-ready dict: ``calibration_images`` (n), ``calibrated_on`` (``CALIBRATED_ON``),
        ``raps`` (``{"lambda": λ, "k_reg": k_reg}``), and ``methods``: ``{method: {str(alpha):
        {...}}}`` with ``threshold`` (q̂), ``coverage`` (the fraction of test images whose set holds
        the true class) with its 95 % Wilson interval ``coverage_ci95``, ``mean_size`` (classes per
        set, an empty one counting 0), ``empty`` (the fraction of empty sets) and ``class_coverage``
        (the coverage of each true class, in class order; ``None`` for a class without test images).

    Raises:
        ValueError: ``calibrate``'s, or test tensors of the wrong kind or with a NaN or an infinity.
    """
    check_probabilities(probs, targets, "conformal prediction", 1)
    thresholds = calibrate(calibration_probs, calibration_labels, alphas, methods)
    results: dict[str, dict[str, Any]] = {}
    for method, by_alpha in thresholds.items():
        results[method] = {}
        for alpha, threshold in by_alpha.items():
            sets = prediction_sets(probs, method, threshold)
            results[method][alpha] = {"threshold": threshold} | _coverage(sets, targets)
    return {
        "calibration_images": len(calibration_labels),
        "calibrated_on": CALIBRATED_ON,
        "raps": {"lambda": RAPS_LAMBDA, "k_reg": RAPS_K_REG},
        "methods": results,
    }


def _coverage(sets: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
    """``coverage``, ``coverage_ci95``, ``mean_size``, ``empty`` and ``class_coverage`` of bool ``(N, C)`` sets."""
    covered = sets.gather(1, targets.view(-1, 1)).squeeze(1)
    num_classes = sets.shape[1]
    per_class = torch.bincount(targets, weights=covered.double(), minlength=num_classes)
    support = torch.bincount(targets, minlength=num_classes)
    hits = int(covered.sum())
    return {
        "coverage": hits / len(targets),
        "coverage_ci95": list(wilson_interval(hits, len(targets))),
        "mean_size": sets.sum(dim=1).double().mean().item(),
        "empty": (~sets.any(dim=1)).double().mean().item(),
        "class_coverage": [h / s if s else None for h, s in zip(per_class.tolist(), support.tolist(), strict=True)],
    }


def write_conformal(folder: Path, conformal: dict[str, Any]) -> None:
    """Writes ``conformal.json`` from the report's ``conformal`` section (``conformal_report``'s dict
    with the ``temperature`` of its probabilities, ``None`` for T = 1): the thresholds ``{method:
    {str(alpha): q̂}}``, the number of calibration images and which they were, the temperature, and
    RAPS's λ and k_reg."""
    methods = conformal["methods"]
    record = {
        "thresholds": {m: {a: r["threshold"] for a, r in by_alpha.items()} for m, by_alpha in methods.items()},
        "calibration_images": conformal["calibration_images"],
        "calibrated_on": conformal["calibrated_on"],
        "temperature": conformal.get("temperature"),
        "raps": conformal["raps"],
        "method": "split conformal prediction (Angelopoulos & Bates 2021); APS and RAPS randomized with U "
        "from each image's float32 probabilities (BLAKE2b); empty sets allowed; "
        "lac: Sadinle et al. 2019, aps: Romano et al. 2020, raps: Angelopoulos et al. 2021",
    }
    write_atomically(folder / CONFORMAL_FILE, json.dumps(record, indent=2) + "\n")


def read_conformal(folder: str | Path) -> dict[str, Any] | None:
    """The record in ``folder/conformal.json`` (``write_conformal``'s keys); ``None`` when the folder has
    none (a run made before the file, or without a validation split).

    Raises:
        DamagedFileError: The file is unreadable, or a threshold, the image count, the temperature or
            RAPS's parameters are missing or not numbers of their kind.
    """
    path = Path(folder) / CONFORMAL_FILE
    if not path.is_file():
        return None
    fix = "Delete it (the run then has no prediction sets), or evaluate the run again."
    record = read_json(path, fix)
    problem = record_problem(record)
    if problem:
        raise DamagedFileError(path, problem, fix)
    return record


def _number(value: Any) -> bool:
    """Whether ``value`` is a finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def record_problem(record: Any) -> str | None:
    """What is wrong with a conformal record (``conformal.json``'s, or an export's metadata), or ``None``."""
    if not isinstance(record, dict):
        return f"it is {record!r}, not a record"
    thresholds = record.get("thresholds")
    if not isinstance(thresholds, dict) or not thresholds:
        return f"its thresholds are {thresholds!r}, not a mapping of methods"
    for method, by_alpha in thresholds.items():
        if method not in METHODS or not isinstance(by_alpha, dict) or not by_alpha:
            return f"its thresholds of {method!r} are {by_alpha!r}, not a method's mapping of α to q̂"
        if not all(_number(q) for q in by_alpha.values()):
            return f"a threshold of {method!r} is not a number: {by_alpha!r}"
    images = record.get("calibration_images")
    if not isinstance(images, int) or isinstance(images, bool) or images < 1:
        return f"its calibration_images is {images!r}, not a positive integer"
    temperature = record.get("temperature")
    if temperature is not None and not (_number(temperature) and temperature > 0):
        return f"its temperature is {temperature!r}, not a positive number or null"
    raps = record.get("raps")
    if not isinstance(raps, dict) or not _number(raps.get("lambda")) or not isinstance(raps.get("k_reg"), int):
        return f"its raps is {raps!r}, not {{'lambda': number, 'k_reg': integer}}"
    return None
