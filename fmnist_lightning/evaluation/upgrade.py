"""Run configs written by older versions of the project, brought to today's keys."""

from __future__ import annotations

from importlib import resources

from omegaconf import DictConfig, OmegaConf, open_dict

from fmnist_lightning.data.datasets import DATASET_KEYS

#: The DataModule's name in run configs written before datasets became configs.
OLD_DATAMODULE = "fmnist_lightning.data.FashionMNISTDataModule"


def upgrade_config(cfg: DictConfig) -> DictConfig:
    """Brings a run's config written before the LightningModule's parts and the datasets
    became config groups (commit 97bf8f4 and earlier) to today's keys, in place; a newer
    config is left as it is. The one compatibility mapping, used wherever a run's config is
    loaded (``load_run_config``, and ``resume=``, whose config is the run's own):

    - ``data._target_: fmnist_lightning.data.FashionMNISTDataModule`` becomes ``IdxDataModule``
      with the dataset keys of ``conf/data/fashion_mnist.yaml`` (then the only dataset);
    - the top-level ``label_smoothing`` becomes ``loss: conf/loss/cross_entropy.yaml`` with it;
    - a missing ``mix`` is none, missing ``metrics`` are ``conf/metrics/accuracy.yaml`` (then
      the only metric), and a missing ``module`` is ``conf/train.yaml``'s.

    The run then builds the same network, logs the same keys and loads its checkpoints.
    """
    conf = resources.files("fmnist_lightning.conf")

    def default(path: str) -> DictConfig:
        return OmegaConf.load(str(conf / path))

    with open_dict(cfg):
        if cfg.data.get("_target_") == OLD_DATAMODULE:
            dataset = default("data/fashion_mnist.yaml")
            described = OmegaConf.create({k: dataset[k] for k in DATASET_KEYS} | {"_target_": dataset._target_})
            cfg.data = OmegaConf.merge(cfg.data, described)
        if "loss" not in cfg:
            cfg.loss = default("loss/cross_entropy.yaml")
            cfg.loss.label_smoothing = cfg.pop("label_smoothing", 0.0)
        if "mix" not in cfg:
            cfg.mix = {}  # as conf/mix/none.yaml composes
        if "metrics" not in cfg:
            cfg.metrics = default("metrics/accuracy.yaml")
        if "module" not in cfg:
            cfg.module = default("train.yaml").module
    return cfg
