"""Attribution maps of a finished run's predictions: ``fmnist-explain run_dir=outputs/runs/<run>
[indices=[0,5,17] | images=[a.png,b.jpg]] [method=gradcam]`` writes a figure per image, grid.png,
maps.npy and explain.json into ``outputs/explain/<date>_<time>/`` and prints a line per image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fmnist_lightning.cli import errors_as_lines, hydra_argv, require_configs
from fmnist_lightning.evaluation.explain import explain_run
from fmnist_lightning.run_folder import register_resolvers


def run_explain(output_dir: str | Path, cfg: DictConfig) -> dict[str, Any]:
    """``explain_run`` with the options of ``cfg`` into ``output_dir``; prints each image's line
    (``<source>: <predicted> (<p>); explained class <target>``) and the folder."""
    options = OmegaConf.to_container(cfg, resolve=True)
    for key in ("images", "indices"):  # images=a.png, indices=3: a list of one
        if options[key] is not None and not isinstance(options[key], list):
            options[key] = [options[key]]
    result = explain_run(options.pop("run_dir"), output_dir, **options)
    for entry in result["images"]:
        source = entry["source"] if isinstance(entry["source"], str) else f"test_{entry['source']}"
        predicted = f"{entry['predicted_class']} ({entry['probability']:.3f})"
        print(f"{source}: {predicted}; explained class {entry['target_class']}")
    print(f"explain: {output_dir}")
    return result


@hydra.main(version_base="1.3", config_path="pkg://fmnist_lightning.conf", config_name="explain")
def explain(cfg: DictConfig) -> None:
    output_dir = HydraConfig.get().runtime.output_dir
    with errors_as_lines(output_dir):  # the output folder may fail to write
        run_explain(output_dir, cfg)


def main() -> None:
    """The command line: ``fmnist-explain run_dir=... [indices=[...] | images=[...]] [overrides]``."""
    require_configs()
    hydra_argv()
    register_resolvers()
    explain()


if __name__ == "__main__":  # python -m fmnist_lightning.cli.explain
    main()
