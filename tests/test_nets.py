"""Every model config builds a network that maps (B, 1, S, S) to (B, 10) logits."""

from __future__ import annotations

import copy
import functools

import hydra
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from conftest import CONF, config_names
from fmnist_lightning.models.nets import ThreeConvNet, TwoConv5x5Net, TwoConvBNNet


@functools.cache
def _model_config(model: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[f"model={model}"])


def model_config(model: str) -> DictConfig:
    """``conf/train.yaml`` with ``model=<model>``, composed once per model; a copy each call."""
    return copy.deepcopy(_model_config(model))


@pytest.mark.parametrize("image_size", [28, 16])
@pytest.mark.parametrize("model", config_names("model"))
def test_model_configs_give_logits(model: str, image_size: int) -> None:
    cfg = model_config(model)
    cfg.data.image_size = image_size  # the model config reads it through ${data.image_size}
    net = hydra.utils.instantiate(cfg.model)
    images = torch.rand(5, 1, image_size, image_size)
    logits = net(images)
    assert logits.shape == (5, 10)
    assert logits.dtype == torch.float32
    logits.sum().backward()  # every parameter takes part in the forward pass
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize(
    ("net", "image_size", "expected"),
    [
        # Hand-counted from the recipes' layer lists (weights + biases; BatchNorm's affine).
        (TwoConvBNNet, 28, 320 + 64 + 18_496 + 128 + 3136 * 256 + 256 + 256 * 128 + 128 + 1290),
        (ThreeConvNet, 28, 320 + 18_496 + 73_856 + 1152 * 256 + 256 + 2570),
        (TwoConv5x5Net, 16, 416 + 12_832 + 512 * 10 + 10),
    ],
)
def test_parameter_counts_match_recipes(net, image_size: int, expected: int) -> None:
    assert sum(p.numel() for p in net(image_size=image_size).parameters()) == expected


def test_recipe_flatten_sizes() -> None:
    assert TwoConvBNNet(image_size=28).classifier[1].in_features == 3136  # recipe 000
    assert ThreeConvNet(image_size=28).classifier[1].in_features == 1152  # recipe 001
    assert TwoConv5x5Net(image_size=16).classifier[1].in_features == 512  # recipe 004


def test_too_small_image_is_refused() -> None:
    with pytest.raises(ValueError, match="image_size=4: too small for ThreeConvNet"):
        ThreeConvNet(image_size=4)


def test_two_conv_layouts() -> None:
    """Recipe 002's PyTorch-MNIST-example layout, and the default's unchanged state_dict keys."""
    from fmnist_lightning.models.nets import TwoConvNet

    example = TwoConvNet(image_size=28, pool_every_conv=False, padding=0)
    assert example.classifier[1].in_features == 9216  # 64 * 12 * 12, as in PyTorch's example
    assert sum(p.numel() for p in example.parameters()) == 320 + 18_496 + 9216 * 128 + 128 + 1290
    assert example(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    default = TwoConvNet(image_size=28)
    assert default.classifier[1].in_features == 64 * 7 * 7
    assert {"features.0.0.weight", "features.1.0.weight"} <= set(default.state_dict())
    with pytest.raises(ValueError, match="padding=2: 0 or 1"):
        TwoConvNet(padding=2)
    with pytest.raises(ValueError, match="image_size=6: too small for TwoConvNet with padding=0"):
        TwoConvNet(image_size=6, padding=0)
    assert TwoConvNet(image_size=6, padding=0, pool_every_conv=False)(torch.rand(1, 1, 6, 6)).shape == (1, 10)


def test_vgg_bn_net() -> None:
    from fmnist_lightning.models.nets import VGGBNNet

    net = VGGBNNet()
    assert sum(p.numel() for p in net.parameters()) == 584_874
    assert net(torch.rand(4, 1, 28, 28)).shape == (4, 10)
    assert VGGBNNet(image_size=16, widths=[16, 32], hidden=0)(torch.rand(2, 1, 16, 16)).shape == (2, 10)
    for kwargs, message in [
        ({"widths": []}, "widths"),
        ({"convs_per_stage": 0}, "convs_per_stage"),
        ({"hidden": -1}, "hidden"),
        ({"dropout": 1.0}, "dropout"),
    ]:
        with pytest.raises(ValueError, match=message):
            VGGBNNet(**kwargs)


def test_flip_tta_averages_the_mirror_image_in_eval_mode_only() -> None:
    from fmnist_lightning.models.nets import VGGBNNet

    torch.manual_seed(0)
    net = VGGBNNet(flip_tta=False).eval()
    x = torch.rand(6, 1, 28, 28)
    with torch.no_grad():
        plain, mirrored = net(x), net(x.flip(-1))
        net.flip_tta = True
        tta = net(x)
        assert torch.allclose(tta, (plain + mirrored) / 2, atol=1e-6)
        assert torch.allclose(net(x.flip(-1)), tta, atol=1e-6)  # invariant to mirroring
    net.train()
    torch.manual_seed(1)
    a = net(x)
    net.flip_tta = False
    torch.manual_seed(1)
    assert torch.equal(a, net(x))  # training forward passes are the plain ones


def test_airbench_options_switched_off_leave_the_network_as_it_was() -> None:
    """The options' defaults build the same parameters from the same random draws."""
    from fmnist_lightning.models.nets import VGGBNNet

    torch.manual_seed(0)
    plain = VGGBNNet()
    torch.manual_seed(0)
    off = VGGBNNet(crop_tta=0, whiten=0, dirac_init=False, bn_momentum=0.1, bn_weights=True)
    assert plain.state_dict().keys() == off.state_dict().keys()
    assert all(torch.equal(plain.state_dict()[k], off.state_dict()[k]) for k in plain.state_dict())
    assert all(p.requires_grad for p in off.parameters())
    for kwargs, message in [({"whiten": 4}, "whiten"), ({"crop_tta": -1}, "crop_tta"), ({"bn_momentum": 0.0}, "bn")]:
        with pytest.raises(ValueError, match=message):
            VGGBNNet(**kwargs)


@pytest.mark.parametrize("side", [2, 3])
def test_patch_whitening_whitens_training_patches(data_root, side: int) -> None:
    """On the training patches it was fitted to, the first side² outputs have zero mean and an identity
    covariance (its eps = 5e-4 takes up to 5 % off the smallest eigenvalue's variance), the rest are
    their negatives; the layer is frozen, and the network's output shape is unchanged."""
    from fmnist_lightning.data import load_split
    from fmnist_lightning.models.nets import PatchWhitening, VGGBNNet

    images, _ = load_split(data_root, "train")
    x = (images[:2000].unsqueeze(1).float() / 255 - 0.2860) / 0.3530
    net = VGGBNNet(whiten=side)
    net.whitening.fit(x)
    layer = net.features[0]
    assert isinstance(layer, PatchWhitening) and not any(p.requires_grad for p in layer.parameters())
    with torch.no_grad():
        out = layer(x).double()
    k = side * side
    assert out.shape[1] == 2 * k and out.shape[-1] == (28 if side == 3 else 27)
    flat = out[:, :k].permute(0, 2, 3, 1).reshape(-1, k)
    covariance = torch.cov(flat.T)
    off_diagonal = covariance - torch.diag(covariance.diag())
    assert off_diagonal.abs().max() < 1e-3 and covariance.diag().min() > 0.95 and covariance.diag().max() < 1 + 1e-6
    assert flat.mean(0).abs().max() < 1e-3
    torch.testing.assert_close(out[:, k:], -out[:, :k])
    assert net.eval()(x[:3]).shape == (3, 10)
    raw = torch.cov(layer.patches(x).T)  # what it undid: correlated neighbouring pixels
    assert raw[0, 1] / raw[0, 0] > 0.5


def test_dirac_init_and_batchnorm_options() -> None:
    from fmnist_lightning.models.nets import VGGBNNet

    net = VGGBNNet(dirac_init=True, bn_momentum=0.4, bn_weights=False)
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    for conv in convs:
        identity = torch.zeros_like(conv.weight[: conv.in_channels])
        torch.nn.init.dirac_(identity)
        assert torch.equal(conv.weight[: conv.in_channels], identity)
        if conv.out_channels > conv.in_channels:  # the other filters keep their random init
            assert conv.weight[conv.in_channels :].abs().amin(dim=(1, 2, 3)).gt(0).all()
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(n.momentum == 0.4 and not n.weight.requires_grad and n.bias.requires_grad for n in norms)


def test_crop_tta_weights_the_translations_as_airbench() -> None:
    """Eval mode: 1/2 the image's logits + 1/4 each of its reflect-padded translations by ±crop_tta px;
    training mode: the image's logits alone."""
    from torch.nn import functional as F

    from fmnist_lightning.models.nets import VGGBNNet

    torch.manual_seed(0)
    net = VGGBNNet(crop_tta=1).eval()
    x = torch.rand(4, 1, 28, 28)
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    with torch.no_grad():
        net.crop_tta = 0
        plain, down, up = net(x), net(padded[..., :28, :28]), net(padded[..., 2:, 2:])
        net.crop_tta = 1
        torch.testing.assert_close(net(x), plain / 2 + (down + up) / 4)
        net.train()
        torch.manual_seed(1)
        a = net(x)
        torch.manual_seed(1)
        net.crop_tta = 0
        torch.testing.assert_close(net(x), a)
