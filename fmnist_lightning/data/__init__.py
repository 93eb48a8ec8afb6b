"""IDX datasets: their descriptions, reading and verifying their files, batched transforms and
mixing, the DataModule."""

from fmnist_lightning.data.datamodule import IdxDataModule
from fmnist_lightning.data.datasets import IdxDataset, load_dataset
from fmnist_lightning.data.idx import DatasetError, load_split
from fmnist_lightning.data.transforms import build_preprocess

__all__ = ["DatasetError", "IdxDataModule", "IdxDataset", "build_preprocess", "load_dataset", "load_split"]
