"""Hydra's override strings (``key=value``, ``+key=value``, ``++key=value``, ``~key``, ``key=a,b``): every
place that reads one reads it here, with Hydra's own ``OverridesParser``. A value the grammar cannot
parse (``run_dir=/tmp/my run/ñ``) keeps its typed text; ``cli.hydra_argv`` quotes such paths.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Override:
    """One override, as Hydra reads it.

    Attributes:
        key: The key or config group, without its ``+``, ``++`` or ``~`` prefix.
        typed: The text after the first ``=``; ``None`` without one (``~key``).
        value: The value as Hydra reads it (``null`` as ``None``, lists as lists); the typed text
            for a sweep and where Hydra's grammar cannot parse it.
        sweep: Whether it is a sweep (``a,b``, ``range(...)``, ``choice(...)``, ``glob(...)``).
    """

    text: str
    key: str
    typed: str | None
    value: Any
    parsed: bool
    sweep: bool = False
    delete: bool = False


@functools.cache
def _parser() -> Any:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def parse_override(text: str) -> Override:
    """``text`` read by Hydra's ``OverridesParser``; see ``Override``."""
    from hydra.errors import HydraException

    key, sep, typed = text.lstrip("+~").partition("=")
    typed_or_none = typed if sep else None
    try:
        parsed = _parser().parse_override(text)
    except HydraException:
        return Override(text, key, typed_or_none, typed_or_none, parsed=False, delete=text.startswith("~"))
    sweep = parsed.is_sweep_override()
    value = typed_or_none if sweep else parsed.value()
    return Override(text, parsed.get_key_element().lstrip("+~"), typed_or_none, value, True, sweep, parsed.is_delete())


def parse_overrides(texts: Sequence[str]) -> list[Override]:
    """Each of ``texts`` read by ``parse_override`` (flags such as ``-m`` are the callers' to drop)."""
    return [parse_override(text) for text in texts]


def key_of(text: str) -> str:
    """The key of an override (``+model.dropout=0.3`` → ``model.dropout``)."""
    return parse_override(text).key


def value_of(texts: Sequence[str], key: str) -> Any:
    """The value of the last override that sets ``key`` in ``texts`` (not ``~key``), or ``None``."""
    found = None
    for override in parse_overrides(texts):
        if override.key == key and override.typed is not None and not override.delete:
            found = override.value
    return found


def sweep_overrides(texts: Sequence[str], config_loader: Any = None) -> list[Any]:
    """Hydra's own ``Override`` objects of ``texts`` for a sweeper (``config_loader``: for ``glob(...)``).

    Raises:
        hydra.errors.OverrideParseException: One does not parse.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create(config_loader=config_loader) if config_loader is not None else _parser()
    return parser.parse_overrides(list(texts))


def quoted(value: str) -> str:
    """``value`` quoted so that Hydra reads it back unchanged (spaces, non-ASCII, quotes, ``=``, ``,``)."""
    from hydra.core.override_parser.types import Quote, QuotedString

    return QuotedString(text=value, quote=Quote.single).with_quotes()
