"""Time to 90, 91 and 92 % test accuracy: ``experiment=fast``, ``recipe_001`` and a plain
PyTorch loop of recipe 001.

Variants, each run as a fresh process and timed from its launch (start-up included):

  fast         python train.py experiment=fast
  fast_before  the ``fast`` before issue 15 replaced it (commit 5517e2d): vgg_bn 16-32-64
               with two convolutions per stage, dropout 0.3, Adam lr 3e-3 with a cosine
               schedule stepped per epoch, 3 epochs
  recipe_001   python train.py experiment=recipe_001
  plain_001    recipe 001 written the recipes' way, in this file: torchvision's FashionMNIST
               with per-sample ToTensor and Normalize(0.5, 0.5), an 80/20 random_split,
               DataLoader(batch 64, shuffle), the recipe's network, Adam lr 1e-3, fp32,
               NCHW, loss.item() every step and a validation pass every epoch, 10 epochs

Every process saves its network's weights at the end of each training epoch (its validation
included), with the wall-clock time: ``train.py`` through the ``EpochSnapshots`` callback added
with ``+callbacks.epoch_snapshots=...``, the plain loop in the loop. Once all runs are done,
each snapshot is tested on the 10,000 test images (not timed), which gives, per run, the
epochs and the seconds from launch until test accuracy first reached each target. The
seconds end with that epoch; the run's own end-of-run work (test, report, figures) is in its
whole-process time.

The variants are interleaved (fast, fast_before, recipe_001, plain_001, fast, ...) over
``--reps`` repetitions with seed = repetition, and medians and ratios to ``plain_001`` are
printed and written, with every run, to ``--out`` (JSON):

    python benchmarks/speed/time_to_accuracy.py                  # 3 repetitions, about 30 min
    python benchmarks/speed/time_to_accuracy.py --reps 1 --variants fast fast_before
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from fmnist_lightning.run_folder import RunFolder

REPO = Path(__file__).resolve().parents[2]
TARGETS = (0.90, 0.91, 0.92)
SNAPSHOTS = "snapshots"
STAMPS = "stamps.jsonl"
TRAIN_PY = {
    "fast": ["experiment=fast"],
    "fast_before": [
        "experiment=fast",
        "model.convs_per_stage=2",
        "model.dropout=0.3",
        "scheduler=cosine",
        "optimizer.lr=3e-3",
        "trainer.max_epochs=3",
    ],
    "recipe_001": ["experiment=recipe_001"],
}
VARIANTS = [*TRAIN_PY, "plain_001"]
BASELINE = "plain_001"


class EpochSnapshots(Callback):
    """Saves the network's weights (``snapshots/epoch_NNN.pt``, a plain state_dict) and the
    wall-clock time (``time.time()``, seconds since the epoch) at the end of every training
    epoch, after its validation. For this benchmark; costs a few milliseconds an epoch."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        save_snapshot(self.folder, trainer.current_epoch + 1, pl_module.net)


def save_snapshot(folder: Path, epoch: int, net: torch.nn.Module) -> None:
    """Appends ``{"epoch", "time"}`` to ``folder/stamps.jsonl`` and saves the weights."""
    stamp = time.time()
    (folder / SNAPSHOTS).mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), folder / SNAPSHOTS / f"epoch_{epoch:03d}.pt")
    with open(folder / STAMPS, "a") as f:
        f.write(json.dumps({"epoch": epoch, "time": stamp}) + "\n")


def plain_loop(folder: Path, seed: int, data_root: str, epochs: int = 10, limit_batches: int | None = None) -> None:
    """Recipe 001 as its write-up describes it (see the module docstring), snapshotting every epoch."""
    import hydra
    from benchmark import compose, recipe_transform, torchvision_root
    from torch.utils.data import DataLoader, random_split
    from torchvision.datasets import FashionMNIST

    cfg = compose("recipe_001", data_root, str(folder))
    torch.manual_seed(seed)
    dataset = FashionMNIST(torchvision_root(data_root), train=True, transform=recipe_transform(28, cfg.data.normalize))
    train_set, val_set = random_split(dataset, [0.8, 0.2])
    train_loader = DataLoader(train_set, batch_size=64, shuffle=True)
    val_loader = DataLoader(val_set, batch_size=64)
    net = hydra.utils.instantiate(cfg.model)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    criterion = torch.nn.CrossEntropyLoss()
    for epoch in range(1, epochs + 1):
        net.train()
        running_loss = 0.0
        for step, (images, labels) in enumerate(train_loader):
            if step == limit_batches:
                break
            optimizer.zero_grad()
            loss = criterion(net(images), labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
        net.eval()
        correct = 0
        with torch.no_grad():
            for images, labels in val_loader:
                correct += (net(images).argmax(1) == labels).sum().item()
        print(f"epoch {epoch}: train loss {running_loss / len(train_loader):.4f}, val acc {correct / len(val_set):.4f}")
        save_snapshot(folder, epoch, net)


def command(
    variant: str, folder: Path, seed: int, data_root: str, epochs: int | None, limit_batches: int | None
) -> list[str]:
    """The variant's command line; ``epochs`` and ``limit_batches`` (``None``: the variant's
    own) shorten it for a quick check."""
    if variant == BASELINE:
        quick = [
            *(["--epochs", str(epochs)] if epochs else []),
            *(["--limit-batches", str(limit_batches)] if limit_batches else []),
        ]
        return [sys.executable, __file__, "--plain", str(folder), "--seed", str(seed), "--data-root", data_root, *quick]
    return [
        sys.executable,
        "train.py",
        *TRAIN_PY[variant],
        f"seed={seed}",
        f"data.root={data_root}",
        f"hydra.run.dir={folder}",
        "callbacks.progress_bar=null",
        f"+callbacks.epoch_snapshots={{_target_:benchmarks.speed.time_to_accuracy.EpochSnapshots,folder:'{folder}'}}",
        *([f"trainer.max_epochs={epochs}"] if epochs else []),
        *([f"trainer.limit_train_batches={limit_batches}"] if limit_batches else []),
    ]


def test_accuracies(run: dict, data_root: str) -> list[float]:
    """Test accuracy (fraction) of each epoch's snapshot of one run, in epoch order."""
    from fmnist_lightning.data.augment import build_preprocess
    from fmnist_lightning.data.idx import load_split
    from fmnist_lightning.evaluation.runs import build_module

    images, labels = load_split(data_root, "test")
    images = images.unsqueeze(1)
    folder = Path(run["folder"])
    if run["variant"] == BASELINE:
        from benchmark import compose

        cfg = compose("recipe_001", data_root, str(folder))
    else:
        cfg = RunFolder(folder).read_config()  # a run this script made itself (its callback is this module's)
    net = build_module(cfg).net.eval()
    preprocess = build_preprocess(cfg.data.image_size, dict(cfg.data.normalize) if cfg.data.normalize else None)
    accuracies = []
    for epoch in range(1, len(run["stamps"]) + 1):
        net.load_state_dict(torch.load(folder / SNAPSHOTS / f"epoch_{epoch:03d}.pt", weights_only=True))
        with torch.inference_mode():
            preds = torch.cat([net(preprocess(chunk)).argmax(1) for chunk in images.split(1000)])
        accuracies.append((preds == labels).float().mean().item())
    return accuracies


def reached(run: dict, target: float) -> tuple[int, float] | None:
    """(epochs, seconds from launch) until the run's test accuracy first reached ``target``."""
    for epoch, (accuracy, stamp) in enumerate(zip(run["test_acc"], run["stamps"], strict=True), start=1):
        if accuracy >= target:
            return epoch, stamp - run["launched"]
    return None


def table(runs: list[dict]) -> str:
    """Medians over repetitions per variant, with the speed-up over ``plain_001`` (its time
    over the variant's), and the ratio of ``fast``'s whole-process time to ``fast_before``'s."""
    reps = len({r["rep"] for r in runs})

    def of(variant: str) -> list[dict]:
        return [r for r in runs if r["variant"] == variant]

    def seconds(variant: str, target: float | None) -> float | None:
        """Median seconds (whole process, or to ``target``); ``None`` unless every run got there."""
        values = [r["whole_s"] if target is None else (reached(r, target) or (0, None))[1] for r in of(variant)]
        return statistics.median(values) if values and None not in values and len(values) == reps else None

    header = "| variant | test acc after the last epoch, per seed (%) | whole process: s (speed-up) |" + "".join(
        f" to {round(100 * t)} %: s (speed-up), epochs |" for t in TARGETS
    )
    lines = [header, "|---|---|---:|" + "---:|" * len(TARGETS)]
    for variant in [v for v in VARIANTS if of(v)]:
        cells = []
        for target in (None, *TARGETS):
            value, base = seconds(variant, target), seconds(BASELINE, target)
            if value is None:
                missed = sum(reached(r, target) is None for r in of(variant))
                cells.append(f"not reached by {missed} of {len(of(variant))}")
                continue
            cell = f"{value:.0f}" + (f" ({base / value:.2f}×)" if base and variant != BASELINE else "")
            if target is not None:
                cell += f", {statistics.median(reached(r, target)[0] for r in of(variant)):g}"
            cells.append(cell)
        finals = ", ".join(f"{100 * r['test_acc'][-1]:.2f}" for r in of(variant))
        lines.append(f"| {variant} | {finals} | " + " | ".join(cells) + " |")
    pairs = [(a["whole_s"], b["whole_s"]) for a in of("fast") for b in of("fast_before") if a["rep"] == b["rep"]]
    if pairs:
        ratios = ", ".join(f"{a / b:.2f}" for a, b in pairs)
        median = statistics.median(a / b for a, b in pairs)
        lines += ["", f"fast / fast_before, whole process, per repetition: {ratios} (median {median:.2f})"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--data-root", default="data/fashion-mnist")
    parser.add_argument("--workdir", default=None, help="where the runs go (default: a new folder in /tmp)")
    parser.add_argument("--out", default="benchmarks/time_to_accuracy.json")
    parser.add_argument("--epochs", type=int, help="epochs of every variant (default: each its own); for a quick check")
    parser.add_argument("--limit-batches", type=int, help="training batches per epoch; for a quick check")
    parser.add_argument("--plain", metavar="FOLDER", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain:
        plain_loop(Path(args.plain), args.seed, args.data_root, args.epochs or 10, args.limit_batches)
        return

    import tempfile

    from benchmark import machine

    from fmnist_lightning.data.idx import DEBIAN_DATASET_DIR, ensure_files

    ensure_files(args.data_root, DEBIAN_DATASET_DIR, download=False)
    data_root = str(Path(args.data_root).resolve())
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="time_to_accuracy."))
    runs = []
    for rep in range(args.reps):
        for variant in args.variants:
            folder = workdir / f"{variant}_{rep}"
            launched = time.time()
            cmd = command(variant, folder, rep, data_root, args.epochs, args.limit_batches)
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
            whole = time.time() - launched
            if proc.returncode != 0:
                sys.exit(f"{variant} (seed {rep}) failed:\n{proc.stderr[-3000:]}")
            lines = (folder / STAMPS).read_text().splitlines()
            stamps = [json.loads(line)["time"] for line in lines]
            runs.append(
                dict(variant=variant, rep=rep, folder=str(folder), launched=launched, whole_s=whole, stamps=stamps)
            )
            print(f"rep {rep} {variant}: {whole:.1f} s, {len(stamps)} epochs", flush=True)
    for run in runs:
        run["test_acc"] = test_accuracies(run, data_root)
    text = table(runs)
    summary = {"machine": machine(), "reps": args.reps, "table": text, "runs": runs}
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n{summary['machine']}\n\n{text}")


if __name__ == "__main__":
    main()
