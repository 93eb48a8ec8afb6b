"""``python evaluate.py ...`` from a clone: the same command as ``fmnist-evaluate ...``
(fmnist_lightning/cli/evaluate.py), with the same overrides and the same outputs/ folder."""

from fmnist_lightning.cli.evaluate import main

if __name__ == "__main__":
    main()
