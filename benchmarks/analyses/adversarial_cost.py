"""What adversarial training costs against standard training, per training batch.

    python benchmarks/analyses/adversarial_cost.py [--batches 60] [--repeats 3] [--out adversarial_cost.json]

Builds each variant with the project's own ``build_run`` from ``conf/train.yaml``: ``standard``
(``experiment=adv_pgd``'s network, batch size and schedule, without the adversary), ``adv_pgd``
(PGD-10 in every step) and ``adv_trades`` (TPGD-10 and TRADES' loss). Each fits one epoch of
``--batches`` training batches with no validation; the seconds from the end of the third batch to
the end of the last (the warm-up left out) give the batches per second. The variants run
interleaved (A B C A B C ...) for ``--repeats`` rounds; prints the medians and the ratios to
standard training, and writes them to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import Callback

from fmnist_lightning.training.build import build_run

CONF = Path(__file__).resolve().parents[2] / "conf"
#: The variants: overrides of conf/train.yaml.
VARIANTS = {
    "standard": [
        "experiment=adv_pgd",
        "module._target_=fmnist_lightning.models.FashionMNISTClassifier",
        "~module.adversary",
    ],
    "adv_pgd": ["experiment=adv_pgd"],
    "adv_trades": ["experiment=adv_trades"],
}
WARM_UP = 3


class BatchClock(Callback):
    """Seconds from the end of training batch ``WARM_UP`` to the end of the last, and the batches between."""

    def __init__(self) -> None:
        self.start, self.seconds, self.batches = 0.0, 0.0, 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if batch_idx + 1 == WARM_UP:
            self.start = time.perf_counter()
        elif batch_idx + 1 > WARM_UP:
            self.seconds, self.batches = time.perf_counter() - self.start, batch_idx + 1 - WARM_UP


def batches_per_second(name: str, batches: int, data_root: str | None) -> float:
    overrides = [*VARIANTS[name], "output_dir=unset", "logger=none", "callbacks=none", "trainer.max_epochs=1"]
    overrides += [
        f"trainer.limit_train_batches={batches}",
        "trainer.limit_val_batches=0",
        "trainer.enable_checkpointing=false",
    ]
    overrides += [f"data.root={data_root}"] if data_root else []
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    clock = BatchClock()
    run = build_run(cfg, extra_callbacks=[clock])
    run.trainer.fit(run.model, datamodule=run.datamodule)
    return clock.batches / clock.seconds


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--out", type=Path, default=Path("adversarial_cost.json"))
    args = parser.parse_args()
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name in VARIANTS:
            rates[name].append(batches_per_second(name, args.batches, args.data_root))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    print(f"CPU: {cpu_name()}; {args.batches} batches of 128, {args.repeats} interleaved rounds")
    print("| variant | batches/s (median) | seconds per epoch of 422 batches | time against standard |")
    print("|---|---:|---:|---:|")
    for name, rate in medians.items():
        print(f"| {name} | {rate:.2f} | {422 / rate:.0f} | {medians['standard'] / rate:.1f}× |")
    result = {"cpu": cpu_name(), "batches": args.batches, "rates": rates, "medians": medians}
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
