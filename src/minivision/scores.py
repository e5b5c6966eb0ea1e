"""The answers and figures of a trained model that need no PyTorch: the empty-picture and noise rules,
the unsure verdicts, calibrated scores, evaluate's figures and predict's CSV, on numpy arrays.

Why this module: ``minivision predict``, ``evaluate`` and ``serve`` of an exported ``.onnx`` file run on
onnxruntime without importing torch (onnx_runtime.py) and must give the same answers as the run itself.
The rules live here once; inference.py, trust.py, metrics.py and evaluate.py take them from here (their
torch functions call these on ``tensor.numpy()``), so the two paths cannot drift apart. Where a torch twin is
kept (``metrics.metrics_from_logits``, ``evaluate.trust_metrics``: the run's own figures, cross-entropy
in float32 as PyTorch computes it) ``metrics_np`` and ``trust_metrics_np`` repeat their arithmetic in
numpy, and tests/test_onnx_runtime.py checks that both give the same figures.

Our own code because these are the product's rules (thresholds measured on our data, the texts users
read), a few lines of numpy each; no library has them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

# ------------------------------------------------------------------------------ empty pictures and noise

# A picture is empty when the central 98% of its grey levels (1st to 99th percentile) span fewer than
# BLANK_SPREAD of 256: one colour, or so little contrast that nothing in it can be told apart. Why 10:
# sensor and JPEG noise on a plain backdrop spans a few levels once the picture is reduced to at most
# THUMB_PX a side, as ``predict`` does before the check (measured: one grey plus Gaussian noise of
# sd 2-3, 400 x 400, JPEG quality 75 or 95: 1-3 levels reduced, 5-15 at full size); a garment or a
# digit spans a hundred or more. Leaving out the outer 1% on each side keeps a speck or a dead pixel
# from making an empty picture look full.
BLANK_SPREAD = 10.0
THUMB_PX = 64
DETAIL_PX = 256
EMPTY_NOTE = "the picture is empty (one colour, or almost): the label is a guess"
EMPTY_INPUT_NOTE = "nothing stands out from the background (the model sees an empty picture): the label is a guess"

# A picture is noise when neighbouring pixels hardly correlate: the Pearson correlation of each grey level with
# its right and lower neighbours below NOISE_CORRELATION. Why 0.15: measured (bench/unsure.py's pictures, 28 x 28),
# uniform and Gaussian noise give -0.07 to 0.09 (the spread of a correlation over ~1,500 pixel pairs is about
# 0.03), the 10,000 Fashion-MNIST test pictures 0.24 at the least (0.58 at the 1st percentile), CIFAR-10 made grey
# 0.55 at the least. A thin line drawing can fall below it too; it is not a picture the model knows either.
NOISE_CORRELATION = 0.15
NOISE_NOTE = "the picture looks like noise (no shapes in it): the label is a guess"


def _grey_levels(x: np.ndarray) -> tuple[np.ndarray, int]:
    """(the channels' sum per pixel, integer (N, H, W), the number of channels C): the grey level times C, exact.
    The rules below work on it because a percentile spread and a correlation scale with it."""
    c = x.shape[1]
    return (x.sum(1, dtype=np.uint16) if c > 1 else x[:, 0]), c


def blank_arrays(x: np.ndarray, spread: float = BLANK_SPREAD) -> np.ndarray:
    """bool (N,): which of the uint8 pictures ``x`` (N, C, H, W), any size and channels, are empty by the
    ``BLANK_SPREAD`` rule (grey level = the mean of the channels; ``spread``: another limit, in grey levels).

    The 1st and 99th percentiles are ``np.percentile``'s (linear interpolation), found by partitioning the
    integer grey levels at the four order statistics they need instead of sorting float copies (2.3x faster on
    the 10,000 Fashion-MNIST test pictures; tests/test_onnx_runtime.py checks both agree)."""
    x = np.asarray(x)
    if x.ndim != 4 or len(x) == 0:
        return np.zeros(len(x) if x.ndim else 0, dtype=bool)
    out = []
    for i in range(0, len(x), 4096):  # a bounded copy at a time
        grey, c = _grey_levels(x[i:i + 4096])
        lo, hi = _percentiles(grey.reshape(len(grey), -1), (1, 99))
        out.append((hi - lo) / c < spread)
    return np.concatenate(out)


def _percentiles(rows: np.ndarray, qs: tuple[float, ...]) -> list[np.ndarray]:
    """float64 (N,) per percentile in ``qs`` of each row of ``rows`` (N, M), as ``np.percentile(rows, q, axis=1)``
    computes it (linear interpolation between the order statistics around q / 100 x (M - 1))."""
    m = rows.shape[1]
    where = [(int(np.floor(q / 100 * (m - 1))), q / 100 * (m - 1) % 1) for q in qs]
    kth = sorted({k for i, _ in where for k in (i, min(i + 1, m - 1))})
    part = np.partition(rows, kth, axis=1)
    out = []
    for i, t in where:
        a, b = part[:, i].astype(np.float64), part[:, min(i + 1, m - 1)].astype(np.float64)
        out.append(b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t)  # numpy's _lerp
    return out


def noise_arrays(x: np.ndarray) -> np.ndarray:
    """bool (N,): which of the uint8 pictures ``x`` (N, C, H, W) are noise by the ``NOISE_CORRELATION`` rule
    (grey level = the mean of the channels); an empty picture (no variation) is not noise.

    The Pearson correlation over all (right and lower) neighbour pairs from five sums per picture (of a, b,
    a^2, b^2, ab), in float64, which holds the integer sums exactly: no shifted copies of the pictures."""
    x = np.asarray(x)
    if x.ndim != 4 or len(x) == 0 or min(x.shape[-2:]) < 2:
        return np.zeros(len(x) if x.ndim else 0, dtype=bool)
    out = []
    for i in range(0, len(x), 4096):
        grey, _ = _grey_levels(x[i:i + 4096])
        g = grey.astype(np.float64)
        h, w = g.shape[1:]
        pairs = h * (w - 1) + (h - 1) * w
        left, right, up, down = g[:, :, :-1], g[:, :, 1:], g[:, :-1, :], g[:, 1:, :]

        def dot(u: np.ndarray, v: np.ndarray) -> np.ndarray:
            return np.einsum("nij,nij->n", u, v)

        sa, sb = left.sum((1, 2)) + up.sum((1, 2)), right.sum((1, 2)) + down.sum((1, 2))
        cov = dot(left, right) + dot(up, down) - sa * sb / pairs
        var_a = np.maximum(dot(left, left) + dot(up, up) - sa * sa / pairs, 0.0)
        var_b = np.maximum(dot(right, right) + dot(down, down) - sb * sb / pairs, 0.0)
        denom = np.sqrt(var_a * var_b)
        out.append((denom > 0) & (cov < NOISE_CORRELATION * denom))
    return np.concatenate(out)


def empty_reason(img: Any, model_input: Any = None) -> str | None:
    """Why a PIL image (any mode and size) is empty, or None when it is not.

    ``EMPTY_NOTE`` when the picture as given is flat by the ``BLANK_SPREAD`` rule, checked on a copy reduced to
    at most ``THUMB_PX`` a side (which averages sensor and JPEG noise away) and again, with twice the limit,
    at ``DETAIL_PX`` (fine noise averages to one grey at THUMB_PX yet spans 36-39 grey levels at DETAIL_PX,
    measured on 2,000 x 2,000 uniform noise as given and as the web page shrinks it to 256 px, while a plain
    backdrop with sensor and JPEG noise spans about 1: 3,000 x 2,000, sd 3, JPEG quality 75).
    ``EMPTY_INPUT_NOTE`` when ``model_input``, the uint8 (C, H, W) picture its conversion made for the model
    (a numpy array or a CPU tensor), is empty by the same rule and dark (its 99th percentile below
    ``2 x BLANK_SPREAD``: nothing of the photo was kept on the black canvas): a photo of a backdrop alone (a
    ramp of light spans 60 grey levels, but the conversion evens the light out and the model sees black) or of
    fine noise; its label is as much a guess. A model input of one light colour is an item that fills the
    frame, not an empty picture."""
    def flat(picture, side: int, spread: float) -> bool:
        picture.thumbnail((side, side))
        return bool(blank_arrays(np.array(picture, dtype=np.uint8)[None, None], spread)[0])

    grey = img.convert("L")
    if flat(grey.copy(), THUMB_PX, BLANK_SPREAD) and flat(grey.copy(), DETAIL_PX, 2 * BLANK_SPREAD):
        return EMPTY_NOTE
    if model_input is not None:
        seen = np.asarray(model_input)
        if bool(blank_arrays(seen[None])[0]) and float(np.percentile(seen.astype(np.float32).mean(0), 99)) \
                < 2 * BLANK_SPREAD:
            return EMPTY_INPUT_NOTE
    return None


def noise_image(img: Any) -> bool:
    """A PIL image (any mode and size) is noise by the ``NOISE_CORRELATION`` rule, checked on a grey copy reduced
    to at most ``THUMB_PX`` a side (as ``empty_reason``)."""
    small = img.convert("L")
    small = small.copy() if small is img else small
    small.thumbnail((THUMB_PX, THUMB_PX))
    return bool(noise_arrays(np.array(small, dtype=np.uint8)[None, None])[0])


# ------------------------------------------------------------------------------ calibrated scores, unsure

LOW_CONFIDENCE_DEFAULT = 0.5  # a model without a fitted threshold: unsure below a 50% top-1 score
TRUST_FILE = "trust.safetensors"
OOD_SCORE = "mahalanobis-normalised-lognorm"  # the score a model fitted now uses (trust.py's rule 3)
OOD_SCORE_UNIT = "mahalanobis-normalised"  # the unit-length features alone: models fitted before the size term
OOD_SCORES = (OOD_SCORE, OOD_SCORE_UNIT)
LOW_CONFIDENCE_REASON = "low confidence: the top score is {score:.1%}"
OOD_REASON = "this does not look like the pictures this model knows (out of distribution)"
CALIBRATED_WITHIN = 0.01  # |mean top-1 score - accuracy| below this: "calibrated" (direction_np has the rule)


def temperature_of(meta: dict[str, Any]) -> float:
    """The temperature in a model.json (``calibration.temperature``), 1.0 when absent or malformed."""
    entry = meta.get("calibration") if isinstance(meta, dict) else None
    try:
        t = float(entry["temperature"]) if isinstance(entry, dict) else 1.0
    except (KeyError, TypeError, ValueError):
        return 1.0
    return t if math.isfinite(t) and t > 0 else 1.0


def judge(top1: Any, ood: Any, empty: Any, meta: dict[str, Any], empty_note: str,
          noise: Any = None) -> list[tuple[bool, str | None]]:
    """(unsure, reason) per picture from its calibrated top-1 score (N,), its out-of-distribution score (N,)
    or None, whether it is empty (bool (N,)) and whether it is noise (bool (N,) or None), as numpy arrays or
    tensors; thresholds from model.json's ``unsure`` (defaults when absent). The rules and their order are
    in trust.py's docstring."""
    entry = meta.get("unsure") if isinstance(meta.get("unsure"), dict) else {}
    conf_t = float(entry.get("confidence_threshold", LOW_CONFIDENCE_DEFAULT))
    ood_t = entry.get("ood_threshold")
    out: list[tuple[bool, str | None]] = []
    for i in range(len(top1)):
        if bool(empty[i]):
            out.append((True, empty_note))
        elif noise is not None and bool(noise[i]):
            out.append((True, NOISE_NOTE))
        elif ood is not None and ood_t is not None and float(ood[i]) > float(ood_t):
            out.append((True, OOD_REASON))
        elif float(top1[i]) < conf_t:
            out.append((True, LOW_CONFIDENCE_REASON.format(score=float(top1[i]))))
        else:
            out.append((False, None))
    return out


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of float logits (N, K) / ``temperature``, float32 (N, K) (computed in float32, as
    ``torch.softmax`` of float32 logits)."""
    z = np.asarray(logits, dtype=np.float32) / np.float32(temperature)
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


# ------------------------------------------------------------------------------ test-time augmentation (TTA)

# The view sets a model's answers can average (``tta``): each view is (mirrored left-right, dy, dx), the picture
# moved by dy rows and dx columns with its border row/column repeated outwards. The answer is the mean of the
# views' calibrated softmax probabilities (fastai's rule: probabilities, not logits, are averaged). The one-pixel
# moves follow airbench (Jordan 2024, "94% on CIFAR-10 in 3.29 seconds on a single GPU"), whose test-time views
# are the picture, its mirror and their one-pixel translations.
SHIFTS = ((0, 1), (0, -1), (1, 0), (-1, 0))
TTA_MODES = ("none", "flip", "flip+shift")
TTA_VIEWS: dict[str, tuple[tuple[bool, int, int], ...]] = {
    "none": ((False, 0, 0),),
    "flip": ((False, 0, 0), (True, 0, 0)),
    "flip+shift": tuple((m, 0, 0) for m in (False, True))
    + tuple((m, dy, dx) for m in (False, True) for dy, dx in SHIFTS),
}


def default_tta(horizontal_flip: bool, channels: int) -> str:
    """The view set a newly trained model answers with when ``train --tta auto``: "flip" for a model trained with
    horizontal flips (``horizontal_flip``) on colour pictures (``channels`` 3), else "none".

    Why (docs/BENCHMARKS.md, "Test-time augmentation"): on CIFAR-10 runs trained with flips, the picture and its
    mirror raised test accuracy by about a point, at twice the inference time; the ten views of "flip+shift" add
    a few tenths more at five times the cost of "flip". On Fashion-MNIST the gain was about a tenth of a point,
    not worth doubling every answer's time. A model trained without flips never saw a mirrored picture."""
    return "flip" if horizontal_flip and channels == 3 else "none"


def tta_mode(value: Any, meta: dict[str, Any] | None = None) -> str:
    """The view set to use: ``value`` None (or "auto") takes the model's own (model.json's ``tta``, "none" for a
    model without one); True means "flip" and False "none" (the former on/off switch); else one of ``TTA_MODES``.
    Raises MinivisionError (one line) for any other value, and for a model.json whose ``tta`` is not a mode
    (a damaged file must not quietly change how the model answers)."""
    from .errors import MinivisionError

    if value is None or value == "auto":
        own = meta.get("tta") if isinstance(meta, dict) else None
        if own is None:  # a model saved before models had their own
            return "none"
        if own not in TTA_MODES:
            raise MinivisionError(f"model.json: tta must be one of {', '.join(TTA_MODES)}, got {own!r} "
                                  f"(or give --tta MODE)")
        return str(own)
    if value is True:
        return "flip"
    if value is False:
        return "none"
    if value not in TTA_MODES:
        raise MinivisionError(f"tta must be one of {', '.join(TTA_MODES)} (or auto: the model's own), got {value!r}")
    return str(value)


def shifted_np(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Pictures ``x`` (N, C, H, W), any dtype, moved by ``dy`` rows and ``dx`` columns (positive: down, right),
    the border row/column repeated outwards (``np.pad``'s "edge"); same shape and dtype, C-contiguous."""
    if dy == 0 and dx == 0:
        return np.ascontiguousarray(x)
    h, w = x.shape[2], x.shape[3]
    big = np.pad(x, ((0, 0), (0, 0), (max(dy, 0), max(-dy, 0)), (max(dx, 0), max(-dx, 0))), mode="edge")
    top, left = max(-dy, 0), max(-dx, 0)
    return np.ascontiguousarray(big[:, :, top:top + h, left:left + w])


def view_np(x: np.ndarray, view: tuple[bool, int, int]) -> np.ndarray:
    """One TTA view (mirrored, dy, dx) of pictures ``x`` (N, C, H, W): mirror first, then the move."""
    mirrored, dy, dx = view
    return shifted_np(x[..., ::-1] if mirrored else x, dy, dx)


def ood_vectors(features: np.ndarray, log_norm: bool = True) -> np.ndarray:
    """float32 (N, D + 1) with ``log_norm`` (else (N, D)): each feature row (N, D) scaled to unit length, then
    the natural log of its original length as one more coordinate (trust.py's rule 3: the direction and the
    size of the features; a zero row gets log 1e-12)."""
    f = np.asarray(features, dtype=np.float32)
    f = f.reshape(len(f), -1)
    length = np.maximum(np.linalg.norm(f, axis=1, keepdims=True), np.float32(1e-12))
    unit = f / length
    return np.concatenate([unit, np.log(length)], 1) if log_norm else unit


def mahalanobis_score(features: np.ndarray, means: np.ndarray, precision: np.ndarray,
                      batch: int = 8192, *, log_norm: bool = True) -> np.ndarray:
    """float32 (N,): the squared Mahalanobis distance of each feature row (N, D), as ``ood_vectors`` gives it
    (unit length, plus its log length with ``log_norm``), to the nearest of the class ``means`` (K, D') under
    the shared ``precision`` (D', D'), D' = D + 1 with ``log_norm`` else D (trust.Mahalanobis, Lee et al. 2018;
    float64 arithmetic). Raises MinivisionError when D' does not match the statistics' width.

    Expanded as f P f - 2 f P m + m P m: one (n, D') x (D', D') product per batch instead of one per class (7x
    faster on 10,000 64-wide features; the same float32 scores)."""
    f = np.asarray(features, dtype=np.float32)
    if len(f) == 0:
        return np.empty(0, dtype=np.float32)
    f = ood_vectors(f, log_norm)
    p, m = np.asarray(precision, dtype=np.float64), np.asarray(means, dtype=np.float64)
    if f.shape[1] != m.shape[1]:
        from .errors import MinivisionError

        raise MinivisionError(f"the unsure statistics are {m.shape[1]} wide, the model's features "
                              f"{f.shape[1] - int(log_norm)}" + (" (+1 for their size)" if log_norm else "")
                              + ": the trust file is another model's; refit it with `minivision calibrate RUN`")
    mpm = ((m @ p) * m).sum(1)  # (K,)
    out = []
    for i in range(0, len(f), batch):
        fp = f[i:i + batch].astype(np.float64) @ p  # (n, D')
        d = (fp * f[i:i + batch]).sum(1)[:, None] - 2.0 * (fp @ m.T) + mpm[None]  # (n, K)
        out.append(d.min(1).astype(np.float32))
    return np.concatenate(out)


def uses_log_norm(meta: dict[str, Any]) -> bool | None:
    """Whether a model.json's unsure check scores the features' size too (its ``unsure.score``): True for
    ``OOD_SCORE``, False for ``OOD_SCORE_UNIT``, None for a model without the check or an unknown score."""
    entry = meta.get("unsure") if isinstance(meta, dict) else None
    score = entry.get("score") if isinstance(entry, dict) else None
    return {OOD_SCORE: True, OOD_SCORE_UNIT: False}.get(score)


def answers(probs: np.ndarray, classes: list[str], k: int, verdicts: list[tuple[bool, str | None]],
            plain: np.ndarray | None = None, tta: str | None = None) -> list[dict[str, Any]]:
    """Per picture, ``predict``'s answer: label, index, score, top_k [{label, index, score}] (the ``k`` best of
    the calibrated ``probs`` (N, K), scores rounded to 6 places), unsure, reason (from ``verdicts``); with
    ``plain`` (N, K), the scores without test-time augmentation, also ``plain`` {label, index, score} and
    ``tta`` (the view set's name, given as ``tta``)."""
    out = []
    for j in range(len(probs)):
        order = np.argsort(-probs[j], kind="stable")[:k]
        top = [{"label": classes[int(c)], "index": int(c), "score": round(float(probs[j, c]), 6)} for c in order]
        row = {"label": top[0]["label"], "index": top[0]["index"], "score": top[0]["score"], "top_k": top,
               "unsure": verdicts[j][0], "reason": verdicts[j][1]}
        if plain is not None:
            c = int(plain[j].argmax())
            row["plain"] = {"label": classes[c], "index": c, "score": round(float(plain[j, c]), 6)}
            row["tta"] = tta
        out.append(row)
    return out


# ------------------------------------------------------------------------------ evaluate's figures

def per_class_metrics(confusion: Any, classes: list[str]) -> list[dict[str, Any]]:
    """Per class: precision, recall, F1 (0.0 where undefined, as scikit-learn's zero_division=0), support, from a
    (K, K) confusion matrix (rows: true class; a list of lists, an array or a tensor)."""
    c = np.asarray(confusion, dtype=np.float64)
    rows = []
    for i, name in enumerate(classes):
        tp, predicted, support = float(c[i, i]), float(c[:, i].sum()), float(c[i].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"class": name, "precision": precision, "recall": recall, "f1": f1, "support": int(support)})
    return rows


def macro_average(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The unweighted mean over classes that have test images (its recall is the balanced accuracy)."""
    present = [r for r in rows if r["support"]] or rows
    return {"class": "macro average", **{k: sum(r[k] for r in present) / len(present)
                                         for k in ("precision", "recall", "f1")},
            "support": sum(r["support"] for r in rows)}


def most_confused(confusion: Any, classes: list[str], k: int = 10) -> list[dict[str, Any]]:
    """The off-diagonal cells with the most images, largest first (fastai's ``most_confused``)."""
    c = np.asarray(confusion, dtype=np.int64)
    support = c.sum(1)
    pairs = [(int(c[i, j]), i, j) for i in range(len(classes)) for j in range(len(classes)) if i != j and c[i, j]]
    pairs.sort(key=lambda t: (-t[0], t[1], t[2]))
    return [{"true": classes[i], "predicted": classes[j], "count": n, "fraction_of_true": n / int(support[i])}
            for n, i, j in pairs[:k]]


def calibration_np(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> dict[str, Any]:
    """``metrics.calibration`` on numpy arrays: reliability bins over the top-class probability and the ECE
    (Guo et al. 2017, 15 equal bins)."""
    probs = np.asarray(probs)
    conf, pred = probs.max(1).astype(np.float64), probs.argmax(1)
    correct = (pred == y).astype(np.float64)
    n = len(y)
    edges = np.linspace(0, 1, bins + 1, dtype=np.float64)
    which = np.clip(np.searchsorted(edges[1:-1], conf, side="right"), 0, bins - 1)
    out, ece = [], 0.0
    for b in range(bins):
        mask = which == b
        count = int(mask.sum())
        confidence = float(conf[mask].mean()) if count else None
        accuracy = float(correct[mask].mean()) if count else None
        if count:
            ece += count / n * abs(accuracy - confidence)
        out.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": count,
                    "confidence": confidence, "accuracy": accuracy})
    return {"ece": ece if n else math.nan, "bins": out}


def metrics_np(logits: np.ndarray, y: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """``metrics.metrics_from_logits`` on numpy arrays: float logits (N, K), int64 labels (N,).

    Besides accuracy (the share right, float32 as torch computes it): ``balanced_accuracy``, the mean of the
    per-class recalls over the classes that have images (scikit-learn's ``balanced_accuracy_score``, Brodersen et
    al. 2010), and ``macro_f1``, the unweighted mean of the per-class F1 over the same classes (scikit-learn's
    ``f1_score(average="macro")`` when every class has images), both float64 fractions 0-1: on imbalanced test data
    they weigh every class the same where accuracy weighs every picture."""
    k = len(classes)
    if len(y) == 0:
        return {"accuracy": math.nan, "balanced_accuracy": math.nan, "macro_f1": math.nan, "loss": math.nan, "n": 0,
                "per_class": {c: math.nan for c in classes},
                "confusion": [[0] * k for _ in range(k)], "classes": per_class_metrics(np.zeros((k, k)), classes),
                "most_confused": [], "ece": math.nan, "calibration": {"ece": math.nan, "bins": []}}
    logits = np.asarray(logits, dtype=np.float32)
    pred = logits.argmax(1)
    confusion = np.bincount(y * k + pred, minlength=k * k).reshape(k, k)
    support = confusion.sum(1)
    rows = per_class_metrics(confusion, classes)
    macro = macro_average(rows)
    z = logits - logits.max(1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(1, keepdims=True))  # float32
    calib = calibration_np(softmax(logits), y)
    return {
        "accuracy": float((pred == y).astype(np.float32).mean()),  # float32, as torch computes it
        "balanced_accuracy": macro["recall"],  # the mean recall over the classes with images
        "loss": float(-log_probs[np.arange(len(y)), y].mean()),
        "n": int(len(y)),
        "per_class": {name: (float(np.float32(confusion[i, i]) / np.float32(support[i])) if support[i] else math.nan)
                      for i, name in enumerate(classes)},
        "confusion": confusion.tolist(),
        "classes": rows,
        "macro_f1": macro["f1"],
        "most_confused": most_confused(confusion, classes),
        "ece": calib["ece"],
        "calibration": calib,
    }


def direction_np(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> str:
    """Which way the scores of probabilities (N, K) err against labels (N,): "over-confident",
    "under-confident", "calibrated" or "mixed", from the reliability bins of ``calibration_np``.

    The ECE splits into the bins where the mean top score is above the accuracy (over) and those where it
    is below (under); over - under is the mean top score minus the accuracy. "mixed": each part is at least
    ``CALIBRATED_WITHIN``, at least a third of the ECE, and at least the ECE the bins' sampling noise alone
    gives a calibrated model (too sure at some scores, too unsure at others, so neither word fits, and a mean
    gap near 0 must not read "calibrated" beside a large ECE); else "calibrated" when |over - under| <
    ``CALIBRATED_WITHIN``, else its sign.

    The noise: a calibrated bin of n_b pictures at mean score c_b has an accuracy with standard deviation
    sqrt(c_b (1 - c_b) / n_b), so its expected |gap| is sqrt(2 / pi) times that (a normal's mean absolute
    value), summed over the bins with weights n_b / n: several points on 60 validation pictures, where a
    calibrated model would otherwise read "mixed" from noise alone. Simulated (tests/test_trust.py): a
    calibrated model never read "mixed" at 60 to 5,000 pictures, and one 12 points too sure above a score of
    0.75 and 12 too unsure below it read "mixed" nearly always from 1,000 pictures on."""
    probs = np.asarray(probs)
    cal = calibration_np(probs, np.asarray(y), bins)
    n = max(len(y), 1)
    filled = [b for b in cal["bins"] if b["count"]]
    over = sum(b["count"] / n * max(b["confidence"] - b["accuracy"], 0.0) for b in filled)
    under = sum(b["count"] / n * max(b["accuracy"] - b["confidence"], 0.0) for b in filled)
    noise = sum(b["count"] / n * math.sqrt(2 / math.pi) * math.sqrt(b["confidence"] * (1 - b["confidence"])
                                                                    / b["count"]) for b in filled)
    if min(over, under) >= max(CALIBRATED_WITHIN, (over + under) / 3, noise):
        return "mixed"
    gap = float(probs.max(1).astype(np.float64).mean()) - float((probs.argmax(1) == y).astype(np.float64).mean())
    if abs(gap) < CALIBRATED_WITHIN:
        return "calibrated"
    return "over-confident" if gap > 0 else "under-confident"


def trust_metrics_np(meta: dict[str, Any], x: np.ndarray, y: np.ndarray, logits: np.ndarray,
                     ood: np.ndarray | None) -> dict[str, Any]:
    """``evaluate.trust_metrics`` on numpy arrays: uint8 pictures ``x`` (N, C, H, W), labels (N,), uncalibrated
    logits (N, K), out-of-distribution scores (N,) or None; the model's temperature and thresholds from
    ``meta`` (model.json)."""
    t = temperature_of(meta)
    out: dict[str, Any] = {"temperature": t, "calibrated": isinstance(meta.get("calibration"), dict)}
    if len(y) == 0:
        return out
    z = np.asarray(logits, dtype=np.float64)

    def soft(v: np.ndarray) -> np.ndarray:
        e = np.exp(v - v.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    before, after = soft(z), soft(z / t)
    cal = calibration_np(after, y)
    out.update(ece=cal["ece"], calibration=cal, ece_before=calibration_np(before, y)["ece"],
               confidence={"before": direction_np(before, y), "after": direction_np(after, y)})
    unsure = np.array([u for u, _ in judge(after.max(1), ood, blank_arrays(x), meta, EMPTY_NOTE, noise_arrays(x))],
                      dtype=bool)
    right = z.argmax(1) == y
    out["unsure"] = {"share": float(unsure.astype(np.float32).mean()), "n": int(unsure.sum()),
                     "accuracy_confident": float(right[~unsure].astype(np.float32).mean()) if (~unsure).any() else None,
                     "accuracy_unsure": float(right[unsure].astype(np.float32).mean()) if unsure.any() else None}
    return out


# ------------------------------------------------------------------------------ predict's CSV

def write_csv(results: list[dict[str, Any]], path: str | Path, *, top_k: int = 0, views: bool = False) -> Path:
    """path (and id, for the rows of a pixel CSV with an id column), label, score, then label_i/score_i for
    each of the top k, then unsure (true/false), reason, and for answers with test-time augmentation tta (the
    view set), plain_label and plain_score (the picture alone's answer), then error; one row per picture (failed
    ones with only path and error), written atomically. ``top_k`` and ``views`` (answers with test-time
    augmentation) give the columns when no picture could be answered, so a file of failures has the columns a
    file of answers has."""
    import csv
    import io

    from .fileio import write_text

    k = max((len(r["top_k"]) for r in results if "top_k" in r), default=top_k)
    ids = any("id" in r for r in results)  # rows of a pixel CSV with an id column: the id beside the path
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    answered = any("top_k" in r for r in results)
    # answers with test-time augmentation: name it, and the plain one
    views = any("plain" in r for r in results) if answered else views
    w.writerow(["path", *(["id"] if ids else []), "label", "score",
                *[f"{f}_{i}" for i in range(1, k + 1) for f in ("label", "score")], "unsure", "reason",
                *(["tta", "plain_label", "plain_score"] if views else []), "error"])
    for r in results:
        head = [r["path"], *([r.get("id", "")] if ids else [])]
        if "error" in r:
            w.writerow([*head, "", "", *[""] * (2 * k), "", "", *([""] * 3 if views else []), r["error"]])
            continue
        top = [v for t in r["top_k"] for v in (t["label"], t["score"])]
        unsure = "true" if r.get("unsure") else "false"
        plain = r.get("plain") or {}
        tail = [r.get("tta") or "none", plain.get("label", ""), plain.get("score", "")] if views else []
        w.writerow([*head, r["label"], r["score"], *top, *[""] * (2 * k - len(top)), unsure, r.get("reason") or "",
                    *tail, ""])
    write_text(path, buf.getvalue())
    return Path(path)
