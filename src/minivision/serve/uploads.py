"""Reading a request body safely, for ``POST /predict``.

Two rules. (1) The size limit is enforced while bytes arrive, never after: ``BodyLimit`` is an
ASGI middleware that refuses a ``Content-Length`` over the limit before reading one byte, and for
a chunked body counts bytes as they stream in and stops at the limit, so a 50 MB upload costs the
server at most the limit (plus uvicorn's 64 KB read buffer) and gets its 413 while the client is
still sending. (2) The body is parsed in memory by our own code (multipart with python-multipart's
streaming parser, JSON, or a raw image), so no name or byte from a request ever reaches the file
system: Starlette's ``request.form()`` would spool big files to temporary files on disk.

The result is a list of ``(display name, bytes)`` pairs plus the few form/JSON fields; decoding the
pictures is ``open_image``'s job (data/images.py).
"""

from __future__ import annotations

import base64
import binascii
import difflib
import json
import re
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.responses import JSONResponse

from ..data.images import ACCEPTED
from ..photo import BACKGROUNDS

FILE_FIELDS = ("file", "files")
OPTION_FIELDS = ("top_k", "include_input", "background")
JSON_KEYS = ("image", "images", *OPTION_FIELDS)
MAX_FIELDS = 32          # text fields in a multipart form; a form with more is not one of ours
MAX_NAME_CHARS = 120     # an uploaded file name is echoed back, shortened to this
RAW_TYPES = ("application/octet-stream",)  # plus the accepted image/* types: the body is one picture
# Content-Types some clients send for accepted formats, besides data/images.py's list
RAW_ALIASES = ("image/jpg", "image/x-png", "image/x-bmp", "image/x-citrix-jpeg", "image/x-citrix-png")


class UploadError(Exception):
    """A request we refuse, with the HTTP status and a one-line reason for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = " ".join(message.split())[:300]


class BodyTooLarge(UploadError):
    """413 with the limit, and ``hint`` (what to send instead) when given."""

    def __init__(self, limit: int, hint: str = "") -> None:
        super().__init__(413, f"request body is over the {_mb(limit)} limit" + (f": {hint}" if hint else ""))


def _mb(n: int) -> str:
    return f"{n / 1e6:g} MB"


def error_body(status: int, message: str) -> dict[str, Any]:
    """Every error the service returns has this shape."""
    return {"error": " ".join(str(message).split())[:300] or "error", "status": status}


# ----------------------------------------------------------------------------- size limit

class BodyLimit:
    """ASGI middleware: at most ``max_bytes`` of request body, enforced while it streams in.

    ``overrides``: {path prefix: limit} for routes that take bigger bodies and enforce their own
    limit (the training-jobs uploads); the longest matching prefix wins. ``hint``: added to the 413
    message of the default limit (what to send instead)."""

    def __init__(self, app: Any, max_bytes: int, overrides: dict[str, int] | None = None, hint: str = "") -> None:
        self.app = app
        self.default = int(max_bytes)
        self.hint = hint
        self.overrides = sorted((overrides or {}).items(), key=lambda kv: -len(kv[0]))

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        limit = next((n for prefix, n in self.overrides if path.startswith(prefix)), self.default)
        hint = self.hint if limit == self.default else ""
        length = None
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                length = value
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await _reply(scope, receive, send, 400, "malformed Content-Length header")
                return
            if declared > limit:  # refused before a single body byte is read
                await _reply(scope, receive, send, 413, BodyTooLarge(limit, hint).message)
                return
        received = 0
        started = False

        async def counted_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit, hint)
            return message

        async def watched_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except BodyTooLarge as exc:  # a route that did not turn it into a response itself
            if started:
                raise
            await _reply(scope, receive, send, exc.status, exc.message)


async def _reply(scope: dict, receive: Any, send: Any, status: int, message: str) -> None:
    # Connection: close, because the rest of the body is never read: the socket cannot be reused.
    response = JSONResponse(error_body(status, message), status_code=status, headers={"Connection": "close"})
    await response(scope, receive, send)


# ----------------------------------------------------------------------------- parsing

@dataclass
class Upload:
    images: list[tuple[str, bytes]] = field(default_factory=list)  # (display name, raw bytes), in order
    options: dict[str, Any] = field(default_factory=dict)          # top_k / include_input, as sent


def safe_name(name: str) -> str:
    """A client's file name as we echo it: control characters dropped, shortened. Never opened."""
    text = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    return text if len(text) <= MAX_NAME_CHARS else text[:MAX_NAME_CHARS - 3] + "..."


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


async def read_upload(content_type: str | None, stream: AsyncIterator[bytes], max_files: int) -> Upload:
    """Parse a /predict body by its Content-Type; raises UploadError (400/413/415)."""
    kind = media_type(content_type)
    if kind == "multipart/form-data":
        upload = await _read_multipart(content_type or "", stream, max_files)
    elif kind == "application/json" or kind.endswith("+json"):
        upload = await anyio.to_thread.run_sync(_parse_json, await _read_all(stream))  # 10 MB: not on the loop
    elif kind in ACCEPTED.content_types or kind in RAW_ALIASES or kind in RAW_TYPES:
        upload = Upload([("body", await _read_all(stream))])
    elif kind.startswith("image/"):
        raise UploadError(415, f"Content-Type {kind[:60]!r} is not an accepted picture type: send "
                               f"{ACCEPTED.names} (GET /models lists their Content-Types)")
    else:
        shown = kind or "none"
        raise UploadError(415, f"Content-Type {shown!r} is not accepted: send multipart/form-data with file "
                               f"fields, application/json with base64 images, or one raw image/*")
    if not upload.images:
        raise UploadError(400, "no image in the request: send files in a 'file' or 'files' field, or JSON "
                               "{\"images\": [\"<base64>\"]}")
    if len(upload.images) > max_files:
        raise UploadError(400, f"too many images: {len(upload.images)}, at most {max_files} per request")
    return upload


async def _read_all(stream: AsyncIterator[bytes]) -> bytes:
    chunks = [chunk async for chunk in stream]  # bounded: BodyLimit stops the stream at the limit
    return b"".join(chunks)


class _Parts:
    """Callbacks for python-multipart: each part's headers and bytes, kept in memory."""

    def __init__(self, max_files: int) -> None:
        self.max_files = max_files
        self.upload = Upload()
        self.fields = 0
        self.header_name = b""
        self.header_value = b""
        self.disposition = b""
        self.data = bytearray()

    def callbacks(self) -> dict[str, Any]:
        return {"on_part_begin": self.begin, "on_part_data": self.part_data, "on_part_end": self.end,
                "on_header_field": self.header_field, "on_header_value": self.header_val,
                "on_header_end": self.header_end}

    def begin(self) -> None:
        self.disposition, self.data = b"", bytearray()

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def header_val(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def header_end(self) -> None:
        if self.header_name.strip().lower() == b"content-disposition":
            self.disposition = self.header_value
        self.header_name = self.header_value = b""

    def part_data(self, data: bytes, start: int, end: int) -> None:
        self.data += data[start:end]

    def end(self) -> None:
        _, options = parse_options_header(self.disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        if name in FILE_FIELDS or filename is not None:
            if name not in FILE_FIELDS:
                raise UploadError(400, f"file field {safe_name(name)!r} is not accepted: name it 'file' or 'files'")
            if len(self.upload.images) >= self.max_files:  # stop parsing at the first file too many
                raise UploadError(400, f"too many files: more than {self.max_files} per request")
            shown = safe_name(filename.decode("utf-8", "replace")) if filename else f"{name}[{len(self.upload.images)}]"
            self.upload.images.append((shown, bytes(self.data)))
        else:
            self.fields += 1
            if self.fields > MAX_FIELDS:
                raise UploadError(400, f"too many form fields (more than {MAX_FIELDS})")
            _check_key(name, FILE_FIELDS + OPTION_FIELDS, "form field")
            self.upload.options[name] = self.data.decode("utf-8", "replace").strip()


async def _read_multipart(content_type: str, stream: AsyncIterator[bytes], max_files: int) -> Upload:
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise UploadError(400, "multipart/form-data without a boundary")
    parts = _Parts(max_files)
    try:
        parser = MultipartParser(boundary, parts.callbacks())
        async for chunk in stream:
            parser.write(chunk)
        parser.finalize()
    except UploadError:
        raise
    except Exception as exc:  # python-multipart's parse errors, a bad boundary, ...
        raise UploadError(400, f"malformed multipart body ({type(exc).__name__}: {exc})") from None
    return parts.upload


def _check_key(name: str, allowed: tuple[str, ...], what: str) -> None:
    if name not in allowed:
        close = difflib.get_close_matches(name, allowed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f" (expected: {', '.join(allowed)})"
        raise UploadError(400, f"unknown {what} {safe_name(name)!r}{hint}")


def _parse_json(body: bytes) -> Upload:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise UploadError(400, f"malformed JSON body ({str(exc)[:120]})") from None
    if not isinstance(doc, dict):
        raise UploadError(400, "the JSON body must be an object like {\"images\": [\"<base64>\", ...]}")
    for key in doc:
        _check_key(str(key), JSON_KEYS, "JSON key")
    upload = Upload(options={k: doc[k] for k in OPTION_FIELDS if k in doc})
    if "image" in doc:
        upload.images.append(("image", decode_base64(doc["image"], "image")))
    if "images" in doc:
        items = doc["images"]
        if not isinstance(items, list):
            raise UploadError(400, "\"images\" must be a list of base64 strings")
        upload.images += [(f"images[{i}]", decode_base64(s, f"images[{i}]")) for i, s in enumerate(items)]
    return upload


_DATA_URL = re.compile(r"data:([^,]{0,200}),", re.IGNORECASE)


def decode_base64(text: Any, where: str) -> bytes:
    """Standard or URL-safe base64, padding optional, an optional ``data:...;base64,`` prefix."""
    if not isinstance(text, str):
        raise UploadError(400, f"{where}: expected a base64 string, got {type(text).__name__}")
    m = _DATA_URL.match(text)
    if m:
        if not m.group(1).lower().endswith(";base64"):
            raise UploadError(400, f"{where}: data URL is not base64-encoded")
        text = text[m.end():]
    compact = "".join(text.split()).translate(str.maketrans("-_", "+/"))
    if not compact:
        raise UploadError(400, f"{where}: empty image")
    compact += "=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise UploadError(400, f"{where}: malformed base64") from None


def parse_options(options: dict[str, Any], query: dict[str, str], n_classes: int, default_top_k: int
                  ) -> tuple[int, bool, str | None]:
    """top_k (1..n_classes), include_input and background (auto | light | dark: the photo's background,
    overriding the detection) from the query string or the body (they must agree)."""
    values: dict[str, Any] = {}
    for key in OPTION_FIELDS:
        q, b = query.get(key), options.get(key)
        if q is not None and b is not None and str(q).strip().lower() != str(b).strip().lower():
            raise UploadError(400, f"{key} is given twice with different values ({q!r} and {b!r})")
        values[key] = b if b is not None else q
    top_k = values["top_k"]
    if top_k is None:
        top_k = min(default_top_k, n_classes)
    else:
        try:
            if isinstance(top_k, bool) or isinstance(top_k, float):
                raise ValueError
            top_k = int(str(top_k).strip())
        except ValueError:
            raise UploadError(400, f"top_k must be an integer from 1 to {n_classes}, got {str(top_k)[:40]!r}") from None
        if not 1 <= top_k <= n_classes:
            raise UploadError(400, f"top_k must be from 1 to {n_classes} (the number of classes), got {top_k}")
    background = values["background"]
    if background is not None:
        background = str(background).strip().lower()
        if background not in BACKGROUNDS:
            raise UploadError(400, f"background must be auto, light or dark, got {background[:40]!r}")
    return top_k, _flag(values["include_input"]), background


def _flag(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise UploadError(400, f"include_input must be true or false, got {text[:40]!r}")
