"""fmnist-lightning's Hydra sweepers, where Hydra looks for plugins (the ``hydra_plugins``
namespace package): the continuable grid (``hydra/sweeper=grid``, the default of
``conf/train.yaml``) and the Optuna search (``hydra/sweeper=optuna``). Their code is in
``fmnist_lightning.sweeps``; a refusal ends the command in one ``error:`` line
(``fmnist_lightning.cli.hydra_hooks.exits_on_refusal``). Hydra accepts a sweeper only from a
class defined here."""

from fmnist_lightning.cli.hydra_hooks import exits_on_refusal
from fmnist_lightning.sweeps import grid, optuna_search


class GridSweeper(grid.GridSweeper):
    """``fmnist_lightning.sweeps.grid.GridSweeper``."""

    sweep = exits_on_refusal(grid.GridSweeper.sweep)


class OptunaSweeper(optuna_search.OptunaSweeper):
    """``fmnist_lightning.sweeps.optuna_search.OptunaSweeper``."""

    setup = exits_on_refusal(optuna_search.OptunaSweeper.setup)
    sweep = exits_on_refusal(optuna_search.OptunaSweeper.sweep)
