"""Train a FashionMNIST CNN: ``python train.py model=three_conv trainer.max_epochs=10``.

Configs live in ``conf/``; see README.md for the groups, the recipes and sweeps (``-m``).
Continue an interrupted run with ``python train.py resume=outputs/runs/<run>``.
"""

import hydra
from omegaconf import DictConfig

from fmnist_lightning.checks import validate_config
from fmnist_lightning.errors import ConfigError, RunError
from fmnist_lightning.run_dirs import discard_resume_attempt, register_resolvers, run_command_line


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        validate_config(cfg)
    except ConfigError as err:
        discard_resume_attempt(cfg)
        raise SystemExit(f"error: {err}") from None
    # Imported only now: Lightning takes seconds to import, which a typo should not cost.
    from fmnist_lightning.data import DatasetError
    from fmnist_lightning.module import NonFiniteLossError
    from fmnist_lightning.pipeline import RunInterrupted, train

    try:
        metrics = train(cfg)
    except (ConfigError, RunError, DatasetError, NonFiniteLossError) as err:
        # Expected, user-fixable problems: the message says what and how, no traceback.
        raise SystemExit(f"error: {err}") from None
    except RunInterrupted as err:
        raise SystemExit(f"stopped: {err}") from None
    return metrics.get("val/acc_best")


if __name__ == "__main__":
    register_resolvers()
    run_command_line()  # refuses to overwrite an earlier run; rewrites resume=<run folder>
    main()
