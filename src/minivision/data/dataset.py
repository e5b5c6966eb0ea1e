"""The one in-memory form every source is read into: uint8 N x C x H x W images + int64 labels.

The readers make numpy arrays and hand them to ``as_array``, which makes them torch tensors (no copy),
except inside ``numpy_arrays()``: there they stay numpy arrays, so a reader of an exported model
(onnx_runtime.py) reads the same data, by the same code, without importing PyTorch.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from minivision.errors import MinivisionError

_NUMPY = contextvars.ContextVar("minivision_numpy_arrays", default=False)


@contextlib.contextmanager
def numpy_arrays() -> Iterator[None]:
    """Within this block the readers (``load_dataset`` and the functions it calls) return splits of numpy
    arrays (uint8 (N, C, H, W), int64 (N,)) instead of torch tensors, and never import torch."""
    token = _NUMPY.set(True)
    try:
        yield
    finally:
        _NUMPY.reset(token)


def using_numpy() -> bool:
    """True inside ``numpy_arrays()``."""
    return _NUMPY.get()


def as_array(a: np.ndarray) -> Any:
    """A reader's numpy array as the splits hold it: a torch tensor sharing its memory (``torch.from_numpy``),
    or the array itself inside ``numpy_arrays()``."""
    if _NUMPY.get():
        return a
    import torch

    return torch.from_numpy(a)


@dataclass
class Split:
    """One split of a dataset. ``x`` is uint8 (N, C, H, W), ``y`` int64 (N,)."""

    x: Any  # torch.Tensor, or np.ndarray inside ``numpy_arrays()``
    y: Any

    def __post_init__(self) -> None:
        if str(self.x.dtype).removeprefix("torch.") != "uint8" or self.x.ndim != 4:
            raise ValueError(f"images must be uint8 N x C x H x W, got {self.x.dtype} {tuple(self.x.shape)}")
        if str(self.y.dtype).removeprefix("torch.") != "int64" or tuple(self.y.shape) != (self.x.shape[0],):
            raise ValueError(f"labels must be int64 of length {self.x.shape[0]}, got {tuple(self.y.shape)}")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, index: Any) -> Split:
        return Split(self.x[index], self.y[index])


@dataclass
class Dataset:
    """A named dataset with its class names and splits.

    ``val`` is None until a split rule makes one (``data.split``), unless the source has its own
    (a ``val/`` folder). ``skipped`` lists ``(path, reason)`` for files of an image folder that
    could not be used; they are reported, never silently used.
    """

    name: str
    classes: list[str]
    train: Split
    test: Split | None = None
    val: Split | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    source: str = ""  # where it was read from, for reports
    notes: list[str] = field(default_factory=list)  # one-line notes for the user (a class left out, ...)
    # how an image folder's pictures were converted (photo.PictureConversion: working size, fit), kept
    # as the model's photo conversion so predict converts a photo the same way; None for other sources
    conversion: Any = None

    @property
    def channels(self) -> int:
        return int(self.train.x.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.train.x.shape[2]), int(self.train.x.shape[3])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def describe(self) -> str:
        parts = [f"{name} {len(s):,}" for name, s in (("train", self.train), ("val", self.val),
                                                      ("test", self.test)) if s is not None]
        h, w = self.image_size
        return f"{self.name}: {', '.join(parts)} images, {self.channels}x{h}x{w}, {self.num_classes} classes"


def split_for(ds: Dataset, name: str) -> Split:
    """The split ``name`` (train, val or test) of ``ds``; MinivisionError when it is missing or empty."""
    split = getattr(ds, name, None)
    if split is None or len(split) == 0:
        raise MinivisionError(f"dataset {ds.name} has no {name} split")
    return split
