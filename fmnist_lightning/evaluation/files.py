"""Classifying image files with a trained run.

FashionMNIST items are light objects on a black background, centred in a square. A photo
of a garment on a white table is the opposite: it must be inverted (``invert="auto"``
detects a light background from the image border) and should be cropped to the object.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from fmnist_lightning.evaluation.runs import TrainedModel

INVERT_CHOICES = ("auto", True, False)


def check_invert(invert: bool | str) -> None:
    """Raises ValueError unless ``invert`` is ``"auto"``, ``True`` or ``False``."""
    if invert not in INVERT_CHOICES:
        raise ValueError(f"invert must be auto, true or false, got {invert!r}")


def load_image(path: str | Path, invert: bool | str = "auto") -> torch.Tensor:
    """Reads an image file as a FashionMNIST-like uint8 tensor.

    Any size and mode PIL reads (RGB, RGBA, palette, grayscale, 16-bit): transparent pixels
    are put on white, the image is converted to grayscale (ITU-R 601-2 luma), optionally
    inverted, and padded with black to a square so that resizing keeps its aspect ratio.

    Args:
        path: The image file.
        invert: ``True``, ``False``, or ``"auto"``: invert when the mean of the border
            pixels is above 127 (a light background).

    Returns:
        uint8 ``(1, 1, S, S)`` with S = the longer side of the image.

    Raises:
        OSError: The file is missing, unreadable or not an image PIL can decode.
        ValueError: ``invert`` is not one of ``"auto"``, ``True``, ``False``.
    """
    check_invert(invert)
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
        gray = np.asarray(image.convert("L"), dtype=np.uint8)
    if invert == "auto":
        border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
        invert = bool(border.mean() > 127)
    if invert:
        gray = 255 - gray
    h, w = gray.shape
    side = max(h, w)
    square = np.zeros((side, side), dtype=np.uint8)
    top, left = (side - h) // 2, (side - w) // 2
    square[top : top + h, left : left + w] = gray
    return torch.from_numpy(square)[None, None]


@dataclass
class FilePrediction:
    """The prediction for one file, or why there is none.

    Attributes:
        path: The file as given.
        label: Predicted label 0-9, or ``None`` on error.
        name: Predicted class name.
        probability: Softmax probability of the predicted class, a fraction.
        top: The ``top_k`` most probable ``(name, probability)`` pairs.
        error: The reason the file could not be classified, else ``None``.
    """

    path: str
    label: int | None = None
    name: str | None = None
    probability: float | None = None
    top: list[tuple[str, float]] | None = None
    error: str | None = None


def predict_files(
    model: TrainedModel, paths: list[str], invert: bool | str = "auto", top_k: int = 3
) -> list[FilePrediction]:
    """Classifies each file on its own; a bad file gets an ``error`` and the others go on.

    Args:
        model: From ``fmnist_lightning.evaluation.runs.load_trained``; its preprocessing (resize to
            the run's ``data.image_size``, its normalisation) is applied.
        paths: Image files.
        invert: See ``load_image``.
        top_k: How many classes to list per file.

    Raises:
        ValueError: ``invert`` is not valid (checked before any file is read).
    """
    check_invert(invert)
    results = []
    for path in paths:
        try:
            image = load_image(path, invert)
        except (OSError, Image.DecompressionBombError) as err:  # UnidentifiedImageError is an OSError
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            results.append(FilePrediction(path=str(path), error=f"cannot read image: {reason}"))
            continue
        probs = model.predict_proba(image)[0].cpu()
        values, labels = probs.topk(top_k)
        top = [(model.class_names[int(i)], float(p)) for p, i in zip(values, labels, strict=True)]
        results.append(
            FilePrediction(path=str(path), label=int(labels[0]), name=top[0][0], probability=top[0][1], top=top)
        )
    return results
