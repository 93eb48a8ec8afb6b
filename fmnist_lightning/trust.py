"""The one rule for a config read back from disk: it may not run code on this machine.

A run folder's ``.hydra/config.yaml``, a checkpoint's hyperparameters and a sweep's
``multirun.yaml`` overrides decide, through their ``_target_``s, which Python callables the
project imports and calls. Such a folder may come from someone else, so before anything of it
is imported, resolved or called, ``check_config`` (and ``check_overrides`` for a sweep's
overrides) accepts every ``_target_`` in it only when what the target *resolves to* is:

- a class of this project (``fmnist_lightning``, and its sweepers in
  ``hydra_plugins.fmnist_lightning_sweepers``);
- a class of torch, torchvision, torchmetrics, Lightning, Optuna or Hydra that derives from the
  base expected at its key (``BASES``: ``model`` an ``nn.Module``, ``optimizer`` an
  ``Optimizer``, ``callbacks.*`` a Lightning ``Callback``, ...);
- anything in a module the user trusts on this machine's command line (``trusted_modules``),
  never in the folder's own files.

A target is checked by what it names, not by its spelling (``torch.nn.functional.torch.load``
is ``torch.load``, a function: refused), and modules are imported for that only under the
roots above (``os.system`` is refused before ``os`` is looked at). Interpolations may refer to
other keys and to ``${hydra:...}``; every other resolver (``oc.env``, ``oc.decode``, this
project's ``fmnist.*``, which create folders) is refused. Hydra's own instantiate blocklist
(hydra-core >= 1.3.8) stays as a second line. The rule for the same class of flaw in
Lightning's hyperparameters is Lightning's own (2.6.6, PR #21832).
"""

from __future__ import annotations

import fnmatch
import inspect
import re
from collections.abc import Iterator, Sequence
from importlib import resources
from typing import Any

from fmnist_lightning.errors import RunError

#: Where the rule is explained, for the messages.
DOCS = "docs/runs.md, Sharing runs safely"
#: This project's own modules: their classes are trusted wherever a config names them.
PROJECT = ("fmnist_lightning", "hydra_plugins.fmnist_lightning_sweepers")
#: Libraries whose classes are trusted where they derive from the base expected at their key.
LIBRARIES = ("torch", "torchvision", "torchmetrics", "lightning", "optuna", "hydra", "hydra_plugins")
#: The only resolvers an interpolation read back from disk may call (``${key}`` references
#: call none): Hydra's, which saved configs use for ``output_dir``.
RESOLVERS = ("hydra",)
#: Top-level keys that Hydra never writes into a run's ``config.yaml``: with them, the file
#: would steer Hydra itself (its callbacks, launcher, search path, logging).
HYDRA_ONLY = ("hydra", "defaults")
#: A ``_target_``'s spelling: dotted Python names.
TARGET = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
#: Interpolations that call a resolver: ``${name:...}``.
RESOLVER_CALL = re.compile(r"\$\{\s*([A-Za-z_][\w.]*)\s*:")


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
    """The class a third-party target at ``key`` must derive from: the first pattern of
    ``_bases`` that matches, else any of them (a ``_target_`` nested somewhere else)."""
    bases = _bases()
    return next((base for pattern, base in bases if fnmatch.fnmatchcase(key, pattern)), tuple(b for _, b in bases))


def _under(name: str, modules: Sequence[str]) -> bool:
    """Whether module ``name`` is one of ``modules`` or inside one of them."""
    return any(name == m or name.startswith(f"{m}.") for m in modules)


def check_target(key: str, target: Any, trusted: Sequence[str] = ()) -> None:
    """Accepts ``target`` at ``key`` (``model``, ``callbacks.early_stopping``, ...) only when it
    resolves to a trusted callable (the module docstring's rule).

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
    if _under(module, trusted):
        return
    if not inspect.isclass(obj):
        raise refuse(f"it is {type(obj).__name__} {module}.{getattr(obj, '__qualname__', '?')}, not a class")
    if _under(module, PROJECT):
        return
    base = expected_base(key)
    if not issubclass(obj, base):
        names = " or ".join(b.__qualname__ for b in (base if isinstance(base, tuple) else (base,)))
        raise refuse(f"{module}.{obj.__qualname__} does not derive from {names}")


def _nodes(node: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` of every dict and string in a plain container."""
    yield key, node
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for name, child in children:
        yield from _nodes(child, f"{key}.{name}" if key else str(name))


def check_config(config: Any, trusted: Sequence[str] = (), what: str = "the config") -> None:
    """Accepts a config read back from disk: every ``_target_`` at any depth (``check_target``),
    no resolver but ``RESOLVERS`` in its interpolations, and none of Hydra's own keys
    (``HYDRA_ONLY``). Its own ``trusted_modules`` key, if any, is ignored: trust comes from
    this machine's command (``trusted``).

    Args:
        config: A ``DictConfig`` or a plain dict, unresolved.
        trusted: Modules the user trusts on this command, e.g. ``["my_research"]``.
        what: What the config is, for the message (``"the run folder ..."``).

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
            plain = {k: v for k, v in plain.items() if k != "trusted_modules"}
        for key, value in _nodes(plain):
            if isinstance(value, dict) and "_target_" in value:
                check_target(key, value["_target_"], trusted)
            elif isinstance(value, str):
                check_interpolations(key, value)
    except UntrustedConfigError as err:
        raise UntrustedConfigError(f"{what}: {err}") from None


def check_interpolations(key: str, value: str) -> None:
    """Refuses a string whose interpolations call a resolver other than ``RESOLVERS``.

    Raises:
        UntrustedConfigError: ``${oc.env:...}``, ``${oc.decode:...}``, ``${fmnist.new_dir:...}``...
    """
    for name in RESOLVER_CALL.findall(value):
        if name not in RESOLVERS:
            raise UntrustedConfigError(
                f"{key}={value!r} calls the resolver {name!r}; read back from disk, a config may only refer to its "
                f"own keys and to ${{hydra:...}} ({DOCS})"
            )


#: Hydra's own settings that a sweep's saved overrides may carry into its continuation; any
#: other (its search path, logging, callbacks) would steer Hydra itself.
HYDRA_OVERRIDES = ("hydra/launcher", "hydra/sweeper", "hydra.launcher.*", "hydra.sweeper.*", "hydra.job.chdir")
#: A config option's name, as a config group override picks it (``model=three_conv``).
OPTION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def check_overrides(overrides: Sequence[str], trusted: Sequence[str] = (), what: str = "the overrides") -> None:
    """Accepts a sweep's command-line overrides read back from disk (its ``multirun.yaml``),
    which a continued sweep repeats: every ``_target_`` they set or hold
    (``check_target``), no resolver but ``RESOLVERS``, config groups picked by plain option
    names (no paths), and of Hydra's own settings only ``HYDRA_OVERRIDES``.

    Raises:
        UntrustedConfigError: The first override refused, with ``what`` in front.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    conf = resources.files("fmnist_lightning.conf")  # the config groups' folders, conf/<group>/

    try:
        for override in OverridesParser.create().parse_overrides(list(overrides)):
            key = override.key_or_group
            if key.startswith(("hydra.", "hydra/")) and not any(fnmatch.fnmatchcase(key, p) for p in HYDRA_OVERRIDES):
                raise UntrustedConfigError(
                    f"{override.input_line} sets Hydra itself; give it on this command again if you mean it ({DOCS})"
                )
            if override.is_choice_sweep():
                values = list(override.sweep_iterator())
            else:
                values = [] if override.is_sweep_override() else [override.value()]
            group = ("/" not in key and (conf / key).is_dir()) or key.startswith("hydra/")
            for value in values:
                _check_override_value(key, value, group, trusted)
    except UntrustedConfigError as err:
        raise UntrustedConfigError(f"{what}: {err}") from None


def _check_override_value(key: str, value: Any, group: bool, trusted: Sequence[str]) -> None:
    """One value of an override at ``key``: option names for a config group, else the
    targets and interpolations it sets."""
    if key.startswith("hydra.launcher."):  # a launcher's settings: no commands (submitit's setup), no paths
        plain = (
            value is None
            or isinstance(value, bool | int | float)
            or (isinstance(value, str) and OPTION.fullmatch(value))
        )
        if not plain:
            raise UntrustedConfigError(
                f"{key}={value!r}: a launcher setting read back from disk may only be a number or a plain name; "
                f"give it on this command again if you mean it ({DOCS})"
            )
        return
    options = value if isinstance(value, list) else [value]
    if group and all(isinstance(option, str) for option in options):
        for option in options:
            if not OPTION.fullmatch(option) or ".." in option:
                raise UntrustedConfigError(f"{key}={option!r} is not the name of a config option ({DOCS})")
        return
    if key == "_target_" or key.endswith("._target_"):
        check_target(key.removesuffix("_target_").rstrip("."), value, trusted)
        return
    for inner, node in _nodes(value, key):
        if isinstance(node, dict) and "_target_" in node:
            check_target(inner, node["_target_"], trusted)
        elif isinstance(node, str):
            check_interpolations(inner, node)


def check_checkpoint(path: Any, trusted: Sequence[str] = ()) -> None:
    """Accepts a Lightning checkpoint's hyperparameters (``check_config``) before a
    LightningModule is built from them; the network's config (argument ``net``) is checked
    as the key ``model``. The file is read with ``torch.load(weights_only=True)``, which
    unpickles no code; a file-like ``path`` is rewound for the loader after.

    Raises:
        UntrustedConfigError: They name a callable that is not trusted.
    """
    import torch

    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if hasattr(path, "seek"):
        path.seek(0)
    hparams = checkpoint.get("hyper_parameters") or {} if isinstance(checkpoint, dict) else {}
    check_config({"model" if k == "net" else k: v for k, v in dict(hparams).items()}, trusted, f"the checkpoint {path}")
