"""Export a run: ``fmnist-export run_dir=outputs/runs/<run> [format=onnx|torch_export]`` writes
``model.onnx`` or ``model.pt2`` into the run folder."""

import hydra
from omegaconf import DictConfig

from fmnist_lightning.cli import hydra_argv, require_configs
from fmnist_lightning.errors import UserError
from fmnist_lightning.run_folder import RunFolder


@hydra.main(version_base="1.3", config_path="pkg://fmnist_lightning.conf", config_name="export")
def export(cfg: DictConfig) -> None:
    from fmnist_lightning.data.photos import SIDE
    from fmnist_lightning.serving.export import export_run  # torch.onnx and onnx load slowly

    try:
        path = export_run(cfg.run_dir, cfg.format, cfg.weights, cfg.overwrite, list(cfg.trusted_modules))
    except UserError as err:
        raise SystemExit(f"error: {err}") from None
    classes = len(RunFolder(cfg.run_dir).load_config(list(cfg.trusted_modules)).data.class_names)
    size = f"{path.stat().st_size / 1e6:.1f} MB"
    print(f"wrote {path} ({size}): uint8 (B, 1, {SIDE}, {SIDE}) images -> (B, {classes}) probabilities")


def main() -> None:
    """The command line: ``fmnist-export run_dir=... [format=...] [overwrite=true]``."""
    require_configs()
    hydra_argv()
    export()


if __name__ == "__main__":  # python -m fmnist_lightning.cli.export
    main()
