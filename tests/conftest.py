"""Shared fixtures: the real FashionMNIST in a temporary folder, and composed configs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from fmnist_lightning.data.idx import DEBIAN_DATASET_DIR, IDX_SPECS, ensure_files, find_file

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the four verified, decompressed IDX files of the real dataset."""
    if not all(find_file(DEBIAN_DATASET_DIR, spec) for spec in IDX_SPECS.values()):
        pytest.fail(
            f"The tests need the real FashionMNIST in {DEBIAN_DATASET_DIR}: "
            "run `apt-get install dataset-fashion-mnist` as root (or `bash scripts/setup.sh`)."
        )
    root = tmp_path_factory.mktemp("fashion-mnist")
    ensure_files(root, DEBIAN_DATASET_DIR, download=False)
    return root


@pytest.fixture
def make_cfg(data_root: Path, tmp_path: Path) -> Callable[..., DictConfig]:
    """Composes ``conf/train.yaml`` with overrides, writing into ``tmp_path`` and reading the
    real data from ``data_root``; Lightning runs on the CPU."""

    def _make(*overrides: str) -> DictConfig:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(
                "train",
                overrides=[
                    f"output_dir={tmp_path}",
                    f"data.root={data_root}",
                    "trainer.accelerator=cpu",
                    "trainer.devices=1",
                    *overrides,
                ],
            )

    return _make


def config_names(group: str) -> list[str]:
    """The option names of a config group, e.g. ``config_names("model")``."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))
