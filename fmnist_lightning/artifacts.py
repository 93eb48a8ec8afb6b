"""Reading back a run folder's files, and writing those rewritten while a run goes on.

Every file a command reads back from a run folder goes through one of these readers, which raise
``DamagedFileError`` for an empty, truncated, garbled or wrong-kind file (a missing one is the
caller's business). ``write_atomically`` and ``atomic_file`` replace a file whole.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from fmnist_lightning.errors import DamagedFileError


def _text(path: Path, fix: str) -> str:
    """The file's text; one without a final line break was cut short, even where the rest parses."""
    data = path.read_bytes()
    if not data.strip():
        raise DamagedFileError(path, "it is empty", fix)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise DamagedFileError(path, "it is not text (not UTF-8)", fix) from None
    if not text.endswith("\n"):
        raise DamagedFileError(
            path, "it ends in the middle of a line, so it was cut short (if you edited it, end it with a newline)", fix
        )
    return text


def read_json(path: Path, fix: str) -> dict[str, Any]:
    """A JSON object (``dict``) from ``path``.

    Raises:
        DamagedFileError: The file is empty, not JSON, or not a JSON object.
    """
    try:
        value = json.loads(_text(path, fix))
    except json.JSONDecodeError as err:
        raise DamagedFileError(path, f"it is not valid JSON ({err.msg} at line {err.lineno})", fix) from None
    if not isinstance(value, dict):
        raise DamagedFileError(path, f"it holds a JSON {type(value).__name__}, not an object", fix)
    return value


def read_yaml(path: Path, kind: type, fix: str) -> Any:
    """A YAML document of type ``kind`` (``dict`` or ``list``) from ``path``.

    Raises:
        DamagedFileError: The file is empty, not YAML, or its document is not a ``kind``.
    """
    import yaml

    try:
        value = yaml.safe_load(_text(path, fix))
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise DamagedFileError(path, f"it is not valid YAML{line}", fix) from None
    if not isinstance(value, kind):
        expected = "a mapping" if kind is dict else "a list"
        raise DamagedFileError(path, f"it holds {type(value).__name__} where {expected} belongs", fix)
    return value


def read_csv(path: Path, columns: tuple[str, ...], fix: str) -> list[dict[str, str]]:
    """The rows of a CSV file with a header that has ``columns``.

    Raises:
        DamagedFileError: The file is empty, not text, or its header lacks a column.
    """
    rows = csv.DictReader(io.StringIO(_text(path, fix), newline=""))
    missing = [c for c in columns if c not in (rows.fieldnames or [])]
    if missing:
        raise DamagedFileError(path, f"its header has no {', '.join(missing)} column", fix)
    return list(rows)


def load_tensors(path: Path, fix: str, mmap: bool = False) -> Any:
    """What ``torch.save`` wrote to ``path``, loaded on the CPU with ``weights_only=True``.

    Raises:
        DamagedFileError: The file is empty, truncated, or not something torch saved.
    """
    import torch

    if path.stat().st_size == 0:
        raise DamagedFileError(path, "it is empty", fix)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # EOFError, RuntimeError, UnpicklingError, ...: all mean unreadable
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise DamagedFileError(path, f"torch cannot load it ({first})", fix) from None


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A binary temporary file beside ``path``, renamed over it (mode 0644) when the ``with`` block ends and
    removed if it raises: readers, or a process killed mid-write, see the old file or the new, never a mix.

    Raises:
        OSError: The folder is not writable or the disk is full (``path`` is then unchanged).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as file:
            yield file
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename is None:  # a write() failed: name the file
            err.filename = str(path)
        raise


def write_atomically(path: Path, data: str | bytes | memoryview) -> None:
    """Writes ``data`` (text as UTF-8, or bytes) to ``path`` through ``atomic_file``.

    Raises:
        OSError: The folder is not writable or the disk is full (``path`` is then unchanged).
    """
    with atomic_file(path) as file:
        file.write(data.encode() if isinstance(data, str) else data)
