"""The commands run inside the test process, and a clean process state for every test.

``run_command("fmnist-evaluate", *args)`` calls the command's own ``main()`` (the function
that the console script ``fmnist-evaluate`` and ``python -m fmnist_lightning.cli.evaluate``
call) with ``sys.argv`` set as the shell would set it, in ``cwd``, and returns what a
subprocess would: the exit status, stdout and stderr. A command is named by its console script
or by its module's file in ``fmnist_lightning/cli/`` (``evaluate.py``; ``train.py`` is also
the clone's own script, ``python train.py``): ``command_name``. It skips only the
interpreter's start and Lightning's import (about 6 s a command); everything after ``main()``
is the real command. What only a separate process can show (signals, a killed process, two
writers, the interpreter's own exit) stays in the tests that start one
(``conftest.run_script``), most of them ``slow``; each command also has one end-to-end test
through its console script in ``tests/test_commands.py``.

``clean_state`` gives every test the process state a fresh interpreter would: Hydra's
``GlobalHydra`` and ``HydraConfig`` cleared, logging handlers and levels, environment, working
directory, ``sys.argv``, signal handlers, torch's global switches (deterministic algorithms,
intra-op threads) restored afterwards, and the random generators seeded the same way before.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import random
import signal
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
#: The commands, by their modules in fmnist_lightning/cli/ (console scripts ``fmnist-<name>``).
COMMANDS = (
    "train",
    "evaluate",
    "predict",
    "summarize",
    "export",
    "serve",
    "compare",
    "robustness",
    "ood",
    "explain",
    "attack",
)
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


def _logging_state() -> dict[str, tuple]:
    loggers = {"": logging.root, **logging.root.manager.loggerDict}
    return {
        name: (logger.level, list(logger.handlers), logger.propagate, logger.disabled)
        for name, logger in loggers.items()
        if isinstance(logger, logging.Logger)
    }


def _restore_logging(state: dict[str, tuple]) -> None:
    """Puts every logger back as it was; handlers added since are closed (Hydra's file handler
    on the run's ``train.log``), loggers created since are reset to propagate to the root."""
    kept = {id(h) for _, handlers, _, _ in state.values() for h in handlers}
    loggers = {"": logging.root, **logging.root.manager.loggerDict}
    for name, logger in loggers.items():
        if not isinstance(logger, logging.Logger):
            continue
        for handler in logger.handlers:
            if id(handler) not in kept:
                handler.close()
        level, handlers, propagate, disabled = state.get(name, (logging.NOTSET, [], True, False))
        if logger.level != level:  # setLevel clears every logger's cache: only when needed
            logger.setLevel(level)
        if logger.handlers != handlers:
            logger.handlers[:] = handlers
        logger.propagate, logger.disabled = propagate, disabled


def _clear_hydra() -> None:
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None


@contextlib.contextmanager
def clean_state(seed: int = 0) -> Iterator[None]:
    """A fresh interpreter's state for the block, and the caller's state again after it."""
    environ, cwd, argv = dict(os.environ), os.getcwd(), list(sys.argv)
    handlers = {signum: signal.getsignal(signum) for signum in SIGNALS}
    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    log_state, raise_exceptions = _logging_state(), logging.raiseExceptions
    _clear_hydra()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        _clear_hydra()
        _restore_logging(log_state)
        logging.raiseExceptions = raise_exceptions  # train's main() turns it off
        os.chdir(cwd)
        sys.argv[:] = argv
        os.environ.clear()
        os.environ.update(environ)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)


def _exit_status(err: SystemExit, stderr: io.StringIO) -> int:
    """What the interpreter makes of ``SystemExit``: a message goes to stderr, with status 1."""
    if err.code is None:
        return 0
    if isinstance(err.code, int):
        return err.code
    print(err.code, file=stderr)
    return 1


def command_name(command: str) -> str:
    """``evaluate`` for ``fmnist-evaluate`` (the console script) or ``evaluate.py`` (its module
    in fmnist_lightning/cli/)."""
    name = command.removeprefix("fmnist-").removesuffix(".py")
    if name not in COMMANDS or command not in (f"fmnist-{name}", f"{name}.py"):
        raise ValueError(f"{command} is not one of the commands fmnist-{{{','.join(COMMANDS)}}}")
    return name


def command_path(command: str) -> Path:
    """What ``sys.argv[0]`` is when the shell runs ``command``: the clone's ``train.py`` for
    ``train.py``, else the console script beside this Python (``.venv/bin/fmnist-evaluate``)."""
    if command == "train.py":
        return REPO / "train.py"
    return Path(sys.executable).parent / f"fmnist-{command_name(command)}"


def run_command(command: str, *args: str, cwd: Path = REPO, env: dict[str, str] | None = None):
    """Runs ``command <args>`` in this process (``command``: ``fmnist-evaluate``, or
    ``evaluate.py``: ``command_name``); returns a ``CompletedProcess`` with its exit status,
    stdout and stderr (an uncaught exception: its traceback and status 1, as the interpreter
    prints it). ``env``: variables set for the command only."""
    main = importlib.import_module(f"fmnist_lightning.cli.{command_name(command)}").main
    stdout, stderr = io.StringIO(), io.StringIO()
    with clean_state(), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        os.environ.update(env or {})
        os.chdir(cwd)
        sys.argv[:] = [str(command_path(command)), *args]
        try:
            main()
            status = 0
        except SystemExit as err:
            status = _exit_status(err, stderr)
        except (Exception, KeyboardInterrupt):
            traceback.print_exc(file=stderr)
            status = 1
    return subprocess.CompletedProcess([command, *args], status, stdout.getvalue(), stderr.getvalue())


def train_whole_and_resumed(args: list[str], folder: Path) -> tuple[Path, Path]:
    """``train.py <args>`` for two epochs in ``folder/whole``, and for one epoch in ``folder/part`` then
    ``resume=`` to two; returns the two run folders, for a test to compare (bit-exact resume)."""
    whole, part = folder / "whole", folder / "part"
    for run, epochs in ((whole, 2), (part, 1)):
        result = run_command("train.py", *args, f"trainer.max_epochs={epochs}", f"hydra.run.dir={run}")
        assert result.returncode == 0, result.stderr[-3000:]
    result = run_command("train.py", f"resume={part}", "trainer.max_epochs=2")
    assert result.returncode == 0, result.stderr[-3000:]
    return whole, part
