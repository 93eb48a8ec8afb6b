"""The one rule for a config read back from disk (a run's config, a checkpoint's hyperparameters,
a sweep's overrides): it may not run code on this machine. Before anything of it is imported,
resolved or called, every ``_target_`` must *resolve to* (not merely be spelled as) a class of this
project (``PROJECT``), a class of ``LIBRARIES`` deriving from the base expected at its key
(``_bases``; for a search's sampler and pruner one of ``EXACT``), or anything in a module trusted on
this machine's command line (``trusted_modules``). Modules are imported for the check only under
these roots. Interpolations may refer to other keys and to ``${hydra:...}``; every other resolver
is refused. Hydra's instantiate blocklist (hydra-core >= 1.3.8) and Lightning's own rule (2.6.6,
PR #21832) stay as a second line.
"""

from __future__ import annotations

import fnmatch
import inspect
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from fmnist_lightning.errors import RunError

#: Keys where a base class is not enough: the Optuna samplers and pruners allowed by name (some
#: others, CmaEsSampler among them, unpickle state stored in the study, which a continued
#: search reads from its folder).
EXACT = {
    "hydra.sweeper.sampler": (
        "optuna.samplers.TPESampler",
        "optuna.samplers.RandomSampler",
        "optuna.samplers.GridSampler",
        "optuna.samplers.QMCSampler",
        "optuna.samplers.NSGAIISampler",
    ),
    "hydra.sweeper.pruner": (
        "optuna.pruners.NopPruner",
        "optuna.pruners.MedianPruner",
        "optuna.pruners.PercentilePruner",
        "optuna.pruners.SuccessiveHalvingPruner",
        "optuna.pruners.HyperbandPruner",
        "optuna.pruners.ThresholdPruner",
    ),
}
#: Where the rule is explained, for the messages.
DOCS = "docs/runs.md, Sharing runs safely"
#: This project's own modules: their classes are trusted wherever a config names them.
PROJECT = ("fmnist_lightning", "hydra_plugins.fmnist_lightning_sweepers")
#: Libraries whose classes are trusted where they derive from the base expected at their key.
LIBRARIES = ("torch", "torchvision", "torchmetrics", "lightning", "optuna", "hydra", "hydra_plugins")
#: The config key of the modules a command trusts: the command's own, never a saved config's.
TRUST_KEY = "trusted_modules"
#: Top-level keys that Hydra never writes into a run's ``config.yaml``: with them, the file
#: would steer Hydra itself (its callbacks, launcher, search path, logging).
HYDRA_ONLY = ("hydra", "defaults")
#: A ``_target_``'s spelling: dotted Python names.
TARGET = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
#: What may follow ``${`` in a string read back from disk: a plain reference to another key
#: (``${data.image_size}``, ``${.sibling}``) or Hydra's resolver. Anything else, a resolver
#: name built from another interpolation (``${oc.${n}:...}``) included, is refused.
INTERPOLATION = re.compile(r"\s*(?:[\w.\[\]-]*\s*\}|hydra\s*:)")


class UntrustedConfigError(RunError):
    """A config read back from disk names a callable this machine does not trust; raised
    before it is imported or called."""


def _bases() -> list[tuple[str, type]]:
    """``(key pattern, base class)``: what a third-party class must derive from at a key
    (``fnmatch`` patterns over dotted keys, first match wins); imported when first needed."""
    import lightning as L
    import optuna
    import torch
    import torchmetrics
    from hydra.experimental.callback import Callback as HydraCallback
    from hydra.plugins.launcher import Launcher
    from hydra.plugins.sweeper import Sweeper
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.loggers import Logger
    from lightning.pytorch.profilers import Profiler

    return [
        ("model", torch.nn.Module),
        ("model.*", torch.nn.Module),
        ("loss", torch.nn.Module),
        ("loss.*", torch.nn.Module),
        ("mix", torch.nn.Module),
        ("metrics.*", torchmetrics.Metric),
        ("optimizer", torch.optim.Optimizer),
        ("scheduler", torch.optim.lr_scheduler.LRScheduler),
        ("callbacks.*", Callback),
        ("logger.*", Logger),
        ("data", L.LightningDataModule),
        ("data.augment.*", torch.nn.Module),
        ("trainer", L.Trainer),
        ("trainer.profiler", Profiler),
        ("module", L.LightningModule),
        ("hydra.callbacks.*", HydraCallback),
        ("hydra.launcher", Launcher),
        ("hydra.sweeper", Sweeper),
        ("hydra.sweeper.sampler", optuna.samplers.BaseSampler),
        ("hydra.sweeper.pruner", optuna.pruners.BasePruner),
    ]


def expected_base(key: str) -> type | tuple[type, ...]:
    """The class a third-party target at ``key`` must derive from: the first of ``_bases`` that
    matches, else any of them."""
    bases = _bases()
    return next((base for pattern, base in bases if fnmatch.fnmatchcase(key, pattern)), tuple(b for _, b in bases))


def _under(name: str, modules: Sequence[str]) -> bool:
    """Whether module ``name`` is one of ``modules`` or inside one of them."""
    return any(name == m or name.startswith(f"{m}.") for m in modules)


def check_target(key: str, target: Any, trusted: Sequence[str] = ()) -> None:
    """Accepts ``target`` at ``key`` (``model``, ``callbacks.early_stopping``, ...) only when it
    resolves to a trusted callable.

    Raises:
        UntrustedConfigError: It does not; nothing outside the trusted roots was imported.
    """
    where = f"{key}._target_={target!r}" if key else f"_target_={target!r}"
    trusted = [str(m) for m in trusted]

    def refuse(why: str) -> UntrustedConfigError:
        return UntrustedConfigError(
            f"{where}: {why}. A run folder, checkpoint or sweep read back from disk may only name this project's "
            "classes, or classes of torch, torchvision, torchmetrics, Lightning, Optuna or Hydra of the kind its key "
            "expects; if it is a module of your own, trust it on this command with trusted_modules=[<module>] "
            f"({DOCS})"
        )

    if not isinstance(target, str) or not TARGET.fullmatch(target):
        raise refuse("not a dotted Python name")
    if any(part.startswith("_") for part in target.split(".")):
        raise refuse("it names a private or special attribute")
    if not _under(target, (*PROJECT, *LIBRARIES, *trusted)):
        raise refuse(f"{target.split('.')[0]} is not a library this project trusts, so it is not imported")
    from hydra.utils import get_object

    try:
        obj = get_object(target)
    except Exception as err:
        raise refuse(f"it cannot be imported ({type(err).__name__})") from None
    module = getattr(obj, "__module__", None) or ""
    if not _under(module, trusted):
        _check_kind(key, obj, module, refuse)


def _check_kind(key: str, obj: Any, module: str, refuse: Callable[[str], UntrustedConfigError]) -> None:
    """Accepts ``obj`` at ``key``: a class of this project, one of ``EXACT[key]``, or of ``expected_base(key)``."""
    if not inspect.isclass(obj):
        raise refuse(f"it is {type(obj).__name__} {module}.{getattr(obj, '__qualname__', '?')}, not a class")
    if _under(module, PROJECT):
        return
    if key in EXACT:
        from hydra.utils import get_object

        if not any(obj is get_object(name) for name in EXACT[key]):
            raise refuse(f"{module}.{obj.__qualname__} is not one of {', '.join(EXACT[key])}")
        return
    base = expected_base(key)
    if not issubclass(obj, base):
        names = " or ".join(b.__qualname__ for b in (base if isinstance(base, tuple) else (base,)))
        raise refuse(f"{module}.{obj.__qualname__} does not derive from {names}")


def nodes(node: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` of every dict and string in a plain container."""
    yield key, node
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list | tuple) else ()
    for name, child in children:
        yield from nodes(child, f"{key}.{name}" if key else str(name))


def check_config(config: Any, trusted: Sequence[str] = (), what: str = "the config", targets: bool = True) -> None:
    """Accepts a config read back from disk: every ``_target_`` at any depth (``check_target``),
    no interpolation but those of ``INTERPOLATION``, and none of ``HYDRA_ONLY``; its own
    ``trusted_modules`` key is ignored.

    Args:
        config: A ``DictConfig`` or a plain dict, unresolved.
        trusted: Modules the user trusts on this command, e.g. ``["my_research"]``.
        what: What the config is, for the message (``"the run folder ..."``).
        targets: ``False`` checks only its interpolations and Hydra's keys.

    Raises:
        UntrustedConfigError: The first thing refused, with ``what`` in front.
    """
    from omegaconf import DictConfig, OmegaConf

    plain = OmegaConf.to_container(config, resolve=False) if isinstance(config, DictConfig) else config
    try:
        if isinstance(plain, dict):
            own = [key for key in HYDRA_ONLY if key in plain]
            if own:
                raise UntrustedConfigError(
                    f"it has a top-level {own[0]!r}, which Hydra never writes into a run's config and which would "
                    f"steer Hydra itself ({DOCS})"
                )
            plain = {k: v for k, v in plain.items() if k != TRUST_KEY}
        for key, value in nodes(plain):
            if targets and isinstance(value, dict) and "_target_" in value:
                check_target(key, value["_target_"], trusted)
            elif isinstance(value, str):
                check_interpolations(key, value)
    except UntrustedConfigError as err:
        raise UntrustedConfigError(f"{what}: {err}") from None


def check_interpolations(key: str, value: str) -> None:
    """Refuses a string with an interpolation other than a plain reference or Hydra's resolver.

    Raises:
        UntrustedConfigError: ``${oc.env:...}``, ``${oc.decode:...}``, ``${fmnist.new_dir:...}``...
    """
    for start in (m.end() for m in re.finditer(r"\$\{", value)):
        if not INTERPOLATION.match(value, start):
            name = re.match(r"\s*([^:}]*)", value[start:]).group(1)
            raise UntrustedConfigError(
                f"{key}={value!r} calls the resolver {name!r}; read back from disk, a config may only refer to its "
                f"own keys and to ${{hydra:...}} ({DOCS})"
            )


def check_checkpoint(path: Any, trusted: Sequence[str] = ()) -> None:
    """Accepts a Lightning checkpoint's hyperparameters (``check_config``; ``net`` checked as
    ``model``) before a LightningModule is built from them. The file is read with
    ``torch.load(weights_only=True)``; a file-like ``path`` is rewound after.

    Raises:
        UntrustedConfigError: They name a callable that is not trusted.
    """
    import torch
    from lightning.pytorch.core.saving import CHECKPOINT_PAST_HPARAMS_KEYS

    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if hasattr(path, "seek"):
        path.seek(0)

    for key in (*CHECKPOINT_PAST_HPARAMS_KEYS, "hyper_parameters"):  # each one Lightning reads, on its own
        hparams = checkpoint.get(key) if isinstance(checkpoint, dict) else None
        if isinstance(hparams, dict):
            named = {"model" if k == "net" else k: v for k, v in hparams.items()}
            check_config(named, trusted, f"the checkpoint {path} ({key})")
