"""The per-image predictions file of a test report, ``predictions.npz`` (NumPy's ``.npz``: exact
dtypes, nothing beyond NumPy; docs/comparing.md). One row per test image, in the test set's order:

- ``index``: int64 ``(N,)``, the image's position in the test file;
- ``label``: int64 ``(N,)``, its true class;
- ``pred``: int64 ``(N,)``, the predicted class;
- ``probs``: float32 ``(N, C)``, the network's probabilities ``softmax(logits)``;
- ``logits``: float32 ``(N, C)``, the network's outputs;
- ``temperature``: float64 ``()``, the fitted temperature (NaN when none was fitted); the
  calibrated probabilities are ``softmax(logits / temperature)``;
- ``class_names``: str ``(C,)``.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fmnist_lightning.artifacts import write_atomically
from fmnist_lightning.errors import DamagedFileError, RunError

#: The predictions file in a run's (or an evaluation's) folder.
PREDICTIONS_FILE = "predictions.npz"
#: The arrays the file holds.
ARRAYS = ("index", "label", "pred", "probs", "logits", "temperature", "class_names")


def write_predictions(
    folder: Path, logits: torch.Tensor, targets: torch.Tensor, temperature: float | None, class_names: Sequence[str]
) -> None:
    """Writes ``folder/predictions.npz`` atomically from float ``(N, C)`` ``logits`` on any device,
    int64 ``(N,)`` ``targets``, the fitted ``temperature`` or ``None``, and ``C`` ``class_names``."""
    logits = logits.detach().float().cpu()
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        index=np.arange(len(logits), dtype=np.int64),
        label=targets.cpu().numpy().astype(np.int64),
        pred=logits.argmax(dim=1).numpy().astype(np.int64),
        probs=logits.softmax(dim=1).numpy(),
        logits=logits.numpy(),
        temperature=np.float64(np.nan if temperature is None else temperature),
        class_names=np.asarray(list(class_names), dtype=str),
    )
    write_atomically(folder / PREDICTIONS_FILE, buffer.getbuffer())


@dataclass
class SavedPredictions:
    """A ``predictions.npz`` as read back (arrays as in the module docstring; ``temperature`` ``None``
    when none was fitted)."""

    path: Path
    label: np.ndarray
    pred: np.ndarray
    logits: np.ndarray
    temperature: float | None
    class_names: tuple[str, ...]

    @property
    def correct(self) -> np.ndarray:
        """Bool ``(N,)``: whether each image was classified correctly."""
        return self.pred == self.label


def read_predictions(folder: str | Path) -> SavedPredictions:
    """Reads ``folder/predictions.npz``.

    Raises:
        RunError: The folder has none.
        DamagedFileError: The file is unreadable or lacks an array.
    """
    path = Path(folder) / PREDICTIONS_FILE
    if not path.is_file():
        raise RunError(
            f"{folder} has no {PREDICTIONS_FILE} (runs and evaluations made before it existed have none); "
            f"make one with `fmnist-evaluate run_dir={folder}` and pass the evaluation's folder instead"
        )
    fix = "Delete it and evaluate the run again (fmnist-evaluate run_dir=<run>)."
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in ARRAYS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise DamagedFileError(path, f"it cannot be read as predictions ({err})", fix) from None
    n = len(arrays["label"])
    if arrays["logits"].shape != (n, len(arrays["class_names"])) or arrays["pred"].shape != (n,):
        raise DamagedFileError(path, "its arrays do not have one row per image", fix)
    temperature = float(arrays["temperature"])
    return SavedPredictions(
        path=path,
        label=arrays["label"],
        pred=arrays["pred"],
        logits=arrays["logits"],
        temperature=None if np.isnan(temperature) else temperature,
        class_names=tuple(str(name) for name in arrays["class_names"]),
    )
