"""Request plumbing for the training-jobs router: error bodies, body limits, JSON settings and forms.

``POST /models/{id}/predict`` reads its pictures with the app's own ``uploads.read_upload`` and
``parse_options`` (the same request rules as ``POST /predict``), through ``limited`` for the size limit.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from .jobs_images import printable
from .jobs_store import JobError

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


