"""ConvMuon (fmnist_lightning/models/optimizers.py): Muon on the convolution filters as torch.optim.Muon
moves a 2-D copy of them, Adam on the rest as torch.optim.Adam, one learning rate that schedulers drive,
bit-exact checkpoints, frozen parameters untouched, and conf/optimizer/muon.yaml training end to end."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from fmnist_lightning.errors import ArgumentError
from fmnist_lightning.models import VGGBNNet
from fmnist_lightning.models.optimizers import ConvMuon
from fmnist_lightning.training.pipeline import train

LR, WEIGHT_DECAY = 0.01, 0.1


def tiny_net(channels_last: bool = True) -> VGGBNNet:
    """Two 3×3 convolutions ((4, 1, 3, 3), (8, 4, 3, 3)) with BatchNorm, a linear head; no dropout, so
    two copies fed the same batches compute the same gradients."""
    net = VGGBNNet(image_size=8, widths=[4, 8], convs_per_stage=1, hidden=0, dropout=0.0)
    return net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def batches(count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 1, 8, 8, generator=generator), torch.randint(0, 10, (16,), generator=generator))] * count


def backward(net: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, labels = batch
    F.cross_entropy(net(images.contiguous(memory_format=torch.channels_last)), labels).backward()


def train_steps(net: torch.nn.Module, optimizer: torch.optim.Optimizer, count: int) -> None:
    for batch in batches(count):
        optimizer.zero_grad()
        backward(net, batch)
        optimizer.step()


def as_matrix(filters: torch.Tensor) -> torch.Tensor:
    """A channels_last ``(out, in, kh, kw)`` tensor as the ``(out, kh·kw·in)`` copy of its memory."""
    return filters.detach().permute(0, 2, 3, 1).reshape(filters.shape[0], -1).clone()


def test_steps_are_muon_on_the_filters_and_adam_on_the_rest() -> None:
    torch.manual_seed(0)
    net = tiny_net()
    filters = [p for p in net.parameters() if p.ndim == 4]
    others = [p for p in net.parameters() if p.ndim != 4]
    optimizer = ConvMuon(net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, fused=True)
    matrices = [as_matrix(p).requires_grad_() for p in filters]
    copies = [p.detach().clone().requires_grad_() for p in others]
    muon = torch.optim.Muon(matrices, lr=LR, weight_decay=WEIGHT_DECAY, adjust_lr_fn="match_rms_adamw")
    adam = torch.optim.Adam(copies, lr=LR, weight_decay=WEIGHT_DECAY, fused=True, decoupled_weight_decay=True)
    start = [p.detach().clone() for p in net.parameters()]
    for batch in batches(2):  # the second step uses the momentum and Adam's moments
        optimizer.zero_grad()
        backward(net, batch)
        for matrix, p in zip(matrices, filters, strict=True):
            matrix.grad = as_matrix(p.grad)
        for copied, p in zip(copies, others, strict=True):
            copied.grad = p.grad.clone()
        optimizer.step()
        muon.step()
        adam.step()
        for matrix, p in zip(matrices, filters, strict=True):
            assert torch.equal(as_matrix(p), matrix.detach())
        for copied, p in zip(copies, others, strict=True):
            assert torch.equal(p.detach(), copied.detach())
    assert all(not torch.equal(p, p0) for p, p0 in zip(net.parameters(), start, strict=True))


def test_the_memory_format_does_not_change_the_steps() -> None:
    """Newton–Schulz is equivariant to permuting the columns: contiguous filters, flattened as
    ``(in, kh, kw)``, move as channels_last ones, flattened as ``(kh, kw, in)`` (up to rounding)."""
    torch.manual_seed(0)
    contiguous = tiny_net(channels_last=False)
    channels_last = copy.deepcopy(contiguous).to(memory_format=torch.channels_last)
    start = contiguous.features[4].weight.detach().clone()
    for net in (contiguous, channels_last):
        train_steps(net, ConvMuon(net.parameters(), lr=LR), 3)
    moved = contiguous.features[4].weight - start
    assert moved.abs().max() > 10 * LR * 0.1
    torch.testing.assert_close(channels_last.features[4].weight, contiguous.features[4].weight, rtol=0, atol=1e-5)


def checkpoint(state: dict) -> dict:
    """``state`` through a file, as a Lightning checkpoint holds it."""
    file = io.BytesIO()
    torch.save(state, file)
    file.seek(0)
    return torch.load(file, weights_only=True)


def test_state_dict_round_trip_is_bit_exact() -> None:
    torch.manual_seed(0)
    net = tiny_net()
    optimizer = ConvMuon(net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, fused=True)
    train_steps(net, optimizer, 3)
    saved = checkpoint(optimizer.state_dict())
    resumed, fresh = copy.deepcopy(net), copy.deepcopy(net)
    resumed_optimizer = ConvMuon(resumed.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, fused=True)
    resumed_optimizer.load_state_dict(saved)
    fresh_optimizer = ConvMuon(fresh.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, fused=True)
    for pair in ((net, optimizer), (resumed, resumed_optimizer), (fresh, fresh_optimizer)):
        train_steps(*pair, 2)
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), resumed.parameters(), strict=True))
    # Without the state (momentum, Adam's moments and step count) the steps differ.
    assert not all(torch.equal(a, b) for a, b in zip(net.parameters(), fresh.parameters(), strict=True))


def test_checkpoints_do_not_depend_on_the_memory_format() -> None:
    torch.manual_seed(0)
    net = tiny_net()
    optimizer = ConvMuon(net.parameters(), lr=LR)
    train_steps(net, optimizer, 2)
    contiguous = copy.deepcopy(net).to(memory_format=torch.contiguous_format)
    loaded = ConvMuon(contiguous.parameters(), lr=LR)
    loaded.load_state_dict(checkpoint(optimizer.state_dict()))
    expected, got = optimizer.state_dict()["state"], loaded.state_dict()["state"]
    assert expected.keys() == got.keys() and 0 in got
    for index, entry in expected.items():
        assert all(torch.equal(value, got[index][key]) for key, value in entry.items() if torch.is_tensor(value))
    # The buffer in use is in the contiguous filter's own column order, (in, kh, kw).
    second = contiguous.features[4].weight
    buffer = loaded.state[loaded.param_groups[0]["params"][1]]["momentum_buffer"]
    kept = optimizer.state[optimizer.param_groups[0]["params"][1]]["momentum_buffer"]
    assert torch.equal(buffer.reshape(second.shape).permute(0, 2, 3, 1).reshape(8, -1), kept)


def test_another_optimizers_state_is_refused() -> None:
    net = tiny_net()
    with pytest.raises(ValueError, match="another optimizer's"):
        ConvMuon(net.parameters()).load_state_dict(torch.optim.Adam(net.parameters()).state_dict())


def test_onecycle_drives_muons_learning_rate_and_momentum() -> None:
    """A scheduler built on ConvMuon writes the group dicts Muon steps with: after OneCycleLR's
    first steps the filters move as a plain Muon at the scheduled learning rate moves them."""
    torch.manual_seed(0)
    net = tiny_net()
    optimizer = ConvMuon(net.parameters(), lr=LR)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=LR, total_steps=10)
    train_steps(net, optimizer, 1)
    scheduler.step()
    filters = net.features[4].weight
    matrix = as_matrix(filters).requires_grad_()
    muon_group = next(group for group in optimizer.param_groups if "ns_steps" in group)
    lr, momentum = muon_group["lr"], muon_group["momentum"]
    assert LR / 25 < lr < LR and momentum < 0.95  # warming up from max_lr / div_factor, momentum cycling down
    reference = torch.optim.Muon([matrix], lr=lr, momentum=momentum, weight_decay=0.0, adjust_lr_fn="match_rms_adamw")
    reference.state[matrix]["momentum_buffer"] = optimizer.state[muon_group["params"][1]]["momentum_buffer"].clone()
    optimizer.zero_grad()
    backward(net, batches(1)[0])
    matrix.grad = as_matrix(filters.grad)
    optimizer.step()
    reference.step()
    assert torch.equal(as_matrix(filters), matrix.detach())


def test_frozen_parameters_never_change() -> None:
    torch.manual_seed(0)
    net = tiny_net()
    frozen, trained = net.features[0].weight, net.features[4].weight
    frozen.requires_grad_(False)
    optimizer = ConvMuon(net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    before, trained_before = frozen.detach().clone(), trained.detach().clone()
    for batch in batches(2):
        optimizer.zero_grad()
        backward(net, batch)
        frozen.grad = torch.ones_like(frozen)  # even with a gradient (set by hand)
        optimizer.step()
    assert torch.equal(frozen, before)
    assert not torch.equal(trained, trained_before)
    in_groups = [p for group in optimizer.param_groups for p in group["params"]]
    assert all(p.untyped_storage().data_ptr() != frozen.untyped_storage().data_ptr() for p in in_groups)


def test_clipping_reaches_the_filters() -> None:
    """Lightning clips (and AMP unscales) the gradients of ``param_groups`` before ``step``: the
    proxies' gradients are views of the filters' as soon as backward has run."""
    torch.manual_seed(0)
    net = tiny_net()
    optimizer = ConvMuon(net.parameters(), lr=LR)
    backward(net, batches(1)[0])
    in_groups = [p for group in optimizer.param_groups for p in group["params"]]
    torch.nn.utils.clip_grad_norm_(in_groups, max_norm=1e-3)
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in net.parameters()]))
    assert total <= 1e-3 * (1 + 1e-5)
    optimizer.zero_grad()
    assert all(p.grad is None for p in [*net.parameters(), *in_groups])


def test_filters_are_followed_when_their_memory_is_replaced() -> None:
    """``model.to(...)`` after the optimizer was built (a device, dtype or memory format) replaces the
    filters' memory: the proxies and momentum buffers follow (here, channels_last → contiguous)."""
    torch.manual_seed(0)
    moved = tiny_net()
    stayed = copy.deepcopy(moved)
    moved_optimizer, stayed_optimizer = ConvMuon(moved.parameters(), lr=LR), ConvMuon(stayed.parameters(), lr=LR)
    train_steps(moved, moved_optimizer, 1)
    train_steps(stayed, stayed_optimizer, 1)
    moved.to(memory_format=torch.contiguous_format)
    before = moved.features[4].weight.detach().clone()
    train_steps(moved, moved_optimizer, 2)
    train_steps(stayed, stayed_optimizer, 2)
    assert not torch.equal(moved.features[4].weight, before)
    for a, b in zip(moved.parameters(), stayed.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("lr", -1.0),
        ("weight_decay", -0.1),
        ("momentum", 1.0),
        ("nesterov", "yes"),
        ("ns_steps", 0),
        ("ns_steps", 100),
        ("adjust_lr_fn", "match_rms_sgd"),
        ("betas", (0.9, 1.0)),
        ("betas", (0.9,)),
        ("fused", None),
    ],
)
def test_bad_arguments_are_refused(argument: str, value: object) -> None:
    with pytest.raises(ArgumentError) as info:
        ConvMuon(tiny_net().parameters(), **{argument: value})
    assert info.value.argument == argument


def test_bad_parameters_are_refused() -> None:
    net = tiny_net()
    with pytest.raises(ArgumentError, match="parameter groups"):
        ConvMuon([{"params": list(net.parameters())}])
    net.requires_grad_(False)
    with pytest.raises(ArgumentError, match="requires_grad"):
        ConvMuon(net.parameters())
    odd = torch.nn.Parameter(torch.zeros(3, 4, 5, 6).permute(1, 0, 2, 3))  # out_channels not outermost
    with pytest.raises(ArgumentError, match="out_channels outermost"):
        ConvMuon([odd])
    with pytest.raises(NotImplementedError):
        ConvMuon(tiny_net().parameters()).add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))]})


@pytest.mark.slow  # about 1 s
def test_muon_config_trains(make_cfg, tmp_path: Path) -> None:
    """``optimizer=muon`` as ``python train.py`` composes it, with speedrun_91's one-cycle schedule: one batch."""
    cfg = make_cfg("experiment=speedrun_91", "optimizer=muon", "debug=fdr")
    assert cfg.optimizer._target_ == "fmnist_lightning.models.optimizers.ConvMuon"
    assert (cfg.optimizer.adjust_lr_fn, cfg.scheduler.max_lr) == ("match_rms_adamw", cfg.optimizer.lr)
    metrics = train(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "finished"


def test_a_resumed_state_stays_with_its_optimizer() -> None:
    """Lightning's resume loads the state, then reads every entry (``_optimizer_to_device``): each stays in
    its own inner optimizer's state, and the next ``state_dict`` works (through a ``ChainMap``, reading
    Adam's entries created empty ones in Muon's ``defaultdict``, and ``state_dict`` failed with a
    ``KeyError``); an assignment goes to the owner's state."""
    from lightning.fabric.utilities.optimizer import _optimizer_to_device

    def trained(steps: int) -> tuple[torch.nn.Module, ConvMuon]:
        torch.manual_seed(0)
        net = VGGBNNet(image_size=8, widths=[4, 8], convs_per_stage=1, hidden=0).to(memory_format=torch.channels_last)
        optimizer = ConvMuon(net.parameters())
        for _ in range(steps):
            optimizer.zero_grad()
            net(torch.randn(4, 1, 8, 8)).sum().backward()
            optimizer.step()
        return net, optimizer

    _, optimizer = trained(2)
    saved = optimizer.state_dict()
    _, resumed = trained(0)
    resumed.load_state_dict(saved)
    _optimizer_to_device(resumed, torch.device("cpu"))
    for inner in resumed._inner:
        own = {id(p) for group in inner.param_groups for p in group["params"]}
        assert inner.state and all(id(k) in own for k in inner.state)
    assert resumed.state_dict()["state"].keys() == saved["state"].keys()
    with pytest.raises(KeyError, match="no parameter"):
        resumed.state[torch.zeros(2)] = {}
