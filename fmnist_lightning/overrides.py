"""Hydra's override strings (``key=value``, ``+key=value``, ``++key=value``, ``~key``, sweeps
such as ``key=a,b``): every place that reads one reads it here, with Hydra's own grammar
(``OverridesParser``), so that a value means what Hydra will make of it.

A value Hydra's grammar cannot parse as typed (``run_dir=/tmp/my run/ñ``: unquoted non-ASCII
next to a space) keeps its typed text; ``cli.hydra_argv`` quotes such path values before
Hydra parses the command line.
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
        text: As given.
        key: The key or config group, without its ``+``, ``++`` or ``~`` prefix
            (``optimizer.lr``, ``model``, ``hydra.run.dir``).
        typed: The text after the first ``=``; ``None`` without one (``~key``).
        value: The value as Hydra reads it: quotes removed, ``null`` as ``None``, lists as
            lists; the typed text for a sweep (``a,b``) and where Hydra's grammar cannot parse it.
        parsed: Whether Hydra's grammar parses ``text`` as typed.
        sweep: Whether it is a sweep (``a,b``, ``range(...)``, ``choice(...)``, ``glob(...)``).
        delete: Whether it deletes its key (``~key``).
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
    """The value of the last override that sets ``key`` in ``texts`` (``~key`` deletions set
    none), as Hydra reads it; ``None`` when none does."""
    found = None
    for override in parse_overrides(texts):
        if override.key == key and override.typed is not None and not override.delete:
            found = override.value
    return found


def sweep_overrides(texts: Sequence[str], config_loader: Any = None) -> list[Any]:
    """Hydra's own ``Override`` objects of ``texts``, for a sweeper to expand (with its
    ``config_loader``, which ``glob(...)`` over config groups needs).

    Raises:
        hydra.errors.OverrideParseException: One does not parse.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create(config_loader=config_loader) if config_loader is not None else _parser()
    return parser.parse_overrides(list(texts))


def quoted(value: str) -> str:
    """``value`` as a quoted Hydra override value, which Hydra reads back unchanged whatever
    it holds (spaces, non-ASCII letters, quotes, ``=`` or ``,``)."""
    from hydra.core.override_parser.types import Quote, QuotedString

    return QuotedString(text=value, quote=Quote.single).with_quotes()
