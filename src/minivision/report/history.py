"""The training history as ``results.csv`` and the tutorials' learning curves as ``results.png``."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from ..errors import MinivisionError
from ..fileio import write_text

COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds")
#: The last column when the run trained in phases (a fine-tune: "head" = only the new classifier,
#: "all" = every layer); absent for a run of one phase, so older readers see the same file.
PHASE = "phase"
#: A column when the run trained with ``--patience`` (listeners.EarlyStopping): epochs since the lowest
#: validation loss, 0 on the epoch that set it.
SINCE_BEST = "epochs_since_best"


def write_history(run_dir: Path, history: list[dict], plot: bool = True) -> None:
    """``results.csv`` in ``run_dir``: one row per epoch, ``COLUMNS`` (losses, accuracies as 0-1
    fractions, lr, seconds), then ``phase`` and ``epochs_since_best`` when any row has one; written
    atomically. ``plot``: also draw ``results.png``."""
    phased = any(row.get(PHASE) for row in history)
    patience = any(SINCE_BEST in row for row in history)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS + ((PHASE,) if phased else ()) + ((SINCE_BEST,) if patience else ()))
    for row in history:
        w.writerow([row["epoch"]] + [repr(float(row[c])) for c in COLUMNS[1:]]
                   + ([str(row.get(PHASE) or "")] if phased else [])
                   + ([str(row.get(SINCE_BEST, ""))] if patience else []))
    write_text(run_dir / "results.csv", buf.getvalue())
    if plot:
        plot_history(history, run_dir / "results.png")


def read_history(path: Path) -> list[dict]:
    """The rows of ``results.csv``: ``COLUMNS`` as int/float, plus ``phase`` (str) when the file has
    that column. Raises MinivisionError for a missing or malformed file."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        return [{"epoch": int(r["epoch"]), **{c: float(r[c]) for c in COLUMNS[1:]},
                 **({PHASE: r[PHASE]} if r.get(PHASE) else {}),
                 **({SINCE_BEST: int(r[SINCE_BEST])} if r.get(SINCE_BEST) else {})} for r in rows]
    except FileNotFoundError:
        raise MinivisionError(f"{path}: file not found") from None
    except (KeyError, ValueError) as e:
        raise MinivisionError(f"{path}: malformed results.csv ({e})") from None


def plot_history(history: list[dict[str, float]], path: Path | None = None, axes=None):
    """Accuracy (in percent), loss and learning rate per epoch, train vs validation; returns the figure."""
    # The object API, not pyplot: no global state or GUI backend, 0.5 s less to import, and fixed
    # margins instead of constrained_layout (0.3 s less to draw); short runs feel both.
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in history]
    fig = axes[0].figure if axes is not None else None
    if axes is None:
        fig = Figure(figsize=(14, 4))
        axes = fig.subplots(1, 3)
        fig.subplots_adjust(left=0.05, right=0.985, bottom=0.14, top=0.9, wspace=0.22)
    has_val = any(not math.isnan(r["val_accuracy"]) for r in history)
    for ax, key, title in ((axes[0], "accuracy", "Accuracy"), (axes[1], "loss", "Loss")):
        ax.plot(epochs, [r[f"train_{key}"] for r in history], "o-", label="train", markersize=3)
        if has_val:
            ax.plot(epochs, [r[f"val_{key}"] for r in history], "o-", label="validation", markersize=3)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
        if key == "accuracy":  # in percent, as every share in the report
            from matplotlib.ticker import PercentFormatter

            ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    axes[2].plot(epochs, [r["lr"] for r in history], "o-", color="tab:green", markersize=3)
    from matplotlib.ticker import MaxNLocator

    for ax in axes[:3]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no "1.25"
    axes[2].set_title("Learning rate (end of epoch)")
    axes[2].set_xlabel("epoch")
    axes[2].grid(alpha=0.3)
    from .plots import mark_phases

    if mark_phases(axes[:3], history):  # a fine-tune: where the head phase gives way to every layer
        axes[2].legend(fontsize=9)
    if path is not None:
        from .style import save_figure

        save_figure(fig, path)  # atomic, fonts narrowed, 100 dpi: as every other picture
    return fig
