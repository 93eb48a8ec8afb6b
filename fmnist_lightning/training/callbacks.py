"""The project's own Lightning callbacks: a checkpoint on Ctrl-C/SIGTERM, and ``metrics.json``
kept up to date while a run trains."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from fmnist_lightning.training.processes import seconds_since_launch
from fmnist_lightning.training.slurm import time_limit_signal
from fmnist_lightning.training.status import write_status

log = logging.getLogger(__name__)


class InterruptCheckpoint(Callback):
    """Saves ``<dirpath>/last.ckpt`` when training is stopped by Ctrl-C or SIGTERM (or, in a
    sweep job on SLURM, by submitit's time-limit signal, SIGUSR2: see ``training.slurm``).

    Lightning turns SIGTERM into a clean stop after the current batch. This callback makes
    the first Ctrl-C (and the time-limit signal) do the same (a second Ctrl-C stops at once,
    without a checkpoint), then
    saves the full training state (weights, optimizer, scheduler, loop position, callbacks,
    random generators) over ``last.ckpt``, so ``resume=<run folder>`` loses no finished
    batch. A checkpoint taken mid-epoch resumes mid-epoch; the rest of that epoch then draws
    fresh batches, so such a run is not bit-identical to an uninterrupted one (an
    end-of-epoch ``last.ckpt``, e.g. after a crash or SIGKILL, resumes exactly).

    Other exceptions (a non-finite loss, a bug) save nothing: the last end-of-epoch
    checkpoint stays the last good one. Neither does a signal outside fitting (in the test
    loop, which holds the best checkpoint's weights, not the last epoch's): ``last.ckpt``
    then stays the end of the last epoch.

    Args:
        dirpath: The checkpoint folder (that of ``ModelCheckpoint``).
    """

    def __init__(self, dirpath: str | Path) -> None:
        self.dirpath = Path(dirpath)
        self._previous: dict[signal.Signals, Any] = {}

    def _on_stop_signal(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT:
            log.warning("Ctrl-C: stopping after this batch and saving a checkpoint (Ctrl-C again stops at once)")
            signal.signal(signal.SIGINT, signal.default_int_handler)
        else:
            log.warning("%s: stopping after this batch and saving a checkpoint", signal.Signals(signum).name)
        sigterm_handler = signal.getsignal(signal.SIGTERM)
        if not callable(sigterm_handler):  # Lightning's handler is not installed yet
            raise KeyboardInterrupt
        sigterm_handler(signum, frame)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and threading.current_thread() is threading.main_thread():
            for signum in filter(None, (signal.SIGINT, time_limit_signal())):
                self._previous[signum] = signal.signal(signum, self._on_stop_signal)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        while self._previous:
            signum, handler = self._previous.popitem()
            signal.signal(signum, handler)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and trainer.state.fn == TrainerFn.FITTING:
            path = self.dirpath / "last.ckpt"
            trainer.save_checkpoint(path)
            log.warning("Stopped at epoch %d, step %d; saved %s", trainer.current_epoch, trainer.global_step, path)
        self.teardown(trainer, pl_module, "fit")


class RunStatus(Callback):
    """Writes ``<output_dir>/metrics.json``: at the start, after every training epoch, and at
    the end of the run, so the file always says how far the run got. Also flushes the
    loggers after every validation and training epoch, so a crash loses no logged epoch.

    The file holds ``status`` (``running``, ``finished``, ``interrupted``, ``failed``, or
    ``pruned`` for a trial an Optuna search stopped),
    ``epochs`` (training epochs completed), ``trained`` (training is over: the run was
    stopped, if at all, in its test or report, so a resume only tests and reports),
    ``global_step`` (optimizer steps),
    ``best_checkpoint`` (relative to the run folder), ``wall_time_s`` (seconds since this
    process started the run), ``first_step_s`` (seconds from the process's launch to this
    run's first training step: the start-up, which in a sweep also holds the earlier jobs
    of the process; null until then, when the run trains nothing, and off Linux),
    ``metrics`` (the latest logged values; accuracies are fractions) and ``error`` (why the
    run stopped, or null). Only rank 0 writes.

    Args:
        output_dir: The run folder.
    """

    def __init__(self, output_dir: str | Path) -> None:
        self.output_dir = Path(output_dir)
        self.start = time.perf_counter()
        self.first_step_s: float | None = None
        self._step_timed = False  # first_step_s is taken once, also where it stays None (not Linux)
        self._resumed_at: tuple[int, str] | None = None

    def resume_at(self, global_step: int, best_checkpoint: str) -> None:
        """For a resume that does not fit again (training was over): the step and the best
        checkpoint to report, which the Trainer, having trained nothing, does not know."""
        self._resumed_at = (global_step, best_checkpoint)

    def write(
        self,
        trainer: L.Trainer,
        status: str,
        epochs: int,
        metrics: dict[str, float] | None = None,
        error: str | None = None,
        trained: bool | None = None,
    ) -> None:
        """Writes the file (atomically: a reader never sees half of it).

        Args:
            trained: Whether training is over; ``None``: it is if ``status`` is ``finished``.

        Raises:
            OSError: The file cannot be written (the earlier one is then left as it was).
        """
        if not trainer.is_global_zero:
            return
        checkpoint = trainer.checkpoint_callback
        best = checkpoint.best_model_path if checkpoint is not None else ""
        global_step = trainer.global_step
        if self._resumed_at is not None:
            global_step, best = self._resumed_at
        if metrics is None:
            metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
        write_status(
            self.output_dir,
            status,
            epochs,
            global_step,
            os.path.relpath(best, self.output_dir.resolve()) if best else None,
            round(time.perf_counter() - self.start, 2),
            metrics,
            error,
            trained=status == "finished" if trained is None else trained,
            first_step_s=self.first_step_s,
        )

    def write_or_warn(self, trainer: L.Trainer, status: str, epochs: int, **fields: Any) -> None:
        """``write``, for the end of a run that failed or was stopped: if even this write fails
        (a full disk), says so on stderr, and the earlier ``metrics.json`` stays as it was."""
        try:
            self.write(trainer, status, epochs, **fields)
        except OSError as err:
            print(
                f"warning: could not record the status {status!r} in {self.output_dir / 'metrics.json'} "
                f"({err.strerror or err}); it still holds the status written before",
                file=sys.stderr,
                flush=True,
            )

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self._step_timed:
            self._step_timed = True
            since_launch = seconds_since_launch()
            self.first_step_s = None if since_launch is None else round(since_launch, 2)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Runs before ModelCheckpoint's hook (Lightning calls checkpoint callbacks last), so
        # the logged values are on disk before the checkpoint a resumed run starts from.
        # Otherwise they wait in the loggers' buffers and a crash loses them for good.
        if not trainer.sanity_checking:
            for logger in trainer.loggers:
                logger.save()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for logger in trainer.loggers:
            logger.save()
        self.write(trainer, "running", epochs=trainer.current_epoch + 1)
