"""Training speed before and after a code change: interleaved runs of the same command.

Checks out ``--before`` (a commit) into a temporary git worktree and runs
``python train.py model=three_conv trainer=cpu trainer.max_epochs=3`` (or ``--args``) from
it and from this checkout in turn, A B A B ..., each in a fresh process with its own run
folder. Prints, per run, the wall time of the whole process and of ``train()``
(``metrics.json``'s ``wall_time_s``: from building the objects to the end of the test
report) in seconds, the test accuracy and the SHA-256 of the trained ``net.pt``; then the
medians per side and their ratio (after / before: < 1 is faster), and whether every pair
trained bit-identical weights (meaningful with ``trainer.precision=32-true``, which the
default ``auto`` may not pick on both sides). With ``--resume``, each run is the run of
``--args`` stopped after its first epoch (``trainer.max_epochs=1``) and then continued with
``resume=<run folder> trainer.max_epochs=<E>`` (E from ``--args``): the weights of a resumed
run, compared the same way. Issue 12 used it to show that the
restructuring costs no training speed, issue 29 that the default config trains the same
weights (benchmarks/RESULTS.md).

The worktree of ``--before`` composes its own ``conf/``: an editable install of this
checkout would otherwise hand it this checkout's configs.

Usage:
    python benchmarks/redesign_ab.py --before 6ffe27f --pairs 3
    python benchmarks/redesign_ab.py --before 97bf8f4 --pairs 2 --args seed=42 trainer.max_epochs=2 \
        trainer.precision=32-true logger=csv
    python benchmarks/redesign_ab.py --before fddd16c --pairs 1 --resume --args seed=42 \
        trainer.max_epochs=2 trainer.precision=32-true logger=csv
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cpu_description() -> str:
    """The CPU model and its AVX-512/AMX flags, from /proc/cpuinfo."""
    model, flags = platform.processor(), []
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = sorted({f for f in line.split(":", 1)[1].split() if f.startswith(("avx512_bf16", "amx", "avx2"))})
            break
    return f"{model} ({', '.join(flags) or 'no AVX2'})"


def commands(overrides: list[str], resume: bool, run_dir: Path, data: Path) -> list[list[str]]:
    """The command lines of one run: ``overrides`` into ``run_dir``; with ``resume``, the same
    stopped after one epoch, then ``resume=<run_dir>`` to its ``trainer.max_epochs``."""
    given = [*overrides, f"data.root={data}", f"hydra.run.dir={run_dir}"]
    if not resume:
        return [given]
    epochs = next((o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith("trainer.max_epochs=")), "3")
    return [[*given, "trainer.max_epochs=1"], [f"resume={run_dir}", f"trainer.max_epochs={epochs}"]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--before", default="6ffe27f", help="the commit to compare with (default: the last one before issue 12)"
    )
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--args", nargs="*", default=["model=three_conv", "trainer=cpu", "trainer.max_epochs=3"])
    parser.add_argument("--resume", action="store_true", help="stop after one epoch, then resume= to the end")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="redesign_ab_"))
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(work / "before"), args.before],
        check=True,
        capture_output=True,
    )
    (work / "data").mkdir()  # filled from data.local_copy by the first run
    package_conf = work / "before" / "fmnist_lightning" / "conf"
    if not package_conf.exists():
        package_conf.symlink_to(work / "before" / "conf")
    sides = {"before": work / "before", "after": REPO}
    results: dict[str, list[tuple[float, float, float, str]]] = {side: [] for side in sides}
    print(f"CPU: {cpu_description()}, {len(__import__('os').sched_getaffinity(0))} cores")
    print(f"command: python train.py {' '.join(args.args)}\n")
    print("| run | side | process (s) | train() (s) | test accuracy (%) | net.pt SHA-256 |")
    print("|---:|---|---:|---:|---:|---|")
    try:
        for i in range(args.pairs):
            for side, checkout in sides.items():
                run_dir = work / f"{side}_{i}"
                start = time.perf_counter()
                for command in commands(args.args, args.resume, run_dir, work / "data"):
                    result = subprocess.run(
                        [sys.executable, str(checkout / "train.py"), *command], cwd=work, capture_output=True, text=True
                    )
                    if result.returncode != 0:
                        sys.exit(f"error: the {side} run failed:\n{result.stderr[-3000:]}")
                process_s = time.perf_counter() - start
                status = json.loads((run_dir / "metrics.json").read_text())
                digest = hashlib.sha256((run_dir / "net.pt").read_bytes()).hexdigest()[:16]
                row = (process_s, status["wall_time_s"], 100 * status["metrics"]["test/acc"], digest)
                results[side].append(row)
                print(f"| {i + 1} | {side} | {row[0]:.1f} | {row[1]:.1f} | {row[2]:.2f} | {digest} |", flush=True)
    finally:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(work / "before")], capture_output=True
        )
    medians = {side: [statistics.median(r[k] for r in rows) for k in range(2)] for side, rows in results.items()}
    print("\n| median | process (s) | train() (s) |\n|---|---:|---:|")
    for side, (process_s, train_s) in medians.items():
        print(f"| {side} | {process_s:.1f} | {train_s:.1f} |")
    ratio = [medians["after"][k] / medians["before"][k] for k in range(2)]
    print(f"| after / before | {ratio[0]:.3f} | {ratio[1]:.3f} |")
    same = all(a[3] == b[3] for a, b in zip(results["before"], results["after"], strict=True))
    print(f"\nnet.pt bit-identical before and after in every pair: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
