"""How far to trust an answer: calibrated scores (temperature scaling) and unsure answers (low confidence,
or a picture unlike the training data), both fitted on the validation split and saved with the model.

Why our own code: both are a few lines of arithmetic on logits and features the product already computes
(scikit-learn's ``CalibratedClassifierCV`` and ``EmpiricalCovariance`` would bring a dependency for a
1-D search and a mean/covariance), and the fitted values must live in the run folder beside the model.

Calibration (Guo et al. 2017, "On Calibration of Modern Neural Networks", section 4.2): one temperature
T > 0 divides the logits, ``softmax(logits / T)``; T minimises the negative log-likelihood of the
validation split. The top-1 label never changes. T < 1 sharpens the scores (an under-confident model:
label smoothing trains one), T > 1 softens them (over-confident). The search is a golden-section search
over log T in [log 0.05, log 20] in float64: the NLL of logits / T is convex in 1/T, so it has one
minimum there, and the search is deterministic. The expected calibration error (ECE) is metrics.py's:
15 equal-width bins of the top-1 score (Guo et al.). A model is called over-confident when its mean top-1
score exceeds its accuracy by more than ``CALIBRATED_WITHIN`` (one percentage point), under-confident when
it falls short by more, else calibrated; mixed when its reliability bins err both ways, each way by at least
a point, a third of the ECE and what sampling noise alone gives (``scores.direction_np``).

Unsure answers. An answer is unsure when (in this order):
  1. the picture is empty (``inference.empty_picture``: one colour, or almost); the reason is its note;
  2. the picture is noise (``inference.noise_picture``: neighbouring pixels do not correlate);
  3. it is out of distribution: the Mahalanobis distance of its penultimate features (``forward_features``),
     each scaled to unit length with the log of its length as one more coordinate, to the nearest class
     mean, with one covariance shared by the classes, is above ``ood_threshold`` (Lee et al. 2018, "A Simple
     Unified Framework for Detecting Out-of-Distribution Samples and Adversarial Attacks", eq. 2, without
     input preprocessing or layer ensembles; the features scaled to unit length first as in Mueller & Hein
     2025, "Mahalanobis++: Improving OOD Detection via Feature Normalization"; the log length is our
     addition, ``Mahalanobis.fit`` says why, and a model fitted before it has the unit-length score
     ``OOD_SCORE_UNIT``);
  4. its calibrated top-1 score is below ``confidence_threshold``.
The class means and the shared covariance are fitted on (up to ``STATS_PICTURES`` of) the training split's
pictures, un-augmented, as Lee et al. do; the thresholds on the validation split, which the statistics
have not seen. ``ood_threshold`` is the 95th percentile of the validation split's distances: 95% of
in-distribution pictures pass, the operating point the out-of-distribution literature reports (the
"TNR at 95% TPR" of Lee et al. 2018 and Liang et al. 2018, ODIN). ``confidence_threshold`` is the largest
calibrated top-1 score t such that the validation pictures scoring below t are right less than half the
time (at least 1% of the split below t), bounded to [0.3, 0.9]; i.e. below it the answers are, as a
group, more often wrong than right.

Why this score: measured with bench/unsure.py (docs/BENCHMARKS.md, "Unsure answers and calibration"),
Fashion-MNIST test against CIFAR-10 made grey, noise and drawings, on mvnet-t and cnn3: the plain
Mahalanobis distance (unscaled features) fell to AUROC 0.44-0.64 on noise and CIFAR-10 with cnn3, and the
energy score (Liu et al. 2020, -logsumexp of the logits) to 0.65 on drawings with cnn3; the distance on
unit-length features stayed at 0.97-0.99 on every set with both. Rule 2 makes noise unsure whatever a
network's features do with it (no feature score flagged all of it at the 95% operating point).

A model without these entries (trained before they existed) gets T = 1, no out-of-distribution check and
``LOW_CONFIDENCE_DEFAULT`` as its confidence threshold; ``minivision calibrate RUN`` fits both for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import MinivisionError
from .scores import (  # noqa: F401 (trust's names: the texts, thresholds and verdicts, shared with onnx_runtime.py)
    CALIBRATED_WITHIN,
    LOW_CONFIDENCE_DEFAULT,
    LOW_CONFIDENCE_REASON,
    OOD_REASON,
    OOD_SCORE,
    OOD_SCORE_UNIT,
    OOD_SCORES,
    TRUST_FILE,
    judge,
    mahalanobis_score,
    ood_vectors,
    temperature_of,
)

TEMPERATURE_BOUNDS = (0.05, 20.0)  # the search interval for T (Guo et al. report T between 1 and 4.5)
OOD_KEEP = 0.95  # the share of validation pictures the out-of-distribution threshold keeps
STATS_PICTURES = 6_000  # at most this many training pictures for the class means and covariance (see fit_for_model)
CONFIDENCE_BOUNDS = (0.3, 0.9)



# ---------------------------------------------------------------------------------------------- calibration

def calibrated_probs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The answer's probabilities, float64 (N, K): softmax(logits / T) of logits (N, K), or for the logits of a
    model's test-time views (V, N, K) the mean of the views' softmax(logits_v / T) (``inference.predict_logits``)."""
    z = logits.double() / temperature
    return z.softmax(1) if z.ndim == 2 else z.softmax(2).mean(0)


def nll(logits: torch.Tensor, y: torch.Tensor, temperature: float) -> float:
    """Mean negative log-likelihood (nats) of the answer ``calibrated_probs(logits, temperature)`` (logits (N, K)
    or views (V, N, K)) against int64 labels (N,)."""
    if logits.ndim == 2:
        return float(torch.nn.functional.cross_entropy(logits.double() / temperature, y))
    p = calibrated_probs(logits, temperature).gather(1, y[:, None]).clamp_min(1e-300)
    return float(-p.log().mean())


def fit_temperature(logits: torch.Tensor, y: torch.Tensor, *, iterations: int = 80) -> float:
    """The temperature T minimising the NLL of ``softmax(logits / T)`` (Guo et al. 2017): float logits
    (N, K), int64 labels (N,); or, for a model that answers with test-time views, their logits (V, N, K) and
    the NLL of the mean of the views' softmax(logits_v / T), the answer the model gives. Golden-section search
    over log T within ``TEMPERATURE_BOUNDS``, float64; deterministic. Raises MinivisionError for no pictures or
    mismatched shapes."""
    rows = logits.shape[-2] if logits.ndim >= 2 else -1
    if logits.ndim not in (2, 3) or rows != len(y) or len(y) == 0:
        raise MinivisionError(f"temperature scaling needs logits (N, K) or (V, N, K) and N labels, got "
                              f"{tuple(logits.shape)} and {tuple(y.shape)}")
    z, y = logits.double(), y.long()
    lo, hi = math.log(TEMPERATURE_BOUNDS[0]), math.log(TEMPERATURE_BOUNDS[1])
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(z, y, math.exp(a)), nll(z, y, math.exp(b))
    for _ in range(iterations):  # 80 steps shrink the interval by 0.618^80: far below float precision
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(z, y, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(z, y, math.exp(b))
    return float(math.exp((lo + hi) / 2))


def direction(probs: torch.Tensor, y: torch.Tensor) -> str:
    """"over-confident", "under-confident", "calibrated" or "mixed" for probabilities (N, K) against labels
    (N,): ``scores.direction_np``'s rule (the sign of mean top-1 score - accuracy, "calibrated" within
    ``CALIBRATED_WITHIN``, "mixed" when the reliability bins err both ways)."""
    from .scores import direction_np

    return direction_np(probs.detach().double().cpu().numpy(), y.detach().cpu().numpy())


def ece(probs: torch.Tensor, y: torch.Tensor) -> float:
    """Expected calibration error, a fraction 0-1 (metrics.calibration: 15 equal-width bins)."""
    from .metrics import calibration

    return float(calibration(probs, y)["ece"])


def calibration_entry(logits: torch.Tensor, y: torch.Tensor, split: str = "validation",
                      tta: str = "none") -> dict[str, Any]:
    """model.json's ``calibration``: T fitted on ``logits`` (N, K), or on the logits of the model's test-time
    views (V, N, K) when it answers with ``tta`` (recorded as ``tta``), against labels (N,); ECE and direction
    of the answers before and after (fractions 0-1 on that split)."""
    t = fit_temperature(logits, y)
    before, after = calibrated_probs(logits), calibrated_probs(logits, t)
    entry = {"method": "temperature", "temperature": round(t, 6), "fitted_on": split, "n": int(len(y)),
             "ece_before": ece(before, y), "ece_after": ece(after, y),
             "before": direction(before, y), "after": direction(after, y)}
    if tta != "none":
        entry["tta"] = tta
    if entry["ece_after"] > entry["ece_before"]:
        # the NLL's optimum need not lower the ECE: a model barely trained (near chance) got T at the search's
        # bound and a worse ECE; then the scores are left as they are
        entry.update(temperature=1.0, ece_after=entry["ece_before"], after=entry["before"],
                     note=f"T = {t:.3g} lowered the loss but not the calibration error: T = 1 kept")
    return entry


def describe(entry: dict[str, Any]) -> str:
    """One line: "ECE 1.2% after temperature scaling, over-confident (T = 0.71; 8.6% before, under-confident)", or
    for a fit that kept T = 1 (``note``): "ECE 12.4%, mixed (temperature scaling: T = 0.879 lowered the loss but not
    the calibration error: T = 1 kept)"."""
    if entry.get("note"):
        return f"ECE {entry['ece_before']:.1%}, {entry['before']} (temperature scaling: {entry['note']})"
    return (f"ECE {entry['ece_after']:.1%} after temperature scaling, {entry['after']} "
            f"(T = {entry['temperature']:.2f}; {entry['ece_before']:.1%} before, {entry['before']})")


# ---------------------------------------------------------------------------------------------- unsure

@dataclass
class Mahalanobis:
    """Class means (K, D') and the shared precision matrix (D', D'), float32 (Lee et al. 2018), of the vectors
    ``ood_vectors`` makes: D' = D + 1 with ``log_norm`` (the features' direction and their log length, the
    score ``OOD_SCORE``), D for a model fitted before the size term (``OOD_SCORE_UNIT``)."""

    means: torch.Tensor
    precision: torch.Tensor
    log_norm: bool = True

    @property
    def score_name(self) -> str:
        """model.json's ``unsure.score`` for these statistics."""
        return OOD_SCORE if self.log_norm else OOD_SCORE_UNIT

    @classmethod
    def fit(cls, features: torch.Tensor, labels: torch.Tensor, num_classes: int, *,
            log_norm: bool = True) -> Mahalanobis:
        """From penultimate features (N, D) and labels (N,), each row made an ``ood_vectors`` vector first
        (scaled to unit length, plus its log length with ``log_norm``): each class's mean, the covariance of the
        vectors about their class's mean (shared), inverted with a ridge of 1e-6 x its mean variance (so a
        coordinate that never varies does not make it singular). Classes with no pictures get the mean of all
        vectors (never NaN).

        Why the log length: scaling to unit length (Mueller & Hein 2025) drops the features' size, and a
        picture unlike the training pictures can have the training pictures' direction at several times their
        size. As one more coordinate, the Mahalanobis distance weighs it by its own (within-class) spread, so
        the other coordinates' distances are unchanged in scale. Measured with bench/unsure.py
        (docs/BENCHMARKS.md, "Unsure answers and calibration"): AUROC the same or higher on every set and model
        there, with the same share of in-distribution pictures marked unsure.

        The inverse comes from a Cholesky factorisation (the ridged covariance is positive definite): for
        D = 3,072 (a softmax model on CIFAR-10, whose features are the pixels) it took about 2 s on two
        cores, where the pseudo-inverse's eigendecomposition took about 9 s. A matrix the factorisation
        rejects (rounding at the ridge's scale) gets the pseudo-inverse, as before."""
        f = torch.from_numpy(ood_vectors(features.detach().float().cpu().numpy(), log_norm)).double()
        means = torch.zeros(num_classes, f.shape[1], dtype=torch.float64)
        for k in range(num_classes):
            sel = labels == k
            means[k] = f[sel].mean(0) if bool(sel.any()) else f.mean(0)
        centred = f - means[labels]
        cov = centred.T @ centred / max(len(f), 1)
        ridge = 1e-6 * float(cov.diagonal().mean().clamp_min(1e-12))
        ridged = cov + ridge * torch.eye(len(cov), dtype=torch.float64)
        factor, info = torch.linalg.cholesky_ex(ridged)
        if int(info) == 0:
            precision = torch.cholesky_inverse(factor)
        else:
            precision = torch.linalg.pinv(ridged, hermitian=True)
        return cls(means.float(), precision.float(), log_norm)

    def score(self, features: torch.Tensor, batch: int = 2048) -> torch.Tensor:
        """float32 (N,): the squared Mahalanobis distance of each feature row (N, D), as ``ood_vectors`` makes
        it, to the nearest class mean (``scores.mahalanobis_score``, shared with an export's reader)."""
        return torch.from_numpy(mahalanobis_score(features.detach().float().cpu().numpy(), self.means.numpy(),
                                                  self.precision.numpy(), batch, log_norm=self.log_norm))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"means": self.means.contiguous(), "precision": self.precision.contiguous()}


def energy(logits: torch.Tensor) -> torch.Tensor:
    """The energy score of Liu et al. 2020 ("Energy-based Out-of-distribution Detection"), -logsumexp(logits),
    float (N,); higher is more out of distribution."""
    return -torch.logsumexp(logits.float(), 1)


def confidence_threshold(probs: torch.Tensor, y: torch.Tensor) -> float:
    """The largest calibrated top-1 score t such that the pictures scoring below t (at least 1% of them)
    are right less than half the time, bounded to ``CONFIDENCE_BOUNDS`` (see the module docstring)."""
    conf, pred = probs.max(1)
    order = conf.argsort()
    conf, right = conf[order].double(), (pred[order] == y[order]).double()
    n = len(conf)
    cum = right.cumsum(0) / torch.arange(1, n + 1, dtype=torch.float64)
    first = max(int(0.01 * n), 1) - 1
    below = torch.nonzero(cum[first:] < 0.5).flatten()
    if len(below) == 0:
        return CONFIDENCE_BOUNDS[0]
    t = float(conf[min(first + int(below[-1]) + 1, n - 1)])
    return float(min(max(t, CONFIDENCE_BOUNDS[0]), CONFIDENCE_BOUNDS[1]))


def fit_trust(features_train: torch.Tensor, y_train: torch.Tensor, features_val: torch.Tensor,
              logits_val: torch.Tensor, y_val: torch.Tensor, num_classes: int,
              tta: str = "none") -> tuple[dict, dict, Mahalanobis]:
    """Fit everything on a run's splits: (model.json ``calibration``, model.json ``unsure``, the statistics).
    ``features_*`` (N, D) from ``forward_features`` (of the picture alone), ``logits_val`` (N, K), or (V, N, K)
    for the views of a model that answers with test-time augmentation ``tta``: then the temperature and the
    confidence threshold are fitted to the answers it gives, the mean of its views' calibrated softmaxes.
    Labels int64."""
    if len(y_val) == 0:
        raise MinivisionError("calibration needs a validation split, and this dataset has none")
    cal = calibration_entry(logits_val, y_val, tta=tta)
    stats = Mahalanobis.fit(features_train, y_train, num_classes)
    val_scores = stats.score(features_val)
    probs = calibrated_probs(logits_val, cal["temperature"])
    unsure = {"score": stats.score_name, "ood_threshold": float(torch.quantile(val_scores.double(), OOD_KEEP)),
              "ood_keep": OOD_KEEP, "confidence_threshold": confidence_threshold(probs, y_val),
              "file": TRUST_FILE, "fitted_on": "validation", "n": int(len(y_val)),
              "statistics_from": "train", "statistics_n": int(len(y_train))}
    return cal, unsure, stats


def stats_subset(n: int) -> torch.Tensor:
    """Indices of at most ``STATS_PICTURES`` of ``n`` training pictures, evenly spaced (deterministic)."""
    if n <= STATS_PICTURES:
        return torch.arange(n)
    return torch.linspace(0, n - 1, STATS_PICTURES).round().long().unique()


def save_trust(folder: Path, stats: Mahalanobis) -> str:
    """Write ``folder/trust.safetensors``; returns its sha256 (model.json's ``unsure.sha256``), so a reader can tell
    the run's own file from one copied in from another run."""
    from .fileio import save_tensors, sha256_file

    save_tensors(folder / TRUST_FILE, stats.tensors(), metadata={"score": stats.score_name})
    return sha256_file(folder / TRUST_FILE)


REFIT = "`minivision calibrate RUN` fits it again"


def load_trust(folder: Path, meta: dict[str, Any]) -> Mahalanobis | None:
    """The statistics named by model.json's ``unsure`` entry; None for a model without the entry (it then gets
    only the empty, noise and low-confidence rules). A ``Note`` warning, and None, when the entry names a score
    this version does not know, a file that is missing, or a file that is not the one whose sha256 it records
    (``unsure.sha256``; a model saved before it was recorded is not checked). Raises MinivisionError (one
    line) when the file is there but damaged or its tensors do not fit together."""
    import warnings

    from .errors import Note
    from .fileio import load_tensors, sha256_file

    entry = meta.get("unsure")
    if not isinstance(entry, dict):
        return None
    skip = "its answers skip the out-of-distribution check"
    if entry.get("score") not in OOD_SCORES:
        warnings.warn(f"{folder}: the unsure check's score {entry.get('score')!r} is one this version of minivision "
                      f"does not know: {skip} ({REFIT})", Note, stacklevel=3)
        return None
    path = folder / str(entry.get("file") or TRUST_FILE)
    if path.name != path.as_posix().split("/")[-1] or not path.is_file():
        warnings.warn(f"{path} is missing: {skip} ({REFIT})", Note, stacklevel=3)
        return None
    try:
        t = load_tensors(path)
    except MinivisionError as e:
        raise MinivisionError(f"{e} ({REFIT})") from None
    if entry.get("sha256") and sha256_file(path) != entry["sha256"]:
        warnings.warn(f"{path} is not the file model.json records (another run's?): {skip} ({REFIT})", Note,
                      stacklevel=3)
        return None
    try:
        stats = Mahalanobis(t["means"].float(), t["precision"].float(), entry["score"] == OOD_SCORE)
    except KeyError as e:
        raise MinivisionError(f"{path}: no {e.args[0]!r} tensor in it ({REFIT})") from None
    if stats.means.ndim != 2 or stats.precision.shape != (stats.means.shape[1],) * 2:
        raise MinivisionError(f"{path}: class means {tuple(stats.means.shape)} and precision "
                              f"{tuple(stats.precision.shape)} do not fit together ({REFIT})")
    return stats


def fit_for_model(model: Any, pre: Any, train: Any, val: Any, num_classes: int, *, device: torch.device,
                  precision: str = "fp32", val_outputs: tuple[torch.Tensor, torch.Tensor] | None = None,
                  tta: str = "none") -> tuple[dict, dict, Mahalanobis]:
    """``fit_trust`` for a network and its preprocessing on a dataset's ``train`` and ``val`` splits (uint8
    pictures, int64 labels): one pass over the validation split and up to ``STATS_PICTURES`` training pictures.
    Why at most 6,000: this runs at the end of every training, inside the 30-second default's time; for
    Fashion-MNIST it is 12,000 pictures through the network, 1.2 times the test split's pass, and 6,000 is
    still 47 pictures per feature for mvnet's 128 (AUROC in docs/BENCHMARKS.md measured with it).
    ``val_outputs``: (features float32 (N, D), logits float32 (N, K)) of this model on ``val`` already computed
    (``predict_features``: the training's validation pass of the kept epoch), used instead of a second pass.
    ``tta``: the model's test-time augmentation (model.json's ``tta``); other than "none", the validation split
    also goes through the other views (``inference.view_logits``) and the temperature is fitted to the answers.
    Raises MinivisionError when there is no validation split, or when ``val_outputs`` does not have one row
    per validation picture."""
    from .inference import predict_features, view_logits
    from .scores import TTA_VIEWS

    if val is None or len(val) == 0:
        raise MinivisionError("calibration needs a validation split, and this dataset has none")
    if val_outputs is not None:
        f_val, logits_val = val_outputs
        if len(f_val) != len(val) or len(logits_val) != len(val):
            raise MinivisionError(f"the validation outputs have {len(logits_val)} rows for {len(val)} pictures")
    else:
        f_val, logits_val = predict_features(model, pre, val.x, device=device, precision=precision)
    if train is not None and len(train):
        idx = stats_subset(len(train))
        f_train, _ = predict_features(model, pre, train.x[idx], device=device, precision=precision)
        y_train = train.y[idx]
    else:  # no training pictures at hand: the statistics from the validation split itself
        f_train, y_train = f_val, val.y
    if len(TTA_VIEWS[tta]) > 1:  # the other views of the validation pictures, after the picture itself
        others = view_logits(model, pre, val.x, tta, device=device, precision=precision, first=False)
        logits_val = torch.cat([logits_val[None].float(), others])
    cal, unsure, stats = fit_trust(f_train, y_train, f_val, logits_val, val.y, num_classes, tta=tta)
    if train is None or not len(train):
        unsure["statistics_from"] = "validation"
    return cal, unsure, stats


def apply(meta: dict[str, Any], folder: Path, cal: dict, unsure: dict, stats: Mahalanobis) -> None:
    """Save the statistics beside the model and put both entries into ``meta`` (model.json's content)."""
    unsure["sha256"] = save_trust(folder, stats)
    meta["calibration"] = cal
    meta["unsure"] = unsure


def calibrate_run(path: str | Path, data: str | None = None, data_dir: str | None = None,
                  test_data: str | None = None, device: str = "auto") -> tuple[Path, dict, dict]:
    """``minivision calibrate``: fit the temperature and the unsure statistics of a saved run on its own
    validation split (its data read again as ``evaluate`` reads it, with the split recorded in model.json),
    write trust.safetensors and rewrite model.json atomically with ``calibration`` and ``unsure`` (every
    other entry kept). Returns (run folder, calibration, unsure). Raises MinivisionError for data other
    than the model's own, or data without a validation split."""
    from .evaluate import dataset_for, is_training_data
    from .fileio import read_json, write_json
    from .inference import pick_device
    from .runfiles import load_model
    from .scores import tta_mode

    lm = load_model(path, trust=False)  # the statistics are fitted again: a damaged or missing file is no obstacle
    if not is_training_data(lm, data):
        trained = (lm.meta.get("dataset") or {}).get("data") or "fashion-mnist"
        raise MinivisionError(f"calibrate fits on the validation split of the data the model was trained on "
                              f"({trained}); --data {data} is other data")
    ds = dataset_for(lm, data, data_dir, test_data)
    dev = pick_device(device)
    lm.model.to(dev)
    cal, unsure, stats = fit_for_model(lm.model, lm.preprocess, ds.train, ds.val, len(lm.classes), device=dev,
                                       tta=tta_mode(None, lm.meta))
    meta = read_json(lm.path / "model.json")  # as on disk now: nothing else of it changes
    unsure["sha256"] = save_trust(lm.path, stats)
    meta["calibration"], meta["unsure"] = cal, unsure
    write_json(lm.path / "model.json", meta)
    return lm.path, cal, unsure
