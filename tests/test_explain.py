"""fmnist-explain: its files for test images and for image files, the completeness figures of
integrated gradients, the refusals (one ``error:`` line each, nothing written), Grad-CAM refused for
a network without a convolution, and the old run folder explained."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from fmnist_lightning.data import load_split
from fmnist_lightning.evaluation.explain import warn_incomplete
from in_process import run_command

OLD_RUN = Path(__file__).parent / "data" / "run_97bf8f4"
#: explain.json's keys, and each image's.
KEYS = {"run_dir", "weights", "method", "layer", "steps", "samples", "noise", "temperature", "target", "images"}
IMAGE_KEYS = {"figure", "source", "label", "true_class", "predicted", "predicted_class", "probability", "target"}
IMAGE_KEYS |= {"target_class", "target_probability"}
COMPLETENESS_KEYS = {"delta", "logit_gap", "logit", "relative_delta"}


class LinearNet(nn.Module):
    """A network without a convolution, for Grad-CAM's refusal (``model._target_=test_explain.LinearNet``):
    float ``(B, 1, S, S)`` → ``(B, num_classes)`` logits by one linear layer."""

    def __init__(self, image_size: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(image_size * image_size, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


def errors(result) -> list[str]:
    """The ``error:`` lines of a command's stderr."""
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def test_test_images_by_default(trained_run: Path, tmp_path: Path) -> None:
    """No images or indices: the first eight test images, each explained by Grad-CAM for its predicted class."""
    out = tmp_path / "out"
    result = run_command("explain.py", f"run_dir={trained_run}", "device=cpu", f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((out / "explain.json").read_text())
    assert set(saved) == KEYS and saved["method"] == "gradcam" and saved["layer"]
    assert [e["source"] for e in saved["images"]] == list(range(8))
    for entry in saved["images"]:
        assert set(entry) == IMAGE_KEYS and entry["target"] == entry["predicted"]
        assert entry["label"] is not None and 0 < entry["probability"] <= 1
    maps = np.load(out / "maps.npy")
    assert maps.shape == (8, 16, 16) and maps.dtype == np.float32 and (maps >= 0).all() and maps.any()
    assert sorted(p.name for p in out.glob("*.png")) == sorted([f"{k}_test_{k}.png" for k in range(8)] + ["grid.png"])
    lines = result.stdout.splitlines()
    first = saved["images"][0]
    assert f"test_0: {first['predicted_class']} ({first['probability']:.3f}); explained class" in lines[0]
    assert lines[-1] == f"explain: {out}"
    assert not list(trained_run.glob("*.npy")) and not list(trained_run.glob("explain*"))


def test_integrated_gradients_of_a_file_for_one_class(trained_run: Path, data_root: Path, tmp_path: Path) -> None:
    images, _ = load_split(data_root, "test")
    Image.fromarray(images[0].numpy()).save(tmp_path / "item.png")
    args = ["method=integrated_gradients", "target=3", "steps=16", "preprocess=none", "device=cpu"]
    out = tmp_path / "out"
    result = run_command(
        "explain.py", f"run_dir={trained_run}", f"images=[{tmp_path / 'item.png'}]", *args, f"hydra.run.dir={out}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((out / "explain.json").read_text())
    (entry,) = saved["images"]
    assert saved["steps"] == 16 and saved["layer"] is None
    assert set(entry) == IMAGE_KEYS | COMPLETENESS_KEYS and entry["label"] is None
    assert entry["source"] == str(tmp_path / "item.png") and entry["target_class"] == "Dress"
    assert entry["relative_delta"] == pytest.approx(abs(entry["delta"]) / abs(entry["logit"]))
    assert np.load(out / "maps.npy").shape == (1, 16, 16) and (out / "0_item.png").is_file()
    assert "item.png: " in result.stdout and "; explained class Dress" in result.stdout


def test_an_incomplete_integration_is_warned_of(caplog: pytest.LogCaptureFixture) -> None:
    entries = [{"relative_delta": 0.2}, {"relative_delta": 0.001}, {"relative_delta": None}, {}]
    with caplog.at_level(logging.WARNING):
        assert warn_incomplete(entries, steps=64) == 2
    assert "2 of 4 images" in caplog.text and "steps=256" in caplog.text
    assert warn_incomplete([{"relative_delta": 0.001}], steps=64) == 0


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("method=lime", "error: method='lime': one of gradcam, integrated_gradients, saliency, smoothgrad"),
        ("target=10", "error: target=10: a class index from 0 to 9"),
        ("indices=[3,10000]", "error: indices=[3, 10000]: indices of the 10000 test images"),
        ("images=[a.png]", "error: indices=[0]: images=[...] or indices=[...], not both"),
        ("layer=nothing", "error: layer='nothing'"),
    ],
)
def test_a_bad_option_is_refused_with_one_line(trained_run: Path, tmp_path: Path, option: str, expected: str) -> None:
    out = tmp_path / "out"
    result = run_command("explain.py", f"run_dir={trained_run}", "indices=[0]", option, f"hydra.run.dir={out}")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(errors(result)) == 1 and errors(result)[0].startswith(expected), result.stderr[-3000:]
    assert not (out / "explain.json").exists() and not list(out.glob("*.png"))


def test_an_unreadable_file_is_refused_with_one_line(trained_run: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.png"
    result = run_command("explain.py", f"run_dir={trained_run}", f"images=[{missing}]", f"hydra.run.dir={tmp_path}/o")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert errors(result) == [f"error: {missing}: cannot read image: No such file or directory"]


def test_gradcam_is_refused_for_a_network_without_a_convolution(trained_run: Path, tmp_path: Path) -> None:
    """A run whose network is ``LinearNet``: Grad-CAM is refused with the message naming the other
    methods, which explain it."""
    run = Path(shutil.copytree(trained_run, tmp_path / "run", ignore=shutil.ignore_patterns("events.*", "*.ckpt")))
    config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    config["model"] = {"_target_": "test_explain.LinearNet", "image_size": 16}
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    torch.save(LinearNet(16).state_dict(), run / "net.pt")
    args = [f"run_dir={run}", "weights=net.pt", "trusted_modules=[test_explain]", "indices=[0,1]", "device=cpu"]
    refused = run_command("explain.py", *args, f"hydra.run.dir={tmp_path / 'a'}")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    expected = "error: method='gradcam': the network has no nn.Conv2d layer for Grad-CAM; use method=integrated"
    assert len(errors(refused)) == 1 and errors(refused)[0].startswith(expected), refused.stderr[-3000:]
    result = run_command("explain.py", *args, "method=saliency", f"hydra.run.dir={tmp_path / 'b'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert np.load(tmp_path / "b" / "maps.npy").shape == (2, 16, 16)


def test_the_old_run_folder_is_explained(data_root: Path, tmp_path: Path) -> None:
    """The run folder of commit 97bf8f4 (tests/test_old_runs.py), by SmoothGrad, its data in data_root."""
    run = Path(shutil.copytree(OLD_RUN, tmp_path / "run"))
    args = [f"run_dir={run}", f"data_root={data_root}", "indices=[4,2]", "method=smoothgrad", "samples=4"]
    result = run_command("explain.py", *args, "device=cpu", f"hydra.run.dir={tmp_path / 'out'}")
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((tmp_path / "out" / "explain.json").read_text())
    assert [e["source"] for e in saved["images"]] == [4, 2] and saved["samples"] == 4
    assert np.load(tmp_path / "out" / "maps.npy").shape == (2, 16, 16)
    assert (tmp_path / "out" / "0_test_4.png").is_file() and (tmp_path / "out" / "1_test_2.png").is_file()
