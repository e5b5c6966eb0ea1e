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
                     tta_logits: torch.Tensor | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write every report file into ``run_dir``; returns the metrics, calibration and file paths.

    ``tta_logits`` (flip test-time augmentation) adds its accuracy beside the plain one."""
    from .fonts import font_note
    from .history import plot_history
    from .html import write_report
    from .plots import image_grid, plot_calibration, plot_confusion
    from .style import RIGHT, WRONG, figure_of, save_figure

    run_dir = Path(run_dir)
    if (missing := font_note(classes)) is not None:  # one line instead of matplotlib's glyph warnings
        log(missing)
    y = split.y
    probs = torch.softmax(logits, 1)
    metrics = metrics_from_logits(logits, y, classes)
    tta = metrics_from_logits(tta_logits, y, classes) if tta_logits is not None else None
    headline = headline_for(meta, metrics, split_name, parameters, tta)
    calib = calibration(probs, y)
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
        titles = [f"true: {classes[int(y[i])]}\npred: {classes[int(pred[i])]} {_pct(float(conf[i]))}" for i in worst]
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
    titles = [f"{classes[int(pred[i])]} {_pct(float(conf[i]))}\n({classes[int(y[i])]})" for i in pick]
    colors = [RIGHT if int(pred[i]) == int(y[i]) else WRONG for i in pick]
    right = sum(c == RIGHT for c in colors)
    fig = image_grid(split.x[pick], titles, colors=colors,
                     title=f"Predictions on {len(pick)} random {split_name} images: predicted (true), "
                           f"{right} right, {len(pick) - right} wrong")
    files["predictions"] = save_figure(fig, run_dir / "predictions.png")
    files["calibration"] = save_figure(plot_calibration(calib), run_dir / "calibration.png")

    images = {k: v for k, v in files.items() if k != "per_class"}
    write_report(run_dir / "report.html", title=f"minivision report: {run_dir.name}", headline=headline,
                 settings=settings, dataset=dataset, images=images, per_class=metrics["classes"],
                 confused=metrics["most_confused"], calibration_ece=calib["ece"], notes=list(notes))
    files["report"] = run_dir / "report.html"
    if metrics["most_confused"]:
        top = "; ".join(f"{p['true']} -> {p['predicted']} {p['count']}" for p in metrics["most_confused"][:3])
        log(f"most confused ({split_name}): {top}")
    log(f"report: {run_dir / 'report.html'} (confusion matrices, per-class table, mistakes, predictions, "
        f"calibration ECE {calib['ece']:.2%})")
    return {"metrics": metrics, "tta_metrics": tta, "calibration": calib, "files": files}


def headline_for(meta: dict[str, Any], metrics: dict[str, Any], split_name: str, parameters: int,
                 tta: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """The big numbers at the top of report.html."""
    rows = [(f"{split_name} accuracy", f"{metrics['accuracy']:.2%}")]
    if tta:
        rows.append((f"{split_name} accuracy, flip TTA", f"{tta['accuracy']:.2%}"))
    rows += [(f"{split_name} loss", f"{metrics['loss']:.4f}"), ("macro F1", f"{metrics['macro_f1']:.2%}"),
             ("calibration error (ECE)", f"{metrics['ece']:.2%}"),
             ("model", str(meta.get("architecture", {}).get("name", "?"))), ("parameters", f"{parameters:,}"),
             ("dataset", str(meta.get("dataset", {}).get("name", "?")))]
    m = meta.get("metrics", {})
    if m.get("train_seconds") is not None:
        rows.append((f"train time ({m.get('epochs', '?')} epochs)", f"{m['train_seconds']:.1f} s"))
    if m.get("val_accuracy") is not None and not math.isnan(m["val_accuracy"]):
        rows.append((f"best val accuracy (epoch {m.get('best_epoch', '?')})", f"{m['val_accuracy']:.2%}"))
    return rows


def dataset_rows(ds: Any, source: str | None = None) -> list[tuple[str, str]]:
    h, w = ds.image_size
    rows = [("name", ds.name), ("classes", ", ".join(ds.classes)), ("images", f"{ds.channels} x {h} x {w} uint8")]
    for name in ("train", "val", "test"):
        s = getattr(ds, name)
        if s is not None and len(s):
            counts = torch.bincount(s.y, minlength=len(ds.classes)).tolist()
            rows.append((name, f"{len(s):,} images; per class {min(counts):,}-{max(counts):,}"))
    if source or ds.source:
        rows.append(("source", str(source or ds.source)))
    if ds.skipped:
        rows.append(("skipped files", f"{len(ds.skipped)} (listed in skipped.txt)"))
    return rows


def report_for_model(lm: Any, ds: Any, split_name: str, split: Split, logits: torch.Tensor,
                     tta_logits: torch.Tensor | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The report of a saved model (``evaluate --report``, ``Classifier.report``), in its own folder."""
    from ..errors import MinivisionError
    from ..runfiles import read_args
    from .history import read_history

    history = read_history(lm.path / "results.csv") if (lm.path / "results.csv").is_file() else None
    try:
        settings = read_args(lm.path).to_dict()
    except MinivisionError:
        settings = {"model": lm.name, "note": "no args.yaml in this folder"}
    notes = [f"written by `minivision evaluate --report` on the {split_name} split of {ds.name}"]
    trained_on = lm.meta.get("dataset", {}).get("name")
    if trained_on and trained_on != ds.name:
        notes.append(f"the model was trained on {trained_on}")
    return write_run_report(lm.path, classes=lm.classes, split=split, split_name=split_name, logits=logits,
                            history=history, meta=lm.meta, parameters=sum(p.numel() for p in lm.model.parameters()),
                            settings=settings, dataset=dataset_rows(ds), notes=notes, tta_logits=tta_logits, log=log)
