"""Is run B better than run A? Both runs' ``predictions.npz`` on the same test images, compared:
the accuracy difference with its 95 % paired-bootstrap interval, McNemar's exact test overall and
per class (uncorrected: expect one p below 0.05 in twenty classes by chance alone), and a verdict.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from fmnist_lightning.artifacts import read_yaml
from fmnist_lightning.data.idx import DATASET_KEYS, IdxDataset
from fmnist_lightning.errors import RunError
from fmnist_lightning.evaluation.predictions import SavedPredictions, read_predictions
from fmnist_lightning.evaluation.statistics import ALPHA, mcnemar_exact, paired_bootstrap, wilson_interval
from fmnist_lightning.run_folder import RunFolder


def run_config_of(folder: str | Path, trusted_modules: Sequence[str] = ()) -> DictConfig:
    """The checked config of the run a folder's predictions come from: a run folder's own, or an
    ``fmnist-evaluate`` folder's evaluated run's (an ensemble's: its first member's).

    Raises:
        RunError: The folder is neither.
    """
    folder = Path(folder)
    saved = RunFolder(folder).config_file
    if saved.is_file():
        config = read_yaml(saved, dict, "Evaluate the run again into a new folder.")
        run_dir = config.get("run_dir")
        if isinstance(run_dir, list) and run_dir and "model" not in config:  # an ensemble's: its first member
            run_dir = run_dir[0]  # (its members share the test set: ensemble.check_members)
        if isinstance(run_dir, str) and "model" not in config:  # an evaluation's folder
            return RunFolder(run_dir).load_config(trusted_modules)
    return RunFolder(folder).load_config(trusted_modules)


def describe_test_set(config: DictConfig) -> dict[str, Any]:
    """What must match for two runs' test accuracies to be compared image by image: the
    dataset (its name and test files' MD5s) and ``data.image_size``."""
    data = OmegaConf.to_container(config.data, resolve=True)
    dataset = IdxDataset.from_config(**{k: data.get(k) for k in DATASET_KEYS})
    return {"dataset": dataset.name, "test_files": dataset.test_checksums, "image_size": data["image_size"]}


def check_same_test_set(a: DictConfig, b: DictConfig, names: tuple[str, str]) -> None:
    """Refuses two runs whose test sets differ.

    Raises:
        RunError: Their dataset, test files or image size differ; the message names which.
    """
    described = describe_test_set(a), describe_test_set(b)
    differ = [key for key in described[0] if described[0][key] != described[1][key]]
    if differ:
        details = "; ".join(
            f"{key}: {described[0][key]!r} in {names[0]}, {described[1][key]!r} in {names[1]}" for key in differ
        )
        raise RunError(
            f"{names[0]} and {names[1]} were not tested on the same test set ({details}); "
            "compare runs of the same dataset at the same data.image_size"
        )


def _check_same_images(a: SavedPredictions, b: SavedPredictions) -> None:
    if len(a.label) != len(b.label) or not np.array_equal(a.label, b.label):
        raise RunError(
            f"{a.path} and {b.path} hold predictions on different test images ({len(a.label):,} and {len(b.label):,} "
            "images, or the labels differ in order: was one tested with trainer.limit_test_batches?); evaluate both "
            "on the whole test set with fmnist-evaluate run_dir=<run>"
        )


def verdict(difference: float, low: float, high: float, p_value: float, test: str = "McNemar") -> str:
    """The comparison in words, significant when ``p_value`` < ``ALPHA`` (borderline if the interval
    includes 0): "B is better than A by 0.80 points (B − A 95 % CI [+0.40, +1.20] points, McNemar
    p = 0.001)". Differences are fractions."""
    numbers = f"B − A 95 % CI [{100 * low:+.2f}, {100 * high:+.2f}] points, {test} p = {p_value:.2g}"
    if p_value < ALPHA:
        better, worse = ("B", "A") if difference > 0 else ("A", "B")
        # The test and the interval are computed differently and can disagree at the margin.
        caution = "; the interval includes 0, so the difference is borderline" if low <= 0 <= high else ""
        return f"{better} is better than {worse} by {100 * abs(difference):.2f} points ({numbers}{caution})."
    return (
        f"No significant difference: B − A = {100 * difference:+.2f} points ({numbers}); "
        "more seeds or test images are needed to tell them apart."
    )


def compare_runs(
    folder_a: str | Path, folder_b: str | Path, seed: int = 0, trusted_modules: Sequence[str] = ()
) -> dict[str, Any]:
    """Compares two runs' test predictions image by image.

    Args:
        folder_a: Run A: a run folder or an ``fmnist-evaluate`` folder, with a ``predictions.npz``.
        seed: The bootstrap's seed.

    Returns:
        A JSON-ready dict: ``a`` and ``b`` (folder, accuracy, its Wilson interval), ``images``,
        ``difference`` (``acc_b − acc_a``, a fraction) with ``ci95`` (paired bootstrap),
        ``mcnemar_p`` with ``only_a`` and ``only_b`` (images only that run gets right),
        ``per_class`` and ``verdict``.

    Raises:
        RunError: A folder has no predictions, or the test sets differ.
        DamagedFileError: A predictions file is damaged.
    """
    a, b = _read_pair(folder_a, folder_b, trusted_modules)
    correct_a, correct_b = a.correct, b.correct
    low, high = paired_bootstrap(correct_a, correct_b, seed)
    p_value, only_a, only_b = mcnemar_exact(correct_a, correct_b)
    difference = float(correct_b.mean() - correct_a.mean())
    return {
        **_runs((str(folder_a), str(folder_b)), correct_a, correct_b),
        "images": len(a.label),
        "difference": difference,
        "ci95": [low, high],
        "bootstrap": f"paired percentile bootstrap over test images, {seed=}",
        "mcnemar_p": p_value,
        "only_a": only_a,
        "only_b": only_b,
        "per_class": _per_class(a, correct_a, correct_b),
        "verdict": verdict(difference, low, high, p_value),
    }


def _read_pair(
    folder_a: str | Path, folder_b: str | Path, trusted_modules: Sequence[str]
) -> tuple[SavedPredictions, SavedPredictions]:
    """Both folders' predictions, once their runs' test sets and test images are checked to be the same."""
    names = (str(folder_a), str(folder_b))
    check_same_test_set(run_config_of(folder_a, trusted_modules), run_config_of(folder_b, trusted_modules), names)
    a, b = read_predictions(folder_a), read_predictions(folder_b)
    _check_same_images(a, b)
    return a, b


def _runs(names: tuple[str, str], correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, dict[str, Any]]:
    """``{"a": ..., "b": ...}``: folder, accuracy, 95 % Wilson interval, from bool ``(N,)`` correctness."""
    return {
        key: {
            "folder": name,
            "accuracy": float(correct.mean()),
            "ci95": list(wilson_interval(int(correct.sum()), len(correct))),
        }
        for key, name, correct in (("a", names[0], correct_a), ("b", names[1], correct_b))
    }


def _per_class(a: SavedPredictions, correct_a: np.ndarray, correct_b: np.ndarray) -> list[dict[str, Any]]:
    """One entry per class: its images, both accuracies and their difference, its McNemar test."""
    per_class = []
    for label, name in enumerate(a.class_names):
        members = a.label == label
        class_p, class_a, class_b = mcnemar_exact(correct_a[members], correct_b[members])
        per_class.append(
            {
                "label": label,
                "name": name,
                "images": int(members.sum()),
                "acc_a": float(correct_a[members].mean()),
                "acc_b": float(correct_b[members].mean()),
                "difference": float(correct_b[members].mean() - correct_a[members].mean()),
                "only_a": class_a,
                "only_b": class_b,
                "mcnemar_p": class_p,
            }
        )
    return per_class


def comparison_markdown(result: dict[str, Any]) -> str:
    """``compare_runs``'s result as Markdown: the verdict, both runs, the per-class table."""
    a, b = result["a"], result["b"]
    lines = [
        "# A against B",
        "",
        f"**{result['verdict']}**",
        "",
        "| run | folder | test accuracy (%) | 95 % Wilson interval (%) |",
        "|---|---|---:|---|",
    ]
    lines += [
        f"| {key.upper()} | {run['folder']} | {100 * run['accuracy']:.2f} "
        f"| {100 * run['ci95'][0]:.2f}–{100 * run['ci95'][1]:.2f} |"
        for key, run in (("a", a), ("b", b))
    ]
    lines += [
        "",
        f"On the same {result['images']:,} test images: B − A = {100 * result['difference']:+.2f} points, 95 % CI "
        f"[{100 * result['ci95'][0]:+.2f}, {100 * result['ci95'][1]:+.2f}] ({result['bootstrap']}). Only A is right on "
        f"{result['only_a']} images, only B on {result['only_b']}: McNemar's exact p = {result['mcnemar_p']:.2g}.",
        "",
        "## Per class",
        "",
        "| label | class | A (%) | B (%) | B − A (points) | only A | only B | McNemar p |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {c['label']} | {c['name']} | {100 * c['acc_a']:.2f} | {100 * c['acc_b']:.2f} "
        f"| {100 * c['difference']:+.2f} | {c['only_a']} | {c['only_b']} | {c['mcnemar_p']:.2g} |"
        for c in result["per_class"]
    ]
    return "\n".join(lines) + "\n"
