"""How well a trained run classifies photo-like images, per preprocessing mode.

    python benchmarks/analyses/photo_preprocessing.py --run-dir outputs/runs/<run> [--images 2000] [--json out.json]

The photos are made from the official test images (the first ``--images`` of them), each
with its own random draw (seeded by ``--seed``), to look like product photos as people take
them:

1. inverted: a dark object on a white background, as in the photos FashionMNIST was made from;
2. upscaled (bicubic) so that its longer side is 150-400 px;
3. placed at a random position on a light canvas (each channel 225-255, so slightly tinted)
   that is 1.2-2.0× the object's width and 1.1-1.8× its height: not square, with margins
   (the object is multiplied onto the canvas, so its white background takes the canvas colour);
4. degraded: either a mild Gaussian blur (radius 0.5-1.2 px) or JPEG compression (quality
   70-95), each with probability one half;
5. saved as RGB (JPEG-decoded where compressed).

For each mode of ``fmnist_lightning.data.photos.to_fashion_mnist`` (``photo``, ``pad``,
``none``), it prints the accuracy on the photos and on the same test images without the
transforms (the 28×28 originals, as PNG-decoded grayscale images), as a Markdown table;
``--json`` writes the figures. ``none`` refuses the photos (they are not 28×28). Accuracies
are percentages.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from fmnist_lightning.data import load_split
from fmnist_lightning.data.idx import DEBIAN_DATASET_DIR
from fmnist_lightning.data.photos import PREPROCESS_MODES
from fmnist_lightning.errors import ImageError
from fmnist_lightning.evaluation.runs import load_trained


def make_photo(item: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A photo-like RGB image of one uint8 ``(28, 28)`` FashionMNIST item (steps 1-5 above)."""
    side = int(rng.integers(150, 401))
    dark = Image.fromarray(255 - item).resize((side, side), Image.Resampling.BICUBIC)  # 1-2
    colour = rng.integers(225, 256, size=3)
    width, height = int(side * rng.uniform(1.2, 2.0)), int(side * rng.uniform(1.1, 1.8))
    canvas = np.empty((height, width, 3), dtype=np.float64)
    canvas[:] = colour
    top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
    canvas[top : top + side, left : left + side] *= np.asarray(dark, dtype=np.float64)[..., None] / 255  # 3
    photo = Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8), "RGB")
    if rng.random() < 0.5:  # 4
        return photo.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.5, 1.2))))
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=int(rng.integers(70, 96)))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")  # 5


def png_roundtrip(item: np.ndarray) -> Image.Image:
    """A 28×28 test image as a user would have it: a grayscale PNG, decoded."""
    buffer = io.BytesIO()
    Image.fromarray(item).save(buffer, format="PNG")
    return Image.open(io.BytesIO(buffer.getvalue()))


def accuracy(model, images: list[Image.Image], labels: torch.Tensor, preprocess: str) -> float | None:
    """Percentage of ``images`` classified as ``labels`` after ``preprocess``; ``None`` when
    the mode refuses them."""
    try:
        probs = model.predict_images(images, preprocess)
    except ImageError:
        return None
    return 100 * float((probs.argmax(1).cpu() == labels).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, help="a finished run folder")
    parser.add_argument("--images", type=int, default=2000, help="how many test images (from the first)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", default=str(DEBIAN_DATASET_DIR))
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    start = time.perf_counter()
    images, labels = load_split(args.data_root, "test")
    items, labels = images[: args.images].numpy(), labels[: args.images]
    rng = np.random.default_rng(args.seed)
    photos = [make_photo(item, rng) for item in items]
    clean = [png_roundtrip(item) for item in items]
    model = load_trained(args.run_dir)
    dataset = 100 * float((model.predict_proba(images[: args.images, None]).argmax(1) == labels).float().mean())
    results = {
        mode: {"photos": accuracy(model, photos, labels, mode), "clean": accuracy(model, clean, labels, mode)}
        for mode in PREPROCESS_MODES
    }
    record = {
        "run_dir": str(Path(args.run_dir).resolve()),
        "model": model.config.model._target_,
        "images": len(items),
        "seed": args.seed,
        "dataset_accuracy": dataset,
        "modes": results,
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
        "wall_time_s": round(time.perf_counter() - start, 1),
    }

    def cell(value: float | None) -> str:
        return "refused (not 28×28)" if value is None else f"{value:.2f} %"

    print(
        f"{len(items)} test images, run {args.run_dir} ({record['model']}); straight from the dataset: {dataset:.2f} %"
    )
    print("\n| preprocess | photo-like images | the same images, untransformed |\n|---|---:|---:|")
    for mode, r in results.items():
        print(f"| `{mode}` | {cell(r['photos'])} | {cell(r['clean'])} |")
    print(f"\n{record['wall_time_s']} s")
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
