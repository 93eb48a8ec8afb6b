# The configs as the package fmnist_lightning.conf: pyproject.toml maps it to this folder, so
# the wheel carries these files and Hydra composes from them as pkg://fmnist_lightning.conf.
