"""A finished run's accuracy under corruptions of the test images (``fmnist-robustness``), its corruption
errors against a reference run, and robustness.json / .md / .png."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.loggers import Logger

from fmnist_lightning.artifacts import atomic_file, read_json, write_atomically
from fmnist_lightning.data.corruptions import (
    SEVERITIES,
    Corruption,
    corrupted_test_set,
    select_corruptions,
    table_identity,
)
from fmnist_lightning.data.datamodule import IdxDataModule
from fmnist_lightning.errors import RunError, require
from fmnist_lightning.evaluation.figures import corruption_heatmap_figure, figure_to_array
from fmnist_lightning.evaluation.runs import TrainedModel, build_datamodule, load_trained

log = logging.getLogger(__name__)

#: The file names written into the output folder.
JSON, MARKDOWN, FIGURE = "robustness.json", "robustness.md", "robustness.png"


@torch.inference_mode()
def accuracy(model: TrainedModel, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """The fraction of ``images`` (uint8 ``(N, 1, 28, 28)``) whose largest logit of
    ``model.net(model.preprocess(x))`` is at the label (int64 ``(N,)``), in batches."""
    correct = 0
    for start in range(0, len(labels), batch_size):
        x = images[start : start + batch_size].to(model.device)
        correct += int((model.net(model.preprocess(x)).argmax(1).cpu() == labels[start : start + batch_size]).sum())
    return correct / len(labels)


def corruption_errors(
    errors: dict[str, dict[int, float]],
    reference: dict[str, dict[int, float]],
    clean_error: float | None = None,
    reference_clean_error: float | None = None,
) -> dict[str, Any]:
    """ImageNet-C's corruption errors of ``f`` against a reference (Hendrycks & Dietterich, ICLR 2019, §3):
    ``CE_c = Σ_s E_{s,c}(f) / Σ_s E_{s,c}(ref)``, ``mCE`` their mean, and with the clean errors
    ``relative CE_c = Σ_s (E_{s,c}(f) − E_clean(f)) / Σ_s (E_{s,c}(ref) − E_clean(ref))``.

    Args:
        errors: ``{corruption: {severity: error}}`` of ``f``, fractions; ``reference`` the same, a superset.
        clean_error: ``f``'s error on the clean images, or ``None`` to leave out the relative ones.

    Returns:
        ``{"ce", "mce"}`` and with the clean errors ``{"relative_ce", "relative_mce"}``: ratios (lower is
        better); ``None`` for a zero denominator, and a mean over a ``None`` is ``None``.
    """

    def ratio(top: float, bottom: float) -> float | None:
        return top / bottom if bottom != 0 else None

    def mean(values: list[float | None]) -> float | None:
        return None if None in values else sum(values) / len(values)

    ce = {c: ratio(sum(row.values()), sum(reference[c][s] for s in row)) for c, row in errors.items()}
    out: dict[str, Any] = {"ce": ce, "mce": mean(list(ce.values()))}
    if clean_error is not None and reference_clean_error is not None:
        relative = {
            c: ratio(
                sum(e - clean_error for e in row.values()), sum(reference[c][s] - reference_clean_error for s in row)
            )
            for c, row in errors.items()
        }
        out |= {"relative_ce": relative, "relative_mce": mean(list(relative.values()))}
    return out


def read_reference(reference: str | Path, identity: dict, severities: Sequence[int]) -> dict[str, Any]:
    """Another run's robustness.json (or its folder's), checked to match ``identity`` (``table_identity``)
    and to hold every corruption and severity asked for.

    Raises:
        RunError: No such file, or results made with another table, seed or dataset (named).
        DamagedFileError: The file is not readable JSON.
    """
    path = Path(reference)
    path = path / JSON if path.is_dir() else path
    if not path.is_file():
        raise RunError(f"reference={reference}: no {JSON} there; give an fmnist-robustness output folder or its {JSON}")
    saved = read_json(path, "Give another reference, or evaluate the reference run again with fmnist-robustness.")
    theirs = saved.get("identity")
    if not isinstance(theirs, dict) or not isinstance(saved.get("accuracy"), dict):
        raise RunError(f"reference={reference}: {path} is not an fmnist-robustness result (it has no identity)")
    differ = [key for key in ("test_md5s", "seed", "libraries") if theirs.get(key) != identity[key]] + [
        f"corruption {name}"
        for name, row in identity["corruptions"].items()
        if (theirs.get("corruptions") or {}).get(name) != row
        or any(str(s) not in saved["accuracy"].get(name, {}) for s in severities)
    ]
    if differ:
        raise RunError(
            f"reference={reference} is not comparable: it was made with another {', '.join(differ)} "
            f"(theirs: {json.dumps({k: theirs.get(k) for k in ('test_md5s', 'seed', 'libraries')})}); "
            "evaluate the reference run again with the same corruptions, severities and seed"
        )
    return saved


def evaluate_robustness(
    run_dir: str | Path,
    output_dir: str | Path,
    weights: str = "best",
    data_root: str | None = None,
    device: str = "auto",
    corruptions: str | Sequence[str] = "all",
    severities: Sequence[int] = SEVERITIES,
    seed: int = 0,
    batch_size: int = 1000,
    reference: str | Path | None = None,
    cache_dir: str | Path | None = None,
    loggers: Sequence[Logger] = (),
    trusted_modules: Sequence[str] = (),
) -> dict[str, Any]:
    """A run's test accuracy, clean and under each corruption and severity, into ``output_dir``
    and ``loggers`` (``write_results``); arguments and reference are checked before any image is made.

    Args:
        weights: ``"best"``, ``"last"``, ``"net.pt"`` or a file (``runs.resolve_weights``).
        data_root: Overrides the run's ``data.root``.
        corruptions: ``"all"`` or names from ``fmnist_lightning.data.corruptions.CORRUPTIONS``.
        severities: Which of 1–5.
        reference: Another run's output folder or robustness.json, for the corruption errors (mCE).
        cache_dir: The corrupted test sets' folder; ``None``: ``<data root>/corrupted``.
        trusted_modules: Modules of one's own the run's config may name.

    Returns:
        robustness.json's contents: accuracies as fractions (``accuracy[c][str(s)]``), their mean and
        error, ``reference`` (``corruption_errors`` or ``None``), ``identity`` and ``seconds``.

    Raises:
        ArgumentError: An unknown corruption, a severity outside 1–5, ``batch_size`` < 1 or ``seed`` < 0.
        RunError: No such run or weights, or a reference that is missing or not comparable.
        DatasetError: The test files are missing or corrupt.
        OSError: The cache or output folder cannot be written.
    """
    chosen, levels = select_corruptions(corruptions, severities)
    require(isinstance(batch_size, int) and batch_size >= 1, "batch_size", batch_size, "an integer >= 1")
    require(isinstance(seed, int) and seed >= 0, "seed", seed, "an integer >= 0")
    model = load_trained(run_dir, weights, device, trusted_modules)
    datamodule = build_datamodule(model.config, data_root)
    identity = table_identity(chosen, seed, datamodule.dataset.test_checksums)
    saved_reference = read_reference(reference, identity, levels) if reference is not None else None
    clean, table, seconds = _measure(model, datamodule, chosen, levels, seed, cache_dir, batch_size)
    result = {"run_dir": str(run_dir), "weights": str(model.weights), "dataset": datamodule.dataset.name}
    result |= {"severities": levels, **_accuracies(clean, table, levels)}
    result |= {"reference": _reference_errors(clean, table, levels, saved_reference, reference), "identity": identity}
    result["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    write_results(result, Path(output_dir), table, loggers)
    return result


def _measure(
    model: TrainedModel,
    datamodule: IdxDataModule,
    chosen: Sequence[Corruption],
    levels: Sequence[int],
    seed: int,
    cache_dir: str | Path | None,
    batch_size: int,
) -> tuple[float, dict[str, dict[int, float]], dict[str, float]]:
    """(clean accuracy, ``{corruption: {severity: accuracy}}``, seconds making and evaluating images)."""
    datamodule.prepare_data()
    datamodule.setup("test")
    images, labels = (t.cpu() for t in datamodule.data_test.tensors)
    cache = Path(cache_dir) if cache_dir is not None else datamodule.root / "corrupted"
    md5s = datamodule.dataset.test_checksums
    seconds = {"generate": 0.0, "evaluate": 0.0}
    started = time.perf_counter()
    clean = accuracy(model, images, labels, batch_size)
    seconds["evaluate"] += time.perf_counter() - started
    table: dict[str, dict[int, float]] = {}
    for corruption in chosen:
        started = time.perf_counter()
        corrupted = corrupted_test_set(images, corruption, seed, md5s, cache)
        seconds["generate"] += time.perf_counter() - started
        started = time.perf_counter()
        table[corruption.name] = {s: accuracy(model, corrupted[s - 1], labels, batch_size) for s in levels}
        seconds["evaluate"] += time.perf_counter() - started
    return clean, table, seconds


def _accuracies(clean: float, table: dict[str, dict[int, float]], levels: Sequence[int]) -> dict[str, Any]:
    """robustness.json's accuracies: clean, per corruption and severity, their mean and its error."""
    mean_acc = sum(a for row in table.values() for a in row.values()) / (len(table) * len(levels))
    return {
        "clean_accuracy": clean,
        "accuracy": {c: {str(s): a for s, a in row.items()} for c, row in table.items()},
        "mean_corruption_accuracy": mean_acc,
        "mean_corruption_error": 1 - mean_acc,
    }


def _reference_errors(
    clean: float,
    table: dict[str, dict[int, float]],
    levels: Sequence[int],
    saved_reference: dict[str, Any] | None,
    reference: str | Path | None,
) -> dict[str, Any] | None:
    """``corruption_errors`` against the saved reference, with its ``path``; ``None`` without one."""
    if saved_reference is None:
        return None
    theirs = {c: {s: 1 - saved_reference["accuracy"][c][str(s)] for s in levels} for c in table}
    return corruption_errors(
        {c: {s: 1 - a for s, a in row.items()} for c, row in table.items()},
        theirs,
        1 - clean,
        1 - saved_reference["clean_accuracy"],
    ) | {"path": str(reference)}


def markdown(result: dict[str, Any]) -> str:
    """robustness.md: accuracies (corruption × severity, in %), means, and any reference's corruption errors."""
    levels = result["severities"]
    ref = result["reference"]
    lines = [
        f"# Robustness to corruptions: {result['run_dir']}",
        "",
        f"Weights {result['weights']}; {result['dataset']} test set; seed {result['identity']['seed']}.",
        "",
        f"- clean accuracy: {100 * result['clean_accuracy']:.2f} %",
        f"- mean corruption accuracy: {100 * result['mean_corruption_accuracy']:.2f} % "
        f"(error {100 * result['mean_corruption_error']:.2f} %)",
    ]
    if ref:
        fmt = lambda v: "n/a" if v is None else f"{100 * v:.1f} %"  # noqa: E731
        lines += [f"- mCE against {ref['path']}: {fmt(ref['mce'])}", f"- relative mCE: {fmt(ref.get('relative_mce'))}"]
    header = ["corruption", *(f"severity {s}" for s in levels), "mean"] + (["CE", "relative CE"] if ref else [])
    lines += ["", "Accuracy in %:", "", "| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    for name, row in result["accuracy"].items():
        cells = [f"{100 * row[str(s)]:.2f}" for s in levels] + [f"{100 * sum(row.values()) / len(row):.2f}"]
        if ref:
            cells += ["n/a" if ref[k][name] is None else f"{100 * ref[k][name]:.1f} %" for k in ("ce", "relative_ce")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(
    result: dict[str, Any], folder: Path, table: dict[str, dict[int, float]], loggers: Sequence[Logger]
) -> None:
    """Writes robustness.json, .md and .png atomically into ``folder``; ``loggers`` get the accuracies
    (fractions) as ``robustness/...`` scalars and, where they have ``log_image``, the heat map."""
    folder.mkdir(parents=True, exist_ok=True)
    write_atomically(folder / JSON, json.dumps(result, indent=2) + "\n")
    write_atomically(folder / MARKDOWN, markdown(result))
    figure = corruption_heatmap_figure(table, result["clean_accuracy"], result["mean_corruption_accuracy"])
    with atomic_file(folder / FIGURE) as file:
        figure.savefig(file, format="png", dpi=110)
    image = figure_to_array(figure) if any(hasattr(logger, "log_image") for logger in loggers) else None
    scalars = {f"robustness/{c}/{s}": a for c, row in table.items() for s, a in row.items()}
    scalars |= {"robustness/clean_acc": result["clean_accuracy"]}
    scalars |= {"robustness/mean_corruption_acc": result["mean_corruption_accuracy"]}
    if result["reference"] and result["reference"]["mce"] is not None:
        scalars["robustness/mce"] = result["reference"]["mce"]
    for logger in loggers:
        logger.log_metrics(scalars, step=0)
        if image is not None and hasattr(logger, "log_image"):
            logger.log_image(key="robustness/heatmap", images=[image], step=0)
        logger.save()
