"""How long each test suite takes, how many tests there are, and what they cover.

    .venv/bin/python benchmarks/tools/suite_times.py                       # the default suite once
    .venv/bin/python benchmarks/tools/suite_times.py --suites default --repeat 5   # 5 runs in a row
    .venv/bin/python benchmarks/tools/suite_times.py --suites default slow cluster --workers 2 --coverage --collect
    .venv/bin/python benchmarks/tools/suite_times.py --suites slow --workers 2     # pytest-xdist

Each suite is run as CI runs it (``python -m pytest -m <marker>``, in this repository, one
suite at a time) and timed from the launch of pytest to its exit (wall-clock seconds). It
prints one row per run: the suite, its passed/failed/skipped counts and the seconds, then the
median per suite; ``--json`` writes the same. ``--collect`` also counts the tests that
``pytest --collect-only -m ''`` collects (every suite). ``--coverage`` measures the line
coverage of ``fmnist_lightning/`` over the suites run, subprocesses included
(``[tool.coverage.run]`` in pyproject.toml: coverage's ``patch = ["subprocess"]``), and prints
the total in percent. ``--workers N`` runs the ``slow`` suite with pytest-xdist (``-n N``),
as ``.ci/run`` does. The default suite runs in one process, where its session fixtures are
built once, and the ``cluster`` suite too: its fixtures start one SLURM controller and one
PostgreSQL server for the machine, which two workers would each try to start.

Run it on a fresh clone (``git clone``, ``bash scripts/setup.sh --dev --cluster``) with
nothing else running: the figures in benchmarks/RESULTS.md ("The test suites") came from this.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: Suite name → its ``-m`` expression (pyproject.toml's addopts select the default one).
SUITES = {"default": "not slow and not cluster", "slow": "slow", "cluster": "cluster"}


def counts(output: str) -> dict[str, int]:
    """``{"passed": n, "failed": n, ...}`` from pytest's last summary line."""
    line = [row for row in output.splitlines() if re.search(r"\d+ (passed|failed|error)", row)][-1:]
    return {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", "".join(line))}


def run_suite(suite: str, workers: int, coverage: bool) -> dict:
    """Runs one suite; returns its counts, its wall-clock seconds and its exit status."""
    command = [sys.executable, "-m", "pytest", "-m", SUITES[suite], "-q", "-p", "no:cacheprovider"]
    if workers > 1 and suite == "slow":
        command += ["-n", str(workers)]
    if coverage:
        command += ["--cov=fmnist_lightning", "--cov-append", "--cov-report="]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode not in (0, 1):
        print(result.stdout[-3000:], result.stderr[-3000:], file=sys.stderr)
    for line in result.stdout.splitlines():  # pytest's short summary (-ra): what failed, and why
        if line.startswith(("FAILED", "ERROR")):
            print(f"{suite}: {line[:300]}", file=sys.stderr, flush=True)
    return {
        "suite": suite,
        "seconds": round(seconds, 1),
        "exit": result.returncode,
        **counts(result.stdout),
        "slowest": slowest(result.stdout),
    }


def slowest(output: str) -> list[str]:
    """The lines of pytest's ``--durations`` summary (pyproject.toml asks for the 10 slowest)."""
    lines = output.splitlines()
    start = next((i for i, line in enumerate(lines) if "slowest" in line and "durations" in line), None)
    if start is None:
        return []
    return [line for line in lines[start + 1 :] if re.match(r"\d+\.\d+s (call|setup|teardown) ", line)]


def collected() -> int:
    """The number of tests in all suites (``pytest --collect-only -m ''``)."""
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "", "-p", "no:cacheprovider"],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout
    return int(re.search(r"(\d+) tests? collected", out).group(1))


def total_coverage() -> float:
    """Combines the coverage data of the suites run; the total line coverage in percent."""
    subprocess.run([sys.executable, "-m", "coverage", "combine", "--quiet"], cwd=REPO, check=False)
    report = subprocess.run(
        [sys.executable, "-m", "coverage", "report", "--format=total", "--precision=1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(report.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suites", nargs="+", choices=list(SUITES), default=["default"])
    parser.add_argument("--repeat", type=int, default=1, help="runs of each suite, in turn (default 1)")
    parser.add_argument("--workers", type=int, default=1, help="pytest-xdist workers for the slow suite")
    parser.add_argument("--coverage", action="store_true", help="line coverage of fmnist_lightning/ in percent")
    parser.add_argument("--collect", action="store_true", help="also count the tests of every suite")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    if args.coverage:
        for old in REPO.glob(".coverage*"):
            old.unlink()

    runs = []
    for repetition in range(args.repeat):
        for suite in args.suites:
            runs.append(run_suite(suite, args.workers, args.coverage))
            row = runs[-1]
            print(
                f"{suite:8s} run {repetition + 1}: {row.get('passed', 0)} passed, {row.get('failed', 0)} failed, "
                f"{row.get('skipped', 0)} skipped, exit {row['exit']}, {row['seconds']:.1f} s",
                flush=True,
            )
    figures: dict = {"runs": runs, "workers": args.workers}
    for suite in args.suites:
        seconds = [r["seconds"] for r in runs if r["suite"] == suite]
        figures[f"{suite}_median_s"] = statistics.median(seconds)
        print(f"{suite:8s} median of {len(seconds)}: {statistics.median(seconds):.1f} s")
        last = [r for r in runs if r["suite"] == suite][-1]
        print(f"{suite:8s} slowest tests of its last run:", *last["slowest"], sep="\n  ")
    if args.collect:
        figures["collected"] = collected()
        print(f"collected (-m ''): {figures['collected']} tests")
    if args.coverage:
        figures["coverage_percent"] = total_coverage()
        print(f"line coverage of fmnist_lightning/: {figures['coverage_percent']:.1f} %")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    sys.exit(1 if any(r["exit"] != 0 for r in runs) else 0)


if __name__ == "__main__":
    main()
