"""A sweep's command-line overrides read back from its ``multirun.yaml``, which
``resume=<sweep folder>`` repeats: the rule of ``fmnist_lightning.trust.configs`` for them."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from importlib import resources
from typing import Any

from fmnist_lightning.overrides import sweep_overrides
from fmnist_lightning.trust.configs import DOCS, UntrustedConfigError, check_interpolations, check_target, nodes

#: Hydra's own settings that a sweep's saved overrides may carry into its continuation; any
#: other (its search path, logging, callbacks) would steer Hydra itself.
HYDRA_OVERRIDES = ("hydra/launcher", "hydra/sweeper", "hydra/sweeper/sampler", "hydra/sweeper/pruner")
HYDRA_OVERRIDES += ("hydra.launcher.*", "hydra.sweeper.*", "hydra.job.chdir")
#: A config option's name, as a config group override picks it (``model=three_conv``).
OPTION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def check_overrides(overrides: Sequence[str], trusted: Sequence[str] = (), what: str = "the overrides") -> None:
    """Accepts a sweep's command-line overrides read back from its ``multirun.yaml``: every
    ``_target_`` they set or hold (``check_target``), no interpolation but ``INTERPOLATION``, config
    groups picked by plain option names, and of Hydra's own settings only ``HYDRA_OVERRIDES``.

    Raises:
        UntrustedConfigError: The first override refused, with ``what`` in front.
    """
    conf = resources.files("fmnist_lightning.conf")  # the config groups' folders, conf/<group>/

    try:
        for override in sweep_overrides(overrides):
            key = override.key_or_group
            hydra_own = re.split(r"[./@]", key)[0] == "hydra"  # hydra.x, hydra/x, hydra@x, hydra itself
            if hydra_own and not any(fnmatch.fnmatchcase(key, p) for p in HYDRA_OVERRIDES):
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
    """One value of an override at ``key``: option names for a config group, else its targets and interpolations."""
    if key.startswith("hydra.launcher."):  # a launcher's settings: no commands (submitit's setup), no paths
        if not (
            value is None
            or isinstance(value, bool | int | float)
            or (isinstance(value, str) and OPTION.fullmatch(value))
        ):
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
    for inner, node in nodes(value, key):
        if isinstance(node, dict) and "_target_" in node:
            check_target(inner, node["_target_"], trusted)
        elif isinstance(node, str):
            check_interpolations(inner, node)
