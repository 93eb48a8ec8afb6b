"""One writer per run folder (fmnist_lightning/run_folder.py): two resumes of one killed
run, a refusal that changes nothing, and a SIGKILLed holder whose lock is free again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from test_resume import wait_for

from conftest import run_script, start_script
from fmnist_lightning.run_folder import LOCK_FILE, RunFolder, holder_pid, lock_run_folder, release_run_folder

# A run that takes a few seconds per epoch, so that a resume is still training when the
# second one starts.
RUN = [
    "model=two_conv_5x5",
    "data.image_size=16",
    "trainer=cpu",
    "trainer.max_epochs=4",
    "trainer.limit_train_batches=150",
    "trainer.limit_val_batches=5",
    "logger=csv",
    "callbacks.progress_bar=null",
]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def killed_run(data_root: Path, tmp_path: Path) -> Path:
    """A run SIGKILLed after its first checkpoint, as a crash or a lost node leaves it."""
    folder = tmp_path / "run"
    process = start_script("train.py", *RUN, f"data.root={data_root}", f"hydra.run.dir={folder}")
    wait_for(folder / "checkpoints" / "last.ckpt", process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert RunFolder(folder).read_status()["status"] == "running"
    return folder


def wait_for_lock(folder: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    """Waits until ``process`` holds the folder's lock."""
    deadline = time.monotonic() + timeout
    while holder_pid(folder / LOCK_FILE) != process.pid:
        assert process.poll() is None, f"exit {process.returncode}: {process.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, "the resume never took the lock"
        time.sleep(0.02)


def test_lock_is_per_process_and_names_the_holder(tmp_path: Path):
    lock_run_folder(tmp_path)
    lock_run_folder(tmp_path)  # held already: nothing happens
    other = subprocess.run(
        [sys.executable, "-c", f"from fmnist_lightning.run_folder import *; lock_run_folder({str(tmp_path)!r})"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert other.returncode == 1 and f"is in use: process {os.getpid()}" in other.stderr
    release_run_folder(tmp_path)
    lock_run_folder(tmp_path)  # free again
    release_run_folder(tmp_path)
    assert (tmp_path / LOCK_FILE).read_bytes() == b""  # never written: a refusal changes nothing


@pytest.mark.slow
def test_two_resumes_at_once_one_trains(killed_run: Path):
    processes = [start_script("train.py", f"resume={killed_run}") for _ in range(2)]
    for process in processes:
        process.wait(timeout=600)
    codes = sorted(p.returncode for p in processes)
    assert codes == [0, 1], [p.stderr.read()[-2000:] for p in processes]
    winner, loser = sorted(processes, key=lambda p: p.returncode)
    message = loser.stderr.read()
    assert f"error: the run folder {killed_run} is in use: process {winner.pid} is training in it" in message
    assert "Traceback" not in message
    assert len(list((killed_run / ".hydra").glob("resume_*"))) == 1  # one attempt's Hydra files
    assert not list((killed_run / "checkpoints").glob("*-v1.ckpt"))  # one writer of checkpoints
    assert RunFolder(killed_run).read_status()["status"] == "finished"


@pytest.mark.slow
def test_refusal_changes_nothing_and_a_killed_holder_frees_the_lock(killed_run: Path, tmp_path: Path):
    holder = start_script("train.py", f"resume={killed_run}")
    wait_for_lock(killed_run, holder)
    holder.send_signal(signal.SIGSTOP)  # frozen while holding the lock: the folder stands still
    try:
        before = snapshot(killed_run)
        for args in ([f"resume={killed_run}"], [f"hydra.run.dir={killed_run}"]):
            refused = run_script("train.py", *args)
            assert refused.returncode == 1 and "Traceback" not in refused.stderr
            assert f"is in use: process {holder.pid} is training in it" in refused.stderr
            assert snapshot(killed_run) == before
        # Reading takes no lock: evaluating works, and weights not written yet are explained.
        evaluated = run_script(
            "evaluate.py", f"run_dir={killed_run}", "weights=last", "device=cpu", f"hydra.run.dir={tmp_path / 'e'}"
        )
        assert evaluated.returncode == 0, evaluated.stderr[-3000:]
        Image.new("L", (28, 28)).save(tmp_path / "item.png")
        predicted = run_script("predict.py", f"run_dir={killed_run}", f"images=[{tmp_path / 'item.png'}]")
        assert predicted.returncode == 1
        assert f"The run is still training (process {holder.pid} is writing it)" in predicted.stderr
        assert snapshot(killed_run) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    resumed = run_script("train.py", f"resume={killed_run}")  # the killed holder's lock is gone
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert RunFolder(killed_run).read_status()["status"] == "finished"
