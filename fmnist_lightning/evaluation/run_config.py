"""A run folder's config (``.hydra/config.yaml``): read back with the rule for configs from
disk (``load_run_config``), or, for the run this process writes itself, as it is
(``read_run_config``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from fmnist_lightning.artifacts import read_yaml
from fmnist_lightning.errors import DamagedFileError, RunError
from fmnist_lightning.evaluation.upgrade import upgrade_config
from fmnist_lightning.trust import check_config


def load_run_config(run_dir: str | Path, trusted_modules: Sequence[str] = ()) -> DictConfig:
    """Reads the config a run was made with (``run_dir/.hydra/config.yaml``), which may come
    from someone else: it is accepted only if it names nothing this machine does not trust
    (``fmnist_lightning.trust.check_config``).

    Args:
        run_dir: The run folder.
        trusted_modules: Modules of one's own that this command trusts (``trusted_modules=``).

    Raises:
        RunError: ``run_dir`` is not a run folder.
        DamagedFileError: The config file is damaged or not a run's config.
        UntrustedConfigError: It names a callable that is not trusted, or calls a resolver.
    """
    what = f"the run folder {run_dir}"
    raw = _saved_config(run_dir)
    check_config(raw, what=what, targets=False)  # its interpolations, before upgrade_config resolves any
    config = upgrade_config(raw)  # an older run's targets are today's names after it
    check_config(config, trusted_modules, what)
    return config


def read_run_config(run_dir: str | Path) -> DictConfig:
    """Reads, unchecked, the config of a run this process (or the script that started it)
    made itself: what Hydra just saved for this run, or a benchmark's own runs. Any other run
    is read with ``load_run_config``.

    Raises:
        RunError: ``run_dir`` is not a run folder.
        DamagedFileError: The config file is damaged or not a run's config.
    """
    return upgrade_config(_saved_config(run_dir))


def _saved_config(run_dir: str | Path) -> DictConfig:
    """``.hydra/config.yaml`` as saved, unresolved and not upgraded.

    Raises:
        RunError: ``run_dir`` is not a run folder.
        DamagedFileError: The config file is damaged or not a run's config.
    """
    path = Path(run_dir) / ".hydra" / "config.yaml"
    if not path.is_file():
        raise RunError(
            f"{run_dir} is not a run folder: it has no .hydra/config.yaml. "
            "Pass a folder under outputs/runs/ or outputs/multirun/<sweep>/<job>/."
        )
    fix = "It is the run's config, which every use of the run needs: restore it from a copy, or train the run again."
    saved = read_yaml(path, dict, fix)
    for section, key in (("model", "_target_"), ("data", "image_size"), ("trainer", "max_epochs")):
        if not isinstance(saved.get(section), dict) or key not in saved[section]:
            raise DamagedFileError(path, f"it has no {section}.{key}, so it is not a run's config", fix)
    return OmegaConf.load(path)
