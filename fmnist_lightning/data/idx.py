"""Finding, reading and verifying the four IDX files of a dataset (FashionMNIST, MNIST, KMNIST or
your own), as ``conf/data/<dataset>.yaml`` describes them (names, shapes, MD5s, class names) and
nowhere in the code: ``IdxDataset`` is that description."""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fmnist_lightning.artifacts import write_atomically
from fmnist_lightning.errors import DatasetError, require

log = logging.getLogger(__name__)

#: Where Debian's and Ubuntu's ``dataset-fashion-mnist`` package installs the ``.gz`` files.
DEBIAN_DATASET_DIR = "/usr/share/datasets/fashion-mnist"


def candidate_paths(folder: str | os.PathLike, spec: IdxSpec, dataset: IdxDataset | None = None) -> list[Path]:
    """Where in ``folder`` the file of ``spec`` may lie, in order of preference: decompressed, then ``.gz``;
    at the top of ``folder``, then in torchvision's ``folder/<dataset.raw_dir>/raw/``."""
    folder, raw = Path(folder), (dataset or load_dataset()).raw_dir
    return [d / f"{spec.name}{suffix}" for d in (folder, folder / raw / "raw") for suffix in ("", ".gz")]


def find_file(folder: str | os.PathLike, spec: IdxSpec, dataset: IdxDataset | None = None) -> Path | None:
    """Returns the first existing path of ``candidate_paths``, or ``None``."""
    return next((p for p in candidate_paths(folder, spec, dataset) if p.is_file()), None)


def read_idx_bytes(path: Path, spec: IdxSpec, dataset: IdxDataset | None = None) -> bytes:
    """The decompressed bytes (header included) of one IDX file, decompressed or ``.gz``, checked against
    ``spec``: magic number, shape, length, labels within ``dataset``'s classes (``load_dataset()`` when
    ``None``), and MD5s. Labels and MD5s are checked once per process while the file's device, inode,
    size and modification time stay the same.

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
    """``(stat, compressed bytes or b"", decompressed bytes)`` of an IDX file, or ``fail``'s error."""
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
    """Checks an IDX file's magic number, shape and length against ``spec``, raising ``fail``'s error."""
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
    """Checks an IDX file's labels (in ``[0, classes)``) and MD5s, raising ``fail``'s error."""
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
    """One IDX file, verified (``read_idx_bytes``), as a uint8 tensor of ``spec.shape``: ``(N, H, W)`` or ``(N,)``.

    Raises:
        DatasetError: See ``read_idx_bytes``.
    """
    data = read_idx_bytes(path, spec, dataset)
    array = np.frombuffer(data, dtype=np.uint8, offset=spec.header_bytes).reshape(spec.shape)
    return torch.from_numpy(array.copy())


def ensure_files(
    root: str | os.PathLike, local_copy: str | os.PathLike | None, download: bool, dataset: IdxDataset | None = None
) -> None:
    """Makes sure the four IDX files of ``dataset`` (``load_dataset()`` when ``None``) are in ``root``
    (created if missing): the missing ones are copied, verified, from ``local_copy`` (e.g.
    ``DEBIAN_DATASET_DIR``) if it has them all, else downloaded by torchvision when ``download``.

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
    """Creates the data folder ``root`` and its parents, or raises ``DatasetError``."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DatasetError(
            f"Cannot create the data folder {root} ({err.strerror or err}); set `data.root=` to a writable folder."
        ) from None


def _copy_files(root: Path, local_copy: str | os.PathLike, missing: list[IdxSpec], dataset: IdxDataset) -> None:
    """Writes the verified ``missing`` files of ``local_copy`` to ``root``, decompressed unless only a ``.gz`` MD5."""
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
    """Downloads the dataset with torchvision into ``root/<dataset.raw_dir>/raw/``, or raises ``DatasetError``."""
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
    """Reads and checks all four files in ``root`` (``read_idx_bytes``): a bad test file stops a run before training.

    Raises:
        DatasetError: A file is missing, truncated or corrupt.
    """
    dataset = dataset or load_dataset()
    for spec in dataset.specs.values():
        read_idx_bytes(_path(root, spec, dataset), spec, dataset)


def load_split(
    root: str | os.PathLike, split: str, dataset: IdxDataset | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One verified split, ``"train"`` or ``"test"``, of ``dataset`` (``load_dataset()`` when ``None``) from
    ``root``: uint8 ``(N, H, W)`` images and int64 ``(N,)`` labels in ``[0, num_classes)``.

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


@dataclass(frozen=True)
class IdxSpec:
    """What one decompressed IDX file must hold.

    Attributes:
        name: File name without ``.gz``, e.g. ``"train-images-idx3-ubyte"``.
        magic: Big-endian int32 magic number: 2051 for images, 2049 for labels.
        shape: Array shape stored in the header, e.g. ``(60000, 28, 28)``.
        md5: MD5 of the decompressed file, or ``None`` where only ``gz_md5`` is published.
        gz_md5: MD5 of the published ``.gz`` file, checked when read compressed; ``None`` where
            ``md5`` is published (Debian recompresses FashionMNIST's ``.gz`` files).
    """

    name: str
    magic: int
    shape: tuple[int, ...]
    md5: str | None
    gz_md5: str | None = None

    @property
    def header_bytes(self) -> int:
        """Header size in bytes: the magic number and one int32 per dimension."""
        return 4 * (1 + len(self.shape))

    @property
    def total_bytes(self) -> int:
        """Expected size of the decompressed file in bytes."""
        return self.header_bytes + int(np.prod(self.shape))


#: The four files of a dataset, by ``(split, kind)``, and their names in ``data.files``.
FILE_KEYS = {
    ("train", "images"): "train_images",
    ("train", "labels"): "train_labels",
    ("test", "images"): "test_images",
    ("test", "labels"): "test_labels",
}


@dataclass(frozen=True)
class IdxDataset:
    """A dataset of four IDX files, as ``conf/data/<dataset>.yaml`` describes it (``from_config``).

    Attributes:
        name: Its name in messages, e.g. ``"FashionMNIST"``.
        class_names: Names in label order; labels are 0 to ``len(class_names) - 1``.
        specs: What each file must hold, by ``(split, kind)`` (see ``FILE_KEYS``).
        how_to_get: A sentence on where to get good copies of the files.
        torchvision_dataset: The ``torchvision.datasets`` class that downloads it, or ``None``.
    """

    name: str
    class_names: tuple[str, ...]
    specs: Mapping[tuple[str, str], IdxSpec]
    how_to_get: str
    torchvision_dataset: str | None = None

    @classmethod
    def from_config(
        cls,
        name: str,
        class_names: Sequence[str],
        num_classes: int,
        files: Mapping[str, Mapping[str, Any]],
        how_to_get: str,
        torchvision_dataset: str | None = None,
    ) -> IdxDataset:
        """Checks and builds the description from a dataset config's values.

        Args:
            files: ``{train_images|train_labels|test_images|test_labels: {name, shape, md5, gz_md5}}``
                (``IdxSpec``'s fields; ``gz_md5`` optional; ``md5`` or ``gz_md5`` may be ``null``, not both).

        Raises:
            ArgumentError: Naming the argument (``class_names``, ``files``, ...) that is wrong.
        """
        require(len(class_names) == num_classes, "class_names", list(class_names), f"{num_classes} names (num_classes)")
        require(set(files) == set(FILE_KEYS.values()), "files", sorted(files), f"the keys {sorted(FILE_KEYS.values())}")
        specs = {key: _spec(key[1], field, files[field]) for key, field in FILE_KEYS.items()}
        for split in ("train", "test"):
            n = (specs[(split, "images")].shape[0], specs[(split, "labels")].shape[0])
            require(n[0] == n[1], f"files.{split}_labels.shape", n[1], f"{n[0]} labels, one per image")
        return cls(name, tuple(class_names), specs, how_to_get, torchvision_dataset)

    @property
    def test_checksums(self) -> dict[str, str]:
        """The test files' published MD5s (``md5``, else ``gz_md5``): ``{"test_images": ..., "test_labels": ...}``."""
        return {
            f"test_{kind}": self.specs["test", kind].md5 or self.specs["test", kind].gz_md5
            for kind in ("images", "labels")
        }

    @property
    def raw_dir(self) -> str:
        """torchvision's folder name for the dataset."""
        return self.torchvision_dataset or self.name


def _spec(kind: str, field: str, entry: Mapping[str, Any]) -> IdxSpec:
    """The checked ``IdxSpec`` of ``files.<field>`` (``kind``: ``"images"`` or ``"labels"``)."""
    where = f"files.{field}"
    allowed = "the keys name, shape, md5 and optionally gz_md5"
    require({"name", "shape", "md5"} <= set(entry) <= {"name", "shape", "md5", "gz_md5"}, where, entry, allowed)
    shape = tuple(entry["shape"] or ())
    require(len(shape) == (3 if kind == "images" else 1), f"{where}.shape", list(shape), "[N, H, W] or [N]")
    sums = {k: entry.get(k) for k in ("md5", "gz_md5")}
    for k, md5 in sums.items():
        ok = md5 is None or (len(str(md5)) == 32 and all(c in "0123456789abcdef" for c in str(md5)))
        require(ok, f"{where}.{k}", md5, "32 lowercase hex digits or null")
    require(any(sums.values()), f"{where}.md5", None, "an MD5 (or a gz_md5 for the .gz file)")
    magic = 2051 if kind == "images" else 2049
    return IdxSpec(str(entry["name"]), magic, shape, sums["md5"], sums["gz_md5"])


#: The keys of a data config that describe its dataset (``IdxDataset.from_config``'s arguments).
DATASET_KEYS = ("name", "class_names", "num_classes", "files", "how_to_get", "torchvision_dataset")


def dataset_config(name: str) -> dict[str, Any]:
    """The dataset keys of ``conf/data/<name>.yaml`` (``DATASET_KEYS``), as plain values."""
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(
        OmegaConf.load(str(resources.files("fmnist_lightning.conf") / "data" / f"{name}.yaml"))
    )
    return {k: config[k] for k in DATASET_KEYS}


@cache
def load_dataset(name: str = "fashion_mnist") -> IdxDataset:
    """The dataset described by ``conf/data/<name>.yaml``, FashionMNIST by default."""
    return IdxDataset.from_config(**dataset_config(name))
