"""fmnist-ood: the metrics on planted scores and against scikit-learn, the sets (digits, transforms,
noise, another dataset's test split), the penultimate-feature rule, refusals, and the command on
the session's run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from digits import CONF, write_digits
from sklearn.metrics import auc, precision_recall_curve, roc_auc_score, roc_curve
from torch import nn

from conftest import scalars
from fmnist_lightning.errors import ArgumentError
from fmnist_lightning.evaluation.features import penultimate_features, penultimate_layer
from fmnist_lightning.evaluation.ood import METRICS, check_options, make_sets, separation, with_intervals
from fmnist_lightning.evaluation.ood_sets import Digits, Noise, OODContext, Transformed
from in_process import run_command

CONTEXT = OODContext(torch.randint(0, 256, (50, 1, 28, 28), dtype=torch.uint8), {}, 0, Path("unused"))


def test_scores_that_separate_perfectly_or_not_at_all() -> None:
    ids, oods = np.arange(100.0), np.arange(100.0) + 1000  # every OOD image scores higher
    assert dict(zip(METRICS, separation(ids, oods), strict=True)) == {
        "auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0, "fpr95": 0.0,
    }  # fmt: skip
    flipped = dict(zip(METRICS, separation(oods, ids), strict=True))
    assert flipped["auroc"] == 0.0 and flipped["fpr95"] == 1.0
    same = dict(zip(METRICS, separation(np.zeros(100), np.zeros(50)), strict=True))
    assert same["auroc"] == 0.5 and same["fpr95"] == 1.0  # ties: no threshold tells them apart


def test_metrics_agree_with_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    ids, oods = rng.normal(0, 1, 3000), rng.normal(1.2, 1.5, 1700)
    auroc, aupr_in, aupr_out, fpr95 = separation(ids, oods)
    is_ood = np.r_[np.zeros(len(ids)), np.ones(len(oods))]
    scores = np.r_[ids, oods]
    assert auroc == pytest.approx(roc_auc_score(is_ood, scores), abs=1e-12)
    precision, recall, _ = precision_recall_curve(is_ood, scores)
    assert aupr_out == pytest.approx(auc(recall, precision), abs=1e-12)
    precision, recall, _ = precision_recall_curve(1 - is_ood, -scores)
    assert aupr_in == pytest.approx(auc(recall, precision), abs=1e-12)
    # FPR95 (Liang et al. 2018): OOD images accepted at the first threshold keeping 95 % of the ID images.
    fpr, tpr, _ = roc_curve(1 - is_ood, -scores, drop_intermediate=False)
    assert fpr95 == pytest.approx(fpr[np.searchsorted(tpr, 0.95)], abs=1e-12)
    assert fpr95 == pytest.approx(np.mean(oods <= np.quantile(ids, 0.95)), abs=2e-3)


def test_intervals_hold_the_value_and_narrow_with_more_images() -> None:
    rng = np.random.default_rng(1)
    small = with_intervals(rng.normal(0, 1, 100), rng.normal(1, 1, 100), 100, seed=0)
    large = with_intervals(rng.normal(0, 1, 2000), rng.normal(1, 1, 2000), 100, seed=0)
    for metric in METRICS:
        low, high = small[metric]["ci95"]
        assert low <= small[metric]["value"] <= high
        assert large[metric]["ci95"][1] - large[metric]["ci95"][0] < high - low
    assert with_intervals(np.zeros(3), np.ones(3), 0, seed=0)["auroc"] == {"value": 1.0, "ci95": None}


def test_the_interval_is_seeded() -> None:
    rng = np.random.default_rng(2)
    ids, oods = rng.normal(0, 1, 300), rng.normal(1, 1, 300)
    assert with_intervals(ids, oods, 30, seed=7) == with_intervals(ids, oods, 30, seed=7)
    assert with_intervals(ids, oods, 30, seed=7) != with_intervals(ids, oods, 30, seed=8)


def test_digits_are_the_documented_conversion() -> None:
    from sklearn.datasets import load_digits

    images = Digits()(CONTEXT)["digits"]
    assert images.shape == (1797, 1, 28, 28) and images.dtype == torch.uint8
    assert images[:, :, :2].sum() == images[:, :, -2:].sum() == images[..., :2].sum() == images[..., -2:].sum() == 0
    first = np.rint(load_digits().images[0] * 255 / 16)
    assert np.array_equal(images[0, 0, 2:26, 2:26].numpy(), np.kron(first, np.ones((3, 3))))


def test_transforms_and_noise() -> None:
    images = CONTEXT.test_images
    assert torch.equal(Transformed("vflip")(CONTEXT)["vflip"], images.flip(2))
    assert torch.equal(Transformed("inverted")(CONTEXT)["inverted"], 255 - images)
    noise = Noise("gaussian", count=64)(CONTEXT)["gaussian_noise"]
    assert noise.shape == (64, 1, 28, 28) and noise.dtype == torch.uint8
    assert torch.equal(noise, Noise("gaussian", count=64)(CONTEXT)["gaussian_noise"])  # seeded
    uniform = Noise("uniform", count=2000)(CONTEXT)["uniform_noise"].float()
    assert uniform.mean() == pytest.approx(127.5, abs=2) and uniform.min() == 0 and uniform.max() == 255
    with pytest.raises(ArgumentError, match="kind='hflop'"):
        Transformed("hflop")
    with pytest.raises(ArgumentError, match="distribution='pink'"):
        Noise("pink")


def test_a_set_of_another_size_or_a_repeated_name_is_refused() -> None:
    with pytest.raises(ArgumentError, match=r"ood.big.*32×32.*the in-distribution size"):
        make_sets({"big": Noise("uniform", count=4, image_size=32)}, CONTEXT)
    with pytest.raises(ArgumentError, match=r"ood\.again"):
        make_sets({"one": Transformed("vflip"), "again": Transformed("vflip")}, CONTEXT)
    for bad, key in (([], "scores"), (["msp", "msp"], "scores"), (["odin"], "scores")):
        with pytest.raises(ArgumentError, match=key):
            check_options(bad, 10, 10, 0, None)
    with pytest.raises(ArgumentError, match="fit_images=0"):
        check_options(["msp"], 10, 10, 0, 0)


def test_penultimate_features_are_the_last_linear_layer_s_input() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    assert penultimate_layer(net) is net[3]
    x = torch.randn(5, 4)
    with penultimate_features(net) as taken:
        net(x)
    assert len(taken) == 1 and torch.allclose(taken[0], net[2](net[1](x)))
    net(x)
    assert len(taken) == 1  # the hook is gone after the block
    convolutional = nn.Sequential(nn.Conv2d(1, 10, 28), nn.Flatten())
    assert penultimate_layer(convolutional) is None
    with pytest.raises(ValueError, match=r"no nn\.Linear"), penultimate_features(convolutional):
        pass


def test_command_writes_its_results(trained_run: Path, tmp_path: Path) -> None:
    """The command in the test process on the session's run, two small sets: its files and scalars;
    the run folder is only read; a set of another size is refused before any network pass."""
    out = tmp_path / "a"
    common = [f"run_dir={trained_run}", "device=cpu", "fit_images=3000", "bootstrap_resamples=20"]
    sets = ["ood=[digits,uniform_noise]", "ood.uniform_noise.count=2000"]
    result = run_command("ood.py", *common, *sets, f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((out / "ood.json").read_text())
    assert saved["sets"] == {"digits": 1797, "uniform_noise": 2000} and saved["mahalanobis_fit_images"] == 3000
    assert list(saved["scores"]) == ["msp", "max_logit", "energy", "mahalanobis"]
    for by_score in saved["results"].values():
        for by_metric in by_score.values():
            for entry in by_metric.values():
                assert 0 <= entry["ci95"][0] <= entry["value"] <= entry["ci95"][1] <= 1
    # Digits are far from garments for a trained network: every score tells most of them apart.
    assert min(m["auroc"]["value"] for m in saved["results"]["digits"].values()) > 0.7
    for name in ("ood.md", "ood_roc.png", "ood_scores.png"):
        assert (out / name).is_file()
    assert "| digits | 1797 |" in (out / "ood.md").read_text()
    auroc = saved["results"]["uniform_noise"]["energy"]["auroc"]["value"]
    assert scalars(out, "ood/uniform_noise/energy/auroc") == {0: pytest.approx(auroc)}
    assert "uniform_noise: AUROC msp" in result.stdout
    assert not list(trained_run.glob("ood*"))
    refused = run_command(
        "ood.py", *common, "ood=[uniform_noise]", "ood.uniform_noise.image_size=32", f"hydra.run.dir={tmp_path / 'r'}"
    )
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert "error: ood.uniform_noise='uniform_noise': its images are torch.uint8 32×32" in refused.stderr
    assert not (tmp_path / "r" / "ood.json").exists()


@pytest.mark.slow  # three commands, each on the run's 10,000 test images
def test_another_dataset_s_test_split_is_a_set(trained_run: Path, tmp_path: Path) -> None:
    """A dataset config of one's own (tests/conf/data/digits.yaml) as an OOD set, by one YAML in
    a config folder of one's own; missing files are refused with the dataset's own hint."""
    root = write_digits(tmp_path / "digits")
    common = [f"run_dir={trained_run}", "device=cpu", f"hydra.searchpath=[file://{CONF}]", "ood=[digits_idx]"]
    common += ["scores=[msp,energy]", "bootstrap_resamples=0"]
    result = run_command("ood.py", *common, f"ood.digits_idx.data.root={root}", f"hydra.run.dir={tmp_path / 'a'}")
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((tmp_path / "a" / "ood.json").read_text())
    assert saved["sets"] == {"digits": 297} and saved["results"]["digits"]["msp"]["auroc"]["ci95"] is None
    (tmp_path / "empty").mkdir()
    for root, words in ((tmp_path / "none", "error: ood.digits_idx: root="), (tmp_path / "empty", "tests/digits.py")):
        missing = run_command("ood.py", *common, f"ood.digits_idx.data.root={root}", f"hydra.run.dir={tmp_path / 'b'}")
        assert missing.returncode == 1 and "Traceback" not in missing.stderr, missing.stderr[-3000:]
        assert words in missing.stderr and not (tmp_path / "b" / "ood.json").exists(), missing.stderr
