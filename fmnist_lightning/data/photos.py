"""Turning an image of any size and mode into a FashionMNIST-style one: a light object on black, 28×28.

``preprocess="photo"`` follows the dataset's README (zalandoresearch/fashion-mnist, "Get the Data"):
1. trim the edges within 5 % of the largest RGB distance of the corner colour (here the per-channel
median of the corners); 2. resize the longest edge to 28 px (here Lanczos, ImageMagick's default);
3. sharpen, radius and σ 1.0 (here PIL's unsharp mask, 100 %); 4. extend the shortest edge to 28 px,
centred (here with the corner colour); 5. negate (``invert``); 6. convert to 8-bit grayscale.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps

from fmnist_lightning.errors import ImageError, ImageTooLargeError, require

#: The ways an image is turned into a FashionMNIST-style one (``preprocess=``).
PREPROCESS_MODES = ("photo", "pad", "none")
#: ``invert=``: negate always, never, or when the border is light.
INVERT_CHOICES = ("auto", True, False)
#: Side of a FashionMNIST image, in pixels.
SIDE = 28
#: Step 1's closeness to the corner colour: a fraction of the largest RGB distance, 255·√3.
TRIM_FUZZ = 0.05
#: The most pixels an image file may declare, checked before decoding (PIL's own guard refuses at 179 MP).
MAX_PIXELS = 40_000_000


def open_image(source: str | Path | BinaryIO, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Reads an image file (a path or a binary file object) fully into memory, closing a path's file.

    Raises:
        ImageTooLargeError: Its header declares more than ``max_pixels`` pixels, or PIL's own
            limit (``PIL.Image.DecompressionBombError``).
        PIL.UnidentifiedImageError: It is not an image PIL can read (an ``OSError``).
        OSError: The file is missing or unreadable, or its data is truncated or damaged.
    """
    try:
        opened = Image.open(source)
    except Image.DecompressionBombError as err:  # PIL's own limit, checked inside open()
        raise ImageTooLargeError(
            f"the image declares more than twice PIL's limit of {Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels "
            f"({err}), more than the limit of {max_pixels / 1e6:g}; scale it down first"
        ) from None
    with opened as image:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLargeError(
                f"the image is {width}×{height} = {width * height / 1e6:.1f} megapixels, more than the limit of "
                f"{max_pixels / 1e6:g}; scale it down first"
            )
        image.load()
        return image


def check_options(preprocess: str = "photo", invert: bool | str = "auto") -> None:
    """Raises ``ArgumentError`` unless ``preprocess`` is in ``PREPROCESS_MODES``, ``invert`` in ``INVERT_CHOICES``."""
    require(preprocess in PREPROCESS_MODES, "preprocess", preprocess, "photo, pad or none")
    require(invert in INVERT_CHOICES, "invert", invert, "auto, true or false")


def on_white(image: Image.Image) -> Image.Image:
    """The image upright (EXIF orientation) as RGB, transparent pixels composited onto white."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit or float grayscale: to 8 bits first
        image = image.convert("L")
    return image.convert("RGB")


def is_light(gray: np.ndarray) -> bool:
    """``invert="auto"``'s rule: the border pixels of a uint8 ``(H, W)`` image average above 127."""
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    return bool(border.mean() > 127)


def corner_colour(rgb: np.ndarray) -> np.ndarray:
    """The per-channel median of the four corner pixels of a uint8 ``(H, W, 3)`` image."""
    corners = rgb[[0, 0, -1, -1], [0, -1, 0, -1]].astype(np.float64)
    return np.median(corners, axis=0)


def trim_box(
    rgb: np.ndarray, fuzz: float = TRIM_FUZZ, background: np.ndarray | None = None
) -> tuple[int, int, int, int] | None:
    """Step 1: PIL's crop box ``(left, top, right, bottom)`` of the pixels of uint8 ``(H, W, 3)`` ``rgb``
    farther than ``fuzz`` · 255·√3 (RGB distance) from ``background`` (``corner_colour``), or ``None``."""
    background = corner_colour(rgb) if background is None else background
    distance = np.linalg.norm(rgb.astype(np.float64) - background, axis=-1)
    rows, cols = np.nonzero(distance > fuzz * 255 * np.sqrt(3))
    if rows.size == 0:
        return None
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


def fit_longest_side(image: Image.Image, side: int = SIDE) -> Image.Image:
    """Step 2: resized (Lanczos) to a longest side of ``side``, the shorter rounded, at least 1 pixel."""
    w, h = image.size
    scale = side / max(w, h)
    return image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)


def centre_on_square(image: Image.Image, fill: tuple[int, ...], side: int = SIDE) -> Image.Image:
    """Step 4: ``image`` centred on a ``side``×``side`` canvas of colour ``fill``."""
    canvas = Image.new(image.mode, (side, side), fill)
    w, h = image.size
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return canvas


def photo(rgb_image: Image.Image, invert: bool) -> Image.Image:
    """Steps 1-6 on an RGB image; returns an ``L`` (8-bit grayscale) image of 28×28.

    Raises:
        ImageError: The image is blank: nothing differs from the corner colour.
    """
    rgb = np.asarray(rgb_image)
    background = corner_colour(rgb)
    box = trim_box(rgb, background=background)
    if box is None:
        raise ImageError(
            "the image is blank: every pixel is within 5 % of the corner colour, so there is no "
            "object to crop to (preprocess=pad takes the image as it is)"
        )
    fill = tuple(int(c + 0.5) for c in background)
    small = fit_longest_side(rgb_image.crop(box))
    sharp = small.filter(ImageFilter.UnsharpMask(radius=1.0, percent=100, threshold=0))
    square = centre_on_square(sharp, fill)
    return ImageOps.invert(square).convert("L") if invert else square.convert("L")


def pad_to_square(gray: np.ndarray) -> np.ndarray:
    """``preprocess="pad"``: a uint8 ``(H, W)`` image centred on a black square of side ``max(H, W)``."""
    h, w = gray.shape
    side = max(h, w)
    square = np.zeros((side, side), dtype=np.uint8)
    top, left = (side - h) // 2, (side - w) // 2
    square[top : top + h, left : left + w] = gray
    return square


def to_fashion_mnist(image: Image.Image, preprocess: str = "photo", invert: bool | str = "auto") -> torch.Tensor:
    """One PIL image of any size and mode (transparency on white) as a FashionMNIST-style uint8 image.

    Args:
        preprocess: ``"photo"`` (the module's steps), ``"pad"`` (pad with black to a square) or
            ``"none"`` (already 28×28 FashionMNIST-style).
        invert: ``True``, ``False`` or ``"auto"`` (negate when the border is light).

    Returns:
        uint8 ``(1, 1, 28, 28)``; for ``"pad"``, ``(1, 1, S, S)`` with S the longer side.

    Raises:
        ArgumentError: ``preprocess`` or ``invert`` is not one of the choices.
        ImageError: ``"photo"`` on a blank image; ``"none"`` on an image that is not 28×28.
    """
    check_options(preprocess, invert)
    rgb = on_white(image)
    gray = np.asarray(rgb.convert("L"))
    if invert == "auto":
        invert = is_light(gray)
    if preprocess == "photo":
        return torch.from_numpy(np.array(photo(rgb, invert)))[None, None]
    if preprocess == "none" and gray.shape != (SIDE, SIDE):
        raise ImageError(
            f"preprocess=none takes 28×28 images, and this one is {gray.shape[1]}×{gray.shape[0]}; "
            "use preprocess=photo (or pad)"
        )
    if invert:
        gray = 255 - gray
    return torch.from_numpy(pad_to_square(gray) if preprocess == "pad" else gray.copy())[None, None]
