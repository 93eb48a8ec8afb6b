"""``python train.py ...`` from a clone: the same command as ``fmnist-train ...``
(fmnist_lightning/cli/train.py), with the same overrides and the same outputs/ folder."""

from fmnist_lightning.cli.train import main

if __name__ == "__main__":
    main()
