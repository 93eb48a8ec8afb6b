"""The run-integrity contract of docs/runs.md: no spelling of a folder writes into an earlier
run; a sweep folder has one writer; ``last.ckpt`` is the end of the last epoch, and a signal
outside fitting writes no training checkpoint; a failed write (a full disk) ends in one
``error:`` line, a truthful status and no partial file; folders with spaces and non-ASCII
letters work with every command; and the last faults that ended in tracebacks."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from PIL import Image
from test_locks import RUN as FOUR_EPOCHS
from test_resume import assert_same_weights, wait_for

from conftest import compose_with_hydra, held_by_another_process, mounted_tmpfs, run_script, start_script
from fmnist_lightning.cli import hydra_argv
from fmnist_lightning.cli import train as train_cli
from fmnist_lightning.cli.hydra_hooks import RunFolderGuard
from fmnist_lightning.errors import ConfigError, RunError
from fmnist_lightning.run_folder import LOCK_FILE, RunFolder, holder_pid, release_run_folder, write_failure
from fmnist_lightning.training.build import build_run
from fmnist_lightning.training.callbacks import RunStatus
from fmnist_lightning.training.checkpoint_io import AtomicCheckpointIO
from fmnist_lightning.training.pipeline import train
from fmnist_lightning.training.resume import check_trains_further, resumed_config
from in_process import run_command


def snapshot(folder: Path) -> dict[str, bytes]:
    """Relative path → bytes of every file under ``folder``."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# 1. No spelling of an earlier run's folder writes into it ---------------------------------

#: Spellings of the folder ``<base>/runs/run``, with the working directory at ``<base>``:
#: name → hydra.run.dir's value (``{run}``: the absolute path).
SPELLINGS = {
    "absolute": "{run}",
    "double quotes": '"{run}"',
    "single quotes": "'{run}'",
    "relative": "runs/run",
    "dot slash and trailing slash": "./runs/run/",
    "dot dot": "runs/nothing/../run",
    "double slash": "runs//run",
    "symlink": "link",
    "symlink to the parent": "runs_link/run",
    "interpolation": "${{oc.env:EARLIER_RUN}}",
}


@pytest.fixture
def earlier_run(trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The session's trained run at ``<tmp>/runs/run`` (a symlink to it), the working
    directory at ``<tmp>``, with the symlinks and the variable the spellings use."""
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "run").symlink_to(trained_run)
    (tmp_path / "link").symlink_to(trained_run)
    (tmp_path / "runs_link").symlink_to(tmp_path / "runs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EARLIER_RUN", str(trained_run))
    return trained_run


@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_no_spelling_of_an_earlier_run_folder_is_written_into(earlier_run: Path, tmp_path: Path, spelling: str) -> None:
    before = snapshot(earlier_run)
    value = SPELLINGS[spelling].format(run=tmp_path / "runs" / "run")
    config = compose_with_hydra("train", f"hydra.run.dir={value}")
    with pytest.raises(SystemExit) as refusal:
        RunFolderGuard().on_run_start(config=config)
    assert str(refusal.value).startswith(f"error: the run folder {earlier_run} (hydra.run.dir) already holds a run")
    assert snapshot(earlier_run) == before


def test_a_new_folder_in_any_spelling_is_taken_and_locked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = compose_with_hydra("train", "hydra.run.dir='./new run/ñ/'")
    RunFolderGuard().on_run_start(config=config)
    folder = tmp_path / "new run" / "ñ"
    try:  # this process holds its lock now, before Hydra writes: a second process is refused
        assert holder_pid(folder / LOCK_FILE) == os.getpid()
    finally:
        release_run_folder(folder)


def test_evaluate_never_writes_into_a_run_folder(earlier_run: Path) -> None:
    before = snapshot(earlier_run)
    config = compose_with_hydra("evaluate", f"run_dir={earlier_run}", f"hydra.run.dir={earlier_run}/")
    with pytest.raises(SystemExit, match="already holds a run"):
        RunFolderGuard().on_run_start(config=config)
    assert snapshot(earlier_run) == before


# 4. A sweep folder has one writer ---------------------------------------------------------


def test_a_sweep_folder_in_use_is_refused_before_any_job(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    with held_by_another_process(sweep, kind="sweep") as holder:
        config = compose_with_hydra("train", f"hydra.sweep.dir='{tmp_path}/./sweep/'")
        with pytest.raises(SystemExit) as refusal:
            RunFolderGuard().on_multirun_start(config=config)
    assert f"the sweep folder {sweep} is in use: process {holder.pid} is running a sweep in it" in str(refusal.value)
    assert sorted(p.name for p in sweep.iterdir()) == [".lock"]


def test_a_sweep_folder_with_earlier_jobs_is_refused_unless_the_sweeper_continues_it(
    trained_run: Path, tmp_path: Path
) -> None:
    """Hydra's own sweeper would overwrite the jobs; this project's sweepers continue the
    sweep, checking that it is the same (tests/test_sweep_continuation.py)."""
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "0_seed-1").symlink_to(trained_run)
    config = compose_with_hydra("train", f"hydra.sweep.dir={tmp_path}/sweep", "hydra/sweeper=basic")
    with pytest.raises(SystemExit, match="already holds the jobs of a sweep"):
        RunFolderGuard().on_multirun_start(config=config)
    release_run_folder(tmp_path / "sweep")
    RunFolderGuard().on_multirun_start(config=compose_with_hydra("train", f"hydra.sweep.dir={tmp_path}/sweep"))
    release_run_folder(tmp_path / "sweep")


def test_a_job_refused_by_another_process_writes_nothing_there(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(train_cli, "in_multirun", lambda: True)  # as a sweep job: record, go on
    cfg = make_cfg("debug=fdr")
    with held_by_another_process(tmp_path):
        assert train_cli.train_run(cfg) == float("-inf")
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.slow
def test_two_sweeps_started_together_into_one_folder(data_root: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        "seed=1,2",
        "model=two_conv_5x5",
        "data.image_size=16",
        "trainer=cpu",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=100",
        "trainer.limit_val_batches=5",
        "callbacks.progress_bar=null",
        f"data.root={data_root}",
        f"hydra.sweep.dir={sweep}",
    ]
    first, second = start_script("train.py", *args), start_script("train.py", *args)
    outcomes = sorted((p.wait(timeout=600), p.stderr.read()) for p in (first, second))
    (ok, _), (refused, message) = outcomes
    assert ok == 0 and refused == 1, outcomes
    assert "error: the sweep folder" in message and "is running a sweep in it" in message, message
    assert "Traceback" not in message
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name for p in jobs] == ["0_seed-1", "1_seed-2"]
    for job in jobs:
        assert RunFolder(job).read_status()["status"] == "finished"
        assert "error" not in (job / "train.log").read_text()
    assert "2 jobs, 2 finished" in (sweep / "summary.md").read_text()


# 2. last.ckpt is the end of the last epoch; a signal outside fitting writes no checkpoint ---

#: Three short epochs; ``mode=min`` makes the *lowest* val/acc the best, so that, with the
#: accuracy rising, the last epochs never save a top-k checkpoint. The precision is fixed:
#: ``auto`` chooses by a timing probe, which a loaded CPU can tip (as under pytest-xdist), and
#: runs compared bit for bit must train alike.
NOT_IMPROVING = [
    "model=two_conv_5x5",
    "data.image_size=16",
    "trainer.max_epochs=3",
    "trainer.limit_train_batches=30",
    "trainer.limit_val_batches=5",
    "trainer.deterministic=true",
    "trainer.precision=32-true",
    "callbacks.model_checkpoint.mode=min",
    "callbacks.progress_bar=null",
]


def test_last_ckpt_is_the_last_epoch_when_val_acc_does_not_improve(make_cfg, tmp_path: Path) -> None:
    ten_batches = [o.replace("limit_train_batches=30", "limit_train_batches=10") for o in NOT_IMPROVING]
    train(make_cfg(*ten_batches, "logger=none"))
    status = RunFolder(tmp_path).read_status()
    assert status["status"] == "finished" and status["epochs"] == 3
    best = torch.load(tmp_path / status["best_checkpoint"], weights_only=True)
    assert best["epoch"] < 2, "the setup did not make the last epoch a non-improving one"
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (2, status["global_step"]) == (2, 30)
    kept = [
        state["best_model_path"]
        for key, state in last["callbacks"].items()
        if key.startswith("ModelCheckpoint{'monitor': 'val/acc'")
    ]
    assert kept == [str(tmp_path / status["best_checkpoint"])]  # the resume tests that one


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=lambda s: s.name)
def test_a_signal_during_the_test_resumes_to_the_same_run(data_root: Path, tmp_path: Path, sig: signal.Signals) -> None:
    args = [*NOT_IMPROVING, "trainer=cpu", "logger=csv", f"data.root={data_root}"]
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    result = run_script("train.py", *args, f"hydra.run.dir={whole}")
    assert result.returncode == 0, result.stderr[-3000:]

    marker = tmp_path / "testing"
    slow_test = [
        "+callbacks.slow_test._target_=conftest.SlowTest",
        f"+callbacks.slow_test.marker={marker}",
        "+callbacks.slow_test.seconds=2",  # a 20 s window for the signal, even on a loaded CPU
    ]
    process = start_script("train.py", *args, *slow_test, f"hydra.run.dir={stopped}")
    wait_for(marker, process)
    last = stopped / "checkpoints" / "last.ckpt"
    last_bytes = last.read_bytes()
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0 and "Traceback" not in stderr, stderr[-3000:]
    assert last.read_bytes() == last_bytes, "a signal in the test loop wrote a training checkpoint"
    status = RunFolder(stopped).read_status()
    assert status["trained"] and status["epochs"] == 3 and status["global_step"] == 90, status
    if sig != signal.SIGKILL:
        assert status["status"] == "interrupted" and "during the test" in status["error"], status
        assert f"resume={stopped}" in stderr

    result = run_script("train.py", f"resume={stopped}", "callbacks.slow_test.seconds=0", "trusted_modules=[conftest]")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "testing and reporting again" in result.stdout + result.stderr
    assert_same_weights(whole / "net.pt", stopped / "net.pt")
    a, b = RunFolder(whole).read_status(), RunFolder(stopped).read_status()
    assert b["status"] == "finished"
    assert (a["epochs"], a["global_step"], a["best_checkpoint"]) == (
        b["epochs"],
        b["global_step"],
        b["best_checkpoint"],
    )
    assert {k: v for k, v in a["metrics"].items()} == {k: v for k, v in b["metrics"].items()}
    assert RunFolder(whole).read_history() == RunFolder(stopped).read_history()


# 3. A full disk ---------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    yield from mounted_tmpfs(tmp_path / "disk", "size=1m")


def test_a_checkpoint_that_does_not_fit_leaves_no_partial_file(small_disk: Path) -> None:
    target = small_disk / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"weights": torch.zeros(1000)}, target)
    before = target.read_bytes()
    with pytest.raises(OSError) as failure:
        io.save_checkpoint({"weights": torch.zeros(1_000_000)}, target)  # 4 MB on a 1 MiB disk
    assert failure.value.errno == errno.ENOSPC
    assert target.read_bytes() == before and os.listdir(target.parent) == ["last.ckpt"]
    line = write_failure(failure.value, small_disk)
    assert line.startswith(f"could not write {target}: No space left on device (") and " MiB free on its disk" in line


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A 60 MiB file system: enough for the checks and a few epochs of a small run."""
    yield from mounted_tmpfs(tmp_path / "disk", "size=60m")


@pytest.mark.slow
def test_a_disk_that_fills_during_training(data_root: Path, disk: Path) -> None:
    """The disk fills after the first epoch: one error line with the path and the free space,
    no partial file, the earlier metrics.json intact; once space is freed, the resume
    continues from the last complete epoch and finishes."""
    run_dir = disk / "run"
    process = start_script("train.py", *FOUR_EPOCHS, f"data.root={data_root}", f"hydra.run.dir={run_dir}")
    wait_for(run_dir / "checkpoints" / "last.ckpt", process)
    with (disk / "filler").open("wb", buffering=0) as filler:  # fill the disk to the last byte
        try:
            while True:
                filler.write(bytes(2**20))
        except OSError as err:
            assert err.errno == errno.ENOSPC
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 1 and "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"could not write {run_dir}" in errors[0] and "MiB free" in errors[0], errors
    assert f"resume={run_dir}" in errors[0]
    status = RunFolder(run_dir).read_status()  # the failure, or (if even that write failed) the last epoch's
    assert status["status"] in ("failed", "running") and status["epochs"] >= 1, status
    assert not list(disk.rglob("*.part")) and not list(disk.rglob(".*.part"))
    for checkpoint in (run_dir / "checkpoints").glob("*.ckpt"):  # whole, or not there at all
        torch.load(checkpoint, weights_only=True)

    (disk / "filler").unlink()
    result = run_script("train.py", f"resume={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    done = RunFolder(run_dir).read_status()
    assert done["status"] == "finished" and done["epochs"] == 4 and done["global_step"] == 600, done
    assert sorted(RunFolder(run_dir).read_history()["val/acc"]) == [1, 2, 3, 4]


# 5. Folders with spaces and non-ASCII letters ---------------------------------------------


@pytest.mark.parametrize("value", ["/tmp/my run/ñ", "/tmp/it's a run", '/tmp/say "cheese"/', "C:\\runs\\"])
def test_resume_takes_any_folder_name_so_hydra_reads_it_back(
    value: str, trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / value.strip("/").replace("\\", "_")
    shutil.copytree(trained_run / ".hydra", folder / ".hydra")
    for spelling in (f"resume={folder}", f"resume='{folder}'" if "'" not in str(folder) else f"resume={folder}"):
        monkeypatch.setattr(sys, "argv", ["train.py", spelling])
        hydra_argv()  # the one adjustment of a command line: quoting where Hydra's grammar needs it
        OverridesParser.create().parse_overrides(sys.argv[1:])  # Hydra reads it
        resumed = resumed_config(sys.argv[1:])
        release_run_folder(folder)
        assert resumed.resume == resumed.hydra.run.dir == str(folder.resolve())


def test_a_list_of_image_paths_is_read_as_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    """``fmnist-predict 'images=[/tmp/adv run/shirt é.png]'``: each path of the list, with a
    space next to a non-ASCII letter, reaches Hydra quoted, and Hydra reads it back as typed."""
    typed = ["fmnist-predict", "images=[/tmp/adv run/shirt é.png,/tmp/b.png]", "run_dir=/tmp/my run/ñ"]
    monkeypatch.setattr(sys, "argv", list(typed))
    hydra_argv()
    parsed = {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(sys.argv[1:])}
    assert parsed == {"images": ["/tmp/adv run/shirt é.png", "/tmp/b.png"], "run_dir": "/tmp/my run/ñ"}
    monkeypatch.setattr(sys, "argv", ["fmnist-predict", "images=[a.png,'b c.png']"])  # Hydra reads it: as typed
    hydra_argv()
    assert sys.argv[1] == "images=[a.png,'b c.png']"


@pytest.mark.slow
def test_a_folder_with_a_space_and_a_non_ascii_letter_works_with_every_command(data_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "my run" / "ñ"
    quoted = f'"{folder}"'  # the spelling docs/runs.md shows
    short = ["model=two_conv_5x5", "data.image_size=16", "trainer=cpu", "trainer.limit_train_batches=30"]
    result = run_script(
        "train.py", *short, "trainer.max_epochs=1", "trainer.limit_val_batches=5", f"data.root={data_root}",
        f"hydra.run.dir={quoted}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for epochs, spelling in ((2, f"resume={quoted}"), (3, f"resume={folder}")):  # Hydra's quoting, or one shell word
        result = run_script("train.py", spelling, f"trainer.max_epochs={epochs}")
        assert result.returncode == 0, result.stderr[-3000:]
        assert RunFolder(folder).read_status()["epochs"] == epochs
    result = run_script("evaluate.py", f"run_dir={quoted}", "device=cpu", cwd=tmp_path)
    assert result.returncode == 0 and "test accuracy" in result.stdout, result.stderr[-3000:]
    result = run_script("export.py", f"run_dir={quoted}")
    assert result.returncode == 0 and (folder / "model.onnx").is_file(), result.stderr[-3000:]
    image = tmp_path / "shirt ñ.png"
    Image.new("L", (28, 28)).save(image)
    Image.new("L", (28, 28)).save(image)
    result = run_script("predict.py", f"run_dir={quoted}", f'images=["{image}"]', "preprocess=none", "device=cpu")
    assert result.returncode == 0 and result.stdout.startswith(f"{image}: "), result.stderr[-3000:]


# 6. The faults that ended in tracebacks ---------------------------------------------------


@pytest.fixture
def read_only_cwd(tmp_path: Path) -> Iterator[Path]:
    yield from mounted_tmpfs(tmp_path / "ro", "ro,size=1m")


def test_evaluate_in_a_read_only_folder(trained_run: Path, read_only_cwd: Path) -> None:
    result = run_command("evaluate.py", f"run_dir={trained_run}", "device=cpu", cwd=read_only_cwd)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.startswith("error: cannot create the run folder outputs/evaluations/"), result.stderr
    assert "Read-only file system" in result.stderr


def test_predict_output_in_a_read_only_folder(trained_run: Path, read_only_cwd: Path, tmp_path: Path) -> None:
    image = tmp_path / "item.png"
    Image.new("L", (28, 28)).save(image)
    output = read_only_cwd / "preds.json"
    result = run_command("predict.py", f"run_dir={trained_run}", f"images=[{image}]", f"output={output}", "device=cpu")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.startswith(f"error: output={output}: cannot write in {read_only_cwd} (Read-only file system)")
    assert result.stdout == ""  # refused before any image was classified


def test_a_data_root_that_does_not_exist_is_refused_and_not_made(make_cfg, tmp_path: Path) -> None:
    missing = tmp_path / "no such folder"
    with pytest.raises(ConfigError, match=f"data.root='{missing}': an existing folder"):
        build_run(make_cfg(f"data.root='{missing}'"))
    assert not missing.exists()


@pytest.mark.slow
def test_resume_with_a_data_root_that_does_not_exist(trained_run: Path, tmp_path: Path) -> None:
    before = snapshot(trained_run)
    missing = tmp_path / "nonexistent"
    result = run_script("train.py", f"resume={trained_run}", "trainer.max_epochs=3", f"data.root={missing}")
    assert result.returncode == 1 and f"data.root='{missing}': an existing folder" in result.stderr
    assert "Traceback" not in result.stderr
    assert not missing.exists() and snapshot(trained_run) == before


def test_metrics_json_is_left_whole_when_the_status_cannot_be_written(small_disk: Path, capsys) -> None:
    RunFolder(small_disk).write_status("running", epochs=2)
    before = (small_disk / "metrics.json").read_bytes()

    class Trainer:  # what RunStatus reads of a Trainer
        is_global_zero, checkpoint_callback, global_step, callback_metrics = True, None, 7, {}

    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    RunStatus(small_disk).write_or_warn(Trainer(), "failed", epochs=2, error="disk full")
    assert (small_disk / "metrics.json").read_bytes() == before
    err = capsys.readouterr().err
    assert "warning: could not record the status 'failed'" in err and "Read-only file system" in err


def test_train_in_a_read_only_folder(data_root: Path, read_only_cwd: Path) -> None:
    """The default run folder (``outputs/runs/${now:...}_...``, which reads
    ``${hydra:...}``) cannot be made: one error line, no traceback, as with ``-m``."""
    result = run_command("train.py", "model=two_conv_5x5", f"data.root={data_root}", cwd=read_only_cwd)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.startswith("error: cannot create the run folder outputs/runs/"), result.stderr
    assert "Read-only file system" in result.stderr and len(result.stderr.strip().splitlines()) == 1


# 8. A finished run is a result -------------------------------------------------------------

#: A short run at 16 px, in fp32 on the CPU, so that its stops are the same on every machine.
SHORT = (
    "model=two_conv_5x5",
    "data.image_size=16",
    "trainer=cpu",
    "trainer.precision=32-true",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "logger=csv",
    "callbacks.progress_bar=null",
)


#: A run that early stopping ended after 45 of 1,000 epochs, and its last fit's limits.
EARLY_STOPPED = {
    "status": "finished",
    "epochs": 45,
    "global_step": 4500,
    "stopped_by": "early_stopping",
    "limits": {"max_epochs": 1000, "max_steps": -1, "max_time": None},
}


@pytest.mark.parametrize(
    ("limits", "overrides", "trains"),
    [
        ({}, ("trainer.max_epochs=1000",), False),  # a plain resume=
        ({}, ("trainer.max_epochs=50",), True),
        ({}, ("trainer.max_epochs=40",), False),  # not beyond the epochs done
        ({}, ("trainer.max_epochs=null",), True),  # no limit
        ({"max_epochs": 55}, ("trainer.max_epochs=55",), False),  # the last continuation's command again
        ({"max_time": "00:00:10:00"}, ("trainer.max_epochs=1000", "+trainer.max_time=00:00:20:00"), True),
        ({"max_time": "00:00:10:00"}, ("trainer.max_epochs=1000", "+trainer.max_time=00:00:05:00"), False),
        ({"max_time": "00:00:10:00"}, ("trainer.max_epochs=1000", "+trainer.max_time={minutes:10}"), False),
        ({"max_steps": 4500}, ("trainer.max_epochs=1000", "trainer.max_steps=4500"), False),
        ({"max_steps": 4500}, ("trainer.max_epochs=1000", "trainer.max_steps=9000"), True),
    ],
)
def test_a_finished_run_is_refused_unless_a_limit_asks_for_more(
    make_cfg, limits: dict, overrides: tuple[str, ...], trains: bool
) -> None:
    status = {**EARLY_STOPPED, "limits": {**EARLY_STOPPED["limits"], **limits}}
    cfg = make_cfg(*overrides)
    if trains:
        check_trains_further(cfg, "outputs/runs/run", status)
        return
    with pytest.raises(RunError) as refused:
        check_trains_further(cfg, "outputs/runs/run", status)
    assert str(refused.value).startswith(
        "resume=outputs/runs/run: the run already finished (early stopping ended it after 45 epochs)"
    )
    assert "give e.g. resume=outputs/runs/run trainer.max_epochs=50" in str(refused.value)


@pytest.mark.slow
def test_a_run_ended_by_early_stopping_trains_further_only_on_request(data_root: Path, tmp_path: Path) -> None:
    """Early stopping ends a run at epoch 2 of 1,000 (no improvement of 1.0 is possible, patience
    1). A plain ``resume=`` is refused and changes nothing; one that sets a new limit trains
    on until early stopping's restored state stops it again, after one more epoch."""
    run_dir = tmp_path / "run"
    stops = ("trainer.max_epochs=1000", "trainer.limit_train_batches=5", "callbacks.early_stopping.patience=1")
    result = run_command(
        "train.py", *SHORT, *stops, "callbacks.early_stopping.min_delta=1.0", f"data.root={data_root}",
        f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    status = RunFolder(run_dir).read_status()
    assert (status["status"], status["epochs"], status["stopped_by"]) == ("finished", 2, "early_stopping"), status
    before = snapshot(run_dir)

    result = run_command("train.py", f"resume={run_dir}")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.startswith(
        f"error: resume={run_dir}: the run already finished (early stopping ended it after 2 epochs)"
    ), result.stderr
    assert f"resume={run_dir} trainer.max_epochs=7" in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("error:")]) == 1
    assert snapshot(run_dir) == before, "the refused resume changed the run folder"

    result = run_command("train.py", f"resume={run_dir}", "trainer.max_epochs=12")
    assert result.returncode == 0, result.stderr[-3000:]
    status = RunFolder(run_dir).read_status()
    assert (status["status"], status["epochs"], status["stopped_by"]) == ("finished", 3, "early_stopping"), status


@pytest.mark.slow
def test_a_time_limited_run_keeps_its_epoch_count_when_a_resume_trains_nothing(data_root: Path, tmp_path: Path) -> None:
    """``trainer.max_time`` stops a run after a second; a resume with a new epoch limit but
    the time already spent trains nothing, tests again, and still counts every epoch."""
    run_dir = tmp_path / "run"
    result = run_command(
        "train.py", *SHORT, "+trainer.max_time=00:00:00:01", f"data.root={data_root}", f"hydra.run.dir={run_dir}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    first = RunFolder(run_dir).read_status()
    assert first["epochs"] >= 1 and first["stopped_by"] == "max_time", first

    result = run_command("train.py", f"resume={run_dir}")
    assert result.returncode == 1 and "trainer.max_time=00:00:00:01 ended it" in result.stderr, result.stderr
    assert "trainer.max_time=00:00:00:02" in result.stderr

    result = run_command("train.py", f"resume={run_dir}", "trainer.max_epochs=100")
    assert result.returncode == 0, result.stderr[-3000:]
    again = RunFolder(run_dir).read_status()
    assert (again["epochs"], again["global_step"], again["status"]) == (
        first["epochs"],
        first["global_step"],
        "finished",
    ), again
    assert len(RunFolder(run_dir).read_history()["val/acc"]) == first["epochs"]


def test_a_best_checkpoint_whose_write_failed_is_not_recorded(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills while the second epoch's best checkpoint is written: the run is
    ``failed``, and ``best_checkpoint`` names no file that is not there."""
    save = AtomicCheckpointIO.save_checkpoint

    def full_disk_at_epoch_1(self, checkpoint, path, storage_options=None) -> None:
        if Path(path).name == "epoch_001.ckpt":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        save(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", full_disk_at_epoch_1)
    cfg = make_cfg(
        *SHORT, "trainer.max_epochs=2", "trainer.limit_train_batches=3", "callbacks.model_checkpoint.monitor=null"
    )
    with pytest.raises(RunError, match="No space left on device"):
        train(cfg)
    status = RunFolder(tmp_path).read_status()
    assert status["status"] == "failed", status
    assert status["best_checkpoint"] in (None, "checkpoints/epoch_000.ckpt"), status
    assert status["best_checkpoint"] is None or (tmp_path / status["best_checkpoint"]).is_file()
    assert not (tmp_path / "checkpoints" / "epoch_001.ckpt").exists()
