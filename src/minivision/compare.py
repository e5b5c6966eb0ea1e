"""``minivision compare``: the tutorials' "which network is best" table, from run folders or trained here.

Two ways in: ``compare_runs`` reads finished run folders; ``train_and_compare`` trains several
models on one dataset (loaded once) with the same epochs, the same time budget, or each model's
own tutorial settings, each run in its own folder inside ``runs/compare``. Both give rows (one dict
per run, raw numbers) that ``write_comparison`` turns into ``compare.csv`` (every field, for a
notebook), ``compare.md`` (a table to paste into a README) and ``compare.png`` (accuracy against
training time, the classic trade-off). Rows keep the user's order: the order models were named
in is usually the story (linear -> MLP -> CNN), so the best one is marked rather than sorted first.

A sweep trains one model once per value of one setting (``--batch-size 32,128,512``, ``--epochs 5,10,40``,
``--lr 3e-4,1e-3,3e-3``: any training setting, or ``--seed``): the rows are named by the value
(``cnn2 --batch-size 32``) and ``curves.png`` overlays their learning curves (validation accuracy and loss per
epoch). One setting at a time: several comma lists (or several models with a list) are refused, as a grid
of every combination grows fast and its table no longer reads as one question.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .budget import format_duration, parse_duration
from .config import (
    COMPARE_FIXED,
    COMPARE_SWEEPABLE,
    SETTINGS,
    TrainConfig,
    check_settings,
    resolve,
)
from .config import compare_flag_settings as _flag_settings
from .data.dataset import Dataset
from .errors import MinivisionError
from .fileio import new_run_dir, write_text
from .models import count_parameters, model_info
from .models.summary import summarize, summary_totals
from .runfiles import load_model, resolve_model_path
from .scores import tta_mode
from .train import fit

__all__ = ["CompareInterrupted", "compare_runs", "format_table", "plot_comparison", "run_row", "train_and_compare",
           "write_comparison"]

# Field order of compare.csv; "tta_accuracy", "tta" and "error" appear only when some row has them.
FIELDS = ("model", "setting", "value", "data", "test_accuracy", "test_loss", "val_accuracy", "tta_accuracy", "tta",
          "parameters", "macs", "train_seconds", "epochs", "model_bytes", "run", "data_source", "options", "fixed",
          "error")
# setting, value: the swept setting and its value; fixed: the settings given for every run, as flags
_OPTIONAL = ("setting", "value", "tta_accuracy", "tta", "options", "fixed", "error")
# options: the builder options model.json records (architecture.kwargs), as "key=value" pairs


class CompareInterrupted(KeyboardInterrupt):
    """Ctrl-C during ``train_and_compare``, after the table of the finished models was written.

    A KeyboardInterrupt, so the CLI's handler exits 130 without knowing about it."""

    def __init__(self, folder: Path, rows: list[dict[str, Any]]) -> None:
        super().__init__(f"comparison interrupted; the models finished so far are in {folder}")
        self.folder, self.rows = folder, rows


# ----------------------------------------------------------------------------- Rows

def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def run_row(run: str | Path) -> dict[str, Any]:
    """One finished run folder (or its model.json / model.safetensors) as a row of raw numbers.

    A model that answers with test-time augmentation (model.json's ``tta``) has ``tta`` (the mode) and
    ``tta_accuracy``, its test accuracy with it as training recorded it (``test_accuracy_tta``, or an older
    run's ``tta_accuracy``; nan when none was recorded); a run that recorded one without a ``tta`` of its own
    has ``tta_accuracy`` too."""
    lm = load_model(run)  # a folder that is not a finished run raises a message naming it
    metrics = lm.meta.get("metrics") or {}
    dataset = lm.meta.get("dataset") or {}
    arch = lm.meta["architecture"]
    shape = (int(arch["in_channels"]), *(int(s) for s in arch["image_size"]))
    source = str(dataset.get("data") or dataset.get("name") or "?")
    if dataset.get("test_data"):
        source += f" + {dataset['test_data']}"
    row: dict[str, Any] = {
        "run": str(lm.path),
        "model": lm.name,
        "data": str(dataset.get("name") or dataset.get("data") or "?"),
        "test_accuracy": _number(metrics.get("test_accuracy")),
        "test_loss": _number(metrics.get("test_loss")),
        "val_accuracy": _number(metrics.get("val_accuracy")),  # the best epoch's, whose weights were kept
        "parameters": count_parameters(lm.model, trainable_only=True),
        "macs": summary_totals(summarize(lm.model, shape)).macs,
        "train_seconds": _number(metrics.get("train_seconds")),
        "epochs": int(metrics.get("epochs", 0)),
        "model_bytes": (lm.path / "model.safetensors").stat().st_size,
        "data_source": source,  # what the run was trained on (name or path): tells same-named files apart
    }
    if arch.get("kwargs"):
        row["options"] = dict(arch["kwargs"])  # the builder options it was made with (mvnet's stem, width...)
    own = tta_mode(None, lm.meta)  # the test-time augmentation the model answers with
    recorded = next((metrics[k] for k in ("test_accuracy_tta", "tta_accuracy") if k in metrics), None)
    if own != "none" or recorded is not None:  # "-" for a model answering with TTA that recorded no figure
        row["tta_accuracy"] = _number(recorded)
    if own != "none":
        row["tta"] = own
    return row


def compare_runs(runs: list[str | Path]) -> list[dict[str, Any]]:
    """Rows for finished run folders, in the order given; the same folder twice is refused."""
    if not runs:
        raise MinivisionError("compare: give at least one run folder")
    seen: dict[Path, str | Path] = {}
    for run in runs:
        key = resolve_model_path(run).resolve()
        if key in seen:
            raise MinivisionError(f"compare: {run} is given twice (also as {seen[key]})")
        seen[key] = run
    return [run_row(run) for run in runs]


# ----------------------------------------------------------------------------- Tables

def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _pct(v: Any) -> str:
    return f"{v:.2%}" if _finite(v) else "-"


def _loss(v: Any) -> str:
    return f"{v:.4f}" if _finite(v) else "-"


def _count(v: Any) -> str:
    return f"{int(v):,}" if _finite(v) else "-"


def _si(v: Any) -> str:
    """Multiply-adds: 7.84 K, 266 K, 1.23 M, 11.5 M, 4.56 G (three significant digits)."""
    if not _finite(v):
        return "-"
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if v >= scale:
            x = v / scale
            return f"{x:.2f} {unit}" if x < 10 else f"{x:.1f} {unit}" if x < 100 else f"{x:.0f} {unit}"
    return f"{int(v)}"


def _seconds(v: Any) -> str:
    """A duration in seconds for the table, compare.md and the bars: two significant digits under 0.1 s
    (``0.03 s``, ``0.0042 s``: a tiny run is not ``0.0 s``), one decimal up to 100 s, whole seconds beyond."""
    if not _finite(v):
        return "-"
    if 0 < v < 0.095:
        return f"{v:.2g} s"
    return f"{v:.1f} s" if v < 100 else f"{v:,.0f} s"


def _size(v: Any) -> str:
    """Bytes in decimal units (1 KB = 1000 bytes), as file managers on macOS and Linux show them."""
    if not _finite(v):
        return "-"
    if v < 1e3:
        return f"{int(v)} B"
    if v < 1e6:
        return f"{v / 1e3:.0f} KB"
    if v < 1e9:
        return f"{v / 1e6:.1f} MB"
    return f"{v / 1e9:.2f} GB"


# (field, terminal header, Markdown header, formatter); both tables have every column (and the run folder last)
_COLUMNS: tuple[tuple[str, str, str, Callable[[Any], str]], ...] = (
    ("test_accuracy", "test acc", "Test accuracy", _pct),
    ("tta_accuracy", "TTA acc", "Test accuracy (TTA)", _pct),
    ("test_loss", "test loss", "Test loss", _loss),
    ("val_accuracy", "val acc", "Validation accuracy", _pct),
    ("parameters", "params", "Parameters", _count),
    ("macs", "mult-adds", "Multiply-adds", _si),
    ("train_seconds", "train time", "Train time", _seconds),
    ("model_bytes", "size", "Model size", _size),
    ("epochs", "epochs", "Epochs", _count),
)


def _columns(rows: list[dict[str, Any]], markdown: bool) -> list[tuple[str, str, Callable[[Any], str]]]:
    """The table's columns; the TTA column only when some row has a TTA accuracy, its header naming the mode
    when every such row that says one says the same (``flip TTA acc``, ``Test accuracy (flip+shift TTA)``)."""
    has_tta = any("tta_accuracy" in r for r in rows)
    modes = {str(r["tta"]) for r in rows if "tta_accuracy" in r and r.get("tta")}
    named = f"{modes.pop()} TTA" if len(modes) == 1 else "TTA"
    out = []
    for key, term, md, fmt in _COLUMNS:
        if (key == "tta_accuracy" and not has_tta) or not (md or not markdown):
            continue
        if key == "tta_accuracy":
            term, md = f"{named} acc", f"Test accuracy ({named})"
        out.append((key, md if markdown else term, fmt))
    return out


def _status(row: dict[str, Any]) -> str:
    """What a row with an "error" shows in place of its accuracy."""
    return "interrupted" if str(row["error"]).startswith("interrupted") else "failed"


def _best_metric(rows: list[dict[str, Any]]) -> str | None:
    """Test accuracy decides; runs without a test split fall back to validation accuracy."""
    for key in ("test_accuracy", "val_accuracy"):
        if any(_finite(r.get(key)) for r in rows if not r.get("error")):
            return key
    return None


def _best(rows: list[dict[str, Any]]) -> tuple[str | None, set[int]]:
    key = _best_metric(rows)
    if key is None:
        return None, set()
    top = max(r[key] for r in rows if _finite(r.get(key)) and not r.get("error"))
    return key, {i for i, r in enumerate(rows) if not r.get("error") and r.get(key) == top}


def _swept(row: dict[str, Any]) -> str:
    """A sweep row's model and value as the flag that set it: ``cnn2 --batch-size 32``."""
    setting = SETTINGS.get(str(row["setting"]))
    option = setting.option if setting is not None else f"--{str(row['setting']).replace('_', '-')}"
    value = format_duration(row["value"]) if row["setting"] == "budget" and _finite(row["value"]) else row["value"]
    return f"{row.get('model', '?')} {option} {value}"


def _options(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The builder options a run's network was made with (model.json's ``architecture.kwargs``), with the
    builder's defaults for those it was not given, so two runs' options compare as they were built."""
    import inspect

    from .models.registry import model_info

    try:
        params = inspect.signature(model_info(name).builder).parameters
    except MinivisionError:  # a network this version does not register: its recorded options only
        return dict(kwargs)
    defaults = {k: p.default for k, p in params.items()
                if p.default is not inspect.Parameter.empty and k not in ("in_channels", "image_size", "num_classes")}
    return {**defaults, **kwargs}


def _labels(rows: list[dict[str, Any]]) -> list[str]:
    """Model names (a sweep's: with the value, ``cnn2 --epochs 10``). Where a name appears twice: the builder
    options that differ between those runs (``mvnet stem=whiten``), else the run folder's name."""
    names = [_swept(r) if r.get("setting") else str(r.get("model", "?")) for r in rows]
    differ = []
    for n, r in zip(names, rows, strict=True):
        group = [_options(str(o.get("model")), o.get("options") or {}) for m, o in zip(names, rows, strict=True)
                 if m == n]
        keys = sorted({k for g in group for k in g})
        own = _options(str(r.get("model")), r.get("options") or {})
        differ.append(" ".join(f"{k}={own.get(k)}" for k in keys if len({repr(g.get(k)) for g in group}) > 1))
    names = [f"{n} {d}" if d else n for n, d in zip(names, differ, strict=True)]
    labels = [n if names.count(n) == 1 else f"{n} ({Path(str(r.get('run') or '?')).name})"
              for n, r in zip(names, rows, strict=True)]
    return [lb if labels.count(lb) == 1 else f"{lb} #{i + 1}" for i, lb in enumerate(labels)]


def _datasets_note(rows: list[dict[str, Any]]) -> str | None:
    trained = [r for r in rows if not r.get("error")]
    sources = {str(r.get("data_source") or r.get("data")) for r in trained}
    if len(sources) <= 1:
        return None
    names = sorted({str(r.get("data")) for r in trained})
    shown = names if len(names) == len(sources) else sorted(sources)
    return f"runs use different datasets: {', '.join(shown)} (accuracies are not comparable across them)"


def _table_cells(rows: list[dict[str, Any]], markdown: bool) -> tuple[list[str], list[list[str]], set[int]]:
    """Header and body cells shared by the terminal and Markdown tables; also the best rows' indexes."""
    columns = _columns(rows, markdown)
    key, best = _best(rows)
    show_data = _datasets_note(rows) is not None
    header = ["Model" if markdown else "model"] + (["Data" if markdown else "data"] if show_data else [])
    header += [h for _, h, _ in columns]
    body = []
    for i, (label, row) in enumerate(zip(_labels(rows), rows, strict=True)):
        cells = [label] + ([str(row.get("data", "?"))] if show_data else [])
        for k, _, fmt in columns:
            text = _status(row) if row.get("error") and k == "test_accuracy" else fmt(row.get(k))
            if k == key and i in best:
                text = f"**{text}**" if markdown else f"{text} *"
            cells.append(text)
        body.append(cells)
    return header, body, best


def _footer(rows: list[dict[str, Any]], marker: str) -> list[str]:
    key, best = _best(rows)
    lines = []
    if best:
        which = "test accuracy" if key == "test_accuracy" else "validation accuracy (no test split)"
        lines.append(f"{marker} best {which}")
    fixed = next((r["fixed"] for r in rows if r.get("fixed")), None)
    if fixed:  # the row names give only what differs
        lines.append(f"every run: {fixed}")
    for label, row in zip(_labels(rows), rows, strict=True):
        if row.get("error"):
            lines.append(f"{label}: {row['error']}")
    note = _datasets_note(rows)
    if note:
        lines.append(f"note: {note}")
    return lines


def format_table(rows: list[dict[str, Any]]) -> str:
    """The comparison for the terminal: aligned columns in the order given, the best accuracy marked *."""
    if not rows:
        return "(no runs to compare)"
    header, body, best = _table_cells(rows, markdown=False)
    key = _best_metric(rows)
    header.append("run")
    for cells, row in zip(body, rows, strict=True):
        cells.append(str(row.get("run") or "-"))
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    # the best value carries " *": pad the others so the digits stay right-aligned in one column
    mark = {"test_accuracy": "test acc", "val_accuracy": "val acc"}.get(key or "")
    mark_col = header.index(mark) if mark in header else None

    def line(cells: list[str]) -> str:
        out = []
        for j, (cell, w) in enumerate(zip(cells, widths, strict=True)):
            if j == 0 or j == len(cells) - 1 or header[j] == "data":
                out.append(cell.ljust(w))
            elif j == mark_col and best and not cell.endswith(" *"):
                out.append((cell + "  ").rjust(w))
            else:
                out.append(cell.rjust(w))
        return "  ".join(out).rstrip()

    lines = [line(header), "  ".join("-" * w for w in widths)] + [line(c) for c in body]
    return "\n".join(lines + _footer(rows, "*"))


def format_markdown(rows: list[dict[str, Any]]) -> str:
    """The comparison as a GitHub Markdown table, the best accuracy in bold."""
    header, body, _ = _table_cells(rows, markdown=True)

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    header.append("Run")  # as the terminal table: every column, the run folder last
    for cells, row in zip(body, rows, strict=True):
        cells.append(f"`{row['run']}`" if row.get("run") else "-")
    align = ["---"] + ["---" if h in ("Data", "Run") else "---:" for h in header[1:]]
    lines = [line(header), "|" + "|".join(align) + "|"] + [line(c) for c in body]
    footer = [f.replace("|", "\\|") for f in _footer(rows, "**Bold**:")]
    return "\n".join(lines) + ("\n\n" + "  \n".join(footer) if footer else "") + "\n"


def format_csv(rows: list[dict[str, Any]]) -> str:
    """Every field, raw numbers (floats as Python writes them, so they read back exactly)."""
    present = {k for r in rows for k in r}
    fields = [f for f in FIELDS if f not in _OPTIONAL or f in present]
    fields += sorted(present - set(FIELDS))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(fields)
    for r in rows:
        w.writerow(["" if r.get(f) is None else repr(r[f]) if isinstance(r[f], float)
                    else " ".join(f"{k}={v}" for k, v in r[f].items()) if isinstance(r[f], dict) else r[f]
                    for f in fields])
    return buf.getvalue()


def write_comparison(rows: list[dict[str, Any]], folder: str | Path) -> dict[str, Path]:
    """``compare.csv``, ``compare.md`` and ``compare.png`` in ``folder``, each written atomically; for a sweep
    (rows with a ``setting``), also ``curves.png``: the runs' learning curves overlaid (``plot_curves``)."""
    from .report.style import save_figure

    folder = Path(folder)
    paths = {"csv": folder / "compare.csv", "md": folder / "compare.md", "png": folder / "compare.png"}
    write_text(paths["csv"], format_csv(rows))
    write_text(paths["md"], format_markdown(rows))
    save_figure(plot_comparison(rows), paths["png"])
    if any(r.get("setting") for r in rows) and any(_history(r) for r in rows):
        paths["curves"] = save_figure(plot_curves(rows), folder / "curves.png")
    return paths


def _history(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The epochs of a row's run (its results.csv), or [] for a failed row or a folder without one."""
    from .report.history import read_history

    if row.get("error") or not row.get("run") or not (Path(row["run"]) / "results.csv").is_file():
        return []
    try:
        return read_history(Path(row["run"]) / "results.csv")
    except MinivisionError:
        return []


def plot_curves(rows: list[dict[str, Any]]) -> Any:
    """Learning curves of several runs in one picture: validation accuracy (left) and loss (right) per epoch, one
    colour per run (training loss dotted in the same colour), named as the table names them; a run without a
    validation split shows its training accuracy and loss. Returns the matplotlib figure."""
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    from .report.style import class_colors, new_figure

    histories = [_history(r) for r in rows]
    if not any(histories):
        raise MinivisionError("compare: no learning curves to draw (no run has a results.csv)")
    fig = new_figure(13.0, 4.8)
    fig.set_layout_engine("constrained")
    acc_ax, loss_ax = fig.subplots(1, 2)
    colors = class_colors(len(rows))
    validation = any(not math.isnan(h["val_loss"]) for hist in histories for h in hist)
    which = "val" if validation else "train"
    last = max(int(h["epoch"]) for hist in histories for h in hist)
    for label, hist, color in zip(_labels(rows), histories, colors, strict=True):
        if not hist:
            continue
        epochs = [h["epoch"] for h in hist]
        dots = 3 if len(hist) > 15 else 4 if len(hist) > 1 else 7  # markers: a run of one epoch is one point
        acc_ax.plot(epochs, [h[f"{which}_accuracy"] for h in hist], color=color, label=label, marker="o",
                    markersize=dots)
        loss_ax.plot(epochs, [h[f"{which}_loss"] for h in hist], color=color, label=label, marker="o",
                     markersize=dots)
        if validation:
            loss_ax.plot(epochs, [h["train_loss"] for h in hist], color=color, linestyle=":", linewidth=1,
                         marker="o" if len(hist) == 1 else None, markersize=dots, fillstyle="none")  # hollow
    name = "validation" if validation else "training"
    acc_ax.set_title(f"{name[0].upper() + name[1:]} accuracy")
    acc_ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    # the training loss is a dotted line, or a hollow point for a run of one epoch
    drawn = {"hollow" if len(hist) == 1 else "dotted" for hist in histories if hist}
    mark = " or ".join(m for m in ("dotted", "hollow") if m in drawn)
    loss_ax.set_title(f"{name[0].upper() + name[1:]} loss" + (f" ({mark}: training loss)" if validation else ""))
    for ax in (acc_ax, loss_ax):
        ax.set_xlabel("epoch")
        # whole epochs only, even for one epoch (without min_n_ticks=1 the locator falls back to 0.95, 1.00...)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        if last < 10:  # a few epochs (one: a single point) sit half an epoch from the edges, not on them
            ax.set_xlim(0.5, last + 0.5)
        ax.grid(alpha=0.3)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    acc_ax.legend(fontsize=9, loc="best")
    swept = sorted({SETTINGS[str(r["setting"])].option if str(r["setting"]) in SETTINGS else str(r["setting"])
                    for r in rows if r.get("setting")})
    data = sorted({str(r.get("data")) for r in rows if not r.get("error")})
    fig.suptitle(f"Learning curves{' by ' + ', '.join(swept) if swept else ''} on {', '.join(data)}")
    return fig


# ----------------------------------------------------------------------------- Plot

_ACCURACY = {"test_accuracy": "test accuracy", "val_accuracy": "validation accuracy",
             "tta_accuracy": "test accuracy with TTA"}
_LOG_SCALE = {"parameters": "parameters", "macs": "multiply-adds per image", "model_bytes": "model size"}
_LINEAR = {"train_seconds": "training time", "test_loss": "test loss", "epochs": "epochs"}
_FORMAT = {"train_seconds": _seconds, "test_loss": _loss, "epochs": _count, "parameters": _si, "macs": _si,
           "model_bytes": _size}
METRICS = (*_ACCURACY, *_LOG_SCALE, *_LINEAR)


def _tick(v: float, units: tuple[str, str, str, str]) -> str:
    """Log-axis ticks without false precision: 10 K, 100 K, 1 M."""
    for power in (3, 2, 1):
        if v >= 1000**power:
            return f"{v / 1000**power:g} {units[power]}"
    return f"{v:g} {units[0]}".strip()


def _accuracy_floor(values: list[float]) -> float:
    """A round number below the lowest accuracy, so differences of a point are visible: 80%, 90%, 0."""
    lo, hi = min(values), max(values)
    span = hi - lo
    step = 0.1 if span > 0.1 else 0.05 if span > 0.02 else 0.01
    floor = math.floor((lo - max(0.5 * span, 0.005)) / step + 1e-9) * step
    return 0.0 if floor < 0.3 else round(floor, 2)  # a low floor zooms nothing: start at zero


def _bars(ax: Any, rows: list[dict[str, Any]], metric: str) -> None:
    from matplotlib.ticker import FuncFormatter, PercentFormatter

    from .report.style import class_colors

    if metric == "test_accuracy" and not any(_finite(r.get(metric)) for r in rows) \
            and any(_finite(r.get("val_accuracy")) for r in rows):
        metric = "val_accuracy"  # no test split anywhere: show what there is, and say so
    labels = _labels(rows)
    n = len(rows)
    values = [float(r[metric]) if _finite(r.get(metric)) and not r.get("error") else None for r in rows]
    shown = [i for i, v in enumerate(values) if v is not None]
    colors = class_colors(n)
    small = 8 if n > 6 else 9
    title = {**_ACCURACY, **_LOG_SCALE, **_LINEAR}[metric]
    bottom = 0.0
    if shown:
        vals = [values[i] for i in shown]
        if metric in _ACCURACY:
            bottom = _accuracy_floor(vals)
            top = max(vals) + 0.12 * (max(vals) - bottom)
        elif metric in _LOG_SCALE:
            ax.set_yscale("log")
            bottom, top = min(vals) / 3, max(vals) * 4
        else:
            top = max(vals) * 1.18 or 1.0
        bars = ax.bar(shown, vals, width=0.65, bottom=0 if metric in _LOG_SCALE else None,
                      color=[colors[i] for i in shown], zorder=2)
        if metric in _ACCURACY:
            texts = [f"{v:.2%}" for v in vals]
        elif metric == "train_seconds":
            texts = [f"{_seconds(v)}\n{_count(rows[i].get('epochs'))} ep" if _finite(rows[i].get("epochs"))
                     else _seconds(v) for i, v in zip(shown, vals, strict=True)]
        else:
            texts = [_FORMAT[metric](v) for v in vals]
        annotations = ax.bar_label(bars, labels=texts, padding=2, fontsize=small)
        if metric in _ACCURACY:
            best = max(vals)
            for text, v in zip(annotations, vals, strict=True):
                if v == best:
                    text.set_fontweight("bold")
        ax.set_ylim(bottom, top if top > bottom else bottom + (0.05 if metric in _ACCURACY else 1.0))
    for i, v in enumerate(values):
        if v is None:
            ax.text(i, 0.03, _status(rows[i]) if rows[i].get("error") else "n/a", transform=ax.get_xaxis_transform(),
                    ha="center", va="bottom", rotation=90, color="#777777", fontsize=small)
    if metric in _ACCURACY:
        lo, hi = ax.get_ylim()
        ax.set_yticks([t for t in ax.get_yticks() if lo - 1e-9 <= t <= min(hi, 1.0) + 1e-9])  # no "102%"
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_ylabel(title + (f" (axis starts at {bottom:.0%})" if bottom > 0 else ""))
    elif metric in _LOG_SCALE:
        units = ("B", "KB", "MB", "GB") if metric == "model_bytes" else ("", "K", "M", "G")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _tick(v, units)))
        ax.set_ylabel(title + " (log scale)")
    else:
        ax.set_ylabel(title + (" (seconds)" if metric == "train_seconds" else ""))
    ax.set_title(title[0].upper() + title[1:])
    rotate = n > 5 or sum(len(lb) for lb in labels) > 40
    ax.set_xticks(range(n), labels, rotation=30 if rotate else 0, ha="right" if rotate else "center",
                  rotation_mode="anchor")
    ax.set_xlim(-0.6, n - 0.4)
    ax.grid(axis="y", alpha=0.3, zorder=0)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def plot_comparison(rows: list[dict[str, Any]], *, metric: str = "test_accuracy", ax: Any = None) -> Any:
    """Bars per run; without ``ax``, ``metric`` beside training time (or test accuracy when
    ``metric`` is the training time): what each model buys for the time it costs."""
    from .report.style import new_figure

    if not rows:
        raise MinivisionError("compare: nothing to plot (no rows)")
    if metric not in METRICS:
        hint = difflib.get_close_matches(metric, METRICS, n=1)
        raise MinivisionError(f"unknown metric {metric!r}; " + (f"did you mean {hint[0]!r}?" if hint
                                                                 else f"choose from {', '.join(METRICS)}"))
    if ax is not None:
        _bars(ax, rows, metric)
        return ax.figure
    n = len(rows)
    fig = new_figure(min(18.0, 7.0 + 1.1 * n), 4.8)
    fig.set_layout_engine("constrained")  # rotated names of any length: let matplotlib find the margins
    axes = fig.subplots(1, 2)
    _bars(axes[0], rows, metric)
    _bars(axes[1], rows, "train_seconds" if metric != "train_seconds" else "test_accuracy")
    data = sorted({str(r.get("data")) for r in rows})
    fig.suptitle(f"{n} model{'s' if n != 1 else ''} on {', '.join(data)}")
    return fig


# ----------------------------------------------------------------------------- Train

# compare's settings and its flags live in config.py (COMPARE_FIXED, add_setting_arguments): the parser is
# built without importing PyTorch, which this module needs
_FIXED, SWEEPABLE_FIXED = COMPARE_FIXED, COMPARE_SWEEPABLE


def _check_settings(settings: dict[str, Any]) -> None:
    """The per-model settings compare may take: any training setting but those it sets for every model."""
    allowed = {n: s for n, s in SETTINGS.items() if n not in _FIXED}
    try:
        check_settings(settings, allowed=allowed, what="training setting")
    except MinivisionError as e:
        raise MinivisionError(f"compare: {e}") from None


def _failed_row(model: str, ds: Dataset, data: str, error: str, run: str = "") -> dict[str, Any]:
    return {"model": model, "data": ds.name, "run": run, "data_source": data, "error": error}


def _length(cfg: TrainConfig) -> str:
    return f"{cfg.steps} steps" if cfg.steps is not None else f"{cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''}"


def _is_list(value: Any) -> bool:
    return isinstance(value, list | tuple)


def _folder_name(model: str, setting: str, value: Any) -> str:
    """A sweep run's folder: ``cnn2-batch-size-32`` (characters other than letters, digits, ``.``, ``_`` and
    ``-`` in the value become ``_``)."""
    text = format_duration(value) if setting == "budget" else str(value)
    text = "".join(c if c.isalnum() or c in "._-" else "_" for c in text)
    return f"{model}-{setting.replace('_', '-')}-{text}"


def _as_flag(name: str, value: Any) -> str:
    """A setting as ``minivision train`` takes it: ``--lr 0.01``, ``--budget 3m``, ``--nesterov`` for True,
    ``--no-nesterov`` for False where the flag has that form (a recipe's switch), nothing for another False."""
    option = SETTINGS[name].option
    if isinstance(value, bool):
        return option if value else (f"--no-{option[2:]}" if SETTINGS[name].recipe else "")
    return f"{option} {format_duration(value) if name == 'budget' else value}"


def _sweep(values: dict[str, Any], names: list[str]) -> tuple[str, list[Any]] | None:
    """The one setting given several values (a list), with them; None when every setting has one value.
    MinivisionError for two such settings, a list with several models, a value given twice or an empty list."""
    lists = {k: list(v) for k, v in values.items() if _is_list(v)}
    for k, v in lists.items():
        if not v:
            raise MinivisionError(f"compare: {SETTINGS[k].option} has no value")
        for x in v:
            if v.count(x) > 1:
                raise MinivisionError(f"compare: {SETTINGS[k].option} {x} is given twice")
    several = {k: v for k, v in lists.items() if len(v) > 1}
    if len(several) > 1:
        a, b = list(several)[:2]
        raise MinivisionError(f"compare sweeps one setting at a time: {SETTINGS[a].option} and {SETTINGS[b].option} "
                              f"both have several values (run one compare per setting)")
    if several and len(names) > 1:
        k = next(iter(several))
        raise MinivisionError(f"compare sweeps one setting of one model: give one model with {SETTINGS[k].option} "
                              f"{','.join(map(str, several[k]))}, or several models with one value")
    return next(iter(several.items()), None)


def train_and_compare(models: list[str] | str, *, data: str | None = None, data_dir: str | None = None,
                      test_data: str | None = None, epochs: int | list[int] | None = None,
                      budget: float | str | list[Any] | None = None, seed: int | list[int] | None = None,
                      out: str | Path = "runs", name: str = "compare", device: str = "auto",
                      dataset: Dataset | None = None, progress: bool | None = None,
                      log: Callable[[str], None] = print, **settings: Any) -> tuple[Path, list[dict[str, Any]]]:
    """Train each model on the same data with the same ``epochs``, the same ``budget`` (seconds, or
    text like "3m", for each model) or, with neither, each model's own registered settings; then
    write the comparison. Every run folder lives inside the new ``out/name`` folder.

    ``data`` names the dataset (default fashion-mnist); it is loaded once for all models. A
    ``dataset`` object is used instead of loading ``data`` (``data`` is then only recorded, and
    defaults to the dataset's name). ``settings`` are further ``TrainConfig`` fields for every
    model (``batch_size=64``, ``augment="flip"``, ...). A sweep: one model and a list for one setting
    (``batch_size=[32, 128, 512]``, ``epochs=[5, 10, 40]``, ``seed=[0, 1, 2]``) trains the model once per value,
    in folders named after them (``cnn2-batch-size-32``); rows get ``setting`` and ``value``, and
    ``curves.png`` overlays the learning curves. A model that fails with a MinivisionError
    gets a row with an "error" and the others go on; Ctrl-C writes the table of the models
    finished so far and raises ``CompareInterrupted`` (a KeyboardInterrupt: the CLI exits 130)."""
    from .data import load_dataset
    from .data.augment import Augment
    from .inference import pick_device

    # Everything is checked before anything is loaded or trained: a typo must not cost an hour.
    names = [m.strip() for m in (models.split(",") if isinstance(models, str) else models)]
    names = [m for m in names if m]
    if not names:
        raise MinivisionError("compare: give at least one model, e.g. --models softmax,mlp,cnn1")
    for m in names:
        if names.count(m) > 1:
            raise MinivisionError(f"compare: model {m!r} is given twice")
        model_info(m)  # unknown names: did-you-mean
    if not name or "/" in name or name in (".", ".."):
        raise MinivisionError(f"--name must be a plain folder name, got {name!r}")
    shared = {"epochs": epochs, "budget": budget, **({"seed": seed} if seed is not None else {})}  # None: 0
    _check_settings({k: v for k, v in settings.items() if not _is_list(v)})
    for k, v in settings.items():
        if _is_list(v):
            for x in v:
                _check_settings({k: x})
    sweep = _sweep({**shared, **settings}, names)
    if sweep is not None and sweep[0] == "budget":
        sweep = ("budget", [parse_duration(v) for v in sweep[1]])
    one = {k: (v[0] if _is_list(v) and len(v) == 1 else v) for k, v in {**shared, **settings}.items()}
    if sweep is not None:
        one.pop(sweep[0])
    if one.get("budget") is not None:
        one["budget"] = parse_duration(one["budget"])
    if (one.get("epochs") is not None or (sweep and sweep[0] == "epochs")) and \
            (one.get("budget") is not None or (sweep and sweep[0] == "budget")):
        raise MinivisionError("compare: give --epochs or --budget, not both")
    data = data or (dataset.name if dataset is not None else "fashion-mnist")
    # (model, the swept value or None, run folder name): one run each
    jobs = [(m, None, m) for m in names] if sweep is None else \
        [(names[0], v, _folder_name(names[0], sweep[0], v)) for v in sweep[1]]
    configs = {}
    for m, value, folder_name in jobs:
        given = dict(one, **({sweep[0]: value} if sweep is not None else {}))
        cfg = TrainConfig(model=m, data=data, data_dir=data_dir, test_data=test_data, device=device, name=folder_name,
                          **given)
        try:
            resolved = resolve(cfg, model_info(m).defaults)  # bad values fail here, for every model at once
        except MinivisionError as e:
            raise MinivisionError(f"compare: {e}") from None
        Augment.parse(resolved.augment)
        configs[folder_name] = (cfg, resolved)
    pick_device(device)

    ds = dataset if dataset is not None else load_dataset(data, data_dir=data_dir, test_data=test_data)
    folder = new_run_dir(out, name)
    if sweep is not None:
        option = SETTINGS[sweep[0]].option
        shown = [format_duration(v) for v in sweep[1]] if sweep[0] == "budget" else [str(v) for v in sweep[1]]
        what = f"{names[0]} with {option} {', '.join(shown)}"
    else:
        what = f"{len(names)} models"
    budget1, epochs1 = one.get("budget"), one.get("epochs")
    if sweep is not None and sweep[0] in ("epochs", "budget"):
        how = "each as given"
    elif budget1 is not None:
        how = f"each for {format_duration(budget1)} (about {format_duration(budget1 * len(jobs))} in all)"
    elif epochs1 is not None:
        how = f"each for {epochs1} epoch{'s' if epochs1 != 1 else ''}"
    else:
        how = "each with its own registered settings: " + ", ".join(f"{m} {_length(r)}" for m, (_, r) in
                                                                    configs.items())
    log(f"comparing {what} on {ds.name}, {how}; results in {folder}")
    given = " ".join(f for f in (_as_flag(k, v) for k, v in one.items()
                                 if v is not None and k in SETTINGS and SETTINGS[k].flag and k != "device") if f)
    common = {"fixed": given} if given else {}  # said under the table: the row names give only what differs

    rows: list[dict[str, Any]] = []
    i, m = 0, jobs[0][0]
    try:
        for i, (m, value, folder_name) in enumerate(jobs, 1):
            log(f"\n[{i}/{len(jobs)}] {m}" + (f" {SETTINGS[sweep[0]].option} {value}" if sweep is not None else ""))
            cfg = dataclasses.replace(configs[folder_name][0], out=str(folder))
            swept = {**({"setting": sweep[0], "value": value} if sweep is not None else {}), **common}
            try:
                result = fit(cfg, dataset=ds, progress=progress, log=log)
            except MinivisionError as e:
                log(f"{m} failed: {e}")
                rows.append({**_failed_row(m, ds, data, f"failed: {e}"), **swept})
                continue
            if result.interrupted:
                rows.append({**_failed_row(m, ds, data, f"interrupted; resume with minivision train --resume "
                                                        f"{result.run_dir}", run=str(result.run_dir)), **swept})
                raise KeyboardInterrupt
            rows.append({**run_row(result.run_dir), **swept})
    except KeyboardInterrupt:
        if len(rows) < i:  # a second Ctrl-C stopped fit itself
            rows.append({**_failed_row(m, ds, data, "interrupted"),
                         **({"setting": sweep[0], "value": jobs[i - 1][1]} if sweep is not None else {}), **common})
        left = [j[2] for j in jobs[i:]]
        write_comparison(rows, folder)
        log("\n" + format_table(rows))
        log(f"interrupted: the table of the models finished so far is in {folder}"
            + (f"; not trained: {', '.join(left)}" if left else ""))
        raise CompareInterrupted(folder, rows) from None
    paths = write_comparison(rows, folder)
    log("\n" + format_table(rows))
    extra = f", {paths['png'].name} and {paths['curves'].name}" if "curves" in paths else f" and {paths['png'].name}"
    log(f"comparison written to {paths['md']}, {paths['csv'].name}{extra}")
    if all(r.get("error") for r in rows):
        raise MinivisionError(f"compare: no model finished training (first: {rows[0]['model']} {rows[0]['error']})")
    return folder, rows


# ----------------------------------------------------------------------------- the command line

def _parse(setting: str, text: str) -> Any:
    s = SETTINGS[setting]
    text = text.strip()
    if setting == "budget":
        parse_duration(text)  # a one-line error now, before anything loads
        return text
    if s.kind is bool:
        low = text.lower()
        if low in ("true", "yes", "1", "on"):
            return True
        if low in ("false", "no", "0", "off"):
            return False
        raise MinivisionError(f"{s.option} takes true or false, got {text!r}")
    if s.kind in (int, float):
        try:
            value: Any = s.kind(text)
        except ValueError:
            raise MinivisionError(f"{s.option} takes {'integers' if s.kind is int else 'numbers'}, got {text!r}") \
                from None
        problem = s.problem(value)
        if problem:
            raise MinivisionError(f"{s.option} {problem}, got {text}")
        return value
    problem = s.problem(text)
    if problem:  # a choice's problem names the choices and the closest one
        raise MinivisionError(f"{s.option} {problem}" + ("" if s.choices or repr(text) in problem
                                                          else f", got {text!r}"))
    return text


def given_values(namespace: Any) -> dict[str, Any]:
    """The settings given to ``compare`` (from ``add_setting_arguments``), parsed: one value, or a list of values
    for a setting given as a comma list or more than once (``--augment`` splits on repeats only: its values hold
    commas). MinivisionError (one line) for a value of the wrong type or out of range."""
    out: dict[str, Any] = {}
    for s in _flag_settings():
        name, given = s.name, getattr(namespace, s.name, None)
        if not given:
            continue
        texts = list(given) if name == "augment" else [t for g in given for t in str(g).split(",")]
        if any(not t.strip() for t in texts):
            raise MinivisionError(f"{s.option} has an empty value in {','.join(given)!r}")
        values = [_parse(name, t) for t in texts]
        out[name] = values[0] if len(values) == 1 else values
    return out
