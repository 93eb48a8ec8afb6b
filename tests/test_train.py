"""End-to-end runs on the real FashionMNIST: training, run folders, the CLI and sweeps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fmnist_lightning.data.idx import load_dataset
from fmnist_lightning.training.pipeline import train
from fmnist_lightning.training.processes import seconds_since_launch
from in_process import run_command

EPOCH_KEYS = {"train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "test/loss", "test/acc"}


def test_the_checks_know_the_logged_metrics(make_cfg) -> None:
    """With the default config, the module declares exactly the keys it logs (what callbacks may
    monitor and sweeps optimise)."""
    from fmnist_lightning.training.build import STAGES, build_run

    model = build_run(make_cfg()).model
    assert {key for stage in STAGES for key in model.logged_keys(stage)} == EPOCH_KEYS


def scalar_tags(tensorboard_dir: Path) -> set[str]:
    """Scalar tags in all TensorBoard event files of a folder."""
    tags: set[str] = set()
    for events in tensorboard_dir.glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    return tags


@pytest.mark.slow  # about accuracy: 300 batches at 28 px (about 9 s); the session's run learns in the default suite
def test_three_conv_learns_on_real_data(make_cfg, tmp_path: Path) -> None:
    """300 real batches of 64 images take ThreeConvNet far above chance (10 %)."""
    before = seconds_since_launch()
    metrics = train(make_cfg("model=three_conv", "trainer.max_epochs=1", "trainer.limit_train_batches=300"))
    after = seconds_since_launch()
    assert metrics["val/acc"] > 0.75, metrics
    assert metrics["test/acc"] > 0.75, metrics
    assert set(metrics) >= EPOCH_KEYS

    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["status"] == "finished" and summary["epochs"] == 1 and summary["global_step"] == 300
    assert summary["best_checkpoint"] == "checkpoints/epoch_000.ckpt"
    # The start-up: from this (pytest's) process's launch to the run's first training step.
    assert before < summary["first_step_s"] < after
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert summary["metrics"]["test/acc"] == metrics["test/acc"]
    assert scalar_tags(tmp_path) >= EPOCH_KEYS


def test_the_session_run_learns(trained_run: Path) -> None:
    """The shared run (2 short epochs of TwoConv5x5Net at 16 px) is far above chance (10 %)."""
    summary = json.loads((trained_run / "metrics.json").read_text())
    assert summary["status"] == "finished" and summary["epochs"] == 2
    assert summary["metrics"]["test/acc"] > 0.7 and summary["metrics"]["val/acc"] > 0.7, summary["metrics"]


def test_run_without_logger(unlogged_run) -> None:
    """logger=none: no logger files, the LR monitor is skipped, metrics.json is written."""
    run_dir, metrics = unlogged_run
    assert "test/acc" in metrics
    assert not list(run_dir.glob("events.out.tfevents.*")) and not (run_dir / "csv").exists()
    assert (run_dir / "metrics.json").is_file()


@pytest.mark.slow  # a sweep of 2 logged runs; the default suite's grid sweep and loggers cover its parts
def test_multirun_makes_one_folder_per_job(data_root: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_command(
        "train.py",
        "-m",
        "optimizer=adam,sgd",
        "debug=limit",
        "logger.tensorboard.projector_images=0",  # not what this test is about
        "trainer=cpu",
        "model=two_conv_5x5",
        "data.image_size=16",
        f"data.root={data_root}",
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0_optimizer-adam", "1_optimizer-sgd"]  # number and swept values
    for job, optimizer in zip(jobs, ["Adam", "SGD"], strict=True):
        assert optimizer in (job / ".hydra" / "config.yaml").read_text()
        assert list(job.glob("events.out.tfevents.*"))
        assert "test/acc" in scalar_tags(job)
        assert json.loads((job / "metrics.json").read_text())["status"] == "finished"


def test_truncated_data_file_gives_a_clear_error(data_root: Path, tmp_path: Path) -> None:
    bad_root = tmp_path / "data"
    bad_root.mkdir()
    for spec in load_dataset().specs.values():
        (bad_root / spec.name).write_bytes((data_root / spec.name).read_bytes())
    bad = bad_root / load_dataset().specs[("train", "images")].name
    bad.write_bytes(bad.read_bytes()[:123_456])

    result = run_command(
        "train.py",
        f"data.root={bad_root}",
        "data.local_copy=null",
        "data.download=false",
        "trainer=cpu",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert result.returncode == 1
    assert f"error: FashionMNIST file {bad} is truncated" in result.stderr
    assert "apt-get install dataset-fashion-mnist" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
