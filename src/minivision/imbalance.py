"""Training on imbalanced classes: loss weights from the training counts and a class-balanced batch order.

Two well-known corrections, settings of ``config.TrainConfig``:

* ``--class-weight balanced``: each class's cross-entropy term is weighted by
  ``n_samples / (n_classes * count)``, scikit-learn's "balanced" rule
  (``sklearn.utils.class_weight.compute_class_weight``, the heuristic of King & Zeng, 2001), from the counts of
  the training split (after the validation split was taken out). A class with no training picture gets weight 0:
  it has no term to weight.
* ``--sampler balanced``: each position of an epoch draws its picture with replacement, with probability
  ``1 / (n_classes_present * count[label])``, so every class is equally likely in every batch (as PyTorch's
  ``WeightedRandomSampler`` with those weights). An epoch keeps its usual number of steps (``len(train)``
  draws); minority pictures are seen several times in an epoch, majority pictures not all of them.

The epoch's order is drawn from a generator seeded by (seed, epoch) (the trainer's stream 0, as the plain
permutation), so it is reproducible and a run resumed mid-epoch takes the same batches. Our own code because
each is a few lines on tensors the trainer already holds; torch's ``WeightedRandomSampler`` needs a
``DataLoader``, which minivision does not use (batches are made by indexing the in-memory tensor).
"""

from __future__ import annotations

import torch

CLASS_WEIGHTS = ("none", "balanced")
SAMPLERS = ("shuffle", "balanced")


def class_counts(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """int64 (K,): pictures per class in labels ``y`` (int64 (N,), values in [0, K))."""
    return torch.bincount(y.cpu(), minlength=num_classes)


def balanced_class_weights(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """float32 (K,): scikit-learn's "balanced" weights ``n_samples / (n_classes * count)`` for labels ``y``
    (int64 (N,)); ``n_classes`` counts the classes that have pictures (as scikit-learn computes them over the
    classes present in ``y``); a class without pictures gets 0. A balanced split gives every class 1.0."""
    counts = class_counts(y, num_classes).double()
    present = int((counts > 0).sum())
    weights = torch.where(counts > 0, len(y) / (max(present, 1) * counts.clamp(min=1)), torch.zeros_like(counts))
    return weights.float()


def loss_weights(mode: str | None, y: torch.Tensor, num_classes: int,
                 device: torch.device | str = "cpu") -> torch.Tensor | None:
    """The ``weight`` for ``F.cross_entropy`` under ``--class-weight mode``: float32 (K,) on ``device`` for
    ``balanced``, None for ``none`` (or None: a run recorded before the setting existed)."""
    if mode in (None, "none"):
        return None
    if mode != "balanced":
        raise ValueError(f"class weight {mode!r}: expected one of {', '.join(CLASS_WEIGHTS)}")
    return balanced_class_weights(y, num_classes).to(device)


def epoch_order(sampler: str | None, y: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """int64 (N,): the indexes of the training pictures in the order an epoch takes them, N = ``len(y)``.

    ``shuffle`` (or None): ``torch.randperm(N, generator=generator)``, every picture once (the trainer's order
    before the setting existed, draw for draw). ``balanced``: N draws with replacement, picture i with probability
    proportional to ``1 / count[y[i]]``, so each class present is equally likely at every position.
    ``generator``: a CPU generator seeded by the caller from (seed, epoch)."""
    n = len(y)
    if sampler in (None, "shuffle"):
        return torch.randperm(n, generator=generator)
    if sampler != "balanced":
        raise ValueError(f"sampler {sampler!r}: expected one of {', '.join(SAMPLERS)}")
    labels = y.cpu()
    counts = class_counts(labels, num_classes).double()
    p = 1.0 / counts[labels]
    return torch.multinomial(p, n, replacement=True, generator=generator)


def describe(class_weight: str | None, sampler: str | None, y: torch.Tensor, classes: list[str]) -> str | None:
    """One log line saying what the correction does on this training split, or None when none is asked."""
    counts = class_counts(y, len(classes))
    lo, hi = int(counts[counts > 0].min()), int(counts.max())
    ratio = f"training counts {lo:,}-{hi:,} per class ({hi / max(lo, 1):.1f}:1)"
    if class_weight == "balanced":
        w = balanced_class_weights(y, len(classes))
        return f"class weights (balanced): {w[counts > 0].min():.3g}-{w.max():.3g}; {ratio}"
    if sampler == "balanced":
        return f"balanced sampler: every class equally likely in each batch (drawn with replacement); {ratio}"
    return None
