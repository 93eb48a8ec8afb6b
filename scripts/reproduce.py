"""Reproduces the documented recipes (and this project's best and fast ones) over seeds, and
writes docs/REPRODUCTION.md from the runs.

Two steps, so that runs made on different machines (a GPU for all seeds, this CPU for the
wall times) go into one document:

    # 1. Train: one Hydra multirun, every experiment x every seed, with its sweep summary.
    python scripts/reproduce.py run --jobs 21 --sweep-dir outputs/reproduction/gpu
    python scripts/reproduce.py run --experiments best --seeds 0 --sweep-dir outputs/reproduction/cpu_best
    # 2. Write the document from one or more sweep folders.
    python scripts/reproduce.py report outputs/reproduction/gpu outputs/reproduction/cpu_best

``run`` starts ``python train.py -m experiment=<a>,<b>,... seed=<s>,... hydra.sweep.dir=<dir>``
(with the joblib launcher when ``--jobs`` > 1; extra ``key=value`` arguments are passed on),
so every job is exactly ``python train.py experiment=<name> seed=<s>``. It then writes
``reproduction.json`` into the sweep folder: the command, the git commit (and whether the
working tree had uncommitted changes), a digest of the code and configs (see
:func:`source_digest`), the total wall time in seconds and the hardware.

``report`` reads every job's ``metrics.json`` and ``report.json`` and writes the Markdown
document: for each experiment, what its write-up reported, the mean ± sample standard deviation
of test accuracy over seeds, whether it meets the target, the epochs actually run and the wall
time per run; recipe 001's weighted precision/recall/F1 and recipe 002's per-class accuracy
and most confused pairs next to the reported ones; and ``docs/reproduction_notes.md``, the
hand-written findings, when that file exists. Accuracies are shown in percent.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from fmnist_lightning.errors import UserError
from fmnist_lightning.sweeps.jobs import read_sweep
from fmnist_lightning.sweeps.reproduction import (
    EXPERIMENTS,
    RECORD,
    ROOT,
    config_changes,
    git_state,
    hardware,
    load_sweep,
    markdown,
    source_digest,
    train_command,
)

__all__ = ["config_changes", "main", "read_sweep", "source_digest"]


def run(args: argparse.Namespace) -> int:
    unknown = [e for e in args.experiments if e not in EXPERIMENTS]
    if unknown:
        sys.exit(f"error: unknown experiment(s) {', '.join(unknown)}; choose from {', '.join(EXPERIMENTS)}")
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        sys.exit(f"error: extra arguments must be Hydra overrides key=value, got {' '.join(bad)}")
    sweep_dir = Path(args.sweep_dir or f"outputs/reproduction/{time.strftime('%Y-%m-%d_%H-%M-%S')}")
    if sweep_dir.exists() and any(sweep_dir.iterdir()):
        sys.exit(f"error: {sweep_dir} already exists and is not empty; pass a new --sweep-dir")
    commit, dirty = git_state()
    if dirty:
        print("warning: the working tree has uncommitted changes; the record will say so", file=sys.stderr)
    command = train_command(args.experiments, args.seeds, sweep_dir, args.jobs, args.overrides)
    print("+ python " + shlex.join(command), flush=True)
    start = time.perf_counter()
    code = subprocess.run([sys.executable, *command], cwd=ROOT).returncode
    record = {
        "command": "python " + shlex.join(command),
        "commit": commit,
        "uncommitted_changes": dirty,
        "source_digest": source_digest(),
        "wall_time_s": round(time.perf_counter() - start, 1),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "exit_code": code,
        "hardware": hardware(),
    }
    folder = sweep_dir if sweep_dir.is_absolute() else ROOT / sweep_dir
    if folder.is_dir():
        (folder / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        print(f"Recorded {folder / RECORD}; write the document with:\n  python scripts/reproduce.py report {sweep_dir}")
    return code


def report(args: argparse.Namespace) -> int:
    try:
        sweeps = [load_sweep(Path(p)) for p in args.sweeps]
        text = markdown(sweeps, Path(args.notes) if args.notes else None)
    except (FileNotFoundError, UserError) as err:
        sys.exit(f"error: {err}")
    doc = Path(args.doc)
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
    archive = doc.parent / "reproduction"
    for sweep in sweeps:  # the small machine-readable records, kept beside the document
        target = archive / sweep.path.name
        target.mkdir(parents=True, exist_ok=True)
        for name in (RECORD, "summary_jobs.csv"):
            if (sweep.path / name).is_file():
                shutil.copy2(sweep.path / name, target / name)
    print(f"Wrote {doc} and {archive}/")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    p_run = commands.add_parser("run", help="train every experiment with every seed (one Hydra multirun)")
    p_run.add_argument(
        "--experiments", nargs="+", default=EXPERIMENTS, metavar="NAME", help=f"default: {' '.join(EXPERIMENTS)}"
    )
    p_run.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], metavar="SEED", help="default: 0 1 2")
    p_run.add_argument("--jobs", type=int, default=1, help="jobs at once (joblib launcher) when > 1; default 1")
    p_run.add_argument("--sweep-dir", help="default: outputs/reproduction/<date>_<time>")
    p_run.add_argument("overrides", nargs="*", help="extra Hydra overrides for every job, e.g. trainer.accelerator=gpu")
    p_report = commands.add_parser("report", help="write docs/REPRODUCTION.md from sweep folders made by run")
    p_report.add_argument("sweeps", nargs="+", metavar="SWEEP_DIR")
    p_report.add_argument("--doc", default=str(ROOT / "docs" / "REPRODUCTION.md"))
    p_report.add_argument(
        "--notes",
        default=str(ROOT / "docs" / "reproduction_notes.md"),
        help="hand-written findings appended to the document, if the file exists",
    )
    args = parser.parse_args(argv)
    return run(args) if args.command == "run" else report(args)


if __name__ == "__main__":
    sys.exit(main())
