"""Attribution maps of a finished run's predictions (``fmnist-explain``): for test images of the run's
dataset or image files, which pixels raised the logit of the predicted class (or of a class asked
for), by one of ``attribution.METHODS``; written as figures, the raw maps and explain.json.

The maps come from ``attribution.Explainer`` (Captum), drawn with ``attribution.overlay``; the
probabilities are the run's (``TrainedModel.predict_proba``: its network with flip TTA where it has
one, softmax with its temperature); the maps are of the unflipped pass (``attribution.attributable``).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from fmnist_lightning.artifacts import atomic_file, write_atomically
from fmnist_lightning.data.idx import ensure_files, load_split
from fmnist_lightning.data.photos import check_options as check_photo_options
from fmnist_lightning.errors import ImageError, require
from fmnist_lightning.evaluation.attribution import (
    COMPLETENESS_TOLERANCE,
    METHODS,
    Attribution,
    Explainer,
    gradcam_layer_name,
    overlay,
)
from fmnist_lightning.evaluation.files import load_image
from fmnist_lightning.evaluation.runs import TrainedModel, build_datamodule, load_trained

log = logging.getLogger(__name__)

#: The test images explained when neither ``images`` nor ``indices`` is given.
DEFAULT_INDICES = tuple(range(8))
#: The file names written into the output folder, besides one ``<k>_<name>.png`` per image.
JSON, MAPS, GRID = "explain.json", "maps.npy", "grid.png"
#: The steps suggested when integrated gradients miss ``attribution.COMPLETENESS_TOLERANCE``.
MORE_STEPS = 256
#: The classes in each image's bar chart.
TOP_K = 3


@dataclass
class Source:
    """One image to explain.

    Attributes:
        name: ``test_<index>`` or the file's stem, for the figure's file name.
        source: The test split's index, or the file's path as given.
        image: uint8 ``(1, 1, H, W)``, FashionMNIST-style.
        label: The true class of a test image; ``None`` for a file.
    """

    name: str
    source: int | str
    image: torch.Tensor
    label: int | None = None


@dataclass
class Explained:
    """The attributions of N images and what they explain.

    Attributes:
        probabilities: float32 ``(N, C)`` on the CPU, the run's (``TrainedModel.predict_proba``).
        attribution: The maps, float32 ``(N, S, S)``, and the classes they explain.
        seen: float32 ``(N, S, S)``, the images as the network sees them on the [0, 1] scale.
    """

    probabilities: torch.Tensor
    attribution: Attribution
    seen: torch.Tensor


def check_options(
    run_dir: Any,
    method: str,
    target: Any,
    images: Sequence[str] | None,
    indices: Sequence[int] | None,
    preprocess: str,
    invert: bool | str,
) -> None:
    """Refuses the options that need no run, before it is loaded.

    Raises:
        ArgumentError: A list of runs, an unknown ``method``, a ``target`` that is not a class index,
            both ``images`` and ``indices``, an empty or malformed list, or a bad ``preprocess``/``invert``.
    """
    require(isinstance(run_dir, str | Path), "run_dir", run_dir, "one run folder (an ensemble is not explained)")
    require(method in METHODS, "method", method, f"one of {', '.join(METHODS)}")
    require(
        target is None or _is_index(target), "target", target, "null (each image's predicted class) or a class index"
    )
    require(images is None or indices is None, "indices", indices, "images=[...] or indices=[...], not both")
    ok = images is None or (
        isinstance(images, list | tuple) and len(images) > 0 and all(isinstance(p, str) and p for p in images)
    )
    require(ok, "images", images, "a non-empty list of image files, e.g. images=[shirt.png,bag.jpg]")
    ok = indices is None or (isinstance(indices, list | tuple) and len(indices) > 0 and all(map(_is_index, indices)))
    require(ok, "indices", indices, "a non-empty list of test image indices >= 0, e.g. indices=[0,5,17]")
    check_photo_options(preprocess, invert)


def _is_index(value: Any) -> bool:
    """Whether ``value`` is an integer >= 0 (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_against_run(model: TrainedModel, target: int | None, indices: Sequence[int] | None, count: int) -> None:
    """Refuses a ``target`` the run has no class for, or an index past its ``count`` test images.

    Raises:
        ArgumentError: ``target`` outside [0, C), or an index >= ``count``.
    """
    classes = len(model.class_names)
    require(target is None or target < classes, "target", target, f"a class index from 0 to {classes - 1}")
    outside = [i for i in indices or () if i >= count]
    require(not outside, "indices", list(indices or ()), f"indices of the {count} test images, 0 to {count - 1}")


def make_explainer(
    model: TrainedModel, method: str, layer: str | None, steps: int, samples: int, noise: float
) -> tuple[Explainer, str | None]:
    """The run's ``Explainer``, and the name in ``net.named_modules()`` of Grad-CAM's layer (``None`` for
    the other methods).

    Raises:
        ArgumentError: ``gradcam`` for a network without ``nn.Conv2d`` (``NO_CONV``), or what
            ``Explainer`` refuses (``layer``, ``steps``, ``samples``, ``noise``).
    """
    explainer = Explainer(model.net, model.preprocess, method, layer, steps, samples, noise)
    return explainer, (gradcam_layer_name(model.net, layer) if method == "gradcam" else None)


def count_test_images(datamodule: Any) -> int:
    """How many test images the run's dataset has, from its description (no file is read)."""
    return int(datamodule.dataset.specs["test", "images"].shape[0])


def indexed_sources(datamodule: Any, indices: Sequence[int]) -> list[Source]:
    """The run's test images at ``indices``, with their labels (the test split, ``idx.load_split``).

    Raises:
        DatasetError: Its files are missing (and cannot be copied or downloaded) or damaged.
    """
    ensure_files(datamodule.root, datamodule.local_copy, datamodule.download, datamodule.dataset)
    images, labels = load_split(datamodule.root, "test", datamodule.dataset)
    return [Source(f"test_{i}", i, images[i][None, None], int(labels[i])) for i in indices]


def file_sources(paths: Sequence[str], preprocess: str, invert: bool | str) -> list[Source]:
    """The image files as FashionMNIST-style images (``files.load_image``).

    Raises:
        ImageError: A file cannot be read or converted; the message names it.
    """
    sources = []
    for path in paths:
        try:
            image = load_image(path, preprocess, invert)
        except OSError as err:  # UnidentifiedImageError is an OSError
            raise ImageError(f"{path}: cannot read image: {err.strerror or err}") from None
        except ImageError as err:
            raise ImageError(f"{path}: {err}") from None
        stem = re.sub(r"[^\w.-]", "_", Path(path).stem) or "image"
        sources.append(Source(stem, path, image))
    return sources


def explain_sources(model: TrainedModel, explainer: Explainer, sources: Sequence[Source], target: int | None):
    """The run's probabilities of ``sources`` and the maps of ``target`` (``None``: each image's predicted
    class), as an ``Explained``."""
    probabilities = model.predict_converted([s.image for s in sources]).float().cpu()
    x = torch.cat([model.preprocess(s.image.to(model.device)) for s in sources])
    targets = probabilities.argmax(dim=1) if target is None else torch.full((len(sources),), target)
    attribution = explainer.attribute(x, targets)
    return Explained(probabilities, attribution, explainer.as_seen(x))


def records(sources: Sequence[Source], explained: Explained, class_names: Sequence[str]) -> list[dict[str, Any]]:
    """explain.json's entry of each image: its source, true and predicted class, the explained class,
    and for integrated gradients the completeness figures (``completeness``)."""
    entries = []
    for i, source in enumerate(sources):
        predicted, target = int(explained.probabilities[i].argmax()), int(explained.attribution.targets[i])
        entries.append(
            {
                "figure": figure_name(i, source),
                "source": source.source,
                "label": source.label,
                "true_class": None if source.label is None else class_names[source.label],
                "predicted": predicted,
                "predicted_class": class_names[predicted],
                "probability": float(explained.probabilities[i, predicted]),
                "target": target,
                "target_class": class_names[target],
                "target_probability": float(explained.probabilities[i, target]),
                **completeness(explained, i),
            }
        )
    return entries


def completeness(explained: Explained, i: int) -> dict[str, float | None]:
    """Integrated gradients' completeness of image ``i`` (Sundararajan et al.): ``delta`` (the
    attributions' sum minus f(x) − f(baseline)), ``logit_gap`` (f(x) − f(baseline)), ``logit`` (f(x))
    and ``relative_delta`` = |delta| / |f(x)| (``None`` where f(x) = 0); ``{}`` for the other methods."""
    attribution = explained.attribution
    relative = attribution.relative_delta()
    if relative is None:
        return {}
    return {
        "delta": float(attribution.delta[i]),
        "logit_gap": float(attribution.logit_gap[i]),
        "logit": float(attribution.logits[i]),
        "relative_delta": float(relative[i]) if math.isfinite(relative[i]) else None,
    }


def warn_incomplete(entries: Sequence[dict[str, Any]], steps: int) -> int:
    """Logs a warning when any image's ``relative_delta`` is above ``COMPLETENESS_TOLERANCE`` (or unknown);
    returns how many are."""
    ratios = [e["relative_delta"] for e in entries if "relative_delta" in e]
    far = sum(1 for ratio in ratios if ratio is None or ratio > COMPLETENESS_TOLERANCE)
    if far:
        log.warning(
            "integrated gradients: %d of %d images miss completeness by more than %g %% of their logit "
            "(|delta| / |f(x)| in explain.json) at steps=%d; try steps=%d",
            far,
            len(entries),
            100 * COMPLETENESS_TOLERANCE,
            steps,
            max(MORE_STEPS, 2 * steps),
        )
    return far


def figure_name(k: int, source: Source) -> str:
    """``<k>_<name>.png``: image ``k``'s figure."""
    return f"{k}_{source.name}.png"


def image_figure(
    seen: torch.Tensor, drawn: np.ndarray, probabilities: torch.Tensor, class_names: Sequence[str], title: str
) -> Figure:
    """One image's figure: the image (float ``(S, S)`` on [0, 1]), its map drawn over it (uint8 RGB
    ``(S, S, 3)``, ``overlay``), and the ``TOP_K`` most probable classes of float ``(C,)`` probabilities."""
    fig = Figure(figsize=(10, 3.4))
    fig.subplots_adjust(left=0.02, right=0.97, bottom=0.12, top=0.8, wspace=0.15)
    image_ax, map_ax = fig.add_subplot(1, 3, 1), fig.add_subplot(1, 3, 2)
    bar_ax = fig.add_axes((0.72, 0.16, 0.25, 0.58))
    image_ax.imshow(seen.numpy(), cmap="gray", vmin=0, vmax=1)
    image_ax.set_title("image", fontsize=9)
    map_ax.imshow(drawn)
    map_ax.set_title("attribution", fontsize=9)
    for ax in (image_ax, map_ax):
        ax.set_axis_off()
    values, labels = probabilities.topk(min(TOP_K, len(probabilities)))
    names = [class_names[int(i)] for i in labels]
    bar_ax.barh(range(len(names)), values.numpy(), color="tab:blue")
    bar_ax.set_yticks(range(len(names)), names, fontsize=8)
    bar_ax.invert_yaxis()
    bar_ax.set_xlim(0, 1.2)  # room for the labels
    bar_ax.set_xticks([0, 0.5, 1])
    bar_ax.set_xlabel("probability", fontsize=8)
    bar_ax.tick_params(axis="x", labelsize=7)
    for row, value in enumerate(values.tolist()):
        bar_ax.text(value + 0.02, row, f"{value:.3f}", va="center", fontsize=7)
    bar_ax.set_title(f"top {len(names)} classes", fontsize=9)
    fig.suptitle(title, fontsize=10)
    return fig


def grid_figure(drawn: Sequence[np.ndarray], titles: Sequence[str]) -> Figure:
    """Every image's map drawn over it (uint8 RGB ``(S, S, 3)``), up to 8 a row, each with its title."""
    columns = min(8, len(drawn))
    rows = math.ceil(len(drawn) / columns)
    height = 2.3 * rows + 0.5
    fig = Figure(figsize=(2 * columns, height))
    axes = fig.subplots(rows, columns, squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=1 - 0.7 / height, wspace=0.1, hspace=0.5)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, image, title in zip(axes.flat, drawn, titles, strict=False):
        ax.imshow(image)
        ax.set_title(title, fontsize=8)
    fig.suptitle("Attributions: predicted / explained class", y=1 - 0.1 / height, va="top")
    return fig


def title(method: str, entry: dict[str, Any]) -> str:
    """An image figure's title: the method, the explained and the predicted class with their
    probabilities, and a test image's true class."""
    explains = f"{method}: explains {entry['target_class']} ({entry['target_probability']:.3f})"
    predicted = f"predicted {entry['predicted_class']} ({entry['probability']:.3f})"
    true = f"; true class {entry['true_class']}" if entry["true_class"] is not None else ""
    return f"{explains}; {predicted}{true}"


def write_outputs(
    folder: Path, result: dict[str, Any], explained: Explained, drawn: Sequence[np.ndarray], class_names: Sequence[str]
) -> None:
    """Writes each image's figure, grid.png, maps.npy (float32 ``(N, S, S)``) and explain.json atomically
    into ``folder``.

    Raises:
        OSError: A file cannot be written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    entries = result["images"]
    for i, entry in enumerate(entries):
        figure = image_figure(
            explained.seen[i], drawn[i], explained.probabilities[i], class_names, title(result["method"], entry)
        )
        with atomic_file(folder / entry["figure"]) as file:
            figure.savefig(file, format="png", dpi=100)
    grid = grid_figure(drawn, [f"{e['predicted_class']} /\n{e['target_class']}" for e in entries])
    with atomic_file(folder / GRID) as file:
        grid.savefig(file, format="png", dpi=100)
    with atomic_file(folder / MAPS) as file:
        np.save(file, explained.attribution.maps.numpy().astype(np.float32))
    write_atomically(folder / JSON, json.dumps(result, indent=2) + "\n")


def explain_run(
    run_dir: str | Path,
    output_dir: str | Path,
    images: Sequence[str] | None = None,
    indices: Sequence[int] | None = None,
    method: str = "gradcam",
    target: int | None = None,
    layer: str | None = None,
    steps: int = 64,
    samples: int = 50,
    noise: float = 0.15,
    weights: str = "best",
    device: str = "auto",
    data_root: str | None = None,
    preprocess: str = "photo",
    invert: bool | str = "auto",
    trusted_modules: Sequence[str] = (),
) -> dict[str, Any]:
    """Explains a run's predictions of test images (``indices``) or image files (``images``) into ``output_dir``.

    Every option is checked before any image is read or the network runs.

    Args:
        images: Image files, made FashionMNIST-style by ``preprocess`` and ``invert`` (``to_fashion_mnist``).
        indices: Test images of the run's dataset; ``DEFAULT_INDICES`` when neither is given.
        method: One of ``attribution.METHODS``; ``layer``, ``steps``, ``samples``, ``noise``: see ``Explainer``.
        target: The class every map explains; ``None``: each image's predicted class.
        weights: ``"best"``, ``"last"``, ``"net.pt"`` or a file (``RunFolder.weights``).
        data_root: Overrides the run's ``data.root``.
        trusted_modules: Modules of one's own the run's config may name.

    Returns:
        explain.json's contents: the run, weights, method and its settings, and ``images``, one entry per image.

    Raises:
        ArgumentError: A bad option (``check_options``, ``check_against_run``, ``make_explainer``).
        RunError: No such run or weights. DatasetError: Missing or damaged test files.
        ImageError: An image file that cannot be read or converted. OSError: An output cannot be written.
    """
    check_options(run_dir, method, target, images, indices, preprocess, invert)
    if images is None and indices is None:
        indices = DEFAULT_INDICES
    model = load_trained(run_dir, weights, device, trusted_modules)
    datamodule = build_datamodule(model.config, data_root) if images is None else None
    check_against_run(model, target, indices, count_test_images(datamodule) if datamodule is not None else 0)
    explainer, layer_used = make_explainer(model, method, layer, steps, samples, noise)
    sources = indexed_sources(datamodule, indices) if images is None else file_sources(images, preprocess, invert)
    explained = explain_sources(model, explainer, sources, target)
    result = {
        "run_dir": str(run_dir),
        "weights": str(model.weights),
        "method": method,
        "layer": layer_used,
        "steps": steps if method == "integrated_gradients" else None,
        "samples": samples if method == "smoothgrad" else None,
        "noise": noise if method == "smoothgrad" else None,
        "temperature": model.temperature,
        "target": target,
        "images": records(sources, explained, model.class_names),
    }
    warn_incomplete(result["images"], steps)
    drawn = [overlay(explained.seen[i], explained.attribution.maps[i]) for i in range(len(sources))]
    write_outputs(Path(output_dir), result, explained, drawn, model.class_names)
    return result
