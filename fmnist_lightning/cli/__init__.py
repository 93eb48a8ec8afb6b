"""The four commands: ``fmnist-train``, ``fmnist-evaluate``, ``fmnist-predict`` and
``fmnist-summarize`` (``[project.scripts]`` in pyproject.toml), also run from a clone as
``python train.py``, ``python evaluate.py``, ... Each composes its config from the package's
``fmnist_lightning.conf`` (the repository's ``conf/``) and writes under ``outputs/`` in the
working directory."""

from importlib.util import find_spec


def require_configs() -> None:
    """Stops with a clear message when the configs cannot be found, as when the repository is
    on ``PYTHONPATH`` but was never installed (the mapping of ``conf/`` to
    ``fmnist_lightning.conf`` is made by the install).

    Raises:
        SystemExit: ``fmnist_lightning.conf`` is not importable.
    """
    if find_spec("fmnist_lightning.conf") is None:
        raise SystemExit(
            "error: the configs (the package fmnist_lightning.conf, conf/ in a clone) are not installed; "
            "in a clone run `bash scripts/setup.sh` (or `pip install -e .`), else `pip install fmnist-lightning`"
        )
