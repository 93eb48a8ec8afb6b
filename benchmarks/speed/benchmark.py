"""Training throughput of the documented recipes: plain PyTorch vs this project.

For each recipe (its model, image size, normalisation, optimizer and batch size) four
variants train on the real FashionMNIST:

  a  plain PyTorch loop, torchvision's per-sample pipeline as the recipes use it:
     torchvision.datasets.FashionMNIST (PIL image -> [Resize] -> ToTensor -> Normalize),
     DataLoader(shuffle=True, num_workers=0), eager NCHW float32, loss.item() every step
  b  the same loop on this project's in-memory batched data path, with the project's
     default compute settings (channels_last)
  c  this project's training (fmnist_lightning.training.build.build_run: the Lightning Trainer,
     callbacks and logger of `python train.py experiment=<recipe>`), default settings
  d  c with the fastest settings measured: batch size 256 (learning rate scaled by
     sqrt(256 / recipe batch)), channels_last

Each measurement runs in a fresh subprocess (so its peak memory is its own): after
``--warmup`` steps, the wall time of the next steps covering ``--images`` training images
gives images/s; the epoch time is the recipe's training-set size over that rate. Variants
and recipes are interleaved (a b c d a b c d ...) over ``--reps`` repetitions, and the
medians are reported with their ratios to (a).

Usage:
    python benchmarks/speed/benchmark.py                       # all recipes, 3 repetitions
    python benchmarks/speed/benchmark.py --recipes recipe_004 --reps 1
The table is printed and written, with the raw measurements, to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RECIPES = ["recipe_000", "recipe_001", "recipe_002", "recipe_003", "recipe_004"]
VARIANTS = {
    "a": "plain PyTorch, per-sample torchvision pipeline",
    "b": "plain PyTorch, in-memory batched path",
    "c": "train.py, default settings",
    "d": "train.py, fastest settings",
}
FAST_BATCH = 256


def compose(recipe: str, data_root: str, output_dir: str, *overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(
            "train",
            overrides=[
                f"experiment={recipe}",
                f"data.root={data_root}",
                f"output_dir={output_dir}",
                "trainer.accelerator=auto",
                *overrides,
            ],
        )


def recipe_transform(image_size: int, normalize: dict | None):
    """The recipes' per-image torchvision pipeline on PIL images: ``[Resize] → ToTensor →
    [Normalize]``, PIL ``L`` image → float32 ``(1, image_size, image_size)``."""
    from torchvision import transforms as T

    steps = [] if image_size == 28 else [T.Resize((image_size, image_size))]
    steps.append(T.ToTensor())
    if normalize is not None:
        steps.append(T.Normalize([float(normalize["mean"])], [float(normalize["std"])]))
    return T.Compose(steps)


def torchvision_root(data_root: str) -> str:
    """A new temporary folder for ``torchvision.datasets.FashionMNIST(root)``, which reads
    ``root/FashionMNIST/raw/``: the verified IDX files of ``data_root`` are linked there."""
    from fmnist_lightning.data.idx import load_dataset

    root = Path(tempfile.mkdtemp())
    (root / "FashionMNIST" / "raw").mkdir(parents=True)
    for spec in load_dataset().specs.values():
        (root / "FashionMNIST" / "raw" / spec.name).symlink_to(Path(data_root).resolve() / spec.name)
    return str(root)


def plain_loop(cfg, variant: str, warmup: int, n_steps: int) -> float:
    """Variants a and b: a recipe-style training loop. Returns seconds for ``n_steps``."""
    import hydra
    import torch
    from torch.utils.data import DataLoader
    from torchvision.datasets import FashionMNIST

    from fmnist_lightning.data.augment import build_preprocess
    from fmnist_lightning.data.datamodule import InMemoryBatches, keep_batch
    from fmnist_lightning.data.idx import load_split

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    normalize = dict(cfg.data.normalize) if cfg.data.normalize else None
    net = hydra.utils.instantiate(cfg.model).to(device)
    # The recipes' optimizer as they build it: torch's default implementation, not the fused
    # kernel that conf/optimizer/*.yaml gives train.py.
    optimizer = hydra.utils.instantiate(cfg.optimizer, fused=None)(net.parameters())
    criterion = torch.nn.CrossEntropyLoss()
    if variant == "a":
        root = torchvision_root(cfg.data.root)
        dataset = FashionMNIST(root, train=True, transform=recipe_transform(cfg.data.image_size, normalize))
        loader = DataLoader(dataset, batch_size=cfg.data.batch_size, shuffle=True)
        prepare = lambda x: x  # noqa: E731
        memory_format = torch.contiguous_format
    else:
        images, labels = load_split(cfg.data.root, "train")
        dataset = InMemoryBatches(images.unsqueeze(1), labels).to(device)
        loader = DataLoader(dataset, batch_size=cfg.data.batch_size, shuffle=True, collate_fn=keep_batch)
        preprocess = build_preprocess(cfg.data.image_size, normalize)
        memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        prepare = lambda x: preprocess(x).contiguous(memory_format=memory_format)  # noqa: E731
    net = net.to(memory_format=memory_format).train()
    running_loss, start = 0.0, None
    for step, (x, y) in enumerate(loader):
        if step == warmup:
            start = time.perf_counter()
        if step == warmup + n_steps:
            break
        x, y = prepare(x.to(device)), y.to(device)
        optimizer.zero_grad()
        loss = criterion(net(x), y)
        loss.backward()
        optimizer.step()
        running_loss += loss.item()
    return time.perf_counter() - start


def lightning_loop(cfg, warmup: int, n_steps: int) -> float:
    """Variants c and d: the project's Trainer, timed between batches by a callback."""
    import lightning as L

    from fmnist_lightning.training.build import build_run

    class Timer(L.Callback):
        start = end = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == warmup:
                self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == warmup + n_steps - 1:
                self.end = time.perf_counter()

    timer = Timer()
    run = build_run(cfg, extra_callbacks=[timer])
    run.trainer.fit(run.model, datamodule=run.datamodule)
    return timer.end - timer.start


def measure_one(variant: str, recipe: str, data_root: str, images: int, warmup: int) -> dict:
    """One measurement in this process; returns a JSON-ready dict."""
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    with tempfile.TemporaryDirectory() as out:
        recipe_cfg = compose(recipe, data_root, out)
        overrides, batch = [], recipe_cfg.data.batch_size
        if variant == "d":
            lr = recipe_cfg.optimizer.lr * math.sqrt(FAST_BATCH / batch)
            overrides, batch = [f"data.batch_size={FAST_BATCH}", f"optimizer.lr={lr}"], FAST_BATCH
        n_steps = max(10, images // batch)
        if variant in ("c", "d"):
            overrides += [
                "trainer.max_epochs=1",
                f"trainer.limit_train_batches={warmup + n_steps}",
                # No validation inside the window; early stopping (an epoch-end check) needs it.
                "trainer.limit_val_batches=0",
                "callbacks.early_stopping=null",
            ]
        cfg = compose(recipe, data_root, out, *overrides)
        if variant in ("c", "d"):
            seconds = lightning_loop(cfg, warmup, n_steps)
        else:
            seconds = plain_loop(cfg, variant, warmup, n_steps)
        train_images = round(60000 * (1 - cfg.data.val_fraction))
    rate = n_steps * batch / seconds
    return {
        "variant": variant,
        "recipe": recipe,
        "model": cfg.model._target_.rsplit(".", 1)[-1],
        "image_size": cfg.data.image_size,
        "batch_size": batch,
        "steps": n_steps,
        "images_per_s": rate,
        "epoch_s": train_images / rate,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    import torch

    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    cores, threads = len(os.sched_getaffinity(0)), torch.get_num_threads()
    capabilities = torch.cpu.get_capabilities()
    flags = [flag for flag in ("avx2", "avx512_f", "avx512_bf16", "amx_bf16") if capabilities.get(flag)]
    flags_text = ", ".join(flags) or "no avx2 or avx512"
    return f"{cpu}, {cores} cores ({flags_text}), torch {torch.__version__}, {threads} threads{gpu}"


def table(results: list[dict]) -> str:
    lines = [
        "| recipe | model, px, batch | variant | images/s (median) | ratio to a | epoch (s) | peak RSS (MB) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for recipe in dict.fromkeys(r["recipe"] for r in results):
        rows = {v: [r for r in results if r["recipe"] == recipe and r["variant"] == v] for v in VARIANTS}
        base = statistics.median(r["images_per_s"] for r in rows["a"]) if rows["a"] else None
        for v, rs in rows.items():
            if not rs:
                continue
            rate = statistics.median(r["images_per_s"] for r in rs)
            epoch = statistics.median(r["epoch_s"] for r in rs)
            rss = max(r["peak_rss_mb"] for r in rs)
            ratio = f"{rate / base:.2f}x" if base else ""
            lines.append(
                f"| {recipe} | {rs[0]['model']}, {rs[0]['image_size']}, {rs[0]['batch_size']} | ({v}) {VARIANTS[v]} "
                f"| {rate:,.0f} | {ratio} | {epoch:.1f} | {rss:,.0f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", nargs="+", default=RECIPES)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--images", type=int, default=12800, help="training images per timed window")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps before the window")
    parser.add_argument("--data-root", default="data/fashion-mnist")
    parser.add_argument("--out", default="benchmarks/results.json")
    parser.add_argument("--one", nargs=2, metavar=("VARIANT", "RECIPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    from fmnist_lightning.data.idx import DEBIAN_DATASET_DIR, ensure_files

    if args.one:
        print(json.dumps(measure_one(*args.one, args.data_root, args.images, args.warmup)))
        return
    ensure_files(args.data_root, DEBIAN_DATASET_DIR, download=False)
    results = []
    started = time.time()
    for rep in range(args.reps):
        for recipe in args.recipes:
            for variant in args.variants:
                proc = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--one",
                        variant,
                        recipe,
                        "--data-root",
                        args.data_root,
                        "--images",
                        str(args.images),
                        "--warmup",
                        str(args.warmup),
                    ],
                    cwd=REPO,
                    capture_output=True,
                    text=True,
                )
                if proc.returncode != 0:
                    sys.exit(f"{variant} {recipe} failed:\n{proc.stderr[-3000:]}")
                result = json.loads(proc.stdout.strip().splitlines()[-1]) | {"rep": rep}
                results.append(result)
                print(f"rep {rep} {recipe} ({variant}): {result['images_per_s']:,.0f} images/s", flush=True)
    text = table(results)
    summary = {
        "machine": machine(),
        "reps": args.reps,
        "images_per_window": args.images,
        "wall_time_s": round(time.time() - started),
        "table": text,
        "results": results,
    }
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n{summary['machine']}\n\n{text}")


if __name__ == "__main__":
    main()
