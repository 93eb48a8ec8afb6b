"""``python serve.py ...`` from a clone: the same command as ``fmnist-serve ...``
(fmnist_lightning/cli/serve.py), with the same overrides."""

from fmnist_lightning.cli.serve import main

if __name__ == "__main__":
    main()
