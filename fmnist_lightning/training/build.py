"""Building a run's objects from its config, once, with every bad value reported by its key.

This is the pre-flight check and the construction in one: :func:`build_run` builds the
network (inside the LightningModule), the DataModule (without reading data), the optimizer
over the network's parameters, the scheduler, the callbacks, the loggers and the Trainer, as
their own constructors (and Lightning's argument parsing) accept them. The run then uses
these very objects. There is no second checker: objects check their own arguments, and this
module only says which config key a failure belongs to.

- An :class:`~fmnist_lightning.errors.ArgumentError` names its argument; the key is the
  config node it was built from plus that argument (``model.dropout``), or, where the value
  is an interpolation such as ``${data.image_size}``, the key it comes from.
- Any other constructor error (a network of your own, torch, Lightning) is matched to the
  argument its message names (``Precision '8' is invalid`` → ``trainer.precision``) or whose
  value it mentions, else to the node's ``_target_``.
- A value that the constructor accepted but that contradicts the constructor's type
  annotations (``data.batch_size=1.5`` for ``batch_size: int``) is reported too
  (checked with typeguard against the signature).
"""

from __future__ import annotations

import inspect
import logging
import pydoc
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import hydra
import lightning as L
from hydra.errors import InstantiationException
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf
from typeguard import TypeCheckError, check_type

from fmnist_lightning.data import FashionMNISTDataModule
from fmnist_lightning.errors import ArgumentError, ConfigError, Problem
from fmnist_lightning.models import FashionMNISTClassifier
from fmnist_lightning.training.processes import launch_strategy

#: Where the config groups' option files are: ``conf/<group>/*.yaml``, packaged as
#: ``fmnist_lightning.conf`` (the same files in a clone and in an installed wheel).
CONF_DIR = resources.files("fmnist_lightning.conf")
#: Config keys that are Hydra's instructions, not constructor arguments.
HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")


@dataclass
class Run:
    """The objects of one run, built from its config."""

    datamodule: FashionMNISTDataModule
    model: FashionMNISTClassifier
    trainer: L.Trainer


def options(group: str) -> str:
    """``"group=a, group=b"`` for the option files of ``conf/<group>/``."""
    files = (CONF_DIR / group).iterdir() if (CONF_DIR / group).is_dir() else ()
    names = sorted(f.name.removesuffix(".yaml") for f in files if f.name.endswith(".yaml") and f.name != "none.yaml")
    return ", ".join(f"{group}={n}" for n in names) or f"a {group} config"


def _first_line(err: BaseException) -> str:
    return (str(err).strip() or type(err).__name__).splitlines()[0]


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _type_problems(key: str, node: DictConfig, target: Any = None) -> list[Problem]:
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


def _blame(key: str, node: Any, err: BaseException, target: Any = None) -> Problem:
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
    types = _type_problems(full_key, node, target)
    if types:
        return Problem(types[0].key, types[0].value, f"{types[0].allowed} ({message})")
    unimportable = isinstance(innermost, ImportError) or "Error locating target" in str(err)
    what = "cannot be imported" if unimportable else f"cannot be built: {message}"
    return Problem(
        f"{full_key}._target_", node.get("_target_"), f"{what}{fix} (or the import path of a class of your own)"
    )


class _Builder:
    """Builds objects from config nodes, collecting a :class:`Problem` for each failure."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.problems: list[Problem] = []

    def attempt(self, key: str, build: Callable[[], Any], node: Any = None) -> Any:
        """``build()``, or ``None`` after recording the problem; then checks the types of
        ``node``'s arguments, which the constructor may have accepted silently."""
        node = OmegaConf.select(self.cfg, key) if node is None else node
        try:
            built = build()
        except Exception as err:
            self.problems.append(_blame(key, node, err))
            return None
        if isinstance(node, DictConfig) and "_target_" in node:
            self.problems += _type_problems(key, node)
        return built

    def instantiate(self, key: str, **kwargs: Any) -> Any:
        node = OmegaConf.select(self.cfg, key)
        if not isinstance(node, DictConfig) or "_target_" not in node:
            fix = "or null (off)" if "." in key else f"pick one with {options(key)}"
            self.problems.append(Problem(key, node, f"must be a config with _target_ {fix}"))
            return None
        return self.attempt(key, lambda: hydra.utils.instantiate(node, **kwargs), node)

    def group(self, name: str) -> dict[str, Any]:
        """Every entry of a group such as ``callbacks`` or ``logger``; ``null`` ones are off."""
        built = {}
        for entry, node in (self.cfg.get(name) or {}).items():
            if node is not None:
                built[entry] = self.instantiate(f"{name}.{entry}")
        return {k: v for k, v in built.items() if v is not None}


def _build_model(b: _Builder) -> FashionMNISTClassifier | None:
    """The LightningModule, which builds the network of ``model``; its own arguments are the
    top-level keys ``channels_last``, ``label_smoothing`` and ``compile``."""
    cfg = b.cfg
    if "_target_" not in cfg.model:
        return b.instantiate("model")
    module_args = OmegaConf.create({k: cfg.get(k) for k in ("channels_last", "label_smoothing", "compile") if k in cfg})
    try:
        model = FashionMNISTClassifier(
            net=OmegaConf.to_container(cfg.model, resolve=True),
            optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True) if cfg.get("optimizer") else None,
            scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True) if cfg.get("scheduler") else None,
            **OmegaConf.to_container(module_args),
        )
    except InstantiationException as err:  # the network's own constructor failed
        b.problems.append(_blame("model", cfg.model, err))
        model = None
    except Exception as err:
        b.problems.append(_blame("", module_args, err, FashionMNISTClassifier))
        return None
    b.problems += _type_problems("model", cfg.model) + _type_problems("", module_args, FashionMNISTClassifier)
    return model


def build_run(cfg: DictConfig, extra_callbacks: list[Callback] = (), extra_loggers: list[Logger] = ()) -> Run:
    """Builds every object of a run from ``cfg``, reading no data and writing no file.

    The seed is set first (``seed``), so the network's initial weights follow it. Nothing is
    logged meanwhile (Lightning's INFO lines included), so a refusal adds no line to a run
    folder's ``train.log``.

    Args:
        cfg: The composed ``conf/train.yaml``.
        extra_callbacks: Callbacks added after those of ``cfg.callbacks``.
        extra_loggers: Loggers added after those of ``cfg.logger``.

    Returns:
        The DataModule, the LightningModule (with its optimizer and scheduler built) and
        the Trainer.

    Raises:
        ConfigError: Every value that could not be used, each with its key, its value and
            what went wrong (all at once).
    """
    strategy = launch_strategy(cfg)  # says so when it replaces ddp, which a user should see
    # Quiet: a refused resume must not add a line to the earlier run's train.log.
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)
    try:
        return _build_run(cfg, extra_callbacks, extra_loggers, strategy)
    finally:
        logging.disable(previous)


def _build_run(cfg: DictConfig, extra_callbacks: list[Callback], extra_loggers: list[Logger], strategy: Any) -> Run:
    b = _Builder(cfg)
    seed = cfg.get("seed")
    if seed is not None:
        wrong_type = _type_problems("", OmegaConf.create({"seed": seed}), L.seed_everything)
        b.problems += wrong_type
        if not wrong_type:
            b.attempt("seed", lambda: L.seed_everything(seed, workers=True), seed)
    datamodule = b.instantiate("data")
    model = _build_model(b) if isinstance(cfg.get("model"), DictConfig) else b.instantiate("model")
    if model is not None:
        b.attempt("optimizer", model.build_optimizer)
        if b.cfg.get("scheduler"):
            b.attempt("scheduler", model.build_scheduler)
    else:  # they cannot be built without the network's parameters; their types can be checked
        for key in ("optimizer", "scheduler"):
            if isinstance(cfg.get(key), DictConfig) and "_target_" in cfg[key]:
                b.problems += _type_problems(key, cfg[key])
    callbacks = b.group("callbacks")
    fit_metrics = FashionMNISTClassifier.FIT_METRICS
    for name, callback in callbacks.items():
        monitor = getattr(callback, "monitor", None)
        if monitor is not None and monitor not in fit_metrics:
            b.problems.append(
                Problem(
                    f"callbacks.{name}.monitor",
                    monitor,
                    f"is never logged while training; use one of {', '.join(fit_metrics)}",
                )
            )
    metric = cfg.get("optimized_metric")
    if metric is not None and metric not in (*fit_metrics, *FashionMNISTClassifier.TEST_METRICS):
        b.problems.append(
            Problem(
                "optimized_metric", metric, f"use one of {', '.join(fit_metrics + FashionMNISTClassifier.TEST_METRICS)}"
            )
        )
    loggers = [*b.group("logger").values(), *extra_loggers]
    trainer = b.instantiate(
        "trainer", callbacks=[*callbacks.values(), *extra_callbacks], logger=loggers or False, strategy=strategy
    )
    if b.problems:
        raise ConfigError(b.problems)
    return Run(datamodule, model, trainer)
