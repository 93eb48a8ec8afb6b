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
    """A confusion-matrix heat map of counts (rows = true class), class names on the axes."""
    counts = np.asarray(confusion_matrix)
    # Fixed margins: a constrained layout measures every label again at each draw.
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
            color = "white" if value > threshold else "black"
            ax.text(j, i, str(value), ha="center", va="center", fontsize=8, color=color)
    ax.set_title(f"Confusion matrix ({int(counts.sum()):,} images)")
    return fig


def misclassified_figure(
    images: torch.Tensor,
    targets: torch.Tensor,
    preds: torch.Tensor,
    class_names: Sequence[str],
    max_images: int = 32,
) -> Figure:
    """A grid of the first ``max_images`` misclassified images, each titled "true → predicted", from uint8 or
    float (scaled per image) ``(N, 28, 28)`` or ``(N, 1, H, W)`` images and int64 ``(N,)`` labels."""
    wrong = (preds != targets).nonzero().flatten()[:max_images]
    columns = 8
    rows = max(1, math.ceil(len(wrong) / columns))
    height = 2.3 * rows
    fig = Figure(figsize=(2 * columns, height))
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


def misclassified_gradcam_figure(
    images: torch.Tensor,
    predicted_maps: torch.Tensor,
    true_maps: torch.Tensor,
    targets: torch.Tensor,
    preds: torch.Tensor,
    class_names: Sequence[str],
    layer: str,
) -> Figure:
    """Grad-CAM (Selvaraju et al., ICCV 2017) of misclassified images, in ``misclassified_figure``'s
    order (8 images a row): per image, its map for the predicted class ("→ predicted") and for the true
    class ("true"), side by side, each drawn over the image with ``attribution.overlay``. The tiles
    are laid out in one array, drawn as one image (one axes: several times faster than an axes a tile).

    Args:
        images: float ``(K, S, S)`` on the [0, 1] scale (``Explainer.as_seen``).
        predicted_maps, true_maps: float ``(K, S, S)`` Grad-CAM maps for ``preds`` and ``targets``.
        targets, preds: int64 ``(K,)`` true and predicted labels.
        layer: The name of the layer the maps were taken at, for the title.
    """
    from fmnist_lightning.evaluation.attribution import overlay

    size = images.shape[-1]
    columns = 8
    rows = max(1, math.ceil(len(images) / columns))
    # Pixels of the array: between an image's two tiles, between images, above a row (its labels).
    inner, outer, label = max(1, size // 14), size // 3, size // 2
    width = columns * (2 * size + inner) + (columns - 1) * outer
    canvas = np.full((rows * (label + size), width, 3), 255, dtype=np.uint8)
    title_height = 0.4  # inches; and a margin of 1 % each side, for the labels of the outer tiles
    fig = Figure(figsize=(16, 0.98 * 16 * canvas.shape[0] / width + title_height))
    ax = fig.add_axes((0.01, 0, 0.98, 1 - title_height / fig.get_figheight()))
    ax.set_axis_off()
    for k in range(len(images)):
        row, column = divmod(k, columns)
        top, left = row * (label + size) + label, column * (2 * size + inner + outer)
        panels = ((predicted_maps[k], f"→ {class_names[preds[k]]}"), (true_maps[k], f"true {class_names[targets[k]]}"))
        for offset, (attribution, title) in enumerate(panels):
            x = left + offset * (size + inner)
            canvas[top : top + size, x : x + size] = overlay(images[k], attribution)
            ax.text(x + size / 2, top - 0.5, title, ha="center", va="bottom", fontsize=7)
    ax.imshow(canvas, interpolation="nearest")
    fig.suptitle(
        f"Grad-CAM of the misclassified test images at {layer}: for the predicted class (→) and the true class",
        y=1 - 0.08 / fig.get_figheight(),
        va="top",
        fontsize=10,
    )
    return fig


def confused_pairs_gradcam_figure(
    images: torch.Tensor, maps: torch.Tensor, titles: Sequence[str], layer: str
) -> Figure:
    """One panel per confused pair: its errors' mean Grad-CAM map (Selvaraju et al., ICCV 2017) for the
    predicted class, drawn over their mean image with ``attribution.overlay``.

    Args:
        images: float ``(P, S, S)`` mean images on the [0, 1] scale, P ≥ 1.
        maps: float ``(P, S, S)`` mean maps.
        titles: P titles, e.g. "Shirt → T-shirt/top (64 images)".
        layer: The name of the layer the maps were taken at, for the title.
    """
    from fmnist_lightning.evaluation.attribution import overlay

    fig = Figure(figsize=(2.2 * max(2, len(images)), 2.9))
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.72, wspace=0.08)
    axes = fig.subplots(1, len(images), squeeze=False)[0]
    for ax, image, attribution, title in zip(axes, images, maps, titles, strict=True):
        ax.imshow(overlay(image, attribution), interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(title, fontsize=8)
    fig.suptitle(
        f"Most confused pairs: mean Grad-CAM at {layer} for the predicted class, over their errors", fontsize=10
    )
    return fig


def curves_figure(history: dict[str, dict[int, float]]) -> Figure:
    """Train and validation loss and accuracy per epoch, side by side (as recipe 004 plots), from
    ``{metric: {epoch: value}}`` (``fmnist_lightning.training.loggers.read_history``)."""
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


def reliability_figure(bins: Sequence[dict], calibrated_bins: Sequence[dict] | None = None) -> Figure:
    """A reliability diagram (Guo et al., 2017, Fig. 1): each confidence bin's accuracy against its
    mean confidence, and the fraction of images in it, from ``reliability_bins``; a second panel
    for ``calibrated_bins`` (after temperature scaling) when given."""
    panels = [("before temperature scaling" if calibrated_bins else "", bins)]
    if calibrated_bins:
        panels.append(("after temperature scaling", calibrated_bins))
    # Fixed margins and one axes a panel: the figure is drawn for every test report.
    fig = Figure(figsize=(5 * len(panels), 4.6))
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.12, top=0.86, wspace=0.22)
    for ax, (title, panel) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        lower = [b["lower"] for b in panel]
        width = [b["upper"] - b["lower"] for b in panel]
        accuracy = [b["accuracy"] or 0 for b in panel]
        gap = [(b["confidence"] or 0) - a if b["count"] else 0 for a, b in zip(accuracy, panel, strict=True)]
        total = sum(b["count"] for b in panel) or 1
        style = {"width": width, "align": "edge"}
        ax.bar(lower, accuracy, edgecolor="black", color="C0", label="accuracy", **style)
        ax.bar(lower, gap, bottom=accuracy, color="C3", alpha=0.35, label="gap to confidence", **style)
        ax.bar(lower, [b["count"] / total for b in panel], color="0.4", alpha=0.5, label="fraction of images", **style)
        ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (largest probability)", ylabel="accuracy", title=title)
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle("Reliability diagram (test set)")
    return fig


def risk_coverage_figure(selective: dict) -> Figure:
    """The risk–coverage curve (Geifman & El-Yaniv, 2017) from ``selective_report``'s dict: the error
    rate of the most confident images against their share of the test set, in %, with the oracle
    ranking's curve (every error last), the area between them shaded (E-AURC) and the coverages of
    ``risk_at_coverage`` marked."""
    curve = selective["curve"]
    coverage = 100 * np.asarray(curve["coverage"])
    risk, oracle = 100 * np.asarray(curve["risk"]), 100 * np.asarray(curve["oracle_risk"])
    # Fixed margins and one axes: the figure is drawn for every test report.
    fig = Figure(figsize=(5, 4.6))
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.12, top=0.9)
    ax = fig.add_subplot()
    ax.fill_between(coverage, oracle, risk, color="C3", alpha=0.2, label=f"E-AURC {100 * selective['eaurc']:.2f} %")
    ax.plot(coverage, risk, color="C0", label=f"network (AURC {100 * selective['aurc']:.2f} %)")
    ax.plot(coverage, oracle, "k--", linewidth=1, label=f"oracle (AURC {100 * selective['aurc_oracle']:.2f} %)")
    for c, r in selective["risk_at_coverage"].items():
        point = (100 * float(c), 100 * r)
        ax.plot(*point, "o", color="C0", markersize=4)
        label = f"{100 * r:.1f} % at {point[0]:.0f} %"
        ax.annotate(label, point, xytext=(-6, 6), textcoords="offset points", ha="right", fontsize=8)
    top = max(1.0, 1.1 * float(risk.max()))
    ax.set(xlim=(0, 100), ylim=(0, top), xlabel="coverage: most confident images kept (%)")
    ax.set_ylabel("risk: error rate of those kept (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.suptitle("Risk–coverage curve (test set)")
    return fig


def figure_to_array(figure: Figure) -> np.ndarray:
    """Renders a matplotlib figure to uint8 RGB ``(H, W, 3)``, as loggers' ``log_image`` takes."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def corruption_heatmap_figure(
    accuracy: dict[str, dict[int, float]], clean_accuracy: float, mean_corruption_accuracy: float
) -> Figure:
    """Accuracy in % under each corruption (rows) and severity (columns), from fractions."""
    names = list(accuracy)
    severities = sorted({s for row in accuracy.values() for s in row})
    percent = np.array([[100 * accuracy[name].get(s, np.nan) for s in severities] for name in names])
    fig = Figure(figsize=(1.1 * len(severities) + 3.2, 0.42 * len(names) + 1.6))
    fig.subplots_adjust(left=0.24, right=0.98, bottom=0.8 / fig.get_figheight(), top=1 - 0.7 / fig.get_figheight())
    ax = fig.add_subplot()
    image = ax.imshow(percent, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    fig.colorbar(image, ax=ax, label="accuracy (%)", pad=0.03)
    ax.set_xticks(range(len(severities)), [str(s) for s in severities])
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("severity")
    for i in range(len(names)):
        for j in range(len(severities)):
            value = percent[i, j]
            color = "black" if value > 60 else "white"
            ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=8, color=color)
    clean, mean = 100 * clean_accuracy, 100 * mean_corruption_accuracy
    ax.set_title(f"Test accuracy under corruptions: clean {clean:.1f} %, mean {mean:.1f} %", fontsize=10)
    return fig


def ood_roc_figure(
    table: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], aurocs: dict[str, dict[str, float]]
) -> Figure:
    """One panel per out-of-distribution set: each score's ROC curve (OOD as the positive class,
    pytorch-ood's ``roc_curve``) from ``{set: {score: (ID scores, OOD scores)}}``, labelled with its
    AUROC from ``{set: {score: AUROC}}`` (fractions)."""
    from pytorch_ood.metrics.functional import roc_curve

    columns = min(4, len(table))
    rows = math.ceil(len(table) / columns)
    fig = Figure(figsize=(3.2 * columns, 3.0 * rows + 0.5), layout="constrained")
    for index, (name, by_score) in enumerate(table.items()):
        ax = fig.add_subplot(rows, columns, index + 1)
        for score, (id_scores, ood_scores) in by_score.items():
            scores = torch.from_numpy(np.concatenate([id_scores, ood_scores]))
            labels = torch.cat([torch.zeros(len(id_scores)), -torch.ones(len(ood_scores))]).long()
            fpr, tpr, _ = roc_curve(scores, labels)
            ax.plot(fpr.numpy(), tpr.numpy(), linewidth=1.2, label=f"{score} {100 * aurocs[name][score]:.1f}")
        ax.plot([0, 1], [0, 1], "k:", linewidth=0.8)
        ax.set(xlim=(0, 1), ylim=(0, 1), title=name)
        ax.set_xlabel("ID images flagged (FPR)", fontsize=8)
        ax.set_ylabel("OOD images flagged (TPR)", fontsize=8)
        ax.legend(loc="lower right", fontsize=7, title="AUROC %", title_fontsize=7)
    fig.suptitle("Out-of-distribution detection: ROC curves (test set against each set)")
    return fig


def ood_scores_figure(table: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]) -> Figure:
    """Histograms of the outlier scores, a row per set and a column per score: the in-distribution
    test images against the set's images, each normalised to a density."""
    names = list(table)
    scores = list(next(iter(table.values())))
    fig = Figure(figsize=(2.8 * len(scores), 1.9 * len(names) + 0.6), layout="constrained")
    axes = fig.subplots(len(names), len(scores), squeeze=False)
    for row, name in enumerate(names):
        for column, score in enumerate(scores):
            id_scores, ood_scores = table[name][score]
            ax = axes[row][column]
            both = np.concatenate([id_scores, ood_scores])
            bins = np.linspace(*np.percentile(both, [0.5, 99.5]), 40) if np.ptp(both) > 0 else 10
            ax.hist(id_scores, bins=bins, density=True, alpha=0.55, label="test (ID)")
            ax.hist(ood_scores, bins=bins, density=True, alpha=0.55, label=name)
            ax.tick_params(labelsize=7)
            ax.set_yticks([])
            if row == 0:
                ax.set_title(score, fontsize=9)
            if column == 0:
                ax.legend(fontsize=6, loc="upper right")
    fig.suptitle("Outlier scores (higher = more likely out of distribution)")
    return fig


def attack_curve_figure(clean: dict, results: Sequence[dict]) -> Figure:
    """Robust accuracy in % against ε, one panel per norm and one line per attack, with 95 % Wilson
    intervals as error bars, each line starting at the clean accuracy (ε = 0); from attack.json's
    ``clean`` and ``results`` rows (fractions)."""
    norms = list(dict.fromkeys(r["norm"] for r in results))
    fig = Figure(figsize=(4.6 * len(norms), 4))
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.14, top=0.86, wspace=0.25)
    axes = fig.subplots(1, len(norms), squeeze=False)[0]
    for ax, norm in zip(axes, norms, strict=True):
        for label in dict.fromkeys(r["label"] for r in results if r["norm"] == norm):
            rows = [clean | {"eps": 0.0}, *sorted((r for r in results if r["label"] == label), key=lambda r: r["eps"])]
            eps = [r["eps"] for r in rows]
            accuracy = np.array([100 * r["accuracy"] for r in rows])
            low, high = (np.array([100 * r["ci95"][i] for r in rows]) for i in (0, 1))
            yerr = np.maximum([accuracy - low, high - accuracy], 0)  # rounding: a Wilson bound a hair past the value
            ax.errorbar(eps, accuracy, yerr=yerr, marker="o", capsize=3, label=label)
        ax.set(
            ylim=(0, 100), xlabel=f"ε ({'L∞' if norm == 'Linf' else 'L2'}, [0, 1] pixel scale)", ylabel="accuracy (%)"
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Robust accuracy against ε ({clean['total']} test images, 95 % Wilson intervals)")
    return fig


def adversarial_examples_figure(
    clean: torch.Tensor,
    clean_predicted: torch.Tensor,
    adversarial: Sequence[torch.Tensor],
    predicted: Sequence[torch.Tensor],
    titles: Sequence[str],
    class_names: Sequence[str],
) -> Figure:
    """A grid: a row per image, its clean version and then each attack's adversarial one (float
    ``(K, 1, H, W)`` on the [0, 1] scale), each titled with its prediction (int64 ``(K,)``), red where
    the prediction differs from the clean one."""
    rows, columns = len(clean), 1 + len(adversarial)
    height = 1.9 * rows + 1.2
    fig = Figure(figsize=(1.9 * columns, height))
    axes = fig.subplots(max(rows, 1), columns, squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 1.0 / height, wspace=0.1, hspace=0.45)
    headings = ["clean", *titles]
    for i in range(rows):
        for j, (images, classes) in enumerate(zip([clean, *adversarial], [clean_predicted, *predicted], strict=True)):
            ax = axes[i, j]
            ax.set_axis_off()
            ax.imshow(images[i].reshape(images.shape[-2:]).float().numpy(), cmap="gray", vmin=0, vmax=1)
            changed = int(classes[i]) != int(clean_predicted[i])
            title = class_names[int(classes[i])] if i else f"{headings[j]}\n{class_names[int(classes[i])]}"
            ax.set_title(title, fontsize=8, color="C3" if changed else "black")
    fig.suptitle("Adversarial examples: predictions (red: changed by the attack)", y=1 - 0.12 / height, va="top")
    return fig
