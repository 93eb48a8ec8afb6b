"""A finished run's accuracy under adversarial attacks (``fmnist-attack``): clean and robust accuracy
per attack and ε with Wilson intervals, checks against gradient masking, and attack.json / .md /
.png."""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.loggers import Logger
from omegaconf import OmegaConf

from fmnist_lightning.artifacts import atomic_file, write_atomically
from fmnist_lightning.errors import require
from fmnist_lightning.evaluation.attacks import (
    ATTACKS,
    AUTOATTACK,
    Attack,
    Outcome,
    PixelNetwork,
    check_attacks,
    clean_outcome,
    run_attack,
    to_pixels,
)
from fmnist_lightning.evaluation.figures import adversarial_examples_figure, attack_curve_figure, figure_to_array
from fmnist_lightning.evaluation.runs import TrainedModel, build_datamodule, load_trained
from fmnist_lightning.evaluation.statistics import wilson_interval

log = logging.getLogger(__name__)

#: The file names written into the output folder.
JSON, MARKDOWN, CURVE, EXAMPLES = "attack.json", "attack.md", "attack_curve.png", "adversarial_examples.png"
#: The gradient-masking checks' defaults (Carlini et al., 2019, "On Evaluating Adversarial Robustness",
#: arXiv:1902.06705, §5): PGD restarts and steps at each norm's middle ε, and how far (a fraction of
#: the images) more steps may raise robust accuracy before it is flagged.
CHECKS = {"restarts": 5, "steps": None, "tolerance": 0.01}
#: PGD's steps in the steps check when ``checks.steps`` is ``None``: this many times ``pgd.steps``.
MORE_STEPS = 5
#: Images shown in the grid of adversarial examples.
GRID_IMAGES = 8


def evaluate_attacks(
    run_dir: str | Path,
    output_dir: str | Path,
    weights: str = "best",
    data_root: str | None = None,
    device: str = "auto",
    attacks: Sequence[str] = tuple(ATTACKS),
    eps: Mapping[str, Sequence[float]] | None = None,
    pgd: Mapping[str, Any] | None = None,
    checks: Mapping[str, Any] | None = CHECKS,
    limit: int | None = 1000,
    seed: int = 0,
    batch_size: int = 500,
    loggers: Sequence[Logger] = (),
    trusted_modules: Sequence[str] = (),
) -> dict[str, Any]:
    """Attacks a run's network on the first ``limit`` test images, every attack at every ε of each
    norm it supports, then runs the gradient-masking checks (``masking_checks``); writes the results
    (``write_results``). Options are checked before the run is read.

    Args:
        attacks: Names from ``attacks.ATTACKS``.
        eps: ``{"Linf": [...], "L2": [...]}`` on the [0, 1] pixel scale, applied before the run's
            preprocessing (the attacks see ``PixelNetwork``).
        pgd: ``{"steps", "restarts", "step_size"}`` of PGD (``attacks.Attack``).
        checks: ``{"restarts", "steps", "tolerance"}`` (``CHECKS``), or ``None`` to skip the checks.
        limit: The first N test images (``None``: all 10,000).

    Returns:
        attack.json's contents: ``clean`` and each of ``results`` with ``correct``, ``total``,
        ``accuracy`` (a fraction) and its Wilson ``ci95``; ``checks`` and ``breaches``; what was used.

    Raises:
        ArgumentError: An unknown attack or norm, an ε out of range (an L∞ ε above 1 asks "ε/255?"),
            a bad PGD or check option, ``limit`` < 1, ``batch_size`` < 1 or ``seed`` < 0.
        UserError: torchattacks is not installed.
        RunError: No such run or weights. DatasetError: The test files are missing or corrupt.
    """
    pgd = {f.name: f.default for f in fields(Attack) if f.name in ("steps", "restarts", "step_size")} | dict(pgd or {})
    eps = check_attacks(
        attacks, eps or {"Linf": [0.05, 0.1, 0.2]}, pgd["steps"], pgd["restarts"], pgd["step_size"], 784
    )
    checks = _check_options(checks, pgd["steps"])
    require(limit is None or (isinstance(limit, int) and limit >= 1), "limit", limit, "an integer >= 1 or null (all)")
    require(isinstance(batch_size, int) and batch_size >= 1, "batch_size", batch_size, "an integer >= 1")
    require(isinstance(seed, int) and seed >= 0, "seed", seed, "an integer >= 0")
    trained = load_trained(run_dir, weights, device, trusted_modules)
    datamodule, images, labels = _test_pixels(trained, data_root, limit)
    model = PixelNetwork(trained.preprocess, trained.net).eval()
    num_classes = int(trained.config.data.num_classes)
    started = time.perf_counter()

    def attack(spec: Attack, keep: int = 0) -> Outcome:
        begun = time.perf_counter()
        outcome = run_attack(spec, model, images, labels, seed, batch_size, keep, num_classes)
        outcome.seconds = time.perf_counter() - begun
        log.info("%s ε=%g: %.2f %% (%.1f s)", spec.label, spec.eps, 100 * _fraction(outcome), outcome.seconds)
        return outcome

    clean = clean_outcome(model, images, labels, batch_size, GRID_IMAGES)
    log.info("clean: %.2f %% of %d test images", 100 * _fraction(clean), len(labels))
    specs = [
        Attack(name, norm, e, pgd["steps"], pgd["restarts"], pgd["step_size"])
        for name in dict.fromkeys(attacks)
        for norm, values in eps.items()
        if norm in ATTACKS[name]
        for e in values
    ]
    outcomes = {spec: attack(spec, keep=GRID_IMAGES) for spec in specs}
    result = {"run_dir": str(run_dir), "weights": str(trained.weights), "dataset": datamodule.dataset.name}
    result |= {"images": len(labels), "seed": seed, "pgd": pgd, "library": _libraries()}
    result["run_training"] = _run_training(trained.config)
    result["clean"] = _row(clean)
    result["results"] = [_entry(spec, outcome) for spec, outcome in outcomes.items()]
    result["checks"] = masking_checks(outcomes, pgd, checks, attack) if checks else []
    result["breaches"] = [c["name"] for c in result["checks"] if not c["passed"]]
    result["seconds"] = round(time.perf_counter() - started, 2)
    shown = {
        spec: outcomes[spec] for spec in specs if spec.norm == specs[0].norm and spec.eps == _middle(eps[spec.norm])
    }
    write_results(result, Path(output_dir), clean, shown, trained.class_names, loggers)
    return result


def _test_pixels(
    trained: TrainedModel, data_root: str | None, limit: int | None
) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """The run's DataModule, and its first ``limit`` test images as float ``(N, 1, 28, 28)`` [0, 1] pixels
    with their int64 ``(N,)`` labels, on the network's device."""
    datamodule = build_datamodule(trained.config, data_root)
    datamodule.prepare_data()
    datamodule.setup("test")
    images, labels = datamodule.data_test.tensors
    return datamodule, to_pixels(images[:limit]).to(trained.device), labels[:limit].to(trained.device)


def _check_options(checks: Mapping[str, Any] | None, pgd_steps: int) -> dict[str, Any] | None:
    """``checks`` over ``CHECKS``' defaults, checked; ``steps: None`` becomes ``MORE_STEPS × pgd_steps``.

    Raises:
        ArgumentError: A key other than ``CHECKS``', ``restarts`` < 1, ``steps`` not above ``pgd_steps``, or
            ``tolerance`` outside [0, 1].
    """
    if checks is None:
        return None
    require(isinstance(checks, Mapping), "checks", checks, "a mapping {restarts, steps, tolerance}, or null")
    for key in checks:
        require(key in CHECKS, "checks", key, f"one of the keys {', '.join(CHECKS)}")
    out = CHECKS | dict(checks)
    if out["steps"] is None:
        out["steps"] = MORE_STEPS * pgd_steps
    for key in ("restarts", "steps"):
        require(isinstance(out[key], int) and out[key] >= 1, f"checks.{key}", out[key], "an integer >= 1")
    require(out["steps"] > pgd_steps, "checks.steps", out["steps"], f"more than pgd.steps={pgd_steps}")
    tolerance = out["tolerance"]
    require(
        isinstance(tolerance, (int, float)) and 0 <= tolerance <= 1,
        "checks.tolerance",
        tolerance,
        "a fraction in [0, 1]",
    )
    return out


def _middle(values: Sequence[float]) -> float:
    """The middle of the sorted ε list (the upper one of two middles): the checks' and the grid's ε."""
    return sorted(values)[len(values) // 2]


def _row(outcome: Outcome) -> dict[str, Any]:
    """``correct``, ``total``, ``accuracy`` (a fraction) and its 95 % Wilson ``ci95``."""
    correct, total = int(outcome.correct.sum()), len(outcome.correct)
    return {
        "correct": correct,
        "total": total,
        "accuracy": correct / total,
        "ci95": list(wilson_interval(correct, total)),
    }


def _entry(spec: Attack, outcome: Outcome) -> dict[str, Any]:
    """One attack at one ε for attack.json: its parameters, accuracy after each stage, and seconds."""
    used: dict[str, Any] = {"attack": spec.name, "norm": spec.norm, "eps": spec.eps, "label": spec.label}
    if spec.name == "pgd":
        used |= {"steps": spec.steps, "restarts": spec.restarts, "alpha": spec.step_size * spec.eps / spec.steps}
    if spec.name == "autoattack":
        used |= AUTOATTACK
    total = len(outcome.correct)
    stages = {name: n / total for name, n in zip(spec.stage_names, outcome.after_stage, strict=True)}
    return used | _row(outcome) | {"after_stage": stages, "seconds": round(outcome.seconds, 2)}


def masking_checks(
    outcomes: dict[Attack, Outcome],
    pgd: Mapping[str, Any],
    checks: Mapping[str, Any],
    attack: Callable[[Attack], Outcome],
) -> list[dict]:
    """The checks against gradient masking of Carlini et al. (2019, arXiv:1902.06705, §5), each
    ``{"name", "passed", "detail"}``; a failed one is a breach the report flags. ``attack(spec)`` runs
    one more attack; ``tolerance`` is ``checks["tolerance"]``, a fraction of the images:

    - ``eps_monotone``: each attack's robust accuracy never rises as ε grows;
    - ``zero_at_eps_1``: PGD at L∞ ε = 1 (any image reachable) leaves no image correct;
    - ``restarts``: at each norm's middle ε, PGD with ``checks.restarts`` nested restarts (each attacks what
      the earlier left) never rises from one restart to the next, and its first restart is the table's PGD
      (the same seeds: a difference means the attack is not deterministic); the detail gives the drop;
    - ``steps``: at each norm's middle ε, PGD with ``checks.steps`` steps is at most ``tolerance`` above
      PGD with ``pgd.steps`` (the detail gives the difference: a large drop means PGD had not converged);
    - ``pgd_below_fgsm``: PGD, iterative, is at or below FGSM, one step, at every L∞ ε;
    - ``autoattack_below_pgd``: AutoAttack is at or below PGD at every norm and ε.
    """
    accuracy = {spec: _fraction(o) for spec, o in outcomes.items()}
    found = _eps_monotone(accuracy)
    steps, step_size = pgd["steps"], pgd["step_size"]
    left = int(attack(Attack("pgd", "Linf", 1.0, steps, 1, step_size)).correct.sum())
    found.append(_check("zero_at_eps_1", left == 0, f"PGD-{steps} at L∞ ε=1 leaves {left} images correct"))
    table = {(s.norm, s.eps): s for s in outcomes if s.name == "pgd"}
    tolerance = checks["tolerance"]
    for norm in sorted({norm for norm, _ in table}):
        middle = _middle([e for n, e in table if n == norm])
        base, total = table[norm, middle], len(outcomes[table[norm, middle]].correct)
        curve = [
            n / total for n in attack(Attack("pgd", norm, middle, steps, checks["restarts"], step_size)).after_stage
        ]
        detail = f"accuracy after each restart {[round(a, 4) for a in curve]} (the table's: {accuracy[base]:.4f})"
        nested = curve == sorted(curve, reverse=True) and (base.restarts > 1 or curve[0] == accuracy[base])
        found.append(_check(f"restarts {norm} ε={middle:g}", nested, detail))
        longer = _fraction(attack(Attack("pgd", norm, middle, checks["steps"], 1, step_size)))
        detail = f"PGD-{checks['steps']} {longer:.4f} against PGD-{steps} {accuracy[base]:.4f} (tolerance {tolerance})"
        found.append(_check(f"steps {norm} ε={middle:g}", longer <= accuracy[base] + tolerance, detail))
    found += _ordered(accuracy, "pgd", "fgsm") + _ordered(accuracy, "autoattack", "pgd")
    return found


def _fraction(outcome: Outcome) -> float:
    """The share of images still correct, from counts as attack.json's (a float32 mean differs in the last digits)."""
    return int(outcome.correct.sum()) / len(outcome.correct)


def _eps_monotone(accuracy: dict[Attack, float]) -> list[dict]:
    """``eps_monotone <attack> <norm>``: robust accuracy never rises with ε."""
    found = []
    for name, norm in sorted({(s.name, s.norm) for s in accuracy}):
        curve = sorted((s.eps, a) for s, a in accuracy.items() if (s.name, s.norm) == (name, norm))
        rises = [f"{a:.4f} at ε={e:g} > {b:.4f} at ε={d:g}" for (d, b), (e, a) in itertools.pairwise(curve) if a > b]
        found.append(_check(f"eps_monotone {name} {norm}", not rises, "; ".join(rises) or "falls with ε"))
    return found


def _ordered(accuracy: dict[Attack, float], stronger: str, weaker: str) -> list[dict]:
    """``<stronger>_below_<weaker> <norm> ε=<ε>`` wherever both attacks ran at that norm and ε."""
    found = []
    for spec, value in accuracy.items():
        twin = next((s for s in accuracy if (s.name, s.norm, s.eps) == (weaker, spec.norm, spec.eps)), None)
        if spec.name == stronger and twin is not None:
            detail = f"{spec.label} {value:.4f}, {twin.label} {accuracy[twin]:.4f}"
            found.append(
                _check(f"{stronger}_below_{weaker} {spec.norm} ε={spec.eps:g}", value <= accuracy[twin], detail)
            )
    return found


def _check(name: str, passed: bool, detail: str) -> dict[str, Any]:
    if not passed:
        log.warning("gradient-masking check %s failed: %s", name, detail)
    return {"name": name, "passed": bool(passed), "detail": detail}


def _libraries() -> dict[str, str]:
    return {name: version(name) for name in ("torchattacks", "torch")}


def _run_training(config: Any) -> dict[str, Any] | None:
    """The run's adversarial training (its ``module.adversary``), or ``None`` for standard training."""
    adversary = OmegaConf.select(config, "module.adversary")
    return OmegaConf.to_container(adversary, resolve=True) if adversary is not None else None


def markdown(result: dict[str, Any]) -> str:
    """attack.md: clean and robust accuracy (%) with 95 % Wilson intervals, and the checks."""

    def cell(row: dict[str, Any]) -> str:
        low, high = row["ci95"]
        return f"{100 * row['accuracy']:.2f} ({100 * low:.1f}–{100 * high:.1f})"

    training = result["run_training"]
    trained = f"adversarially trained ({json.dumps(training)})" if training else "standard training"
    lines = [
        f"# Adversarial robustness: {result['run_dir']}",
        "",
        f"Weights {result['weights']} ({trained}); the first {result['images']} {result['dataset']} test images; "
        f"seed {result['seed']}; torchattacks {result['library']['torchattacks']}. ε on the [0, 1] pixel scale, "
        "before the run's normalisation.",
        "",
        f"- clean accuracy: {cell(result['clean'])} %",
        "",
        "| attack | norm | ε | robust accuracy % (95 % interval) | seconds |",
        "|---|---|---:|---:|---:|",
    ]
    for row in result["results"]:
        lines.append(f"| {row['label']} | {row['norm']} | {row['eps']:g} | {cell(row)} | {row['seconds']:.1f} |")
    if result["checks"]:
        lines += ["", "Checks against gradient masking (docs/adversarial.md):", ""]
        lines += [f"- {'ok' if c['passed'] else '**BREACH**'} {c['name']}: {c['detail']}" for c in result["checks"]]
    return "\n".join(lines) + "\n"


def write_results(
    result: dict[str, Any],
    folder: Path,
    clean: Outcome,
    shown: dict[Attack, Outcome],
    class_names: Sequence[str],
    loggers: Sequence[Logger],
) -> None:
    """Writes attack.json, attack.md, the accuracy–ε curve and the examples' grid (of the attacks in
    ``shown``) into ``folder``; ``loggers`` get the accuracies as ``attack/...`` scalars (fractions)
    and, where they have ``log_image``, both figures."""
    folder.mkdir(parents=True, exist_ok=True)
    write_atomically(folder / JSON, json.dumps(result, indent=2) + "\n")
    write_atomically(folder / MARKDOWN, markdown(result))
    figures = {"attack/curve": attack_curve_figure(result["clean"], result["results"])}
    labels = [f"{spec.label} ε={spec.eps:g}" for spec in shown]
    figures["attack/examples"] = adversarial_examples_figure(
        clean.adversarial,
        clean.predicted,
        [o.adversarial for o in shown.values()],
        [o.predicted for o in shown.values()],
        labels,
        class_names,
    )
    for figure, name in zip(figures.values(), (CURVE, EXAMPLES), strict=True):
        with atomic_file(folder / name) as file:
            figure.savefig(file, format="png", dpi=110)
    scalars = {f"attack/{r['attack']}/{r['norm']}/{r['eps']:g}": r["accuracy"] for r in result["results"]}
    scalars["attack/clean_acc"] = result["clean"]["accuracy"]
    for logger in loggers:
        logger.log_metrics(scalars, step=0)
        if hasattr(logger, "log_image"):
            for key, figure in figures.items():
                logger.log_image(key=key, images=[figure_to_array(figure)], step=0)
        logger.save()
