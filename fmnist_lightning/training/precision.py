"""``trainer.precision=auto`` (the default): the precision this machine trains fastest in.

bf16 pays only where the hardware computes in it natively; elsewhere it is emulated and
slower than fp32 (benchmarks/RESULTS.md, "Speed options": about 10× slower on an AVX2 CPU
without BF16 instructions). So ``auto`` becomes

- ``bf16-mixed`` on a CPU with native bf16 instructions: ``avx512_bf16`` or ``amx_bf16``, as
  ``torch.cpu.get_capabilities()`` reports them;
- ``bf16-mixed`` on a CUDA GPU that supports bf16 (``torch.cuda.is_bf16_supported()``: compute
  capability 8.0 and later, Ampere on);
- ``32-true`` otherwise (other accelerators too).

It is resolved once per run, before the Trainer is built: the run's ``.hydra/config.yaml``
records the chosen value, so that ``resume=`` continues in the same precision on any machine.
An explicit ``trainer.precision`` is used as it is.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from fmnist_lightning.evaluation.runs import load_run_config

log = logging.getLogger(__name__)

#: The value of ``trainer.precision`` that this module resolves.
AUTO = "auto"

#: CPU flags (``torch.cpu.get_capabilities()`` keys) of native bf16 arithmetic.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def choose_precision(accelerator: str, cpu_flags: Mapping[str, bool], cuda_bf16: bool) -> tuple[str, str]:
    """The precision for ``accelerator`` and why.

    Args:
        accelerator: The accelerator the run trains on: ``"cpu"``, ``"cuda"``, or another of
            Lightning's (``"mps"``, ...).
        cpu_flags: The CPU's capabilities, as ``torch.cpu.get_capabilities()`` gives them.
        cuda_bf16: Whether the CUDA device supports bf16.

    Returns:
        ``(precision, reason)``: a Lightning precision (``"bf16-mixed"`` or ``"32-true"``) and
        a sentence for the log.
    """
    if accelerator == "cuda":
        if cuda_bf16:
            return "bf16-mixed", "the GPU supports bf16"
        return "32-true", "the GPU does not support bf16 (compute capability below 8.0)"
    if accelerator == "cpu":
        native = [flag for flag in BF16_CPU_FLAGS if cpu_flags.get(flag)]
        if native:
            return "bf16-mixed", f"the CPU computes bf16 natively ({', '.join(native)})"
        missing = " or ".join(BF16_CPU_FLAGS)
        return "32-true", f"the CPU has no native bf16 ({missing}), so bf16 would be emulated and slower"
    return "32-true", f"no bf16 rule for accelerator {accelerator!r}"


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
    """Replaces ``trainer.precision=auto`` in ``cfg`` by this machine's choice.

    Returns:
        The reason, for the log, or ``None`` when ``trainer.precision`` was set explicitly.
    """
    trainer = cfg.get("trainer")
    if not isinstance(trainer, DictConfig) or trainer.get("precision") != AUTO:
        return None
    accelerator = run_accelerator(trainer)
    cuda_bf16 = accelerator == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    precision, reason = choose_precision(accelerator, torch.cpu.get_capabilities(), cuda_bf16)
    with open_dict(trainer):
        trainer.precision = precision
    return reason


def record_precision(run_dir: Path, precision: str, reason: str) -> None:
    """Logs the choice of ``trainer.precision=auto``, and writes it into the run's
    ``.hydra/config.yaml`` (where Hydra saved ``auto``), which ``resume=`` starts from. The
    file is replaced whole (written beside it, then renamed), so it is never left half written.

    Raises:
        DamagedFileError: The saved config cannot be read.
    """
    log.info("trainer.precision=auto: %s, because %s", precision, reason)
    saved = run_dir / ".hydra" / "config.yaml"
    if not saved.is_file():  # train() called outside Hydra, or hydra.output_subdir=null
        return
    config = load_run_config(run_dir)
    if OmegaConf.select(config, "trainer.precision") == AUTO:
        config.trainer.precision = precision
        partial = saved.with_name(saved.name + ".partial")
        OmegaConf.save(config, partial)
        os.replace(partial, saved)
