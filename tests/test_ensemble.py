"""fmnist-evaluate run_dir=[...]: two of the session's runs as one ensemble, its report and
predictions (the mean of the members' probabilities), and the members it refuses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fmnist_lightning.data.idx import load_dataset, load_split
from fmnist_lightning.errors import ArgumentError, RunError
from fmnist_lightning.evaluation import evaluate_run
from fmnist_lightning.evaluation.predictions import read_predictions
from fmnist_lightning.evaluation.runs import load_trained
from fmnist_lightning.run_folder import RunFolder
from in_process import run_command


@pytest.fixture(scope="module")
def members(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The session's run and a copy whose best checkpoint's network weights are scaled by 1.2
    (another network of the same config)."""
    other = Path(shutil.copytree(trained_run, tmp_path_factory.mktemp("members") / "other"))
    best = other / RunFolder(other).read_status()["best_checkpoint"]
    checkpoint = torch.load(best, weights_only=True)
    checkpoint["state_dict"] = {k: v * 1.2 if k.startswith("net.") else v for k, v in checkpoint["state_dict"].items()}
    torch.save(checkpoint, best)
    return [trained_run, other]


def member_probs(run: Path, images: torch.Tensor) -> np.ndarray:
    """A member's own probabilities (without its temperature), float64 ``(N, C)``."""
    model = load_trained(run, "best", "cpu")
    with torch.inference_mode():
        return model.net(model.preprocess(images)).double().softmax(dim=1).numpy()


def test_the_ensemble_averages_its_members_probabilities(members: list[Path], data_root: Path, tmp_path: Path) -> None:
    report = evaluate_run(members, tmp_path / "ensemble", device="cpu")
    assert report["ensemble"]["members"] == [str(m) for m in members]
    for section in ("accuracy_ci95", "calibration", "selective", "conformal"):
        assert section in report
    ensemble = read_predictions(tmp_path / "ensemble")
    probs = torch.from_numpy(ensemble.logits).double().softmax(dim=1).numpy()
    assert report["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == ensemble.label))
    images = load_split(data_root, "test", load_dataset())[0][:2000].unsqueeze(1)  # the first 2,000
    expected = np.mean([member_probs(m, images) for m in members], axis=0)
    assert np.allclose(probs[:2000], expected, atol=2e-6)
    assert not np.allclose(expected, member_probs(members[0], images), atol=1e-3)  # the members differ
    assert (tmp_path / "ensemble" / "report.md").is_file() and (tmp_path / "ensemble" / "conformal.json").is_file()
    assert "attribution" not in report and not (tmp_path / "ensemble" / "misclassified_gradcam.png").exists()


def test_members_that_differ_are_refused(members: list[Path], tmp_path: Path) -> None:
    other = Path(shutil.copytree(members[1], tmp_path / "other"))
    config_file = other / ".hydra" / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    config["data"]["class_names"] = [f"class {i}" for i in range(10)]
    config_file.write_text(yaml.safe_dump(config))
    with pytest.raises(RunError, match=rf"run_dir={other}: its class_names is"):
        evaluate_run([members[0], other], tmp_path / "x", device="cpu")
    with pytest.raises(ArgumentError, match="two or more different run folders"):
        evaluate_run([members[0], members[0]], tmp_path / "y", device="cpu")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.slow  # the ensemble's test pass again, then fmnist-compare
def test_the_command_and_compare(members: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "e"
    listed = f"run_dir=[{members[0]},{members[1]}]"
    result = run_command("evaluate.py", listed, "device=cpu", f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(an ensemble of 2 runs)" in result.stdout
    assert json.loads((out / "report.json").read_text())["ensemble"]["members"] == [str(m) for m in members]
    compared = run_command("compare.py", str(members[0]), str(out))
    assert compared.returncode == 0, compared.stderr[-3000:]
    refused = run_command("evaluate.py", listed, "robustness=true", f"hydra.run.dir={tmp_path / 'r'}")
    assert refused.returncode == 1 and "error: robustness=True: false for an ensemble" in refused.stderr


def test_an_ensemble_s_out_of_distribution_detection(members: list[Path], tmp_path: Path) -> None:
    """fmnist-ood on the ensemble: MSP of the mean probabilities; the other scores are left out
    with a note each (max logit ranks as MSP there, energy is constant, the features differ)."""
    from fmnist_lightning.evaluation.ood import evaluate_ood
    from fmnist_lightning.evaluation.ood_sets import Noise

    result = evaluate_ood(
        members, tmp_path / "ood", {"uniform_noise": Noise("uniform", count=500)}, device="cpu", bootstrap_resamples=0
    )
    assert list(result["scores"]) == ["msp"]
    assert set(result["notes"]) == {"max_logit", "energy", "mahalanobis"}
    assert result["run_dir"] == [str(m) for m in members] and len(result["weights"]) == 2
    assert result["temperature"] is None
    assert "an ensemble of 2 runs" in (tmp_path / "ood" / "ood.md").read_text()
