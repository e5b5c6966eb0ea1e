"""Training jobs over HTTP, the hosted-service way: create a model, upload labelled pictures, train, poll, predict.

    POST /models                 {"name", "kind": fashion|gray|rgb, "base_model"}     -> 201 job
                                 (base_model: auto, none, a backbone or a network; see jobs_runner.start_flags)
    POST /models/{id}/images     a zip of <class>/<picture>, or pictures + label(s)   -> 200 counts, skipped
    POST /models/{id}/train      {"budget": "2m", "epochs": N} (both optional)        -> 202 job (queued)
    GET  /models/{id}            state, progress, metrics, error, class counts         -> 200 job
    GET  /models/{id}/log        the training output (text)
    POST /models/{id}/predict    pictures (multipart or base64 JSON), top_k            -> 200 predictions

Everything lives under ``state_dir``: ``jobs_store`` (the SQLite table), ``jobs_images`` (hostile
zips, the picture folders), ``jobs_runner`` (trainings as subprocesses that survive restarts),
``jobs_http`` (bodies, limits, errors). Errors are ``{"error": "<one line>", "status": N}``.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import threading
import time
from collections import OrderedDict
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from minivision import __version__
from minivision.budget import format_duration, parse_duration
from minivision.errors import MinivisionError

from .docs import errors, jobs_create_openapi, jobs_images_openapi, jobs_train_openapi, predict_openapi
from .jobs_http import (
    JobsRoute,
    check_keys,
    choice,
    json_body,
    limited,
    media_type,
    read_form,
)
from .jobs_images import (
    KINDS,
    MAX_CLASSES,
    Batch,
    _to_training_image,
    check_name,
    class_counts,
    printable,
    read_zip,
    store_images,
)
from .jobs_runner import AUTO, Runner, _log_section, base_model_choices, started_from
from .jobs_store import JobError, Store, finite
from .uploads import UploadError, parse_options, read_upload

log = logging.getLogger("minivision.serve.jobs")

MIN_BUDGET_S, MAX_BUDGET_S = 10.0, 30 * 60.0
MAX_EPOCHS = 1000
MAX_UPLOAD_FILES = 1000        # pictures in one multipart upload (a zip holds up to jobs_images.MAX_MEMBERS)
INFLATE_FACTOR = 5             # a zip may inflate to this many times the upload limit
MODEL_CACHE = 4                # trained models kept loaded
IMAGE_STATUS = {"unsupported": 415, "too_large": 413}  # ImageError.kind -> HTTP status; the others are 400
_INFERENCE = threading.Lock()  # one inference at a time: torch already uses every core for one batch


# ----------------------------------------------------------------------------- per state folder

class Jobs:
    """The store, the runner and the loaded models of one state folder (one per process)."""

    def __init__(self, state_dir: Path) -> None:
        self.store = Store(state_dir)
        self.runner = Runner(self.store, on_trained=self.forget_model)
        self._models: OrderedDict[str, tuple[tuple, Any]] = OrderedDict()
        self._models_lock = threading.Lock()
        self.write_lock = threading.Lock()  # an upload's files and a training's queueing never interleave

    def forget_model(self, job_id: str) -> None:
        with self._models_lock:
            self._models.pop(job_id, None)

    def loaded_model(self, job: dict[str, Any]) -> tuple[Any, str]:
        """(LoadedModel, version) of the job's trained model, loaded once and again only when a new training
        replaces it. The version is the app's: ``<minivision>+<sha256 of the weights, 12 hex digits>``."""
        from minivision.runfiles import load_model

        run = self.store.run_path(job, "model_run")
        if run is None:
            raise JobError(409, f"model {job['id']} is not trained yet (state {job['state']})")
        try:
            key = (run.name, (run / "model.json").stat().st_mtime_ns)
        except OSError:
            log.error("training jobs: %s: no model.json in %s", job["id"], run)
            raise JobError(500, f"the trained model of {job['id']} is missing; train it again") from None
        with self._models_lock:
            hit = self._models.get(job["id"])
            if hit is not None and hit[0] == key:
                self._models.move_to_end(job["id"])
                return hit[1]
        try:
            lm = load_model(run, device="cpu")
            digest = hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest()
        except (MinivisionError, OSError) as e:
            log.error("training jobs: %s: cannot load %s: %s", job["id"], run, e)
            raise JobError(500, f"the trained model of {job['id']} cannot be loaded; train it again") from None
        with self._models_lock:
            self._models[job["id"]] = (key, (lm, f"{__version__}+{digest[:12]}"))
            while len(self._models) > MODEL_CACHE:
                self._models.popitem(last=False)
        return lm, f"{__version__}+{digest[:12]}"

    def job_json(self, job: dict[str, Any]) -> dict[str, Any]:
        model_dir = self.store.model_dir(job["id"])
        counts = class_counts(model_dir / "images", job["classes"])
        out: dict[str, Any] = {"id": job["id"], "name": job["name"], "kind": job["kind"],
                               "base_model": job["base_model"], "state": job["state"], "classes": counts,
                               "images": sum(counts.values()), "created": job["created"], "updated": job["updated"]}
        if job["budget"]:
            out["budget"] = job["budget"]
            out["epochs"] = job["epochs"]
        if job["state"] == "queued":
            out["queue_position"] = self.store.queue_position(job)
        if job["state"] == "training":
            out["progress"] = job["progress"] or {"epoch": 0, "epochs": None, "fraction": 0.0}
        if job["model_run"]:
            out["metrics"] = finite(job["metrics"] or {})
            out["started_from"] = started_from(self.store.run_path(job, "model_run"))  # backbone or scratch, why
        if job["state"] == "failed":
            out["error"] = job["error"] or "training failed"
        return out


_REGISTRY: dict[Path, Jobs] = {}
_REGISTRY_LOCK = threading.Lock()


def _jobs(state_dir: Path) -> Jobs:
    key = Path(state_dir).absolute()
    with _REGISTRY_LOCK:
        if key not in _REGISTRY:
            _REGISTRY[key] = Jobs(key)
        return _REGISTRY[key]


def resume_jobs(state_dir: Path) -> list[str]:
    """At server start: pick up what a previous server left (see ``jobs_runner``) and start the
    training thread. Returns one line per job it touched. Safe to call more than once."""
    notes = _jobs(state_dir).runner.start()
    for note in notes:
        log.warning("training jobs: %s", note)
    return notes


def list_models_json(state_dir: Path) -> list[dict[str, Any]]:
    """Every job as ``GET /models/{id}`` shows it, oldest first (for the app's ``GET /models``)."""
    jobs = _jobs(state_dir)
    return [jobs.job_json(job) for job in jobs.store.all()]


def stop_jobs(state_dir: Path) -> None:
    """At server shutdown: stop a running training with a checkpoint; it resumes at the next start."""
    key = Path(state_dir).absolute()
    with _REGISTRY_LOCK:
        jobs = _REGISTRY.get(key)
    if jobs is not None:
        jobs.runner.stop()


# ----------------------------------------------------------------------------- the router

def _decode_for_predict(images: list[tuple[str, bytes]], kind: str) -> list[Any]:
    """Decode every picture and convert it as the training pictures were. All or nothing: the first bad
    picture answers for the request (415 not an allowed image, 413 too big, 400 broken or a bomb)."""
    from minivision.data.images import ImageError, open_image

    pictures = []
    for name, data in images:
        try:
            pictures.append(_to_training_image(open_image(data), kind))
        except ImageError as e:
            raise JobError(IMAGE_STATUS.get(e.kind, 400), f"{name}: {str(e).removeprefix('<uploaded bytes>: ')}"
                           ) from None
    return pictures


def jobs_router(state_dir: Path, *, max_upload_mb: int = 200, max_files: int = 16, default_budget: str = "2m",
                top_k: int = 3) -> APIRouter:
    """The training-jobs endpoints. The router's lifespan runs ``resume_jobs`` at start and ``stop_jobs`` at
    shutdown; ``app.include_router`` merges it into the app's lifespan."""
    state_dir = Path(state_dir).absolute()
    max_bytes = max_upload_mb * 1_000_000
    parse_duration(default_budget)  # a bad default fails here, at startup
    _jobs(state_dir)  # open (and migrate) the database now: a newer schema fails at startup, not per request

    @asynccontextmanager
    async def lifespan(app):
        await run_in_threadpool(resume_jobs, state_dir)
        yield
        await run_in_threadpool(stop_jobs, state_dir)

    router = APIRouter(route_class=JobsRoute, lifespan=lifespan, tags=["training jobs"])
    from minivision.data.images import ACCEPTED

    def job_or_404(job_id: str) -> dict[str, Any]:
        job = _jobs(state_dir).store.get(job_id)
        if job is None:
            raise JobError(404, f"no model with id {printable(job_id, 40)!r}")
        return job

    @router.post("/models", status_code=201, summary="Create a model to train", responses=errors(400),
                 openapi_extra=jobs_create_openapi(KINDS, base_model_choices()))
    async def create_model(request: Request) -> JSONResponse:
        data = await json_body(request, ("name", "kind", "base_model"))
        if "name" not in data or "kind" not in data:
            raise JobError(400, f"give a name and a kind ({', '.join(KINDS)})")
        name = check_name(data["name"], "model name")
        kind = choice(data["kind"], list(KINDS), "kind")
        base = choice(data.get("base_model", AUTO), base_model_choices(), "base_model")
        jobs = _jobs(state_dir)
        job = await run_in_threadpool(jobs.store.create, name, kind, base)
        return JSONResponse(jobs.job_json(job), status_code=201)

    @router.get("/models/{job_id}", summary="A model's state, progress, metrics, error and class counts",
                responses=errors(404))
    async def get_model(job_id: str) -> dict[str, Any]:
        return await run_in_threadpool(lambda: _jobs(state_dir).job_json(job_or_404(job_id)))

    @router.get("/models/{job_id}/log", summary="The training output (text)", responses=errors(404))
    async def get_log(job_id: str) -> PlainTextResponse:
        job = job_or_404(job_id)
        return PlainTextResponse(_log_section(_jobs(state_dir).store.model_dir(job["id"]) / "train.log", 0))

    @router.post("/models/{job_id}/images", summary="Upload labelled pictures",
                 responses=errors(400, 404, 409, 413, 415), openapi_extra=jobs_images_openapi(ACCEPTED.names))
    async def upload_images(job_id: str, request: Request) -> dict[str, Any]:
        job = job_or_404(job_id)
        if job["state"] in ("queued", "training"):
            raise JobError(409, f"model {job_id} is {job['state']}; upload images after training ends")
        batch = Batch()
        kind = media_type(request)
        inflate_limit = max_bytes * INFLATE_FACTOR
        if kind in ("application/zip", "application/x-zip-compressed"):
            with tempfile.SpooledTemporaryFile(max_size=8 << 20) as spool:  # anonymous; a zip needs seeking
                async for chunk in limited(request, max_bytes).stream():
                    spool.write(chunk)
                spool.seek(0)
                await run_in_threadpool(read_zip, spool, job["kind"], inflate_limit, batch)
        elif kind == "multipart/form-data":
            form = await read_form(request, max_bytes, MAX_UPLOAD_FILES)
            try:
                await _read_upload_form(form, job["kind"], inflate_limit, batch)
            finally:  # the uploads' spooled temporary files: closed now, not left to the garbage collector
                await form.close()
        else:
            raise JobError(415, "send a zip (application/zip, or a multipart 'zip' field) or multipart picture "
                                "files with a 'label' field")
        return await run_in_threadpool(_commit, job, batch)

    async def _read_upload_form(form, kind: str, inflate_limit: int, batch: Batch) -> None:
        """Fields: 'zip' (zips of class folders), 'file'/'files' (pictures, or zips when no label is given),
        'label' (one class for every picture) or 'labels' (one per picture, in order)."""
        items = form.multi_items()
        files = [(k, v) for k, v in items if isinstance(v, UploadFile)]
        check_keys([k for k, v in items if isinstance(v, UploadFile)], ("zip", "file", "files"), "file field")
        check_keys([k for k, v in items if not isinstance(v, UploadFile)], ("label", "labels"), "form field")
        labels = [v for k, v in items if k == "labels"]
        label = form.get("label")
        if not files:
            raise JobError(400, "no file in the upload: send a zip of <class>/<picture> folders, or pictures "
                                "with a 'label' field")
        if label is not None and labels:
            raise JobError(400, "give 'label' (one class for every file) or 'labels' (one per file), not both")
        zips = [(k, f) for k, f in files if k == "zip"]
        if label is None and not labels:
            for key, upload in files:  # no label: each file must be a zip of class folders
                head = await upload.read(4)
                await upload.seek(0)
                if key != "zip" and head[:2] != b"PK":
                    raise JobError(400, f"{printable(upload.filename or key)}: a picture needs a 'label' form "
                                        "field (or upload a zip of <class>/<picture> folders)")
            zips = files
        for _, upload in zips:
            await run_in_threadpool(read_zip, upload.file, kind, inflate_limit, batch)
        pictures = [(k, f) for k, f in files if k != "zip"] if zips is not files else []
        if not pictures:
            return
        names = [check_name(label)] * len(pictures) if label is not None else [check_name(x) for x in labels]
        if len(names) != len(pictures):
            raise JobError(400, f"{len(labels)} labels for {len(pictures)} pictures; give one per picture")
        for (key, upload), name in zip(pictures, names, strict=True):
            data = await upload.read()
            await run_in_threadpool(batch.add, printable(upload.filename or key), name, data, kind)

    def _commit(job: dict[str, Any], batch: Batch) -> dict[str, Any]:
        jobs = _jobs(state_dir)
        classes = job["classes"]
        images_dir = jobs.store.model_dir(job["id"]) / "images"
        with jobs.write_lock:
            if batch.items:  # refused (409) if a training was queued meanwhile
                classes = jobs.store.add_classes(job["id"], batch.labels(), MAX_CLASSES)
            added, duplicates = store_images(images_dir, classes, batch.items)
            if added:
                jobs.store.update(job["id"], only_if=("created",), state="uploading")
        job = jobs.store.get(job["id"])
        return {"id": job["id"], "state": job["state"], "added": dict(added), "duplicates": duplicates,
                "skipped": batch.skipped, "skipped_count": batch.n_skipped,
                "classes": class_counts(images_dir, job["classes"])}

    @router.post("/models/{job_id}/train", status_code=202, summary="Queue a training",
                 responses=errors(400, 404, 409),
                 openapi_extra=jobs_train_openapi(default_budget, format_duration(MIN_BUDGET_S),
                                                  format_duration(MAX_BUDGET_S), MAX_EPOCHS))
    async def train(job_id: str, request: Request) -> JSONResponse:
        job = job_or_404(job_id)
        data = await json_body(request, ("budget", "epochs"), optional=True)
        budget = data.get("budget", default_budget)
        try:
            seconds = parse_duration(budget)
        except MinivisionError as e:
            raise JobError(400, str(e).replace("--budget", "budget")) from None
        if not MIN_BUDGET_S <= seconds <= MAX_BUDGET_S:
            raise JobError(400, f"budget must be from {format_duration(MIN_BUDGET_S)} to "
                                f"{format_duration(MAX_BUDGET_S)}, got {budget!r}")
        epochs = data.get("epochs")
        if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int)
                                   or not 1 <= epochs <= MAX_EPOCHS):
            raise JobError(400, f"epochs must be an integer from 1 to {MAX_EPOCHS}, got {epochs!r}")
        if job["state"] in ("queued", "training"):
            raise JobError(409, f"model {job_id} is already {job['state']}")
        jobs = _jobs(state_dir)
        await run_in_threadpool(_queue, jobs, job, str(budget), epochs)
        await run_in_threadpool(resume_jobs, state_dir)  # starts the training thread if the lifespan did not
        jobs.runner.wake.set()
        return JSONResponse(jobs.job_json(jobs.store.get(job_id)), status_code=202)

    def _queue(jobs: Jobs, job: dict[str, Any], budget: str, epochs: int | None) -> None:
        with jobs.write_lock:
            job = jobs.store.get(job["id"]) or job
            counts = class_counts(jobs.store.model_dir(job["id"]) / "images", job["classes"])
            counts = {c: n for c, n in counts.items() if n}
            if len(counts) < 2:
                have = ", ".join(f"{c}: {n}" for c, n in counts.items()) or "no images"
                raise JobError(400, f"training needs at least 2 classes with images; this model has {len(counts)} "
                                    f"({have})")
            few = [c for c, n in counts.items() if n < 2]
            if few:
                raise JobError(400, f"every class needs at least 2 images; {few[0]!r} has {counts[few[0]]}")
            if not jobs.store.update(job["id"], unless=("queued", "training"), state="queued", budget=budget,
                                     epochs=epochs, queued_at=time.time(), resume=0, attempts=0, error=None,
                                     progress=None):
                raise JobError(409, f"model {job['id']} is already queued or training")

    @router.post("/models/{job_id}/predict", summary="Classify pictures with a trained model",
                 responses=errors(400, 404, 409, 413, 415, 500),
                 openapi_extra=predict_openapi(None, top_k, ACCEPTED.names))
    async def predict(job_id: str, request: Request) -> dict[str, Any]:
        from minivision.predict import predict_images
        from minivision.scores import tta_mode

        job = job_or_404(job_id)
        if not job["model_run"]:
            raise JobError(409, f"model {job_id} is not trained yet (state {job['state']})")
        jobs = _jobs(state_dir)
        try:  # the same request rules as the app's POST /predict (serve/uploads.py)
            upload = await read_upload(request.headers.get("content-type"), limited(request, max_bytes).stream(),
                                       max_files)
            lm, version = await run_in_threadpool(jobs.loaded_model, job)
            k, _, background = parse_options(upload.options, dict(request.query_params), len(lm.classes), top_k)
        except UploadError as e:
            raise JobError(e.status, e.message) from None
        images = upload.images
        pictures = await run_in_threadpool(_decode_for_predict, images, job["kind"])

        def run() -> list[dict[str, Any]]:
            with _INFERENCE:
                return predict_images(lm, pictures, top_k=k, device="cpu", names=[n for n, _ in images],
                                      background=background)

        results = await run_in_threadpool(run)
        bad = next((r for r in results if "error" in r), None)
        if bad is not None:
            raise JobError(400, f"{bad['path']}: {bad['error']}")
        return {"predictions": [r["top_k"] for r in results], "model": job["id"], "name": job["name"],
                "version": version, "unsure": [bool(r.get("unsure", False)) for r in results],
                "reasons": [r.get("reason") for r in results],
                "tta": tta_mode(None, lm.meta)}  # the model's own test-time augmentation, as predict_images used

    return router
