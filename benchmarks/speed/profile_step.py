"""Where a training step's time goes, in the project's own Lightning training loop.

    python benchmarks/speed/profile_step.py [--batch-size 64 256] [--reps 3] [--steps 150]
        [--variant "trainer.precision=bf16-mixed optimizer.fused=false" ...] [-- overrides...]

Each variant is a list of ``train.py`` overrides. It trains ``--steps`` batches of the real
training set through ``conf/train.yaml`` (``model=three_conv`` unless overridden, no logger,
no callbacks, no validation) and takes the median time from one ``on_train_batch_start`` to
the next, skipping the first 20 steps. Variants and batch sizes run interleaved, ``--reps``
times, and the medians are printed in milliseconds per step.

Then one more pass of each, under ``torch.profiler``, splits a step's CPU time by kind, in
milliseconds per step (profiling itself adds a little to every kind):

- ``forward``, ``backward``: the network's forward pass (``LightningModule.forward``) and
  the backward pass (``LightningModule.backward``), casts and layout changes excepted;
- ``step``: the rest of ``training_step``: the loss, the metrics' updates, the finite-loss
  check;
- ``casts``: ``aten::to`` and ``aten::_to_copy`` wherever they run, with the copies they
  make (bf16 autocast's copies of weights and activations, the gradients cast back, the
  batch's uint8 → float);
- ``layout``: ``aten::contiguous`` and ``aten::clone`` wherever they run (channels_last
  conversions, flattening);
- ``optimizer``: ``Optimizer.step`` and ``zero_grad``, the forward and backward passes they
  run (Lightning's closure) excepted;
- ``data``: the DataLoader's ``next`` and ``on_after_batch_transfer`` (indexing, scaling,
  normalisation);
- ``other``: the rest: the Python time of Lightning's loop and hooks.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings

import torch
from hydra import compose, initialize_config_module
from lightning.pytorch.callbacks import Callback
from omegaconf import open_dict
from torch.profiler import ProfilerActivity, profile, record_function, schedule

from fmnist_lightning.training.build import build_run

QUIET = [
    "logger=[]",
    "callbacks=none",
    "trainer.max_epochs=1",
    "trainer.limit_val_batches=0",
    "+trainer.enable_checkpointing=false",
    "+trainer.enable_progress_bar=false",
    "+trainer.enable_model_summary=false",
]
SKIP = 20  # warm-up steps left out of every figure
KINDS = ("forward", "backward", "step", "casts", "layout", "optimizer", "data", "other")
#: The methods whose time is labelled, by kind (``kind_of``).
LABELS = {
    "forward": ("model", "forward"),
    "backward": ("model", "backward"),
    "step": ("model", "training_step"),
    "data": ("datamodule", "on_after_batch_transfer"),
}


class StepClock(Callback):
    """Seconds from each ``on_train_batch_start`` to the next (a whole step, data included);
    calls ``on_step`` after each batch (the profiler's ``step``)."""

    def __init__(self, on_step=None) -> None:
        self.seconds: list[float] = []
        self._last: float | None = None
        self._on_step = on_step

    def on_train_batch_start(self, *args) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.seconds.append(now - self._last)
        self._last = now

    def on_train_batch_end(self, *args) -> None:
        if self._on_step is not None:
            self._on_step()


def train(overrides: list[str], steps: int, on_step=None) -> list[float]:
    """Trains ``steps`` batches with ``overrides``; returns each step's seconds. With
    ``on_step`` (profiling), the methods of ``LABELS`` are labelled first."""
    with initialize_config_module("fmnist_lightning.conf", version_base=None):
        cfg = compose("train", overrides=[*QUIET, f"trainer.limit_train_batches={steps}", *overrides])
    with open_dict(cfg):
        cfg.output_dir = "outputs/profile_step"  # nothing is written: no logger or checkpoint
    clock = StepClock(on_step)
    run = build_run(cfg, extra_callbacks=[clock])
    if on_step is not None:
        for kind, (owner, method) in LABELS.items():
            label(getattr(run, owner), method, kind)
    run.trainer.fit(run.model, datamodule=run.datamodule)
    return clock.seconds[SKIP:]


def label(obj: object, method: str, name: str) -> None:
    """Wraps ``obj.method`` in a profiler range called ``name``."""
    original = getattr(obj, method)

    def labelled(*args, **kwargs):
        with record_function(name):
            return original(*args, **kwargs)

    setattr(obj, method, labelled)


CASTS = ("aten::_to_copy", "aten::to")
LAYOUT = ("aten::contiguous", "aten::clone")


def kind_of(event) -> str:
    """The kind of one profiled event's self time: that of its nearest enclosing cast,
    layout change or labelled range (module docstring)."""
    node = event
    while node is not None:
        if node.name in CASTS:
            return "casts"
        if node.name in LAYOUT:
            return "layout"
        if node.name in KINDS:
            return node.name
        if node.name.startswith("Optimizer."):
            return "optimizer"
        if node.name.startswith("enumerate(DataLoader)"):
            return "data"
        node = node.cpu_parent
    return "other"


def breakdown(overrides: list[str], steps: int) -> dict[str, float]:
    """Milliseconds of CPU time per step by kind, from one profiled pass."""
    active = steps - SKIP - 10
    with profile(activities=[ProfilerActivity.CPU], schedule=schedule(wait=SKIP, warmup=10, active=active)) as prof:
        train(overrides, steps + 1, on_step=prof.step)
    ms = dict.fromkeys(KINDS, 0.0)
    for event in prof.events():
        ms[kind_of(event)] += event.self_cpu_time_total / 1000 / active
    return ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--variant", action="append", help="overrides, space-separated (repeatable)")
    parser.add_argument("overrides", nargs="*", help="overrides for every variant, e.g. model=two_conv")
    args = parser.parse_args()
    variants = args.variant or [
        f"trainer.precision={p} optimizer.fused={f}" for p in ("32-true", "bf16-mixed") for f in ("false", "true")
    ]
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    runs = {(v, b): [*args.overrides, *v.split(), f"data.batch_size={b}"] for b in args.batch_size for v in variants}
    seconds: dict[tuple[str, int], list[float]] = {run: [] for run in runs}
    for _ in range(args.reps):
        for run, overrides in runs.items():
            seconds[run].append(statistics.median(train(overrides, args.steps)))
    capability = torch.backends.cpu.get_cpu_capability()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability {capability}")
    print(f"overrides: {' '.join(args.overrides) or '(none)'}; medians of {args.reps} interleaved reps\n")
    print("| variant | batch | ms per step | images/s | " + " | ".join(KINDS) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(KINDS))
    for (variant, batch), overrides in runs.items():
        ms = 1000 * statistics.median(seconds[(variant, batch)])
        kinds = breakdown(overrides, args.steps)
        cells = " | ".join(f"{kinds[k]:.1f}" for k in KINDS)
        reps = ", ".join(f"{1000 * t:.1f}" for t in seconds[(variant, batch)])
        print(f"| {variant} | {batch} | {ms:.1f} ({reps}) | {batch / ms * 1000:,.0f} | {cells} |")


if __name__ == "__main__":
    main()
