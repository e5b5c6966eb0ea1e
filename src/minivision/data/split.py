"""Validation splits the three ways the tutorials make them. The test split is never touched."""

from __future__ import annotations

import dataclasses

import torch

from ..errors import MinivisionError
from .dataset import Dataset


def stratified_indices(y: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, val) holding out ``fraction`` of every class, chosen with ``seed``."""
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


def make_val(ds: Dataset, *, val_split: float | None, val_first: int | None, seed: int) -> Dataset:
    """Return ``ds`` with a validation split.

    A source's own ``val`` (an image folder's ``val/``) wins; otherwise ``val_first`` takes the first
    N training images (the MLP tutorial) or ``val_split`` a stratified, seeded fraction (default).
    """
    if ds.val is not None and len(ds.val) > 0:
        return ds
    n = len(ds.train)
    if val_first is not None:
        if val_first >= n:
            raise MinivisionError(f"--val-first {val_first} leaves no training images (the train split has {n})")
        idx = torch.arange(n)
        return dataclasses.replace(ds, train=ds.train.subset(idx[val_first:]), val=ds.train.subset(idx[:val_first]))
    if val_split is None:
        return dataclasses.replace(ds, val=None)
    tr, va = stratified_indices(ds.train.y, val_split, seed)
    if len(va) == 0 or len(tr) == 0:
        raise MinivisionError(f"--val-split {val_split} leaves an empty split ({n} training images)")
    return dataclasses.replace(ds, train=ds.train.subset(tr), val=ds.train.subset(va))
