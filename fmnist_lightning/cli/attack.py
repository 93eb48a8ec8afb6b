"""A finished run's accuracy under adversarial attacks: ``fmnist-attack run_dir=outputs/runs/<run>``
writes attack.json, .md, two figures and TensorBoard events into ``outputs/attack/<date>_<time>/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fmnist_lightning.cli import errors_as_lines, hydra_argv, require_configs
from fmnist_lightning.evaluation.adversarial import MARKDOWN, evaluate_attacks
from fmnist_lightning.run_folder import register_resolvers
from fmnist_lightning.training.loggers import TensorBoardLogger


def run_attack(output_dir: str | Path, **options: Any) -> dict[str, Any]:
    """``evaluate_attacks`` into ``output_dir``, with a TensorBoard logger there; prints a line per
    attack and ε, and any breach of the gradient-masking checks. ``options`` are its keyword arguments."""
    logger = TensorBoardLogger(save_dir=str(output_dir), name="", version="", default_hp_metric=False)
    result = evaluate_attacks(options.pop("run_dir"), output_dir, loggers=[logger], **options)
    logger.finalize("success")
    print(f"clean accuracy {result['clean']['accuracy']:.4f} on {result['images']} test images ({result['weights']})")
    for row in result["results"]:
        print(f"{row['label']} ε={row['eps']:g}: robust accuracy {row['accuracy']:.4f}")
    if result["breaches"]:
        print(f"gradient-masking checks failed: {', '.join(result['breaches'])} (see {MARKDOWN})")
    print(f"attack: {output_dir}/{MARKDOWN}")
    return result


@hydra.main(version_base="1.3", config_path="pkg://fmnist_lightning.conf", config_name="attack")
def attack(cfg: DictConfig) -> None:
    options = OmegaConf.to_container(cfg, resolve=True)
    output_dir = HydraConfig.get().runtime.output_dir
    with errors_as_lines(output_dir):
        run_attack(output_dir, **options)


def main() -> None:
    """The command line: ``fmnist-attack run_dir=... [overrides]``."""
    require_configs()
    hydra_argv()
    register_resolvers()
    attack()


if __name__ == "__main__":  # python -m fmnist_lightning.cli.attack
    main()
