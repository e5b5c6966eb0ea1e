"""Classification metrics as plain data: confusion matrix, per-class precision/recall/F1, most
confused pairs, calibration. Torch and numpy only (no scikit-learn, no matplotlib), so ``evaluate`` stays quick;
the per-class figures are scores.py's, which an exported model's reader (onnx_runtime.py) uses without torch."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from .scores import macro_average, most_confused, per_class_metrics  # numpy: shared with the torch-free reader


def confusion_matrix(y: torch.Tensor, pred: torch.Tensor, k: int) -> torch.Tensor:
    """(k, k) int64 counts; rows are the true class, columns the predicted one."""
    return torch.bincount(y * k + pred, minlength=k * k).view(k, k)


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
