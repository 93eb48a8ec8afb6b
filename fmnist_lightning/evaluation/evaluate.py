"""Re-evaluating a finished run on the test set (``fmnist-evaluate``), through Lightning's test loop."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L

from fmnist_lightning.evaluation.ensemble import load_runs
from fmnist_lightning.evaluation.runs import build_datamodule
from fmnist_lightning.evaluation.test_report import TestReport

log = logging.getLogger(__name__)


def run_test_report(
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    folder: str | Path,
    accelerator: str = "cpu",
    extra: dict[str, Any] | None = None,
    attributions: bool | None = None,
) -> TestReport:
    """Runs ``trainer.test`` once over the whole test set and writes the report into ``folder``
    (with the Grad-CAM figures when ``attributions``; ``None``: never, as no logger takes images).

    Returns:
        The callback, holding ``report`` and ``predictions``.

    Raises:
        fmnist_lightning.errors.DatasetError: The test files are missing or corrupt.
    """
    datamodule.prepare_data()
    report = TestReport(folder, extra, attributions=attributions)
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        logger=False,
        callbacks=[report],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(folder),
    )
    trainer.test(module, datamodule=datamodule, verbose=False)
    return report


def evaluate_run(
    run_dir: str | Path | Sequence[str | Path],
    output_dir: str | Path,
    weights: str = "best",
    data_root: str | None = None,
    device: str = "auto",
    trusted_modules: Sequence[str] = (),
    attributions: bool = True,
) -> dict[str, Any]:
    """Re-evaluates a finished run on the test set, on ``device``; the report goes into ``output_dir``.

    Args:
        run_dir: A run folder, or a list of two or more: their ensemble (``ensemble.load_runs``).
        weights: ``"best"``, ``"last"``, ``"net.pt"`` or a path (each member's); see ``runs.resolve_weights``.
        data_root: Overrides the run's ``data.root``.
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ...
        attributions: Whether the report gets the Grad-CAM figures (``TestReport``); never for an
            ensemble (each member has convolutions of its own).

    Returns:
        The report, with ``weights`` (the file used) added; for an ensemble, ``ensemble``: the
        members and the weights files used.

    Raises:
        fmnist_lightning.errors.ArgumentError: A list of fewer than two runs, or one named twice.
        fmnist_lightning.errors.RunError: No such run or weights, weights that do not fit, or
            ensemble members that differ (``ensemble.check_members``).
        fmnist_lightning.errors.DatasetError: The test files are missing or corrupt.
    """
    model, used = load_runs(run_dir, weights, device, trusted_modules)
    datamodule = build_datamodule(model.config, data_root)
    if isinstance(used, list):
        extra = {"ensemble": {"members": [str(member) for member in run_dir], "weights": used}}
        if attributions:  # Grad-CAM would read one member's last convolution, not the ensemble's evidence
            log.info("No Grad-CAM figures for an ensemble: each member has convolutions of its own")
            attributions = False
    else:
        extra = {"weights": used}
    return run_test_report(model.module, datamodule, output_dir, model.device.type, extra, attributions).report
