"""One set of dataset rules for every path that reads a user's pictures.

The folder reader (``data/folder.py``), ``minivision show`` (through it), ``minivision predict``
(``expand_paths``, here) and the training-jobs zip upload (``serve/jobs_images.read_zip``) all ask
``is_ignored`` / ``is_ignored_path`` which entries are not the user's data, and the folder reader
uses ``drop_empty_classes`` for classes with no pictures, so a folder and the same folder zipped
give the same classes and the same pictures.

Ignored entries are the ones operating systems and tools leave beside a user's files: hidden names
(``.DS_Store``, ``.ipynb_checkpoints``, ``._photo.jpg`` AppleDouble files, editors' and our own
temporary files), macOS's ``__MACOSX`` folder in zips made by Finder, Windows' ``Thumbs.db``,
``ehthumbs.db`` and ``desktop.ini`` (compared case-insensitively, as Windows names are), and
Windows' ``$RECYCLE.BIN`` and ``System Volume Information`` folders on removable drives. This list is
our own code because it is the product's rule: no library keeps one for dataset folders.
"""

from __future__ import annotations

import dataclasses
import glob
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from minivision.errors import DataError, MinivisionError

if TYPE_CHECKING:
    from minivision.data.dataset import Dataset

# compared case-insensitively; anything starting with "." is ignored as well
IGNORED_NAMES = frozenset(n.lower() for n in (
    "__MACOSX",                   # resource forks in zips made by macOS Finder
    "Thumbs.db", "ehthumbs.db",   # Windows Explorer thumbnail caches
    "desktop.ini",                # Windows folder settings
    "$RECYCLE.BIN", "System Volume Information",  # Windows folders on removable drives
    "Icon\r",                     # macOS custom folder icon
))


def is_ignored(name: str) -> bool:
    """True when a file or folder ``name`` (one path component, not a path) is not a user's data:
    hidden (starts with ".", e.g. ``.DS_Store``, ``.ipynb_checkpoints``) or a name in ``IGNORED_NAMES``."""
    return name.startswith(".") or name.lower() in IGNORED_NAMES


def is_ignored_path(parts: Iterable[str]) -> bool:
    """True when any component of a relative path (``["__MACOSX", "bag", "._1.png"]``) is ignored."""
    return any(is_ignored(p) for p in parts)


def drop_empty_classes(ds: Dataset) -> tuple[Dataset, list[str]]:
    """Leave out classes with no pictures in any split; returns (dataset, notes).

    A class folder with no (readable) pictures in train/, val/ or test/ is not a class the model can
    learn or be scored on: it is left out and a note names it, as a pixel CSV's classes are the labels
    it holds. Labels are renumbered so the kept classes keep their order. A class with pictures only
    in val/ or test/ is kept (the union of the splits' classes, as before). Raises ``DataError`` when
    fewer than two classes are left."""
    import numpy as np

    from minivision.data.dataset import as_array

    splits = {name: getattr(ds, name) for name in ("train", "val", "test") if getattr(ds, name) is not None}
    total = sum(np.bincount(np.asarray(s.y), minlength=ds.num_classes) for s in splits.values())
    present = total > 0
    if bool(present.all()):
        return ds, []
    kept = np.flatnonzero(present)
    empty = [ds.classes[i] for i in np.flatnonzero(~present).tolist()]
    if len(kept) < 2:
        raise DataError(f"{ds.source or ds.name}: needs at least two classes with pictures; "
                        f"{len(kept)} has pictures, {len(empty)} has none ({', '.join(empty[:5])})")
    remap = np.full(ds.num_classes, -1, dtype=np.int64)
    remap[kept] = np.arange(len(kept))
    new = {name: dataclasses.replace(s, y=as_array(remap[np.asarray(s.y)])) for name, s in splits.items()}
    shown = ", ".join(repr(c) for c in empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
    note = (f"note: {len(empty)} class folder(s) with no usable pictures left out: {shown}; "
            f"{len(kept)} classes remain")
    return dataclasses.replace(ds, classes=[ds.classes[i] for i in kept.tolist()], **new), [note]


def dataset_messages(ds: Dataset) -> list[str]:
    """The lines ``train`` and ``show`` print about a dataset they read: its notes, then the files
    that could not be used (``skipped.txt`` in the output folder lists them all, see ``skipped_listing``)."""
    lines = list(ds.notes)
    if ds.skipped:
        path, reason = ds.skipped[0]
        lines.append(f"skipped {len(ds.skipped)} unreadable file(s), listed in skipped.txt; first: {path} ({reason})")
    return lines


def skipped_listing(ds: Dataset) -> str:
    """``skipped.txt``: one ``path<TAB>reason`` line per file that was not used."""
    return "".join(f"{p}\t{r}\n" for p, r in ds.skipped)


def expand_paths(items: list[str]) -> list[str]:
    """Files as given, folders walked (sorted; hidden entries, __MACOSX, Thumbs.db... skipped by
    ``data.rules.is_ignored``, as the folder reader does), globs expanded."""
    out: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            from minivision.data.images import IMAGE_EXTENSIONS

            found = sorted(str(f) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
                           and not is_ignored_path(f.relative_to(p).parts))
            if not found:
                raise MinivisionError(f"{item}: folder has no image files")
            out += found
        elif any(ch in item for ch in "*?[") and not p.exists():
            found = sorted(glob.glob(item, recursive=True))
            if not found:
                raise MinivisionError(f"{item}: no file matches this pattern")
            out += found
        else:
            out.append(item)  # a missing file is reported per file, with the rest still predicted
    return out


def is_pixel_csv(item: str | Path) -> bool:
    """A ``.csv`` or ``.csv.gz`` file: pixel rows (a Kaggle-style ``test.csv``), not a picture."""
    return str(item).lower().endswith((".csv", ".csv.gz")) and Path(item).is_file()
