"""Exporting a run's network, with the run's preprocessing, as one graph (docs/serve.md): uint8
``(B, 1, 28, 28)`` images (light object on black, 0-255; B dynamic) → the run's resize and
normalisation, the network, the division by its fitted temperature, a softmax → float32
``(B, num_classes)`` probabilities. Formats: ``onnx`` (``model.onnx``, ``torch.onnx.export(...,
dynamo=True)``, ``run_metadata`` as ``metadata_props``) and ``torch_export`` (``model.pt2``,
``torch.export.save``, ``run_metadata`` as extra files), written into the run folder under its lock.
The metadata carries the run's conformal thresholds, for prediction sets of those probabilities.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn

from fmnist_lightning.artifacts import read_json
from fmnist_lightning.data.photos import SIDE
from fmnist_lightning.errors import ArgumentError, DamagedFileError, RunError, require
from fmnist_lightning.evaluation.conformal import GivesSets, record_problem
from fmnist_lightning.evaluation.runs import TrainedModel, load_trained
from fmnist_lightning.run_folder import NET_WEIGHTS, RunFolder

#: ``format=`` → the file written into the run folder.
EXPORT_FILES = {"onnx": "model.onnx", "torch_export": "model.pt2"}
#: The name of the graph's input and output.
INPUT_NAME, OUTPUT_NAME = "images", "probabilities"
#: What ``run_metadata`` writes (``test_acc`` only for a run with a test report).
METADATA_KEYS = ("class_names", "config", "run", "weights", "calibrated", "temperature", "conformal", "test_acc")
#: ONNX opset of the export (onnxscript's dynamo exporter supports 18 and up).
OPSET = 18


class ImagesToProbabilities(nn.Module):
    """``TrainedModel.predict_proba`` as a module: uint8 ``(B, 1, 28, 28)`` → float32 ``(B, num_classes)``."""

    def __init__(self, model: TrainedModel) -> None:
        super().__init__()
        self.preprocess = model.preprocess
        self.net = model.net
        self.temperature = model.temperature or 1.0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (self.net(self.preprocess(images)) / self.temperature).softmax(dim=1)


def run_metadata(model: TrainedModel, run_dir: Path) -> dict[str, str]:
    """What travels with an exported graph, as strings: ``class_names`` (a JSON list), ``config``
    (YAML), ``run``, ``weights``, ``calibrated`` (``"true"``/``"false"``), ``temperature`` (``"1.0"``
    when not calibrated), ``conformal`` (the run's ``conformal.json`` record as JSON: thresholds by
    method and α, temperature, RAPS's parameters; ``"null"`` without one for these weights) and, with
    a test report, ``test_acc`` (a fraction)."""
    meta = {
        "class_names": json.dumps(list(model.class_names)),
        "config": OmegaConf.to_yaml(model.config),
        "run": run_dir.resolve().name,
        "weights": model.weights.name,
        "calibrated": str(model.calibrated).lower(),
        "temperature": str(model.temperature or 1.0),
        "conformal": json.dumps(model.conformal),
    }
    report = run_dir / "report.json"
    if report.is_file():
        meta["test_acc"] = str(read_json(report, "Delete it, or evaluate the run again.")["accuracy"])
    return meta


def _export_onnx(wrapper: nn.Module, example: torch.Tensor, path: Path, meta: dict[str, str]) -> None:
    import onnx

    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(
        wrapper,
        (example,),
        dynamo=True,
        opset_version=OPSET,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes={INPUT_NAME: {0: batch}},
        verbose=False,
    )
    proto = program.model_proto
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    onnx.save(proto, path)


def _export_program(wrapper: nn.Module, example: torch.Tensor, path: Path, meta: dict[str, str]) -> None:
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(wrapper, (example,), dynamic_shapes={INPUT_NAME: {0: batch}})
    torch.export.save(program, path, extra_files=meta)


def export_run(
    run_dir: str | Path,
    format: str = "onnx",
    weights: str = NET_WEIGHTS,
    overwrite: bool = False,
    trusted_modules: Sequence[str] = (),
) -> Path:
    """Exports a run's network with its preprocessing into the run folder.

    Args:
        format: ``"onnx"`` (``model.onnx``) or ``"torch_export"`` (``model.pt2``).
        weights: Which weights; see ``fmnist_lightning.evaluation.runs.resolve_weights``.
        overwrite: Replace an earlier export of the same format.

    Returns:
        The written file.

    Raises:
        ArgumentError: ``format`` is not one of ``EXPORT_FILES``.
        RunError: The folder is not a finished run, is being trained in (its lock is held),
            or already has the file and ``overwrite`` is false.
    """
    require(format in EXPORT_FILES, "format", format, " or ".join(EXPORT_FILES))
    run_dir = Path(run_dir)
    path = run_dir / EXPORT_FILES[format]
    if path.exists() and not overwrite:
        raise RunError(
            f"{path} exists already; pass overwrite=true to replace it, or export elsewhere by copying the run"
        )
    model = load_trained(run_dir, weights, "cpu", trusted_modules)  # checks the folder before taking its lock
    RunFolder(run_dir).lock()
    try:
        _write_export(model, run_dir, path, format)
    finally:
        RunFolder(run_dir).release()
    return path


def _write_export(model: TrainedModel, run_dir: Path, path: Path, format: str) -> None:
    """Exports ``model`` with ``run_metadata`` in ``format`` to ``path``, atomically."""
    wrapper = ImagesToProbabilities(model).eval()
    example = torch.zeros(2, 1, SIDE, SIDE, dtype=torch.uint8)
    meta = run_metadata(model, run_dir)
    # Written beside the target and renamed, so a failed export leaves no half file.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=run_dir)
    os.close(fd)
    try:
        (_export_onnx if format == "onnx" else _export_program)(wrapper, example, Path(tmp), meta)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


@dataclass
class ExportedModel(GivesSets):
    """An exported graph, loaded for inference on the CPU (onnxruntime or ``torch.export``), and its
    conformal prediction sets (``conformal.GivesSets``: ``check_sets``, ``predict_sets``).

    Attributes:
        metadata: What ``run_metadata`` wrote (strings).
        conformal: The run's conformal record from the metadata, or ``None`` (none, or an older export).
    """

    path: Path
    metadata: dict[str, str]
    class_names: tuple[str, ...]
    _run: Any
    conformal: dict[str, Any] | None = None

    @property
    def temperature(self) -> float | None:
        """The temperature the graph divides its logits by, or ``None`` (not calibrated)."""
        return float(self.metadata["temperature"]) if self.metadata.get("calibrated") == "true" else None

    def predict_proba(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Class probabilities, float32 ``(B, num_classes)``, of uint8 ``(B, 1, 28, 28)`` images."""
        return self._run(images)

    def no_sets(self) -> str:
        """Why the graph gives no prediction sets, and how to get them."""
        return (
            f"no prediction sets in {self.path}: it was exported before conformal prediction sets, or from "
            "a run without conformal.json for its weights (net.pt and best have them). Once the run has "
            f"one, export it again: fmnist-export run_dir={self.path.parent} overwrite=true (docs/uncertainty.md)"
        )


def metadata_conformal(metadata: dict[str, str], path: Path) -> dict[str, Any] | None:
    """The conformal record in an export's ``metadata`` (``None``: ``"null"``, or an export older than the key).

    Raises:
        DamagedFileError: It is not JSON, or not a record ``read_conformal`` would accept.
    """
    try:
        record = json.loads(metadata.get("conformal", "null"))
    except ValueError:
        record = metadata["conformal"]
    problem = None if record is None else record_problem(record)
    if problem:
        fix = f"Export it again: fmnist-export run_dir={path.parent} overwrite=true"
        raise DamagedFileError(path, f"its conformal metadata is damaged: {problem}", fix)
    return record


def load_exported(path: str | Path, threads: int | None = None) -> ExportedModel:
    """Loads ``model.onnx`` (onnxruntime, CPU) or ``model.pt2`` (``torch.export.load``).

    Args:
        threads: onnxruntime's intra-op threads; ``None`` leaves its default (one per core). The
            ``.pt2`` program uses torch's setting.

    Raises:
        RunError: The file does not exist (the message says how to export it).
        DamagedFileError: The file cannot be read as an exported graph of this project, or its
            conformal metadata is damaged.
    """
    path = Path(path)
    fix = f"Export it again: fmnist-export run_dir={path.parent} format=... overwrite=true"
    if not path.is_file():
        raise RunError(f"{path} does not exist; export the run first: fmnist-export run_dir={path.parent}")
    if path.suffix == ".onnx":
        metadata, run = _load_onnx(path, threads, fix)
    elif path.suffix == ".pt2":
        metadata, run = _load_program(path, fix)
    else:
        raise ArgumentError("path", str(path), "a .onnx or .pt2 file written by fmnist-export")
    try:
        names = tuple(json.loads(metadata["class_names"]))
    except (KeyError, ValueError):
        raise DamagedFileError(path, "it has no class_names metadata, so fmnist-export did not write it", fix) from None
    return ExportedModel(path, metadata, names, run, metadata_conformal(metadata, path))


def _load_onnx(path: Path, threads: int | None, fix: str) -> tuple[dict[str, str], Callable[[Any], torch.Tensor]]:
    """``(metadata, run)`` of a ``model.onnx`` in an onnxruntime CPU session (``predict_proba``'s ``run``)."""
    import onnxruntime

    try:
        settings = onnxruntime.SessionOptions()
        settings.intra_op_num_threads = threads or 0  # 0: onnxruntime's default
        session = onnxruntime.InferenceSession(str(path), settings, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception classes
        raise DamagedFileError(path, f"onnxruntime cannot load it ({str(err).splitlines()[0]})", fix) from None
    metadata = dict(session.get_modelmeta().custom_metadata_map)

    def run(images: torch.Tensor | np.ndarray) -> torch.Tensor:
        array = images.numpy() if isinstance(images, torch.Tensor) else images
        return torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: array})[0])

    return metadata, run


def _load_program(path: Path, fix: str) -> tuple[dict[str, str], Callable[[Any], torch.Tensor]]:
    """``(metadata, run)`` of a ``model.pt2`` (``torch.export.load``; ``predict_proba``'s ``run``)."""
    metadata = dict.fromkeys(METADATA_KEYS, "")
    try:
        program = torch.export.load(path, extra_files=metadata)
    except Exception as err:  # a damaged archive raises zipfile, pickle or torch errors
        raise DamagedFileError(path, f"torch.export.load cannot read it ({err})", fix) from None
    metadata = {k: v for k, v in metadata.items() if v}
    module = program.module()

    @torch.inference_mode()
    def run(images: torch.Tensor | np.ndarray) -> torch.Tensor:
        return module(torch.as_tensor(images))

    return metadata, run
