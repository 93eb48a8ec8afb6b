"""``docs/REPRODUCTION.md``: the reproduction document, from sweep folders made by
``python scripts/reproduce.py run`` (see ``fmnist_lightning.sweeps.reproduction``)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from fmnist_lightning.artifacts import read_json
from fmnist_lightning.sweeps.jobs import Job
from fmnist_lightning.sweeps.reproduction import (
    EXPERIMENTS,
    MIN_SEEDS,
    OWN_TARGETS,
    REPORTED,
    TOLERANCE,
    Sweep,
    config_changes,
    source_digest,
)
from fmnist_lightning.sweeps.summary import mean_std, percent


def read_report(job: Job) -> dict:
    """A job's ``report.json``.

    Raises:
        DamagedFileError: The file is damaged.
    """
    fix = "It is the job's test report: run the job again, or leave its sweep out of the document."
    return read_json(job.folder / "report.json", fix)


@dataclass
class Row:
    """The finished jobs of one experiment in one sweep, run with the current config."""

    experiment: str
    sweep: Sweep
    jobs: list[Job]

    def values(self, metric: str = "test/acc") -> list[float]:
        return [j.metrics[metric] for j in self.jobs]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values())

    def verdict(self) -> str:
        accs = self.values()
        if len(accs) < MIN_SEEDS:
            return f"not judged ({len(accs)} of {MIN_SEEDS} seeds)"
        if self.experiment in REPORTED:
            floor = REPORTED[self.experiment]["test_acc"] - TOLERANCE
            return ("yes" if self.mean >= floor - 1e-9 else "**no**") + f" (≥ {percent(floor)})"
        threshold, text = OWN_TARGETS[self.experiment]
        met = self.mean >= threshold if self.experiment == "best" else min(accs) >= threshold
        return ("yes" if met else "**no**") + f" ({text})"


def collect(sweeps: list[Sweep]) -> tuple[list[Row], list[tuple[str, Sweep, list[Job], list[str]]], list[Job]]:
    """(rows of current-config runs, superseded groups with their config changes, unfinished jobs)."""
    rows: list[Row] = []
    superseded = []
    unfinished: list[Job] = []
    for sweep in sweeps:
        by_experiment: dict[str, list[Job]] = {}
        for job in sweep.jobs:
            if job.status != "finished":
                unfinished.append(job)
                continue
            by_experiment.setdefault(job.overrides.get("experiment", "?"), []).append(job)
        for experiment, jobs in by_experiment.items():
            changes = config_changes(jobs[0])
            if changes:
                superseded.append((experiment, sweep, jobs, changes))
            else:
                rows.append(Row(experiment, sweep, jobs))
    order = {name: i for i, name in enumerate(EXPERIMENTS)}
    rows.sort(key=lambda r: (order.get(r.experiment, 99), r.sweep.path.name))
    return rows, superseded, unfinished


def per_class_section(rows: list[Row]) -> list[str]:
    """Recipe 002's per-class accuracies and errors, and its top-5 confused pairs, reported
    against reproduced (means over seeds), one table pair per sweep, as Markdown lines."""
    rep = REPORTED["recipe_002"]
    lines = []
    for row in (r for r in rows if r.experiment == "recipe_002"):
        reports = [read_report(j) for j in row.jobs]
        names = reports[0]["class_names"]
        lines += [
            f"### Recipe 002: per-class accuracy ({row.sweep.path.name}, {len(reports)} seeds)",
            "",
            "| label | class | reported accuracy (%) | reproduced accuracy (%) | reported errors "
            "| reproduced errors (mean) |",
            "|---:|---|---:|---:|---:|---:|",
        ]
        for label, name in enumerate(names):
            accs = [r["per_class"][label]["accuracy"] for r in reports]
            errors = statistics.fmean(r["per_class"][label]["errors"] for r in reports)
            lines.append(
                f"| {label} | {name} | {percent(rep['per_class_acc'][label])} | {mean_std(accs)} | "
                f"{rep['per_class_errors'][label]} | {errors:.1f} |"
            )
        lines += _confused_pairs_table(_confusion_counts(reports, len(names)), names, rep["most_confused"])
        lines.append("")
    return lines


def _confusion_counts(reports: list[dict], num_classes: int) -> dict[tuple[int, int], list[int]]:
    """Each off-diagonal cell ``(true, predicted)`` of the reports' confusion matrices: its
    count in each report (image counts, one per seed)."""
    counts: dict[tuple[int, int], list[int]] = {}
    for r in reports:
        matrix = r["confusion_matrix"]
        for t in range(num_classes):
            for p in range(num_classes):
                if t != p:
                    counts.setdefault((t, p), []).append(matrix[t][p])
    return counts


def _confused_pairs_table(
    counts: dict[tuple[int, int], list[int]], names: list[str], reported: list[tuple[int, int, int]]
) -> list[str]:
    """The reported top-5 confused pairs ``(true, predicted, count)`` against ours (the largest
    mean ``counts``), with our counts per seed, as Markdown lines."""
    ours = sorted(counts, key=lambda k: -statistics.fmean(counts[k]))[:5]
    lines = [
        "",
        "Top-5 confused pairs (true → predicted), counts on the 10,000 test images; ours are "
        "means over seeds, with each seed's count:",
        "",
        "| rank | reported pair | reported count | our count for that pair | our pair | our count |",
        "|---:|---|---:|---:|---|---:|",
    ]
    for rank, ((t, p, n), (ot, op)) in enumerate(zip(reported, ours, strict=False), start=1):
        theirs = counts[(t, p)]
        mine = counts[(ot, op)]
        lines.append(
            f"| {rank} | {names[t]} → {names[p]} | {n} | "
            f"{statistics.fmean(theirs):.1f} ({', '.join(map(str, theirs))}) | "
            f"{names[ot]} → {names[op]} | {statistics.fmean(mine):.1f} ({', '.join(map(str, mine))}) |"
        )
    return lines


def weighted_section(rows: list[Row]) -> list[str]:
    rep = REPORTED["recipe_001"]["weighted_avg"]
    lines = []
    for row in (r for r in rows if r.experiment == "recipe_001"):
        reports = [read_report(j) for j in row.jobs]
        lines += [
            f"### Recipe 001: weighted precision, recall and F1 ({row.sweep.path.name}, {len(reports)} seeds)",
            "",
            "Weighted by class support, as scikit-learn's `classification_report` (fractions).",
            "",
            "| metric | reported | reproduced |",
            "|---|---:|---:|",
            f"| accuracy | {REPORTED['recipe_001']['test_acc']:.4f} "
            f"| {mean_std([r['accuracy'] for r in reports], 1, 4)} |",
        ]
        for metric in ("precision", "recall", "f1"):
            lines.append(
                f"| {metric} | {rep[metric]:.4f} | {mean_std([r['weighted_avg'][metric] for r in reports], 1, 4)} |"
            )
        lines.append("")
    return lines


def markdown(sweeps: list[Sweep], notes: Path | None) -> str:
    """docs/REPRODUCTION.md's text: the results of ``sweeps`` against the recipes' reported
    figures, the runs they come from, superseded runs and unfinished jobs, then ``notes`` (the
    hand-written findings) when that file exists.

    Raises:
        DamagedFileError: A job's ``report.json`` is damaged.
    """
    rows, superseded, unfinished = collect(sweeps)
    lines = [
        "# Reproduction of the documented recipes",
        "",
        "Written by `python scripts/reproduce.py report "
        + " ".join(str(s.path) for s in sweeps)
        + "` from the runs listed below; do not edit by hand (hand-written findings go in "
        "`docs/reproduction_notes.md`, included at the end). Test accuracy is that of the "
        "checkpoint with the best `val/acc`, on the 10,000 official test images, in percent; "
        "± is the sample standard deviation over seeds. A recipe counts as reproduced when "
        "its mean over at least 3 seeds is at least its reported figure minus 0.5 points.",
        "",
    ]
    lines += _results_section(rows)
    lines += weighted_section(rows) + per_class_section(rows)
    lines += _runs_section(sweeps)
    if superseded:
        lines += _superseded_section(superseded)
    if unfinished:
        lines += ["## Unfinished jobs", ""] + [f"- {j.folder}: {j.status} {j.error or ''}" for j in unfinished] + [""]
    if notes is not None and notes.is_file():
        lines += [notes.read_text().rstrip(), ""]
    return "\n".join(lines)


def _results_section(rows: list[Row]) -> list[str]:
    """The Results table, one line per row of current-config runs (accuracies in %, wall
    time in seconds), with its notes, as Markdown lines."""
    lines = [
        "## Results",
        "",
        "| experiment | recipe file | reported | reproduced here | per seed | target met | epochs run "
        "| wall time per run (s) | hardware (jobs at once) | sweep |",
        "|---|---|---|---:|---|---|---|---:|---|---|",
    ]
    for row in rows:
        rep = REPORTED.get(row.experiment)
        wall = [j.wall_time_s for j in row.jobs if j.wall_time_s is not None]
        lines.append(
            f"| `{row.experiment}` | {rep['file'] if rep else '(this project)'} | {rep['text'] if rep else '–'} | "
            f"**{mean_std(row.values())}** | {', '.join(percent(v) for v in row.values())} | {row.verdict()} | "
            f"{', '.join(str(j.epochs) for j in row.jobs)} | {statistics.fmean(wall):.0f} | "
            f"{row.sweep.hardware} ({row.sweep.jobs_at_once}) | {row.sweep.path.name} |"
        )
    lines += [
        "",
        "Epochs run are per seed (recipe 000 stops early on `val/loss`, patience 3). Wall time "
        "is per run, from the start of training to the end of its test report (the ~10 s of "
        "Python and Lightning start-up before are not counted); runs that shared a machine "
        "(jobs at once > 1) took longer than they would alone.",
        "",
    ]
    return lines


def _runs_section(sweeps: list[Sweep]) -> list[str]:
    """The Runs table: each sweep's command, commit, whether its code is this checkout's
    (``source_digest``), hardware and total wall time (seconds), with its notes, as Markdown lines."""
    now = source_digest()
    lines = [
        "## Runs",
        "",
        "| sweep | command | commit | code | hardware | total wall time (s) | finished |",
        "|---|---|---|---|---|---:|---|",
    ]
    for sweep in sweeps:
        r = sweep.record
        digest = r.get("source_digest")
        code = (
            "same as this checkout" if digest == now else ("differs from this checkout" if digest else "not recorded")
        )
        commit = (r.get("commit") or "?")[:10] + (" + uncommitted changes" if r.get("uncommitted_changes") else "")
        lines.append(
            f"| {sweep.path} | `python scripts/reproduce.py run ...` → `{r.get('command')}` | {commit} | {code} "
            f"| {sweep.hardware} | {r.get('wall_time_s')} | {r.get('finished')} |"
        )
    lines += [
        "",
        '"code" compares the recorded digest of `train.py`, `fmnist_lightning/` and `conf/` '
        "(`source_digest` in the script) with this checkout's, which is more reliable than "
        "the commit: a working tree copied to another machine can carry a stale `.git`. A "
        "single run of any row is `python train.py experiment=<experiment> seed=<seed>`.",
        "",
    ]
    return lines


def _superseded_section(superseded: list[tuple[str, Sweep, list[Job], list[str]]]) -> list[str]:
    """The Superseded runs table (runs whose experiment's config changed since, with the
    changes; accuracies in %), as Markdown lines."""
    lines = [
        "## Superseded runs",
        "",
        "Runs of an experiment whose config has changed since; they are not counted above, "
        "and are kept as evidence for the changes (see the notes).",
        "",
        "| experiment | sweep | test accuracy | per seed | config then → now |",
        "|---|---|---:|---|---|",
    ]
    for experiment, sweep, jobs, changes in superseded:
        accs = [j.metrics["test/acc"] for j in jobs]
        lines.append(
            f"| `{experiment}` | {sweep.path.name} | {mean_std(accs)} "
            f"| {', '.join(percent(a) for a in accs)} | {'; '.join(changes)} |"
        )
    lines.append("")
    return lines
