"""Request plumbing for the training-jobs router: error bodies, body limits, JSON and predict uploads.

``_read_images`` follows the rules of the app's ``POST /predict`` (``serve/uploads.py``): files in
``file``/``files`` fields, JSON ``{"image": b64}`` / ``{"images": [b64, ...]}`` (data URLs accepted),
or one raw ``image/*`` body; ``top_k`` in the query or the body; 413 over the size limit, 400 for
too many files or a malformed body, 415 for another Content-Type. Kept separate so the lead can
merge the two.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import json
from collections.abc import Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from .jobs_images import printable
from .jobs_store import JobError

FILE_FIELDS = ("file", "files")
JSON_LIMIT = 1 << 20           # a job's JSON settings body


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())[:500], "status": status}, status_code=status)


class JobsRoute(APIRoute):
    """Turn JobError into the service's error body (a router cannot register exception handlers)."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except JobError as e:
                return error_response(e.status, e.message)

        return guarded


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def limited(request: Request, max_bytes: int) -> Request:
    """The request with its body counted while it is read: 413 past ``max_bytes``. A Content-Length over
    the limit is refused before one byte is read."""
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise JobError(400, "malformed Content-Length header") from None
        if declared > max_bytes:
            raise JobError(413, f"request body is {declared / 1e6:.1f} MB; the limit is {max_bytes / 1e6:g} MB")
    received = 0

    async def receive() -> dict:
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > max_bytes:
                raise JobError(413, f"request body is over the limit of {max_bytes / 1e6:g} MB")
        return message

    return Request(request.scope, receive)


def check_keys(keys, allowed: tuple[str, ...], what: str) -> None:
    for key in keys:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise JobError(400, f"unknown {what} {printable(str(key), 60)!r}{hint} (expected: {', '.join(allowed)})")


async def json_body(request: Request, allowed: tuple[str, ...], *, optional: bool = False) -> dict[str, Any]:
    """A small JSON object with only the ``allowed`` keys (an unknown key gets a "did you mean")."""
    body = await limited(request, JSON_LIMIT).body()
    if not body.strip():
        if optional:
            return {}
        raise JobError(400, "expected a JSON object in the request body")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise JobError(400, f"request body is not valid JSON ({str(e)[:120]})") from None
    if not isinstance(data, dict):
        raise JobError(400, "expected a JSON object in the request body")
    check_keys(data, allowed, "field")
    return data


async def read_form(request: Request, max_bytes: int, max_files: int):
    """Multipart form; big files spool to anonymous temporary files (a zip needs seeking), never to a
    name from the request."""
    try:
        # one file more than allowed, so the count check below can say how many came
        return await limited(request, max_bytes).form(max_files=max_files + 1, max_fields=64)
    except HTTPException as e:  # python-multipart's complaints: too many files, malformed body
        raise JobError(400, str(e.detail)) from None


def choice(value: Any, choices: list[str], what: str) -> str:
    if isinstance(value, str) and value in choices:
        return value
    close = difflib.get_close_matches(str(value), choices, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise JobError(400, f"unknown {what} {printable(str(value), 60)!r}{hint} (choose from {', '.join(choices)})")


def _b64(text: Any, where: str) -> bytes:
    if not isinstance(text, str):
        raise JobError(400, f"{where}: expected a base64 string")
    if text[:5].lower() == "data:" and "," in text:
        head, text = text.split(",", 1)
        if not head.lower().endswith(";base64"):
            raise JobError(400, f"{where}: data URL is not base64-encoded")
    compact = "".join(text.split()).translate(str.maketrans("-_", "+/"))
    if not compact:
        raise JobError(400, f"{where}: empty image")
    try:
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise JobError(400, f"{where}: malformed base64") from None


async def _read_images(request: Request, max_bytes: int, max_files: int
                       ) -> tuple[list[tuple[str, bytes]], dict[str, Any]]:
    """A predict request's pictures as [(display name, bytes)], and its other fields (``top_k``)."""
    kind = media_type(request)
    images: list[tuple[str, bytes]] = []
    fields: dict[str, Any] = {}
    if kind == "multipart/form-data":
        form = await read_form(request, max_bytes, max_files)
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key not in FILE_FIELDS:
                    raise JobError(400, f"file field {printable(key, 60)!r} is not accepted: name it 'file' or "
                                        "'files'")
                images.append((printable(value.filename or f"{key}[{len(images)}]", 120), await value.read()))
            else:
                check_keys([key], ("top_k",), "form field")
                fields[key] = value
    elif kind == "application/json" or kind.endswith("+json"):
        body = await limited(request, max_bytes).body()
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError) as e:
            raise JobError(400, f"malformed JSON body ({str(e)[:120]})") from None
        if not isinstance(doc, dict):
            raise JobError(400, 'the JSON body must be an object like {"images": ["<base64>", ...]}')
        check_keys(doc, ("image", "images", "top_k"), "JSON key")
        if "image" in doc:
            images.append(("image", _b64(doc["image"], "image")))
        if "images" in doc:
            if not isinstance(doc["images"], list):
                raise JobError(400, '"images" must be a list of base64 strings')
            if len(doc["images"]) > max_files:
                raise JobError(400, f"too many images: {len(doc['images'])}, at most {max_files} per request")
            images += [(f"images[{i}]", _b64(s, f"images[{i}]")) for i, s in enumerate(doc["images"])]
        fields = {k: doc[k] for k in ("top_k",) if k in doc}
    elif kind.startswith("image/") or kind == "application/octet-stream":
        images.append(("body", await limited(request, max_bytes).body()))
    else:
        raise JobError(415, f"Content-Type {printable(kind or 'none', 60)!r} is not accepted: send multipart "
                            "files, JSON with base64 images, or one raw image/*")
    if not images:
        raise JobError(400, "no image in the request: send files in a 'file' or 'files' field, or JSON "
                            '{"images": ["<base64>"]}')
    if len(images) > max_files:
        raise JobError(400, f"too many images: {len(images)}, at most {max_files} per request")
    return images, fields


def top_k_option(query: Any, body: Any, n_classes: int, default: int) -> int:
    """``top_k`` from the query string or the body: 1..n_classes (default: ``default``, at most n_classes)."""
    if query is not None and body is not None and str(query).strip() != str(body).strip():
        raise JobError(400, f"top_k is given twice with different values ({query!r} and {body!r})")
    value = body if body is not None else query
    if value is None:
        return min(default, n_classes)
    try:
        if isinstance(value, (bool, float)):
            raise ValueError
        k = int(str(value).strip())
    except ValueError:
        raise JobError(400, f"top_k must be an integer from 1 to {n_classes}, got {str(value)[:40]!r}") from None
    if not 1 <= k <= n_classes:
        raise JobError(400, f"top_k must be from 1 to {n_classes} (the number of classes), got {k}")
    return k
