"""The speedrun: the least whole-process time to 91, 93, 94 and 95 % FashionMNIST test accuracy
(docs/performance.md, "Speedrun").

    python benchmarks/speedrun.py --targets 91 93 94       # 5 seeds each
    python benchmarks/speedrun.py --targets 91 --ablations # 91 % and its ablation rows
    python benchmarks/speedrun.py --targets 93 --ablations smoothing TTA  # and only these two rows
    python benchmarks/speedrun.py --targets 91 --plain 1   # and the plain recipe-001 loop beside it
    python benchmarks/speedrun.py --targets 95 --first-seed 3 --seeds 2 --merge seeds_0_2.json  # the rest

Each run is ``python train.py experiment=speedrun_<target> seed=<s>``, a process of its own,
timed from its launch to its exit: start-up, training, validation, the test, the report and
its files. ``--ablations`` adds, per target, one row for each technique the recipe keeps: the
same command with that technique taken out (``ABLATIONS``), on the same seeds; with words,
only the rows whose technique names one of them. ``--plain N`` also runs recipe 001 written
the recipes' way in plain PyTorch (``speed/time_to_accuracy.py``'s ``plain_001``, 10 epochs)
on the first N seeds, and its time to 91 % (from launch to the end of the first epoch whose
weights score 91 % on the test set) is set against this invocation's 91 % runs.

Runs are interleaved (every row of seed 0, then every row of seed 1, ...), so that all rows
see the same machine. A row reports the mean test accuracy over seeds with its 95 % Student's t
interval (``fmnist_lightning.evaluation.statistics.t_interval``), the run's FLOPs
(``speed/flops.py``: the network's training and evaluation arithmetic, of this invocation's
first run of the row), whether the target is reached (the mean is at or above it), the median
whole-process seconds, the median start-up (``metrics.json``'s ``first_step_s``: launch to the
first training step) and the mean ``val/acc_best`` (recipes are chosen by validation; the test
set only scores). An ablation row also gives its difference from the recipe's row on the seeds
both ran (Student's paired t-test, ``paired_t_test``) and the ratio of the median times over
those seeds. Everything, every run included, goes to ``--out`` (JSON), rewritten after each
run (``"partial": true`` until the table is made), and the table is printed as Markdown.

``--merge`` adds the runs of earlier outputs (finished or partial) to the rows of the same
names, for seeds this invocation does not run: a benchmark stopped part way is finished by
running the seeds it lacks. Each run records its launch time and its machine, as the merged
runs may come from another; the plain loop's runs are not merged.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGETS = ("91", "93", "94", "95")
#: Per target, each technique its recipe keeps and the overrides that take it out.
ABLATIONS: dict[str, dict[str, list[str]]] = {
    "91": {
        "3×3 patch whitening": ["model.whiten=0"],
        "peak lr 8e-3 (5e-3 instead)": ["optimizer.lr=5e-3"],
        "CSV logging (TensorBoard instead)": ["logger=tensorboard"],
        "bf16-mixed (fp32 instead)": ["trainer.precision=32-true"],
        "one-cycle schedule (a constant lr instead)": ["scheduler=none"],
    },
    "93": {
        "2×2 patch whitening": ["model.whiten=0"],
        "alternating flips (random flips instead)": ["data.alternating_flip=false", "data.augment.flip.p=0.5"],
        "label smoothing 0.1": ["loss.label_smoothing=0.0"],
        "flip TTA": ["model.flip_tta=false"],
    },
    # Each row would take 5 runs of 2 minutes (94 %) or more (95 %); what the second convolution per
    # stage and the epochs bring is in the docs' table of what was tried.
    "94": {},
    "95": {},
}


def command(target: str, seed: int, folder: Path, extra: list[str]) -> list[str]:
    """``train.py``'s command line for one run of ``target``'s recipe."""
    return [
        sys.executable,
        "train.py",
        f"experiment=speedrun_{target}",
        f"seed={seed}",
        f"hydra.run.dir={folder}",
        *extra,
    ]


def run_once(cmd: list[str], folder: Path) -> dict:
    """Runs ``cmd`` from the repository and reads its ``metrics.json``.

    Raises:
        SystemExit: The run failed (its last lines of stderr say why), or wrote no ``metrics.json``.
        DamagedFileError: Its ``metrics.json`` is unreadable.
    """
    launched = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    whole = time.time() - launched
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    from fmnist_lightning.run_folder import RunFolder

    status = RunFolder(folder).read_status()  # metrics.json, through its owner
    if not status:
        sys.exit(f"{' '.join(cmd)} exited without writing {folder}'s metrics.json")
    return {
        "folder": str(folder),
        "launched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(launched)),
        "whole_s": round(whole, 2),
        "first_step_s": status.get("first_step_s"),
        "epochs": status["epochs"],
        "test_acc": status["metrics"]["test/acc"],
        "val_acc_best": status["metrics"].get("val/acc_best"),
    }


def plain_time_to(
    folder: Path, seed: int, data_root: str, target: float, epochs: int | None = None, limit_batches: int | None = None
) -> dict:
    """``speed/time_to_accuracy.py``'s plain recipe-001 loop: seconds from launch to the end of the
    first epoch whose weights reach ``target`` (a fraction) on the test set, or ``None``;
    ``epochs`` and ``limit_batches`` (``None``: 10 epochs of every batch) shorten it."""
    import time_to_accuracy as tta

    launched = time.time()
    cmd = tta.command(tta.BASELINE, folder, seed, data_root, epochs, limit_batches)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    whole = time.time() - launched
    if proc.returncode != 0:
        sys.exit(f"the plain loop failed:\n{proc.stderr[-3000:]}")
    stamps = [json.loads(line)["time"] for line in (folder / tta.STAMPS).read_text().splitlines()]
    run = {"variant": tta.BASELINE, "folder": str(folder), "launched": launched, "stamps": stamps}
    run["test_acc"] = tta.test_accuracies(run, data_root)
    hit = tta.reached(run, target)
    return {
        "folder": str(folder),
        "whole_s": round(whole, 2),
        "test_acc": run["test_acc"],
        "epochs_to_target": hit[0] if hit else None,
        "seconds_to_target": round(hit[1], 2) if hit else None,
    }


def row(name: str, target: str, runs: list[dict], counted: Path) -> dict:
    """One table row: the runs' statistics (accuracies as percentages), and the FLOPs of the run
    in folder ``counted`` (``speed/flops.py``'s ``run_flops``: training and evaluation, in
    TFLOPs)."""
    from flops import run_flops

    from fmnist_lightning.evaluation.statistics import t_interval

    accuracy = t_interval([100 * r["test_acc"] for r in runs])
    starts = [r["first_step_s"] for r in runs if r["first_step_s"] is not None]
    return {
        "row": name,
        "target": target,
        "seeds": len(runs),
        "seed_list": [r["seed"] for r in runs],
        "test_acc": [round(100 * r["test_acc"], 2) for r in runs],
        "mean": accuracy.mean,
        "ci95": [accuracy.low, accuracy.high],
        "reached": accuracy.mean >= float(target),
        "val_acc_best_mean": statistics.mean(100 * r["val_acc_best"] for r in runs),
        "whole_s": [r["whole_s"] for r in runs],
        "whole_s_median": statistics.median(r["whole_s"] for r in runs),
        "first_step_s_median": statistics.median(starts) if starts else None,
        "tflops": run_flops(counted)["total"] / 1e12,
    }


def earlier_runs(paths: list[Path], names: list[str], seeds: range) -> dict[str, list[dict]]:
    """The runs of the rows ``names`` in the earlier outputs ``paths`` (``--merge``), read before
    any run starts.

    Raises:
        SystemExit: A file cannot be read, or a seed of a row is in two files or in ``seeds``
            (the seeds this invocation runs).
    """
    found: dict[str, list[dict]] = {name: [] for name in names}
    for path in paths:
        try:
            rows = json.loads(path.read_text())["runs"]
        except (OSError, ValueError, KeyError) as err:
            sys.exit(f"--merge {path}: not an output of this script ({err})")
        for name in names:
            found[name] += rows.get(name, [])
    for name, old in found.items():
        taken = [r["seed"] for r in old] + list(seeds)
        twice = sorted({s for s in taken if taken.count(s) > 1})
        if twice:
            sys.exit(f"--merge: row {name!r} would have seed(s) {twice} twice; run and merge other seeds only")
    return found


def merged(runs: dict[str, list[dict]], earlier: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Each row's runs with its ``earlier_runs``, in seed order, so that ``against`` pairs seeds."""
    return {name: sorted([*own, *earlier.get(name, [])], key=lambda r: r["seed"]) for name, own in runs.items()}


def against(base: dict, ablated: dict) -> dict:
    """An ablation row against its recipe's row, on the seeds both ran: the test accuracy's
    difference (ablated − recipe, points) by Student's paired t-test, and the ratio of the
    median whole-process times over those seeds (ablated / recipe)."""
    from fmnist_lightning.evaluation.statistics import paired_t_test

    seeds = sorted(set(base["seed_list"]) & set(ablated["seed_list"]))

    def on_seeds(r: dict, key: str) -> list[float]:
        by_seed = dict(zip(r["seed_list"], r[key], strict=True))
        return [by_seed[s] for s in seeds]

    difference = paired_t_test(on_seeds(base, "test_acc"), on_seeds(ablated, "test_acc"))
    result = {
        "seeds": len(seeds),
        "difference": difference.difference,
        "ci95": [difference.low, difference.high],
        "p_value": difference.p_value,
        "time_ratio": statistics.median(on_seeds(ablated, "whole_s")) / statistics.median(on_seeds(base, "whole_s")),
    }
    if math.isnan(difference.p_value) and difference.difference == 0:
        result["identical"] = True  # the same training on every seed (another logger, say)
    return result


def difference_text(d: dict) -> str:
    """An ``against`` result's accuracy difference, as the table prints it."""
    if d.get("identical"):
        return "identical on every seed"
    if math.isnan(d["p_value"]):  # paired_t_test: the same difference on every seed, or one seed
        return f"{d['difference']:+.2f} on every seed (no spread, no test)"
    return f"{d['difference']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}] (p = {d['p_value']:.2g})"


def table(rows: list[dict]) -> str:
    """The rows as a Markdown table; an ablation row also gives its ``against`` figures, and how
    many seeds they are over when the row has others too."""
    lines = [
        "| row | seeds | test acc: mean [95 % CI] (%) | reached | whole process, median (s) "
        "| start-up, median (s) | val/acc_best, mean (%) | TFLOPs | against the recipe: Δ acc [95 % CI] (p), time |",
        "|---|---:|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        low, high = r["ci95"]
        start = "" if r["first_step_s_median"] is None else f"{r['first_step_s_median']:.1f}"
        d = r.get("against")
        versus = "" if d is None else f"{difference_text(d)}, {d['time_ratio']:.2f}×"
        if d is not None and d.get("seeds", r["seeds"]) < r["seeds"]:  # merged rows of other seeds
            versus += f" (on the {d['seeds']} seeds both ran)"
        lines.append(
            f"| {r['row']} | {r['seeds']} | {r['mean']:.2f} [{low:.2f}, {high:.2f}] | "
            f"{'yes' if r['reached'] else 'no'} | {r['whole_s_median']:.1f} | {start} | "
            f"{r['val_acc_best_mean']:.2f} | {r['tflops']:.2f} | {versus} |"
        )
    return "\n".join(lines)


def positive(text: str) -> int:
    """``--seeds``: a whole number of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is no whole number of at least 1")
    return int(text)


def variants(targets: list[str], ablations: list[str] | None, common: list[str]) -> list[tuple[str, str, list[str]]]:
    """The rows to run, as ``(name, target, overrides)``: each target's recipe, then with
    ``ablations`` its ``ABLATIONS`` rows (``[]``: all; words: those whose technique names one).

    Raises:
        SystemExit: A word names no technique of ``targets``.
    """
    rows = [(f"speedrun_{t}", t, common) for t in targets]
    if ablations is None:
        return rows
    techniques = [(t, name) for t in targets for name in ABLATIONS[t]]
    unmatched = [w for w in ablations if not any(w in name for _, name in techniques)]
    if unmatched:
        names = "; ".join(f"{t}: {name}" for t, name in techniques) or "none"
        sys.exit(f"--ablations: {unmatched} name no technique of these targets ({names})")
    words = ablations or [""]  # no words: every row
    chosen = [(t, name) for t, name in techniques if any(w in name for w in words)]
    return rows + [(f"speedrun_{t} without: {name}", t, [*common, *ABLATIONS[t][name]]) for t, name in chosen]


def arguments() -> argparse.Namespace:
    """The command line (``--help``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS, help="default: all")
    parser.add_argument("--seeds", type=positive, default=5, help="N seeds from --first-seed on (default 5)")
    parser.add_argument("--first-seed", type=int, default=0, help="default 0")
    parser.add_argument(
        "--merge", nargs="+", type=Path, default=[], metavar="JSON", help="earlier --out files of other seeds to add"
    )
    parser.add_argument(
        "--ablations",
        nargs="*",
        metavar="WORDS",
        help="add each target's ablation rows; with WORDS, only the rows whose technique names one of them",
    )
    parser.add_argument("--plain", type=int, default=0, metavar="N", help="plain recipe-001 loop on N seeds")
    parser.add_argument("--data-root", default="data/fashion-mnist")
    parser.add_argument("--workdir", default=None, help="where the runs go (default: a new folder in /tmp)")
    parser.add_argument("--out", default="benchmarks/speedrun.json")
    parser.add_argument("--override", nargs="+", default=[], help="added to every train.py run; for a quick check")
    parser.add_argument("--plain-epochs", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--plain-limit-batches", type=int, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = arguments()
    sys.path.insert(0, str(REPO / "benchmarks" / "speed"))  # benchmark.py, flops.py, time_to_accuracy.py
    from benchmark import machine

    from fmnist_lightning.data.idx import DEBIAN_DATASET_DIR, ensure_files

    ensure_files(args.data_root, DEBIAN_DATASET_DIR, download=False)
    data_root = str(Path(args.data_root).resolve())
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="speedrun."))
    rows_to_run = variants(args.targets, args.ablations, [f"data.root={data_root}", *args.override])
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    earlier = earlier_runs(args.merge, [name for name, _, _ in rows_to_run], seeds)
    out, here = Path(args.out), machine()
    ours: dict[str, list[dict]] = {name: [] for name, _, _ in rows_to_run}  # this invocation's runs
    plain: list[dict] = []
    for seed in seeds:
        for index, (name, target, extra) in enumerate(rows_to_run):
            folder = workdir / f"{index:02d}_seed{seed}"
            result = run_once(command(target, seed, folder, extra), folder)
            ours[name].append({"seed": seed, "machine": here, **result})
            write_json(out, {"machine": here, "partial": True, "runs": ours, "plain": plain})
            print(
                f"seed {seed} {name}: {100 * result['test_acc']:.2f} %, {result['whole_s']:.1f} s "
                f"(start-up {result['first_step_s']} s)",
                flush=True,
            )
        if seed < args.first_seed + args.plain:
            result = plain_time_to(
                workdir / f"plain_seed{seed}", seed, data_root, 0.91, args.plain_epochs, args.plain_limit_batches
            )
            plain.append({"seed": seed, **result})
            write_json(out, {"machine": here, "partial": True, "runs": ours, "plain": plain})
            print(f"seed {seed} plain_001: 91 % after {result['seconds_to_target']} s", flush=True)
    counted = {name: Path(own[0]["folder"]) for name, own in ours.items()}
    runs = merged(ours, earlier)
    rows = [row(name, target, runs[name], counted[name]) for name, target, _ in rows_to_run]
    base = {r["target"]: r for r in rows if r["row"] == f"speedrun_{r['target']}"}
    for r in rows:
        if r is not base[r["target"]]:
            r["against"] = against(base[r["target"]], r)
    text = table(rows)
    if plain and "91" in args.targets:
        times = [p["seconds_to_target"] for p in plain]
        fast = statistics.median(r["whole_s"] for r in ours["speedrun_91"])  # this invocation's, beside the loop
        if None in times:
            missed = f"{times.count(None)} of {len(times)} seeds"
            text += f"\n\nThe plain recipe-001 loop did not reach 91 % on {missed}."
        else:
            median = statistics.median(times)
            text += (
                f"\n\nThe plain recipe-001 loop reached 91 % after {median:.0f} s (median over {len(times)} seeds): "
                f"speedrun_91's whole process is {median / fast:.1f}× faster."
            )
    every_seed = sorted({r["seed"] for own in runs.values() for r in own})
    summary = {"machine": here, "seeds": every_seed, "table": text, "rows": rows, "runs": runs, "plain": plain}
    write_json(out, summary)
    print(f"\n{here}\n\n{text}")


def write_json(path: Path, summary: dict) -> None:
    """Writes ``summary`` to ``path`` as JSON (NaN as ``null``), replacing it whole."""
    from fmnist_lightning.artifacts import write_atomically
    from fmnist_lightning.cli.compare import without_nan

    write_atomically(path, (json.dumps(without_nan(summary), indent=2, allow_nan=False) + "\n").encode())


if __name__ == "__main__":
    main()
