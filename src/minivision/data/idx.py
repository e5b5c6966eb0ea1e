"""IDX files (MNIST, Fashion-MNIST), raw or gzip-compressed, checked before they are trusted.

The format is a 4-byte magic (0, 0, type code, number of dimensions), one big-endian uint32 per
dimension, then the data. Every check that can fail names the file, so a half-downloaded or
mislabelled file gives one clear line instead of a reshape error deep in numpy.
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import numpy as np

from minivision.data.dataset import Split, as_array
from minivision.errors import DataError

# Type codes of the IDX format. Only unsigned bytes are used by the datasets we read; the others
# are named so the error can say what the file holds.
_TYPE_NAMES = {0x08: "ubyte", 0x09: "byte", 0x0B: "short", 0x0C: "int", 0x0D: "float", 0x0E: "double"}
_MAX_DIMS = 4

# train-images-idx3-ubyte, train-images.idx3-ubyte, either with .gz
_IDX_NAME = re.compile(r"^(train|t10k)-(images|labels)[-.]idx([13])-ubyte(\.gz)?$")


def gunzip(data: bytes, where: str | Path) -> bytes:
    """Decompress gzip bytes, refusing truncated or trailing-garbage streams (half downloads)."""
    parts = []
    while True:  # a gzip file may hold several members back to back
        decomp = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            parts.append(decomp.decompress(data))
        except zlib.error as exc:
            raise DataError(f"{where}: corrupt gzip data ({exc})") from None
        if not decomp.eof:
            raise DataError(f"{where}: gzip stream is truncated (incomplete download?)")
        data = decomp.unused_data
        if data[:2] != b"\x1f\x8b":
            break
    if data.strip(b"\0"):
        raise DataError(f"{where}: unexpected bytes after the gzip stream")
    return parts[0] if len(parts) == 1 else b"".join(parts)


def read_bytes(path: str | Path) -> bytes:
    """The file's content, decompressed when it is gzip (detected from the magic, not the name)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return gunzip(data, path) if data[:2] == b"\x1f\x8b" else data


def parse_idx(data: bytes, where: str | Path) -> np.ndarray:
    """Decode the bytes of one (already decompressed) IDX file into a writable uint8 array."""
    if len(data) < 4:
        raise DataError(f"{where}: not an IDX file (only {len(data)} bytes)")
    zero0, zero1, code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0:
        raise DataError(f"{where}: not an IDX file (bad magic {data[:4].hex()})")
    if code not in _TYPE_NAMES:
        raise DataError(f"{where}: unknown IDX data type code 0x{code:02x}")
    if code != 0x08:
        raise DataError(f"{where}: IDX data type {_TYPE_NAMES[code]} (0x{code:02x}) is not supported, "
                        "only unsigned bytes (0x08)")
    if not 1 <= ndim <= _MAX_DIMS:
        raise DataError(f"{where}: IDX file claims {ndim} dimensions (expected 1 to {_MAX_DIMS})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{where}: IDX header is truncated")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64))
    actual = len(data) - header
    if actual != expected:
        shape = "x".join(map(str, dims))
        problem = "truncated" if actual < expected else "has extra bytes"
        raise DataError(f"{where}: IDX file {problem}: header says {shape} = {expected:,} bytes of data, "
                        f"file has {actual:,}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (raw or .gz) into a uint8 array with the shape its header declares."""
    return parse_idx(read_bytes(path), path)


def make_split(images: np.ndarray, labels: np.ndarray, images_path: str | Path,
               labels_path: str | Path, num_classes: int | None = None) -> Split:
    """Pair an images array (N, H, W) with a labels array (N,), checking they belong together."""
    if images.ndim != 3:
        raise DataError(f"{images_path}: expected images N x H x W, got shape {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected a 1-D label file, got shape {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{labels_path}: {len(labels):,} labels but {images_path} has {len(images):,} images")
    if num_classes is not None and len(labels) and int(labels.max()) >= num_classes:
        raise DataError(f"{labels_path}: label {int(labels.max())} is out of range for {num_classes} classes")
    return Split(as_array(images[:, None]), as_array(labels.astype(np.int64)))


def find_idx_files(folder: str | Path) -> dict[str, Path]:
    """The IDX files in a folder, keyed "train-images", "train-labels", "t10k-images", "t10k-labels".

    Accepts both the official names (``train-images-idx3-ubyte``) and the dotted variant
    (``train-images.idx3-ubyte``), compressed or not; a raw file wins over its .gz.
    """
    found: dict[str, Path] = {}
    folder = Path(folder)
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return found
    for entry in entries:
        m = _IDX_NAME.match(entry.name)
        if not m or not entry.is_file():
            continue
        key = f"{m.group(1)}-{m.group(2)}"
        if key not in found or found[key].suffix == ".gz":
            found[key] = entry
    return found
