"""Sweeps: grids, a failing job, Optuna searches, the joblib launcher, and their summaries."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shlex
import sqlite3
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from scipy import stats

from conftest import CONF, job_folder, run_script
from fmnist_lightning.cli.summarize import folder_words
from fmnist_lightning.evaluation.statistics import paired_t_test
from fmnist_lightning.run_folder import RunFolder
from fmnist_lightning.sweeps import read_sweep, summarize
from fmnist_lightning.sweeps.optuna_storage import sweep_study
from fmnist_lightning.sweeps.summary import versus_best
from fmnist_lightning.training.build import build_run
from in_process import run_command

# Jobs of a few seconds: one batch of each stage (fast_dev_run) of the smallest network.
TINY = ["debug=fdr", "trainer=cpu", "model=two_conv_5x5", "data.image_size=16"]
# Real but short training, for searches that need a learning signal.
SHORT = [
    "trainer=cpu",
    "data.image_size=16",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=20",
    "trainer.limit_val_batches=5",
    "callbacks.progress_bar=null",
]


def job_rows(sweep: Path) -> list[dict[str, str]]:
    with (sweep / "summary_jobs.csv").open() as file:
        return list(csv.DictReader(file))


@pytest.mark.slow  # end to end; in the default suite: test_extending's sweep and the summary's own tests
def test_grid_sweep_ends_with_a_summary(data_root: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_command(
        "train.py", "-m", *TINY, "optimizer=adam,sgd", "seed=1,2", f"data.root={data_root}", f"hydra.sweep.dir={sweep}"
    )
    assert result.returncode == 0, result.stderr[-3000:]

    # Each job's folder: its number and swept values.
    jobs = ["0_optimizer-adam_seed-1", "1_optimizer-adam_seed-2", "2_optimizer-sgd_seed-1", "3_optimizer-sgd_seed-2"]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == jobs
    rows = job_rows(sweep)
    assert [(r["optimizer"], r["seed"], r["status"]) for r in rows] == [
        ("adam", "1", "finished"),
        ("adam", "2", "finished"),
        ("sgd", "1", "finished"),
        ("sgd", "2", "finished"),
    ]
    for row in rows:
        job = RunFolder(sweep / row["job"]).read_status()
        assert float(row["val/acc_best"]) == job["metrics"]["val/acc_best"]
        assert float(row["test/acc"]) == job["metrics"]["test/acc"]
    # Grouped over seeds: one row per optimizer, mean and std of the two seeds.
    with (sweep / "summary.csv").open() as file:
        groups = {r["optimizer"]: r for r in csv.DictReader(file)}
    for optimizer in ("adam", "sgd"):
        values = [float(r["val/acc_best"]) for r in rows if r["optimizer"] == optimizer]
        assert float(groups[optimizer]["val/acc_best_mean"]) == pytest.approx(sum(values) / 2)
        assert float(groups[optimizer]["val/acc_best_std"]) == pytest.approx(abs(values[0] - values[1]) / math.sqrt(2))
    assert (sweep / "summary.png").stat().st_size > 0
    assert "## Configurations" in result.stdout and "4 jobs, 4 finished" in result.stdout
    # Every job sets its own overrides file.
    assert {"optimizer=sgd", "seed=2"} <= set(
        yaml.safe_load((sweep / jobs[3] / ".hydra" / "overrides.yaml").read_text())
    )

    again = run_command("summarize.py", f"sweep_dir={sweep}", "metric=test/acc")
    assert again.returncode == 0 and "Ranked by the mean of `test/acc`" in again.stdout, again.stderr[-2000:]


def test_a_failing_job_does_not_stop_the_sweep(data_root: Path, tmp_path: Path) -> None:
    """The first job fails; the next one still trains, and the summary lists both."""
    sweep = tmp_path / "sweep"
    result = run_command(
        "train.py", "-m", *TINY, "optimizer.lr=-1,1e-3", f"data.root={data_root}", f"hydra.sweep.dir={sweep}"
    )

    assert result.returncode == 1
    assert "1 of 2 jobs did not finish (jobs 0_lr--1)" in result.stderr
    assert "Traceback" not in result.stderr
    statuses = [(r["job"], r["status"]) for r in job_rows(sweep)]
    assert statuses == [("0_lr--1", "failed"), ("1_lr-0.001", "finished")]
    failed = RunFolder(sweep / "0_lr--1").read_status()
    assert failed["status"] == "failed" and "optimizer.lr=-1" in failed["error"]
    summary = (sweep / "summary.md").read_text()
    assert "## Not finished" in summary and "job 0_lr--1 (failed): invalid config" in summary


@pytest.mark.slow  # the Optuna search: 3 trials of real training (about 9 s)
def test_optuna_search_keeps_its_study_in_the_sweep_folder(data_root: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "search"
    result = run_command(
        "train.py",
        "hparams_search=three_conv_tpe",
        "model=two_conv",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.n_startup_trials=2",
        *SHORT,
        f"data.root={data_root}",
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    values = [RunFolder(job_folder(sweep, i)).read_status()["metrics"]["val/acc_best"] for i in range(3)]
    assert best["best_value"] == pytest.approx(max(values))
    assert set(best["best_params"]) == {"optimizer.lr", "optimizer.weight_decay", "data.batch_size", "model.dropout"}
    assert len(job_rows(sweep)) == 3 and (sweep / "optuna.journal").is_file()


@pytest.mark.slow
def test_optuna_search_with_sqlite_survives_a_failed_trial(data_root: Path, tmp_path: Path) -> None:
    """A grid of 4 trials, one with an invalid learning rate, stored in SQLite: the search
    finishes, and the study in the database has 2 complete trials with values and the 2
    failed ones marked FAIL."""
    conf = tmp_path / "conf" / "hparams_search"
    conf.mkdir(parents=True)
    (conf / "grid_with_bad_lr.yaml").write_text(
        "# @package _global_\n"
        "defaults:\n  - override /hydra/sweeper: optuna\n  - override /hydra/sweeper/sampler: grid\n"
        "hydra:\n  mode: MULTIRUN\n  sweeper:\n    direction: maximize\n    n_trials: 4\n    n_jobs: 1\n"
        "    params:\n      optimizer.lr: choice(0.001, -1)\n      data.batch_size: choice(32, 64)\n"
    )
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    common = [
        "-cd",
        str(tmp_path / "conf"),
        "hparams_search=grid_with_bad_lr",
        "model=two_conv",
        *SHORT,
        f"data.root={data_root}",
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.study_name=grid",
    ]
    result = run_script("train.py", *common, f"hydra.sweep.dir={tmp_path / 'search'}")
    assert result.returncode == 1, result.stderr[-3000:]  # two trials failed, and the exit says so
    assert "2 of 4 jobs did not finish" in result.stderr

    import optuna

    trials = optuna.load_study(study_name="grid", storage=storage).trials
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(failed) == 2 and all(t.params["optimizer.lr"] == -1 and t.value is None for t in failed)
    assert len(complete) == 2 and all(0 < t.value < 1 for t in complete)


@pytest.mark.slow  # 6 short trials in 2 joblib worker processes (about 25 s)
def test_optuna_prunes_trials_of_jobs_in_other_processes(data_root: Path, tmp_path: Path) -> None:
    """Successive halving prunes the trials that trail at an epoch: their jobs, run by joblib's
    worker processes, report through the study's journal file and stop; each says so in its
    metrics.json, the study marks it PRUNED, the summary lists it, and the sweep succeeds."""
    import optuna

    sweep = tmp_path / "search"
    result = run_script(
        "train.py",
        "hparams_search=three_conv_tpe",
        "model=two_conv",
        "hydra/sweeper/pruner=successive_halving",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.n_trials=6",
        "hydra.sweeper.sampler.n_startup_trials=2",
        *SHORT,
        "trainer.max_epochs=3",
        "trainer.precision=32-true",
        f"data.root={data_root}",
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    trials = sweep_study(sweep).trials
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert len(trials) == 6 and pruned and all(len(t.intermediate_values) < 3 for t in pruned)
    summary = (sweep / "summary.md").read_text()
    for trial in pruned:
        (number,) = trial.user_attrs["jobs"]
        status = RunFolder(job_folder(sweep, number)).read_status()
        assert status["status"] == "pruned" and "test/acc" not in status["metrics"]
        assert status["epochs"] == len(trial.intermediate_values) and "pruned by the study's pruner" in status["error"]
        assert f"- job {job_folder(sweep, number).name}, after {status['epochs']} epochs: pruned" in summary
    assert f"{len(pruned)} pruned, 0 not finished" in summary
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    for trial in complete:
        assert (
            trial.value
            == RunFolder(job_folder(sweep, trial.user_attrs["jobs"][0])).read_status()["metrics"]["val/acc_best"]
        )


@pytest.mark.slow  # 2 trials of 2 folds each, fast_dev_run jobs (about 10 s)
def test_an_optuna_trial_can_be_a_k_fold_cross_validation(data_root: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "search"
    result = run_command(
        "train.py",
        "hparams_search=three_conv_tpe",
        "hydra.sweeper.folds=2",
        "hydra.sweeper.n_trials=2",
        *TINY,
        "model=two_conv",  # which has the dropout the search sets
        f"data.root={data_root}",
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 0, result.stderr[-3000:]

    trials = sweep_study(sweep).trials
    assert [t.user_attrs["jobs"] for t in trials] == [[0, 1], [2, 3]]
    for trial in trials:
        folds = [job_folder(sweep, n) for n in trial.user_attrs["jobs"]]
        assert [f.name.split("_")[1] for f in folds] == ["fold-0", "fold-1"]
        values = [RunFolder(f).read_status()["metrics"]["val/acc_best"] for f in folds]
        assert trial.value == pytest.approx(sum(values) / 2)
    with (sweep / "summary.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 2 and all(r["finished"] == "2" for r in rows)  # one configuration per trial, over its folds


@pytest.mark.slow  # one fast_dev_run trial (about 5 s)
def test_a_dead_workers_trial_is_failed_and_run_again(data_root: Path, tmp_path: Path) -> None:
    """A worker asked for a trial, recorded one heartbeat and died. The next worker's search
    marks that trial FAIL once its grace period is over, and runs it again with the same
    values (Optuna's RetryHeartbeatStaleTrialCallback)."""
    import time

    import optuna

    from fmnist_lightning.sweeps.optuna_search import search_space

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    dead = optuna.storages.RDBStorage(storage, heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(study_name="shared", storage=dead, direction="maximize")
    params = yaml.safe_load((CONF / "hparams_search" / "three_conv_tpe.yaml").read_text())["hydra"]["sweeper"]["params"]
    lost = study.ask(search_space(params, [])[1])
    dead.record_heartbeat(lost._trial_id)
    time.sleep(2.5)

    result = run_command(
        "train.py",
        "hparams_search=three_conv_tpe",
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.study_name=shared",
        "hydra.sweeper.heartbeat_interval=1",
        "hydra.sweeper.grace_period=1",
        "hydra.sweeper.n_trials=1",
        *TINY,
        "model=two_conv",
        f"data.root={data_root}",
        f"hydra.sweep.dir={tmp_path / 'search'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    failed, retried = optuna.load_study(study_name="shared", storage=storage).trials
    assert failed.state == optuna.trial.TrialState.FAIL
    assert retried.state == optuna.trial.TrialState.COMPLETE and retried.params == lost.params
    assert retried.system_attrs["failed_trial"] == failed.number
    # The sweeper recorded the retried trial's own heartbeats while its job ran.
    with sqlite3.connect(tmp_path / "optuna.db") as db:
        beating = {row[0] for row in db.execute("SELECT trial_id FROM trial_heartbeats")}
    assert retried._trial_id in beating


@pytest.mark.slow  # joblib's worker processes each import the package (about 15 s)
def test_joblib_launcher_runs_jobs_in_parallel_without_oversubscribing(data_root: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_script(
        "train.py",
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        *TINY,
        "optimizer=adam,sgd",
        f"data.root={data_root}",
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    for job in ("0_optimizer-adam", "1_optimizer-sgd"):
        assert RunFolder(sweep / job).read_status()["status"] == "finished"
        log = (sweep / job / "train.log").read_text()
        threads = int(log.split(" intra-op CPU threads")[0].split()[-1])
        assert threads == max(1, len(os.sched_getaffinity(0)) // 2)


@pytest.mark.parametrize(
    "storage",
    ["postgresql://postgres@127.0.0.1:1/optuna", "sqlite:////nonexistent/folder/optuna.db"],
    ids=["no-server", "no-folder"],
)
def test_an_optuna_database_that_cannot_be_opened_is_refused(storage: str, tmp_path: Path) -> None:
    """One line naming the storage, before any trial (``sweeps.optuna_storage.open_storage``)."""
    result = run_command("train.py", "hparams_search=three_conv_tpe", f"hydra.sweeper.storage={storage}", cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"error: hydra.sweeper.storage={storage}: cannot open the database" in result.stderr
    assert "Traceback" not in result.stderr and not list(tmp_path.glob("outputs/multirun/*/*/metrics.json"))


def test_slurm_launcher_config_composes() -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["hydra/launcher=slurm", "hydra.launcher.partition=a100", "output_dir=unused"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min, launcher.signal_delay_s) == (
        "a100",
        1,
        120,
        120,
    )
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        local = compose(
            "train", overrides=["hydra/launcher=slurm_local", "output_dir=unused"], return_hydra_config=True
        ).hydra.launcher
    assert (local.partition, local.gpus_per_node, local.cpus_per_task, list(local.setup)) == ("local", 0, 1, [])
    assert local.array_parallelism == launcher.array_parallelism  # the rest is slurm.yaml's


def fake_job(
    sweep: Path, name: str, overrides: list[str], status: str | None, acc: float | None = None, error: str | None = None
) -> None:
    """A job folder as train.py leaves it."""
    (sweep / name / ".hydra").mkdir(parents=True)
    (sweep / name / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if status is not None:
        metrics = {"val/acc_best": acc, "test/acc": acc - 0.01} if acc is not None else {}
        summary = {
            "status": status,
            "epochs": 3,
            "global_step": 30,
            "wall_time_s": 1.5,
            "metrics": metrics,
            "error": error,
        }
        (sweep / name / "metrics.json").write_text(json.dumps(summary) + "\n")


def test_summary_ranks_configurations_over_seeds(tmp_path: Path) -> None:
    """Means with their t intervals and the paired t-test against the best, checked against
    scipy on the same values."""
    table = {"a": [0.80, 0.77, 0.79], "b": [0.90, 0.86, 0.88], "d": [0.89, 0.87, 0.87]}
    jobs = [(model, seed, acc) for model, accs in table.items() for seed, acc in enumerate(accs, 1)]
    for i, (model, seed, acc) in enumerate([*jobs, ("c", 1, None)]):
        fake_job(
            tmp_path,
            str(i),
            [f"model={model}", f"seed={seed}", "trainer.max_epochs=3"],
            "finished" if acc else "failed",
            acc,
            None if acc else "the training loss became nan\n at step 3",
        )
    fake_job(tmp_path, "10", ["model=c", "seed=2", "trainer.max_epochs=3"], None)  # never wrote metrics.json

    markdown, jobs = summarize(tmp_path)

    assert [j.status for j in jobs] == ["finished"] * 9 + ["failed", "not started"]
    ranked = [line for line in markdown.splitlines() if re.match(r"\| [1-4] \|", line)]
    low, high = stats.t.interval(0.95, 2, loc=0.88, scale=stats.sem(table["b"]))
    assert ranked[0].startswith(f"| 1 | b | 3/3 | 88.00 ± 2.00 [{100 * low:.2f}, {100 * high:.2f}]")
    assert ranked[0].endswith("| best |")
    p_d = stats.ttest_rel(table["d"], table["b"]).pvalue
    assert ranked[1].startswith("| 2 | d | 3/3 | 87.67") and ranked[1].endswith(f"| ≈ best (p = {p_d:.2g}, 3 seeds) |")
    p_a = stats.ttest_rel(table["a"], table["b"]).pvalue
    assert p_a < 0.05 and ranked[2].endswith(f"| worse (p = {p_a:.2g}, 3 seeds) |")
    assert ranked[3] == "| 4 | c | 0/2 | failed | failed | – |"
    with (tmp_path / "summary.csv").open() as file:
        rows = {row["model"]: row for row in csv.DictReader(file)}
    assert float(rows["b"]["val/acc_best_ci95_low"]) == pytest.approx(low)
    assert float(rows["a"]["p_vs_best"]) == pytest.approx(p_a) and rows["a"]["differs_from_best"] == "True"
    assert rows["d"]["differs_from_best"] == "False" and rows["b"]["p_vs_best"] == ""
    assert "- job 9 (failed): the training loss became nan at step 3" in markdown
    assert "- job 10 (not started)" in markdown
    assert "`trainer.max_epochs`" not in markdown  # the same in every job: not a swept key
    assert (tmp_path / "summary.png").is_file()


def test_summary_averages_over_folds(tmp_path: Path) -> None:
    """A 5-fold sweep of two configurations: one row each, the mean over its folds, and the
    paired test on the same folds."""
    table = {"adam": [0.90, 0.88, 0.91, 0.89, 0.90], "sgd": [0.86, 0.85, 0.88, 0.86, 0.87]}
    jobs = [(opt, fold, acc) for opt, accs in table.items() for fold, acc in enumerate(accs)]
    for i, (opt, fold, acc) in enumerate(jobs):
        overrides = [f"optimizer={opt}", "data.folds=5", f"data.fold={fold}"]
        fake_job(tmp_path, f"{i}_fold-{fold}", overrides, "finished", acc)
    markdown, _ = summarize(tmp_path)
    with (tmp_path / "summary.csv").open() as file:
        rows = {r["optimizer"]: r for r in csv.DictReader(file)}
    assert set(rows) == {"adam", "sgd"} and "data.fold" not in rows["adam"]
    for optimizer, accs in table.items():
        assert rows[optimizer]["finished"] == "5"
        assert float(rows[optimizer]["val/acc_best_mean"]) == pytest.approx(sum(accs) / 5)
    p = stats.ttest_rel(table["sgd"], table["adam"]).pvalue
    assert float(rows["sgd"]["p_vs_best"]) == pytest.approx(p)
    assert "over seeds and folds" in markdown and f"worse (p = {p:.2g}, 5 runs)" in markdown


def test_a_configuration_better_on_the_shared_seeds_is_not_called_worse() -> None:
    """The best is ranked over all its seeds; on the seeds it shares with another, the other
    can be significantly better, and is marked so."""
    assert versus_best(2, paired_t_test([0.90, 0.91, 0.92], [0.95, 0.961, 0.972])).startswith(
        "better on the shared seeds (p = "
    )
    assert versus_best(2, paired_t_test([0.95, 0.961, 0.972], [0.90, 0.91, 0.92])).startswith("worse (p = ")
    assert versus_best(1, None) == "best" and versus_best(3, None) == "–"


def test_summarize_refuses_a_folder_without_jobs(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="holds no sweep jobs"):
        read_sweep(tmp_path)
    result = run_command("summarize.py", f"sweep_dir={tmp_path}")
    assert result.returncode == 1 and "error:" in result.stderr and "Traceback" not in result.stderr


def test_summarize_takes_a_sweep_folder_given_alone(tmp_path: Path) -> None:
    """``summarize.py <folder>`` is ``summarize.py sweep_dir=<folder>``, whatever the folder's
    name holds, instead of Hydra's ``extraneous input``; a second folder is refused in one
    line that names ``sweep_dir=``. Hydra's flags and their values are not folders."""
    folder = tmp_path / "my sweep ñ=1,2"
    folder.mkdir()
    result = run_command("summarize.py", str(folder), "metric=test/acc")
    assert result.returncode == 1 and f"error: {folder} holds no sweep jobs" in result.stderr, result.stderr
    assert "extraneous input" not in result.stderr and "Traceback" not in result.stderr

    refused = run_command("summarize.py", str(folder), "other")
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert refused.stderr.startswith(
        f"error: summarize takes one sweep folder, as sweep_dir=<folder> (got {str(folder)!r}, 'other'); "
        f"run: fmnist-summarize sweep_dir={shlex.quote(str(folder))}"
    ), refused.stderr
    args = ["--cfg", "job", "-cp", "conf", "--info", "config", "~metric", "metric=a", "hydra/x=y", "sweep"]
    assert folder_words(args) == [9]


def test_optuna_search_config_composes_and_its_values_pass_the_checks(make_cfg) -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train", overrides=["hparams_search=three_conv_tpe", "output_dir=unused"], return_hydra_config=True
        )
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert set(sweeper.params) == {"optimizer.lr", "optimizer.weight_decay", "data.batch_size", "model.dropout"}
    assert cfg.optimized_metric == "val/acc_best"
    # The corners of the search space are valid configs.
    build_run(
        make_cfg(
            "hparams_search=three_conv_tpe",
            "optimizer.lr=1e-4",
            "optimizer.weight_decay=1e-3",
            "data.batch_size=256",
            "model.dropout=0.6",
        )
    )
