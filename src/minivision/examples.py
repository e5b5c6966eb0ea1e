"""A few pictures of each class kept in the run folder (``examples.safetensors``), for the web page's
"try an example" strip and the report: taken from the test split (else the validation split) at the
end of training, so a served model can show what it knows without its dataset at hand.

    save_examples(run_dir, ds.test, ds.classes)       # at the end of training
    load_examples(run_dir)  -> [(class_index, uint8 (C, H, W)), ...] or []
"""

from __future__ import annotations

from pathlib import Path

import torch

from .fileio import load_tensors, save_tensors

FILE = "examples.safetensors"
PER_CLASS = 3


def save_examples(run_dir: Path, split, num_classes: int, per_class: int = PER_CLASS, seed: int = 0) -> Path | None:
    """Write up to ``per_class`` pictures of each class of ``split`` (a data.dataset.Split: uint8 x
    (N, C, H, W), int64 y (N,)), chosen with a seeded generator, as ``images`` uint8 (M, C, H, W) and
    ``labels`` int64 (M,) in ``run_dir/examples.safetensors``; None (nothing written) for an empty split."""
    if split is None or len(split) == 0:
        return None
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(split), generator=g)
    picked: list[int] = []
    counts = [0] * num_classes
    for i in order.tolist():
        c = int(split.y[i])
        if 0 <= c < num_classes and counts[c] < per_class:
            counts[c] += 1
            picked.append(i)
            if len(picked) == per_class * num_classes:
                break
    picked.sort(key=lambda i: (int(split.y[i]), i))
    idx = torch.tensor(picked, dtype=torch.long)
    path = run_dir / FILE
    save_tensors(path, {"images": split.x[idx].contiguous(), "labels": split.y[idx].to(torch.int64).contiguous()})
    return path


def load_examples(run_dir: Path) -> list[tuple[int, torch.Tensor]]:
    """``[(class index, uint8 (C, H, W))]`` from ``run_dir/examples.safetensors``, class by class; ``[]``
    when the run has none (trained before they were kept) or the file is unreadable."""
    path = Path(run_dir) / FILE
    if not path.is_file():
        return []
    try:
        t = load_tensors(path)
        images, labels = t["images"], t["labels"]
    except Exception:  # a damaged file only loses the examples, never the model
        return []
    if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(labels):
        return []
    return [(int(c), img) for c, img in zip(labels.tolist(), images, strict=True)]
