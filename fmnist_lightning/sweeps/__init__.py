"""Sweeps: the continuable grid and Optuna sweepers, pruning, and the summary of every job of a
Hydra multirun, ranked over seeds and folds, with a plot."""

from fmnist_lightning.sweeps.jobs import read_sweep
from fmnist_lightning.sweeps.summary import summarize

__all__ = ["read_sweep", "summarize"]
