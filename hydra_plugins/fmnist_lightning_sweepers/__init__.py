"""fmnist-lightning's Hydra sweepers (``hydra/sweeper=grid``, ``hydra/sweeper=optuna``), defined here
because Hydra accepts a sweeper only from the ``hydra_plugins`` namespace package; their code is in
``fmnist_lightning.sweeps``, and a refusal ends the command in one ``error:`` line."""

from fmnist_lightning.cli.hydra_hooks import exits_on_refusal
from fmnist_lightning.sweeps import grid, optuna_search


class GridSweeper(grid.GridSweeper):
    """``fmnist_lightning.sweeps.grid.GridSweeper``."""

    sweep = exits_on_refusal(grid.GridSweeper.sweep)


class OptunaSweeper(optuna_search.OptunaSweeper):
    """``fmnist_lightning.sweeps.optuna_search.OptunaSweeper``."""

    setup = exits_on_refusal(optuna_search.OptunaSweeper.setup)
    sweep = exits_on_refusal(optuna_search.OptunaSweeper.sweep)
