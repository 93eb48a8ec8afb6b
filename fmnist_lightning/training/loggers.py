"""Lightning's loggers, each with what the run's report needs (``conf/logger/``).

Everything a run reports goes through Lightning's logger API: ``log_metrics``,
``log_hyperparams`` and ``log_image(key, images, step)``, which ``WandbLogger`` has and the
subclasses below add to TensorBoard and MLflow. A logger that lacks ``log_image`` (CSV) gets
the scalars and hyperparameters. A new logger is one YAML in ``conf/logger/``.
"""

from __future__ import annotations

import csv
from argparse import Namespace
from typing import Any

import numpy as np
from lightning.fabric.utilities.logger import _convert_params, _flatten_dict
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers import MLFlowLogger as LightningMLFlowLogger
from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` is continued.

    Lightning's writer deletes an existing ``metrics.csv`` when it starts, which would erase
    the first part of a resumed run's history. This one reads the existing header instead,
    so new rows are appended under the same columns (and the file is rewritten with a wider
    header if new keys appear, keeping every old row).
    """

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
    """``lightning.pytorch.loggers.TensorBoardLogger`` with the two calls the run's
    report uses, as other Lightning loggers have them. Same arguments.

    - ``log_image(key, images, step)``, as in ``WandbLogger``: images under *Images*.
    - ``log_hyperparams(params, metrics)`` writes the *HParams* session with those metric
      tags, whose values are the scalars already logged under them (Lightning's version
      would log each metric again at step 0).
    """

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
    """``lightning.pytorch.loggers.MLFlowLogger`` with ``log_image(key, images, step)``,
    as in ``WandbLogger``: each image becomes the run's artifact ``<key>.png``. Same
    arguments."""

    @rank_zero_only
    def log_image(self, key: str, images: list[np.ndarray], step: int | None = None, **kwargs: Any) -> None:
        for i, image in enumerate(images):
            self.experiment.log_image(self.run_id, image, artifact_file=f"{key}{'' if i == 0 else f'_{i}'}.png")
