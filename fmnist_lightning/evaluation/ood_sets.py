"""The out-of-distribution sets of ``fmnist-ood``, one class per kind, each built from a config of
``conf/ood/`` (``_target_``) and called with the in-distribution test images. Every set is uint8
``(M, 1, H, W)`` images on the [0, 255] scale, as the datasets' IDX files hold them, so the run's
own preprocessing (resize and normalisation) treats in- and out-of-distribution images alike.

A set of one's own is a class with the same call (``OODContext`` in, ``{name: images}`` out) and a
YAML in a config folder of one's own (docs/uncertainty.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from lightning import LightningDataModule

from fmnist_lightning.data.corruptions import BY_NAME, SEVERITIES, corrupted_test_set, select_corruptions
from fmnist_lightning.errors import require


@dataclass(frozen=True)
class OODContext:
    """What a set may be made from.

    Attributes:
        test_images: The in-distribution test images, uint8 ``(N, 1, H, W)`` on the CPU.
        test_md5s: Their IDX files' MD5s (``IdxDataset.test_checksums``), naming cached corruptions.
        seed: The command's seed (noise and corruptions draw from it).
        cache_dir: Where corrupted test sets are cached (``fmnist-robustness``'s cache).
    """

    test_images: torch.Tensor
    test_md5s: dict
    seed: int
    cache_dir: Path


def _uint8(images: torch.Tensor) -> torch.Tensor:
    """float images on [0, 1] → uint8 on [0, 255], clipped and rounded."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


class Digits:
    """scikit-learn's bundled handwritten digits (``sklearn.datasets.load_digits``: the 1,797 8×8
    images of the UCI "Optical Recognition of Handwritten Digits" set, values 0–16), as 28×28
    images: each pixel scaled to 0–255 (``round(v * 255 / 16)``), upsampled 3× by nearest
    neighbour to 24×24, and set into the middle of a black 28×28 frame (2 pixels each side),
    as MNIST centres its digits in a 20×20 box with a margin. Real images available on every
    machine, standing in for MNIST (``data=mnist`` in ``ood=[...]`` when its files are present).
    """

    def __call__(self, context: OODContext) -> dict[str, torch.Tensor]:
        from sklearn.datasets import load_digits

        pixels = torch.from_numpy(np.rint(load_digits().images * 255 / 16))  # (1797, 8, 8) float64
        big = pixels.repeat_interleave(3, dim=1).repeat_interleave(3, dim=2)
        framed = torch.nn.functional.pad(big, (2, 2, 2, 2))
        return {"digits": framed.to(torch.uint8).unsqueeze(1)}


class Transformed:
    """The in-distribution test images transformed: ``vflip`` (upside down, Hendrycks et al.'s
    vertically flipped set), ``hflip`` or ``inverted`` (255 − pixel: dark garments on white)."""

    KINDS = ("vflip", "hflip", "inverted")

    def __init__(self, kind: str) -> None:
        require(kind in self.KINDS, "kind", kind, f"one of {', '.join(self.KINDS)}")
        self.kind = kind

    def __call__(self, context: OODContext) -> dict[str, torch.Tensor]:
        images = context.test_images
        if self.kind == "inverted":
            return {self.kind: 255 - images}
        return {self.kind: images.flip(2 if self.kind == "vflip" else 3)}


class Corrupted:
    """The in-distribution test images under ``fmnist-robustness``'s corruptions
    (``fmnist_lightning.data.corruptions``: CIFAR-10-C and MNIST-C) at one ``severity`` (1–5), one
    set per corruption, named ``<corruption>_<severity>``; cached as ``fmnist-robustness`` caches them.

    Raises:
        ArgumentError: An unknown corruption, or a severity outside 1–5.
    """

    def __init__(self, corruptions: str | list[str] = "all", severity: int = 5) -> None:
        self.corruptions, _ = select_corruptions(corruptions, [severity])
        self.severity = severity

    def __call__(self, context: OODContext) -> dict[str, torch.Tensor]:
        sets = {}
        for corruption in self.corruptions:
            levels = corrupted_test_set(
                context.test_images, BY_NAME[corruption.name], context.seed, context.test_md5s, context.cache_dir
            )
            sets[f"{corruption.name}_{self.severity}"] = levels[SEVERITIES.index(self.severity)]
        return sets


class Noise:
    """``count`` images of pixel noise: ``gaussian``, N(0.5, 0.5²) per pixel clipped to [0, 1]
    (Hendrycks & Gimpel 2017 and Liang et al. 2018 use Gaussian noise images), or ``uniform``,
    U[0, 1] per pixel. Seeded with the command's seed; ``image_size`` ``None`` is the test images'.

    Raises:
        ArgumentError: ``distribution`` unknown, ``count`` or ``image_size`` below 1.
    """

    def __init__(self, distribution: str, count: int = 10_000, image_size: int | None = None) -> None:
        require(distribution in ("gaussian", "uniform"), "distribution", distribution, "gaussian or uniform")
        require(isinstance(count, int) and count >= 1, "count", count, "an integer >= 1")
        ok = image_size is None or (isinstance(image_size, int) and image_size >= 1)
        require(ok, "image_size", image_size, "null or an integer >= 1")
        self.distribution, self.count, self.image_size = distribution, count, image_size

    def __call__(self, context: OODContext) -> dict[str, torch.Tensor]:
        side = self.image_size or context.test_images.shape[-1]
        generator = torch.Generator().manual_seed(context.seed)
        shape = (self.count, 1, side, side)
        if self.distribution == "gaussian":
            noise = 0.5 + 0.5 * torch.randn(shape, generator=generator)
        else:
            noise = torch.rand(shape, generator=generator)
        return {f"{self.distribution}_noise": _uint8(noise)}


class DatasetTestSplit:
    """The test split of another dataset config (``data``: its DataModule, e.g. ``conf/data/mnist.yaml``
    or one's own), its files checked as training checks them.

    Raises:
        DatasetError: The dataset's files are missing or corrupt (the message says how to get them).
    """

    def __init__(self, data: LightningDataModule) -> None:
        self.data = data

    def __call__(self, context: OODContext) -> dict[str, torch.Tensor]:
        self.data.prepare_data()
        self.data.setup("test")
        images, _ = self.data.data_test.tensors
        return {self.data.dataset.name: images.cpu()}
