"""A run's own per-epoch history, ``history.csv``: what ``curves.png`` is drawn from.

``EpochHistory`` is a Lightning logger that every training run has, whatever loggers
``conf/logger/`` adds: it receives the metrics as Lightning logs them and keeps one row per
epoch of every ``train/*`` and ``val/*`` metric. The file is rewritten (atomically) whenever
an epoch's values arrive, so it is complete up to the last logged epoch after a crash, and a
resumed run continues it: the epochs it repeats are overwritten with their new values.
"""

from __future__ import annotations

import csv
import io
import math
from argparse import Namespace
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities import rank_zero_only

from fmnist_lightning.artifacts import write_atomically
from fmnist_lightning.run_folder import RunFolder

#: Prefixes of the metrics kept in the history.
HISTORY_PREFIXES = ("train/", "val/")


class EpochHistory(Logger):
    """Writes ``<run_dir>/history.csv``: a column ``epoch`` (from 1) and one per
    ``train/*``/``val/*`` metric, one row per epoch. Only rank 0 writes.

    Args:
        run_dir: The run folder.
    """

    def __init__(self, run_dir: str | Path) -> None:
        super().__init__()
        self.path = RunFolder(run_dir).history_file
        self._rows: dict[int, dict[str, float]] = {}
        for key, series in RunFolder(run_dir).read_history().items():  # a resumed run continues the file
            for epoch, value in series.items():
                self._rows.setdefault(epoch, {})[key] = value

    @property
    def name(self) -> str:
        return "history"

    @property
    def version(self) -> str:
        return ""

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        """Hyperparameters are not part of the history."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Keeps the epoch-level ``train/*``/``val/*`` values; Lightning adds ``epoch`` (from 0)
        to every metric it logs at the end of an epoch."""
        values = {k: float(v) for k, v in metrics.items() if k.startswith(HISTORY_PREFIXES) and math.isfinite(float(v))}
        if "epoch" not in metrics or not values:
            return
        self._rows.setdefault(int(metrics["epoch"]) + 1, {}).update(values)
        self._write()

    def _write(self) -> None:
        columns = sorted({key for row in self._rows.values() for key in row})
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, ["epoch", *columns])
        writer.writeheader()
        for epoch in sorted(self._rows):
            writer.writerow({"epoch": epoch, **self._rows[epoch]})
        write_atomically(self.path, text.getvalue())
