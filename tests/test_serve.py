"""The server: its request path in this process (answers like fmnist-predict, /explain's maps are
the Explainer's, bad requests get 4xx JSON), then (slow) fmnist-serve as a real process on a free
localhost port: answers like fmnist-predict and explains, bad requests get 4xx JSON and leave it up,
concurrent requests are batched, the web page works in headless Chromium."""

from __future__ import annotations

import base64
import dataclasses
import io
import os
import re
import signal
import socket
import struct
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from test_predict import with_sets, without_sets
from torch import nn

from conftest import REPO, chrome_driver
from fmnist_lightning.data import load_dataset, load_split
from fmnist_lightning.errors import ArgumentError, RunError
from fmnist_lightning.evaluation.attribution import METHODS, NO_CONV, Explainer
from fmnist_lightning.evaluation.calibration import read_temperature
from fmnist_lightning.evaluation.conformal import prediction_sets, read_conformal
from fmnist_lightning.evaluation.files import load_image, predict_files
from fmnist_lightning.evaluation.runs import load_trained
from fmnist_lightning.serving.export import export_run, load_exported
from fmnist_lightning.serving.process import ServerProcess, start_server
from fmnist_lightning.serving.server import NO_GRADIENTS, ServeOptions, build_server, run_info
from in_process import run_command


@pytest.fixture(scope="module")
def served_run(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session's trained run with a conformal.json (the ONNX backend's test exports its model.onnx)."""
    return with_sets(trained_run, tmp_path_factory.mktemp("served") / "run")


@pytest.fixture(scope="module")
def server(served_run: Path) -> Iterator[ServerProcess]:
    """The real server, answering with LAC sets at α = 0.05 unless a request asks otherwise."""
    with start_server(served_run, sets="lac", alpha=0.05) as running:
        yield running


def expected_sets(probs: torch.Tensor, run_dir: Path, method: str, alpha: str) -> list[list[str]]:
    """The class names of ``prediction_sets`` of ``probs`` with the run's conformal.json."""
    record = read_conformal(run_dir)
    threshold, raps = record["thresholds"][method][alpha], record["raps"]
    sets = prediction_sets(probs, method, threshold, raps["lambda"], raps["k_reg"])
    names = load_dataset().class_names
    return [[names[c] for c in row.nonzero().flatten().tolist()] for row in sets]


@pytest.fixture(scope="module")
def photos(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], torch.Tensor]:
    """The first 16 test images as photo-like PNG files (dark on light, 112 px, RGB), and their labels."""
    images, labels = load_split(data_root, "test")
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for i in range(16):
        gray = Image.fromarray(255 - images[i].numpy()).resize((112, 112), Image.Resampling.BICUBIC)
        paths.append(folder / f"item_{i}.png")
        gray.convert("RGB").save(paths[-1])
    return paths, labels[:16]


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def chunk(kind: bytes, data: bytes) -> bytes:
    """A PNG chunk: length, type, data, CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


#: Headers of images that declare far more pixels than PIL's own decompression-bomb limit
#: (2 × ``Image.MAX_IMAGE_PIXELS``, about 358 MP), which ``Image.open`` enforces itself.
PIL_BOMBS = {
    "png 20000x20000": b"\x89PNG\r\n\x1a\n"
    + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0))
    + chunk(b"IDAT", zlib.compress(bytes(100)))
    + chunk(b"IEND", b""),
    "gif 30000x30000": b"GIF89a"
    + struct.pack("<HHBBB", 30000, 30000, 0, 0, 0)
    + b","
    + struct.pack("<HHHHB", 0, 0, 30000, 30000, 0)
    + b"\x02\x02\x44\x01\x00;",
    "bmp 20000x20000": b"BM"
    + struct.pack("<IHHI", 1078, 0, 0, 1078)
    + struct.pack("<IiiHHIIiiII", 40, 20000, 20000, 1, 8, 0, 0, 2835, 2835, 0, 0)
    + bytes(1024),
}


def bad_requests() -> dict[str, tuple[int, str, dict]]:
    """Malformed requests: name → (status, words the detail must hold, httpx arguments)."""

    def upload(name: str, data: bytes) -> dict:
        return {"files": {"file": (name, data)}}

    def raw(body: bytes, content_type: str) -> dict:
        return {"content": body, "headers": {"content-type": content_type}}

    truncated = png(Image.new("RGB", (300, 300), "white").resize((300, 300)))
    good = base64.b64encode(png(Image.linear_gradient("L"))).decode()
    bomb = png(Image.new("L", (8000, 6000)))  # 48 megapixels in 47 kB
    blank = png(Image.new("RGB", (64, 64), "white"))
    return {
        "not an image": (415, "is not an image", upload("notes.png", b"hello, world")),
        "empty body": (400, "the body is empty", raw(b"", "application/json")),
        "empty file": (400, "is empty (0 bytes)", upload("a.png", b"")),
        "truncated png": (400, "truncated or damaged", upload("t.png", truncated[: len(truncated) // 3])),
        "decompression bomb": (413, "48.0 megapixels, more than the limit of 40", upload("b.png", bomb)),
        "body over the limit": (413, "larger than the limit of 10 MB", upload("x.png", b"0" * 10_500_000)),
        "invalid json": (400, "not valid JSON", raw(b"{image:", "application/json")),
        "json without image": (400, 'neither "image" nor "images"', {"json": {"picture": "..."}}),
        "invalid base64": (400, "not valid base64", {"json": {"image": "%%%"}}),
        "plain text": (415, "Content-Type 'text/plain' is not taken", raw(b"shirt", "text/plain")),
        "form without file": (400, "the form has no file field", {"files": {"x": (None, "y")}}),
        "blank image": (400, "the image is blank", upload("w.png", blank)),
        **{
            f"PIL bomb {kind}": (413, "more than twice PIL's limit", upload(f"bomb.{kind[:3]}", data))
            for kind, data in PIL_BOMBS.items()
        },
        "PIL bomb as base64 JSON": (
            413,
            "more than twice PIL's limit",
            {"json": {"image": base64.b64encode(PIL_BOMBS["png 20000x20000"]).decode()}},
        ),
        "unknown set method": (
            400,
            "sets='topk': one of the calibrated methods",
            {"json": {"image": good, "sets": "topk"}},
        ),
        "uncalibrated alpha": (
            400,
            "alpha='0.2': one of the calibrated α: 0.1, 0.05",
            {"json": {"image": good, "sets": "aps", "alpha": "0.2"}},
        ),
        "alpha as a list": (
            400,
            "the 'alpha' field must be text or a number",
            {"json": {"image": good, "alpha": [0.1]}},
        ),
        "json nested 100,000 deep (lists)": (
            400,
            "nested too deeply",
            raw(b"[" * 100_000 + b"]" * 100_000, "application/json"),
        ),
        "json nested 100,000 deep (objects)": (
            400,
            "nested too deeply",
            raw(b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "application/json"),
        ),
    }


@contextmanager
def api_client(options: ServeOptions):
    """The server's request path in this process: ``BodyGuard`` in front of routes that hand
    the parsed body to ``FashionMNISTAPI`` (``/predict``: decode, batch, predict, answer) and
    ``ExplainAPI`` (``/explain``: decode, predict, answer, one request at a time) as LitServe's
    workers do; a starlette ``TestClient``. The real server, with its worker processes, is
    ``server`` (slow tests)."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from fmnist_lightning.serving.server import BodyGuard, ExplainAPI, FashionMNISTAPI

    def route(path: str, api: ExplainAPI | FashionMNISTAPI) -> Route:
        api.setup("cpu")

        async def answer(request):
            form = request.headers.get("content-type", "").startswith("multipart/")
            payload = await request.form() if form else await request.json()
            decoded = api.decode_request(payload)
            if api.max_batch_size > 1:
                (output,) = api.unbatch(api.predict(api.batch([decoded])))
            else:  # LitServe's loop without batching
                output = api.predict(decoded)
            encoded = api.encode_response(output)
            return encoded if isinstance(encoded, Response) else JSONResponse(encoded)

        return Route(path, answer, methods=["POST"])

    routes = [route("/predict", FashionMNISTAPI(options)), route("/explain", ExplainAPI(options))]
    guard = Middleware(BodyGuard, max_bytes=int(options.max_body_mb * 1e6))
    with TestClient(Starlette(routes=routes, middleware=[guard])) as client:
        yield client


@pytest.fixture(scope="module")
def api_app(served_run: Path):
    """``api_client`` with the default options: no sets unless a request asks."""
    with api_client(ServeOptions(run_dir=str(served_run))) as client:
        yield client


def test_the_api_answers_like_fmnist_predict(api_app, served_run: Path, photos) -> None:
    paths, _ = photos
    expected = predict_files(load_trained(served_run), [str(p) for p in paths[:4]])
    answer = api_app.post("/predict", files=[("file", (p.name, p.read_bytes())) for p in paths[:4]])
    assert answer.status_code == 200, answer.text
    for got, want in zip(answer.json()["predictions"], expected, strict=True):
        assert got["name"] == Path(want.path).name and got["class"] == want.name and got["label"] == want.label
        assert got["probability"] == pytest.approx(want.probability, abs=1e-5)
    as_json = {"images": [base64.b64encode(p.read_bytes()).decode() for p in paths[:2]]}
    again = api_app.post("/predict", json=as_json).json()["predictions"]
    assert [p["class"] for p in again] == [w.name for w in expected[:2]] and again[0]["name"] == "image 1"


def test_the_api_answers_with_sets_when_asked(api_app, served_run: Path, photos) -> None:
    """``sets`` and ``alpha`` as form fields or JSON keys: each image's set is ``prediction_sets`` of
    the probabilities the answer is made of; without them, no set."""
    paths, _ = photos
    files = [("file", (p.name, p.read_bytes())) for p in paths[:4]]
    probs = load_trained(served_run).predict_proba(torch.cat([load_image(p) for p in paths[:4]]))
    answer = api_app.post("/predict", files=files, data={"sets": "raps", "alpha": "0.05"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["sets"] == {"method": "raps", "alpha": 0.05}
    assert [p["set"] for p in answer.json()["predictions"]] == expected_sets(probs, served_run, "raps", "0.05")
    as_json = {"images": [base64.b64encode(p.read_bytes()).decode() for p in paths[:4]], "sets": "lac", "alpha": 0.1}
    again = api_app.post("/predict", json=as_json).json()
    assert [p["set"] for p in again["predictions"]] == expected_sets(probs, served_run, "lac", "0.1")
    plain = api_app.post("/predict", files=files).json()
    assert "sets" not in plain and all("set" not in p for p in plain["predictions"])


def test_server_default_sets_and_a_run_without_them(served_run: Path, trained_run: Path, photos, tmp_path) -> None:
    """``sets``/``alpha`` options: the default of requests that name none (``sets=none`` turns it
    off); ``/info`` lists the calibrated methods and α. A run without conformal.json serves as
    before, answers a request for sets with 400, and refuses a default that asks for them."""
    paths, _ = photos
    upload = {"files": {"file": (paths[0].name, paths[0].read_bytes())}}
    options = ServeOptions(run_dir=str(served_run), sets="aps", alpha=0.1)
    with api_client(options) as client:
        assert client.post("/predict", **upload).json()["sets"] == {"method": "aps", "alpha": 0.1}
        assert "sets" not in client.post("/predict", **upload, data={"sets": "none"}).json()
    info = run_info(options)
    assert info["sets"] == {"lac": [0.1, 0.05], "aps": [0.1, 0.05], "raps": [0.1, 0.05]}
    assert info["default_sets"] == {"method": "aps", "alpha": 0.1}
    old = without_sets(trained_run, tmp_path / "old")
    assert run_info(ServeOptions(run_dir=str(old)))["sets"] is None
    with api_client(ServeOptions(run_dir=str(old))) as client:
        assert client.post("/predict", **upload).status_code == 200
        refused = client.post("/predict", **upload, data={"sets": "aps"})
        assert refused.status_code == 400 and "made before conformal prediction sets" in refused.json()["detail"]
    with pytest.raises(RunError, match=r"no prediction sets for .*fmnist-evaluate run_dir="):
        build_server(ServeOptions(run_dir=str(old), sets="aps"))


def test_bad_requests_get_4xx_json_in_process(api_app) -> None:
    for name, (status, words, request) in bad_requests().items():
        answer = api_app.post("/predict", **request)
        assert answer.status_code == status, (name, answer.text)
        assert words in answer.json()["detail"], (name, answer.text)


def explained(answer: httpx.Response) -> list[dict]:
    """The ``explanations`` of a 200 answer of ``/explain``, each one's ``png`` checked and decoded
    (a PNG of at least 224×224, RGB, an equal square per map pixel) into ``image``, a uint8 array."""
    assert answer.status_code == 200, answer.text
    explanations = answer.json()["explanations"]
    for e in explanations:
        side = len(e["map"])
        assert side > 0 and all(len(row) == side for row in e["map"])
        image = Image.open(io.BytesIO(base64.b64decode(e["png"])))
        assert image.format == "PNG" and image.mode == "RGB" and image.width == image.height >= 224
        assert image.width % side == 0
        e["image"] = np.asarray(image)
    return explanations


def test_explain_answers_the_explainers_maps(api_app, served_run: Path, photos) -> None:
    """``/explain``'s maps are ``Explainer.attribute``'s, for the predicted class by default (the
    /predict answer's) or the ``target`` asked for, by index or name; integrated gradients adds delta."""
    paths, _ = photos
    files = [("file", (p.name, p.read_bytes())) for p in paths[:2]]
    predicted = api_app.post("/predict", files=files).json()["predictions"]
    answers = explained(api_app.post("/explain", files=files))
    model = load_trained(served_run)
    x = model.preprocess(torch.cat([load_image(p) for p in paths[:2]]))
    want = Explainer(model.net, model.preprocess, "gradcam").attribute(x, torch.tensor([p["label"] for p in predicted]))
    for got, prediction, expected in zip(answers, predicted, want.maps, strict=True):
        assert {k: got[k] for k in ("name", "label", "class")} == {k: prediction[k] for k in ("name", "label", "class")}
        assert got["probability"] == pytest.approx(prediction["probability"], abs=1e-6)
        assert got["method"] == "gradcam" and got["target"] == {"label": got["label"], "class": got["class"]}
        assert np.allclose(got["map"], expected.numpy(), rtol=1e-5, atol=1e-7) and "delta" not in got
        assert got["image"].shape == (224, 224, 3) and len(got["map"]) == 16  # the run's 16 px, 14× each
    upload = {"files": {"file": (paths[0].name, paths[0].read_bytes())}}
    for target in ("Bag", "8", 8):
        fields = {"json": {"image": base64.b64encode(paths[0].read_bytes()).decode(), "target": target}}
        got = explained(api_app.post("/explain", **(fields if target == 8 else upload | {"data": {"target": target}})))
        assert got[0]["target"] == {"label": 8, "class": "Bag"} and got[0]["class"] == predicted[0]["class"]
    bag = Explainer(model.net, model.preprocess, "gradcam").attribute(x[:1], torch.tensor([8])).maps[0]
    assert np.allclose(got[0]["map"], bag.numpy(), rtol=1e-5, atol=1e-7)
    (ig,) = explained(api_app.post("/explain", **upload, data={"method": "integrated_gradients"}))
    assert ig["method"] == "integrated_gradients" and isinstance(ig["delta"], float)
    assert ig["target"]["label"] == predicted[0]["label"]


def explain_refusals(good: str) -> dict[str, tuple[int, str, dict]]:
    """Requests ``/explain`` refuses beyond ``bad_requests``' (``good``: an image as base64):
    name → (status, words the detail must hold, httpx arguments)."""
    names = "T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot"
    target = f"a class index from 0 to 9 or a class name ({names}); left out: the predicted class"
    return {
        "unknown method": (
            400,
            f"method='lime': one of {', '.join(METHODS)}",
            {"json": {"image": good, "method": "lime"}},
        ),
        "target out of range": (400, f"target=10: {target}", {"json": {"image": good, "target": 10}}),
        "negative target": (400, "target='-1': a class index from 0 to 9", {"json": {"image": good, "target": "-1"}}),
        "unknown class name": (400, "target='Hat': a class index", {"json": {"image": good, "target": "Hat"}}),
        "a 5,000-digit target": (400, "target='9999", {"json": {"image": good, "target": "9" * 5000}}),
        "target as a list": (
            400,
            "the 'target' field must be text or a number",
            {"json": {"image": good, "target": [1]}},
        ),
        "9 images": (413, "9 images in one request; at most 8 are taken", {"json": {"images": [good] * 9}}),
    }


def test_explain_refuses_bad_requests_in_process(api_app, photos) -> None:
    """The same refusals as /predict (bar the calibration checks of ``sets`` and ``alpha``: /explain makes
    no sets), and its own; then a good request of 8 images, the most it takes."""
    paths, _ = photos
    good = base64.b64encode(paths[0].read_bytes()).decode()
    same = {k: v for k, v in bad_requests().items() if k not in ("unknown set method", "uncalibrated alpha")}
    for name, (status, words, request) in {**same, **explain_refusals(good)}.items():
        answer = api_app.post("/explain", **request)
        assert answer.status_code == status, (name, answer.text)
        assert words in answer.json()["detail"], (name, answer.text)
    assert len(explained(api_app.post("/explain", json={"images": [good] * 8, "method": "saliency"}))) == 8


def test_explain_without_a_convolution(served_run: Path, monkeypatch: pytest.MonkeyPatch, photos) -> None:
    """A network without nn.Conv2d: gradcam (the default) answers 400 with NO_CONV, the other methods
    work, and /info lists those."""
    import fmnist_lightning.serving.server as server_module

    model = load_trained(served_run)
    model.module.net = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, 10))
    monkeypatch.setattr(server_module, "load_backend", lambda options, device="cpu": model)
    options = ServeOptions(run_dir=str(served_run))
    assert run_info(options, model)["explain"] == ["integrated_gradients", "saliency", "smoothgrad"]
    upload = {"files": {"file": (photos[0][0].name, photos[0][0].read_bytes())}}
    with api_client(options) as client:
        refused = client.post("/explain", **upload)
        assert refused.status_code == 400 and refused.json()["detail"] == NO_CONV
        for method in ("integrated_gradients", "saliency", "smoothgrad"):
            assert explained(client.post("/explain", **upload, data={"method": method}))[0]["method"] == method


@pytest.mark.slow  # exports model.onnx (about 4 s)
def test_onnx_backend_answers_explain_with_501(served_run: Path, photos) -> None:
    """onnxruntime gives no gradients: /explain answers 501 saying to use backend=torch, /info's
    explain is null (the page then shows no map), and no explaining worker is started."""
    from starlette.testclient import TestClient

    if not (served_run / "model.onnx").is_file():
        export_run(served_run, "onnx")
    server = build_server(ServeOptions(run_dir=str(served_run), backend="onnx"))
    assert server.model_metadata["explain"] is None
    assert [api.api_path for api in server.litapi_connector] == ["/predict"]
    client = TestClient(server.app)  # not entered: no lifespan, so no worker process
    paths, _ = photos
    answer = client.post("/explain", files={"file": (paths[0].name, paths[0].read_bytes())})
    assert answer.status_code == 501 and answer.json() == {"detail": NO_GRADIENTS}


@pytest.mark.slow  # the real server: fmnist-serve and its worker process (about 12 s to start)
def test_answers_like_fmnist_predict(server: ServerProcess, served_run: Path, photos) -> None:
    paths, _ = photos
    expected = predict_files(load_trained(served_run), [str(p) for p in paths[:4]])
    files = [("file", (p.name, p.read_bytes())) for p in paths[:4]]
    answer = httpx.post(server.url + "/predict", files=files, timeout=30)
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    for got, want in zip(predictions, expected, strict=True):
        assert got["name"] == Path(want.path).name and got["class"] == want.name and got["label"] == want.label
        assert got["probability"] == pytest.approx(want.probability, abs=1e-5)
        assert [t["class"] for t in got["top"]] == [name for name, _ in want.top]
    # The server's default sets (LAC at α = 0.05), made of the probabilities answered with.
    probs = load_trained(served_run).predict_proba(torch.cat([load_image(p) for p in paths[:4]]))
    assert answer.json()["sets"] == {"method": "lac", "alpha": 0.05}
    assert [p["set"] for p in predictions] == expected_sets(probs, served_run, "lac", "0.05")
    as_json = {"images": [base64.b64encode(p.read_bytes()).decode() for p in paths[:2]], "sets": "none"}
    again = httpx.post(server.url + "/predict", json=as_json, timeout=30).json()["predictions"]
    assert [p["class"] for p in again] == [p["class"] for p in predictions[:2]]
    assert again[0]["name"] == "image 1" and "set" not in again[0]
    info = httpx.get(server.url + "/info").json()["model"]
    assert info["run"] == "run" and info["backend"] == "torch" and 0.5 < info["test_acc"] < 1
    assert info["calibrated"] and info["temperature"] == read_temperature(served_run)
    assert info["sets"]["raps"] == [0.1, 0.05] and info["default_sets"] == {"method": "lac", "alpha": 0.05}
    assert (info["dataset"], info["num_classes"], info["class_names"][0]) == ("FashionMNIST", 10, "T-shirt/top")
    assert info["explain"] == list(METHODS)
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and 'id="file"' in page.text and "text/html" in page.headers["content-type"]
    fields = {"method": "smoothgrad", "target": "Bag"}
    maps = explained(httpx.post(server.url + "/explain", files=files, data=fields, timeout=30))
    assert [m["class"] for m in maps] == [p["class"] for p in predictions]
    assert all(m["method"] == "smoothgrad" and m["target"]["class"] == "Bag" for m in maps)


@pytest.mark.slow  # the real server
def test_bad_requests_get_4xx_json_and_the_server_stays_up(server: ServerProcess, photos) -> None:
    for name, (status, words, request) in bad_requests().items():
        answer = httpx.post(server.url + "/predict", timeout=30, **request)
        assert answer.status_code == status, (name, answer.text)
        assert words in answer.json()["detail"], (name, answer.text)
    paths, _ = photos
    for name, (status, words, request) in explain_refusals(base64.b64encode(paths[0].read_bytes()).decode()).items():
        answer = httpx.post(server.url + "/explain", timeout=30, **request)
        assert answer.status_code == status, (name, answer.text)
        assert words in answer.json()["detail"], (name, answer.text)
    assert httpx.get(server.url + "/health").text == "ok" and server.process.poll() is None
    assert "Traceback" not in server.log.read_text(), server.log.read_text()[-3000:]
    assert httpx.post(server.url + "/predict", files={"file": paths[0].open("rb")}, timeout=30).status_code == 200
    assert explained(httpx.post(server.url + "/explain", files={"file": paths[0].open("rb")}, timeout=30))


def test_bad_options_stop_before_serving(served_run: Path, trained_run: Path, tmp_path: Path) -> None:
    for options, error, words in (
        ({"run_dir": str(trained_run), "backend": "onnx"}, RunError, "does not exist; export the run first"),
        ({"run_dir": str(served_run), "preprocess": "pad"}, ArgumentError, "preprocess='pad': photo or none"),
        ({"run_dir": str(served_run), "max_batch_size": 0}, ArgumentError, "max_batch_size=0"),
        ({"run_dir": str(served_run), "sets": "topk"}, ArgumentError, "sets='topk': null or lac, aps, raps"),
        ({"run_dir": str(served_run), "sets": "aps", "alpha": 0.2}, ArgumentError, "alpha=0.2: one of the calibrated"),
        ({"run_dir": str(served_run), "explain_method": "lime"}, ArgumentError, "explain_method='lime': gradcam, "),
        ({"run_dir": str(served_run), "explain_max_images": 0}, ArgumentError, "explain_max_images=0: 1 or more"),
        ({"run_dir": str(tmp_path)}, RunError, "is not a run folder"),
    ):
        with pytest.raises(error, match=re.escape(words)):
            build_server(ServeOptions(**options))
    result = run_command("serve.py", f"run_dir={tmp_path}", "port=1")  # the command: one line, exit 1
    assert result.returncode == 1 and result.stderr.startswith("error: ") and "is not a run folder" in result.stderr
    assert "Traceback" not in result.stderr


def test_options_are_the_config_keys() -> None:
    """conf/serve.yaml and ServeOptions name the same settings (host and port are the command's)."""
    keys = set(OmegaConf.load(REPO / "conf" / "serve.yaml")) - {"defaults", "hydra", "host", "port"}
    assert keys == {f.name for f in dataclasses.fields(ServeOptions)}
    defaults = OmegaConf.load(REPO / "conf" / "serve.yaml")
    for field in dataclasses.fields(ServeOptions):
        if field.name != "run_dir":
            assert defaults[field.name] == field.default, field.name


def tree_rss(process: psutil.Process) -> int:
    """Resident memory of a process and all its descendants, in bytes."""
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)] if p.is_running())


@pytest.mark.slow
def test_200_malformed_requests_among_200_valid_ones(served_run: Path, photos) -> None:
    """Interleaved, from 8 concurrent clients with batching on: every valid request answers
    correctly, every bad one with its 4xx; the server is up after, and its memory has not
    grown by more than 50 MB."""
    paths, _ = photos
    expected = [p.name for p in predict_files(load_trained(served_run), [str(p) for p in paths])]
    bad = list(bad_requests().items())
    with start_server(served_run, max_batch_size=8) as running:
        process = psutil.Process(running.process.pid)
        with httpx.Client(base_url=running.url, timeout=60) as client:
            for path in paths:  # warm up every code path before measuring
                client.post("/predict", files={"file": path.open("rb")})
            for _, (_, _, request) in bad:
                client.post("/predict", **request)
            before = tree_rss(process)

            def one(i: int) -> tuple[str, int, str]:
                if i % 2:
                    name, (status, words, request) = bad[(i // 2) % len(bad)]
                    answer = client.post("/predict", **request)
                    return name, answer.status_code - status, words if words in answer.text else answer.text
                path = paths[(i // 2) % len(paths)]
                answer = client.post("/predict", files={"file": (path.name, path.read_bytes())})
                got = answer.json()["predictions"][0]["class"] if answer.status_code == 200 else answer.text
                return path.name, 0 if got == expected[(i // 2) % len(paths)] else 1, ""

            with ThreadPoolExecutor(8) as pool:
                outcomes = list(pool.map(one, range(400)))
            assert [o for o in outcomes if o[1] != 0] == []
            assert client.get("/health").text == "ok"
        growth = tree_rss(process) - before
        assert running.process.poll() is None
        assert growth < 50e6, f"memory grew by {growth / 1e6:.1f} MB"


@pytest.mark.slow
def test_onnx_backend_and_batching_answer_like_torch(served_run: Path, photos) -> None:
    paths, _ = photos
    expected = predict_files(load_trained(served_run), [str(p) for p in paths])
    if not (served_run / "model.onnx").is_file():
        export_run(served_run, "onnx")
    with start_server(served_run, backend="onnx", max_batch_size=16, batch_timeout=0.05) as running:

        def one(path: Path) -> dict:
            files, fields = {"file": (path.name, path.read_bytes())}, {"sets": "aps", "alpha": "0.1"}
            answer = httpx.post(running.url + "/predict", files=files, data=fields, timeout=60)
            return answer.json()["predictions"][0]

        with ThreadPoolExecutor(16) as pool:
            got = list(pool.map(one, paths))
        info = httpx.get(running.url + "/info").json()["model"]
        assert info["backend"] == "onnx" and info["sets"]["aps"] == [0.1, 0.05] and info["explain"] is None
        refused = httpx.post(running.url + "/explain", files={"file": paths[0].open("rb")}, timeout=30)
        assert refused.status_code == 501 and refused.json()["detail"] == NO_GRADIENTS
        for g, want in zip(got, expected, strict=True):  # 16 px: ONNX resizes in float (test_export.py)
            assert g["class"] == want.name and g["probability"] == pytest.approx(want.probability, abs=1e-2)
        # The sets of the graph's own probabilities, with the thresholds its metadata carries.
        probs = load_exported(served_run / "model.onnx").predict_proba(torch.cat([load_image(p) for p in paths]))
        assert [g["set"] for g in got] == expected_sets(probs, served_run, "aps", "0.1")
        page_without_map(running.url, paths[0], expected[0].name)  # last: a skip without chromium


def page_without_map(url: str, path: Path, name: str) -> None:
    """The web page of a server without /explain (backend=onnx) classifies ``path`` as ``name`` and
    shows neither a map nor an error."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = chrome_driver()
    try:
        browser.get(url + "/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda b: "%" in b.find_element(By.ID, "accuracy").text)  # /info has answered
        browser.find_element(By.ID, "file").send_keys(str(path))
        wait.until(lambda b: b.find_element(By.ID, "result").get_attribute("data-predicted"))
        assert browser.find_element(By.ID, "result").get_attribute("data-predicted") == name
        browser.execute_async_script("setTimeout(arguments[0], 500)")  # time for a map to come, were it asked
        assert not browser.find_element(By.ID, "explain").is_displayed()
        assert browser.find_element(By.ID, "error").text == ""
    finally:
        browser.quit()


@pytest.mark.slow
def test_web_page_in_headless_chromium(server: ServerProcess, served_run: Path, photos, tmp_path: Path) -> None:
    """Upload a real test image through the page's file input and read the answer off it, and its
    Grad-CAM map (/explain's PNG) beside it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    paths, _ = photos
    expected = predict_files(load_trained(served_run), [str(paths[0])])[0]
    browser = chrome_driver()
    try:
        browser.get(server.url + "/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda b: "%" in b.find_element(By.ID, "accuracy").text)
        assert browser.find_element(By.ID, "run").text.startswith("run (")
        assert browser.find_element(By.ID, "dataset").text.startswith("FashionMNIST (10): T-shirt/top, Trouser")
        browser.find_element(By.ID, "file").send_keys(str(paths[0]))
        wait.until(lambda b: b.find_element(By.ID, "result").get_attribute("data-predicted"))
        rows = browser.find_elements(By.CSS_SELECTOR, "#result .row")
        assert len(rows) == 3
        assert rows[0].find_element(By.CLASS_NAME, "name").text == expected.name
        assert rows[0].find_element(By.CLASS_NAME, "probability").text == f"{100 * expected.probability:.1f} %"
        members = browser.find_element(By.ID, "set").text  # the server's default sets
        assert members.startswith("Prediction set (lac, 95 %): ") and expected.name in members
        wait.until(lambda b: b.find_element(By.ID, "explain").is_displayed())
        shown = browser.find_element(By.ID, "map")
        assert shown.get_attribute("src").startswith("data:image/png;base64,")
        assert browser.execute_script("return arguments[0].naturalWidth", shown) == 224  # decoded
        assert browser.find_element(By.ID, "map-caption").text.startswith(f"Grad-CAM for {expected.name}: ")
        browser.save_screenshot(str(tmp_path / "serve_page.png"))
        assert np.asarray(Image.open(tmp_path / "serve_page.png")).std() > 10  # something was drawn

        bad = tmp_path / "notes.png"
        bad.write_bytes(b"not an image")
        browser.find_element(By.ID, "file").send_keys(str(bad))
        wait.until(lambda b: b.find_element(By.ID, "error").text)
        assert "is not an image" in browser.find_element(By.ID, "error").text
        assert not browser.find_element(By.ID, "explain").is_displayed()
    finally:
        browser.quit()


@pytest.mark.slow  # a server of its own for each signal (about 18 s each: /predict and /explain workers)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_one_signal_to_the_main_process_stops_every_process(served_run: Path, sig: signal.Signals) -> None:
    """As a service manager, ``docker stop`` or ``scancel`` stops it: one signal to the main
    process only (not its group). Every worker process ends within seconds and the port is free."""
    with start_server(served_run) as running:
        main = psutil.Process(running.process.pid)
        workers = main.children(recursive=True)
        assert workers, "LitServe started no worker process"
        os.kill(main.pid, sig)
        running.process.wait(timeout=30)
        _, alive = psutil.wait_procs(workers, timeout=15)
        for process in alive:  # a failure must not leave servers running after the test
            process.kill()
        assert alive == [], f"left running after {sig.name}: {[p.pid for p in alive]}"
        port = int(running.url.rsplit(":", 1)[1])
        with socket.socket() as sock:  # as a restarted server binds: OSError while anything listens there
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen()
