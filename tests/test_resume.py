"""Runs that are stopped, crash, diverge or run twice: resume, interruption, non-finite loss,
bit-for-bit reproducibility, run folders, and several processes."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import compose_with_hydra, run_script, scalars, start_script
from fmnist_lightning import run_folder as locks
from fmnist_lightning.cli.hydra_hooks import RunFolderGuard
from fmnist_lightning.errors import NonFiniteLossError, RunInterrupted
from fmnist_lightning.run_folder import RunFolder, claim_folder, job_dir, job_number, release_run_folder, run_label
from fmnist_lightning.training.pipeline import train
from fmnist_lightning.training.resume import resumed_config

# Three short epochs with everything random switched on: dropout (two_conv_bn), random
# flips, shuffling, and a cosine schedule whose state must survive the restart. The precision
# is fixed: ``auto`` chooses by a timing probe, which a loaded CPU can tip, and the runs
# compared bit for bit must train alike.
SHORT_RUN = [
    "model=two_conv_bn",
    "data.image_size=16",
    "trainer=cpu",
    "trainer.max_epochs=3",
    "trainer.limit_train_batches=100",
    "trainer.limit_val_batches=10",
    "trainer.deterministic=true",
    "trainer.precision=32-true",
    "scheduler=cosine",
    "data.augment.flip.p=0.5",
    "seed=7",
    "logger=tensorboard_csv",
    "callbacks.progress_bar=null",
]


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    """Waits until ``path`` exists; fails if the process ends first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(
                f"the run ended (exit {process.returncode}) before {path} appeared: {process.stderr.read()[-3000:]}"
            )
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(0.02)


def csv_rows(run_dir: Path, key: str) -> list[tuple[str, str]]:
    """(epoch, value) of the rows of ``csv/metrics.csv`` that have ``key``."""
    with (run_dir / "csv" / "metrics.csv").open() as file:
        return [(row["epoch"], row[key]) for row in csv.DictReader(file) if row.get(key)]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), f"{key} differs"


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(data_root: Path, tmp_path: Path) -> None:
    args = [*SHORT_RUN, f"data.root={data_root}"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    result = run_script("train.py", *args, f"hydra.run.dir={whole}")
    assert result.returncode == 0, result.stderr[-3000:]

    process = start_script("train.py", *args, f"hydra.run.dir={killed}")
    wait_for(killed / "checkpoints" / "last.ckpt", process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    crashed = RunFolder(killed).read_status()
    assert crashed["status"] == "running" and 1 <= crashed["epochs"] < 3, crashed

    result = run_script("train.py", f"resume={killed}")
    assert result.returncode == 0, result.stderr[-3000:]

    assert_same_weights(whole / "net.pt", killed / "net.pt")
    a, b = RunFolder(whole).read_status(), RunFolder(killed).read_status()
    assert b["status"] == "finished"
    assert (a["epochs"], a["global_step"], a["metrics"]) == (b["epochs"], b["global_step"], b["metrics"])
    # The logs continue in the same run: every epoch once, with the same values.
    assert scalars(whole, "val/acc") == scalars(killed, "val/acc")
    assert len(scalars(killed, "val/acc")) == 3
    assert csv_rows(whole, "val/acc") == csv_rows(killed, "val/acc")
    # The run's own history (what curves.png is drawn from) continues too. (A train/* value
    # is logged after the epoch's checkpoint, so a kill in between may lose that one point.)
    whole_history, killed_history = RunFolder(whole).read_history(), RunFolder(killed).read_history()
    for key in ("val/acc", "val/loss", "val/acc_best"):
        assert killed_history[key] == whole_history[key] and sorted(killed_history[key]) == [1, 2, 3]
    assert killed_history["train/loss"][3] == whole_history["train/loss"][3]
    # The original config stays; the attempt's Hydra files are kept beside it.
    assert (killed / ".hydra" / "config.yaml").read_text() == (whole / ".hydra" / "config.yaml").read_text()
    assert len(list((killed / ".hydra").glob("resume_*/config.yaml"))) == 1


@pytest.mark.parametrize(
    "sig",
    [pytest.param(signal.SIGTERM, marks=pytest.mark.slow), pytest.param(signal.SIGINT, marks=pytest.mark.slow)],
    ids=["SIGTERM", "SIGINT"],
)
def test_signal_mid_epoch_leaves_a_resumable_run(data_root: Path, tmp_path: Path, sig: signal.Signals) -> None:
    run_dir = tmp_path / "run"
    args = [
        "model=three_conv",
        "trainer=cpu",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=300",
        "trainer.limit_val_batches=5",
    ]
    process = start_script("train.py", *args, f"data.root={data_root}", f"hydra.run.dir={run_dir}")
    wait_for(run_dir / "metrics.json", process)  # written once all checks passed, just before fit
    time.sleep(2)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=120)

    assert process.returncode != 0
    assert f"resume={run_dir}" in stderr and "Traceback" not in stderr, stderr[-3000:]
    stopped = RunFolder(run_dir).read_status()
    assert stopped["status"] == "interrupted" and stopped["epochs"] == 0, stopped
    assert 0 < stopped["global_step"] < 300
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert (checkpoint["epoch"], checkpoint["global_step"]) == (0, stopped["global_step"])

    result = run_script("train.py", f"resume={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    done = RunFolder(run_dir).read_status()
    assert done["status"] == "finished" and done["epochs"] == 1 and done["global_step"] == 300, done
    assert done["metrics"]["test/acc"] > 0.7


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_after_its_batch(make_cfg, tmp_path: Path, sig: signal.Signals) -> None:
    """A signal in training batch 25 (epoch 1) stops the run after that batch, with that
    step's full state in last.ckpt and the run marked interrupted; the handlers are the
    earlier ones again afterwards."""
    cfg = make_cfg(
        "model=two_conv_5x5",
        "data.image_size=16",
        "trainer.max_epochs=3",
        "trainer.limit_train_batches=20",
        "trainer.limit_val_batches=2",
        "logger=none",
        "+callbacks.signal_at._target_=conftest.SignalAt",
        "+callbacks.signal_at.step=25",
        f"+callbacks.signal_at.signum={int(sig)}",
    )
    sigterm = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RunInterrupted, match="training stopped in epoch 1 \\(step 26\\)"):
        train(cfg)
    assert signal.getsignal(signal.SIGTERM) == sigterm
    stopped = RunFolder(tmp_path).read_status()
    assert (stopped["status"], stopped["epochs"], stopped["global_step"]) == ("interrupted", 1, 26), stopped
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert (checkpoint["epoch"], checkpoint["global_step"]) == (1, 26)


def test_non_finite_loss_stops_the_run(make_cfg, tmp_path: Path) -> None:
    """The loss becomes NaN in epoch 1: the run stops at that step, is marked failed, and
    keeps epoch 0's checkpoint with finite weights."""
    cfg = make_cfg(
        "model=two_conv_5x5",
        "model._target_=conftest.NaNAfterNet",
        "+model.nan_from=30",
        "data.image_size=16",
        "trainer.max_epochs=3",
        "trainer.limit_train_batches=20",
        "trainer.limit_val_batches=2",
        "logger=none",
    )
    with pytest.raises(NonFiniteLossError, match="became nan at step 30 \\(epoch 1, batch 10\\)"):
        train(cfg)
    failed = RunFolder(tmp_path).read_status()
    assert failed["status"] == "failed" and failed["epochs"] == 1 and "step 30" in failed["error"]
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values() if v.is_floating_point())
    assert not (tmp_path / "net.pt").exists() and not (tmp_path / "report.json").exists()


def test_deterministic_cpu_runs_are_identical(make_cfg, tmp_path: Path) -> None:
    overrides = [
        "model=two_conv_bn",
        "data.image_size=16",
        "seed=3",
        "trainer.deterministic=true",
        "trainer.precision=32-true",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=5",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "data.augment.flip.p=0.5",
        "logger=none",
    ]
    results = []
    for name in ("a", "b"):
        cfg = make_cfg(*overrides, f"output_dir={tmp_path / name}")
        results.append(train(cfg))
    assert results[0] == results[1]
    assert_same_weights(tmp_path / "a" / "net.pt", tmp_path / "b" / "net.pt")


def test_claim_folder_never_hands_out_a_folder_twice(tmp_path: Path) -> None:
    base = tmp_path / "runs" / "2026-01-01_00-00-00"
    assert [claim_folder(base, timestamped=True) for _ in range(3)] == [base, Path(f"{base}_1"), Path(f"{base}_2")]
    assert all(p.is_dir() for p in base.parent.iterdir())
    assert claim_folder(base, timestamped=False) == base  # named explicitly: as it is (the guard checks it)


def test_folder_labels_name_what_a_run_trains() -> None:
    """Run folders end in the experiment (else the model) and the other overrides, sweep jobs
    in their number and swept values; where data and output go is left out."""
    assert run_label(None, "three_conv", ["model=three_conv", "trainer.max_epochs=10"]) == "three_conv_max_epochs-10"
    assert (
        run_label("fast", "vgg_bn", ["experiment=fast", "seed=1", "data.root=/x", "hydra.run.dir=/y"]) == "fast_seed-1"
    )
    assert run_label(None, "two_conv", ["data.augment.flip.p=0.5", "+x=a/b c"]) == "two_conv_flip.p-0.5_x-a-b-c"
    assert len(run_label(None, "m", [f"key{i}=1" for i in range(40)])) == 60
    assert job_dir(3, ["optimizer.lr=0.01", "trainer.max_epochs=1"], swept=["optimizer.lr"]) == "3_lr-0.01"
    assert job_dir(0, ["trainer.max_epochs=1"], swept=[]) == "0"  # a sweep of one job: nothing varies
    assert job_dir(2, ["optimizer.lr=0.01", "data.root=/x"]) == "2_lr-0.01"  # another sweeper: all but plumbing
    assert job_number(Path("12_lr-0.1")) == 12 and job_number(Path("summary.md")) == -1


@pytest.mark.slow  # two processes at once
def test_runs_started_in_the_same_second_get_their_own_folders(data_root: Path, tmp_path: Path) -> None:
    args = ["debug=fdr", "trainer=cpu", "model=two_conv_5x5", "data.image_size=16", f"data.root={data_root}"]
    processes = [start_script("train.py", *args, cwd=tmp_path) for _ in range(2)]
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
    runs = sorted((tmp_path / "outputs" / "runs").iterdir())
    assert len(runs) == 2
    for run in runs:
        assert RunFolder(run).read_status()["status"] == "finished"
        assert len(list(run.glob(".hydra/config.yaml"))) == 1


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(data_root: Path, tmp_path: Path) -> None:
    """trainer=ddp with 2 gloo processes: one set of outputs, accuracy like one process."""
    args = [
        "model=two_conv_5x5",
        "data.image_size=16",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=100",
        "trainer.limit_val_batches=10",
        "callbacks.progress_bar=null",
        f"data.root={data_root}",
    ]
    single = run_script("train.py", *args, "trainer=cpu", f"hydra.run.dir={tmp_path / 'single'}")
    assert single.returncode == 0, single.stderr[-3000:]
    run_dir = tmp_path / "ddp"
    result = run_script(
        "train.py", *args, "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu", f"hydra.run.dir={run_dir}"
    )
    assert result.returncode == 0, result.stderr[-3000:]

    done = RunFolder(run_dir).read_status()
    assert done["status"] == "finished" and done["epochs"] == 2
    assert done["global_step"] == 200  # limit_train_batches counts per process
    writers = {p.name.split(".")[-2] for p in run_dir.glob("events.out.tfevents.*")}
    assert len(writers) == 1, "TensorBoard events from more than one process"
    assert sorted(p.name for p in run_dir.glob("checkpoints/*.ckpt")) == ["epoch_001.ckpt", "last.ckpt"]
    written = {p.name for p in run_dir.glob("*.json")}
    assert written == {"metrics.json", "report.json", "temperature.json", "conformal.json"}
    assert sorted(p.name for p in run_dir.glob(".*")) == [".hydra", ".lock"]  # rank 0 holds the lock
    assert abs(done["metrics"]["test/acc"] - RunFolder(tmp_path / "single").read_status()["metrics"]["test/acc"]) < 0.05


@pytest.mark.slow
def test_ddp_processes_signalled_together_stop_together(data_root: Path, tmp_path: Path) -> None:
    """SIGTERM to both DDP processes at once mid-epoch (as srun, or Ctrl-C in a terminal,
    signals every task): they stop after the same batch and save last.ckpt, and the resumed
    run ends with every step trained once. (Lightning 2.6's own handler deadlocked here.)"""
    run_dir = tmp_path / "ddp"
    args = [
        *("model=two_conv_5x5", "data.image_size=16", "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu"),
        *("trainer.max_epochs=3", "trainer.limit_train_batches=400", "trainer.limit_val_batches=10"),
        "callbacks.progress_bar=null",
    ]
    process = start_script("train.py", *args, f"data.root={data_root}", f"hydra.run.dir={run_dir}", new_session=True)
    wait_for(run_dir / "checkpoints" / "last.ckpt", process)  # the end of epoch 0
    time.sleep(0.5)  # into epoch 1
    os.killpg(process.pid, signal.SIGTERM)
    try:
        _, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail("the DDP processes did not stop within 120 s of SIGTERM")
    assert f"resume={run_dir}" in stderr and "Traceback" not in stderr, stderr[-3000:]
    stopped = RunFolder(run_dir).read_status()
    assert stopped["status"] == "interrupted" and 400 < stopped["global_step"] < 1200, stopped

    result = run_script("train.py", f"resume={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    done = RunFolder(run_dir).read_status()
    assert (done["status"], done["epochs"], done["global_step"]) == ("finished", 3, 1200), done
    assert sorted(RunFolder(run_dir).read_history()["val/acc"]) == [1, 2, 3]


@pytest.mark.slow
def test_ddp_in_a_multirun_uses_spawn(data_root: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_script(
        "train.py",
        "-m",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "seed=1,2",
        "model=two_conv_5x5",
        "data.image_size=16",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=20",
        "trainer.limit_val_batches=2",
        "callbacks.progress_bar=null",
        f"data.root={data_root}",
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "using ddp_spawn" in output
    assert output.count("Launching 2 jobs") == 1  # the sweep was not started again
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0_seed-1", "1_seed-2"]
    assert all(RunFolder(sweep / job).read_status()["status"] == "finished" for job in ("0_seed-1", "1_seed-2"))


def test_a_gloo_group_is_destroyed_at_exit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every DDP process registers one exit handler that destroys its group (Lightning does it for
    NCCL only), so no gloo thread is left to the interpreter's teardown."""
    import torch.distributed as dist

    from fmnist_lightning.training import processes

    registered: list = []
    monkeypatch.setattr(processes.atexit, "register", registered.append)
    processes.destroy_process_group_at_exit()
    assert registered == []  # no group, nothing to destroy
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        processes.destroy_process_group_at_exit()
        processes.destroy_process_group_at_exit()
        assert len(registered) == 2 and registered[0] is registered[1]  # unregister first: one handler at exit
        registered[0]()
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_resume_composes_the_runs_own_config(trained_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """resume= reads the run's config once, through RunFolder, and makes it the primary config
    Hydra applies the command's overrides to; the command line is left as typed, so a DDP
    child running it reads the same config."""
    folder = trained_run.resolve()
    args = [f"resume={trained_run}", "trainer.max_epochs=9"]
    resumed = resumed_config(args)
    assert resumed.resume == resumed.hydra.run.dir == str(folder)
    assert resumed.hydra.output_subdir.startswith(".hydra/resume_")
    assert resumed.defaults == [{"hydra": "default"}, "_self_"]
    assert folder in locks._held  # this (test) process holds the run's lock
    release_run_folder(folder)
    monkeypatch.setenv("LOCAL_RANK", "1")  # a DDP child: rank 0 holds the lock, Lightning adds hydra.run.dir
    assert resumed_config([*args, f"hydra.run.dir={folder}"]).model == resumed.model
    assert folder not in locks._held
    assert resumed_config(["trainer.max_epochs=9"]) is None  # a new run: conf/train.yaml


def test_the_guard_lets_ddp_children_into_their_parents_folder(
    trained_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = compose_with_hydra("train", f"hydra.run.dir={trained_run}")
    with pytest.raises(SystemExit, match="already holds a run"):
        RunFolderGuard().on_run_start(config=config)
    monkeypatch.setenv("LOCAL_RANK", "1")
    RunFolderGuard().on_run_start(config=config)  # a DDP child shares rank 0's folder
    assert config.hydra.output_subdir is None  # rank 0 writes the Hydra files
