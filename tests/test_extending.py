"""A researcher's change costs one or two files: a network of their own, defined here and not
in the package, trains, resumes, evaluates, predicts and appears in a sweep summary with only
a ``model._target_=`` override; ``load_from_checkpoint`` needs nothing but the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from conftest import job_folder
from fmnist_lightning.data import load_split
from fmnist_lightning.models import FashionMNISTClassifier
from fmnist_lightning.training.status import read_status
from in_process import run_command


class ResNet(nn.Module):
    """A small residual network (He et al., 2016), as a user would write one: plain PyTorch,
    checking its own argument with a plain ValueError.

    Float ``(B, 1, S, S)`` → ``(B, 10)`` logits: a 3×3 stem to ``width`` channels, ``blocks``
    residual blocks (two 3×3 convs with batch norm), global average pooling, a linear layer.
    """

    def __init__(self, image_size: int = 28, blocks: int = 2, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        if blocks < 1:
            raise ValueError(f"blocks must be at least 1, got {blocks}")
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(width, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
                nn.Conv2d(width, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
            )
            for _ in range(blocks)
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = torch.relu(x + block(x))
        return self.head(x)


# The logger is not what these tests are about: CSV, the cheapest.
SHORT = (
    "trainer=cpu",
    "trainer.limit_train_batches=40",
    "trainer.limit_val_batches=4",
    "data.image_size=16",
    "logger=csv",
)


#: The one YAML a user writes for the network above, in a config folder of their own
#: (``hydra.searchpath``), or in ``conf/model/`` of their clone.
RESNET_YAML = """\
_target_: test_extending.ResNet
image_size: ${data.image_size}
blocks: 2
width: 16
"""


@pytest.fixture(scope="module")
def sweep(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-job sweep of the network above: ``model=resnet model.blocks=1,2``."""
    root = tmp_path_factory.mktemp("extending")
    (root / "my_conf" / "model").mkdir(parents=True)
    (root / "my_conf" / "model" / "resnet.yaml").write_text(RESNET_YAML)
    folder = root / "sweep"
    result = run_command(
        "train.py",
        "-m",
        f"hydra.searchpath=[file://{root / 'my_conf'}]",
        "model=resnet",
        "model.blocks=1,2",
        "trainer.max_epochs=1",
        *SHORT,
        f"data.root={data_root}",
        f"hydra.sweep.dir={folder}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


def test_a_network_of_your_own_appears_in_the_sweep_summary(sweep: Path) -> None:
    summary = (sweep / "summary.md").read_text()
    assert "`model.blocks`" in summary
    for number in (0, 1):
        job = job_folder(sweep, number)
        status = read_status(job)
        assert status["status"] == "finished" and status["metrics"]["test/acc"] > 0.3, status
        assert (job / "report.json").is_file() and (job / "curves.png").is_file()


def test_a_model_target_override_is_enough(make_cfg, tmp_path: Path) -> None:
    from fmnist_lightning.training.pipeline import train

    metrics = train(
        make_cfg("model=two_conv_5x5", "model._target_=test_extending.ResNet", "+model.blocks=1", "debug=fdr")
    )
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert (tmp_path / "report.json").is_file()


def test_it_resumes_evaluates_and_predicts(sweep: Path, tmp_path: Path) -> None:
    job = job_folder(sweep, 0)
    result = run_command("train.py", f"resume={job}", "trainer.max_epochs=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_status(job)["epochs"] == 2

    result = run_command("evaluate.py", f"run_dir={job}", "device=cpu", f"hydra.run.dir={tmp_path / 'eval'}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["accuracy"] == pytest.approx(read_status(job)["metrics"]["test/acc"], abs=1e-6)

    images, _ = load_split(Path(_data_root(job)), "test")
    Image.fromarray(images[0].numpy()).save(tmp_path / "item.png")
    result = run_command(
        "predict.py",
        f"run_dir={job}",
        f"images={tmp_path / 'item.png'}",
        "device=cpu",
        f"hydra.run.dir={tmp_path / 'p'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "item.png:" in result.stdout


def _data_root(job: Path) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.load(job / ".hydra" / "config.yaml").data.root


def test_load_from_checkpoint_needs_only_the_checkpoint(sweep: Path, tmp_path: Path) -> None:
    """Lightning's own convention: every checkpoint the project writes rebuilds its model."""
    job = job_folder(sweep, 1)
    for name in [read_status(job)["best_checkpoint"], "checkpoints/last.ckpt"]:
        bare = tmp_path / Path(name).name
        bare.write_bytes((job / name).read_bytes())  # no run folder around it
        model = FashionMNISTClassifier.load_from_checkpoint(bare, map_location="cpu").eval()
        assert isinstance(model.net, ResNet) and len(model.net.blocks) == 2
        with torch.inference_mode():
            logits = model(torch.rand(3, 1, 16, 16))
        assert logits.shape == (3, 10)
    saved = torch.load(job / "net.pt", weights_only=True)
    best = FashionMNISTClassifier.load_from_checkpoint(job / read_status(job)["best_checkpoint"], map_location="cpu")
    assert all(torch.equal(saved[k], v) for k, v in best.net.state_dict().items())
