"""``report.html``: the page a person opens first after a run, one self-contained file.

Every picture is embedded as a ``data:`` URL and the styling is inline, so the page can be mailed,
archived or opened offline and shows the same: no script, no font, no URL of any kind. Every
piece of text goes through ``html.escape`` (class names come from folder names). Class names may be
in any script: the font stack names the system fonts of each platform, then the Noto families
(``install.sh`` installs Debian's fonts-noto-core and fonts-noto-cjk), so a browser finds a font
with the glyphs (the same families the pictures use, report/fonts.py).

On a phone: each figure opens full size without a script (its link targets the figure, and CSS's
``:target`` shows it alone, at its own pixel size, in a scrollable view with a Close link, and a
shadow at each side while the picture goes on beyond it, the same cue the tables give); a table
wider than the screen scrolls inside its box, whose edges cast a shadow while there is more to see
(Lea Verou's "scrolling shadows": backgrounds that scroll with the content cover shadows that do
not), and the box takes keyboard focus so it can be scrolled with the arrow keys (WCAG 2.1.1). Our
own code, not a library's: the page is the product, and a script-free page needs no more.
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
        ("confusion_normalized", "Each row in percent of the true class's images: the diagonal is each class's "
                                 "recall"))),
    "mistakes": ("Worst mistakes", (("mistakes", "Wrong predictions, the highest loss (least probability given to the "
                                                 "true class) first"),)),
    "predictions": ("Predictions", (("predictions", "Random images: predicted class (true class), "
                                                    "green when right, red when wrong"),)),
    "calibration": ("Calibration", (("calibration", "Reliability diagram: accuracy against confidence"),)),
    "samples": ("Sample images", (("samples", "Images from the dataset with their classes"),)),
    "embedding": ("Embedding", (("embedding", "The model's features projected to two dimensions"),)),
    "inspect": ("What the model looked at", (("inspect", "Grad-CAM: the parts of each picture that raised the score of "
                                                         "the predicted class most (red), for a right and a wrong "
                                                         "picture of each class from the split named in the "
                                                         "picture's title (the test split, or validation when the "
                                                         "data has none)"),)),
}

_CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, "Noto Sans",
       "Noto Sans CJK JP", "Hiragino Sans", "PingFang SC", "Microsoft YaHei", "Noto Sans Arabic", "Noto Sans Hebrew",
       "Noto Sans Devanagari", "Noto Sans Thai", sans-serif;
       color: #1f2328; background: #f6f8fa; line-height: 1.5; }
a { color: #0550ae; }
a:focus-visible, .table-wrap:focus-visible { outline: 3px solid #0969da; outline-offset: 2px; border-radius: 2px; }
.skip { position: absolute; left: 8px; top: -60px; background: #fff; color: #0550ae; padding: 6px 10px; z-index: 200; }
.skip:focus { top: 8px; }
main:focus { outline: none; }
header { background: #24292f; color: #fff; padding: 14px 20px 0; }
header h1 { margin: 0 0 8px; font-size: 1.35rem; font-weight: 600; overflow-wrap: anywhere; }
nav { display: flex; flex-wrap: wrap; gap: 2px 14px; padding-bottom: 10px; font-size: .9rem; }
nav a { color: #d0d7de; text-decoration: none; }
nav a:hover { color: #fff; text-decoration: underline; }
nav a:focus-visible { outline-color: #fff; }
main { max-width: 1400px; margin: 0 auto; padding: 8px 16px 40px; }
section { background: #fff; border: 1px solid #d0d7de; border-radius: 8px; padding: 12px 18px 16px; margin: 16px 0;
          min-width: 0; }
h2 { font-size: 1.15rem; margin: 0 0 10px; }
h3 { font-size: 1rem; margin: 14px 0 6px; }
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
a.zoom { display: block; width: fit-content; max-width: 100%; cursor: zoom-in; }
a.open { white-space: nowrap; }
.zoom-bar { display: none; }
figure.zoomable:target { position: fixed; inset: 0; z-index: 100; margin: 0; padding: 0 0 10px; background: #fff;
                         overflow: auto; overscroll-behavior: contain; }
figure.zoomable:target img { max-width: none; }
figure.zoomable:target a.zoom { max-width: none; cursor: default; display: flex; align-items: stretch; }
a.zoom .edge, a.zoom .cover { display: none; }
figure.zoomable:target a.zoom .edge, figure.zoomable:target a.zoom .cover { display: block; flex: none; width: 14px; }
figure.zoomable:target .edge { position: sticky; z-index: 1; }
figure.zoomable:target .edge.l { left: 0; background: radial-gradient(farthest-side at 0 50%, rgba(0, 0, 0, .35),
                                                                      rgba(0, 0, 0, 0)); }
figure.zoomable:target .edge.r { right: 0; background: radial-gradient(farthest-side at 100% 50%, rgba(0, 0, 0, .35),
                                                                       rgba(0, 0, 0, 0)); }
figure.zoomable:target .cover { position: relative; z-index: 2; background: #fff; margin-left: -14px; }
figure.zoomable:target a.open { display: none; }
figure.zoomable:target .zoom-bar { display: flex; gap: 12px; align-items: baseline; position: sticky; top: 0; left: 0;
                                   z-index: 3; background: #fff; padding: 8px 10px; border-bottom: 1px solid #d0d7de;
                                   margin-bottom: 8px; }
.zoom-bar a { font-weight: 600; }
.table-wrap { overflow-x: auto; max-width: 100%;
              background: linear-gradient(to right, #fff 30%, rgba(255, 255, 255, 0)) left / 40px 100% no-repeat local,
                          linear-gradient(to left, #fff 30%, rgba(255, 255, 255, 0)) right / 40px 100% no-repeat local,
                          radial-gradient(farthest-side at 0 50%, rgba(0, 0, 0, .28), rgba(0, 0, 0, 0))
                            left / 14px 100% no-repeat scroll,
                          radial-gradient(farthest-side at 100% 50%, rgba(0, 0, 0, .28), rgba(0, 0, 0, 0))
                            right / 14px 100% no-repeat scroll; }
table { border-collapse: collapse; font-size: .92rem; }
th, td { padding: 4px 12px; border-bottom: 1px solid #eaeef2; text-align: left; vertical-align: top; }
th { font-weight: 600; border-bottom: 2px solid #d0d7de; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.num { white-space: nowrap; }
tr.total td { font-weight: 600; border-top: 2px solid #d0d7de; }
table.kv td:first-child { color: #57606a; }
table.kv td:last-child { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .85rem;
                         overflow-wrap: anywhere; }
code { overflow-wrap: anywhere; }
code.flag { white-space: nowrap; }
pre.commands { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; padding: 8px 12px; margin: 6px 0;
               font-size: .85rem; white-space: pre-wrap; overflow-wrap: anywhere; }
.big { font-size: 1.1rem; }
.muted { color: #57606a; }
@media (max-width: 600px) { main { padding: 4px 6px 24px; } section { padding: 10px; } th, td { padding: 3px 6px; }
                            header { padding: 10px 12px 0; } }
"""


# ---------------------------------------------------------------------------------------------- pieces

def _data_url(image: bytes | str | Path) -> str:
    data = image if isinstance(image, bytes | bytearray) else Path(image).read_bytes()
    mime = "image/jpeg" if data[:3] == b"\xff\xd8\xff" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(bytes(data)).decode('ascii')}"


def _figure(image: bytes | str | Path, caption: str, alt: str | None, fid: str, back: str) -> str:
    """A figure that opens full size: its picture (for a tap or a click) and the caption's "Open full
    size" (for the keyboard: one stop per figure) link to the figure itself (``#fid``), which CSS's
    ``:target`` then shows alone at its own pixel size; the bar above it links back to ``#back``.
    Opened, the picture is flanked by scroll cues: ``edge`` spans stick to the view's sides (a shadow
    over the picture while more of it lies that way) and ``cover`` spans, which scroll with the
    picture, hide each shadow once that end is reached."""
    fid, back = escape(fid), escape(back)
    return (f'<figure class="zoomable" id="{fid}">'
            f'<div class="zoom-bar"><a class="close" href="#{back}">Close</a><span>{escape(caption)}</span></div>'
            f'<a class="zoom" href="#{fid}" tabindex="-1"><span class="edge l" aria-hidden="true"></span>'
            '<span class="cover l" aria-hidden="true"></span>'
            f'<img src="{_data_url(image)}" alt="{escape(alt or caption)}">'
            '<span class="edge r" aria-hidden="true"></span><span class="cover r" aria-hidden="true"></span>'
            f'</a><figcaption>{escape(caption)} <a class="open" href="#{fid}">Open full size</a></figcaption></figure>')


Section = tuple[str, str, str]  # (id, heading, body HTML)


def _section(sid: str, heading: str, body: str) -> Section:
    return sid, heading, body


def _render_section(section: Section) -> str:
    sid, heading, body = section
    return f'<section id="{escape(sid)}">\n<h2>{escape(heading)}</h2>\n{body}\n</section>'


def _table(header: Sequence[str] | None, rows: Iterable[Sequence[str]], numeric: Sequence[bool] = (),
           css: str = "", total: Sequence[str] | None = None, label: str | None = None) -> str:
    """A table from already-formatted text cells; ``numeric[i]`` right-aligns column ``i``.

    With a ``label`` the table sits in a box that scrolls sideways when it is wider than the screen
    (with shadows at the edges that hide more columns), a keyboard-focusable region of that name;
    without one (key-value tables, whose long values wrap) it is placed as it is."""
    def cells(tag: str, row: Sequence[str]) -> str:
        scope = ' scope="col"' if tag == "th" else ""
        return "".join(f'<{tag}{scope}{" class=num" if i < len(numeric) and numeric[i] else ""}>'
                       f"{escape(str(c))}</{tag}>" for i, c in enumerate(row))

    lines = ([f"<tr>{cells('th', header)}</tr>"] if header else []) + [f"<tr>{cells('td', r)}</tr>" for r in rows]
    if total is not None:
        lines.append(f'<tr class="total">{cells("td", total)}</tr>')
    cls = f' class="{css}"' if css else ""
    table = f"<table{cls}>\n" + "\n".join(lines) + "\n</table>"
    if label is None:
        return table
    return f'<div class="table-wrap" tabindex="0" role="region" aria-label="{escape(label)}">{table}</div>'


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


def _flatten(settings: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts as dotted keys (``optimizer.lr``) with their values as they are."""
    rows = []
    for k, v in settings.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            rows += _flatten(v, key + ".")
        else:
            rows.append((key, v))
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
                   total=total, label="Per-class metrics table")
    note = ('<p class="muted">Precision: of the images predicted as the class, the share that are. Recall: of the '
            "class's images, the share found. F1: their harmonic mean.</p>")
    return _section("per-class", "Per-class metrics", table + note)


def _confused(confused: Sequence[Mapping[str, Any]]) -> Section:
    if not confused:
        return _section("confused", "Most confused pairs", "<p>No image was misclassified.</p>")
    rows = [(p["true"], p["predicted"], f"{int(p['count']):,}", _pct(p.get("fraction_of_true"))) for p in confused]
    table = _table(("true class", "predicted as", "images", "share of the true class"), rows,
                   (False, False, True, True), label="Most confused pairs table")
    return _section("confused", "Most confused pairs", table)


def _points(v: float) -> str:
    return f"{100 * abs(v):.1f} points"


def _direction_sentence(c: Mapping[str, Any], split: str, when: str = "") -> str:
    """"Under-confident{when}: on the N {split} images the mean top score is ...": ``when`` says which scores
    (" before temperature scaling", " after it, as shown")."""
    conf, acc, direction = c["confidence"], c["accuracy"], c["direction"]
    gap = conf - acc
    lead = {"over-confident": "Over-confident", "under-confident": "Under-confident",
            "calibrated": "Well calibrated", "mixed": "Mixed (too sure at some scores, too unsure at others)"
            }.get(direction, str(direction)) + when
    if gap > 0:
        more = f"{_points(gap)} more than it achieves"
    elif gap < 0:
        more = f"{_points(gap)} less than it achieves"
    else:
        more = "exactly what it achieves"
    return (f"{lead}: on the {int(c['n']):,} {split} images the mean top score is {_pct(conf)} and the model is "
            f"right {_pct(acc)} of the time: its scores claim {more}.")


def _calibration(image: bytes | str | Path | None, ece: float | None, details: Mapping[str, Any] | None,
                 alt: str | None) -> Section:
    """ECE (of the scores shown: after temperature scaling when there is a T), the direction of the error
    (mean top score minus accuracy), and with a T the same before and after softmax(logits / T) (Guo et
    al. 2017, "On Calibration of Modern Neural Networks": ECE over 15 equal confidence bins; temperature
    scaling)."""
    body = ""
    split = str(details.get("split", "scored")) if details else "scored"
    if details and details.get("after"):
        before, after, t = details["before"], details["after"], details["temperature"]
        if details.get("note"):  # T = 1 kept: before and after are the same scores
            body += f'<p class="big">{escape(_direction_sentence(before, split))}</p>'
        else:
            shown = " after it (the scores shown here, in predictions and by the service)"
            if details.get("tta"):  # the answers average views; these figures are of the picture alone
                shown = (f" after it (the picture alone; the model answers with {details['tta']} TTA, whose "
                         "calibration `minivision evaluate` gives)")
            for c, when in ((before, " before temperature scaling"), (after, shown)):
                body += f'<p class="big">{escape(_direction_sentence(c, split, when))}</p>'
        fitted = details.get("fitted_on") or "validation"
        n_fit = details.get("fitted_n")
        on = f"{int(n_fit):,} {fitted} images" if n_fit else f"the {fitted} split"
        if details.get("note"):  # the fit's T lowered the loss but not the calibration error: T = 1 kept
            body += (f"<p>Temperature scaling was fitted on {escape(on)}: {escape(str(details['note']))}. The scores "
                     "in this report, in predictions and in the served answers are the model's own softmax "
                     f"probabilities. On the {escape(split)} images:</p>")
        else:
            body += (f"<p>Temperature scaling divides the logits by <strong>T = {escape(f'{t:.3g}')}</strong> "
                     f"(fitted on {escape(on)}) before the softmax; the scores in this report, in predictions and "
                     "in the served answers are the calibrated ones. Before and after, on the "
                     f"{escape(split)} images:</p>")
        rows = [(label, f"{100 * c['ece']:.2f}%", _pct(c["confidence"]), _pct(c["accuracy"]), c["direction"])
                for label, c in (("before (T = 1)", before), (f"after (T = {t:.3g})", after))]
        body += _table(("scores", "ECE", "mean top score", "accuracy", "reads as"), rows,
                       (False, True, True, True, False), label="Calibration before and after table")
    elif details:
        body += f'<p class="big">{escape(_direction_sentence(details["before"], split))}</p>'
        body += ('<p class="muted">No temperature was fitted for this run: the scores shown are the model\'s '
                 "own softmax probabilities.</p>")
    if ece is not None:
        text = f"{100 * ece:.2f}%" if math.isfinite(ece) else "n/a"
        after = details.get("after") if details else None
        when = f" after temperature scaling ({100 * details['before']['ece']:.2f}% before)" if after else ""
        body += (f"<p>Expected calibration error (ECE): <strong>{escape(text)}</strong>{escape(when)}. "
                 '<span class="muted">ECE: the average gap between how sure the model is (its top score) and how '
                 "often it is right, weighted by the images in each of 15 confidence bins; 0% is perfectly "
                 "calibrated. Over-confident: the scores are higher than the accuracy; under-confident: lower; "
                 "mixed: higher in some bins and lower in others."
                 "</span></p>")
    if image is not None:
        body += _figure(image, _FIGURES["calibration"][1][0][1], alt, "fig-calibration", "calibration")
    return _section("calibration", "Calibration", body)


def _figures_section(sid: str, images: Mapping[str, Any], alts: Mapping[str, str]) -> Section | None:
    heading, figures = _FIGURES[sid]
    shown = [_figure(images[key], caption, alts.get(key), f"fig-{key}", sid)
             for key, caption in figures if images.get(key) is not None]
    if not shown:
        return None
    body = "\n".join(shown)
    return _section(sid, heading, f'<div class="figs">{body}</div>' if len(shown) > 1 else body)


def use_commands(run_path: str) -> tuple[list[str], list[str]]:
    """The shell commands and the Python lines that use the model in ``run_path`` (quoted for a POSIX
    shell and for Python): predict, evaluate and serve, and ``minivision.load`` with ``predict``."""
    import shlex

    q = shlex.quote(run_path)
    shell = [f"minivision predict {q} photo.jpg", f"minivision evaluate {q}", f"minivision serve {q}"]
    python = ["from minivision import load", f"clf = load({json.dumps(run_path, ensure_ascii=False)})",
              "# class names, one per picture", 'clf.predict(["photo.jpg"])',
              "# scores, one row per picture, columns in the order of clf.classes_",
              'clf.predict_proba(["photo.jpg"])']
    return shell, python


def _use(run_path: str) -> Section:
    shell, python = use_commands(run_path)
    body = (f"<p>This run's folder is <code>{escape(run_path)}</code>. The commands below name it by its full "
            "path, so they work from any folder.</p>"
            "<h3>On the command line</h3>"
            f'<pre class="commands"><code>{escape(chr(10).join(shell))}</code></pre>'
            '<p class="muted">predict: a picture, a folder or a glob (photos are converted as the training images '
            "were made; <code class=flag>--json</code> for one JSON list); evaluate: accuracy, per-class table "
            "and confusion matrix on the test split; serve: a web page and HTTP API on this machine, port 8000 "
            "(POST /predict).</p>"
            "<h3>In Python</h3>"
            f'<pre class="commands"><code>{escape(chr(10).join(python))}</code></pre>')
    return _section("use", "Use this model", body)


def _settings(used: Sequence[tuple[str, str]], settings: Mapping[str, Any]) -> Section:
    """The settings as used first, then the settings as given (args.yaml), each labelled so. Settings
    left empty (null: not given, so the run chose, e.g. the dataset's own picture size) are named in one
    line under the table rather than shown as rows reading ``null``."""
    body = ""
    if used:
        body += _table(None, used, css="kv")
    if settings:
        flat = _flatten(settings)
        rows = [(k, _setting_text(v)) for k, v in flat if v is not None]
        empty = [k for k, v in flat if v is None]
        body += ("<h3>Training settings as given (args.yaml)</h3>" if used
                 else '<p class="muted">As given (args.yaml); what the run used is not recorded.</p>')
        if rows:
            body += _table(None, rows, css="kv")
        if empty:
            body += ('<p class="muted">Not given (left empty in args.yaml, so the run chose): '
                     + ", ".join(f"<code>{escape(k)}</code>" for k in empty) + ".</p>")
    return _section("settings", "Settings as used" if used else "Training settings", body)


# ---------------------------------------------------------------------------------------------- page

def render_report(*, title: str, headline: Sequence[tuple[str, str]], settings: Mapping[str, Any],
                  dataset: Sequence[tuple[str, str]], images: Mapping[str, bytes | str | Path],
                  per_class: Sequence[Mapping[str, Any]], confused: Sequence[Mapping[str, Any]],
                  calibration_ece: float | None, notes: Sequence[str] = (),
                  calibration: Mapping[str, Any] | None = None, used: Sequence[tuple[str, str]] = (),
                  run_path: str | None = None, alts: Mapping[str, str] | None = None) -> str:
    """The page as a string. ``images`` maps section keys (results, confusion, confusion_normalized,
    mistakes, predictions, calibration, samples, embedding) to PNG bytes or paths; ``alts`` the same
    keys to alt texts that say what each picture shows (default: its caption). A missing key leaves its
    section out, as do an empty ``per_class``, ``dataset`` or ``settings``.

    ``calibration_ece``: the ECE of the scores shown (after temperature scaling when there is a T).
    ``calibration``: ``{"split", "before", "after" (or None), "temperature", "fitted_on", "fitted_n"}``,
    ``before``/``after`` each ``{"n", "ece", "confidence" (mean top score), "accuracy", "direction"}``
    (fractions 0-1; ``report.run.calibration_details`` makes it). ``used``: the settings as used, as
    (name, text) rows (``report.run.used_rows``). ``run_path``: the run folder's absolute path, which the
    "Use this model" commands name so they work from any folder (the section is left out without one)."""
    alts = alts or {}
    sections: list[Section | None] = [_summary(headline, notes)]
    for sid in ("curves", "confusion"):
        sections.append(_figures_section(sid, images, alts))
    if per_class:
        sections += [_per_class(per_class), _confused(confused)]
    elif confused:
        sections.append(_confused(confused))
    sections += [_figures_section("mistakes", images, alts), _figures_section("predictions", images, alts),
                 _figures_section("inspect", images, alts)]  # inspect: after `minivision inspect RUN`
    if images.get("calibration") is not None or calibration_ece is not None or calibration:
        sections.append(_calibration(images.get("calibration"), calibration_ece, calibration, alts.get("calibration")))
    sections += [_figures_section("samples", images, alts), _figures_section("embedding", images, alts)]
    if run_path:
        sections.append(_use(run_path))
    if dataset:
        sections.append(_section("dataset", "Dataset", _table(None, dataset, css="kv")))
    if settings or used:
        sections.append(_settings(used, settings))
    return render_page(title, [s for s in sections if s is not None])


def render_page(title: str, shown: Sequence[Section]) -> str:
    """A self-contained page of ``shown`` sections ((id, heading, body HTML)) with the report's styling and
    navigation (``render_report``'s page; ``minivision tune``'s report uses it too)."""
    nav = "".join(f'<a href="#{escape(sid)}">{escape(heading)}</a>' for sid, heading, _ in shown)
    return ("<!DOCTYPE html>\n"
            '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            '<a class="skip" href="#main">Skip to the report</a>\n'
            f'<header><h1>{escape(title)}</h1><nav aria-label="Sections">{nav}</nav></header>\n'
            '<main id="main" tabindex="-1">\n'
            + "\n".join(_render_section(s) for s in shown)
            + "\n</main>\n</body>\n</html>\n")


def write_report(path: str | Path, **kwargs: Any) -> Path:
    """``render_report(**kwargs)`` written to ``path`` through a temporary file (see ``fileio``)."""
    write_text(path, render_report(**kwargs))
    return Path(path)
