"""``trainer.precision=auto``: the choice on faked CPUs and GPUs, and a real run recording it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator
from omegaconf import OmegaConf

from fmnist_lightning.data import load_split
from fmnist_lightning.evaluation.runs import load_trained
from fmnist_lightning.run_folder import RunFolder
from fmnist_lightning.training import precision
from fmnist_lightning.training.build import build_run
from fmnist_lightning.training.precision import (
    BF16_CPU_FLAGS,
    choose_precision,
    cpu_bf16_speedup,
    record_precision,
    resolve_precision,
)
from in_process import run_command

AVX2_ONLY = {"avx2": True, "avx512_f": False, "avx512_bf16": False, "amx_bf16": False}
AVX512_BF16 = {**AVX2_ONLY, "avx512_f": True, "avx512_bf16": True}
AMX = {**AVX2_ONLY, "amx_bf16": True}  # a Sapphire Rapids without avx512_bf16 reported


def no_probe() -> float:
    raise AssertionError("the probe runs only on a CPU with native bf16 flags")


@pytest.mark.parametrize(
    ("accelerator", "flags", "cuda_bf16", "speedup", "expected", "words"),
    [
        ("cpu", AVX2_ONLY, False, no_probe, "32-true", "emulated"),
        ("cpu", AVX512_BF16, False, lambda: 3.9, "bf16-mixed", "avx512_bf16 and ran bf16 at 3.90×"),
        ("cpu", AMX, False, lambda: 2.0, "bf16-mixed", "amx_bf16"),
        ("cpu", AVX512_BF16, False, lambda: 0.98, "32-true", "0.98× fp32's speed in a probe (bf16 needs 1.5×"),
        ("cuda", AVX2_ONLY, True, no_probe, "bf16-mixed", "GPU supports bf16"),
        ("cuda", AVX512_BF16, False, no_probe, "32-true", "compute capability below 8.0"),  # a V100 or T4
        ("mps", AVX512_BF16, False, no_probe, "32-true", "'mps'"),
    ],
)
def test_choice(accelerator: str, flags: dict, cuda_bf16: bool, speedup, expected: str, words: str) -> None:
    chosen, reason = choose_precision(accelerator, flags, cuda_bf16, speedup)
    assert chosen == expected and words in reason


def test_the_probe_measures_this_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ratio of two timings, kept for the process (whatever it is on this machine), that
    leaves the global random state alone."""
    cpu_bf16_speedup.cache_clear()
    state = torch.get_rng_state()
    speedup = cpu_bf16_speedup()
    assert 0.01 < speedup < 100 and cpu_bf16_speedup() == speedup
    assert torch.equal(torch.get_rng_state(), state)


def fake_machine(monkeypatch: pytest.MonkeyPatch, flags: dict, cuda: bool = False, cuda_bf16: bool = False) -> None:
    """A machine with CPU ``flags`` on which bf16 runs 3× as fast as fp32 where the flags allow."""
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: flags)
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: 3.0)
    monkeypatch.setattr(CUDAAccelerator, "is_available", staticmethod(lambda: cuda))
    monkeypatch.setattr(MPSAccelerator, "is_available", staticmethod(lambda: False))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: cuda_bf16)


@pytest.mark.parametrize(
    ("flags", "cuda", "cuda_bf16", "accelerator", "expected"),
    [
        (AVX512_BF16, False, False, "auto", "bf16-mixed"),
        (AVX2_ONLY, False, False, "auto", "32-true"),
        (AVX2_ONLY, True, True, "auto", "bf16-mixed"),  # auto picks the GPU
        (AVX512_BF16, True, False, "auto", "32-true"),  # the GPU decides, not the CPU
        (AVX2_ONLY, True, True, "cpu", "32-true"),  # trainer=cpu on a GPU machine: the CPU decides
    ],
)
def test_resolved_in_the_config(monkeypatch, make_cfg, flags, cuda, cuda_bf16, accelerator, expected) -> None:
    fake_machine(monkeypatch, flags, cuda, cuda_bf16)
    cfg = make_cfg(f"trainer.accelerator={accelerator}")
    assert cfg.trainer.precision == "auto"  # the default
    assert resolve_precision(cfg) is not None
    assert cfg.trainer.precision == expected


def test_explicit_precision_is_kept(monkeypatch, make_cfg) -> None:
    fake_machine(monkeypatch, AVX512_BF16)
    cfg = make_cfg("trainer.precision=32-true")
    assert resolve_precision(cfg) is None and cfg.trainer.precision == "32-true"


def test_the_trainer_gets_the_choice(monkeypatch, make_cfg) -> None:
    """build_run resolves auto, and the Trainer gets bf16 or fp32 (Lightning accepts
    bf16-mixed on any CPU; only the speed differs)."""
    for flags, plugin_precision in ((AVX512_BF16, "bf16-mixed"), (AVX2_ONLY, "32-true")):
        fake_machine(monkeypatch, flags)
        cfg = make_cfg("debug=fdr")
        run = build_run(cfg)  # resolves trainer.precision=auto itself
        assert run.trainer.precision == plugin_precision == cfg.trainer.precision
        assert run.precision_reason is not None
    assert build_run(make_cfg("trainer.precision=64-true")).precision_reason is None


def test_a_run_records_its_choice(trained_run: Path) -> None:
    """The session's run from train.py (default precision, trainer=cpu) saved this machine's
    choice, which resume= starts from, and logged why."""
    saved = OmegaConf.load(trained_run / ".hydra" / "config.yaml").trainer.precision
    logged = re.search(r"trainer\.precision=auto: (\S+), because (.*)", (trained_run / "train.log").read_text())
    assert logged is not None and logged[1] == saved
    if any(torch.cpu.get_capabilities().get(flag) for flag in BF16_CPU_FLAGS):
        assert "in a probe" in logged[2]
    else:
        assert saved == "32-true" and "no native bf16" in logged[2]


def test_record_replaces_only_auto(tmp_path: Path, monkeypatch) -> None:
    saved = tmp_path / ".hydra" / "config.yaml"
    saved.parent.mkdir()
    config = {"model": {"_target_": "x"}, "data": {"image_size": 28, "mean": "${data.image_size}"}}
    for before, after in (("auto", "bf16-mixed"), ("16-mixed", "16-mixed")):
        OmegaConf.save(OmegaConf.create({**config, "trainer": {"max_epochs": 1, "precision": before}}), saved)
        record_precision(tmp_path, "bf16-mixed", "a test")
        written = OmegaConf.load(saved)
        assert written.trainer.precision == after
        assert OmegaConf.to_container(written)["data"]["mean"] == "${data.image_size}"  # left unresolved
        assert not list(saved.parent.glob(".*.part"))  # the temporary file is gone
    monkeypatch.setattr(RunFolder, "read_config", lambda _: pytest.fail("no config: nothing to read"))
    record_precision(tmp_path / "elsewhere", "bf16-mixed", "a test")


def test_a_bf16_run_reports_its_weights_in_fp32(data_root: Path, tmp_path: Path) -> None:
    """Trained in bf16-mixed (on any CPU: emulated where there is no native bf16), the run's
    test report gives its weights' fp32 accuracy and loss, as evaluate, predict and the exports
    compute them."""
    run_dir = tmp_path / "run"
    result = run_command(
        "train.py", "model=two_conv_5x5", "data.image_size=16", "trainer=cpu", "trainer.precision=bf16-mixed",
        "trainer.max_epochs=1", "trainer.limit_train_batches=20", "trainer.limit_val_batches=2",
        "logger=csv", f"data.root={data_root}", f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert OmegaConf.load(run_dir / ".hydra" / "config.yaml").trainer.precision == "bf16-mixed"
    images, labels = load_split(data_root, "test")
    model = load_trained(run_dir)
    model.temperature = None  # the network's own probabilities, which the report's loss is of
    probabilities = model.predict_proba(images[:, None])
    report = json.loads((run_dir / "report.json").read_text())
    assert round(report["accuracy"] * 10_000) == int((probabilities.argmax(1) == labels).sum())
    fp32_loss = float(-probabilities[torch.arange(len(labels)), labels].log().mean())
    assert report["loss"] == pytest.approx(fp32_loss, rel=1e-5)  # a bf16 test pass is about 1e-3 off
