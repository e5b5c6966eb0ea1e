"""A folder of a user's own pictures: ``root/<class>/*`` or ``root/{train,val,test}/<class>/*``.

Class names are the class folders' names, sorted; a ``classes.json`` in ``root`` may give other names
(``{"000": "T-shirt/top"}``) for names a folder cannot have.

Every picture goes through ``images.open_image`` (the same checks predict and serve use); a file
that fails is skipped and listed in ``Dataset.skipped``, never silently used. Grey pictures make a
one-channel dataset; every picture then goes through ``photo.PictureConversion`` with the resize
method at the most common size, the conversion predict and serve apply to a photo for a model
trained on a folder, so a picture predicted is prepared exactly as the training pictures were.

Decoding is the slow part (~0.2 ms per small JPEG, almost all of it per-file Python and Pillow
overhead, so threads do not help): large folders are decoded by a pool of forked processes, one
per core, and the decoded arrays are cached in the user cache (safetensors + JSON) keyed by every
file's path, size and modification time, so the second read of an unchanged folder is a file load.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from minivision.data.dataset import Dataset, Split
from minivision.data.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, is_grayscale, open_image
from minivision.data.rules import drop_empty_classes, is_ignored
from minivision.data.sources import user_cache_dir
from minivision.errors import DataError
from minivision.fileio import save_tensors, write_json
from minivision.photo import PictureConversion

SPLIT_DIRS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_CACHE_VERSION = 1
_POOL_MIN_FILES = 2000  # below this, starting processes costs more than it saves
_CHUNK = 500

# one picture: (pixels HxW or HxWx3, grey?) or (None, False) with the reason in the third slot
Decoded = tuple[np.ndarray | None, bool, str]
FileList = list[tuple[str, int, int]]  # (absolute path, size, mtime_ns)


def _hidden(name: str) -> bool:
    return is_ignored(name)  # hidden, __MACOSX, Thumbs.db, ...: the rule every path shares (data/rules.py)


def _is_image_name(name: str) -> bool:
    return not _hidden(name) and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _scan_images(folder: str) -> FileList:
    """Image files under ``folder`` (recursively, hidden entries skipped), sorted for determinism."""
    found: FileList = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise DataError(f"{folder}: cannot list folder ({exc.strerror or exc})") from None
    for entry in entries:
        if _hidden(entry.name):
            continue
        if entry.is_dir(follow_symlinks=False):  # no symlinked sub-folders: they can loop
            found += _scan_images(entry.path)
        elif entry.is_file() and _is_image_name(entry.name):
            st = entry.stat()
            found.append((entry.path, st.st_size, st.st_mtime_ns))
    return found


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not _hidden(p.name))


def _stray_images(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.iterdir() if p.is_file() and _is_image_name(p.name))


def _layout(root: Path) -> tuple[dict[str, dict[str, FileList]], list[str]]:
    """Map split -> class -> files, plus images lying outside any class folder."""
    dirs = _subdirs(root)
    split_dirs = [d for d in dirs if d.name.lower() in SPLIT_DIRS]
    has_train = any(SPLIT_DIRS[d.name.lower()] == "train" for d in split_dirs)
    is_split = has_train or (bool(dirs) and dirs == split_dirs)
    if is_split:
        others = [d.name for d in dirs if d not in split_dirs]
        names = ", ".join(d.name for d in split_dirs)
        if others:
            raise DataError(f"{root}: mixes split folders ({names}) with other "
                            f"folders ({', '.join(others[:3])}); put every class folder inside train/")
        if not has_train:
            raise DataError(f"{root}: has {names} folders but no train/")
    tops = [(SPLIT_DIRS[d.name.lower()], d) for d in split_dirs] if is_split else [("train", root)]
    layout: dict[str, dict[str, FileList]] = {}
    stray = _stray_images(root) if is_split else []
    for split, top in tops:
        if split in layout:
            raise DataError(f"{root}: more than one folder for the {split} split ({top.name})")
        stray += _stray_images(top)
        classes = _subdirs(top)
        if not classes:
            raise DataError(f"{top}: no class folders (expected {top}/<class>/<image>)")
        layout[split] = {}
        for class_dir in classes:
            layout[split][class_dir.name] = _scan_images(str(class_dir))  # empty: left out by _finish
    return layout, stray


def _decode(path: str, max_pixels: int) -> Decoded:
    try:
        img = open_image(path, max_pixels=max_pixels)
    except DataError as exc:
        return None, False, str(exc).removeprefix(f"{path}: ")
    arr = np.asarray(img)
    return arr, is_grayscale(arr), ""


def _decode_chunk(paths: list[str], max_pixels: int) -> list[Decoded]:
    return [_decode(p, max_pixels) for p in paths]


def _workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _decode_all(paths: list[str], max_pixels: int) -> list[Decoded]:
    """Decode in forked worker processes when it pays (Linux, several cores, many files)."""
    import multiprocessing

    workers = min(_workers(), 8)
    if len(paths) < _POOL_MIN_FILES or workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return _decode_chunk(paths, max_pixels)
    chunks = [paths[i:i + _CHUNK] for i in range(0, len(paths), _CHUNK)]
    # fork, not spawn: spawn re-imports the user's __main__ (a script without a main guard would
    # run again) and pays the torch import per worker; workers touch only Pillow and numpy.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        parts = pool.map(_decode_chunk, chunks, [max_pixels] * len(chunks))
        return [d for part in parts for d in part]


def _dominant_size(arrays: list[np.ndarray]) -> tuple[int, int]:
    counts = Counter(a.shape[:2] for a in arrays)
    return max(counts.items(), key=lambda kv: (kv[1], kv[0]))[0]


def _build(root: Path, layout: dict[str, dict[str, FileList]], stray: list[str], max_pixels: int) -> Dataset:
    classes = sorted({c for per_class in layout.values() for c in per_class})
    index = {c: i for i, c in enumerate(classes)}
    jobs = [(split, cls, path) for split, per_class in layout.items()
            for cls, files in per_class.items() for path, _, _ in files]
    decoded = _decode_all([p for _, _, p in jobs], max_pixels)
    skipped = [(p, "not inside a class folder") for p in stray]
    good: dict[str, list[tuple[np.ndarray, int]]] = {split: [] for split in layout}
    gray = True
    for (split, cls, path), (arr, is_gray, reason) in zip(jobs, decoded, strict=True):
        if arr is None:
            skipped.append((path, reason))
            continue
        good[split].append((arr, index[cls]))
        gray = gray and is_gray
    if not any(good.values()):
        raise DataError(f"{root}: no readable images in the class folders ({len(jobs)} skipped)" if jobs else
                        f"{root}: no pictures found (each class folder has no images)")
    conversion = PictureConversion(_dominant_size([a for items in good.values() for a, _ in items]),
                                   1 if gray else 3)
    splits = {}
    for split, items in good.items():
        x = np.empty((len(items), conversion.channels, *conversion.size), dtype=np.uint8)
        for i, (arr, _) in enumerate(items):
            x[i] = conversion.convert(arr)
        y = np.fromiter((label for _, label in items), dtype=np.int64, count=len(items))
        splits[split] = Split(torch.from_numpy(x), torch.from_numpy(y))
    return Dataset(name=root.name, classes=classes, train=splits["train"], val=splits.get("val"),
                   test=splits.get("test"), skipped=skipped, source=str(root))


# ---------------------------------------------------------------------------------------------
# Cache of decoded arrays
# ---------------------------------------------------------------------------------------------

def _cache_paths(root: Path, layout: dict[str, dict[str, FileList]], stray: list[str],
                 max_pixels: int) -> tuple[Path, str]:
    listing = [[split, cls, os.path.relpath(p, root), size, mtime]
               for split, per_class in sorted(layout.items())
               for cls, files in sorted(per_class.items()) for p, size, mtime in files]
    strays = [os.path.relpath(p, root) for p in stray]
    blob = json.dumps([_CACHE_VERSION, str(root), max_pixels, listing, strays])
    key = hashlib.sha256(blob.encode()).hexdigest()
    prefix = hashlib.sha256(str(root).encode()).hexdigest()[:16]
    return user_cache_dir() / "folders" / f"{prefix}-{key[:32]}", key


def _save_cache(base: Path, key: str, ds: Dataset) -> None:
    named = (("train", ds.train), ("val", ds.val), ("test", ds.test))
    tensors = {f"{name}_{part}": getattr(split, part)
               for name, split in named if split is not None for part in ("x", "y")}
    meta = {"version": _CACHE_VERSION, "key": key, "name": ds.name, "classes": ds.classes,
            "skipped": ds.skipped, "source": ds.source}
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
        for old in base.parent.glob(base.name.split("-")[0] + "-*"):
            if not old.name.startswith(base.name):
                old.unlink(missing_ok=True)  # entries of older states of the same folder
        # the JSON is written last and both carry the key, so a kill in between is a cache miss
        save_tensors(base.with_suffix(".safetensors"), tensors, metadata={"key": key})
        write_json(base.with_suffix(".json"), meta)
    except OSError:
        pass  # a read-only or full cache only costs speed


def _load_cache(base: Path, key: str) -> Dataset | None:
    """The cached dataset, or None when absent, stale or unreadable (it is then rebuilt)."""
    from safetensors import safe_open

    try:
        meta = json.loads(base.with_suffix(".json").read_text())
        if meta.get("version") != _CACHE_VERSION or meta.get("key") != key:
            return None
        tensors = {}
        with safe_open(str(base.with_suffix(".safetensors")), framework="pt") as f:
            if (f.metadata() or {}).get("key") != key:
                return None
            for name in f.keys():
                tensors[name] = f.get_tensor(name)
        splits = {s: Split(tensors[f"{s}_x"], tensors[f"{s}_y"]) for s in ("train", "val", "test")
                  if f"{s}_x" in tensors}
        return Dataset(name=meta["name"], classes=list(meta["classes"]), train=splits["train"],
                       val=splits.get("val"), test=splits.get("test"),
                       skipped=[(str(p), str(r)) for p, r in meta["skipped"]], source=meta["source"])
    except Exception:  # any damage (truncated file, bad JSON, wrong dtype): rebuild from the pictures
        return None


def read_image_folder(root: str | Path, *, cache: bool = True,
                      max_pixels: int = DEFAULT_MAX_PIXELS) -> Dataset:
    """Read a folder of class sub-folders (optionally under train/val/test) into a Dataset."""
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    layout, stray = _layout(root)
    base, key = _cache_paths(root, layout, stray, max_pixels)
    if cache:
        cached = _load_cache(base, key)
        if cached is not None:
            return _finish(root, cached)
    ds = _build(root, layout, stray, max_pixels)
    if cache:
        _save_cache(base, key, ds)
    return _finish(root, ds)


def _finish(root: Path, ds: Dataset) -> Dataset:
    """The user's class names, then classes with no usable pictures left out with a note (data/rules.py)."""
    import dataclasses

    ds, notes = drop_empty_classes(_named_classes(root, ds))
    return dataclasses.replace(ds, notes=ds.notes + notes) if notes else ds


CLASS_NAMES_FILE = "classes.json"


def _named_classes(root: Path, ds: Dataset) -> Dataset:
    """Class names other than the folder names: ``root/classes.json`` maps a class folder's name to the
    class's name (``{"000": "T-shirt/top", "001": "ankle boot"}``), for names that cannot be folder
    names (a slash, a name a file system refuses). Folders it does not name keep their own name."""
    import dataclasses

    path = root / CLASS_NAMES_FILE
    if not path.is_file():
        return ds
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not readable JSON ({' '.join(str(e).split())[:120]})") from None
    if not isinstance(names, dict) or not all(isinstance(k, str) and isinstance(v, str) and v.strip()
                                              for k, v in names.items()):
        raise DataError(f"{path}: expected an object mapping class folder names to class names")
    unknown = sorted(set(names) - set(ds.classes))
    if unknown:
        raise DataError(f"{path}: no class folder named {unknown[0]!r}")
    classes = [names.get(c, c) for c in ds.classes]
    if len(set(classes)) != len(classes):
        raise DataError(f"{path}: two classes get the same name")
    return dataclasses.replace(ds, classes=classes)
