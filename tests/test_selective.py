"""Selective classification (fmnist_lightning.evaluation.selective): planted rankings whose
answer is known, AURC recomputed independently with NumPy, and the report's section, figure and
scalars, present only when the report has the section."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fmnist_lightning.evaluation.report import classification_report, report_markdown, write_report
from fmnist_lightning.evaluation.selective import selective_report
from fmnist_lightning.evaluation.summaries import report_scalars


def planted(confidence: np.ndarray, correct: np.ndarray, classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 ``(N, classes)`` probabilities whose largest is ``confidence`` (> 1 / classes), on
    class 0, and int64 labels: 0 where ``correct``, else 1."""
    n = len(confidence)
    rest = (1 - confidence) / (classes - 1)
    probs = np.repeat(rest[:, None], classes, axis=1)
    probs[:, 0] = confidence
    return torch.from_numpy(probs), torch.from_numpy(np.where(correct, 0, 1).astype(np.int64)).reshape(n)


def numpy_aurc(confidence: np.ndarray, wrong: np.ndarray) -> tuple[float, np.ndarray]:
    """AURC as torch-uncertainty 0.13 defines it, written with NumPy alone: r_k, the error rate of
    the k most confident images (k = 1..N, no ties), then the trapezoid mean over its N points,
    (1 / (N − 1)) Σ_{k<N} (r_k + r_{k+1}) / 2."""
    order = np.argsort(-confidence, kind="stable")
    risk = np.cumsum(wrong[order]) / np.arange(1, len(wrong) + 1)
    return float(np.mean((risk[:-1] + risk[1:]) / 2)), risk


def test_errors_ranked_last_give_no_excess() -> None:
    """90 % right, every error less confident than every correct image: the oracle's curve."""
    rng = np.random.default_rng(0)
    correct = np.arange(2000) < 1800
    confidence = np.where(correct, rng.uniform(0.6, 1.0, 2000), rng.uniform(0.2, 0.5, 2000))
    report = selective_report(*planted(confidence, correct))
    assert report["eaurc"] == pytest.approx(0, abs=1e-9)
    assert report["aurc"] == pytest.approx(report["aurc_oracle"])
    assert report["risk_at_coverage"]["0.8"] == 0  # coverage 0.8 ≤ accuracy 0.9
    assert report["accuracy_abstaining"]["0.1"] == 1.0  # 90 % kept
    assert report["risk_at_coverage"]["0.95"] == pytest.approx(100 / 1900)  # 1900 kept, 100 of them wrong
    assert report["curve"]["risk"] == report["curve"]["oracle_risk"]
    # The oracle's AURC, r_k = max(0, k − 1800) / k, and its closed form for large N (Geifman et al., 2019).
    _, oracle = numpy_aurc(np.where(correct, 1.0, 0.5), ~correct)
    assert report["aurc_oracle"] == pytest.approx(float(np.mean((oracle[:-1] + oracle[1:]) / 2)), abs=1e-6)
    assert report["aurc_oracle"] == pytest.approx(0.1 + 0.9 * math.log(0.9), abs=1e-3)


def test_random_confidences_give_the_error_rate() -> None:
    """Confidence independent of correctness: every coverage has the error rate on average."""
    rng = np.random.default_rng(1)
    correct = rng.random(20_000) < 0.7
    report = selective_report(*planted(rng.uniform(0.2, 1.0, 20_000), correct))
    error_rate = 1 - correct.mean()
    assert report["aurc"] == pytest.approx(error_rate, abs=0.01)
    assert report["risk_at_coverage"]["0.8"] == pytest.approx(error_rate, abs=0.015)
    assert report["eaurc"] == pytest.approx(report["aurc"] - report["aurc_oracle"])
    assert report["eaurc"] > 0.1


def test_abstaining_by_hand() -> None:
    """20 images, most confident first; the 3rd, 17th, 19th and 20th are wrong."""
    confidence = np.linspace(0.99, 0.5, 20)
    correct = ~np.isin(np.arange(1, 21), [3, 17, 19, 20])
    probs, targets = planted(confidence, correct)
    permutation = torch.randperm(20, generator=torch.Generator().manual_seed(0))  # order does not matter
    report = selective_report(probs[permutation], targets[permutation])
    assert report["accuracy_abstaining"] == pytest.approx({"0.05": 16 / 19, "0.1": 16 / 18, "0.2": 15 / 16})
    assert report["risk_at_coverage"] == pytest.approx({"0.8": 1 / 16, "0.95": 3 / 19})
    assert report["curve"]["coverage"][-1] == 1.0 and report["curve"]["risk"][-1] == pytest.approx(4 / 20)
    assert report["curve"]["risk"][14] == pytest.approx(1 / 3, abs=1e-6)  # coverage 0.15: the 3 most confident


def test_aurc_matches_numpy_and_the_library_on_probabilities() -> None:
    """Real-looking (N, C) softmax probabilities, on the library's metrics fed directly too."""
    generator = torch.Generator().manual_seed(2)
    targets = torch.randint(0, 10, (3000,), generator=generator)
    logits = torch.randn(3000, 10, generator=generator) * 2 + 3 * torch.nn.functional.one_hot(targets, 10)
    probs = logits.double().softmax(dim=1)
    report = selective_report(probs, targets)

    confidence, preds = probs.numpy().max(axis=1), probs.numpy().argmax(axis=1)
    aurc, risk = numpy_aurc(confidence, preds != targets.numpy())
    assert report["aurc"] == pytest.approx(aurc, abs=1e-6)
    assert report["aurc"] == pytest.approx(risk.mean(), abs=1e-3)  # the plain mean over k, nearly
    assert report["risk_at_coverage"]["0.8"] == pytest.approx(risk[2400 - 1])
    assert report["curve"]["risk"] == pytest.approx(risk[np.arange(30, 3001, 30) - 1], abs=1e-6)
    assert len(json.dumps(report)) < 8000  # a small report.json

    from torch_uncertainty.metrics.classification.risk_coverage import AURC, RiskAtxCov

    metric = AURC()
    metric.update(probs, targets)
    assert report["aurc"] == pytest.approx(float(metric.compute()), abs=1e-12)
    metric = RiskAtxCov(0.95)
    metric.update(probs, targets)
    assert report["risk_at_coverage"]["0.95"] == float(metric.compute())


def test_no_process_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only rank 0 writes the report: under DDP, a metric that gathered from the other ranks
    would wait forever (here, with no process group, it would raise)."""
    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    probs, targets = planted(np.linspace(0.9, 0.3, 50), np.arange(50) % 4 != 0)
    assert selective_report(probs, targets)["aurc"] > 0
    with pytest.raises(ValueError, match="finite"):
        selective_report(torch.full((4, 3), float("nan")), torch.zeros(4, dtype=torch.int64))


@pytest.mark.parametrize(
    ("probs", "targets", "message"),
    [
        (torch.ones(1, 10) / 10, torch.zeros(1, dtype=torch.int64), "N ≥ 2"),
        (torch.ones(5) / 5, torch.zeros(5, dtype=torch.int64), "float"),
        (torch.ones(5, 10, dtype=torch.int64), torch.zeros(5, dtype=torch.int64), "float"),
        (torch.ones(5, 10) / 10, torch.zeros(4, dtype=torch.int64), "integer labels"),
        (torch.ones(5, 10) / 10, torch.zeros(5), "integer labels"),
    ],
)
def test_bad_inputs_are_refused(probs: torch.Tensor, targets: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        selective_report(probs, targets)


def test_report_section_figure_and_scalars(tmp_path: Path) -> None:
    """The section in report.md, risk_coverage.png and the scalars; a report without the section
    (report.json made before it) still renders, with none of them."""
    probs, targets = planted(np.linspace(0.95, 0.3, 40), np.arange(40) % 5 != 4)
    report = classification_report(probs.argmax(dim=1), targets, [str(i) for i in range(10)])
    old = report_markdown(report)
    assert "Selective" not in old and not any("aurc" in k for k in report_scalars(report))
    report["selective"] = {"temperature": 1.5} | selective_report(probs, targets)
    write_report(report, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "## Selective classification" in text and "softmax(logits / T), T = 1.5000" in text
    assert f"| risk at 80 % coverage | {100 * report['selective']['risk_at_coverage']['0.8']:.2f} |" in text
    assert "| accuracy abstaining on the least confident 10 % |" in text
    assert json.loads((tmp_path / "report.json").read_text())["selective"]["aurc"] == report["selective"]["aurc"]
    assert (tmp_path / "risk_coverage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    scalars = report_scalars(report)
    assert scalars["test/aurc"] == report["selective"]["aurc"] and "test/eaurc" in scalars
    assert scalars["test/risk_at_95_coverage"] == report["selective"]["risk_at_coverage"]["0.95"]
