"""fmnist-attack: ε = 0 changes nothing, the project's PGD is the library's, restarts are nested,
the gradient-masking checks, refusals, and the command on the session's run; adversarial training
(experiment=adv_pgd, adv_trades) builds from the library's attacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import scalars
from fmnist_lightning.errors import ArgumentError
from fmnist_lightning.evaluation.adversarial import masking_checks
from fmnist_lightning.evaluation.attacks import (
    Attack,
    Outcome,
    PixelNetwork,
    check_threat_model,
    run_attack,
    stage_seed,
    to_pixels,
)
from fmnist_lightning.evaluation.runs import build_datamodule, load_trained
from fmnist_lightning.models.adversarial import TRADES, PGDTraining, check_eps, torchattacks
from in_process import run_command, train_whole_and_resumed


@pytest.fixture(scope="module")
def attacked(trained_run: Path):
    """The session's run as the attacks see it (``PixelNetwork``), with its first 96 test images on the
    [0, 1] scale and their labels."""
    trained = load_trained(trained_run, "best", "cpu")
    datamodule = build_datamodule(trained.config)
    datamodule.setup("test")
    images, labels = datamodule.data_test.tensors
    return PixelNetwork(trained.preprocess, trained.net).eval(), to_pixels(images[:96]), labels[:96]


def clean_correct(model, images, labels) -> torch.Tensor:
    with torch.no_grad():
        return model(images).argmax(1) == labels


@pytest.mark.parametrize(
    ("name", "norm"), [("fgsm", "Linf"), ("pgd", "Linf"), ("pgd", "L2"), ("autoattack", "Linf"), ("autoattack", "L2")]
)
def test_eps_zero_changes_nothing(attacked, name: str, norm: str) -> None:
    model, images, labels = attacked
    images, labels = images[:32], labels[:32]
    outcome = run_attack(Attack(name, norm, 0.0, steps=5), model, images, labels, keep=32)
    assert torch.equal(outcome.correct, clean_correct(model, images, labels))
    assert torch.equal(outcome.adversarial, images)


def test_pgd_is_the_library_pgd(attacked) -> None:
    """The project's PGD (one restart) against a direct call of torchattacks' PGD with the same
    network, images and seed: the same images fooled, with the same adversarial images."""
    model, images, labels = attacked
    right = clean_correct(model, images, labels)
    x, y = images[right][:48], labels[right][:48]
    spec = Attack("pgd", "Linf", 0.05, steps=7)
    ours = run_attack(spec, model, x, y, seed=3, batch_size=64, keep=48)
    torch.manual_seed(stage_seed(3, 0, 0))
    theirs = torchattacks().PGD(model, eps=0.05, alpha=2.5 * 0.05 / 7, steps=7, random_start=True)(x, y)
    with torch.no_grad():
        fooled = model(theirs).argmax(1) != y
    assert 0 < int(fooled.sum()) < len(y)  # a test of both kinds of image
    assert torch.equal(ours.correct, ~fooled)
    assert torch.equal(ours.adversarial[fooled], theirs[fooled]) and torch.equal(ours.adversarial[~fooled], x[~fooled])
    assert (theirs - x).abs().max() <= 0.05 + 1e-6


def test_restarts_are_nested_and_seeded(attacked) -> None:
    model, images, labels = attacked
    runs = {
        r: run_attack(Attack("pgd", "L2", 0.6, steps=5, restarts=r), model, images, labels, batch_size=40)
        for r in (2, 4)
    }
    assert runs[4].after_stage[:2] == runs[2].after_stage  # the first two restarts are the same in both
    assert runs[4].after_stage == sorted(runs[4].after_stage, reverse=True)
    assert not (runs[4].correct & ~runs[2].correct).any()  # more restarts only take images away
    before = torch.random.get_rng_state()
    again = run_attack(Attack("pgd", "L2", 0.6, steps=5, restarts=2), model, images, labels, batch_size=40)
    assert torch.equal(again.correct, runs[2].correct) and torch.equal(torch.random.get_rng_state(), before)


def outcome(correct: list[bool], after_stage: list[int] | None = None) -> Outcome:
    flags = torch.tensor(correct)
    return Outcome(
        flags, torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long), after_stage or [int(flags.sum())]
    )


def test_checks_flag_each_breach() -> None:
    """Made-up outcomes where robust accuracy rises with ε, PGD at ε = 1 leaves an image, more steps
    help beyond the tolerance, and AutoAttack is above PGD: every check reports its breach."""
    pgd = {"steps": 20, "restarts": 1, "step_size": 2.5}
    table = {
        Attack("pgd", "Linf", 0.1): outcome([True, False, False, False]),
        Attack("pgd", "Linf", 0.2): outcome([True, True, False, False]),  # rises with ε
        Attack("autoattack", "Linf", 0.1): outcome([True, True, False, False]),  # above PGD
    }
    extra = {
        ("pgd", 1.0, 1, 20): outcome([True, False, False, False]),  # not 0 at ε = 1
        ("pgd", 0.2, 5, 20): outcome([True, True, False, False], [2, 2, 2, 2, 2]),  # first restart is the table's
        ("pgd", 0.2, 1, 100): outcome([True, True, True, False]),  # more steps: +25 points
    }
    checks = masking_checks(
        table,
        pgd,
        {"restarts": 5, "steps": 100, "tolerance": 0.01},
        lambda s: extra[s.name, s.eps, s.restarts, s.steps],
    )
    failed = {c["name"] for c in checks if not c["passed"]}
    assert failed == {"eps_monotone pgd Linf", "zero_at_eps_1", "steps Linf ε=0.2", "autoattack_below_pgd Linf ε=0.1"}
    assert {c["name"] for c in checks} - failed == {"eps_monotone autoattack Linf", "restarts Linf ε=0.2"}


def test_checks_compare_counts_not_float32_means() -> None:
    """779 of 1,000 images: a float32 mean (0.77899998...) is not 779 / 1000, and the restarts check
    compares the first restart with the table's PGD exactly."""
    correct = [True] * 779 + [False] * 221
    table = {Attack("pgd", "Linf", 0.1): outcome(correct)}
    extra = {
        ("pgd", 1.0, 1, 20): outcome([False] * 1000),
        ("pgd", 0.1, 5, 20): outcome(correct, [779, 776, 776, 776, 775]),
        ("pgd", 0.1, 1, 100): outcome(correct),
    }
    checks = masking_checks(
        table, {"steps": 20, "restarts": 1, "step_size": 2.5}, {"restarts": 5, "steps": 100, "tolerance": 0.01},
        lambda s: extra[s.name, s.eps, s.restarts, s.steps],
    )  # fmt: skip
    assert all(c["passed"] for c in checks), checks


@pytest.mark.parametrize(
    ("norm", "values", "words"),
    [
        ("Linf", [-0.1], "finite numbers >= 0"),
        ("Linf", [8], "ε/255?"),
        ("L2", [30.0], "at most 28"),
        ("L1", [0.1], "one of the norms"),
        ("Linf", [float("nan")], "finite numbers"),
        ("Linf", "0.1", "a list of numbers"),
    ],
)
def test_bad_eps_is_refused(norm: str, values, words: str) -> None:
    with pytest.raises(ArgumentError, match=words.replace("?", r"\?")):
        check_eps("eps", norm, values)


@pytest.mark.slow  # about 5 s: every check's extra attacks, both figures and TensorBoard
def test_command_writes_its_results_and_checks(trained_run: Path, tmp_path: Path) -> None:
    """The command in the test process on 64 images, FGSM and PGD: its files, ε = 0.1 robust accuracy
    ordered clean ≥ FGSM ≥ PGD inside its interval, every check passing, and the scalars in TensorBoard."""
    out = tmp_path / "a"
    result = run_command(
        "attack.py", f"run_dir={trained_run}", "device=cpu", "limit=64", "attacks=[fgsm,pgd]", "eps.Linf=[0.05,0.1]",
        "eps.L2=[1.0]", "checks.steps=40", f"hydra.run.dir={out}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((out / "attack.json").read_text())
    assert saved["images"] == 64 and saved["clean"]["total"] == 64 and saved["run_training"] is None
    rows = {(r["attack"], r["norm"], r["eps"]): r for r in saved["results"]}
    assert set(rows) == {("fgsm", "Linf", 0.05), ("fgsm", "Linf", 0.1), ("pgd", "Linf", 0.05), ("pgd", "Linf", 0.1)} | {
        ("pgd", "L2", 1.0)
    }  # fmt: skip
    fgsm, pgd = rows["fgsm", "Linf", 0.1]["accuracy"], rows["pgd", "Linf", 0.1]["accuracy"]
    assert saved["clean"]["accuracy"] > fgsm >= pgd
    low, high = rows["pgd", "Linf", 0.1]["ci95"]
    assert low <= pgd <= high and rows["pgd", "Linf", 0.1]["alpha"] == pytest.approx(2.5 * 0.1 / 20)
    names = [c["name"] for c in saved["checks"]]
    assert saved["breaches"] == [] and len(names) == 10 and "pgd_below_fgsm Linf ε=0.1" in names, saved["checks"]
    assert {p.name for p in out.iterdir()} >= {"attack.md", "attack_curve.png", "adversarial_examples.png"}
    assert scalars(out, "attack/pgd/Linf/0.1") == {0: pytest.approx(pgd)}
    assert "PGD-20 L∞ ε=0.1: robust accuracy" in result.stdout


@pytest.mark.slow  # AutoAttack on 32 images: about 40 s, most of it Square's 5,000 queries
def test_autoattack_is_at_or_below_pgd(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "aa"
    result = run_command(
        "attack.py", f"run_dir={trained_run}", "device=cpu", "limit=32", "attacks=[pgd,autoattack]",
        "eps.Linf=[0.1]", "eps.L2=[]", "checks.restarts=2", "checks.steps=40", f"hydra.run.dir={out}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((out / "attack.json").read_text())
    pgd, aa = saved["results"]
    assert aa["accuracy"] <= pgd["accuracy"] < saved["clean"]["accuracy"]
    assert list(aa["after_stage"]) == ["APGD-CE", "APGD-T", "FAB-T", "Square"]
    assert list(aa["after_stage"].values()) == sorted(aa["after_stage"].values(), reverse=True)
    assert saved["breaches"] == [] and "autoattack_below_pgd Linf ε=0.1" in [c["name"] for c in saved["checks"]]


def test_images_outside_the_threat_model_are_refused() -> None:
    clean = torch.full((2, 1, 4, 4), 0.5)
    check_threat_model(Attack("pgd", "L2", 0.5), "PGD", clean, clean + 0.1)  # L2 norm 0.4
    for attack, found in (
        (Attack("pgd", "L2", 0.3), clean + 0.1),  # L2 norm 0.4
        (Attack("fgsm", "Linf", 0.05), clean + 0.1),
        (Attack("pgd", "Linf", 0.6), clean + 0.6),  # above 1
        (Attack("pgd", "Linf", 0.1), clean * float("nan")),
    ):
        with pytest.raises(RuntimeError, match="outside the threat model"):
            check_threat_model(attack, "stage", clean, found)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["eps.Linf=[-0.1]"], "eps.Linf=-0.1"),
        (["attacks=[cw]"], "attacks='cw'"),
        (["eps.Linf=[8]"], "ε/255?"),
        (["attacks=[fgsm]", "eps.Linf=[]"], "no attack has an ε"),
        (["limit=0"], "limit=0"),
        (["+checks.restart=3"], "checks='restart'"),
        (["pgd.steps=40", "checks.steps=40"], "checks.steps=40: more than pgd.steps=40"),
    ],
)
def test_command_refuses_bad_options(trained_run: Path, tmp_path: Path, args: list[str], words: str) -> None:
    out = tmp_path / "refused"
    result = run_command("attack.py", f"run_dir={trained_run}", *args, f"hydra.run.dir={out}")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and len(errors) == 1 and words in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not (out / "attack.json").exists()


@pytest.mark.parametrize("kind", [PGDTraining, TRADES])
def test_training_attacks_stay_in_the_ball(attacked, kind) -> None:
    """The adversaries on normalised batches: the library undoes the normalisation, so the attacked
    images stay within ε of the clean ones on the [0, 1] scale; the loss is finite and the network is
    back in training mode."""
    model, images, labels = attacked
    preprocess, net = model.preprocess, model.net.train()
    adversary = kind(eps=0.1, steps=3, normalize={"mean": 0.2860, "std": 0.3530})
    normalised = preprocess(images[:16])
    attacked_images = adversary.attack(torchattacks().PGD if kind is PGDTraining else torchattacks().TPGD, net)(
        normalised, labels[:16]
    )
    pixels, clean = (x * 0.3530 + 0.2860 for x in (attacked_images, normalised))  # at the run's 16 px
    assert 0.05 < (pixels - clean).abs().max() <= 0.1 + 1e-5
    loss, logits = adversary.loss(net, net, torch.nn.CrossEntropyLoss(), normalised, labels[:16])
    assert torch.isfinite(loss) and logits.shape == (16, 10) and net.training
    net.eval()


@pytest.mark.slow  # three short trainings per experiment: about 10 s each
@pytest.mark.parametrize("experiment", ["adv_pgd", "adv_trades"])
def test_adversarial_training_resumes_bit_exactly(data_root: Path, tmp_path: Path, experiment: str) -> None:
    """Two epochs at once, and one epoch then ``resume=`` to two: the same weights, the attacks' random
    starts coming from the generator states the checkpoint keeps."""
    args = [
        f"experiment={experiment}", "model=two_conv_bn", "data.image_size=16", "trainer=cpu", "scheduler=none",
        "trainer.precision=32-true", "trainer.deterministic=true", "trainer.limit_train_batches=4",
        "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "module.adversary.steps=2", "logger=none",
        "callbacks.progress_bar=null", f"data.root={data_root}",
    ]  # fmt: skip
    whole, part = train_whole_and_resumed(args, tmp_path)
    first, second = (torch.load(f / "net.pt", weights_only=True) for f in (whole, part))
    assert all(torch.equal(first[k], second[k]) for k in first)
    config = (whole / ".hydra" / "config.yaml").read_text()
    assert "eps: 0.1" in config and f"adversarial.{'PGDTraining' if experiment == 'adv_pgd' else 'TRADES'}" in config


def test_trades_attack_moves_under_bf16_autocast(attacked) -> None:
    """Under the trainer's bf16 autocast, TRADES' first KL divergence (a 0.001 noise) would round to zero
    and its attack would not move: the adversaries attack in float32."""
    model, images, labels = attacked
    adversary = TRADES(eps=0.1, steps=3, normalize={"mean": 0.2860, "std": 0.3530})
    normalised = model.preprocess(images[:16])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        attacked_images = adversary.attack(torchattacks().TPGD, model.net)(normalised, labels[:16])
    assert attacked_images.dtype == torch.float32
    assert ((attacked_images - normalised) * 0.3530).abs().amax(dim=(1, 2, 3)).min() > 0.05  # every image moved
