"""The benchmark script runs every variant end to end (tiny windows; figures not checked)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from conftest import REPO, run_script

spec = importlib.util.spec_from_file_location("speedrun", REPO / "benchmarks" / "speedrun.py")
speedrun = importlib.util.module_from_spec(spec)
spec.loader.exec_module(speedrun)


@pytest.mark.slow  # about a minute: four subprocesses, each training a few batches
def test_benchmark_runs_all_variants(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    result = run_script(
        "benchmarks/speed/benchmark.py",
        "--recipes",
        "recipe_004",
        "--reps",
        "1",
        "--images",
        "300",
        "--warmup",
        "2",
        "--data-root",
        str(data_root),
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert [r["variant"] for r in summary["results"]] == ["a", "b", "c", "d"]
    assert all(r["images_per_s"] > 0 and r["peak_rss_mb"] > 0 for r in summary["results"])
    assert summary["results"][3]["batch_size"] == 256
    assert "| recipe_004 |" in summary["table"] and "ratio to a" in summary["table"]


@pytest.mark.slow  # about 80 s: four processes, each 2 epochs of 20 batches, and their snapshots tested
def test_time_to_accuracy_runs_every_variant(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "time_to_accuracy.json"
    result = run_script(
        "benchmarks/speed/time_to_accuracy.py",
        *("--reps", "1", "--epochs", "2", "--limit-batches", "20"),
        *("--data-root", str(data_root), "--workdir", str(tmp_path / "runs"), "--out", str(out)),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(out.read_text())
    runs = {r["variant"]: r for r in summary["runs"]}
    assert list(runs) == ["fast", "fast_before", "recipe_001", "plain_001"]
    for run in runs.values():
        # One snapshot per epoch, stamped after the launch and before the process ended.
        assert len(run["stamps"]) == len(run["test_acc"]) == 2
        assert run["launched"] < run["stamps"][0] < run["stamps"][1] < run["launched"] + run["whole_s"]
        assert all(0.3 < acc < 0.95 for acc in run["test_acc"])  # 40 batches train well past chance
    # The snapshot of the epoch a train.py run tested (its best checkpoint, epoch_NNN counted
    # from 0) scores what the run's own test report says.
    fast = Path(runs["fast"]["folder"])
    best = json.loads((fast / "metrics.json").read_text())["best_checkpoint"]
    report = json.loads((fast / "report.json").read_text())
    assert runs["fast"]["test_acc"][int(best[-8:-5])] == pytest.approx(report["accuracy"], abs=1e-4)
    assert "| fast |" in summary["table"] and "fast / fast_before, whole process" in summary["table"]
    assert "cores (" in summary["machine"]


@pytest.mark.slow  # about 20 s: two short trainings, one of them profiled
def test_profile_step_splits_a_step(data_root: Path, tmp_path: Path) -> None:
    variant = "trainer.precision=32-true optimizer.fused=true"
    result = run_script(
        "benchmarks/speed/profile_step.py",
        *("--batch-size", "32", "--reps", "1", "--steps", "40", "--variant", variant),
        f"data.root={data_root}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("| variant |"))
    row = next(line for line in lines if line.startswith(f"| {variant} | 32 |"))
    kinds = dict(zip(header.strip("| ").split(" | ")[4:], map(float, row.strip("| ").split(" | ")[4:]), strict=True))
    assert list(kinds) == ["forward", "backward", "step", "casts", "layout", "optimizer", "data", "other"]
    assert kinds["forward"] > 0 and kinds["backward"] > 0 and kinds["optimizer"] > 0
    # The network is most of a step, whatever the machine.
    assert kinds["forward"] + kinds["backward"] > sum(kinds.values()) / 2
    assert not (tmp_path / "outputs").exists()  # no logger, no checkpoint: nothing written


@pytest.mark.slow  # about 140 s: 2 seeds × 6 rows of one 10-batch epoch, a 20-batch plain loop, a third seed
def test_speedrun_reports_each_row_with_its_ablations(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "speedrun.json"
    # The precision pinned: precision=auto times a probe, which another test's load can tip.
    quick = ["trainer.max_epochs=1", "trainer.limit_train_batches=10", "trainer.limit_val_batches=1"]
    quick.append("trainer.precision=32-true")
    result = run_script(
        "benchmarks/speedrun.py",
        *("--targets", "91", "--seeds", "2", "--ablations", "--plain", "1"),
        *("--plain-epochs", "1", "--plain-limit-batches", "20", "--override", *quick),
        *("--data-root", str(data_root), "--workdir", str(tmp_path / "runs"), "--out", str(out)),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(out.read_text())
    rows = {r["row"]: r for r in summary["rows"]}
    assert list(rows) == [
        "speedrun_91",
        "speedrun_91 without: 3×3 patch whitening",
        "speedrun_91 without: peak lr 8e-3 (5e-3 instead)",
        "speedrun_91 without: CSV logging (TensorBoard instead)",
        "speedrun_91 without: bf16-mixed (fp32 instead)",
        "speedrun_91 without: one-cycle schedule (a constant lr instead)",
    ]
    recipe = rows["speedrun_91"]
    runs = summary["runs"]["speedrun_91"]
    assert [r["seed"] for r in runs] == [0, 1] and recipe["seeds"] == 2
    assert recipe["test_acc"] == [round(100 * r["test_acc"], 2) for r in runs]
    assert recipe["ci95"][0] <= recipe["mean"] <= recipe["ci95"][1]
    assert not recipe["reached"] and 10 < recipe["mean"] < 91  # 10 batches train past chance, not to 91 %
    # Every run says when its first training step came, after its launch and before its end.
    assert all(0 < r["first_step_s"] < r["whole_s"] for rs in summary["runs"].values() for r in rs)
    assert "against" not in recipe
    # FLOPs: 10 batches of 128 and 1,000 + 2,000 (sanity) + 10,000 + 6,000 evaluated images; with the
    # whitening layer more than without.
    assert 0.01 < recipe["tflops"] < 1 and rows["speedrun_91 without: 3×3 patch whitening"]["tflops"] < recipe["tflops"]
    # Another logger, or the precision the runs already have, trains the same weights; a
    # constant lr trains others.
    assert rows["speedrun_91 without: CSV logging (TensorBoard instead)"]["against"]["identical"]
    assert rows["speedrun_91 without: bf16-mixed (fp32 instead)"]["against"]["identical"]
    constant = rows["speedrun_91 without: one-cycle schedule (a constant lr instead)"]
    assert "identical" not in constant["against"] and constant["against"]["time_ratio"] > 0
    assert constant["against"]["difference"] == pytest.approx(constant["mean"] - recipe["mean"], abs=0.01)
    tensorboard = Path(summary["runs"]["speedrun_91 without: CSV logging (TensorBoard instead)"][0]["folder"])
    assert list(tensorboard.glob("events.out.tfevents.*")) and not (tensorboard / "csv").exists()
    assert [p["seed"] for p in summary["plain"]] == [0] and summary["plain"][0]["seconds_to_target"] is None
    assert "did not reach 91 % on 1 of 1 seeds" in summary["table"]
    # The seed it lacks, merged: the recipe's row over 3 seeds, the ablation paired on the 2 it ran.
    more = tmp_path / "seed2.json"
    result = run_script(
        "benchmarks/speedrun.py",
        *("--targets", "91", "--first-seed", "2", "--seeds", "1", "--merge", str(out), "--override", *quick),
        *("--data-root", str(data_root), "--workdir", str(tmp_path / "runs2"), "--out", str(more)),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    merged = json.loads(more.read_text())
    assert [r["seed"] for r in merged["runs"]["speedrun_91"]] == [0, 1, 2] and merged["seeds"] == [0, 1, 2]
    assert merged["rows"][0]["seed_list"] == [0, 1, 2] and "partial" not in merged
    assert merged["runs"]["speedrun_91"][2]["launched"] and merged["runs"]["speedrun_91"][2]["machine"]


@pytest.mark.slow  # about 40 s: two searches of 3 short trials
def test_pruning_benchmark_runs_both_searches(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "pruning.json"
    quick = ["model=two_conv", "data.image_size=16", "trainer.max_epochs=2", "trainer.limit_train_batches=10"]
    quick += ["trainer.limit_val_batches=2", f"data.root={data_root}"]
    result = run_script(
        "benchmarks/speed/pruning.py",
        *("--trials", "3", "--precision", "32-true", "--override", *quick),
        *("--folder", str(tmp_path / "searches"), "--out", str(out)),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = {r["variant"]: r for r in json.loads(out.read_text())["runs"]}
    assert list(runs) == ["median", "none"]
    for run in runs.values():
        assert run["trials"] == 3 and run["complete"] + run["pruned"] == 3 and run["wall_time_s"] > 0
        assert run["best_val_acc"] == max(v for v in run["values"] if v is not None)
    # The same seeded sampler and no pruning yet (the median rule waits for 5 trials): the same search.
    assert runs["median"]["values"] == runs["none"]["values"] and runs["none"]["epochs_trained"] == 6
    assert "| none |" in result.stdout and "Wall time ratio none / median" in result.stdout


def _run(seed: int, acc: float, whole_s: float = 10.0) -> dict:
    return {"seed": seed, "folder": f"/runs/{seed}", "whole_s": whole_s, "first_step_s": 4.0, "test_acc": acc}


def test_merged_outputs_add_other_seeds_in_seed_order_and_refuse_a_seed_twice(tmp_path: Path) -> None:
    earlier = tmp_path / "seeds_0_2.json"
    rows = {"speedrun_95": [_run(0, 0.95), _run(1, 0.951)], "speedrun_94": [_run(0, 0.94)]}
    earlier.write_text(json.dumps({"partial": True, "runs": rows}))
    found = speedrun.earlier_runs([earlier], ["speedrun_95", "speedrun_93"], range(2, 4))
    assert found == {"speedrun_95": rows["speedrun_95"], "speedrun_93": []}  # rows not run here stay out
    runs = speedrun.merged({"speedrun_95": [_run(3, 0.952), _run(2, 0.949)], "speedrun_93": [_run(2, 0.93)]}, found)
    assert [r["seed"] for r in runs["speedrun_95"]] == [0, 1, 2, 3] and len(runs["speedrun_93"]) == 1
    # Before any run: a seed this invocation would run again, a file that is no output of it.
    with pytest.raises(SystemExit, match=r"seed\(s\) \[1\] twice"):
        speedrun.earlier_runs([earlier], ["speedrun_95"], range(1, 3))
    with pytest.raises(SystemExit, match="not an output"):
        speedrun.earlier_runs([tmp_path / "missing.json"], ["speedrun_95"], range(2, 4))


def test_an_ablation_is_paired_with_its_recipe_seed_by_seed() -> None:
    base = {"seed_list": [0, 1, 2, 3], "test_acc": [91.0, 92.0, 93.0, 90.0], "whole_s": [10.0, 12.0, 14.0, 99.0]}
    # The ablation ran seeds 2, 0 and 1 only (merged from two invocations): 0.2, 0.4 and 0.6
    # points lower on seeds 2, 0 and 1, in half the time.
    ablated = {"seed_list": [2, 0, 1], "test_acc": [92.8, 90.6, 91.4], "whole_s": [7.0, 5.0, 6.0]}
    result = speedrun.against(base, ablated)
    # Differences -0.4, -0.6, -0.2: mean -0.4, standard error 0.2 / √3, t(2, 0.975) = 4.303.
    assert result["seeds"] == 3 and result["difference"] == pytest.approx(-0.4)
    assert result["ci95"] == pytest.approx([-0.4 - 4.303 * 0.2 / 3**0.5, -0.4 + 4.303 * 0.2 / 3**0.5], abs=1e-3)
    assert result["time_ratio"] == 0.5  # medians over seeds 0-2 only: 6 s against 12 s
    # The table says when an ablation is compared on fewer seeds than its row has.
    common = {"mean": 92.0, "ci95": [91.0, 93.0], "reached": True, "whole_s_median": 1.0, "first_step_s_median": None}
    common |= {"val_acc_best_mean": 92.0, "tflops": 1.0, "against": result}
    lines = speedrun.table([{"row": "on 3 of 4", "seeds": 4, **common}, {"row": "on 3 of 3", "seeds": 3, **common}])
    assert "(on the 3 seeds both ran)" in lines.splitlines()[2] and "both ran" not in lines.splitlines()[3]


def test_ablation_words_choose_rows_and_a_word_that_names_none_is_refused() -> None:
    names = [name for name, _, _ in speedrun.variants(["91", "93"], ["whitening"], [])]
    assert names == [
        "speedrun_91",
        "speedrun_93",
        "speedrun_91 without: 3×3 patch whitening",
        "speedrun_93 without: 2×2 patch whitening",
    ]
    every = speedrun.variants(["93"], [], ["data.root=x"])
    assert len(every) == 1 + len(speedrun.ABLATIONS["93"]) and all(o[0] == "data.root=x" for _, _, o in every)
    assert len(speedrun.variants(["93"], None, [])) == 1
    with pytest.raises(SystemExit, match="tta"):
        speedrun.variants(["93"], ["tta"], [])
