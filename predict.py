"""``python predict.py ...`` from a clone: the same command as ``fmnist-predict ...``
(fmnist_lightning/cli/predict.py), with the same overrides and the same outputs/ folder."""

from fmnist_lightning.cli.predict import main

if __name__ == "__main__":
    main()
