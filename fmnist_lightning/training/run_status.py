"""A run's status, ``metrics.json``: kept up to date while it trains (``RunStatus``), and what
the end of an attempt at it leaves there (``Attempt``): finished, failed, pruned or
interrupted, with the message that says how to go on."""

from __future__ import annotations

import logging
import os
import shlex
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, EarlyStopping, Timer
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from omegaconf import DictConfig

from fmnist_lightning.errors import NonFiniteLossError, RunError, RunInterrupted, TrialPruned
from fmnist_lightning.run_folder import RunFolder
from fmnist_lightning.training.loggers import end_runs
from fmnist_lightning.training.processes import seconds_since_launch, train_command
from fmnist_lightning.training.run_dirs import write_failure
from fmnist_lightning.training.starting import stop_limits

log = logging.getLogger(__name__)


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


def logged_metrics(trainer: L.Trainer) -> dict[str, float]:
    """The values the Trainer last logged (``callback_metrics``), as floats: each epoch's
    ``train/*`` and ``val/*``, or after ``trainer.test`` the ``test/*`` ones. Accuracies are
    fractions."""
    return {key: float(value) for key, value in trainer.callback_metrics.items()}


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


class Attempt:
    """One attempt at a run, from its first status to its last: the stage it is in
    (``training``, ``test``, ``report``), its epochs and metrics so far, and, as a context
    manager around it, what its end leaves in ``metrics.json`` (through ``RunStatus``) and
    which error says so. The one place of a run's failure bookkeeping.

    Args:
        cfg: The run's config.
        trainer: Its Trainer.
        status: Its ``RunStatus`` callback.
        previous: The ``metrics.json`` of the attempt it continues (``{}`` for a new run).

    Raises:
        RunInterrupted: From the ``with`` block, for Ctrl-C or SIGTERM (Lightning's
            ``SystemExit``/``KeyboardInterrupt``): the message says how to continue the run.
        RunError: For a failed write (an ``OSError``: a full disk, a read-only folder).
        The other errors pass through, with the run marked ``failed`` (or ``pruned`` for
        ``TrialPruned``).
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
        """Takes the earlier attempt's training as this one's (its epochs, step, metrics and
        best checkpoint); returns the checkpoint to test."""
        log.info("Training finished earlier (%d epochs); testing and reporting again", self.epochs)
        previous = self.previous
        self.metrics = {k: v for k, v in previous.get("metrics", {}).items() if not k.startswith("test/")}
        best = previous.get("best_checkpoint")
        self.best_path = str(self.folder.path / best) if best else ""
        self.status.resume_at(previous.get("global_step", 0), self.best_path)
        self.status.training_ended(previous.get("stopped_by"), previous.get("limits"))
        return self.best_path or str(start)

    def fitted(self) -> str | None:
        """Records a fit that returned: its epochs, what ended it, its last epoch's
        ``train/*`` and ``val/*`` values (``trainer.test`` replaces them); returns the best
        checkpoint to test (``None``: the last weights, e.g. under ``debug=fdr``).

        Lightning counts an epoch ``processed`` before its ``on_train_epoch_end`` hooks (where
        checkpoints are written) and ``completed`` after them, so a checkpoint holds one fewer
        ``completed``; a resumed fit catches up when its loop starts, one whose loop never
        starts (a ``trainer.max_time`` already spent) keeps the lag: the processed epochs
        are the count."""
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
        """Training epochs completed, for an attempt that stopped: in its training, those of
        the fit (an epoch whose end hooks, its checkpoints, failed is not counted); after it,
        all of them."""
        return self.epochs if self.stage != "training" else self.trainer.fit_loop.epoch_progress.current.completed

    def _record(self, err: BaseException) -> None:
        """Writes how the attempt ended, and raises the error that says so.

        Raises:
            RunInterrupted, RunError: In place of ``err``, see the class.
        """
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
