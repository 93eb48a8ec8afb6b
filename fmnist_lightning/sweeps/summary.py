"""The answer of a sweep: one table of every job, the configurations ranked over seeds, a plot.

The jobs are read by ``fmnist_lightning.sweeps.jobs``; every job appears in the summary,
failed or not.

``summarize`` writes, into the sweep folder:

- ``summary_jobs.csv``: one row per job: its folder, swept values, status, ``val/acc_best``,
  ``test/acc``, epochs, wall time (s) and error line;
- ``summary.csv``: one row per configuration (the swept values other than ``seed``), with
  the number of finished seeds and the mean and standard deviation of each metric, best
  first by the optimised metric;
- ``summary.md``: both tables and the failed jobs with their error lines;
- ``summary.png``: the optimised metric per configuration, mean with ± one standard
  deviation (and each seed as a dot).

Accuracies are fractions in the files and percentages in ``summary.md`` and the plot.
"""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure

from fmnist_lightning.sweeps.jobs import Job, read_sweep

#: Metrics summarised per job and per configuration.
METRICS = ("val/acc_best", "test/acc")
#: Keys that vary between jobs but are not part of a configuration.
SEED_KEYS = ("seed",)


def swept_keys(jobs: list[Job]) -> list[str]:
    """The override keys whose values differ between jobs, in command-line order."""
    keys: list[str] = []
    for job in jobs:
        keys += [k for k in job.overrides if k not in keys]
    return [k for k in keys if len({job.overrides.get(k) for job in jobs}) > 1]


@dataclass
class Group:
    """The jobs of one configuration (the same swept values except the seed)."""

    values: dict[str, str]
    jobs: list[Job]

    def finished(self) -> list[Job]:
        return [j for j in self.jobs if j.status == "finished"]

    def mean(self, metric: str) -> float:
        values = [j.metrics[metric] for j in self.finished() if metric in j.metrics]
        return statistics.fmean(values) if values else math.nan

    def std(self, metric: str) -> float:
        """Sample standard deviation over seeds (NaN for fewer than two)."""
        values = [j.metrics[metric] for j in self.finished() if metric in j.metrics]
        return statistics.stdev(values) if len(values) > 1 else math.nan


def group_jobs(jobs: list[Job], keys: list[str], metric: str) -> list[Group]:
    """Groups jobs by their swept values other than the seed, best mean ``metric`` first
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


def _mean_std(mean: float, std: float) -> str:
    return percent(mean) if math.isnan(std) else f"{percent(mean)} ± {percent(std)}"


def summary_markdown(sweep_dir: Path, jobs: list[Job], keys: list[str], groups: list[Group], metric: str) -> str:
    """The Markdown summary: configurations ranked, every job, the failures."""
    config_keys = [k for k in keys if k not in SEED_KEYS]
    n_failed = sum(j.status != "finished" for j in jobs)
    lines = [
        f"# Sweep {sweep_dir.name}",
        "",
        f"{len(jobs)} jobs, {len(jobs) - n_failed} finished, {n_failed} not finished. "
        f"Ranked by the mean of `{metric}` over seeds; accuracies in %, mean ± standard deviation.",
        "",
        "## Configurations",
        "",
        "| rank | "
        + " | ".join(f"`{k}`" for k in config_keys)
        + " | seeds | "
        + " | ".join(f"`{m}`" for m in METRICS)
        + " |",
        "|---:|" + "---|" * len(config_keys) + "---:|" + "---:|" * len(METRICS),
    ]
    for rank, group in enumerate(groups, 1):
        cells = [_mean_std(group.mean(m), group.std(m)) if group.finished() else "failed" for m in METRICS]
        lines.append(
            f"| {rank} | "
            + " | ".join(map(_short, group.values.values()))
            + f" | {len(group.finished())}/{len(group.jobs)} | "
            + " | ".join(cells)
            + " |"
        )
    if len(groups) > 1 and len(groups[0].finished()) > 1 and len(groups[1].finished()) > 1:
        gap = groups[0].mean(metric) - groups[1].mean(metric)
        spread = max(groups[0].std(metric), groups[1].std(metric))
        verdict = (
            "a lead within the spread over seeds: more seeds are needed to tell the two apart"
            if gap < spread
            else "a lead larger than the spread over seeds"
        )
        lines += [
            "",
            f"The best configuration leads the second by {100 * gap:.2f} points of `{metric}`; "
            f"the larger of their standard deviations over seeds is {100 * spread:.2f} points ({verdict}).",
        ]
    lines += [
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
    failed = [j for j in jobs if j.status != "finished"]
    if failed:
        lines += ["", "## Not finished", ""]
        lines += [
            f"- job {j.folder.name} ({j.status}): {j.error or 'no error recorded (still running, or killed)'}"
            for j in failed
        ]
    return "\n".join(lines) + "\n"


def summary_figure(groups: list[Group], metric: str) -> Figure:
    """Mean ± standard deviation of ``metric`` (in %) per configuration, seeds as dots."""
    shown = [g for g in groups if g.finished()]
    fig = Figure(figsize=(max(5.0, 0.9 * len(shown) + 2), 4.0), layout="constrained")
    ax = fig.add_subplot()
    for x, group in enumerate(shown):
        std = group.std(metric)
        ax.errorbar(
            x, 100 * group.mean(metric), yerr=0 if math.isnan(std) else 100 * std, fmt="o", capsize=4, color="C0"
        )
        ax.scatter(
            [x] * len(group.finished()), [100 * j.metrics[metric] for j in group.finished()], s=10, color="C1", zorder=3
        )
    ax.set_xticks(range(len(shown)), ["\n".join(map(_short, g.values.values())) or "all" for g in shown], fontsize=8)
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(f"{metric}: mean ± std over seeds (dots: single seeds)")
    ax.grid(axis="y", alpha=0.3)
    return fig


def summarize(sweep_dir: str | Path, metric: str = "val/acc_best") -> tuple[str, list[Job]]:
    """Writes the summary files of a sweep folder (see the module docstring).

    Args:
        sweep_dir: The sweep folder.
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
    with (sweep_dir / "summary_jobs.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["job", *keys, "status", *METRICS, "epochs", "wall_time_s", "error"])
        for job in jobs:
            writer.writerow(
                [
                    job.folder.name,
                    *(job.overrides.get(k, "") for k in keys),
                    job.status,
                    *(job.metrics.get(m, "") for m in METRICS),
                    job.epochs,
                    job.wall_time_s,
                    job.error or "",
                ]
            )
    config_keys = [k for k in keys if k not in SEED_KEYS]
    with (sweep_dir / "summary.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow([*config_keys, "finished", "jobs", *(f"{m}_{s}" for m in METRICS for s in ("mean", "std"))])
        for group in groups:
            writer.writerow(
                [
                    *group.values.values(),
                    len(group.finished()),
                    len(group.jobs),
                    *(v for m in METRICS for v in (group.mean(m), group.std(m))),
                ]
            )
    markdown = summary_markdown(sweep_dir, jobs, keys, groups, metric)
    (sweep_dir / "summary.md").write_text(markdown)
    if any(g.finished() for g in groups):
        summary_figure(groups, metric).savefig(sweep_dir / "summary.png", dpi=120)
    return markdown, jobs
