"""Building a run's objects from its config, once, with every bad value reported by its key.

``build_run`` builds the network, the DataModule (reading no data), the optimizer, the
scheduler, the callbacks, the loggers and the Trainer as their own constructors accept them;
the run then uses these very objects. The shipped configs' third-party arguments have declared
rules (the pydantic models below), checked first; ``blame`` names the key of any other failure.
Sources of the rules: ``torch.optim.Adam``/``SGD`` (``lr``, ``eps``, ``weight_decay``,
``momentum`` at least 0; ``betas`` in [0, 1)), ``torch.optim.lr_scheduler`` (``StepLR``,
``CosineAnnealingLR``, ``OneCycleLR``: ``total_steps`` positive, ``pct_start`` in [0, 1]),
``torch.nn.CrossEntropyLoss`` (``label_smoothing`` in [0, 1]) and ``lightning.pytorch.Trainer``
(its documented ``precision`` values and limits).
"""

from __future__ import annotations

import difflib
import inspect
import logging
import pydoc
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Annotated, Any, Literal

import hydra
import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from typeguard import TypeCheckError, check_type

from fmnist_lightning.errors import ArgumentError, ConfigError, PartError, Problem
from fmnist_lightning.models.compose import (
    PART_KEYS,
    SPEED_KEYS,
    check_net,
    check_parts,
    module_arguments,
    module_class,
)
from fmnist_lightning.training.checkpoint_io import AtomicCheckpointIO
from fmnist_lightning.training.precision import resolve_precision
from fmnist_lightning.training.processes import launch_strategy

#: The stages whose logged keys callbacks and sweeps may use.
STAGES = ("train", "val", "test")


@dataclass
class Run:
    """The objects of one run, built from its config."""

    datamodule: L.LightningDataModule
    model: L.LightningModule
    trainer: L.Trainer
    #: Why ``trainer.precision=auto`` became the Trainer's precision; ``None`` when it was set.
    precision_reason: str | None = None


class _Builder:
    """Builds objects from config nodes, collecting a ``Problem`` for each failure."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.problems: list[Problem] = []

    def attempt(self, key: str, build: Callable[[], Any], node: Any = None) -> Any:
        """``build()``, or ``None`` after recording the problem; then checks ``node``'s types."""
        node = OmegaConf.select(self.cfg, key) if node is None else node
        try:
            built = build()
        except Exception as err:
            self.problems.append(blame(key, node, err))
            return None
        if isinstance(node, DictConfig) and "_target_" in node:
            self.problems += type_problems(key, node)
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
        entries = self.cfg.get(name) or {}
        built = {entry: self.instantiate(f"{name}.{entry}") for entry, node in entries.items() if node is not None}
        return {k: v for k, v in built.items() if v is not None}


def _build_model(b: _Builder) -> L.LightningModule | None:
    """The LightningModule (``module._target_``) with its parts, checked on a blank batch."""
    cfg = b.cfg
    if "_target_" not in cfg.model:
        return b.instantiate("model")
    if not isinstance(cfg.data.get("num_classes"), int):  # reported by the DataModule's own check
        return None
    try:
        cls = module_class(cfg)
    except Exception as err:
        b.problems.append(blame("module", cfg.get("module"), err))
        return None
    speed = OmegaConf.create({k: cfg.get(k) for k in SPEED_KEYS if k in cfg})
    try:
        model = cls(**module_arguments(cfg))
        check_net(model, cfg.data.image_size)
        check_parts(model)
    except PartError as err:  # a part's own constructor (or call) failed: blamed at its key
        first, _, rest = err.argument.partition(".")
        key = ".".join(filter(None, (PART_KEYS.get(first, first), rest)))
        b.problems.append(blame(key, OmegaConf.select(cfg, key), err.__cause__ or err))
        return None
    except Exception as err:  # the module's own arguments: those of module, else the speed keys
        problem = blame("module", cfg.module, err, cls)
        b.problems.append(problem if not problem.key.endswith("_target_") else blame("", speed, err, cls))
        return None
    parts = [("model", cfg.model), ("loss", cfg.get("loss")), ("mix", cfg.get("mix"))]
    parts += [(f"metrics.{k}", v) for k, v in (cfg.get("metrics") or {}).items()]
    for key, node in parts:
        if isinstance(node, DictConfig) and "_target_" in node:
            b.problems += type_problems(key, node)
    b.problems += type_problems("module", cfg.module, cls) + type_problems("", speed, cls)
    return model


def _unlogged_keys(metric: str | None, callbacks: dict[str, Callback], logged: dict[str, list[str]]) -> list[Problem]:
    """The callbacks' ``monitor`` keys and the ``optimized_metric`` the module never logs."""
    fitting = [*logged["train"], *logged["val"]]
    problems = [
        Problem(
            f"callbacks.{name}.monitor", monitor, f"is never logged while training; use one of {', '.join(fitting)}"
        )
        for name, callback in callbacks.items()
        if (monitor := getattr(callback, "monitor", None)) is not None and monitor not in fitting
    ]
    if metric is not None and metric not in (*fitting, *logged["test"]):
        problems.append(Problem("optimized_metric", metric, f"use one of {', '.join((*fitting, *logged['test']))}"))
    return problems


def build_run(cfg: DictConfig, extra_callbacks: list[Callback] = (), extra_loggers: list[Logger] = ()) -> Run:
    """Builds every object of a run from the composed ``conf/train.yaml``, seeded first,
    reading no data, writing no file and logging nothing; ``trainer.precision=auto`` is
    replaced in ``cfg`` by this machine's choice (``training.precision``).

    Raises:
        ConfigError: Every value that could not be used, each with its key, its value and
            what went wrong, all at once.
    """
    strategy = launch_strategy(cfg.trainer)  # says so when it replaces ddp, which a user should see
    # Quiet: a refused resume adds no line to the earlier run's train.log.
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
        wrong_type = type_problems("", OmegaConf.create({"seed": seed}), L.seed_everything)
        b.problems += wrong_type
        if not wrong_type:
            b.attempt("seed", lambda: L.seed_everything(seed, workers=True), seed)
    declared = declared_problems(cfg)  # the declared rules of third-party arguments
    b.problems += [problem for problems in declared.values() for problem in problems]
    datamodule = b.instantiate("data")
    model = _build_model(b) if isinstance(cfg.get("model"), DictConfig) else b.instantiate("model")
    if model is not None and "optimizer" not in declared:
        b.attempt("optimizer", model.build_optimizer)
        if b.cfg.get("scheduler") and "scheduler" not in declared:
            b.attempt("scheduler", model.build_scheduler)
    else:  # they cannot be built without the network's parameters; their types can be checked
        for key in ("optimizer", "scheduler"):
            if isinstance(cfg.get(key), DictConfig) and "_target_" in cfg[key]:
                b.problems += type_problems(key, cfg[key])
    callbacks = b.group("callbacks")
    if hasattr(model, "logged_keys"):  # unknown when the module failed, or has no such method
        b.problems += _unlogged_keys(
            cfg.get("optimized_metric"), callbacks, {stage: model.logged_keys(stage) for stage in STAGES}
        )
    loggers = [*b.group("logger").values(), *extra_loggers]
    precision_reason = resolve_precision(cfg)  # trainer.precision=auto: this machine's choice, into cfg
    # A key that is no Trainer argument (trainer.max_epoch) is refused by name; no Trainer is built.
    unknown = unknown_arguments("trainer", cfg.trainer) if isinstance(cfg.get("trainer"), DictConfig) else []
    b.problems += unknown
    trainer = None
    if not unknown and "trainer" not in declared:
        trainer = b.instantiate(
            "trainer",
            callbacks=[*callbacks.values(), *extra_callbacks],
            logger=loggers or False,
            strategy=strategy,
            plugins=[AtomicCheckpointIO()],  # no half-written checkpoint under its final name
        )
    problems = [p for p in b.problems if not (p.at_group and p.key in declared)]  # said by its declared rule
    order = list(cfg)  # in the config's order, whichever check found them
    problems.sort(key=lambda p: order.index(p.key.split(".")[0]) if p.key.split(".")[0] in order else len(order))
    if problems:
        raise ConfigError(problems)
    return Run(datamodule, model, trainer, precision_reason)


#: The config groups' option files, ``conf/<group>/*.yaml`` (packaged as ``fmnist_lightning.conf``).
CONF_DIR = resources.files("fmnist_lightning.conf")
#: Config keys that are Hydra's instructions, not constructor arguments.
HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")


def options(group: str) -> str:
    """``"group=a, group=b"`` for the option files of ``conf/<group>/``."""
    files = (CONF_DIR / group).iterdir() if (CONF_DIR / group).is_dir() else ()
    names = sorted(f.name.removesuffix(".yaml") for f in files if f.name.endswith(".yaml") and f.name != "none.yaml")
    return ", ".join(f"{group}={n}" for n in names) or f"a {group} config"


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def unknown_arguments(key: str, node: DictConfig) -> list[Problem]:
    """The keys of ``node`` (at ``key``) that are no argument of its ``_target_``'s constructor
    (``inspect.signature``; none for one that takes ``**kwargs`` or cannot be imported), each
    with the closest argument name (``difflib.get_close_matches``)."""
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
    """The arguments of ``node`` that contradict the annotations of ``target`` (else ``_target_``)."""
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


def blame(key: str, node: Any, err: BaseException, target: Any = None) -> Problem:
    """The config key that ``err``, raised while building ``node`` (at ``key``; ``""`` for
    top-level keys, whose constructor is ``target``), belongs to: a pydantic ``ValidationError``
    or an ``ArgumentError`` at its argument (in a nested node, or where an interpolation comes
    from), a wrong type at its key, an unimportable target at ``<key>._target_``, anything
    else at its group."""
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
    message = (str(innermost).strip() or type(innermost).__name__).splitlines()[0]
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


def _unimportable(key: str, node: DictConfig) -> tuple[str, str] | None:
    """``(key, target)`` of the first ``_target_`` in ``node`` or below that cannot be imported."""
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
    """``(key, node)`` of ``node`` or the first nested config that holds ``argument`` with its value."""
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


NonNegative = Annotated[float, Field(ge=0)]
Positive = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
Count = Annotated[int, Field(ge=0)]
#: A limit on batches: a count, or a fraction of the epoch (Lightning's ``limit_*_batches``).
BatchLimit = Annotated[int, Field(ge=0)] | Annotated[float, Field(ge=0, le=1)] | None


class _Group(BaseModel):
    """Declared arguments of one config group; the others pass (``extra="allow"``)."""

    model_config = ConfigDict(extra="allow", strict=False)


class Optimizer(_Group):
    lr: NonNegative | None = None
    weight_decay: NonNegative | None = None
    momentum: NonNegative | None = None
    eps: NonNegative | None = None
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] | None = None
    nesterov: bool | None = None
    fused: bool | None = None


class Scheduler(_Group):
    T_max: Annotated[int, Field(ge=1)] | None = None
    eta_min: NonNegative | None = None
    step_size: Annotated[int, Field(ge=1)] | None = None
    gamma: Positive | None = None
    max_lr: Positive | None = None
    total_steps: Annotated[int, Field(ge=1)] | None = None
    pct_start: Fraction | None = None
    div_factor: Positive | None = None
    final_div_factor: Positive | None = None


class Loss(_Group):
    label_smoothing: Fraction | None = None


def _accelerator_present(value: str | None) -> str | None:
    """Refuses a GPU accelerator on a machine without one."""
    if value in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ValueError("this machine has no CUDA GPU; use trainer=cpu, or trainer.accelerator=auto")
    return value


#: ``lightning.pytorch.Trainer``'s ``precision`` values (Lightning 2.6 docs, "N-Bit Precision"),
#: and the project's ``auto`` (``training.precision``).
PRECISIONS = Literal[
    "auto", "64-true", "64", 64, "32-true", "32", 32, "16-true", "16-mixed", "16", 16,
    "bf16-true", "bf16-mixed", "bf16", "transformer-engine", "transformer-engine-float16",
]  # fmt: skip


class Trainer(_Group):
    accelerator: Annotated[str | None, AfterValidator(_accelerator_present)] = None
    precision: PRECISIONS | None = None
    max_epochs: Annotated[int, Field(ge=-1)] | None = None
    min_epochs: Count | None = None
    max_steps: Annotated[int, Field(ge=-1)] = -1
    min_steps: Count | None = None
    check_val_every_n_epoch: Annotated[int, Field(ge=1)] | None = None
    log_every_n_steps: Count | None = None
    accumulate_grad_batches: Annotated[int, Field(ge=1)] = 1
    gradient_clip_val: NonNegative | None = None
    gradient_clip_algorithm: Literal["norm", "value"] | None = None
    num_sanity_val_steps: Annotated[int, Field(ge=-1)] | None = None
    limit_train_batches: BatchLimit = None
    limit_val_batches: BatchLimit = None
    limit_test_batches: BatchLimit = None
    limit_predict_batches: BatchLimit = None
    num_nodes: Annotated[int, Field(ge=1)] = 1


#: The schema of each config group that has one.
SCHEMAS: dict[str, type[_Group]] = {"optimizer": Optimizer, "scheduler": Scheduler, "loss": Loss, "trainer": Trainer}


def declared_problems(cfg: DictConfig) -> dict[str, list[Problem]]:
    """``group → problems`` of ``cfg``'s groups (``SCHEMAS``) whose values break their
    declared rules, each at its key (an interpolated value at the key it comes from)."""
    found: dict[str, list[Problem]] = {}
    for group, schema in SCHEMAS.items():
        node = cfg.get(group)
        if not isinstance(node, DictConfig):
            continue
        values = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if not str(k).startswith("_")}
        try:
            schema.model_validate(values)
        except ValidationError as err:
            first: dict[str, Problem] = {}
            for error in err.errors(include_url=False):  # one per key: a union reports each of its branches
                name = str(error["loc"][0])
                hint = default_hint(node, name)
                message = lower(str(error["msg"])) + (f" ({hint})" if hint else "")
                problem = problem_at(node, f"{group}.{name}", name, values.get(name), message)
                first.setdefault(problem.key, problem)
            found[group] = list(first.values())
    return found


def problem_at(node: DictConfig, key: str, name: str, value: Any, allowed: str) -> Problem:
    """A problem of argument ``name`` of ``node``; reported at the key an interpolated value
    comes from (``model.image_size: ${data.image_size}`` → ``data.image_size``)."""
    if name in node and OmegaConf.is_interpolation(node, name):
        raw = OmegaConf.to_container(node, resolve=False)[name]
        match = re.fullmatch(r"\$\{([\w.]+)\}", str(raw))
        if match:
            key = match.group(1)
    return Problem(key, value, allowed)


def default_hint(node: DictConfig, name: str) -> str:
    """``"the default of <target>: <value>"`` for argument ``name`` of ``node``'s target, or ``""``."""
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
