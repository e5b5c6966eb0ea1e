"""Validation splits the three ways the tutorials make them. The test split is never touched.

A dataset too small for the split asked for still loads (the rule is ours: no library decides
this for a user's folder): a "first N images" split (the MLP recipe's 5,000) that would take more
than half the training images becomes a stratified fraction (``SMALL_DATA_FRACTION``), decided from
the data alone so a resumed run makes the same split; a stratified split
keeps every class's only picture for training; when no class has two pictures there is no
validation split at all. Each of these adds a one-line note to ``Dataset.notes``.

A source's own validation split (an image folder's ``val/``) is the validation split, whatever the
settings say: ``check_own_val`` refuses a ``--val-split``/``--val-first`` given with one (they would do
nothing, and a user who asks to hold out part of ``train/`` should hear that it is not done), and
``validation_used`` is what the run records instead of a fraction it did not use.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from ..errors import MinivisionError
from .dataset import Dataset, using_numpy

if TYPE_CHECKING:
    import torch

SMALL_DATA_FRACTION = 0.1  # mvnet's recipe fraction, used when a recipe's first-N split does not fit
MAX_FIRST_SHARE = 0.5      # a first-N split may take at most this share of the training images


def stratified_indices(y: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, val) holding out ``fraction`` of every class, chosen with ``seed``.

    Every class with two or more images gives at least one to val and keeps at least one; a class
    with a single image keeps it for training."""
    import torch

    g = torch.Generator().manual_seed(seed)
    train_parts, val_parts = [], []
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_val = int(round(len(idx) * fraction))
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        else:
            n_val = 0
        val_parts.append(idx[:n_val])
        train_parts.append(idx[n_val:])
    return torch.sort(torch.cat(train_parts)).values, torch.sort(torch.cat(val_parts)).values


def has_own_val(ds: Dataset) -> bool:
    """The dataset brings its own validation split (an image folder's ``val/``), which ``make_val`` keeps."""
    return ds.val is not None and len(ds.val) > 0


def check_own_val(ds: Dataset, *, val_split: float | None, val_first: int | None) -> None:
    """MinivisionError (one line) when a validation rule was given explicitly (``val_split``/``val_first``
    not None) for a dataset with its own validation split, which would leave the rule unused."""
    from ..config import named

    given = [k for k, v in (("val_split", val_split), ("val_first", val_first)) if v is not None]
    if given and has_own_val(ds):
        key = given[0]
        raise MinivisionError(f"{named(key, val_split if key == 'val_split' else val_first)}: {ds.name} has its own "
                              f"val/ folder ({len(ds.val):,} pictures), which is the validation split; drop "
                              f"{named(key)}, or move val/ aside to hold out part of train/ instead")


def validation_used(ds: Dataset, *, val_split: float | None, val_first: int | None) -> str:
    """Which validation split a run used, in words (args.yaml's comment, model.json's ``dataset.validation``):
    the data's own ``val/`` folder, the first N pictures, a stratified fraction, or none. ``ds`` is the
    dataset as read, before ``make_val``."""
    if has_own_val(ds):
        return f"the data's own val/ folder ({len(ds.val):,} pictures); val_split and val_first do not apply"
    if val_first is not None and val_first <= len(ds.train) * MAX_FIRST_SHARE:
        return f"the first {val_first:,} training pictures"
    if val_first is not None:
        val_split = SMALL_DATA_FRACTION
    if val_split is not None:
        return f"a stratified, seeded {val_split:g} of the training pictures"
    return "none"


def make_val(ds: Dataset, *, val_split: float | None, val_first: int | None, seed: int) -> Dataset:
    """Return ``ds`` with a validation split (``ds.val`` None when none can be made; see the notes).

    A source's own ``val`` (an image folder's ``val/``) wins; otherwise ``val_first`` takes the first
    N training images (the MLP tutorial) or ``val_split`` a stratified, seeded fraction (default).
    A ``val_first`` over ``MAX_FIRST_SHARE`` of the training images becomes a stratified
    ``SMALL_DATA_FRACTION``; a fraction that holds out nothing leaves ``val`` None. Both add a note.
    """
    if ds.val is not None and len(ds.val) > 0:
        return ds
    n = len(ds.train)
    notes: list[str] = []
    if val_first is not None:
        if val_first <= n * MAX_FIRST_SHARE:
            if using_numpy():  # data read without torch (an exported model's reader)
                idx = np.arange(n)
            else:
                import torch

                idx = torch.arange(n)
            return dataclasses.replace(ds, train=ds.train.subset(idx[val_first:]),
                                       val=ds.train.subset(idx[:val_first]))
        notes.append(f"note: {n:,} training images are too few to hold out the first {val_first:,} for "
                     f"validation; holding out a stratified {SMALL_DATA_FRACTION:.0%} instead")
        val_split = SMALL_DATA_FRACTION
    if val_split is None:
        return dataclasses.replace(ds, val=None)
    if using_numpy():
        raise MinivisionError("the run's validation split was drawn with PyTorch's random generator, and its train "
                              "and val splits follow from it: score them with the run folder (minivision evaluate "
                              "RUN --split val), or use --split test")
    import torch

    tr, va = stratified_indices(ds.train.y, val_split, seed)
    if len(va) == 0:
        notes.append(f"note: no validation split: no class has two training images ({n} in all); "
                     "the model is trained on all of them and not validated")
        return dataclasses.replace(ds, val=None, notes=ds.notes + notes)
    singles = int((torch.bincount(ds.train.y) == 1).sum())
    if singles:
        notes.append(f"note: {singles} class(es) with a single training image keep it for training "
                     "(nothing of them is validated)")
    return dataclasses.replace(ds, train=ds.train.subset(tr), val=ds.train.subset(va), notes=ds.notes + notes)
