"""Adversarial training (``experiment=adv_pgd``, ``experiment=adv_trades``): a LightningModule whose
training steps learn from attacked images, the attacks coming from torchattacks (Kim, 2020,
arXiv:2010.01950); and the threat model's rules, shared with ``fmnist-attack``."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from fmnist_lightning.errors import UserError, require
from fmnist_lightning.models.classifier import FashionMNISTClassifier
from fmnist_lightning.models.compose import build_part

#: The threat models: ε bounds the L∞ or the L2 norm of a perturbation on the [0, 1] pixel scale.
NORMS = ("Linf", "L2")
#: How to install torchattacks: its 3.5.1 wheel pins requests~=2.25.1, which it never imports and
#: which would downgrade the requests that mkdocs-material and selenium need (docs/adversarial.md).
INSTALL = "pip install --no-deps torchattacks==3.5.1"


def torchattacks() -> Any:
    """The ``torchattacks`` module.

    Raises:
        UserError: It is not installed; says how to install it.
    """
    try:
        import torchattacks as library
    except ImportError:
        raise UserError(f"adversarial attacks need torchattacks: {INSTALL} (scripts/setup.sh does)") from None
    return library


def max_eps(norm: str, pixels: int) -> float:
    """The largest useful ε of ``norm`` for images of ``pixels`` values in [0, 1]: 1 for L∞ (any image
    is reachable), ``sqrt(pixels)`` for L2 (the distance from black to white)."""
    return 1.0 if norm == "Linf" else math.sqrt(pixels)


def check_eps(argument: str, norm: str, values: Sequence[Any], pixels: int = 784) -> list[float]:
    """The ε ``values`` of ``norm`` as floats, each finite, >= 0 and at most ``max_eps``.

    Raises:
        ArgumentError: An unknown norm or an ε out of range, named as ``argument``; an L∞ ε above 1
            asks "ε/255?", the attacks' scale being [0, 1] pixels (8/255, not 8).
    """
    require(norm in NORMS, argument, norm, f"one of the norms {', '.join(NORMS)}")
    require(isinstance(values, Sequence) and not isinstance(values, str), argument, values, "a list of numbers")
    top = max_eps(norm, pixels)
    hint = "; ε/255? The attacks work on the [0, 1] pixel scale: 8/255 is 0.0314" if norm == "Linf" else ""
    for value in values:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
        require(ok, argument, value, "finite numbers >= 0 on the [0, 1] pixel scale")
        require(value <= top, argument, value, f"at most {top:g} on the [0, 1] pixel scale{hint}")
    return [float(v) for v in values]


def check_step_size(argument: str, step_size: Any) -> None:
    """Raises ``ArgumentError`` unless ``step_size`` (a step as a multiple of eps / steps) is a finite number > 0."""
    ok = isinstance(step_size, (int, float)) and not isinstance(step_size, bool) and math.isfinite(step_size)
    require(ok and step_size > 0, argument, step_size, "a finite number > 0 (the step as a multiple of eps / steps)")


class Adversary:
    """An L∞ attack inside training steps, on batches normalised with ``normalize``: torchattacks undoes
    the normalisation, attacks on the [0, 1] scale and normalises the result
    (``Attack.set_normalization_used``), with the network in eval mode while it attacks (the library's
    default), in float32 under any autocast. Its random starts draw from torch's generator, which
    checkpoints save, so a resumed run draws what an unstopped one would.

    Args:
        eps: The L∞ bound on the [0, 1] pixel scale (0.1: the usual FashionMNIST budget).
        steps: The attack's iterations.
        step_size: The step as a multiple of ``eps / steps`` (2.5: Madry et al., 2018, appendix).
        normalize: The data's ``{"mean", "std"}`` (``${data.normalize}``), or ``None`` for unnormalised batches.

    Raises:
        ArgumentError: ``eps`` outside [0, 1], ``steps`` < 1 or ``step_size`` not a finite number > 0.
    """

    def __init__(
        self, eps: float = 0.1, steps: int = 10, step_size: float = 2.5, normalize: Mapping[str, float] | None = None
    ) -> None:
        self.eps = check_eps("eps", "Linf", [eps])[0]
        require(isinstance(steps, int) and steps >= 1, "steps", steps, "an integer >= 1")
        check_step_size("step_size", step_size)
        self.steps, self.alpha = steps, step_size * self.eps / steps
        self.normalize = dict(normalize) if normalize else None

    def attack(self, kind: Callable[..., Any], net: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The library attack ``kind`` (e.g. ``torchattacks.PGD``) of ``net`` on normalised batches, run in
        float32 whatever the trainer's autocast: in bf16, TRADES' first KL divergence (a 0.001 noise)
        rounds to zero and its attack would not move."""
        attack = kind(net, eps=self.eps, alpha=self.alpha, steps=self.steps)
        if self.normalize:
            attack.set_normalization_used(mean=[self.normalize["mean"]], std=[self.normalize["std"]])

        def run(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            with torch.autocast(images.device.type, enabled=False):
                return attack(images.float(), labels)

        return run

    def loss(
        self, forward: nn.Module, net: nn.Module, criterion: nn.Module, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean loss (a float scalar) of a batch of float ``(B, 1, H, W)`` normalised ``images`` and int64
        ``(B,)`` ``labels``, and the float ``(B, num_classes)`` logits the training metrics see; ``forward``
        is the LightningModule, ``net`` its network (attacked), ``criterion`` the run's training loss."""
        raise NotImplementedError


class PGDTraining(Adversary):
    """PGD adversarial training (Madry et al., ICLR 2018, arXiv:1706.06083, eq. 2.1): the loss of the
    images PGD (torchattacks' ``PGD``, a uniform random start) makes from each batch; the training
    metrics see those attacked images. Arguments as ``Adversary``'s."""

    def loss(self, forward, net, criterion, images, labels):
        attacked = self.attack(torchattacks().PGD, net)(images, labels)
        logits = forward(attacked)
        return criterion(logits, labels), logits


class TRADES(Adversary):
    """TRADES (Zhang et al., ICML 2019, arXiv:1901.08573, eq. 5): the loss of the clean images plus
    ``beta`` times the KL divergence of the attacked images' softmax from the clean one, the attack
    maximising that divergence (torchattacks' ``TPGD``: the paper's start, clean + 0.001·N(0, 1)); the
    training metrics see the clean images.

    Args:
        beta: The weight of the robust term (1/λ in the paper; 6.0 its CIFAR-10 choice).
        **kwargs: ``Adversary``'s arguments: ``eps``, ``steps``, ``step_size``, ``normalize``.

    Raises:
        ArgumentError: ``beta`` < 0, or as ``Adversary``.
    """

    def __init__(self, beta: float = 6.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        ok = isinstance(beta, (int, float)) and not isinstance(beta, bool) and math.isfinite(beta) and beta >= 0
        require(ok, "beta", beta, "a finite number >= 0 (the weight of the robust KL term)")
        self.beta = float(beta)

    def loss(self, forward, net, criterion, images, labels):
        attacked = self.attack(torchattacks().TPGD, net)(images, labels)
        logits, attacked_logits = forward(images), forward(attacked)
        # The paper's KLDivLoss(sum) / batch size, in float32 under bf16 autocast.
        robust = F.kl_div(attacked_logits.float().log_softmax(1), logits.float().softmax(1), reduction="batchmean")
        return criterion(logits, labels) + self.beta * robust, logits


class AdversarialClassifier(FashionMNISTClassifier):
    """``FashionMNISTClassifier`` whose training steps learn from attacked images (``adversary``);
    validation and test stay clean (``fmnist-attack`` measures robustness).

    Args:
        adversary: Config of an ``Adversary`` (``PGDTraining`` or ``TRADES``), e.g.
            ``{"_target_": "fmnist_lightning.models.adversarial.PGDTraining", "eps": 0.1}``.
        *args: ``FashionMNISTClassifier``'s positional arguments.
        **kwargs: ``FashionMNISTClassifier``'s keyword arguments.

    Raises:
        ArgumentError: ``mix`` is set: the attacks need hard labels.
        PartError: The adversary cannot be built (``module.adversary``).
    """

    def __init__(self, *args: Any, adversary: Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        require(self.mix is None, "mix", self.hparams.mix, "none (mix=none): adversarial training attacks hard labels")
        self.adversary: Adversary = build_part("module.adversary", adversary)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit":
            torchattacks()  # missing: one clear line before the first epoch, not at its first step

    def training_loss(self, images: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.adversary.loss(self, self.net, self.train_criterion, images, target)
