"""A folder of a user's own pictures: ``root/<class>/*`` or ``root/{train,val,test}/<class>/*``.

Class names are the class folders' names, sorted; a ``classes.json`` in ``root`` may give other names
(``{"000": "T-shirt/top"}``) for names a folder cannot have. The classes are train/'s: a val/ or test/
class folder whose name differs from a train/ one only in case, spacing or punctuation (``test/bag``
beside ``train/Bag``; the rule of ``classmatch.name_key``) is that class, with a note. One with no
train/ counterpart stays a class of its own (a folder scored by a trained model may hold classes its
train/ lacks) with a note that it has no training pictures, as Keras warns rather than refuses.

Every picture goes through ``images.open_image`` (the same checks predict and serve use); a file
that fails is skipped and listed in ``Dataset.skipped``, never silently used. Grey pictures make a
one-channel dataset; every picture then goes through ``photo.PictureConversion`` with the resize
method at the working size, the conversion predict and serve apply to a photo for a model trained
on a folder (``Dataset.conversion`` -> ``Preprocess.photo``), so a picture predicted is prepared
exactly as the training pictures were.

The working size (``working_size``), the policy of Ultralytics' ``imgsz`` and fastai's item
transforms: ``imgsz`` is the frame's longer side, by default the median of the pictures' longer
sides capped at ``IMGSZ_CAP`` (64; never enlarged: a folder of 28 x 28 pictures stays 28 x 28). The
frame takes the pictures' shape when at least ``SHAPE_SHARE`` (90%) of them share one aspect ratio
(1600 x 1200 photos -> 64 x 48), else it is square (portrait and landscape mixed -> 64 x 64). A
picture of another shape meets the frame by ``fit``: ``letterbox`` (default; scaled whole, padded
grey), ``crop`` (scaled to cover, centre kept) or ``squash`` (stretched). The cap keeps a budget run
on a 2-core CPU training many epochs (a 64 x 64 colour picture is 4 CIFAR-10 pictures of work);
``--imgsz`` asks for more. Sizes come from the headers first (EXIF rotation counted), then each
picture is decoded at a reduced size (JPEG draft mode, ``open_image(min_side=...)``) and converted
at once, so 1,000 12-megapixel photos are never in memory together.

Decoding is the slow part (~0.2 ms per small JPEG, almost all of it per-file Python and Pillow
overhead, so threads do not help): large folders are decoded by a pool of forked processes, one
per core, and the converted arrays are cached in the user cache (safetensors + JSON) keyed by every
file's path, size and modification time and the working-size settings, so the second read of an
unchanged folder is a file load.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from minivision.data.dataset import Dataset, Split, as_array, using_numpy
from minivision.data.images import (
    IMAGE_EXTENSIONS,
    MAX_PIXELS,
    is_grayscale,
    open_image,
    picture_size,
    reduction,
)
from minivision.data.rules import drop_empty_classes, is_ignored
from minivision.data.sources import user_cache_dir
from minivision.errors import DataError
from minivision.fileio import save_tensors, write_json
from minivision.photo import FITS, PictureConversion

SPLIT_DIRS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_CACHE_VERSION = 2
_POOL_MIN_FILES = 2000  # below this, starting processes costs more than it saves
_POOL_MIN_BYTES = 64 << 20  # ... unless the files are big (phone photos: ~15 ms each to decode reduced)
_CHUNK = 500
_KEEP_BYTES = 64 << 10  # files this small may be small pictures: decoded in the first pass (see _probe)
IMGSZ_CAP = 64       # default working size: the median longer side, at most this (module docstring)
SHAPE_SHARE = 0.9    # the frame takes the pictures' aspect ratio when this share of them have it
_SAME_SHAPE = 0.02   # aspect ratios within 2% count as one (4032 x 3024 and 4000 x 3000)
DEFAULT_FIT = "letterbox"

# one picture: (converted pixels C x H x W, grey?) or (None, False) with the reason in the third slot
Decoded = tuple[np.ndarray | None, bool, str]
FileList = list[tuple[str, int, int]]  # (absolute path, size, mtime_ns)


def _is_image_name(name: str) -> bool:
    return not is_ignored(name) and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _scan_images(folder: str) -> FileList:
    """Image files under ``folder`` (recursively, hidden entries skipped), sorted for determinism."""
    found: FileList = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise DataError(f"{folder}: cannot list folder ({exc.strerror or exc})") from None
    for entry in entries:
        if is_ignored(entry.name):
            continue
        if entry.is_dir(follow_symlinks=False):  # no symlinked sub-folders: they can loop
            found += _scan_images(entry.path)
        elif entry.is_file() and _is_image_name(entry.name):
            st = entry.stat()
            found.append((entry.path, st.st_size, st.st_mtime_ns))
    return found


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not is_ignored(p.name))


def _stray_images(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.iterdir() if p.is_file() and _is_image_name(p.name))


def _layout(root: Path) -> tuple[dict[str, dict[str, FileList]], list[str], list[str]]:
    """Map split -> class -> files, plus images lying outside any class folder and notes for the user
    (val/test class folders renamed to train's, ``_match_split_classes``)."""
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
    return layout, stray, _match_split_classes(root, layout)


def _match_split_classes(root: Path, layout: dict[str, dict[str, FileList]]) -> list[str]:
    """Rename, in place, the val/test class folders that are train's classes spelled another way (case,
    spacing, punctuation: ``classmatch.name_key``) to train's names; return notes saying so, and naming
    val/test classes with no train counterpart (kept as classes of their own). A spelling that fits two
    train classes is not guessed: it stays a class of its own."""
    from minivision.classmatch import name_key  # here: classmatch imports minivision.data

    train = sorted(layout["train"])
    by_key: dict[str, list[str]] = {}
    for c in train:
        by_key.setdefault(name_key(c), []).append(c)
    notes = []

    def listing(names: list[str]) -> str:
        return ", ".join(names[:12]) + (f", ... ({len(names) - 12} more)" if len(names) > 12 else "")

    for split in [s for s in ("val", "test") if s in layout]:
        renamed: dict[str, FileList] = {}
        changed, missing = [], []
        for c, files in layout[split].items():
            hits = [c] if c in layout["train"] else by_key.get(name_key(c), [])
            target = hits[0] if len(hits) == 1 else c
            renamed.setdefault(target, []).extend(files)
            if target != c:
                changed.append(f"{split}/{c} -> train/{target}")
            elif c not in layout["train"]:
                missing.append(c)
        for files in renamed.values():
            files.sort()
        layout[split] = renamed
        if changed:
            notes.append(f"{root.name}: {split}/ class folders matched to train/ by name (they differ in case, "
                         f"spacing or punctuation): {listing(changed)}")
        if missing:
            notes.append(f"{root.name}: {split}/ has class folder{'s' if len(missing) > 1 else ''} "
                         f"{listing(missing)} with no counterpart in train/ (train/ has: {listing(train)}); "
                         f"a model trained on this folder has no pictures to learn "
                         f"{'them' if len(missing) > 1 else 'it'} from")
    return notes


def median_side(root: str | Path) -> int | None:
    """The median longer side (pixels, upright) of a folder dataset's pictures, the figure the default
    working size is capped from (``working_size``), from the headers only (``images.picture_size``);
    None when no header reads. A fine-tune uses it to load large pictures at its working size."""
    layout, _, _ = _layout(Path(root).expanduser().absolute())
    sizes = [picture_size(p) for per_class in layout.values() for files in per_class.values() for p, _, _ in files]
    longer = sorted(max(s) for s in sizes if s)
    return longer[(len(longer) - 1) // 2] if longer else None


def working_size(sizes: list[tuple[int, int]], imgsz: int | None = None) -> tuple[int, int]:
    """The frame (height, width) a folder's pictures are converted to, from their upright sizes
    ``sizes`` [(width, height), ...] (the module docstring states the rule). ``imgsz``: the frame's
    longer side in pixels (None: the median longer side, at most IMGSZ_CAP). Raises DataError for
    an ``imgsz`` below 1."""
    if imgsz is not None and (not isinstance(imgsz, int) or isinstance(imgsz, bool) or imgsz < 1):
        raise DataError(f"imgsz must be a positive integer (pixels), got {imgsz!r}")
    if not sizes:
        side = imgsz or IMGSZ_CAP
        return side, side
    longer = sorted(max(w, h) for w, h in sizes)
    side = imgsz or min(IMGSZ_CAP, longer[(len(longer) - 1) // 2])
    (w0, h0), _ = max(Counter(sizes).items(), key=lambda kv: (kv[1], kv[0]))
    ratio = w0 / h0
    same = sum(abs(w / h - ratio) <= _SAME_SHAPE * ratio for w, h in sizes)
    if same < SHAPE_SHARE * len(sizes):
        return side, side
    if w0 >= h0:
        return max(1, round(side * h0 / w0)), side
    return side, max(1, round(side * w0 / h0))


def _decode(path: str, conversion: PictureConversion, max_pixels: int) -> Decoded:
    """One picture decoded at the reduced size its frame needs and converted at once."""
    try:
        img = open_image(path, max_pixels=max_pixels, min_side=conversion.decode_side)
        arr = np.asarray(img)
        gray = is_grayscale(arr)
        return conversion.convert(arr), gray, ""
    except DataError as exc:
        return None, False, str(exc).removeprefix(f"{path}: ")


def _decode_chunk(paths: list[str], conversion: PictureConversion, max_pixels: int) -> list[Decoded]:
    return [_decode(p, conversion, max_pixels) for p in paths]


# first pass, one picture: (upright size or None, its pixels when small enough to keep, why it failed)
Probed = tuple[tuple[int, int] | None, np.ndarray | None, str]


def _probe(path: str, max_pixels: int) -> Probed:
    """A picture's upright size from its header; a small picture (a CIFAR-10 JPEG, a Fashion-MNIST PNG:
    at most IMGSZ_CAP squared pixels) is decoded at once instead and kept, since a second opening would
    cost as much as its decoding. A failure is kept with its reason, so the picture is not tried again."""
    if os.path.getsize(path) > _KEEP_BYTES:
        return picture_size(path), None, ""
    try:
        arr = np.asarray(open_image(path, max_pixels=max_pixels, min_side=None))
    except DataError as exc:
        return None, None, str(exc).removeprefix(f"{path}: ")
    size = (int(arr.shape[1]), int(arr.shape[0]))
    return size, (arr if size[0] * size[1] <= IMGSZ_CAP ** 2 else None), ""


def _probe_chunk(paths: list[str], max_pixels: int) -> list[Probed]:
    return [_probe(p, max_pixels) for p in paths]


def _workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class _Runner:
    """Runs a per-file function over chunks of paths: in forked worker processes when it pays (Linux,
    several cores, many or big files), else here. One pool serves both passes (sizes, then pictures)."""

    def __init__(self, n_paths: int, total_bytes: int) -> None:
        import multiprocessing

        workers = min(_workers(), 8)
        many = n_paths >= _POOL_MIN_FILES or (total_bytes >= _POOL_MIN_BYTES and n_paths >= 2 * workers)
        self.pool = None
        if many and workers >= 2 and "fork" in multiprocessing.get_all_start_methods():
            # fork, not spawn: spawn re-imports the user's __main__ (a script without a main guard would
            # run again) and pays the torch import per worker; workers touch only Pillow and numpy.
            self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
        self.workers = workers

    def map(self, fn: Callable[..., list], paths: list[str], *args: Any) -> list:
        """``fn(chunk, *args)`` over chunks of ``paths``, its lists joined in the order of the paths."""
        size = max(1, min(_CHUNK, -(-len(paths) // self.workers)))
        chunks = [paths[i:i + size] for i in range(0, len(paths), size)]
        if self.pool is None:
            return [d for chunk in chunks for d in fn(chunk, *args)]
        parts = self.pool.map(fn, chunks, *([a] * len(chunks) for a in args))
        return [d for part in parts for d in part]

    def __enter__(self) -> _Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def _decode_all(paths: list[str], total_bytes: int, imgsz: int | None, fit: str,
                conversion: PictureConversion | None, max_pixels: int) -> tuple[PictureConversion, list[Decoded]]:
    """Both passes: sizes (and small pictures) first, the frame from them, then every picture converted
    (those kept from the first pass here, unless their frame would decode them reduced)."""
    with _Runner(len(paths), total_bytes) as runner:
        probed = runner.map(_probe_chunk, paths, max_pixels)
        frame = conversion or PictureConversion(working_size([s for s, _, _ in probed if s], imgsz), 3, fit=fit)
        again = [i for i, (size, arr, reason) in enumerate(probed)
                 if not reason and (arr is None or reduction(*size, frame.decode_side) > 1)]
        decoded = dict(zip(again, runner.map(_decode_chunk, [paths[i] for i in again], frame, max_pixels),
                           strict=True))
    for i, (_, arr, reason) in enumerate(probed):
        if i not in decoded:
            decoded[i] = (None, False, reason) if reason else (frame.convert(arr), is_grayscale(arr), "")
    return frame, [decoded[i] for i in range(len(paths))]


def _build(root: Path, layout: dict[str, dict[str, FileList]], stray: list[str], max_pixels: int,
           imgsz: int | None, fit: str, conversion: PictureConversion | None) -> Dataset:
    classes = sorted({c for per_class in layout.values() for c in per_class})
    index = {c: i for i, c in enumerate(classes)}
    jobs = [(split, cls, path, size) for split, per_class in layout.items()
            for cls, files in per_class.items() for path, size, _ in files]
    paths = [p for _, _, p, _ in jobs]
    frame, decoded = _decode_all(paths, sum(size for *_, size in jobs), imgsz, fit, conversion, max_pixels)
    skipped = [(p, "not inside a class folder") for p in stray]
    good: dict[str, list[tuple[np.ndarray, int]]] = {split: [] for split in layout}
    gray = True
    for (split, cls, path, _), (arr, is_gray, reason) in zip(jobs, decoded, strict=True):
        if arr is None:
            skipped.append((path, reason))
            continue
        good[split].append((arr, index[cls]))
        gray = gray and is_gray
    if not any(good.values()):
        raise DataError(f"{root}: no readable images in the class folders ({len(jobs)} skipped)" if jobs else
                        f"{root}: no pictures found (each class folder has no images)")
    keep = slice(None)
    if conversion is None and gray:  # every picture grey: one channel (the converted channels are equal)
        import dataclasses

        frame, keep = dataclasses.replace(frame, channels=1), slice(0, 1)
    splits = {}
    for split, items in good.items():
        x = np.empty((len(items), frame.channels, *frame.size), dtype=np.uint8)
        for i, (arr, _) in enumerate(items):
            x[i] = arr[keep]
        y = np.fromiter((label for _, label in items), dtype=np.int64, count=len(items))
        splits[split] = Split(as_array(x), as_array(y))
    return Dataset(name=root.name, classes=classes, train=splits["train"], val=splits.get("val"),
                   test=splits.get("test"), skipped=skipped, source=str(root), conversion=frame)


# ---------------------------------------------------------------------------------------------
# Cache of decoded arrays
# ---------------------------------------------------------------------------------------------

def _cache_paths(root: Path, layout: dict[str, dict[str, FileList]], stray: list[str],
                 max_pixels: int, settings: list) -> tuple[Path, str]:
    listing = [[split, cls, os.path.relpath(p, root), size, mtime]
               for split, per_class in sorted(layout.items())
               for cls, files in sorted(per_class.items()) for p, size, mtime in files]
    strays = [os.path.relpath(p, root) for p in stray]
    blob = json.dumps([_CACHE_VERSION, str(root), max_pixels, settings, listing, strays])
    key = hashlib.sha256(blob.encode()).hexdigest()
    prefix = hashlib.sha256(str(root).encode()).hexdigest()[:16]
    return user_cache_dir() / "folders" / f"{prefix}-{key[:32]}", key


def _save_cache(base: Path, key: str, ds: Dataset) -> None:
    named = (("train", ds.train), ("val", ds.val), ("test", ds.test))
    tensors = {f"{name}_{part}": getattr(split, part)
               for name, split in named if split is not None for part in ("x", "y")}
    meta = {"version": _CACHE_VERSION, "key": key, "name": ds.name, "classes": ds.classes,
            "skipped": ds.skipped, "source": ds.source,
            "conversion": [ds.conversion.channels, list(ds.conversion.size), ds.conversion.to_dict()]}
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
        for old in base.parent.glob(base.name.split("-")[0] + "-*"):
            if not old.name.startswith(base.name):
                old.unlink(missing_ok=True)  # entries of older states of the same folder
        # the JSON is written last and both carry the key, so a kill in between is a cache miss
        if using_numpy():  # read without torch (data.dataset.numpy_arrays): the same file, written by numpy
            from safetensors.numpy import save_file

            from minivision.fileio import atomic_path

            with atomic_path(base.with_suffix(".safetensors")) as tmp:
                save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp), metadata={"key": key})
        else:
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
        with safe_open(str(base.with_suffix(".safetensors")), framework="np" if using_numpy() else "pt") as f:
            if (f.metadata() or {}).get("key") != key:
                return None
            for name in f.keys():
                tensors[name] = f.get_tensor(name)
        splits = {s: Split(tensors[f"{s}_x"], tensors[f"{s}_y"]) for s in ("train", "val", "test")
                  if f"{s}_x" in tensors}
        channels, size, photo = meta["conversion"]
        conversion = PictureConversion.from_dict(photo, tuple(size), channels)
        return Dataset(name=meta["name"], classes=list(meta["classes"]), train=splits["train"],
                       val=splits.get("val"), test=splits.get("test"),
                       skipped=[(str(p), str(r)) for p, r in meta["skipped"]], source=meta["source"],
                       conversion=conversion)
    except Exception:  # any damage (truncated file, bad JSON, wrong dtype): rebuild from the pictures
        return None


def read_image_folder(root: str | Path, *, cache: bool = True, max_pixels: int = MAX_PIXELS,
                      imgsz: int | None = None, fit: str | None = None,
                      conversion: PictureConversion | None = None) -> Dataset:
    """Read a folder of class sub-folders (optionally under train/val/test) into a Dataset of uint8
    (N, C, H, W) pictures at the working size, ``Dataset.conversion`` saying how they were made.

    ``imgsz``: the frame's longer side in pixels (None: from the pictures, at most IMGSZ_CAP);
    ``fit``: letterbox (None: the default), crop or squash (module docstring). ``conversion``: a
    trained model's (``Preprocess.photo``), which fixes size, channels and fit instead (scoring a
    folder with a model converts its pictures as predict does). ``max_pixels``: the bomb limit
    (``images.MAX_PIXELS``). Raises DataError for an unusable folder or setting."""
    fit = DEFAULT_FIT if fit is None else fit
    if fit not in FITS:
        raise DataError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
    working_size([], imgsz)  # checks imgsz
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    layout, stray, layout_notes = _layout(root)
    wanted = [imgsz, fit] if conversion is None else [conversion.channels, list(conversion.size),
                                                      conversion.to_dict()]
    base, key = _cache_paths(root, layout, stray, max_pixels, wanted)
    if cache:
        cached = _load_cache(base, key)
        if cached is not None:
            return _finish(root, cached, layout_notes)
    ds = _build(root, layout, stray, max_pixels, imgsz, fit, conversion)
    if cache:
        _save_cache(base, key, ds)
    return _finish(root, ds, layout_notes)


def _finish(root: Path, ds: Dataset, layout_notes: list[str] | tuple[str, ...] = ()) -> Dataset:
    """The user's class names, then classes with no usable pictures left out with a note (data/rules.py)."""
    import dataclasses

    ds, notes = drop_empty_classes(_named_classes(root, ds))
    notes = [*layout_notes, *notes]
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
