"""Every file a command reads back from a run folder, damaged four ways, through every command
that reads it: each case ends with exit 1 and one ``error:`` line naming the file, without a
traceback, and changes no other file (fmnist_lightning/artifacts.py). The commands run in the
test process (``in_process.run_command``; tests/test_commands.py starts each as a process).

A new artifact is one line in ``ARTIFACTS`` and its pairs in ``READERS``; a new command is one
entry in ``COMMANDS``.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fmnist_lightning.artifacts import write_atomically
from fmnist_lightning.errors import RunError
from fmnist_lightning.evaluation.runs import load_trained
from fmnist_lightning.models.nets import TwoConvBNNet
from fmnist_lightning.run_folder import RunFolder
from in_process import run_command


def other_network() -> bytes:
    """A valid ``state_dict`` file, of a network the run does not use."""
    buffer = io.BytesIO()
    torch.save(TwoConvBNNet(image_size=16).state_dict(), buffer)
    return buffer.getvalue()


def best_checkpoint(run: Path) -> Path:
    return run / RunFolder(run).read_status()["best_checkpoint"]


# artifact → (where it is in a run folder, a valid-looking file of the wrong kind)
ARTIFACTS: dict[str, tuple[Callable[[Path], Path], Callable[[], bytes]]] = {
    "config.yaml": (lambda run: run / ".hydra" / "config.yaml", lambda: b"- 1\n- 2\n"),
    "overrides.yaml": (lambda run: run / ".hydra" / "overrides.yaml", lambda: b"model: two_conv\n"),
    "metrics.json": (lambda run: run / "metrics.json", lambda: b'[{"status": "finished", "epochs": 2}]\n'),
    "history.csv": (lambda run: run / "history.csv", lambda: b"a,b\n1,2\n"),
    "net.pt": (lambda run: run / "net.pt", other_network),
    "last.ckpt": (lambda run: run / "checkpoints" / "last.ckpt", other_network),
    "best.ckpt": (best_checkpoint, other_network),
}

DAMAGES: dict[str, Callable[[bytes, str], bytes]] = {
    "empty": lambda data, artifact: b"",
    "truncated": lambda data, artifact: data[: len(data) // 2],
    "random_bytes": lambda data, artifact: random.Random(0).randbytes(4096),
    "wrong_kind": lambda data, artifact: ARTIFACTS[artifact][1](),
}

# The weights option that makes a command read each weights file.
WEIGHTS = {"net.pt": "net.pt", "last.ckpt": "last", "best.ckpt": "best"}


def weights(artifact: str) -> list[str]:
    return [f"weights={WEIGHTS[artifact]}"] if artifact in WEIGHTS else []


# command → (script, its arguments) for a run folder inside a sweep folder, the damaged file,
# and a scratch folder outside the run.
COMMANDS: dict[str, Callable[[Path, Path, Path, str, Path], tuple[str, list[str]]]] = {
    "resume": lambda run, file, tmp, artifact, data: ("train.py", [f"resume={run}", "trainer.max_epochs=3"]),
    "ckpt_path": lambda run, file, tmp, artifact, data: (
        "train.py",
        [
            "model=two_conv_5x5",
            "data.image_size=16",
            "trainer=cpu",
            f"data.root={data}",
            f"ckpt_path={file}",
            f"hydra.run.dir={tmp / 'new_run'}",
        ],
    ),
    "evaluate": lambda run, file, tmp, artifact, data: (
        "evaluate.py",
        [f"run_dir={run}", *weights(artifact), "device=cpu", f"hydra.run.dir={tmp / 'evaluation'}"],
    ),
    "predict": lambda run, file, tmp, artifact, data: (
        "predict.py",
        [f"run_dir={run}", f"images=[{tmp / 'item.png'}]", *weights(artifact), "device=cpu"],
    ),
    "summarize": lambda run, file, tmp, artifact, data: ("summarize.py", [f"sweep_dir={run.parent}"]),
}

# Which command reads which artifact (load_trained, the Python API, is in READ_BY_LOAD_TRAINED).
READERS = [
    ("config.yaml", "resume"),
    ("config.yaml", "evaluate"),
    ("config.yaml", "predict"),
    ("overrides.yaml", "summarize"),
    ("metrics.json", "resume"),
    ("metrics.json", "evaluate"),  # the best checkpoint is named there
    ("metrics.json", "summarize"),
    ("history.csv", "resume"),
    ("net.pt", "evaluate"),
    ("net.pt", "predict"),
    ("last.ckpt", "resume"),
    ("last.ckpt", "ckpt_path"),
    ("last.ckpt", "evaluate"),
    ("last.ckpt", "predict"),
    ("best.ckpt", "ckpt_path"),
    ("best.ckpt", "evaluate"),
    ("best.ckpt", "predict"),
]
READ_BY_LOAD_TRAINED = ["config.yaml", "net.pt", "last.ckpt", "best.ckpt"]


def snapshot(folder: Path, but: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p != but
    }


def damaged_copy(trained_run: Path, tmp_path: Path, artifact: str, damage: str) -> tuple[Path, Path]:
    """A copy of the run as job 0 of a sweep folder, with one file damaged."""
    run = tmp_path / "sweep" / "0"
    shutil.copytree(trained_run, run)
    file = ARTIFACTS[artifact][0](run)
    file.write_bytes(DAMAGES[damage](file.read_bytes(), artifact))
    return run, file


@pytest.mark.slow  # 68 cases, about 40 s
@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize(("artifact", "command"), READERS, ids=[f"{a}-{c}" for a, c in READERS])
def test_damaged_file_is_refused(
    trained_run: Path, data_root: Path, tmp_path: Path, artifact: str, command: str, damage: str
) -> None:
    run, file = damaged_copy(trained_run, tmp_path, artifact, damage)
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(tmp_path / "item.png")
    before = snapshot(run.parent, but=file)
    script, args = COMMANDS[command](run, file, tmp_path, artifact, data_root)

    result = run_command(script, *args)

    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and len(errors) == 1, result.stderr[-3000:]
    assert file.name in errors[0], errors[0]
    assert "Traceback" not in result.stderr
    assert snapshot(run.parent, but=file) == before, "another file of the folder changed"


@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize("artifact", READ_BY_LOAD_TRAINED)
def test_load_trained_refuses_a_damaged_file(trained_run: Path, tmp_path: Path, artifact: str, damage: str) -> None:
    run, file = damaged_copy(trained_run, tmp_path, artifact, damage)
    with pytest.raises(RunError) as refused:
        load_trained(run, WEIGHTS.get(artifact, "net.pt"))
    assert str(file) in str(refused.value)


def test_a_failed_write_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """write_atomically (metrics.json, history.csv, the saved config, the dataset's files):
    when the write fails, e.g. on a full disk, the old file stays whole and no temporary file
    is left."""
    path = tmp_path / "metrics.json"
    write_atomically(path, "old\n")
    assert path.read_text() == "old\n" and path.stat().st_mode & 0o777 == 0o644

    def full_disk(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_atomically(path, b"new")
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
