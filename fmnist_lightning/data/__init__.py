"""IDX datasets: their descriptions, reading and verifying their files, batched transforms and
mixing, the DataModule."""

from fmnist_lightning.data.augment import build_preprocess
from fmnist_lightning.data.datamodule import IdxDataModule
from fmnist_lightning.data.idx import DatasetError, IdxDataset, load_dataset, load_split

__all__ = ["DatasetError", "IdxDataModule", "IdxDataset", "build_preprocess", "load_dataset", "load_split"]
