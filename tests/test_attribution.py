"""Attribution maps (fmnist_lightning/evaluation/attribution.py) and their sanity checks
(attribution_checks.py), in-process on small networks: shapes, Grad-CAM's layer rule, completeness,
flip TTA, model randomisation and deletion on planted cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fmnist_lightning.data.augment import build_preprocess
from fmnist_lightning.errors import ArgumentError
from fmnist_lightning.evaluation.attribution import (
    METHODS,
    NO_CONV,
    Explainer,
    attributable,
    gradcam_layer,
    overlay,
)
from fmnist_lightning.evaluation.attribution_checks import (
    curve_area,
    deletion_curves,
    randomized_copy,
    rank_correlations,
    sanity_checks,
)
from fmnist_lightning.models.nets import ThreeConvNet, VGGBNNet

PREPROCESS = build_preprocess(28, {"mean": 0.286, "std": 0.353})


def images(n: int = 6, seed: int = 0) -> torch.Tensor:
    """n preprocessed random images, float32 ``(n, 1, 28, 28)``."""
    raw = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    return PREPROCESS(raw)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_one_map_per_image(method: str) -> None:
    torch.manual_seed(0)
    explainer = Explainer(ThreeConvNet(), PREPROCESS, method, steps=8, samples=4)
    result = explainer.attribute(images(), torch.tensor([0, 1, 2, 3, 4, 9]))
    assert result.maps.shape == (6, 28, 28) and result.maps.dtype == torch.float32
    assert torch.isfinite(result.maps).all()
    assert (result.delta is not None) == (method == "integrated_gradients")
    if method != "integrated_gradients":
        assert (result.maps >= 0).all()


def test_gradcam_takes_the_last_convolution_after_its_activation() -> None:
    net = VGGBNNet()  # ... conv → BN → ReLU → pool: the ReLU
    layer = gradcam_layer(net)
    modules = list(net.modules())
    last_conv = max(i for i, m in enumerate(modules) if isinstance(m, nn.Conv2d))
    assert isinstance(layer, nn.ReLU) and modules.index(layer) == last_conv + 2
    assert gradcam_layer(net, "features.0") is net.features[0]
    with pytest.raises(ArgumentError, match=r"features\.0"):
        gradcam_layer(net, "features.99")


def test_a_network_without_a_convolution_gets_the_gradient_methods() -> None:
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    with pytest.raises(ValueError, match=r"no nn\.Conv2d") as caught:
        Explainer(mlp, PREPROCESS, "gradcam")
    assert NO_CONV in str(caught.value)
    result = Explainer(mlp, PREPROCESS, "saliency").attribute(images(2), torch.tensor([3, 4]))
    assert result.maps.shape == (2, 28, 28)


def test_bad_options_are_refused() -> None:
    with pytest.raises(ArgumentError, match="method"):
        Explainer(ThreeConvNet(), PREPROCESS, "lime")
    with pytest.raises(ArgumentError, match="steps"):
        Explainer(ThreeConvNet(), PREPROCESS, "integrated_gradients", steps=0)
    with pytest.raises(ArgumentError, match="from 0 to 9"):
        Explainer(ThreeConvNet(), PREPROCESS, "saliency").attribute(images(1), torch.tensor([10]))


def test_integrated_gradients_are_complete_on_a_linear_network() -> None:
    """For a linear f, IG's attributions are exactly (x − baseline) · w: they sum to f(x) − f(baseline)."""
    torch.manual_seed(1)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    x = images(4)
    result = Explainer(linear, PREPROCESS, "integrated_gradients", steps=4).attribute(x, torch.tensor([0, 1, 2, 3]))
    assert result.maps.flatten(1).sum(dim=1) == pytest.approx(result.logit_gap, abs=1e-4)
    assert result.delta.abs().max() < 1e-4
    weights = linear[1].weight[[0, 1, 2, 3]].detach().view(4, 28, 28)
    black = PREPROCESS(torch.zeros(1, 1, 28, 28, dtype=torch.uint8))
    assert torch.allclose(result.maps, (x - black)[:, 0] * weights, atol=1e-5)


def test_flip_tta_and_in_place_activations_are_off_while_attributing() -> None:
    torch.manual_seed(2)
    net = VGGBNNet(flip_tta=True, crop_tta=1).eval()
    plain = VGGBNNet(flip_tta=False).eval()
    plain.load_state_dict(net.state_dict())
    x, targets = images(3), torch.tensor([1, 2, 3])
    for method in ("gradcam", "saliency"):
        ours = Explainer(net, PREPROCESS, method).attribute(x, targets).maps
        unflipped = Explainer(plain, PREPROCESS, method).attribute(x, targets).maps
        assert torch.equal(ours, unflipped)
    assert (
        net.flip_tta is True and net.crop_tta == 1 and all(m.inplace for m in net.modules() if isinstance(m, nn.ReLU))
    )
    with attributable(net):
        assert net.flip_tta is False and net.crop_tta == 0
        assert not any(m.inplace for m in net.modules() if isinstance(m, nn.ReLU))


def test_overlay_is_rgb_and_a_zero_map_leaves_the_image() -> None:
    image = torch.linspace(0, 1, 28 * 28).view(28, 28)
    plain = overlay(image, torch.zeros(28, 28))
    assert plain.shape == (28, 28, 3) and plain.dtype == np.uint8
    assert np.array_equal(plain[..., 0], np.round(255 * image.double().numpy()).astype(np.uint8))
    signed = overlay(image, torch.randn(28, 28, generator=torch.Generator().manual_seed(0)))
    assert not np.array_equal(signed, plain)


class OnePixel(nn.Module):
    """Two logits, ±10 × the top-left pixel: only that pixel matters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixel = x[:, 0, 0, 0]
        return torch.stack([10 * pixel, -10 * pixel], dim=1)


def test_deleting_the_one_pixel_that_matters_first_drops_the_probability() -> None:
    x = torch.ones(3, 1, 28, 28)  # white after a normalisation of mean 0, std 1
    black = torch.zeros(1, 1, 28, 28)
    planted = torch.zeros(3, 28, 28)
    planted[:, 0, 0] = 1
    classes = torch.zeros(3, dtype=torch.int64)
    curves = deletion_curves(OnePixel(), x, planted, black, classes, steps=10)
    assert curves.shape == (3, 11)
    assert curves[:, 0] == pytest.approx(torch.sigmoid(torch.tensor(20.0)).item())
    assert (curves[:, 1:] == 0.5).all()  # the pixel is gone after the first step
    reversed_order = deletion_curves(OnePixel(), x, -planted, black, classes, steps=10)  # the pixel last
    assert (curve_area(curves) < curve_area(reversed_order)).all()


def test_rank_correlation_and_constant_maps() -> None:
    a = torch.arange(16.0).view(1, 4, 4).repeat(3, 1, 1)
    b = torch.stack([a[0], -a[0], torch.zeros(4, 4)])
    rho = rank_correlations(a, b)
    assert rho[0] == pytest.approx(1.0) and rho[1] == pytest.approx(-1.0) and np.isnan(rho[2])


def test_randomisation_changes_the_network_and_not_the_original() -> None:
    torch.manual_seed(3)
    net = ThreeConvNet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fresh = randomized_copy(net, seed=0)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert not torch.equal(fresh.state_dict()["features.0.0.weight"], before["features.0.0.weight"])
    assert torch.equal(
        randomized_copy(net, seed=0).state_dict()["features.0.0.weight"], fresh.state_dict()["features.0.0.weight"]
    )


def test_the_sanity_checks_of_a_trained_network(trained_run: Path) -> None:
    """On the session's trained run: integrated gradients pass randomisation (|ρ| < 0.3 on most
    images) and their deletion curve falls faster than a random order's."""
    from fmnist_lightning.data.idx import load_split
    from fmnist_lightning.evaluation.runs import load_trained

    model = load_trained(trained_run)
    raw, _ = load_split(model.config.data.root, "test")
    x = model.preprocess(raw[:24, None])
    result = sanity_checks(Explainer(model.net, model.preprocess, "integrated_gradients", steps=16), x, steps=10)
    assert result["images"] == 24
    assert result["randomisation"]["median_abs_rho"] < 0.3
    assert result["deletion"]["auc"] < result["deletion"]["random_auc"]
    assert 0 <= result["completeness"]["fraction_within_1pct"] <= 1


def test_smoothgrad_is_reproducible_and_leaves_the_global_generator_alone() -> None:
    torch.manual_seed(4)
    explainer = Explainer(ThreeConvNet(), PREPROCESS, "smoothgrad", samples=4)
    state = torch.get_rng_state()
    first = explainer.attribute(images(2), torch.tensor([0, 1])).maps
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(explainer.attribute(images(2), torch.tensor([0, 1])).maps, first)


class SharedActivation(nn.Module):
    """One ReLU used after both convolutions and after the hidden linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.fc1, self.fc2 = nn.Linear(4 * 28 * 28, 8), nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv2(self.act(self.conv1(x))))
        return self.fc2(self.act(self.fc1(x.flatten(1))))


def test_a_layer_that_is_not_one_feature_map_per_pass_is_refused() -> None:
    with pytest.raises(ArgumentError, match=r"layer='act'.*\(1, 4, 28, 28\), \(1, 4, 28, 28\), \(1, 8\)"):
        Explainer(SharedActivation(), PREPROCESS, "gradcam")
    assert Explainer(SharedActivation(), PREPROCESS, "gradcam", layer="conv2").attribute(images(1), torch.tensor([1]))
    with pytest.raises(ArgumentError, match=r"layer='fc1'"):
        Explainer(SharedActivation(), PREPROCESS, "gradcam", layer="fc1")
    with pytest.raises(ArgumentError, match=r"layer='nothing'"):  # a layer is checked whatever the method
        Explainer(ThreeConvNet(), PREPROCESS, "saliency", layer="nothing")
    for noise in ("abc", None, float("inf"), -0.1):
        with pytest.raises(ArgumentError, match="noise"):
            Explainer(ThreeConvNet(), PREPROCESS, "smoothgrad", noise=noise)


def test_smoothgrad_maps_do_not_depend_on_the_batch() -> None:
    torch.manual_seed(5)
    explainer = Explainer(ThreeConvNet(), PREPROCESS, "smoothgrad", samples=4)
    batch = explainer.attribute(images(4), torch.tensor([0, 1, 2, 3])).maps
    alone = explainer.attribute(images(4)[2:3], torch.tensor([2])).maps
    assert torch.equal(batch[2:3], alone)


def test_tensors_made_in_inference_mode_are_attributed() -> None:
    torch.manual_seed(6)
    net = ThreeConvNet().eval()
    with torch.inference_mode():
        x = images(2)
        targets = net(x).argmax(dim=1)
    for method in ("gradcam", "saliency"):
        assert Explainer(net, PREPROCESS, method).attribute(x, targets).maps.shape == (2, 28, 28)
