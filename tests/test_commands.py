"""One end-to-end test per command as a new process, as a user runs it: ``train`` and
``resume=`` through the clone's ``python train.py``, ``fmnist-evaluate``, ``fmnist-predict``,
``fmnist-summarize``, ``fmnist-export``, ``fmnist-serve``, ``fmnist-compare``, ``fmnist-ood``,
``fmnist-explain`` and ``fmnist-attack`` through their console scripts (``fmnist-robustness``
runs as a process in tests/test_robustness.py), and ``python -m fmnist_lightning.cli.<command>``.

Each runs the command once as it should work (exit status 0, what it writes) and once with a
bad input (exit status 1, one ``error:`` line saying what to fix, no traceback). Every other
command-line test calls the same ``main()`` in the test process (``in_process.run_command``);
these are the ones that also cover the interpreter's start, the console scripts and the
clone's script, the exit status the shell sees, and stderr as the terminal shows it. Each
command here pays the imports again (about 6 s), so they are ``slow``: CI runs them, and so
does ``pytest -m slow``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import REPO, SCRIPT_ENV, job_folder, run_script
from fmnist_lightning.run_folder import RunFolder
from in_process import run_command

pytestmark = pytest.mark.slow

TINY = ["debug=fdr", "trainer=cpu", "model=two_conv_5x5", "data.image_size=16"]


def refused(result: subprocess.CompletedProcess, words: str) -> None:
    """Exit status 1, exactly one ``error:`` line, ``words`` in the message it starts (which
    may go on over the next lines, one per problem), and no traceback."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1, result.stderr[-3000:]
    assert len(errors) == 1 and words in result.stderr[result.stderr.index(errors[0]) :], result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


def succeeded(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


@pytest.fixture(scope="module")
def run_copy(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session's finished run, which these commands may add to."""
    return Path(shutil.copytree(trained_run, tmp_path_factory.mktemp("commands") / "run"))


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "item.png"
    Image.new("L", (28, 28)).save(path)
    return path


def test_train(data_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    succeeded(run_script("train.py", *TINY, f"data.root={data_root}", f"hydra.run.dir={run_dir}"))
    assert RunFolder(run_dir).read_status()["status"] == "finished"
    refused(
        run_script("train.py", *TINY, "optimizer.lr=-1", f"data.root={data_root}", f"hydra.run.dir={tmp_path / 'x'}"),
        "optimizer.lr=-1",
    )


def test_resume(run_copy: Path) -> None:
    refused(run_script("train.py", f"resume={run_copy}"), "already finished")
    succeeded(run_script("train.py", f"resume={run_copy}", "trainer.max_epochs=3"))
    assert RunFolder(run_copy).read_status()["epochs"] == 3


def test_evaluate(run_copy: Path, tmp_path: Path) -> None:
    result = run_script("fmnist-evaluate", f"run_dir={run_copy}", "device=cpu", f"hydra.run.dir={tmp_path / 'eval'}")
    succeeded(result)
    assert "test accuracy" in result.stdout
    refused(run_script("fmnist-evaluate", f"run_dir={tmp_path / 'missing'}", cwd=tmp_path), "missing")


def test_predict(run_copy: Path, image: Path) -> None:
    result = run_script("fmnist-predict", f"run_dir={run_copy}", f"images=[{image}]", "preprocess=none", "device=cpu")
    succeeded(result)
    assert result.stdout.startswith(f"{image}: ")
    refused(run_script("fmnist-predict", f"run_dir={run_copy}", f"images=[{image}]", "invert=maybe"), "invert='maybe'")


def test_ood(run_copy: Path, tmp_path: Path) -> None:
    common = [f"run_dir={run_copy}", "device=cpu", "ood=[vflip]", "scores=[msp,energy]", "bootstrap_resamples=10"]
    result = run_script("fmnist-ood", *common, f"hydra.run.dir={tmp_path / 'ood'}")
    succeeded(result)
    assert "vflip: AUROC msp" in result.stdout and (tmp_path / "ood" / "ood.json").is_file()
    refused(run_script("fmnist-ood", *common, "scores=[odin]", f"hydra.run.dir={tmp_path / 'x'}"), "scores=['odin']")


def test_explain(run_copy: Path, tmp_path: Path) -> None:
    common = [f"run_dir={run_copy}", "device=cpu", "indices=[0,1]"]
    result = run_script("fmnist-explain", *common, f"hydra.run.dir={tmp_path / 'explain'}")
    succeeded(result)
    assert result.stdout.startswith("test_0: ") and (tmp_path / "explain" / "maps.npy").is_file()
    refused(run_script("fmnist-explain", *common, "method=lime", f"hydra.run.dir={tmp_path / 'x'}"), "method='lime'")


def test_attack(run_copy: Path, tmp_path: Path) -> None:
    common = [f"run_dir={run_copy}", "device=cpu", "limit=16", "attacks=[fgsm]", "eps.Linf=[0.1]", "eps.L2=[]"]
    result = run_script("fmnist-attack", *common, "checks=null", f"hydra.run.dir={tmp_path / 'attack'}")
    succeeded(result)
    assert "FGSM L∞ ε=0.1: robust accuracy" in result.stdout and (tmp_path / "attack" / "attack.json").is_file()
    refused(run_script("fmnist-attack", *common, "eps.Linf=[8]", f"hydra.run.dir={tmp_path / 'x'}"), "ε/255?")


def test_summarize(data_root: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    made = run_command("train.py", "-m", *TINY, "seed=1,2", f"data.root={data_root}", f"hydra.sweep.dir={sweep}")
    assert made.returncode == 0, made.stderr[-3000:]
    (sweep / "summary.md").unlink()
    result = run_script("fmnist-summarize", f"sweep_dir={sweep}")
    succeeded(result)
    assert "2 jobs, 2 finished" in result.stdout and (sweep / "summary.md").is_file()
    assert RunFolder(job_folder(sweep, 0)).read_status()["status"] == "finished"
    refused(run_script("fmnist-summarize", f"sweep_dir={tmp_path / 'nothing'}"), "nothing")


def test_export(run_copy: Path) -> None:
    succeeded(run_script("fmnist-export", f"run_dir={run_copy}", "format=onnx"))
    assert (run_copy / "model.onnx").is_file()
    refused(run_script("fmnist-export", f"run_dir={run_copy}", "format=tflite"), "format='tflite'")


def test_serve(tmp_path: Path) -> None:
    """The server itself runs as a process in tests/test_serve.py (``start_server``: the
    ``fmnist-serve`` command, waited on until healthy); here the command refuses a folder that
    is not a run before it binds a port."""
    refused(run_script("fmnist-serve", f"run_dir={tmp_path}", "port=1"), "is not a run folder")


def test_compare(run_copy: Path, tmp_path: Path) -> None:
    result = run_script("fmnist-compare", str(run_copy), str(run_copy))
    succeeded(result)
    assert "No significant difference: B − A = +0.00 points" in result.stdout
    refused(run_script("fmnist-compare", str(run_copy), str(tmp_path / "missing")), "is not a folder")


def python_m(command: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m fmnist_lightning.cli.<command> <args>`` as a new process, from the repository."""
    module = f"fmnist_lightning.cli.{command}"
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, env=SCRIPT_ENV, capture_output=True, text=True, timeout=600
    )


def test_python_m(run_copy: Path, tmp_path: Path) -> None:
    """``python -m fmnist_lightning.cli.<command>`` is the same command: its configs are found
    (as the package ``fmnist_lightning.conf``, not beside the module's file), and training
    names itself that way in what it tells the user to run."""
    result = python_m("evaluate", f"run_dir={run_copy}", "device=cpu", f"hydra.run.dir={tmp_path / 'eval'}")
    succeeded(result)
    assert "test accuracy" in result.stdout
    refused(python_m("export", f"run_dir={run_copy}", "format=tflite"), "format='tflite'")
    swept = python_m("train", "-m", f"resume={run_copy}")
    refused(swept, "continue a whole sweep with python -m fmnist_lightning.cli.train resume=<sweep folder>")
