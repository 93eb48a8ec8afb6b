"""Which config key a failure belongs to: the blame half of ``fmnist_lightning.training.build``.

- An ``ArgumentError`` names its argument; the key is the
  config node it was built from plus that argument (``model.dropout``), or, where the value
  is an interpolation such as ``${data.image_size}``, the key it comes from.
- Any other constructor error (a network of your own, torch, Lightning) is matched to the
  argument its message names (``Precision '8' is invalid`` → ``trainer.precision``) or whose
  value it mentions, else to the node's ``_target_``, with the config group's options.
- A value that the constructor accepted but that contradicts the constructor's type
  annotations (``data.batch_size=1.5`` for ``batch_size: int``) is reported too
  (checked with typeguard against the signature).
- A key that is no argument of the constructor (``trainer.max_epoch``) is reported by
  ``unknown_arguments`` before anything is built, with the closest argument's name.
"""

from __future__ import annotations

import difflib
import inspect
import pydoc
import re
import typing
from importlib import resources
from typing import Any

from omegaconf import DictConfig, OmegaConf
from typeguard import TypeCheckError, check_type

from fmnist_lightning.errors import ArgumentError, Problem

#: Where the config groups' option files are: ``conf/<group>/*.yaml``, packaged as
#: ``fmnist_lightning.conf`` (the same files in a clone and in an installed wheel).
CONF_DIR = resources.files("fmnist_lightning.conf")
#: Config keys that are Hydra's instructions, not constructor arguments.
HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")


def options(group: str) -> str:
    """``"group=a, group=b"`` for the option files of ``conf/<group>/``."""
    files = (CONF_DIR / group).iterdir() if (CONF_DIR / group).is_dir() else ()
    names = sorted(f.name.removesuffix(".yaml") for f in files if f.name.endswith(".yaml") and f.name != "none.yaml")
    return ", ".join(f"{group}={n}" for n in names) or f"a {group} config"


def _first_line(err: BaseException) -> str:
    return (str(err).strip() or type(err).__name__).splitlines()[0]


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def unknown_arguments(key: str, node: DictConfig) -> list[Problem]:
    """The keys of ``node`` (at ``key``) that are no argument of its ``_target_``'s
    constructor, each with the closest argument name (``difflib.get_close_matches``), e.g.
    ``trainer.max_epoch=3: not an argument of lightning.pytorch.Trainer; did you mean
    trainer.max_epochs?``. The source of the rule is the constructor's own signature
    (``inspect.signature``); none is reported for a constructor that takes ``**kwargs``, or
    whose target cannot be imported (``blame`` reports that when it is built)."""
    target = node.get("_target_")
    try:
        parameters = inspect.signature(pydoc.locate(str(target))).parameters
    except (TypeError, ValueError):
        return []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return []
    names = [n for n, p in parameters.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    values = OmegaConf.to_container(node, resolve=False)
    problems = []
    for name, value in values.items():
        if name in HYDRA_KEYS or name in names:
            continue
        close = difflib.get_close_matches(str(name), names, n=1)
        hint = f"did you mean {_join(key, close[0])}?" if close else f"its arguments are {', '.join(names)}"
        problems.append(Problem(_join(key, str(name)), value, f"not an argument of {target}; {hint}"))
    return problems


def type_problems(key: str, node: DictConfig, target: Any = None) -> list[Problem]:
    """The arguments of ``node`` whose values contradict the annotations of its target
    (``node._target_``, or ``target``)."""
    try:
        target = target or pydoc.locate(node._target_)
        hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    except Exception:
        return []
    values = OmegaConf.to_container(node, resolve=True)
    problems = []
    for name, value in values.items():
        nested = isinstance(value, dict) and "_target_" in str(value)  # built by Hydra, checked on its own
        if name in HYDRA_KEYS or name not in hints or nested:
            continue
        try:
            check_type(value, hints[name])
        except TypeCheckError:
            expected = (
                hints[name].__name__ if isinstance(hints[name], type) else str(hints[name]).replace("typing.", "")
            )
            problems.append(_problem_at(node, _join(key, name), name, value, f"must be of type {expected}"))
    return problems


def _problem_at(node: DictConfig, key: str, name: str, value: Any, allowed: str) -> Problem:
    """A problem of argument ``name`` of ``node``; reported at the key an interpolated value
    comes from (``model.image_size: ${data.image_size}`` → ``data.image_size``)."""
    if name in node and OmegaConf.is_interpolation(node, name):
        raw = OmegaConf.to_container(node, resolve=False)[name]
        match = re.fullmatch(r"\$\{([\w.]+)\}", str(raw))
        if match:
            key = match.group(1)
    return Problem(key, value, allowed)


def _default(node: DictConfig, name: str, target: Any = None) -> str:
    """``"the default of <target>: <value>"`` for argument ``name``, or ``""``: a known good
    value to suggest where the constructor's own message names none."""
    try:
        target = target or pydoc.locate(node._target_)
        default = inspect.signature(target).parameters[name].default
    except Exception:
        return ""
    if default is inspect.Parameter.empty or default is None:
        return ""
    return f"the default of {node.get('_target_') or target.__qualname__}: {default!r}"


def blame(key: str, node: Any, err: BaseException, target: Any = None) -> Problem:
    """The config key that ``err``, raised while building ``node`` (at ``key``; ``""`` for
    top-level keys, whose constructor is ``target``), belongs to."""
    chain, cause = [], err
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    full_key = next((m.group(1) for e in chain if (m := re.search(r"full_key: (\S+)", str(e)))), key)
    if full_key != key and isinstance(node, DictConfig):  # a nested object, e.g. data.augment.flip
        node = OmegaConf.select(node, full_key.removeprefix(f"{key}."))
    argument = next((e for e in chain if isinstance(e, ArgumentError)), None)
    if argument is not None and isinstance(node, DictConfig):
        return _problem_at(
            node, _join(full_key, argument.argument), argument.argument, argument.value, argument.allowed
        )
    innermost = chain[-1]
    message = _first_line(innermost)
    if not isinstance(node, DictConfig):
        return Problem(key, node, message)
    arguments = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k not in HYDRA_KEYS}

    def position(pattern: str) -> int:
        found = re.search(rf"(?<![\w.]){re.escape(pattern)}(?![\w])", message)
        return found.start() if found else len(message) + 1

    group = full_key.split(".")[0]
    fix = f"; use {options(group)}" if (CONF_DIR / group).is_dir() else ""
    if (
        isinstance(innermost, TypeError) and "unexpected keyword argument" in message
    ):  # a class that takes other arguments
        return Problem(
            f"{full_key}._target_", node.get("_target_"), f"{message}{fix} (or a class that takes these arguments)"
        )
    named = sorted((position(name), name) for name in arguments)
    mentioned = sorted(
        (position(str(v)), name) for name, v in arguments.items() if len(str(v)) > 1 and not isinstance(v, dict)
    )
    for candidates in (named, mentioned):  # the argument the message names, else the one whose value it quotes
        if candidates and candidates[0][0] <= len(message):
            name = candidates[0][1]
            hint = _default(node, name, target)
            return _problem_at(
                node, _join(full_key, name), name, arguments[name], f"{message}{' (' + hint + ')' if hint else ''}"
            )
    types = type_problems(full_key, node, target)
    if types:
        return Problem(types[0].key, types[0].value, f"{types[0].allowed} ({message})")
    unimportable = isinstance(innermost, ImportError) or "Error locating target" in str(err)
    what = "cannot be imported" if unimportable else f"cannot be built: {message}"
    return Problem(
        f"{full_key}._target_", node.get("_target_"), f"{what}{fix} (or the import path of a class of your own)"
    )
