"""The installed wheel: configs packaged, console scripts that run from any folder."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

from conftest import REPO
from in_process import COMMANDS

#: What a build of the repository must not copy in: environments, runs, data, build products.
NOT_SOURCES = {".git", ".venv", "outputs", "multirun", "data", "build", "dist", "site", "fmnist_lightning.egg-info"}


def _not_sources(folder: str, names: list[str]) -> set[str]:
    return NOT_SOURCES & set(names) if Path(folder) == REPO else {"__pycache__"} & set(names)


def test_every_package_is_listed_for_the_wheel():
    """pyproject.toml lists the packages by name (conf/ is mapped into the package, which
    setuptools' package discovery cannot express): a new subpackage must be added there."""
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    inits = [*(REPO / "fmnist_lightning").rglob("__init__.py"), *(REPO / "hydra_plugins").rglob("__init__.py")]
    found = {".".join(p.parent.relative_to(REPO).parts) for p in inits} | {"fmnist_lightning.conf"}
    assert listed == found


def test_every_console_script_is_a_command_of_the_tests():
    """The console scripts of pyproject.toml are the commands ``in_process.COMMANDS`` names, which
    the tests run and the wheel must carry: a new command is added to both."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {f"fmnist-{command}": f"fmnist_lightning.cli.{command}:main" for command in COMMANDS}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the working tree (so no build products land in it)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(REPO, source, ignore=_not_sources)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp), str(source)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    (path,) = tmp.glob("fmnist_lightning-*.whl")
    return path


def test_wheel_carries_the_configs_and_scripts(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    conf = {p.relative_to(REPO / "conf").as_posix() for p in (REPO / "conf").rglob("*") if p.is_file()}
    assert {f"fmnist_lightning/conf/{name}" for name in conf if not name.endswith(".pyc")} <= names
    assert not any(name.startswith(("conf/", "tests/", "benchmarks/")) for name in names)
    (entry_points,) = (n for n in names if n.endswith(".dist-info/entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    for command in COMMANDS:  # in_process.COMMANDS: every console script
        assert f"fmnist-{command} = fmnist_lightning.cli.{command}:main" in scripts
    assert "fmnist_lightning/serving/page.html" in names  # the server's web page
    assert "hydra_plugins/fmnist_lightning_sweepers/__init__.py" in names  # where Hydra finds the sweepers


@pytest.mark.slow  # about 30 s: a fresh venv, the wheel installed, and two commands run
def test_installed_wheel_trains_from_any_folder(wheel: Path, data_root: Path, tmp_path: Path):
    """``pip install`` of the wheel into a fresh venv, then ``fmnist-train debug=fdr`` from an
    unrelated folder: the configs come from the installed package, outputs/ from the folder."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    # The dependencies (torch, Lightning, ...) come from the environment running the tests,
    # which may itself be a venv that --system-site-packages does not reach.
    venv_site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(venv_site) / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # The clone's train.py in an environment where the package was never installed: the
    # configs' package is missing, and the command says how to install it.
    uninstalled = subprocess.run([python, REPO / "train.py"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert uninstalled.returncode == 1 and "scripts/setup.sh" in uninstalled.stderr, uninstalled.stderr[-2000:]
    assert "Traceback" not in uninstalled.stderr

    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip

    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run(
        [python, "-c", "import fmnist_lightning.conf as c, fmnist_lightning.cli as t; print(c.__file__, t.__file__)"],
        cwd=work, env=env, check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    assert all(Path(p).is_relative_to(venv) for p in where), where

    result = subprocess.run(
        [venv / "bin" / "fmnist-train", "debug=fdr", f"data.root={data_root}"],
        cwd=work, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (work / "outputs" / "runs").iterdir()
    assert (run / "report.json").is_file() and (run / ".hydra" / "config.yaml").is_file()
    sweep = subprocess.run(  # the sweepers, found by Hydra in the installed hydra_plugins
        [venv / "bin" / "fmnist-train", "-m", "debug=fdr", "seed=1,2", f"data.root={data_root}"],
        cwd=work, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert sweep.returncode == 0 and "2 jobs, 2 finished" in sweep.stdout, sweep.stderr[-3000:]

    evaluated = subprocess.run(
        [venv / "bin" / "fmnist-evaluate", f"run_dir={run}", "weights=net.pt", "device=cpu", f"data_root={data_root}"],
        cwd=work, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "test accuracy" in evaluated.stdout
    for command, key in (("fmnist-predict", "images"), ("fmnist-summarize", "sweep_dir"), ("fmnist-serve", "backend")):
        shown = subprocess.run(
            [venv / "bin" / command, "--cfg", "job"], cwd=work, env=env, capture_output=True, text=True
        )
        assert shown.returncode == 0 and f"{key}:" in shown.stdout, shown.stderr
    compared = subprocess.run(
        [venv / "bin" / "fmnist-compare", str(run), str(run)], cwd=work, env=env, capture_output=True, text=True
    )
    assert compared.returncode == 0 and "No significant difference" in compared.stdout, compared.stderr[-3000:]
