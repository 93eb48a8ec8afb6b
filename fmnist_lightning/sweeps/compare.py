"""``fmnist-compare`` of two sweeps: each configuration of one against the configuration of the
other with the same swept values (or the only one of each), by test accuracy over seeds: Student's
paired t-test on the shared seeds, or Welch's t-test when fewer than two are shared, each with the
95 % interval of ``B − A`` and a verdict in words.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fmnist_lightning.errors import RunError
from fmnist_lightning.evaluation.compare import check_same_test_set, verdict
from fmnist_lightning.evaluation.statistics import paired_t_test, welch_t_test
from fmnist_lightning.run_folder import RunFolder
from fmnist_lightning.sweeps.configurations import Group, group_jobs, swept_keys
from fmnist_lightning.sweeps.jobs import job_folders, read_sweep

#: The metric two sweeps are compared by: what the test set says, not what chose the models.
METRIC = "test/acc"


def is_sweep(folder: str | Path) -> bool:
    """Whether a folder holds sweep jobs (``jobs.job_folders``) rather than being a run."""
    return bool(job_folders(Path(folder)))


def _configurations(sweep_dir: Path) -> list[Group]:
    jobs = read_sweep(sweep_dir)
    return group_jobs(jobs, swept_keys(jobs), METRIC)


def _pairs(groups_a: list[Group], groups_b: list[Group]) -> tuple[list[tuple[Group, Group]], list[Group]]:
    """Configurations of A and B with the same swept values (or the only one of each), and the rest."""
    if len(groups_a) == 1 and len(groups_b) == 1:
        return [(groups_a[0], groups_b[0])], []
    by_values = {tuple(sorted(g.values.items())): g for g in groups_b}
    pairs = [(g, by_values[key]) for g in groups_a if (key := tuple(sorted(g.values.items()))) in by_values]
    matched = {id(g) for pair in pairs for g in pair}
    return pairs, [g for g in groups_a + groups_b if id(g) not in matched]


def compare_sweeps(sweep_a: str | Path, sweep_b: str | Path, trusted_modules: Sequence[str] = ()) -> dict[str, Any]:
    """Compares two sweeps configuration by configuration.

    Returns:
        ``a``, ``b``, ``metric``, ``configurations`` (per matched configuration: the seeds compared,
        the shared ones when at least two are shared, else all; their means, ``difference``,
        ``ci95``, ``p_value`` (NaN where no test is possible), ``test``, ``verdict``) and
        ``unmatched`` (the swept values of configurations in only one sweep). Fractions.

    Raises:
        FileNotFoundError: A folder holds no sweep jobs.
        RunError: No job of a sweep finished, no configuration matches, or the test sets differ.
    """
    sweep_a, sweep_b = Path(sweep_a), Path(sweep_b)
    groups = _configurations(sweep_a), _configurations(sweep_b)
    _check_comparable((sweep_a, sweep_b), groups, trusted_modules)
    pairs, unmatched = _pairs(*groups)
    if not pairs:
        raise RunError(
            f"no configuration of {sweep_a} matches one of {sweep_b} by its swept values; "
            "compare sweeps over the same grid, or two sweeps of one configuration each"
        )
    return {
        "a": str(sweep_a),
        "b": str(sweep_b),
        "metric": METRIC,
        "configurations": [_compare_configuration(a, b) for a, b in pairs],
        "unmatched": [g.values for g in unmatched],
    }


def _check_comparable(
    sweeps: tuple[Path, Path], groups: tuple[list[Group], list[Group]], trusted_modules: Sequence[str]
) -> None:
    """Refuses two sweeps unless each has a finished job and their first ones share a test set."""
    finished = [[j for g in gs for j in g.finished()] for gs in groups]
    for folder, jobs in zip(sweeps, finished, strict=True):
        if not jobs:
            raise RunError(f"no job of the sweep {folder} finished; there is nothing to compare")
    check_same_test_set(
        RunFolder(finished[0][0].folder).load_config(trusted_modules),
        RunFolder(finished[1][0].folder).load_config(trusted_modules),
        (str(sweeps[0]), str(sweeps[1])),
    )


def _compare_configuration(a: Group, b: Group) -> dict[str, Any]:
    """One entry of ``compare_sweeps``'s ``configurations``: ``a`` against ``b`` by ``METRIC``."""
    seeds_a, seeds_b = a.by_seed(METRIC), b.by_seed(METRIC)
    shared = sorted(set(seeds_a) & set(seeds_b))
    # Paired on the shared seeds (their means are then of those seeds), else all seeds.
    values_a = [seeds_a[s] for s in shared] if len(shared) > 1 else a.scores(METRIC)
    values_b = [seeds_b[s] for s in shared] if len(shared) > 1 else b.scores(METRIC)
    result = (paired_t_test if len(shared) > 1 else welch_t_test)(values_a, values_b)
    if not math.isnan(result.p_value):
        words = verdict(result.difference, result.low, result.high, result.p_value, result.test)
    elif len(shared) > 1:
        words = f"B − A is {100 * result.difference:+.2f} points on every shared seed: no spread, no test."
    else:
        words = f"Too few seeds for a test (A: {len(values_a)}, B: {len(values_b)}); run at least two of each."
    return {
        "values_a": a.values,
        "values_b": b.values,
        "seeds_a": len(values_a),
        "seeds_b": len(values_b),
        "shared_seeds": len(shared),
        "mean_a": statistics.fmean(values_a) if values_a else math.nan,
        "mean_b": statistics.fmean(values_b) if values_b else math.nan,
        "difference": result.difference,
        "ci95": [result.low, result.high],
        "p_value": result.p_value,
        "test": result.test,
        "verdict": words,
    }


def sweep_comparison_markdown(result: dict[str, Any]) -> str:
    """``compare_sweeps``'s result as Markdown: one verdict and one table row per configuration."""

    def label(values: dict[str, str]) -> str:
        return ", ".join(f"{k}={v}" for k, v in values.items()) or "(one configuration)"

    lines = [
        "# Sweep A against sweep B",
        "",
        f"A: {result['a']}; B: {result['b']}. `{result['metric']}` in %, mean over the seeds compared (the "
        "shared ones when at least two are shared, else all); B − A in points with its 95 % interval "
        "(paired t-test on the shared seeds, else Welch's t-test).",
        "",
        "| configuration | seeds A | seeds B | shared | A | B | B − A | 95 % CI | p | test |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for c in result["configurations"]:
        low, high = c["ci95"]
        lines.append(
            f"| {label(c['values_a'])} | {c['seeds_a']} | {c['seeds_b']} | {c['shared_seeds']} "
            f"| {100 * c['mean_a']:.2f} | {100 * c['mean_b']:.2f} | {100 * c['difference']:+.2f} "
            f"| [{100 * low:+.2f}, {100 * high:+.2f}] | {c['p_value']:.2g} | {c['test']} |"
        )
    lines += ["", "## Verdicts", ""]
    lines += [f"- {label(c['values_a'])}: {c['verdict']}" for c in result["configurations"]]
    if result["unmatched"]:
        lines += ["", "In one sweep only (not compared): " + "; ".join(label(v) for v in result["unmatched"]) + "."]
    return "\n".join(lines) + "\n"
