"""scripts/reproduce.py: the reproduction document from sweep folders, and its refusals."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import CONF, REPO, job_folder, run_script
from fmnist_lightning.data import load_dataset
from fmnist_lightning.evaluation.report import classification_report
from fmnist_lightning.run_folder import RunFolder

spec = importlib.util.spec_from_file_location("reproduce", REPO / "scripts" / "reproduce.py")
reproduce = importlib.util.module_from_spec(spec)
sys.modules["reproduce"] = reproduce  # its dataclasses look their module up there
spec.loader.exec_module(reproduce)


def make_job(folder: Path, experiment: str, seed: int, test_acc: float, status: str = "finished", **changes) -> None:
    """A job folder as train.py -m leaves it: config, overrides, metrics.json, report.json."""
    (folder / ".hydra").mkdir(parents=True)
    overrides = [f"experiment={experiment}", f"seed={seed}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides + [f"{k}={v}" for k, v in changes.items()])
    OmegaConf.save(cfg, folder / ".hydra" / "config.yaml")
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    RunFolder(folder).write_status(
        status,
        epochs=3,
        wall_time_s=12.5,
        metrics={"test/acc": test_acc, "val/acc_best": test_acc + 0.004},
        error=None if status == "finished" else "RuntimeError: boom",
    )
    generator = torch.Generator().manual_seed(seed)
    targets = torch.arange(10).repeat(100)
    wrong = torch.rand(1000, generator=generator) > test_acc
    preds = torch.where(wrong, (targets + 1) % 10, targets)
    (folder / "report.json").write_text(
        json.dumps(classification_report(preds, targets, load_dataset().class_names)) + "\n"
    )


def make_sweep(folder: Path, jobs: list[tuple], gpu: str | None = None) -> Path:
    for i, (experiment, seed, acc, *rest) in enumerate(jobs):
        make_job(folder / str(i), experiment, seed, acc, **(rest[0] if rest else {}))
    record = {
        "command": (
            f"python train.py -m experiment=x seed=0 hydra.sweep.dir={folder} "
            "hydra/launcher=joblib hydra.launcher.n_jobs=4"
        ),
        "commit": "0123456789abcdef",
        "uncommitted_changes": False,
        "source_digest": reproduce.source_digest(),
        "wall_time_s": 99.0,
        "finished": "2026-11-22 21:00:00 UTC",
        "hardware": {"cpu": "Test CPU", "cpu_cores": 2, "gpu": gpu},
    }
    (folder / "reproduction.json").write_text(json.dumps(record) + "\n")
    return folder


def test_report_tables_targets_and_superseded_runs(tmp_path: Path) -> None:
    a = make_sweep(
        tmp_path / "sweep_a",
        [
            ("recipe_001", 0, 0.915),
            ("recipe_001", 1, 0.913),
            ("recipe_001", 2, 0.914),
            ("recipe_002", 0, 0.93),
            ("best", 0, 0.94),
            ("best", 1, 0.95),
            ("best", 2, 0.944),
        ],
    )
    b = make_sweep(
        tmp_path / "sweep_b",
        [
            ("recipe_004", 0, 0.87, {"optimizer.lr": 0.05}),  # its config has changed since: superseded
            ("fast", 0, 0.92),
        ],
        gpu="Test GPU",
    )
    # A job that failed is listed, not averaged.
    make_job(b / "2", "fast", 1, 0.5, status="failed")
    doc = tmp_path / "docs" / "REPRODUCTION.md"
    notes = tmp_path / "notes.md"
    notes.write_text("## Findings\n\nHand-written.\n")
    assert reproduce.main(["report", str(a), str(b), "--doc", str(doc), "--notes", str(notes)]) == 0
    text = doc.read_text()
    results = text.split("## Results")[1].split("## Runs")[0]
    rows = {line.split("|")[1].strip(): line for line in results.splitlines() if line.startswith("| `")}

    # Recipe 001: mean 91.40 of three seeds >= 91.40 - 0.5.
    assert "**91.40 ± 0.10**" in rows["`recipe_001`"] and "yes (≥ 90.90)" in rows["`recipe_001`"]
    assert "91.50, 91.30, 91.40" in rows["`recipe_001`"] and "CPU only: Test CPU, 2 cores (4)" in rows["`recipe_001`"]
    assert "**no** (mean >= 94.50 %)" in rows["`best`"]  # 94.47
    # Fewer than 3 seeds are shown but not judged.
    assert (
        "**92.00 (1 seed)**" in rows["`fast`"]
        and "not judged (1 of 3 seeds)" in rows["`fast`"]
        and "Test GPU" in rows["`fast`"]
    )
    # Weighted P/R/F1 next to the reported ones; recipe 002's classes and confused pairs.
    assert "| precision | 0.9139 |" in text
    assert "| 6 | Shirt | 79.40 |" in text and "| 1 | Shirt → T-shirt/top | 82 |" in text
    # The changed config is not counted, and the change is named.
    superseded = text.split("## Superseded runs")[1]
    assert (
        "`recipe_004`" not in rows and "`recipe_004`" in superseded and "optimizer.lr: 0.05 then, 0.1 now" in superseded
    )
    assert "sweep_b/2: failed RuntimeError: boom" in text
    assert "same as this checkout" in text and text.rstrip().endswith("Hand-written.")
    # The small records are archived beside the document.
    assert (
        json.loads((doc.parent / "reproduction" / "sweep_a" / "reproduction.json").read_text())["commit"]
        == "0123456789abcdef"
    )


def test_parameters_added_later_with_the_old_default_are_no_change(tmp_path: Path) -> None:
    """A run made before TwoConvNet had pool_every_conv/padding still counts for recipe_003."""
    sweep = make_sweep(tmp_path / "s", [("recipe_003", 0, 0.9)])
    config = sweep / "0" / ".hydra" / "config.yaml"
    cfg = OmegaConf.load(config)
    del cfg.model["pool_every_conv"], cfg.model["padding"]
    OmegaConf.save(cfg, config)
    assert reproduce.config_changes(reproduce.read_sweep(sweep)[0]) == []


def test_refusals(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match=r"has no reproduction\.json"):
        reproduce.main(["report", str(tmp_path / "empty")])
    with pytest.raises(SystemExit, match="unknown experiment"):
        reproduce.main(["run", "--experiments", "recipe_009"])
    (tmp_path / "used" / "0").mkdir(parents=True)
    with pytest.raises(SystemExit, match="already exists and is not empty"):
        reproduce.main(["run", "--sweep-dir", str(tmp_path / "used")])


@pytest.mark.slow
def test_run_then_report_end_to_end(data_root: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    short = [
        "trainer=cpu",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=10",
        "trainer.limit_val_batches=2",
        "callbacks.progress_bar=null",
        "logger=none",
        f"data.root={data_root}",
    ]
    result = run_script(
        "scripts/reproduce.py",
        "run",
        "--experiments",
        "recipe_004",
        "--seeds",
        "0",
        "1",
        "--sweep-dir",
        str(sweep),
        *short,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((sweep / "reproduction.json").read_text())
    assert record["command"].startswith("python train.py -m experiment=recipe_004 seed=0,1")
    assert record["hardware"]["cpu_cores"] >= 1 and record["source_digest"] == reproduce.source_digest()
    doc = tmp_path / "R.md"
    result = run_script("scripts/reproduce.py", "report", str(sweep), "--doc", str(doc))
    assert result.returncode == 0, result.stderr[-3000:]
    row = next(line for line in doc.read_text().splitlines() if line.startswith("| `recipe_004`"))
    accs = [json.loads((job_folder(sweep, i) / "metrics.json").read_text())["metrics"]["test/acc"] for i in (0, 1)]
    assert ", ".join(f"{100 * a:.2f}" for a in accs) in row and "| 1, 1 |" in row


def test_a_precision_auto_chose_is_no_change(tmp_path: Path) -> None:
    """Runs save the precision trainer.precision=auto chose (and older runs saved 32-true):
    against auto now, either is no change; a precision auto never picks is one."""
    sweep = make_sweep(tmp_path / "s", [("recipe_001", 0, 0.9)])
    config = sweep / "0" / ".hydra" / "config.yaml"
    cfg = OmegaConf.load(config)
    for saved, changes in (
        ("bf16-mixed", []),
        ("32-true", []),
        ("16-mixed", ["trainer.precision: 16-mixed then, auto now"]),
    ):
        cfg.trainer.precision = saved
        OmegaConf.save(cfg, config)
        assert reproduce.config_changes(reproduce.read_sweep(sweep)[0]) == changes
