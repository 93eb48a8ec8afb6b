"""predict.py and image loading on real files of several kinds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fmnist_lightning.data import load_dataset, load_split
from fmnist_lightning.evaluation.calibration import read_temperature, write_temperature
from fmnist_lightning.evaluation.conformal import (
    CONFORMAL_FILE,
    conformal_report,
    prediction_sets,
    read_conformal,
    write_conformal,
)
from fmnist_lightning.evaluation.files import load_image, predict_files
from fmnist_lightning.evaluation.runs import load_trained
from in_process import run_command

CLASS_NAMES = load_dataset().class_names


def with_sets(trained_run: Path, folder: Path) -> Path:
    """A copy of the session's run in ``folder`` with a ``conformal.json``: its own, or, for a run
    trained before conformal sets, one calibrated on its saved test predictions."""
    run = Path(shutil.copytree(trained_run, folder))
    if read_conformal(run) is None:
        saved = np.load(run / "predictions.npz")
        temperature = read_temperature(run)
        probs = (torch.from_numpy(saved["logits"]).double() / (temperature or 1.0)).softmax(dim=1)
        labels = torch.from_numpy(saved["label"])
        write_conformal(run, {"temperature": temperature} | conformal_report(probs, labels, probs, labels))
    return run


def without_sets(trained_run: Path, folder: Path) -> Path:
    """A copy of the session's run in ``folder`` without ``conformal.json``: a run made before conformal sets."""
    return Path(shutil.copytree(trained_run, folder, ignore=shutil.ignore_patterns(CONFORMAL_FILE)))


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
    assert preds[0]["prediction_set"] is None and "; set {" not in result.stdout  # sets: null, the default
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


def test_predict_cli_prints_sets(trained_run: Path, test_images, tmp_path: Path) -> None:
    """Each line and each JSON entry gain the image's set: ``prediction_sets`` of the run's
    probabilities with the threshold of ``conformal.json``."""
    run = with_sets(trained_run, tmp_path / "run")
    images, _ = test_images
    paths = []
    for i in range(3):
        Image.fromarray(images[i].numpy()).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    output = tmp_path / "preds.json"
    args = f"run_dir={run}", f"images=[{','.join(map(str, paths))}]", "preprocess=none", "device=cpu"
    result = run_command("predict.py", *args, "sets=raps", "alpha=0.05", f"output={output}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "prediction sets: raps at alpha = 0.05 (target coverage 95 %)" in result.stderr
    record = read_conformal(run)
    raps = record["raps"]
    probs = load_trained(run).predict_proba(images[:3, None])
    expected = prediction_sets(probs, "raps", record["thresholds"]["raps"]["0.05"], raps["lambda"], raps["k_reg"])
    want = [[CLASS_NAMES[c] for c in row.nonzero().flatten().tolist()] for row in expected]
    lines = result.stdout.splitlines()
    for line, names in zip(lines, want, strict=True):
        empty = "" if names else " (empty: no class is likely enough at this α)"
        assert line.endswith(f"; set {{{', '.join(names)}}}{empty}"), line
    preds = json.loads(output.read_text())
    assert [p["prediction_set"] for p in preds] == want
    assert {(p["set_method"], p["set_alpha"]) for p in preds} == {("raps", 0.05)}


def test_predict_refuses_bad_set_options_before_reading_images(trained_run: Path, tmp_path: Path) -> None:
    run = with_sets(trained_run, tmp_path / "run")
    missing = f"images=[{tmp_path / 'missing.png'}]"  # never read: the options are refused first
    for option, words in (
        ("alpha=0.2", "alpha=0.2: one of the calibrated α: 0.1, 0.05"),
        ("sets=topk", "sets='topk': one of the calibrated methods: lac, aps, raps"),
    ):
        sets = [] if option.startswith("sets") else ["sets=lac"]
        result = run_command("predict.py", f"run_dir={run}", missing, *sets, option)
        assert result.returncode == 1 and not result.stdout, result.stderr
        assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1, result.stderr
        assert words in result.stderr


def test_predict_sets_of_an_old_run_and_of_other_weights(trained_run: Path, tmp_path: Path) -> None:
    """A run made before conformal.json, and weights the record is not for: one ``error:`` line
    that says how to get sets; without ``sets`` they predict as before. Thresholds calibrated at
    another temperature than temperature.json's are refused too."""
    old = without_sets(trained_run, tmp_path / "old")
    image = tmp_path / "x.png"
    Image.new("L", (28, 28)).save(image)
    args = f"images=[{image}]", "preprocess=none", "device=cpu"
    for run, weights in ((old, "net.pt"), (trained_run, "last")):
        result = run_command("predict.py", f"run_dir={run}", f"weights={weights}", *args, "sets=aps")
        assert result.returncode == 1 and not result.stdout and len(result.stderr.splitlines()) == 1
        assert result.stderr.startswith("error: no prediction sets for ") and "Traceback" not in result.stderr
        assert "made before conformal prediction sets" in result.stderr
        assert f"fmnist-evaluate run_dir={run} weights=best, then copy conformal.json and" in result.stderr
    assert run_command("predict.py", f"run_dir={old}", *args).returncode == 0
    other = with_sets(trained_run, tmp_path / "other")
    write_temperature(other, 2.5, 100)
    result = run_command("predict.py", f"run_dir={other}", *args, "sets=aps")
    assert result.returncode == 1 and "scaled by 2.5 (temperature.json): copy both files" in result.stderr


@pytest.mark.slow  # fmnist-evaluate on the whole test set
def test_an_evaluation_gives_an_old_run_sets(trained_run: Path, tmp_path: Path) -> None:
    """As docs/uncertainty.md says: ``fmnist-evaluate run_dir=<old run>`` writes conformal.json into
    its output folder; copied into the run folder with its temperature.json, the run has sets."""
    old = without_sets(trained_run, tmp_path / "old")
    evaluation = tmp_path / "evaluation"
    result = run_command("evaluate.py", f"run_dir={old}", "device=cpu", f"hydra.run.dir={evaluation}")
    assert result.returncode == 0, result.stderr[-3000:]
    for name in (CONFORMAL_FILE, "temperature.json"):
        shutil.copy(evaluation / name, old / name)
    image = tmp_path / "x.png"
    Image.new("L", (28, 28)).save(image)
    result = run_command("predict.py", f"run_dir={old}", f"images=[{image}]", "preprocess=none", "sets=lac")
    assert result.returncode == 0 and "; set {" in result.stdout, result.stderr[-2000:]
