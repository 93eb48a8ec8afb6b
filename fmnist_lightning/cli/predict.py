"""Classify image files with a trained run: ``fmnist-predict run_dir=<run> images='[a.png,b.jpg]'``
prints one line per file (``output=preds.json``: JSON too; ``sets=aps``: each file's conformal
prediction set too); exits with 1 if any file failed."""

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
from fmnist_lightning.evaluation.files import FilePrediction, predict_files
from fmnist_lightning.evaluation.runs import TrainedModel, load_trained


@hydra.main(version_base="1.3", config_path="pkg://fmnist_lightning.conf", config_name="predict")
def predict(cfg: DictConfig) -> None:
    images = list(cfg.images) if isinstance(cfg.images, ListConfig) else [cfg.images]
    try:
        model = load_model(cfg)
    except (UserError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None

    if model.calibrated:  # on stderr: stdout keeps one line per file
        print(f"probabilities temperature-scaled by the run's T = {model.temperature:.4f}", file=sys.stderr)
    if cfg.sets is not None:
        coverage = f"{100 * (1 - float(cfg.alpha)):g} %"
        print(f"prediction sets: {cfg.sets} at alpha = {cfg.alpha} (target coverage {coverage})", file=sys.stderr)
    paths = [str(p) for p in images]
    results = predict_files(model, paths, cfg.preprocess, cfg.invert, cfg.top_k, cfg.sets, cfg.alpha)
    for r in results:
        if r.error:
            print(f"{r.path}: error: {r.error}", file=sys.stderr)
        else:
            print(line(r))
    if cfg.output:
        try:
            write_atomically(Path(cfg.output), json.dumps([dataclasses.asdict(r) for r in results], indent=2) + "\n")
        except OSError as err:  # the folder changed since the check, or the disk is full
            raise SystemExit(f"error: could not write output={cfg.output}: {err.strerror or err}") from None
    if any(r.error for r in results):
        sys.exit(1)


def load_model(cfg: DictConfig) -> TrainedModel:
    """The run's model, once every option is checked; no image is read yet.

    Raises:
        ArgumentError: ``preprocess``, ``invert``, ``sets`` or ``alpha`` is not valid.
        RunError: ``output`` cannot be written, the run cannot be loaded, or ``sets`` is asked of a run
            without conformal thresholds for these weights (``TrainedModel.check_sets``).
    """
    check_options(cfg.preprocess, cfg.invert)
    if cfg.output:
        check_output(Path(cfg.output))
    model = load_trained(cfg.run_dir, cfg.weights, cfg.device, list(cfg.trusted_modules))
    if cfg.sets is not None:
        model.check_sets(cfg.sets, cfg.alpha)
    return model


def line(r: FilePrediction) -> str:
    """A classified file's line: its class and probability, the next classes, and its set if asked."""
    others = ", ".join(f"{name} {p:.3f}" for name, p in r.top[1:])
    members = f"; set {{{', '.join(r.prediction_set)}}}" if r.prediction_set is not None else ""
    if r.prediction_set == []:
        members += " (empty: no class is likely enough at this α)"
    return f"{r.path}: {r.name} ({r.probability:.3f}){'; then ' + others if others else ''}{members}"


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
