"""``report.html``: the page a person opens first after a run, one self-contained file.

Every picture is embedded as a ``data:`` URL and the styling is inline, so the page can be mailed,
archived or opened offline and shows the same: no script, no font, no URL of any kind. Every
piece of text goes through ``html.escape`` (class names come from folder names). Class names may be
in any script: the font stack names the system fonts of each platform, then the Noto families
(``install.sh`` installs Debian's fonts-noto-core and fonts-noto-cjk), so a browser finds a font
with the glyphs (the same families the pictures use, report/fonts.py).
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from ..fileio import write_text

# (section id, heading, the images it shows as (key, caption)); the page keeps this order.
_FIGURES: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "curves": ("Learning curves", (("results", "Accuracy, loss and learning rate per epoch, train vs validation"),)),
    "confusion": ("Confusion matrix", (
        ("confusion", "Counts: rows are the true class, columns the predicted one"),
        ("confusion_normalized", "Each row divided by its number of images: the diagonal is each class's recall"))),
    "mistakes": ("Worst mistakes", (("mistakes", "Wrong predictions, the highest loss (least probability given to the "
                                                 "true class) first"),)),
    "predictions": ("Predictions", (("predictions", "Random images: predicted class (true class), "
                                                    "green when right, red when wrong"),)),
    "calibration": ("Calibration", (("calibration", "Reliability diagram: accuracy against confidence"),)),
    "samples": ("Sample images", (("samples", "Images from the dataset with their classes"),)),
    "embedding": ("Embedding", (("embedding", "The model's features projected to two dimensions"),)),
}

_CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, "Noto Sans",
       "Noto Sans CJK JP", "Hiragino Sans", "PingFang SC", "Microsoft YaHei", "Noto Sans Arabic", "Noto Sans Hebrew",
       "Noto Sans Devanagari", "Noto Sans Thai", sans-serif;
       color: #1f2328; background: #f6f8fa; line-height: 1.5; }
header { background: #24292f; color: #fff; padding: 14px 20px 0; }
header h1 { margin: 0 0 8px; font-size: 1.35rem; font-weight: 600; overflow-wrap: anywhere; }
nav { display: flex; flex-wrap: wrap; gap: 2px 14px; padding-bottom: 10px; font-size: .9rem; }
nav a { color: #c9d1d9; text-decoration: none; }
nav a:hover { color: #fff; text-decoration: underline; }
main { max-width: 1400px; margin: 0 auto; padding: 8px 16px 40px; }
section { background: #fff; border: 1px solid #d0d7de; border-radius: 8px; padding: 12px 18px 16px; margin: 16px 0; }
h2 { font-size: 1.15rem; margin: 0 0 10px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { flex: 1 1 150px; border: 1px solid #d0d7de; border-radius: 6px; padding: 10px 14px; background: #f6f8fa; }
.card .value { font-size: 1.6rem; font-weight: 600; line-height: 1.2; overflow-wrap: anywhere; }
.card .label { color: #57606a; font-size: .85rem; }
ul.notes { margin: 12px 0 0; padding-left: 20px; color: #57606a; }
figure { margin: 0 0 14px; }
.figs { display: flex; flex-wrap: wrap; gap: 0 20px; }
.figs figure { flex: 1 1 520px; min-width: 0; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { color: #57606a; font-size: .88rem; margin-top: 4px; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; font-size: .92rem; }
th, td { padding: 4px 12px; border-bottom: 1px solid #eaeef2; text-align: left; vertical-align: top; }
th { background: #f6f8fa; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.total td { font-weight: 600; border-top: 2px solid #d0d7de; }
table.kv td:first-child { color: #57606a; white-space: nowrap; }
table.kv td:last-child { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .85rem;
                         overflow-wrap: anywhere; }
.big { font-size: 1.1rem; }
.muted { color: #57606a; }
@media (max-width: 600px) { main { padding: 4px 6px 24px; } section { padding: 10px; } th, td { padding: 3px 6px; } }
"""


# ---------------------------------------------------------------------------------------------- pieces

def _data_url(image: bytes | str | Path) -> str:
    data = image if isinstance(image, bytes | bytearray) else Path(image).read_bytes()
    mime = "image/jpeg" if data[:3] == b"\xff\xd8\xff" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(bytes(data)).decode('ascii')}"


def _figure(image: bytes | str | Path, caption: str) -> str:
    return (f'<figure><img src="{_data_url(image)}" alt="{escape(caption)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


Section = tuple[str, str, str]  # (id, heading, body HTML)


def _section(sid: str, heading: str, body: str) -> Section:
    return sid, heading, body


def _render_section(section: Section) -> str:
    sid, heading, body = section
    return f'<section id="{escape(sid)}">\n<h2>{escape(heading)}</h2>\n{body}\n</section>'


def _table(header: Sequence[str] | None, rows: Iterable[Sequence[str]], numeric: Sequence[bool] = (),
           css: str = "", total: Sequence[str] | None = None) -> str:
    """A table from already-formatted text cells; ``numeric[i]`` right-aligns column ``i``."""
    def cells(tag: str, row: Sequence[str]) -> str:
        return "".join(f'<{tag}{" class=num" if i < len(numeric) and numeric[i] else ""}>{escape(str(c))}</{tag}>'
                       for i, c in enumerate(row))

    lines = ([f"<tr>{cells('th', header)}</tr>"] if header else []) + [f"<tr>{cells('td', r)}</tr>" for r in rows]
    if total is not None:
        lines.append(f'<tr class="total">{cells("td", total)}</tr>')
    cls = f' class="{css}"' if css else ""
    return f'<div class="table-wrap"><table{cls}>\n' + "\n".join(lines) + "\n</table></div>"


def _pct(v: Any) -> str:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return "n/a"
    return f"{100 * v:.1f}%" if math.isfinite(v) else "n/a"


def _setting_text(v: Any) -> str:
    if isinstance(v, str):
        return v
    try:
        return json.dumps(v, default=str, ensure_ascii=False)
    except ValueError:  # a circular structure
        return repr(v)


def _flatten(settings: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Nested dicts as dotted keys (``optimizer.lr``), other values as JSON text."""
    rows = []
    for k, v in settings.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            rows += _flatten(v, key + ".")
        else:
            rows.append((key, _setting_text(v)))
    return rows


# ---------------------------------------------------------------------------------------------- sections

def _summary(headline: Sequence[tuple[str, str]], notes: Sequence[str]) -> Section:
    cards = "".join(f'<div class="card"><div class="value">{escape(str(value))}</div>'
                    f'<div class="label">{escape(str(label))}</div></div>' for label, value in headline)
    body = f'<div class="cards">{cards}</div>' if cards else '<p class="muted">No figures.</p>'
    if notes:
        body += '<ul class="notes">' + "".join(f"<li>{escape(str(n))}</li>" for n in notes) + "</ul>"
    return _section("summary", "Summary", body)


def _per_class(per_class: Sequence[Mapping[str, Any]]) -> Section:
    rows = [(r["class"], _pct(r["precision"]), _pct(r["recall"]), _pct(r["f1"]), f"{int(r['support']):,}")
            for r in per_class]
    from ..metrics import macro_average

    m = macro_average(list(per_class))  # over the classes that have images, as per_class.csv
    present = sum(1 for r in per_class if r["support"])
    label = m["class"] if present in (0, len(per_class)) else f"{m['class']} ({present} classes with images)"
    total = (label, _pct(m["precision"]), _pct(m["recall"]), _pct(m["f1"]), f"{int(m['support']):,}")
    table = _table(("class", "precision", "recall", "F1", "support"), rows, (False, True, True, True, True),
                   total=total)
    note = ('<p class="muted">Precision: of the images predicted as the class, the share that are. Recall: of the '
            "class's images, the share found. F1: their harmonic mean.</p>")
    return _section("per-class", "Per-class metrics", table + note)


def _confused(confused: Sequence[Mapping[str, Any]]) -> Section:
    if not confused:
        return _section("confused", "Most confused pairs", "<p>No image was misclassified.</p>")
    rows = [(p["true"], p["predicted"], f"{int(p['count']):,}", _pct(p.get("fraction_of_true"))) for p in confused]
    table = _table(("true class", "predicted as", "images", "share of the true class"), rows,
                   (False, False, True, True))
    return _section("confused", "Most confused pairs", table)


def _calibration(image: bytes | str | Path | None, ece: float | None) -> Section:
    body = ""
    if ece is not None:
        text = f"{100 * ece:.2f}%" if math.isfinite(ece) else "n/a"
        body += (f'<p class="big">Expected calibration error (ECE): <strong>{escape(text)}</strong></p>'
                 '<p class="muted">The average gap between how sure the model is (its top probability) and how '
                 "often it is right, weighted by the images in each confidence bin; 0% is perfectly calibrated."
                 "</p>")
    if image is not None:
        body += _figure(image, _FIGURES["calibration"][1][0][1])
    return _section("calibration", "Calibration", body)


def _figures_section(sid: str, images: Mapping[str, Any]) -> Section | None:
    heading, figures = _FIGURES[sid]
    shown = [_figure(images[key], caption) for key, caption in figures if images.get(key) is not None]
    if not shown:
        return None
    body = "\n".join(shown)
    return _section(sid, heading, f'<div class="figs">{body}</div>' if len(shown) > 1 else body)


# ---------------------------------------------------------------------------------------------- page

def render_report(*, title: str, headline: Sequence[tuple[str, str]], settings: Mapping[str, Any],
                  dataset: Sequence[tuple[str, str]], images: Mapping[str, bytes | str | Path],
                  per_class: Sequence[Mapping[str, Any]], confused: Sequence[Mapping[str, Any]],
                  calibration_ece: float | None, notes: Sequence[str] = ()) -> str:
    """The page as a string. ``images`` maps section keys (results, confusion, confusion_normalized,
    mistakes, predictions, calibration, samples, embedding) to PNG bytes or paths; a missing key
    leaves its section out, as do an empty ``per_class``, ``dataset`` or ``settings``."""
    sections: list[Section | None] = [_summary(headline, notes)]
    for sid in ("curves", "confusion"):
        sections.append(_figures_section(sid, images))
    if per_class:
        sections += [_per_class(per_class), _confused(confused)]
    elif confused:
        sections.append(_confused(confused))
    sections += [_figures_section("mistakes", images), _figures_section("predictions", images)]
    if images.get("calibration") is not None or calibration_ece is not None:
        sections.append(_calibration(images.get("calibration"), calibration_ece))
    sections += [_figures_section("samples", images), _figures_section("embedding", images)]
    if dataset:
        sections.append(_section("dataset", "Dataset", _table(None, dataset, css="kv")))
    if settings:
        sections.append(_section("settings", "Training settings", _table(None, _flatten(settings), css="kv")))
    shown = [s for s in sections if s is not None]

    nav = "".join(f'<a href="#{escape(sid)}">{escape(heading)}</a>' for sid, heading, _ in shown)
    return ("<!DOCTYPE html>\n"
            '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            f"<header><h1>{escape(title)}</h1><nav>{nav}</nav></header>\n<main>\n"
            + "\n".join(_render_section(s) for s in shown)
            + "\n</main>\n</body>\n</html>\n")


def write_report(path: str | Path, **kwargs: Any) -> Path:
    """``render_report(**kwargs)`` written to ``path`` through a temporary file (see ``fileio``)."""
    write_text(path, render_report(**kwargs))
    return Path(path)
