"""A dataset whose class count is not 10, described by one YAML and nothing else
(``tests/conf/data/digits5.yaml``: scikit-learn's digits grouped into 5 classes, written by
``tests/digits.py``): the network gets 5 outputs from ``data.num_classes``, it trains under
the default loss, ``mix=mixup`` and ``loss=focal``, and every artifact downstream (the
report, ``predictions.npz``, calibration, TensorBoard's PR curves and projector, predict,
the server, the export, compare, robustness) has 5 columns and the dataset's own names."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from digits import CONF, write_digits
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fmnist_lightning.evaluation.runs import load_trained
from fmnist_lightning.run_folder import RunFolder
from in_process import run_command

NAMES = ["0 or 1", "2 or 3", "4 or 5", "6 or 7", "8 or 9"]
#: One YAML of one's own, and a short fp32 run on the CPU.
DIGITS5 = (f"hydra.searchpath=[file://{CONF}]", "data=digits5", "model=two_conv_5x5")
SHORT = (
    "trainer=cpu",
    "trainer.precision=32-true",
    "trainer.max_epochs=1",
    "callbacks.progress_bar=null",
)


@pytest.fixture(scope="module")
def digits5_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digits(tmp_path_factory.mktemp("digits5"), classes=5)


def train(root: Path, folder: Path, *overrides: str) -> Path:
    result = run_command("train.py", *DIGITS5, *SHORT, *overrides, f"data.root={root}", f"hydra.run.dir={folder}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert RunFolder(folder).read_status()["status"] == "finished"
    return folder


@pytest.fixture(scope="module")
def run5(digits5_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of TwoConv5x5Net on the 5 classes, with the default loss."""
    return train(digits5_root, tmp_path_factory.mktemp("runs") / "run", "logger.tensorboard.projector_images=100")


def test_the_network_and_every_run_artifact_have_the_dataset_s_classes(run5: Path) -> None:
    model = load_trained(run5, device="cpu")
    assert model.net(torch.zeros(3, 1, 28, 28)).shape == (3, 5)
    assert RunFolder(run5).read_status()["metrics"]["test/acc"] > 0.5  # 5 classes after one epoch of 43 batches

    report = json.loads((run5 / "report.json").read_text())
    assert report["class_names"] == NAMES and len(report["confusion_matrix"]) == 5
    assert all(len(row) == 5 for row in report["confusion_matrix"])
    assert "| 4 or 5 |" in (run5 / "report.md").read_text()
    predictions = np.load(run5 / "predictions.npz")
    assert predictions["probs"].shape == predictions["logits"].shape == (297, 5)
    assert list(predictions["class_names"]) == NAMES
    assert json.loads((run5 / "temperature.json").read_text())["temperature"] > 0

    tags = set()
    for events in run5.glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events), size_guidance={"tensors": 0})
        accumulator.Reload()
        tags |= set(accumulator.Tags()["tensors"])
    assert {t for t in tags if t.startswith("test/pr/")} == {f"test/pr/{name}" for name in NAMES}
    (metadata,) = run5.rglob("metadata.tsv")
    assert {line.split("\t")[0] for line in metadata.read_text().splitlines()[1:]} == set(NAMES)


def test_predict_and_the_server_answer_with_the_dataset_s_classes(run5: Path, tmp_path: Path) -> None:
    image = tmp_path / "digit.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)).save(image)
    result = run_command(
        "predict.py", f"run_dir={run5}", f"images=[{image}]", "preprocess=none", "device=cpu", "top_k=10"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    named = result.stdout.split("digit.png: ", 1)[1]
    assert sum(name in named for name in NAMES) == 5  # top_k=10 lists the 5 classes there are

    from fmnist_lightning.serving.server import FashionMNISTAPI, ServeOptions, run_info

    options = ServeOptions(run_dir=str(run5), preprocess="none", top_k=10)
    api = FashionMNISTAPI(options)  # the server's request path
    api.setup("cpu")
    payload = {"images": [base64.b64encode(image.read_bytes()).decode()]}
    (answer,) = api.encode_response(api.predict(api.decode_request(payload)))["predictions"]
    assert [top["class"] for top in answer["top"]] != [] and len(answer["top"]) == 5
    assert {top["class"] for top in answer["top"]} == set(NAMES)
    info = run_info(options)
    assert (info["dataset"], info["num_classes"], info["class_names"]) == ("digits5", 5, NAMES)


@pytest.mark.parametrize("part", ["mix=mixup", pytest.param("loss=focal", marks=pytest.mark.slow)])
def test_soft_targets_and_another_loss_train_on_5_classes(digits5_root: Path, tmp_path: Path, part: str) -> None:
    """Under mixup the loss gets float ``(B, 5)`` soft targets; with a 10-wide network it
    crashed mid-epoch."""
    run = train(digits5_root, tmp_path / "run", part, "logger=csv")
    assert RunFolder(run).read_status()["metrics"]["test/acc"] > 0.3


@pytest.mark.slow
def test_evaluate_export_compare_and_robustness_keep_5_classes(run5: Path, digits5_root: Path, tmp_path: Path) -> None:
    result = run_command("evaluate.py", f"run_dir={run5}", "device=cpu", f"hydra.run.dir={tmp_path / 'eval'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["class_names"] == NAMES

    result = run_command("export.py", f"run_dir={run5}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "uint8 (B, 1, 28, 28) images -> (B, 5) probabilities" in result.stdout, result.stdout
    from fmnist_lightning.serving.export import load_exported

    exported = load_exported(run5 / "model.onnx")
    assert exported.class_names == tuple(NAMES)
    assert exported.predict_proba(np.zeros((2, 1, 28, 28), np.uint8)).shape == (2, 5)

    other = train(digits5_root, tmp_path / "other", "seed=7", "logger=csv")
    result = run_command("compare.py", str(run5), str(other), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    compared = json.loads(result.stdout)
    assert [c["name"] for c in compared["per_class"]] == NAMES and compared["images"] == 297

    result = run_command(
        "robustness.py", f"run_dir={run5}", "device=cpu", "severities=[5]", f"hydra.run.dir={tmp_path / 'rob'}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    robustness = json.loads((tmp_path / "rob" / "robustness.json").read_text())
    assert 0 < robustness["clean_accuracy"] <= 1

    # AutoAttack's targeted attacks aim at the other 4 classes (APGD-T, FAB-T: n_classes - 1 targets).
    out = tmp_path / "attack"
    result = run_command(
        "attack.py", f"run_dir={run5}", "device=cpu", "limit=8", "attacks=[autoattack]", "eps.Linf=[0.3]",
        "eps.L2=[]", "checks=null", f"hydra.run.dir={out}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    attacked = json.loads((out / "attack.json").read_text())
    assert attacked["results"][0]["accuracy"] <= attacked["clean"]["accuracy"]
