"""The report's accuracy interval and calibration, recomputed independently from the run's
predictions.npz with scikit-learn, scipy and NumPy; temperature scaling changes no prediction,
and the commands that give probabilities apply it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import optimize, special, stats
from sklearn.metrics import accuracy_score, brier_score_loss, log_loss

from fmnist_lightning.errors import DamagedFileError, RunError
from fmnist_lightning.evaluation.calibration import (
    N_BINS,
    TEMPERATURE_FILE,
    calibration_metrics,
    fit_temperature,
    read_temperature,
)
from fmnist_lightning.evaluation.predictions import read_predictions
from fmnist_lightning.evaluation.runs import build_datamodule, load_trained


def numpy_calibration_errors(probs: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """ECE and MCE over N_BINS equal-width bins of the top-1 confidence, written from Guo et
    al. (2017), eq. 3 and 5, with NumPy alone (bin i holds [i/n, (i+1)/n); 1.0 in the last)."""
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    index = np.minimum((confidence * N_BINS).astype(int), N_BINS - 1)
    gaps = [
        (np.sum(index == i), abs(correct[index == i].mean() - confidence[index == i].mean()))
        for i in range(N_BINS)
        if np.any(index == i)
    ]
    return sum(n * gap for n, gap in gaps) / len(labels), max(gap for _, gap in gaps)


def test_report_is_reproduced_from_the_predictions_file(trained_run: Path, data_root: Path) -> None:
    saved = read_predictions(trained_run)
    report = json.loads((trained_run / "report.json").read_text())
    datamodule = build_datamodule(load_trained(trained_run).config, str(data_root))
    datamodule.setup("test")
    assert np.array_equal(saved.label, datamodule.data_test.tensors[1].numpy())  # the test set, in order
    assert np.array_equal(saved.pred, saved.logits.argmax(axis=1))
    assert saved.class_names == tuple(report["class_names"])

    correct = int((saved.pred == saved.label).sum())
    assert report["accuracy"] == pytest.approx(accuracy_score(saved.label, saved.pred))
    interval = stats.binomtest(correct, len(saved.label)).proportion_ci(confidence_level=0.95, method="wilson")
    assert report["accuracy_ci95"] == pytest.approx([interval.low, interval.high], abs=1e-9)

    calibration = report["calibration"]
    assert calibration["temperature"] == pytest.approx(saved.temperature) == read_temperature(trained_run)
    for key, temperature in (("before", 1.0), ("after", saved.temperature)):
        probs = special.softmax(saved.logits.astype(np.float64) / temperature, axis=1)
        assert probs.argmax(axis=1).tolist() == saved.pred.tolist()  # temperature scaling changes no prediction
        ece, mce = numpy_calibration_errors(probs, saved.label)
        ours = calibration[key]
        assert ours["nll"] == pytest.approx(log_loss(saved.label, probs, labels=range(10)), rel=1e-6)
        assert ours["brier"] == pytest.approx(brier_score_loss(saved.label, probs, labels=range(10)), rel=1e-6)
        assert ours["ece"] == pytest.approx(ece, abs=1e-6)
        assert ours["mce"] == pytest.approx(mce, abs=1e-6)
        assert sum(b["count"] for b in calibration[f"bins_{key}"]) == len(saved.label)
    # Fitted on the validation split, the temperature lowers the test NLL of this short run.
    assert calibration["after"]["nll"] < calibration["before"]["nll"]
    text = (trained_run / "report.md").read_text()
    assert "95 % Wilson interval" in text and f"T = {saved.temperature:.4f}" in text
    assert (trained_run / "reliability.png").stat().st_size > 10_000


def test_confidences_of_one_are_in_the_last_bin() -> None:
    """Logits with margins of 20 and more give a top probability that is 1 in float32 (and in
    float64 from a margin of about 37): ECE and MCE are still over the 15 bins of Guo et al.,
    as NumPy computes them."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (1000,), generator=generator)
    margins = torch.linspace(2, 40, 1000)
    guesses = torch.where(torch.rand(1000, generator=generator) < 0.9, labels, (labels + 1) % 10)
    logits = torch.nn.functional.one_hot(guesses, 10) * margins[:, None]
    ours = calibration_metrics(logits, labels)
    ece, mce = numpy_calibration_errors(special.softmax(logits.double().numpy(), axis=1), labels.numpy())
    assert (ours["ece"], ours["mce"]) == (pytest.approx(ece, abs=1e-9), pytest.approx(mce, abs=1e-9))


def test_fitted_temperature_minimises_the_nll() -> None:
    """The L-BFGS fit against scipy's bounded scalar minimiser of the same NLL."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (2000,), generator=generator)
    guesses = torch.where(
        torch.rand(2000, generator=generator) < 0.7, labels, torch.randint(0, 10, (2000,), generator=generator)
    )
    # Overconfident: about 73 % right, each with a probability near 1, so the fitted T is above 1.
    logits = torch.randn(2000, 10, generator=generator) + 8 * torch.nn.functional.one_hot(guesses, 10)
    temperature = fit_temperature(logits, labels)
    z, y = logits.double().numpy(), labels.numpy()
    expected = optimize.minimize_scalar(
        lambda t: log_loss(y, special.softmax(z / t, axis=1), labels=range(10)), bounds=(0.05, 20), method="bounded"
    ).x
    assert temperature > 1
    assert temperature == pytest.approx(expected, rel=1e-3)
    assert fit_temperature(logits, labels) == temperature  # deterministic
    with pytest.raises(ValueError, match="finite"):
        fit_temperature(torch.full((2, 10), float("nan")), labels[:2])


def test_predictions_are_temperature_scaled(trained_run: Path) -> None:
    model = load_trained(trained_run)
    assert model.calibrated and model.temperature == read_temperature(trained_run)
    assert load_trained(trained_run, "last").temperature is None  # fitted for the tested weights only
    images = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8)
    with torch.inference_mode():
        logits = model.net(model.preprocess(images))
    probs = model.predict_proba(images)
    torch.testing.assert_close(probs, (logits / model.temperature).softmax(dim=1))
    assert probs.argmax(1).tolist() == logits.argmax(1).tolist()


@pytest.mark.parametrize(
    ("content", "problem"),
    [("{}\n", "its temperature is None"), ('{"temperature": -1}\n', "not a positive number"), ("{", "cut short")],
)
def test_damaged_temperature_is_refused(tmp_path: Path, content: str, problem: str) -> None:
    (tmp_path / TEMPERATURE_FILE).write_text(content)
    with pytest.raises(DamagedFileError, match=problem):
        read_temperature(tmp_path)


def test_a_folder_without_predictions_says_how_to_make_them(tmp_path: Path) -> None:
    with pytest.raises(RunError, match=r"fmnist-evaluate run_dir="):
        read_predictions(tmp_path)
    (tmp_path / "predictions.npz").write_bytes(b"not a zip")
    with pytest.raises(DamagedFileError, match="cannot be read"):
        read_predictions(tmp_path)
