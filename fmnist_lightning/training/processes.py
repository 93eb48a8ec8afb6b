"""Which process this is, and how many share the machine: ranks, Hydra multirun jobs, CPU
threads, and the DDP launch strategy."""

from __future__ import annotations

import atexit
import logging
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

log = logging.getLogger(__name__)


#: Environment variables that mark a process as a non-zero rank of a multi-process job
#: (Lightning's DDP children, SLURM tasks, torchrun workers).
RANK_VARIABLES = ("LOCAL_RANK", "RANK", "SLURM_PROCID", "NODE_RANK")


def seconds_since_launch() -> float | None:
    """Seconds since this process was launched, to 10 ms (``/proc/self/stat`` field 22, in clock
    ticks since boot, against ``CLOCK_BOOTTIME``; psutil's is off by up to 1 s); ``None`` off Linux."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return time.clock_gettime(time.CLOCK_BOOTTIME) - started
    except (OSError, AttributeError, ValueError, IndexError):
        return None


def train_command() -> str:
    """How the user started training (``fmnist-train``, ``python train.py``, ``python -m ...``),
    for messages that say what to run next."""
    name = Path(sys.argv[0]).name
    if name == "_submit.py":  # a sweep job that submitit started on SLURM
        return "fmnist-train"
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.origin == sys.argv[0]:  # python -m <module>
        return f"python -m {spec.name}"
    return f"python {name}" if name.endswith(".py") else name


def command_line() -> str:
    """The command that started this run (a sweep job's own overrides, not ``-m``), shell-quoted."""
    overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else sys.argv[1:]
    return shlex.join([*train_command().split(" "), *overrides])


def is_child_rank() -> bool:
    """True in a process that is not rank 0 of a multi-process (DDP, SLURM) job."""
    return any(os.environ.get(name, "0") not in ("", "0") for name in RANK_VARIABLES)


def in_multirun() -> bool:
    """True inside a job of a Hydra multirun (``-m``)."""
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def cpu_threads(trainer: DictConfig) -> int:
    """Intra-op threads for this process: the cores it may use (its affinity mask; in a SLURM
    task at most ``SLURM_CPUS_PER_TASK``), shared out among a parallel launcher's jobs
    (``hydra.launcher.n_jobs``) and a multi-process CPU run's processes (``trainer.devices``)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    slurm_cpus = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm_cpus.isdigit() and "SLURM_PROCID" in os.environ:
        return max(1, min(cores, int(slurm_cpus)))
    devices = trainer.get("devices")
    on_cpu = trainer.get("accelerator") == "cpu" or not torch.cuda.is_available()
    processes = devices if on_cpu and isinstance(devices, int) and devices > 1 else 1
    if in_multirun():
        n_jobs = HydraConfig.get().launcher.get("n_jobs") or 1
        processes *= cores if n_jobs < 0 else n_jobs
    return max(1, cores // processes)


def launch_strategy(trainer: DictConfig) -> Any:
    """``trainer.strategy``, with ``ddp`` replaced by ``ddp_spawn`` inside a Hydra multirun
    (Lightning's ``ddp`` re-runs the command line, which would start the whole sweep again)."""
    strategy = trainer.get("strategy", "auto")
    if strategy == "ddp" and in_multirun():
        log.info("trainer.strategy=ddp inside a multirun: using ddp_spawn, so the sweep is not re-run")
        return "ddp_spawn"
    return strategy


def destroy_process_group_at_exit() -> None:
    """Destroys this process's ``torch.distributed`` group at interpreter exit, for every backend.

    Lightning registers the same ``atexit`` handler for NCCL only
    (``lightning.fabric.utilities.distributed._init_dist_connection``). A gloo group left to the
    interpreter's teardown can abort a ``ddp_spawn`` child with "terminate called without an
    active exception" (a C++ ``std::thread`` destroyed unjoined), which fails its job. Destroying
    the group first joins those threads. Does nothing where no group is initialised; registering
    twice registers once.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        atexit.unregister(_destroy_process_group)
        atexit.register(_destroy_process_group)


def _destroy_process_group() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """Inside the block, SIGTERM raises ``KeyboardInterrupt`` in the main thread, as Ctrl-C does
    (forked processes keep SIGTERM's default; outside the main thread nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    owner = os.getpid()

    def interrupt(signum: int, frame: Any) -> None:
        if os.getpid() != owner:  # a forked child: die as SIGTERM would
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
