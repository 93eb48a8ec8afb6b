"""Evaluating a network on the test set: the report files, and their TensorBoard summaries.

Used at the end of every training run (:func:`fmnist_lightning.pipeline.train`) and by
``evaluate.py`` on a finished run (:func:`evaluate_run`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from torch import nn

from fmnist_lightning.data import FashionMNISTDataModule
from fmnist_lightning.reports import (
    classification_report,
    confusion_matrix_figure,
    curves_figure,
    misclassified_figure,
    read_history,
    write_report,
)
from fmnist_lightning.runs import build_datamodule, load_trained

log = logging.getLogger(__name__)


@dataclass
class Predictions:
    """A network's outputs on one split, in the split's order.

    Attributes:
        logits: float32 ``(N, 10)``, on the CPU.
        targets: int64 ``(N,)``.
        images: uint8 ``(N, 1, 28, 28)``, the images before preprocessing.
        loss: Mean cross-entropy over the N images.
    """

    logits: torch.Tensor
    targets: torch.Tensor
    images: torch.Tensor
    loss: float

    @property
    def preds(self) -> torch.Tensor:
        """Predicted labels, int64 ``(N,)``."""
        return self.logits.argmax(dim=1)


@torch.inference_mode()
def predict_test_set(
    net: nn.Module, datamodule: FashionMNISTDataModule, device: torch.device | str = "cpu", batch_size: int = 1000
) -> Predictions:
    """Runs ``net`` (in eval mode) over the whole official test set (10,000 images).

    The DataModule's own preprocessing is applied, so the figures match ``test/acc``.
    """
    datamodule.setup("test")
    images, targets = (t.cpu() for t in datamodule.data_test.tensors)
    was_training = net.training
    net.eval().to(device)
    logits = torch.cat(
        [
            net(datamodule.preprocess(images[i : i + batch_size].to(device))).float().cpu()
            for i in range(0, len(images), batch_size)
        ]
    )
    net.train(was_training)
    loss = torch.nn.functional.cross_entropy(logits, targets).item()
    return Predictions(logits=logits, targets=targets, images=images, loss=loss)


def report_test_set(
    net: nn.Module,
    datamodule: FashionMNISTDataModule,
    folder: Path,
    device: torch.device | str = "cpu",
    extra: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], Predictions]:
    """Writes ``report.json``, ``report.md`` and ``confusion_matrix.png`` for ``net`` on
    the test set into ``folder``.

    Args:
        extra: Entries added to the report, e.g. the weights file it was made with.

    Returns:
        The report (see :func:`fmnist_lightning.reports.classification_report`) and the
        predictions it was made from.
    """
    predictions = predict_test_set(net, datamodule, device)
    report = classification_report(predictions.preds, predictions.targets, loss=predictions.loss)
    report.update(extra or {})
    write_report(report, folder)
    log.info("Test report in %s: accuracy %.4f", folder, report["accuracy"])
    return report, predictions


def write_curves(run_dir: Path) -> bool:
    """Writes ``curves.png`` from the run's logged metrics; ``False`` when none were logged."""
    history = read_history(run_dir)
    if not history:
        return False
    curves_figure(history).savefig(run_dir / "curves.png", dpi=110)
    return True


def hparams_of(resolved: dict[str, Any]) -> dict[str, Any]:
    """The run's hyperparameters as flat ``group/key`` → scalar, for the HParams dashboard.

    Args:
        resolved: The run's config as a resolved plain dict
            (``OmegaConf.to_container(cfg, resolve=True)``).

    Paths and Hydra plumbing (``_partial_``, folders) are left out.
    """
    skip = {"_partial_", "root", "local_copy", "default_root_dir"}
    container = {k: resolved[k] for k in ("seed", "data", "model", "optimizer", "scheduler", "trainer") if k in resolved}
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


def log_test_summaries(
    loggers: list[Logger], report: dict[str, Any], predictions: Predictions, hparams: dict[str, Any],
    metrics: dict[str, float], step: int,
) -> None:
    """Adds the test report to the run's loggers.

    Every logger gets the per-class test metrics as scalars
    (``test/per_class/<metric>/<class>``). TensorBoard also gets the confusion-matrix figure
    (``test/confusion_matrix``), a grid of misclassified images (``test/misclassified``),
    and an HParams session: ``hparams`` against the metrics ``val/acc_best``, ``test/acc``
    and ``test/loss``, whose values are the scalars already logged under those tags.
    """
    per_class = {
        f"test/per_class/{metric}/{c['name'].replace('/', '_')}": c[metric]
        for c in report["per_class"]
        for metric in ("precision", "recall", "f1")
    }
    for logger in loggers:
        logger.log_metrics(per_class, step=step)
        if isinstance(logger, TensorBoardLogger):
            from torch.utils.tensorboard.summary import hparams as hparams_summary

            writer = logger.experiment
            writer.add_figure("test/confusion_matrix", confusion_matrix_figure(report["confusion_matrix"]), step)
            writer.add_figure(
                "test/misclassified", misclassified_figure(predictions.images, predictions.targets, predictions.preds), step
            )
            hp_metrics = {k: metrics[k] for k in ("val/acc_best", "test/acc", "test/loss") if k in metrics}
            for summary in hparams_summary(hparams, hp_metrics):
                writer._get_file_writer().add_summary(summary)
        logger.save()


def evaluate_run(
    run_dir: str | Path, output_dir: str | Path, weights: str = "best", data_root: str | None = None, device: str = "auto"
) -> dict[str, Any]:
    """Re-evaluates a finished run on the test set; the report goes into ``output_dir``.

    The network is rebuilt from the run's saved config and loaded on ``device`` (a run
    trained on a GPU evaluates on the CPU too).

    Args:
        run_dir: The run folder.
        output_dir: Where to write ``report.json``, ``report.md`` and ``confusion_matrix.png``.
        weights: ``"best"``, ``"last"``, ``"net.pt"`` or a path; see
            :func:`fmnist_lightning.runs.resolve_weights`.
        data_root: Overrides the run's ``data.root``.
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ...

    Returns:
        The report, with ``weights`` (the file used) added.

    Raises:
        fmnist_lightning.runs.RunError: No such run or weights, or weights that do not fit.
        fmnist_lightning.data.DatasetError: The test files are missing or corrupt.
    """
    model = load_trained(run_dir, weights, device)
    datamodule = build_datamodule(model.config, data_root)
    datamodule.prepare_data()
    report, _ = report_test_set(
        model.net, datamodule, Path(output_dir), model.device, extra={"weights": str(model.weights)}
    )
    return report
