"""predict.py and image loading on real files of several kinds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fmnist_lightning.data import load_dataset, load_split
from fmnist_lightning.evaluation.calibration import read_temperature
from fmnist_lightning.evaluation.files import load_image, predict_files
from fmnist_lightning.evaluation.runs import load_trained
from in_process import run_command

CLASS_NAMES = load_dataset().class_names


@pytest.fixture(scope="module")
def test_images(data_root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = load_split(data_root, "test")
    return images[:20], labels[:20]


def test_png_of_a_test_image_predicts_as_the_dataset(trained_run: Path, test_images, tmp_path: Path) -> None:
    images, _ = test_images
    model = load_trained(trained_run)
    paths = []
    for i in range(5):
        Image.fromarray(images[i].numpy()).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    results = predict_files(model, paths, preprocess="none")
    expected = model.predict_proba(images[:5, None])
    for r, p in zip(results, expected, strict=True):
        assert r.error is None
        assert r.label == int(p.argmax()) and r.name == CLASS_NAMES[r.label]
        assert r.probability == pytest.approx(float(p.max()), abs=1e-5)


def test_rgb_white_background_odd_size_is_inverted(test_images, tmp_path: Path) -> None:
    images, _ = test_images
    photo = np.stack([255 - images[1].numpy()] * 3, axis=-1)  # dark object on white, RGB
    Image.fromarray(photo).resize((101, 77)).save(tmp_path / "photo.jpg", quality=95)
    image = load_image(tmp_path / "photo.jpg", preprocess="pad")
    assert image.shape == (1, 1, 101, 101) and image.dtype == torch.uint8
    assert image[0, 0, 0].float().mean() < 10  # background black again
    assert load_image(tmp_path / "photo.jpg", "pad", invert=False)[0, 0, 20, 0] > 200
    photo = load_image(tmp_path / "photo.jpg")  # the default: cropped to the object, 28×28
    assert photo.shape == (1, 1, 28, 28) and photo[0, 0, :, 0].float().mean() < 30


def test_rgba_transparent_background(test_images, tmp_path: Path) -> None:
    images, _ = test_images
    item = np.pad(images[2].numpy(), 4)  # a margin, so the border is all background
    obj = 255 - item
    rgba = np.dstack([obj, obj, obj, np.where(item > 0, 255, 0).astype(np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")
    for preprocess in ("pad", "photo"):
        image = load_image(tmp_path / "cutout.png", preprocess)
        assert image[0, 0, 0, 0] < 10 and image[0, 0, -1, -1] < 10  # transparent -> white -> inverted to black


def test_predict_cli_with_bad_files(trained_run: Path, test_images, tmp_path: Path) -> None:
    images, _ = test_images
    Image.fromarray(images[0].numpy()).save(tmp_path / "good.png")
    Image.fromarray(np.stack([255 - images[3].numpy()] * 3, -1)).resize((45, 60)).save(tmp_path / "odd.jpg")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")
    files = [tmp_path / "good.png", tmp_path / "corrupt.png", tmp_path / "missing.png", tmp_path / "odd.jpg"]
    result = run_command(
        "predict.py",
        f"run_dir={trained_run}",
        f"images=[{','.join(map(str, files))}]",
        f"output={tmp_path / 'preds.json'}",
        "device=cpu",
    )
    assert result.returncode == 1  # some files failed ...
    assert f"{files[1]}: error: cannot read image" in result.stderr
    assert f"{files[2]}: error: cannot read image: No such file or directory" in result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()  # ... and the others were still classified
    assert len(lines) == 2 and lines[0].startswith(f"{files[0]}: ") and lines[1].startswith(f"{files[3]}: ")
    preds = json.loads((tmp_path / "preds.json").read_text())
    assert [p["error"] is None for p in preds] == [True, False, False, True]
    assert preds[0]["name"] in CLASS_NAMES and len(preds[0]["top"]) == 3
    # Temperature-scaled probabilities, and both outputs say so.
    assert preds[0]["temperature"] == read_temperature(trained_run) and preds[1]["temperature"] is None
    assert f"temperature-scaled by the run's T = {preds[0]['temperature']:.4f}" in result.stderr
    assert not list(tmp_path.glob("*.log")) and not (tmp_path / ".hydra").exists()


def test_predict_refuses_bad_invert(trained_run: Path, tmp_path: Path) -> None:
    result = run_command("predict.py", f"run_dir={trained_run}", "images=[x.png]", "invert=maybe")
    assert result.returncode == 1 and "invert='maybe': auto, true or false" in result.stderr


def test_predict_cli_photo_modes(trained_run: Path, test_images, tmp_path: Path) -> None:
    """preprocess=photo (the default) on a photo-like file and a blank one; a bad mode is
    refused before any file is read (the modes themselves: tests/test_photos.py)."""
    images, _ = test_images
    photo = np.full((300, 420, 3), 245, dtype=np.uint8)
    photo[40:250, 100:310] = np.asarray(Image.fromarray(255 - images[4].numpy()).resize((210, 210)))[..., None]
    Image.fromarray(photo).save(tmp_path / "photo.jpg", quality=90)
    Image.new("RGB", (200, 100), "white").save(tmp_path / "blank.png")
    files = f"images=[{tmp_path / 'photo.jpg'},{tmp_path / 'blank.png'}]"
    result = run_command("predict.py", f"run_dir={trained_run}", files, "device=cpu")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stdout.startswith(f"{tmp_path / 'photo.jpg'}: ")
    assert f"{tmp_path / 'blank.png'}: error: the image is blank" in result.stderr
    bad = run_command("predict.py", f"run_dir={trained_run}", files, "preprocess=crop")
    assert bad.returncode == 1 and "preprocess='crop': photo, pad or none" in bad.stderr and not bad.stdout
