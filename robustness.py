"""``python robustness.py ...`` from a clone: the same command as ``fmnist-robustness ...``
(fmnist_lightning/cli/robustness.py), with the same overrides and the same outputs/ folder."""

from fmnist_lightning.cli.robustness import main

if __name__ == "__main__":
    main()
