"""The LightningModule of a run config: its class (``module._target_``) and its arguments, each built from
its own config group; the one place mapping config keys to them, for training and for finished runs."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from fmnist_lightning.errors import ArgumentError, PartError, require

#: The LightningModule's arguments that are configs of their own, and their config keys.
PART_KEYS = {
    "net": "model",
    "loss": "loss",
    "mix": "mix",
    "metrics": "metrics",
    "optimizer": "optimizer",
    "scheduler": "scheduler",
}
#: Top-level config keys that are arguments of the LightningModule for training only (speed).
SPEED_KEYS = ("channels_last", "compile")


def module_class(cfg: DictConfig) -> type[L.LightningModule]:
    """The class ``module._target_`` names (``FashionMNISTClassifier`` or a subclass).

    Raises:
        ImportError, ValueError: It cannot be imported (Hydra's ``get_class``).
        ArgumentError: It is not a LightningModule (argument ``_target_``).
    """
    cls = hydra.utils.get_class(cfg.module._target_)
    require(issubclass(cls, L.LightningModule), "_target_", cfg.module._target_, "is not a LightningModule")
    return cls


def module_arguments(cfg: DictConfig, training: bool = True) -> dict[str, Any]:
    """The keyword arguments of ``module_class(cfg)``, as plain values and dicts.

    Args:
        cfg: A composed ``conf/train.yaml``, or a run's saved config.
        training: ``False``: evaluation only, no optimizer, scheduler, channels_last or compile.
    """

    def plain(key: str) -> Any:
        node = cfg.get(key)
        return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) and node else None

    arguments = {argument: plain(key) for argument, key in PART_KEYS.items()}
    arguments["num_classes"] = cfg.data.num_classes
    arguments["image_size"] = cfg.data.image_size
    if training:
        arguments.update({key: cfg[key] for key in SPEED_KEYS if key in cfg})
    else:
        arguments.update(optimizer=None, scheduler=None)
    own = OmegaConf.to_container(cfg.module, resolve=True)
    arguments.update({k: v for k, v in own.items() if k != "_target_"})
    return arguments


def check_net(module: Any, image_size: int) -> None:
    """Checks, before any data is read, that the network's class has a ``num_classes`` argument and maps
    two blank float32 ``(2, 1, image_size, image_size)`` images to ``(2, num_classes)`` logits; in eval
    mode, ``no_grad``, ``fork_rng`` and eager, leaving weights, statistics and generators as they were.

    Raises:
        PartError: ``net``, chaining an ``ArgumentError`` at ``_target_`` (no
            ``num_classes`` argument) or ``num_classes`` (the output width differs), or the
            forward pass's own error.
    """
    num_classes = int(module.hparams.num_classes)
    target = module.hparams.net["_target_"]
    try:
        if not takes_num_classes(target):
            raise ArgumentError(
                "_target_",
                target,
                "takes no num_classes argument; give its __init__ one (num_classes: int) and size its last "
                "layer with it: the class count comes from data.num_classes (docs/configuration.md, A network)",
            )
        training = module.training
        module.eval()
        try:
            with torch.random.fork_rng(devices=[]), torch.no_grad(), torch.compiler.set_stance("force_eager"):
                logits = module(torch.zeros(2, 1, image_size, image_size))
        finally:
            module.train(training)
        if logits.dim() != 2 or logits.shape[0] != 2:
            raise TypeError(f"returns logits of shape {tuple(logits.shape)} for 2 images; (2, num_classes) expected")
        if logits.shape[1] != num_classes:
            width = logits.shape[1]
            raise ArgumentError(
                "num_classes",
                width,
                f"the network outputs {width} logits per image, but data.num_classes={num_classes}; its last "
                "layer must have num_classes outputs (the num_classes argument it is given)",
            )
    except Exception as err:
        raise PartError("net") from err


def check_parts(module: Any) -> None:
    """Calls the training loss, and the mix (``mix_batch``), once on two blank images under ``fork_rng``, so an
    argument their calls refuse (``CrossEntropyLoss(label_smoothing=1.5)``) is found before any data is read.

    Raises:
        PartError: ``loss`` or ``mix`` failed; the cause is chained.
    """
    labels = torch.arange(2) % int(module.hparams.num_classes)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        try:
            _, mixed = module.mix_batch(torch.zeros(2, 1, 8, 8), labels)
        except Exception as err:
            raise PartError("mix") from err
        try:
            for target in (labels,) if mixed is labels else (labels, mixed):
                module.train_criterion(torch.zeros(2, int(module.hparams.num_classes)), target)
        except Exception as err:
            raise PartError("loss") from err


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
    """Whether the callable ``target`` takes a keyword ``argument`` (by name, or through ``**kwargs``)."""
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
    """The network of ``config`` given ``num_classes`` (``data.num_classes``; no model config sets it) as its
    argument; one without that argument is built as its config says, and training refuses it (``check_net``).

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
