"""Classifying image files with a trained run: each file is read with PIL, made FashionMNIST-style
by ``fmnist_lightning.data.photos.to_fashion_mnist``, then classified with the run's preprocessing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from fmnist_lightning.data.photos import check_options, open_image, to_fashion_mnist
from fmnist_lightning.errors import ImageError
from fmnist_lightning.evaluation.runs import TrainedModel


def load_image(path: str | Path, preprocess: str = "photo", invert: bool | str = "auto") -> torch.Tensor:
    """An image file as a FashionMNIST-style uint8 ``(1, 1, 28, 28)`` tensor (``to_fashion_mnist``, whose
    ``preprocess`` and ``invert`` these are; ``(1, 1, S, S)``, S the longer side, for ``"pad"``).

    Raises:
        OSError: See ``fmnist_lightning.data.photos.open_image``.
        ImageError: The image has too many pixels, or cannot be converted as asked.
        ArgumentError: ``preprocess`` or ``invert`` is not one of the choices.
    """
    return to_fashion_mnist(open_image(path), preprocess, invert)


@dataclass
class FilePrediction:
    """The prediction for one file, or why there is none.

    Attributes:
        label: Predicted label, or ``None`` on error.
        probability: Softmax probability of the predicted class, a fraction.
        top: The ``top_k`` most probable ``(name, probability)`` pairs.
        temperature: The run's temperature the probabilities are scaled by, or ``None``.
        prediction_set: The class names of the conformal prediction set (``set_method`` at
            ``set_alpha``), in label order; ``None`` when no sets were asked for.
    """

    path: str
    label: int | None = None
    name: str | None = None
    probability: float | None = None
    top: list[tuple[str, float]] | None = None
    error: str | None = None
    temperature: float | None = None
    prediction_set: list[str] | None = None
    set_method: str | None = None
    set_alpha: float | None = None


def predict_files(
    model: TrainedModel,
    paths: list[str],
    preprocess: str = "photo",
    invert: bool | str = "auto",
    top_k: int = 3,
    sets: str | None = None,
    alpha: float = 0.1,
) -> list[FilePrediction]:
    """Classifies each file on its own; a bad file gets an ``error`` and the others go on.

    Args:
        sets: A conformal method (``"lac"``, ``"aps"``, ``"raps"``) to give each file its prediction
            set at ``alpha``, or ``None`` for none.

    Raises:
        ArgumentError: ``preprocess``, ``invert``, ``sets`` or ``alpha`` is not valid (checked before
            any file is read).
        RunError: ``sets`` is asked of a model without a conformal record (``TrainedModel.check_sets``).
    """
    check_options(preprocess, invert)
    if sets is not None:
        model.check_sets(sets, alpha)
    results = []
    for path in paths:
        try:
            image = open_image(path)
        except OSError as err:  # UnidentifiedImageError is an OSError
            results.append(FilePrediction(path=str(path), error=f"cannot read image: {err.strerror or err}"))
            continue
        except ImageError as err:
            results.append(FilePrediction(path=str(path), error=str(err)))
            continue
        try:
            probs = model.predict_images([image], preprocess, invert)[0].cpu()
        except ImageError as err:
            results.append(FilePrediction(path=str(path), error=str(err)))
            continue
        values, labels = probs.topk(min(top_k, len(model.class_names)))
        top = [(model.class_names[int(i)], float(p)) for p, i in zip(values, labels, strict=True)]
        result = FilePrediction(str(path), int(labels[0]), top[0][0], top[0][1], top, temperature=model.temperature)
        if sets is not None:
            members = model.predict_sets(probs[None], sets, alpha)[0]
            result.prediction_set = [model.class_names[int(i)] for i in members.nonzero().flatten()]
            result.set_method, result.set_alpha = sets, float(alpha)
        results.append(result)
    return results
