"""``python compare.py A B`` from a clone: the same command as ``fmnist-compare A B``
(fmnist_lightning/cli/compare.py)."""

from fmnist_lightning.cli.compare import main

if __name__ == "__main__":
    main()
