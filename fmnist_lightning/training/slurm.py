"""Sweep jobs on SLURM (``hydra/launcher=slurm``, through submitit) survive preemption and
time limits: stopped by SIGTERM or submitit's time-limit signal, a job saves ``last.ckpt``
(``callbacks.InterruptCheckpoint``), requeues itself (``scontrol requeue``, as submitit does)
and exits without a result; started again in the same folder, it continues from there
(``training.resume.continue_job``). A cancelled job (``scancel`` without ``--signal``) is not
requeued. Runs that ``srun`` starts from ``scripts/train.sbatch`` are continued by submitting
the script again.
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
    """The job's state from ``scontrol show job`` (``RUNNING``, ...), or ``UNKNOWN``."""
    result = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, timeout=60)
    for field in result.stdout.split():
        if field.startswith("JobState="):
            return field.removeprefix("JobState=")
    return "UNKNOWN"


def requeue() -> bool:
    """Puts this running SLURM job back in the queue (``scontrol requeue``); whether it was:
    not a job that is no longer running (a plain ``scancel``) or that scontrol refuses (logged)."""
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
