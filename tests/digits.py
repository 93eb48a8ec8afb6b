"""scikit-learn's bundled handwritten digits (``sklearn.datasets.load_digits``: 1,797 real 8×8
images from the UCI "Optical Recognition of Handwritten Digits" set), written as the four IDX
files of a dataset of its own: a real second dataset for the tests, described by
``tests/conf/data/digits.yaml`` as a user would describe theirs.

The images are upsampled to 28×28 by nearest neighbour and scaled from 0-16 to 0-255 with
integer arithmetic only, so the files, and their MD5s in the YAML, are the same on every
machine. The first 1,500 images are the training split, the other 297 the test split.

``write_digits(folder, classes=5)`` writes the same images with the digits grouped into 5
classes of two digits each (0-1, 2-3, ..., 8-9; ``tests/conf/data/digits5.yaml``): a real
dataset whose class count is not 10.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: The folder of the test's own configs (``hydra.searchpath=[file://<it>]``).
CONF = Path(__file__).parent / "conf"
TRAIN_SIZE = 1500


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of uint8 ``array``: magic 2051 (3-D) or 2049 (1-D), the sizes, the bytes."""
    magic = 2051 if array.ndim == 3 else 2049
    header = magic.to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_digits(folder: Path, classes: int = 10) -> Path:
    """Writes ``train-images-idx3-ubyte`` ... ``t10k-labels-idx1-ubyte`` into ``folder``, with
    the digits 0-9 as ``classes`` classes of ``10 // classes`` consecutive digits each (label
    ``digit * classes // 10``; ``classes`` divides 10)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = digits.images.astype(np.int64)  # (1797, 8, 8), values 0-16
    nearest = (np.arange(28) * 8) // 28
    images = ((pixels[:, nearest][:, :, nearest] * 255 + 8) // 16).astype(np.uint8)
    labels = (digits.target * classes // 10).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, part in (("train", slice(0, TRAIN_SIZE)), ("t10k", slice(TRAIN_SIZE, None))):
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(idx_bytes(images[part]))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(labels[part]))
    return folder
