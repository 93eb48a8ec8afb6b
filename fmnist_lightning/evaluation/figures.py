"""The report's figures, drawn with matplotlib's object-oriented API (no display needed)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def confusion_matrix_figure(confusion_matrix: Sequence[Sequence[int]], class_names: Sequence[str]) -> Figure:
    """A confusion-matrix heat map with counts in the cells and class names on the axes.

    Args:
        confusion_matrix: Counts, rows = true class, columns = predicted class.
        class_names: Names in label order.
    """
    counts = np.asarray(confusion_matrix)
    # Fixed margins (room for the rotated class names) instead of a constrained layout, which
    # measures every label again at each draw.
    fig = Figure(figsize=(8, 7))
    fig.subplots_adjust(left=0.17, right=0.97, bottom=0.17, top=0.94)
    ax = fig.add_subplot()
    image = ax.imshow(counts, cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.8, label="images", pad=0.03)
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    threshold = counts.max() / 2
    for i in ticks:
        for j in ticks:
            value = int(counts[i, j])
            ax.text(
                j, i, str(value), ha="center", va="center", fontsize=8, color="white" if value > threshold else "black"
            )
    ax.set_title(f"Confusion matrix ({int(counts.sum()):,} images)")
    return fig


def misclassified_figure(
    images: torch.Tensor,
    targets: torch.Tensor,
    preds: torch.Tensor,
    class_names: Sequence[str],
    max_images: int = 32,
) -> Figure:
    """A grid of misclassified images, each titled "true → predicted".

    Args:
        images: ``(N, 28, 28)`` or ``(N, 1, H, W)``, uint8 or float (as the network saw them,
            scaled per image), in the same order as the labels.
        targets: True labels, int64 ``(N,)``.
        preds: Predicted labels, int64 ``(N,)``.
        class_names: Names in label order.
        max_images: At most this many images, the first ones in order.
    """
    wrong = (preds != targets).nonzero().flatten()[:max_images]
    columns = 8
    rows = max(1, math.ceil(len(wrong) / columns))
    height = 2.3 * rows
    fig = Figure(figsize=(2 * columns, height))
    # Fixed margins (in inches, for the two-line titles and the heading) instead of a
    # constrained layout, which measures every title again at each draw.
    axes = fig.subplots(rows, columns, squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=1 - 0.8 / height, wspace=0.1, hspace=0.5)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, i in zip(axes.flat, wrong.tolist(), strict=False):
        scale = {"vmin": 0, "vmax": 255} if images.dtype == torch.uint8 else {}  # floats: scaled per image
        ax.imshow(images[i].reshape(images.shape[-2:]).float().numpy(), cmap="gray", **scale)
        ax.set_title(f"{class_names[targets[i]]}\n→ {class_names[preds[i]]}", fontsize=9)
    fig.suptitle(f"Misclassified test images: true → predicted (first {len(wrong)})", y=1 - 0.08 / height, va="top")
    return fig


def curves_figure(history: dict[str, dict[int, float]]) -> Figure:
    """Train and validation loss and accuracy per epoch, side by side (as recipe 004 plots).

    Args:
        history: ``{metric: {epoch: value}}``, from
            ``fmnist_lightning.training.history.read_history``.
    """
    fig = Figure(figsize=(11, 4))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.88, wspace=0.22)  # fixed margins, as above
    for ax, metric, label in zip(fig.subplots(1, 2), ("loss", "acc"), ("cross-entropy loss", "accuracy"), strict=True):
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


def figure_to_array(figure: Figure) -> np.ndarray:
    """Renders a matplotlib figure to uint8 RGB ``(H, W, 3)``, the image format every
    logger's ``log_image`` takes."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
