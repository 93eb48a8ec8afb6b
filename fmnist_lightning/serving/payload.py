"""What a ``POST /predict`` or ``POST /explain`` request may carry (image files of any size and mode
as ``multipart/form-data`` file fields, or JSON ``{"image": "<base64>"}`` / ``{"images": [...]}``,
data URLs too), turned into FashionMNIST-style images as ``fmnist-predict`` does, and its other fields
(``sets`` and ``alpha`` for conformal prediction sets, ``method`` and ``target`` for attribution maps:
form fields, or keys of the JSON object). Every problem is a ``BadRequest``: 400 (malformed or
unusable), 413 (too large) or 415 (not an image).
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from PIL import UnidentifiedImageError

from fmnist_lightning.data.photos import open_image, to_fashion_mnist
from fmnist_lightning.errors import ImageError, ImageTooLargeError

#: How to send an image, for the error messages.
HOW_TO_SEND = (
    'send images as multipart/form-data file fields (curl -F file=@shirt.png) or as JSON {"image": "<base64>"}'
)


class BadRequest(Exception):
    """A request that cannot be answered with predictions: HTTP ``status`` (400, 413 or 415) and ``detail``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass
class Decoded:
    """One request, decoded: its images and their names, or why it cannot be answered.

    Attributes:
        images: uint8 ``(N, 1, 28, 28)``, one per image of the request.
        names: The file names (multipart) or ``"image 1"``, ``"image 2"``, ... (JSON).
        sets, alpha: The request's ``sets`` (a method name, ``"none"``) and ``alpha`` (a number or its
            text); ``None`` where it has none. The server replaces them with what it answers with.
        method, target: ``/explain``'s attribution method and target class index, as the server
            chose them (the request's fields or the defaults); ``target`` ``None``: the predicted class.
    """

    images: torch.Tensor | None = None
    names: list[str] | None = None
    error: BadRequest | None = None
    sets: str | None = None
    alpha: float | str | None = None
    method: str | None = None
    target: int | None = None


def image_files(payload: Mapping) -> list[tuple[str, bytes]]:
    """The ``(name, bytes)`` of each image in a request's parsed form or JSON.

    Raises:
        BadRequest: No image in it (400), or a JSON image that is not base64 (400).
    """
    if hasattr(payload, "multi_items"):  # a multipart form
        files = [(v.filename or key, v.file.read()) for key, v in payload.multi_items() if hasattr(v, "file")]
        if not files:
            raise BadRequest(400, f"the form has no file field; {HOW_TO_SEND}")
        return files
    if "images" in payload:
        items = payload["images"]
    elif "image" in payload:
        items = [payload["image"]]
    else:
        raise BadRequest(400, f'the JSON object has neither "image" nor "images"; {HOW_TO_SEND}')
    if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
        raise BadRequest(400, f'"images" must be a non-empty list of base64 strings; {HOW_TO_SEND}')
    files = []
    for number, item in enumerate(items, start=1):
        data = item.split(",", 1)[1] if item.startswith("data:") else item
        try:
            files.append((f"image {number}", base64.b64decode(data, validate=True)))
        except (binascii.Error, ValueError):
            raise BadRequest(400, f"image {number} is not valid base64; {HOW_TO_SEND}") from None
    return files


def text_fields(payload: Mapping, *keys: str) -> tuple[str | int | float | None, ...]:
    """The request's fields ``keys`` (e.g. ``"sets", "alpha"``) as they are, ``None`` for each one it lacks.

    Raises:
        BadRequest: 400, a field that is a file, a list or an object rather than text or a number.
    """
    fields = []
    for key in keys:
        value = payload.get(key)
        if isinstance(value, bool) or not isinstance(value, (str, int, float, type(None))):
            raise BadRequest(400, f"the {key!r} field must be text or a number, not {type(value).__name__}")
        fields.append(value)
    return tuple(fields)


def decode_image(name: str, data: bytes, preprocess: str, invert: bool | str, max_pixels: int) -> torch.Tensor:
    """One image file's bytes as a FashionMNIST-style uint8 ``(1, 1, 28, 28)`` image.

    Raises:
        BadRequest: Empty (400), not an image (415), more than ``max_pixels`` pixels (413),
            damaged or not convertible (400): every exception, so a request never causes a 500.
    """
    if not data:
        raise BadRequest(400, f"{name} is empty (0 bytes)")
    try:
        image = open_image(io.BytesIO(data), max_pixels)
    except UnidentifiedImageError:
        raise BadRequest(
            415, f"{name} is not an image that can be read (PNG, JPEG, GIF, BMP, TIFF, WebP, ...)"
        ) from None
    except ImageTooLargeError as err:
        raise BadRequest(413, f"{name}: {err}") from None
    except (OSError, ValueError, SyntaxError) as err:  # PIL's decoders raise all three on damaged data
        raise BadRequest(400, f"{name} is truncated or damaged: {err}") from None
    except Exception as err:  # any other failure of a decoder is still the request's fault
        raise BadRequest(400, f"{name} cannot be decoded ({type(err).__name__}: {err})") from None
    try:
        return to_fashion_mnist(image, preprocess, invert)
    except ImageError as err:
        raise BadRequest(400, f"{name}: {err}") from None
    except Exception as err:  # an image PIL read but cannot convert (an unusual mode, say)
        raise BadRequest(400, f"{name} cannot be converted ({type(err).__name__}: {err})") from None


def decode_payload(payload: Mapping, preprocess: str, invert: bool | str, max_pixels: int, max_images: int) -> Decoded:
    """A whole request decoded; never raises: a problem is returned as ``Decoded.error``, so that
    one bad request in a batch does not fail the others. ``preprocess`` and ``invert`` are
    ``to_fashion_mnist``'s."""
    try:
        if not isinstance(payload, Mapping):
            raise BadRequest(400, f"the JSON body must be an object; {HOW_TO_SEND}")
        files = image_files(payload)
        if len(files) > max_images:
            raise BadRequest(413, f"{len(files)} images in one request; at most {max_images} are taken")
        sets, alpha = text_fields(payload, "sets", "alpha")
        images = [decode_image(name, data, preprocess, invert, max_pixels) for name, data in files]
    except BadRequest as err:
        return Decoded(error=err)
    return Decoded(images=torch.cat(images), names=[name for name, _ in files], sets=sets, alpha=alpha)
