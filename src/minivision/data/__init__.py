"""Every data source, read into one in-memory form: ``Dataset`` of uint8 N x C x H x W splits.

``load_dataset`` is the single entry point the CLI and the API use, so a name, a CSV file, an IDX
folder, a CIFAR-10 archive and a folder of pictures all behave the same downstream.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import numpy as np

from minivision.data import cifar, idx
from minivision.data.csvfile import read_pixel_table
from minivision.data.dataset import Dataset, Split, as_array
from minivision.data.sources import DATASETS, FASHION_CLASSES, load_named
from minivision.errors import DataError

__all__ = ["DATASETS", "Dataset", "Split", "canonical_name", "load_dataset"]

_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "fmnist": "fashion-mnist",
            "cifar-10": "cifar10", "cifar_10": "cifar10"}


def canonical_name(name: str) -> str:
    """A registered dataset's name as ``load_dataset`` knows it (``FMNIST`` -> ``fashion-mnist``); other
    text unchanged but for case."""
    key = str(name).lower()
    return _ALIASES.get(key, key)


def _digit_classes(labels: list[Any], hint: str) -> list[str]:
    """Class names for label-only sources: Fashion-MNIST's names when the file says fashion."""
    top = max(int(y.max()) for y in labels if len(y))
    if top <= 9 and "fashion" in hint.lower():
        return list(FASHION_CLASSES)
    return [str(i) for i in range(top + 1)]


def _label_summary(values: list[int]) -> str:
    if values == list(range(values[0], values[-1] + 1)) and len(values) > 2:
        return f"{values[0]}-{values[-1]}"
    return ", ".join(map(str, values[:12])) + (", ..." if len(values) > 12 else "")


def classes_from_labels(labels: list[np.ndarray | list[str]], hint: str
                        ) -> tuple[list[str], list[Any], list[str]]:
    """Class names and int64 label tensors (0..K-1) for the label columns of a CSV file and its test file.

    The classes are the labels found, not 0 to the largest label: numbers 0..K-1 keep their meaning
    (Fashion-MNIST's names when ``hint``, the file name, says fashion); other numbers (``1..10``, ``0, 2, 5``)
    become classes named by the number, in numeric order, with a note saying what was found; names
    (``Ankle boot``) become the class names, sorted as a folder's are. Returns (classes, labels, notes)."""
    if all(isinstance(y, np.ndarray) for y in labels):
        values = sorted({int(v) for y in labels for v in np.unique(y)})
        fashion = "fashion" in hint.lower() and values[-1] <= 9
        if values == list(range(len(values))):
            classes = [FASHION_CLASSES[v] if fashion else str(v) for v in values]
            return classes, [as_array(np.asarray(y, dtype=np.int64)) for y in labels], []
        lookup = np.full(values[-1] + 1, -1, dtype=np.int64)
        lookup[values] = np.arange(len(values))
        classes = [FASHION_CLASSES[v] if fashion else str(v) for v in values]
        note = (f"{hint}: labels {_label_summary(values)} found: {len(values)} classes"
                + (f" ({', '.join(classes[:3])}{', ...' if len(classes) > 3 else ''})" if fashion else
                   ", named by their label") + (" (no class 0)" if values[0] > 0 else ""))
        return classes, [as_array(lookup[np.asarray(y, dtype=np.int64)]) for y in labels], [note]
    texts = [[str(v) for v in y.tolist()] if isinstance(y, np.ndarray) else y for y in labels]
    classes = sorted({t for y in texts for t in y})
    index = {c: i for i, c in enumerate(classes)}
    return classes, [as_array(np.array([index[t] for t in y], dtype=np.int64)) for y in texts], []


def _read_csv(path: Path, test_data: Path | None) -> Dataset:
    table = read_pixel_table(path)
    test = read_pixel_table(test_data) if test_data is not None else None
    if test is not None and test.x.shape[1:] != table.x.shape[1:]:
        raise DataError(f"{test_data}: images are {tuple(test.x.shape[2:])}, "
                        f"but {path} has {tuple(table.x.shape[2:])}")
    tables = [table] + ([test] if test is not None else [])
    classes, ys, notes = classes_from_labels([t.labels for t in tables], path.name)
    return Dataset(name=path.stem, classes=classes, train=Split(table.x, ys[0]),
                   test=Split(test.x, ys[1]) if test is not None else None, source=str(path),
                   notes=[n for t in tables for n in t.notes] + notes)


def _read_idx_folder(folder: Path) -> Dataset:
    files = idx.find_idx_files(folder)
    splits = {}
    for split in ("train", "t10k"):
        images, labels = files.get(f"{split}-images"), files.get(f"{split}-labels")
        if images is None and labels is None and split == "t10k":
            continue
        if images is None or labels is None:
            missing = f"{split}-{'images-idx3' if images is None else 'labels-idx1'}-ubyte[.gz]"
            raise DataError(f"{folder}: IDX folder is missing {missing}")
        splits[split] = idx.make_split(idx.read_idx(images), idx.read_idx(labels), images, labels)
    if "train" not in splits:
        raise DataError(f"{folder}: IDX folder has no train-images/train-labels files")
    classes = _digit_classes([s.y for s in splits.values()], folder.name)
    return Dataset(name=folder.name, classes=classes, train=splits["train"], test=splits.get("t10k"),
                   source=str(folder))


def _is_cifar_file(path: Path) -> bool:
    return path.name.endswith((".tar.gz", ".tgz", ".bin")) or path.name in ("test_batch", "data_batch_1")


def _attach_test(ds: Dataset, test_ds: Dataset, test_data: str | Path) -> Dataset:
    """Use another source's images as the test split, mapping its classes onto ``ds``'s by name."""
    extra = [c for c in test_ds.classes if c not in ds.classes]
    if extra:
        raise DataError(f"{test_data}: classes {', '.join(extra[:5])} are not in the training data")
    if test_ds.train.x.shape[1:] != ds.train.x.shape[1:]:
        raise DataError(f"{test_data}: images are {tuple(test_ds.train.x.shape[1:])} (C, H, W), "
                        f"training data has {tuple(ds.train.x.shape[1:])}")
    remap = np.array([ds.classes.index(c) for c in test_ds.classes], dtype=np.int64)
    ds.test = Split(test_ds.train.x, as_array(remap[np.asarray(test_ds.train.y)]))
    ds.skipped += test_ds.skipped
    return ds


def load_dataset(name_or_path: str | Path = "fashion-mnist", data_dir: str | Path | None = None,
                 test_data: str | Path | None = None, test_only: bool = False, *, imgsz: int | None = None,
                 fit: str | None = None, conversion: Any = None) -> Dataset:
    """Load a named dataset or read a CSV file, IDX folder, CIFAR-10 archive/batches or image folder.

    ``data_dir`` is where named datasets are looked for and downloaded to; ``test_data`` is a
    second file or folder of the same kind whose images become the test split. ``test_only`` is a
    hint: named IDX datasets then skip their training files (the train split comes back empty).
    ``imgsz``, ``fit``, ``conversion``: an image folder's working size (``folder.read_image_folder``).
    """
    name_or_path = str(name_or_path)
    key = _ALIASES.get(name_or_path.lower(), name_or_path.lower())
    if key in DATASETS:  # a registered name wins; write ./mnist for a local folder of that name
        if test_data is not None:
            raise DataError(f"{name_or_path} has its own test split; --test-data is for files and folders")
        return load_named(key, data_dir, test_only=test_only)
    path = Path(name_or_path).expanduser()
    if not path.exists():
        looks_like_path = "/" in name_or_path or "\\" in name_or_path or bool(path.suffix)
        if looks_like_path:
            raise DataError(f"{path}: no such file or folder")
        close = difflib.get_close_matches(key, list(DATASETS) + list(_ALIASES), n=1)
        hint = f"did you mean {_ALIASES.get(close[0], close[0])}? " if close else ""
        raise DataError(f"unknown dataset {name_or_path!r}: {hint}(known: {', '.join(DATASETS)}; "
                        "or give a CSV file, an IDX or image folder, or a CIFAR-10 archive)")
    test_path = Path(test_data).expanduser() if test_data is not None else None
    if test_path is not None and not test_path.exists():
        raise DataError(f"{test_path}: no such file or folder")
    if path.is_file() and path.name.lower().endswith((".csv", ".csv.gz")):
        return _read_csv(path, test_path)
    if path.is_file() and idx.find_idx_files(path.parent).get("train-images") == path:
        path = path.parent  # pointed at the images file of an IDX folder
    if path.is_file() and _is_cifar_file(path):
        ds = cifar.read_cifar(path)
    elif path.is_file():
        raise DataError(f"{path}: unsupported file type (expected .csv, a CIFAR-10 .tar.gz/.bin, "
                        "an IDX folder or an image folder)")
    elif idx.find_idx_files(path):
        ds = _read_idx_folder(path)
    elif cifar.batch_folder(path) or (path / "cifar-10-binary.tar.gz").is_file() \
            or (path / "cifar-10-python.tar.gz").is_file():
        ds = cifar.read_cifar(path)
    else:  # imported here: the folder reader brings Pillow's plugins and a process pool, which the other
        # sources (and evaluate of an .onnx export on them) do without
        from minivision.data.folder import read_image_folder

        ds = read_image_folder(path, imgsz=imgsz, fit=fit, conversion=conversion)
    if test_path is not None:
        ds = _attach_test(ds, load_dataset(str(test_path), conversion=ds.conversion), test_path)
    return ds
