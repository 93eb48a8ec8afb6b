"""Checks of a composed training config, run before any data is read or any folder written.

Imports only torch, Hydra and the networks (not Lightning), so train.py runs it within
seconds. Hydra already rejects unknown config groups, options and keys. What it cannot see is a value
of the right key that is of the wrong type or out of range, a class name that is not an
optimizer, a network that cannot take the image size, a monitored metric that is never
logged, or a GPU trainer on a machine without a GPU. :func:`validate_config` finds all of
those in one pass and raises one :class:`ConfigError` that lists each key, its bad value and
what is allowed, so a typo costs seconds instead of a failed overnight run.
"""

from __future__ import annotations

import numbers
from pathlib import Path
from collections.abc import Callable
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from fmnist_lightning.errors import ConfigError, Problem
from fmnist_lightning.nets import ImageTooSmallError

#: The metrics FashionMNISTClassifier logs while fitting, which callbacks may monitor
#: (``test/*`` are logged later, by the test).
FIT_METRICS = ("val/acc", "val/loss", "val/acc_best", "train/acc", "train/loss")
#: ``data.pipeline`` values (see FashionMNISTDataModule).
PIPELINES = ("batched", "per_sample")

#: ``trainer.accelerator`` values Lightning accepts.
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
#: ``trainer.precision`` values Lightning accepts (as strings).
PRECISIONS = ("64-true", "64", "32-true", "32", "16-mixed", "16", "bf16-mixed", "bf16", "16-true", "bf16-true", "transformer-engine", "transformer-engine-float16")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class _Checker:
    """Collects :class:`Problem`s for the keys of one config."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.problems: list[Problem] = []

    def get(self, key: str) -> Any:
        return OmegaConf.select(self.cfg, key, default=None)

    def has(self, key: str) -> bool:
        return OmegaConf.select(self.cfg, key, default="__missing__") != "__missing__"

    def add(self, key: str, allowed: str, value: Any = None) -> None:
        self.problems.append(Problem(key, self.get(key) if value is None else value, allowed))

    def check(self, key: str, ok: Callable[[Any], bool], allowed: str, optional: bool = False) -> None:
        """Adds a problem if ``key`` is set and ``ok(value)`` is false (``None`` passes if
        ``optional``; absent keys always pass)."""
        if not self.has(key):
            return
        value = self.get(key)
        if value is None and optional:
            return
        try:
            good = value is not None and ok(value)
        except TypeError:
            good = False
        if not good:
            self.add(key, allowed, value)

    def integer(self, key: str, minimum: int, optional: bool = False) -> None:
        self.check(key, lambda v: _is_int(v) and v >= minimum, f"an integer >= {minimum}" + (" or null" if optional else ""), optional)

    def number(self, key: str, low: float, high: float | None = None, low_open: bool = False, high_open: bool = False, optional: bool = False) -> None:
        def ok(v: Any) -> bool:
            above = v > low if low_open else v >= low
            below = high is None or (v < high if high_open else v <= high)
            return _is_number(v) and above and below

        interval = f"{'(' if low_open else '['}{low}, {high if high is not None else 'inf'}{')' if high_open or high is None else ']'}"
        self.check(key, ok, f"a number in {interval}" + (" or null" if optional else ""), optional)

    def boolean(self, key: str) -> None:
        self.check(key, lambda v: isinstance(v, bool), "true or false")

    def choice(self, key: str, allowed: tuple[str, ...]) -> None:
        self.check(key, lambda v: str(v) in allowed, f"one of {', '.join(allowed)}")

    def target(self, key: str, base: type, what: str) -> None:
        """``key`` (``<group>._target_``) must name an importable subclass of ``base``; the
        message lists the group's config files."""
        if not self.has(key):
            return
        try:
            cls = hydra.utils.get_class(self.get(key))
            good = issubclass(cls, base)
        except Exception:  # noqa: BLE001 - any import failure means "not a known class"
            good = False
        if not good:
            self.add(key, f"not a {what} class; use {_options(key.split('.')[0])} (or the import path of a {base.__module__}.{base.__qualname__} subclass)")


def _options(group: str) -> str:
    """``"group=a, group=b"`` for the config files of ``conf/<group>/``."""
    names = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / group).glob("*.yaml") if p.stem != "none")
    return ", ".join(f"{group}={n}" for n in names) or f"a {group} config"


def _check_network(c: _Checker) -> None:
    """Builds the network and runs one blank image through it at ``data.image_size``."""
    if c.problems or not c.has("model._target_"):
        return
    size, target = c.get("data.image_size"), c.get("model._target_")
    try:
        net = hydra.utils.instantiate(c.cfg.model)
        with torch.no_grad():
            shape = tuple(net.eval()(torch.zeros(1, 1, size, size)).shape)
    except Exception as err:  # noqa: BLE001 - shown to the user, whatever it is
        err = err.__cause__ or err  # Hydra wraps errors raised by the network's __init__
        if isinstance(err, ImageTooSmallError):
            c.add("data.image_size", str(err), value=size)
            return
        first_line = (str(err).strip() or type(err).__name__).splitlines()[0]
        c.add("model", f"cannot be built or run at data.image_size={size}: {first_line}", value=target)
        return
    if shape != (1, 10):
        c.add("model", f"must output (B, 10) logits, but gives shape {shape}", value=target)


def validate_config(cfg: DictConfig) -> None:
    """Checks types and ranges of every key train.py reads.

    Args:
        cfg: The composed ``conf/train.yaml``.

    Raises:
        ConfigError: Lists every bad value with its key and the allowed values.
    """
    c = _Checker(cfg)
    for group in ("data", "model", "optimizer", "trainer"):
        if not isinstance(cfg.get(group), DictConfig) or "_target_" not in cfg[group]:
            c.add(group, f"must be a config with _target_; pick one with {_options(group)}", value=cfg.get(group))
    if c.problems:
        raise ConfigError(c.problems)
    c.check("seed", _is_int, "an integer or null", optional=True)
    c.choice("optimized_metric", (*FIT_METRICS, "test/acc", "test/loss"))
    c.boolean("channels_last")
    c.boolean("compile")
    c.number("label_smoothing", 0, 1, high_open=True)

    # Optimizer and scheduler (conf/optimizer/, conf/scheduler/).
    c.target("optimizer._target_", torch.optim.Optimizer, "torch.optim optimizer")
    c.number("optimizer.lr", 0, low_open=True)
    c.number("optimizer.weight_decay", 0)
    c.number("optimizer.momentum", 0, 1, high_open=True)
    if cfg.get("scheduler"):
        c.target("scheduler._target_", torch.optim.lr_scheduler.LRScheduler, "learning-rate scheduler")
        c.integer("scheduler.T_max", 1)
        c.integer("scheduler.step_size", 1)
        c.number("scheduler.gamma", 0, 1, low_open=True)
        c.number("scheduler.eta_min", 0)

    # Data (conf/data/fashion_mnist.yaml).
    c.integer("data.batch_size", 1)
    c.integer("data.eval_batch_size", 1, optional=True)
    c.number("data.val_fraction", 0, 1, low_open=True, high_open=True)
    c.integer("data.split_seed", 0)
    c.integer("data.image_size", 1)
    c.integer("data.num_workers", 0)
    c.choice("data.pipeline", PIPELINES)
    c.number("data.augment.flip_p", 0, 1)
    c.integer("data.augment.crop_padding", 0)
    c.number("data.augment.erase_p", 0, 1)
    if cfg.data.get("normalize") is not None:
        c.number("data.normalize.mean", -1e9)
        c.number("data.normalize.std", 0, low_open=True)

    # Model (conf/model/): the network itself is built and run by _check_network below.
    c.number("model.dropout", 0, 1, high_open=True)
    vgg = str(cfg.model.get("_target_", "")).endswith("VGGBNNet")
    c.integer("model.hidden", 0 if vgg else 1)  # VGGBNNet: 0 = no hidden layer
    c.integer("model.convs_per_stage", 1)
    c.check(
        "model.widths",
        lambda v: isinstance(v, (list, ListConfig)) and len(v) > 0 and all(_is_int(w) and w >= 1 for w in v),
        "a non-empty list of channel counts >= 1, e.g. [32,64,128]",
    )
    c.boolean("model.flip_tta")
    c.boolean("model.pool_every_conv")
    c.check("model.padding", lambda v: _is_int(v) and v in (0, 1), "0 or 1")

    # Trainer (conf/trainer/).
    c.integer("trainer.max_epochs", 1)
    c.integer("trainer.min_epochs", 0, optional=True)
    if _is_int(c.get("trainer.min_epochs")) and _is_int(c.get("trainer.max_epochs")) and c.get("trainer.min_epochs") > c.get("trainer.max_epochs"):
        c.add("trainer.min_epochs", f"must not exceed trainer.max_epochs={c.get('trainer.max_epochs')}")
    c.choice("trainer.accelerator", ACCELERATORS)
    if str(c.get("trainer.accelerator")) in ("gpu", "cuda") and not torch.cuda.is_available():
        c.add("trainer.accelerator", "this machine has no CUDA GPU (torch.cuda.is_available() is False); use trainer=default (auto) or trainer=cpu")
    c.check(
        "trainer.devices",
        lambda v: v == "auto" or (_is_int(v) and (v >= 1 or v == -1)) or isinstance(v, (list, ListConfig)),
        "auto, a number of devices >= 1 (-1 = all), or a list of device indices",
    )
    c.choice("trainer.precision", PRECISIONS)
    c.integer("trainer.check_val_every_n_epoch", 1, optional=True)
    c.integer("trainer.log_every_n_steps", 1)
    c.integer("trainer.accumulate_grad_batches", 1)
    c.number("trainer.gradient_clip_val", 0, low_open=True, optional=True)
    c.check("trainer.deterministic", lambda v: isinstance(v, bool) or v == "warn", "true, false or warn")
    for limit in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
        c.check(
            f"trainer.{limit}",
            lambda v: (_is_int(v) and v >= 0) or (_is_number(v) and 0 <= v <= 1),
            "null (all batches), a fraction in [0, 1], or a number of batches >= 0",
            optional=True,
        )

    # Callbacks that watch a metric must watch one that is logged while fitting.
    for name, callback in (cfg.get("callbacks") or {}).items():
        if not isinstance(callback, DictConfig):
            continue
        if "monitor" in callback and callback.monitor is not None and callback.monitor not in FIT_METRICS:
            c.add(f"callbacks.{name}.monitor", f"is never logged while training; use one of {', '.join(FIT_METRICS)}")
        c.choice(f"callbacks.{name}.mode", ("min", "max"))
        c.integer(f"callbacks.{name}.patience", 0)
        c.check(f"callbacks.{name}.save_top_k", lambda v: _is_int(v) and v >= -1, "an integer >= -1 (-1 keeps all)")

    _check_network(c)
    if c.problems:
        raise ConfigError(c.problems)
