"""Lightning's loggers, each with what the run's report needs (``conf/logger/``).

Everything a run reports goes through Lightning's logger API (``log_metrics``,
``log_hyperparams``, ``WandbLogger``'s ``log_image(key, images, step)``), plus
``log_markdown(key, text, step)`` and TensorBoard's ``log_pr_curves`` and ``log_layout``; a
logger gets each only if it has the method (``evaluation.summaries``), so CSV gets the scalars
and hyperparameters. ``EpochHistory``, which every training run has, keeps ``history.csv``.
"""

from __future__ import annotations

import csv
import io
import math
from argparse import Namespace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.logger import _convert_params, _flatten_dict
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers import MLFlowLogger as LightningMLFlowLogger
from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoardLogger
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import Logger, rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

from fmnist_lightning.artifacts import write_atomically
from fmnist_lightning.run_folder import RunFolder


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` is continued under its header."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = next(csv.reader(file), [])


class CSVLogger(LightningCSVLogger):
    """``lightning.pytorch.loggers.CSVLogger`` that appends to an existing
    ``metrics.csv`` (``resume=<run folder>``) instead of deleting it. Same arguments."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class TensorBoardLogger(LightningTensorBoardLogger):
    """``lightning.pytorch.loggers.TensorBoardLogger`` with the calls the run's report uses.
    ``log_hyperparams(params, metrics)`` writes the *HParams* session over the scalars already
    logged (Lightning's would log each metric again at step 0); ``log_metrics`` leaves out
    Lightning's ``epoch`` scalar.

    Args:
        projector_images: How many test images the *Projector* shows; 0 turns it off.
        *args, **kwargs: Those of Lightning's ``TensorBoardLogger``.
    """

    def __init__(self, *args: Any, projector_images: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.projector_images = projector_images

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        super().log_metrics({key: value for key, value in metrics.items() if key != "epoch"}, step)

    @rank_zero_only
    def log_markdown(self, key: str, text: str, step: int | None = None) -> None:
        """Adds Markdown ``text`` under ``key``."""
        self.experiment.add_text(key, text, step)

    @rank_zero_only
    def log_pr_curves(
        self, key: str, probs: torch.Tensor, targets: torch.Tensor, class_names: list[str], step: int | None = None
    ) -> None:
        """Adds ``key/<class>``: class ``c``'s curve from float ``(N, C)`` probabilities and
        int64 ``(N,)`` labels (class ``c`` against the rest)."""
        for c, name in enumerate(class_names):
            self.experiment.add_pr_curve(f"{key}/{name.replace('/', '_')}", targets == c, probs[:, c], step)

    @rank_zero_only
    def log_embedding(
        self,
        key: str,
        features: torch.Tensor,
        labels: list[list[str]],
        header: list[str],
        images: torch.Tensor,
        step: int | None = None,
    ) -> None:
        """Adds the points of ``key`` to the *Projector*: float ``(N, D)`` features, one row
        of ``labels`` per point (columns named by ``header``) and float ``(N, 1, H, W)``
        images in [0, 1] for the sprite."""
        self.experiment.add_embedding(
            features, metadata=labels, metadata_header=header, label_img=images, global_step=step, tag=key
        )

    @rank_zero_only
    def log_layout(self, layout: dict[str, dict[str, list]]) -> None:
        """Sets the *Custom Scalars* layout: ``{category: {chart: ["Multiline", [tag regexes]]}}``."""
        self.experiment.add_custom_scalars(layout)

    @rank_zero_only
    def log_image(self, key: str, images: list[np.ndarray], step: int | None = None, **kwargs: Any) -> None:
        """Adds uint8 ``(H, W, 3)`` images under ``key`` (``key/1``, ... if several)."""
        for i, image in enumerate(images):
            self.experiment.add_image(key if i == 0 else f"{key}/{i}", image, step, dataformats="HWC")

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, metrics: dict[str, float] | None = None) -> None:
        if not metrics:
            super().log_hyperparams(params)
            return
        from torch.utils.tensorboard.summary import hparams

        writer = self.experiment._get_file_writer()
        for summary in hparams(self._sanitize_params(_flatten_dict(_convert_params(params))), metrics):
            writer.add_summary(summary)


class MLFlowLogger(LightningMLFlowLogger):
    """``lightning.pytorch.loggers.MLFlowLogger`` with ``log_image`` (the artifact ``<key>.png``)
    and ``log_markdown`` (``<key>.md``)."""

    @rank_zero_only
    def log_image(self, key: str, images: list[np.ndarray], step: int | None = None, **kwargs: Any) -> None:
        for i, image in enumerate(images):
            self.experiment.log_image(self.run_id, image, artifact_file=f"{key}{'' if i == 0 else f'_{i}'}.png")

    @rank_zero_only
    def log_markdown(self, key: str, text: str, step: int | None = None) -> None:
        """Saves ``text`` as the run's artifact ``<key>.md``."""
        self.experiment.log_text(self.run_id, text, artifact_file=f"{key}.md")


def end_runs(loggers: list[Any]) -> None:
    """Ends the logging run a logger's library keeps open for the process (only W&B's
    ``wandb.run``, which ``WandbLogger.finalize`` leaves open), so that the next run in the
    same process (a sweep's next job, a notebook's next ``train``) gets its own."""
    for logger in loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger._experiment.finish()


#: Prefixes of the metrics kept in the history.
HISTORY_PREFIXES = ("train/", "val/")


class EpochHistory(Logger):
    """Writes ``<run_dir>/history.csv`` (rank 0 only), atomically after every epoch and
    continued by a resume: a column ``epoch`` (from 1) and one per ``train/*``/``val/*`` metric."""

    def __init__(self, run_dir: str | Path) -> None:
        super().__init__()
        self.path = RunFolder(run_dir).history_file
        self._rows: dict[int, dict[str, float]] = {}
        for key, series in RunFolder(run_dir).read_history().items():  # a resumed run continues the file
            for epoch, value in series.items():
                self._rows.setdefault(epoch, {})[key] = value

    name, version = "history", ""  # Lightning's abstract Logger properties

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        """Hyperparameters are not part of the history."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Keeps the epoch-level values: those Lightning logs with ``epoch`` (from 0)."""
        values = {k: float(v) for k, v in metrics.items() if k.startswith(HISTORY_PREFIXES) and math.isfinite(float(v))}
        if "epoch" not in metrics or not values:
            return
        self._rows.setdefault(int(metrics["epoch"]) + 1, {}).update(values)
        columns = sorted({key for row in self._rows.values() for key in row})
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, ["epoch", *columns])
        writer.writeheader()
        for epoch in sorted(self._rows):
            writer.writerow({"epoch": epoch, **self._rows[epoch]})
        write_atomically(self.path, text.getvalue())
