"""The SLURM rules that need no cluster: which signal stops a sweep job, which job is
requeued and continued, CPU threads in a SLURM task, and the other tasks of an srun job.
tests/test_cluster.py runs all of it on a real one-node cluster."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from conftest import compose_with_hydra
from fmnist_lightning import run_folder as locks
from fmnist_lightning.cli.hydra_hooks import RunFolderGuard
from fmnist_lightning.run_folder import RunFolder
from fmnist_lightning.training import resume, slurm
from fmnist_lightning.training.callbacks import InterruptCheckpoint
from fmnist_lightning.training.processes import cpu_threads
from fmnist_lightning.training.resume import resumed_config

SLURM_VARIABLES = ("SUBMITIT_EXECUTOR", "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID")


@pytest.fixture
def submitit_job(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The environment of task 1 of array job 7, started by submitit."""
    for name, value in zip(SLURM_VARIABLES, ("slurm", "9", "7", "1"), strict=True):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv(slurm.SUBMITIT_SIGNAL_ENV, raising=False)
    return monkeypatch


def test_time_limit_signal_and_job_id(monkeypatch: pytest.MonkeyPatch, submitit_job: pytest.MonkeyPatch) -> None:
    assert slurm.time_limit_signal() == signal.SIGUSR2
    assert slurm.job_id() == "7_1"
    monkeypatch.setenv(slurm.SUBMITIT_SIGNAL_ENV, "TERM")
    assert slurm.time_limit_signal() == signal.SIGTERM
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID")
    assert slurm.job_id() == "9"
    monkeypatch.delenv("SUBMITIT_EXECUTOR")
    assert slurm.time_limit_signal() is None and not slurm.in_submitit_job()


def interrupted_run(folder: Path, status: str = "interrupted", checkpoint: bool = True) -> None:
    RunFolder(folder).write_status(status, epochs=1, global_step=30)
    if checkpoint:
        (folder / "checkpoints").mkdir()
        (folder / "checkpoints" / "last.ckpt").write_bytes(b"state")


@pytest.mark.parametrize(
    ("status", "checkpoint", "in_job", "continues"),
    [
        ("interrupted", True, True, True),
        ("running", True, True, True),  # the attempt died (a node failure) and SLURM requeued the job
        ("interrupted", False, True, False),  # nothing to continue from: it starts again
        ("failed", True, True, False),
        ("finished", True, True, False),
        ("interrupted", True, False, True),  # a job of a sweep continued in its folder
    ],
)
def test_continue_job(
    make_cfg: Callable[..., DictConfig],
    tmp_path: Path,
    submitit_job: pytest.MonkeyPatch,
    status: str,
    checkpoint: bool,
    in_job: bool,
    continues: bool,
) -> None:
    """A requeued sweep job, or one of a sweep continued in its folder, continues its
    interrupted run, and nothing else does."""
    cfg = make_cfg()
    interrupted_run(tmp_path, status, checkpoint)
    submitit_job.setattr(resume, "in_multirun", lambda: True)
    if not in_job:
        submitit_job.delenv("SUBMITIT_EXECUTOR")
    assert resume.continue_job(cfg) is continues
    assert cfg.get("resume") == (str(tmp_path.resolve()) if continues else None)


def test_time_limit_signal_stops_like_sigterm(submitit_job: pytest.MonkeyPatch) -> None:
    """In a submitit job, SIGUSR2 is a stop signal like SIGTERM: in the set-up it stops at
    once; while training it asks for a stop after the batch (Lightning's SIGTERMException at
    the batch's end); teardown puts the earlier handlers back."""
    previous_usr2 = signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)}
    trainer = SimpleNamespace(strategy=SingleDeviceStrategy(torch.device("cpu")))
    callback = InterruptCheckpoint("unused")
    try:
        callback.setup(trainer, None, "fit")
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGUSR2)
        callback.on_train_start(trainer, None)
        callback.on_train_batch_end(trainer, None)  # nothing asked: training goes on
        os.kill(os.getpid(), signal.SIGUSR2)
        with pytest.raises(SIGTERMException):
            callback.on_train_batch_end(trainer, None)
        callback.teardown(trainer, None, "fit")
        assert {signum: signal.getsignal(signum) for signum in before} == before
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
        signal.signal(signal.SIGUSR2, previous_usr2)


def test_cpu_threads_in_a_slurm_task(make_cfg: Callable[..., DictConfig], monkeypatch: pytest.MonkeyPatch) -> None:
    """A SLURM task uses its SLURM_CPUS_PER_TASK, whatever the affinity mask allows."""
    cfg = make_cfg()
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    unbound = cpu_threads(cfg.trainer)
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert cpu_threads(cfg.trainer) == 1
    assert unbound == len(os.sched_getaffinity(0))


def test_other_srun_tasks_write_no_hydra_files(trained_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Task 1 of an srun job neither takes the run folder's lock (rank 0 holds it for all)
    nor writes Hydra's files, for a new run and for resume=."""
    monkeypatch.setenv("SLURM_PROCID", "1")
    for config in (compose_with_hydra("train", "trainer=ddp"), compose_with_hydra("train", f"resume={trained_run}")):
        RunFolderGuard().on_run_start(config=config)
        assert config.hydra.output_subdir is None
    resumed = resumed_config([f"resume={trained_run}"])
    assert resumed.resume == str(trained_run.resolve())
    assert trained_run.resolve() not in locks._held
