"""The run report agrees with scikit-learn, and its files and figures are written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sklearn.metrics import classification_report as sk_report
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from fmnist_lightning.data import load_dataset
from fmnist_lightning.evaluation.report import classification_report, report_markdown, write_report
from fmnist_lightning.evaluation.runs import build_datamodule, load_trained
from fmnist_lightning.run_folder import RunFolder

CLASS_NAMES = load_dataset().class_names


def assert_matches_sklearn(report: dict, preds: torch.Tensor, targets: torch.Tensor) -> None:
    expected = sk_report(targets, preds, labels=list(range(10)), output_dict=True, zero_division=0)
    for c in report["per_class"]:
        sk = expected[str(c["label"])]
        assert c["precision"] == pytest.approx(sk["precision"], abs=1e-6)
        assert c["recall"] == pytest.approx(sk["recall"], abs=1e-6)
        assert c["f1"] == pytest.approx(sk["f1-score"], abs=1e-6)
        assert c["support"] == sk["support"]
    for ours, theirs in (("macro_avg", "macro avg"), ("weighted_avg", "weighted avg")):
        for metric, sk_metric in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
            assert report[ours][metric] == pytest.approx(expected[theirs][sk_metric], abs=1e-6)
    assert report["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-6)
    assert report["confusion_matrix"] == sk_confusion_matrix(targets, preds, labels=list(range(10))).tolist()


def test_report_of_a_real_run_matches_sklearn(trained_run: Path, data_root: Path) -> None:
    """The report written during training, checked against predictions made here by hand,
    with the saved network on the test set."""
    model = load_trained(trained_run)
    datamodule = build_datamodule(model.config, str(data_root))
    datamodule.setup("test")
    images, targets = datamodule.data_test.tensors
    with torch.inference_mode():
        preds = torch.cat(
            [model.net(datamodule.preprocess(images[i : i + 1000])).argmax(1) for i in range(0, 10_000, 1000)]
        )
    report = json.loads((trained_run / "report.json").read_text())
    assert_matches_sklearn(report, preds, targets)
    assert sum(map(sum, report["confusion_matrix"])) == 10_000 == report["num_samples"]
    for c in report["per_class"]:
        assert c["errors"] == c["support"] - report["confusion_matrix"][c["label"]][c["label"]]
        assert c["accuracy"] == pytest.approx(c["recall"])


def test_class_never_predicted_and_most_confused() -> None:
    targets = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    preds = torch.tensor([0, 1, 1, 1, 1, 0, 0, 0, 2, 1])  # class 3 is never predicted right
    report = classification_report(preds, targets, CLASS_NAMES, top_k=3)
    assert_matches_sklearn(report, preds, targets)
    assert [(p["true"], p["predicted"], p["count"]) for p in report["most_confused"]] == [
        (2, 0, 3),
        (0, 1, 2),
        (3, 1, 1),
    ]
    assert report["most_confused"][0]["true_name"] == "Pullover"
    assert report["per_class"][3]["precision"] == 0.0


def test_markdown_has_names_and_tables(tmp_path: Path) -> None:
    targets = torch.arange(10).repeat(3)
    preds = targets.clone()
    preds[:4] = 6
    report = classification_report(preds, targets, CLASS_NAMES, loss=0.5)
    text = report_markdown(report)
    for name in CLASS_NAMES:
        assert f"| {name} |" in text
    assert "accuracy **86.67 %** (95 % Wilson interval 70.32–94.69 %), loss 0.5000" in text  # scipy: binomtest(26, 30)
    assert "| 1 | T-shirt/top (0) | Shirt (6) | 1 |" in text
    write_report(report, tmp_path / "r")
    assert json.loads((tmp_path / "r" / "report.json").read_text())["accuracy"] == pytest.approx(26 / 30)
    assert (tmp_path / "r" / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_history_without_any_logger(unlogged_run) -> None:
    """history.csv and curves.png are the run's own: they need no logger's files."""
    tmp_path, metrics = unlogged_run
    history = RunFolder(tmp_path).read_history()
    assert sorted(history["train/loss"]) == [1, 2] and sorted(history["val/acc"]) == [1, 2]
    assert history["val/acc_best"][2] == pytest.approx(metrics["val/acc_best"])
    assert history["train/loss"][2] == pytest.approx(metrics["train/loss"])
    assert (tmp_path / "curves.png").is_file()


def test_run_folder_has_the_report(trained_run: Path) -> None:
    for name in ("report.json", "report.md", "confusion_matrix.png", "curves.png", "net.pt", "metrics.json"):
        assert (trained_run / name).is_file(), name
    history = RunFolder(trained_run).read_history()
    assert sorted(history["train/acc"]) == [1, 2] and sorted(history["val/loss"]) == [1, 2]
    assert "Shirt" in (trained_run / "report.md").read_text()
