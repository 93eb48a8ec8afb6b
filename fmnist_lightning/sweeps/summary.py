"""The answer of a sweep (``summarize``): ``summary_jobs.csv``, every job, failed or not;
``summary.csv``, the configurations (swept values but ``seed`` and ``data.fold``) ranked by the mean
of the optimised metric, with each metric's 95 % t interval and the paired t-test against the best;
``summary.md``, both tables and the failures; ``summary.png``, the plot. Accuracies are fractions
in the CSV files and percentages in ``summary.md`` and the plot.
"""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path

from matplotlib.figure import Figure

from fmnist_lightning.evaluation.statistics import Difference, MeanInterval
from fmnist_lightning.sweeps.configurations import SEED_KEYS, Group, compare_to_best, group_jobs, swept_keys
from fmnist_lightning.sweeps.jobs import Job, read_sweep

#: Metrics summarised per job and per configuration.
METRICS = ("val/acc_best", "test/acc")


def versus_best(rank: int, difference: Difference | None, unit: str = "seeds") -> str:
    """The table's cell for a configuration's paired test against the best, on ``difference.n`` ``unit``."""
    if rank == 1:
        return "best"
    if difference is None:
        return "–"
    if not difference.significant:
        mark = "≈ best"
    else:  # on the shared seeds only; the ranking is over all of each one's seeds
        mark = "worse" if difference.difference < 0 else "better on the shared seeds"
    return f"{mark} (p = {difference.p_value:.2g}, {difference.n} {unit})"


def percent(value: float | None) -> str:
    """A fraction in percent with two decimals; ``""`` for none or NaN."""
    return "" if value is None or math.isnan(value) else f"{100 * value:.2f}"


def mean_std(values: list[float], scale: float = 100, digits: int = 2) -> str:
    """``"mean ± std"`` of ``values`` (sample standard deviation) times ``scale``;
    ``"mean (1 seed)"`` for one value, ``"–"`` for none."""
    if not values:
        return "–"
    mean = statistics.fmean(values) * scale
    if len(values) == 1:
        return f"{mean:.{digits}f} (1 seed)"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def _short(value: str) -> str:
    """A swept value for display: numbers to 4 significant digits (the CSV files keep all)."""
    try:
        number = float(value)
    except ValueError:
        return value
    return value if value.isdigit() else f"{number:.4g}"


def _mean_std(interval: MeanInterval) -> str:
    """``mean ± std [low, high]`` in percent (the 95 % t interval in brackets)."""
    if math.isnan(interval.std):
        return percent(interval.mean)
    return f"{percent(interval.mean)} ± {percent(interval.std)} [{percent(interval.low)}, {percent(interval.high)}]"


def summary_markdown(sweep_dir: Path, jobs: list[Job], keys: list[str], groups: list[Group], metric: str) -> str:
    """The Markdown summary: configurations ranked, every job, the failures."""
    pruned = [j for j in jobs if j.status == "pruned"]
    unfinished = [j for j in jobs if not j.ended]
    over = "seeds and folds" if "data.fold" in keys else "seeds"
    unit = "runs" if "data.fold" in keys else "seeds"
    lines = [
        f"# Sweep {sweep_dir.name}",
        "",
        f"{len(jobs)} jobs, {len(jobs) - len(pruned) - len(unfinished)} finished, "
        + (f"{len(pruned)} pruned, " if pruned else "")
        + f"{len(unfinished)} not finished. "
        f"Ranked by the mean of `{metric}` over {over}; accuracies in %, mean ± standard deviation [95 % t interval "
        f"of the mean]. *vs best*: Student's paired t-test of `{metric}` against the best configuration on the {over} "
        "both finished (p < 0.05: worse; else ≈ best, not significantly different; each test at 5 %, without a "
        "correction for testing several configurations); see docs/comparing.md.",
        "",
    ]
    lines += _configurations_table(groups, [k for k in keys if k not in SEED_KEYS], metric, unit)
    lines += _jobs_table(jobs, keys)
    if pruned:
        lines += ["", "## Pruned", ""]
        lines += [f"- job {j.folder.name}, after {j.epochs} epochs: {j.error}" for j in pruned]
    if unfinished:
        lines += ["", "## Not finished", ""]
        lines += [
            f"- job {j.folder.name} ({j.status}): {j.error or 'no error recorded (still running, or killed)'}"
            for j in unfinished
        ]
    return "\n".join(lines) + "\n"


def _configurations_table(groups: list[Group], config_keys: list[str], metric: str, unit: str) -> list[str]:
    """The Configurations section (accuracies in %) as Markdown lines."""
    lines = [
        "## Configurations",
        "",
        "| rank | "
        + " | ".join(f"`{k}`" for k in config_keys)
        + f" | {unit} | "
        + " | ".join(f"`{m}`" for m in METRICS)
        + " | vs best |",
        "|---:|" + "---|" * len(config_keys) + "---:|" + "---:|" * len(METRICS) + "---|",
    ]
    for rank, (group, difference) in enumerate(zip(groups, compare_to_best(groups, metric), strict=True), 1):
        ended = "pruned" if all(j.status == "pruned" for j in group.jobs) else "failed"
        cells = [_mean_std(group.interval(m)) if group.finished() else ended for m in METRICS]
        lines.append(
            f"| {rank} | "
            + " | ".join(map(_short, group.values.values()))
            + f" | {len(group.finished())}/{len(group.jobs)} | "
            + " | ".join(cells)
            + f" | {versus_best(rank, difference, unit) if group.finished() else '–'} |"
        )
    return lines


def _jobs_table(jobs: list[Job], keys: list[str]) -> list[str]:
    """The Jobs section (metrics in %, wall time in s) as Markdown lines."""
    lines = [
        "",
        "## Jobs",
        "",
        "| job | "
        + " | ".join(f"`{k}`" for k in keys)
        + " | status | "
        + " | ".join(f"`{m}`" for m in METRICS)
        + " | epochs | wall time (s) |",
        "|---|" + "---|" * len(keys) + "---|" + "---:|" * len(METRICS) + "---:|---:|",
    ]
    for job in jobs:
        lines.append(
            f"| {job.folder.name} | "
            + " | ".join(_short(job.overrides.get(k, "")) for k in keys)
            + f" | {job.status} | "
            + " | ".join(percent(job.metrics.get(m)) for m in METRICS)
            + f" | {'' if job.epochs is None else job.epochs} | {'' if job.wall_time_s is None else job.wall_time_s} |"
        )
    return lines


def summary_figure(groups: list[Group], metric: str) -> Figure:
    """The mean of ``metric`` (in %) per configuration with its 95 % t interval, seeds as dots."""
    shown = [g for g in groups if g.finished()]
    fig = Figure(figsize=(max(5.0, 0.9 * len(shown) + 2), 4.0), layout="constrained")
    ax = fig.add_subplot()
    for x, group in enumerate(shown):
        interval = group.interval(metric)
        low, high = (
            (0, 0) if math.isnan(interval.low) else (interval.mean - interval.low, interval.high - interval.mean)
        )
        ax.errorbar(x, 100 * interval.mean, yerr=[[100 * low], [100 * high]], fmt="o", capsize=4, color="C0")
        ax.scatter(
            [x] * len(group.finished()), [100 * j.metrics[metric] for j in group.finished()], s=10, color="C1", zorder=3
        )
    ax.set_xticks(range(len(shown)), ["\n".join(map(_short, g.values.values())) or "all" for g in shown], fontsize=8)
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(f"{metric}: mean over seeds (and folds), 95 % t interval (dots: single runs)")
    ax.grid(axis="y", alpha=0.3)
    return fig


def summarize(sweep_dir: str | Path, metric: str = "val/acc_best") -> tuple[str, list[Job]]:
    """Writes the summary files of a sweep folder (see the module docstring).

    Args:
        metric: The metric configurations are ranked by (higher is better).

    Returns:
        ``(markdown, jobs)``: the text of ``summary.md`` and the jobs read.

    Raises:
        FileNotFoundError: ``sweep_dir`` holds no sweep jobs.
    """
    sweep_dir = Path(sweep_dir)
    jobs = read_sweep(sweep_dir)
    keys = swept_keys(jobs)
    groups = group_jobs(jobs, keys, metric)
    _write_jobs_csv(sweep_dir / "summary_jobs.csv", jobs, keys)
    _write_configurations_csv(sweep_dir / "summary.csv", groups, keys, metric)
    markdown = summary_markdown(sweep_dir, jobs, keys, groups, metric)
    (sweep_dir / "summary.md").write_text(markdown)
    if any(g.finished() for g in groups):
        summary_figure(groups, metric).savefig(sweep_dir / "summary.png", dpi=120)
    return markdown, jobs


def _write_jobs_csv(path: Path, jobs: list[Job], keys: list[str]) -> None:
    """Writes ``summary_jobs.csv``: one row per job (metrics as fractions, wall time in s)."""
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["job", *keys, "status", *METRICS, "epochs", "wall_time_s", "error"])
        for job in jobs:
            row = [job.folder.name, *(job.overrides.get(k, "") for k in keys), job.status]
            writer.writerow(
                [*row, *(job.metrics.get(m, "") for m in METRICS), job.epochs, job.wall_time_s, job.error or ""]
            )


def _write_configurations_csv(path: Path, groups: list[Group], keys: list[str], metric: str) -> None:
    """Writes ``summary.csv``: one row per configuration, best first (fractions)."""
    config_keys = [k for k in keys if k not in SEED_KEYS]
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        stats = ("mean", "std", "ci95_low", "ci95_high")
        metrics = [f"{m}_{s}" for m in METRICS for s in stats]
        writer.writerow([*config_keys, "finished", "jobs", *metrics, "p_vs_best", "differs_from_best"])
        for group, difference in zip(groups, compare_to_best(groups, metric), strict=True):
            intervals = [group.interval(m) for m in METRICS]
            test = ["", ""] if difference is None else [difference.p_value, difference.significant]
            row = [*group.values.values(), len(group.finished()), len(group.jobs)]
            writer.writerow([*row, *(v for i in intervals for v in (i.mean, i.std, i.low, i.high)), *test])
