"""Kaggle-style pixel CSV files: ``label,pixel1,...,pixelN`` with N = S*S, one image a row.

These files are large (Fashion-MNIST train: 60,000 rows, 133 MB) and ``np.loadtxt`` needs about a
minute for them. The fast path parses the bytes with whole-array numpy operations in chunks of
rows (about a second for that file); it accepts only the plain form those files have (unsigned
integers of up to three digits, commas, newlines). Anything else (floats, spaces, negative
numbers, blank lines, a malformed row) drops to a line-by-line parser from the first chunk that
was not plain, which is slower but says exactly which line and column is wrong.

Besides the pixels, a header may name other columns, recognised by name: ``label`` (numbers, or class
names such as ``Ankle boot``), an index column as pandas writes it (an empty name or ``Unnamed: 0``:
dropped) and an id column (``id``, ``ImageId``: kept as each row's name). A file without a ``label``
column (a Kaggle ``test.csv``) can be read for prediction (``read_pixel_table(..., need_labels=False)``).
Our own parser rather than pandas: pandas is not a dependency, and the fast path above is what reads a
133 MB file in about a second.
"""

from __future__ import annotations

import csv
import math
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from minivision.data.dataset import as_array
from minivision.data.idx import read_bytes
from minivision.errors import DataError

_CHUNK_ROWS = 512  # rows per vectorised chunk: keeps temporaries in cache (measured: 512 is best)
_COMMA, _NEWLINE, _ZERO = 44, 10, 48


def _is_number(token: bytes) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _parse_fast(body: np.ndarray, line_ends: np.ndarray, ncols: int) -> tuple[np.ndarray, int]:
    """Parse plain rows; returns (values uint16 (rows_done, ncols), rows_done).

    Stops at the first chunk that is not plain so the careful parser can take over there.
    """
    nrows = len(line_ends)
    out = np.empty((nrows, ncols), dtype=np.uint16)
    start = 0
    for r0 in range(0, nrows, _CHUNK_ROWS):
        r1 = min(r0 + _CHUNK_ROWS, nrows)
        end = int(line_ends[r1 - 1]) + 1
        chunk = body[start:end]
        digits = chunk - np.uint8(_ZERO)
        is_digit = digits < 10
        not_digit = ~is_digit
        if (not_digit & (chunk != _COMMA) & (chunk != _NEWLINE)).any():
            return out[:r0], r0  # a byte that is not a digit, comma or newline
        if (not_digit[1:] & not_digit[:-1]).any() or not_digit[0]:
            return out[:r0], r0  # an empty field or a blank line
        two = is_digit[1:-1] & is_digit[:-2]  # position i has a digit at i-1 and i-2
        if (two[1:] & is_digit[:-3] & is_digit[3:]).any():
            return out[:r0], r0  # a number of four or more digits
        digits *= is_digit
        values = digits.astype(np.uint16)
        values[1:] += digits[:-1] * np.uint16(10)
        values[2:] += digits[:-2] * np.uint16(100) * two
        is_end = is_digit.copy()
        is_end[:-1] &= not_digit[1:]
        row_starts = np.concatenate(([0], line_ends[r0:r1 - 1] + 1 - start))
        per_row = np.add.reduceat(is_end.view(np.uint8), row_starts, dtype=np.int32)
        if (per_row != ncols).any():
            return out[:r0], r0
        out[r0:r1] = np.compress(is_end, values).reshape(r1 - r0, ncols)
        start = end
    return out, nrows


class _NotNumber(Exception):
    """A field that is not a number in a column that may hold text (labels, ids): read it as text."""

    def __init__(self, col: int) -> None:
        self.col = col


def _parse_careful(path: Path, lines: list[bytes], first_line: int, ncols: int,
                   text_ok: frozenset[int] = frozenset()) -> tuple[np.ndarray, np.ndarray]:
    """Parse rows one by one, raising DataError naming the line and column of the first problem
    (``_NotNumber`` when that column is in ``text_ok``)."""
    rows: list[np.ndarray] = []
    numbers: list[int] = []
    for offset, line in enumerate(lines):
        lineno = first_line + offset
        if not line.strip():
            continue
        fields = line.split(b",")
        if len(fields) != ncols:
            raise DataError(f"{path}: line {lineno} has {len(fields)} columns, expected {ncols}")
        try:
            row = np.array(fields, dtype=np.float64)
        except ValueError:
            col = next(i for i, f in enumerate(fields) if not _is_number(f))
            if col in text_ok:
                raise _NotNumber(col) from None
            token = fields[col].strip().decode("utf-8", "replace")[:20]
            raise DataError(f"{path}: line {lineno}, column {col + 1}: {token!r} is not a number") from None
        bad = ~np.isfinite(row) | (row != np.round(row))
        if bad.any():
            col = int(np.argmax(bad))
            raise DataError(f"{path}: line {lineno}, column {col + 1}: {fields[col].strip().decode()!r} "
                            "is not a whole number")
        rows.append(row.astype(np.int64))
        numbers.append(lineno)
    if not rows:
        return np.empty((0, ncols), np.int64), np.empty(0, np.int64)
    return np.stack(rows), np.asarray(numbers, dtype=np.int64)


def _parse_numbers(path: Path, body_bytes: bytes, first_line: int, ncols: int,
                   text_ok: frozenset[int]) -> tuple[np.ndarray, np.ndarray]:
    """Every row of ``body_bytes`` (ending in a newline) as numbers: (values (N, ncols), line numbers (N,))."""
    body = np.frombuffer(body_bytes, dtype=np.uint8)
    line_ends = np.flatnonzero(body == _NEWLINE)
    fast, done = _parse_fast(body, line_ends, ncols)
    values: np.ndarray = fast
    linenos = np.arange(done, dtype=np.int64) + first_line
    if done < len(line_ends):
        rest_start = int(line_ends[done - 1]) + 1 if done else 0
        rest = body_bytes[rest_start:-1].split(b"\n")
        slow, slow_lines = _parse_careful(path, rest, first_line + done, ncols, text_ok)
        values = np.concatenate([fast.astype(np.int64), slow])
        linenos = np.concatenate([linenos, slow_lines])
    return values, linenos


def _take_text(path: Path, body_bytes: bytes, first_line: int, ncols: int, cols: list[int]
               ) -> tuple[bytes, dict[int, list[str]]]:
    """Pull the text columns ``cols`` out of every row: the body with ``0`` in their place (so line and
    column numbers stay those of the file) and each column's texts, one per non-blank row. Only the
    fields up to the last text column are split off a row (the pixels after it stay one bytes object),
    so ids or labels in the first columns cost little; quoted fields are read by ``csv``."""
    texts: dict[int, list[str]] = {c: [] for c in cols}
    last = max(cols)
    out = []
    for offset, line in enumerate(body_bytes[:-1].split(b"\n")):
        if not line.strip():
            out.append(line)
            continue
        if b'"' in line:  # csv reads the row up to its last quote; the numbers after it are split as above
            q = line.rindex(b'"')
            fields = [f.encode() for f in next(csv.reader([line[:q + 1].decode("utf-8", "replace")]))]
            rest = line[q + 1:]
            if rest and not rest.startswith(b","):
                fields = [f.encode() for f in next(csv.reader([line.decode("utf-8", "replace")]))]
            elif rest:
                fields += rest[1:].split(b",", max(0, last + 1 - len(fields)))
        else:
            fields = line.split(b",", last + 1)
        if len(fields) <= last:
            raise DataError(f"{path}: line {first_line + offset} has {len(fields)} columns, expected {ncols}")
        for c in cols:
            text = unicodedata.normalize("NFC", fields[c].decode("utf-8", "replace").strip().strip("\"'").strip())
            if not text:
                raise DataError(f"{path}: line {first_line + offset}, column {c + 1} is empty")
            texts[c].append(text)
            fields[c] = b"0"
        out.append(b",".join(fields))
    return b"\n".join(out) + b"\n", texts


_INDEX_NAME = re.compile(r"^(|unnamed: ?\d+(\.\d+)?)$")  # pandas' DataFrame.to_csv index column, read back
_ID_NAMES = ("id", "imageid", "image_id", "index")


@dataclass
class PixelTable:
    """A pixel CSV as read: ``x`` uint8 (N, 1, S, S); ``labels`` the label column (int64 (N,) numbers,
    or a list of N class-name strings; None when the file has none); ``ids`` the id column's values as
    text (None without one); ``notes``: one-line remarks for the user (columns recognised and dropped)."""

    x: Any  # torch.Tensor (np.ndarray inside data.dataset.numpy_arrays())
    labels: np.ndarray | list[str] | None
    ids: list[str] | None = None
    notes: list[str] = field(default_factory=list)


def read_pixel_table(path: str | Path, *, need_labels: bool = True) -> PixelTable:
    """Read a pixel CSV (optionally gzip-compressed). See the module docstring for the columns.

    The header is optional (a first row of numbers is data); without one the first column is the label
    (or, with ``need_labels=False``, every column is a pixel when their number is square). With
    ``need_labels`` a file without a ``label`` column is a DataError. Raises DataError, naming the line
    and column, for anything malformed."""
    path = Path(path)
    data = read_bytes(path)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if b"\r" in data[:65536]:
        data = data.replace(b"\r\n", b"\n")
    newline = data.find(b"\n")
    first = data if newline < 0 else data[:newline]
    if not first.strip():
        raise DataError(f"{path}: empty CSV file")
    tokens = [t.strip().strip(b"\"'") for t in first.split(b",")]
    has_header = not all(_is_number(t) for t in tokens)
    ncols = len(tokens)
    notes: list[str] = []
    label_col: int | None = 0
    id_col: int | None = None
    dropped: list[int] = []
    if has_header:
        names = [t.decode("utf-8", "replace").strip().lower() for t in tokens]
        label_col = names.index("label") if "label" in names else None
        if names and _INDEX_NAME.match(names[0]):
            dropped.append(0)
            notes.append(f"{path.name}: column 1 ({tokens[0].decode('utf-8', 'replace') or 'no name'}) is an "
                         "index column as pandas writes it; ignored")
        id_col = next((i for i, n in enumerate(names) if n in _ID_NAMES and i not in dropped), None)
        if label_col is None and need_labels:
            hint = " (to classify its pictures: minivision predict RUN FILE.csv)" if id_col is not None or \
                all(n.startswith("pixel") for n in names[len(dropped):]) else ""
            raise DataError(f"{path}: header has no 'label' column (expected label,pixel1,...,pixelN){hint}")
    elif not need_labels and math.isqrt(ncols) ** 2 == ncols:
        label_col = None  # a headerless file of pixels only
    others = [c for c in (label_col, id_col, *dropped) if c is not None]
    npix = ncols - len(others)
    side = math.isqrt(max(npix, 0))
    if npix < 1 or side * side != npix:
        raise DataError(f"{path}: {npix} pixel columns is not a square number of pixels "
                        "(expected e.g. 784 = 28x28)")
    body_bytes = (data[newline + 1:] if has_header else data).rstrip() + b"\n"
    if body_bytes == b"\n":
        raise DataError(f"{path}: no data rows")
    first_line = 2 if has_header else 1
    may_be_text = frozenset(others)
    # ids and index columns are read as text from the start (ids past 999 would leave the fast parser);
    # a label column only once a row shows it holds names
    text_cols = [c for c in others if c != label_col]
    if label_col is not None and b'"' in body_bytes:
        text_cols.append(label_col)  # quoted labels ("Coat, long"): the numeric parsers split at every comma
    texts: dict[int, list[str]] = {}
    numeric_body = body_bytes
    if text_cols:
        numeric_body, texts = _take_text(path, body_bytes, first_line, ncols, text_cols)
    while True:
        try:
            values, linenos = _parse_numbers(path, numeric_body, first_line, ncols, may_be_text - set(text_cols))
            break
        except _NotNumber as e:
            text_cols.append(e.col)
            numeric_body, texts = _take_text(path, body_bytes, first_line, ncols, text_cols)
    if len(values) == 0:
        raise DataError(f"{path}: no data rows")

    pixel_cols = [c for c in range(ncols) if c not in others]
    pixels = values[:, pixel_cols] if others else values
    bad = (pixels > 255) | (pixels < 0) if pixels.dtype != np.uint16 else pixels > 255
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        col = pixel_cols[col]
        raise DataError(f"{path}: line {int(linenos[row])}, column {col + 1}: pixel value "
                        f"{int(values[row, col])} is outside 0-255")
    labels: np.ndarray | list[str] | None = None
    if label_col is not None and label_col in texts and not all(t.isdecimal() for t in texts[label_col]):
        labels = texts[label_col]
    elif label_col is not None and label_col in texts:
        labels = np.array([int(t) for t in texts[label_col]], dtype=np.int64)
    elif label_col is not None:
        labels = values[:, label_col].astype(np.int64)
        if (labels < 0).any():
            row = int(np.argmax(labels < 0))
            raise DataError(f"{path}: line {int(linenos[row])}: label {int(labels[row])} is negative")
    ids = None
    if id_col is not None:
        ids = texts[id_col] if id_col in texts else [str(int(v)) for v in values[:, id_col]]
    x = as_array(np.ascontiguousarray(pixels.astype(np.uint8)).reshape(-1, 1, side, side))
    return PixelTable(x, labels, ids, notes)


def read_pixel_csv(path: str | Path) -> tuple[Any, Any]:
    """Read a labelled pixel CSV into x uint8 (N, 1, S, S) and its numeric labels y int64 (N,).

    The header is optional (a first row of numbers is data); with a header the ``label`` column
    may be anywhere, without one it is the first column. Labels written as class names are a
    DataError here: ``read_pixel_table`` reads those."""
    table = read_pixel_table(path)
    if not isinstance(table.labels, np.ndarray):
        raise DataError(f"{path}: labels are class names, not numbers")
    return table.x, as_array(table.labels)
