"""Which runs are bit-for-bit reproducible on this machine, and does resume change results?

Runs ``train.py`` in pairs and compares the final network weights (``net.pt``) and
``metrics.json``:

  same seed            two runs, seed=S, trainer.deterministic=<d>, for d in (true, false)
  SIGKILL + resume     one run killed right after its first end-of-epoch checkpoint, then
                       ``resume=<run folder>``, against an uninterrupted run (deterministic)

Usage:
    python benchmarks/analyses/reproducibility.py                    # on the CPU
    python benchmarks/analyses/reproducibility.py --accelerator gpu  # on a CUDA GPU
    python benchmarks/analyses/reproducibility.py --data-root /path/to/fashion-mnist

Prints one line per comparison: identical or not, the largest absolute weight difference,
and the test accuracies (fractions).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
# Short, but with every source of randomness on: dropout, flips, shuffling, a schedule.
RUN = [
    "model=two_conv_bn",
    "data.image_size=16",
    "trainer.max_epochs=3",
    "trainer.limit_train_batches=150",
    "trainer.limit_val_batches=10",
    "scheduler=cosine",
    "data.augment.flip.p=0.5",
    "seed=7",
    "callbacks.progress_bar=null",
    "logger=none",
]


def train(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen) -> None:
    _, stderr = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"train.py failed:\n{stderr[-3000:]}")


def compare(a: Path, b: Path) -> str:
    """One line: identical or the largest weight difference, and both test accuracies."""
    wa, wb = torch.load(a / "net.pt", weights_only=True), torch.load(b / "net.pt", weights_only=True)
    diff = max((wa[k].double() - wb[k].double()).abs().max().item() for k in wa)
    ma, mb = (json.loads((p / "metrics.json").read_text())["metrics"] for p in (a, b))
    same = diff == 0 and ma == mb
    accuracies = f"test/acc {ma['test/acc']:.4f} vs {mb['test/acc']:.4f}"
    return f"{'identical' if same else 'DIFFERENT'}  max |dw| = {diff:.3g}  {accuracies}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--data-root", default="data/fashion-mnist")
    args = parser.parse_args()
    common = [
        *RUN,
        f"trainer.accelerator={args.accelerator}",
        "trainer.devices=1",
        f"data.root={Path(args.data_root).resolve()}",
    ]
    device = torch.cuda.get_device_name() if args.accelerator == "gpu" else "CPU"
    print(f"torch {torch.__version__}, {device}")

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for deterministic in ("true", "false"):
            runs = [out / f"det_{deterministic}_{i}" for i in (0, 1)]
            for run in runs:
                finish(train(*common, f"trainer.deterministic={deterministic}", f"hydra.run.dir={run}"))
            print(f"same seed, deterministic={deterministic:5}: {compare(*runs)}")

        whole, killed = out / "whole", out / "killed"
        finish(train(*common, "trainer.deterministic=true", f"hydra.run.dir={whole}"))
        process = train(*common, "trainer.deterministic=true", f"hydra.run.dir={killed}")
        while not (killed / "checkpoints" / "last.ckpt").exists():
            if process.poll() is not None:
                raise SystemExit("the run ended before its first checkpoint")
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
        finish(train(f"resume={killed}"))
        print(f"SIGKILL after epoch 1 + resume vs uninterrupted:  {compare(whole, killed)}")


if __name__ == "__main__":
    main()
