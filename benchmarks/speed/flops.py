"""FLOPs of a training run, and this machine's matrix-multiply peak (docs/performance.md, "FLOPs").

    python benchmarks/speed/flops.py --peak                     # fp32 and bf16 matmul GFLOP/s here
    python benchmarks/speed/flops.py --runs outputs/runs/<run>  # a finished run's FLOPs and throughput

A run's FLOPs are counted by torch's ``FlopCounterMode`` (through Lightning's ``measure_flops``), which
counts matrix products and convolutions (2 FLOPs per multiply-add; not BatchNorm, activations, pooling
or the optimizer), on the run's own network, built from its ``.hydra/config.yaml``:

- one training batch, forward and backward in training mode, divided by the batch size: the FLOPs per
  training image (about 3× the forward's: the backward computes the gradients of both the inputs and
  the weights);
- one image's forward pass in eval mode, test-time augmentation included: the FLOPs per evaluated image.

Training FLOPs = the images trained on (epochs × training images) × the first; evaluation FLOPs = the second × (epochs ×
validation images + Lightning's sanity check (2 batches) + the test images + the report's second pass
over the validation images). As airbench counts its PFLOPs (Jordan, 2024, arXiv:2404.00498), the
count is of the network's arithmetic, not of what the hardware executed.

The peak is the best of ``--reps`` timed products of square matrices (sides 1024 to 4096) on the CPU,
in fp32 and in bf16: what ``torch.mm`` reaches on this machine, not a vendor figure (a GPU's peak is
not measured here). Counted one run, not all processes: a DDP run's images are counted once, and
a resumed run's second sanity check is not counted; the test report's attribution figures
(a few images) are not counted either.
A run's throughput is its FLOPs over ``metrics.json``'s ``wall_time_s`` (from the start of ``train()`` to
its end: building, reading the data, training, the test and the report; not the imports), as a fraction
of those peaks: a lower bound on what its network's arithmetic reached.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[2]
#: Lightning's sanity check before training: 2 validation batches (its ``num_sanity_val_steps`` default).
SANITY_BATCHES = 2


def matmul_peak(dtype: torch.dtype, reps: int = 5, sides: tuple[int, ...] = (1024, 2048, 4096)) -> float:
    """The best FLOP/s of ``torch.mm`` on ``dtype`` ``(n, n)`` matrices on the CPU (torch's intra-op
    threads: one per core in this project's runs), over ``sides`` and ``reps`` timings each (2·n³ FLOPs
    per product)."""
    best = 0.0
    for n in sides:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        torch.mm(a, b)  # warm-up: the first call picks kernels and allocates
        for _ in range(reps):
            start = time.perf_counter()
            torch.mm(a, b)
            best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def per_image_flops(cfg: DictConfig) -> dict[str, float]:
    """FLOPs per training image (forward and backward, training mode) and per evaluated image (forward,
    eval mode) of the network of the run config ``cfg`` (no checkpoint needed)."""
    from lightning.fabric.utilities.throughput import measure_flops

    from fmnist_lightning.evaluation.runs import build_module

    module = build_module(cfg)  # as for evaluation: eager, no torch.compile
    size, batch = cfg.data.image_size, cfg.data.batch_size
    images = torch.randn(batch, 1, size, size)
    labels = torch.randint(0, cfg.data.num_classes, (batch,))
    module.train()  # the module's own training loss: an adversarial run's attack steps included
    train = measure_flops(module, lambda: module.training_loss(images, labels)[0], lambda loss: loss)
    module.eval()
    evaluate = measure_flops(module, lambda: module(images[:1]))
    return {"train_per_image": train / batch, "eval_per_image": float(evaluate)}


def run_flops(run_dir: Path) -> dict[str, float]:
    """A finished run's FLOPs: per image, in training (``train``), in evaluation (``eval``) and in all,
    from its ``metrics.json`` (epochs) and config (split sizes), with its ``wall_time_s``.

    Raises:
        RunError: ``run_dir`` is no run (``RunFolder.load_config``); ``UntrustedConfigError``, its config
            names an untrusted callable.
    """
    from fmnist_lightning.data.splits import validation_size
    from fmnist_lightning.run_folder import RunFolder

    folder = RunFolder(run_dir)
    cfg, status = folder.load_config(), folder.read_status()
    total = cfg.data.files.train_images.shape[0]
    validation = validation_size(total, cfg.data.val_fraction, cfg.data.folds)  # IdxDataModule's split
    test = cfg.data.files.test_images.shape[0]
    sanity_batches = cfg.trainer.get("num_sanity_val_steps")
    sanity_batches = SANITY_BATCHES if sanity_batches is None else sanity_batches  # null: Lightning's default
    sanity = min(sanity_batches * (cfg.data.eval_batch_size or cfg.data.batch_size), validation)
    flops = per_image_flops(cfg)
    epochs = status["epochs"]
    # Images trained on: every batch of every epoch, or fewer under trainer.limit_train_batches.
    per_step = cfg.data.batch_size * cfg.trainer.get("accumulate_grad_batches", 1)
    trained = min(epochs * (total - validation), status["global_step"] * per_step)
    train = flops["train_per_image"] * trained
    evaluate = flops["eval_per_image"] * (epochs * validation + sanity + test + validation)
    figures = {"epochs": epochs, "train": train, "eval": evaluate, "total": train + evaluate}
    return {**flops, **figures, "wall_time_s": status["wall_time_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peak", action="store_true", help="measure the fp32 and bf16 matmul peak")
    parser.add_argument("--runs", nargs="*", default=[], type=Path, help="finished run folders")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", type=Path, help="write the figures here (JSON)")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from benchmark import machine

    result: dict = {"machine": machine()}
    if args.peak or args.runs:
        result["peak_flop_s"] = {
            "fp32": matmul_peak(torch.float32, args.reps),
            "bf16": matmul_peak(torch.bfloat16, args.reps),
        }
        print(
            f"{result['machine']}\nmatmul peak: fp32 {result['peak_flop_s']['fp32'] / 1e9:.0f} GFLOP/s, "
            f"bf16 {result['peak_flop_s']['bf16'] / 1e9:.0f} GFLOP/s"
        )
    for run in args.runs:
        flops = run_flops(run)
        seconds = flops["wall_time_s"]
        rate = flops["total"] / seconds
        fractions = {k: rate / v for k, v in result["peak_flop_s"].items()}
        result[str(run)] = {**flops, "flop_s": rate, "of_peak": fractions}
        print(
            f"{run}: {flops['total'] / 1e12:.3f} TFLOPs ({flops['train'] / 1e12:.3f} training, "
            f"{flops['eval'] / 1e12:.3f} evaluation; {flops['train_per_image'] / 1e6:.1f} MFLOPs per training "
            f"image), in {seconds:.1f} s of train(): {rate / 1e9:.1f} GFLOP/s, "
            f"{100 * fractions['fp32']:.1f} % of the fp32 peak, {100 * fractions['bf16']:.1f} % of the bf16 peak"
        )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
