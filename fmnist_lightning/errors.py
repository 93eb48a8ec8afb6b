"""The errors a user can fix, each with a message that says what was wrong and how to fix it.

Kept free of heavy imports, so that train.py can check a config before it loads Lightning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class RunError(RuntimeError):
    """A run folder or checkpoint cannot be used as asked; the message says what is missing
    or wrong."""


@dataclass(frozen=True)
class Problem:
    """One bad config value: its dotted key, the value, and what would be allowed."""

    key: str
    value: Any
    allowed: str

    def __str__(self) -> str:
        return f"{self.key}={self.value!r}: {self.allowed}"


class ConfigError(ValueError):
    """The config has bad values; ``problems`` lists each one (key, value, what is allowed)."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"invalid config ({len(problems)} problem{'s' * (len(problems) > 1)}), nothing was run:\n{lines}")
