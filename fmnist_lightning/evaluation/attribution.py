"""Attribution maps of a network's predictions, through Captum: which pixels of an image raised
the logit of a class.

The methods (``METHODS``), each Captum's:

- ``gradcam``: ``captum.attr.LayerGradCam`` (Selvaraju et al., ICCV 2017, "Grad-CAM"): the
  channels of a convolution's output weighted by the mean gradient of the logit over each
  channel, summed, passed through ReLU, and upsampled bilinearly to the image
  (``LayerAttribution.interpolate``). The layer is the output of the network's last
  ``nn.Conv2d`` in ``net.modules()`` order, after its activation (``gradcam_layer``; the same
  kind of rule as ``features.penultimate_layer``), or one named by ``layer`` (a name of
  ``net.named_modules()``).
- ``integrated_gradients``: ``captum.attr.IntegratedGradients`` (Sundararajan, Taly & Yan,
  ICML 2017, "Axiomatic attribution for deep networks"), with ``steps`` steps of the
  Gauss–Legendre rule (Captum's default) from the baseline: the black image after the run's
  normalisation, as the network sees it. Their completeness axiom says the attributions sum to
  f(x) − f(baseline); ``Attribution.delta`` is Captum's convergence delta, the difference.
- ``saliency``: ``captum.attr.Saliency`` (Simonyan, Vedaldi & Zisserman, 2014, "Deep inside
  convolutional networks"): the absolute gradient of the logit.
- ``smoothgrad``: ``captum.attr.NoiseTunnel`` around ``Saliency`` (Smilkov et al., 2017,
  "SmoothGrad"): the mean of ``samples`` saliency maps of the image plus Gaussian noise of
  standard deviation ``noise`` × (the input's range: white minus black, after the
  normalisation); the paper's advice is 10 to 20 % noise and about 50 samples.

The attributed output f is the target class's logit, before the temperature (a temperature
divides every logit alike and changes no map's shape). A network with test-time augmentation
(``flip_tta``, ``crop_tta``) is attributed without it: the maps come from the unflipped,
untranslated pass (``attributable``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fmnist_lightning.errors import require

#: The methods, in the order of the docs and figures.
METHODS = ("gradcam", "integrated_gradients", "saliency", "smoothgrad")
#: Integrated gradients are complete when |delta| / |f(x)| is at most this (1 %; the issue's bar).
COMPLETENESS_TOLERANCE = 0.01
#: Why a network gets no Grad-CAM under the rule, for the messages that say so.
NO_CONV = "the network has no nn.Conv2d layer for Grad-CAM; use method=integrated_gradients, saliency or smoothgrad"


#: The activations Grad-CAM takes the last convolution's output after.
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish)
#: What may stand between the last convolution and its activation.
BETWEEN = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.Identity, nn.Dropout2d, nn.Dropout)


def last_conv(net: nn.Module) -> nn.Conv2d | None:
    """The last ``nn.Conv2d`` of ``net`` in ``net.modules()`` order, or ``None`` when it has none."""
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1] if convs else None


def gradcam_layer(net: nn.Module, layer: str | None = None) -> nn.Module:
    """The layer Grad-CAM attributes to: ``layer`` (a name of ``net.named_modules()``, e.g.
    ``features.2.1``) or, when ``None``, the last ``nn.Conv2d`` (``last_conv``) taken after its
    activation: the first module of ``ACTIVATIONS`` that follows it in ``net.modules()`` order
    with only normalisation or dropout between (``BETWEEN``), else the convolution itself.
    Grad-CAM weights non-negative feature maps (Selvaraju et al.'s, after the ReLU); on a
    convolution's raw output the weighted sum can be negative everywhere, and its ReLU all zero.

    Raises:
        ArgumentError: ``layer`` names no module of the network (the message lists the convolutions),
            or ``layer`` is ``None`` and the network has no ``nn.Conv2d`` (``NO_CONV``).
    """
    named = dict(net.named_modules())
    if layer is not None:
        convs = [name for name, m in named.items() if isinstance(m, nn.Conv2d)]
        allowed = f"a module of the network, e.g. one of its convolutions: {', '.join(convs) or 'none'}"
        require(isinstance(layer, str) and layer in named and layer != "", "layer", layer, allowed)
        return named[layer]
    conv = last_conv(net)
    require(conv is not None, "method", "gradcam", NO_CONV)
    modules = list(net.modules())
    for module in modules[modules.index(conv) + 1 :]:
        if isinstance(module, ACTIVATIONS):
            return module
        if not isinstance(module, BETWEEN) and not isinstance(module, nn.Sequential):
            break
    return conv


def gradcam_layer_name(net: nn.Module, layer: str | None = None) -> str:
    """The name in ``net.named_modules()`` of ``gradcam_layer(net, layer)``, for titles and records.

    Raises:
        ArgumentError: As ``gradcam_layer``.
    """
    module = gradcam_layer(net, layer)
    return next(name for name, candidate in net.named_modules() if candidate is module)


#: The switches ``attributable`` turns off, and their off values.
ATTRIBUTION_OFF = {"flip_tta": False, "crop_tta": 0, "inplace": False}


@contextmanager
def attributable(net: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``net`` computes as before with three switches off, restored after: every
    module's ``flip_tta`` and ``crop_tta`` (the unflipped, untranslated pass only) and ``inplace`` (an
    in-place ReLU would overwrite the output of the layer Grad-CAM hooks before Captum reads its
    gradient, giving all-zero maps; out of place, the values are the same)."""
    saved = [
        (module, name, getattr(module, name))
        for module in net.modules()
        for name, off in ATTRIBUTION_OFF.items()
        if type(getattr(module, name, None)) is type(off)
    ]
    for module, name, _ in saved:
        setattr(module, name, ATTRIBUTION_OFF[name])
    try:
        yield net
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


@dataclass
class Attribution:
    """Maps of B images.

    Attributes:
        maps: float32 ``(B, S, S)`` on the CPU, the channels summed (Grad-CAM: ≥ 0; saliency and
            SmoothGrad: ≥ 0; integrated gradients: signed).
        targets: int64 ``(B,)``, the class each map explains.
        delta: float32 ``(B,)``, integrated gradients' convergence delta (sum of the attributions
            minus (f(x) − f(baseline))), or ``None`` for the other methods.
        logit_gap: float32 ``(B,)``, f(x) − f(baseline) for integrated gradients, else ``None``.
        logits: float32 ``(B,)``, f(x) (the target's logit, without flip TTA or temperature) for
            integrated gradients, else ``None``.
    """

    maps: torch.Tensor
    targets: torch.Tensor
    delta: torch.Tensor | None = None
    logit_gap: torch.Tensor | None = None
    logits: torch.Tensor | None = None

    def relative_delta(self) -> torch.Tensor | None:
        """|delta| / |f(x)|, float64 ``(B,)`` (inf where f(x) = 0), for integrated gradients, else ``None``:
        the completeness error as a fraction of the logit."""
        if self.delta is None:
            return None
        return self.delta.double().abs() / self.logits.double().abs()


@dataclass
class Explainer:
    """Attributes a network's logits to its input pixels (the module's methods).

    Args:
        net: The network, float ``(B, 1, S, S)`` → ``(B, C)`` logits; put in eval mode here.
        preprocess: The run's uint8 ``(B, 1, H, W)`` → float ``(B, 1, S, S)`` preprocessing, which
            gives the black baseline and the input's range.
        method: One of ``METHODS``.
        layer: Grad-CAM's layer (``gradcam_layer``); ``None``: the last convolution.
        steps: Integrated gradients' steps (64 by default; Sundararajan et al. use 20 to 300).
        samples: SmoothGrad's noisy samples (50, Smilkov et al.'s advice).
        noise: SmoothGrad's noise level, a fraction of the input's range (0.15, within their 10–20 %).
        internal_batch_size: Images × steps per forward pass of integrated gradients and SmoothGrad.
        seed: The seed of SmoothGrad's noise (a fork of torch's generator: the global state is untouched).

    Raises:
        ArgumentError: An unknown ``method``, ``steps`` or ``samples`` < 1, ``noise`` < 0, a ``layer``
            the network does not have, or ``gradcam`` for a network without a convolution (``NO_CONV``).
    """

    net: nn.Module
    preprocess: nn.Module
    method: str = "gradcam"
    layer: str | None = None
    steps: int = 64
    samples: int = 50
    noise: float = 0.15
    internal_batch_size: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.method in METHODS, "method", self.method, f"one of {', '.join(METHODS)}")
        require(isinstance(self.steps, int) and self.steps >= 1, "steps", self.steps, "an integer >= 1")
        require(isinstance(self.samples, int) and self.samples >= 1, "samples", self.samples, "an integer >= 1")
        number = isinstance(self.noise, int | float) and not isinstance(self.noise, bool)
        ok = number and math.isfinite(self.noise) and self.noise >= 0
        require(ok, "noise", self.noise, "a fraction of the input's range >= 0, e.g. 0.15")
        self.net.eval()
        # The black and the white image after the run's preprocessing, float32 (1, 1, S, S) on the CPU.
        self._black, self._white = (self._constant_image(value) for value in (0, 255))
        layer = gradcam_layer(self.net, self.layer) if self.method == "gradcam" or self.layer is not None else None
        self._layer = layer if self.method == "gradcam" else None
        if self._layer is not None:
            self._check_layer()

    def _check_layer(self) -> None:
        """Refuses a Grad-CAM layer that does not give float ``(B, C, H, W)`` exactly once per
        forward pass (a module shared by several places of the network, or one the pass skips),
        tried on the black image.

        Raises:
            ArgumentError: It does not (the message says how to choose another).
        """
        outputs: list[tuple[int, ...]] = []
        handle = self._layer.register_forward_hook(lambda module, args, out: outputs.append(tuple(out.shape)))
        try:
            device = next((p.device for p in self.net.parameters()), torch.device("cpu"))
            with torch.no_grad(), attributable(self.net):
                self.net(self.baseline(device))
        finally:
            handle.remove()
        name = self.layer or next(n for n, m in self.net.named_modules() if m is self._layer)
        shapes = ", ".join(map(str, outputs)) or "none"
        ok = len(outputs) == 1 and len(outputs[0]) == 4
        allowed = (
            "a module whose output is (B, C, H, W), run once per forward pass (its outputs here: "
            f"{shapes}); choose one with layer=<name>, e.g. a convolution"
        )
        require(ok, "layer", name, allowed)

    def baseline(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The black image after the run's preprocessing, float32 ``(1, 1, S, S)`` on ``device``."""
        return self._black.to(device)

    def as_seen(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed images back on the [0, 1] scale (black 0, white 1), float32 ``(B, S, S)`` on
        the CPU, for figures: ``(x − black) / (white − black)`` of the run's normalisation."""
        black, white = self.baseline(x.device), self._white.to(x.device)
        return ((x.detach().float() - black) / (white - black)).clamp(0, 1).sum(dim=1).cpu()

    def _constant_image(self, value: int) -> torch.Tensor:
        size = self.preprocess(torch.zeros(1, 1, 28, 28, dtype=torch.uint8)).shape[-1]
        return self.preprocess(torch.full((1, 1, size, size), value, dtype=torch.uint8))

    def attribute(self, x: torch.Tensor, targets: torch.Tensor) -> Attribution:
        """The maps of preprocessed images ``x`` for the classes ``targets``.

        Args:
            x: float ``(B, 1, S, S)`` images as the network sees them, on its device.
            targets: int64 ``(B,)`` class indices, each in [0, C).

        Raises:
            ArgumentError: A target outside [0, C).
        """
        # Tensors made under torch.inference_mode (a test loop's) cannot enter autograd: fresh copies.
        with torch.inference_mode(False):
            x = x.detach().float().clone().requires_grad_()  # Captum warns if it has to ask for gradients
            targets = torch.as_tensor(targets.tolist(), dtype=torch.int64, device=x.device)
            return self._attribute(x, targets)

    def _attribute(self, x: torch.Tensor, targets: torch.Tensor) -> Attribution:
        from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Saliency

        with attributable(self.net):
            classes = self.net(x[:1]).shape[1]
            bad = [int(t) for t in targets if not 0 <= int(t) < classes]
            require(not bad, "target", bad[0] if bad else None, f"a class index from 0 to {classes - 1}")
            if self.method == "gradcam":
                cam = LayerGradCam(self.net, self._layer).attribute(x, target=targets, relu_attributions=True)
                maps = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), "bilinear")
                return Attribution(_maps(maps), targets.cpu())
            if self.method == "integrated_gradients":
                return self._integrated_gradients(x, targets, IntegratedGradients(self.net))
            if self.method == "saliency":
                return Attribution(_maps(Saliency(self.net).attribute(x, target=targets, abs=True)), targets.cpu())
            stdev = self.noise * (self._white - self._black).abs().max().item()  # a fraction of the input's range
            maps = [self._smoothgrad(x[i : i + 1], targets[i : i + 1], stdev) for i in range(len(x))]
            return Attribution(torch.cat(maps), targets.cpu())

    def _smoothgrad(self, x: torch.Tensor, target: torch.Tensor, stdev: float) -> torch.Tensor:
        """One image's SmoothGrad map, float32 ``(1, S, S)``. Captum draws the noise from torch's
        global generator: seeded here for each image (on a fork of it), so an image's map is the
        same in any call and any batch."""
        from captum.attr import NoiseTunnel, Saliency

        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            torch.manual_seed(self.seed)
            noisy = NoiseTunnel(Saliency(self.net)).attribute(
                x,
                nt_type="smoothgrad",
                nt_samples=self.samples,
                nt_samples_batch_size=min(self.samples, self.internal_batch_size),
                stdevs=stdev,
                target=target,
                abs=True,
            )
        return _maps(noisy)

    def _integrated_gradients(self, x: torch.Tensor, targets: torch.Tensor, ig: object) -> Attribution:
        baseline = self.baseline(x.device).expand_as(x)
        attributions, delta = ig.attribute(
            x,
            baselines=baseline,
            target=targets,
            n_steps=self.steps,
            internal_batch_size=self.internal_batch_size,
            return_convergence_delta=True,
        )
        with torch.no_grad():
            rows = torch.arange(len(x), device=x.device)
            logits = self.net(x)[rows, targets]
            gap = logits - self.net(baseline)[rows, targets]
        delta = delta.detach().float().cpu()
        return Attribution(_maps(attributions), targets.cpu(), delta, gap.float().cpu(), logits.float().cpu())


def _maps(attributions: torch.Tensor) -> torch.Tensor:
    """float ``(B, C, S, S)`` attributions → float32 ``(B, S, S)`` on the CPU, the channels summed."""
    return attributions.detach().sum(dim=1).float().cpu()


def overlay(image: torch.Tensor, attribution: torch.Tensor, alpha: float = 0.8) -> np.ndarray:
    """One image with its map drawn over it, uint8 RGB ``(S, S, 3)``: the one rendering of a map
    for ``fmnist-explain``, the report and the server.

    The map is scaled by the 99th percentile of its absolute values and clipped to 1 (Captum's
    ``visualization`` scales by a percentile too, so that a few extreme pixels do not hide the
    rest). A map with negative values (integrated gradients) is drawn signed, red for a positive
    and blue for a negative contribution (matplotlib's ``bwr``); a map ≥ 0 with ``inferno``. Each
    pixel's colour is mixed into the grey image in proportion to its scaled value, so a pixel of
    no attribution shows the image alone, and an all-zero map leaves the image as it is.

    Args:
        image: float ``(S, S)`` on the [0, 1] scale (``Explainer.as_seen``).
        attribution: float ``(S, S)``.
        alpha: The opacity of the map where its scaled value is 1, in [0, 1].
    """
    from matplotlib import colormaps

    values = attribution.detach().double().cpu().numpy()
    signed = bool((values < 0).any())
    peak = float(np.percentile(np.abs(values), 99))
    scaled = np.clip(values / peak, -1, 1) if peak > 0 else np.zeros_like(values)
    colored = colormaps["bwr"]((scaled + 1) / 2) if signed else colormaps["inferno"](scaled)
    weight = alpha * np.abs(scaled)[..., None]
    gray = image.detach().double().cpu().numpy()[..., None].repeat(3, axis=-1)
    return np.round(255 * ((1 - weight) * gray + weight * colored[..., :3])).astype(np.uint8)
