"""The declared constraints of the third-party arguments that the shipped configs set: the
optimizer's (``conf/optimizer/``), the scheduler's (``conf/scheduler/``), the loss's
(``conf/loss/cross_entropy.yaml``) and the Trainer's (``conf/trainer/``). Each group's values
are validated (pydantic) before it is built, so a bad value is refused by the key the
declaration names, with its rule, and before any data is read. The project's own classes
declare theirs where the argument is (``errors.require``, ``ArgumentError``).

Sources of the rules: ``torch.optim.Adam``/``SGD`` (``lr``, ``eps``, ``weight_decay``,
``momentum`` at least 0; ``betas`` in [0, 1)), ``torch.optim.lr_scheduler`` (``StepLR``,
``CosineAnnealingLR``, ``OneCycleLR``: ``total_steps`` positive, ``pct_start`` in [0, 1]),
``torch.nn.CrossEntropyLoss`` (``label_smoothing`` in [0, 1]) and ``lightning.pytorch.Trainer``
(its documented ``precision`` values and limits). An argument declared nowhere is checked
by its own constructor; its error is then reported at its group (``build.blame``).
"""

from __future__ import annotations

import inspect
import pydoc
import re
from typing import Annotated, Any, Literal

import torch
from omegaconf import DictConfig, OmegaConf
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from fmnist_lightning.errors import Problem

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
    """Refuses a GPU accelerator on a machine without one (Lightning's own message names
    only the accelerator's class)."""
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
    declared rules, each at its key (an interpolated value at the key it comes from:
    ``scheduler.T_max`` of ``${trainer.max_epochs}`` is ``trainer.max_epochs``); groups
    without a problem are left out."""
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
                problem = _problem(group, node, values, error)
                first.setdefault(problem.key, problem)
            found[group] = list(first.values())
    return found


def _problem(group: str, node: DictConfig, values: dict[str, Any], error: dict[str, Any]) -> Problem:
    """One pydantic error as a ``Problem`` at its config key."""
    name = str(error["loc"][0])
    hint = default_hint(node, name)
    message = lower(str(error["msg"])) + (f" ({hint})" if hint else "")
    return problem_at(node, f"{group}.{name}", name, values.get(name), message)


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
