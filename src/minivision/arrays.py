"""Images given to the Python API as arrays, in the layouts Keras tutorials use, turned into the one
form the rest of minivision takes (uint8 N x C x H x W), with a note saying what was assumed.

Accepted (``Classifier.fit/predict/predict_proba/score/features``): N x H x W (grey, as
``keras.datasets.fashion_mnist.load_data()`` gives), N x H x W x C (channels-last, Keras' default),
N x C x H x W (PyTorch's), one H x W or H x W x C / C x H x W picture; numpy arrays, torch tensors or
lists of equally sized arrays; uint8 0-255, other integers 0-255, floats 0-1 (``x / 255.0``, the
tutorials' scaling) or floats 0-255. Anything else is refused in one line that says what was found.
Our own code rather than a library's: which layouts and scales are meant is the product's decision.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np
import torch

from .errors import MinivisionError, Note


def note(message: str) -> None:
    """Give a ``Note`` warning attributed to the first caller outside minivision (the user's line), so
    Python shows it once per place in the user's code."""
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    level, frame = 2, sys._getframe(1)  # stacklevel 2: the caller of note()
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(here + os.sep):
        level, frame = level + 1, frame.f_back
    warnings.warn(Note(message), stacklevel=level)


def is_array(x: Any) -> bool:
    """An array of pictures (numpy, torch), a non-empty list of arrays, or nested lists of numbers
    (``x.tolist()``); not paths or PIL images."""
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return True
    if not isinstance(x, (list, tuple)) or not x:
        return False
    if all(isinstance(v, (np.ndarray, torch.Tensor)) for v in x):
        return True
    return all(isinstance(v, (list, tuple)) for v in x)  # nested lists: x.tolist()


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, (list, tuple)) and not all(isinstance(v, (np.ndarray, torch.Tensor)) for v in x):
        try:  # nested lists of numbers (x.tolist()): one conversion, not one per row
            return np.asarray(x)
        except ValueError:  # ragged (numpy refuses to make an array of unequal rows)
            raise MinivisionError("the pictures in the list have different sizes; give them all at the "
                                  "model's size") from None
    if isinstance(x, (list, tuple)):
        shapes = {tuple(np.shape(v)) for v in x}
        if len(shapes) > 1:
            sizes = ", ".join(map(str, sorted(shapes)[:3])) + (", ..." if len(shapes) > 3 else "")
            raise MinivisionError(f"the pictures in the list have different sizes ({sizes}); give them all at "
                                  f"the model's size")
        return np.stack([_numpy(v) for v in x])
    return np.asarray(x)


def _layout(shape: tuple[int, ...], channels: int | None, size: tuple[int, int] | None) -> tuple[str, str]:
    """(layout, what to say): layout is one of NCHW, NHWC, NHW, CHW, HWC, HW."""
    n = len(shape)
    if channels is not None and size is not None:
        c, (h, w) = channels, size
        if n == 4 and shape[1:] == (c, h, w):
            return "NCHW", ""
        if n == 4 and shape[1:] == (h, w, c):
            return "NHWC", f"{shape[0]} pictures, channels last ({h} x {w} x {c})"
        if n == 3 and c == 1 and shape[1:] == (h, w):
            return "NHW", ""
        if n == 3 and shape == (c, h, w):
            return "CHW", f"one {c} x {h} x {w} picture"
        if n == 3 and shape == (h, w, c):
            return "HWC", f"one {h} x {w} x {c} picture, channels last"
        if n == 2 and c == 1 and shape == (h, w):
            return "HW", f"one {h} x {w} picture"
        kind = "grey" if c == 1 else f"{c}-channel"
        forms = ([f"N x {h} x {w}"] if c == 1 else []) + [f"N x {h} x {w} x {c}", f"N x {c} x {h} x {w}"]
        raise MinivisionError(f"the model takes {kind} pictures of {h} x {w} ({', '.join(forms)}, or one picture); "
                              f"got an array of shape {tuple(shape)}")
    # no model yet (fit): read the layout from the shape itself
    if n == 4 and shape[1] in (1, 3) and shape[3] not in (1, 3):
        return "NCHW", ""
    if n == 4 and shape[3] in (1, 3):
        return "NHWC", f"{shape[0]} pictures, channels last ({shape[1]} x {shape[2]} x {shape[3]})"
    if n == 3:
        return "NHW", ""
    raise MinivisionError(f"images for training must be N x H x W (grey), N x H x W x C or N x C x H x W "
                          f"(C = 1 or 3); got an array of shape {tuple(shape)}")


def _pixels(a: np.ndarray) -> tuple[np.ndarray, str]:
    """uint8 copy of ``a`` and what was assumed about its values."""
    if a.dtype == np.uint8:
        return np.array(a, dtype=np.uint8, copy=True), ""  # a copy: a read-only array stays untouched
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise MinivisionError(f"pixel values must be numbers (uint8 0-255 or float 0-1), got {a.dtype}")
    if a.size == 0:
        return a.astype(np.uint8), ""
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        raise MinivisionError("the pictures hold NaN or infinite values")
    lo, hi = float(a.min()), float(a.max())
    if np.issubdtype(a.dtype, np.floating) and lo >= 0 and hi <= 1:
        return np.rint(a * 255.0).astype(np.uint8), f"{a.dtype} values 0-1, scaled to 0-255"
    if lo >= 0 and hi <= 255:
        return np.rint(a).astype(np.uint8), f"{a.dtype} values 0-255"
    raise MinivisionError(f"pixel values must be 0-1 or 0-255; these run from {lo:.4g} to {hi:.4g} (if they are "
                          f"normalised, give the pictures before normalising: the model normalises them itself)")


def images_from_array(x: Any, channels: int | None = None, size: tuple[int, int] | None = None,
                      ) -> tuple[torch.Tensor, str]:
    """uint8 tensor (N, C, H, W) from an array in one of the module docstring's layouts, and a one-line
    note of what was assumed ('' for the plain uint8 N x H x W / N x C x H x W). ``channels``/``size``:
    the model's input, which decides between layouts; None when training (read from the shape).
    Raises MinivisionError naming the shape or values it cannot take."""
    a = _numpy(x)
    if a.dtype == object:
        raise MinivisionError("the pictures are not one array of numbers (an object array); give an array of "
                              "shape N x H x W or a list of equally sized arrays")
    layout, said = _layout(tuple(a.shape), channels, size)
    a, values = _pixels(a)
    a = {"NCHW": a, "NHWC": a.transpose(0, 3, 1, 2) if a.ndim == 4 else a, "NHW": a[:, None],
         "CHW": a[None], "HWC": a.transpose(2, 0, 1)[None] if a.ndim == 3 else a, "HW": a[None, None]}[layout]
    what = "; ".join(s for s in (said, values) if s)
    return torch.from_numpy(np.ascontiguousarray(a)), (f"took the array as {what}" if what else "")


def label_values(y: Any, n: int) -> tuple[np.ndarray, str]:
    """``y`` as a 1-D array of N labels, int64 or strings, and a note ('' when nothing was assumed): integer
    labels, float labels that are whole numbers (``y.astype(float)``), class names, or one-hot rows (N, K)
    as Keras' ``to_categorical`` gives (taken as their column index). The one label parsing of ``fit`` and
    ``score``. Raises MinivisionError (one line) for another length or labels that are not whole numbers."""
    a = _numpy(y) if not isinstance(y, (list, tuple)) or is_array(y) else np.asarray(y)
    said = ""
    if a.ndim == 2 and a.shape[0] == n and a.shape[1] >= 2 and np.isin(a, (0, 1)).all() and (a.sum(1) == 1).all():
        a, said = a.argmax(1), f"labels given one-hot ({a.shape[1]} columns)"
    if a.ndim != 1 or len(a) != n:
        raise MinivisionError(f"expected {n} labels, one per picture; got labels of shape {tuple(a.shape)}")
    if a.dtype.kind in "US" or a.dtype == object:
        return np.array([str(v) for v in a], dtype=object), said
    if a.dtype.kind == "f":
        if not np.isfinite(a).all() or (a != np.rint(a)).any():
            raise MinivisionError("labels must be whole numbers (0, 1, 2, ...) or class names")
        a = a.astype(np.int64)
    if a.dtype.kind not in "iu":
        raise MinivisionError(f"labels must be whole numbers (0, 1, 2, ...) or class names, got {a.dtype}")
    if n and a.min() < 0:
        raise MinivisionError(f"labels must be 0 or more, got {int(a.min())}")
    return np.array(a, dtype=np.int64), said


def labels_from_array(y: Any, n: int) -> tuple[torch.Tensor, list[str], str]:
    """int64 labels (N,), the class names and a note, from ``y`` as ``label_values`` takes it: integers
    0..K-1 (names "0".."K-1"), class names (strings, sorted), or one-hot rows (N, K).
    Raises MinivisionError for another length or non-integer labels."""
    a, said = label_values(y, n)
    if a.dtype == object:
        names = sorted(set(a.tolist()))
        index = {c: i for i, c in enumerate(names)}
        return torch.tensor([index[v] for v in a], dtype=torch.int64), names, said
    k = int(a.max()) + 1 if n else 0
    return torch.from_numpy(a), [str(i) for i in range(k)], said
