"""The four commands: ``fmnist-train``, ``fmnist-evaluate``, ``fmnist-predict`` and
``fmnist-summarize`` (``[project.scripts]`` in pyproject.toml), also run from a clone as
``python train.py``, ``python evaluate.py``, ... Each composes its config from the package's
``fmnist_lightning.conf`` (the repository's ``conf/``) and writes under ``outputs/`` in the
working directory."""
