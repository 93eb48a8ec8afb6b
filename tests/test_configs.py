"""Every config option composes and builds; every experiment runs end to end."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import hydra
import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import CONF, config_names
from fmnist_lightning.errors import ConfigError
from fmnist_lightning.training.build import build_run
from fmnist_lightning.training.pipeline import train


def build(cfg):
    run = build_run(cfg)
    return run.datamodule, run.model, run.trainer


#: Each group's default option in conf/train.yaml (a list for metrics).
DEFAULTS = {
    group: choice if isinstance(choice, list) else [choice]
    for entry in OmegaConf.to_container(OmegaConf.load(CONF / "train.yaml").defaults)
    if isinstance(entry, dict)
    for group, choice in entry.items()
    if choice is not None
}
GROUPS = [
    "data",
    "model",
    "loss",
    "mix",
    "metrics",
    "optimizer",
    "scheduler",
    "trainer",
    "callbacks",
    "logger",
    "debug",
]


#: Experiments that test_experiment_fast_dev_run trains in the slow suite only (here, in the
#: default suite, they are built): speedrun_91 is fast with CSV logging (test_own_experiments;
#: the CSV logger: tests/test_loggers.py); the recipes' networks each take a forward and
#: backward pass in tests/test_nets.py, their settings are checked by
#: test_experiments_follow_their_recipes, and fast and speedrun_93 train in the default suite;
#: adv_pgd and adv_trades are the quick-start network with an adversary, whose losses
#: tests/test_attack.py runs in the default suite (and their training, resumed, in the slow one).
TRAINS_AS_ANOTHER = (
    "speedrun_91",
    "adv_pgd",
    "adv_trades",
    "recipe_000",
    "recipe_001",
    "recipe_002",
    "recipe_003",
    "recipe_004",
)


@pytest.mark.parametrize(
    "override",
    [
        # A metric is chosen beside accuracy, which the default callbacks monitor.
        f"{group}=[accuracy,{name}]" if group == "metrics" else f"{group}={name}"
        for group in GROUPS
        for name in config_names(group)
        # The defaults are built by every case (and the default config by test_train.py).
        if (group, name) != ("trainer", "gpu") and name not in DEFAULTS.get(group, ())
    ]
    # The other experiments train in test_experiment_fast_dev_run, in the default suite.
    + [f"experiment={name}" for name in ("best", *TRAINS_AS_ANOTHER)],
)
def test_every_option_builds_and_passes_the_checks(make_cfg, override: str) -> None:
    datamodule, model, trainer = build(make_cfg(override))
    assert datamodule.batch_size >= 1 and trainer.max_epochs >= 1
    optimizers = model.configure_optimizers()
    optimizer = optimizers["optimizer"] if isinstance(optimizers, dict) else optimizers
    assert isinstance(optimizer, torch.optim.Optimizer)


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_the_shipped_optimizers_are_fused(make_cfg, name: str) -> None:
    """conf/optimizer/adam.yaml and sgd.yaml run torch's fused kernel, one per step. (An
    optimizer a user adds need not: not every torch optimizer has one.)"""
    optimizers = build_run(make_cfg(f"optimizer={name}")).model.configure_optimizers()
    optimizer = optimizers["optimizer"] if isinstance(optimizers, dict) else optimizers
    assert optimizer.defaults["fused"] is True


def test_config_error_lists_every_problem(make_cfg) -> None:
    cfg = make_cfg("optimizer.lr=-1", "data.batch_size=0", "callbacks.early_stopping.monitor=val/f1")
    with pytest.raises(ConfigError) as info:
        build_run(cfg)
    assert [p.key for p in info.value.problems] == [
        "data.batch_size",
        "optimizer.lr",
        "callbacks.early_stopping.monitor",
    ]
    assert (
        "optimizer.lr=-1: input should be greater than or equal to 0 (the default of torch.optim.Adam: 0.001)"
        in str(info.value)
    )
    assert "use one of train/loss, train/acc, val/loss, val/acc, val/acc_best" in str(info.value)


def test_gpu_trainer_config_composes() -> None:
    """trainer=gpu is built only where a GPU exists; here, check what it asks for."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["trainer=gpu", "output_dir=unused"])
    assert (cfg.trainer.accelerator, cfg.trainer.devices) == ("gpu", 1)
    if torch.cuda.is_available():
        assert hydra.utils.instantiate(cfg.trainer).accelerator is not None


@pytest.mark.parametrize("scheduler", ["cosine", "step"])
def test_schedulers_change_the_learning_rate(make_cfg, scheduler: str) -> None:
    _, model, _ = build(make_cfg(f"scheduler={scheduler}", "trainer.max_epochs=10"))
    config = model.configure_optimizers()
    lr0 = config["optimizer"].param_groups[0]["lr"]
    for _ in range(6):
        config["optimizer"].step()
        config["lr_scheduler"]["scheduler"].step()
    assert config["lr_scheduler"]["interval"] == "epoch"
    assert config["optimizer"].param_groups[0]["lr"] < lr0


def test_onecycle_steps_after_every_optimizer_step(make_cfg) -> None:
    """scheduler=onecycle: Lightning steps it after every optimizer step, over the run's own
    number of steps (its total_steps: null filled in from the Trainer), warming up to
    optimizer.lr and annealing far below where it started."""
    run = build_run(
        make_cfg(
            "scheduler=onecycle",
            "optimizer.lr=0.01",
            "trainer.max_epochs=2",
            "trainer.limit_train_batches=5",
            "trainer.limit_val_batches=1",
            "logger=none",
            "callbacks=none",
        )
    )
    lrs = []

    class RecordLR(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    run.trainer.callbacks.append(RecordLR())
    run.trainer.fit(run.model, datamodule=run.datamodule)
    config = run.trainer.lr_scheduler_configs[0]
    assert config.interval == "step" and config.scheduler.total_steps == 10 == config.scheduler.last_epoch
    assert len(set(lrs)) == 10  # a new rate for every step
    assert lrs[0] == pytest.approx(0.01 / 25) and max(lrs) == pytest.approx(0.01, rel=0.1)
    assert lrs[-1] == pytest.approx(0.01 / 25 / 1e4)  # the last step's: max_lr / div_factor / final_div_factor


def test_scheduler_interval_is_checked(make_cfg) -> None:
    with pytest.raises(ConfigError, match=r"interval='hour': use epoch or step"):
        build_run(make_cfg("scheduler=onecycle", "scheduler.interval=hour"))


def test_callbacks_can_be_switched_off(make_cfg) -> None:
    _, _, trainer = build(make_cfg("callbacks.early_stopping=null", "callbacks.lr_monitor=null"))
    names = {type(c).__name__ for c in trainer.callbacks}
    assert "ModelCheckpoint" in names
    assert "EarlyStopping" not in names and "LearningRateMonitor" not in names


def test_any_trainer_argument_is_set_by_its_plain_key(make_cfg) -> None:
    """Every argument of lightning.pytorch.Trainer takes ``trainer.<argument>=`` (issue 42);
    ``+trainer.max_time=`` still works, its value being null."""
    trainer = build_run(
        make_cfg("trainer.max_time=00:00:00:20", "trainer.gradient_clip_val=1.0", "trainer.limit_train_batches=0.1")
    ).trainer
    assert [c._duration for c in trainer.callbacks if isinstance(c, L.pytorch.callbacks.Timer)] == [20]
    assert (trainer.gradient_clip_val, trainer.limit_train_batches) == (1.0, 0.1)
    assert make_cfg("+trainer.max_time=00:00:00:20").trainer.max_time == "00:00:00:20"


#: The Trainer arguments conf/trainer/default.yaml sets to values of the project's own.
PROJECT_TRAINER_ARGUMENTS = {
    "default_root_dir": "${output_dir}",
    "accelerator": "auto",
    "devices": "auto",
    "strategy": "auto",
    "min_epochs": 1,
    "max_epochs": 10,
    "precision": "auto",
    "check_val_every_n_epoch": 1,
    "log_every_n_steps": 50,
    "deterministic": False,
    "limit_train_batches": None,
    "limit_val_batches": None,
    "limit_test_batches": None,
    "gradient_clip_val": None,
    "accumulate_grad_batches": 1,
}


def test_the_trainer_config_lists_every_trainer_argument_with_lightnings_default() -> None:
    """conf/trainer/default.yaml names every argument of the installed Lightning's Trainer
    (but those build_run passes: callbacks, logger, plugins), and those the project does not
    set with Lightning's own default, so that the Trainer gets what it would get unset."""
    listed = OmegaConf.to_container(OmegaConf.load(CONF / "trainer" / "default.yaml"))
    parameters = inspect.signature(L.Trainer).parameters
    assert listed.pop("_target_") == "lightning.pytorch.Trainer"
    assert set(listed) == set(parameters) - {"callbacks", "logger", "plugins"}
    assert {k: v for k, v in listed.items() if k in PROJECT_TRAINER_ARGUMENTS} == PROJECT_TRAINER_ARGUMENTS
    defaults = {k: parameters[k].default for k in listed if k not in PROJECT_TRAINER_ARGUMENTS}
    assert {k: listed[k] for k in defaults} == defaults


def test_bad_callback_entry_is_refused(make_cfg) -> None:
    with pytest.raises(ConfigError, match=r"callbacks.foo=3: must be a config with _target_ or null \(off\)"):
        build(make_cfg("+callbacks.foo=3"))


def test_a_healthy_run_builds_its_network_once(make_cfg, monkeypatch) -> None:
    from fmnist_lightning.models import nets

    built = []
    original = nets.TwoConv5x5Net.__init__
    monkeypatch.setattr(
        nets.TwoConv5x5Net, "__init__", lambda self, *a, **k: (built.append(1), original(self, *a, **k))[1]
    )
    train(make_cfg("model=two_conv_5x5", "data.image_size=16", "debug=fdr"))
    assert len(built) == 1


#: Experiments whose test report (10,000 images, twice with flip TTA, through the two-convolution
#: network) takes 10 s (speedrun_94, measured 2026-12-05) to 40 s (best, measured earlier) on 2 CPU cores;
#: speedrun_95's is six passes (flips and translations) of a wider network.
SLOW_TEST_PASS = ("best", "speedrun_94", "speedrun_95")


@pytest.mark.parametrize(
    "experiment",
    [
        pytest.param(n, marks=pytest.mark.slow) if n in SLOW_TEST_PASS + TRAINS_AS_ANOTHER else n
        for n in config_names("experiment")
    ],
)
def test_experiment_fast_dev_run(make_cfg, experiment: str, tmp_path: Path) -> None:
    cfg = make_cfg(f"experiment={experiment}", "debug=fdr")
    metrics = train(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "finished"


def test_experiments_follow_their_recipes(make_cfg) -> None:
    """The settings each recipe states (docs/models.md, "Recipes"), as composed."""
    expected = {
        "recipe_000": ("TwoConvBNNet", 28, "Adam", 1e-3, None, 3),
        "recipe_001": ("ThreeConvNet", 28, "Adam", 1e-3, 64, None),
        "recipe_002": ("TwoConvNet", 28, "Adam", 1e-3, 128, None),
        "recipe_003": ("TwoConvNet", 16, "Adam", 1e-3, 64, None),
        "recipe_004": ("TwoConv5x5Net", 16, "SGD", 0.1, None, None),
    }
    assert sorted(expected) == [name for name in config_names("experiment") if name.startswith("recipe_")]
    for name, (net, size, optimizer, lr, batch, patience) in expected.items():
        cfg = make_cfg(f"experiment={name}")
        assert cfg.model._target_.endswith(net) and cfg.data.image_size == size
        assert cfg.optimizer._target_.endswith(optimizer) and cfg.optimizer.lr == lr
        if batch is not None:
            assert cfg.data.batch_size == batch
        es = cfg.callbacks.early_stopping
        assert (es.patience if es is not None else None) == patience
    assert not make_cfg("experiment=recipe_002").model.pool_every_conv  # PyTorch's MNIST example layout
    assert make_cfg("experiment=recipe_003").model.pool_every_conv
    assert make_cfg("experiment=recipe_000").optimizer.weight_decay == 1e-4
    assert make_cfg("experiment=recipe_001").data.val_fraction == 0.2
    assert OmegaConf.to_container(make_cfg("experiment=recipe_003").data.normalize) == {"mean": 0.5, "std": 0.5}
    assert make_cfg("experiment=recipe_004").data.normalize is None
    epochs = {name: make_cfg(f"experiment={name}").trainer.max_epochs for name in expected}
    assert (epochs["recipe_001"], epochs["recipe_002"], epochs["recipe_003"], epochs["recipe_004"]) == (10, 20, 10, 5)


DEFAULT_NET = "fmnist_lightning.models.ThreeConvNet"


def test_own_experiments(make_cfg) -> None:
    """experiment=best and experiment=fast: the settings docs/REPRODUCTION.md (best) and
    benchmarks/RESULTS.md (fast, "Time to accuracy") measured; the speedrun's recipes
    (docs/performance.md, "Speedrun")."""
    assert sorted(set(config_names("experiment")) - {f"recipe_00{i}" for i in range(5)}) == [
        "adv_pgd",
        "adv_trades",
        "best",
        "fast",
        "speedrun_91",
        "speedrun_93",
        "speedrun_94",
        "speedrun_95",
    ]
    best = make_cfg("experiment=best")
    assert best.model._target_.endswith("VGGBNNet") and list(best.model.widths) == [32, 64, 128]
    assert best.model.flip_tta and best.loss.label_smoothing == 0.1
    assert best.optimizer._target_ == "torch.optim.SGD" and best.optimizer.nesterov and best.optimizer.lr == 0.1
    assert (
        best.scheduler._target_.endswith("CosineAnnealingLR") and best.scheduler.T_max == best.trainer.max_epochs == 30
    )
    augment = OmegaConf.to_container(best.data.augment, resolve=True)
    assert (augment["crop"]["padding"], augment["flip"]["p"], augment["erase"]["p"]) == (2, 0.5, 0.5)
    assert augment["erase"]["value"] == best.data.normalize.mean  # 0 after normalisation, as torchvision's
    assert best.callbacks.early_stopping is None
    fast = make_cfg("experiment=fast")
    assert list(fast.model.widths) == [16, 32, 64] and fast.model.convs_per_stage == 1 and fast.model.dropout == 0
    assert fast.scheduler._target_.endswith("OneCycleLR") and fast.scheduler.interval == "step"
    assert fast.trainer.max_epochs == 2 and fast.optimizer.lr == 5e-3 and fast.callbacks.early_stopping is None
    # speedrun_91 is fast with CSV logging, patch whitening, a higher peak lr and one epoch; each next
    # recipe builds on the one before.
    composed = {n: OmegaConf.to_container(make_cfg(f"experiment={n}"), resolve=True) for n in ("fast", "speedrun_91")}
    loggers = composed["speedrun_91"].pop("logger"), composed["fast"].pop("logger")
    assert (list(loggers[0]), list(loggers[1])) == (["csv"], ["tensorboard"])
    changed = {("model", "whiten"): (0, 3), ("optimizer", "lr"): (5e-3, 8e-3), ("scheduler", "max_lr"): (5e-3, 8e-3)}
    changed[("trainer", "max_epochs")] = (2, 1)
    for (group, key), (before, after) in changed.items():
        assert (composed["fast"][group].pop(key), composed["speedrun_91"][group].pop(key)) == (before, after)
    assert composed["speedrun_91"] == composed["fast"]
    s93, s94, s95 = (make_cfg(f"experiment=speedrun_{t}") for t in (93, 94, 95))
    assert (s93.model.whiten, s93.data.alternating_flip, s93.data.augment.flip.p, s93.model.flip_tta) == (
        2,
        True,
        0,
        True,
    )
    assert (s94.model.convs_per_stage, s94.trainer.max_epochs, s94.model.whiten) == (2, 6, 2)
    assert (list(s95.model.widths), s95.model.crop_tta, s95.data.augment.crop.padding) == ([48, 96, 192], 1, 2)
    # Adversarial training (docs/adversarial.md): the quick-start network against L∞ ε = 0.1.
    for name, adversary in (("adv_pgd", "PGDTraining"), ("adv_trades", "TRADES")):
        adv = make_cfg(f"experiment={name}")
        assert adv.module._target_.endswith("AdversarialClassifier") and adv.module.adversary._target_.endswith(
            adversary
        )
        assert (adv.module.adversary.eps, adv.module.adversary.steps, adv.model._target_) == (0.1, 10, DEFAULT_NET)
        assert adv.module.adversary.normalize == adv.data.normalize and adv.trainer.max_epochs == 20
    assert make_cfg("experiment=adv_trades").module.adversary.beta == 6.0
    sr93, sr94 = make_cfg("experiment=speedrun_93"), make_cfg("experiment=speedrun_94")
    assert list(sr93.model.widths) == [32, 64, 128] and sr93.model.convs_per_stage == 1 and sr93.model.flip_tta
    assert sr93.data.alternating_flip and sr93.loss.label_smoothing == 0.1 and sr93.trainer.max_epochs == 3
    assert sr93.scheduler._target_.endswith("OneCycleLR") and sr93.optimizer.lr == 8e-3 and list(sr93.logger) == ["csv"]
    assert sr94.model.convs_per_stage == 2 and sr94.model.dropout == 0 and sr94.trainer.max_epochs == 6
    assert list(sr94.model.widths) == [32, 64, 128] and sr94.model.flip_tta and sr94.data.alternating_flip


#: Speedrun II's techniques (docs/performance.md, "Speedrun"), each as the overrides that switch it on.
TECHNIQUES = {
    "patch whitening 2x2": ["model.whiten=2"],
    "patch whitening 3x3": ["model.whiten=3"],
    "Dirac init": ["model.dirac_init=true"],
    "BatchNorm momentum, biases only": ["model.bn_momentum=0.4", "model.bn_weights=false"],
    "alternating flips": ["data.alternating_flip=true", "model.flip_tta=true"],
    "translation": ["data.augment.crop.padding=2"],
    "translation TTA": ["model.crop_tta=1"],
}  # Lookahead, EMA (tests/test_averaging.py) and Muon (tests/test_optimizers.py) are tried in their own tests.


@pytest.mark.slow  # about 1 s each
@pytest.mark.parametrize("technique", TECHNIQUES)
def test_each_speedrun_technique_composes_and_runs(make_cfg, technique: str, tmp_path: Path) -> None:
    metrics = train(make_cfg("experiment=speedrun_91", *TECHNIQUES[technique], "debug=fdr"))
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "finished"


@pytest.mark.slow  # two short trainings: about 5 s
def test_the_model_summary_counts_flops_and_leaves_the_run_bit_identical(make_cfg, tmp_path: Path) -> None:
    """The same short run with Lightning's model summary (its FLOPs pass over ``example_input_array``, in
    eval mode) and without: the same weights. The count is torch's FlopCounterMode's, for one image and
    its mirror image (flip TTA), through the 2×2 whitening (27 px after it) and three stages:
    2 × (8·4·729 + 32·8·9·729 + 64·32·9·169 + 128·64·9·36 + 1152·256 + 256·10) × 2."""
    from lightning.pytorch.utilities.model_summary import ModelSummary

    short = ["experiment=speedrun_93", "trainer.max_epochs=1", "trainer.limit_train_batches=6", "logger=none",
             "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "trainer.precision=32-true"]  # fmt: skip
    weights = []
    for name, extra in [("summary", []), ("no_summary", ["trainer.enable_model_summary=false"])]:
        train(make_cfg(*short, *extra, f"output_dir={tmp_path / name}"))
        weights.append(torch.load(tmp_path / name / "net.pt", weights_only=True))
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    cfg = make_cfg(*short)
    model = build_run(cfg).model
    assert tuple(model.example_input_array.shape) == (1, 1, cfg.data.image_size, cfg.data.image_size)
    per_pass = 8 * 4 * 729 + 32 * 8 * 9 * 729 + 64 * 32 * 9 * 169 + 128 * 64 * 9 * 36 + 1152 * 256 + 256 * 10
    assert ModelSummary(model).total_flops == 2 * 2 * per_pass == 31_078_528


@pytest.mark.slow  # about 5 s
def test_the_whitening_is_fitted_to_the_first_training_images(make_cfg, tmp_path: Path) -> None:
    """``model.whiten=3``: the trained network's frozen first layer is ``PatchWhitening.fit`` of the first
    5,000 training images of the run's split, preprocessed, and the layer never trained."""
    import hydra

    from fmnist_lightning.models.nets import PatchWhitening

    cfg = make_cfg("experiment=speedrun_91", "model.whiten=3", "debug=fdr")
    train(cfg)
    trained = torch.load(tmp_path / "net.pt", weights_only=True)
    dm = hydra.utils.instantiate(cfg.data)
    dm.setup("fit")
    expected = PatchWhitening(3)
    expected.fit(dm.preprocess(dm.data_train.images[:5000]))
    assert torch.equal(trained["features.0.weight"], expected.weight)
    assert torch.equal(trained["features.0.bias"], expected.bias)


@pytest.mark.slow  # three short trainings each: about 15 s
@pytest.mark.parametrize(
    "technique",
    [["model.whiten=2", "data.alternating_flip=true", "model.flip_tta=true", "model.crop_tta=1"], ["optimizer=muon"]],
    ids=["whitening, alternating flips, TTA", "Muon"],
)
def test_speedrun_techniques_resume_bit_exactly(data_root: Path, tmp_path: Path, technique: list[str]) -> None:
    """Two epochs at once, and one epoch then ``resume=`` to two: the same weights (the alternating
    flips' odd epoch is the resumed one). A constant lr: a one-cycle schedule's length is fixed by its
    first run's epochs, so it cannot be resumed to more."""
    from in_process import train_whole_and_resumed

    args = [
        "experiment=speedrun_91", *technique, "trainer.precision=32-true", "trainer.deterministic=true",
        "trainer.limit_train_batches=4", "scheduler=none", "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1", "logger=none", "callbacks.progress_bar=null", f"data.root={data_root}",
    ]  # fmt: skip
    whole, part = train_whole_and_resumed(args, tmp_path)
    first, second = (torch.load(f / "net.pt", weights_only=True) for f in (whole, part))
    assert all(torch.equal(first[k], second[k]) for k in first)
