"""``python summarize.py ...`` from a clone: the same command as ``fmnist-summarize ...``
(fmnist_lightning/cli/summarize.py), with the same overrides and the same outputs/ folder."""

from fmnist_lightning.cli.summarize import main

if __name__ == "__main__":
    main()
