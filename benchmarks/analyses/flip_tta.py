"""Paired measurement of flip test-time augmentation: the same trained weights, tested with
and without it.

    python benchmarks/analyses/flip_tta.py outputs/reproduction/<sweep>/<job> [...] [--data-root DIR]

For each run folder (its network must be ``model=vgg_bn``, which has ``flip_tta``), loads the
tested weights (``net.pt``) and prints the official test set's accuracy, in percent, with
``flip_tta`` off and on, and the difference in points; then the mean difference over runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile

import torch

from fmnist_lightning.evaluation import load_trained, run_test_report
from fmnist_lightning.evaluation.runs import build_datamodule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders trained with model=vgg_bn")
    parser.add_argument("--data-root", help="overrides the runs' data.root")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gains = []
    print("| run | without flip TTA (%) | with flip TTA (%) | difference (points) |\n|---|---:|---:|---:|")
    for run in args.runs:
        model = load_trained(run, device=device)
        if not hasattr(model.net, "flip_tta"):
            sys.exit(f"error: {run} has no flip_tta option ({model.config.model._target_}); pass runs of model=vgg_bn")
        datamodule = build_datamodule(model.config, args.data_root)
        accuracy = {}
        for tta in (False, True):
            model.net.flip_tta = tta
            report = run_test_report(model.module, datamodule, tempfile.mkdtemp(), device).report
            accuracy[tta] = 100 * report["accuracy"]
        gains.append(accuracy[True] - accuracy[False])
        print(f"| {run} | {accuracy[False]:.2f} | {accuracy[True]:.2f} | {gains[-1]:+.2f} |")
    print(f"\nMean difference over {len(gains)} run(s): {statistics.fmean(gains):+.3f} points")


if __name__ == "__main__":
    main()
