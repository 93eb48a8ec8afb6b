"""The project's own Lightning callback for a checkpoint on Ctrl-C/SIGTERM (``metrics.json``,
kept up to date while a run trains, is ``training.run_status``'s)."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from fmnist_lightning.run_folder import LAST_CHECKPOINT
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
