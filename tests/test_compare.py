"""fmnist-compare: two runs image by image (checked against statsmodels and scipy on the same
predictions), two sweeps over seeds, and the refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar

from fmnist_lightning.errors import RunError
from fmnist_lightning.evaluation.compare import compare_runs
from fmnist_lightning.evaluation.predictions import read_predictions
from fmnist_lightning.evaluation.statistics import paired_bootstrap
from fmnist_lightning.sweeps.compare import compare_sweeps
from in_process import run_command


@pytest.fixture(scope="module")
def other_run(trained_run: Path, unlogged_run: tuple[Path, dict], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another run of the same network at the same image size: the session's run without
    loggers (trained in-process, so it has no .hydra/; it tested 5 batches only, debug=limit)
    with the session's run's config, which builds the same network."""
    run = tmp_path_factory.mktemp("runs") / "other"
    shutil.copytree(unlogged_run[0], run)
    shutil.copytree(trained_run / ".hydra", run / ".hydra")
    return run


def changed_run(trained_run: Path, folder: Path) -> Path:
    """The session's run with other predictions on the same test images: 60 Coats it got wrong
    made right, 20 Dresses it got right made wrong (as a better Coat classifier would)."""
    shutil.copytree(trained_run / ".hydra", folder / ".hydra")
    with np.load(trained_run / "predictions.npz") as data:
        arrays = {k: data[k].copy() for k in data.files}
    label, pred = arrays["label"], arrays["pred"]
    fixed = np.flatnonzero((label == 4) & (pred != 4))[:60]
    broken = np.flatnonzero((label == 3) & (pred == 3))[:20]
    pred[fixed], pred[broken] = 4, 0
    np.savez(folder / "predictions.npz", **arrays)
    return folder


def check_against_statsmodels(saved: dict, a, b) -> None:
    """``fmnist-compare``'s numbers against statsmodels and NumPy on the same predictions."""
    correct_a, correct_b = a.pred == a.label, b.pred == b.label
    assert saved["difference"] == pytest.approx(correct_b.mean() - correct_a.mean())
    table = [[np.sum(correct_a & correct_b), np.sum(correct_a & ~correct_b)],
             [np.sum(~correct_a & correct_b), np.sum(~correct_a & ~correct_b)]]  # fmt: skip
    assert saved["mcnemar_p"] == pytest.approx(mcnemar(table, exact=True).pvalue)
    # The bootstrap interval (checked against scipy's own form below) is close to the normal
    # approximation of a paired difference of proportions.
    n, only_a, only_b = len(a.label), saved["only_a"], saved["only_b"]
    half_width = 1.96 * np.sqrt(only_a + only_b - (only_b - only_a) ** 2 / n) / n
    low, high = saved["ci95"]
    assert low <= saved["difference"] <= high
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.1)
    for c in saved["per_class"]:
        members = a.label == c["label"]
        assert c["images"] == 1000
        assert c["difference"] == pytest.approx(correct_b[members].mean() - correct_a[members].mean())
    p = saved["mcnemar_p"]
    assert saved["verdict"].endswith(f"McNemar p = {p:.2g}).")
    assert saved["verdict"].startswith("No significant difference" if p >= 0.05 else ("B is better", "A is better"))


def test_two_runs_against_statsmodels_and_scipy(trained_run: Path, tmp_path: Path) -> None:
    other = changed_run(trained_run, tmp_path / "b")
    result = run_command("compare.py", str(trained_run), str(other), "--output", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert result.stdout == (tmp_path / "out" / "comparison.md").read_text()
    check_against_statsmodels(saved, read_predictions(trained_run), read_predictions(other))
    assert (saved["only_a"], saved["only_b"]) == (20, 60)
    assert saved["verdict"].startswith("B is better than A by 0.40 points (B − A 95 % CI [+0.")
    coat, dress = saved["per_class"][4], saved["per_class"][3]
    assert (coat["only_b"], coat["difference"], dress["only_a"]) == (60, pytest.approx(0.06), 20)
    assert f"**{saved['verdict']}**" in result.stdout


@pytest.mark.slow  # evaluates a second real run on the whole test set
def test_two_real_runs(trained_run: Path, other_run: Path, tmp_path: Path) -> None:
    """A run folder against an fmnist-evaluate folder of another run."""
    evaluation = tmp_path / "evaluation"
    evaluated = run_command("evaluate.py", f"run_dir={other_run}", f"hydra.run.dir={evaluation}")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    result = run_command("compare.py", str(trained_run), str(evaluation), "--json")
    assert result.returncode == 0, result.stderr
    check_against_statsmodels(json.loads(result.stdout), read_predictions(trained_run), read_predictions(evaluation))


def test_paired_bootstrap_is_scipys_paired_two_sample_bootstrap() -> None:
    """Resampling the per-image differences is resampling image pairs: the same interval as
    scipy's bootstrap of two paired samples, with the same seed."""
    rng = np.random.default_rng(1)
    correct_a, correct_b = rng.random(2000) < 0.9, rng.random(2000) < 0.92
    interval = stats.bootstrap(
        (correct_a.astype(float), correct_b.astype(float)),
        lambda x, y, axis: y.mean(axis=axis) - x.mean(axis=axis),
        paired=True, vectorized=True, method="percentile", batch=500, rng=np.random.default_rng(0),
    ).confidence_interval  # fmt: skip
    assert paired_bootstrap(correct_a, correct_b, seed=0) == pytest.approx((interval.low, interval.high))


def test_different_test_sets_are_refused(trained_run: Path, other_run: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    (other / ".hydra").mkdir(parents=True)
    shutil.copy(trained_run / "predictions.npz", other)
    config = yaml.safe_load((trained_run / ".hydra" / "config.yaml").read_text())
    config["data"]["image_size"] = 28
    (other / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(RunError, match="not tested on the same test set \\(image_size: 16"):
        compare_runs(trained_run, other)
    with pytest.raises(RunError, match="different test images \\(10,000 and 5,000"):  # debug=limit: 5 test batches
        compare_runs(trained_run, other_run)
    fake_sweep(tmp_path / "sweep", trained_run / ".hydra" / "config.yaml", {"adam": [0.9]})
    result = run_command("compare.py", str(trained_run), str(tmp_path / "sweep"))
    assert result.returncode == 1 and "compare a run with a run" in result.stderr


def fake_sweep(folder: Path, config: Path, accuracies: dict[str, list[float]]) -> None:
    """A sweep folder as train.py -m leaves it: one job per (optimizer, seed)."""
    for i, (optimizer, seed, acc) in enumerate(
        (optimizer, seed, acc) for optimizer, accs in accuracies.items() for seed, acc in enumerate(accs)
    ):
        job = folder / str(i)
        (job / ".hydra").mkdir(parents=True)
        shutil.copy(config, job / ".hydra" / "config.yaml")
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"optimizer={optimizer}", f"seed={seed}"]))
        status = {"status": "finished", "epochs": 1, "metrics": {"val/acc_best": acc, "test/acc": acc}}
        (job / "metrics.json").write_text(json.dumps(status) + "\n")


def test_two_sweeps_per_configuration_over_seeds(trained_run: Path, tmp_path: Path) -> None:
    config = trained_run / ".hydra" / "config.yaml"
    a = {"adam": [0.90, 0.91, 0.905], "sgd": [0.88, 0.87, 0.875], "rmsprop": [0.8, 0.81]}
    b = {"adam": [0.92, 0.93, 0.921], "sgd": [0.881, 0.869, 0.876]}
    fake_sweep(tmp_path / "a", config, a)
    fake_sweep(tmp_path / "b", config, b)
    result = compare_sweeps(tmp_path / "a", tmp_path / "b")
    rows = {c["values_a"]["optimizer"]: c for c in result["configurations"]}
    for optimizer in ("adam", "sgd"):
        expected = stats.ttest_rel(b[optimizer], a[optimizer])
        assert rows[optimizer]["p_value"] == pytest.approx(expected.pvalue)
        assert rows[optimizer]["ci95"] == pytest.approx(list(expected.confidence_interval()))
    assert rows["adam"]["verdict"].startswith("B is better than A by 1.87 points")
    assert rows["sgd"]["verdict"].startswith("No significant difference")
    assert result["unmatched"] == [{"optimizer": "rmsprop"}]
    markdown = run_command("compare.py", str(tmp_path / "a"), str(tmp_path / "b")).stdout
    assert "| optimizer=adam | 3 | 3 | 3 | 90.50 | 92.37 | +1.87 |" in markdown
    assert "In one sweep only (not compared): optimizer=rmsprop." in markdown
    # A sweep against itself: every difference is 0, no t statistic; the JSON says null, not NaN.
    itself = run_command("compare.py", str(tmp_path / "a"), str(tmp_path / "a"), "--json")
    same = json.loads(itself.stdout)["configurations"]
    assert {c["p_value"] for c in same} == {None}
    assert same[0]["verdict"] == "B − A is +0.00 points on every shared seed: no spread, no test."
