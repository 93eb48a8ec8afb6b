"""Reading and verifying the IDX files, and the DataModule, on the real FashionMNIST."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest
import torch

from fmnist_lightning.data import DatasetError, IdxDataModule, idx, load_split
from fmnist_lightning.data.augment import BatchRandomCrop, BatchRandomErasing, BatchRandomHorizontalFlip
from fmnist_lightning.data.idx import DEBIAN_DATASET_DIR, dataset_config, ensure_files, load_dataset
from fmnist_lightning.errors import ArgumentError, ConfigError

TRAIN_IMAGES = load_dataset().specs[("train", "images")]
TRAIN_LABELS = load_dataset().specs[("train", "labels")]


def test_real_splits_load(data_root: Path) -> None:
    images, labels = load_split(data_root, "train")
    assert images.shape == (60000, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (60000,) and labels.dtype == torch.int64
    assert torch.equal(labels.bincount(), torch.full((10,), 6000))
    images, labels = load_split(data_root, "test")
    assert images.shape == (10000, 28, 28)
    assert torch.equal(labels.bincount(), torch.full((10,), 1000))


def test_gz_files_are_read_directly() -> None:
    """The Debian package's .gz files verify against the checksums of the originals."""
    images, labels = load_split(DEBIAN_DATASET_DIR, "test")
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)


def _copy_all(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for spec in load_dataset().specs.values():
        shutil.copy(src / spec.name, dst / spec.name)
    return dst


def _expect_error(root: Path, bad: Path, *phrases: str) -> None:
    with pytest.raises(DatasetError) as info:
        load_split(root, "train")
    message = str(info.value)
    assert str(bad) in message
    assert "apt-get install dataset-fashion-mnist" in message and "data.root" in message
    for phrase in phrases:
        assert phrase in message


def test_truncated_file(data_root: Path, tmp_path: Path) -> None:
    root = _copy_all(data_root, tmp_path / "d")
    bad = root / TRAIN_IMAGES.name
    bad.write_bytes(bad.read_bytes()[:1_000_000])
    _expect_error(root, bad, "truncated", "1000000 bytes")


def test_truncated_gz_file(tmp_path: Path) -> None:
    root = tmp_path / "d"
    root.mkdir()
    for spec in load_dataset().specs.values():
        shutil.copy(Path(DEBIAN_DATASET_DIR) / f"{spec.name}.gz", root)
    bad = root / f"{TRAIN_IMAGES.name}.gz"
    bad.write_bytes(bad.read_bytes()[:500_000])
    _expect_error(root, bad, "not a complete gzip file")


def test_wrong_magic(data_root: Path, tmp_path: Path) -> None:
    root = _copy_all(data_root, tmp_path / "d")
    bad = root / TRAIN_IMAGES.name
    data = bytearray(bad.read_bytes())
    data[3] = 0x01  # 2051 -> 2049, a label file's magic
    bad.write_bytes(bytes(data))
    _expect_error(root, bad, "magic number 2049, expected 2051")


def test_wrong_count(data_root: Path, tmp_path: Path) -> None:
    root = _copy_all(data_root, tmp_path / "d")
    bad = root / TRAIN_LABELS.name
    data = bytearray(bad.read_bytes())
    data[4:8] = (59999).to_bytes(4, "big")
    bad.write_bytes(bytes(data[:-1]))
    _expect_error(root, bad, "shape (59999,)", "expected (60000,)")


def test_corrupt_pixels(data_root: Path, tmp_path: Path) -> None:
    root = _copy_all(data_root, tmp_path / "d")
    bad = root / TRAIN_IMAGES.name
    data = bytearray(bad.read_bytes())
    data[5000] ^= 0xFF
    bad.write_bytes(bytes(data))
    _expect_error(root, bad, "MD5")


def test_missing_file(data_root: Path, tmp_path: Path) -> None:
    root = _copy_all(data_root, tmp_path / "d")
    (root / TRAIN_LABELS.name).unlink()
    with pytest.raises(DatasetError, match=f"{TRAIN_LABELS.name} is missing from {root}"):
        load_split(root, "train")


def test_ensure_files_copies_local_copy(tmp_path: Path) -> None:
    root = tmp_path / "new" / "fashion-mnist"
    ensure_files(root, DEBIAN_DATASET_DIR, download=False)
    for spec in load_dataset().specs.values():
        assert (root / spec.name).stat().st_size == spec.total_bytes
    assert not list(root.glob(".*part"))


def test_ensure_files_refuses_bad_local_copy(data_root: Path, tmp_path: Path) -> None:
    local = _copy_all(data_root, tmp_path / "local")
    with gzip.open(local / f"{TRAIN_IMAGES.name}.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x03")
    (local / TRAIN_IMAGES.name).unlink()
    root = tmp_path / "root"
    with pytest.raises(DatasetError, match=f"{local / TRAIN_IMAGES.name}.gz is truncated"):
        ensure_files(root, local, download=False)
    assert not (root / TRAIN_IMAGES.name).exists()


def test_nothing_found_without_download(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"not in .* and data.download is false.*apt-get install"):
        ensure_files(tmp_path / "root", tmp_path / "empty", download=False)


def test_failed_download_says_how_to_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a local copy the download is tried; its failure becomes a clear error."""
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(DatasetError, match=r"torchvision's download failed.*apt-get install"):
        ensure_files(tmp_path / "root", None, download=True)


def test_files_in_torchvision_layout_are_found(data_root: Path, tmp_path: Path) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.parent.mkdir()
    _copy_all(data_root, raw)
    assert idx.find_file(tmp_path, TRAIN_IMAGES) == raw / TRAIN_IMAGES.name
    assert load_split(tmp_path, "test")[0].shape == (10000, 28, 28)


#: The dataset keys of conf/data/fashion_mnist.yaml: what a DataModule of FashionMNIST is given.
FASHION_MNIST = dataset_config("fashion_mnist")


def _datamodule(data_root: Path, **kwargs) -> IdxDataModule:
    dm = IdxDataModule(**FASHION_MNIST, root=str(data_root), local_copy=None, download=False, **kwargs)
    dm.prepare_data()
    dm.setup()
    return dm


def test_split_is_seeded_and_disjoint(data_root: Path) -> None:
    a = _datamodule(data_root, val_fraction=0.2, split_seed=3)
    b = _datamodule(data_root, val_fraction=0.2, split_seed=3)
    c = _datamodule(data_root, val_fraction=0.2, split_seed=4)
    assert (len(a.data_train), len(a.data_val), len(a.data_test)) == (48000, 12000, 10000)
    assert torch.equal(a.data_val.tensors[0], b.data_val.tensors[0])
    assert not torch.equal(a.data_val.tensors[0], c.data_val.tensors[0])
    # Train and validation together are exactly the official 60,000 training images.
    weights = torch.randint(0, 2**20, (784,), generator=torch.Generator().manual_seed(0))

    def keys(images: torch.Tensor) -> torch.Tensor:
        return (images.reshape(len(images), -1).long() * weights).sum(1).sort().values

    full, _ = load_split(data_root, "train")
    parts = torch.cat([a.data_train.tensors[0], a.data_val.tensors[0]])
    assert torch.equal(keys(parts), keys(full))


def test_k_fold_splits_are_stratified_seeded_and_cover_every_image() -> None:
    """data.folds=5: the validation folds partition the training images, each with the class
    proportions of the whole, and each fold's training split is the rest."""
    labels = torch.arange(1000) % 10
    labels = labels[torch.randperm(1000, generator=torch.Generator().manual_seed(0))]

    def five_fold(fold: int, seed: int = 0) -> IdxDataModule:
        settings = {"root": "data/fashion-mnist", "folds": 5, "fold": fold, "split_seed": seed}
        return IdxDataModule(**{**FASHION_MNIST, **settings})

    def split(fold: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        return five_fold(fold, seed).split_indices(labels)

    folds = [split(i) for i in range(5)]
    val = torch.cat([v for _, v in folds])
    assert torch.equal(val.sort().values, torch.arange(1000))  # each image validates exactly once
    for train, fold_val in folds:
        assert torch.equal(torch.cat([train, fold_val]).sort().values, torch.arange(1000))
        assert torch.equal(torch.bincount(labels[fold_val]), torch.full((10,), 20))  # stratified
    assert torch.equal(split(2)[1], folds[2][1]) and not torch.equal(split(2, seed=1)[1], folds[2][1])
    # Without folds: the val_fraction split, as before.
    dm = IdxDataModule(**{**FASHION_MNIST, "root": "data/fashion-mnist", "val_fraction": 0.1})
    train, val = dm.split_indices(labels)
    order = torch.randperm(1000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(val, order[:100]) and torch.equal(train, order[100:])
    with pytest.raises(ArgumentError, match="folds=5: at most 3, the number of images of the rarest class"):
        five_fold(0).split_indices(torch.tensor([0, 0, 0, 1, 1, 1, 1, 1]))


@pytest.mark.parametrize("image_size", [28, 16])
def test_batches_are_preprocessed(data_root: Path, image_size: int) -> None:
    dm = _datamodule(data_root, image_size=image_size, normalize={"mean": 0.5, "std": 0.5}, batch_size=32)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (32, 1, 28, 28) and images.dtype == torch.uint8
    x, y = dm.on_after_batch_transfer((images, labels), 0)
    assert x.shape == (32, 1, image_size, image_size) and x.dtype == torch.float32
    assert y.dtype == torch.int64
    assert x.min() >= -1.0 and x.max() <= 1.0
    if image_size == 28:
        torch.testing.assert_close(x, images.float() / 255 * 2 - 1)


def test_normalization_off_keeps_unit_range(data_root: Path) -> None:
    dm = _datamodule(data_root, normalize=None)
    images, labels = next(iter(dm.val_dataloader()))
    x, _ = dm.on_after_batch_transfer((images, labels), 0)
    torch.testing.assert_close(x, images.float() / 255)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"val_fraction": 0.0}, r"val_fraction=0.0: a fraction in \(0, 1\)"),
        ({"val_fraction": 1.5}, "val_fraction=1.5"),
        ({"batch_size": 0}, "batch_size=0: an integer >= 1"),
        ({"image_size": 0}, "image_size=0: a number of pixels >= 1"),
        ({"normalize": {"mean": 0.5}}, "normalize=.*null or exactly the keys mean and std"),
        ({"normalize": {"mean": 0.5, "std": 0.0}}, "std must be > 0"),
        ({"eval_batch_size": 0}, "eval_batch_size=0"),
        ({"folds": 1}, "folds=1: null .the val_fraction split. or an integer >= 2"),
        ({"fold": 2}, "fold=2: 0 without data.folds"),
        ({"folds": 5, "fold": 5}, r"fold=5: a fold number in \[0, 5\) for data.folds=5, e.g. -m data.fold="),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ArgumentError, match=message):
        IdxDataModule(**{**FASHION_MNIST, "root": "data/fashion-mnist", **kwargs})


def test_batches_are_one_indexing_operation(data_root: Path) -> None:
    dm = _datamodule(data_root, batch_size=64, eval_batch_size=500)
    assert len(dm.train_dataloader()) == 54000 // 64 + 1
    assert len(dm.test_dataloader()) == 20
    images, labels = dm.data_test.__getitems__([3, 1, 4])
    assert torch.equal(images, dm.data_test.images[[3, 1, 4]]) and torch.equal(labels, dm.data_test.labels[[3, 1, 4]])


def test_data_follows_the_training_device(data_root: Path) -> None:
    """The GPU placement path, run here with the CPU standing in for the device."""
    dm = _datamodule(data_root)
    moved = dm.data_test.to(torch.device("cpu"))
    assert moved.images.device.type == "cpu" and len(moved) == 10000
    assert dm._device() == torch.device("cpu")  # no trainer attached: stays on the CPU


def test_augmentation_is_per_sample() -> None:
    torch.manual_seed(0)
    x = torch.arange(2 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6).repeat(32, 1, 1, 1)
    flipped = BatchRandomHorizontalFlip(p=1.0)(x)
    assert torch.equal(flipped, x.flip(-1))
    half = BatchRandomHorizontalFlip(p=0.5)(x)
    n_flipped = sum(torch.equal(h, f) for h, f in zip(half, x.flip(-1), strict=True))
    assert 0 < n_flipped < len(x)  # each image decides for itself
    cropped = BatchRandomCrop(padding=2)(x)
    assert cropped.shape == x.shape
    # Every crop is a window of the image padded with black; different images get different windows.
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), value=0.0)
    windows = padded.unfold(2, 6, 1).unfold(3, 6, 1)  # (B, 1, 5, 5, 6, 6)
    offsets = set()
    for i in range(len(x)):
        matches = (windows[i, 0] == cropped[i, 0]).flatten(2).all(-1).nonzero().tolist()
        assert matches
        offsets.add(tuple(matches[0]))
    assert len(offsets) > 5
    assert torch.equal(BatchRandomCrop(padding=0)(x), x) and torch.equal(BatchRandomHorizontalFlip(p=0.0)(x), x)
    with pytest.raises(ArgumentError, match=r"p=2.0: a probability in \[0, 1\]"):
        BatchRandomHorizontalFlip(p=2.0)
    with pytest.raises(ArgumentError, match="padding=-1"):
        BatchRandomCrop(padding=-1)


def test_random_erasing_is_per_sample_and_rectangular() -> None:
    torch.manual_seed(0)
    x = torch.ones(2000, 1, 28, 28)
    erased = BatchRandomErasing(p=1.0, value=0.25)(x)
    assert erased.shape == x.shape and torch.equal(x, torch.ones_like(x))  # input untouched
    zero = erased[:, 0] == 0.25
    fractions = zero.flatten(1).float().mean(1)
    # torchvision's defaults: 2-33 % of the image (up to rounding of the sides) ...
    assert fractions.min() > 0.01 and fractions.max() < 0.36
    assert 0.12 < fractions.mean() < 0.2
    # ... in one axis-aligned rectangle per image, set to the fill value.
    for mask in zero[:50]:
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        assert mask.sum() == len(rows) * len(cols) == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    half = BatchRandomErasing(p=0.5)(x)
    n_erased = (half == 0).flatten(1).any(1).sum().item()
    assert 900 < n_erased < 1100
    assert torch.equal(BatchRandomErasing(p=0.0)(x), x)
    with pytest.raises(ArgumentError, match=r"p=1\.5"):
        BatchRandomErasing(p=1.5)


def test_augmentation_only_on_training_batches(data_root: Path) -> None:
    dm = _datamodule(data_root, augment={"flip": BatchRandomHorizontalFlip(p=1.0)})
    batch = dm.data_test.__getitems__(list(range(8)))
    x, _ = dm.on_after_batch_transfer(batch, 0)  # no trainer, so not training
    torch.testing.assert_close(x, dm.preprocess(batch[0]))
    flipped = dm.train_transform(batch[0])
    torch.testing.assert_close(flipped, dm.preprocess(batch[0]).flip(-1))  # augmented before normalising


class AddNoise(torch.nn.Module):
    """An augmentation written once, outside the package: Gaussian noise on [0, 1] images."""

    def __init__(self, std: float = 0.1) -> None:
        super().__init__()
        if std < 0:
            raise ArgumentError("std", std, "a standard deviation >= 0")
        self.std = std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.std * torch.randn_like(x)


def test_an_augmentation_of_your_own_is_one_config_entry(make_cfg) -> None:
    from fmnist_lightning.training.pipeline import train

    metrics = train(
        make_cfg(
            "debug=fdr",
            "model=two_conv_5x5",  # the smallest network: the augmentation is what is tested
            "data.image_size=16",
            "data.augment.flip.p=0.5",
            "+data.augment.noise._target_=test_data.AddNoise",
            "+data.augment.noise.std=0.05",
        )
    )
    assert 0.0 <= metrics["test/acc"] <= 1.0
    with pytest.raises(ConfigError, match=r"data.augment.noise.std=-1.0: a standard deviation >= 0"):
        train(make_cfg("+data.augment.noise._target_=test_data.AddNoise", "+data.augment.noise.std=-1.0"))


@pytest.mark.parametrize("name", ["mnist", "kmnist"])
def test_a_dataset_without_its_files_says_where_to_get_them(name: str, tmp_path: Path) -> None:
    """MNIST and KMNIST are described in conf/data/ but not installable here."""
    dataset = load_dataset(name)
    assert dataset.class_names[0] in ("0", "o") and len(dataset.class_names) == 10
    with pytest.raises(DatasetError, match=f"{dataset.name} files .* data.download is false. This machine has no"):
        ensure_files(tmp_path, None, download=False, dataset=dataset)


def test_the_command_line_says_where_to_get_mnist(tmp_path: Path) -> None:
    from in_process import run_command

    result = run_command("train.py", "data=mnist", f"data.root={tmp_path}", "data.download=false", "logger=csv",
                         f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "error: MNIST files" in result.stderr and "point data.root at it" in result.stderr


def test_only_the_gz_md5_is_published(tmp_path: Path) -> None:
    """KMNIST's case: the .gz files are checked against their MD5s and kept compressed; a
    decompressed copy cannot be checked, and is refused."""
    import gzip
    import hashlib

    from digits import write_digits

    from fmnist_lightning.data.idx import FILE_KEYS, IdxDataset

    plain = write_digits(tmp_path / "plain")
    local = tmp_path / "local"
    local.mkdir()
    files = {}
    for (split, kind), key in FILE_KEYS.items():
        name = f"{'train' if split == 'train' else 't10k'}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
        packed = gzip.compress((plain / name).read_bytes(), mtime=0)
        (local / f"{name}.gz").write_bytes(packed)
        shape = [1500 if split == "train" else 297, *([28, 28] if kind == "images" else [])]
        files[key] = {"name": name, "shape": shape, "md5": None, "gz_md5": hashlib.md5(packed).hexdigest()}
    digits = IdxDataset.from_config("digits", [str(d) for d in range(10)], 10, files, "write them again")
    ensure_files(tmp_path / "root", local, download=False, dataset=digits)
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == sorted(p.name for p in local.iterdir())
    assert load_split(tmp_path / "root", "test", digits)[0].shape == (297, 28, 28)
    with pytest.raises(DatasetError, match=r"cannot be checked: only its \.gz file's MD5 is published"):
        load_split(plain, "test", digits)
    # The same bytes compressed otherwise: only the published .gz passes.
    labels = (plain / "t10k-labels-idx1-ubyte").read_bytes()
    (local / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels, compresslevel=1, mtime=0))
    with pytest.raises(DatasetError, match=r"is corrupt: MD5 of its \.gz file"):
        load_split(local, "test", digits)


def test_alternating_flip_flips_each_image_every_other_epoch(data_root: Path) -> None:
    """airbench's alternating flips: a random half flipped in epoch 0, the other half in epoch 1, and so on;
    evaluation batches are never flipped, and random flips beside them are refused."""
    import lightning as L
    from lightning.pytorch.trainer.states import RunningStage

    torch.manual_seed(0)
    plain = _datamodule(data_root)
    torch.manual_seed(0)
    dm = _datamodule(data_root, alternating_flip=True)
    original, stored = plain.data_train.images[:2000], dm.data_train.images[:2000]
    asymmetric = (original != original.flip(-1)).flatten(1).any(dim=1)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_checkpointing=False)
    dm.trainer = trainer
    trainer.state.stage = RunningStage.TRAINING
    flipped = []
    for epoch in range(4):
        trainer.fit_loop.epoch_progress.current.completed = epoch
        assert trainer.current_epoch == epoch
        seen, _ = dm.on_after_batch_transfer((stored, plain.data_train.labels[:2000]), 0)
        is_flipped = (seen == dm.preprocess(original.flip(-1))).flatten(1).all(dim=1)
        is_plain = (seen == dm.preprocess(original)).flatten(1).all(dim=1)
        assert (is_flipped | is_plain).all()
        flipped.append(is_flipped[asymmetric])
    assert 0.45 < flipped[0].float().mean() < 0.55
    assert torch.equal(flipped[1], ~flipped[0]) and torch.equal(flipped[2], flipped[0])
    assert torch.equal(flipped[3], flipped[1])
    trainer.state.stage = RunningStage.VALIDATING
    seen, _ = dm.on_after_batch_transfer(dm.data_val.__getitems__(list(range(8))), 0)
    torch.testing.assert_close(seen, dm.preprocess(plain.data_val.images[:8]))
    with pytest.raises(ArgumentError, match="alternating_flip"):
        IdxDataModule(**{**FASHION_MNIST, "root": "data/fashion-mnist", "alternating_flip": True,
                         "augment": {"flip": BatchRandomHorizontalFlip(p=0.5)}})  # fmt: skip
