"""Every logger gets what the run reports, through Lightning's logger API: one run logs to
TensorBoard, CSV and MLflow (a local SQLite store) at once, another (slow) to W&B in offline
mode, and what each received is read back from its own files."""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path

import pytest
import yaml

from conftest import config_names
from fmnist_lightning.evaluation.calibration import read_temperature
from fmnist_lightning.evaluation.conformal import read_conformal
from fmnist_lightning.run_folder import RunFolder
from in_process import run_command

SCALARS = {
    "train/loss",
    "train/acc",
    "val/loss",
    "val/acc",
    "val/acc_best",
    "test/loss",
    "test/acc",
    "test/per_class/f1/Shirt",
    "test/aurc",
    "test/eaurc",
    "test/risk_at_80_coverage",
}
FIGURES = {
    "test/confusion_matrix",
    "test/reliability",
    "test/risk_coverage",
    "test/misclassified",
    "test/misclassified_gradcam",
    "test/confused_pairs_gradcam",
}
#: The TestReport's Grad-CAM figures: made only when a logger takes images (or when asked).
GRADCAM_FILES = ("misclassified_gradcam.png", "confused_pairs_gradcam.png")


def logged(loggers: str, run_dir: Path, data_root: Path) -> Path:
    """A short run (two epochs of 20 batches) logged by ``loggers`` (``logger=[...]``, as a user
    combines them), in ``run_dir``."""
    result = run_command(
        "train.py",
        f"logger={loggers}",
        "model=two_conv_5x5",
        "data.image_size=16",
        "trainer=cpu",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=20",
        "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2",
        *(["logger.tensorboard.projector_images=0"] if "tensorboard" in loggers else []),  # tests/test_tensorboard.py
        f"data.root={data_root}",
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / "curves.png").is_file() and (run_dir / "history.csv").is_file()
    return run_dir


@pytest.fixture(scope="module")
def logged_run(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One run logged by three loggers at once: each test reads back what its logger received."""
    return logged("[tensorboard,csv,mlflow]", tmp_path_factory.mktemp("loggers") / "run", data_root)


@pytest.fixture(scope="module")
def wandb_run(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run logged by W&B beside TensorBoard (its offline service takes seconds to start: slow)."""
    return logged("[tensorboard,wandb]", tmp_path_factory.mktemp("wandb") / "run", data_root)


def test_every_logger_option_is_tested() -> None:
    assert set(config_names("logger")) == {"tensorboard", "csv", "tensorboard_csv", "mlflow", "wandb", "none"}


def test_tensorboard(logged_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = logged_run
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert set(events.Tags()["scalars"]) >= SCALARS
    assert set(events.Tags()["images"]) >= FIGURES
    assert events.Scalars("test/acc")[-1].value == pytest.approx(
        RunFolder(run_dir).read_status()["metrics"]["test/acc"]
    )
    assert "model" in yaml.safe_load((run_dir / "hparams.yaml").read_text())
    # The report's selective classification, in its files as in the loggers'.
    selective = json.loads((run_dir / "report.json").read_text())["selective"]
    assert events.Scalars("test/aurc")[-1].value == pytest.approx(selective["aurc"])
    assert 0 <= selective["aurc_oracle"] <= selective["aurc"] <= 1 and len(selective["curve"]["risk"]) == 100
    assert "## Selective classification" in (run_dir / "report.md").read_text()
    assert (run_dir / "risk_coverage.png").is_file()
    # The conformal sets: calibrated on the odd half of the 2,000 validation images, saved beside
    # temperature.json (fitted on the even half), in report.md and the loggers.
    conformal = json.loads((run_dir / "report.json").read_text())["conformal"]
    assert conformal["calibration_images"] == 1000 and set(conformal["methods"]) == {"lac", "aps", "raps"}
    lac = conformal["methods"]["lac"]["0.1"]
    assert 0 < lac["coverage"] <= 1 and 1 <= lac["mean_size"] <= 10 and len(lac["class_coverage"]) == 10
    saved = read_conformal(run_dir)
    assert saved["thresholds"]["lac"]["0.1"] == lac["threshold"] and saved["temperature"] == read_temperature(run_dir)
    assert json.loads((run_dir / "temperature.json").read_text())["fitted_on"] == "1000 validation images"
    assert events.Scalars("test/conformal/coverage_lac_90")[-1].value == pytest.approx(lac["coverage"])
    assert "## Conformal prediction sets" in (run_dir / "report.md").read_text()
    # The Grad-CAM figures, beside the others, listed in report.md under the most confused pairs.
    assert all((run_dir / name).is_file() for name in GRADCAM_FILES)
    assert json.loads((run_dir / "report.json").read_text())["attribution"]["layer"] == "features.1.1"
    assert "in confused_pairs_gradcam.png" in (run_dir / "report.md").read_text()


def test_no_attributions_without_an_image_logger(unlogged_run) -> None:
    """A run whose loggers take no images (here none) keeps no images for them and draws nothing."""
    run_dir, _ = unlogged_run
    assert not any((run_dir / name).exists() for name in GRADCAM_FILES)
    assert "attribution" not in json.loads((run_dir / "report.json").read_text())


@pytest.mark.slow
def test_csv_only_run_has_no_attributions(data_root: Path, tmp_path: Path) -> None:
    run_dir = logged("csv", tmp_path / "run", data_root)
    assert not any((run_dir / name).exists() for name in GRADCAM_FILES)
    assert not list(run_dir.glob("events.out.tfevents.*")) and (run_dir / "csv" / "metrics.csv").is_file()
    assert "attribution" not in json.loads((run_dir / "report.json").read_text())


def test_csv(logged_run: Path) -> None:
    run_dir = logged_run
    with open(run_dir / "csv" / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert set(rows[0]) >= SCALARS
    test_acc = [float(r["test/acc"]) for r in rows if r["test/acc"]]
    assert test_acc == [pytest.approx(RunFolder(run_dir).read_status()["metrics"]["test/acc"])]
    assert "optimizer" in yaml.safe_load((run_dir / "csv" / "hparams.yaml").read_text())


def test_mlflow(logged_run: Path) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    run_dir = logged_run
    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("fmnist-lightning")
    (run,) = client.search_runs([experiment.experiment_id])
    assert set(run.data.metrics) >= SCALARS
    assert run.data.metrics["test/acc"] == pytest.approx(RunFolder(run_dir).read_status()["metrics"]["test/acc"])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")] != []
    assert run.data.params["model/_target_"] == "fmnist_lightning.models.TwoConv5x5Net"
    assert run.data.params["optimizer/lr"] == "0.001"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "test")}
    assert artifacts == {f"{f}.png" for f in FIGURES}
    assert all((run_dir / "mlartifacts").rglob(f"{Path(f).name}.png") for f in FIGURES)


def wandb_records(path: Path):
    """The records of a W&B ``.wandb`` file: LevelDB's log format (32 KiB blocks of records
    with a 7-byte header: CRC, length, type) after W&B's 7-byte file header, each a
    ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pieces = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (kind, length) == (0, 0):  # block trailer or padding
            pos += left
            continue
        pieces += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            pieces = b""
            yield record


@pytest.mark.slow
def test_wandb_offline(wandb_run: Path) -> None:
    wandb = pytest.importorskip("wandb")
    # The run's W&B run was ended with the run (loggers.end_runs), so that the next run in this
    # process, such as the next job of a sweep, gets a W&B run of its own.
    assert wandb.run is None
    run_dir = wandb_run
    (offline,) = (run_dir / "wandb").glob("offline-run-*")  # offline: nothing was sent
    history: dict[str, str] = {}
    config: set[str] = set()
    for record in wandb_records(next(offline.glob("run-*.wandb"))):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.update({item.key or "/".join(item.nested_key): item.value_json for item in record.history.item})
        elif kind == "config":
            config |= {item.key for item in record.config.update}
    assert set(history) >= SCALARS
    assert float(history["test/acc"]) == pytest.approx(RunFolder(run_dir).read_status()["metrics"]["test/acc"])
    assert {"model", "optimizer", "data", "trainer"} <= config
    for figure in FIGURES:
        assert list((offline / "files" / "media" / "images" / "test").glob(f"{Path(figure).name}_*.png")), figure
