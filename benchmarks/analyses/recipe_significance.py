"""Which differences in the recipes table are real? The reproduction runs' test accuracies over
seeds, compared with the project's statistics (``fmnist_lightning.evaluation.statistics``).

Reads the per-job tables that ``scripts/reproduce.py`` keeps in ``docs/reproduction/<sweep>/
summary_jobs.csv`` (the runs behind docs/REPRODUCTION.md; they predate ``predictions.npz``, so
the comparison is over seeds, not image by image) and prints Markdown:

1. each experiment's mean test accuracy with its 95 % t interval;
2. each experiment against the next better one: the paired t-test on the seeds both ran
   (Student's, scipy's ``ttest_rel``; a seed gives both runs the same batch order);
3. how many seeds a difference of 0.3 points needs to be found with 80 % power at α = 0.05,
   given the seed-to-seed standard deviation measured here (statsmodels' ``TTestIndPower``
   for two independent sets of seeds, ``TTestPower`` for paired seeds), and the test set's
   own binomial noise.

Usage:
    python benchmarks/analyses/recipe_significance.py [--sweeps gpu gpu_2]
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
from collections import defaultdict
from pathlib import Path

from statsmodels.stats.power import TTestIndPower, TTestPower

from fmnist_lightning.evaluation.statistics import paired_t_test, t_interval, wilson_interval

REPRODUCTION = Path(__file__).resolve().parents[2] / "docs" / "reproduction"
#: The difference to detect, in accuracy (0.3 points).
EFFECT = 0.003


def read_seeds(sweeps: list[str]) -> dict[str, dict[str, float]]:
    """``experiment → {seed: test/acc}`` of the finished jobs; a later sweep's run of an
    experiment replaces an earlier one's (gpu_2 re-ran recipe_002 after a fix)."""
    table: dict[str, dict[str, float]] = {}
    for sweep in sweeps:
        runs: dict[str, dict[str, float]] = defaultdict(dict)
        with (REPRODUCTION / sweep / "summary_jobs.csv").open() as file:
            for row in csv.DictReader(file):
                if row["status"] == "finished":
                    runs[row["experiment"]][row["seed"]] = float(row["test/acc"])
        table.update(runs)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweeps", nargs="+", default=["gpu", "gpu_2"], help="folders under docs/reproduction/")
    args = parser.parse_args()
    table = read_seeds(args.sweeps)
    ranked = sorted(table, key=lambda e: -statistics.fmean(table[e].values()))
    print(f"Test accuracy over seeds, from docs/reproduction/{{{','.join(args.sweeps)}}}/summary_jobs.csv.\n")
    print("| experiment | seeds | mean (%) | 95 % t interval (%) | against the next better | B − A (points) | p |")
    print("|---|---:|---:|---|---|---:|---:|")
    for i, experiment in enumerate(ranked):
        interval = t_interval(list(table[experiment].values()))
        cells = "| | | |"
        if i > 0:
            better = ranked[i - 1]
            shared = sorted(set(table[experiment]) & set(table[better]))
            result = paired_t_test([table[experiment][s] for s in shared], [table[better][s] for s in shared])
            verdict = "significant" if result.significant else "not significant"
            cells = f"| `{better}` ({verdict}) | {100 * result.difference:+.2f} | {result.p_value:.2g} |"
        print(
            f"| `{experiment}` | {interval.n} | {100 * interval.mean:.2f} | "
            f"{100 * interval.low:.2f}–{100 * interval.high:.2f} {cells}"
        )
    # The seed-to-seed spread: the pooled standard deviation of the experiments with 3 seeds.
    spreads = [statistics.variance(v.values()) for v in table.values() if len(v) > 2]
    sigma = math.sqrt(statistics.fmean(spreads))
    independent = TTestIndPower().solve_power(effect_size=EFFECT / sigma, alpha=0.05, power=0.8)
    paired = TTestPower().solve_power(effect_size=EFFECT / (sigma * math.sqrt(2)), alpha=0.05, power=0.8)
    low, high = wilson_interval(9200, 10_000)
    print(
        f"\nPooled seed-to-seed standard deviation: {100 * sigma:.2f} points ({len(spreads)} experiments). "
        f"To find a 0.3-point difference with 80 % power at α = 0.05: {math.ceil(independent)} seeds per side "
        f"(two independent sets, Welch/Student t-test), or {math.ceil(paired)} pairs of seeds for the paired "
        "t-test if the pairs were uncorrelated (correlated pairs need fewer). One test accuracy of 92.00 % on "
        f"10,000 images has the 95 % Wilson interval {100 * low:.2f}–{100 * high:.2f} %."
    )


if __name__ == "__main__":
    main()
