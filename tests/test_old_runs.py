"""A run folder written before the research seams (commit 97bf8f4: ``label_smoothing`` at the
top level, no ``loss``, ``mix``, ``metrics`` or ``module``, and ``FashionMNISTDataModule``
without a dataset description) still evaluates, predicts, exports and resumes, through the
one compatibility mapping ``fmnist_lightning.evaluation.upgrade.upgrade_config``.

``tests/data/run_97bf8f4`` is such a folder, made by that commit with ``python train.py
model=vgg_bn model.widths=[4,8,8] model.convs_per_stage=1 model.hidden=16
model.flip_tta=false data.image_size=16 trainer.max_epochs=1 trainer.limit_train_batches=30
trainer.limit_val_batches=3 trainer.precision=32-true label_smoothing=0.1 scheduler=cosine
logger=csv``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from fmnist_lightning.data import load_dataset, load_split
from fmnist_lightning.models import FashionMNISTClassifier
from fmnist_lightning.run_folder import RunFolder
from in_process import run_command

OLD_RUN = Path(__file__).parent / "data" / "run_97bf8f4"


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    """A copy of the old run folder, which the tests may change."""
    return Path(shutil.copytree(OLD_RUN, tmp_path / "run"))


def test_its_config_is_mapped_to_todays_keys(old_run: Path) -> None:
    cfg = RunFolder(old_run).load_config()
    assert "label_smoothing" not in cfg and cfg.loss.label_smoothing == 0.1
    assert cfg.loss._target_ == "torch.nn.CrossEntropyLoss" and not cfg.mix
    assert list(cfg.metrics) == ["acc"] and cfg.module._target_.endswith("FashionMNISTClassifier")
    assert cfg.data._target_ == "fmnist_lightning.data.IdxDataModule" and cfg.data.image_size == 16
    assert tuple(cfg.data.class_names) == load_dataset().class_names


@pytest.mark.slow  # the commands on the old folder; the mapping itself is checked above, in the default suite
def test_it_evaluates_predicts_and_exports(old_run: Path, data_root: Path, tmp_path: Path) -> None:
    result = run_command(
        "evaluate.py", f"run_dir={old_run}", f"data_root={data_root}", "device=cpu", f"hydra.run.dir={tmp_path / 'e'}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "e" / "report.json").read_text())
    assert report["accuracy"] == pytest.approx(RunFolder(old_run).read_status()["metrics"]["test/acc"], abs=2e-4)
    assert report["class_names"] == list(load_dataset().class_names)

    images, _ = load_split(data_root, "test")
    Image.fromarray(images[0].numpy()).save(tmp_path / "item.png")
    result = run_command("predict.py", f"run_dir={old_run}", f"images={tmp_path / 'item.png'}", "device=cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    assert any(f": {name} (" in result.stdout for name in load_dataset().class_names), result.stdout

    result = run_command("export.py", f"run_dir={old_run}", "format=torch_export")
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow  # a training run; the mapping it relies on is checked above, in the default suite
def test_it_resumes(old_run: Path, data_root: Path) -> None:
    result = run_command("train.py", f"resume={old_run}", "trainer.max_epochs=2", f"data.root={data_root}")
    assert result.returncode == 0, result.stderr[-3000:]
    status = RunFolder(old_run).read_status()
    assert status["status"] == "finished" and status["epochs"] == 2, status
    assert status["metrics"]["val/acc_best"] >= 0.187  # the first epoch's best, kept by the resume


def test_its_bare_checkpoint_loads(old_run: Path) -> None:
    """Lightning drops the checkpoint's hyperparameters that ``__init__`` no longer takes
    (``label_smoothing``); the network and its weights come back."""
    model = FashionMNISTClassifier.load_from_checkpoint(old_run / "checkpoints" / "epoch_000.ckpt", map_location="cpu")
    saved = torch.load(old_run / "net.pt", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in model.net.state_dict().items())
