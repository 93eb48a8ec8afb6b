"""A sweep's configurations: its jobs grouped by their swept values other than the seed and the
fold, with a metric's mean, 95 % t interval and paired t-test against the best."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from fmnist_lightning.evaluation.statistics import Difference, MeanInterval, paired_t_test, t_interval
from fmnist_lightning.sweeps.jobs import Job

#: Keys that vary between the jobs of one configuration: its replicates (seeds, and the folds
#: of a K-fold cross-validation, ``data.fold``), over which a configuration is averaged.
SEED_KEYS = ("seed", "data.fold")


def swept_keys(jobs: list[Job]) -> list[str]:
    """The override keys whose values differ between jobs, in command-line order."""
    keys: list[str] = []
    for job in jobs:
        keys += [k for k in job.overrides if k not in keys]
    return [k for k in keys if len({job.overrides.get(k) for job in jobs}) > 1]


@dataclass
class Group:
    """The jobs of one configuration (the same swept values except the seed and the fold)."""

    values: dict[str, str]
    jobs: list[Job]

    def finished(self) -> list[Job]:
        return [j for j in self.jobs if j.status == "finished"]

    def scores(self, metric: str) -> list[float]:
        """``metric`` of each finished job."""
        return [j.metrics[metric] for j in self.finished() if metric in j.metrics]

    def mean(self, metric: str) -> float:
        values = self.scores(metric)
        return statistics.fmean(values) if values else math.nan

    def interval(self, metric: str) -> MeanInterval:
        """The mean over seeds and folds with its 95 % t interval."""
        return t_interval(self.scores(metric))

    def by_seed(self, metric: str) -> dict[tuple[str, ...], float]:
        """``(seed, fold) → metric`` of the finished jobs that set a seed or a fold: a paired test's pairs."""
        return {
            tuple(j.overrides.get(k, "") for k in SEED_KEYS): j.metrics[metric]
            for j in self.finished()
            if any(k in j.overrides for k in SEED_KEYS) and metric in j.metrics
        }


def compare_to_best(groups: list[Group], metric: str) -> list[Difference | None]:
    """Each configuration against the best (``groups[0]``): Student's paired t-test of ``metric`` on
    the seeds both finished; ``None`` for the best and where fewer than two seeds are shared."""
    best = groups[0].by_seed(metric) if groups else {}
    differences: list[Difference | None] = [None]
    for group in groups[1:]:
        mine = group.by_seed(metric)
        shared = sorted(set(best) & set(mine))
        pair = [best[s] for s in shared], [mine[s] for s in shared]
        differences.append(paired_t_test(*pair) if len(shared) > 1 else None)
    return differences[: len(groups)]


def group_jobs(jobs: list[Job], keys: list[str], metric: str) -> list[Group]:
    """Groups jobs by their swept values other than the seed and the fold, best mean ``metric`` first
    (configurations without a finished job last)."""
    config_keys = [k for k in keys if k not in SEED_KEYS]
    groups: dict[tuple, Group] = {}
    for job in jobs:
        values = {k: job.overrides.get(k, "") for k in config_keys}
        groups.setdefault(tuple(values.values()), Group(values, [])).jobs.append(job)
    return sorted(
        groups.values(),
        key=lambda g: (math.isnan(g.mean(metric)), -g.mean(metric) if not math.isnan(g.mean(metric)) else 0),
    )
