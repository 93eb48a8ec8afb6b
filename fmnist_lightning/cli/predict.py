"""Classify image files with a trained run: ``fmnist-predict run_dir=<run> images='[a.png,b.jpg]'``
prints one line per file (``output=preds.json``: JSON too); exits with 1 if any file failed."""

import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import hydra
from omegaconf import DictConfig, ListConfig

from fmnist_lightning.artifacts import write_atomically
from fmnist_lightning.cli import hydra_argv, require_configs
from fmnist_lightning.data.photos import check_options
from fmnist_lightning.errors import RunError, UserError
from fmnist_lightning.evaluation.files import predict_files
from fmnist_lightning.evaluation.runs import load_trained


@hydra.main(version_base="1.3", config_path="pkg://fmnist_lightning.conf", config_name="predict")
def predict(cfg: DictConfig) -> None:
    images = list(cfg.images) if isinstance(cfg.images, ListConfig) else [cfg.images]
    try:
        check_options(cfg.preprocess, cfg.invert)
        if cfg.output:
            check_output(Path(cfg.output))
        model = load_trained(cfg.run_dir, cfg.weights, cfg.device, list(cfg.trusted_modules))
    except (UserError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None

    if model.calibrated:  # on stderr: stdout keeps one line per file
        print(f"probabilities temperature-scaled by the run's T = {model.temperature:.4f}", file=sys.stderr)
    results = predict_files(model, [str(p) for p in images], cfg.preprocess, cfg.invert, cfg.top_k)
    for r in results:
        if r.error:
            print(f"{r.path}: error: {r.error}", file=sys.stderr)
        else:
            others = ", ".join(f"{name} {p:.3f}" for name, p in r.top[1:])
            print(f"{r.path}: {r.name} ({r.probability:.3f}){'; then ' + others if others else ''}")
    if cfg.output:
        try:
            write_atomically(Path(cfg.output), json.dumps([dataclasses.asdict(r) for r in results], indent=2) + "\n")
        except OSError as err:  # the folder changed since the check, or the disk is full
            raise SystemExit(f"error: could not write output={cfg.output}: {err.strerror or err}") from None
    if any(r.error for r in results):
        sys.exit(1)


def check_output(path: Path) -> None:
    """Refuses an ``output`` file that could not be written, before any image is classified.

    Raises:
        RunError: Its folder does not exist or a probe file cannot be created there.
    """
    folder = path.expanduser().absolute().parent
    if not folder.is_dir():
        raise RunError(f"output={path}: the folder {folder} does not exist; create it, or write elsewhere")
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as err:
        raise RunError(f"output={path}: cannot write in {folder} ({err.strerror or err}); write elsewhere") from None


def main() -> None:
    """The command line: ``fmnist-predict run_dir=... images=... [overrides]``."""
    require_configs()
    hydra_argv()
    predict()


if __name__ == "__main__":  # python -m fmnist_lightning.cli.predict
    main()
