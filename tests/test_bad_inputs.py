"""Bad input of every kind, through the command line (``train.py``'s ``main()`` with its
arguments, in this process; tests/test_commands.py runs it as a new process): each is refused
with a non-zero exit, a message naming the key or file, no traceback, and no change to earlier
runs."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from conftest import mounted_tmpfs
from fmnist_lightning.data.idx import load_dataset
from fmnist_lightning.errors import ConfigError
from fmnist_lightning.training.build import build_run
from in_process import run_command

TRAIN_IMAGES = load_dataset().specs[("train", "images")].name
TRAIN_LABELS = load_dataset().specs[("train", "labels")].name
TEST_IMAGES = load_dataset().specs[("test", "images")].name


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path → SHA-1 of every file under ``folder``."""
    return {
        str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def read_only_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield from mounted_tmpfs(tmp_path_factory.mktemp("ro") / "mnt", "ro,size=1m")


@pytest.fixture(scope="module")
def full_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A file system with 256 KiB: enough for Hydra's few config files, not for a run."""
    yield from mounted_tmpfs(tmp_path_factory.mktemp("full") / "mnt", "size=256k")


def corrupt(data_root: Path, folder: Path, name: str, edit: Callable[[bytearray], bytes]) -> Path:
    """A data folder whose ``name`` file is ``edit``ed; the other files link to good ones."""
    folder.mkdir()
    for spec in load_dataset().specs.values():
        if spec.name != name:
            (folder / spec.name).symlink_to(data_root / spec.name)
    (folder / name).write_bytes(edit(bytearray((data_root / name).read_bytes())))
    return folder


def set_count(data: bytearray, count: int, item_bytes: int, header: int) -> bytes:
    """An IDX file with ``count`` items, consistent header and length."""
    data[4:8] = count.to_bytes(4, "big")
    return bytes(data[: header + count * item_bytes])


def set_byte(data: bytearray, index: int, value: int) -> bytes:
    data[index] = value
    return bytes(data)


DATA_CORRUPTIONS = {
    "wrong_magic": (TRAIN_IMAGES, lambda d: bytes(b"\x00\x00\x08\x01" + d[4:]), "has magic number 2049"),
    "wrong_count": (TRAIN_IMAGES, lambda d: set_count(d, 50_000, 784, 16), "has shape (50000, 28, 28)"),
    "truncated": (TEST_IMAGES, lambda d: bytes(d[:5_000_000]), "is truncated"),
    "label_out_of_range": (TRAIN_LABELS, lambda d: set_byte(d, 8 + 1234, 12), "holds label 12"),
    "label_count_mismatch": (TRAIN_LABELS, lambda d: set_count(d, 59_999, 1, 8), "has shape (59999,)"),
}


@dataclass
class Context:
    """What the cases point at: an earlier finished run, good and bad data, special folders."""

    run: Path
    tmp: Path
    data_root: Path
    read_only: Path
    full: Path

    def bad_root(self, kind: str) -> Path:
        """A data folder with one file damaged as ``DATA_CORRUPTIONS[kind]`` says, made on first use."""
        folder = self.tmp / kind
        if not folder.exists():
            name, edit, _ = DATA_CORRUPTIONS[kind]
            corrupt(self.data_root, folder, name, edit)
        return folder


@pytest.fixture(scope="module")
def ctx(
    trained_run: Path, data_root: Path, tmp_path_factory: pytest.TempPathFactory, read_only_dir: Path, full_dir: Path
) -> Context:
    return Context(trained_run, tmp_path_factory.mktemp("bad_inputs"), data_root, read_only_dir, full_dir)


def fresh(ctx: Context, *args: str) -> list[str]:
    """A new run into a new folder, reading the good data."""
    return ["trainer=cpu", *args, f"data.root={ctx.data_root}", f"hydra.run.dir={ctx.tmp / 'new_run'}"]


def no_checkpoint_run(ctx: Context) -> Path:
    """A run folder with its config but without checkpoints (stopped in its first epoch)."""
    folder = ctx.tmp / "no_checkpoint"
    if not folder.exists():
        shutil.copytree(ctx.run / ".hydra", folder / ".hydra")
    return folder


# (id, overrides, text the error must contain): values that build_run refuses. Each is checked
# by build_run (quick); through the command line, a few are in the default suite and the rest
# are slow (each composes the app twice, Hydra's way: about 0.3 s).
CONFIG_CASES: list[tuple[str, tuple[str, ...], str]] = [
    ("lr_negative", ("optimizer.lr=-1",), "optimizer.lr=-1"),
    ("lr_not_a_number", ("optimizer.lr=fast",), "optimizer.lr='fast'"),
    ("batch_size_negative", ("data.batch_size=-8",), "data.batch_size=-8"),
    ("batch_size_float", ("data.batch_size=1.5",), "data.batch_size=1.5"),
    ("epochs_negative", ("trainer.max_epochs=-2",), "trainer.max_epochs=-2"),
    ("val_fraction_one", ("data.val_fraction=1.0",), "data.val_fraction=1.0"),
    ("unknown_optimizer", ("optimizer._target_=torch.optim.Adamm",), "optimizer._target_='torch.optim.Adamm'"),
    ("scheduler_not_a_scheduler", ("scheduler=cosine", "scheduler._target_=torch.nn.Linear"), "scheduler._target_"),
    ("image_size_too_small", ("data.image_size=4",), "data.image_size=4"),
    (
        "monitor_never_logged",
        ("callbacks.early_stopping.monitor=val/accuracy",),
        "callbacks.early_stopping.monitor='val/accuracy'",
    ),
    (
        "monitor_test_metric",
        ("callbacks.model_checkpoint.monitor=test/acc",),
        "callbacks.model_checkpoint.monitor='test/acc'",
    ),
    ("flip_probability", ("data.augment.flip.p=2",), "data.augment.flip.p=2"),
    (
        "augmentation_not_a_class",
        ("data.augment.flip._target_=torch.nn.Flipp",),
        "data.augment.flip._target_='torch.nn.Flipp'",
    ),
    (
        "external_net_bad_argument",
        ("model=two_conv_5x5", "model._target_=test_extending.ResNet", "+model.blocks=0"),
        "model.blocks=0",
    ),
    ("dropout_one", ("model.dropout=1.0",), "model.dropout=1.0"),
    ("unknown_precision", ("trainer.precision=8",), "trainer.precision=8"),
    ("seed_not_an_integer", ("seed=abc",), "seed='abc'"),
    # The LightningModule's parts and the dataset description (issue 29).
    ("focal_gamma_negative", ("loss=focal", "loss.gamma=-1"), "loss.gamma=-1"),
    ("label_smoothing_above_one", ("loss.label_smoothing=1.5",), "loss.label_smoothing=1.5"),
    ("mixup_alpha_zero", ("mix=mixup", "mix.alpha=0"), "mix.alpha=0"),
    ("metric_bad_argument", ("metrics=[accuracy,top2]", "metrics.top2.top_k=two"), "metrics.top2.top_k='two'"),
    ("metric_not_a_class", ("+metrics.f1={_target_:torchmetrics.F1Scor}",), "metrics.f1._target_"),
    (
        "monitor_metric_not_chosen",
        ("callbacks.early_stopping.monitor=val/f1_macro",),
        "callbacks.early_stopping.monitor='val/f1_macro'",
    ),
    ("optimized_metric_not_chosen", ("optimized_metric=val/ece",), "optimized_metric='val/ece'"),
    (
        "module_own_bad_argument",
        ("module._target_=test_extending.LogitPenaltyClassifier", "+module.penalty=-1"),
        "module.penalty=-1",
    ),
    ("module_not_a_lightning_module", ("module._target_=torch.nn.Linear",), "module._target_='torch.nn.Linear'"),
    ("class_names_count", ("data.num_classes=9",), "data.class_names="),
    # The class count reaches the network, or the network is refused (issue 40).
    (
        "net_width_differs",
        ("model=two_conv_5x5", "model._target_=conftest.FiveLogitsNet"),
        "model.num_classes=5: the network outputs 5 logits per image, but data.num_classes=10",
    ),
    (
        "net_without_num_classes",
        ("model=two_conv_5x5", "model._target_=conftest.NoClassCountNet"),
        "model._target_='conftest.NoClassCountNet': takes no num_classes argument",
    ),
    (
        "model_num_classes_differs",
        ("+model.num_classes=7",),
        "model.num_classes=7: the network's class count comes from data.num_classes (10)",
    ),
    ("dataset_md5_not_hex", ("data.files.train_images.md5=xyz",), "data.files.train_images.md5='xyz'"),
    # A key that is no Trainer argument, by its name and the closest one (issue 42).
    (
        "trainer_argument_misspelt",
        ("+trainer.max_epoch=3",),
        "trainer.max_epoch=3: not an argument of lightning.pytorch.Trainer; did you mean trainer.max_epochs?",
    ),
]
#: The config cases also run through the command line in the default suite: one of each way
#: a rule is declared (a value's bound in the package, a rule of a user's own class, a Trainer
#: argument). Every ConfigError reaches the command line by the same path; the other cases
#: run through it in the slow suite (each is refused by build_run in the default suite).
CONFIG_CASES_ON_THE_COMMAND_LINE = (
    "lr_negative",
    "external_net_bad_argument",
    "trainer_argument_misspelt",
)

# (id, arguments of train.py, text the error must contain)
CASES: list[tuple[str, Callable[[Context], list[str]], str]] = [
    *[
        (case, lambda c, overrides=overrides: fresh(c, *overrides), expected)
        for case, overrides, expected in CONFIG_CASES
    ],
    ("gpu_without_gpu", lambda c: fresh(c, "trainer=gpu"), "trainer.accelerator='gpu'"),
    # Refused by Hydra (conf/trainer/default.yaml lists every Trainer argument) by its key.
    ("trainer_argument_misspelt_plain", lambda c: fresh(c, "trainer.max_epoch=3"), "'trainer.max_epoch'"),
    ("ckpt_path_last_in_new_folder", lambda c: fresh(c, "ckpt_path=last"), "ckpt_path=last"),
    ("ckpt_path_missing_file", lambda c: fresh(c, f"ckpt_path={c.tmp / 'nope.ckpt'}"), "nope.ckpt: no such file"),
    ("resume_missing_folder", lambda c: [f"resume={c.tmp / 'missing'}"], "missing: no such folder"),
    ("resume_not_a_run", lambda c: [f"resume={c.data_root}"], "is not a run folder"),
    ("resume_without_checkpoint", lambda c: [f"resume={no_checkpoint_run(c)}"], "has no checkpoint"),
    ("resume_finished_run", lambda c: [f"resume={c.run}"], "already finished"),
    (
        "resume_changes_shape",
        lambda c: [f"resume={c.run}", "trainer.max_epochs=9", "data.image_size=28"],
        "holds a different network",
    ),
    ("resume_swaps_model", lambda c: [f"resume={c.run}", "model=three_conv"], "config groups cannot be swapped"),
    ("resume_in_multirun", lambda c: ["-m", f"resume={c.run}"], "cannot be combined with -m"),
    ("run_dir_of_earlier_run", lambda c: [f"hydra.run.dir={c.run}", f"data.root={c.data_root}"], "already holds a run"),
    (
        "run_dir_of_earlier_run_quoted",
        lambda c: [f'hydra.run.dir="{c.run}/./"', f"data.root={c.data_root}"],
        "already holds a run",
    ),
    (
        "run_dir_read_only",
        lambda c: [f"hydra.run.dir={c.read_only / 'run'}", f"data.root={c.data_root}"],
        "Read-only file system",
    ),
    ("run_dir_full", lambda c: [f"hydra.run.dir={c.full / 'run'}", f"data.root={c.data_root}"], "MiB free"),
    (
        "data_root_read_only",
        lambda c: [f"data.root={c.read_only}", "data.download=false", f"hydra.run.dir={c.tmp / 'new_run'}"],
        "data.root",
    ),
    *[
        (
            f"data_{kind}",
            lambda c, kind=kind: [
                f"data.root={c.bad_root(kind)}",
                "data.local_copy=null",
                "data.download=false",
                f"hydra.run.dir={c.tmp / 'new_run'}",
            ],
            f"{name} {expected}",
        )
        for kind, (name, _, expected) in DATA_CORRUPTIONS.items()
    ],
]


def slow_on_the_command_line(case: str) -> bool:
    """The data-file cases are also tested in-process, by the DataModule, in test_data.py, and
    the config cases by build_run in ``test_a_bad_config_value_is_refused``: through the
    command line, only a few are in the default suite."""
    configs = {c[0] for c in CONFIG_CASES}
    return case.startswith("data_") or (case in configs and case not in CONFIG_CASES_ON_THE_COMMAND_LINE)


@pytest.mark.parametrize(("case", "overrides", "expected"), [pytest.param(*case, id=case[0]) for case in CONFIG_CASES])
def test_a_bad_config_value_is_refused(make_cfg, case: str, overrides: tuple[str, ...], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_run(make_cfg(*overrides))
    assert expected in str(info.value)


@pytest.mark.parametrize(
    ("case", "arguments", "expected"),
    [
        pytest.param(*case, id=case[0], marks=[pytest.mark.slow] if slow_on_the_command_line(case[0]) else [])
        for case in CASES
    ],
)
def test_bad_input_is_refused(
    ctx: Context, case: str, arguments: Callable[[Context], list[str]], expected: str
) -> None:
    if case == "gpu_without_gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    before = snapshot(ctx.run)
    shutil.rmtree(ctx.tmp / "new_run", ignore_errors=True)

    result = run_command("train.py", *arguments(ctx), cwd=ctx.tmp)

    assert result.returncode != 0, result.stdout[-2000:]
    assert expected in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert snapshot(ctx.run) == before, "an earlier run folder changed"
    assert not (ctx.tmp / "new_run" / "checkpoints").exists(), "the refused run trained"
    assert not (ctx.tmp / "outputs").exists(), "the refused run made a run folder elsewhere"
