"""Train a FashionMNIST CNN: ``python train.py model=three_conv trainer.max_epochs=10``.

Configs live in ``conf/``; see README.md for the groups, the recipes and sweeps (``-m``).
"""

import hydra
from omegaconf import DictConfig

from fmnist_lightning.data import DatasetError
from fmnist_lightning.pipeline import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    try:
        train(cfg)
    except DatasetError as err:
        # An expected, user-fixable problem: the message says what and how, no traceback.
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
