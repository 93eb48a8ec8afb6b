"""A run folder, checkpoint or sweep from someone else runs no code on this machine
(``fmnist_lightning.trust``; docs/runs.md, "Sharing runs safely").

Each case plants a payload in a crafted folder: a ``_target_`` that would create a marker file
(through ``torch.load`` of a pickle, ``numpy.load``, ``exec``, ``eval``, ``os.system``,
``importlib.import_module``, ``functools.partial``, an alias spelling of ``torch.load``), nested
in the places Hydra instantiates recursively, a module the folder's own config claims to trust,
and a resolver. Each is tried through every command that reads a run back; each must be refused
with the project's own message, and the marker must never appear."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fmnist_lightning.errors import UserError
from fmnist_lightning.models import FashionMNISTClassifier
from fmnist_lightning.trust import UntrustedConfigError, check_config, check_target
from in_process import run_command

#: The module a payload's import would run (written by the ``payload`` fixture).
PAYLOAD_MODULE = "fmnist_payload"


class Pickled:
    """Unpickling it runs ``os.system(command)``: what a hostile ``.pt`` or ``.npy`` holds."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.fixture
def payload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The payloads' files, and the marker any of them would create."""
    marker = tmp_path / "marker"
    touch = f"touch {marker}"
    torch.save(Pickled(touch), tmp_path / "evil.pt")
    np.save(tmp_path / "evil.npy", np.array([Pickled(touch)], dtype=object), allow_pickle=True)
    (tmp_path / f"{PAYLOAD_MODULE}.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nimport torch\nclass Net(torch.nn.Module):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return {"marker": str(marker), "touch": touch, "pt": str(tmp_path / "evil.pt"), "npy": str(tmp_path / "evil.npy")}


def system(p: dict) -> dict:
    return {"_target_": "os.system", "_args_": [p["touch"]]}


#: case → (key of the config, node planted there, text the refusal names).
CASES = {
    "torch_load": ("model", lambda p: {"_target_": "torch.load", "f": p["pt"], "weights_only": False}, "torch.load"),
    "numpy_load": ("model", lambda p: {"_target_": "numpy.load", "file": p["npy"], "allow_pickle": True}, "numpy"),
    "exec": ("model", lambda p: {"_target_": "builtins.exec", "_args_": [f"open({p['marker']!r},'w')"]}, "builtins"),
    "eval": ("model", lambda p: {"_target_": "builtins.eval", "_args_": [f"open({p['marker']!r},'w')"]}, "builtins"),
    "os_system": ("model", system, "os.system"),
    "import_module": (
        "model",
        lambda p: {"_target_": "importlib.import_module", "_args_": [PAYLOAD_MODULE]},
        "importlib",
    ),
    "partial": (
        "model",
        lambda p: {
            "_target_": "functools.partial",
            "_args_": [{"_target_": "hydra.utils.get_method", "path": "os.system"}],
        },
        "functools",
    ),
    "alias": (
        "model",
        lambda p: {"_target_": "torch.nn.functional.torch.load", "f": p["pt"], "weights_only": False},
        "torch.serialization.load",
    ),
    "nested_in_optimizer": (
        "optimizer",
        lambda p: {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.001, "foo": system(p)},
        "optimizer.foo._target_",
    ),
    "in_callbacks": ("callbacks.evil", system, "callbacks.evil._target_"),
    "in_logger": ("logger.evil", system, "logger.evil._target_"),
    "module": ("module", lambda p: {"_target_": f"{PAYLOAD_MODULE}.Net"}, f"module._target_='{PAYLOAD_MODULE}.Net'"),
    "in_data_augment": ("data.augment.evil", system, "data.augment.evil._target_"),
    "folder_claims_trust": ("model", lambda p: {"_target_": f"{PAYLOAD_MODULE}.Net"}, f"{PAYLOAD_MODULE}.Net"),
}


def crafted_run(trained_run: Path, folder: Path, case: str, payload: dict) -> Path:
    """A copy of the session's run whose ``.hydra/config.yaml`` carries the case's payload."""
    shutil.copytree(trained_run, folder, ignore=shutil.ignore_patterns("events.*", "*.pbtxt", "0*"))
    path = folder / ".hydra" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    key, node, _ = CASES[case]
    *parents, last = key.split(".")
    place = config
    for part in parents:
        place = place.setdefault(part, {}) or {}
    place[last] = node(payload)
    if case == "folder_claims_trust":
        config["trusted_modules"] = [PAYLOAD_MODULE]
    path.write_text(yaml.safe_dump(config))
    return folder


def assert_refused(result, expected: str, payload: dict) -> None:
    assert result.returncode == 1, (result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0] and "trusted_modules=[" in errors[0], result.stderr[-3000:]
    assert not Path(payload["marker"]).exists(), "the payload ran"


ENTRY_POINTS = ("evaluate", "predict", "export", "robustness", "ood", "explain", "compare", "resume")


def matrix(*axes: list[str], default: set[str]) -> list:
    """Every combination; in the default suite only those naming one of ``default`` (every
    case through ``evaluate``, every command with ``torch_load``), the rest marked slow."""
    from itertools import product

    return [
        pytest.param(*combo, id="-".join(combo), marks=[] if default & set(combo) else [pytest.mark.slow])
        for combo in product(*axes)
    ]


@pytest.mark.parametrize(("case", "entry"), matrix(list(CASES), ENTRY_POINTS, default={"evaluate", "torch_load"}))
def test_a_crafted_run_folder_is_refused_before_any_import_or_call(
    trained_run: Path, tmp_path: Path, payload: dict, case: str, entry: str
) -> None:
    run = crafted_run(trained_run, tmp_path / "run", case, payload)
    image = tmp_path / "image.png"
    image.write_bytes(b"")
    arguments = {
        "evaluate": ("evaluate.py", f"run_dir={run}", "device=cpu", f"hydra.run.dir={tmp_path / 'out'}"),
        "predict": ("predict.py", f"run_dir={run}", f"images=[{image}]", "device=cpu"),
        "export": ("export.py", f"run_dir={run}"),
        "robustness": ("robustness.py", f"run_dir={run}", "device=cpu", f"hydra.run.dir={tmp_path / 'out'}"),
        "ood": ("ood.py", f"run_dir={run}", "ood=[vflip]", "device=cpu", f"hydra.run.dir={tmp_path / 'out'}"),
        "explain": ("explain.py", f"run_dir={run}", "device=cpu", f"hydra.run.dir={tmp_path / 'out'}"),
        "compare": ("compare.py", str(trained_run), str(run)),
        "resume": ("train.py", f"resume={run}", "trainer.max_epochs=5"),
    }[entry]
    assert_refused(run_command(*arguments), CASES[case][2], payload)


@pytest.mark.parametrize("case", matrix(list(CASES), default={"torch_load", "module"}))
def test_the_server_refuses_a_crafted_run_folder(trained_run: Path, tmp_path: Path, payload: dict, case: str) -> None:
    from fmnist_lightning.serving.server import ServeOptions, build_server

    run = crafted_run(trained_run, tmp_path / "run", case, payload)
    with pytest.raises(UntrustedConfigError, match="trusted_modules=\\["):
        build_server(ServeOptions(run_dir=str(run)))
    assert not Path(payload["marker"]).exists()


#: The cases that have a place in a checkpoint's hyperparameters (the network, the optimizer).
CHECKPOINT_CASES = [c for c, (key, _, _) in CASES.items() if key in ("model", "optimizer")]


@pytest.mark.parametrize("case", matrix(CHECKPOINT_CASES, default={"torch_load", "nested_in_optimizer"}))
def test_load_from_checkpoint_refuses_crafted_hyperparameters(
    trained_run: Path, tmp_path: Path, payload: dict, case: str
) -> None:
    checkpoint = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    key, node, expected = CASES[case]
    checkpoint["hyper_parameters"]["net" if key == "model" else key] = node(payload)
    torch.save(checkpoint, tmp_path / "crafted.ckpt")
    with pytest.raises(UntrustedConfigError, match="trusted_modules=\\[") as refused:
        FashionMNISTClassifier.load_from_checkpoint(tmp_path / "crafted.ckpt", map_location="cpu")
    assert expected.replace("model.", "") in str(refused.value) or expected in str(refused.value)
    assert not Path(payload["marker"]).exists()


def sweep_override(key: str, node: dict) -> str:
    """``++<key>=<node>`` in Hydra's override grammar (strings quoted)."""

    def flow(value):
        if isinstance(value, dict):
            return "{" + ",".join(f"{k}:{flow(v)}" for k, v in value.items()) + "}"
        if isinstance(value, list):
            return "[" + ",".join(flow(v) for v in value) + "]"
        if isinstance(value, bool):
            return str(value).lower()
        return repr(value) if isinstance(value, str) else str(value)

    return f"++{key}={flow(node)}"


@pytest.mark.parametrize("case", matrix(list(CASES), default={"torch_load", "folder_claims_trust"}))
def test_a_crafted_sweep_is_refused_before_it_is_continued(tmp_path: Path, payload: dict, case: str) -> None:
    """``resume=<sweep folder>`` repeats the overrides of its ``multirun.yaml``: they are
    checked first, and a ``trusted_modules`` among them is dropped."""
    key, node, expected = CASES[case]
    task = ["optimizer.lr=0.001,0.01", sweep_override(key, node(payload))]
    if case == "folder_claims_trust":
        task.append(f"trusted_modules=[{PAYLOAD_MODULE}]")
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"hydra": [], "task": task}}}))
    assert_refused(run_command("train.py", f"resume={sweep}"), expected, payload)


@pytest.mark.parametrize(
    "hydra_override",
    [
        "hydra.searchpath=[file:///tmp]",
        "hydra.callbacks.evil._target_=os.system",
        "hydra/job_logging=none",
        "hydra.launcher.setup=['touch /tmp/x']",
        "++hydra={job_logging:{version:1}}",
    ],
)
def test_a_sweep_may_not_steer_hydra_itself(tmp_path: Path, hydra_override: str) -> None:
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    overrides = {"hydra": [hydra_override], "task": ["optimizer.lr=0.001,0.01"]}
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": overrides}}))
    result = run_command("train.py", f"resume={sweep}")
    assert result.returncode == 1 and "give it on this command again" in result.stderr, result.stderr[-2000:]


def test_a_run_folder_may_not_carry_configs_for_hydra_itself(trained_run: Path, tmp_path: Path) -> None:
    """``resume=`` composes from the run's ``.hydra/``; a ``hydra/`` folder there would be
    searched for Hydra's own configs (its logging, launcher)."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("events.*", "*.pbtxt", "0*"))
    (run / ".hydra" / "hydra" / "job_logging").mkdir(parents=True)
    (run / ".hydra" / "hydra" / "job_logging" / "default.yaml").write_text("version: 1\n")
    result = run_command("train.py", f"resume={run}", "trainer.max_epochs=5")
    assert result.returncode == 1 and "holds a hydra/ folder" in result.stderr, result.stderr[-2000:]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"data": {"root": "${oc.env:HOME}"}}, "calls the resolver 'oc.env'"),
        ({"data": {"root": "${oc.decode:'1'}"}}, "calls the resolver 'oc.decode'"),
        ({"model": {"dropout": "${oc.${data.name}:x}"}}, "calls the resolver 'oc.${data.name'"),  # a built name
        ({"output_dir": "${fmnist.new_dir:/tmp/fmnist_trust_test_folder}"}, "calls the resolver 'fmnist.new_dir'"),
        ({"hydra": {"callbacks": {}}}, "top-level 'hydra'"),
        ({"defaults": ["_self_"]}, "top-level 'defaults'"),
    ],
)
def test_resolvers_and_hydra_s_own_keys_are_refused_in_a_saved_config(
    trained_run: Path, tmp_path: Path, change: dict, expected: str
) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run / ".hydra", run / ".hydra")
    config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    for key, value in change.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) and key in config else value
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    result = run_command("evaluate.py", f"run_dir={run}", f"hydra.run.dir={tmp_path / 'out'}")
    assert result.returncode == 1 and expected in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not Path("/tmp/fmnist_trust_test_folder").exists()  # refused before anything resolved a value


def test_a_sampler_that_unpickles_study_data_is_refused(tmp_path: Path) -> None:
    """CmaEsSampler is an Optuna sampler, but it unpickles state stored in the study, which a
    continued search reads from its folder: samplers and pruners are allowed by name."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    overrides = {"hydra": ["hydra.sweeper.sampler._target_=optuna.samplers.CmaEsSampler"], "task": []}
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": overrides}}))
    result = run_command("train.py", f"resume={sweep}")
    assert result.returncode == 1 and "CmaEsSampler is not one of optuna.samplers.TPESampler" in result.stderr


@pytest.mark.parametrize("where", ["module_arguments", "hparams", "tuple"])
def test_a_checkpoint_s_older_hyperparameter_keys_and_tuples_are_checked(
    trained_run: Path, tmp_path: Path, payload: dict, where: str
) -> None:
    """Lightning still merges ``hparams`` and ``module_arguments`` into the constructor's
    arguments, and ``weights_only`` loading keeps tuples, which Hydra instantiates as lists."""
    checkpoint = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    evil = CASES["torch_load"][1](payload)
    if where == "tuple":
        checkpoint["hyper_parameters"]["net"] = {**checkpoint["hyper_parameters"]["net"], "extra": (evil,)}
    else:
        checkpoint[where] = {"net": evil}
    torch.save(checkpoint, tmp_path / "crafted.ckpt")
    with pytest.raises(UntrustedConfigError, match=r"torch\.load"):
        FashionMNISTClassifier.load_from_checkpoint(tmp_path / "crafted.ckpt", map_location="cpu")
    assert not Path(payload["marker"]).exists()


def test_what_a_target_resolves_to_decides_not_its_spelling() -> None:
    check_target("model", "fmnist_lightning.models.ThreeConvNet")
    check_target("optimizer", "torch.optim.Adam")
    check_target("callbacks.x", "lightning.pytorch.callbacks.EarlyStopping")
    check_target("hydra.sweeper.sampler", "optuna.samplers.TPESampler")
    for key, target in [
        ("model", "fmnist_lightning.training.pipeline.torch.load"),  # the project's module, torch's function
        ("optimizer", "torch.nn.Linear"),  # a class, but not an optimizer
        ("model", "lightning.pytorch.LightningModule.load_from_checkpoint"),  # a method
        ("model", "torch._C._nn.linear"),  # private
        ("model", "antigravity.x"),  # never imported
    ]:
        with pytest.raises(UntrustedConfigError):
            check_target(key, target)
    assert "antigravity" not in __import__("sys").modules


def test_the_shipped_configs_and_a_trusted_module_pass(trained_run: Path) -> None:
    """The session's run (every shipped default), and a module of one's own once trusted."""
    config = yaml.safe_load((trained_run / ".hydra" / "config.yaml").read_text())
    check_config(config)
    config["loss"] = {"_target_": "test_extending.PolyLoss"}
    with pytest.raises(UntrustedConfigError, match="test_extending is not a library"):
        check_config(config)
    check_config(config, ["test_extending"])
    assert issubclass(UntrustedConfigError, UserError)


def test_every_shipped_option_and_experiment_passes_as_it_would_be_read_back(data_root: Path) -> None:
    """What a run of any shipped config saves names only trusted callables."""
    from conftest import compose_train, config_names

    overrides = [f"experiment={name}" for name in config_names("experiment")]
    for group in ("model", "loss", "mix", "metrics", "optimizer", "scheduler", "logger"):
        overrides += [f"{group}={name}" for name in config_names(group)]
    for override in overrides:
        check_config(compose_train(data_root, override), what=override)
