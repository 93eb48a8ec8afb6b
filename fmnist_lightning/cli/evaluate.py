"""Re-evaluate a finished run: ``fmnist-evaluate run_dir=outputs/runs/<run>``
(``python evaluate.py ...`` in a clone).

Writes report.json, report.md and confusion_matrix.png into
``outputs/evaluations/<date>_<time>/`` (see conf/evaluate.yaml).
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fmnist_lightning.cli import quote_paths, require_configs
from fmnist_lightning.errors import UserError
from fmnist_lightning.evaluation import evaluate_run
from fmnist_lightning.training.run_dirs import register_resolvers


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def evaluate(cfg: DictConfig) -> None:
    output_dir = HydraConfig.get().runtime.output_dir
    try:
        report = evaluate_run(cfg.run_dir, output_dir, cfg.weights, cfg.data_root, cfg.device)
    except UserError as err:
        raise SystemExit(f"error: {err}") from None
    print(f"test accuracy {report['accuracy']:.4f}, loss {report['loss']:.4f} ({report['weights']})")
    print(f"report: {output_dir}/report.md")


def main() -> None:
    """The command line: ``fmnist-evaluate run_dir=... [overrides]``."""
    require_configs()
    quote_paths()
    register_resolvers()
    evaluate()
