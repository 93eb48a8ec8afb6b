"""Weight averaging (fmnist_lightning/training/averaging.py): Lookahead's outer step against the
formula, EMA's averaged weights in the tested network, both composed with the speedrun and
resumed bit for bit, and both off by default."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from conftest import config_names
from fmnist_lightning.errors import ArgumentError, ConfigError
from fmnist_lightning.training import pipeline
from fmnist_lightning.training.averaging import EMAWeightAveraging, Lookahead
from fmnist_lightning.training.build import build_run
from in_process import train_whole_and_resumed


class Tiny(L.LightningModule):
    """A linear layer regressing fixed data with SGD and momentum, batches in a fixed order."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(4, 2)
        self.frozen = nn.Parameter(torch.ones(3), requires_grad=False)  # not trained: no slow copy
        generator = torch.Generator().manual_seed(1)
        self.data = TensorDataset(torch.randn(64, 4, generator=generator), torch.randn(64, 2, generator=generator))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(self.layer(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=4)


def fitted(steps: int, *callbacks: L.Callback, accumulate: int = 1) -> dict[str, torch.Tensor]:
    """The trainable weights of ``Tiny`` after ``steps`` optimizer steps."""
    model = Tiny()
    trainer = L.Trainer(
        max_steps=steps,
        accumulate_grad_batches=accumulate,
        callbacks=list(callbacks),
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model)
    assert trainer.global_step == steps
    return {name: p.detach().clone() for name, p in model.layer.named_parameters()}


@pytest.mark.parametrize("accumulate", [1, 2])
def test_lookahead_steps_back_after_k_optimizer_steps(accumulate: int) -> None:
    """Until the k-th optimizer step the inner optimizer runs alone; after it the weights are
    slow + alpha · (fast − slow), slow being the start weights. With gradient accumulation a
    cycle counts optimizer steps, not batches."""
    k, alpha = 3, 0.3
    start = {name: p.detach().clone() for name, p in Tiny().layer.named_parameters()}
    before = fitted(k - 1, Lookahead(k, alpha), accumulate=accumulate)
    assert all(torch.equal(before[n], w) for n, w in fitted(k - 1, accumulate=accumulate).items())
    fast = fitted(k, accumulate=accumulate)
    looked = fitted(k, Lookahead(k, alpha), accumulate=accumulate)
    for name, slow in start.items():
        assert not torch.allclose(fast[name], slow)
        torch.testing.assert_close(looked[name], slow + alpha * (fast[name] - slow), rtol=1e-6, atol=1e-7)


def test_lookahead_with_alpha_1_is_the_inner_optimizer() -> None:
    lookahead = Lookahead(k=2, alpha=1.0)
    looked = fitted(7, lookahead)
    assert all(torch.equal(looked[n], w) for n, w in fitted(7).items())
    assert lookahead.state_dict()["synced_step"] == 6
    assert set(lookahead.state_dict()["slow_weights"]) == {"layer.weight", "layer.bias"}  # not the frozen one


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"k": 0}, "k=0: an integer >= 1"),
        ({"k": 2.5}, "k=2.5: an integer >= 1"),
        ({"k": True}, "k=True: an integer >= 1"),
        ({"alpha": 0}, r"alpha=0: a fraction in \(0, 1\]"),
        ({"alpha": 1.5}, r"alpha=1.5: a fraction in \(0, 1\]"),
        ({"alpha": float("nan")}, r"alpha=nan: a fraction in \(0, 1\]"),
    ],
)
def test_lookahead_checks_its_arguments(arguments: dict, message: str) -> None:
    with pytest.raises(ArgumentError, match=message):
        Lookahead(**arguments)


def test_ema_checks_its_arguments(make_cfg) -> None:
    with pytest.raises(ArgumentError, match=r"update_every_n_steps=0: an integer >= 1"):
        EMAWeightAveraging(update_every_n_steps=0)
    cfg = make_cfg("callbacks=[default,lookahead,ema]", "callbacks.lookahead.k=0", "callbacks.ema.decay=1.5")
    with pytest.raises(ConfigError) as info:
        build_run(cfg)
    assert [str(p.key) for p in info.value.problems] == ["callbacks.lookahead.k", "callbacks.ema.decay"]


@pytest.mark.slow  # composes every experiment: about 1.5 s
def test_averaging_is_off_by_default(make_cfg) -> None:
    """Neither the default config nor any experiment adds them: a run is as it was."""
    for override in ["seed=42", *(f"experiment={name}" for name in config_names("experiment"))]:
        callbacks = OmegaConf.to_container(make_cfg(override).callbacks)
        targets = {c["_target_"] for c in callbacks.values() if c}
        assert not {n for n in callbacks if n in ("lookahead", "ema")}, override
        assert not any("averaging" in t or "WeightAveraging" in t for t in targets), override


@pytest.mark.slow  # about 1.5 s each
@pytest.mark.parametrize(
    ("option", "hook"),
    [
        pytest.param("lookahead", lambda cb: cb.state_dict()["synced_step"], id="lookahead"),
        pytest.param("ema", lambda cb: cb._latest_update_step, id="ema"),
    ],
)
def test_composes_with_the_speedrun(make_cfg, monkeypatch, tmp_path: Path, option: str, hook) -> None:
    """experiment=speedrun_91 with the callback, one batch of each stage: the callback was built
    and updated after the one optimizer step."""
    built = []
    original = pipeline.build_run

    def recording(*args, **kwargs):
        run = original(*args, **kwargs)
        built.extend(c for c in run.trainer.callbacks if isinstance(c, Lookahead | EMAWeightAveraging))
        return run

    monkeypatch.setattr(pipeline, "build_run", recording)
    extra = ["callbacks.lookahead.k=1"] if option == "lookahead" else []
    metrics = pipeline.train(make_cfg("experiment=speedrun_91", f"callbacks=[default,{option}]", *extra, "debug=fdr"))
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "finished"
    assert len(built) == 1 and hook(built[0]) == 1


#: Where an EMA checkpoint keeps the averaged and the current weights.
KEYS = ("state_dict", "current_model_state")


def test_ema_tests_the_averaged_weights_of_the_best_checkpoint(make_cfg, monkeypatch, tmp_path: Path) -> None:
    """The test loop and net.pt get the best checkpoint's averaged weights, not the current
    ones saved beside them (which Lightning's own callback would load for the test)."""
    tested = {}
    original = pipeline.save_weights

    def recording(model, best_path, folder):
        tested.update({k: v.clone() for k, v in model.net.state_dict().items()})
        return original(model, best_path, folder)

    monkeypatch.setattr(pipeline, "save_weights", recording)
    cfg = make_cfg(
        "callbacks=[default,ema]", "callbacks.ema.decay=0.5", "model=two_conv_bn", "data.image_size=16",
        "logger=none", "callbacks.progress_bar=null", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "trainer.precision=32-true",
    )  # fmt: skip
    pipeline.train(cfg)
    best = torch.load(next((tmp_path / "checkpoints").glob("epoch_*.ckpt")), weights_only=True)
    averaged, current = ({k[4:]: v for k, v in best[key].items() if k.startswith("net.")} for key in KEYS)
    net = torch.load(tmp_path / "net.pt", weights_only=True)
    assert not all(torch.equal(averaged[k], current[k]) for k in averaged)
    assert all(torch.equal(tested[k], averaged[k]) and torch.equal(net[k], averaged[k]) for k in averaged)


def checkpoint_tensors(path: Path, option: str) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint, and the callback's own state in it."""
    checkpoint = torch.load(path, weights_only=True)
    tensors = {f"state_dict.{k}": v for k, v in checkpoint["state_dict"].items()}
    if option == "lookahead":
        state = checkpoint["callbacks"]["Lookahead"]
        tensors |= {f"slow.{k}": v for k, v in state["slow_weights"].items()}
        tensors["synced_step"] = torch.tensor(state["synced_step"])
    else:
        tensors |= {f"current.{k}": v for k, v in checkpoint["current_model_state"].items()}
        tensors |= {f"averaging.{k}": v for k, v in checkpoint["averaging_state"].items()}
    return tensors


@pytest.mark.slow  # three short trainings per option: 4 s to 25 s on 2 (shared) CPU cores
@pytest.mark.parametrize(
    ("option", "settings"),
    [
        ("lookahead", ["callbacks.lookahead.k=3"]),  # 4 steps an epoch: the cycle of steps 4-6 spans the resume
        ("ema", ["callbacks.ema.decay=0.8"]),
    ],
)
def test_averaging_resumes_bit_exactly(data_root: Path, tmp_path: Path, option: str, settings: list[str]) -> None:
    """Two epochs at once, and one epoch then ``resume=`` to two: the same net.pt, and the same
    last.ckpt (weights and the callback's state)."""
    args = [
        f"callbacks=[default,{option}]", *settings, "model=two_conv_bn", "data.image_size=16", "trainer=cpu",
        "trainer.precision=32-true", "trainer.deterministic=true", "trainer.limit_train_batches=4",
        "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "logger=none", "callbacks.progress_bar=null",
        f"data.root={data_root}",
    ]  # fmt: skip
    whole, part = train_whole_and_resumed(args, tmp_path)
    first, second = (torch.load(f / "net.pt", weights_only=True) for f in (whole, part))
    assert all(torch.equal(first[k], second[k]) for k in first)
    first, second = (checkpoint_tensors(f / "checkpoints" / "last.ckpt", option) for f in (whole, part))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    # The state is not trivial: the slow (averaged) weights differ from the network's own.
    other = "slow" if option == "lookahead" else "current"
    pairs = [(k, f"{other}.{k[11:]}") for k in first if k.startswith("state_dict.net.")]
    pairs = [(a, b) for a, b in pairs if b in first]
    assert pairs and not all(torch.equal(first[a], first[b]) for a, b in pairs)
    if option == "lookahead":
        assert int(first["synced_step"]) == 6
