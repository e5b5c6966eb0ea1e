"""Scores a saved model on a dataset split: accuracy, loss, per-class accuracy, confusion matrix.

Two kinds of data are scored. The model's own training data (no ``--data``, or the same dataset named
again) is read as at training, with the same validation split, and its labels keep their positions.
Any other data is matched to the model's classes by name (``classmatch``: order, case and subsets),
and nothing of it is held back for validation: a file or a folder without split folders is scored
whole, a folder with ``train/val/test`` folders on the split asked for (default test).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .classmatch import ClassMatch, align_dataset
from .data import canonical_name, load_dataset
from .data.dataset import Dataset, Split, as_array
from .errors import MinivisionError
from .scores import TTA_VIEWS, macro_average, tta_mode

if TYPE_CHECKING:  # the scoring functions below import torch; choosing the data (to ``check_compatible``) does not
    import torch

    from .runfiles import LoadedModel

WHOLE = "all"  # the split name of data scored whole (a file, or a folder without split folders)
IN_MEMORY = "arrays"  # the dataset name of pictures given to fit as arrays (api.fit), kept in model.json


@dataclass
class ScoringData:
    """What ``evaluate`` scores: ``dataset`` (labels as the model's class indices), the split's name
    (train, val, test, or ``all`` for data scored whole) and images, ``notes`` for the user, and
    ``match`` (None for the model's own training data, which keeps its positions)."""

    dataset: Dataset
    split_name: str
    split: Split
    notes: list[str]
    match: ClassMatch | None = None


def is_training_data(lm: LoadedModel, data: str | None) -> bool:
    """``data`` is None or names the dataset the model was trained on (the same name or the same path)."""
    if data is None:
        return True
    trained = (lm.meta.get("dataset") or {}).get("data") or "fashion-mnist"
    if canonical_name(str(data)) == canonical_name(str(trained)):
        return True
    try:
        return Path(data).expanduser().resolve() == Path(trained).expanduser().resolve() and Path(data).exists()
    except (OSError, RuntimeError):
        return False


def scoring_data(lm: LoadedModel, data: str | None = None, data_dir: str | None = None,
                 test_data: str | None = None, split: str | None = None) -> ScoringData:
    """The images and labels ``evaluate`` scores, and the notes to show beside the figures.

    ``split`` None: the test split; for the model's own data without one its validation split (as its
    report), for other data without one every image (``split_name`` ``all``). Other data with no split
    folders is scored whole whatever ``split`` says (a note says so). Raises MinivisionError (one line)
    for images of another size, classes that do not match, or a split the data does not have."""
    from .data.dataset import split_for

    notes: list[str] = []
    if is_training_data(lm, data):
        if split is None:
            split = "test"
            if "test_accuracy" not in (lm.meta.get("metrics") or {}):
                notes.append("the model's data has no test split; scoring its validation split")
                split = "val"
        ds = dataset_for(lm, data, data_dir, test_data, split=split)
        return ScoringData(ds, split, split_for(ds, split), notes + list(ds.notes))
    ds = load_dataset(data, data_dir=data_dir, test_data=test_data, test_only=split in (None, "test"),
                      conversion=lm.preprocess.photo)  # a folder's pictures converted as predict converts them
    return other_data(lm, ds, split)


def other_data(lm: LoadedModel, ds: Dataset, split: str | None = None) -> ScoringData:
    """``scoring_data`` for a dataset other than the model's training data, already read: checked for the
    model's input size, matched to its classes by name, nothing held back for validation (see
    ``scoring_data`` for ``split``)."""
    from .data.dataset import split_for

    check_compatible(lm, ds, classes=False)
    ds, match = align_dataset(ds, lm.classes)
    notes = list(ds.notes) + list(match.notes)
    own = [name for name in ("val", "test") if getattr(ds, name) is not None and len(getattr(ds, name))]
    if not own:
        whole = ds.train
        notes.append(f"{ds.name} is not split into train/val/test: scoring all {len(whole):,} of its images "
                     "(none held back for validation)"
                     + (f"; --split {split} does not apply" if split not in (None, "train") else ""))
        return ScoringData(ds, WHOLE, whole, notes, match)
    if split is None:
        split = "test" if "test" in own else WHOLE
    if split == WHOLE:
        parts = [s for s in (ds.train, ds.val, ds.test) if s is not None and len(s)]
        whole = Split(as_array(np.concatenate([np.asarray(s.x) for s in parts])),
                      as_array(np.concatenate([np.asarray(s.y) for s in parts])))
        notes.append(f"{ds.name} has no test split: scoring all {len(whole):,} of its images "
                     "(none held back for validation)")
        return ScoringData(ds, WHOLE, whole, notes, match)
    return ScoringData(ds, split, split_for(ds, split), notes, match)


def dataset_for(lm: LoadedModel, data: str | None = None, data_dir: str | None = None,
                test_data: str | None = None, split: str | None = None) -> Dataset:
    """The dataset a model was trained on (or ``data``), with the validation split it was trained with.

    ``split="test"`` says only the test split is needed (named datasets then skip their training files).
    Data other than the training data is matched to the model's classes by name and holds nothing back
    for validation; when it has no test split of its own, its ``test`` is every image."""
    info = lm.meta.get("dataset", {})
    if not is_training_data(lm, data):
        sd = scoring_data(lm, data, data_dir, test_data, split=None if split == "test" else split)
        return sd.dataset if sd.split_name != WHOLE else dataclasses.replace(sd.dataset, test=sd.split)
    if data is None:
        data = info.get("data") or "fashion-mnist"
        if data == IN_MEMORY and not Path(data).exists():  # fit(x, y): the pictures were never on disk
            raise MinivisionError(f"{lm.path}: the model was trained on pictures given as arrays, which are not "
                                  "saved with it: give the pictures to score (--data DATA: a dataset name, file or "
                                  "folder; in Python also data=(x, y), pictures and labels)")
    data_dir = data_dir or info.get("data_dir")
    test_data = test_data or info.get("test_data")
    photo = lm.preprocess.photo  # a folder read again at the model's working size and fit
    ds = load_dataset(data, data_dir=data_dir, test_data=test_data, test_only=split == "test",
                      **({"conversion": photo} if photo.method == "resize" else {"imgsz": max(photo.size)}))
    check_compatible(lm, ds, classes=False)
    if ds.classes != list(lm.classes):
        # read again, the training data may name its classes otherwise: a CSV trained when its classes were 0 to
        # the largest label (now the labels found), a jobs folder named by number before classes.json
        try:
            ds = align_dataset(ds, lm.classes)[0]
        except MinivisionError:
            check_compatible(lm, ds)  # the same number of classes keeps its positions, as at training
    if split == "test":
        return ds
    from .data.split import make_val

    return make_val(ds, val_split=info.get("val_split"), val_first=info.get("val_first"), seed=int(info.get("seed", 0)))


def check_compatible(lm: LoadedModel, ds: Dataset, *, classes: bool = True) -> None:
    """MinivisionError (one line) when ``ds``'s images are not the model's input size and channels, or
    (``classes``) its number of classes differs from the model's."""
    pre = lm.preprocess
    if (ds.channels, ds.image_size) != (pre.channels, tuple(pre.size)):
        raise MinivisionError(
            f"{ds.name} images are {ds.channels}x{ds.image_size[0]}x{ds.image_size[1]} but the model takes "
            f"{pre.channels}x{pre.size[0]}x{pre.size[1]}")
    if classes and ds.num_classes != len(lm.classes):
        raise MinivisionError(f"{ds.name} has {ds.num_classes} classes but the model was trained on {len(lm.classes)}")


def only_present(metrics: dict[str, Any], match: ClassMatch | None, classes: list[str]) -> dict[str, Any]:
    """``metrics`` with the per-class figures (``classes`` rows, ``per_class``, ``macro_f1``) kept for the
    classes the data holds, when it holds a subset of the model's; adds ``classes_scored``. Accuracy, loss
    and the confusion matrix (all the model's classes as columns) are unchanged."""
    if match is None or not match.is_subset:
        return metrics
    names = [classes[i] for i in match.present]
    rows = [r for r in metrics.get("classes") or [] if r["class"] in names]
    out = dict(metrics, classes=rows, classes_scored=names,
               per_class={k: v for k, v in metrics["per_class"].items() if k in names})
    if rows:
        out["macro_f1"], out["balanced_accuracy"] = macro_average(rows)["f1"], macro_average(rows)["recall"]
    return out


def split_logits(lm: LoadedModel, split: Split, *, device: str = "auto", precision: str = "auto",
                 batch_size: int = 256, tta: bool | str | None = False) -> torch.Tensor:
    """Logits, float32 (N, K) on the CPU, uncalibrated, of ``split``'s pictures. ``tta`` (``scores.tta_mode``):
    False (default) or "none", the picture alone; None, the model's own test-time augmentation (model.json's
    ``tta``); "flip", "flip+shift" (True: "flip"): the log of the views' mean softmax (``inference.predict_logits``).
    Raises MinivisionError for an unknown ``tta`` or device."""
    from .inference import pick_device, predict_logits, reading_precision

    mode = tta_mode(tta, lm.meta)
    dev = pick_device(device)
    lm.model.to(dev)
    return predict_logits(lm.model, lm.preprocess, split.x, device=dev, precision=reading_precision(precision),
                          batch_size=batch_size, tta=mode)


def split_outputs(lm: LoadedModel, split: Split, *, device: str = "auto", precision: str = "auto",
                  batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logits float32 (N, K), features float32 (N, D) or None) of ``split``'s pictures, uncalibrated, no TTA,
    in one pass: the penultimate features are kept only for a model with unsure statistics (trust.py),
    which ``trust_metrics`` scores."""
    from .inference import pick_device, predict_features, reading_precision

    if lm.trust is None:
        return split_logits(lm, split, device=device, precision=precision, batch_size=batch_size), None
    dev = pick_device(device)
    lm.model.to(dev)
    features, logits = predict_features(lm.model, lm.preprocess, split.x, device=dev,
                                        precision=reading_precision(precision), batch_size=batch_size)
    return logits, features


def trust_metrics(lm: LoadedModel, split: Split, logits: torch.Tensor, *, device: str = "auto",
                  precision: str = "auto", batch_size: int = 256,
                  features: torch.Tensor | None = None) -> dict[str, Any]:
    """Calibration and unsure answers on a scored split (trust.py), to merge into the metrics: ``ece`` and
    ``calibration`` (reliability bins) of the calibrated scores softmax(logits / T), ``ece_before`` of the
    plain softmax, ``temperature`` (1.0 for a model without calibration), ``calibrated`` (bool),
    ``confidence`` {"before", "after"}: over-confident, under-confident or calibrated; and ``unsure``
    {share, n, accuracy_confident, accuracy_unsure} (fractions 0-1; None where no picture falls there).
    ``logits`` float (N, K) of ``split``'s pictures, uncalibrated; ``features`` float (N, D), their
    penultimate features when the caller has them (else computed here, a second pass)."""
    import torch

    from .inference import EMPTY_NOTE, blank_pictures, noise_pictures, pick_device, predict_features, reading_precision
    from .metrics import calibration
    from .trust import direction, judge

    t = lm.temperature
    y = split.y
    out: dict[str, Any] = {"temperature": t, "calibrated": isinstance(lm.meta.get("calibration"), dict)}
    if len(y) == 0:
        return out
    before, after = torch.softmax(logits.double(), 1), torch.softmax(logits.double() / t, 1)
    cal = calibration(after, y)
    out.update(ece=cal["ece"], calibration=cal, ece_before=calibration(before, y)["ece"],
               confidence={"before": direction(before, y), "after": direction(after, y)})
    ood = None
    if lm.trust is not None and features is not None:
        ood = lm.trust.score(features)
    elif lm.trust is not None:
        dev = pick_device(device)
        lm.model.to(dev)
        features, _ = predict_features(lm.model, lm.preprocess, split.x, device=dev,
                                       precision=reading_precision(precision), batch_size=batch_size)
        ood = lm.trust.score(features)
    unsure = torch.tensor([u for u, _ in judge(after.max(1).values, ood, blank_pictures(split.x), lm.meta,
                                                EMPTY_NOTE, noise_pictures(split.x))])
    right = logits.argmax(1) == y
    out["unsure"] = {"share": float(unsure.float().mean()), "n": int(unsure.sum()),
                     "accuracy_confident": float(right[~unsure].float().mean()) if bool((~unsure).any()) else None,
                     "accuracy_unsure": float(right[unsure].float().mean()) if bool(unsure.any()) else None}
    return out


def evaluate_split(lm: LoadedModel, split: Split, *, device: str = "auto", precision: str = "auto",
                   batch_size: int = 256, tta: bool | str | None = None,
                   match: ClassMatch | None = None) -> dict[str, Any]:
    """Metrics as plain data: accuracy, loss, n, per_class {name: accuracy}, confusion [[int]], classes
    (precision/recall/F1/support per class), most_confused, and ``trust_metrics``' calibration (``ece`` of the
    calibrated scores, ``ece_before``, ``temperature``, ...) and unsure share, all of the picture alone.

    ``tta`` (``scores.tta_mode``): None (default) the model's own test-time augmentation (model.json's ``tta``;
    "none" for a model without one), or "none", "flip", "flip+shift" (True: "flip", False: "none"). With a mode
    other than "none", ``tta_figures`` come beside the plain figures: ``tta_accuracy``, ``tta_loss``,
    ``tta_change`` and ``tta`` (the mode), and ``tta_notes`` are given as ``errors.Note`` warnings (a model
    trained without flips, digits). ``match`` (from ``scoring_data``): per-class figures only for the classes
    present when the data holds a subset of the model's. Raises MinivisionError for an unknown ``tta``."""
    from .metrics import metrics_from_logits

    mode = tta_mode(tta, lm.meta)
    logits, features = split_outputs(lm, split, device=device, precision=precision, batch_size=batch_size)
    m = metrics_from_logits(logits, split.y, lm.classes)
    m.update(trust_metrics(lm, split, logits, device=device, precision=precision, batch_size=batch_size,
                           features=features))
    if mode != "none":
        from .arrays import note

        for said in tta_notes(lm.meta, run_dir=lm.path, mode=mode):
            note(said)  # attributed to the caller's line outside minivision
        tta_logits, extra = tta_scores(lm, split, mode, device=device, precision=precision, batch_size=batch_size,
                                       plain=logits)
        m.update(tta_figures(m, metrics_from_logits(tta_logits, split.y, lm.classes), mode), **extra)
    return only_present(m, match, lm.classes)


def tta_scores(lm: LoadedModel, split: Split, mode: str, *, device: str = "auto", precision: str = "auto",
               batch_size: int = 256, plain: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """One pass of each test-time view of ``mode`` over ``split``'s pictures: (the log of the mean of the views'
    softmaxes, float32 (N, K), uncalibrated, as ``split_logits(tta=mode)`` gives it; {"tta_ece": the expected
    calibration error, a fraction, of the answers the model gives with these views: the mean of the views'
    softmax(logits / T); "tta_confidence": their direction, ``trust.direction``}, empty for an empty split).
    ``plain``: the pictures' own logits, float32 (N, K), when
    already at hand (they stand for the first view: one pass fewer). Raises MinivisionError for an unknown
    ``mode``."""
    import torch

    from .inference import mean_view_logits, pick_device, reading_precision, view_logits
    from .metrics import calibration
    from .trust import direction

    dev = pick_device(device)
    lm.model.to(dev)
    views = view_logits(lm.model, lm.preprocess, split.x, mode, device=dev, precision=reading_precision(precision),
                        batch_size=batch_size, first=plain is None)
    if plain is not None:
        views = torch.cat([plain[None].float(), views])
    # the answers as predict gives them: float32, the views' calibrated softmaxes summed in order, then divided
    answers = sum((v / lm.temperature).softmax(1) for v in views) / len(views)
    extra = ({"tta_ece": calibration(answers, split.y)["ece"], "tta_confidence": direction(answers, split.y)}
             if len(split.y) else {})
    return mean_view_logits(views), extra


# ----------------------------------------------------------------------------- test-time augmentation (TTA)

#: Datasets a mirror changes (digits): a TTA that mirrors scores pictures of other classes there.
MIRROR_SENSITIVE = ("mnist",)
MIRRORED_DIGITS_NOTE = "flip TTA mirrors the images; a mirrored digit is another digit"
NO_FLIPS_NOTE = ("this model was trained without horizontal flips: flip TTA shows it mirrored pictures it never saw "
                 "in training, which can lower its accuracy")


def trained_with_flips(meta: dict[str, Any], run_dir: str | Path | None = None) -> bool | None:
    """Whether a model's training pictures were mirrored left-right: model.json's ``augment.horizontal_flip``;
    for a run saved before that record, its args.yaml's ``augment`` (``run_dir``); None when neither says."""
    record = meta.get("augment")
    if isinstance(record, dict) and "horizontal_flip" in record:
        return bool(record["horizontal_flip"])
    if run_dir is None:
        return None
    import yaml  # the spec read here by hand: data.augment imports torch, and readers of an export have none

    try:
        args = yaml.safe_load((Path(run_dir) / "args.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if not isinstance(args, dict) or "augment" not in args:
        return None
    for item in str(args["augment"] or "").replace(" ", "").split(","):
        name, _, value = item.partition("=")
        if name == "flip":
            try:
                return float(value or 1) > 0
            except ValueError:
                return None
    return False


def mirrors(mode: str) -> bool:
    """Whether the views of TTA mode ``mode`` (``scores.TTA_VIEWS``) include a mirrored picture."""
    return any(mirrored for mirrored, _, _ in TTA_VIEWS[mode])


def tta_notes(meta: dict[str, Any], dataset_name: str | None = None, run_dir: str | Path | None = None,
              mode: str | None = None) -> list[str]:
    """The notes a TTA that mirrors pictures gets (one line each): a model trained without horizontal flips
    (``trained_with_flips``), data that a mirror changes (``MIRROR_SENSITIVE``: digits). ``mode``: the TTA in
    use, named in the notes (None: "flip", as ``NO_FLIPS_NOTE`` and ``MIRRORED_DIGITS_NOTE`` say it); a mode
    without a mirrored view ("none") gets no notes."""
    if mode is not None and not mirrors(mode):
        return []
    said = "flip" if mode is None else mode
    notes = []
    if trained_with_flips(meta, run_dir) is False:
        notes.append(NO_FLIPS_NOTE.replace("flip TTA", f"{said} TTA"))
    name = dataset_name or (meta.get("dataset") or {}).get("name")
    if str(name).lower() in MIRROR_SENSITIVE:
        notes.append(MIRRORED_DIGITS_NOTE.replace("flip TTA", f"{said} TTA"))
    return notes


def tta_figures(plain: dict[str, Any], tta: dict[str, Any], mode: str | None = None) -> dict[str, Any]:
    """The figures test-time augmentation adds to the plain metrics: ``tta_accuracy``, ``tta_loss`` and
    ``tta_change`` (the accuracy with TTA minus without, a fraction; negative when TTA lowers it); with ``mode``,
    also ``tta``, the mode that made ``tta``'s metrics (``format_metrics`` takes figures without it as flip's)."""
    out = {"tta_accuracy": tta["accuracy"], "tta_loss": tta["loss"], "tta_change": tta["accuracy"] - plain["accuracy"]}
    return out if mode is None else {**out, "tta": mode}


def format_metrics(m: dict[str, Any], classes: list[str], title: str) -> str:
    """A table a person reads: headline (with the TTA figures and their mode, when ``m`` has them),
    per-class precision/recall/F1, confusion matrix, most confused."""
    head = f"{title}: accuracy {m['accuracy']:.2%}  loss {m['loss']:.4f}  ({m['n']:,} images)"
    if "balanced_accuracy" in m:  # beside accuracy: on imbalanced data they differ (mean recall, mean F1 per class)
        head += f"\n  balanced accuracy {m['balanced_accuracy']:.2%}  macro F1 {m['macro_f1']:.2%}"
    if "tta_accuracy" in m:
        change = m.get("tta_change", m["tta_accuracy"] - m["accuracy"])
        mode = m.get("tta") or "flip"  # figures saved before the mode was recorded were flip's
        head += (f"\n  with {mode} TTA: accuracy {m['tta_accuracy']:.2%}  loss {m['tta_loss']:.4f}  "
                 f"({100 * change:+.2f} points against {m['accuracy']:.2%} without)")
        if change < 0:
            head += (f"\n  {mode} TTA lowers the accuracy of this model on this data: --tta none answers "
                     "without it")
    width = max(len(c) for c in classes + ["macro average"])
    lines = [head, "", f"  {'class':<{width}}  precision  recall      F1  support"]
    rows = m.get("classes") or []
    for r in rows + ([macro_average(rows)] if rows else []):
        lines.append(f"  {r['class']:<{width}}  {r['precision']:>9.2%}  {r['recall']:>6.2%}  {r['f1']:>6.2%}"
                     f"  {r['support']:>7,}")
    # one column per predicted class, headed by its number; each row starts with its number and name
    lines += ["", "confusion matrix (rows: true class, columns: predicted class by number):"]
    cell = max(5, len(str(max(max(r) for r in m["confusion"]))) + 1, len(str(len(classes) - 1)) + 1)
    num = len(str(len(classes) - 1))
    lines.append(" " * (2 + num + 1 + width) + "".join(f"{i:>{cell}}" for i in range(len(classes))))
    scored = set(m.get("classes_scored") or classes)  # data holding a subset: rows of its classes only
    for i, (name, row) in enumerate(zip(classes, m["confusion"], strict=False)):
        if name not in scored:
            continue
        lines.append(f"  {i:>{num}} {name:<{width}}" + "".join(f"{v:>{cell}}" for v in row))
    trust_line = format_trust(m)
    if trust_line:
        lines += ["", trust_line]
    if m.get("most_confused"):
        lines += ["", "most confused (true -> predicted: images):"]
        lines += [f"  {p['true']} -> {p['predicted']}: {p['count']:,} ({p['fraction_of_true']:.1%} of {p['true']})"
                  for p in m["most_confused"][:5]]
    return "\n".join(lines)


def format_trust(m: dict[str, Any]) -> str:
    """The calibration and unsure lines of ``trust_metrics``' figures ("" when absent), e.g.
    "ECE 1.2% after temperature scaling, over-confident (T = 0.71; 8.6% before, under-confident)"."""
    if "ece_before" not in m:
        return ""
    import math

    if not math.isfinite(m["ece"]):
        return ""
    conf = m.get("confidence") or {}
    if m.get("calibrated"):
        line = (f"ECE {m['ece']:.1%} after temperature scaling, {conf.get('after')} (T = {m['temperature']:.2f}; "
                f"{m['ece_before']:.1%} before, {conf.get('before')})")
    else:
        line = (f"ECE {m['ece']:.1%} ({conf.get('before')}; the scores are not calibrated: "
                "`minivision calibrate RUN` fits a temperature)")
    if "tta_ece" in m and math.isfinite(m["tta_ece"]):
        line += f"\nanswers with {m.get('tta') or 'flip'} TTA: ECE {m['tta_ece']:.1%}" + (
            f", {m['tta_confidence']}" if m.get("tta_confidence") else "")
    u = m.get("unsure")
    if u:
        def pct(v):
            return "n/a" if v is None else f"{v:.1%}"
        line += (f"\nunsure: {u['share']:.1%} of the pictures ({u['n']:,}); top-1 accuracy "
                 f"{pct(u['accuracy_confident'])} among the confident, {pct(u['accuracy_unsure'])} among the unsure")
    return line
