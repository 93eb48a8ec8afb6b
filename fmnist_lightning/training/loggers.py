"""Lightning's loggers, each with what the run's report needs (``conf/logger/``).

Everything a run reports goes through Lightning's logger API: ``log_metrics``,
``log_hyperparams`` and ``log_image(key, images, step)``, which ``WandbLogger`` has and the
subclasses below add to TensorBoard and MLflow. They also add ``log_markdown(key, text, step)``
(the config, the command line and the test report as text), and TensorBoard adds
``log_pr_curves`` and ``log_layout`` (its custom-scalars charts). A logger gets each of these
only if it has the method (``fmnist_lightning.evaluation.summaries``): one that has none of them
(CSV) gets the scalars and hyperparameters. A new logger is one YAML in ``conf/logger/``.
"""

from __future__ import annotations

import csv
from argparse import Namespace
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.logger import _convert_params, _flatten_dict
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers import MLFlowLogger as LightningMLFlowLogger
from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoardLogger
from lightning.pytorch.loggers import WandbLogger
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
    """``lightning.pytorch.loggers.TensorBoardLogger`` with the calls the run's report uses.
    Same arguments.

    - ``log_image(key, images, step)``, as in ``WandbLogger``: images under *Images*.
    - ``log_markdown(key, text, step)``: Markdown under *Text*.
    - ``log_pr_curves(key, probs, targets, class_names, step)``: one precision–recall curve
      per class under *PR Curves*.
    - ``log_layout(layout)``: charts of several scalars each under *Custom Scalars*.
    - ``log_hyperparams(params, metrics)`` writes the *HParams* session with those metric
      tags, whose values are the scalars already logged under them (Lightning's version
      would log each metric again at step 0).
    - ``log_metrics`` leaves out Lightning's ``epoch`` scalar, which would otherwise be the
      first chart of *Time Series*; the epoch of every point is in ``history.csv``.
    - ``log_embedding(key, features, labels, header, images, step)``: points of the
      *Projector*, for the ``projector_images`` first test images (0: none).

    Args:
        projector_images: How many test images the *Projector* shows (``TestReport``
            collects their features); 0 turns it off.
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
    """``lightning.pytorch.loggers.MLFlowLogger`` with ``log_image(key, images, step)``,
    as in ``WandbLogger``: each image becomes the run's artifact ``<key>.png``; and
    ``log_markdown(key, text)``: the artifact ``<key>.md``. Same arguments."""

    @rank_zero_only
    def log_image(self, key: str, images: list[np.ndarray], step: int | None = None, **kwargs: Any) -> None:
        for i, image in enumerate(images):
            self.experiment.log_image(self.run_id, image, artifact_file=f"{key}{'' if i == 0 else f'_{i}'}.png")

    @rank_zero_only
    def log_markdown(self, key: str, text: str, step: int | None = None) -> None:
        """Saves ``text`` as the run's artifact ``<key>.md``."""
        self.experiment.log_text(self.run_id, text, artifact_file=f"{key}.md")


def end_runs(loggers: list[Any]) -> None:
    """Ends the logging run each logger's library keeps open for the whole process, so that
    the next run in the same process (the next job of a sweep, which Hydra's basic launcher
    runs in this process, or the next ``train(cfg)`` in a notebook) gets a run of its own
    instead of writing into this one. Only W&B keeps one (``wandb.run``, closed by
    ``wandb.finish`` or at the process's exit); Lightning's ``WandbLogger.finalize`` leaves it
    open. A logger that never started its run is left alone."""
    for logger in loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger._experiment.finish()
