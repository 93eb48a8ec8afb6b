"""What a run's loggers get besides the per-epoch scalars: the test report and the
hyperparameters, through Lightning's logger API only, so every logger gets what it supports."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from lightning.pytorch.loggers import Logger
from lightning.pytorch.loggers.logger import DummyLogger

from fmnist_lightning.evaluation.figures import figure_to_array, misclassified_figure
from fmnist_lightning.evaluation.report import report_images, report_markdown

#: The metrics an HParams session compares runs by, in the table's column order.
HPARAM_METRICS = ("test/acc", "val/acc_best", "test/loss")

#: TensorBoard's *Custom Scalars* charts: training and validation together, so that
#: overfitting shows in one chart, and the learning rate (LearningRateMonitor's ``lr-*``).
CURVES_LAYOUT = {
    "curves": {
        "loss: train and validation": ["Multiline", ["^train/loss$", "^val/loss$"]],
        "accuracy: train and validation": ["Multiline", ["^train/acc$", "^val/acc$"]],
        "learning rate": ["Multiline", ["^lr-"]],
    }
}


def code_block(text: str) -> str:
    """``text`` as a Markdown code block (indented four spaces), shown verbatim."""
    return "\n".join(f"    {line}" for line in text.splitlines())


def sprite(images: torch.Tensor) -> torch.Tensor:
    """Float ``(N, 1, S, S)`` images, each scaled to [0, 1], for the projector's sprite."""
    low = images.amin(dim=(1, 2, 3), keepdim=True)
    high = images.amax(dim=(1, 2, 3), keepdim=True)
    return (images - low) / (high - low).clamp_min(1e-8)


def recording(loggers: list[Logger]) -> list[Logger]:
    """The loggers but Lightning's ``DummyLogger`` (``fast_dev_run``'s), which keeps nothing."""
    return [logger for logger in loggers if not isinstance(logger, DummyLogger)]


def takes_images(loggers: list[Logger]) -> bool:
    """Whether one of ``loggers`` (``DummyLogger`` aside) has ``log_image``: figures are drawn only for those."""
    return any(hasattr(logger, "log_image") for logger in recording(loggers))


def log_run_start(loggers: list[Logger], config_yaml: str, command: str) -> None:
    """Gives loggers with ``log_markdown`` the ``config`` and ``command``, with ``log_layout`` ``CURVES_LAYOUT``."""
    for logger in recording(loggers):
        if hasattr(logger, "log_markdown"):
            logger.log_markdown("config", code_block(config_yaml))
            logger.log_markdown("command", code_block(command))
        if hasattr(logger, "log_layout"):
            logger.log_layout(CURVES_LAYOUT)


def log_test_summaries(
    loggers: list[Logger],
    report: dict[str, Any],
    predictions: Any,
    step: int,
    images: dict[str, np.ndarray] | None = None,
) -> None:
    """Adds the test report (``classification_report``) to the loggers, each as far as it can take it.

    Every logger gets scalars (fractions): ``test/per_class/<metric>/<class>``, the Wilson interval
    ``test/acc_ci95_low|high``, ``test/calibration/<nll|brier|ece|mce>`` (``_scaled`` after temperature
    scaling), ``test/calibration/temperature``, the selective classification's ``test/aurc``,
    ``test/eaurc`` and ``test/risk_at_<80|95>_coverage``, and the conformal sets'
    ``test/conformal/coverage_<method>_<target>`` and ``test/conformal/set_size_<method>_<target>``
    (target: 1 − α in %, e.g. ``test/conformal/coverage_aps_90``). Loggers with ``log_image`` get
    ``test/confusion_matrix``, ``test/reliability``, ``test/risk_coverage`` and ``test/misclassified``
    (each report figure when its section is there), and ``test/<name>`` for every other figure of
    ``images`` (the ``TestReport``'s Grad-CAM ``misclassified_gradcam`` and ``confused_pairs_gradcam``,
    when it made them); with ``log_markdown``, ``report``; with
    ``log_pr_curves``, ``test/pr``; with ``log_embedding`` (when ``predictions`` has features), the
    projector's ``test/features``.

    Args:
        predictions: A ``fmnist_lightning.evaluation.test_report.Predictions``.
        images: The report's figures from ``report_images`` (drawn here when ``None``), with any others
            to log as ``test/<name>``: uint8 RGB ``(H, W, 3)`` by name.
    """
    scalars = _per_class_scalars(report) | report_scalars(report)
    loggers = recording(loggers)
    logged = _figures(loggers, report, predictions, images)
    for logger in loggers:
        _log_test_summaries_to(logger, scalars, logged, report, predictions, step)


def _per_class_scalars(report: dict[str, Any]) -> dict[str, float]:
    """The report's per-class precision, recall and F1 scalars (a ``/`` in a class name becomes ``_``)."""
    return {
        f"test/per_class/{metric}/{c['name'].replace('/', '_')}": c[metric]
        for c in report["per_class"]
        for metric in ("precision", "recall", "f1")
    }


def _figures(
    loggers: list[Logger], report: dict[str, Any], p: Any, images: dict[str, np.ndarray] | None
) -> dict[str, np.ndarray] | None:
    """The figures as uint8 RGB ``(H, W, 3)`` arrays by key, or ``None`` when no logger has ``log_image``."""
    if not takes_images(loggers):
        return None
    drawn = images if images is not None else report_images(report)
    misclassified = misclassified_figure(
        p.misclassified, p.misclassified_targets, p.misclassified_preds, report["class_names"]
    )
    logged = {f"test/{name}": image for name, image in drawn.items()}
    logged["test/misclassified"] = figure_to_array(misclassified)
    return logged


def _log_test_summaries_to(
    logger: Logger,
    scalars: dict[str, float],
    logged: dict[str, np.ndarray] | None,
    report: dict[str, Any],
    p: Any,
    step: int,
) -> None:
    """Gives one logger what ``log_test_summaries`` describes, and saves it."""
    logger.log_metrics(scalars, step=step)
    if logged is not None and hasattr(logger, "log_image"):
        for key, image in logged.items():
            logger.log_image(key=key, images=[image], step=step)
    if hasattr(logger, "log_markdown"):
        logger.log_markdown("report", report_markdown(report), step)
    if hasattr(logger, "log_pr_curves"):
        logger.log_pr_curves("test/pr", p.logits.softmax(dim=1), p.targets, list(report["class_names"]), step)
    if p.features is not None and hasattr(logger, "log_embedding"):
        n, names = len(p.features), report["class_names"]
        labels = [[names[t], names[q]] for t, q in zip(p.targets[:n].tolist(), p.preds[:n].tolist(), strict=True)]
        logger.log_embedding(
            "test/features", p.features, labels, ["label", "predicted"], sprite(p.feature_images), step
        )
    logger.save()


def report_scalars(report: dict[str, Any]) -> dict[str, float]:
    """The report's interval, calibration, selective classification and conformal sets as logger scalars (see
    ``log_test_summaries``); a report without a section (an older ``report.json``) gives none of its."""
    scalars: dict[str, float] = {}
    if report.get("accuracy_ci95"):
        scalars["test/acc_ci95_low"], scalars["test/acc_ci95_high"] = report["accuracy_ci95"]
    calibration = report.get("calibration")
    if calibration:
        scalars |= {f"test/calibration/{k}": v for k, v in calibration["before"].items()}
        if calibration["after"] is not None:
            scalars |= {f"test/calibration/{k}_scaled": v for k, v in calibration["after"].items()}
            scalars["test/calibration/temperature"] = calibration["temperature"]
    selective = report.get("selective")
    if selective:
        scalars["test/aurc"], scalars["test/eaurc"] = selective["aurc"], selective["eaurc"]
        for coverage, risk in selective["risk_at_coverage"].items():
            scalars[f"test/risk_at_{round(100 * float(coverage))}_coverage"] = risk
    scalars |= _conformal_scalars(report.get("conformal"))
    return scalars


def _conformal_scalars(conformal: dict[str, Any] | None) -> dict[str, float]:
    """``test/conformal/coverage_<method>_<target>`` and ``test/conformal/set_size_<method>_<target>``, the
    target coverage 1 − α in % (``coverage_aps_90``); none without the section."""
    scalars: dict[str, float] = {}
    for method, by_alpha in (conformal or {}).get("methods", {}).items():
        for alpha, result in by_alpha.items():
            name = f"{method}_{100 * (1 - float(alpha)):g}"
            scalars[f"test/conformal/coverage_{name}"] = result["coverage"]
            scalars[f"test/conformal/set_size_{name}"] = result["mean_size"]
    return scalars


def log_hparams_session(loggers: list[Logger], hparams: dict[str, Any], metrics: dict[str, float]) -> None:
    """Gives loggers whose ``log_hyperparams`` takes ``metrics`` (TensorBoard's) the hyperparameters and metrics."""
    values = {k: metrics[k] for k in HPARAM_METRICS if k in metrics}
    for logger in recording(loggers):
        if "metrics" in inspect.signature(logger.log_hyperparams).parameters:
            logger.log_hyperparams(hparams, metrics=values)
            logger.save()


#: Command-line keys that are plumbing, not hyperparameters: left out of ``hparams_of``.
NOT_HPARAMS = (
    "hydra",
    "data.root",
    "data.local_copy",
    "data.download",
    "output_dir",
    "resume",
    "ckpt_path",
    "callbacks",
    "logger",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.limit_",
    "debug",
    "optimized_metric",
)


def hparams_of(resolved: dict[str, Any], overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The hyperparameters runs are compared by, flat name → scalar, for TensorBoard's HParams table.

    Capitalised so they sort first (the table shows five): ``Batch size``, ``Epochs``, ``LR``, ``Model``
    and ``Optimizer``; then ``model/<argument>``, ``weight_decay``, ``scheduler``, ``image_size``,
    ``augment/<name>/<argument>``, ``precision``, ``seed``, and every other key of ``overrides``.

    Args:
        resolved: The run's config, ``OmegaConf.to_container(cfg, resolve=True)``.
        overrides: The run's command-line overrides (``key=value``; Hydra's ``overrides.task``).
    """
    model, optimizer = resolved.get("model") or {}, resolved.get("optimizer") or {}
    data, trainer = resolved.get("data") or {}, resolved.get("trainer") or {}
    hparams: dict[str, Any] = {
        "Batch size": data.get("batch_size"),
        "Epochs": trainer.get("max_epochs"),
        "LR": optimizer.get("lr"),
        "Model": _short(model),
        "Optimizer": _short(optimizer),
    }
    hparams |= {f"model/{k}": v for k, v in model.items() if k not in ("_target_", "image_size")}
    hparams |= {
        "weight_decay": optimizer.get("weight_decay"),
        "scheduler": _short(resolved.get("scheduler")),
        "image_size": data.get("image_size"),
    }
    for name, augment in (data.get("augment") or {}).items():
        hparams |= {f"augment/{name}/{k}": v for k, v in (augment or {}).items() if k != "_target_"}
    hparams |= {"precision": trainer.get("precision"), "seed": resolved.get("seed")}
    hparams |= _overridden(resolved, overrides)
    return {name: _scalar(value) for name, value in hparams.items()}


def _short(node: Any) -> str:
    """The class name of a config node's ``_target_``, or ``"none"``."""
    return node["_target_"].rsplit(".", 1)[-1] if isinstance(node, dict) and "_target_" in node else "none"


def _scalar(value: Any) -> Any:
    """``value`` if a bool, int, float or str (what TensorBoard takes), else its ``str``."""
    return value if isinstance(value, (bool, int, float, str)) else str(value)


#: Command-line keys ``hparams_of`` covers by other names (``model.*`` and ``data.augment.*`` too).
_COVERED = {
    "data.batch_size",
    "trainer.max_epochs",
    "optimizer.lr",
    "optimizer.weight_decay",
    "data.image_size",
    "trainer.precision",
    "seed",
    "model",
    "optimizer",
    "scheduler",
}


def _overridden(resolved: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """The other overridden keys but ``NOT_HPARAMS``: resolved value, else the override's text."""
    hparams: dict[str, Any] = {}
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in _COVERED or key.startswith(("model.", "data.augment.")) or key.startswith(NOT_HPARAMS):
            continue
        value: Any = resolved
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        hparams[key] = value if value is not None or "=" not in override else override.split("=", 1)[1]
    return hparams
