"""Out-of-distribution detection of a finished run: ``fmnist-ood run_dir=outputs/runs/<run>
[ood=[digits,vflip]]`` writes ood.json, .md, the figures and TensorBoard events into
``outputs/ood/<date>_<time>/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from fmnist_lightning.cli import errors_as_lines, hydra_argv, require_configs
from fmnist_lightning.errors import UserError, require
from fmnist_lightning.evaluation.ood import MARKDOWN, evaluate_ood
from fmnist_lightning.run_folder import register_resolvers
from fmnist_lightning.training.loggers import TensorBoardLogger


def run_ood(output_dir: str | Path, cfg: DictConfig) -> dict[str, Any]:
    """``evaluate_ood`` with the sets of ``cfg.ood`` into ``output_dir``, with a TensorBoard logger
    there; prints each set's best AUROC."""
    sets = cfg.get("ood") or {}
    allowed = "a non-empty list of the sets of conf/ood/, e.g. ood=[digits,vflip]"
    require(isinstance(sets, DictConfig) and len(sets) > 0, "ood", sets, allowed)
    makers = {key: _instantiate(key, node) for key, node in sets.items()}
    options = OmegaConf.to_container(cfg, resolve=True)
    options.pop("ood")
    logger = TensorBoardLogger(save_dir=str(output_dir), name="", version="", default_hp_metric=False)
    result = evaluate_ood(options.pop("run_dir"), output_dir, makers, loggers=[logger], **options)
    logger.finalize("success")
    for name, by_score in result["results"].items():
        aurocs = ", ".join(f"{score} {m['auroc']['value']:.4f}" for score, m in by_score.items())
        print(f"{name}: AUROC {aurocs}")
    print(f"ood: {output_dir}/{MARKDOWN}")
    return result


def _instantiate(key: str, node: DictConfig) -> Any:
    """The set of ``ood.<key>``; a refusal of its arguments (``UserError``) names the key.

    Raises:
        UserError: The set (or its dataset) refused its config.
    """
    try:
        return hydra.utils.instantiate(node)
    except InstantiationException as err:
        if isinstance(err.__cause__, UserError):
            raise UserError(f"ood.{key}: {err.__cause__}") from None
        raise


@hydra.main(version_base="1.3", config_path="pkg://fmnist_lightning.conf", config_name="ood")
def ood(cfg: DictConfig) -> None:
    output_dir = HydraConfig.get().runtime.output_dir
    with errors_as_lines(output_dir):  # the output folder or the corrupted images' cache may fail to write
        run_ood(output_dir, cfg)


def main() -> None:
    """The command line: ``fmnist-ood run_dir=... [ood=[...]] [overrides]``."""
    require_configs()
    hydra_argv()
    register_resolvers()
    ood()


if __name__ == "__main__":  # python -m fmnist_lightning.cli.ood
    main()
