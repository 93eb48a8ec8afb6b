"""Effect of each speed option on one training step of a documented network.

Times forward + backward + Adam step on random float batches (the data path is measured by
benchmark.py), for: eager float32 NCHW, channels_last, bf16 autocast (alone, and with
channels_last, as ``trainer.precision=bf16-mixed`` runs by default), torch.compile, and
channels_last with a 4x batch. Options run interleaved over --reps repetitions; medians and
ratios to eager are printed. torch.compile's one-off compilation time is reported apart.

Usage:
    python benchmarks/speed/speed_options.py --model three_conv --batch-size 64
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fmnist_lightning.models import nets

MODELS = {
    "two_conv_bn": (nets.TwoConvBNNet, 28),
    "three_conv": (nets.ThreeConvNet, 28),
    "two_conv": (nets.TwoConvNet, 28),
    "two_conv_5x5": (nets.TwoConv5x5Net, 16),
}


def step_rate(model: str, batch: int, option: str, steps: int) -> tuple[float, float]:
    """Images per second over ``steps`` training steps, and the seconds of the first
    (warm-up, and for torch.compile compiling) steps."""
    cls, size = MODELS[model]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    net = cls(image_size=size).to(device)
    x = torch.randn(batch, 1, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    if option.startswith("channels_last"):
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    forward = torch.compile(net) if option == "compile" else net
    optimizer = torch.optim.Adam(net.parameters(), 1e-3)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled="bf16" in option):
            loss = torch.nn.functional.cross_entropy(forward(x), y)
        loss.backward()
        optimizer.step()

    start = time.perf_counter()
    for _ in range(5):
        step()
    warmup = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start), warmup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=MODELS, default="three_conv")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--images", type=int, default=3200, help="images per timed window")
    args = parser.parse_args()
    options = {
        "eager": args.batch_size,
        "channels_last": args.batch_size,
        "bf16_autocast": args.batch_size,
        "channels_last_bf16": args.batch_size,  # what trainer.precision=bf16-mixed runs (channels_last=true)
        "compile": args.batch_size,
        "channels_last_4x_batch": 4 * args.batch_size,
    }
    rates: dict[str, list[float]] = {o: [] for o in options}
    warmups: dict[str, list[float]] = {o: [] for o in options}
    for _ in range(args.reps):
        for option, batch in options.items():
            rate, warmup = step_rate(args.model, batch, option, max(5, args.images // batch))
            rates[option].append(rate)
            warmups[option].append(warmup)
    base = statistics.median(rates["eager"])
    print(
        f"{args.model}, batch {args.batch_size}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{'GPU ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}"
    )
    print("| option | batch | images/s (median) | ratio to eager | first 5 steps (s) |")
    print("|---|---:|---:|---:|---:|")
    for option, batch in options.items():
        rate = statistics.median(rates[option])
        print(f"| {option} | {batch} | {rate:,.0f} | {rate / base:.2f}x | {statistics.median(warmups[option]):.1f} |")


if __name__ == "__main__":
    main()
