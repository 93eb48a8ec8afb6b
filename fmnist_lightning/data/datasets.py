"""Datasets of IDX files as configs: what ``conf/data/<dataset>.yaml`` says the four files of a
dataset must hold, and its class names. ``fmnist_lightning.data.idx`` reads and verifies the
files against these descriptions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import numpy as np

from fmnist_lightning.errors import require


@dataclass(frozen=True)
class IdxSpec:
    """What one decompressed IDX file must hold.

    Attributes:
        name: File name without ``.gz``, e.g. ``"train-images-idx3-ubyte"``.
        magic: Big-endian int32 magic number: 2051 for images, 2049 for labels.
        shape: Array shape stored in the header, e.g. ``(60000, 28, 28)``.
        md5: MD5 of the decompressed file, or ``None`` where only ``gz_md5`` is published.
        gz_md5: MD5 of the published ``.gz`` file, checked when the file is read compressed;
            ``None`` where the decompressed file's is published (Debian recompresses
            FashionMNIST's ``.gz`` files, so only its decompressed bytes are stable).
    """

    name: str
    magic: int
    shape: tuple[int, ...]
    md5: str | None
    gz_md5: str | None = None

    @property
    def header_bytes(self) -> int:
        """Header size in bytes: the magic number plus one int32 per dimension."""
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
    """A dataset of four IDX files, as ``conf/data/<dataset>.yaml`` describes it (see
    ``from_config``).

    Attributes:
        name: Its name in messages, e.g. ``"FashionMNIST"``.
        class_names: Names in label order; labels are 0 to ``len(class_names) - 1``.
        specs: What each file must hold, by ``(split, kind)`` (see ``FILE_KEYS``).
        how_to_get: A sentence on where to get good copies of the files.
        torchvision_dataset: The ``torchvision.datasets`` class that downloads it (its
            ``<root>/<class>/raw/`` layout is searched too), or ``None``.
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
            files: ``{train_images|train_labels|test_images|test_labels: {name, shape, md5,
                gz_md5}}``: each file's name without ``.gz``, its shape (``[N, H, W]`` or
                ``[N]``), the MD5 of its decompressed bytes and, optionally, that of its
                published ``.gz`` (one of the two may be ``null``, not both).

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
        """What identifies the test files: ``{"test_images": ..., "test_labels": ...}``, each
        file's published MD5 (of the decompressed bytes, or of the ``.gz`` where only that is
        published). Two runs with the same were tested on the same images."""
        return {
            f"test_{kind}": self.specs["test", kind].md5 or self.specs["test", kind].gz_md5
            for kind in ("images", "labels")
        }

    @property
    def raw_dir(self) -> str:
        """torchvision's folder name for the dataset."""
        return self.torchvision_dataset or self.name


def _spec(kind: str, field: str, entry: Mapping[str, Any]) -> IdxSpec:
    """Checks and builds the ``IdxSpec`` of one file from its entry ``files.<field>`` (see
    ``IdxDataset.from_config``); ``kind`` is ``"images"`` or ``"labels"``.

    Raises:
        ArgumentError: Naming the key of the entry (``files.<field>.shape``, ...) that is wrong.
    """
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
    """The dataset described by ``conf/data/<name>.yaml``, for scripts and tests that read its
    files without a DataModule. The functions of ``fmnist_lightning.data.idx`` use
    ``load_dataset()``, FashionMNIST, when given no dataset."""
    return IdxDataset.from_config(**dataset_config(name))
