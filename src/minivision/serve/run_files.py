"""What the service shows of the run folder besides the model: its report and its example pictures.

    GET /report              the run's report.html (404 when the run has none)
    GET /report/<name>.png   a picture that report.html references, from the run folder
    GET /examples            {"examples": [{"label", "index", "png": "<base64 PNG>"}, ...]}

Only a file that report.html itself references is ever read, by a plain name (letters, digits,
``.``, ``_``, ``-``; ``.png``) in the run folder: no ``..``, no sub-folder, no absolute path, and a
symbolic link is refused (opened with ``O_NOFOLLOW``, checked to be a regular file), so a request
cannot reach anything else on the server. The report is sent with its own Content-Security-Policy:
its pictures and styles are its own, and nothing is loaded from elsewhere.
"""

from __future__ import annotations

import html
import os
import re
import stat
from pathlib import Path
from typing import Any

from .uploads import UploadError

REPORT = "report.html"
REPORT_CSP = ("default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
              "base-uri 'none'; form-action 'none'; frame-ancestors 'self'")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,119}\.png")
_REFERENCE = re.compile(r"""(\b(?:src|href)\s*=\s*)(["'])([^"'<>]*)\2""", re.IGNORECASE)
MAX_REPORT_BYTES = 64 << 20


def _read_regular(path: Path, limit: int) -> bytes | None:
    """The bytes of ``path`` if it is a regular file reached without following a symbolic link at the
    last step, at most ``limit`` bytes; None otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            return None
        return f.read(limit + 1)[:limit]


def read_report(run: Path) -> str | None:
    """report.html of ``run`` with its picture references pointed at ``/report/<name>``, or None."""
    data = _read_regular(run / REPORT, MAX_REPORT_BYTES)
    if data is None:
        return None
    text = data.decode("utf-8", "replace")

    def point(m: re.Match) -> str:
        name = html.unescape(m.group(3))
        return f"{m.group(1)}{m.group(2)}/report/{name}{m.group(2)}" if _NAME.fullmatch(name) else m.group(0)

    return _REFERENCE.sub(point, text)


def referenced_pictures(run: Path) -> set[str]:
    """The plain ``.png`` names report.html references (``src=``/``href=``), the only ones served."""
    data = _read_regular(run / REPORT, MAX_REPORT_BYTES)
    if data is None:
        return set()
    names = (html.unescape(m.group(3)) for m in _REFERENCE.finditer(data.decode("utf-8", "replace")))
    return {n for n in names if _NAME.fullmatch(n)}


def read_report_picture(run: Path, name: str) -> bytes:
    """The bytes of the picture ``name`` that report.html references; UploadError 404 for anything else
    (a name not referenced, a path, a link, a missing file)."""
    if not _NAME.fullmatch(name) or name not in referenced_pictures(run):
        raise UploadError(404, f"the report has no picture {name[:80]!r}")
    data = _read_regular(run / name, MAX_REPORT_BYTES)
    if data is None:
        raise UploadError(404, f"the report has no picture {name[:80]!r}")
    return data


def examples_json(run: Path, classes: list[str], png_base64) -> list[dict[str, Any]]:
    """The run's example pictures (examples.safetensors, examples.load_examples) as
    ``[{"label": class name, "index": class index, "png": base64 PNG}]``; [] when it has none."""
    from ..examples import load_examples

    return [{"label": classes[c], "index": c, "png": png_base64(img)}
            for c, img in load_examples(run) if 0 <= c < len(classes)]
