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
from lightning.pytorch.callbacks import Callback, EarlyStopping, Timer
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from fmnist_lightning.run_folder import LAST_CHECKPOINT, RunFolder
from fmnist_lightning.training.processes import seconds_since_launch
from fmnist_lightning.training.slurm import time_limit_signal

log = logging.getLogger(__name__)


class InterruptCheckpoint(Callback):
    """Saves ``<dirpath>/last.ckpt`` when training is stopped by Ctrl-C or SIGTERM (or, in a
    sweep job on SLURM, by submitit's time-limit signal, SIGUSR2: see ``training.slurm``).

    While the model trains, these signals only ask for a stop. After every training batch
    (and once at the end of training) all processes agree whether any of them was asked
    (``strategy.reduce_boolean_decision``, an all-reduce under DDP, nothing on one device),
    and if so all stop after that same batch: they raise Lightning's ``SIGTERMException``
    together and this callback saves the full training state (weights, optimizer, scheduler,
    loop position, callbacks, random generators) over ``last.ckpt``, so ``resume=<run
    folder>`` loses no finished batch. A signal during the epoch's validation stops after it
    (after the next batch, or at the end of training). A second Ctrl-C stops at once, without
    a checkpoint.

    Lightning's own SIGTERM handler is replaced while training, because under DDP it
    broadcasts from inside the signal handler, at a different point of each process's
    collectives, so that processes signalled together (``srun``, Ctrl-C, ``killpg``) wait for
    each other forever (Lightning 2.6; Lightning issue #20806 and pull request #20825).

    A checkpoint taken mid-epoch resumes mid-epoch; the rest of that epoch then draws fresh
    batches, so such a run is not bit-identical to an uninterrupted one (an end-of-epoch
    ``last.ckpt``, e.g. after a crash or SIGKILL, resumes exactly).

    Other exceptions (a non-finite loss, a bug) save nothing: the last end-of-epoch
    checkpoint stays the last good one. Neither does a signal outside fitting (in the test
    loop, which holds the best checkpoint's weights, not the last epoch's; Lightning's handler
    stops it): ``last.ckpt`` then stays the end of the last epoch. Before training starts (in
    the set-up), Ctrl-C and the time-limit signal stop at once, as there is nothing to save.

    Args:
        dirpath: The checkpoint folder (that of ``ModelCheckpoint``).
    """

    def __init__(self, dirpath: str | Path) -> None:
        self.dirpath = Path(dirpath)
        self._previous: dict[signal.Signals, Any] = {}
        self._training = False  # the signals are ours: they ask for a stop after the batch
        self._asked: signal.Signals | None = None

    @staticmethod
    def _signals() -> list[signal.Signals]:
        return list(filter(None, (signal.SIGINT, signal.SIGTERM, time_limit_signal())))

    def _on_stop_signal(self, signum: int, frame: Any) -> None:
        if not self._training:  # in the set-up: nothing to save yet
            raise KeyboardInterrupt
        if signum == signal.SIGINT:
            log.warning("Ctrl-C: stopping after this batch and saving a checkpoint (Ctrl-C again stops at once)")
            signal.signal(signal.SIGINT, signal.default_int_handler)
        elif self._asked is None:
            log.warning("%s: stopping after this batch and saving a checkpoint", signal.Signals(signum).name)
        self._asked = signal.Signals(signum)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and threading.current_thread() is threading.main_thread():
            self._asked = None
            self._previous = {signum: signal.getsignal(signum) for signum in self._signals()}
            for signum in self._previous:
                if signum != signal.SIGTERM:  # SIGTERM stays Lightning's (or the default) in the set-up
                    signal.signal(signum, self._on_stop_signal)

    def _take_signals(self) -> None:
        """Installs this callback's handler over the one Lightning registers when fitting starts."""
        if self._previous and not self._training:
            self._training = True
            for signum in self._previous:
                signal.signal(signum, self._on_stop_signal)

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._take_signals()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._take_signals()

    def _stop_if_asked(self, trainer: L.Trainer) -> None:
        if trainer.strategy.reduce_boolean_decision(self._asked is not None, all=False):
            raise SIGTERMException

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._stop_if_asked(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_if_asked(trainer)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._training = False
        while self._previous:
            signum, handler = self._previous.popitem()
            signal.signal(signum, handler)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and trainer.state.fn == TrainerFn.FITTING:
            path = self.dirpath / LAST_CHECKPOINT
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
    ``metrics`` (the latest logged values; accuracies are fractions), ``error`` (why the
    run stopped, or null), and once training has ended ``stopped_by`` (what ended it:
    ``max_epochs``, ``max_steps``, ``max_time`` or ``early_stopping``, see ``stop_reason``)
    and ``limits`` (the Trainer's limits that fit ran with, ``training.starting.stop_limits``);
    both null before, and in runs of older versions. ``best_checkpoint`` names only a file
    that exists: a best checkpoint whose write failed (a full disk) is left out. Only rank 0
    writes.

    Args:
        output_dir: The run folder.
    """

    def __init__(self, output_dir: str | Path) -> None:
        self.output_dir = Path(output_dir)
        self.start = time.perf_counter()
        self.first_step_s: float | None = None
        self._step_timed = False  # first_step_s is taken once, also where it stays None (not Linux)
        self._resumed_at: tuple[int, str] | None = None
        self._ended: tuple[str | None, dict | None] = (None, None)

    def resume_at(self, global_step: int, best_checkpoint: str) -> None:
        """For a resume that does not fit again (training was over): the step and the best
        checkpoint to report, which the Trainer, having trained nothing, does not know."""
        self._resumed_at = (global_step, best_checkpoint)

    def training_ended(self, stopped_by: str | None, limits: dict | None) -> None:
        """Training is over: what ended it (``stop_reason``) and the limits it ran with, which
        every later write records."""
        self._ended = (stopped_by, limits)

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
        if best and not Path(best).is_file():  # its write failed: the status must not point at it
            best = ""
        RunFolder(self.output_dir).write_status(
            status,
            epochs,
            global_step,
            os.path.relpath(best, self.output_dir.resolve()) if best else None,
            round(time.perf_counter() - self.start, 2),
            metrics,
            error,
            trained=status == "finished" if trained is None else trained,
            first_step_s=self.first_step_s,
            stopped_by=self._ended[0],
            limits=self._ended[1],
        )

    def write_or_warn(self, trainer: L.Trainer, status: str, epochs: int, **fields: Any) -> None:
        """``write``, for the end of a run that failed or was stopped: if even this write fails
        (a full disk), says so on stderr, and the earlier ``metrics.json`` stays as it was."""
        try:
            self.write(trainer, status, epochs, **fields)
        except OSError as err:
            print(
                f"warning: could not record the status {status!r} in {RunFolder(self.output_dir).status_file} "
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


def stop_reason(trainer: L.Trainer) -> str | None:
    """What ended ``trainer``'s last fit: ``max_steps``, ``max_epochs`` (the Trainer's
    limits, as its fit loop checks them), ``max_time`` (the ``Timer`` of
    ``trainer.max_time`` ran out) or ``early_stopping`` (an ``EarlyStopping`` callback
    stopped it after its last epoch; the callback's state from an earlier fit does not
    count); ``None`` when none of them did (an interrupted or failed fit)."""
    loop = trainer.fit_loop
    last_epoch = loop.epoch_progress.current.processed - 1
    if loop.max_steps not in (None, -1) and loop.epoch_loop.global_step >= loop.max_steps:
        return "max_steps"
    if loop.max_epochs not in (None, -1) and last_epoch + 1 >= loop.max_epochs:
        return "max_epochs"
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    remaining = timer.time_remaining() if timer is not None else None
    if remaining is not None and remaining <= 0:
        return "max_time"
    stopped = (
        isinstance(c, EarlyStopping) and c.stopping_reason is not EarlyStoppingReason.NOT_STOPPED
        and c.stopped_epoch == last_epoch
        for c in trainer.callbacks
    )  # fmt: skip
    return "early_stopping" if any(stopped) else None
