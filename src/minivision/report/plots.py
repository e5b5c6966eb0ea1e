"""The run folder's pictures: image grids, confusion matrices, reliability diagram, class counts.

Each function takes an optional matplotlib ``ax`` and returns the Figure (see ``style``). Without
an ``ax`` it sizes its own figure from what it draws (grid shape, length of the class names), with
fixed margins computed up front instead of ``constrained_layout``, which costs ~0.3 s a drawing.
Text from users (class names come from folder names) is drawn literally: a ``$`` never starts
mathtext; in any script: ``fonts.py`` gives matplotlib a fallback list of installed Noto fonts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..metrics import calibration as _calibration
from ..metrics import most_confused, per_class_metrics
from . import fonts, style

__all__ = ["image_grid", "plot_confusion", "plot_calibration", "plot_class_counts", "calibration_from_probs",
           "per_class_metrics", "most_confused"]

# ---------------------------------------------------------------------------------------------- helpers

_TITLE_CHARS = 28  # a tile title's line is cut (with an ellipsis) past this many characters


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, on any device and in any dtype numpy may lack (bf16)
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def _plain(s: Any) -> str:
    """``s`` as matplotlib draws it literally: ``$...$`` would otherwise start mathtext."""
    return str(s).replace("$", r"\$")


def _text_width(s: str, fontsize: float) -> float:
    """Width in inches of ``s`` (longest line) in the pictures' fonts (``fonts.py``: DejaVu Sans with
    per-glyph fallback, so a CJK name is measured in the font that draws it): FreeType's advance
    widths, as the Agg renderer measures text (a TextPath per line took 25 ms; this takes microseconds)."""
    font = fonts.text_fonts(fontsize, s)
    widest = 0.0
    for line in s.split("\n"):
        if line.strip():
            font.set_text(line, 0.0)
            widest = max(widest, font.get_width_height()[0] / 64)  # 26.6 fixed point, in points at 72 dpi
    return widest / 72


def _widest(texts: Sequence[str], fontsize: float) -> float:
    """Width in inches of the widest of ``texts``; measures only the longest few (by characters)."""
    lines = sorted({line for t in texts for line in str(t).split("\n")}, key=len, reverse=True)[:6]
    return max((_text_width(line, fontsize) for line in lines), default=0.0)


def _ax_inches(ax: Any) -> tuple[float, float]:
    pos = ax.get_position()
    w, h = ax.figure.get_size_inches()
    return pos.width * w, pos.height * h


def _shorten(title: str) -> str:
    return "\n".join(line if len(line) <= _TITLE_CHARS else line[:_TITLE_CHARS - 1] + "\u2026"
                     for line in str(title).split("\n"))


# ---------------------------------------------------------------------------------------------- image grid

def _images_nchw(images: Any) -> np.ndarray:
    x = _numpy(images)
    if x.ndim == 3:  # N x H x W: grayscale without its channel axis
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3, 4):
        raise ValueError(f"images must be N x C x H x W with C = 1 or 3, got shape {tuple(x.shape)}")
    if x.dtype != np.uint8:
        x = np.clip(np.round(x.astype(np.float64)), 0, 255).astype(np.uint8)
    return x[:, :3]  # RGBA: drop the alpha channel


def image_grid(images: Any, titles: Sequence[str] | None = None, *, colors: Sequence[str] | None = None,
               ncols: int = 10, ax: Any = None, title: str | None = None, scale: float = 1.0,
               fontsize: float = 9.0) -> Any:
    """Images (uint8, N x C x H x W, C = 1 grayscale or 3 RGB) in a grid, each under its title.

    The grid is one mosaic drawn by one ``imshow``: 40 tiles draw in the time of one, and it fits
    in a single Axes. Gaps between tiles leave room for the titles (any number of lines, each
    title in ``colors[i]`` if given); columns widen so the longest title never reaches its
    neighbour. Grayscale is drawn as stored (0 black, 255 white: Fashion-MNIST's light garment
    on black). ``scale`` multiplies the tile size (about 1.2 inches at 1.0).
    """
    x = _images_nchw(images)
    n, c, h, w = x.shape
    titles = [] if titles is None else [_shorten(t) for t in titles]
    if titles and len(titles) != n:
        raise ValueError(f"{n} images but {len(titles)} titles")
    if colors is not None and len(colors) != n:
        raise ValueError(f"{n} images but {len(colors)} colours")
    if n == 0:
        fig, ax = style.figure_of(ax, 4, 1)
        ax.text(0.5, 0.5, "no images", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        if title:
            ax.set_title(_plain(title))
        return fig

    ncols = max(1, min(int(ncols), n))
    nrows = math.ceil(n / ncols)
    # Geometry in inches at fontsize, then in mosaic pixels (ppi: mosaic pixels per inch).
    tile_w = 1.2 * scale * (1.0 if w >= h else w / h)
    lines = max((t.count("\n") + 1 for t in titles), default=0)
    title_h = lines * fontsize * 1.25 / 72 + (0.08 if lines else 0.12)
    pitch = max(tile_w * 1.12, _widest(titles, fontsize) + 0.12)
    ppi = w / tile_w
    gap_x, gap_y, pad_bottom = round((pitch - tile_w) * ppi), round(title_h * ppi), max(1, round(0.04 * ppi))
    mosaic_w, mosaic_h = ncols * (w + gap_x), nrows * (gap_y + h) + pad_bottom

    mosaic = np.full((mosaic_h, mosaic_w, c), 255, dtype=np.uint8)  # white gaps
    origins = []
    for i in range(n):
        r, col = divmod(i, ncols)
        x0, y0 = col * (w + gap_x) + gap_x // 2, r * (gap_y + h) + gap_y
        mosaic[y0:y0 + h, x0:x0 + w] = x[i].transpose(1, 2, 0)
        origins.append((x0, y0))

    header = 0.4 if title else 0.0
    if ax is None:
        fig = style.new_figure(mosaic_w / ppi, mosaic_h / ppi + header)
        ax = fig.add_axes((0, 0, 1, (mosaic_h / ppi) / (mosaic_h / ppi + header)))
        shrink = 1.0
    else:
        fig = ax.figure
        aw, ah = _ax_inches(ax)  # the mosaic keeps its aspect, so everything scales by one factor
        shrink = min(1.0, aw / (mosaic_w / ppi), ah / (mosaic_h / ppi))
    if c == 1:
        ax.imshow(mosaic[:, :, 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest",
                  extent=(0, mosaic_w, mosaic_h, 0))
    else:
        ax.imshow(mosaic, interpolation="nearest", extent=(0, mosaic_w, mosaic_h, 0))
    ax.set_axis_off()
    size = fontsize * shrink
    lift = 0.03 * ppi
    for i, t in enumerate(titles if size >= 3.5 else []):  # smaller than that they only smudge the picture
        x0, y0 = origins[i]
        ax.text(x0 + w / 2, y0 - lift, _plain(t), ha="center", va="bottom", fontsize=size, linespacing=1.15,
                color=colors[i] if colors is not None else "#222222")
    if title:
        ax.set_title(_plain(title), fontsize=max(6.0, 11 * shrink), pad=6)
    return fig


# ---------------------------------------------------------------------------------------------- confusion

def plot_confusion(confusion: Any, classes: Sequence[str], *, normalize: bool = False, ax: Any = None) -> Any:
    """Confusion matrix, rows true class and columns predicted; ``normalize`` divides each row by its
    support (the diagonal is then each class's recall; rows without images stay 0)."""
    cm = _numpy(confusion).astype(np.float64)
    k = len(classes)
    if cm.shape != (k, k):
        raise ValueError(f"confusion matrix of shape {cm.shape} for {k} classes")
    n = int(cm.sum())
    support = cm.sum(1, keepdims=True)
    if normalize:
        values = np.divide(cm, support, out=np.zeros_like(cm), where=support > 0)
        vmax = 1.0
    else:
        values = cm
        vmax = max(1.0, float(cm.max()))
    names = [_plain(c) for c in classes]

    if ax is None:
        side = min(max(3.2, 0.55 * k), 11.0)  # the matrix itself, in inches
        label_size = float(np.clip(side / k * 72 * 0.5, 5.0, 9.0))
        name_w = min(_widest(names, label_size), 2.5)
        left, bottom = name_w + 0.75, name_w * 0.72 + 0.75
        right, top = 1.05, 0.5
        fig = style.new_figure(left + side + right, bottom + side + top)
        W, H = fig.get_size_inches()
        ax = fig.add_axes((left / W, bottom / H, side / W, side / H))
        cax = fig.add_axes(((left + side + 0.15) / W, bottom / H, 0.2 / W, side / H))
    else:
        fig, cax = ax.figure, None
        label_size = float(np.clip(min(_ax_inches(ax)) / max(k, 1) * 72 * 0.5, 4.0, 9.0))
    im = ax.imshow(values, cmap="Blues", vmin=0, vmax=vmax, interpolation="nearest", aspect="equal")
    if cax is not None:
        cb = fig.colorbar(im, cax=cax)
    else:
        cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cb.ax.tick_params(labelsize=8)
    if normalize:
        cb.ax.yaxis.set_major_formatter(_percent_formatter())

    ax.set_xticks(range(k), names, rotation=45, ha="right", rotation_mode="anchor", fontsize=label_size)
    ax.set_yticks(range(k), names, fontsize=label_size)
    ax.tick_params(length=2)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    what = "Confusion matrix, % of each true class" if normalize else "Confusion matrix"
    ax.set_title(f"{what} ({n:,} images)", fontsize=11)

    if k <= 25:
        texts = [[_cell_text(values[i, j], normalize) for j in range(k)] for i in range(k)]
        cell_in = _ax_inches(ax)[0] / k if ax.get_position().width else 0.5
        chars = max(len(t) for row in texts for t in row)
        size = float(np.clip(cell_in * 72 * 0.85 / (0.62 * max(chars, 2)), 4.5, 10.0))
        for i in range(k):
            for j in range(k):
                r, g, b, _ = im.cmap(im.norm(values[i, j]))
                dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
                ax.text(j, i, texts[i][j], ha="center", va="center", fontsize=size,
                        color="white" if dark else ("#222222" if values[i, j] else "#9a9a9a"))
    return fig


def _cell_text(v: float, normalize: bool) -> str:
    """A cell's label: a count, or (``normalize``) a share of the row in whole percent, as every other
    share in the report is written: "93%", "<1%" and ">99%" for shares that would round to 0% or 100%
    without being either, "0" for none."""
    if v == 0:
        return "0"
    if not normalize:
        return str(int(round(v)))
    if v < 0.01:
        return "<1%"
    if 0.99 < v < 1:
        return ">99%"
    return f"{math.floor(100 * v + 0.5)}%"


def _percent_formatter() -> Any:
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(xmax=1.0, decimals=0)


# ---------------------------------------------------------------------------------------------- calibration

def calibration_from_probs(probs: Any, y: Any, bins: int = 15) -> dict[str, Any]:
    """Reliability bins and ECE from softmax probabilities (N x K) and labels (N,), tensors or arrays.

    ``{"ece": float, "bins": [{"lo", "hi", "count", "confidence", "accuracy"}, ...]}``: ``bins``
    equal-width bins over [0, 1] of the top probability; ECE = sum(count / N * |accuracy - confidence|).
    An empty bin has ``confidence`` and ``accuracy`` None (so the dict stays JSON); ``metrics.calibration``
    does the counting, so ``evaluate`` and the pictures agree.
    """
    import torch

    p = torch.as_tensor(_numpy(probs), dtype=torch.float64)
    t = torch.as_tensor(_numpy(y), dtype=torch.int64).flatten()
    if p.ndim != 2 or len(p) != len(t):
        raise ValueError(f"probs must be N x K and y N labels, got {tuple(p.shape)} and {tuple(t.shape)}")
    return _calibration(p, t, bins=bins)


def _finite(v: Any) -> bool:
    return v is not None and math.isfinite(float(v))


def plot_calibration(calibration: dict[str, Any], *, after: dict[str, Any] | None = None,
                     temperature: float | None = None, ax: Any = None) -> Any:
    """Reliability diagram (Guo et al. 2017, "On Calibration of Modern Neural Networks"): accuracy per
    confidence bin against the diagonal of perfect calibration, both axes in percent, ECE in the title,
    and the images per bin in a small inset histogram.

    ``calibration`` (and ``after``) are ``calibration_from_probs`` dicts. Alone, the bins are bars with
    the gap to confidence hatched in red. With ``after`` (the same images scored by softmax(logits / T),
    ``temperature`` = T), both are drawn as curves through (mean confidence, accuracy) of each bin,
    before in grey and after in blue, and the inset counts the images of ``after``. Empty bins (count 0,
    confidence/accuracy None or NaN) are skipped."""
    fig, ax = style.figure_of(ax, 5.4, 5.4)
    small = min(1.0, min(_ax_inches(ax)) / 4.0)  # fonts shrink with a caller's small Axes
    bins = calibration.get("bins", [])
    full = _full_bins(bins)
    blue = style.class_colors(1)[0]
    ece = calibration.get("ece")
    n = sum(int(b["count"]) for b in bins)
    if after is None:
        if full:
            centers = [(b["lo"] + b["hi"]) / 2 for b in full]
            widths = [b["hi"] - b["lo"] for b in full]
            acc = np.array([b["accuracy"] for b in full], dtype=float)
            conf = np.array([b["confidence"] for b in full], dtype=float)
            ax.bar(centers, acc, width=widths, color=blue, edgecolor="white", linewidth=0.8, label="accuracy",
                   zorder=2)
            ax.bar(centers, conf - acc, bottom=acc, width=widths, color=(*_rgb(style.WRONG), 0.18), hatch="///",
                   edgecolor=style.WRONG, linewidth=0.8, label="gap to confidence", zorder=3)
        title = f"Reliability diagram ({_ece_text(ece)}, {n:,} images)"
        counted, shown = bins, full
    else:
        t = f" (T = {temperature:.2f})" if temperature is not None and math.isfinite(temperature) else ""
        full_after = _full_bins(after.get("bins", []))
        for data, color, label, style_ in ((full, "#8c959f", f"before: {_ece_text(ece)}", "s--"),
                                            (full_after, blue, f"after temperature scaling{t}: "
                                                               f"{_ece_text(after.get('ece'))}", "o-")):
            # a curve through bins of a handful of images zigzags over the diagonal and says nothing
            few = max(10, sum(int(b["count"]) for b in data) // 1000)
            data = [b for b in data if b["count"] >= few] or data
            if data:
                ax.plot([b["confidence"] for b in data], [b["accuracy"] for b in data], style_, color=color,
                        linewidth=1.8, markersize=4.5, label=label, zorder=3)
        title = f"Reliability diagram, before and after ({n:,} images)"
        counted, shown = after.get("bins", []), full + full_after
    ax.plot([0, 1], [0, 1], ":", color="#444444", linewidth=1, label="perfectly calibrated", zorder=4)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.xaxis.set_major_formatter(_percent_formatter())
    ax.yaxis.set_major_formatter(_percent_formatter())
    ax.set_xlabel("confidence (top score)")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3, zorder=0)
    ax.set_axisbelow(True)
    ax.set_title(title, fontsize=11)
    ax.legend(loc="lower right", fontsize=8 * small, framealpha=0.9)

    if counted:  # images per bin: an inset, so the diagram stays one Axes however the caller lays it out
        ins = ax.inset_axes(_inset_place(shown), zorder=5)
        ins.bar([(b["lo"] + b["hi"]) / 2 for b in counted], [b["count"] for b in counted],
                width=[b["hi"] - b["lo"] for b in counted], color="#9a9a9a", edgecolor="white", linewidth=0.5)
        ins.set_xlim(0, 1)
        ins.set_title("images per confidence bin", fontsize=7.5 * small, pad=2)
        ins.tick_params(labelsize=6.5 * small, length=2, pad=1)
        ins.set_xticks([0, 0.5, 1], ["0%", "50%", "100%"])
        ins.yaxis.set_major_locator(_few_ticks())
        ins.yaxis.set_major_formatter(_thousands())
        ins.patch.set_alpha(0.85)
    return fig


def _full_bins(bins: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [b for b in bins if b["count"] and _finite(b["confidence"]) and _finite(b["accuracy"])]


def _ece_text(ece: Any) -> str:
    return f"ECE {100 * ece:.2f}%" if _finite(ece) else "ECE n/a"


def _inset_place(full: list[dict[str, Any]]) -> tuple[float, float, float, float]:
    """Where the count histogram covers the fewest bars: along the top, left of centre if it can."""
    best = None
    for x0 in (0.07, 0.2, 0.33, 0.46):
        under = [max(b["accuracy"], b["confidence"]) for b in full if b["hi"] > x0 and b["lo"] < x0 + 0.4]
        top = max(under, default=0.0)
        if best is None or top < best[0] - 0.05:
            best = (top, x0)
    top, x0 = best
    bottom = min(max(0.58, top + 0.05), 0.74)  # above the bars when there is room; else over them (translucent)
    return (x0, bottom, 0.4, 0.92 - bottom)


def _rgb(color: str) -> tuple[float, float, float]:
    from matplotlib.colors import to_rgb

    return to_rgb(color)


def _few_ticks() -> Any:
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(nbins=3, integer=True)


def _thousands() -> Any:
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _: f"{v / 1000:g}k" if v >= 1000 else f"{v:g}")


# ---------------------------------------------------------------------------------------------- class counts

def plot_class_counts(counts: dict[str, Sequence[int]], classes: Sequence[str], *, ax: Any = None) -> Any:
    """Images per class and split (``{"train": [...], "val": [...], "test": [...]}``) as grouped
    horizontal bars: class names read without rotation, counts written at the end of each bar."""
    splits = list(counts)
    k, s = len(classes), len(splits)
    arr = np.array([[int(v) for v in counts[name]] for name in splits], dtype=np.int64).reshape(s, k)
    names = [_plain(c) for c in classes]
    label_size = 9.0 if k <= 30 else max(5.0, 9.0 - 0.05 * (k - 30))
    if ax is None:
        name_w = min(_widest(names, label_size), 3.0)
        left, right, bottom, top = name_w + 0.35, 0.25, 0.55, 0.75
        height = min(max(2.4, k * (0.13 * s + 0.1)), 30.0)
        fig = style.new_figure(left + 6.5 + right, bottom + height + top)
        W, H = fig.get_size_inches()
        ax = fig.add_axes((left / W, bottom / H, 6.5 / W, height / H))
    else:
        fig = ax.figure
    colors = style.class_colors(max(s, 1))
    bar = 0.8 / max(s, 1)
    xmax = max(1, int(arr.max())) if arr.size else 1
    annotate = k * s <= 90
    bar_in = _ax_inches(ax)[1] / max(k, 1) * bar
    size = float(np.clip(bar_in * 72 * 0.8, 5.0, 8.0))
    for j, name in enumerate(splits):
        ys = np.arange(k) + (j - (s - 1) / 2) * bar
        ax.barh(ys, arr[j], height=bar, color=colors[j], label=f"{_plain(name)} ({int(arr[j].sum()):,})")
        if annotate:
            for yy, v in zip(ys, arr[j], strict=True):
                ax.text(v + xmax * 0.01, yy, f"{int(v):,}", va="center", ha="left", fontsize=size, color="#333333")
    ax.set_yticks(range(k), names, fontsize=label_size)
    ax.set_ylim(k - 0.5, -0.5)  # first class at the top
    ax.set_xlim(0, xmax * (1.14 if annotate else 1.03))
    ax.xaxis.set_major_formatter(_thousands())
    ax.set_xlabel("images")
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    ax.set_title(f"Images per class ({int(arr.sum()):,} in {s} split{'s' if s != 1 else ''})", fontsize=11,
                 pad=22 if s else 6)
    if s:  # between the title and the bars, where it can hide no bar and no count
        ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=s, frameon=False,
                  borderaxespad=0.2, handlelength=1.2, columnspacing=1.5)
    return fig


# ---------------------------------------------------------------------------------------------- phases of a fine-tune

#: How a phase (results.csv's ``phase`` column, ``finetune.Phase.name``) is named in a picture
PHASE_LABELS = {"head": "head only", "all": "all layers"}


def phase_changes(history: Sequence[dict[str, Any]]) -> list[tuple[float, str, str]]:
    """Where a run's phase changes: ``(x, before, after)`` for each pair of consecutive history rows
    whose ``phase`` differs, ``x`` halfway between their epochs (rows without a phase: none)."""
    out = []
    for prev, row in zip(history, history[1:], strict=False):
        a, b = prev.get("phase"), row.get("phase")
        if a and b and a != b:
            out.append(((float(prev["epoch"]) + float(row["epoch"])) / 2, str(a), str(b)))
    return out


def mark_phases(axes: Sequence[Any], history: Sequence[dict[str, Any]]) -> int:
    """A dashed vertical line on each of ``axes`` where the phase changes (a fine-tune's head phase to
    every layer), named in the legend of each axes that has one, e.g. "head only → all layers"
    (``PHASE_LABELS``): the legend finds a free corner, where a label at the line would cover the
    curves or be cut at the picture's edge when the change comes in the last epochs. Returns the
    number of changes marked."""
    changes = phase_changes(history)
    for ax in axes:
        for x, before, after in changes:
            ax.axvline(x, color="0.35", linestyle="--", linewidth=1.0, zorder=1,
                       label=f"{PHASE_LABELS.get(before, before)} \u2192 {PHASE_LABELS.get(after, after)}")
        if changes and ax.get_legend() is not None:
            ax.legend(fontsize=9)
    return len(changes)
