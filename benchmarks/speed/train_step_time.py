"""Seconds per training step (forward, backward, SGD step) of candidate networks on this CPU.

    python benchmarks/speed/train_step_time.py [--batch-size 128] [--steps 10] [--threads 2]

Builds each network as the named configs would (channels_last, as train.py does), runs 3
warm-up steps and then ``--steps`` timed steps on random 28 × 28 batches, and prints the
median milliseconds per step and the implied seconds per epoch of 54,000 training images.
Networks are measured back to back, in turn, ``--rounds`` times, so that they see the same
machine load. Used for the choices of ``experiment=best`` and ``experiment=fast``
(docs/reproduction_notes.md).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fmnist_lightning.models import VGGBNNet

CANDIDATES = {
    "vgg_bn 32-64-128, 2 convs/stage (best)": dict(widths=(32, 64, 128), convs_per_stage=2),
    "vgg_bn 64-128-256, 2 convs/stage": dict(widths=(64, 128, 256), convs_per_stage=2),
    "vgg_bn 16-32-64, 2 convs/stage (fast)": dict(widths=(16, 32, 64), convs_per_stage=2),
    "vgg_bn 32-64-128, 1 conv/stage": dict(widths=(32, 64, 128), convs_per_stage=1),
}


def step_ms(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return 1000 * (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch_size,))
    nets = {name: VGGBNNet(**kw).to(memory_format=torch.channels_last) for name, kw in CANDIDATES.items()}
    times: dict[str, list[float]] = {name: [] for name in nets}
    for _ in range(args.rounds):
        for name, net in nets.items():
            times[name].append(step_ms(net, x, y, args.steps))
    print(f"{args.threads} threads, batch {args.batch_size}, median of {args.rounds} rounds of {args.steps} steps\n")
    print("| network | ms per step | s per epoch (54,000 images) |\n|---|---:|---:|")
    for name, values in times.items():
        ms = statistics.median(values)
        print(f"| {name} | {ms:.0f} | {ms / 1000 * 54_000 / args.batch_size:.0f} |")


if __name__ == "__main__":
    main()
