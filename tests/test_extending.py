"""A researcher's change costs one class and at most one YAML or override, with no file of the
package edited: a network, a loss, a batch mixing, a metric and a LightningModule subclass
defined in this module, and a dataset of one's own (scikit-learn's digits,
``tests/digits.py``). The YAMLs are in ``tests/conf/``, a config folder of one's own on
``hydra.searchpath``. Together they train, resume, evaluate, predict, export and appear in a
sweep summary; the digits are named as digits everywhere downstream; and
``load_from_checkpoint`` needs nothing but the checkpoint."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Annotated

import pytest
import torch
from digits import CONF, write_digits
from PIL import Image
from pydantic import Field, validate_call
from torch import nn
from torch.nn import functional as F
from torchmetrics import Metric

from conftest import job_folder
from fmnist_lightning.data import load_split
from fmnist_lightning.data.idx import DATASET_KEYS, IdxDataset
from fmnist_lightning.evaluation.runs import load_trained
from fmnist_lightning.models import FashionMNISTClassifier
from fmnist_lightning.run_folder import RunFolder
from in_process import run_command

DIGITS = tuple(str(d) for d in range(10))


class ResNet(nn.Module):
    """A small residual network (He et al., 2016), as a user would write one: plain PyTorch,
    declaring the rule of its own argument where it is (pydantic's ``validate_call``).

    Float ``(B, 1, S, S)`` → ``(B, 10)`` logits: a 3×3 stem to ``width`` channels, ``blocks``
    residual blocks (two 3×3 convs with batch norm), average pooling to 4×4 (which keeps where
    strokes are), a linear layer.
    """

    @validate_call
    def __init__(
        self, image_size: int = 28, blocks: Annotated[int, Field(ge=1)] = 2, width: int = 16, num_classes: int = 10
    ) -> None:
        super().__init__()
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
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(16 * width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = torch.relu(x + block(x))
        return self.head(x)


class PolyLoss(nn.Module):
    """Poly-1 loss (Leng et al., 2022, arXiv:2204.12511, eq. 3): cross-entropy plus
    ``epsilon * (1 - p_t)``, where ``p_t`` is the probability given to the target; for soft
    targets, ``p_t = sum_c t_c p_c``. Float ``(B, C)`` logits, int64 ``(B,)`` labels or float
    ``(B, C)`` targets → the mean loss."""

    def __init__(self, epsilon: float = 1.0) -> None:
        super().__init__()
        self.epsilon = epsilon

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.dim() == 1:
            target = F.one_hot(target, logits.shape[1]).to(logits.dtype)
        p_t = (target * logits.float().softmax(dim=1)).sum(dim=1)
        return F.cross_entropy(logits, target) + self.epsilon * (1 - p_t).mean()


class HalfAndHalf(nn.Module):
    """A batch mixing of one's own: the right half of each image comes from the next image of
    the batch, and the targets are mixed half and half. Float ``(B, 1, H, W)`` images and
    ``(B, C)`` one-hot targets → the same shapes."""

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.clone()
        half = images.shape[-1] // 2
        images[..., half:] = images.roll(1, dims=0)[..., half:]
        return images, (targets + targets.roll(1, dims=0)) / 2


class MeanConfidence(Metric):
    """The mean of the highest softmax probability, a fraction: a metric of one's own."""

    higher_is_better = True

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.total += logits.float().softmax(dim=1).amax(dim=1).sum()
        self.count += len(labels)

    def compute(self) -> torch.Tensor:
        return self.total / self.count


class LogitPenaltyClassifier(FashionMNISTClassifier):
    """A LightningModule subclass: its own ``training_step`` adds ``penalty`` times the mean
    squared logit to the loss (logit regularisation) and logs the mean logit norm as
    ``train/logit_norm``, which it adds to ``logged_keys``."""

    @validate_call
    def __init__(self, *args, penalty: Annotated[float, Field(ge=0)] = 0.01, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.penalty = penalty

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, target = self.mix_batch(*batch)
        logits = self(images)
        loss = self.train_criterion(logits, target) + self.penalty * logits.float().pow(2).mean()
        self.update_metrics("train", loss, logits, target)
        self.log("train/logit_norm", logits.detach().float().norm(dim=1).mean(), on_step=False, on_epoch=True)
        return loss

    def logged_keys(self, stage: str) -> list[str]:
        return super().logged_keys(stage) + (["train/logit_norm"] if stage == "train" else [])


#: What each change costs: one class each, and one YAML (loss, mix, dataset) or override.
CHANGES = (
    f"hydra.searchpath=[file://{CONF}]",
    "model=resnet",
    "data=digits",
    "mix=halves",
    "+metrics.confidence={_target_:test_extending.MeanConfidence}",
    "module._target_=test_extending.LogitPenaltyClassifier",
)
#: Any logged key can be monitored and optimised: the user's metric is.
MONITORED = ("callbacks.model_checkpoint.monitor=val/confidence", "optimized_metric=val/confidence")
SHORT = ("trainer=cpu", "trainer.max_epochs=1", "trainer.precision=32-true", "logger=csv")
#: A run folder read back names this module's classes: trusted on each command that reads it
#: (docs/runs.md, Sharing runs safely); training a new run needs no trust.
TRUSTED = ["test_extending"]
TRUST = "trusted_modules=[test_extending]"


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digits(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="module")
def sweep(digits_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two jobs on the digits, every part of one's own: ``loss=poly,cross_entropy``."""
    folder = tmp_path_factory.mktemp("seams") / "sweep"
    result = run_command(
        "train.py",
        "-m",
        *CHANGES,
        *MONITORED,
        "loss=poly,cross_entropy",
        *SHORT,
        f"data.root={digits_root}",
        f"hydra.sweep.dir={folder}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


def test_every_change_of_your_own_trains_and_appears_in_the_sweep_summary(sweep: Path) -> None:
    summary = (sweep / "summary.md").read_text()
    assert "| `loss` |" in summary and "| poly |" in summary and "| cross_entropy |" in summary, summary
    assert "Ranked by the mean of `val/confidence`" in summary, summary
    for number in (0, 1):
        job = job_folder(sweep, number)
        status = RunFolder(job).read_status()
        assert status["status"] == "finished", status
        metrics = status["metrics"]
        assert metrics["test/acc"] > 0.5, metrics  # ten digits after one epoch of 43 batches
        assert 0 < metrics["val/confidence"] <= 1 and metrics["train/logit_norm"] > 0, metrics
        report = json.loads((job / "report.json").read_text())
        assert report["class_names"] == list(DIGITS) and report["num_samples"] == 297
        assert "| 7 |" in (job / "report.md").read_text()  # the classes are digits, not clothes
    cfg = RunFolder(job_folder(sweep, 0)).load_config(TRUSTED)
    assert (
        cfg.model._target_ == "test_extending.ResNet"
        and cfg.loss._target_ == "test_extending.PolyLoss"
        and cfg.mix._target_ == "test_extending.HalfAndHalf"
    )


def test_it_resumes_evaluates_predicts_serves_and_exports(sweep: Path, digits_root: Path, tmp_path: Path) -> None:
    job = job_folder(sweep, 0)
    result = run_command("train.py", f"resume={job}", "trainer.max_epochs=2", TRUST)
    assert result.returncode == 0, result.stderr[-3000:]
    assert RunFolder(job).read_status()["epochs"] == 2 and RunFolder(job).read_status()["status"] == "finished"

    result = run_command("evaluate.py", f"run_dir={job}", "device=cpu", TRUST, f"hydra.run.dir={tmp_path / 'eval'}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["class_names"] == list(DIGITS)
    assert report["accuracy"] == pytest.approx(RunFolder(job).read_status()["metrics"]["test/acc"], abs=1e-6)

    model = load_trained(job, trusted_modules=["test_extending"])
    assert isinstance(model.module, LogitPenaltyClassifier) and model.class_names == DIGITS
    images, _ = load_split(digits_root, "test", IdxDataset.from_config(**_dataset_keys(job)))
    Image.fromarray(images[0].numpy()).save(tmp_path / "digit.png")
    result = run_command(
        "predict.py", f"run_dir={job}", f"images={tmp_path / 'digit.png'}", "preprocess=none", "device=cpu", TRUST,
        f"hydra.run.dir={tmp_path / 'p'}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    named = result.stdout.split("digit.png: ", 1)[1].split(" (")[0]
    assert named in DIGITS, result.stdout  # a digit's name, never a garment's

    from fmnist_lightning.serving.server import FashionMNISTAPI, ServeOptions

    options = ServeOptions(run_dir=str(job), preprocess="none", trusted_modules=["test_extending"])
    api = FashionMNISTAPI(options)  # the server's request path
    api.setup("cpu")
    payload = {"images": [base64.b64encode((tmp_path / "digit.png").read_bytes()).decode()]}
    (answer,) = api.encode_response(api.predict(api.decode_request(payload)))["predictions"]
    assert answer["class"] in DIGITS and all(top["class"] in DIGITS for top in answer["top"]), answer

    result = run_command("export.py", f"run_dir={job}", "format=torch_export", TRUST)
    assert result.returncode == 0, result.stderr[-3000:]
    from fmnist_lightning.serving.export import load_exported

    exported = load_exported(next(job.glob("*.pt2")))
    assert exported.class_names == DIGITS


def _dataset_keys(job: Path) -> dict:
    data = RunFolder(job).load_config(TRUSTED).data
    return {k: data[k] for k in DATASET_KEYS}


def test_load_from_checkpoint_needs_only_the_checkpoint(sweep: Path, tmp_path: Path) -> None:
    """Lightning's own convention: every checkpoint the project writes rebuilds its model, of
    the user's class with the user's parts."""
    job = job_folder(sweep, 1)
    for name in [RunFolder(job).read_status()["best_checkpoint"], "checkpoints/last.ckpt"]:
        bare = tmp_path / Path(name).name
        bare.write_bytes((job / name).read_bytes())  # no run folder around it
        model = LogitPenaltyClassifier.load_from_checkpoint(bare, map_location="cpu", trusted_modules=TRUSTED).eval()
        assert isinstance(model.net, ResNet) and isinstance(model.mix, HalfAndHalf)
        assert "val/confidence" in model.logged_keys("val")
        with torch.inference_mode():
            assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    saved = torch.load(job / "net.pt", weights_only=True)
    best = LogitPenaltyClassifier.load_from_checkpoint(
        job / RunFolder(job).read_status()["best_checkpoint"], map_location="cpu", trusted_modules=TRUSTED
    )
    assert all(torch.equal(saved[k], v) for k, v in best.net.state_dict().items())


@pytest.mark.slow  # a training run: the sweep above already takes a module and a metric by override alone
def test_a_model_target_override_is_enough(make_cfg, tmp_path: Path) -> None:
    from fmnist_lightning.training.pipeline import train

    metrics = train(
        make_cfg("model=two_conv_5x5", "model._target_=test_extending.ResNet", "+model.blocks=1", "debug=fdr")
    )
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert (tmp_path / "report.json").is_file()
