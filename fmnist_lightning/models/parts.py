"""The LightningModule's parts built from their configs: each seam (``loss``, ``mix``,
``metrics.<name>``) by ``build_part``, and the network, which also gets the dataset's class
count, by ``build_net``. Failures are ``PartError``s naming the part, which
``fmnist_lightning.training.build`` reports at the part's config key."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import hydra
from torch import nn

from fmnist_lightning.errors import ArgumentError, PartError


def build_part(argument: str, config: Mapping[str, Any]) -> Any:
    """Hydra-instantiates one seam of the LightningModule.

    Raises:
        PartError: It cannot be built; names ``argument`` and chains the cause.
    """
    try:
        return hydra.utils.instantiate(config)
    except Exception as err:
        raise PartError(argument) from err


def accepts(target: Any, argument: str) -> bool:
    """Whether the callable ``target`` takes a keyword ``argument`` (by name, or through
    ``**kwargs``)."""
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):  # no signature to read (some builtins): let the call decide
        return True
    return argument in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def takes_num_classes(target: str) -> bool:
    """Whether the network class ``target`` (a ``_target_``) has a ``num_classes`` argument.

    Raises:
        ImportError: ``target`` cannot be imported (Hydra's ``get_object``).
    """
    return accepts(hydra.utils.get_object(target), "num_classes")


def build_net(config: Mapping[str, Any], num_classes: int) -> nn.Module:
    """The network of ``config`` with ``num_classes`` outputs, passed as its ``num_classes``
    argument: the one way the dataset's class count (``data.num_classes``) reaches a network,
    so no model config sets it.

    A network that takes no ``num_classes`` argument is built as its config says (a run of
    an older version with a network of one's own still loads); training refuses it
    (``fmnist_lightning.models.compose.check_net``).

    Raises:
        PartError: ``net``, chaining the cause: the network cannot be built, is not an
            ``nn.Module`` (a ``_partial_`` config, say), or its config sets a ``num_classes``
            other than ``num_classes`` (``ArgumentError``).
    """
    try:
        own = config.get("num_classes")
        if own is not None and own != num_classes:
            raise ArgumentError(
                "num_classes",
                own,
                f"the network's class count comes from data.num_classes ({num_classes}); drop model.num_classes",
            )
        takes = takes_num_classes(config["_target_"])
        net = hydra.utils.instantiate(config, **({"num_classes": num_classes} if takes else {}))
        if not isinstance(net, nn.Module):
            raise TypeError(f"builds a {type(net).__name__}, not an nn.Module")
        return net
    except Exception as err:
        raise PartError("net") from err
