"""Scores a saved model on a dataset split: accuracy, loss, per-class accuracy, confusion matrix."""

from __future__ import annotations

from typing import Any

import torch

from .data import load_dataset
from .data.dataset import Dataset, Split
from .data.split import make_val
from .errors import MinivisionError
from .inference import pick_device, pick_precision, predict_logits
from .metrics import macro_average, metrics_from_logits
from .runfiles import LoadedModel


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


def split_logits(lm: LoadedModel, split: Split, *, device: str = "auto", precision: str = "auto",
                 batch_size: int = 256, tta: bool = False) -> torch.Tensor:
    dev = pick_device(device)
    lm.model.to(dev)
    return predict_logits(lm.model, lm.preprocess, split.x, device=dev, precision=pick_precision(precision, dev),
                          batch_size=batch_size, tta=tta)


def evaluate_split(lm: LoadedModel, split: Split, *, device: str = "auto", precision: str = "auto",
                   batch_size: int = 256, tta: bool = False) -> dict[str, Any]:
    """Metrics as plain data: accuracy, loss, n, per_class {name: accuracy}, confusion [[int]], classes
    (precision/recall/F1/support per class), most_confused, ece; with ``tta``, also ``tta_accuracy``
    and ``tta_loss`` (flip test-time augmentation) beside the plain figures."""
    m = metrics_from_logits(split_logits(lm, split, device=device, precision=precision, batch_size=batch_size),
                            split.y, lm.classes)
    if tta:
        t = metrics_from_logits(split_logits(lm, split, device=device, precision=precision, batch_size=batch_size,
                                             tta=True), split.y, lm.classes)
        m.update(tta_accuracy=t["accuracy"], tta_loss=t["loss"])
    return m


def format_metrics(m: dict[str, Any], classes: list[str], title: str) -> str:
    """A table a person reads: headline, per-class precision/recall/F1, confusion matrix, most confused."""
    head = f"{title}: accuracy {m['accuracy']:.2%}  loss {m['loss']:.4f}  ({m['n']:,} images)"
    if "tta_accuracy" in m:
        head += f"\n  with flip TTA: accuracy {m['tta_accuracy']:.2%}  loss {m['tta_loss']:.4f}"
    width = max(len(c) for c in classes + ["macro average"])
    lines = [head, "", f"  {'class':<{width}}  precision  recall      F1  support"]
    rows = m.get("classes") or []
    for r in rows + ([macro_average(rows)] if rows else []):
        lines.append(f"  {r['class']:<{width}}  {r['precision']:>9.2%}  {r['recall']:>6.2%}  {r['f1']:>6.2%}"
                     f"  {r['support']:>7,}")
    lines += ["", "confusion matrix (rows: true, columns: predicted):"]
    cell = max(5, len(str(max(max(r) for r in m["confusion"]))) + 1)
    lines.append(" " * (width + 2) + "".join(f"{i:>{cell}}" for i in range(len(classes))))
    for i, (name, row) in enumerate(zip(classes, m["confusion"], strict=False)):
        lines.append(f"  {name:<{width}}" + "".join(f"{v:>{cell}}" for v in row) + f"   {i}")
    if m.get("most_confused"):
        lines += ["", "most confused (true -> predicted: images):"]
        lines += [f"  {p['true']} -> {p['predicted']}: {p['count']:,} ({p['fraction_of_true']:.1%} of {p['true']})"
                  for p in m["most_confused"][:5]]
    return "\n".join(lines)
