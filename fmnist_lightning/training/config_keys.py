"""Which config key a failure belongs to, from what is declared (``blame``):

- An ``ArgumentError`` names its argument; the key is the
  config node it was built from plus that argument (``model.dropout``), or, where the value
  is an interpolation such as ``${data.image_size}``, the key it comes from.
- The third-party arguments of the shipped configs have declared rules, checked before they
  are built (``training.schema``); any other constructor error (a network of your own, torch,
  Lightning) is reported at its group, with its message.
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
from pydantic import ValidationError
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
            problems.append(problem_at(node, _join(key, name), name, value, f"must be of type {expected}"))
    return problems


def problem_at(node: DictConfig, key: str, name: str, value: Any, allowed: str) -> Problem:
    """A problem of argument ``name`` of ``node``; reported at the key an interpolated value
    comes from (``model.image_size: ${data.image_size}`` → ``data.image_size``)."""
    if name in node and OmegaConf.is_interpolation(node, name):
        raw = OmegaConf.to_container(node, resolve=False)[name]
        match = re.fullmatch(r"\$\{([\w.]+)\}", str(raw))
        if match:
            key = match.group(1)
    return Problem(key, value, allowed)


def blame(key: str, node: Any, err: BaseException, target: Any = None) -> Problem:
    """The config key that ``err``, raised while building ``node`` (at ``key``; ``""`` for
    top-level keys, whose constructor is ``target``), belongs to, from what is declared:

    - an ``ArgumentError`` (the project's own classes declare their arguments' rules, see
      ``errors.require``) names its argument: the key is the node's, or that of the nested
      node holding the argument (``data.augment.flip.p``), or where an interpolated value
      comes from;
    - a value that contradicts the constructor's type annotations is reported at its key
      (``type_problems``);
    - a target that cannot be imported is reported at ``<key>._target_``, with the group's
      options;
    - any other error (a third-party constructor's, on an argument without a declared rule:
      see ``training.schema``) is reported at its group, with its message:
      ``optimizer (torch.optim.Adam): ...``.
    """
    chain, cause = [], err
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    declared = next((e for e in chain if isinstance(e, ValidationError)), None)
    if declared is not None and isinstance(node, DictConfig):  # pydantic's validate_call, at the argument
        error = declared.errors(include_url=False)[0]
        name = str(error["loc"][0]) if error["loc"] else ""
        value = error.get("input")
        return problem_at(node, _join(key, name), name, value, lower(str(error["msg"])))
    argument = next((e for e in chain if isinstance(e, ArgumentError)), None)
    if argument is not None and isinstance(node, DictConfig):
        where, holder = _holder(key, node, argument) or (key, node)
        return problem_at(holder, _join(where, argument.argument), argument.argument, argument.value, argument.allowed)
    innermost = chain[-1]
    message = _first_line(innermost)
    if not isinstance(node, DictConfig):
        return Problem(key, node, message)
    types = type_problems(key, node, target)
    if types:
        return Problem(types[0].key, types[0].value, f"{types[0].allowed} ({message})")
    group = key.split(".")[0]
    fix = f"; use {options(group)}" if (CONF_DIR / group).is_dir() else ""
    what = node.get("_target_") or getattr(target, "__qualname__", None)
    if any(isinstance(e, ImportError) for e in chain):
        where, what = _unimportable(key, node) or (key, what)
        return Problem(
            f"{where}._target_", what, f"cannot be imported{fix} (or the import path of a class of your own)"
        )
    if isinstance(innermost, TypeError) and unknown_arguments(key, node):  # a class that takes other arguments
        return Problem(f"{key}._target_", what, f"{message}{fix} (or a class that takes these arguments)")
    return Problem(key or "module", what, message, at_group=True)


def default_hint(node: DictConfig, name: str) -> str:
    """``"the default of <target>: <value>"`` for argument ``name`` of ``node``'s target (its
    signature), or ``""``: a known good value to suggest beside a rule."""
    try:
        default = inspect.signature(pydoc.locate(str(node.get("_target_")))).parameters[name].default
    except Exception:
        return ""
    if default is inspect.Parameter.empty or default is None:
        return ""
    return f"the default of {node.get('_target_')}: {default!r}"


def lower(message: str) -> str:
    """A validator's message as the rest of a line: ``Input should be ...`` → ``input should be ...``."""
    message = message.removeprefix("Value error, ")
    return message[:1].lower() + message[1:]


def _unimportable(key: str, node: DictConfig) -> tuple[str, str] | None:
    """``(key, target)`` of the first ``_target_`` in ``node`` or its nested configs that
    cannot be imported (``data.augment.flip`` for ``torch.nn.Flipp``); ``None`` if all can."""
    from hydra.utils import get_object

    target = node.get("_target_")
    if isinstance(target, str):
        try:
            get_object(target)
        except Exception:
            return key, target
    for name, child in node.items():
        found = _unimportable(_join(key, str(name)), child) if isinstance(child, DictConfig) else None
        if found is not None:
            return found
    return None


def _holder(key: str, node: DictConfig, argument: ArgumentError) -> tuple[str, DictConfig] | None:
    """``(key, node)`` of the config that holds ``argument``'s argument with its value:
    ``node`` itself, else the first nested config that does (``data.augment.noise`` for
    ``std=-1``, not ``data.normalize``, whose ``std`` is another); ``None`` if none."""
    name = argument.argument
    if name in node and _same(node, name, argument.value):
        return key, node
    for child_name, child in node.items():
        found = _holder(_join(key, str(child_name)), child, argument) if isinstance(child, DictConfig) else None
        if found is not None:
            return found
    return None


def _same(node: DictConfig, name: str, value: Any) -> bool:
    """Whether ``node.<name>`` resolves to ``value`` (an unresolvable one counts as the same)."""
    try:
        held = OmegaConf.to_container(node, resolve=True).get(name)
    except Exception:
        return True
    return held == value or str(held) == str(value)
