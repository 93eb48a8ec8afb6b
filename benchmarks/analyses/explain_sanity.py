"""The sanity checks of the attribution methods on a run, and their speed.

    python benchmarks/analyses/explain_sanity.py outputs/runs/<run> [--images 500] [--repeats 5]

On the first ``--images`` test images (each map explaining the predicted class), for each method of
``fmnist_lightning.evaluation.attribution.METHODS`` with its defaults (integrated gradients: 64
steps; SmoothGrad: 50 samples at 15 % noise): model randomisation (Spearman's ρ against the same
network re-initialised), deletion (area under the curve of the map's order against a random
order; lower is better) and, for integrated gradients, completeness
(``fmnist_lightning.evaluation.attribution_checks``). Then the seconds per 100 images of each
method (``--repeats`` rounds, the methods interleaved in each round; medians), and of integrated
gradients with 256 steps. Prints Markdown tables and writes everything to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from fmnist_lightning.data.idx import load_split
from fmnist_lightning.evaluation import load_trained
from fmnist_lightning.evaluation.attribution import METHODS, Explainer
from fmnist_lightning.evaluation.attribution_checks import sanity_checks


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's processor string."""
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def timings(model, x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median seconds per 100 images of each method (and IG at 256 steps), interleaved over ``repeats`` rounds."""
    variants = {m: Explainer(model.net, model.preprocess, m) for m in METHODS}
    variants["integrated_gradients_256"] = Explainer(model.net, model.preprocess, "integrated_gradients", steps=256)
    targets = model.net(x).argmax(dim=1).detach()
    for explainer in variants.values():  # warm-up
        explainer.attribute(x[:4], targets[:4])
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, explainer in variants.items():
            start = time.perf_counter()
            explainer.attribute(x, targets)
            seconds[name].append((time.perf_counter() - start) * 100 / len(x))
    return {name: statistics.median(values) for name, values in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a finished run folder")
    parser.add_argument("--images", type=int, default=500, help="test images for the checks")
    parser.add_argument("--timed-images", type=int, default=100, help="test images per timed call")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds")
    parser.add_argument("--data-root", help="overrides the run's data.root")
    parser.add_argument("--out", default="benchmarks/explain_sanity.json", help="the JSON results")
    args = parser.parse_args()
    model = load_trained(args.run)
    raw, _ = load_split(args.data_root or model.config.data.root, "test")
    x = model.preprocess(raw[: args.images, None])
    checks = {}
    print(f"{args.run}, {args.images} test images; CPU {cpu_name()}, {torch.get_num_threads()} threads\n")
    print(
        "| method | randomisation: median abs rho | abs rho < 0.3 | constant maps | deletion AUC | random AUC |"
        " map lower | Wilcoxon p | IG completeness: median, max, within 1 % |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for method in METHODS:
        result = sanity_checks(Explainer(model.net, model.preprocess, method), x)
        checks[method] = result
        r, d, c = result["randomisation"], result["deletion"], result.get("completeness")
        ig = (
            f"{c['median_relative_delta']:.4f}, {c['max_relative_delta']:.4f}, {c['fraction_within_1pct']:.2f}"
            if c
            else "–"
        )
        print(
            f"| {method} | {r['median_abs_rho']:.3f} | {r['fraction_below_0_3']:.2f} | {r['constant_maps']} "
            f"| {d['auc']:.3f} | {d['random_auc']:.3f} | {d['fraction_map_lower']:.2f} | {d['wilcoxon_p']:.2g} | {ig} |"
        )
    speed = timings(model, x[: args.timed_images], args.repeats)
    print(f"\nSeconds per 100 images (median of {args.repeats} interleaved rounds of {args.timed_images} images):")
    for name, value in speed.items():
        print(f"- {name}: {value:.3f} s")
    out = {
        "run": args.run,
        "images": args.images,
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "checks": checks,
        "seconds_per_100_images": speed,
    }
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
