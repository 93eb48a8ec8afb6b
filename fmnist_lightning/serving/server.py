"""The prediction server (docs/serve.md): LitServe ``LitAPI``s around a run's network, answering
``POST /predict`` (images → class, probability and top-k per image, and the conformal prediction
set when asked: ``sets`` and ``alpha`` fields, or the server's defaults; concurrent requests batched),
``POST /explain`` (images → an attribution map per image, ``evaluation.attribution``: ``method`` and
``target`` fields; ``backend=torch`` only, the onnx backend answers 501), ``GET /`` (a web page), and
LitServe's ``GET /health`` and ``GET /info``. Bad requests get a JSON ``{"detail": ...}`` with status
400, 413 or 415 and never reach the model, nor fail the good requests batched with them."""

# No ``from __future__ import annotations``: LitServe reads ``decode_request``'s annotation
# at run time, and only the class ``Request`` itself makes it pass the parsed body.
import base64
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import litserve as ls
import torch
from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fmnist_lightning.artifacts import read_json
from fmnist_lightning.data.photos import MAX_PIXELS, check_options
from fmnist_lightning.errors import UserError, require
from fmnist_lightning.evaluation import attribution
from fmnist_lightning.evaluation.attribution import Attribution, Explainer
from fmnist_lightning.evaluation.conformal import METHODS, set_choices
from fmnist_lightning.evaluation.runs import load_trained, run_conformal, run_temperature
from fmnist_lightning.run_folder import NET_WEIGHTS, RunFolder
from fmnist_lightning.serving.export import EXPORT_FILES, load_exported, metadata_conformal
from fmnist_lightning.serving.payload import HOW_TO_SEND, BadRequest, Decoded, decode_payload, text_fields

#: ``backend=``: the run's PyTorch network, or its ``model.onnx`` in onnxruntime.
BACKENDS = ("torch", "onnx")
#: ``POST /explain``'s answer (501) with ``backend=onnx``.
NO_GRADIENTS = "the onnx backend has no gradients: start the server with backend=torch for /explain"
#: The smallest side of ``/explain``'s PNG overlays, in pixels (each map pixel an equal square).
PNG_SIDE = 224


@dataclass
class ServeOptions:
    """How the server treats requests (conf/serve.yaml documents each).

    Attributes:
        batch_timeout: Seconds to wait for a batch to fill.
        max_body_mb: The largest request body, in megabytes (10⁶ bytes).
        timeout: Seconds a request may wait for its answer before a 504.
        fast_queue: LitServe's ZeroMQ transport instead of multiprocessing queues.
        sets, alpha: The conformal method and α of the requests that do not name their own (``None``:
            no sets unless asked).
        explain_method: ``/explain``'s method for the requests that name none (``attribution.METHODS``).
        explain_max_images: The most images of one ``/explain`` request (at most ``max_images`` apply).
    """

    run_dir: str
    backend: str = "torch"
    weights: str = NET_WEIGHTS
    preprocess: str = "photo"
    invert: bool | str = "auto"
    top_k: int = 3
    max_batch_size: int = 16
    batch_timeout: float = 0.005
    max_body_mb: float = 10.0
    max_pixels: int = MAX_PIXELS
    max_images: int = 64
    threads: int = 1
    workers: int = 1
    timeout: float = 30
    fast_queue: bool = True
    trusted_modules: Sequence[str] = ()
    sets: str | None = None
    alpha: float = 0.1
    explain_method: str = "gradcam"
    explain_max_images: int = 8

    def check(self) -> None:
        """Raises ``ArgumentError`` naming the first bad option (before anything is loaded)."""
        require(self.backend in BACKENDS, "backend", self.backend, " or ".join(BACKENDS))
        check_options(self.preprocess, self.invert)
        # pad keeps the image's own size; the exported graph takes 28×28 only.
        require(
            self.preprocess in ("photo", "none"),
            "preprocess",
            self.preprocess,
            "photo or none (the server batches 28×28 images)",
        )
        require(self.top_k >= 1, "top_k", self.top_k, "1 or more (at most the classes there are are listed)")
        require(self.max_batch_size >= 1, "max_batch_size", self.max_batch_size, "1 or more (1: no batching)")
        require(self.batch_timeout >= 0, "batch_timeout", self.batch_timeout, "seconds >= 0")
        require(self.max_body_mb > 0, "max_body_mb", self.max_body_mb, "megabytes > 0")
        require(self.max_pixels >= 784, "max_pixels", self.max_pixels, "at least 28×28 = 784")
        require(self.max_images >= 1, "max_images", self.max_images, "1 or more")
        require(self.threads >= 1, "threads", self.threads, "1 or more")
        require(self.workers >= 1, "workers", self.workers, "1 or more")
        require(self.timeout > 0, "timeout", self.timeout, "seconds > 0")
        require(self.sets is None or self.sets in METHODS, "sets", self.sets, f"null or {', '.join(METHODS)}")
        number = isinstance(self.alpha, (int, float)) and not isinstance(self.alpha, bool)
        require(number and 0 < self.alpha < 1, "alpha", self.alpha, "a calibrated α in (0, 1), e.g. 0.1 or 0.05")
        methods = ", ".join(attribution.METHODS)
        require(self.explain_method in attribution.METHODS, "explain_method", self.explain_method, methods)
        require(self.explain_max_images >= 1, "explain_max_images", self.explain_max_images, "1 or more")


def load_backend(options: ServeOptions, device: str = "cpu") -> Any:
    """The model that answers: an object with ``class_names``, ``predict_proba(uint8
    (B, 1, 28, 28)) → float (B, num_classes)``, ``check_sets(method, alpha)`` and
    ``predict_sets(probs, method, alpha) → bool (B, num_classes)``.

    Raises:
        RunError: The run cannot be loaded, or has no ``model.onnx`` for ``backend=onnx``.
    """
    if options.backend == "onnx":
        return load_exported(Path(options.run_dir) / EXPORT_FILES["onnx"], options.threads)
    return load_trained(options.run_dir, options.weights, device, list(options.trusted_modules))


def explainers(model: Any) -> dict[str, Explainer]:
    """An ``Explainer`` of ``model`` (a ``TrainedModel``) for each method its network allows, in
    ``attribution.METHODS`` order: all of them, but no ``gradcam`` for a network without ``nn.Conv2d``."""
    found = {}
    for method in attribution.METHODS:
        try:
            found[method] = Explainer(model.net, model.preprocess, method)
        except ValueError:  # NO_CONV
            continue
    return found


class RunAPI(ls.LitAPI):
    """An endpoint of LitServe's answered with the run's model (``load_backend``), which each of
    its worker processes loads."""

    def __init__(self, options: ServeOptions, api_path: str, max_batch_size: int) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=options.batch_timeout, api_path=api_path)
        self.options = options

    def setup(self, device: str) -> None:
        torch.set_num_threads(self.options.threads)
        self.model = load_backend(self.options, "cpu" if self.options.backend == "onnx" else device)


class FashionMNISTAPI(RunAPI):
    """``POST /predict``, LitServe's view of the model: decode each request, batch, predict, answer."""

    def __init__(self, options: ServeOptions) -> None:
        super().__init__(options, "/predict", options.max_batch_size)

    def decode_request(self, request: Request) -> Decoded:
        o = self.options
        decoded = decode_payload(request, o.preprocess, o.invert, o.max_pixels, o.max_images)
        if decoded.error is None:
            try:
                decoded.sets, decoded.alpha = self.chosen_sets(decoded.sets, decoded.alpha)
            except BadRequest as err:
                return Decoded(error=err)
        return decoded

    def chosen_sets(self, method: str | None, alpha: float | str | None) -> tuple[str | None, float | None]:
        """The ``(method, α)`` of a request's sets, the server's default for a field it leaves out;
        ``(None, None)`` for no sets (none asked, or ``sets=none``).

        Raises:
            BadRequest: 400, a method or α the run was not calibrated for, or a run without a record.
        """
        method = self.options.sets if method is None else method
        if method is None or method in ("", "none"):
            return None, None
        alpha = self.options.alpha if alpha is None else alpha
        try:
            self.model.check_sets(method, alpha)
        except UserError as err:
            raise BadRequest(400, str(err)) from None
        return method, float(alpha)

    def batch(self, inputs: list[Decoded]) -> list[Decoded]:
        return inputs  # predict classifies all images of all requests in one call

    def predict(self, x: Decoded | list[Decoded]) -> list[Decoded | tuple[Decoded, torch.Tensor]] | Any:
        requests = x if isinstance(x, list) else [x]
        good = [r for r in requests if r.error is None]
        if good:
            probs = self.model.predict_proba(torch.cat([r.images for r in good])).float().cpu()
            answers = iter(probs.split([len(r.images) for r in good]))
        results = [(r, next(answers)) if r.error is None else (r, None) for r in requests]
        return results if isinstance(x, list) else results[0]

    def unbatch(self, output: list) -> list:
        return output

    def encode_response(self, output: tuple[Decoded, torch.Tensor | None]) -> Any:
        request, probs = output
        if request.error is not None:
            return JSONResponse({"detail": request.error.detail}, status_code=request.error.status)
        names = self.model.class_names
        predictions = []
        for name, p in zip(request.names, probs, strict=True):
            values, labels = p.topk(min(self.options.top_k, len(names)))
            top = [{"class": names[int(i)], "probability": float(v)} for v, i in zip(values, labels, strict=True)]
            predictions.append({"name": name, "label": int(labels[0]), **top[0], "top": top})
        if request.sets is None:
            return {"predictions": predictions}
        sets = self.model.predict_sets(probs, request.sets, request.alpha)
        for prediction, members in zip(predictions, sets, strict=True):
            prediction["set"] = [names[int(i)] for i in members.nonzero().flatten()]
        return {"predictions": predictions, "sets": {"method": request.sets, "alpha": request.alpha}}


class ExplainAPI(RunAPI):
    """``POST /explain``: the images of a request (decoded as for ``/predict``, at most
    ``explain_max_images``), their predictions and an attribution map of each, one request at a time
    (the methods' cost is per image: integrated gradients runs the network 64 times, SmoothGrad 50)."""

    def __init__(self, options: ServeOptions) -> None:
        super().__init__(options, "/explain", max_batch_size=1)

    def setup(self, device: str) -> None:
        super().setup(device)
        self.explainers = explainers(self.model)

    def decode_request(self, request: Request) -> Decoded:
        o = self.options
        decoded = decode_payload(request, o.preprocess, o.invert, o.max_pixels, min(o.max_images, o.explain_max_images))
        if decoded.error is None:
            try:
                decoded.method, decoded.target = self.chosen_explanation(*text_fields(request, "method", "target"))
            except BadRequest as err:
                return Decoded(error=err)
        return decoded

    def chosen_explanation(self, method: Any, target: Any) -> tuple[str, int | None]:
        """The request's ``(method, target class index)`` from its fields (text, numbers or ``None``):
        the server's ``explain_method`` for a method it leaves out, ``None`` (the predicted class) for
        a target it leaves out.

        Raises:
            BadRequest: 400, a method not in ``attribution.METHODS``, ``gradcam`` for a network
                without a convolution (``NO_CONV``), a target that is neither a class index nor a
                class name (each detail says what is allowed).
        """
        method = self.options.explain_method if method in (None, "") else method
        if method not in attribution.METHODS:
            raise BadRequest(400, f"method={method!r}: one of {', '.join(attribution.METHODS)}")
        if method not in self.explainers:
            raise BadRequest(400, attribution.NO_CONV)
        return method, None if target in (None, "") else self.class_index(target)

    def class_index(self, target: str | int | float) -> int:
        """A ``target`` field as a class index: an index (a number or its text) or a class name.

        Raises:
            BadRequest: 400, neither (the detail lists the indices and names).
        """
        names = list(self.model.class_names)
        if target in names:
            return names.index(target)
        text = str(target).strip()
        if isinstance(target, (int, str)) and text.isdecimal() and len(text) <= 6 and int(text) < len(names):
            return int(text)
        allowed = f"a class index from 0 to {len(names) - 1} or a class name ({', '.join(names)})"
        raise BadRequest(400, f"target={target!r}: {allowed}; left out: the predicted class")

    def predict(self, x: Decoded) -> tuple[Decoded, torch.Tensor | None, Attribution | None, torch.Tensor | None]:
        """``(request, probabilities float (N, C), attribution of N maps, images as seen float (N, S, S))``;
        ``(request, None, None, None)`` for a bad request."""
        if x.error is not None:
            return x, None, None, None
        model, explainer = self.model, self.explainers[x.method]
        probs = model.predict_proba(x.images).float().cpu()
        targets = probs.argmax(dim=1) if x.target is None else torch.full((len(probs),), x.target)
        seen = model.preprocess(x.images.to(model.device))
        with torch.enable_grad():
            maps = explainer.attribute(seen, targets)
        return x, probs, maps, explainer.as_seen(seen)

    def encode_response(self, output: tuple) -> Any:
        request, probs, maps, seen = output
        if request.error is not None:
            return JSONResponse({"detail": request.error.detail}, status_code=request.error.status)
        names = self.model.class_names
        answers = []
        for i, (name, p) in enumerate(zip(request.names, probs, strict=True)):
            label, target = int(p.argmax()), int(maps.targets[i])
            answer = {"name": name, "label": label, "class": names[label], "probability": float(p[label])}
            answer |= {"target": {"label": target, "class": names[target]}, "method": request.method}
            answer |= {"map": rounded(maps.maps[i]), "png": overlay_png(seen[i], maps.maps[i])}
            if maps.delta is not None:
                answer["delta"] = float(maps.delta[i])
            answers.append(answer)
        return {"explanations": answers}


def rounded(values: torch.Tensor) -> list[list[float]]:
    """A float ``(S, S)`` map as JSON's list of S rows, each value to 6 significant digits."""
    return [[float(f"{v:.6g}") for v in row] for row in values.tolist()]


def overlay_png(image: torch.Tensor, values: torch.Tensor) -> str:
    """``attribution.overlay`` of a float ``(S, S)`` image on the [0, 1] scale and its float ``(S, S)``
    map, as a base64 PNG (RGB), upscaled with nearest-neighbour by the whole factor that makes its
    side at least ``PNG_SIDE`` pixels (224 for S = 16 or 28), so that a browser shows it crisply."""
    rgb = Image.fromarray(attribution.overlay(image, values))
    side = rgb.width * -(-PNG_SIDE // rgb.width)
    buffer = io.BytesIO()
    rgb.resize((side, side), Image.Resampling.NEAREST).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def no_gradients() -> JSONResponse:
    """``POST /explain`` with ``backend=onnx``: 501, ``NO_GRADIENTS``."""
    return JSONResponse({"detail": NO_GRADIENTS}, status_code=501)


class BodyGuard:
    """ASGI middleware for ``POST /predict`` and ``POST /explain``: refuses, before the request is
    queued, a body over ``max_bytes`` (413), an empty one or malformed JSON or multipart (400), and
    any other content type (415)."""

    def __init__(self, app: ASGIApp, max_bytes: int, paths: Sequence[str] = ("/predict", "/explain")) -> None:
        self.app, self.max_bytes, self.paths = app, max_bytes, tuple(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        limit = f"the body is larger than the limit of {self.max_bytes / 1e6:g} MB (max_body_mb)"
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await JSONResponse({"detail": limit}, status_code=413)(scope, receive, send)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await JSONResponse({"detail": limit}, status_code=413)(scope, receive, send)
                return

        async def replay() -> Message:
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        problem = await self.problem(scope, replay, bytes(body))
        if problem is not None:
            await JSONResponse({"detail": problem[1]}, status_code=problem[0])(scope, receive, send)
            return
        await self.app(scope, replay, send)

    @staticmethod
    async def problem(scope: Scope, replay: Receive, body: bytes) -> tuple[int, str] | None:
        """``(status, detail)`` of what is wrong with the body, or ``None``."""
        content_type = Request(scope).headers.get("content-type", "")
        if not body:
            return 400, f"the body is empty; {HOW_TO_SEND}"
        if content_type.startswith("application/json"):
            try:
                json.loads(body)
            except ValueError as err:
                return 400, f"the body is not valid JSON ({err}); {HOW_TO_SEND}"
            except RecursionError:  # e.g. 100,000 nested brackets: deeper than the parser goes
                return 400, f"the JSON body is nested too deeply to parse; {HOW_TO_SEND}"
            return None
        if content_type.startswith("multipart/form-data"):
            try:
                form = await Request(scope, replay).form()
            except Exception as err:  # starlette and python-multipart raise several kinds
                return 400, f"the multipart body cannot be parsed ({err}); {HOW_TO_SEND}"
            await form.close()
            return None
        return 415, f"Content-Type {content_type or '(none)'!r} is not taken; {HOW_TO_SEND}"


def run_info(options: ServeOptions, model: Any = None) -> dict[str, Any]:
    """What ``GET /info`` says: the run, its test accuracy (a fraction, ``None`` without
    ``report.json``), the backend, the dataset and classes, the temperature if calibrated, the
    conformal methods with their calibrated α (``sets``: ``{method: [α, ...]}``, ``None`` without a
    record), the server's default sets (``default_sets``: ``{"method", "alpha"}`` or ``None``) and
    ``/explain``'s methods for the network (``explain``: a list, ``None`` with ``backend=onnx``).

    Args:
        model: The loaded backend (``load_backend``), loaded here for ``backend=torch`` when ``None``.

    Raises:
        RunError, DamagedFileError: The folder is not a readable run.
    """
    run_dir = Path(options.run_dir)
    cfg = RunFolder(run_dir).load_config(list(options.trusted_modules))
    report = run_dir / "report.json"
    accuracy = read_json(report, "Evaluate the run again.").get("accuracy") if report.is_file() else None
    if options.backend == "onnx":  # the temperature the graph was exported with
        import onnx

        path = run_dir / EXPORT_FILES["onnx"]
        meta = {p.key: p.value for p in onnx.load(path).metadata_props}
        temperature = float(meta["temperature"]) if meta.get("calibrated") == "true" else None
        conformal = metadata_conformal(meta, path)
    else:
        temperature = run_temperature(run_dir, options.weights)
        conformal = run_conformal(run_dir, options.weights)
        model = load_backend(options) if model is None else model
    return {
        "run": run_dir.resolve().name,
        "run_dir": str(run_dir.resolve()),
        "model": cfg.model._target_,
        "dataset": cfg.data.name,
        "num_classes": len(cfg.data.class_names),
        "class_names": list(cfg.data.class_names),
        "test_acc": accuracy,
        "backend": options.backend,
        "calibrated": temperature is not None,
        "temperature": temperature,
        "sets": set_choices(conformal) if conformal else None,
        "default_sets": {"method": options.sets, "alpha": options.alpha} if options.sets else None,
        "explain": None if options.backend == "onnx" else list(explainers(model)),
    }


def web_page() -> str:
    """The HTML of ``GET /`` (``page.html`` beside this module)."""
    return files("fmnist_lightning.serving").joinpath("page.html").read_text(encoding="utf-8")


def build_server(options: ServeOptions) -> ls.LitServer:
    """The LitServer for ``options``; ``server.run(host=..., port=...)`` starts it.

    Raises:
        ArgumentError: An option is out of range.
        RunError, DamagedFileError: The run cannot be served (checked before any worker starts),
            or has no conformal thresholds for the default ``sets`` and ``alpha``.
    """
    options.check()
    model = load_backend(options)  # fails here, with the run's own message, rather than in a worker
    if options.sets is not None:
        model.check_sets(options.sets, options.alpha)
    onnx = options.backend == "onnx"
    server = ls.LitServer(
        [FashionMNISTAPI(options)] if onnx else [FashionMNISTAPI(options), ExplainAPI(options)],
        accelerator="cpu" if onnx else "auto",
        workers_per_device=options.workers,
        timeout=options.timeout,
        fast_queue=options.fast_queue,
        model_metadata=run_info(options, model),
        middlewares=[(BodyGuard, {"max_bytes": int(options.max_body_mb * 1e6)})],
    )
    if onnx:
        server.app.add_api_route("/explain", no_gradients, methods=["POST"], include_in_schema=False)
    # LitServe answers GET / with "litserve running"; the web page takes its place.
    server.app.router.routes = [r for r in server.app.router.routes if getattr(r, "path", None) != "/"]
    page = web_page()
    server.app.add_api_route("/", lambda: HTMLResponse(page), methods=["GET"], include_in_schema=False)
    return server
