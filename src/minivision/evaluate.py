"""Scores a saved model on a dataset split: accuracy, loss, per-class accuracy, confusion matrix."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .data import load_dataset
from .data.dataset import Dataset, Split
from .data.split import make_val
from .errors import MinivisionError
from .runfiles import LoadedModel
from .train import pick_device, pick_precision, predict_logits


def dataset_for(lm: LoadedModel, data: str | None = None, data_dir: str | None = None,
                test_data: str | None = None, split: str | None = None) -> Dataset:
    """The dataset a model was trained on (or ``data``), with the validation split it was trained with.

    ``split="test"`` says only the test split is needed (named datasets then skip their training files)."""
    info = lm.meta.get("dataset", {})
    if data is None:
        data = info.get("data") or "fashion-mnist"
        data_dir = data_dir or info.get("data_dir")
        test_data = test_data or info.get("test_data")
    ds = load_dataset(data, data_dir=data_dir, test_data=test_data, test_only=split == "test")
    check_compatible(lm, ds)
    if split == "test":
        return ds
    return make_val(ds, val_split=info.get("val_split"), val_first=info.get("val_first"), seed=int(info.get("seed", 0)))


def check_compatible(lm: LoadedModel, ds: Dataset) -> None:
    pre = lm.preprocess
    if (ds.channels, ds.image_size) != (pre.channels, tuple(pre.size)):
        raise MinivisionError(
            f"{ds.name} images are {ds.channels}x{ds.image_size[0]}x{ds.image_size[1]} but the model takes "
            f"{pre.channels}x{pre.size[0]}x{pre.size[1]}")
    if ds.num_classes != len(lm.classes):
        raise MinivisionError(f"{ds.name} has {ds.num_classes} classes but the model was trained on {len(lm.classes)}")


def evaluate_split(lm: LoadedModel, split: Split, *, device: str = "auto", precision: str = "auto",
                   batch_size: int = 256) -> dict[str, Any]:
    """Metrics as plain data: accuracy, loss, n, per_class {name: accuracy}, confusion [[int]]."""
    dev = pick_device(device)
    prec = pick_precision(precision, dev)
    lm.model.to(dev)
    logits = predict_logits(lm.model, lm.preprocess, split.x, device=dev, precision=prec, batch_size=batch_size)
    y = split.y
    k = len(lm.classes)
    pred = logits.argmax(1)
    confusion = torch.bincount(y * k + pred, minlength=k * k).view(k, k)
    support = confusion.sum(1)
    per_class = {name: (float(confusion[i, i] / support[i]) if support[i] else float("nan"))
                 for i, name in enumerate(lm.classes)}
    return {
        "accuracy": float((pred == y).float().mean()) if len(y) else float("nan"),
        "loss": float(F.cross_entropy(logits, y)) if len(y) else float("nan"),
        "n": int(len(y)),
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


def format_metrics(m: dict[str, Any], classes: list[str], title: str) -> str:
    """A table a person reads: headline, per-class accuracy, confusion matrix."""
    lines = [f"{title}: accuracy {m['accuracy']:.2%}  loss {m['loss']:.4f}  ({m['n']:,} images)", "",
             "per-class accuracy:"]
    width = max(len(c) for c in classes)
    for name in classes:
        lines.append(f"  {name:<{width}}  {m['per_class'][name]:.2%}")
    lines += ["", "confusion matrix (rows: true, columns: predicted):"]
    cell = max(5, len(str(max(max(r) for r in m["confusion"]))) + 1)
    lines.append(" " * (width + 2) + "".join(f"{i:>{cell}}" for i in range(len(classes))))
    for i, (name, row) in enumerate(zip(classes, m["confusion"], strict=False)):
        lines.append(f"  {name:<{width}}" + "".join(f"{v:>{cell}}" for v in row) + f"   {i}")
    return "\n".join(lines)
