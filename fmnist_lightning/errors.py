"""Every error a user can fix, with a message saying what was wrong and how to fix it; the commands
print a ``UserError`` as one ``error: ...`` line, without a traceback. Kept free of heavy imports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class UserError(Exception):
    """Base of the errors below: something the user asked for cannot be done as asked."""


class ArgumentError(UserError, ValueError):
    """A constructor argument, e.g. ``"dropout"``, is out of range; whoever built the object from a config
    (``fmnist_lightning.training.build.build_run``) prefixes its key, e.g. ``model.dropout``.

    Args:
        allowed: What would be allowed, e.g. ``"a number in [0, 1)"``.
    """

    def __init__(self, argument: str, value: Any, allowed: str) -> None:
        self.argument, self.value, self.allowed = argument, value, allowed
        super().__init__(f"{argument}={value!r}: {allowed}")


def require(ok: bool, argument: str, value: Any, allowed: str) -> None:
    """Raises ``ArgumentError`` unless ``ok``: one line per checked argument.

    >>> require(0 <= 0.5 < 1, "dropout", 0.5, "a number in [0, 1)")
    """
    if not ok:
        raise ArgumentError(argument, value, allowed)


class ImageTooSmallError(ArgumentError):
    """``image_size`` leaves no pixel after a network's convolutions and pooling stages."""

    def __init__(self, image_size: int, allowed: str) -> None:
        super().__init__("image_size", image_size, allowed)


class ImageError(UserError, ValueError):
    """An image cannot be made FashionMNIST-style: blank for ``preprocess=photo``, not 28×28 for ``none``."""


class ImageTooLargeError(ImageError):
    """An image file declares more pixels than the limit (a decompression bomb), raised before decoding."""


@dataclass(frozen=True)
class Problem:
    """One bad config value: its dotted key, the value, and what would be allowed; or, with
    ``at_group``, a config group whose class (``value``) refused its arguments, and its message."""

    key: str
    value: Any
    allowed: str
    at_group: bool = False

    def __str__(self) -> str:
        if self.at_group:
            return f"{self.key} ({self.value}): {self.allowed}"
        return f"{self.key}={self.value!r}: {self.allowed}"


class ConfigError(UserError, ValueError):
    """The config has bad values; ``problems`` lists each one (key, value, what is allowed)."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        plural = "s" * (len(problems) > 1)
        super().__init__(f"invalid config ({len(problems)} problem{plural}), nothing was run:\n{lines}")


class PartError(Exception):
    """A part of an object, built from its own config, failed to build; ``argument`` names it (e.g.
    ``"loss"`` or ``"metrics.f1"``) and the cause is chained, reported at that part's config key."""

    def __init__(self, argument: str) -> None:
        self.argument = argument
        super().__init__(f"{argument} cannot be built")


class RunError(UserError, RuntimeError):
    """A run folder or checkpoint cannot be used as asked; the message says what is missing or wrong."""


class FolderInUseError(RunError):
    """Another process holds the lock of a run or sweep folder (``fmnist_lightning.run_folder``); whoever
    is refused writes nothing into that folder, not even its own failure."""


class DamagedFileError(RunError):
    """A file of a run folder that a command reads back is empty, truncated, garbled or of the wrong kind.

    Args:
        problem: What is wrong with it, e.g. ``"it is empty"``.
        fix: What to do, e.g. ``"use weights=last or weights=best"``.
    """

    def __init__(self, path: Any, problem: str, fix: str) -> None:
        self.path = path
        super().__init__(f"{path} is damaged: {problem}. {fix}")


class DatasetError(UserError, RuntimeError):
    """A dataset file is missing, truncated or corrupt; the message names it and where to get a good copy."""


class NonFiniteLossError(UserError, FloatingPointError):
    """The training loss became NaN or infinite, raised before the optimizer step; the message names the step."""


class RunInterrupted(UserError, RuntimeError):
    """Training was stopped by Ctrl-C or SIGTERM; the message says how to resume."""


class TrialPruned(Exception):
    """An Optuna search pruned this sweep job's trial (``fmnist_lightning.sweeps.pruning.OptunaPruning``):
    a result, not an error; the run stops, its ``metrics.json`` says ``pruned``, and the search goes on."""
