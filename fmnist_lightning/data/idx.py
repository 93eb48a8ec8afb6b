"""Finding, reading and verifying the four FashionMNIST IDX files.

The expected sizes and MD5 checksums of the decompressed files are the published ones
(Zalando's FashionMNIST repository, zalandoresearch/fashion-mnist). Debian's
``dataset-fashion-mnist`` package recompresses the ``.gz`` files, so only the checksums of
the decompressed bytes are checked, never those of the ``.gz`` files.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fmnist_lightning.artifacts import write_atomically
from fmnist_lightning.errors import DatasetError

log = logging.getLogger(__name__)

#: Where Debian's and Ubuntu's ``dataset-fashion-mnist`` package installs the ``.gz`` files.
DEBIAN_DATASET_DIR = "/usr/share/datasets/fashion-mnist"

#: Class names in label order (0-9), from the FashionMNIST README.
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

HOW_TO_FIX = (
    "Get a good copy with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu, as root; it "
    f"installs the files in {DEBIAN_DATASET_DIR}), or point `data.root=/path/to/folder` at a "
    "folder holding the four original IDX files (decompressed or .gz)."
)


@dataclass(frozen=True)
class IdxSpec:
    """What one decompressed IDX file must hold.

    Attributes:
        name: File name without ``.gz``, e.g. ``"train-images-idx3-ubyte"``.
        magic: Big-endian int32 magic number: 2051 for images, 2049 for labels.
        shape: Array shape stored in the header, e.g. ``(60000, 28, 28)``.
        md5: MD5 of the decompressed file.
    """

    name: str
    magic: int
    shape: tuple[int, ...]
    md5: str

    @property
    def header_bytes(self) -> int:
        """Header size in bytes: the magic number plus one int32 per dimension."""
        return 4 * (1 + len(self.shape))

    @property
    def total_bytes(self) -> int:
        """Expected size of the decompressed file in bytes."""
        return self.header_bytes + int(np.prod(self.shape))


IDX_SPECS: dict[tuple[str, str], IdxSpec] = {
    ("train", "images"): IdxSpec("train-images-idx3-ubyte", 2051, (60000, 28, 28), "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
    ("train", "labels"): IdxSpec("train-labels-idx1-ubyte", 2049, (60000,), "9018921c3c673c538a1fc5bad174d6f9"),
    ("test", "images"): IdxSpec("t10k-images-idx3-ubyte", 2051, (10000, 28, 28), "8181f5470baa50b63fa0f6fddb340f0a"),
    ("test", "labels"): IdxSpec("t10k-labels-idx1-ubyte", 2049, (10000,), "15d484375f8d13e6eb1aabb0c3f46965"),
}


def candidate_paths(folder: str | os.PathLike, spec: IdxSpec) -> list[Path]:
    """Places in ``folder`` where the file of ``spec`` may lie, in order of preference.

    The decompressed file comes first (fastest to read), then its ``.gz``; both at the top
    of ``folder`` and in torchvision's layout ``folder/FashionMNIST/raw/``.
    """
    folder = Path(folder)
    return [d / f"{spec.name}{suffix}" for d in (folder, folder / "FashionMNIST" / "raw") for suffix in ("", ".gz")]


def find_file(folder: str | os.PathLike, spec: IdxSpec) -> Path | None:
    """Returns the first existing path of ``candidate_paths``, or ``None``."""
    return next((p for p in candidate_paths(folder, spec) if p.is_file()), None)


def read_idx_bytes(path: Path, spec: IdxSpec) -> bytes:
    """Reads one IDX file (decompressing ``.gz``) and checks it against ``spec``.

    Checks, in this order: the file decompresses, the magic number, the header's shape,
    the file length, for label files that every label is in 0-9, and the MD5 of the
    decompressed bytes. The label range and the MD5 are computed once per process for each
    file: they are skipped while the file's device, inode, size and modification time are the
    ones they passed with (any copy or write over it changes them).

    Args:
        path: The file, decompressed or ``.gz``.
        spec: What it must hold.

    Returns:
        The decompressed file, header included.

    Raises:
        DatasetError: Naming ``path``, what is wrong with it, and how to get a good copy.
    """

    def fail(problem: str) -> DatasetError:
        return DatasetError(f"FashionMNIST file {path} {problem}. {HOW_TO_FIX}")

    try:
        stat = path.stat()
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise fail(f"is not a complete gzip file ({err})") from None
    except OSError as err:
        raise fail(f"cannot be read ({err.strerror or err})") from None

    if len(data) < spec.header_bytes:
        raise fail(f"is truncated: {len(data)} bytes, shorter than its {spec.header_bytes}-byte header")
    magic = int.from_bytes(data[:4], "big")
    if magic != spec.magic:
        raise fail(f"has magic number {magic}, expected {spec.magic} for {spec.name} (not an IDX file of this kind)")
    shape = tuple(int.from_bytes(data[i : i + 4], "big") for i in range(4, spec.header_bytes, 4))
    if shape != spec.shape:
        raise fail(f"has shape {shape} in its header, expected {spec.shape}")
    if len(data) != spec.total_bytes:
        kind = "truncated" if len(data) < spec.total_bytes else "too long"
        raise fail(f"is {kind}: {len(data)} bytes decompressed, expected {spec.total_bytes}")
    verified = (str(path.resolve()), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, spec.md5)
    if verified in _VERIFIED:
        return data
    if spec.magic == 2049:
        top = max(data[spec.header_bytes :])
        if top > 9:
            raise fail(f"holds label {top}, outside 0-9")
    md5 = hashlib.md5(data).hexdigest()
    if md5 != spec.md5:
        raise fail(f"is corrupt: MD5 of its decompressed bytes is {md5}, expected {spec.md5}")
    _VERIFIED.add(verified)
    return data


#: The files ``read_idx_bytes`` verified in this process, by path and state on disk.
_VERIFIED: set[tuple] = set()


def read_idx(path: Path, spec: IdxSpec) -> torch.Tensor:
    """Reads and verifies one IDX file into a tensor.

    Returns:
        ``torch.uint8`` tensor of shape ``spec.shape``: ``(N, 28, 28)`` images or ``(N,)``
        labels.

    Raises:
        DatasetError: See ``read_idx_bytes``.
    """
    data = read_idx_bytes(path, spec)
    array = np.frombuffer(data, dtype=np.uint8, offset=spec.header_bytes).reshape(spec.shape)
    return torch.from_numpy(array.copy())


def ensure_files(root: str | os.PathLike, local_copy: str | os.PathLike | None, download: bool) -> None:
    """Makes sure the four IDX files are in ``root``.

    For each file missing from ``root``: take it from ``local_copy`` (verified, then written
    decompressed to ``root``); if ``local_copy`` does not have all four either, try
    torchvision's download into ``root/FashionMNIST/raw/``. Files already in ``root`` are left
    as they are (they are verified when loaded).

    Args:
        root: The data folder (``data.root``); created if missing.
        local_copy: A folder with the original files, e.g. ``DEBIAN_DATASET_DIR``, or
            ``None`` to skip it.
        download: Whether to fall back to torchvision's download.

    Raises:
        DatasetError: A file is in none of these places, a copy in ``local_copy`` is bad,
            or ``root`` cannot be written.
    """
    root = Path(root)
    missing = [spec for spec in IDX_SPECS.values() if find_file(root, spec) is None]
    if not missing:
        return
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DatasetError(
            f"Cannot create the data folder {root} ({err.strerror or err}); set `data.root=` to a writable folder."
        ) from None

    if local_copy is not None and all(find_file(local_copy, s) for s in missing):
        for spec in missing:
            source = find_file(local_copy, spec)
            log.info("Copying %s to %s", source, root / spec.name)
            try:
                write_atomically(root / spec.name, read_idx_bytes(source, spec))
            except OSError as err:  # read-only folder, disk full, ...
                raise DatasetError(
                    f"Cannot write {root / spec.name} ({err.strerror or err}); "
                    "set `data.root=` to a writable folder with 100 MB free."
                ) from None
        return

    looked = [str(root)] + ([str(local_copy)] if local_copy is not None else [])
    names = ", ".join(s.name for s in missing)
    if not download:
        raise DatasetError(
            f"FashionMNIST files {names} are not in {' or '.join(looked)} and data.download is false. {HOW_TO_FIX}"
        )
    log.info("FashionMNIST not found in %s; trying torchvision's download", " or ".join(looked))
    from torchvision.datasets import FashionMNIST

    try:
        FashionMNIST(str(root), train=True, download=True)
    except Exception as err:  # torchvision raises RuntimeError, URLError, OSError, ...
        raise DatasetError(
            f"FashionMNIST files {names} are not in {' or '.join(looked)}, and torchvision's "
            f"download failed ({type(err).__name__}: {err}). {HOW_TO_FIX}"
        ) from None


def verify_files(root: str | os.PathLike) -> None:
    """Reads and checks all four files in ``root`` (see ``read_idx_bytes``), so that a
    bad test file stops a run before training rather than after it.

    Raises:
        DatasetError: A file is missing, truncated or corrupt.
    """
    for spec in IDX_SPECS.values():
        path = find_file(root, spec)
        if path is None:
            raise DatasetError(f"FashionMNIST file {spec.name} is missing from {root}. {HOW_TO_FIX}")
        read_idx_bytes(path, spec)


def load_split(root: str | os.PathLike, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Loads and verifies one official split from ``root``.

    Args:
        root: Folder holding the IDX files (see ``candidate_paths``).
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000 images).

    Returns:
        ``(images, labels)``: ``torch.uint8`` of shape ``(N, 28, 28)`` and ``torch.int64``
        of shape ``(N,)`` with values 0-9.

    Raises:
        DatasetError: A file is missing, truncated or corrupt.
        ValueError: ``split`` is not ``"train"`` or ``"test"``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    tensors = []
    for kind in ("images", "labels"):
        spec = IDX_SPECS[(split, kind)]
        path = find_file(root, spec)
        if path is None:
            raise DatasetError(f"FashionMNIST file {spec.name} is missing from {root}. {HOW_TO_FIX}")
        tensors.append(read_idx(path, spec))
    images, labels = tensors
    return images, labels.long()
