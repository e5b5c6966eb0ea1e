"""Labelled pictures into a job's training folder: hostile zips read member by member, never extracted.

A name from a request (zip member, file name, label) never becomes a path: a member's name only
gives its class (the first path component), each accepted picture is decoded by ``open_image``,
converted to the job's format and re-encoded as PNG under ``images/<class number>/<sha256>.png``.
Class folders are numbered (``000``, ``001``, ...: zero-padded, so the folder reader's sorted order
is the class number); the user's class names live in the database and reach the training as the
pictures' ``classes.json``. An upload's new classes are numbered in the order the folder reader gives
a folder's classes (sorted by class folder name), after the job's earlier classes; a ``classes.json``
in a zip names its class folders as it does for the folder reader.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import unicodedata
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from PIL import Image

from minivision.data.folder import CLASS_NAMES_FILE
from minivision.data.images import ImageError, open_image
from minivision.data.rules import is_ignored_path
from minivision.errors import MinivisionError
from minivision.fileio import atomic_path

from .jobs_store import JobError

KINDS = {"fashion": "28x28 grayscale, light item on a dark background (like Fashion-MNIST)",
         "gray": "28x28 grayscale", "rgb": "32x32 colour"}
MAX_CLASSES = 1000             # folder names 000-999
MAX_NAME_CHARS = 64
MAX_MEMBERS = 20_000           # entries in one zip
MAX_MEMBER_BYTES = 32 << 20    # one picture, uncompressed: no training picture is this big
MAX_SKIPPED_LISTED = 200       # the response lists this many skipped files (and counts the rest)
_BIDI = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))}


def check_name(text: object, what: str = "class name") -> str:
    """A user's name for a class or model: stripped, NFC, 1-64 characters, no control characters."""
    if not isinstance(text, str):
        raise JobError(400, f"{what} must be a string")
    name = unicodedata.normalize("NFC", text.strip())
    if not name:
        raise JobError(400, f"{what} is empty")
    if len(name) > MAX_NAME_CHARS:
        raise JobError(400, f"{what} is {len(name)} characters long; at most {MAX_NAME_CHARS}")
    bad = next((ch for ch in name if unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") or ch in _BIDI), None)
    if bad is not None:
        raise JobError(400, f"{what} contains a control character (U+{ord(bad):04X})")
    return name


def printable(text: str, limit: int = 200) -> str:
    """A request's name made safe to echo back on one line."""
    out = "".join(ch if unicodedata.category(ch)[0] != "C" and ch not in _BIDI else "?" for ch in text)
    return out[:limit] + ("..." if len(out) > limit else "")


# ----------------------------------------------------------------------------- conversion

def _to_training_image(img: Image.Image, kind: str) -> Image.Image:
    """A decoded picture (mode L or RGB) -> what the job's model is trained on and sees at predict time:
    the ``photo.preset(kind)`` conversion, the one the folder reader, ``minivision predict`` and the
    main service use (fashion: Zalando's recipe; gray and rgb: the folder reader's plain resize), so a
    raw photo sent to the trained run by any path is converted the way its training pictures were."""
    from minivision.photo import preset

    return preset(kind).to_image(img)


def to_png(img: Image.Image, kind: str) -> bytes:
    buf = io.BytesIO()
    _to_training_image(img, kind).save(buf, format="PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------- an upload's pictures

@dataclass
class Batch:
    """Pictures accepted from one request (class name, PNG bytes) and the ones refused, with reasons."""

    items: list[tuple[str, bytes]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    n_skipped: int = 0
    folders: dict[str, str] = field(default_factory=dict)  # class name -> the zip's class folder name

    def labels(self) -> list[str]:
        """The classes of the accepted pictures in the order the folder reader numbers a folder's classes:
        by class folder name (a zip's), else by class name. New classes are added to a job in this order."""
        return sorted(dict.fromkeys(label for label, _ in self.items), key=lambda c: self.folders.get(c, c))

    def skip(self, name: str, reason: str) -> None:
        self.n_skipped += 1
        if len(self.skipped) < MAX_SKIPPED_LISTED:
            self.skipped.append({"name": printable(name), "reason": reason})

    def add(self, name: str, label: str, data: bytes, kind: str) -> None:
        try:
            img = open_image(data)
        except ImageError as e:
            self.skip(name, str(e).removeprefix("<uploaded bytes>: "))
            return
        except MinivisionError as e:
            self.skip(name, str(e))
            return
        self.items.append((label, to_png(img, kind)))


def _member_parts(name: str) -> list[str] | None:
    """Path components of a zip member name, or None when it is absolute or climbs out (``..``)."""
    unified = name.replace("\\", "/")
    if unified.startswith("/") or (len(unified) > 1 and unified[1] == ":"):
        return None
    parts = [p for p in unified.split("/") if p not in ("", ".")]
    return None if ".." in parts else parts


def read_zip(fileobj: IO[bytes], kind: str, max_total_bytes: int, batch: Batch) -> None:
    """Add the pictures of a ``<class>/<picture>`` zip to ``batch``. A zip bomb or a broken archive raises
    JobError(400); a bad member is skipped and listed."""
    try:
        archive = zipfile.ZipFile(fileobj)
        infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as e:
        raise JobError(400, f"not a readable zip archive ({e})") from None
    if len(infos) > MAX_MEMBERS:
        raise JobError(400, f"zip has {len(infos):,} entries; at most {MAX_MEMBERS:,}")
    members: list[tuple[zipfile.ZipInfo, list[str]]] = []
    for info in infos:
        if info.is_dir():
            continue
        parts = _member_parts(info.filename)
        if parts is None:
            batch.skip(info.filename, "unsafe path (absolute or with ..): refused")
            continue
        if not parts or is_ignored_path(parts):
            continue  # __MACOSX, .DS_Store, Thumbs.db, hidden entries: the folder reader's rule (data/rules.py)
        members.append((info, parts))
    declared = sum(info.file_size for info, _ in members)
    if declared > max_total_bytes:
        raise JobError(400, f"zip would inflate to {declared / 1e6:.0f} MB; at most {max_total_bytes / 1e6:g} MB "
                            "(zip bomb?)")
    # the folder reader's classes.json (class folder name -> class name), at the top or in the one folder
    names_files = [(info, p) for info, p in members if len(p) <= 2 and p[-1] == CLASS_NAMES_FILE]
    members = [(info, p) for info, p in members if not (len(p) <= 2 and p[-1] == CLASS_NAMES_FILE)]
    # a zip of one folder holding the class folders (what zipping a dataset folder makes): drop that level
    wrapper: list[str] = []
    if members and all(len(p) >= 3 for _, p in members) and len({p[0] for _, p in members}) == 1:
        wrapper = members[0][1][:1]
        members = [(info, p[1:]) for info, p in members]
    names = _class_names(archive, next((info for info, p in names_files if p == [*wrapper, CLASS_NAMES_FILE]), None),
                         {p[0] for _, p in members if len(p) >= 2})
    total = 0
    for info, parts in members:
        if len(parts) < 2:
            batch.skip(info.filename, "not inside a class folder (expected <class>/<picture>)")
            continue
        try:
            label = check_name(names.get(parts[0], parts[0]))
        except JobError as e:
            batch.skip(info.filename, e.message)
            continue
        batch.folders.setdefault(label, parts[0])
        if info.flag_bits & 0x1:
            batch.skip(info.filename, "encrypted zip entry")
            continue
        if info.file_size > MAX_MEMBER_BYTES:
            raise JobError(400, f"{printable(info.filename)}: inflates to {info.file_size >> 20} MB; a picture "
                                f"may be at most {MAX_MEMBER_BYTES >> 20} MB (zip bomb?)")
        data = _read_member(archive, info, max_total_bytes - total)
        if data is None:
            batch.skip(info.filename, "damaged zip entry (bad CRC or compression)")
            continue
        total += len(data)
        batch.add(info.filename, label, data, kind)


def _class_names(archive: zipfile.ZipFile, info: zipfile.ZipInfo | None, folders: set[str]) -> dict[str, str]:
    """A zip's ``classes.json`` read as the folder reader reads it (``{"000": "T-shirt/top"}``); {} without one.
    JobError(400) when it is not such an object or names a class folder the zip does not have."""
    if info is None:
        return {}
    data = _read_member(archive, info, 1 << 20)
    try:
        names = json.loads(data.decode("utf-8")) if data is not None else None
    except (UnicodeDecodeError, ValueError):
        names = None
    if not isinstance(names, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in names.items()):
        raise JobError(400, f"{CLASS_NAMES_FILE} in the zip: expected a JSON object mapping class folder names "
                            "to class names")
    unknown = sorted(set(names) - folders)
    if unknown:
        raise JobError(400, f"{CLASS_NAMES_FILE} in the zip: no class folder named {printable(unknown[0], 64)!r}")
    return {k: check_name(v) for k, v in names.items()}


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: int) -> bytes | None:
    """The member's bytes, counted while inflating: the header's sizes are not trusted."""
    chunks, size = [], 0
    try:
        with archive.open(info) as member:
            while chunk := member.read(1 << 20):
                size += len(chunk)
                if size > MAX_MEMBER_BYTES:
                    raise JobError(400, f"{printable(info.filename)}: inflates past {MAX_MEMBER_BYTES >> 20} MB "
                                        "(zip bomb?)")
                if size > budget:
                    raise JobError(400, "zip inflates past the upload limit (zip bomb?)")
                chunks.append(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, OSError):
        return None
    return b"".join(chunks)


# ----------------------------------------------------------------------------- the training folder

def class_folder(index: int) -> str:
    return f"{index:03d}"


def store_images(images_dir: Path, classes: list[str], items: list[tuple[str, bytes]]) -> tuple[Counter, int]:
    """Write each PNG as ``<class number>/<sha256>.png`` (atomically); return (added per class, duplicates)."""
    index = {name: i for i, name in enumerate(classes)}
    added: Counter[str] = Counter()
    duplicates = 0
    for label, png in items:
        path = images_dir / class_folder(index[label]) / f"{hashlib.sha256(png).hexdigest()}.png"
        if path.exists():
            duplicates += 1
            continue
        with atomic_path(path) as tmp:  # a hidden temporary name: the folder reader skips it
            tmp.write_bytes(png)
        added[label] += 1
    return added, duplicates


def class_counts(images_dir: Path, classes: list[str]) -> dict[str, int]:
    """Pictures per class, counted on disk (what training will see)."""
    counts = {}
    for i, name in enumerate(classes):
        try:
            with os.scandir(images_dir / class_folder(i)) as entries:
                counts[name] = sum(1 for e in entries if e.name.endswith(".png") and not e.name.startswith("."))
        except FileNotFoundError:
            counts[name] = 0
    return counts
