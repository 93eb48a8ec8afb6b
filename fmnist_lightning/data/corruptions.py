"""Corrupted copies of the test images at 5 severities each: the table, its seeded generation, its cache.

Corruptions and parameters from CIFAR-10-C (Hendrycks & Dietterich, ICLR 2019, ``hendrycks/robustness``,
``ImageNet-C/create_c/make_cifar_c.py``) and, the geometric ones, MNIST-C (Mu & Gilmer, 2019,
``google-research/mnist-c``, ``corruptions.py``), computed batched by kornia or torchvision;
``CORRUPTIONS`` names each call and source.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import kornia
import numpy as np
import torch
import torchvision
from kornia import augmentation as KA
from kornia.geometry.transform import get_affine_matrix2d, warp_affine
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from fmnist_lightning.artifacts import atomic_file
from fmnist_lightning.errors import require

log = logging.getLogger(__name__)

#: The severities every corruption has.
SEVERITIES = (1, 2, 3, 4, 5)
CIFAR_C = "CIFAR-10-C (make_cifar_c.py)"
MNIST_C = "MNIST-C (corruptions.py)"


def _random_signs(batch: int, columns: int) -> torch.Tensor:
    """float ``(batch, columns)`` of ±1, as MNIST-C's ``np.random.choice([-1, 1])``."""
    return torch.randint(0, 2, (batch, columns)).float() * 2 - 1


def _affine(x: torch.Tensor, shift=None, degrees=None, shear=None, scale: float = 1.0) -> torch.Tensor:
    """kornia's affine warp about the centre (MNIST-C's 13.5): float ``shift`` ``(B, 2)`` px, ``degrees``,
    ``shear`` (x-shear, radians) ``(B,)``."""
    b, _, h, w = x.shape
    zeros = torch.zeros(b)
    matrix = get_affine_matrix2d(
        shift if shift is not None else torch.zeros(b, 2),
        torch.tensor([[(w - 1) / 2, (h - 1) / 2]]).expand(b, 2),
        torch.full((b, 2), scale),
        degrees if degrees is not None else zeros,
        shear if shear is not None else zeros,
        zeros,
    )
    return warp_affine(x, matrix[:, :2], (h, w))


def _jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its codecs (for TorchCodec); they still work
        warnings.simplefilter("ignore", DeprecationWarning)
        return TF.jpeg((x * 255).round().to(torch.uint8), quality).float() / 255


def _pixelate(x: torch.Tensor, fraction: float) -> torch.Tensor:
    side = x.shape[-1]
    small = TF.resize(x, [int(side * fraction)] * 2, InterpolationMode.BILINEAR, antialias=True)
    return TF.resize(small, [side, side], InterpolationMode.NEAREST_EXACT)


def _elastic(x: torch.Tensor, alpha: float) -> torch.Tensor:
    # kornia's alpha is in W/2 pixels per unit; kernel 3σ each side, CIFAR-10-C's gaussian(truncate=3).
    unit = alpha / (x.shape[-1] / 2)
    return KA.RandomElasticTransform((25, 25), (4.0, 4.0), (unit, unit), p=1.0)(x)


@dataclass(frozen=True)
class Corruption:
    """One corruption: float ``(B, 1, H, W)`` images in [0, 1] → the same, at a severity.

    Attributes:
        name: Its name in configs and reports, e.g. ``"gaussian_noise"``.
        call: The library call that computes it (for the docs and reports).
        params: Its parameter at severities 1–5, in ``call``'s units.
        source: Where the parameters come from.
        apply: ``apply(images, param)``; draws its random numbers from torch's global generator.
    """

    name: str
    call: str
    params: tuple
    source: str
    apply: Callable[[torch.Tensor, object], torch.Tensor]

    def describe(self) -> dict:
        """What identifies its images: name, call, parameters and source (JSON-ready)."""
        return {"call": self.call, "params": list(self.params), "source": self.source}


def _blur_kernel(sigma: float) -> list[int]:
    side = 2 * int(4 * sigma + 0.5) + 1  # scikit-image's gaussian (CIFAR-10-C's): truncate=4
    return [side, side]


#: Every corruption, in a fixed order (a corruption's seed offset is its index here).
CORRUPTIONS: tuple[Corruption, ...] = (
    Corruption("gaussian_noise", "kornia.augmentation.RandomGaussianNoise(std=c)", (0.04, 0.06, 0.08, 0.09, 0.10),
               f"{CIFAR_C} gaussian_noise: std on [0, 1] pixels",
               lambda x, c: KA.RandomGaussianNoise(std=c, p=1.0)(x)),
    Corruption("impulse_noise", "kornia.augmentation.RandomSaltAndPepperNoise(amount=c, salt_vs_pepper=0.5)",
               (0.01, 0.02, 0.03, 0.05, 0.07), f"{CIFAR_C} impulse_noise: fraction of pixels set to 0 or 1",
               lambda x, c: KA.RandomSaltAndPepperNoise(amount=float(c), salt_vs_pepper=0.5, p=1.0)(x)),
    Corruption("gaussian_blur", "torchvision.transforms.v2.functional.gaussian_blur(sigma=c)",
               (0.4, 0.6, 0.7, 0.8, 1.0), f"{CIFAR_C} gaussian_blur: sigma in pixels (kernel ±4 sigma)",
               lambda x, c: TF.gaussian_blur(x, _blur_kernel(c), [c, c])),
    Corruption("motion_blur", "kornia.augmentation.RandomMotionBlur(kernel_size=c, angle=(-45, 45), direction=1)",
               (3, 5, 7, 9, 11), f"{CIFAR_C} motion_blur: its angle range; its ImageMagick sigma 1, 1.5, 2, 2, "
               "2.5 px has no kornia equivalent, so the one-sided kernel's length grows 3 to 11 px (ours)",
               lambda x, c: KA.RandomMotionBlur(c, (-45.0, 45.0), (1.0, 1.0), p=1.0)(x)),
    Corruption("contrast", "torchvision.transforms.v2.functional.adjust_contrast(contrast_factor=c)",
               (0.75, 0.5, 0.4, 0.3, 0.15), f"{CIFAR_C} contrast: (x − mean)·c + mean",
               lambda x, c: TF.adjust_contrast(x, c)),
    Corruption("brightness", "kornia.enhance.adjust_brightness(factor=c)", (0.05, 0.1, 0.15, 0.2, 0.3),
               f"{CIFAR_C} brightness: c added to HSV value, which is the pixel for grey images",
               lambda x, c: kornia.enhance.adjust_brightness(x, c)),
    Corruption("translate", "kornia.geometry.transform.warp_affine (translation ±c, ±c)", (1, 2, 3, 4, 5),
               f"{MNIST_C} translate: c pixels along x and y, each sign random",
               lambda x, c: _affine(x, shift=_random_signs(len(x), 2) * c)),
    Corruption("rotate", "kornia.geometry.transform.warp_affine (rotation ±c rad)", (0.2, 0.4, 0.6, 0.8, 1.0),
               f"{MNIST_C} rotate: c radians about the centre, sign random",
               lambda x, c: _affine(x, degrees=_random_signs(len(x), 1)[:, 0] * math.degrees(c))),
    Corruption("shear", "kornia.geometry.transform.warp_affine (x-shear ±c rad)", (0.2, 0.4, 0.6, 0.8, 1.0),
               f"{MNIST_C} shear: x-shear angle c radians (x moves by tan(c)·y) about the centre, sign random",
               lambda x, c: _affine(x, shear=_random_signs(len(x), 1)[:, 0] * c)),
    Corruption("scale", "kornia.geometry.transform.warp_affine (scale c)", (0.9, 0.8, 0.7, 0.6, 0.5),
               f"{MNIST_C} scale: shrunk by c about the centre (its inverse map scales by 1/c)",
               lambda x, c: _affine(x, scale=c)),
    Corruption("elastic", "kornia.augmentation.RandomElasticTransform(sigma=4 px, alpha=c px)",
               (8.5, 17.0, 25.5, 34.0, 42.5), "Simard et al. 2003 (alpha 34 px, sigma 4 px for 28-px digits) at "
               "severity 4, scaled by 1/4 a step (ours: CIFAR-10-C's and MNIST-C's elastic tables mix an affine "
               "jitter that kornia lacks)",
               _elastic),
    Corruption("pixelate", "torchvision.transforms.v2.functional.resize to int(28·c) px and back",
               (0.95, 0.9, 0.85, 0.75, 0.65), f"{CIFAR_C} pixelate (antialiased down, nearest up, for PIL's box)",
               _pixelate),
    Corruption("jpeg", "torchvision.transforms.v2.functional.jpeg(quality=c)", (80, 65, 58, 50, 40),
               f"{CIFAR_C} jpeg_compression: JPEG quality", _jpeg),
)  # fmt: skip

#: The corruptions by name.
BY_NAME = {c.name: c for c in CORRUPTIONS}


def select_corruptions(
    names: str | Sequence[str], severities: int | Sequence[int]
) -> tuple[list[Corruption], list[int]]:
    """The corruptions (``"all"`` or names from ``CORRUPTIONS``) in ``CORRUPTIONS`` order, and the severities
    (1–5; one may be given alone) sorted.

    Raises:
        ArgumentError: An unknown name, an empty list, or a severity outside 1–5.
    """
    wanted = [c.name for c in CORRUPTIONS] if names == "all" else ([names] if isinstance(names, str) else list(names))
    unknown = [n for n in wanted if n not in BY_NAME]
    require(bool(wanted) and not unknown, "corruptions", names, f"'all' or a list of {', '.join(BY_NAME)}")
    levels = [severities] if isinstance(severities, int) else severities
    ok = (
        isinstance(levels, (list, tuple))
        and bool(levels)
        and all(isinstance(s, int) and not isinstance(s, bool) and s in SEVERITIES for s in levels)
    )
    require(ok, "severities", levels, "a non-empty list of integers from 1 to 5")
    return [c for c in CORRUPTIONS if c.name in wanted], sorted(set(levels))


def corrupt(images: torch.Tensor, corruption: Corruption, severity: int, seed: int) -> torch.Tensor:
    """uint8 ``(N, 1, H, W)`` CPU ``images`` under one corruption at ``severity`` 1–5, the same uint8 shape.

    Seeded with ``seed`` plus the corruption's index in ``CORRUPTIONS`` (the same pattern at every
    severity) in ``torch.random.fork_rng``, on one CPU thread; the caller's generator and threads stay.
    """
    threads = torch.get_num_threads()
    # One thread: the bytes do not depend on the machine's cores.
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + CORRUPTIONS.index(corruption))
            out = corruption.apply(images.float() / 255, corruption.params[severity - 1])
    finally:
        torch.set_num_threads(threads)
    return (out.clamp(0, 1) * 255).round().to(torch.uint8)


def table_identity(corruptions: Sequence[Corruption], seed: int, test_md5s: dict) -> dict:
    """What decides the corrupted images (JSON-ready): test MD5s, seed, calls, parameters, library versions."""
    return {
        "test_md5s": test_md5s,
        "seed": seed,
        "libraries": {"kornia": kornia.__version__, "torchvision": torchvision.__version__},
        "corruptions": {c.name: c.describe() for c in corruptions},
    }


def cache_path(cache_dir: Path, corruption: Corruption, seed: int, test_md5s: dict) -> Path:
    """``<cache_dir>/<name>-<hash>.npy``, the hash 16 hex digits of SHA-256 of its ``table_identity``."""
    identity = json.dumps(table_identity([corruption], seed, test_md5s), sort_keys=True)
    return Path(cache_dir) / f"{corruption.name}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}.npy"


def corrupted_test_set(
    images: torch.Tensor, corruption: Corruption, seed: int, test_md5s: dict, cache_dir: Path
) -> torch.Tensor:
    """The uint8 ``(N, 1, H, W)`` test images under one corruption at severities 1–5, uint8
    ``(5, N, 1, H, W)``, from the cache (``cache_path``) or made (``corrupt``) and written atomically.

    Raises:
        OSError: The folder cannot be created or written.
    """
    path = cache_path(cache_dir, corruption, seed, test_md5s)
    if path.is_file():
        try:
            cached = torch.from_numpy(np.load(path, allow_pickle=False))
        except (OSError, ValueError) as err:
            log.warning("cannot read %s (%s): making it again", path, err)
        else:
            if cached.shape == (len(SEVERITIES), *images.shape) and cached.dtype == torch.uint8:
                log.info("reusing %s", path)
                return cached
            log.warning("%s holds %s %s, not the test set's shape: making it again", path, cached.dtype, cached.shape)
    made = torch.stack([corrupt(images, corruption, s, seed) for s in SEVERITIES])
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as file:
        np.save(file, made.numpy(), allow_pickle=False)
    log.info("made %s", path)
    return made
