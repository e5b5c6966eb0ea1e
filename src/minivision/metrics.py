"""Classification metrics as plain data: confusion matrix, per-class precision/recall/F1, most
confused pairs, calibration. Torch only (no scikit-learn, no matplotlib), so ``evaluate`` stays quick."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F


def confusion_matrix(y: torch.Tensor, pred: torch.Tensor, k: int) -> torch.Tensor:
    """(k, k) int64 counts; rows are the true class, columns the predicted one."""
    return torch.bincount(y * k + pred, minlength=k * k).view(k, k)


def per_class_metrics(confusion: Any, classes: list[str]) -> list[dict[str, Any]]:
    """Per class: precision, recall, F1 (0.0 where undefined, as scikit-learn's zero_division=0), support."""
    c = torch.as_tensor(confusion, dtype=torch.float64)
    rows = []
    for i, name in enumerate(classes):
        tp, predicted, support = float(c[i, i]), float(c[:, i].sum()), float(c[i].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"class": name, "precision": precision, "recall": recall, "f1": f1, "support": int(support)})
    return rows


def macro_average(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The unweighted mean over classes that have test images."""
    present = [r for r in rows if r["support"]] or rows
    return {"class": "macro average", **{k: sum(r[k] for r in present) / len(present)
                                         for k in ("precision", "recall", "f1")},
            "support": sum(r["support"] for r in rows)}


def most_confused(confusion: Any, classes: list[str], k: int = 10) -> list[dict[str, Any]]:
    """The off-diagonal cells with the most images, largest first (fastai's ``most_confused``)."""
    c = torch.as_tensor(confusion, dtype=torch.int64)
    support = c.sum(1)
    pairs = [(int(c[i, j]), i, j) for i in range(len(classes)) for j in range(len(classes)) if i != j and c[i, j]]
    pairs.sort(key=lambda t: (-t[0], t[1], t[2]))
    return [{"true": classes[i], "predicted": classes[j], "count": n, "fraction_of_true": n / int(support[i])}
            for n, i, j in pairs[:k]]


def calibration(probs: torch.Tensor, y: torch.Tensor, bins: int = 15) -> dict[str, Any]:
    """Reliability bins over the top-class probability and the expected calibration error (ECE):
    the count-weighted mean gap between accuracy and confidence (Guo et al. 2017, 15 equal bins)."""
    conf, pred = probs.max(1)
    correct = (pred == y).double()
    conf = conf.double()
    n = len(y)
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    which = torch.clamp(torch.bucketize(conf, edges[1:-1], right=True), 0, bins - 1)
    out, ece = [], 0.0
    for b in range(bins):
        mask = which == b
        count = int(mask.sum())
        confidence = float(conf[mask].mean()) if count else None  # None, not NaN: evaluate --json stays JSON
        accuracy = float(correct[mask].mean()) if count else None
        if count:
            ece += count / n * abs(accuracy - confidence)
        out.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": count,
                    "confidence": confidence, "accuracy": accuracy})
    return {"ece": ece if n else math.nan, "bins": out}


def metrics_from_logits(logits: torch.Tensor, y: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """Everything ``evaluate`` reports, as plain data (JSON-ready)."""
    k = len(classes)
    if len(y) == 0:
        return {"accuracy": math.nan, "loss": math.nan, "n": 0, "per_class": {c: math.nan for c in classes},
                "confusion": [[0] * k for _ in range(k)], "classes": per_class_metrics(torch.zeros(k, k), classes),
                "most_confused": [], "ece": math.nan, "calibration": {"ece": math.nan, "bins": []}}
    pred = logits.argmax(1)
    confusion = confusion_matrix(y, pred, k)
    support = confusion.sum(1)
    rows = per_class_metrics(confusion, classes)
    calib = calibration(torch.softmax(logits, 1), y)
    return {
        "accuracy": float((pred == y).float().mean()),
        "loss": float(F.cross_entropy(logits, y)),
        "n": int(len(y)),
        "per_class": {name: (float(confusion[i, i] / support[i]) if support[i] else math.nan)
                      for i, name in enumerate(classes)},
        "confusion": confusion.tolist(),
        "classes": rows,
        "macro_f1": macro_average(rows)["f1"],
        "most_confused": most_confused(confusion, classes),
        "ece": calib["ece"],
        "calibration": calib,
    }
