"""Kaggle-style pixel CSV files: ``label,pixel1,...,pixelN`` with N = S*S, one image a row.

These files are large (Fashion-MNIST train: 60,000 rows, 133 MB) and ``np.loadtxt`` needs about a
minute for them. The fast path parses the bytes with whole-array numpy operations in chunks of
rows (about a second for that file); it accepts only the plain form those files have (unsigned
integers of up to three digits, commas, newlines). Anything else (floats, spaces, negative
numbers, blank lines, a malformed row) drops to a line-by-line parser from the first chunk that
was not plain, which is slower but says exactly which line and column is wrong.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

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


def _parse_careful(path: Path, lines: list[bytes], first_line: int, ncols: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Parse rows one by one, raising DataError naming the line and column of the first problem."""
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


def read_pixel_csv(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a pixel CSV into x uint8 (N, 1, S, S) and y int64 (N,). The file may be gzip-compressed.

    The header is optional (a first row of numbers is data); with a header the ``label`` column
    may be anywhere, without one it is the first column.
    """
    path = Path(path)
    data = read_bytes(path)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if b"\r" in data[:65536]:
        data = data.replace(b"\r\n", b"\n")
    newline = data.find(b"\n")
    first = data if newline < 0 else data[:newline]
    tokens = [t.strip().strip(b"\"'") for t in first.split(b",")]
    if not first.strip():
        raise DataError(f"{path}: empty CSV file")
    has_header = not all(_is_number(t) for t in tokens)
    ncols = len(tokens)
    label_col = 0
    if has_header:
        names = [t.decode("utf-8", "replace").lower() for t in tokens]
        if "label" not in names:
            raise DataError(f"{path}: header has no 'label' column (expected label,pixel1,...,pixelN)")
        label_col = names.index("label")
    npix = ncols - 1
    side = math.isqrt(max(npix, 0))
    if npix < 1 or side * side != npix:
        raise DataError(f"{path}: {npix} pixel columns is not a square number of pixels "
                        "(expected e.g. 784 = 28x28)")
    body_bytes = (data[newline + 1:] if has_header else data).rstrip() + b"\n"
    if body_bytes == b"\n":
        raise DataError(f"{path}: no data rows")
    first_line = 2 if has_header else 1

    body = np.frombuffer(body_bytes, dtype=np.uint8)
    line_ends = np.flatnonzero(body == _NEWLINE)
    fast, done = _parse_fast(body, line_ends, ncols)
    values: np.ndarray = fast
    linenos = np.arange(done, dtype=np.int64) + first_line
    if done < len(line_ends):
        rest_start = int(line_ends[done - 1]) + 1 if done else 0
        rest = body_bytes[rest_start:-1].split(b"\n")
        slow, slow_lines = _parse_careful(path, rest, first_line + done, ncols)
        values = np.concatenate([fast.astype(np.int64), slow])
        linenos = np.concatenate([linenos, slow_lines])
    if len(values) == 0:
        raise DataError(f"{path}: no data rows")

    labels = values[:, label_col]
    pixels = np.delete(values, label_col, axis=1) if label_col else values[:, 1:]
    bad = (pixels > 255) | (pixels < 0) if pixels.dtype != np.uint16 else pixels > 255
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        col += int(col >= label_col)
        raise DataError(f"{path}: line {int(linenos[row])}, column {col + 1}: pixel value "
                        f"{int(values[row, col])} is outside 0-255")
    if (labels < 0).any():
        row = int(np.argmax(labels < 0))
        raise DataError(f"{path}: line {int(linenos[row])}: label {int(labels[row])} is negative")
    x = torch.from_numpy(pixels.astype(np.uint8).reshape(-1, 1, side, side))
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y
