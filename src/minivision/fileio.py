"""Every file minivision writes goes through here: temp name in the same folder, then os.replace.

A kill at any moment leaves the old file or the new one, never half of one. Run folders are
created with os.mkdir, which fails rather than reuse a folder, so a run is never overwritten.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import MinivisionError

if TYPE_CHECKING:
    import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once at import: os.umask can only be read by setting it


# Writes in progress, for a stop (SIGTERM) that ends the process at once: (path, kind), newest last. kind "file"
# (a temporary file, or a new file not yet complete), "tree" (a temporary folder) or "folder" (a folder made for a
# new file: removed only while empty).
_UNFINISHED: list[tuple[Path, str]] = []


@contextlib.contextmanager
def unfinished(path: str | os.PathLike, kind: str = "file") -> Iterator[Path]:
    """Mark ``path`` as a write in progress while the block runs, so ``remove_unfinished`` (a stop) takes it
    away; the block's own cleanup (on an exception) is unchanged."""
    entry = (Path(path), kind)
    _UNFINISHED.append(entry)
    try:
        yield entry[0]
    finally:
        for i in range(len(_UNFINISHED) - 1, -1, -1):
            if _UNFINISHED[i] is entry:
                del _UNFINISHED[i]
                break


def remove_unfinished() -> None:
    """Remove every write in progress (``unfinished``), newest first: what a stopped command must not leave.
    For a signal handler that then ends the process: it raises nothing."""
    import shutil

    for path, kind in reversed(list(_UNFINISHED)):
        with contextlib.suppress(OSError):
            if kind == "tree":
                shutil.rmtree(path, ignore_errors=True)
            elif kind == "folder":
                path.rmdir()
            else:
                path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it into place, else delete it.

    Whatever was written to the temporary file is flushed to disk (``fsync``) before the rename, and
    the folder after it, so a power cut leaves the old file or the complete new one, not an empty one
    (a rename can reach the disk before the data it points to)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; a file we write gets the usual open() mode
    os.close(fd)
    try:
        with unfinished(tmp):
            yield Path(tmp)
            fsync_path(tmp)
            os.replace(tmp, path)
        fsync_path(path.parent, directory=True)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def fsync_path(path: str | os.PathLike, directory: bool = False) -> None:
    """Flush ``path`` (a file, or a folder's entries) to disk; a folder that cannot be opened is skipped."""
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        if directory:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:  # some file systems cannot fsync a folder; a file must be flushed
            raise
    finally:
        os.close(fd)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise MinivisionError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MinivisionError(f"{path}: not valid JSON ({e})") from None


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks; MinivisionError (one line) when it cannot be read."""
    import hashlib

    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as e:
        raise MinivisionError(f"cannot read {path}: {e.strerror or e}") from None
    return h.hexdigest()


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                 metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file  # imports torch: only where tensors are written

    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise MinivisionError(f"{path}: file not found") from None
    except Exception as e:  # safetensors raises its own error types for corrupt headers/data
        raise MinivisionError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0]})") from None


def new_run_dir(parent: str | os.PathLike, name: str) -> Path:
    """Create ``parent/name``, or ``name2``, ``name3``, ... whichever is free first (Ultralytics style)."""
    parent = Path(parent)
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MinivisionError(f"cannot create output folder {parent}: {e.strerror}") from None
    n = 1
    while True:
        path = parent / (name if n == 1 else f"{name}{n}")
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            n += 1
