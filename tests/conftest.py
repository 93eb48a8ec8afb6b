"""Shared fixtures: the real FashionMNIST in a temporary folder, composed configs, one trained
run for the whole session, and a fresh process state for every test (``in_process``)."""

from __future__ import annotations

import copy
import gc
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fmnist_lightning.data.idx import DEBIAN_DATASET_DIR, ensure_files, find_file, load_dataset
from fmnist_lightning.models.nets import TwoConv5x5Net
from in_process import clean_state, command_path, run_command


def pytest_collection_finish(session: pytest.Session) -> None:
    """Keeps Python's full garbage collections few and short. Each one walks every tracked
    object, and a session holds millions (torch, Lightning, Hydra, every test module): without
    this, full collections were a large share of the default suite's time (benchmarks/RESULTS.md,
    "The redesign"). The objects alive once the tests are collected are frozen (``gc.freeze``:
    full collections skip them, reference counting still frees them), and a full collection is
    considered after 1,000 younger ones instead of 10; garbage cycles are still collected."""
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, 1000)


REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


@pytest.fixture(autouse=True)
def fresh_process_state() -> Iterator[None]:
    """Every test starts as in a new interpreter (``in_process.clean_state``)."""
    with clean_state():
        yield


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the four verified, decompressed IDX files of the real dataset."""
    if not all(find_file(DEBIAN_DATASET_DIR, spec) for spec in load_dataset().specs.values()):
        pytest.fail(
            f"The tests need the real FashionMNIST in {DEBIAN_DATASET_DIR}: "
            "run `apt-get install dataset-fashion-mnist` as root (or `bash scripts/setup.sh`)."
        )
    root = tmp_path_factory.mktemp("fashion-mnist")
    ensure_files(root, DEBIAN_DATASET_DIR, download=False)
    return root


#: The environment of the scripts the tests run: the tests' own modules (networks and
#: augmentations defined outside the package, as a user's would be) are importable.
SCRIPT_ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "tests"), os.environ.get("PYTHONPATH")])),
}


def script_command(script: str) -> list[str]:
    """How a shell starts ``script``: a file of the repository (``train.py``,
    ``benchmarks/speedrun.py``) with this Python, a command (``fmnist-evaluate``, or
    ``evaluate.py``: ``in_process.command_name``) as its console script."""
    if (REPO / script).is_file():
        return [sys.executable, str(REPO / script)]
    return [str(command_path(script))]


def run_script(script: str, *args: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs ``script <args>`` (``script_command``) as a new process, from the repository (as a
    user would), and returns it. ``in_process.run_command`` does the same for a command without
    starting Python again."""
    return subprocess.run(
        [*script_command(script), *args],
        cwd=cwd,
        env={**SCRIPT_ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


def start_script(script: str, *args: str, cwd: Path = REPO, new_session: bool = False) -> subprocess.Popen:
    """Starts ``script <args>`` (``script_command``) in the background (output discarded); with
    ``new_session``, in a process group of its own (``os.killpg(process.pid, ...)`` then
    signals it and the processes it starts, as a terminal's Ctrl-C or ``srun`` does)."""
    return subprocess.Popen(
        [*script_command(script), *args],
        cwd=cwd,
        env=SCRIPT_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=new_session,
    )


def mounted_tmpfs(folder: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at ``folder`` (read-only or tiny, to get real EROFS/ENOSPC errors)."""
    folder.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"mounting a tmpfs needs root: {result.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


@contextmanager
def held_by_another_process(folder: Path, kind: str = "run") -> Iterator[subprocess.Popen]:
    """Another process holding ``folder``'s lock (``fmnist_lightning.run_folder``) while the block runs."""
    code = (
        "import time; from fmnist_lightning.run_folder import lock_run_folder; "
        f"lock_run_folder({str(folder)!r}, kind={kind!r}); print('held', flush=True); time.sleep(120)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()


class NaNAfterNet(TwoConv5x5Net):
    """TwoConv5x5Net whose logits become NaN from its ``nan_from``-th training batch on,
    to test how a diverging run stops (``model._target_=conftest.NaNAfterNet``)."""

    def __init__(self, image_size: int = 16, nan_from: int = 30, num_classes: int = 10) -> None:
        super().__init__(image_size, num_classes=num_classes)
        self.nan_from = nan_from
        self.training_batches = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        if self.training:
            self.training_batches += 1
            if self.training_batches > self.nan_from:
                logits = logits * float("nan")
        return logits


class FiveLogitsNet(TwoConv5x5Net):
    """TwoConv5x5Net that takes ``num_classes`` but ignores it: always 5 logits, the mistake
    ``model.num_classes`` checks catch (``model._target_=conftest.FiveLogitsNet``)."""

    def __init__(self, image_size: int = 16, num_classes: int = 10) -> None:
        super().__init__(image_size, num_classes=5)


class NoClassCountNet(TwoConv5x5Net):
    """TwoConv5x5Net without a ``num_classes`` argument (10 logits, fixed): a network of one's
    own that the class count cannot reach (``model._target_=conftest.NoClassCountNet``)."""

    def __init__(self, image_size: int = 16) -> None:
        super().__init__(image_size)


class SlowTest(Callback):
    """Sleeps ``seconds`` before each test batch and creates ``marker`` at the first, so that
    a test can signal a run while it is in its test loop
    (``+callbacks.slow_test._target_=conftest.SlowTest +callbacks.slow_test.marker=...``)."""

    def __init__(self, marker: str, seconds: float = 0.5) -> None:
        self.marker, self.seconds = Path(marker), seconds

    def on_test_batch_start(self, *args: object, **kwargs: object) -> None:
        self.marker.touch()
        time.sleep(self.seconds)


class SignalAt(Callback):
    """Sends ``signum`` to this process at the start of training batch ``step`` (counted over
    epochs from 0), as Ctrl-C or a scheduler would, to test where a run stops
    (``+callbacks.signal_at._target_=conftest.SignalAt +callbacks.signal_at.step=...``)."""

    def __init__(self, step: int, signum: int = signal.SIGTERM) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


@pytest.fixture(scope="session")
def trained_run(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run folder from ``train.py`` (run in this process, once per session):
    TwoConv5x5Net at 16 px, 2 short epochs (about 80 % accuracy), tested on the full 10,000
    test images. Tests read it and never change it (tests/test_bad_inputs.py checks that)."""
    run_dir = tmp_path_factory.mktemp("runs") / "run"
    result = run_command(
        "train.py",
        "model=two_conv_5x5",
        "data.image_size=16",
        "trainer=cpu",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=150",
        "trainer.limit_val_batches=20",
        "logger.tensorboard.projector_images=200",  # of 2,000: the Projector's file is slow to write
        f"data.root={data_root}",
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


#: Configs ``compose_train`` composed, by overrides: Hydra takes about 80 ms a composition,
#: and tests compose the same overrides more than once (each option is built by two tests).
_COMPOSED: dict[tuple[str, ...], DictConfig] = {}


def compose_train(data_root: Path, *overrides: str) -> DictConfig:
    """``conf/train.yaml`` composed with ``overrides``, reading the real data from
    ``data_root``, Lightning on the CPU; a copy of its own for each call. ``output_dir`` is
    ``unset`` unless an override sets it."""
    key = (str(data_root), *overrides)
    if key not in _COMPOSED:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            _COMPOSED[key] = compose(
                "train",
                overrides=[
                    "output_dir=unset",
                    f"data.root={data_root}",
                    "trainer.accelerator=cpu",
                    "trainer.devices=1",
                    *overrides,
                ],
            )
    return copy.deepcopy(_COMPOSED[key])


@pytest.fixture(scope="session")
def unlogged_run(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float]]:
    """A short run with ``logger=none`` (``debug=limit``: 2 epochs of 20 batches), trained once
    for the tests of what a run writes without any logger: its folder and its metrics."""
    from fmnist_lightning.training.pipeline import train

    run_dir = tmp_path_factory.mktemp("unlogged")
    overrides = ["logger=none", "debug=limit", "scheduler=cosine", "model=two_conv_5x5", "data.image_size=16"]
    with clean_state():
        return run_dir, train(compose_train(data_root, f"output_dir={run_dir}", *overrides))


@pytest.fixture
def make_cfg(data_root: Path, tmp_path: Path) -> Callable[..., DictConfig]:
    """``compose_train`` as a fixture: the run writes into ``tmp_path`` unless an override
    names another ``output_dir``."""

    def _make(*overrides: str) -> DictConfig:
        cfg = compose_train(data_root, *overrides)
        if not any(o.startswith("output_dir=") for o in overrides):
            cfg.output_dir = str(tmp_path)
        return cfg

    return _make


def compose_with_hydra(config_name: str, *overrides: str) -> DictConfig:
    """``conf/<config_name>.yaml`` composed with Hydra's own section (``hydra.run.dir``, ...),
    as Hydra hands it to its callbacks; the project's resolvers registered."""
    from fmnist_lightning.run_folder import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name, overrides=list(overrides), return_hydra_config=True)


def config_names(group: str) -> list[str]:
    """The option names of a config group, e.g. ``config_names("model")``."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def chrome_driver(window: str = "1000,760", *args: str):
    """Headless Debian chromium through selenium (``window``: width,height in pixels; ``args``:
    more command-line switches), or a skip naming what to install."""
    webdriver = pytest.importorskip("selenium.webdriver")
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        why = "needs Debian's chromium and chromium-driver: bash scripts/setup.sh --dev"
        if os.environ.get("CI"):  # CI installs them (.ci/run): a skip there would hide the test
            pytest.fail(why)
        pytest.skip(why)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={window}", *args):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))


def job_folder(sweep: Path, number: int) -> Path:
    """Job ``number``'s folder in a sweep folder (``<number>_<swept values>``)."""
    from fmnist_lightning.run_folder import job_number

    return next(p for p in sweep.iterdir() if p.is_dir() and job_number(p) == number)


def scalars(run_dir: Path, tag: str) -> dict[int, float]:
    """step → value of one TensorBoard scalar over all event files of a run."""
    values: dict[int, list[float]] = defaultdict(list)
    for events in sorted(run_dir.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            for event in accumulator.Scalars(tag):
                values[event.step].append(event.value)
    assert all(len(v) == 1 for v in values.values()), f"{tag} logged twice at a step: {dict(values)}"
    return {step: v[0] for step, v in values.items()}
