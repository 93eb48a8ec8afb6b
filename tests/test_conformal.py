"""Split-conformal prediction sets (fmnist_lightning/evaluation/conformal.py): the coverage of a
classifier whose probabilities are exactly calibrated, the finite-sample quantile by hand, the
sets' shape, agreement with torch-uncertainty's classes, conformal.json and the report section."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fmnist_lightning.errors import DamagedFileError
from fmnist_lightning.evaluation.conformal import (
    CONFORMAL_FILE,
    RAPS_K_REG,
    RAPS_LAMBDA,
    calibrate,
    conformal_quantile,
    conformal_report,
    prediction_sets,
    read_conformal,
    scores,
    uniforms,
    write_conformal,
)
from fmnist_lightning.evaluation.report import classification_report, report_markdown, write_report
from fmnist_lightning.evaluation.summaries import report_scalars


def calibrated(n: int, generator: torch.Generator, scale: float = 1.5) -> tuple[torch.Tensor, torch.Tensor]:
    """n images of a classifier whose probabilities are exact: float64 ``(n, 10)`` probabilities
    ``softmax(z)``, z ~ N(0, scale²), and int64 ``(n,)`` labels drawn from them."""
    probs = (torch.randn(n, 10, generator=generator, dtype=torch.float64) * scale).softmax(dim=1)
    return probs, torch.multinomial(probs, 1, generator=generator).squeeze(1)


def test_coverage_of_an_exactly_calibrated_classifier() -> None:
    """2,000 calibration and 20,000 test draws: each method covers 1 − α within 1.5 points (the
    coverage given the calibration draw has a standard deviation of about 0.7 point at α = 0.1)."""
    generator = torch.Generator().manual_seed(0)
    cal_probs, cal_labels = calibrated(2000, generator)
    probs, labels = calibrated(20_000, generator)
    report = conformal_report(cal_probs, cal_labels, probs, labels, alphas=(0.1, 0.05))
    assert report["calibration_images"] == 2000 and set(report["methods"]) == {"lac", "aps", "raps"}
    for method, by_alpha in report["methods"].items():
        for alpha, result in by_alpha.items():
            target = 1 - float(alpha)
            assert abs(result["coverage"] - target) <= 0.015, (method, alpha, result["coverage"])
            low, high = result["coverage_ci95"]
            assert low < result["coverage"] < high
            assert 1 < result["mean_size"] < 10 and len(result["class_coverage"]) == 10
    # LAC gives the smallest sets on average (Sadinle et al., 2019); a smaller α, larger sets.
    for alpha in ("0.1", "0.05"):
        sizes = {m: report["methods"][m][alpha]["mean_size"] for m in report["methods"]}
        assert sizes["lac"] == min(sizes.values())
    assert report["methods"]["aps"]["0.05"]["mean_size"] > report["methods"]["aps"]["0.1"]["mean_size"]


def test_the_finite_sample_quantile_by_hand() -> None:
    """q̂ is the ⌈(n + 1)(1 − α)⌉-th smallest score: with n = 9, α = 0.1 gives rank ⌈9⌉ = 9 (the
    largest), α = 0.2 rank 8, α = 0.25 rank ⌈7.5⌉ = 8; n = 8 at α = 0.1 would need rank ⌈8.1⌉ = 9."""
    nine = torch.tensor([0.5, 0.9, 0.1, 0.7, 0.3, 0.8, 0.2, 0.6, 0.4])
    assert conformal_quantile(nine, 0.1) == pytest.approx(0.9)
    assert conformal_quantile(nine, 0.2) == pytest.approx(0.8)
    assert conformal_quantile(nine, 0.25) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="needs at least 9 calibration images, got 8"):
        conformal_quantile(nine[:8], 0.1)
    # (89 + 1)(1 − 0.3) is 63.00000000000001 in floating point; the rank is 63.
    assert conformal_quantile(torch.arange(1.0, 90.0), 0.3) == 63.0
    # Angelopoulos & Bates' code, np.quantile(scores, ceil((n + 1)(1 − α)) / n, method="higher"),
    # interpolates at (n − 1) · level: for n = 2,000 it takes the next score up, rank 1,802 at α = 0.1.
    scores = torch.rand(2000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ranked = np.sort(scores.numpy())
    for alpha, rank in ((0.1, 1801), (0.05, 1901), (0.01, 1981)):
        assert conformal_quantile(scores, alpha) == ranked[rank - 1]
        assert np.quantile(ranked, math.ceil(2001 * (1 - alpha)) / 2000, method="higher") == ranked[rank]
    for alpha in (0.0, 1.0):
        with pytest.raises(ValueError, match="α must be in"):
            conformal_quantile(nine, alpha)


def test_sets_may_be_empty_and_confident_lac_sets_are_singletons() -> None:
    generator = torch.Generator().manual_seed(2)
    probs, labels = calibrated(500, generator, scale=3.0)
    for method in ("lac", "aps", "raps"):
        assert not prediction_sets(probs, method, -1.0).any()  # below every score: every set is empty
        assert prediction_sets(probs, method, 2.0).all()  # above every score: every class is in
    # Confident probabilities (0.99 on the label): LAC's q̂ is 0.01, and each set is one class.
    confident = torch.full((200, 10), 0.01 / 9, dtype=torch.float64)
    confident[torch.arange(200), torch.arange(200) % 10] = 0.99
    labels = torch.arange(200) % 10
    threshold = calibrate(confident, labels, alphas=(0.05,), methods=("lac",))["lac"]["0.05"]
    assert threshold == pytest.approx(0.01)
    assert torch.equal(prediction_sets(confident, "lac", threshold), nn.functional.one_hot(labels, 10).bool())


def test_u_is_a_uniform_function_of_the_probabilities() -> None:
    """U is the same for the same float32 probabilities (any dtype or order of the batch), and
    spread like a uniform draw over images (Kolmogorov–Smirnov, 20,000 images)."""
    from scipy import stats

    probs, _ = calibrated(20_000, torch.Generator().manual_seed(6))
    u = uniforms(probs)
    assert u.dtype == torch.float64 and ((u >= 0) & (u < 1)).all()
    assert torch.equal(uniforms(probs.float()), u)
    assert torch.equal(uniforms(probs.flip(0)), u.flip(0))
    assert stats.kstest(u.numpy(), "uniform").pvalue > 0.01
    # An image the network is sure of: the non-randomized APS score is 1 − 1e-6 on all of them;
    # with U, the true class's score spreads over [0, 1).
    sure = torch.full((1000, 10), 1e-7 / 9, dtype=torch.float64)
    sure[:, 0] = 1 - 1e-7
    sure[:, 1:] += torch.rand(1000, 9, generator=torch.Generator().manual_seed(7), dtype=torch.float64) * 1e-9
    sure = sure / sure.sum(dim=1, keepdim=True)
    labels = torch.zeros(1000, dtype=torch.int64)
    plain = scores(sure, "aps").gather(1, labels.view(-1, 1))
    randomized = scores(sure, "aps", u=uniforms(sure)).gather(1, labels.view(-1, 1))
    assert plain.min() > 1 - 1e-6 and randomized.std() > 0.25


def test_aps_sets_are_nested_as_alpha_falls() -> None:
    generator = torch.Generator().manual_seed(3)
    cal_probs, cal_labels = calibrated(1000, generator)
    probs, _ = calibrated(2000, generator)
    alphas = (0.3, 0.2, 0.1, 0.05, 0.01)
    thresholds = calibrate(cal_probs, cal_labels, alphas=alphas, methods=("aps",))["aps"]
    sets = [prediction_sets(probs, "aps", thresholds[str(alpha)]) for alpha in alphas]
    for larger_alpha, smaller_alpha in itertools.pairwise(sets):
        assert (larger_alpha <= smaller_alpha).all()  # each set of the larger α is in the smaller α's
    assert sets[-1].sum() > sets[0].sum()


def test_the_sets_are_torch_uncertaintys() -> None:
    """At the same q̂ and with U = 1, the sets are those of torch-uncertainty 0.13.0's classes
    without randomization or temperature scaling (their model: the identity on log-probabilities,
    which they softmax), once the top class fills a set that would be empty, as theirs does."""
    from torch_uncertainty.post_processing.conformal import ConformalClsAPS, ConformalClsRAPS, ConformalClsTHR

    generator = torch.Generator().manual_seed(4)
    cal_probs, cal_labels = calibrated(1000, generator)
    probs, _ = calibrated(3000, generator)
    library = {
        "lac": lambda alpha: ConformalClsTHR(alpha, nn.Identity(), enable_ts=False),
        "aps": lambda alpha: ConformalClsAPS(alpha, nn.Identity(), randomized=False, enable_ts=False),
        "raps": lambda alpha: ConformalClsRAPS(
            alpha, nn.Identity(), randomized=False, penalty=RAPS_LAMBDA, regularization_rank=RAPS_K_REG
        ),
    }
    for method, by_alpha in calibrate(cal_probs, cal_labels).items():
        for alpha, threshold in by_alpha.items():
            theirs = library[method](float(alpha))
            theirs.q_hat = torch.tensor(threshold, dtype=torch.float64)
            ours = scores(probs, method) <= threshold
            top = nn.functional.one_hot(probs.argmax(dim=1), 10).bool()
            ours |= top & ~ours.any(dim=1, keepdim=True)  # theirs: the top class in a set that would be empty
            assert torch.equal(ours, theirs.conformal(probs.log()) > 0)


@pytest.mark.parametrize(
    ("probs", "labels", "message"),
    [
        (torch.full((5, 10), 0.1), torch.zeros(5), "integer labels"),
        (torch.full((5,), 0.2), torch.zeros(5, dtype=torch.int64), "float"),
        (torch.full((5, 10), math.nan), torch.zeros(5, dtype=torch.int64), "finite"),
    ],
)
def test_bad_inputs_are_refused(probs: torch.Tensor, labels: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        calibrate(probs, labels)


def test_an_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown conformal method 'topk'"):
        prediction_sets(torch.full((2, 10), 0.1), "topk", 0.5)


def section(seed: int = 5) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """A report's ``conformal`` section (T = 1.5) of 400 calibration and 300 test draws, with the test draws."""
    generator = torch.Generator().manual_seed(seed)
    cal_probs, cal_labels = calibrated(400, generator)
    probs, labels = calibrated(300, generator)
    return {"temperature": 1.5} | conformal_report(cal_probs, cal_labels, probs, labels), probs, labels


def test_conformal_json_round_trip(tmp_path: Path) -> None:
    assert read_conformal(tmp_path) is None  # a run made before the file
    conformal, probs, _ = section()
    write_conformal(tmp_path, conformal)
    record = read_conformal(tmp_path)
    assert record["calibration_images"] == 400 and record["temperature"] == 1.5
    assert record["calibrated_on"] == "odd positions of the validation split"
    assert record["raps"] == {"lambda": RAPS_LAMBDA, "k_reg": RAPS_K_REG}
    for method, by_alpha in conformal["methods"].items():
        assert record["thresholds"][method] == {alpha: r["threshold"] for alpha, r in by_alpha.items()}
    # The saved thresholds give the report's sets again.
    threshold = record["thresholds"]["raps"]["0.1"]
    size = prediction_sets(probs, "raps", threshold).sum(dim=1).double().mean().item()
    assert size == conformal["methods"]["raps"]["0.1"]["mean_size"]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda r: r["thresholds"]["lac"].update({"0.1": "0.3"}), "a threshold of 'lac' is not a number"),
        (lambda r: r["thresholds"].update({"topk": {"0.1": 2}}), "thresholds of 'topk'"),
        (lambda r: r.pop("calibration_images"), "calibration_images is None"),
        (lambda r: r.update(temperature=-1), "temperature is -1"),
        (lambda r: r.update(raps={"lambda": 0.01}), "its raps is"),
    ],
)
def test_a_damaged_conformal_json_is_refused(tmp_path: Path, change, problem: str) -> None:
    write_conformal(tmp_path, section()[0])
    record = json.loads((tmp_path / CONFORMAL_FILE).read_text())
    change(record)
    (tmp_path / CONFORMAL_FILE).write_text(json.dumps(record) + "\n")
    with pytest.raises(DamagedFileError, match=problem):
        read_conformal(tmp_path)
    (tmp_path / CONFORMAL_FILE).write_text('{"thresholds": ')
    with pytest.raises(DamagedFileError, match="cut short"):
        read_conformal(tmp_path)


def test_report_section_and_scalars(tmp_path: Path) -> None:
    """The section in report.md and the scalars; a report without it (report.json made before it)
    still renders, with neither."""
    conformal, probs, labels = section()
    report = classification_report(probs.argmax(dim=1), labels, [f"class {i}" for i in range(10)])
    assert "Conformal" not in report_markdown(report)
    assert not any("conformal" in key for key in report_scalars(report))
    report["conformal"] = conformal
    write_report(report, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "## Conformal prediction sets" in text and "softmax(logits / T), T = 1.5000" in text
    aps = conformal["methods"]["aps"]["0.05"]
    lowest = min(c for c in aps["class_coverage"] if c is not None)
    assert f"| APS | 0.05 | 95 | {aps['threshold']:.6f} | {100 * aps['coverage']:.2f} |" in text
    assert f"| {100 * aps['empty']:.2f} | {100 * lowest:.2f} (class {aps['class_coverage'].index(lowest)}) |" in text
    assert json.loads((tmp_path / "report.json").read_text())["conformal"] == conformal
    scalars = report_scalars(report)
    assert scalars["test/conformal/coverage_aps_95"] == aps["coverage"]
    assert scalars["test/conformal/set_size_lac_90"] == conformal["methods"]["lac"]["0.1"]["mean_size"]
    assert sum("conformal" in key for key in scalars) == 12
