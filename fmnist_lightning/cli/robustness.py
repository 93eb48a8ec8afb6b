"""A finished run's accuracy under corruptions: ``fmnist-robustness run_dir=outputs/runs/<run>``
writes robustness.json, .md, .png and TensorBoard events into ``outputs/robustness/<date>_<time>/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fmnist_lightning.cli import errors_as_lines, hydra_argv, require_configs
from fmnist_lightning.evaluation.robustness import MARKDOWN, evaluate_robustness
from fmnist_lightning.run_folder import register_resolvers
from fmnist_lightning.training.loggers import TensorBoardLogger


def run_robustness(output_dir: str | Path, **options: Any) -> dict[str, Any]:
    """``evaluate_robustness`` into ``output_dir``, with a TensorBoard logger there, and its
    summary printed. ``options`` are ``evaluate_robustness``'s keyword arguments."""
    logger = TensorBoardLogger(save_dir=str(output_dir), name="", version="", default_hp_metric=False)
    result = evaluate_robustness(options.pop("run_dir"), output_dir, loggers=[logger], **options)
    logger.finalize("success")
    reference = result["reference"]
    mce = f", mCE {100 * reference['mce']:.1f} %" if reference and reference["mce"] is not None else ""
    print(
        f"clean accuracy {result['clean_accuracy']:.4f}, mean corruption accuracy "
        f"{result['mean_corruption_accuracy']:.4f}{mce} ({result['weights']})"
    )
    print(f"robustness: {output_dir}/{MARKDOWN}")
    return result


@hydra.main(version_base="1.3", config_path="pkg://fmnist_lightning.conf", config_name="robustness")
def robustness(cfg: DictConfig) -> None:
    options = OmegaConf.to_container(cfg, resolve=True)
    output_dir = HydraConfig.get().runtime.output_dir
    with errors_as_lines(output_dir):  # the output folder or the corrupted images' cache may fail to write
        run_robustness(output_dir, **options)


def main() -> None:
    """The command line: ``fmnist-robustness run_dir=... [overrides]``."""
    require_configs()
    hydra_argv()
    register_resolvers()
    robustness()


if __name__ == "__main__":  # python -m fmnist_lightning.cli.robustness
    main()
