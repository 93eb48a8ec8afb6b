"""evaluate.py, the run loader, and the TensorBoard summaries of a real run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from fmnist_lightning.errors import RunError
from fmnist_lightning.evaluation.runs import load_trained
from in_process import run_command


def test_evaluate_reproduces_test_acc(trained_run: Path, data_root: Path, tmp_path: Path) -> None:
    metrics = json.loads((trained_run / "metrics.json").read_text())["metrics"]
    for weights, attributions in (("best", "true"), ("net.pt", "false")):
        out = tmp_path / weights
        options = f"weights={weights}", "device=cpu", f"attributions={attributions}", f"hydra.run.dir={out}"
        result = run_command("evaluate.py", f"run_dir={trained_run}", *options)
        assert result.returncode == 0, result.stderr[-3000:]
        report = json.loads((out / "report.json").read_text())
        assert report["accuracy"] == pytest.approx(metrics["test/acc"], abs=1e-6)
        assert report["loss"] == pytest.approx(metrics["test/loss"], abs=1e-4)
        assert (out / "report.md").is_file() and (out / "confusion_matrix.png").is_file()
        gradcam = {
            name: (out / f"{name}.png").is_file() for name in ("misclassified_gradcam", "confused_pairs_gradcam")
        }
        assert (
            gradcam == dict.fromkeys(gradcam, attributions == "true")
            and ("attribution" in report) == gradcam["misclassified_gradcam"]
        )
    assert not list(trained_run.glob("evaluations"))  # the run folder is only read


def _partial_copy(run: Path, dst: Path, *keep: str) -> Path:
    for name in keep:
        target = dst / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(run / name, target)
    return dst


def test_evaluate_without_checkpoint_is_refused(trained_run: Path, tmp_path: Path) -> None:
    run = _partial_copy(trained_run, tmp_path / "run", ".hydra/config.yaml")
    result = run_command("evaluate.py", f"run_dir={run}", f"hydra.run.dir={tmp_path / 'out'}")
    assert result.returncode == 1
    assert f"error: Run {run} has no 'best' weights" in result.stderr
    assert "Traceback" not in result.stderr


def test_checkpoint_that_does_not_fit_is_refused(trained_run: Path, tmp_path: Path) -> None:
    best = json.loads((trained_run / "metrics.json").read_text())["best_checkpoint"]
    run = _partial_copy(trained_run, tmp_path / "run", ".hydra/config.yaml", "metrics.json", best)
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    cfg.model._target_ = "fmnist_lightning.models.ThreeConvNet"
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    with pytest.raises(RunError, match=r"do not fit the run's network .*ThreeConvNet at data\.image_size=16"):
        load_trained(run, "best")
    result = run_command("evaluate.py", f"run_dir={run}", f"hydra.run.dir={tmp_path / 'out'}")
    assert result.returncode == 1 and "do not fit" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["evaluate.py", "ood.py", "robustness.py", "explain.py", "attack.py"])
def test_a_data_root_that_does_not_exist_is_one_error_line(trained_run: Path, tmp_path: Path, command: str) -> None:
    """Every command that reads a run's test split refuses a bad data_root with one line (not
    Hydra's instantiation error), before any image is read."""
    missing = tmp_path / "nowhere"
    result = run_command(command, f"run_dir={trained_run}", f"data_root={missing}", f"hydra.run.dir={tmp_path / 'out'}")
    assert result.returncode == 1, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert lines == [lines[0]] and lines[0].startswith(f"error: data: root='{missing}': an existing folder")
    assert "Traceback" not in result.stderr and "Error in call to target" not in result.stderr


def test_not_a_run_folder(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="is not a run folder"):
        load_trained(tmp_path)


def test_load_trained_gives_eval_net_with_preprocessing(trained_run: Path) -> None:
    model = load_trained(trained_run)
    assert not model.net.training
    assert model.weights.name == "net.pt"
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    probs = model.predict_proba(images)
    assert probs.shape == (3, 10)
    torch.testing.assert_close(probs.sum(1), torch.ones(3))
    assert model.preprocess(images).shape == (3, 1, 16, 16)
    # net.pt holds the same weights as the best checkpoint.
    best = load_trained(trained_run, "best")
    for a, b in zip(model.net.state_dict().values(), best.net.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_tensorboard_has_figures_and_hparams(trained_run: Path) -> None:
    accumulator = EventAccumulator(str(trained_run), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    assert {"test/confusion_matrix", "test/misclassified"} <= set(tags["images"])
    assert "test/per_class/f1/Shirt" in tags["scalars"]
    assert "test/per_class/recall/T-shirt_top" in tags["scalars"]

    metrics = json.loads((trained_run / "metrics.json").read_text())["metrics"]
    assert accumulator.Scalars("test/acc")[-1].value == pytest.approx(metrics["test/acc"])
    assert accumulator.Scalars("val/acc_best")[-1].value == pytest.approx(metrics["val/acc_best"])

    content = accumulator.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} == {"val/acc_best", "test/acc", "test/loss"}
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert session.hparams["LR"].number_value == pytest.approx(1e-3)
    assert session.hparams["Model"].string_value == "TwoConv5x5Net"
    assert session.hparams["image_size"].number_value == 16
    # No placeholder metric.
    assert "hp_metric" not in tags["scalars"]
