"""The recipes' CNNs (docs/models.md) and this project's ``VGGBNNet``, as plain ``nn.Module``s.

Each maps float32 ``(B, 1, S, S)`` images, ``S = image_size``, to float32 ``(B, num_classes)``
logits (parameter counts below at 10 classes), and raises ``ArgumentError`` for a bad argument
and ``ImageTooSmallError`` for a side its pooling stages cannot take. Any ``nn.Module`` of your own
with this interface and a ``num_classes`` argument trains with ``model._target_=my_module.MyNet``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fmnist_lightning.errors import ImageTooSmallError, require


def conv_block(in_channels: int, out_channels: int, kernel_size: int, batch_norm: bool = False) -> nn.Sequential:
    """Conv ("same" padding) → opt. BatchNorm → ReLU → 2×2 max-pool: ``(B, in, S, S)`` → ``(B, out, S//2, S//2)``."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
    return nn.Sequential(*layers)


def pooled_side(image_size: int, num_blocks: int, net: str) -> int:
    """Side in pixels of the feature maps after ``num_blocks`` 2×2 max-pools.

    Raises:
        ImageTooSmallError: ``image_size`` is too small to leave at least one pixel.
    """
    side = image_size // 2**num_blocks
    if side < 1:
        raise ImageTooSmallError(
            image_size,
            f"too small for {net}: its {num_blocks} pooling stages need at least {2**num_blocks} pixels; use 16 or 28",
        )
    return side


def check_dropout(dropout: float) -> None:
    """Raises ``ArgumentError`` unless ``dropout`` is in [0, 1)."""
    require(0.0 <= dropout < 1.0, "dropout", dropout, "a probability in [0, 1)")


class ConvClassifier(nn.Module):
    """Base of the networks below: ``classifier(features(x))``, both set by the subclass."""

    features: nn.Module
    classifier: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps float ``(B, 1, H, W)`` images to float ``(B, num_classes)`` logits."""
        return self.classifier(self.features(x))


class TwoConvBNNet(ConvClassifier):
    """Recipe 000 (``000_49e6956bb08f0e59.txt``): conv(1→32)+BN+ReLU+pool, conv(32→64)+BN+ReLU+pool,
    FC→256+ReLU+Dropout, FC 256→128+ReLU+Dropout, FC 128→num_classes; 856,266 parameters at 28 px.
    3×3 kernels with padding 1: the recipe's FC input of 3136 = 64·7·7 at 28 px implies them.

    Args:
        dropout: Dropout probability of both hidden linear layers (recipe: 0.5).
    """

    def __init__(self, image_size: int = 28, num_classes: int = 10, dropout: float = 0.5) -> None:
        super().__init__()
        check_dropout(dropout)
        side = pooled_side(image_size, 2, type(self).__name__)
        self.features = nn.Sequential(conv_block(1, 32, 3, batch_norm=True), conv_block(32, 64, 3, batch_norm=True))
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * side * side, 256),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(256, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(128, num_classes),
        )


class ThreeConvNet(ConvClassifier):
    """Recipe 001 (``001_84f283de40ea0c52.txt``): three 3×3 conv+ReLU+pool blocks (32, 64, 128; padding 1,
    implied by its 3×3 maps at 28 px), FC 1152→256+ReLU (activation not named there), Dropout,
    FC 256→num_classes; 390,410 parameters at 28 px.

    Args:
        dropout: Dropout probability before the output layer (recipe: 0.5).
    """

    def __init__(self, image_size: int = 28, num_classes: int = 10, dropout: float = 0.5) -> None:
        super().__init__()
        check_dropout(dropout)
        side = pooled_side(image_size, 3, type(self).__name__)
        self.features = nn.Sequential(conv_block(1, 32, 3), conv_block(32, 64, 3), conv_block(64, 128, 3))
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(128 * side * side, 256),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(256, num_classes),
        )


class TwoConvNet(ConvClassifier):
    """Recipes 002 (``002_94ed376411e83fcf.txt``, 28 px) and 003 (``003_7ade0653597f4a52.txt``, 16 px).

    Default: conv(1→32)+ReLU+pool, conv(32→64)+ReLU+pool, FC→hidden+ReLU, Dropout, FC→num_classes;
    3×3 kernels, padding 1 and ``hidden=128`` chosen here, as neither recipe gives them (421,642
    parameters at 28 px, 151,306 at 16 px). ``pool_every_conv=False, padding=0`` is recipe 002's
    "``Conv2d(1, 32)`` -> ``Conv2d(32, 64)`` followed by ``ReLU`` and ``MaxPool2d(2, 2)``", as in
    PyTorch's MNIST example: one pool after both convs, 28→26→24→12 px, FC 9216→hidden (1,199,882).

    Args:
        hidden: Width of the hidden linear layer.
        dropout: Dropout probability before the output layer (recipes: 0.5).
        pool_every_conv: A 2×2 max-pool after each conv layer; ``False``: one after both.
        padding: Of the 3×3 convolutions: 1 keeps the size, 0 loses 2 pixels per convolution.

    Raises:
        ArgumentError: ``padding`` is not 0 or 1, ``hidden`` < 1 or ``dropout`` outside [0, 1).
        ImageTooSmallError: ``image_size`` is too small.
    """

    def __init__(
        self,
        image_size: int = 28,
        num_classes: int = 10,
        hidden: int = 128,
        dropout: float = 0.5,
        pool_every_conv: bool = True,
        padding: int = 1,
    ) -> None:
        super().__init__()
        check_dropout(dropout)
        require(hidden >= 1, "hidden", hidden, "an integer >= 1")
        require(padding in (0, 1), "padding", padding, "0 or 1")
        side = image_size
        for i in range(2):
            side -= 2 * (1 - padding)  # an unpadded 3x3 convolution loses a pixel on each side
            if pool_every_conv or i == 1:
                side //= 2
        if side < 1:
            raise ImageTooSmallError(
                image_size,
                f"too small for TwoConvNet with padding={padding} and pool_every_conv={pool_every_conv}: "
                "no pixel is left; use 16 or 28",
            )
        # One Sequential per conv layer: the default layout's state_dict keys are conv_block's.
        blocks: list[nn.Module] = []
        for i, (cin, cout) in enumerate(((1, 32), (32, 64))):
            block: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=padding), nn.ReLU(inplace=True)]
            if pool_every_conv or i == 1:
                block.append(nn.MaxPool2d(2))
            blocks.append(nn.Sequential(*block))
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * side * side, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )


class TwoConv5x5Net(ConvClassifier):
    """Recipe 004 (``004_89eea2e3671ba8f9.txt``): conv5×5(1→16, pad 2)+ReLU+pool, conv5×5(16→32, pad 2)+ReLU+pool,
    FC 512→num_classes at 16 px (ReLU: the recipe names no activation); 18,378 parameters at 16 px."""

    def __init__(self, image_size: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        side = pooled_side(image_size, 2, type(self).__name__)
        self.features = nn.Sequential(conv_block(1, 16, 5), conv_block(16, 32, 5))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * side * side, num_classes))


class VGGBNNet(ConvClassifier):
    """This project's network for ``experiment=best`` and ``fast``: VGG-style (Simonyan & Zisserman, 2015)
    with batch normalisation; 584,874 parameters with the defaults at 28 px. The options after
    ``flip_tta`` are airbench's (Jordan, 2024, arXiv:2404.00498, and its ``airbench94.py``); each is off by
    default, and off it leaves the network, its parameters and its random draws as they were.

    Args:
        widths: Output channels of each stage: ``convs_per_stage`` × (conv3×3 + BN + ReLU), 2×2 max-pool.
        hidden: Width of the hidden layer (FC + BN + ReLU) before Dropout → FC; 0 for none.
        dropout: Dropout probability before the output layer.
        flip_tta: In eval mode, the mean of the logits of each image and its left-right mirror image.
        crop_tta: In eval mode, also the logits of each image translated by ``crop_tta`` pixels down-right
            and up-left (reflect padding), weighted 1/4 each against 1/2 for the untranslated image, as
            airbench's ``tta_level=2``; 0: off.
        whiten: Side of a frozen patch-whitening first layer (2 or 3; 0: off): ``2·whiten²`` channels, the
            whitening filters and their negatives, then ReLU, fitted to training images (``whitening``)
            before training (airbench's ``init_whiten_conv``). A 2×2 layer trims the
            image by one pixel.
        dirac_init: Identity (Dirac) initialisation of the first ``in_channels`` filters of each 3×3
            convolution (airbench's ``Conv.reset_parameters``; ``torch.nn.init.dirac_``).
        bn_momentum: Momentum of every BatchNorm's running statistics, in torch's convention (the
            weight of the new batch; torch's default 0.1). airbench's ``momentum=0.6`` is 0.4 here.
        bn_weights: ``False``: every BatchNorm's scale is frozen at 1 and only its bias is learnt
            (airbench's ``BatchNorm(weight=False)``).

    Raises:
        ArgumentError: ``widths`` is empty, ``convs_per_stage`` < 1, ``hidden`` < 0,
            ``dropout`` outside [0, 1), ``crop_tta`` outside [0, image_size), ``whiten`` not 0, 2 or 3, or
            ``bn_momentum`` outside (0, 1].
        ImageTooSmallError: ``image_size`` is too small for ``len(widths)`` pooling stages.
    """

    def __init__(
        self,
        image_size: int = 28,
        num_classes: int = 10,
        widths: tuple[int, ...] | list[int] = (32, 64, 128),
        convs_per_stage: int = 2,
        hidden: int = 256,
        dropout: float = 0.3,
        flip_tta: bool = False,
        crop_tta: int = 0,
        whiten: int = 0,
        dirac_init: bool = False,
        bn_momentum: float = 0.1,
        bn_weights: bool = True,
    ) -> None:
        super().__init__()
        self.flip_tta = flip_tta
        self.crop_tta = crop_tta
        widths = list(widths)
        require(
            bool(widths) and all(isinstance(w, int) and w >= 1 for w in widths),
            "widths",
            widths,
            "a non-empty list of channel counts >= 1, e.g. [32,64,128]",
        )
        require(convs_per_stage >= 1, "convs_per_stage", convs_per_stage, "an integer >= 1")
        require(hidden >= 0, "hidden", hidden, "an integer >= 0 (0 = no hidden layer)")
        require(
            type(crop_tta) is int and 0 <= crop_tta < image_size,
            "crop_tta",
            crop_tta,
            f"a number of pixels in [0, {image_size}) (0 = off)",
        )
        require(
            type(whiten) is int and whiten in (0, 2, 3),
            "whiten",
            whiten,
            "0 (off), 2 or 3: the whitening patches' side",
        )
        require(0.0 < bn_momentum <= 1.0, "bn_momentum", bn_momentum, "a fraction in (0, 1] (torch's default: 0.1)")
        check_dropout(dropout)
        layers: list[nn.Module] = []
        channels, side = 1, image_size
        if whiten:
            layers += [PatchWhitening(whiten), nn.ReLU(inplace=True)]
            channels, side = 2 * whiten * whiten, side + 2 * ((whiten - 1) // 2) - whiten + 1
        side = pooled_side(side, len(widths), type(self).__name__)
        self.features = nn.Sequential(*layers, *_vgg_stages(widths, convs_per_stage, channels))
        self.classifier = _vgg_head(widths[-1] * side * side, hidden, dropout, num_classes)
        if dirac_init:
            for conv in (m for m in self.features if type(m) is nn.Conv2d):  # not the whitening
                with torch.no_grad():
                    nn.init.dirac_(conv.weight[: conv.in_channels])
        for norm in (m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)):
            norm.momentum = bn_momentum
            norm.weight.requires_grad_(bn_weights)

    @property
    def whitening(self) -> PatchWhitening | None:
        """The patch-whitening layer, which ``PatchWhitening.fit`` sets from training images; ``None`` if off."""
        first = self.features[0]
        return first if isinstance(first, PatchWhitening) else None

    def _tta(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        if self.flip_tta:
            logits = (logits + super().forward(x.flip(-1))) / 2
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps float ``(B, 1, H, W)`` images to float ``(B, num_classes)`` logits."""
        if self.training:
            return super().forward(x)
        logits = self._tta(x)
        if self.crop_tta:
            s = self.crop_tta
            padded = F.pad(x, (s, s, s, s), mode="reflect")
            h, w = x.shape[-2:]
            shifted = (padded[..., :h, :w], padded[..., 2 * s :, 2 * s :])  # moved down-right, up-left
            logits = logits / 2 + sum(self._tta(t) for t in shifted) / 4
        return logits


class PatchWhitening(nn.Conv2d):
    """A frozen ``side × side`` convolution (``(B, 1, S, S)`` → ``(B, 2·side², S', S')``, ``S' = S`` for side
    3 with padding 1, ``S − 1`` for side 2) that whitens image patches: its first ``side²`` filters are
    ``Λ^{-1/2} Vᵀ`` with bias ``−Λ^{-1/2} Vᵀ μ`` (``V, Λ``: the eigenvectors and eigenvalues of the
    training patches' covariance, ``μ`` their mean), so that on training patches those outputs have zero
    mean and an identity covariance (up to ``eps``); the other ``side²`` are their negatives. airbench's
    ``init_whiten_conv`` (Jordan, 2024) uses the uncentred second moment and learns the bias for a few
    epochs; here the patches are centred and the bias is frozen with the weights.

    The patches include the border ones of a 3×3 layer, over the zero padding (as the layer sees
    them); airbench's are interior patches only. ``fit`` holds about three float64 copies of the
    patches: about 280 MB each for 5,000 images at 28 px and side 3.

    Args:
        side: Patch side in pixels (2 or 3).
        eps: Added to the eigenvalues, in the squared units of the (normalised) pixels: airbench's 5e-4,
            for patch directions with almost no variance.
    """

    def __init__(self, side: int, eps: float = 5e-4) -> None:
        super().__init__(1, 2 * side * side, side, padding=(side - 1) // 2)
        self.eps = eps
        self.requires_grad_(False)

    def patches(self, images: torch.Tensor) -> torch.Tensor:
        """float ``(N, 1, S, S)`` → float64 ``(N·S'·S', side²)``: every patch the layer sees, flattened."""
        side = self.kernel_size[0]
        columns = F.unfold(images.double(), side, padding=self.padding)  # (N, side², S'·S')
        return columns.transpose(1, 2).reshape(-1, side * side)

    @torch.no_grad()
    def fit(self, images: torch.Tensor) -> None:
        """Sets the filters and biases from float ``(N, 1, S, S)`` images (the computation is in float64).

        Raises:
            RuntimeError: ``images`` is not ``(N, 1, S, S)`` (``torch.nn.functional.unfold``'s error).
        """
        patches = self.patches(images)
        mean = patches.mean(dim=0)
        eigenvalues, eigenvectors = torch.linalg.eigh(torch.cov(patches.T))
        filters = eigenvectors.T / (eigenvalues + self.eps).sqrt().unsqueeze(1)  # (side², side²)
        both = torch.cat((filters, -filters))  # (2·side², side²)
        self.weight.copy_(both.view_as(self.weight).to(self.weight.dtype))
        bias = -(both @ mean)
        self.bias.copy_(bias.to(self.bias.dtype))


def _vgg_stages(widths: list[int], convs_per_stage: int, channels: int = 1) -> list[nn.Module]:
    """``VGGBNNet``'s stages: ``(B, channels, S, S)`` → ``(B, widths[-1], S // 2**len(widths), ...)``."""
    layers: list[nn.Module] = []
    for width in widths:
        for _ in range(convs_per_stage):
            layers += [
                nn.Conv2d(channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            channels = width
        layers.append(nn.MaxPool2d(2))
    return layers


def _vgg_head(features: int, hidden: int, dropout: float, num_classes: int) -> nn.Sequential:
    """``VGGBNNet``'s classifier on ``features`` flattened inputs."""
    head: list[nn.Module] = [nn.Flatten()]
    if hidden:
        head += [nn.Linear(features, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
        features = hidden
    head += [nn.Dropout(dropout), nn.Linear(features, num_classes)]
    return nn.Sequential(*head)
