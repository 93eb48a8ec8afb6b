"""Out-of-distribution detection of a finished run (``fmnist-ood``): how well each score tells the
run's in-distribution test images from each out-of-distribution set (``ood_sets``), with
bootstrap intervals, into ood.json, ood.md, ood_roc.png and ood_scores.png.

The scores and the metrics come from pytorch-ood (``pytorch_ood.detector``, ``pytorch_ood.metrics``);
the intervals from ``scipy.stats.bootstrap``. Every score is an outlier score: higher means more
likely out of distribution.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.loggers import Logger

from fmnist_lightning.artifacts import atomic_file, write_atomically
from fmnist_lightning.errors import ArgumentError, require
from fmnist_lightning.evaluation.ensemble import EnsembleNet, load_runs
from fmnist_lightning.evaluation.features import NO_LINEAR, penultimate_features, penultimate_layer
from fmnist_lightning.evaluation.figures import figure_to_array, ood_roc_figure, ood_scores_figure
from fmnist_lightning.evaluation.ood_sets import OODContext
from fmnist_lightning.evaluation.runs import TrainedModel, build_datamodule

log = logging.getLogger(__name__)

#: The file names written into the output folder.
JSON, MARKDOWN, ROC_FIGURE, SCORES_FIGURE = "ood.json", "ood.md", "ood_roc.png", "ood_scores.png"

#: The scores, by name, and their sources.
SCORES = {
    "msp": "maximum softmax probability, with the run's temperature when it has one (Hendrycks & Gimpel, ICLR 2017)",
    "max_logit": "maximum logit (Hendrycks et al., ICML 2022)",
    "energy": "free energy −T·logsumexp(logits/T), T = 1 (Liu et al., NeurIPS 2020)",
    "mahalanobis": "Mahalanobis distance of the penultimate features to the closest class mean, with a "
    "covariance shared by the classes, fitted on the training split (Lee et al., NeurIPS 2018)",
}
#: The metrics, by key: fractions; higher is better except for ``fpr95``.
METRICS = ("auroc", "aupr_in", "aupr_out", "fpr95")


def separation(id_scores: np.ndarray, ood_scores: np.ndarray) -> np.ndarray:
    """float64 ``(4,)``: ``METRICS`` of outlier scores of in-distribution (``(N,)``) and
    out-of-distribution (``(M,)``) images, by pytorch-ood's metrics (``pytorch_ood.metrics``).

    AUROC: the probability that an OOD image scores higher than an ID image (ties count half).
    AUPR-IN and AUPR-OUT: the area under the precision–recall curve with the ID or the OOD images
    as the positive class. FPR95 as Liang et al. (ICLR 2018) and Liu et al. (NeurIPS 2020) give it:
    the fraction of OOD images taken for in-distribution at the threshold that keeps 95 % of the
    ID images (pytorch-ood's ``FPRAtTPR`` with the ID images as the positive class).

    Raises:
        ValueError: A score is NaN, or a side is empty.
    """
    from pytorch_ood.metrics import AUPR, AUROC, FPRAtTPR, MetricCollection

    scores = torch.from_numpy(np.concatenate([id_scores, ood_scores]))
    labels = torch.cat([torch.zeros(len(id_scores), dtype=torch.long), -torch.ones(len(ood_scores), dtype=torch.long)])
    areas = (
        MetricCollection([AUROC(), AUPR("id"), AUPR("ood")]).update(scores=scores, labels=labels).compute()
    )  # one sort
    fpr95 = FPRAtTPR(0.95).update(-scores, -1 - labels).compute()  # ID images as the positive class
    return np.array([areas["AUROC"], areas["AUPR-IN"], areas["AUPR-OUT"], fpr95["FPR95TPR"]])


def with_intervals(id_scores: np.ndarray, ood_scores: np.ndarray, resamples: int, seed: int) -> dict[str, Any]:
    """``separation`` with percentile bootstrap 95 % intervals: ``{metric: {"value", "ci95"}}``;
    ``ci95`` is ``None`` for ``resamples=0``. Each resample draws the ID and the OOD scores with
    replacement, each side on its own (``scipy.stats.bootstrap(..., paired=False)``)."""
    from scipy.stats import bootstrap

    values = separation(id_scores, ood_scores)
    if resamples == 0:
        return {m: {"value": float(v), "ci95": None} for m, v in zip(METRICS, values, strict=True)}
    threads = torch.get_num_threads()
    # One thread: each resample sorts a few thousand scores, too little to share, and a second
    # thread waiting for a busy core slows every resample down.
    torch.set_num_threads(1)
    try:
        result = bootstrap(
            (id_scores, ood_scores),
            separation,
            n_resamples=resamples,
            vectorized=False,
            paired=False,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    finally:
        torch.set_num_threads(threads)
    low, high = result.confidence_interval
    return {
        m: {"value": float(v), "ci95": [float(lo), float(hi)]}
        for m, v, lo, hi in zip(METRICS, values, low, high, strict=True)
    }


@torch.inference_mode()
def network_outputs(
    model: TrainedModel, images: torch.Tensor, batch_size: int, features: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The fp32 logits, float32 ``(N, C)``, of uint8 ``(N, 1, H, W)`` images through the run's
    preprocessing and network (no TTA), and with ``features`` their penultimate features
    (``features.penultimate_features``), float32 ``(N, D)``; both on the CPU."""
    logits = []
    with penultimate_features(model.net) if features else contextlib.nullcontext([]) as taken:
        for start in range(0, len(images), batch_size):
            x = model.preprocess(images[start : start + batch_size].to(model.device))
            logits.append(model.net(x).float().cpu())
    return torch.cat(logits), (torch.cat(taken) if features else None)


def outlier_scores(
    name: str, logits: torch.Tensor, features: torch.Tensor | None, temperature: float, detector: Any
) -> np.ndarray:
    """float64 ``(N,)`` outlier scores ``name`` (of ``SCORES``) of float32 ``(N, C)`` logits, computed
    in float64 (and of ``(N, D)`` features for ``mahalanobis``, with its fitted pytorch-ood ``detector``)."""
    from pytorch_ood.detector import EnergyBased, MaxLogit, MaxSoftmax

    logits = logits.double()  # in float32 the softmax of many confident images is exactly 1: ties
    if name == "msp":
        scores = MaxSoftmax.score(logits, t=temperature)
    elif name == "max_logit":
        scores = MaxLogit.score(logits)
    elif name == "energy":
        scores = EnergyBased.score(logits, t=1.0)
    else:
        scores = detector.predict_features(features)
    return scores.double().numpy()


def fit_mahalanobis(model: TrainedModel, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> Any:
    """pytorch-ood's ``Mahalanobis`` detector fitted on the penultimate features of uint8
    ``(N, 1, H, W)`` training images with int64 ``(N,)`` labels (every class present)."""
    from pytorch_ood.detector import Mahalanobis

    _, features = network_outputs(model, images, batch_size, features=True)
    return Mahalanobis(None).fit_features(features, labels)


def check_options(scores: Sequence[str], resamples: int, batch_size: int, seed: int, fit_images: int | None) -> None:
    """Refuses bad options before any image is read.

    Raises:
        ArgumentError: An unknown or repeated score, or a count out of range.
    """
    unknown = [s for s in scores if s not in SCORES]
    ok = isinstance(scores, list | tuple) and bool(scores) and not unknown and len(set(scores)) == len(scores)
    require(ok, "scores", list(scores), f"a non-empty list of distinct names from {', '.join(SCORES)}")
    require(isinstance(resamples, int) and resamples >= 0, "bootstrap_resamples", resamples, "an integer >= 0")
    require(isinstance(batch_size, int) and batch_size >= 1, "batch_size", batch_size, "an integer >= 1")
    require(isinstance(seed, int) and seed >= 0, "seed", seed, "an integer >= 0")
    ok = fit_images is None or (isinstance(fit_images, int) and fit_images >= 1)
    require(ok, "fit_images", fit_images, "null (the whole training split) or an integer >= 1")


def make_sets(makers: Mapping[str, Callable[[OODContext], dict[str, torch.Tensor]]], context: OODContext):
    """The images of every OOD set, ``{set name: uint8 (M, 1, H, W)}``, each checked to have the
    in-distribution images' channel and size (resizing would tell the sets apart by their size alone).

    Raises:
        ArgumentError: A set of another shape or dtype, or two sets of one name (named by their ``ood.<key>``).
    """
    sets: dict[str, torch.Tensor] = {}
    want = tuple(context.test_images.shape[1:])
    for key, make in makers.items():
        for name, images in make(context).items():
            shape = tuple(images.shape[1:])
            if images.dtype != torch.uint8 or images.ndim != 4 or shape != want:
                side = "×".join(map(str, shape[-2:]))
                raise ArgumentError(
                    f"ood.{key}",
                    name,
                    f"its images are {images.dtype} {side} with {shape[0] if shape else '?'} channel(s), the run's "
                    f"test images uint8 {want[-2]}×{want[-1]} with {want[0]}: out-of-distribution images must have "
                    "the in-distribution size, or the size alone gives them away; make them that size first",
                )
            require(name not in sets, f"ood.{key}", name, "a set name no other set of ood=[...] gives")
            sets[name] = images
    return sets


def evaluate_ood(
    run_dir: str | Path | Sequence[str | Path],
    output_dir: str | Path,
    sets: Mapping[str, Callable[[OODContext], dict[str, torch.Tensor]]],
    scores: Sequence[str] = tuple(SCORES),
    weights: str = "best",
    data_root: str | None = None,
    device: str = "auto",
    seed: int = 0,
    batch_size: int = 1000,
    fit_images: int | None = None,
    bootstrap_resamples: int = 200,
    cache_dir: str | Path | None = None,
    loggers: Sequence[Logger] = (),
    trusted_modules: Sequence[str] = (),
) -> dict[str, Any]:
    """A run's OOD detection: each score of ``scores`` on its test images and on each set of
    ``sets``, and ``METRICS`` with bootstrap intervals, into ``output_dir`` and ``loggers``.

    Args:
        run_dir: A run folder, or a list of them: their ensemble (``ensemble.load_ensemble``; the
            logit scores, on the mean probabilities, without a temperature).
        sets: ``{ood key: a set}`` (``ood_sets``), each returning ``{set name: uint8 images}``.
        weights: ``"best"``, ``"last"``, ``"net.pt"`` or a file (``runs.resolve_weights``).
        data_root: Overrides the run's ``data.root``.
        fit_images: How many of the training split's images (its first) fit ``mahalanobis``; ``None``: all.
        bootstrap_resamples: Resamples of each interval; 0 leaves them out.
        cache_dir: The corrupted test sets' folder; ``None``: ``<data root>/corrupted``.
        trusted_modules: Modules of one's own the run's config may name.

    Returns:
        ood.json's contents: ``results[set][score][metric]`` ``{"value", "ci95"}`` (fractions),
        the sets' sizes, the scores used and why any was left out (``notes``), and ``seconds``.

    Raises:
        ArgumentError: A bad option, or a set of another image size (before any network pass).
        RunError: No such run or weights. DatasetError: Missing or corrupt dataset files.
    """
    check_options(list(scores), bootstrap_resamples, batch_size, seed, fit_images)
    model, used_weights = load_runs(run_dir, weights, device, trusted_modules)
    started = time.perf_counter()
    datamodule, test_images, images = _images(model, sets, data_root, seed, cache_dir)
    seconds = {"sets": time.perf_counter() - started}
    used = list(scores)
    notes = _left_out(used, model.net)
    table, fit = _score_all(model, datamodule, test_images, images, used, batch_size, fit_images, seconds)
    result = {
        "run_dir": [str(r) for r in run_dir] if isinstance(run_dir, list | tuple) else str(run_dir),
        "weights": used_weights,
        "dataset": datamodule.dataset.name,
        "temperature": model.temperature,
        "scores": {s: SCORES[s] for s in used},
        "notes": notes,
        "in_distribution_images": len(test_images),
        "sets": {name: len(x) for name, x in images.items()},
        "mahalanobis_fit_images": fit,
        "seed": seed,
        "bootstrap_resamples": bootstrap_resamples,
    }
    started = time.perf_counter()
    result["results"] = _intervals(table, bootstrap_resamples, seed)
    seconds["bootstrap"] = time.perf_counter() - started
    result["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    write_results(result, Path(output_dir), table, loggers)
    return result


def _images(
    model: TrainedModel,
    sets: Mapping[str, Callable[[OODContext], dict[str, torch.Tensor]]],
    data_root: str | None,
    seed: int,
    cache_dir: str | Path | None,
) -> tuple[Any, torch.Tensor, dict[str, torch.Tensor]]:
    """The run's DataModule, its test images (uint8 ``(N, 1, H, W)``) and the OOD sets' (``make_sets``)."""
    datamodule = build_datamodule(model.config, data_root)
    datamodule.prepare_data()
    datamodule.setup("test")
    test_images = datamodule.data_test.tensors[0].cpu()
    cache = Path(cache_dir) if cache_dir is not None else datamodule.root / "corrupted"
    context = OODContext(test_images, datamodule.dataset.test_checksums, seed, cache)
    return datamodule, test_images, make_sets(sets, context)


def _intervals(
    table: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], resamples: int, seed: int
) -> dict[str, dict[str, dict[str, Any]]]:
    """``with_intervals`` of every set and score of ``table``, logged set by set."""
    results = {}
    for name, by_score in table.items():
        results[name] = {s: with_intervals(ids, oods, resamples, seed) for s, (ids, oods) in by_score.items()}
        log.info("%s: AUROC %s", name, {s: round(m["auroc"]["value"], 4) for s, m in results[name].items()})
    return results


def _left_out(used: list[str], net: torch.nn.Module) -> dict[str, str]:
    """Removes from ``used`` the scores that do not apply to ``net``; returns why, by score."""
    why = {}
    if isinstance(net, EnsembleNet):  # its "logits" are log mean probabilities
        why["max_logit"] = "left out: on an ensemble's mean probabilities it ranks the images as msp does"
        why["energy"] = "left out: on an ensemble's mean probabilities it is 0 for every image"
        why["mahalanobis"] = "left out: an ensemble's members have features of their own"
    elif penultimate_layer(net) is None:
        why["mahalanobis"] = f"left out: {NO_LINEAR}"
    removed = [score for score in used if score in why]
    for score in removed:
        used.remove(score)
    return {score: f"{why[score]} (docs/uncertainty.md)" for score in removed}


def _score_all(
    model: TrainedModel,
    datamodule: Any,
    test_images: torch.Tensor,
    images: dict[str, torch.Tensor],
    used: list[str],
    batch_size: int,
    fit_images: int | None,
    seconds: dict[str, float],
) -> tuple[dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], int | None]:
    """``{set: {score: (ID scores, OOD scores)}}`` and how many training images fitted Mahalanobis."""
    need_features = "mahalanobis" in used
    detector, fit = None, None
    if need_features:
        started = time.perf_counter()
        datamodule.setup("fit")
        train_images, train_labels = (t.cpu() for t in datamodule.data_train.tensors)
        train_images, train_labels = train_images[:fit_images], train_labels[:fit_images]
        detector, fit = fit_mahalanobis(model, train_images, train_labels, batch_size), len(train_labels)
        seconds["mahalanobis_fit"] = time.perf_counter() - started
    started = time.perf_counter()
    temperature = model.temperature or 1.0
    id_logits, id_features = network_outputs(model, test_images, batch_size, need_features)
    id_scores = {s: outlier_scores(s, id_logits, id_features, temperature, detector) for s in used}
    table = {}
    for name, ood in images.items():
        logits, features = network_outputs(model, ood, batch_size, need_features)
        table[name] = {s: (id_scores[s], outlier_scores(s, logits, features, temperature, detector)) for s in used}
    seconds["scores"] = time.perf_counter() - started
    return table, fit


def markdown(result: dict[str, Any]) -> str:
    """ood.md: the run, then one table per metric (sets × scores, in %, with 95 % intervals)."""
    scores = list(result["scores"])
    temperature = result["temperature"]
    lines = [
        f"# Out-of-distribution detection: {_runs(result['run_dir'])}",
        "",
        f"Weights {result['weights']}; in distribution: the {result['dataset']} test set "
        f"({result['in_distribution_images']} images); temperature "
        f"{'none' if temperature is None else f'{temperature:.4f}'} (msp); "
        f"{result['bootstrap_resamples']} bootstrap resamples per interval.",
        "",
        *(f"- {name}: {why}" for name, why in result["scores"].items()),
        *(f"- {name}: {note}" for name, note in result["notes"].items()),
    ]
    titles = {
        "auroc": "AUROC (higher is better)",
        "aupr_in": "AUPR-In",
        "aupr_out": "AUPR-Out",
        "fpr95": "FPR at 95 % TPR (lower is better)",
    }
    for metric in METRICS:
        lines += ["", f"## {titles[metric]}, %", "", "| set | images | " + " | ".join(scores) + " |"]
        lines.append("|---|---:|" + "---:|" * len(scores))
        for name, by_score in result["results"].items():
            cells = [_cell(by_score[s][metric]) for s in scores]
            lines.append(f"| {name} | {result['sets'][name]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _runs(run_dir: str | list[str]) -> str:
    """The run, or ``an ensemble of N runs: a, b, ...``."""
    return run_dir if isinstance(run_dir, str) else f"an ensemble of {len(run_dir)} runs: {', '.join(run_dir)}"


def _cell(entry: dict[str, Any]) -> str:
    """``91.2 (90.1–92.3)``: a metric in % with its interval."""
    value = f"{100 * entry['value']:.1f}"
    if entry["ci95"] is None:
        return value
    low, high = entry["ci95"]
    return f"{value} ({100 * low:.1f}–{100 * high:.1f})"


def write_results(
    result: dict[str, Any],
    folder: Path,
    table: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]],
    loggers: Sequence[Logger],
) -> None:
    """Writes ood.json, ood.md and the figures atomically into ``folder``; ``loggers`` get every
    metric as ``ood/<set>/<score>/<metric>`` scalars (fractions) and, where they have ``log_image``, the figures."""
    folder.mkdir(parents=True, exist_ok=True)
    write_atomically(folder / JSON, json.dumps(result, indent=2) + "\n")
    write_atomically(folder / MARKDOWN, markdown(result))
    aurocs = {name: {s: m["auroc"]["value"] for s, m in scores.items()} for name, scores in result["results"].items()}
    figures = {
        "ood/roc": (ROC_FIGURE, ood_roc_figure(table, aurocs)),
        "ood/scores": (SCORES_FIGURE, ood_scores_figure(table)),
    }
    for _, (file_name, figure) in figures.items():
        with atomic_file(folder / file_name) as file:
            figure.savefig(file, format="png", dpi=110)
    scalars = {
        f"ood/{name}/{score}/{metric}": entry["value"]
        for name, by_score in result["results"].items()
        for score, by_metric in by_score.items()
        for metric, entry in by_metric.items()
    }
    takes_images = any(hasattr(logger, "log_image") for logger in loggers)
    images = {key: figure_to_array(figure) for key, (_, figure) in figures.items()} if takes_images else {}
    for logger in loggers:
        logger.log_metrics(scalars, step=0)
        if hasattr(logger, "log_image"):
            for key, image in images.items():
                logger.log_image(key=key, images=[image], step=0)
        logger.save()
