"""Sweep jobs on SLURM (``hydra/launcher=slurm``, which submits through submitit) survive
preemption and time limits.

A job stopped by SIGTERM (preemption, ``scancel --signal=TERM``) or by submitit's time-limit
signal (SIGUSR2, ``hydra.launcher.signal_delay_s`` before the limit) stops after the current
batch and saves ``last.ckpt`` (``callbacks.InterruptCheckpoint``). The job then puts itself
back in the queue (``scontrol requeue``, as submitit does) and exits without a result, so the
sweep keeps waiting for it. When SLURM starts it again, submitit runs the same job in the same
folder, and ``training.resume.continue_job`` turns it into ``resume=<job folder>``: no finished batch is
lost and none is trained twice. A job that was cancelled (``scancel`` without ``--signal``)
is not requeued.

Multi-process runs that ``srun`` starts from an sbatch script (``scripts/train.sbatch``) are
continued by submitting the script again (docs: Several processes and clusters).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess

from fmnist_lightning.run_folder import LAST_CHECKPOINT

log = logging.getLogger(__name__)

#: submitit's environment variable naming its time-limit signal (without ``SIG``).
SUBMITIT_SIGNAL_ENV = "SUBMITIT_PREEMPT_SIGNAL"


def in_submitit_job() -> bool:
    """True inside a job that submitit started on SLURM (a job of ``hydra/launcher=slurm``)."""
    return os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and "SLURM_JOB_ID" in os.environ


def time_limit_signal() -> signal.Signals | None:
    """The signal submitit asks SLURM to send before a job's time limit (``SIGUSR2`` unless
    ``SUBMITIT_PREEMPT_SIGNAL`` names another); ``None`` outside a submitit job."""
    if not in_submitit_job():
        return None
    return signal.Signals[f"SIG{os.environ.get(SUBMITIT_SIGNAL_ENV, 'USR2')}"]


def job_id() -> str:
    """This SLURM job's id as ``scontrol`` takes it: ``<array job>_<task>`` for a task of an
    array job (a sweep's jobs are one array), else ``SLURM_JOB_ID``."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ["SLURM_JOB_ID"]


def job_state(job: str) -> str:
    """The job's state from ``scontrol show job`` (``RUNNING``, ``CANCELLED``...), or
    ``UNKNOWN`` when scontrol cannot tell."""
    result = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, timeout=60)
    for field in result.stdout.split():
        if field.startswith("JobState="):
            return field.removeprefix("JobState=")
    return "UNKNOWN"


def requeue() -> bool:
    """Puts this running SLURM job back in the queue (``scontrol requeue``).

    Returns:
        Whether it was requeued: ``False`` for a job that is no longer running (a plain
        ``scancel`` cancels it before the signal arrives) or when scontrol refuses (logged).
    """
    job = job_id()
    state = job_state(job)
    if state != "RUNNING":
        log.warning("SLURM job %s is %s, so it is not requeued", job, state)
        return False
    result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        log.warning("scontrol requeue %s failed: %s", job, result.stderr.strip())
        return False
    log.warning("Requeued SLURM job %s: when it starts again, it continues from %s", job, LAST_CHECKPOINT)
    return True
