"""Classification metrics as plain data: confusion matrix, per-class precision/recall/F1, most
confused pairs, calibration. No scikit-learn or matplotlib, so ``evaluate`` stays quick. The figures are computed
once, in numpy, by scores.py, which an exported model's reader (onnx_runtime.py) uses without torch: these
torch entry points hand their tensors over, so a run and its export are scored by the same lines."""

from __future__ import annotations

from typing import Any

import torch

from .scores import (  # noqa: F401 (re-exported)  numpy: shared with the torch-free reader
    calibration_np,
    macro_average,
    metrics_np,
    most_confused,
    per_class_metrics,
)


def confusion_matrix(y: torch.Tensor, pred: torch.Tensor, k: int) -> torch.Tensor:
    """(k, k) int64 counts; rows are the true class, columns the predicted one."""
    return torch.bincount(y * k + pred, minlength=k * k).view(k, k)


def calibration(probs: torch.Tensor, y: torch.Tensor, bins: int = 15) -> dict[str, Any]:
    """Reliability bins over the top-class probability and the expected calibration error (ECE):
    the count-weighted mean gap between accuracy and confidence (Guo et al. 2017, 15 equal bins).
    ``probs`` float (N, K), ``y`` int64 (N,); computed by ``scores.calibration_np``, the one definition the
    run and its export share."""
    return calibration_np(probs.detach().cpu().numpy(), y.detach().cpu().numpy(), bins)  # float64 stays float64


def metrics_from_logits(logits: torch.Tensor, y: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """Everything ``evaluate`` reports, as plain data (JSON-ready): ``logits`` float (N, K), ``y`` int64 (N,).
    Computed by ``scores.metrics_np``, the one definition the run and its export share."""
    return metrics_np(logits.detach().float().cpu().numpy(), y.detach().cpu().numpy(), classes)
