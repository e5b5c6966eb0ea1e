"""``minivision serve``: one trained model behind a small HTTP API and a web page.

    app = create_app("runs/train")          # FastAPI app; the model is loaded once, here
    serve("runs/train", "127.0.0.1", 8000)  # the same on uvicorn, until Ctrl-C

Endpoints: ``GET /`` the page, ``POST /predict``, ``GET /health``, ``GET /models``, ``GET /examples``,
``GET /report`` (run_files.py), ``/docs``, ``/redoc`` and ``/openapi.json`` (docs.py: served offline).
Every error is ``{"error": "<one line>", "status": N}``. The request body is
limited while it streams in (uploads.py); pictures are decoded by ``open_image`` (allowlisted
formats, bomb limit on, truncated files refused) and predicted by ``predict_images``, the same
code as ``minivision predict``, in a worker thread so the event loop keeps serving, one inference
at a time under a lock (torch threads share one batch; small batches gain little from more).

``version`` in responses is ``<minivision version>+<first 12 hex digits of the SHA-256 of
model.safetensors>``: it changes exactly when the weights do, which a created-time would not
promise (a copied or re-trained run).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .. import __version__, onnx_runtime
from ..data.images import ACCEPTED, MAX_PIXELS, ImageError, open_image
from ..errors import MinivisionError
from ..onnx_runtime import is_onnx
from ..scores import TTA_MODES, tta_mode
from .docs import clean_openapi, errors, mount_docs, predict_openapi
from .run_files import REPORT, REPORT_CSP, examples_json, read_report, read_report_picture
from .uploads import BodyLimit, UploadError, error_body, parse_options, read_upload

if TYPE_CHECKING:  # torch is imported with a run's model, never for an .onnx export
    import torch

    from ..runfiles import LoadedModel

# ImageError.kind -> HTTP status
IMAGE_STATUS = {"unsupported": 415, "corrupt": 400, "bomb": 400, "too_large": 413, "unreadable": 400}

# The page is inline HTML/CSS/JS with no outside resources; this policy makes sure it stays that way.
PAGE_CSP = ("default-src 'none'; img-src 'self' data: blob:; style-src 'unsafe-inline'; "
            "script-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'")


# ----------------------------------------------------------------------------- the served model

class ServedModel:
    """The loaded model, what /models says about it, and the lock that runs one inference at a time."""

    def __init__(self, lm: LoadedModel, device: str, max_pixels: int, busy_requests: int = 2,
                 max_body_mb: float = 10) -> None:
        self.lm, self.device, self.max_pixels = lm, device, max_pixels
        self.lock = threading.Lock()  # the model: one inference at a time
        # requests decoding or predicting at once: with ``max_pixels`` per request, this bounds the
        # memory that decoded pictures can take (2 x 89.5 MP x 3 bytes ~ 0.5 GB at worst, images.MAX_PIXELS)
        self.slots = threading.BoundedSemaphore(busy_requests)
        export = is_onnx(getattr(lm, "file", ""))  # an .onnx export (onnx_runtime.OnnxModel) or a run
        if export:
            self.predict_images, self.inference_mode = onnx_runtime.predict_images, contextlib.nullcontext
        else:
            import torch

            from ..predict import predict_images

            self.predict_images, self.inference_mode = predict_images, torch.inference_mode
        digest = (lm.weights_sha256 if export else "") or hashlib.sha256(
            (lm.file if export else lm.path / "model.safetensors").read_bytes()).hexdigest()
        self.version = f"{__version__}+{digest[:12]}"
        self.name = f"{lm.file.name if export else lm.path.name}/{lm.name}"  # fm.onnx/mvnet, or train3/mvnet
        c, (h, w) = lm.preprocess.channels, lm.preprocess.size
        # the test-time augmentation of every answer: the model's own (predict_images' default, not overridden)
        self.tta = tta_mode(None, lm.meta)
        metrics = lm.meta.get("metrics") or {}
        test_accuracy = metrics.get("test_accuracy")
        # a few KB each; read once. An export has no examples file: its run's test split, when it can be read
        self.examples, self.examples_note = (export_examples(lm) if export
                                             else (examples_json(lm.path, lm.classes, png_base64), None))
        self.report_note = ("none in this export (the training report stays in the run folder: serve the run "
                            "to see it)") if export else None
        self.info = {
            "name": self.name, "run": lm.file.name if export else lm.path.name, "architecture": lm.name,
            "version": self.version,
            "classes": lm.classes, "num_classes": len(lm.classes),
            "input": {"channels": c, "height": h, "width": w},
            # the run's parameter count (model.json's; the graph's initializers count other numbers too)
            "parameters": _recorded_parameters(lm.meta) if export else sum(p.numel() for p in lm.model.parameters()),
            "metrics": lm.meta.get("metrics", {}), "created": lm.meta.get("created"),
            "dataset": (lm.meta.get("dataset") or {}).get("name"), "weights_sha256": digest,
            "test_accuracy": float(test_accuracy) if isinstance(test_accuracy, int | float)
            and 0 <= test_accuracy <= 1 else None,
            # the one list of accepted pictures (data/images.py), for clients and the page's file picker
            "accepted_formats": list(ACCEPTED.extensions), "content_types": list(ACCEPTED.content_types),
            "max_upload_mb": max_body_mb, "examples": len(self.examples), "tta": self.tta,
        }

    def describe(self) -> dict[str, Any]:
        """``/models``' entry: ``info`` plus ``report`` ("/report" while the run has a report.html, else None)
        and ``report_note`` (why there is none: an export; else None)."""
        has = self.report_note is None and (self.lm.path / REPORT).is_file()
        return {**self.info, "report": "/report" if has else None, "report_note": self.report_note}

    def predict(self, images: list[tuple[str, bytes]], top_k: int, include_input: bool,
                background: str | None = None) -> list[dict[str, Any]]:
        """Decode and predict, in a worker thread. Raises UploadError naming the first bad picture.

        Each picture is held to the one bomb limit (``images.bomb_message``, ``max_pixels`` a picture,
        counted as decoded: a large JPEG at its reduced size), and the decoded pixels of the whole
        request to the same figure: 16 pictures of 80 megapixels each would otherwise hold 4 GB."""
        with self.slots:
            decoded, pixels = [], 0
            for name, data in images:
                try:
                    img = open_image(data, max_pixels=self.max_pixels, min_side=self.lm.preprocess.photo.decode_side)
                except ImageError as exc:
                    reason = str(exc).removeprefix("<uploaded bytes>: ")
                    raise UploadError(IMAGE_STATUS.get(exc.kind, 400), f"{name}: {reason}") from None
                pixels += img.width * img.height
                if pixels > self.max_pixels:
                    raise UploadError(400, f"{name}: the pictures of this request decode to {pixels:,} pixels "
                                           f"together, over the limit of {self.max_pixels:,} pixels a request")
                decoded.append(img)
            with self.lock, self.inference_mode():
                results = self.predict_images(self.lm, decoded, top_k=top_k, names=[n for n, _ in images],
                                         inputs=include_input, device=self.device, background=background)
        for r in results:
            if "error" in r:
                raise UploadError(400, f"{r['path']}: {r['error']}")
            if include_input:
                r["input_png"] = png_base64(r["input"])
        return results


def _recorded_parameters(meta: dict[str, Any]) -> int | None:
    """model.json's ``parameters`` (the run's count), None when it was not recorded (older runs)."""
    n = meta.get("parameters")
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else None


def export_examples(om: Any, per_class: int = 3, seed: int = 0) -> tuple[list[dict[str, Any]], str | None]:
    """(examples as ``examples_json`` gives them, None) for an export (onnx_runtime.OnnxModel): up to
    ``per_class`` pictures of each class of its run's test split, read from the data model_json records
    without torch (numpy's seeded generator picks them, so they may differ from the run's own examples); or
    ([], a one-line reason) when the run had no test split or its data cannot be read here."""
    from ..data.dataset import numpy_arrays
    from ..evaluate import scoring_data

    if "test_accuracy" not in (om.meta.get("metrics") or {}):
        return [], "no example pictures: this export's run had no test split to take them from"
    try:
        with numpy_arrays():
            sd = scoring_data(om, split="test")
        x, y = np.asarray(sd.split.x), np.asarray(sd.split.y)
    except (MinivisionError, OSError, ValueError) as e:
        return [], f"no example pictures: the run's test data cannot be read here ({str(e).splitlines()[0]})"
    picked: list[int] = []
    counts = [0] * len(om.classes)
    for i in np.random.default_rng(seed).permutation(len(y)).tolist():
        c = int(y[i])
        if 0 <= c < len(counts) and counts[c] < per_class:
            counts[c] += 1
            picked.append(i)
    picked.sort(key=lambda i: (int(y[i]), i))
    return [{"label": om.classes[int(y[i])], "index": int(y[i]), "png": png_base64(x[i])} for i in picked], None


def png_base64(x: torch.Tensor) -> str:
    """uint8 (C, H, W) -> base64 PNG (grey for one channel, RGB for three)."""
    a = x.cpu().numpy() if hasattr(x, "cpu") else np.asarray(x)  # a tensor, or an export's numpy array
    img = Image.fromarray(a[0], "L") if a.shape[0] == 1 else Image.fromarray(a.transpose(1, 2, 0), "RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _torch_threads() -> int:
    """torch's intra-op threads, 0 when torch is not loaded (an .onnx export is served)."""
    return sys.modules["torch"].get_num_threads() if "torch" in sys.modules else 0


class NoSniff:
    """ASGI middleware: ``X-Content-Type-Options: nosniff`` on every response (a plain ASGI class, so
    request bodies stream through untouched, unlike Starlette's BaseHTTPMiddleware)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        async def add_header(message: dict) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-content-type-options", b"nosniff")]
            await send(message)

        await self.app(scope, receive, add_header if scope["type"] == "http" else send)


def _page() -> str:
    return resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- OpenAPI descriptions

_TTA_TEXT = (f"the test-time augmentation of the answers, one of {', '.join(TTA_MODES)}: with flip the scores are "
             "the mean of the picture's and its mirror's, with flip+shift of those and their one-pixel moves "
             "(10 views); the model's own setting")


class Prediction(BaseModel):
    label: str
    index: int
    score: float = Field(description="the class's probability, 0 to 1 (calibrated when the run has a "
                                     "temperature)")


class PredictResponse(BaseModel):
    predictions: list[list[Prediction]] = Field(description="per picture: the top_k classes, best first")
    model: str
    version: str
    files: list[str]
    notes: list[str | None] = Field(description="per picture: a note such as an empty picture's (one colour, "
                                                "or almost, as sent or as the model sees it after the "
                                                "conversion: its label is a guess), else null")
    unsure: list[bool] = Field(description="per picture: true when the answer should not be trusted (low "
                                           "confidence, or a picture unlike the ones the model knows)")
    reasons: list[str | None] = Field(description="per picture: why it is unsure, in one sentence, else null")
    tta: str = Field(description=_TTA_TEXT)
    inputs: list[str] | None = Field(None, description="what the model saw, base64 PNGs (include_input=true)")


class Example(BaseModel):
    label: str
    index: int
    png: str = Field(description="the picture as the model takes it, base64 PNG")


class ExamplesResponse(BaseModel):
    examples: list[Example] = Field(description="3 per class in a new run; empty for a run without examples")
    note: str | None = Field(None, description="why there are none, when that is known (an export)")


class HealthResponse(BaseModel):
    status: str = Field(description='"ok" while the service answers')
    model_loaded: bool
    model: str = Field(description="<run folder>/<architecture>")
    version: str = Field(description="<minivision version>+<first 12 hex digits of model.safetensors' SHA-256>")
    uptime_s: float = Field(description="seconds since the model was loaded")
    torch_threads: int = Field(description="torch intra-op threads (0 for an .onnx export: it runs on onnxruntime)")


class InputSize(BaseModel):
    channels: int
    height: int = Field(description="pixels")
    width: int = Field(description="pixels")


class ServedModelInfo(BaseModel):
    name: str
    run: str = Field(description="the run folder's name")
    architecture: str
    version: str
    classes: list[str]
    num_classes: int
    input: InputSize = Field(description="what the model takes; pictures are converted to it")
    parameters: int | None = Field(description="the run's parameters; null for an export of a run that did "
                                               "not record them")
    metrics: dict[str, Any] = Field(description="the run's metrics from training (test_accuracy, ...)")
    created: str | None = None
    dataset: str | None = Field(None, description="the training data set's name")
    weights_sha256: str
    test_accuracy: float | None = Field(None, description="top-1 accuracy on the test split, 0 to 1")
    accepted_formats: list[str] = Field(description='the file extensions POST /predict accepts (".png", ...)')
    content_types: list[str] = Field(description="the MIME types POST /predict accepts")
    max_upload_mb: float = Field(description="the largest request body, in MB (10^6 bytes)")
    examples: int = Field(description="how many pictures GET /examples returns")
    tta: str = Field(description=_TTA_TEXT)
    report: str | None = Field(None, description='"/report" when the run has a training report, else null')
    report_note: str | None = Field(None, description="why there is no report (an export), else null")


class ModelsResponse(BaseModel):
    models: list[ServedModelInfo] = Field(description="the served model (one)")
    jobs: list[dict[str, Any]] | None = Field(None, description="the training jobs' models, when the server "
                                                                "runs with --jobs (as GET /models/{job_id})")


# ----------------------------------------------------------------------------- the app

def create_app(run: str | Path, *, max_body_mb: float = 10, max_files: int = 16, top_k: int = 3,
               device: str = "auto", threads: int | None = None, max_pixels: int = MAX_PIXELS,
               jobs_dir: Path | None = None, jobs_max_upload_mb: int = 200) -> FastAPI:
    """The FastAPI app serving the model in ``run``; loads it now (MinivisionError for a bad run).

    ``threads``: torch intra-op threads for the process (None: left as they are; ``serve`` passes
    ``default_threads()``). ``jobs_dir``: also mount the training-jobs API (jobs.py), whose uploads
    under ``/models/`` may be up to ``jobs_max_upload_mb`` (the jobs routes check their own limit)."""
    if max_body_mb <= 0 or max_files < 1 or top_k < 1:
        raise MinivisionError("max_body_mb must be > 0, max_files and top_k >= 1")
    if is_onnx(run):
        model = onnx_runtime.load_onnx(run, threads=threads)
    else:
        import torch

        from ..runfiles import load_model

        if threads is not None:
            torch.set_num_threads(threads)
        model = load_model(run)
    served = ServedModel(model, device, max_pixels, max_body_mb=max_body_mb)
    with served.inference_mode():  # warm-up: the first real request should not pay for lazy init
        c, (h, w) = served.lm.preprocess.channels, served.lm.preprocess.size
        blank = Image.new("L" if c == 1 else "RGB", (w, h))
        served.predict_images(served.lm, [blank], top_k=1, device=device)
    started = time.monotonic()
    max_bytes = int(max_body_mb * 1_000_000)
    default_top_k = top_k  # the endpoint's own ``top_k`` parameter shadows this name
    page = _page()

    app = FastAPI(title="minivision", version=__version__, docs_url=None, redoc_url=None,
                  description=f"Image classification with the model `{served.name}` "
                              f"({len(served.lm.classes)} classes). Errors: `{{\"error\": ..., \"status\": N}}`, "
                              f"status 400 for a request that cannot be used.")
    app.state.served = served
    mount_docs(app, "minivision")
    clean_openapi(app)
    overrides = {"/models/": jobs_max_upload_mb * 1_000_000} if jobs_dir is not None else {}
    (h, w) = served.lm.preprocess.size
    hint = (f"the model sees {w} x {h} pixels, so a picture a few hundred pixels wide is plenty "
            f"(the web page shrinks pictures before sending them)")
    app.add_middleware(BodyLimit, max_bytes=max_bytes, overrides=overrides, hint=hint)
    app.add_middleware(NoSniff)

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(error_body(status, message), status_code=status, headers=headers)

    @app.exception_handler(UploadError)
    async def _upload_error(request: Request, exc: UploadError) -> JSONResponse:
        return error(exc.status, exc.message, {"Connection": "close"} if exc.status == 413 else None)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = (exc.errors() or [{}])[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "body"))
        return error(400, f"{where or 'request'}: {first.get('msg', 'invalid value')}")

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> JSONResponse:  # nobody reads it; no traceback
        return error(400, "client disconnected before sending the whole body")

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        return error(500, f"internal error ({type(exc).__name__})")

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"})

    @app.get("/health", summary="Is the service up", response_model=None,
             responses={200: {"model": HealthResponse}})
    @app.head("/health", include_in_schema=False)  # one operation in the docs (no duplicate operation id)
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model_loaded": True, "model": served.name, "version": served.version,
                "uptime_s": round(time.monotonic() - started, 3), "torch_threads": _torch_threads()}

    @app.get("/models", summary="The served model (classes, input size, parameters, metrics) and the models "
                                "of the training-jobs API", response_model=None,
             responses={200: {"model": ModelsResponse}})
    async def models() -> dict[str, Any]:
        out: dict[str, Any] = {"models": [served.describe()]}
        if jobs_dir is not None:
            from .jobs import list_models_json

            out["jobs"] = await anyio.to_thread.run_sync(list_models_json, jobs_dir)
        return out

    @app.get("/examples", summary="A few test pictures of each class, as the model takes them",
             response_model=ExamplesResponse, response_model_exclude_none=True)
    async def examples() -> dict[str, Any]:
        return {"examples": served.examples, **({"note": served.examples_note} if served.examples_note else {})}

    @app.get("/report", summary="The run's training report (HTML)", response_class=HTMLResponse,
             responses=errors(404))
    async def report() -> Response:
        text = await anyio.to_thread.run_sync(read_report, served.lm.path)
        if text is None:
            raise UploadError(404, "this run has no report (report.html)")
        return HTMLResponse(text, headers={"Content-Security-Policy": REPORT_CSP, "Cache-Control": "no-cache"})

    @app.get("/report/{name}", summary="A picture of the report", response_class=Response,
             responses={200: {"content": {"image/png": {}}}, **errors(404)})
    async def report_picture(name: str) -> Response:
        data = await anyio.to_thread.run_sync(read_report_picture, served.lm.path, name)
        return Response(data, media_type="image/png", headers={"Cache-Control": "no-cache"})

    # POST /predict reads its options itself (parse_options), so a bad one gets the service's own
    # one-line 400; the OpenAPI description states them with their defaults and bounds
    @app.post("/predict", summary="Classify one or more pictures", response_model=None,
              responses={200: {"model": PredictResponse}, **errors(400, 413, 415, 503)},
              openapi_extra=predict_openapi(len(served.lm.classes), default_top_k, ACCEPTED.names))
    async def predict(request: Request) -> dict[str, Any]:
        upload = await read_upload(request.headers.get("content-type"), request.stream(), max_files)
        n_classes = len(served.lm.classes)
        k, want_input, background = parse_options(upload.options, dict(request.query_params), n_classes,
                                                  default_top_k)
        results = await anyio.to_thread.run_sync(served.predict, upload.images, k, want_input, background)
        out: dict[str, Any] = {"predictions": [r["top_k"] for r in results], "model": served.name,
                               "version": served.version, "files": [name for name, _ in upload.images],
                               "notes": [r.get("note") for r in results],
                               "unsure": [bool(r.get("unsure", False)) for r in results],
                               "reasons": [r.get("reason") for r in results], "tta": served.tta}
        if want_input:
            out["inputs"] = [r["input_png"] for r in results]
        return out

    # ---- training jobs: mounted only when a jobs folder is given; jobs.py owns the router
    if jobs_dir is not None:
        from .jobs import jobs_router

        app.include_router(jobs_router(jobs_dir, max_upload_mb=jobs_max_upload_mb))
    return app


# ----------------------------------------------------------------------------- uvicorn

def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or MinivisionError in one line (port in use, unknown host)."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise MinivisionError(f"cannot listen on host {host!r}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == 98:  # EADDRINUSE
            raise MinivisionError(f"port {port} on {host} is already in use (pick another with --port, "
                                  f"or --port 0 for any free one)") from None
        raise MinivisionError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def default_threads() -> int:
    """Half the cores, 1 to 4: one inference runs at a time, and a core is left to the event loop.
    Measured with bench/load.py on 2 cores: 1 thread served about 170 single-image requests/s
    against 135 with 2 (1 and 4 clients); a 16-image request took 25 ms against 21 ms."""
    return min(4, max(1, (os.cpu_count() or 2) // 2))


def serve(run: str | Path, host: str = "127.0.0.1", port: int = 8000, *, log: Callable[[str], None] = print,
          access_log: bool = False, **options: Any) -> None:
    """Load the model, bind, say where, and serve until Ctrl-C. Raises MinivisionError before starting."""
    import uvicorn

    threads = options.pop("threads", None) or default_threads()
    app = create_app(run, threads=threads, **options)
    sock = bind(host, port)
    served: ServedModel = app.state.served
    url = url_of(sock)
    log(f"serving {served.name} ({served.version}) at {url}  (page: {url}/  API docs: {url}/docs)  Ctrl-C stops")
    jobs_dir = options.get("jobs_dir")
    if jobs_dir is not None:
        log(f"training-jobs API on: its state is written to {Path(jobs_dir).absolute()}")
    config = uvicorn.Config(app, log_level="info" if access_log else "warning", access_log=access_log,
                            timeout_keep_alive=15, limit_concurrency=256)
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled, after shutting down cleanly
        pass
    finally:
        sock.close()
    log("stopped")
