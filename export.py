"""``python export.py ...`` from a clone: the same command as ``fmnist-export ...``
(fmnist_lightning/cli/export.py), with the same overrides."""

from fmnist_lightning.cli.export import main

if __name__ == "__main__":
    main()
