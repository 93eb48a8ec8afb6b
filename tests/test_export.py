"""fmnist-export: the exported graphs (ONNX in onnxruntime, torch.export) against the PyTorch
model on the real test set, their metadata, and the refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_predict import with_sets, without_sets

from conftest import config_names
from fmnist_lightning.data import load_dataset, load_split
from fmnist_lightning.errors import ArgumentError, DamagedFileError, RunError
from fmnist_lightning.evaluation.calibration import read_temperature
from fmnist_lightning.evaluation.conformal import prediction_sets, read_conformal
from fmnist_lightning.evaluation.runs import load_trained
from fmnist_lightning.serving.export import EXPORT_FILES, export_run, load_exported, metadata_conformal
from in_process import run_command


@pytest.fixture
def run_copy(trained_run: Path, tmp_path: Path) -> Path:
    """A copy of the session's trained run, with a conformal.json, to export into."""
    return with_sets(trained_run, tmp_path / "run")


@pytest.fixture(scope="module")
def test_set(data_root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = load_split(data_root, "test")
    return images[:, None], labels


def compare(
    run_dir: Path, exported: Path, images: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor | None = None
) -> dict:
    """How the exported graph's answers on ``images`` differ from the run's PyTorch model's
    (``reference``: its probabilities on ``images``, where already computed)."""
    if reference is None:
        reference = load_trained(run_dir).predict_proba(images)
    model = load_exported(exported)
    probs = torch.cat([model.predict_proba(chunk) for chunk in images.split(1000)])
    return {
        "same_class": int((probs.argmax(1) == reference.argmax(1)).sum()),
        "max_diff": float((probs - reference).abs().max()),
        "correct": int((probs.argmax(1) == labels).sum()),
        "reference_correct": int((reference.argmax(1) == labels).sum()),
    }


def report_correct(run_dir: Path) -> int:
    """The number of test images report.json says the run classified correctly."""
    return round(json.loads((run_dir / "report.json").read_text())["accuracy"] * 10_000)


def test_both_formats_carry_the_run_and_classify_like_it(run_copy: Path, test_set) -> None:
    """The session's run is at data.image_size=16, so the graphs contain the resize. The
    .pt2 program is the same computation; ONNX's Resize works in float where torchvision's
    uint8 kernel works in fixed point (pixels differ by 1/255), hence the looser bound."""
    images, labels = test_set
    reference = load_trained(run_copy).predict_proba(images)  # once for both formats
    for format, same_class, max_diff in (("torch_export", 10_000, 1e-5), ("onnx", 9_990, 2e-2)):
        path = export_run(run_copy, format)
        assert path == run_copy / EXPORT_FILES[format]
        model = load_exported(path)
        assert model.class_names == load_dataset().class_names
        assert yaml.safe_load(model.metadata["config"])["data"]["image_size"] == 16
        assert model.metadata["run"] == "run" and model.metadata["weights"] == "net.pt"
        assert float(model.metadata["test_acc"]) == json.loads((run_copy / "report.json").read_text())["accuracy"]
        # The graph divides by the run's temperature, as load_trained's predict_proba (compared below) does.
        assert model.metadata["calibrated"] == "true"
        assert float(model.metadata["temperature"]) == read_temperature(run_copy)
        # The conformal record travels too, and gives the sets of the graph's own probabilities.
        record = read_conformal(run_copy)
        assert json.loads(model.metadata["conformal"]) == record == model.conformal
        probs, threshold = model.predict_proba(images[:300]), record["thresholds"]["aps"]["0.05"]
        expected = prediction_sets(probs, "aps", threshold, record["raps"]["lambda"], record["raps"]["k_reg"])
        assert torch.equal(model.predict_sets(images[:300], "aps", 0.05), expected)
        result = compare(run_copy, path, images, labels, reference)
        assert result["same_class"] >= same_class and result["max_diff"] <= max_diff, result
        assert abs(result["correct"] - report_correct(run_copy)) <= 10_000 - same_class, result
    batch = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)  # the batch axis is dynamic: 1 works too
    assert load_exported(run_copy / "model.onnx").predict_proba(batch.numpy()).shape == (1, 10)


def test_refusals_change_nothing(run_copy: Path, tmp_path: Path) -> None:
    with pytest.raises(ArgumentError, match="format='torchscript'"):
        export_run(run_copy, "torchscript")
    path = export_run(run_copy, "torch_export")  # the quicker format (ONNX's exporter takes about 1 s)
    before = path.read_bytes()
    with pytest.raises(RunError, match="exists already; pass overwrite=true"):
        export_run(run_copy, "torch_export")
    assert path.read_bytes() == before
    assert export_run(run_copy, "torch_export", overwrite=True) == path
    with pytest.raises(RunError, match="is not a run folder"):
        export_run(tmp_path / "nothing", "onnx")
    # A run being trained (its lock held by another process) is not exported into.
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import sys, time; from fmnist_lightning.run_folder import lock_run_folder; "
         f"lock_run_folder({str(run_copy)!r}); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunError, match=f"is in use: process {holder.pid}"):
            export_run(run_copy, "onnx")
        assert not (run_copy / "model.onnx").exists()
    finally:
        holder.kill()
        holder.wait()
    assert not list(run_copy.glob(".model*"))  # no temporary file left behind


def test_an_export_without_conformal_sets_says_so(trained_run: Path, run_copy: Path, tmp_path: Path) -> None:
    """A run made before conformal.json, or weights the record is not for: ``"null"`` in the
    metadata, and asking for sets is refused with how to get them."""
    old = without_sets(trained_run, tmp_path / "old")
    for run, weights in ((old, "net.pt"), (run_copy, "last")):
        model = load_exported(export_run(run, "torch_export", weights))
        assert model.metadata["conformal"] == "null" and model.conformal is None
        with pytest.raises(RunError, match=f"exported before conformal prediction sets.*run_dir={run} overwrite"):
            model.predict_sets(torch.zeros(1, 1, 28, 28, dtype=torch.uint8), "lac", 0.1)
    with pytest.raises(DamagedFileError, match="its conformal metadata is damaged: its thresholds are None"):
        metadata_conformal({"conformal": '{"raps": {}}'}, run_copy / "model.pt2")


def test_damaged_or_missing_exports_are_refused(run_copy: Path) -> None:
    with pytest.raises(RunError, match="does not exist; export the run first"):
        load_exported(run_copy / "model.onnx")
    for name, data in (("model.onnx", b"not onnx"), ("model.pt2", b"PK\x03\x04 truncated")):
        (run_copy / name).write_bytes(data)
        with pytest.raises(DamagedFileError, match=f"{name}.*Export it again"):
            load_exported(run_copy / name)


def test_the_command(run_copy: Path) -> None:
    result = run_command("export.py", f"run_dir={run_copy}", "format=torch_export")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"wrote {run_copy / 'model.pt2'}" in result.stdout
    again = run_command("export.py", f"run_dir={run_copy}", "format=torch_export")
    assert again.returncode == 1 and "error: " in again.stderr and "overwrite=true" in again.stderr
    assert "Traceback" not in again.stderr


#: Every model config, and VGGBNNet with airbench's layers: patch whitening, flip and translation TTA.
EXPORTED = {name: [f"model={name}"] for name in config_names("model")}
EXPORTED["vgg_bn_airbench"] = ["model=vgg_bn", "model.whiten=2", "model.flip_tta=true", "model.crop_tta=1"]


@pytest.mark.slow
@pytest.mark.parametrize("model", EXPORTED)
def test_every_model_exports_with_parity(model: str, data_root: Path, tmp_path: Path, test_set) -> None:
    """Every model config, trained briefly and tested on all 10,000 test images, exports to
    both formats; on the full test set the graphs agree with PyTorch (at 28 px there is no
    resize, so ONNX agrees as closely as the program)."""
    run_dir = tmp_path / model
    result = run_command(
        "train.py", *EXPORTED[model], "trainer=cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=30",
        "trainer.limit_val_batches=2", "callbacks.early_stopping=null", f"data.root={data_root}",
        f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    images, labels = test_set
    for format in EXPORT_FILES:
        outcome = compare(run_dir, export_run(run_dir, format), images, labels)
        assert outcome["same_class"] >= 9_995 and outcome["max_diff"] <= 1e-4, (format, outcome)
        assert outcome["correct"] == report_correct(run_dir), (format, outcome)
