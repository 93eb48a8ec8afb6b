"""The photo preprocessing (fmnist_lightning/data/photos.py), step by step on synthetic images,
and the photo benchmark's smallest configuration on real data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, SCRIPT_ENV
from fmnist_lightning.data.photos import (
    centre_on_square,
    check_options,
    fit_longest_side,
    to_fashion_mnist,
    trim_box,
)
from fmnist_lightning.errors import ArgumentError, ImageError


def canvas(width: int, height: int, colour=(255, 255, 255)) -> np.ndarray:
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = colour
    return image


def test_trim_box_is_the_object_s_bounding_box():
    image = canvas(120, 80, (240, 238, 250))
    image[10:30, 50:90] = (20, 20, 20)  # the object
    image[40, 5] = (235, 235, 245)  # within 5 % of the corner colour: background
    assert trim_box(image) == (50, 10, 90, 30)


def test_trim_box_keeps_pixels_just_beyond_the_fuzz():
    image = canvas(50, 50)  # the fuzz: 5 % of 255·√3 = 22.08; 13 less in each channel is 22.52 away
    image[25, 25] = 255 - 13
    assert trim_box(image) == (25, 25, 26, 26)
    image[25, 25] = 255 - 12  # 20.78 away: background
    assert trim_box(image) is None


def test_longest_side_becomes_28_and_the_aspect_ratio_stays():
    assert fit_longest_side(Image.new("RGB", (300, 150))).size == (28, 14)
    assert fit_longest_side(Image.new("RGB", (40, 200))).size == (6, 28)
    assert fit_longest_side(Image.new("RGB", (1000, 10))).size == (28, 1)


def test_centring_fills_with_the_given_colour():
    square = np.asarray(centre_on_square(Image.new("L", (28, 10), 200), fill=(7,)))
    assert square.shape == (28, 28)
    assert (square[9:19] == 200).all() and (square[:9] == 7).all() and (square[19:] == 7).all()


def test_photo_of_a_dark_object_on_white_becomes_a_centred_light_object_on_black():
    image = canvas(400, 300)
    image[100:250, 20:120] = (30, 30, 30)  # 100 wide, 150 high, far off-centre
    out = to_fashion_mnist(Image.fromarray(image))[0, 0].numpy()
    assert out.shape == (28, 28) and out.dtype == np.uint8
    rows, cols = np.nonzero(out > 128)
    assert rows.min() == 0 and rows.max() == 27  # the longer side fills the height
    assert abs((cols.min() + cols.max()) / 2 - 13.5) <= 1  # centred horizontally
    assert out[:, :3].max() < 30 and out[:, -3:].max() < 30  # the extension is black after negation


def test_inversion_follows_invert():
    image = canvas(60, 60)
    image[10:50, 20:40] = 0
    auto = to_fashion_mnist(Image.fromarray(image))[0, 0]
    assert auto[14, 14] > 200 and auto[0, 0] < 30  # light border: inverted
    kept = to_fashion_mnist(Image.fromarray(image), invert=False)[0, 0]
    assert kept[14, 14] < 50 and kept[0, 0] > 200
    dark = 255 - image  # a light object on black: auto leaves it
    assert to_fashion_mnist(Image.fromarray(dark))[0, 0, 14, 14] > 200


def test_transparent_png_is_put_on_white_before_trimming():
    rgba = np.zeros((90, 60, 4), dtype=np.uint8)
    rgba[30:60, 10:50] = (40, 40, 40, 255)  # an opaque dark object, the rest transparent black
    out = to_fashion_mnist(Image.fromarray(rgba, "RGBA"))[0, 0]
    assert out[0, 0] < 30 and out[14, 14] > 200


def test_pad_and_none_keep_today_s_behaviour():
    image = canvas(101, 77)
    image[20:60, 30:70] = 0
    padded = to_fashion_mnist(Image.fromarray(image), "pad")
    assert padded.shape == (1, 1, 101, 101) and padded[0, 0, 0].float().mean() < 10
    item = np.zeros((28, 28), dtype=np.uint8)
    item[5:20, 8:18] = 180
    assert torch.equal(to_fashion_mnist(Image.fromarray(item), "none")[0, 0], torch.from_numpy(item))


def test_blank_image_and_wrong_sizes_are_refused():
    with pytest.raises(ImageError, match="blank"):
        to_fashion_mnist(Image.new("RGB", (64, 48), (250, 250, 250)))
    with pytest.raises(ImageError, match=r"preprocess=none takes 28×28 images, and this one is 64×48"):
        to_fashion_mnist(Image.new("RGB", (64, 48)), "none")
    with pytest.raises(ArgumentError, match="preprocess='crop'"):
        check_options("crop", "auto")
    with pytest.raises(ArgumentError, match="invert='maybe'"):
        check_options("photo", "maybe")


@pytest.mark.slow  # a benchmark script: a new process (about 10 s)
def test_photo_benchmark_smallest_configuration(trained_run: Path, data_root: Path, tmp_path: Path):
    """On 200 real test images made photo-like, ``photo`` beats ``pad``, and ``none`` refuses
    them (benchmarks/analyses/photo_preprocessing.py; RESULTS.md has the 2,000-image run)."""
    out = tmp_path / "photos.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "analyses" / "photo_preprocessing.py"),
         "--run-dir", str(trained_run), "--images", "200", "--data-root", str(data_root), "--json", str(out)],
        env=SCRIPT_ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    modes = json.loads(out.read_text())["modes"]
    assert modes["photo"]["photos"] > modes["pad"]["photos"] + 5
    assert modes["none"]["photos"] is None and modes["none"]["clean"] is not None
