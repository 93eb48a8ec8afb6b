"""FashionMNIST data: reading and verifying IDX files, batched transforms, the DataModule."""

from fmnist_lightning.data.datamodule import FashionMNISTDataModule
from fmnist_lightning.data.idx import CLASS_NAMES, DatasetError, load_split
from fmnist_lightning.data.transforms import build_preprocess

__all__ = ["CLASS_NAMES", "DatasetError", "FashionMNISTDataModule", "build_preprocess", "load_split"]
