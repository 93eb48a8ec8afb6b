"""``trainer.precision=auto`` (the default): the precision this machine trains fastest in.

bf16 pays only where the hardware computes in it natively and fast; emulated, it is slower than
fp32 (benchmarks/RESULTS.md, "Speed options" and "bf16 against fp32"). So ``auto`` becomes
``bf16-mixed`` on a CUDA GPU that supports bf16 (``torch.cuda.is_bf16_supported()``: compute
capability 8.0 on), ``bf16-mixed`` on a CPU with native bf16 (``avx512_bf16`` or ``amx_bf16`` in
``torch.cpu.get_capabilities()``) where ``cpu_bf16_speedup``'s probe also runs bf16 at least
``MIN_CPU_SPEEDUP`` times as fast as fp32 (the flag alone is not enough: a VM may hide AMX),
and ``32-true`` otherwise. It is resolved once per run, before the Trainer is built, and
recorded in the run's ``.hydra/config.yaml``, so ``resume=`` continues in the same precision.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from fmnist_lightning.run_folder import RunFolder

log = logging.getLogger(__name__)

#: The value of ``trainer.precision`` that this module resolves.
AUTO = "auto"

#: The precisions ``auto`` resolves to: Lightning's bf16 autocast, and plain fp32.
BF16, FP32 = "bf16-mixed", "32-true"
AUTO_CHOICES = (BF16, FP32)

#: CPU flags (``torch.cpu.get_capabilities()`` keys) of native bf16 arithmetic.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


#: bf16's speed over fp32 in ``cpu_bf16_speedup``'s probe that makes ``auto`` pick bf16 on a
#: CPU: well above 1 (bf16-mixed adds casts the probe lacks) and clear of the probe's noise.
MIN_CPU_SPEEDUP = 1.5


@functools.cache
def cpu_bf16_speedup(repeats: int = 5) -> float:
    """How many times as fast as fp32 this CPU runs bf16 (cached for the process): the ratio of
    the fastest of ``repeats`` interleaved timings of a 3×3 convolution (batch 64, 32 → 64
    channels, 14×14, channels-last: three_conv's second block) and a 512×1024 by 1024×512
    matrix product; the fastest is the least disturbed by other processes."""
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(0)  # the global random state is the run's seed's
    probe = [
        torch.randn(*shape, generator=generator)
        for shape in ((64, 32, 14, 14), (64, 32, 3, 3), (512, 1024), (1024, 512))
    ]

    def seconds(dtype: torch.dtype) -> float:
        x, w, a, b = (tensor.to(dtype) for tensor in probe)
        x, w = (tensor.contiguous(memory_format=torch.channels_last) for tensor in (x, w))
        F.conv2d(x, w, padding=1), a @ b  # warm-up: oneDNN picks and caches its kernels
        start = time.perf_counter()
        for _ in range(2):
            F.conv2d(x, w, padding=1), a @ b
        return time.perf_counter() - start

    timings = [(seconds(torch.float32), seconds(torch.bfloat16)) for _ in range(repeats)]
    return min(fp32 for fp32, _ in timings) / min(bf16 for _, bf16 in timings)


def choose_precision(
    accelerator: str, cpu_flags: Mapping[str, bool], cuda_bf16: bool, bf16_speedup: Callable[[], float]
) -> tuple[str, str]:
    """``(precision, reason)``: ``"bf16-mixed"`` or ``"32-true"`` for ``accelerator``, and a
    sentence for the log; ``cpu_flags`` are ``torch.cpu.get_capabilities()``, ``bf16_speedup``
    (``cpu_bf16_speedup``) is called only for a CPU with native bf16 flags."""
    if accelerator == "cuda":
        if cuda_bf16:
            return BF16, "the GPU supports bf16"
        return FP32, "the GPU does not support bf16 (compute capability below 8.0)"
    if accelerator != "cpu":
        return FP32, f"no bf16 rule for accelerator {accelerator!r}"
    native = [flag for flag in BF16_CPU_FLAGS if cpu_flags.get(flag)]
    if not native:
        missing = " or ".join(BF16_CPU_FLAGS)
        return FP32, f"the CPU has no native bf16 ({missing}), so bf16 would be emulated and slower"
    speedup = bf16_speedup()
    measured = f"the CPU has {', '.join(native)} and ran bf16 at {speedup:.2f}× fp32's speed in a probe"
    if speedup >= MIN_CPU_SPEEDUP:
        return BF16, measured
    return FP32, f"{measured} (bf16 needs {MIN_CPU_SPEEDUP}× to pay)"


def run_accelerator(trainer_cfg: DictConfig) -> str:
    """The accelerator Lightning will pick for ``trainer.accelerator``: ``auto`` is CUDA when
    there is a GPU, then Apple's MPS, else the CPU; ``gpu`` is CUDA (or MPS on a Mac)."""
    from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator

    chosen = str(trainer_cfg.get("accelerator", "auto"))
    if chosen in ("auto", "gpu"):
        if CUDAAccelerator.is_available():
            return "cuda"
        if MPSAccelerator.is_available():
            return "mps"
        return "cpu" if chosen == "auto" else "cuda"  # gpu without one: the Trainer refuses it
    return chosen


def resolve_precision(cfg: DictConfig) -> str | None:
    """Replaces ``trainer.precision=auto`` in ``cfg`` by this machine's choice; returns the
    reason, for the log, or ``None`` when ``trainer.precision`` was set explicitly."""
    trainer = cfg.get("trainer")
    if not isinstance(trainer, DictConfig) or trainer.get("precision") != AUTO:
        return None
    accelerator = run_accelerator(trainer)
    cuda_bf16 = accelerator == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    precision, reason = choose_precision(accelerator, torch.cpu.get_capabilities(), cuda_bf16, cpu_bf16_speedup)
    with open_dict(trainer):
        trainer.precision = precision
    return reason


def record_precision(run_dir: Path, precision: str, reason: str) -> None:
    """Logs the choice of ``trainer.precision=auto`` and writes it, atomically, into the run's
    ``.hydra/config.yaml`` (where Hydra saved ``auto``), which ``resume=`` starts from."""
    log.info("trainer.precision=auto: %s, because %s", precision, reason)
    folder = RunFolder(run_dir)
    if not folder.is_run():  # train() called outside Hydra, or hydra.output_subdir=null
        return
    config = OmegaConf.load(folder.config_file)  # this run's own config, just written by Hydra
    if OmegaConf.select(config, "trainer.precision") == AUTO:
        config.trainer.precision = precision
        folder.write_config(config)
