"""A CSV logger that a resumed run can continue."""

from __future__ import annotations

import csv

from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


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
    """:class:`lightning.pytorch.loggers.CSVLogger` that appends to an existing
    ``metrics.csv`` (``resume=<run folder>``) instead of deleting it. Same arguments."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
