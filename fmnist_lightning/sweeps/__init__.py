"""Sweep summaries: every job of a Hydra multirun in one table, ranked over seeds, with a plot."""

from fmnist_lightning.sweeps.callback import SweepSummary
from fmnist_lightning.sweeps.jobs import read_sweep
from fmnist_lightning.sweeps.summary import summarize

__all__ = ["SweepSummary", "read_sweep", "summarize"]
