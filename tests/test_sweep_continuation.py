"""A sweep continued in its folder: what is kept, continued and run (``sweeps.continuing``),
``resume=<sweep folder>``, and the kill-and-continue tests of a grid and an Optuna search."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import REPO, SCRIPT_ENV, job_folder, run_script
from fmnist_lightning.errors import RunError
from fmnist_lightning.run_folder import RunFolder
from fmnist_lightning.sweeps import continuing
from fmnist_lightning.sweeps.optuna_storage import sweep_study
from fmnist_lightning.training.resume import continue_sweep, sweep_to_resume

CONFIG = {"model": {"dropout": 0.1}, "trainer": {"precision": "bf16-mixed", "max_epochs": 3}}


def fake_job(sweep: Path, name: str, overrides: list[str], status: str | None, checkpoint: bool = False) -> Path:
    """A job folder as a sweep leaves it: its overrides and config, its status, maybe a last.ckpt."""
    folder = sweep / name
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    if status is not None:
        RunFolder(folder).write_status(status, epochs=1)
    if checkpoint:
        (folder / "checkpoints").mkdir()
        (folder / "checkpoints" / "last.ckpt").write_bytes(b"state")
    return folder


def compose(overrides: list[str]):
    config = OmegaConf.create(CONFIG)
    config.trainer.precision = "auto"  # what a run replaced by its choice
    return config


JOBS = {n: [f"seed={n}"] for n in range(6)}


def test_plan_keeps_results_continues_the_interrupted_and_runs_the_rest(tmp_path: Path) -> None:
    fake_job(tmp_path, "0_seed-0", ["seed=0"], "finished")
    fake_job(tmp_path, "1_seed-1", ["seed=1"], "failed")
    fake_job(tmp_path, "2_seed-2", ["seed=2"], "running", checkpoint=True)  # the killed job
    fake_job(tmp_path, "3_seed-3", ["seed=3"], "running")  # killed in its first epoch
    fake_job(tmp_path, "4_seed-4", ["seed=4"], None)  # Hydra made its folder, nothing ran
    plan = continuing.plan(tmp_path, JOBS, compose)
    assert sorted(plan.done) == [0, 1] and plan.continued == [2]
    assert sorted(plan.run) == [2, 3, 4, 5]
    assert plan.run[2][0] == "seed=2" and plan.run[2][1].startswith("hydra.output_subdir=.hydra/resume_")
    assert plan.run[3] == ["seed=3"] and plan.run[5] == ["seed=5"]
    # The job killed before its first checkpoint was moved aside, to run again in a clean folder.
    (abandoned,) = (tmp_path / ".abandoned").iterdir()
    assert abandoned.name.startswith("3_seed-3_") and not (tmp_path / "3_seed-3").exists()
    assert continuing.runs_of(plan.run, None) == [[2, 3, 4, 5]]
    assert continuing.runs_of([1, 2, 4, 5, 6], 2) == [[1, 2], [4, 5], [6]]


def test_plan_runs_only_the_wanted_jobs(tmp_path: Path) -> None:
    """A search continues only the jobs of its trials still RUNNING: a job of a trial that
    another worker failed (its heartbeat lost) and retried is checked, and left alone."""
    fake_job(tmp_path, "2_seed-2", ["seed=2"], "running", checkpoint=True)
    fake_job(tmp_path, "3_seed-3", ["seed=3"], "running")
    plan = continuing.plan(tmp_path, {n: JOBS[n] for n in (2, 3, 4)}, compose, wanted={4})
    assert sorted(plan.done) == [2, 3] and list(plan.run) == [4] and plan.continued == []
    assert (tmp_path / "3_seed-3").is_dir() and not (tmp_path / ".abandoned").exists()


@pytest.mark.parametrize(
    ("job", "why"),
    [
        (("0_seed-7", ["seed=7"]), "ran seed=7, and this command's job 0 does seed=0"),
        (("9_seed-9", ["seed=9"]), "it has job 9_seed-9, which this command does not make"),
    ],
    ids=["other-values", "stray-job"],
)
def test_plan_refuses_a_folder_of_another_sweep(tmp_path: Path, job: tuple[str, list[str]], why: str) -> None:
    fake_job(tmp_path, *job, "finished")
    with pytest.raises(RunError, match="holds an earlier sweep that this command cannot continue") as refusal:
        continuing.plan(tmp_path, JOBS, compose)
    assert why in str(refusal.value)


def test_plan_refuses_a_job_whose_config_changed(tmp_path: Path) -> None:
    """A config file edited since the job ran: its result and the new jobs' would not be of one sweep."""
    fake_job(tmp_path, "0_seed-0", ["seed=0"], "finished")

    def edited(overrides: list[str]):
        config = compose(overrides)
        config.model.dropout = 0.5
        return config

    with pytest.raises(RunError, match=r"job 0_seed-0 has changed since it ran \(model.dropout: 0.1 → 0.5"):
        continuing.plan(tmp_path, JOBS, edited)


def test_resume_a_sweep_folder_repeats_its_command(tmp_path: Path) -> None:
    sweep = tmp_path / "my sweep"
    sweep.mkdir()
    overrides = {"hydra": ["hydra.sweep.dir=/old/place", "hydra/launcher=joblib", "hydra.mode=MULTIRUN"],
                 "task": ["debug=fdr", "optimizer=adam,sgd"]}  # fmt: skip
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": overrides}}))
    args = continue_sweep([f"resume={sweep}", "hydra.launcher.n_jobs=4"], sweep)
    assert sweep_to_resume([f"resume={sweep}"]) == sweep
    assert args == [
        "-m",
        "hydra/launcher=joblib",
        "debug=fdr",
        "optimizer=adam,sgd",
        "hydra.launcher.n_jobs=4",
        f"hydra.sweep.dir='{sweep.resolve()}'",
    ]
    with pytest.raises(RunError, match=r"continues the sweep in its own folder; drop hydra\.sweep\.dir"):
        continue_sweep([f"resume={sweep}", "hydra.sweep.dir=/elsewhere"], sweep)


# The kill-and-continue tests -----------------------------------------------------------------

# Four epochs of 30 batches at 16 px: a job takes a few seconds, and writes last.ckpt after each
# epoch. Pinned to fp32, so that every run computes the same numbers (precision=auto's timing
# probe could choose differently under load).
JOB = [
    "trainer=cpu",
    "model=two_conv",
    "data.image_size=16",
    "trainer.max_epochs=4",
    "trainer.limit_train_batches=30",
    "trainer.limit_val_batches=5",
    "trainer.precision=32-true",
    "callbacks.progress_bar=null",
    "callbacks.early_stopping=null",
    "logger=csv",
]


def kill_during_job(args: list[str], sweep: Path, number: int) -> None:
    """Starts ``train.py args`` and SIGKILLs it once job ``number`` saved its first last.ckpt."""
    process = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args], cwd=REPO, env=SCRIPT_ENV,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if list(sweep.glob(f"{number}_*/checkpoints/last.ckpt")):
                os.killpg(process.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
    finally:
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, f"the sweep ended before job {number} was killed: {stderr[-3000:]}"


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def without_times(path: Path) -> list[dict[str, str]]:
    with path.open() as file:
        return [{k: v for k, v in row.items() if k != "wall_time_s"} for row in csv.DictReader(file)]


def check_continued(reference: Path, sweep: Path, killed: int, before: dict[int, dict[str, bytes]]) -> None:
    """Jobs before ``killed`` untouched, ``killed`` continued to the reference's result, and
    the summary the reference's."""
    for number, snapshot in before.items():
        assert files(job_folder(sweep, number)) == snapshot, f"job {number} was touched"
    continued = RunFolder(job_folder(sweep, killed)).read_status()
    assert continued["status"] == "finished" and continued["epochs"] == 4
    assert continued["metrics"] == RunFolder(job_folder(reference, killed)).read_status()["metrics"]
    assert list((job_folder(sweep, killed) / ".hydra").glob("resume_*/overrides.yaml"))  # its original files kept
    assert (sweep / "summary.csv").read_text() == (reference / "summary.csv").read_text()
    assert without_times(sweep / "summary_jobs.csv") == without_times(reference / "summary_jobs.csv")


@pytest.mark.slow  # three sweeps of 4 short jobs (about 60 s)
def test_a_killed_grid_sweep_continues_where_it_stopped(data_root: Path, tmp_path: Path) -> None:
    args = ["-m", *JOB, "optimizer.lr=0.001,0.003", "seed=1,2", f"data.root={data_root}"]
    reference = tmp_path / "reference"
    result = run_script("train.py", *args, f"hydra.sweep.dir={reference}")
    assert result.returncode == 0, result.stderr[-3000:]

    sweep = tmp_path / "sweep"
    kill_during_job([*args, f"hydra.sweep.dir={sweep}"], sweep, 2)
    assert RunFolder(job_folder(sweep, 2)).read_status()["status"] == "running" and not list(sweep.glob("3_*"))
    before = {n: files(job_folder(sweep, n)) for n in (0, 1)}

    again = run_script("train.py", f"resume={sweep}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 of 4 jobs done and kept, 1 continued from last.ckpt (2), 1 to run" in again.stdout + again.stderr
    check_continued(reference, sweep, 2, before)


@pytest.mark.slow  # three searches of 4 short trials (about 70 s)
def test_a_killed_optuna_search_continues_its_study(data_root: Path, tmp_path: Path) -> None:

    args = [
        "hparams_search=three_conv_tpe",
        "hydra/sweeper/pruner=none",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.sampler.n_startup_trials=2",
        *JOB,
        f"data.root={data_root}",
    ]
    reference = tmp_path / "reference"
    result = run_script("train.py", *args, f"hydra.sweep.dir={reference}")
    assert result.returncode == 0, result.stderr[-3000:]

    sweep = tmp_path / "sweep"
    kill_during_job([*args, f"hydra.sweep.dir={sweep}"], sweep, 2)
    before = {n: files(job_folder(sweep, n)) for n in (0, 1)}
    again = run_script("train.py", *args, f"hydra.sweep.dir={sweep}")  # the same command, the same folder
    assert again.returncode == 0, again.stderr[-3000:]
    check_continued(reference, sweep, 2, before)

    # The study was continued, not duplicated: 4 trials, the same values asked and told.
    continued, uninterrupted = sweep_study(sweep).trials, sweep_study(reference).trials
    assert [t.number for t in continued] == [0, 1, 2, 3]
    assert [(t.state, t.params, t.value) for t in continued] == [(t.state, t.params, t.value) for t in uninterrupted]
