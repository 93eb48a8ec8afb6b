"""The test report of a run: per-class metrics (torchmetrics), confusion matrix, most confused
pairs; everything the recipes report beyond one accuracy figure (docs/models.md, "Recipes")."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

from fmnist_lightning.artifacts import atomic_file, write_atomically
from fmnist_lightning.evaluation.figures import (
    confusion_matrix_figure,
    figure_to_array,
    reliability_figure,
    risk_coverage_figure,
)
from fmnist_lightning.evaluation.statistics import wilson_interval

#: Resolution of the report's figures, in dots per inch.
FIGURE_DPI = 110


def classification_report(
    preds: torch.Tensor, targets: torch.Tensor, class_names: Sequence[str], loss: float | None = None, top_k: int = 5
) -> dict[str, Any]:
    """The report of int64 ``(N,)`` predicted and true labels (``loss``, their mean cross-entropy, as given).

    Returns:
        A JSON-ready dict: ``accuracy`` (fraction) with its 95 % Wilson interval ``accuracy_ci95``;
        ``per_class`` precision, recall, F1, support, accuracy (= recall, as recipe 002 reports it)
        and errors; their ``macro_avg`` and support-``weighted_avg`` as scikit-learn defines them (a
        class never predicted has precision 0); ``confusion_matrix`` (counts, rows = true class);
        ``most_confused``, the ``top_k`` largest off-diagonal cells, largest first.
    """
    num_classes = len(class_names)
    confmat = multiclass_confusion_matrix(preds, targets, num_classes=num_classes)
    per_metric = _per_metric(preds, targets, num_classes)
    averages = _averages(per_metric, confmat.sum(dim=1))
    return {
        "num_samples": int(targets.numel()),
        "accuracy": float(multiclass_accuracy(preds, targets, average="micro", num_classes=num_classes)),
        "accuracy_ci95": list(wilson_interval(int(confmat.diag().sum()), int(targets.numel()))),
        "loss": loss,
        "class_names": list(class_names),
        "per_class": _per_class(per_metric, confmat, class_names),
        "macro_avg": averages["macro"],
        "weighted_avg": averages["weighted"],
        "confusion_matrix": confmat.tolist(),
        "most_confused": _most_confused(confmat, class_names, top_k),
    }


def _per_metric(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> dict[str, list[float]]:
    """``{"precision": [...], "recall": [...], "f1": [...]}``, one value per class in label order."""
    fns = {"precision": multiclass_precision, "recall": multiclass_recall, "f1": multiclass_f1_score}
    return {name: fn(preds, targets, average=None, num_classes=num_classes).tolist() for name, fn in fns.items()}


def _per_class(
    per_metric: dict[str, list[float]], confmat: torch.Tensor, class_names: Sequence[str]
) -> list[dict[str, Any]]:
    """The report's ``per_class`` entries (accuracy 0.0 for a class without images)."""
    support = confmat.sum(dim=1)
    correct = confmat.diag()
    return [
        {
            "label": i,
            "name": class_names[i],
            "precision": per_metric["precision"][i],
            "recall": per_metric["recall"][i],
            "f1": per_metric["f1"][i],
            "support": int(support[i]),
            "accuracy": float(correct[i] / support[i]) if support[i] else 0.0,
            "errors": int(support[i] - correct[i]),
        }
        for i in range(len(class_names))
    ]


def _averages(per_metric: dict[str, list[float]], support: torch.Tensor) -> dict[str, dict[str, float]]:
    """``{"macro": ..., "weighted": ...}`` averages of ``_per_metric``'s values, weighted by ``support``."""
    # Over all classes, as scikit-learn; torchmetrics' "macro" skips classes absent from both.
    weights = support.double() / support.sum()
    return {
        "macro": {name: sum(values) / len(support) for name, values in per_metric.items()},
        "weighted": {
            name: float(torch.tensor(values, dtype=torch.float64) @ weights) for name, values in per_metric.items()
        },
    }


def _most_confused(confmat: torch.Tensor, class_names: Sequence[str], top_k: int) -> list[dict[str, Any]]:
    """The ``top_k`` largest nonzero off-diagonal cells of ``confmat``, largest first, ties in label order."""
    num_classes = len(class_names)
    off_diagonal = confmat.clone()
    off_diagonal.fill_diagonal_(-1)
    counts, flat = off_diagonal.flatten().sort(descending=True, stable=True)  # ties in label order
    return [
        {
            "true": int(i // num_classes),
            "true_name": class_names[int(i // num_classes)],
            "predicted": int(i % num_classes),
            "predicted_name": class_names[int(i % num_classes)],
            "count": int(c),
        }
        for c, i in zip(counts[:top_k], flat[:top_k], strict=True)
        if c > 0
    ]


def calibration_markdown(calibration: dict[str, Any]) -> list[str]:
    """The report's calibration section (``calibration_report``'s dict) as Markdown lines."""
    temperature = calibration["temperature"]
    rows = [("network's probabilities (T = 1)", calibration["before"])]
    if temperature is not None:
        rows.append((f"temperature-scaled (T = {temperature:.4f})", calibration["after"]))
        fitted = (
            f"T fitted on {calibration['fitted_on']:,} validation images by minimising their NLL (Guo et al., 2017)."
        )
    else:
        fitted = "No temperature was fitted: the DataModule has no validation split."
    lines = _section(
        "Calibration",
        f"NLL in nats; Brier score in [0, 2]; ECE and MCE over {calibration['n_bins']} equal-width confidence bins, "
        f"in %. {fitted} Accuracy is the same either way. See reliability.png.",
        "",
        "| probabilities | NLL | Brier | ECE (%) | MCE (%) |",
        "|---|---:|---:|---:|---:|",
    )
    lines += [
        f"| {name} | {m['nll']:.4f} | {m['brier']:.4f} | {100 * m['ece']:.2f} | {100 * m['mce']:.2f} |"
        for name, m in rows
    ]
    return lines


def selective_markdown(selective: dict[str, Any]) -> list[str]:
    """The report's selective-classification section (``selective_report``'s dict, with the
    ``temperature`` its probabilities were scaled by, ``None`` or absent for none) as Markdown lines."""
    temperature = selective.get("temperature")
    scaled = f"softmax(logits / T), T = {temperature:.4f}" if temperature is not None else "softmax(logits)"
    rows = [
        ("AURC: mean risk over all coverages (Geifman & El-Yaniv, 2017)", selective["aurc"]),
        ("E-AURC: AURC above the oracle's, which ranks every error last (Geifman et al., 2019)", selective["eaurc"]),
    ]
    rows += [(f"risk at {100 * float(c):.0f} % coverage", r) for c, r in selective["risk_at_coverage"].items()]
    rows += [
        (f"accuracy abstaining on the least confident {100 * float(f):.0f} %", a)
        for f, a in selective["accuracy_abstaining"].items()
    ]
    lines = _section(
        "Selective classification",
        f"Confidence: the largest probability of {scaled}. Coverage: the fraction of test images kept, "
        "the most confident first; risk: the error rate among them. See risk_coverage.png.",
        "",
        "| measure | value (%) |",
        "|---|---:|",
    )
    lines += [f"| {name} | {100 * value:.2f} |" for name, value in rows]
    return lines


def conformal_markdown(conformal: dict[str, Any], class_names: Sequence[str]) -> list[str]:
    """The report's conformal section (``conformal.conformal_report``'s dict, with the ``temperature``
    its probabilities were scaled by, ``None`` or absent for none) as Markdown lines: one row per method
    and α, with the lowest coverage of a class and its name."""
    temperature = conformal.get("temperature")
    scaled = f"softmax(logits / T), T = {temperature:.4f}" if temperature is not None else "softmax(logits)"
    others = "; the temperature was fitted on the others" if temperature is not None else ""
    raps = conformal["raps"]
    lines = _section(
        "Conformal prediction sets",
        "Each test image gets a set of classes meant to hold its true class for at least a fraction 1 − α of "
        f"images (split conformal prediction), calibrated on {conformal['calibration_images']:,} validation images "
        f"({conformal['calibrated_on']}{others}) with {scaled}. Coverage: the "
        "fraction of test images whose set holds the true class; size: classes per set; empty: sets with no class "
        "(no class is plausible enough at this α; a miss). LAC: Sadinle et al. (2019); APS: Romano et al. (2020); "
        f"RAPS: Angelopoulos et al. (2021), λ = {raps['lambda']}, k_reg = {raps['k_reg']}; APS and RAPS randomized, "
        "with each image's U drawn from its probabilities (docs/uncertainty.md).",
        "",
        "| method | α | target (%) | q̂ | coverage (%) | 95 % interval (%) | mean size | empty (%) "
        "| lowest class coverage (%) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    )
    for method, by_alpha in conformal["methods"].items():
        for alpha, r in by_alpha.items():
            low, high = r["coverage_ci95"]
            lines.append(
                f"| {method.upper()} | {alpha} | {100 * (1 - float(alpha)):g} | {r['threshold']:.6f} "
                f"| {100 * r['coverage']:.2f} | {100 * low:.2f}–{100 * high:.2f} | {r['mean_size']:.2f} "
                f"| {100 * r['empty']:.2f} | {_lowest_class(r['class_coverage'], class_names)} |"
            )
    return lines


def _lowest_class(class_coverage: Sequence[float | None], class_names: Sequence[str]) -> str:
    """``"88.50 (Shirt)"``: the lowest coverage of a class with test images, and its name (``–`` if none)."""
    covered = [(c, name) for c, name in zip(class_coverage, class_names, strict=True) if c is not None]
    if not covered:
        return "–"
    coverage, name = min(covered, key=lambda pair: pair[0])
    return f"{100 * coverage:.2f} ({name})"


def report_markdown(report: dict[str, Any], title: str = "Test report") -> str:
    """Renders ``classification_report``'s dict (and its ``calibration``, ``selective`` and
    ``conformal``, if any) as Markdown."""
    loss = f", loss {report['loss']:.4f}" if report.get("loss") is not None else ""
    interval = ""
    if report.get("accuracy_ci95"):
        low, high = report["accuracy_ci95"]
        interval = f" (95 % Wilson interval {100 * low:.2f}–{100 * high:.2f} %)"
    lines = [
        f"# {title}",
        "",
        f"{report['num_samples']:,} images: accuracy **{100 * report['accuracy']:.2f} %**{interval}{loss}.",
    ]
    lines += _per_class_markdown(report)
    if report.get("calibration"):
        lines += calibration_markdown(report["calibration"])
    if report.get("selective"):
        lines += selective_markdown(report["selective"])
    if report.get("conformal"):
        lines += conformal_markdown(report["conformal"], report["class_names"])
    lines += _most_confused_markdown(report)
    lines += _confusion_matrix_markdown(report)
    return "\n".join(lines) + "\n"


def _per_class_markdown(report: dict[str, Any]) -> list[str]:
    """The report's per-class table, with the macro and weighted averages, as Markdown lines."""
    header = "| label | class | precision | recall | F1 | accuracy (%) | errors | support |"
    lines = _section("Per class", header, "|---:|---|---:|---:|---:|---:|---:|---:|")
    for c in report["per_class"]:
        lines.append(
            f"| {c['label']} | {c['name']} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} "
            f"| {100 * c['accuracy']:.2f} | {c['errors']} | {c['support']} |"
        )
    for average in ("macro", "weighted"):
        a = report[f"{average}_avg"]
        lines.append(f"| | *{average} avg* | {a['precision']:.4f} | {a['recall']:.4f} | {a['f1']:.4f} | | | |")
    return lines


def _most_confused_markdown(report: dict[str, Any]) -> list[str]:
    """The report's table of most confused pairs as Markdown lines."""
    lines = _section("Most confused pairs", "| rank | true class | predicted as | count |", "|---:|---|---|---:|")
    lines += [
        f"| {rank} | {p['true_name']} ({p['true']}) | {p['predicted_name']} ({p['predicted']}) | {p['count']} |"
        for rank, p in enumerate(report["most_confused"], start=1)
    ]
    return lines + _attribution_markdown(report.get("attribution"))


def _attribution_markdown(attribution: dict[str, Any] | None) -> list[str]:
    """The sentence naming the Grad-CAM figures (the report's ``attribution`` section), or none."""
    if not attribution:
        return []
    figures = {
        "confused_pairs_gradcam": "the mean map of each pair's errors (up to "
        f"{attribution['images_per_pair']} a pair), for the predicted class, in confused_pairs_gradcam.png",
        "misclassified_gradcam": "the maps of the first misclassified images, for the predicted and the true "
        "class, in misclassified_gradcam.png",
    }
    drawn = [text for name, text in figures.items() if name in attribution["figures"]]
    return [
        "",
        f"Grad-CAM (Selvaraju et al., 2017) at the network's layer {attribution['layer']}: " + "; ".join(drawn) + ".",
    ]


def _confusion_matrix_markdown(report: dict[str, Any]) -> list[str]:
    """The report's confusion matrix (counts, rows = true class) as Markdown lines."""
    names = report["class_names"]
    lines = _section(
        "Confusion matrix",
        "Rows: true class; columns: predicted class (by label).",
        "",
        "| true \\ predicted | " + " | ".join(str(i) for i in range(len(names))) + " |",
        "|---|" + "---:|" * len(names),
    )
    for i, row in enumerate(report["confusion_matrix"]):
        lines.append(f"| {i} {names[i]} | " + " | ".join(str(v) for v in row) + " |")
    return lines


def _section(title: str, *lines: str) -> list[str]:
    """A blank line, the heading ``## title``, a blank line and ``lines``."""
    return ["", f"## {title}", "", *lines]


def report_images(report: dict[str, Any]) -> dict[str, np.ndarray]:
    """The report's figures as uint8 RGB ``(H, W, 3)`` arrays: ``confusion_matrix`` and, with a
    calibration section, ``reliability``; with a selective-classification section, ``risk_coverage``."""
    figures = {"confusion_matrix": confusion_matrix_figure(report["confusion_matrix"], report["class_names"])}
    if report.get("calibration"):
        calibration = report["calibration"]
        figures["reliability"] = reliability_figure(calibration["bins_before"], calibration["bins_after"])
    if report.get("selective"):
        figures["risk_coverage"] = risk_coverage_figure(report["selective"])
    return figure_arrays(figures)


def figure_arrays(figures: dict[str, Figure]) -> dict[str, np.ndarray]:
    """Each figure drawn once at ``FIGURE_DPI``, as uint8 RGB ``(H, W, 3)`` arrays by name."""
    for figure in figures.values():
        figure.set_dpi(FIGURE_DPI)
    return {name: figure_to_array(figure) for name, figure in figures.items()}


def write_report(
    report: dict[str, Any], folder: str | Path, title: str = "Test report", images: dict[str, np.ndarray] | None = None
) -> None:
    """Writes ``report.json``, ``report.md``, ``confusion_matrix.png`` and, with a calibration section,
    ``reliability.png``, with a selective-classification section ``risk_coverage.png``, into ``folder``
    (created if missing); ``images``: ``report_images``, if drawn, with any other figures by name
    (``<name>.png``, e.g. the ``TestReport``'s Grad-CAM figures)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # Each file replaced whole (see atomic_file): the export and the server read report.json.
    write_atomically(folder / "report.json", json.dumps(report, indent=2) + "\n")
    write_atomically(folder / "report.md", report_markdown(report, title))
    for name, image in (images if images is not None else report_images(report)).items():
        with atomic_file(folder / f"{name}.png") as file:
            Image.fromarray(image).save(file, format="png")
