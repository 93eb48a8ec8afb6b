"""Adversarial attacks of a trained network, all from torchattacks (Kim, 2020, arXiv:2010.01950):
FGSM, PGD with restarts, and AutoAttack's standard version, each run as a sequence of the
library's attacks on the images still classified correctly."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.transforms.v2 import functional as TF

from fmnist_lightning.errors import require
from fmnist_lightning.models.adversarial import check_eps, check_step_size, torchattacks

#: The attacks of ``fmnist-attack``, and the norms each supports.
ATTACKS = {"fgsm": ("Linf",), "pgd": ("Linf", "L2"), "autoattack": ("Linf", "L2")}
#: AutoAttack's standard version as the reference implementation runs it (fra31/auto-attack,
#: ``version='standard'``): iterations of APGD-CE, APGD-T and FAB-T, Square's queries, restarts;
#: APGD-T and FAB-T aim at every class but the true one (9 on FashionMNIST).
AUTOATTACK = {"version": "standard", "iterations": 100, "square_queries": 5000, "restarts": 1}


def check_eps_lists(eps: Mapping[str, Sequence[float]], pixels: int) -> dict[str, list[float]]:
    """``{norm: [ε, ...]}`` as sorted floats without repeats, each list checked by ``models.adversarial.check_eps``.

    Raises:
        ArgumentError: Not a mapping, an unknown norm, or an ε out of range.
    """
    require(isinstance(eps, Mapping), "eps", eps, "a mapping {Linf: [...], L2: [...]} of ε lists")
    checked = {
        norm: check_eps(f"eps.{norm}", norm, [v] if isinstance(v, (int, float)) else v, pixels)
        for norm, v in eps.items()
    }
    return {norm: sorted(set(values)) for norm, values in checked.items()}


class PixelNetwork(nn.Module):
    """The whole network an attack sees: float ``(B, 1, H, W)`` images on the [0, 1] pixel scale →
    the run's resize and normalisation (``preprocess``) → ``net`` → float ``(B, num_classes)`` logits."""

    def __init__(self, preprocess: nn.Module, net: nn.Module) -> None:
        super().__init__()
        self.preprocess = preprocess
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.preprocess(x))


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, 1, H, W)`` → float32 on the [0, 1] scale, as the run's preprocessing scales them."""
    return TF.to_dtype(images, torch.float32, scale=True)


@dataclass(frozen=True)
class Attack:
    """One attack at one ε: which library attacks run, in order, on the images still correct.

    Args:
        name: One of ``ATTACKS``.
        norm: ``Linf`` or ``L2``.
        eps: The perturbation's bound on the [0, 1] pixel scale.
        steps: PGD's iterations.
        restarts: PGD's random starts, each on the images the earlier ones did not fool.
        step_size: PGD's step as a multiple of ``eps / steps`` (2.5: Madry et al., 2018, appendix).
    """

    name: str
    norm: str
    eps: float
    steps: int = 20
    restarts: int = 1
    step_size: float = 2.5
    stage_names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        names = {"fgsm": ("FGSM",), "pgd": tuple(f"PGD-{self.steps} restart {r + 1}" for r in range(self.restarts))}
        names["autoattack"] = ("APGD-CE", "APGD-T", "FAB-T", "Square")
        object.__setattr__(self, "stage_names", names[self.name])

    @property
    def label(self) -> str:
        """E.g. ``PGD-20 ×5 L∞``."""
        kind = {"fgsm": "FGSM", "pgd": f"PGD-{self.steps}", "autoattack": "AutoAttack"}[self.name]
        restarts = f" ×{self.restarts}" if self.name == "pgd" and self.restarts > 1 else ""
        return f"{kind}{restarts} {'L∞' if self.norm == 'Linf' else 'L2'}"

    def stages(self, model: nn.Module, seeds: Sequence[int], num_classes: int) -> list[Any]:
        """The library's attacks of ``model`` (an ``nn.Module`` on [0, 1] images), one per stage; AutoAttack's
        four take ``seeds[i]`` (they reseed torch's generators themselves).

        PGD's step is ``step_size · eps / steps``, with a uniform random start. AutoAttack's standard
        version is composed from the library's parts with the parameters of the reference
        implementation (Croce & Hein, ICML 2020; fra31/auto-attack, ``version='standard'``): APGD-CE and
        APGD-T (9 target classes) with 100 iterations, FAB-T (9 targets, 100 iterations) and Square
        (5,000 queries, no rescaled schedule), one restart each. torchattacks' own ``AutoAttack`` runs 10
        iterations and Square's rescaled schedule (its issues #164, #188, #196).
        """
        ta = torchattacks()
        if self.name == "fgsm":
            return [ta.FGSM(model, eps=self.eps)]
        if self.name == "pgd":
            alpha = self.step_size * self.eps / self.steps
            cls = ta.PGD if self.norm == "Linf" else ta.PGDL2
            return [
                cls(model, eps=self.eps, alpha=alpha, steps=self.steps, random_start=True) for _ in range(self.restarts)
            ]
        common = {"norm": self.norm, "eps": self.eps, "n_restarts": AUTOATTACK["restarts"]}
        return [
            ta.APGD(model, steps=AUTOATTACK["iterations"], loss="ce", seed=seeds[0], **common),
            ta.APGDT(model, steps=AUTOATTACK["iterations"], n_classes=num_classes, seed=seeds[1], **common),
            ta.FAB(
                model,
                steps=AUTOATTACK["iterations"],
                multi_targeted=True,
                n_classes=num_classes,
                seed=seeds[2],
                **common,
            ),
            ta.Square(
                model, n_queries=AUTOATTACK["square_queries"], p_init=0.8, resc_schedule=False, seed=seeds[3], **common
            ),
        ]


def stage_seed(seed: int, batch: int, stage: int) -> int:
    """The seed of torch's generator for one stage of one batch, from NumPy's ``SeedSequence``: a
    stage's draws do not depend on how many stages follow, so fewer restarts are a subset of more."""
    return int(np.random.SeedSequence([seed, batch, stage]).generate_state(1)[0])


@dataclass
class Outcome:
    """What an attack left of N images.

    Attributes:
        correct: bool ``(N,)``: still classified correctly (clean and after every stage).
        adversarial: float ``(K, 1, H, W)`` [0, 1] images of the first K of N (clean where no stage fooled it).
        predicted: int64 ``(K,)`` the predictions on ``adversarial``.
        after_stage: Correct images after each stage, a non-increasing list of ints.
        seconds: Wall-clock time of the attack.
    """

    correct: torch.Tensor
    adversarial: torch.Tensor
    predicted: torch.Tensor
    after_stage: list[int]
    seconds: float = 0.0


def check_threat_model(attack: Attack, stage: str, clean: torch.Tensor, found: torch.Tensor) -> None:
    """Checks that a library attack's float ``(B, 1, H, W)`` images are finite, in [0, 1] and within ε
    of ``clean`` in the attack's norm (to a relative 1e-4), so no image outside the threat model counts.

    Raises:
        RuntimeError: One is not, naming the stage and the largest distance.
    """
    delta = (found - clean).flatten(1)
    size = delta.abs().amax(1) if attack.norm == "Linf" else delta.norm(dim=1)
    inside = torch.isfinite(found).all() and found.min() >= 0 and found.max() <= 1
    if not inside or size.max() > attack.eps * (1 + 1e-4) + 1e-6:
        raise RuntimeError(
            f"{stage} ({attack.label}, ε={attack.eps:g}) returned images outside the threat model: largest "
            f"distance {float(size.max()):.6g}, values in [{float(found.min()):.3g}, {float(found.max()):.3g}]"
        )


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """int64 ``(N,)`` largest-logit classes of float ``(N, 1, H, W)`` [0, 1] images, in batches."""
    return torch.cat([model(images[i : i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])


@torch.no_grad()
def clean_outcome(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int, keep: int) -> Outcome:
    """The unattacked images as an ``Outcome``: which are correct, and the first ``keep`` with their predictions."""
    predicted = predict(model, images, batch_size)
    return Outcome((predicted == labels).cpu(), images[:keep].cpu(), predicted[:keep].cpu(), [])


def run_attack(
    attack: Attack,
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    seed: int = 0,
    batch_size: int = 500,
    keep: int = 0,
    num_classes: int = 10,
    progress: Callable[[str], None] | None = None,
) -> Outcome:
    """Runs ``attack`` on float ``(N, 1, H, W)`` [0, 1] ``images`` with int64 ``(N,)`` ``labels``, in
    batches: each stage attacks only the images every earlier one left classified correctly, with
    torch's generator seeded by ``stage_seed`` (the caller's generators are left as they were), and an
    image counts as robust when no stage changed its prediction away from the label. Images the
    network gets wrong unattacked are not attacked and count as wrong; at ε = 0 no stage runs.

    Raises:
        RuntimeError: A stage returned an image outside the threat model (``check_threat_model``).

    Args:
        model: On the images' device, in eval mode: the whole network (``PixelNetwork``).
        keep: How many of the first adversarial images (and predictions) to return.
        progress: Called with a line per batch.
    """
    correct, after = [], [0] * len(attack.stage_names)
    kept_images, kept_predictions = [], []
    for batch, start in enumerate(range(0, len(labels), batch_size)):
        x, y = images[start : start + batch_size], labels[start : start + batch_size]
        adversarial, alive = x.clone(), predict(model, x, batch_size) == y
        seeds = [stage_seed(seed, batch, stage) for stage in range(len(attack.stage_names))]
        devices = [x.device] if x.device.type == "cuda" else []  # the library reseeds CUDA's generator too
        for stage, library_attack in enumerate(attack.stages(model, seeds, num_classes)):
            index = alive.nonzero().squeeze(1)
            if len(index) and attack.eps > 0:  # ε = 0 leaves the images (PGD-L2 would divide 0 by 0)
                with torch.random.fork_rng(devices=devices):
                    torch.manual_seed(seeds[stage])
                    found = library_attack(x[index], y[index]).detach()
                check_threat_model(attack, attack.stage_names[stage], x[index], found)
                fooled = predict(model, found, batch_size) != y[index]
                adversarial[index[fooled]] = found[fooled]
                alive[index[fooled]] = False
            after[stage] += int(alive.sum())
        correct.append(alive)
        if start < keep:
            kept_images.append(adversarial[: keep - start])
            kept_predictions.append(predict(model, adversarial[: keep - start], batch_size))
        if progress is not None:
            progress(f"{attack.label} ε={attack.eps:g}: {start + len(y)}/{len(labels)} images")
    empty = images[:0]
    return Outcome(
        correct=torch.cat(correct).cpu(),
        adversarial=torch.cat(kept_images).cpu() if kept_images else empty.cpu(),
        predicted=torch.cat(kept_predictions).cpu() if kept_predictions else labels[:0].cpu(),
        after_stage=after,
    )


def check_attacks(
    attacks: Sequence[str], eps: Mapping[str, Sequence[float]], steps: int, restarts: int, step_size: float, pixels: int
) -> dict[str, list[float]]:
    """Checks the attack options of ``fmnist-attack`` before any work; returns ``check_eps(eps)``.

    Raises:
        ArgumentError: An unknown attack, an ε out of range, or ``steps``/``restarts`` < 1 or
            ``step_size`` not a finite number > 0.
    """
    ok = isinstance(attacks, Sequence) and not isinstance(attacks, str) and len(attacks) > 0
    require(ok, "attacks", attacks, f"a non-empty list of {', '.join(ATTACKS)}")
    for name in attacks:
        require(name in ATTACKS, "attacks", name, f"one of {', '.join(ATTACKS)}")
    require(isinstance(steps, int) and steps >= 1, "pgd.steps", steps, "an integer >= 1")
    require(isinstance(restarts, int) and restarts >= 1, "pgd.restarts", restarts, "an integer >= 1")
    check_step_size("pgd.step_size", step_size)
    checked = check_eps_lists(eps, pixels)
    usable = any(norm in ATTACKS[name] and values for name in attacks for norm, values in checked.items())
    require(
        usable, "eps", dict(checked), f"an ε of a norm that one of attacks={list(attacks)} supports: no attack has an ε"
    )
    return checked
