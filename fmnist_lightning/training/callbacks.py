"""The project's own Lightning callbacks (a checkpoint on Ctrl-C or SIGTERM, the run's
``metrics.json``), and ``Attempt``: what the end of an attempt at a run leaves there."""

from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, EarlyStopping, Timer
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from fmnist_lightning.errors import NonFiniteLossError, RunError, RunInterrupted, TrialPruned
from fmnist_lightning.run_folder import LAST_CHECKPOINT, RunFolder, write_failure
from fmnist_lightning.training.loggers import end_runs
from fmnist_lightning.training.processes import destroy_process_group_at_exit, seconds_since_launch, train_command
from fmnist_lightning.training.resume import stop_limits
from fmnist_lightning.training.slurm import time_limit_signal

log = logging.getLogger(__name__)


class InterruptCheckpoint(Callback):
    """Saves the full training state over ``<dirpath>/last.ckpt`` when fitting is stopped by
    Ctrl-C, SIGTERM or submitit's time-limit signal: all processes stop after the same batch
    (``strategy.reduce_boolean_decision``); a second Ctrl-C stops at once. A mid-epoch checkpoint
    resumes with fresh batches, so not bit-identically. Lightning's own SIGTERM handler is
    replaced while training: under DDP it deadlocks (Lightning issue #20806, pull request #20825).
    """

    def __init__(self, dirpath: str | Path) -> None:
        self.dirpath = Path(dirpath)
        self._previous: dict[signal.Signals, Any] = {}
        self._training = False  # the signals are ours: they ask for a stop after the batch
        self._asked: signal.Signals | None = None

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
            signals = filter(None, (signal.SIGINT, signal.SIGTERM, time_limit_signal()))
            self._previous = {signum: signal.getsignal(signum) for signum in signals}
            for signum in self._previous:
                if signum != signal.SIGTERM:  # SIGTERM stays Lightning's (or the default) in the set-up
                    signal.signal(signum, self._on_stop_signal)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Installs this callback's handler over the one Lightning registers for fitting."""
        if self._previous and not self._training:
            self._training = True
            for signum in self._previous:
                signal.signal(signum, self._on_stop_signal)

    on_sanity_check_start = on_train_start

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        """Stops every process after this batch if any was asked to."""
        if trainer.strategy.reduce_boolean_decision(self._asked is not None, all=False):
            raise SIGTERMException

    on_train_batch_end = on_train_end

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
    """Writes ``<output_dir>/metrics.json`` (rank 0 only) at the start, after every training
    epoch and at the end, and flushes the loggers after every epoch, so a crash loses none.

    The file holds ``status`` (``running``, ``finished``, ``interrupted``, ``failed`` or
    ``pruned``), ``epochs`` completed, ``trained`` (training is over), ``global_step``,
    ``best_checkpoint`` (relative to the run folder; only a file that exists),
    ``wall_time_s`` (s), ``first_step_s`` (s from the process's launch to the first training
    step; null off Linux), ``metrics`` (the latest logged values), ``error`` (or null), and
    once training has ended ``stopped_by`` (``stop_reason``) and ``limits``
    (``training.resume.stop_limits``).
    """

    def __init__(self, output_dir: str | Path) -> None:
        self.output_dir = Path(output_dir)
        self.start = time.perf_counter()
        self.first_step_s: float | None = None
        self._step_timed = False  # first_step_s is taken once, also where it stays None (not Linux)
        self._resumed_at: tuple[int, str] | None = None
        self._ended: tuple[str | None, dict | None] = (None, None)

    def resume_at(self, global_step: int, best_checkpoint: str) -> None:
        """The step and best checkpoint to report for a resume that does not fit again."""
        self._resumed_at = (global_step, best_checkpoint)

    def training_ended(self, stopped_by: str | None, limits: dict | None) -> None:
        """Training is over: what ended it and its limits, for every later write."""
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
        """Writes the file atomically; ``trained=None`` means ``status == "finished"``.

        Raises:
            OSError: The file cannot be written (the earlier one is left as it was).
        """
        if not trainer.is_global_zero:
            return
        checkpoint = trainer.checkpoint_callback
        best = checkpoint.best_model_path if checkpoint is not None else ""
        global_step = trainer.global_step
        if self._resumed_at is not None:
            global_step, best = self._resumed_at
        if metrics is None:
            metrics = logged_metrics(trainer)
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
        """``write``, saying so on stderr where even this write fails (a full disk)."""
        try:
            self.write(trainer, status, epochs, **fields)
        except OSError as err:
            print(
                f"warning: could not record the status {status!r} in {RunFolder(self.output_dir).status_file} "
                f"({err.strerror or err}); it still holds the status written before",
                file=sys.stderr,
                flush=True,
            )

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        destroy_process_group_at_exit()  # in every DDP process, after Lightning has made the group

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self._step_timed:
            self._step_timed = True
            since_launch = seconds_since_launch()
            self.first_step_s = None if since_launch is None else round(since_launch, 2)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Before ModelCheckpoint's hook (Lightning calls checkpoint callbacks last): the logged
        # values are on disk before the checkpoint a resumed run starts from.
        if not trainer.sanity_checking:
            for logger in trainer.loggers:
                logger.save()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for logger in trainer.loggers:
            logger.save()
        self.write(trainer, "running", epochs=trainer.current_epoch + 1)


def logged_metrics(trainer: L.Trainer) -> dict[str, float]:
    """The values the Trainer last logged (``callback_metrics``), as floats."""
    return {key: float(value) for key, value in trainer.callback_metrics.items()}


def stop_reason(trainer: L.Trainer) -> str | None:
    """What ended ``trainer``'s last fit: ``max_steps``, ``max_epochs`` (as Lightning's fit loop
    checks them), ``max_time`` (its ``Timer``) or ``early_stopping`` (in this fit's last
    epoch); ``None`` for an interrupted or failed fit."""
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


class Attempt:
    """One attempt at a run: its stage (``training``, ``test``, ``report``), its epochs and
    metrics so far, and, as a context manager, what its end leaves in ``metrics.json``;
    ``previous`` is the ``metrics.json`` of the attempt it continues (``{}`` for a new run).

    Raises:
        RunInterrupted: From the ``with`` block, for Ctrl-C or SIGTERM: the message says how
            to continue the run.
        RunError: For a failed write (an ``OSError``). Other errors pass through, with the
            run marked ``failed`` (``pruned`` for ``TrialPruned``).
    """

    def __init__(self, cfg: DictConfig, trainer: L.Trainer, status: RunStatus, previous: dict) -> None:
        self.cfg, self.trainer, self.status, self.previous = cfg, trainer, status, previous
        self.folder = RunFolder(cfg.output_dir)
        self.stage = "training"
        self.epochs: int = previous.get("epochs", 0)
        self.metrics: dict[str, float] = {}
        self.best_path = ""
        #: Stopped in its test or report before: training is complete, the resume only tests and reports.
        self.trained_earlier = bool(previous.get("trained")) and previous.get("status") != "finished"

    def training_done_earlier(self, start: Path) -> str:
        """Takes the earlier attempt's training as this one's; returns the checkpoint to test."""
        log.info("Training finished earlier (%d epochs); testing and reporting again", self.epochs)
        previous = self.previous
        self.metrics = {k: v for k, v in previous.get("metrics", {}).items() if not k.startswith("test/")}
        best = previous.get("best_checkpoint")
        self.best_path = str(self.folder.path / best) if best else ""
        self.status.resume_at(previous.get("global_step", 0), self.best_path)
        self.status.training_ended(previous.get("stopped_by"), previous.get("limits"))
        return self.best_path or str(start)

    def fitted(self) -> str | None:
        """Records a fit that returned; returns the best checkpoint to test (``None``: the last
        weights). Epochs are Lightning's ``processed`` ones: ``completed`` lags by one in a
        checkpoint, and a resumed fit whose loop never starts keeps that lag."""
        trainer = self.trainer
        self.epochs = trainer.fit_loop.epoch_progress.current.processed
        self.status.training_ended(stop_reason(trainer), stop_limits(self.cfg))
        self.metrics = logged_metrics(trainer)
        checkpoint = trainer.checkpoint_callback
        self.best_path = checkpoint.best_model_path if checkpoint is not None else ""
        return self.best_path or None

    def __enter__(self) -> Attempt:
        return self

    def __exit__(self, kind: type | None, err: BaseException | None, tb: TracebackType | None) -> bool:
        try:
            if err is not None:
                self._record(err)
        finally:
            end_runs(self.trainer.loggers)
        return False

    def _completed(self) -> int:
        """Training epochs completed by an attempt that stopped (in training: the fit's ``completed``)."""
        return self.epochs if self.stage != "training" else self.trainer.fit_loop.epoch_progress.current.completed

    def _record(self, err: BaseException) -> None:
        """Writes how the attempt ended, and raises the error that says so."""
        trainer, status, trained = self.trainer, self.status, self.stage != "training"
        resume = f"{train_command()} {shlex.quote(f'resume={self.folder.path}')}"
        if isinstance(err, NonFiniteLossError):
            status.write_or_warn(trainer, "failed", epochs=self._completed(), error=str(err))
        elif isinstance(err, TrialPruned):  # after an epoch's validation: that epoch is done, nothing is tested
            metrics = logged_metrics(trainer)
            status.write_or_warn(trainer, "pruned", epochs=trainer.current_epoch + 1, metrics=metrics, error=str(err))
        elif isinstance(err, SystemExit | KeyboardInterrupt):  # Lightning's ways out after Ctrl-C and SIGTERM
            raise self._interrupted(resume) from None
        elif isinstance(err, OSError):  # a full disk, a folder made read-only, a lost mount: any write of the run
            message = write_failure(err, self.folder.path)
            status.write_or_warn(trainer, "failed", epochs=self._completed(), error=message, trained=trained)
            raise RunError(f"{message}; then continue the run with: {resume}") from None
        elif isinstance(err, Exception):
            error = f"{type(err).__name__}: {err}"
            status.write_or_warn(trainer, "failed", epochs=self._completed(), error=error, trained=trained)

    def _interrupted(self, resume: str) -> RunInterrupted:
        """Records a stop by Ctrl-C or SIGTERM; the error that says how to go on."""
        trainer, status = self.trainer, self.status
        last = self.folder.last_checkpoint(self.cfg)
        if self.stage != "training":  # last.ckpt is the end of the last epoch: the resume only tests
            epochs = self.epochs
            error = f"stopped by Ctrl-C or SIGTERM during the {self.stage}, after training finished ({epochs} epochs)"
            status.write_or_warn(trainer, "interrupted", epochs=epochs, metrics=self.metrics, trained=True, error=error)
            return RunInterrupted(
                f"stopped during the {self.stage}, after training finished ({epochs} epochs, kept in {last}); "
                f"test and report it with: {resume}"
            )
        where = f"in epoch {trainer.current_epoch} (step {trainer.global_step})"
        error = f"stopped by Ctrl-C or SIGTERM {where}"
        status.write_or_warn(trainer, "interrupted", epochs=self._completed(), error=error)
        if not last.is_file():
            return RunInterrupted(f"training stopped {where}, before any checkpoint was saved; start it again")
        return RunInterrupted(f"training stopped {where}; continue it from {last} with: {resume}")
