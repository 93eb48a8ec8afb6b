"""The cluster path for real: sweeps, DDP and preemption on the one-node SLURM cluster of
``scripts/local_cluster.sh``, and Optuna workers sharing a study in a PostgreSQL server, both
started by these tests. Marked ``cluster`` (``pytest -m cluster``); skipped with the reason
where the packages are missing (``scripts/setup.sh --cluster`` installs them) or where the
tests do not run as root (SLURM's daemons start as root)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import REPO, SCRIPT_ENV, run_script, scalars
from fmnist_lightning.run_folder import RunFolder
from fmnist_lightning.serving.process import free_port
from fmnist_lightning.sweeps.optuna_storage import sweep_study

pytestmark = pytest.mark.cluster

CLUSTER_SCRIPT = REPO / "scripts" / "local_cluster.sh"
SBATCH_SCRIPT = REPO / "scripts" / "train.sbatch"

#: 3 epochs of 300 batches (about 12 s each on 2 cores): long enough to signal mid-epoch.
LONG_RUN = [
    "trainer.max_epochs=3",
    "+trainer.limit_train_batches=300",
    "+trainer.limit_val_batches=5",
    "+trainer.limit_test_batches=5",
    "callbacks.progress_bar=null",
]
STEPS_PER_EPOCH = 300

#: The sbatch options that adapt scripts/train.sbatch to the local node: 2 CPU processes.
LOCAL_SBATCH = ["--partition=local", "--gpus-per-node=0", "--ntasks-per-node=2", "--cpus-per-task=1", "--mem=4G"]


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Polls ``condition`` every 0.5 s; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(0.5)


def status_of(run_dir: Path) -> dict:
    """The run's ``metrics.json``, or ``{}`` before it exists."""
    return RunFolder(run_dir).read_status() if (run_dir / "metrics.json").is_file() else {}


@pytest.fixture(scope="module")
def slurm() -> Iterator[dict[str, str]]:
    """The environment of a started one-node cluster (``SLURM_CONF``; this Python's folder
    first on ``PATH``, so that jobs find ``fmnist-train``). Stopped afterwards unless it was
    already running."""
    if shutil.which("sbatch") is None:
        pytest.skip("no sbatch: install SLURM with `scripts/setup.sh --cluster`")
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster starts as root")
    was_running = subprocess.run(["bash", str(CLUSTER_SCRIPT), "status"], capture_output=True).returncode == 0
    started = subprocess.run(["bash", str(CLUSTER_SCRIPT), "start"], capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stdout + started.stderr
    conf = started.stdout.rsplit("SLURM_CONF=", 1)[-1].strip()
    env = {**SCRIPT_ENV, "SLURM_CONF": conf, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    yield env
    if not was_running:
        # A sweep can return once its last job has written its result, before SLURM sees that
        # job end: give the queue 60 s to empty, then cancel what a failed test left, so that
        # no job runs on into the stop.
        deadline = time.monotonic() + 60
        while slurm_command(env, "squeue", "--noheader") and time.monotonic() < deadline:
            time.sleep(0.5)
        subprocess.run(["scancel", "--user=root"], env=env, capture_output=True, timeout=60)
        subprocess.run(["bash", str(CLUSTER_SCRIPT), "stop"], capture_output=True, timeout=60)


def slurm_command(env: dict[str, str], *args: str, cwd: Path | None = None) -> str:
    """Runs a SLURM command (``sbatch``, ``squeue``...) and returns its output."""
    result = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{' '.join(args)}: {result.stderr}"
    return result.stdout.strip()


def job_state(env: dict[str, str], job: str) -> str:
    """A job's state; finished jobs stay listed for 10 minutes (MinJobAge in the config)."""
    return slurm_command(env, "squeue", "--states=all", "--noheader", "--jobs", job, "--format=%T")


def wait_for_job(env: dict[str, str], job: str, timeout: float = 300) -> str:
    """Waits until the job has ended and returns its final state."""
    ended = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
    wait_until(lambda: job_state(env, job) in ended, timeout, f"the end of SLURM job {job}")
    return job_state(env, job)


def test_local_cluster_script(slurm: dict[str, str], tmp_path: Path) -> None:
    """Starting again is a no-op; status shows the partition; a non-root user, and a machine
    without the packages, are refused with what to run; a start after a stop begins an empty
    cluster (an earlier cluster's queued jobs are dropped, so the node is idle)."""
    again = subprocess.run(["bash", str(CLUSTER_SCRIPT), "start"], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "already running" in again.stdout, again.stdout + again.stderr
    status = subprocess.run(["bash", str(CLUSTER_SCRIPT), "status"], capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and "local*" in status.stdout and "idle" in status.stdout, status.stdout
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "bash", str(CLUSTER_SCRIPT), "start"]
    refused = subprocess.run(as_nobody, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "needs root" in refused.stderr and "sudo" in refused.stderr, refused.stderr
    bare = tmp_path / "bin"  # a PATH with `id` and without SLURM's client commands
    bare.mkdir()
    (bare / "id").symlink_to(shutil.which("id"))
    no_packages = subprocess.run(
        ["/bin/bash", str(CLUSTER_SCRIPT), "start"], env={"PATH": str(bare)}, capture_output=True, text=True
    )
    assert no_packages.returncode == 1, no_packages.stderr
    assert "missing sbatch sinfo" in no_packages.stderr and "apt-get install -y slurmctld" in no_packages.stderr
    if slurm_command(slurm, "squeue", "--noheader"):
        pytest.skip("the cluster has jobs of its own, which a stop and start would drop")
    left = slurm_command(slurm, "sbatch", "--parsable", "--begin=now+1hour", "--wrap=sleep 1", cwd=tmp_path)
    assert job_state(slurm, left) == "PENDING"
    subprocess.run(["bash", str(CLUSTER_SCRIPT), "stop"], check=True, capture_output=True, timeout=60)
    restarted = subprocess.run(["bash", str(CLUSTER_SCRIPT), "start"], capture_output=True, text=True, timeout=120)
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert slurm_command(slurm, "squeue", "--states=all", "--noheader") == ""


GRID = ["trainer.max_epochs=1", "optimizer=adam,sgd", "seed=1,2", "logger=csv"]


def test_sweep_runs_as_slurm_jobs(slurm: dict[str, str], data_root: Path, tmp_path: Path) -> None:
    """A 2x2 grid through hydra/launcher=slurm_local: four SLURM jobs (one array), all
    finished, and the sweep summary written."""
    result = run_script(
        "train.py",
        "-m",
        "hydra/launcher=slurm_local",
        "debug=limit",
        *GRID,
        f"data.root={data_root}",
        cwd=tmp_path,
        env=slurm,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "multirun").iterdir()
    assert "4 jobs, 4 finished" in (sweep / "summary.md").read_text()
    jobs = sorted(p for p in sweep.iterdir() if (p / "metrics.json").is_file())
    assert [p.name for p in jobs] == [
        "0_optimizer-adam_seed-1",
        "1_optimizer-adam_seed-2",
        "2_optimizer-sgd_seed-1",
        "3_optimizer-sgd_seed-2",
    ]
    assert all(RunFolder(job).read_status()["status"] == "finished" for job in jobs)
    # submitit keeps a folder per SLURM job: <array job id>_<task>, and SLURM knows them all.
    slurm_jobs = sorted(p.name for p in (sweep / ".submitit").iterdir() if p.is_dir() and "_" in p.name)
    assert [job.rsplit("_", 1)[1] for job in slurm_jobs] == ["0", "1", "2", "3"]
    for job in slurm_jobs:  # SLURM may still say RUNNING for a moment after submitit returns
        assert wait_for_job(slurm, job, timeout=60) == "COMPLETED"


def test_ddp_sbatch_interrupted_and_continued(slurm: dict[str, str], data_root: Path, tmp_path: Path) -> None:
    """scripts/train.sbatch on the local node: 2 tasks of srun with DDP (gloo), ranks from
    SLURM. SIGTERM mid-epoch saves last.ckpt; the script submitted again with RUN_DIR
    continues the run to the end, with no epoch lost or trained twice."""
    sbatch = ["sbatch", "--parsable", *LOCAL_SBATCH]
    first = slurm_command(slurm, *sbatch, str(SBATCH_SCRIPT), *LONG_RUN, f"data.root={data_root}", cwd=tmp_path)
    run_dir = tmp_path / "outputs" / "runs" / f"slurm-{first}"
    wait_until(lambda: status_of(run_dir).get("epochs", 0) >= 1, 300, "the first epoch")
    time.sleep(2)  # into the second epoch
    slurm_command(slurm, "scancel", "--signal=TERM", first)
    wait_for_job(slurm, first)
    stopped = RunFolder(run_dir).read_status()
    assert stopped["status"] == "interrupted", stopped
    assert stopped["global_step"] % STEPS_PER_EPOCH != 0, "the signal should land mid-epoch"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()

    second = slurm_command(slurm, *sbatch, f"--export=ALL,RUN_DIR={run_dir}", str(SBATCH_SCRIPT), cwd=tmp_path)
    assert wait_for_job(slurm, second) == "COMPLETED", (tmp_path / f"slurm-{second}.out").read_text()[-3000:]
    done = RunFolder(run_dir).read_status()
    assert (done["status"], done["epochs"], done["global_step"]) == ("finished", 3, 3 * STEPS_PER_EPOCH)
    assert sorted(RunFolder(run_dir).read_history()["val/acc"]) == [1, 2, 3]
    assert len(scalars(run_dir, "val/acc")) == 3  # one point per epoch over both jobs
    assert [p.name for p in (tmp_path / "outputs" / "runs").iterdir()] == [run_dir.name]
    log = (run_dir / "train.log").read_text()
    for rank in (0, 1):
        assert f"Process rank {rank} of 2 (node 0), from SLURMEnvironment" in log
    assert "Continuing from" in log
    # Only rank 0 writes TensorBoard events: one writing process per job.
    writers = {p.name.split(".")[-2] for p in run_dir.glob("events.out.tfevents.*")}
    assert len(writers) == 2, sorted(p.name for p in run_dir.glob("events.out.tfevents.*"))
    assert len(list((run_dir / ".hydra").glob("resume_*"))) == 1  # rank 1 writes no Hydra files


def test_sweep_jobs_requeued_after_signals(slurm: dict[str, str], data_root: Path, tmp_path: Path) -> None:
    two_seeds = ["seed=1,2", f"data.root={data_root}", "logger=csv"]
    """Two sweep jobs on SLURM: one gets SIGTERM (preemption), the other submitit's
    time-limit signal SIGUSR2, mid-epoch. Each saves last.ckpt, requeues itself, and
    continues when SLURM starts it again (about 2 minutes later); the sweep then ends
    normally."""
    log = (tmp_path / "sweep.log").open("w")
    sweep = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), "-m", "hydra/launcher=slurm_local", *LONG_RUN, *two_seeds],
        cwd=tmp_path,
        env=slurm,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: len(list(tmp_path.glob("outputs/multirun/*/*/metrics.json"))) == 2, 300, "both jobs")
        jobs = sorted(p.parent for p in tmp_path.glob("outputs/multirun/*/*/metrics.json"))
        wait_until(lambda: all(status_of(job).get("epochs", 0) >= 1 for job in jobs), 300, "the first epochs")
        time.sleep(2)
        (array,) = {p.name.split("_")[0] for p in jobs[0].parent.glob(".submitit/*_0")}
        slurm_command(slurm, "scancel", "--signal=TERM", f"{array}_0")
        slurm_command(slurm, "scancel", "--signal=USR2", f"{array}_1")
        assert sweep.wait(timeout=540) == 0, (tmp_path / "sweep.log").read_text()[-3000:]
    finally:
        sweep.kill()
    for job in jobs:
        done = RunFolder(job).read_status()
        assert (done["status"], done["epochs"], done["global_step"]) == ("finished", 3, 3 * STEPS_PER_EPOCH), job
        assert sorted(RunFolder(job).read_history()["val/acc"]) == [1, 2, 3]
        train_log = (job / "train.log").read_text()
        for line in ("Stopped at epoch 1", "Requeued SLURM job", "(SLURM restart 1)", "Continuing from"):
            assert line in train_log, (job, line)
    assert "SIGUSR2: stopping after this batch" in (jobs[1] / "train.log").read_text()
    assert "2 jobs, 2 finished" in (jobs[0].parent / "summary.md").read_text()


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A PostgreSQL server on a free localhost port, with an empty database ``optuna``;
    yields its URL. Runs as the ``postgres`` user when the tests run as root."""
    initdb = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not initdb:
        pytest.skip("no PostgreSQL server: install it with `scripts/setup.sh --cluster`")
    bin_dir = initdb[-1].parent
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    data = Path(tempfile.mkdtemp(prefix="fmnist-postgres-"))
    if as_postgres:
        shutil.chown(data, "postgres", "postgres")
    port = free_port()

    def run(*args: str) -> None:
        result = subprocess.run([*as_postgres, *args], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr

    run(str(bin_dir / "initdb"), "-D", str(data / "db"), "--auth=trust", "-U", "postgres")
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1"
    run(str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-o", options, "-l", str(data / "log"), "-w", "start")
    try:
        run(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "optuna")
        yield f"postgresql://postgres@127.0.0.1:{port}/optuna"
    finally:
        run(str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-m", "fast", "stop")
        shutil.rmtree(data, ignore_errors=True)


def optuna_sweep(storage: str, study: str, n_trials: int, data_root: Path, *extra: str) -> list[str]:
    """The command line of an Optuna sweep of 2-batch jobs into ``study``."""
    return [
        "-m",
        "hparams_search=three_conv_tpe",
        f"hydra.sweeper.storage={storage}",
        f"hydra.sweeper.study_name={study}",
        f"hydra.sweeper.n_trials={n_trials}",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=2",
        "+trainer.limit_test_batches=2",
        "callbacks.progress_bar=null",
        "logger=csv",
        f"data.root={data_root}",
        *extra,
    ]


def test_parallel_optuna_workers_share_a_postgres_study(postgres: str, data_root: Path, tmp_path: Path) -> None:
    """Two sweep processes started together with one study_name add exactly 2N trials with
    unique numbers; a third process extends the study; a trial whose job fails is marked
    FAIL, and its job failed."""
    import optuna

    n = 3
    workers = [
        subprocess.Popen(
            [sys.executable, str(REPO / "train.py"), *optuna_sweep(postgres, "shared", n, data_root)],
            cwd=tmp_path,
            env=SCRIPT_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for worker in workers:
        _, stderr = worker.communicate(timeout=600)
        assert worker.returncode == 0, stderr[-3000:]
    trials = optuna.load_study(study_name="shared", storage=postgres).get_trials()
    assert sorted(t.number for t in trials) == list(range(2 * n))
    assert all(t.state == optuna.trial.TrialState.COMPLETE and 0 < t.value <= 1 for t in trials)
    sweeps = sorted((tmp_path / "outputs" / "multirun").iterdir())
    assert len(sweeps) == 2 and all(len(list(s.glob("*/metrics.json"))) == n for s in sweeps)

    third = run_script("train.py", *optuna_sweep(postgres, "shared", 2, data_root), cwd=tmp_path)
    assert third.returncode == 0, third.stderr[-3000:]
    study = optuna.load_study(study_name="shared", storage=postgres)
    assert sorted(t.number for t in study.get_trials()) == list(range(2 * n + 2))

    # data.image_size=3 is refused by the config check: the trial's job fails.
    bad_value = optuna_sweep(postgres, "failing", 1, data_root, "data.image_size=3")
    failing = run_script("train.py", *bad_value, cwd=tmp_path)
    assert failing.returncode == 1, failing.stderr[-3000:]
    (trial,) = optuna.load_study(study_name="failing", storage=postgres).get_trials()
    assert trial.state == optuna.trial.TrialState.FAIL
    failing_sweep = sorted((tmp_path / "outputs" / "multirun").iterdir())[-1]
    (job,) = (p.parent for p in failing_sweep.glob("*/metrics.json"))
    assert RunFolder(job).read_status()["status"] == "failed" and "image_size" in RunFolder(job).read_status()["error"]


def test_optuna_trials_as_slurm_jobs_report_for_pruning(slurm: dict[str, str], data_root: Path, tmp_path: Path) -> None:
    """An Optuna search whose trials run as SLURM jobs (hydra/launcher=slurm_local, 2 at a
    time): each job reports its epochs to the study in the sweep folder, which the sweeper
    process reads back; pruned trials' jobs say so, the others finished."""

    sweep = tmp_path / "search"
    result = run_script(
        "train.py",
        "hparams_search=three_conv_tpe",
        "hydra/launcher=slurm_local",
        "hydra/sweeper/pruner=successive_halving",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.sampler.n_startup_trials=2",
        "model=two_conv",
        "data.image_size=16",
        "trainer.max_epochs=3",
        "+trainer.limit_train_batches=10",
        "+trainer.limit_val_batches=2",
        "+trainer.limit_test_batches=2",
        "callbacks.progress_bar=null",
        "logger=csv",
        f"data.root={data_root}",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        env=slurm,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    trials = sweep_study(sweep).trials
    assert len(trials) == 4 and all(t.intermediate_values for t in trials)  # reported from the SLURM jobs
    for trial in trials:
        (number,) = trial.user_attrs["jobs"]
        (job,) = sweep.glob(f"{number}_*")
        expected = {"COMPLETE": "finished", "PRUNED": "pruned"}[trial.state.name]
        assert RunFolder(job).read_status()["status"] == expected
    assert len([p for p in (sweep / ".submitit").glob("*_*") if p.is_dir()]) == 4  # four SLURM jobs
