"""What a run's loggers get besides the per-epoch scalars: the test report and the
hyperparameters, through Lightning's logger API only, so every logger gets what it supports."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from lightning.pytorch.loggers import Logger

from fmnist_lightning.evaluation.figures import confusion_matrix_figure, figure_to_array, misclassified_figure

#: The metrics an HParams session compares runs by.
HPARAM_METRICS = ("val/acc_best", "test/acc", "test/loss")


def log_test_summaries(
    loggers: list[Logger],
    report: dict[str, Any],
    misclassified: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    step: int,
) -> None:
    """Adds the test report to the run's loggers.

    Args:
        loggers: The trainer's loggers.
        report: From ``classification_report``.
        misclassified: Misclassified images (``(K, 1, S, S)``), their true and predicted
            labels (int64 ``(K,)``), for the figure.
        step: The global step the summaries are logged at.

    Every logger gets the per-class test metrics as scalars
    (``test/per_class/<metric>/<class>``, fractions). Loggers with ``log_image(key, images,
    step)`` (TensorBoard, MLflow, W&B) also get the confusion-matrix figure
    (``test/confusion_matrix``) and a grid of misclassified images (``test/misclassified``).
    """
    per_class = {
        f"test/per_class/{metric}/{c['name'].replace('/', '_')}": c[metric]
        for c in report["per_class"]
        for metric in ("precision", "recall", "f1")
    }
    figures = {
        "test/confusion_matrix": confusion_matrix_figure(report["confusion_matrix"], report["class_names"]),
        "test/misclassified": misclassified_figure(*misclassified, report["class_names"]),
    }
    images = {key: figure_to_array(figure) for key, figure in figures.items()}
    for logger in loggers:
        logger.log_metrics(per_class, step=step)
        if hasattr(logger, "log_image"):
            for key, image in images.items():
                logger.log_image(key=key, images=[image], step=step)
        logger.save()


def log_hparams_session(loggers: list[Logger], hparams: dict[str, Any], metrics: dict[str, float]) -> None:
    """Gives loggers whose ``log_hyperparams`` takes ``metrics`` (TensorBoard's *HParams*)
    the run's hyperparameters against ``HPARAM_METRICS``."""
    values = {k: metrics[k] for k in HPARAM_METRICS if k in metrics}
    for logger in loggers:
        if "metrics" in inspect.signature(logger.log_hyperparams).parameters:
            logger.log_hyperparams(hparams, metrics=values)
            logger.save()


def hparams_of(resolved: dict[str, Any]) -> dict[str, Any]:
    """The run's hyperparameters as flat ``group/key`` → scalar, for the HParams dashboard.

    Args:
        resolved: The run's config as a resolved plain dict
            (``OmegaConf.to_container(cfg, resolve=True)``).

    Paths and Hydra plumbing (``_partial_``, folders) are left out.
    """
    skip = {"_partial_", "root", "local_copy", "default_root_dir"}
    container = {
        k: resolved[k] for k in ("seed", "data", "model", "optimizer", "scheduler", "trainer") if k in resolved
    }
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key not in skip:
                    walk(f"{prefix}/{key}" if prefix else key, item)
        elif isinstance(value, (bool, int, float, str)):
            flat[prefix] = value
        else:  # None, lists
            flat[prefix] = str(value)

    walk("", container)
    return flat
