"""Re-evaluate a finished run: ``fmnist-evaluate run_dir=outputs/runs/<run>`` writes its test report
into ``outputs/evaluations/<date>_<time>/``, with ``robustness=true`` ``fmnist-robustness``'s files too;
``run_dir=[<run>,<run>,...]`` evaluates the runs as one ensemble."""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig

from fmnist_lightning.cli import errors_as_lines, hydra_argv, require_configs
from fmnist_lightning.cli.robustness import run_robustness
from fmnist_lightning.errors import require
from fmnist_lightning.evaluation import evaluate_run
from fmnist_lightning.run_folder import register_resolvers


@hydra.main(version_base="1.3", config_path="pkg://fmnist_lightning.conf", config_name="evaluate")
def evaluate(cfg: DictConfig) -> None:
    output_dir = HydraConfig.get().runtime.output_dir
    with errors_as_lines(output_dir):
        require(isinstance(cfg.robustness, bool), "robustness", cfg.robustness, "true or false")
        require(isinstance(cfg.attributions, bool), "attributions", cfg.attributions, "true or false")
        trusted = list(cfg.trusted_modules)
        run_dir = list(cfg.run_dir) if isinstance(cfg.run_dir, ListConfig) else cfg.run_dir  # a list: one ensemble
        if isinstance(run_dir, list):
            require(not cfg.robustness, "robustness", cfg.robustness, "false for an ensemble (run_dir=[...])")
        report = evaluate_run(run_dir, output_dir, cfg.weights, cfg.data_root, cfg.device, trusted, cfg.attributions)
        source = f"an ensemble of {len(run_dir)} runs" if isinstance(run_dir, list) else report["weights"]
        low, high = report["accuracy_ci95"]
        print(
            f"test accuracy {report['accuracy']:.4f} (95 % Wilson interval {low:.4f}-{high:.4f}), "
            f"loss {report['loss']:.4f} ({source})"
        )
        temperature = report["calibration"]["temperature"]
        if temperature is not None:
            before, after = report["calibration"]["before"], report["calibration"]["after"]
            print(f"temperature {temperature:.4f}: ECE {100 * before['ece']:.2f} % -> {100 * after['ece']:.2f} %")
        print(f"report: {output_dir}/report.md")
        if cfg.robustness:
            options = {"run_dir": cfg.run_dir, "weights": cfg.weights, "data_root": cfg.data_root, "device": cfg.device}
            run_robustness(output_dir, **options, trusted_modules=trusted)


def main() -> None:
    """The command line: ``fmnist-evaluate run_dir=... [overrides]``."""
    require_configs()
    hydra_argv()
    register_resolvers()
    evaluate()


if __name__ == "__main__":  # python -m fmnist_lightning.cli.evaluate
    main()
