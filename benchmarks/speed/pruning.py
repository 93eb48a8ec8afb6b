"""What pruning saves: the same seeded Optuna search run with and without its pruner.

Each variant is ``python train.py hparams_search=three_conv_tpe`` (20 TPE trials of 5 epochs,
seed 1234) as one process, into a sweep folder of its own, timed from launch to exit:

  median  the config as it is: Optuna's MedianPruner (conf/hydra/sweeper/pruner/median.yaml)
  none    hydra/sweeper/pruner=none: every trial trains its 5 epochs

Per variant it reads the study (``<sweep>/optuna.journal``) and the jobs' ``metrics.json``:
the wall time, the trials complete and pruned, the epochs trained in all, the best
``val/acc_best`` found, the best trial's values and its test accuracy. The precision is
pinned (``--precision``, default bf16-mixed, which ``auto`` picks on AVX512-BF16 CPUs) so
that both searches compute the same numbers whatever the load. Results go to ``--out``
(JSON) and are printed as a Markdown table:

    python benchmarks/speed/pruning.py                      # both variants, about 35 min on 2 cores
    python benchmarks/speed/pruning.py --trials 4 --override trainer.max_epochs=2 data.image_size=16
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from fmnist_lightning.run_folder import RunFolder

REPO = Path(__file__).resolve().parents[2]
VARIANTS = {"median": [], "none": ["hydra/sweeper/pruner=none"]}


def run_variant(name: str, args: argparse.Namespace) -> dict:
    """Runs one search; returns its figures."""
    from fmnist_lightning.sweeps.continuing import existing_jobs
    from fmnist_lightning.sweeps.optuna_storage import sweep_study

    sweep = args.folder / name
    command = [
        sys.executable,
        str(REPO / "train.py"),
        "hparams_search=three_conv_tpe",
        f"hydra.sweeper.n_trials={args.trials}",
        f"trainer.precision={args.precision}",
        "callbacks.progress_bar=null",
        *args.override,
        *VARIANTS[name],
        f"hydra.sweep.dir={sweep}",
    ]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{name}: the search failed:\n{result.stderr[-3000:]}")
    study = sweep_study(sweep)
    states = [t.state.name for t in study.trials]
    folders = existing_jobs(sweep)
    statuses = {n: RunFolder(f).read_status() for n, f in folders.items()}
    best = study.best_trial
    (best_job,) = best.user_attrs["jobs"]
    return {
        "variant": name,
        "command": " ".join(command[1:]),
        "wall_time_s": round(seconds, 1),
        "trials": len(states),
        "complete": states.count("COMPLETE"),
        "pruned": states.count("PRUNED"),
        "failed": states.count("FAIL"),
        "epochs_trained": sum(s.get("epochs", 0) for s in statuses.values()),
        "best_trial": best.number,
        "best_val_acc": best.value,
        "best_test_acc": statuses[best_job]["metrics"].get("test/acc"),
        "best_params": best.params,
        "values": [t.value for t in study.trials],
    }


def table(rows: list[dict]) -> str:
    """The Markdown table of the variants."""
    lines = [
        "| pruner | wall time (min) | trials complete / pruned | epochs trained | best `val/acc_best` (trial) "
        "| its `test/acc` |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        test = "" if r["best_test_acc"] is None else f"{100 * r['best_test_acc']:.2f}"
        lines.append(
            f"| {r['variant']} | {r['wall_time_s'] / 60:.1f} | {r['complete']} / {r['pruned']} | {r['epochs_trained']} "
            f"| {100 * r['best_val_acc']:.2f} ({r['best_trial']}) | {test} |"
        )
    if len(rows) == 2:
        lines.append(f"\nWall time ratio {rows[1]['variant']} / {rows[0]['variant']}: "
                     f"{rows[1]['wall_time_s'] / rows[0]['wall_time_s']:.2f}×")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--override", nargs="*", default=[], help="more overrides for both searches")
    parser.add_argument("--folder", type=Path, default=REPO / "outputs" / "pruning_benchmark")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "pruning.json")
    args = parser.parse_args()
    args.folder = args.folder.resolve() / time.strftime("%Y-%m-%d_%H-%M-%S")
    rows = []
    for name in args.variants:
        print(f"{name}: running", flush=True)
        rows.append(run_variant(name, args))
        print(json.dumps(rows[-1]), flush=True)
    args.out.write_text(json.dumps({"trials": args.trials, "precision": args.precision, "runs": rows}, indent=2) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
