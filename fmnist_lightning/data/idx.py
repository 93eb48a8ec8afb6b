"""Finding, reading and verifying the four IDX files of a dataset (FashionMNIST, MNIST, KMNIST,
or one of your own in the same format).

What the files must hold (names, shapes, MD5 checksums of the decompressed bytes, with their
published sources) and the class names are described by ``conf/data/<dataset>.yaml``, and
nowhere in the code: ``IdxDataset`` is that description. Debian's ``dataset-fashion-mnist``
package recompresses the ``.gz`` files, so only the checksums of the decompressed bytes are
checked, never those of the ``.gz`` files.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fmnist_lightning.artifacts import write_atomically
from fmnist_lightning.data.datasets import IdxDataset, IdxSpec, load_dataset
from fmnist_lightning.errors import DatasetError

log = logging.getLogger(__name__)

#: Where Debian's and Ubuntu's ``dataset-fashion-mnist`` package installs the ``.gz`` files.
DEBIAN_DATASET_DIR = "/usr/share/datasets/fashion-mnist"


def candidate_paths(folder: str | os.PathLike, spec: IdxSpec, dataset: IdxDataset | None = None) -> list[Path]:
    """Places in ``folder`` where the file of ``spec`` may lie, in order of preference.

    The decompressed file comes first (fastest to read), then its ``.gz``; both at the top
    of ``folder`` and in torchvision's layout ``folder/<dataset.raw_dir>/raw/``.
    """
    folder, raw = Path(folder), (dataset or load_dataset()).raw_dir
    return [d / f"{spec.name}{suffix}" for d in (folder, folder / raw / "raw") for suffix in ("", ".gz")]


def find_file(folder: str | os.PathLike, spec: IdxSpec, dataset: IdxDataset | None = None) -> Path | None:
    """Returns the first existing path of ``candidate_paths``, or ``None``."""
    return next((p for p in candidate_paths(folder, spec, dataset) if p.is_file()), None)


def read_idx_bytes(path: Path, spec: IdxSpec, dataset: IdxDataset | None = None) -> bytes:
    """Reads one IDX file (decompressing ``.gz``) and checks it against ``spec``.

    Checks, in this order: the file decompresses, the magic number, the header's shape,
    the file length, for label files that every label is a class of ``dataset``, and the MD5
    of the decompressed bytes (and of the ``.gz`` file, where the spec has one). The label
    range and the MD5s are computed once per process for each file, spec and class count: they
    are skipped while the file's device, inode, size and modification time are the ones they
    passed with (any copy or write over it changes them).

    Args:
        path: The file, decompressed or ``.gz``.
        spec: What it must hold.
        dataset: The dataset it belongs to (``load_dataset()`` when ``None``), for the
            number of classes and the messages.

    Returns:
        The decompressed file, header included.

    Raises:
        DatasetError: Naming ``path``, what is wrong with it, and how to get a good copy.
    """
    dataset = dataset or load_dataset()

    def fail(problem: str) -> DatasetError:
        return DatasetError(f"{dataset.name} file {path} {problem}. {dataset.how_to_get}")

    stat, compressed, data = _read(path, fail)
    _check_layout(data, spec, fail)
    classes = len(dataset.class_names)
    verified = (str(path.resolve()), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, spec, classes)
    if verified in _VERIFIED:
        return data
    _check_content(data, compressed, spec, classes, fail)
    _VERIFIED.add(verified)
    return data


def _read(path: Path, fail: Callable[[str], DatasetError]) -> tuple[os.stat_result, bytes, bytes]:
    """``(stat, compressed bytes or b"", decompressed bytes)`` of an IDX file.

    Raises:
        DatasetError: ``fail``'s, when it cannot be read or decompressed.
    """
    try:
        stat = path.stat()
        if path.suffix == ".gz":
            compressed = path.read_bytes()
            return stat, compressed, gzip.decompress(compressed)
        return stat, b"", path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise fail(f"is not a complete gzip file ({err})") from None
    except OSError as err:
        raise fail(f"cannot be read ({err.strerror or err})") from None


def _check_layout(data: bytes, spec: IdxSpec, fail: Callable[[str], DatasetError]) -> None:
    """Checks an IDX file's header (magic number, shape) and length against ``spec``.

    Raises:
        DatasetError: ``fail``'s, naming the first mismatch.
    """
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


def _check_content(
    data: bytes, compressed: bytes, spec: IdxSpec, classes: int, fail: Callable[[str], DatasetError]
) -> None:
    """Checks an IDX file's labels (each in ``[0, classes)``, for a label file) and its MD5s:
    that of the decompressed ``data`` and, when read from a ``.gz``, that of ``compressed``.

    Raises:
        DatasetError: ``fail``'s, naming the first mismatch, or that the file cannot be checked
            (only its ``.gz``'s MD5 is published, and it was read decompressed).
    """
    if spec.magic == 2049:
        top = max(data[spec.header_bytes :])
        if top >= classes:
            raise fail(f"holds label {top}, outside 0-{classes - 1}")
    checks = [(spec.md5, data, "decompressed bytes")] + [(spec.gz_md5, compressed, ".gz file")] * bool(compressed)
    for expected, content, what in checks:
        if expected is not None and (md5 := hashlib.md5(content).hexdigest()) != expected:
            raise fail(f"is corrupt: MD5 of its {what} is {md5}, expected {expected}")
    if spec.md5 is None and not compressed:
        raise fail(f"cannot be checked: only its .gz file's MD5 is published; use the original {spec.name}.gz")


#: The files ``read_idx_bytes`` verified in this process, by path and state on disk.
_VERIFIED: set[tuple] = set()


def read_idx(path: Path, spec: IdxSpec, dataset: IdxDataset | None = None) -> torch.Tensor:
    """Reads and verifies one IDX file into a tensor.

    Returns:
        ``torch.uint8`` tensor of shape ``spec.shape``: ``(N, H, W)`` images or ``(N,)``
        labels.

    Raises:
        DatasetError: See ``read_idx_bytes``.
    """
    data = read_idx_bytes(path, spec, dataset)
    array = np.frombuffer(data, dtype=np.uint8, offset=spec.header_bytes).reshape(spec.shape)
    return torch.from_numpy(array.copy())


def ensure_files(
    root: str | os.PathLike, local_copy: str | os.PathLike | None, download: bool, dataset: IdxDataset | None = None
) -> None:
    """Makes sure the four IDX files of ``dataset`` are in ``root``.

    For each file missing from ``root``: take it from ``local_copy`` (verified, then written
    decompressed to ``root``); if ``local_copy`` does not have all four either, try
    torchvision's download (``dataset.torchvision_dataset``) into
    ``root/<dataset.raw_dir>/raw/``. Files already in ``root`` are left as they are (they are
    verified when loaded).

    Args:
        root: The data folder (``data.root``); created if missing.
        local_copy: A folder with the original files, e.g. ``DEBIAN_DATASET_DIR``, or
            ``None`` to skip it.
        download: Whether to fall back to torchvision's download.
        dataset: The dataset (``load_dataset()`` when ``None``).

    Raises:
        DatasetError: A file is in none of these places, a copy in ``local_copy`` is bad,
            or ``root`` cannot be written.
    """
    dataset = dataset or load_dataset()
    root = Path(root)
    missing = [spec for spec in dataset.specs.values() if find_file(root, spec, dataset) is None]
    if not missing:
        return
    _make_folder(root)
    if local_copy is not None and all(find_file(local_copy, s, dataset) for s in missing):
        _copy_files(root, local_copy, missing, dataset)
        return
    _download(root, local_copy, missing, download, dataset)


def _make_folder(root: Path) -> None:
    """Creates the data folder ``root`` and its parents, if missing.

    Raises:
        DatasetError: It cannot be created.
    """
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DatasetError(
            f"Cannot create the data folder {root} ({err.strerror or err}); set `data.root=` to a writable folder."
        ) from None


def _copy_files(root: Path, local_copy: str | os.PathLike, missing: list[IdxSpec], dataset: IdxDataset) -> None:
    """Verifies the ``missing`` files in ``local_copy`` and writes them to ``root``: decompressed,
    or as the original ``.gz`` where only its MD5 is published (so it can be checked again).

    Raises:
        DatasetError: A copy is bad (see ``read_idx_bytes``), or ``root`` cannot be written.
    """
    for spec in missing:
        source = find_file(local_copy, spec, dataset)
        log.info("Copying %s to %s", source, root / spec.name)
        data = read_idx_bytes(source, spec, dataset)
        if spec.md5 is None:  # only the .gz can be checked again later: kept compressed
            data = source.read_bytes()
        try:
            write_atomically(root / (spec.name + ".gz" * (spec.md5 is None)), data)
        except OSError as err:  # read-only folder, disk full, ...
            raise DatasetError(
                f"Cannot write {root / spec.name} ({err.strerror or err}); "
                "set `data.root=` to a writable folder with 100 MB free."
            ) from None


def _download(
    root: Path, local_copy: str | os.PathLike | None, missing: list[IdxSpec], download: bool, dataset: IdxDataset
) -> None:
    """Downloads the dataset with torchvision into ``root/<dataset.raw_dir>/raw/``, the last
    resort for the ``missing`` files.

    Raises:
        DatasetError: ``download`` is false, torchvision cannot download the dataset, or the
            download failed; naming the missing files and where they were looked for.
    """
    looked = " or ".join([str(root)] + ([str(local_copy)] if local_copy is not None else []))
    names = f"{dataset.name} files {', '.join(s.name for s in missing)} are not in {looked}"
    if not download or dataset.torchvision_dataset is None:
        why = "data.download is false" if download is False else "torchvision cannot download this dataset"
        raise DatasetError(f"{names} and {why}. {dataset.how_to_get}")
    log.info("%s not found in %s; trying torchvision's download", dataset.name, looked)
    import torchvision.datasets

    try:
        getattr(torchvision.datasets, dataset.torchvision_dataset)(str(root), train=True, download=True)
    except Exception as err:  # torchvision raises RuntimeError, URLError, OSError, ...
        raise DatasetError(
            f"{names}, and torchvision's download failed ({type(err).__name__}: {err}). {dataset.how_to_get}"
        ) from None


def _path(root: str | os.PathLike, spec: IdxSpec, dataset: IdxDataset) -> Path:
    path = find_file(root, spec, dataset)
    if path is None:
        raise DatasetError(f"{dataset.name} file {spec.name} is missing from {root}. {dataset.how_to_get}")
    return path


def verify_files(root: str | os.PathLike, dataset: IdxDataset | None = None) -> None:
    """Reads and checks all four files in ``root`` (see ``read_idx_bytes``), so that a
    bad test file stops a run before training rather than after it.

    Raises:
        DatasetError: A file is missing, truncated or corrupt.
    """
    dataset = dataset or load_dataset()
    for spec in dataset.specs.values():
        read_idx_bytes(_path(root, spec, dataset), spec, dataset)


def load_split(
    root: str | os.PathLike, split: str, dataset: IdxDataset | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loads and verifies one official split from ``root``.

    Args:
        root: Folder holding the IDX files (see ``candidate_paths``).
        split: ``"train"`` (60,000 FashionMNIST images) or ``"test"`` (10,000).
        dataset: The dataset (``load_dataset()``, FashionMNIST, when ``None``).

    Returns:
        ``(images, labels)``: ``torch.uint8`` of shape ``(N, H, W)`` and ``torch.int64``
        of shape ``(N,)`` with values ``0`` to ``num_classes - 1``.

    Raises:
        DatasetError: A file is missing, truncated or corrupt.
        ValueError: ``split`` is not ``"train"`` or ``"test"``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    dataset = dataset or load_dataset()
    specs = [dataset.specs[(split, kind)] for kind in ("images", "labels")]
    images, labels = (read_idx(_path(root, spec, dataset), spec, dataset) for spec in specs)
    return images, labels.long()
