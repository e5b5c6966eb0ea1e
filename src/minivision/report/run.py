"""The files of a run folder a person opens: confusion matrices, per-class table, mistakes,
predictions, calibration and ``report.html``, written at the end of training and by
``minivision evaluate RUN --report``.

Everything is computed from one pass of logits over the scored split; the pictures are drawn with
``report.plots`` and the page with ``report.html``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..data.dataset import Split
from ..fileio import write_text
from ..metrics import calibration, macro_average, metrics_from_logits
from .fonts import isolate

REPORT_FILES = ("results.png", "confusion_matrix.png", "confusion_matrix_normalized.png", "per_class.csv",
                "mistakes.png", "predictions.png", "calibration.png", "report.html")
N_MISTAKES = 30     # 3 rows of 10
N_PREDICTIONS = 40  # the tutorials' 4 x 10 grid


def _pct(p: float) -> str:
    return f"{p:.0%}" if p < 0.995 else f"{p:.1%}"


def worst_mistakes(probs: torch.Tensor, y: torch.Tensor, n: int = N_MISTAKES) -> torch.Tensor:
    """Indices of wrong predictions, highest loss (lowest probability of the true class) first."""
    wrong = (probs.argmax(1) != y).nonzero().flatten()
    loss = -probs[wrong, y[wrong]].clamp_min(1e-12).log()
    return wrong[loss.argsort(descending=True)[:n]]


def sample_indices(n_total: int, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` images drawn at random (seeded), in their dataset order."""
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_total, generator=g)[:n].sort().values


def write_per_class_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["class", "precision", "recall", "f1", "support"])
    for r in rows + [macro_average(rows)]:
        w.writerow([r["class"], f"{r['precision']:.6f}", f"{r['recall']:.6f}", f"{r['f1']:.6f}", r["support"]])
    write_text(path, buf.getvalue())


def write_run_report(run_dir: Path, *, classes: list[str], split: Split, split_name: str, logits: torch.Tensor,
                     history: list[dict[str, float]] | None, meta: dict[str, Any], parameters: int,
                     settings: dict[str, Any], dataset: list[tuple[str, str]], notes: list[str] = (),
                     tta_logits: torch.Tensor | None = None, log: Callable[[str], None] = print,
                     tta_mode: str | None = None) -> dict[str, Any]:
    """Write every report file into ``run_dir``; returns the metrics, tta_metrics (None without ``tta_logits``),
    calibration and file paths.

    ``tta_logits``, float (N, K), the split's logits with test-time augmentation, add their accuracy beside the
    plain one, named by ``tta_mode`` (the view set that made them; None: the model's own, ``meta["tta"]``, or
    flip for a model without one). When
    ``meta["calibration"]`` holds a temperature T, the scores drawn (predictions, mistakes) are
    softmax(logits / T) and the calibration section compares T = 1 with T on this split; the returned
    ``calibration`` is the uncalibrated one, ``calibrated`` the one with T (or None)."""
    from .fonts import font_note
    from .history import plot_history
    from .html import write_report
    from .plots import image_grid, plot_calibration, plot_confusion
    from .style import RIGHT, WRONG, figure_of, save_figure

    run_dir = Path(run_dir)
    if (missing := font_note(classes)) is not None:  # one line instead of matplotlib's glyph warnings
        log(missing)
    y = split.y
    temperature = temperature_of(meta)
    probs = torch.softmax(logits / (temperature or 1.0), 1)  # the scores a user is shown
    metrics = metrics_from_logits(logits, y, classes)
    tta = metrics_from_logits(tta_logits, y, classes) if tta_logits is not None else None
    details = calibration_details(logits, y, split_name, meta)
    headline = headline_for(meta, metrics, split_name, parameters, tta, details, tta_mode)
    calib = calibration(torch.softmax(logits, 1), y)
    calib_after = calibration(probs, y) if temperature else None
    files: dict[str, Path] = {}

    if history:
        files["results"] = save_figure(plot_history(history), run_dir / "results.png")
    files["confusion"] = save_figure(plot_confusion(metrics["confusion"], classes), run_dir / "confusion_matrix.png")
    files["confusion_normalized"] = save_figure(plot_confusion(metrics["confusion"], classes, normalize=True),
                                                run_dir / "confusion_matrix_normalized.png")
    write_per_class_csv(run_dir / "per_class.csv", metrics["classes"])
    files["per_class"] = run_dir / "per_class.csv"

    conf, pred = probs.max(1)
    worst = worst_mistakes(probs, y)
    if len(worst):
        titles = [f"true: {isolate(classes[int(y[i])])}\npred: {isolate(classes[int(pred[i])])} {_pct(float(conf[i]))}"
                  for i in worst]
        fig = image_grid(split.x[worst], titles, colors=[WRONG] * len(worst),
                         title=f"The {len(worst)} worst mistakes on the {split_name} split (highest loss first)")
        files["mistakes"] = save_figure(fig, run_dir / "mistakes.png")
    else:  # still written: an older report's mistakes must not stay beside this model's figures
        fig, ax = figure_of(None, 6, 1.2)
        ax.axis("off")
        ax.text(0.5, 0.5, f"No mistakes on the {len(y):,} {split_name} images", ha="center", va="center",
                fontsize=12, color=RIGHT)
        files["mistakes"] = save_figure(fig, run_dir / "mistakes.png")

    pick = sample_indices(len(y), min(N_PREDICTIONS, len(y)))
    titles = [f"{isolate(classes[int(pred[i])])} {_pct(float(conf[i]))}\n({isolate(classes[int(y[i])])})" for i in pick]
    colors = [RIGHT if int(pred[i]) == int(y[i]) else WRONG for i in pick]
    right = sum(c == RIGHT for c in colors)
    fig = image_grid(split.x[pick], titles, colors=colors,
                     title=f"Predictions on {len(pick)} random {split_name} images: predicted (true), "
                           f"{right} right, {len(pick) - right} wrong")
    files["predictions"] = save_figure(fig, run_dir / "predictions.png")
    files["calibration"] = save_figure(plot_calibration(calib, after=calib_after, temperature=temperature),
                                       run_dir / "calibration.png")

    if (run_dir / "inspect.png").is_file():  # written by `minivision inspect RUN` (inspect_model.inspect_report)
        files["inspect"] = run_dir / "inspect.png"
    images = {k: v for k, v in files.items() if k != "per_class"}
    alts = figure_alts(classes, split_name, metrics, history, probs, y, worst, len(pick), right, details)
    write_report(run_dir / "report.html", title=f"minivision report: {run_dir.name}", headline=headline,
                 settings=settings_as_used(settings, meta), dataset=dataset, images=images,
                 per_class=metrics["classes"], confused=metrics["most_confused"],
                 calibration_ece=(calib_after or calib)["ece"],
                 notes=list(notes), calibration=details, used=used_rows(meta, settings),
                 run_path=run_path_for(run_dir), alts=alts)
    files["report"] = run_dir / "report.html"
    if metrics["most_confused"]:
        top = "; ".join(f"{p['true']} -> {p['predicted']} {p['count']}" for p in metrics["most_confused"][:3])
        log(f"most confused ({split_name}): {top}")
    shown = (f"{split_name} ECE {calib['ece']:.2%} -> {calib_after['ece']:.2%} with temperature {temperature:.3g}"
             if calib_after is not None else f"{split_name} ECE {calib['ece']:.2%}")
    log(f"report: {run_dir / 'report.html'} (confusion matrices, per-class table, mistakes, predictions, "
        f"calibration {shown})")
    return {"metrics": metrics, "tta_metrics": tta, "calibration": calib, "calibrated": calib_after, "files": files}


# ---------------------------------------------------------------------------------------------- calibration

def temperature_of(meta: dict[str, Any]) -> float | None:
    """The temperature T of model.json's ``calibration`` entry (trust.py), or None when the run has none
    (runs from before temperature scaling: scores shown uncalibrated, T = 1)."""
    from ..trust import temperature_of as trust_temperature

    return trust_temperature(meta) if isinstance(meta.get("calibration"), dict) else None


def _scores_summary(probs: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    from ..trust import direction

    conf, pred = probs.max(1)
    return {"n": len(y), "ece": calibration(probs, y)["ece"], "confidence": float(conf.double().mean()),
            "accuracy": float((pred == y).double().mean()), "direction": direction(probs, y)}


def calibration_details(logits: torch.Tensor, y: torch.Tensor, split_name: str,
                        meta: dict[str, Any]) -> dict[str, Any] | None:
    """What the report says about calibration on the scored split (``html.render_report``'s
    ``calibration``): ``before`` (softmax of the logits) and, when model.json records a temperature T,
    ``after`` (softmax(logits / T)); each with ECE, mean top score, accuracy and direction; ``note``: why the fit
    kept T = 1 (model.json's ``calibration.note``), or None; ``tta``: the view set the model answers with, or
    None (these figures are then of the picture alone). None for an empty split."""
    if len(y) == 0:
        return None
    t = temperature_of(meta)
    entry = meta.get("calibration") if t else None
    return {"split": split_name, "before": _scores_summary(torch.softmax(logits, 1), y),
            "after": _scores_summary(torch.softmax(logits / t, 1), y) if t else None, "temperature": t,
            "fitted_on": entry.get("fitted_on") if entry else None, "fitted_n": entry.get("n") if entry else None,
            "note": entry.get("note") if entry else None,  # why T = 1 was kept, when it was
            "tta": meta.get("tta") if meta.get("tta") not in (None, "none") else None}


# ---------------------------------------------------------------------------------------------- words

def figure_alts(classes: list[str], split_name: str, metrics: dict[str, Any],
                history: list[dict[str, float]] | None, probs: torch.Tensor, y: torch.Tensor,
                worst: torch.Tensor, n_shown: int, n_right: int,
                details: dict[str, Any] | None) -> dict[str, str]:
    """Alt texts that say what each picture shows (its figures in words, for a screen reader)."""
    n = len(y)
    alts: dict[str, str] = {}
    if history:
        val = [r["val_accuracy"] for r in history if not math.isnan(r["val_accuracy"])]
        best = max(history, key=lambda r: -1.0 if math.isnan(r["val_accuracy"]) else r["val_accuracy"])
        if val:
            trend = (f"validation accuracy from {val[0]:.1%} to {val[-1]:.1%}, best {best['val_accuracy']:.1%} "
                     f"at epoch {best['epoch']}")
        else:
            trend = f"train accuracy {history[-1]['train_accuracy']:.1%} at the end"
        alts["results"] = (f"Learning curves over {len(history)} epoch{'s' if len(history) != 1 else ''}: {trend}; "
                           f"train loss from {history[0]['train_loss']:.3f} to {history[-1]['train_loss']:.3f}.")
    cm = metrics["confusion"]
    correct = sum(cm[i][i] for i in range(len(classes)))
    pair = metrics["most_confused"][0] if metrics["most_confused"] else None
    alts["confusion"] = (f"Confusion matrix of {n:,} {split_name} images over {len(classes)} classes, true class "
                         f"in rows, predicted in columns: {correct:,} on the diagonal (right)"
                         + (f"; the largest mistake: {pair['count']:,} {pair['true']} predicted as {pair['predicted']}."
                            if pair else "; no mistakes."))
    recall = [(r["recall"], r["class"]) for r in metrics["classes"] if r["support"]]
    if recall:
        lo, hi = min(recall), max(recall)
        alts["confusion_normalized"] = (f"Confusion matrix in percent of each true class: recall from {lo[0]:.0%} "
                                        f"({lo[1]}) to {hi[0]:.0%} ({hi[1]}).")
    if len(worst):
        i = int(worst[0])
        alts["mistakes"] = (f"The {len(worst)} {split_name} images the model got most wrong, each titled with its "
                            f"true class and the predicted class with its score; the worst: a {classes[int(y[i])]} "
                            f"predicted as {classes[int(probs[i].argmax())]} at {float(probs[i].max()):.0%}.")
    else:
        alts["mistakes"] = f"No mistakes on the {n:,} {split_name} images."
    alts["predictions"] = (f"{n_shown} random {split_name} images, each titled with the predicted class, its score "
                           f"and the true class: {n_right} right (green), {n_shown - n_right} wrong (red).")
    if details:
        b, a = details["before"], details["after"]
        text = (f"Reliability diagram: accuracy against confidence in 15 bins; mean top score {b['confidence']:.1%} "
                f"at {b['accuracy']:.1%} accuracy, {b['direction']}, ECE {b['ece']:.2%}")
        if a:
            text += (f"; after temperature scaling (T = {details['temperature']:.3g}) mean top score "
                     f"{a['confidence']:.1%}, {a['direction']}, ECE {a['ece']:.2%}")
        alts["calibration"] = text + "."
    return alts


def run_path_for(run_dir: Path) -> str:
    """The run folder's absolute path (symbolic links resolved), for the report's commands: a path
    relative to the folder training ran in fails when the command is pasted anywhere else."""
    return str(Path(run_dir).resolve())


def used_rows(meta: dict[str, Any], settings: dict[str, Any]) -> list[tuple[str, str]]:
    """The settings as used (model.json's ``used``, ``budget``, ``created``, ``versions``) as (name, text)
    rows for the report; a value given differently in ``settings`` (args.yaml: ``device: auto``) reads
    ``given: auto -> used: cpu``. A run without ``used`` (older) shows what args.yaml gave and says so."""
    used = meta.get("used") if isinstance(meta.get("used"), dict) else {}
    rows: list[tuple[str, str]] = []
    when = meta.get("created") or used.get("started")
    if when:
        rows.append(("date", _date_text(str(when))))
    for key, name in (("device", "device"), ("precision", "precision"), ("batch_size", "batch size")):
        given, value = settings.get(key), used.get(key)
        if value is None:
            if given is not None:
                rows.append((name, f"given: {given} (the value used is not recorded for this run)"))
        elif given is not None and str(given) != str(value):
            rows.append((name, f"given: {given} -> used: {value}"))
        else:
            rows.append((name, str(value)))
    m = meta.get("metrics", {})
    budget = meta.get("budget") if isinstance(meta.get("budget"), dict) else None
    if m.get("epochs") is not None:
        planned = used.get("epochs_planned")
        text = f"{m['epochs']:,} trained"
        if planned is not None and planned != m["epochs"]:
            text += f" of {planned:,} planned"
        if budget and budget.get("total_steps"):
            text += f" ({budget['total_steps']:,} steps)"
        rows.append(("epochs", text))
    if budget:
        rows.append(("time budget", budget_text(budget)))
    start = pretrained_rows(meta.get("pretrained"))
    rows += start
    if not start and isinstance(meta.get("init_from"), dict) and meta["init_from"].get("from"):
        rows.append(("started from", f"the weights of {meta['init_from']['from']}"))
    hw = used.get("hardware") if isinstance(used.get("hardware"), dict) else {}
    if hw.get("gpu"):
        rows.append(("GPU", str(hw["gpu"])))
    if hw.get("cpu"):
        rows.append(("CPU", str(hw["cpu"])))
    if "cpu_flags" in hw:
        from ..runfiles import CPU_FLAGS

        flags = ", ".join(hw["cpu_flags"]) or "none"
        rows.append(("CPU features", f"{flags} (of {', '.join(CPU_FLAGS)})"))
    if hw.get("cores") or hw.get("threads"):
        rows.append(("cores, threads", f"{hw.get('cores', '?')} cores, {hw.get('threads', '?')} PyTorch threads"))
    if hw.get("os"):
        rows.append(("system", str(hw["os"])))
    versions = meta.get("versions")
    if isinstance(versions, dict) and versions:
        rows.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items())))
    return rows


def pretrained_rows(record: Any) -> list[tuple[str, str]]:
    """model.json's ``pretrained`` entry (``finetune.Start.record()``: backbone, from, why, freeze,
    input_size, phases) as (name, text) rows for the report: the backbone and what it was
    pretrained on (its card, when this installation has it), why it was chosen, the working size,
    and each phase (what it trains, epochs, learning rate, schedule). No rows for a run trained
    from scratch (no entry, or neither a backbone nor a weights file)."""
    if not isinstance(record, dict) or not (record.get("backbone") or record.get("from")):
        return []
    rows: list[tuple[str, str]] = []
    name = record.get("backbone")
    if name:
        text = str(name)
        try:
            from ..pretrained import backbone_info

            card = backbone_info(str(name))
            text += f", pretrained on {card.pretrained_on} (by {card.by}; licence {_short_licence(card)})"
        except Exception:  # noqa: BLE001 - a card missing from this installation: the name still says it
            pass
        rows.append(("started from", text))
    else:
        rows.append(("started from", f"the weights of {record['from']}"))
    if record.get("why"):
        rows.append(("why", str(record["why"])))
    if record.get("freeze"):
        rows.append(("frozen", "yes: the backbone's features were computed once; only the new head trained"))
    size = record.get("input_size")
    if size:
        rows.append(("working size", f"{int(size)} x {int(size)} px (the network resizes each picture to this)"))
    phases = [p for p in record.get("phases") or [] if isinstance(p, dict)]
    if phases:
        rows.append(("phases", "; ".join(_phase_text(p) for p in phases)))
    return rows


def _short_licence(card: Any) -> str:
    from ..pretrained import licence_short

    return licence_short(card.licence, card.card)


def _phase_text(phase: dict[str, Any]) -> str:
    n = phase.get("epochs", "?")
    text = f"{phase.get('name', '?')}: {n} epoch{'' if n == 1 else 's'}"
    if phase.get("trains"):
        text += f" training {phase['trains']}"
    if phase.get("lr") is not None:
        try:
            text += f", learning rate {float(phase['lr']):g}"
        except (TypeError, ValueError):
            pass
    if phase.get("schedule"):
        text += f", {phase['schedule']} schedule"
    return text


def budget_text(budget: dict[str, Any]) -> str:
    """model.json's ``budget`` (``budget.Plan``) in words."""
    from ..budget import format_duration, format_epoch_seconds

    try:
        text = f"a {format_duration(float(budget['budget_s']))} budget: "
    except (KeyError, TypeError, ValueError):
        text = ""
    text += f"network {budget.get('model', '?')}"
    probed = budget.get("probed_s_per_epoch") or {}
    if probed:
        text += " (timed: " + ", ".join(f"{k} {format_epoch_seconds(v)}/epoch" for k, v in probed.items()) + ")"
    if budget.get("resumed"):
        text += "; resumed with the step count planned before"
    elif budget.get("total_steps"):
        text += f"; {int(budget['total_steps']):,} steps planned from the measured speed"
        replans = int(budget.get("replans") or 0)
        if replans:
            text += f", re-planned {replans} time{'s' if replans != 1 else ''} while training"
    return text


def _date_text(iso: str) -> str:
    from datetime import datetime

    try:
        return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M %Z").strip()
    except ValueError:
        return iso


def settings_as_used(settings: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """``settings`` (args.yaml) less what ``used_rows`` shows as used (device, precision, batch size),
    when model.json records it."""
    used = meta.get("used") if isinstance(meta.get("used"), dict) else {}
    return {k: v for k, v in settings.items() if not (k in ("device", "precision", "batch_size") and k in used)}


def headline_for(meta: dict[str, Any], metrics: dict[str, Any], split_name: str, parameters: int,
                 tta: dict[str, Any] | None = None, calibration: dict[str, Any] | None = None,
                 tta_mode: str | None = None) -> list[tuple[str, str]]:
    """The big numbers at the top of report.html. The ECE is that of the scores shown: after temperature
    scaling when ``calibration`` (``calibration_details``) has it, as ``evaluate`` prints it. ``tta``: the
    metrics with test-time augmentation, whose row names ``tta_mode`` (None: the model's own, else flip)."""
    rows = [(f"{split_name} accuracy", f"{metrics['accuracy']:.2%}")]
    if metrics.get("balanced_accuracy") is not None:  # beside accuracy: every class counts the same
        rows.append((f"{split_name} balanced accuracy", f"{metrics['balanced_accuracy']:.2%}"))
    if tta:
        rows.append((f"{split_name} accuracy, {_tta_name(tta_mode, meta)} TTA", f"{tta['accuracy']:.2%}"))
    shown = calibration["after"] if calibration and calibration.get("after") else None
    ece = ("calibration error (ECE)", f"{shown['ece'] if shown else metrics['ece']:.2%}")  # of the scores shown
    rows += [(f"{split_name} loss", f"{metrics['loss']:.4f}"), ("macro F1", f"{metrics['macro_f1']:.2%}"), ece,
             ("model", str(meta.get("architecture", {}).get("name", "?"))), ("parameters", f"{parameters:,}"),
             ("dataset", str(meta.get("dataset", {}).get("name", "?")))]
    m = meta.get("metrics", {})
    if m.get("train_seconds") is not None:
        epochs = m.get("epochs", "?")
        rows.append((f"train time ({epochs} epoch{'' if epochs == 1 else 's'})", f"{m['train_seconds']:.1f} s"))
    stopping = meta.get("early_stopping") if isinstance(meta.get("early_stopping"), dict) else None
    if m.get("val_accuracy") is not None and not math.isnan(m["val_accuracy"]):
        best = "lowest val loss" if stopping else "best val accuracy"
        rows.append((f"val accuracy, {best} (epoch {m.get('best_epoch', '?')})" if stopping else
                     f"{best} (epoch {m.get('best_epoch', '?')})", f"{m['val_accuracy']:.2%}"))
    if stopping:  # train --patience N
        planned = (meta.get("used") or {}).get("epochs_planned")
        at = stopping.get("stopped_epoch")
        rows.append((f"early stopping (patience {stopping.get('patience')})",
                     f"stopped after epoch {at}" + (f" of {planned}" if planned else "") if at
                     else "ran its full length"))
    return rows


def _tta_name(mode: str | None, meta: dict[str, Any]) -> str:
    """The view set TTA figures were made with: ``mode`` when given, else the model's own (``meta["tta"]``),
    else flip (reports written before models had their own)."""
    if mode is not None and mode != "none":
        return mode
    own = meta.get("tta")
    return own if isinstance(own, str) and own not in ("", "none") else "flip"


def dataset_rows(ds: Any, source: str | None = None) -> list[tuple[str, str]]:
    h, w = ds.image_size
    rows = [("name", ds.name), ("classes", ", ".join(ds.classes)), ("images", f"{ds.channels} x {h} x {w} uint8")]
    for name in ("train", "val", "test"):
        s = getattr(ds, name)
        if s is not None and len(s):
            counts = torch.bincount(s.y, minlength=len(ds.classes)).tolist()
            lo, hi = min(counts), max(counts)
            per = f"{lo:,} per class" if lo == hi else f"{lo:,}-{hi:,} per class"
            rows.append((name, f"{len(s):,} images; {per}"))
    if source or ds.source:
        rows.append(("source", str(source or ds.source)))
    if ds.skipped:
        rows.append(("skipped files", f"{len(ds.skipped)} (listed in skipped.txt)"))
    return rows


def report_for_model(lm: Any, ds: Any, split_name: str, split: Split, logits: torch.Tensor,
                     tta_logits: torch.Tensor | None = None, log: Callable[[str], None] = print,
                     by: str = "minivision evaluate --report", tta_mode: str | None = None) -> dict[str, Any]:
    """The report of a saved model (``evaluate --report``, ``Classifier.report``, ``inspect``: ``by``), in its
    own folder. ``tta_logits`` and ``tta_mode`` as ``write_run_report``."""
    from ..errors import MinivisionError
    from ..runfiles import read_args
    from .history import read_history

    history = read_history(lm.path / "results.csv") if (lm.path / "results.csv").is_file() else None
    try:
        settings = read_args(lm.path).to_dict()
    except MinivisionError:
        settings = {"model": lm.name, "note": "no args.yaml in this folder"}
    notes = [f"written by `{by}` on the {split_name} split of {ds.name}"]
    trained_on = lm.meta.get("dataset", {}).get("name")
    if trained_on and trained_on != ds.name:
        notes.append(f"the model was trained on {trained_on}")
    return write_run_report(lm.path, classes=lm.classes, split=split, split_name=split_name, logits=logits,
                            history=history, meta=lm.meta, parameters=sum(p.numel() for p in lm.model.parameters()),
                            settings=settings, dataset=dataset_rows(ds), notes=notes, tta_logits=tta_logits, log=log,
                            tta_mode=tta_mode)
