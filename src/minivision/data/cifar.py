"""CIFAR-10 in its two official forms: binary batches and "python version" pickled batches.

Both come as a folder of batch files or as the published .tar.gz, which is read in memory (no
extraction to disk, so a hostile archive cannot write outside a folder). The python batches are
pickles, and unpickling runs code, so they go through an unpickler that can build only numpy
arrays and plain containers; prefer the binary version, which needs no unpickling at all.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from minivision.data.dataset import Dataset, Split, as_array
from minivision.errors import DataError

CLASSES: list[str] = ["airplane", "automobile", "bird", "cat", "deer",
                      "dog", "frog", "horse", "ship", "truck"]
_SIDE, _PIXELS = 32, 3 * 32 * 32
_RECORD = 1 + _PIXELS
_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_TEST = "test_batch"
_MEMBER_LIMIT = 200 * 1024 * 1024  # a real batch is 30 MB; refuse absurd archive members


def _safe_reconstruct() -> dict[tuple[str, str], Any]:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    def latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
        # protocol-2 pickles written by Python 3 store bytes as _codecs.encode(text, "latin1")
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            raise pickle.UnpicklingError("_codecs.encode is allowed for latin1 text only")
        return text.encode("latin1")

    return {
        ("_codecs", "encode"): latin1_bytes,
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can create only numpy arrays/dtypes (plus dicts, lists, str, bytes, numbers).

    CIFAR's batches were pickled by Python 2 with numpy; those need exactly the numpy names below
    (plus latin1 ``_codecs.encode`` for copies re-pickled by Python 3 at protocol 2). Any other
    global (os.system, builtins.eval, ...) is refused, so a crafted file cannot run code.
    """

    allowed = _safe_reconstruct()

    def __init__(self, file: io.BytesIO, where: str) -> None:
        super().__init__(file, encoding="latin1")
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise DataError(f"{self.where}: refused to unpickle {module}.{name} (not a CIFAR batch; "
                            "only numpy arrays are allowed)") from None


def _unpickle(data: bytes, where: str) -> Any:
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(data), where).load()  # safe: restricted unpickler
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{where}: not a readable CIFAR python batch ({type(exc).__name__}: {exc})") from None


def _check_labels(labels: np.ndarray, where: str) -> np.ndarray:
    if len(labels) and int(labels.max()) >= len(CLASSES):
        raise DataError(f"{where}: label {int(labels.max())} is out of range (CIFAR-10 labels are 0-9)")
    return labels.astype(np.int64)


def parse_binary_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Records of 1 label byte + 3,072 pixel bytes (R, G, B planes) -> (N, 3, 32, 32) and (N,)."""
    if len(data) == 0 or len(data) % _RECORD:
        raise DataError(f"{where}: size {len(data):,} bytes is not a multiple of the {_RECORD}-byte "
                        "CIFAR-10 record (truncated or not a CIFAR-10 binary batch)")
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, _RECORD)
    labels = _check_labels(records[:, 0], where)
    images = records[:, 1:].reshape(-1, 3, _SIDE, _SIDE).copy()
    return images, labels


def parse_python_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch (dict with 'data' N x 3072 uint8 and 'labels') via the restricted unpickler."""
    batch = _unpickle(data, where)
    if not isinstance(batch, dict):
        raise DataError(f"{where}: not a CIFAR python batch (expected a dict)")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    images, labels = batch.get("data"), batch.get("labels")
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2 \
            or images.shape[1] != _PIXELS:
        raise DataError(f"{where}: 'data' is not a uint8 N x {_PIXELS} array")
    if not isinstance(labels, list | np.ndarray) or len(labels) != len(images):
        raise DataError(f"{where}: 'labels' missing or not one per image")
    try:
        label_array = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise DataError(f"{where}: 'labels' are not integers") from None
    if len(label_array) and int(label_array.min()) < 0:
        raise DataError(f"{where}: negative label {int(label_array.min())}")
    return images.reshape(-1, 3, _SIDE, _SIDE).copy(), _check_labels(label_array, where)


def _members_from_archive(archive: str | Path | io.BytesIO, where: str) -> dict[str, bytes]:
    """Batch files of a CIFAR-10 .tar.gz, read in memory; names are checked, nothing is extracted."""
    wanted = {*(f"{n}.bin" for n in _TRAIN), f"{_TEST}.bin", *_TRAIN, _TEST}
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(archive if isinstance(archive, str | Path) else None, mode="r:*",
                          fileobj=archive if isinstance(archive, io.BytesIO) else None) as tar:
            for member in tar:
                pure = PurePosixPath(member.name)
                if not member.isfile() or pure.is_absolute() or ".." in pure.parts:
                    continue
                if pure.name not in wanted:
                    continue
                if member.size > _MEMBER_LIMIT:
                    raise DataError(f"{where}: archive member {member.name} is implausibly large")
                handle = tar.extractfile(member)
                if handle is not None:
                    files[pure.name] = handle.read()
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise DataError(f"{where}: not a readable .tar.gz archive ({type(exc).__name__}: {exc})") from None
    return files


def batch_folder(folder: str | Path) -> Path | None:
    """The folder holding extracted batches: ``folder`` itself or its cifar-10-batches-{bin,py}."""
    folder = Path(folder)
    for candidate in (folder, folder / "cifar-10-batches-bin", folder / "cifar-10-batches-py"):
        markers = (f"{_TEST}.bin", _TEST, "data_batch_1.bin", "data_batch_1")
        if any((candidate / n).is_file() for n in markers):
            return candidate
    return None


def _members_from_folder(folder: Path) -> dict[str, bytes]:
    candidate = batch_folder(folder)
    if candidate is not None:
        names = [*(f"{n}.bin" for n in _TRAIN), f"{_TEST}.bin", *_TRAIN, _TEST]
        return {n: (candidate / n).read_bytes() for n in names if (candidate / n).is_file()}
    for archive in ("cifar-10-binary.tar.gz", "cifar-10-python.tar.gz"):
        if (folder / archive).is_file():
            return _members_from_archive(folder / archive, str(folder / archive))
    return {}


def _assemble(files: dict[str, bytes], where: str) -> Dataset:
    binary = any(name.endswith(".bin") for name in files)
    suffix = ".bin" if binary else ""
    parse = parse_binary_batch if binary else parse_python_batch
    missing = [n + suffix for n in [*_TRAIN, _TEST] if n + suffix not in files]
    if missing:
        raise DataError(f"{where}: CIFAR-10 batch files missing: {', '.join(missing)}")
    train = [parse(files[n + suffix], f"{where}:{n + suffix}") for n in _TRAIN]
    test_x, test_y = parse(files[_TEST + suffix], f"{where}:{_TEST + suffix}")
    train_x = np.concatenate([x for x, _ in train])
    train_y = np.concatenate([y for _, y in train])
    return Dataset(
        name="cifar10", classes=list(CLASSES),
        train=Split(as_array(train_x), as_array(train_y)),
        test=Split(as_array(test_x), as_array(test_y)),
        source=where,
    )


def read_cifar_archive(archive: str | Path | bytes, where: str | None = None) -> Dataset:
    """Read cifar-10-binary.tar.gz or cifar-10-python.tar.gz (a path or its bytes) without extracting."""
    label = where or (str(archive) if not isinstance(archive, bytes) else "<cifar archive>")
    source = io.BytesIO(archive) if isinstance(archive, bytes) else Path(archive)
    files = _members_from_archive(source, label)
    if not files:
        raise DataError(f"{label}: no CIFAR-10 batch files in this archive")
    return _assemble(files, label)


def read_cifar(path: str | Path) -> Dataset:
    """Read CIFAR-10 from an archive, a folder of batches (or holding the archive), or one .bin batch.

    A single batch file becomes a training split only, which is handy for quick experiments.
    """
    path = Path(path)
    if path.is_dir():
        files = _members_from_folder(path)
        if not files:
            raise DataError(f"{path}: no CIFAR-10 batches here (expected data_batch_1.bin ... "
                            "test_batch.bin, the python batches, or cifar-10-binary.tar.gz)")
        return _assemble(files, str(path))
    if not path.is_file():
        raise DataError(f"{path}: no such file or folder")
    if path.name.endswith((".tar.gz", ".tgz", ".tar")):
        return read_cifar_archive(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    parse = parse_binary_batch if path.suffix == ".bin" else parse_python_batch
    x, y = parse(data, str(path))
    return Dataset(name="cifar10", classes=list(CLASSES),
                   train=Split(as_array(x), as_array(y)), source=str(path))
