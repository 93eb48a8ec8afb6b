"""The Optuna search of ``python train.py -m hparams_search=...`` (``hydra/sweeper=optuna``,
``conf/hydra/sweeper/optuna.yaml``), on Optuna's ask-and-tell API.

Each trial (``study.ask``) runs as one sweep job, or K with ``folds: K``, and is told its outcome
from its jobs' ``metrics.json`` (``outcome``); a trial whose jobs were stopped stays RUNNING until
the continued search finishes them. The search space is written as in hydra-optuna-sweeper:
``interval(a, b)`` (float, or int for two ints), ``tag(log, interval(a, b))`` (log scale),
``choice(a, b, ...)`` and ``range(a, b[, step])`` (categorical), on the command line too.
"""

from __future__ import annotations

import logging
import statistics
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.core.override_parser.types import IntervalSweep, Override, Transformer
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fmnist_lightning.errors import UserError
from fmnist_lightning.overrides import sweep_overrides
from fmnist_lightning.run_folder import RunFolder
from fmnist_lightning.sweeps import continuing, grid
from fmnist_lightning.sweeps.optuna_storage import open_storage, storage_spec, trial_overrides

log = logging.getLogger(__name__)


def distribution(override: Override) -> Any:
    """The Optuna distribution of a swept override.

    Raises:
        ValueError: A sweep Optuna cannot sample (e.g. a glob).
    """
    import optuna.distributions as d

    value = override.value()
    if override.is_choice_sweep() or override.is_range_sweep():
        return d.CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if override.is_interval_sweep():
        assert isinstance(value, IntervalSweep)
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return d.IntDistribution(int(value.start), int(value.end), log=log_scale)
        return d.FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise ValueError(f"{override.input_line}: Optuna cannot sample this sweep; use interval, choice or range")


def search_space(params: dict[str, str] | None, arguments: list[str]) -> tuple[list[str], dict[str, Any]]:
    """``(fixed overrides, {key: distribution})`` from the sweeper's ``params`` and the command line.

    Raises:
        UserError: A sweep Optuna cannot sample.
    """
    lines = [f"{k}={v}" for k, v in (params or {}).items()] + list(arguments)
    fixed, space = [], {}
    for override in sweep_overrides(lines):
        if not override.is_sweep_override():
            fixed.append(override.input_line)
            continue
        try:
            space[override.get_key_element()] = distribution(override)
        except ValueError as err:
            raise UserError(str(err)) from None
    return fixed, space


def job_overrides(fixed: list[str], params: dict[str, Any], fold: int | None, folds: int | None) -> list[str]:
    """A trial's job's own overrides: the fixed ones, its fold, the trial's values."""
    fold_overrides = [f"data.folds={folds}", f"data.fold={fold}"] if folds else []
    return fixed + fold_overrides + [f"{key}={value}" for key, value in params.items()]


def outcome(folders: list[Path | None], metric: str) -> tuple[Any, float | None]:
    """``(state, value)`` to tell for a trial whose jobs have these folders (``None``: no folder):
    COMPLETE with the mean ``metric``, PRUNED, FAIL, or ``(None, None)`` while any is unfinished."""
    from optuna.trial import TrialState

    statuses = [RunFolder(f).read_status() if f is not None else {} for f in folders]
    states = [s.get("status") for s in statuses]
    if any(s in (None, "failed") for s in states):
        return TrialState.FAIL, None
    if "pruned" in states:
        return TrialState.PRUNED, None
    if any(s != "finished" for s in states):
        return None, None
    values = [s["metrics"].get(metric) for s in statuses]
    if any(v is None for v in values):
        return TrialState.FAIL, None
    return TrialState.COMPLETE, statistics.fmean(values)


class OptunaSweeper(Sweeper):
    """A Hydra sweeper running an Optuna study trial by trial.

    Args:
        sampler: The sampler's config (``_target_``: an ``optuna.samplers`` class).
        storage: Where the study is kept (``sweeps.optuna_storage``); ``None``: a journal file.
        n_trials: Trials this sweep runs (a continued sweep counts those it ran already).
        n_jobs: Trials asked for at a time.
        folds: ``None``, or K: each trial is a K-fold cross-validation told the metric's mean.
        heartbeat_interval: Seconds between heartbeats (database storage only); ``None``: none.
        grace_period: Seconds without a heartbeat before a trial is failed (``None``: 2 intervals).
        trial: Set by the sweeper in each job's config: the trial the job is.
    """

    def __init__(
        self,
        sampler: DictConfig,
        direction: str = "maximize",
        study_name: str | None = None,
        storage: str | None = None,
        n_trials: int = 20,
        n_jobs: int = 1,
        params: dict[str, str] | None = None,
        pruner: DictConfig | None = None,
        folds: int | None = None,
        heartbeat_interval: int | None = None,
        grace_period: int | None = None,
        max_retry: int = 2,
        trial: int | None = None,
    ) -> None:
        self.sampler_config, self.pruner_config = sampler, pruner
        self.direction, self.study_name, self.storage = direction, study_name, storage
        self.n_trials, self.n_jobs, self.params, self.folds = n_trials, n_jobs, params, folds
        self.heartbeat = (heartbeat_interval, grace_period, max_retry)

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def _study(self, space: dict[str, Any], sweep_dir: Path) -> tuple[Any, str, str]:
        """``(study, storage spec, study name)``, created or loaded."""
        import optuna

        spec = storage_spec(self.storage, sweep_dir)
        name = self.study_name or sweep_dir.name
        interval, grace, retry = self.heartbeat
        storage = open_storage(spec, interval, grace, retry)  # a journal file ignores the heartbeat settings
        self.storage_backend = storage  # the heartbeats go here (optuna's study wraps it in a cache)
        #: Whether running trials' heartbeats are recorded: a database storage with an interval
        #: (the rule of Optuna's own, private, ``is_heartbeat_enabled``).
        self.beating = getattr(storage, "get_heartbeat_interval", lambda: None)() is not None
        pruner = instantiate(self.pruner_config) if self.pruner_config else None
        sampler = self._sampler(space, 0)
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            sampler=sampler,
            pruner=pruner,
            direction=self.direction,
            load_if_exists=True,
        )
        # The search ends after n_trials. Study.stop, which GridSampler calls once the grid is
        # exhausted, works only inside study.optimize and would fail the trial's tell here.
        study.stop = lambda: None
        return study, spec, name

    def _sampler(self, space: dict[str, Any], trials: int) -> Any:
        """The sampler for the next trial, seeded ``seed + trials`` so that a continued search asks the same."""
        extra: dict[str, Any] = {}
        if str(self.sampler_config._target_).endswith("GridSampler"):
            extra["search_space"] = {k: list(v.choices) for k, v in space.items()}
        if self.sampler_config.get("seed") is not None:
            extra["seed"] = int(self.sampler_config.seed) + trials
        return instantiate(self.sampler_config, **extra)

    def sweep(self, arguments: list[str]) -> Any:
        """Runs (or continues) the search; writes ``optimization_results.yaml``."""
        import optuna

        sweep_dir = Path(self.config.hydra.sweep.dir).resolve()
        fixed, space = search_space(self.params, arguments)
        study, spec, name = self._study(space, sweep_dir)
        grid.save_sweep_config(self.config)
        metric = self.config.get("optimized_metric") or "val/acc_best"
        mine = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("sweep_dir") == str(sweep_dir)]
        # The trials this folder ran before: their jobs are checked, and those of trials still
        # RUNNING (the sweep was stopped) are continued or run again, then told.
        jobs: dict[int, list[str]] = {}
        for trial in mine:
            jobs.update(self._jobs_of(trial.number, trial.params, trial.user_attrs["jobs"], spec, name, fixed))
        running = [t for t in mine if t.state == optuna.trial.TrialState.RUNNING]
        with self._heartbeats(study, running):
            grid.launch(self, jobs, None, wanted={n for t in running for n in t.user_attrs["jobs"]})
        self._tell(study, running, sweep_dir, metric)
        next_job = max(jobs, default=-1) + 1
        for done in range(len(mine), self.n_trials, self.n_jobs):
            if self.beating:
                optuna.storages.fail_stale_trials(study)
            trials, jobs = [], {}
            for _ in range(min(self.n_jobs, self.n_trials - done)):
                study.sampler = self._sampler(space, len(study.get_trials(deepcopy=False)))
                with warnings.catch_warnings():  # the heartbeats are this sweeper's, not study.optimize's
                    warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used with Study.optimize")
                    trial = study.ask(space)
                numbers = list(range(next_job, next_job + (self.folds or 1)))
                next_job += len(numbers)
                trial.set_user_attr("sweep_dir", str(sweep_dir))
                trial.set_user_attr("jobs", numbers)
                jobs.update(self._jobs_of(trial.number, trial.params, numbers, spec, name, fixed))
                trials.append(trial)
            with self._heartbeats(study, trials):
                grid.launch(self, jobs, None, complete=False)
            self._tell(study, trials, sweep_dir, metric)
        self._write_results(study, sweep_dir)

    def _jobs_of(
        self, number: int, params: dict[str, Any], jobs: list[int], spec: str, name: str, fixed: list[str]
    ) -> dict[int, list[str]]:
        """``job number → overrides`` of a trial's jobs."""
        folds: list[int | None] = list(range(len(jobs))) if self.folds else [None]
        plumbing = trial_overrides(number, spec, name)
        pairs = zip(jobs, folds, strict=True)
        return {job: job_overrides(fixed, params, fold, self.folds) + plumbing for job, fold in pairs}

    def _tell(self, study: Any, trials: list[Any], sweep_dir: Path, metric: str) -> None:
        """Tells each trial its outcome from its jobs' folders (unfinished ones stay RUNNING)."""
        folders = continuing.existing_jobs(sweep_dir)
        for trial in trials:
            state, value = outcome([folders.get(n) for n in trial.user_attrs["jobs"]], metric)
            if state is not None:
                study.tell(trial.number, value, state=state, skip_if_finished=True)
                told = "" if value is None else f", {metric} = {value:.4f}"
                log.info("Trial %d: %s%s", trial.number, state.name, told)

    @contextmanager
    def _heartbeats(self, study: Any, trials: list[Any]) -> Iterator[None]:
        """Records the trials' heartbeats every ``heartbeat_interval`` seconds while their jobs run."""
        storage, interval = self.storage_backend, self.heartbeat[0]
        if not self.beating:
            yield
            return
        stop = threading.Event()

        def beat() -> None:
            while not stop.is_set():
                for trial in trials:
                    storage.record_heartbeat(trial._trial_id)
                stop.wait(interval)

        thread = threading.Thread(target=beat, name="optuna-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _write_results(self, study: Any, sweep_dir: Path) -> None:
        """``optimization_results.yaml``: the study's best trial so far."""
        try:
            best = study.best_trial
        except ValueError:  # no complete trial
            log.warning("No trial of study %s completed", study.study_name)
            return
        results = {"name": "optuna", "study_name": study.study_name, "best_trial": best.number,
                   "best_params": best.params, "best_value": best.value}  # fmt: skip
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
        log.info("Best trial %d: %s = %s with %s", best.number, self.direction, best.value, best.params)
