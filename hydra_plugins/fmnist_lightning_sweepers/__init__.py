"""fmnist-lightning's Hydra sweepers, where Hydra looks for plugins (the ``hydra_plugins``
namespace package): the continuable grid (``hydra/sweeper=grid``, the default of
``conf/train.yaml``) and the Optuna search (``hydra/sweeper=optuna``). Their code is in
``fmnist_lightning.sweeps`` (refusals ending the command: ``fmnist_lightning.cli.hydra_hooks``);
Hydra accepts a sweeper only from a class defined here."""

from fmnist_lightning.cli import hydra_hooks


class GridSweeper(hydra_hooks.GridSweeper):
    """``fmnist_lightning.sweeps.grid.GridSweeper``."""


class OptunaSweeper(hydra_hooks.OptunaSweeper):
    """``fmnist_lightning.sweeps.optuna_search.OptunaSweeper``."""
