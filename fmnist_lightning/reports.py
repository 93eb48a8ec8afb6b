"""The report of a run: per-class metrics, confusion matrix, most confused pairs, and figures.

Everything the recipes report beyond one accuracy figure (``shared/recipes/``): per-class
precision/recall/F1 (000, 001), per-class accuracy and error counts and the top-5 confused
pairs (002), a confusion matrix (001), and training curves (004). Metrics are computed with
torchmetrics; figures with matplotlib's object-oriented API, which needs no display.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

from fmnist_lightning.data.idx import CLASS_NAMES


def classification_report(
    preds: torch.Tensor,
    targets: torch.Tensor,
    class_names: Sequence[str] = CLASS_NAMES,
    loss: float | None = None,
    top_k: int = 5,
) -> dict[str, Any]:
    """Computes the report of a set of predictions.

    Args:
        preds: Predicted labels, int64 ``(N,)``.
        targets: True labels, int64 ``(N,)``.
        class_names: Names in label order.
        loss: Mean cross-entropy over the same images, recorded as given.
        top_k: How many of the most confused (true, predicted) pairs to list.

    Returns:
        A JSON-ready dict: ``num_samples``; ``accuracy`` (fraction) and ``loss``;
        ``per_class``, one entry per class with ``precision``, ``recall``, ``f1``,
        ``support``, ``accuracy`` (the fraction of that class's images classified correctly,
        equal to its recall, as recipe 002 reports it) and ``errors`` (its misclassified
        images); ``macro_avg`` (mean over all classes) and ``weighted_avg`` (weighted by
        support) of precision, recall and F1, as scikit-learn defines them;
        ``confusion_matrix`` as counts, rows = true class, columns = predicted class; and
        ``most_confused``, the ``top_k`` largest off-diagonal cells, largest first.
        A class that is never predicted gets precision 0, as in scikit-learn.
    """
    num_classes = len(class_names)
    args = dict(num_classes=num_classes)
    confmat = multiclass_confusion_matrix(preds, targets, **args)
    per_metric = {
        name: fn(preds, targets, average=None, **args).tolist()
        for name, fn in (("precision", multiclass_precision), ("recall", multiclass_recall), ("f1", multiclass_f1_score))
    }
    support = confmat.sum(dim=1)
    correct = confmat.diag()
    per_class = [
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
        for i in range(num_classes)
    ]
    # Averaged over all classes, as scikit-learn does; torchmetrics' "macro" would skip
    # classes absent from both predictions and targets.
    weights = support.double() / support.sum()
    averages = {
        "macro": {name: sum(values) / num_classes for name, values in per_metric.items()},
        "weighted": {name: float(torch.tensor(values, dtype=torch.float64) @ weights) for name, values in per_metric.items()},
    }
    off_diagonal = confmat.clone()
    off_diagonal.fill_diagonal_(-1)
    counts, flat = off_diagonal.flatten().sort(descending=True, stable=True)  # ties in label order
    most_confused = [
        {
            "true": int(i // num_classes),
            "true_name": class_names[int(i // num_classes)],
            "predicted": int(i % num_classes),
            "predicted_name": class_names[int(i % num_classes)],
            "count": int(c),
        }
        for c, i in zip(counts[:top_k], flat[:top_k])
        if c > 0
    ]
    return {
        "num_samples": int(targets.numel()),
        "accuracy": float(multiclass_accuracy(preds, targets, average="micro", **args)),
        "loss": loss,
        "class_names": list(class_names),
        "per_class": per_class,
        "macro_avg": averages["macro"],
        "weighted_avg": averages["weighted"],
        "confusion_matrix": confmat.tolist(),
        "most_confused": most_confused,
    }


def report_markdown(report: dict[str, Any], title: str = "Test report") -> str:
    """Renders :func:`classification_report`'s dict as Markdown tables with class names."""
    loss = f", loss {report['loss']:.4f}" if report.get("loss") is not None else ""
    lines = [
        f"# {title}",
        "",
        f"{report['num_samples']:,} images: accuracy **{100 * report['accuracy']:.2f} %**{loss}.",
        "",
        "## Per class",
        "",
        "| label | class | precision | recall | F1 | accuracy (%) | errors | support |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in report["per_class"]:
        lines.append(
            f"| {c['label']} | {c['name']} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} "
            f"| {100 * c['accuracy']:.2f} | {c['errors']} | {c['support']} |"
        )
    for average in ("macro", "weighted"):
        a = report[f"{average}_avg"]
        lines.append(f"| | *{average} avg* | {a['precision']:.4f} | {a['recall']:.4f} | {a['f1']:.4f} | | | |")
    names = report["class_names"]
    lines += [
        "",
        "## Most confused pairs",
        "",
        "| rank | true class | predicted as | count |",
        "|---:|---|---|---:|",
    ]
    lines += [
        f"| {rank} | {p['true_name']} ({p['true']}) | {p['predicted_name']} ({p['predicted']}) | {p['count']} |"
        for rank, p in enumerate(report["most_confused"], start=1)
    ]
    lines += [
        "",
        "## Confusion matrix",
        "",
        "Rows: true class; columns: predicted class (by label).",
        "",
        "| true \\ predicted | " + " | ".join(str(i) for i in range(len(names))) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for i, row in enumerate(report["confusion_matrix"]):
        lines.append(f"| {i} {names[i]} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def confusion_matrix_figure(confusion_matrix: Sequence[Sequence[int]], class_names: Sequence[str] = CLASS_NAMES) -> Figure:
    """A confusion-matrix heat map with counts in the cells and class names on the axes.

    Args:
        confusion_matrix: Counts, rows = true class, columns = predicted class.
        class_names: Names in label order.
    """
    counts = np.asarray(confusion_matrix)
    fig = Figure(figsize=(8, 7), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(counts, cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.8, label="images")
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    threshold = counts.max() / 2
    for i in ticks:
        for j in ticks:
            value = int(counts[i, j])
            ax.text(j, i, str(value), ha="center", va="center", fontsize=8,
                    color="white" if value > threshold else "black")
    ax.set_title(f"Confusion matrix ({int(counts.sum()):,} images)")
    return fig


def misclassified_figure(
    images: torch.Tensor,
    targets: torch.Tensor,
    preds: torch.Tensor,
    class_names: Sequence[str] = CLASS_NAMES,
    max_images: int = 32,
) -> Figure:
    """A grid of misclassified images, each titled "true → predicted".

    Args:
        images: uint8 ``(N, 28, 28)`` or ``(N, 1, H, W)``, in the same order as the labels.
        targets: True labels, int64 ``(N,)``.
        preds: Predicted labels, int64 ``(N,)``.
        class_names: Names in label order.
        max_images: At most this many images, the first ones in order.
    """
    wrong = (preds != targets).nonzero().flatten()[:max_images]
    columns = 8
    rows = max(1, math.ceil(len(wrong) / columns))
    fig = Figure(figsize=(2 * columns, 2.3 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, i in zip(axes.flat, wrong.tolist()):
        ax.imshow(images[i].reshape(images.shape[-2:]).numpy(), cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{class_names[targets[i]]}\n→ {class_names[preds[i]]}", fontsize=9)
    fig.suptitle(f"Misclassified test images: true → predicted (first {len(wrong)})")
    return fig


def read_history(run_dir: str | Path) -> dict[str, dict[int, float]]:
    """Reads the per-epoch metrics that a run's logger wrote.

    Looks for TensorBoard events in ``run_dir/tensorboard/``, else ``run_dir/csv/metrics.csv``.

    Returns:
        ``{tag: {epoch: value}}`` for the ``train/*`` and ``val/*`` tags, epochs counted
        from 1; empty when the run had no logger.
    """
    run_dir = Path(run_dir)
    rows: list[tuple[str, int, float]] = []  # (tag, step, value)
    epoch_at_step: dict[int, int] = {}
    if list((run_dir / "tensorboard").glob("events.out.tfevents.*")):
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        logging.getLogger("tensorboard").setLevel(logging.WARNING)  # per-file progress lines

        accumulator = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            for event in accumulator.Scalars(tag):
                if tag == "epoch":
                    epoch_at_step[event.step] = int(event.value)
                else:
                    rows.append((tag, event.step, event.value))
    elif (run_dir / "csv" / "metrics.csv").is_file():
        with open(run_dir / "csv" / "metrics.csv", newline="") as f:
            for row in csv.DictReader(f):
                step = int(row["step"])
                if row.get("epoch"):
                    epoch_at_step[step] = int(float(row["epoch"]))
                rows += [(tag, step, float(v)) for tag, v in row.items() if tag not in ("epoch", "step") and v]
    history: dict[str, dict[int, float]] = {}
    for tag, step, value in rows:
        if tag.startswith(("train/", "val/")) and step in epoch_at_step:
            history.setdefault(tag, {})[epoch_at_step[step] + 1] = value
    return history


def curves_figure(history: dict[str, dict[int, float]]) -> Figure:
    """Train and validation loss and accuracy per epoch, side by side (as recipe 004 plots).

    Args:
        history: From :func:`read_history`.
    """
    fig = Figure(figsize=(11, 4), layout="constrained")
    for ax, metric, label in zip(fig.subplots(1, 2), ("loss", "acc"), ("cross-entropy loss", "accuracy")):
        for stage, style in (("train", "o-"), ("val", "s-")):
            series = history.get(f"{stage}/{metric}", {})
            if series:
                epochs = sorted(series)
                ax.plot(epochs, [series[e] for e in epochs], style, label=stage)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Training curves")
    return fig


def write_report(report: dict[str, Any], folder: str | Path, title: str = "Test report") -> None:
    """Writes ``report.json``, ``report.md`` and ``confusion_matrix.png`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (folder / "report.md").write_text(report_markdown(report, title))
    confusion_matrix_figure(report["confusion_matrix"], report["class_names"]).savefig(folder / "confusion_matrix.png", dpi=110)
