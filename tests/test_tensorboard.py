"""TensorBoard review, read the way the dashboard reads it: a real ``tensorboard`` process on a
free localhost port, over a logdir with a short run and a 2-job sweep made by ``train.py``,
queried through TensorBoard's HTTP data API plugin by plugin."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import chrome_driver
from fmnist_lightning.serving.process import free_port
from in_process import run_command

# About 2 minutes in all: three short runs, a TensorBoard process, and headless Chromium.
pytestmark = pytest.mark.slow

SHORT = ["model=two_conv_5x5", "data.image_size=16", "trainer.limit_train_batches=30", "trainer.limit_val_batches=5"]


@pytest.fixture(scope="module")
def logdir(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``outputs/`` of a working directory in which one run and a 2-job sweep over
    ``optimizer.lr`` were made, as a user makes them."""
    cwd = tmp_path_factory.mktemp("review")
    run = run_command("train.py", *SHORT, "trainer.max_epochs=2", f"data.root={data_root}", cwd=cwd)
    assert run.returncode == 0, run.stderr[-3000:]
    sweep = run_command(
        "train.py", "-m", *SHORT, "trainer.max_epochs=1", "optimizer.lr=0.001,0.003", f"data.root={data_root}", cwd=cwd
    )
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    return cwd / "outputs"


@pytest.fixture(scope="module")
def tensorboard(logdir: Path) -> Iterator[httpx.Client]:
    """A client of ``tensorboard --logdir <logdir>``, once it has loaded all three runs."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if len(client.get("/data/runs").json()) == 3 and client.get("/data/plugin/text/tags").json():
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "TensorBoard did not load the three runs within 120 s"
            time.sleep(1)
        yield client
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=30)


def runs_by_kind(client: httpx.Client) -> tuple[str, list[str]]:
    """The single run's name and the sweep jobs' names."""
    names = client.get("/data/runs").json()
    single = [n for n in names if n.startswith("runs/")]
    jobs = sorted(n for n in names if n.startswith("multirun/"))
    assert len(single) == 1 and len(jobs) == 2, names
    return single[0], jobs


def test_runs_have_readable_names(tensorboard: httpx.Client, logdir: Path) -> None:
    run, jobs = runs_by_kind(tensorboard)
    # <date>_<time>_<model>_<overrides>, with where the data came from left out; no /tensorboard.
    assert re.fullmatch(
        r"runs/\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_two_conv_5x5_image_size-16_limit_train_batches-30_.*", run
    )
    assert "root" not in run and "=" not in run and len(run.split("/")[1]) <= len("2026-11-30_20-00-00_") + 60
    assert [job.rsplit("/", 1)[1] for job in jobs] == ["0_lr-0.001", "1_lr-0.003"]
    assert (logdir / run / "metrics.json").is_file()  # the TensorBoard run is the run folder


def test_scalars_images_and_curves_layout(tensorboard: httpx.Client, logdir: Path) -> None:
    run, _ = runs_by_kind(tensorboard)
    scalars = tensorboard.get("/data/plugin/scalars/tags").json()[run]
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "test/acc", "lr-Adam"} <= set(scalars)
    assert "epoch" not in scalars
    points = tensorboard.get("/data/plugin/scalars/scalars", params={"run": run, "tag": "test/acc"}).json()
    metrics = json.loads((logdir / run / "metrics.json").read_text())["metrics"]
    assert points[-1][2] == pytest.approx(metrics["test/acc"])  # [wall time, step, value]
    images = tensorboard.get("/data/plugin/images/tags").json()[run]
    assert {"test/confusion_matrix", "test/misclassified"} <= set(images)
    layout = tensorboard.get("/data/plugin/custom_scalars/layout").json()
    charts = {chart["title"]: chart["multiline"]["tag"] for c in layout["category"] for chart in c["chart"]}
    assert charts["loss: train and validation"] == ["^train/loss$", "^val/loss$"]
    assert charts["accuracy: train and validation"] == ["^train/acc$", "^val/acc$"]
    assert re.match(charts["learning rate"][0], "lr-Adam")


def test_text_holds_config_command_and_report(tensorboard: httpx.Client, logdir: Path) -> None:
    run, jobs = runs_by_kind(tensorboard)
    tags = {"config/text_summary", "command/text_summary", "report/text_summary"}  # add_text's tag names
    assert set(tensorboard.get("/data/plugin/text/tags").json()[run]) == tags

    def text(run: str, tag: str) -> str:
        params = {"run": run, "tag": f"{tag}/text_summary"}
        return tensorboard.get("/data/plugin/text/text", params=params).json()[-1]["text"]

    assert "max_epochs: 2" in text(run, "config") and "TwoConv5x5Net" in text(run, "config")
    assert "train.py model=two_conv_5x5" in text(run, "command")
    assert "optimizer.lr=0.003" in text(jobs[1], "command")  # the job's own overrides, not the sweep's
    report = text(run, "report")  # rendered Markdown: the per-class table and the confused pairs
    assert "<th>precision</th>" in report and "Shirt" in report and "Most confused pairs" in report


def test_pr_curves_one_per_class(tensorboard: httpx.Client) -> None:
    run, _ = runs_by_kind(tensorboard)
    tags = tensorboard.get("/data/plugin/pr_curves/tags").json()[run]
    assert len(tags) == 10 and "test/pr/T-shirt_top" in tags and "test/pr/Ankle boot" in tags
    curve = tensorboard.get("/data/plugin/pr_curves/pr_curves", params={"run": run, "tag": "test/pr/Trouser"}).json()
    entry = curve[run][-1]
    assert max(entry["precision"]) > 0.5 and entry["recall"][0] == pytest.approx(1.0)


def test_projector_has_features_labels_and_sprite(tensorboard: httpx.Client) -> None:
    run, _ = runs_by_kind(tensorboard)
    assert run in tensorboard.get("/data/plugin/projector/runs").json()
    info = tensorboard.get("/data/plugin/projector/info", params={"run": run}).json()
    (embedding,) = info["embeddings"]
    assert embedding["tensorName"].startswith("test/features:") and embedding["tensorShape"][0] == 2000
    assert embedding["sprite"]["singleImageDim"] == [16, 16]
    metadata = tensorboard.get(
        "/data/plugin/projector/metadata", params={"run": run, "name": embedding["tensorName"]}
    ).text.splitlines()
    assert metadata[0] == "label\tpredicted" and len(metadata) == 2001


def test_hparams_focus_and_metric_values(tensorboard: httpx.Client, logdir: Path) -> None:
    experiment = tensorboard.post("/data/plugin/hparams/experiment", json={"experimentName": ""}).json()
    names = [info["name"] for info in experiment["hparamInfos"]]
    # By name, which puts the capitalised five (the columns shown by default) first.
    assert names[:5] == ["Batch size", "Epochs", "LR", "Model", "Optimizer"]
    assert len(names) < 25 and not any(name.startswith(("data/", "trainer/", "_")) for name in names)
    assert {m["name"]["tag"] for m in experiment["metricInfos"]} == {"val/acc_best", "test/acc", "test/loss"}
    body = {
        "experimentName": "",
        "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
        "colParams": [{"hparam": name} for name in names] + [{"metric": {"tag": "test/acc"}}],
        "startIndex": 0,
        "sliceSize": 10,
    }
    groups = tensorboard.post("/data/plugin/hparams/session_groups", json=body).json()["sessionGroups"]
    assert len(groups) == 3
    for group in groups:
        (session,) = group["sessions"]
        name = session["name"]
        test_acc = next(m["value"] for m in session["metricValues"] if m["name"]["tag"] == "test/acc")
        metrics = json.loads((logdir / name / "metrics.json").read_text())["metrics"]
        assert test_acc == pytest.approx(metrics["test/acc"])
        assert group["hparams"]["Model"] == "TwoConv5x5Net" and group["hparams"]["image_size"] == 16


#: Finds, through every shadow root, the elements whose own text is exactly one of the given
#: strings, and returns {text: [left, right, top, bottom]} of the topmost visible one of each.
FIND_TEXT_JS = """
const wanted = new Set(arguments[0]); const found = {};
function walk(root) {
  for (const el of root.querySelectorAll('*')) {
    const own = [...el.childNodes].filter(n => n.nodeType === 3).map(n => n.textContent).join('').trim();
    const r = el.getBoundingClientRect();
    if (wanted.has(own) && r.width > 0 && !(own in found && found[own][2] <= r.top))
      found[own] = [r.left, r.right, r.top, r.bottom];
    if (el.shadowRoot) walk(el.shadowRoot);
  }
}
walk(document); return found;
"""
#: Types ``arguments[1]`` into the first input whose placeholder (or label) starts with ``arguments[0]``,
#: through every shadow root (the tag filters of Time series and Text).
FILTER_JS = """
const prefix = arguments[0], value = arguments[1];
function walk(root) {
  for (const el of root.querySelectorAll('*')) {
    const host = root.host ? root.host.getAttribute('label') || '' : '';  // Polymer's paper-input
    if (el.tagName === 'INPUT' && ((el.placeholder || '').startsWith(prefix) || host.startsWith(prefix))) return el;
    if (el.shadowRoot) { const found = walk(el.shadowRoot); if (found) return found; }
  }
  return null;
}
const input = walk(document);
if (input) { input.value = value; input.dispatchEvent(new Event('input', {bubbles: true, composed: true})); }
return input !== null;
"""
#: Each tab, and the tag filter typed into it before the screenshot (None: none).
TABS = {"timeseries": "(train|val)/(loss|acc)$", "hparams": None, "text": "report", "projector": None}


def test_dashboard_in_headless_chromium(tensorboard: httpx.Client, tmp_path: Path) -> None:
    """In a 1400 × 900 window, the HParams table shows the model, optimizer and learning rate
    columns without scrolling; test/acc begins at the window's right edge. Screenshots of four
    tabs go to ``FMNIST_SCREENSHOTS`` (the docs' are made with
    ``FMNIST_SCREENSHOTS=docs/images``), else to a temporary folder."""
    out = Path(os.environ.get("FMNIST_SCREENSHOTS") or tmp_path)
    driver = chrome_driver("1400,900", "--enable-unsafe-swiftshader")  # WebGL for the projector
    try:
        for tab, tag_filter in TABS.items():
            driver.get(f"{tensorboard.base_url}/#{tab}")
            time.sleep(8)  # the tab loads its data and draws
            if tag_filter is not None:
                assert driver.execute_script(FILTER_JS, "Filter tags", tag_filter)
                time.sleep(3)
            if tab == "hparams":  # the table's header cells, in the window's top rows
                found = driver.execute_script(FIND_TEXT_JS, ["Model", "Optimizer", "LR", "test/acc"])
                assert set(found) == {"Model", "Optimizer", "LR", "test/acc"}, found
                assert all(top < 200 for _, _, top, _ in found.values()), found
                assert all(found[key][1] <= 1400 for key in ("Model", "Optimizer", "LR")), found
                # The first metric column follows the five hyperparameters shown by default
                # (TensorBoard's columns are 10em wide): it starts inside the window, at about
                # 1362 px, so its values' first digits show and the rest needs a scroll.
                assert found["test/acc"][0] < 1400, found
            driver.save_screenshot(str(out / f"tensorboard_{tab}.png"))
    finally:
        driver.quit()
    assert all((out / f"tensorboard_{tab}.png").stat().st_size > 20_000 for tab in TABS)
