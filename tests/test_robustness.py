"""fmnist-robustness: the corruptions (seeded, growing with severity), their cache, the corruption
errors (mCE) against a hand computation, refusals, and the command on the session's run."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from conftest import run_script, scalars
from fmnist_lightning.data.corruptions import (
    CORRUPTIONS,
    SEVERITIES,
    cache_path,
    corrupt,
    corrupted_test_set,
    select_corruptions,
)
from fmnist_lightning.data.idx import load_dataset, load_split
from fmnist_lightning.errors import ArgumentError, RunError
from fmnist_lightning.evaluation.robustness import corruption_errors, evaluate_robustness
from in_process import run_command

MD5S = {"test_images": "a" * 32, "test_labels": "b" * 32}


@pytest.fixture(scope="module")
def clean_images(data_root: Path) -> torch.Tensor:
    """The first 64 real test images, uint8 ``(64, 1, 28, 28)``."""
    return load_split(data_root, "test", load_dataset())[0][:64].unsqueeze(1)


@pytest.mark.parametrize("corruption", CORRUPTIONS, ids=lambda c: c.name)
def test_corruption_is_seeded_and_grows_with_severity(clean_images: torch.Tensor, corruption) -> None:
    before = torch.random.get_rng_state()
    changes = []
    for severity in SEVERITIES:
        out = corrupt(clean_images, corruption, severity, seed=0)
        assert out.dtype == torch.uint8 and out.shape == clean_images.shape
        changes.append((out.float() - clean_images.float()).abs().mean().item())
    assert torch.equal(out, corrupt(clean_images, corruption, 5, seed=0))  # the same bytes again
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's generator is untouched
    assert min(changes) > 0, changes  # every severity changes the images
    # Mean absolute difference from the clean images grows with the severity; pixelate's
    # down-and-up resize to 26 and 25 px aliases differently, so only its ends are ordered.
    if corruption.name == "pixelate":
        assert changes[-1] > changes[0], changes
    else:
        assert changes == sorted(changes), changes


def test_seed_changes_the_random_corruptions(clean_images: torch.Tensor) -> None:
    noise = select_corruptions(["gaussian_noise"], [1])[0][0]
    assert not torch.equal(corrupt(clean_images, noise, 3, seed=0), corrupt(clean_images, noise, 3, seed=1))


def test_cache_is_made_once_then_reused(
    clean_images: torch.Tensor, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rotate = select_corruptions(["rotate"], [1])[0][0]
    caplog.set_level(logging.INFO, logger="fmnist_lightning.data.corruptions")
    made = corrupted_test_set(clean_images, rotate, 0, MD5S, tmp_path)
    path = cache_path(tmp_path, rotate, 0, MD5S)
    assert made.shape == (5, *clean_images.shape) and path.is_file()
    assert torch.equal(made[2], corrupt(clean_images, rotate, 3, 0))
    mtime = path.stat().st_mtime_ns
    caplog.clear()
    assert torch.equal(corrupted_test_set(clean_images, rotate, 0, MD5S, tmp_path), made)
    assert path.stat().st_mtime_ns == mtime and f"reusing {path}" in caplog.text
    # Another seed or other test files are another file; a damaged file is made again.
    assert cache_path(tmp_path, rotate, 1, MD5S) != path
    assert cache_path(tmp_path, rotate, 0, {**MD5S, "test_images": "c" * 32}) != path
    path.write_bytes(b"not an array")
    assert torch.equal(corrupted_test_set(clean_images, rotate, 0, MD5S, tmp_path), made)


def test_corruption_errors_by_hand() -> None:
    """ImageNet-C's CE_c = Σ_s E_s,c(f) / Σ_s E_s,c(ref) and relative CE, on a toy table."""
    errors = {"noise": {1: 0.2, 2: 0.4}, "blur": {1: 0.1, 2: 0.3}}
    reference = {"noise": {1: 0.3, 2: 0.5}, "blur": {1: 0.2, 2: 0.2}, "unused": {1: 0.9, 2: 0.9}}
    out = corruption_errors(errors, reference, clean_error=0.1, reference_clean_error=0.1)
    assert out["ce"] == pytest.approx({"noise": 0.6 / 0.8, "blur": 0.4 / 0.4})
    assert out["mce"] == pytest.approx((0.75 + 1.0) / 2)
    # relative: noise (0.1 + 0.3) / (0.2 + 0.4); blur (0.0 + 0.2) / (0.1 + 0.1)
    assert out["relative_ce"] == pytest.approx({"noise": 0.4 / 0.6, "blur": 1.0})
    assert out["relative_mce"] == pytest.approx((0.4 / 0.6 + 1.0) / 2)
    perfect = corruption_errors({"noise": {1: 0.1}}, {"noise": {1: 0.0}})
    assert perfect == {"ce": {"noise": None}, "mce": None}  # a reference without errors: no ratio


@pytest.mark.parametrize(
    ("names", "severities", "words"),
    [
        (["fog"], [1], "corruptions"),
        ([], [1], "corruptions"),
        ("all", [0, 1], "severities"),
        ("all", [6], "severities"),
        ("all", [], "severities"),
        ("all", [True], "severities"),
        ("all", None, "severities"),
        ("all", "3", "severities"),
    ],
)
def test_bad_selection_is_refused(names, severities, words: str) -> None:
    with pytest.raises(ArgumentError, match=words):
        select_corruptions(names, severities)
    assert select_corruptions(["rotate"], 3)[1] == [3]  # one severity alone, as severities=3 gives it


def test_command_writes_its_results(trained_run: Path, tmp_path: Path) -> None:
    """The command in the test process, one corruption at one severity: its three files, its
    scalars, and a reference made with another seed refused before any image is made."""
    common = [f"run_dir={trained_run}", "device=cpu", "corruptions=[rotate]", "severities=[5]"]
    result = run_command("robustness.py", *common, f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'a'}")
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((tmp_path / "a" / "robustness.json").read_text())
    assert saved["accuracy"]["rotate"]["5"] == saved["mean_corruption_accuracy"] < saved["clean_accuracy"]
    assert (tmp_path / "a" / "robustness.md").is_file() and (tmp_path / "a" / "robustness.png").is_file()
    assert scalars(tmp_path / "a", "robustness/rotate/5") == {0: pytest.approx(saved["accuracy"]["rotate"]["5"])}
    refused = run_command(
        "robustness.py", *common, "seed=1", f"reference={tmp_path / 'a'}", f"cache_dir={tmp_path / 'c2'}",
        f"hydra.run.dir={tmp_path / 'refused'}",
    )  # fmt: skip
    assert refused.returncode == 1 and "not comparable: it was made with another seed" in refused.stderr
    assert not (tmp_path / "c2").exists() and not (tmp_path / "refused" / "robustness.json").exists()


@pytest.mark.slow  # two corruptions' test sets made and evaluated, six refusals through the command
def test_command_reference_and_refusals(trained_run: Path, data_root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    common = [f"run_dir={trained_run}", "device=cpu", "corruptions=[rotate]", "severities=[1,5]"]
    result = run_command("robustness.py", *common, f"cache_dir={cache}", f"hydra.run.dir={tmp_path / 'a'}")
    assert result.returncode == 0, result.stderr[-3000:]
    first = json.loads((tmp_path / "a" / "robustness.json").read_text())
    assert set(first["accuracy"]) == {"rotate"} and set(first["accuracy"]["rotate"]) == {"1", "5"}
    assert first["accuracy"]["rotate"]["5"] < first["accuracy"]["rotate"]["1"] <= first["clean_accuracy"] + 0.02
    assert first["mean_corruption_error"] == pytest.approx(1 - first["mean_corruption_accuracy"])
    assert (tmp_path / "a" / "robustness.md").is_file() and (tmp_path / "a" / "robustness.png").is_file()
    assert scalars(tmp_path / "a", "robustness/rotate/5") == {0: pytest.approx(first["accuracy"]["rotate"]["5"])}
    assert scalars(tmp_path / "a", "robustness/mean_corruption_acc")[0] == pytest.approx(
        first["mean_corruption_accuracy"]
    )
    # Against itself: the cache is reused, the numbers repeat, and every CE is 1.
    again = evaluate_robustness(
        trained_run, tmp_path / "b", corruptions=["rotate"], severities=[1, 5], device="cpu",
        cache_dir=cache, reference=tmp_path / "a",
    )  # fmt: skip
    assert again["accuracy"] == first["accuracy"] and again["clean_accuracy"] == first["clean_accuracy"]
    assert again["reference"]["mce"] == pytest.approx(1.0) and again["reference"]["relative_mce"] == pytest.approx(1.0)
    assert "mCE" in (tmp_path / "b" / "robustness.md").read_text()
    # Refused before any work: another seed, a severity it lacks, an unknown corruption.
    for args, words in (
        (["seed=1", f"reference={tmp_path / 'a'}"], "not comparable: it was made with another seed"),
        (["severities=[1,2]", f"reference={tmp_path / 'a'}"], "corruption rotate"),
        (["corruptions=[fog]"], "corruptions=['fog']"),
        (["seed=-1"], "seed=-1"),
        ([f"reference={tmp_path / 'missing'}"], "no robustness.json there"),
    ):
        out = tmp_path / "refused"
        result = run_command("robustness.py", *common, *args, f"cache_dir={tmp_path / 'c2'}", f"hydra.run.dir={out}")
        assert result.returncode == 1 and "error: " in result.stderr and words in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and not (tmp_path / "c2").exists()
        assert not (out / "robustness.json").exists()
    out = tmp_path / "e"
    refused = run_command("evaluate.py", f"run_dir={trained_run}", "robustness=maybe", f"hydra.run.dir={out}")
    assert refused.returncode == 1 and "error: robustness='maybe': true or false" in refused.stderr
    assert not (out / "report.json").exists()
    with pytest.raises(RunError, match="not comparable"):
        evaluate_robustness(trained_run, tmp_path / "x", corruptions=["rotate"], seed=3, reference=tmp_path / "a")


@pytest.mark.slow
def test_command_as_a_process_is_deterministic(trained_run: Path, tmp_path: Path) -> None:
    """``python robustness.py`` twice on 3 corruptions (the second reusing the cache) and
    ``evaluate.py robustness=true`` on all 13: the same numbers each time."""
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    subset = "corruptions=[gaussian_noise,rotate,jpeg]"
    common = [f"run_dir={run}", "device=cpu", subset, f"cache_dir={tmp_path / 'cache'}"]
    results = []
    for name in ("a", "b"):
        made = run_script("robustness.py", *common, f"hydra.run.dir={tmp_path / name}")
        assert made.returncode == 0 and "Traceback" not in made.stderr, made.stderr[-3000:]
        assert ("reusing" in made.stdout + made.stderr) == (name == "b")
        for file in ("robustness.json", "robustness.md", "robustness.png"):
            assert (tmp_path / name / file).is_file()
        results.append(json.loads((tmp_path / name / "robustness.json").read_text()))
    assert results[0]["accuracy"] == results[1]["accuracy"] and len(results[0]["accuracy"]) == 3
    assert results[0]["clean_accuracy"] == results[1]["clean_accuracy"]
    assert (tmp_path / "a" / "robustness.md").read_text() == (tmp_path / "b" / "robustness.md").read_text()
    evaluated = run_script(
        "evaluate.py", f"run_dir={run}", "device=cpu", "robustness=true", f"hydra.run.dir={tmp_path / 'e'}"
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    everything = json.loads((tmp_path / "e" / "robustness.json").read_text())["accuracy"]  # all 13
    assert len(everything) == len(CORRUPTIONS)
    assert {name: everything[name] for name in results[0]["accuracy"]} == results[0]["accuracy"]
    refused = run_script("robustness.py", *common, "corruptions=[fog]", f"hydra.run.dir={tmp_path / 'r'}")
    assert refused.returncode == 1 and "error: corruptions=['fog']" in refused.stderr
    assert "Traceback" not in refused.stderr
