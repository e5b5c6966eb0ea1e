"""report.plots and report.html on small synthetic data: every picture draws (in its own figure and
in a caller's Axes) and saves as a PNG; the metrics match hand computations; the page is escaped,
self-contained and leaves out what it was not given."""

from __future__ import annotations

import io
import json
import math
import re
import warnings

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from minivision.report import html, plots, style

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
HOSTILE = "<script>alert(1)</script>"


def _png(fig, path):
    style.save_figure(fig, path)
    img = Image.open(path)
    assert img.format == "PNG"
    return img.size


def _text_boxes(fig, ax):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    return [t.get_window_extent(renderer) for t in ax.texts], fig.bbox


# ---------------------------------------------------------------------------------------------- image_grid

@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_image_grid_own_figure_titles_fit_and_never_overlap(tmp_path, channels, size):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (23, channels, size, size), dtype=np.uint8)
    names = ["T-shirt/top", "automobile", "Ankle boot"]
    titles = [f"true: {names[i % 3]}\npred: {names[(i + 1) % 3]} 93%" for i in range(23)]
    colors = [style.RIGHT if i % 2 else style.WRONG for i in range(23)]
    fig = plots.image_grid(torch.from_numpy(x), titles, colors=colors, title="predictions")
    (ax,) = fig.axes
    assert len(ax.images) == 1  # one mosaic, one imshow
    assert len(ax.texts) == 23 and [t.get_color() for t in ax.texts] == colors
    assert all(t.get_fontsize() >= 7 for t in ax.texts)
    inches_per_column = fig.get_figwidth() / 10
    assert 1.2 <= inches_per_column <= 1.7, inches_per_column
    boxes, page = _text_boxes(fig, ax)
    for i, b in enumerate(boxes):
        assert page.x0 <= b.x0 and b.x1 <= page.x1 and page.y0 <= b.y0 and b.y1 <= page.y1, titles[i]  # not clipped
        if i % 10:  # the neighbour on the left, same row
            assert boxes[i - 1].x1 < b.x0, (titles[i - 1], titles[i])
        if i >= 10:  # the title does not reach into the tile above
            assert b.y1 < boxes[i - 10].y0
    w, h = _png(fig, tmp_path / "grid.png")
    assert 1200 <= w <= 1700 and 300 <= h <= 900


def test_image_grid_draws_grayscale_as_stored_and_into_a_given_axes(tmp_path):
    x = np.zeros((4, 1, 28, 28), dtype=np.uint8)
    x[1] = 255
    fig = plots.image_grid(x, ["a", "b", "c", "d"], ncols=4)
    im = fig.axes[0].images[0]
    assert im.get_cmap().name == "gray" and im.get_clim() == (0, 255)  # not inverted: 0 is black
    arr = np.asarray(im.get_array())
    assert arr.min() == 0 and arr.max() == 255
    host = Figure(figsize=(8, 4))
    axes = host.subplots(1, 2)
    assert plots.image_grid(x, ["A $5 & $x", "b", "c", "d"], ax=axes[1], title="<given>") is host
    assert plots.image_grid(x[:, :, :20], None, ax=axes[0]) is host  # N x 1 x H x W with H != W, no titles
    assert axes[1].texts[0].get_text() == r"A \$5 & \$x"  # drawn literally, never as mathtext
    _png(host, tmp_path / "host.png")
    # N x H x W without a channel axis, and no images at all
    assert len(plots.image_grid(x[:, 0], list("abcd")).axes[0].texts) == 4
    _png(plots.image_grid(np.zeros((0, 1, 28, 28), np.uint8), []), tmp_path / "empty.png")
    with pytest.raises(ValueError):
        plots.image_grid(x, ["only one"])


# ---------------------------------------------------------------------------------------------- confusion

@pytest.mark.parametrize("k", [3, 10, 30])
def test_plot_confusion_counts_and_normalized(tmp_path, k):
    rng = np.random.default_rng(k)
    cm = rng.integers(0, 30, (k, k)) + np.eye(k, dtype=np.int64) * 500
    cm[1] = 0  # a class without images
    classes = (CLASSES * 3)[:k]
    fig = plots.plot_confusion(cm.tolist(), classes)
    ax = fig.axes[0]
    assert ax.get_title() == f"Confusion matrix ({int(cm.sum()):,} images)"
    assert ax.get_xlabel() == "predicted" and ax.get_ylabel() == "true"
    assert [t.get_text() for t in ax.get_xticklabels()] == classes
    assert len(fig.axes) == 2  # and a colorbar
    if k <= 25:
        cells = [t.get_text() for t in ax.texts]
        assert len(cells) == k * k and cells[0] == str(cm[0, 0])
    else:
        assert not ax.texts
    w, h = _png(fig, tmp_path / "cm.png")
    assert 300 < w < 2000 and 300 < h < 2000

    fig = plots.plot_confusion(torch.from_numpy(cm), classes, normalize=True)
    ax = fig.axes[0]
    assert "% of each true class" in ax.get_title()
    values = np.asarray(ax.images[0].get_array())
    assert values[1].sum() == 0 and np.allclose(values[[0] + list(range(2, k))].sum(1), 1)
    if k <= 25:  # percentages like every other share in the report, never fractions such as 0.93
        assert ax.texts[0].get_text() == f"{round(100 * cm[0, 0] / cm[0].sum())}%"
        cells = [t.get_text() for t in ax.texts]
        assert all(re.fullmatch(r"0|<1%|>99%|\d{1,3}%", c) for c in cells), cells
    assert all(t.get_text().endswith("%") for t in fig.axes[1].get_yticklabels() if t.get_text())  # the colour bar
    _png(fig, tmp_path / "cmn.png")


def test_normalized_cells_never_round_a_share_to_0_or_100_percent():
    cm = [[995, 5, 0], [1, 998, 1], [0, 10, 990]]  # 0.5% would print "0%", 99.8% "100%"
    ax = plots.plot_confusion(cm, ["a", "b", "c"], normalize=True).axes[0]
    assert [t.get_text() for t in ax.texts] == [">99%", "<1%", "0", "<1%", ">99%", "<1%",
                                                "0", "1%", "99%"]


def test_plot_confusion_into_a_given_axes_and_text_colour(tmp_path):
    host = Figure(figsize=(10, 4))
    axes = host.subplots(1, 2)
    cm = [[90, 10], [0, 0]]
    assert plots.plot_confusion(cm, ["a", HOSTILE], ax=axes[0]) is host
    assert plots.plot_confusion(cm, ["a", "b"], ax=axes[1], normalize=True) is host
    colors = [t.get_color() for t in axes[0].texts]
    assert colors[0] == "white" and colors[1] != "white"  # dark cell, light cell
    _png(host, tmp_path / "host.png")
    with pytest.raises(ValueError):
        plots.plot_confusion(cm, ["a", "b", "c"])


# ---------------------------------------------------------------------------------------------- calibration

def test_calibration_from_probs_by_hand():
    probs = [[0.85, 0.15], [0.35, 0.65], [0.28, 0.72]]  # confidences 0.85, 0.65, 0.72
    y = [0, 0, 1]  # right, wrong, right
    c = plots.calibration_from_probs(np.array(probs), np.array(y), bins=10)
    assert math.isclose(c["ece"], (0.15 + 0.65 + 0.28) / 3, abs_tol=1e-9)
    assert len(c["bins"]) == 10 and sum(b["count"] for b in c["bins"]) == 3
    assert [b["count"] for b in c["bins"]] == [0, 0, 0, 0, 0, 0, 1, 1, 1, 0]
    b6 = c["bins"][6]
    assert math.isclose(b6["lo"], 0.6) and math.isclose(b6["hi"], 0.7)
    assert math.isclose(b6["confidence"], 0.65) and b6["accuracy"] == 0.0
    assert c["bins"][0]["confidence"] is None and c["bins"][0]["accuracy"] is None  # empty: JSON-safe None
    assert set(c["bins"][0]) == {"lo", "hi", "count", "confidence", "accuracy"}
    # torch inputs give the same answer
    t = plots.calibration_from_probs(torch.tensor(probs), torch.tensor(y), bins=10)
    assert math.isclose(t["ece"], c["ece"], abs_tol=1e-6)


def test_calibration_from_probs_perfectly_calibrated_and_counts():
    probs = torch.tensor([[0.75, 0.25]]).repeat(400, 1)
    y = torch.tensor([0] * 300 + [1] * 100)  # right 75% of the time at confidence 0.75
    c = plots.calibration_from_probs(probs, y)
    assert c["ece"] < 1e-9 and len(c["bins"]) == 15
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(10), size=1000)
    y_random = rng.integers(0, 10, 1000)
    c = plots.calibration_from_probs(p, y_random, bins=15)
    assert sum(b["count"] for b in c["bins"]) == 1000
    conf, right = p.max(1), p.argmax(1) == y_random  # by hand: 15 equal bins of the top probability
    which = np.minimum((conf * 15).astype(int), 14)
    ece = sum(abs(right[which == b].mean() - conf[which == b].mean()) * (which == b).mean()
              for b in range(15) if (which == b).any())
    assert math.isclose(c["ece"], ece, abs_tol=1e-9)
    assert math.isclose(c["bins"][-1]["hi"], 1.0) and c["bins"][0]["lo"] == 0.0
    with pytest.raises(ValueError):
        plots.calibration_from_probs(p[:, 0], rng.integers(0, 10, 1000))


def test_plot_calibration(tmp_path):
    c = {"ece": 0.0123, "bins": [
        {"lo": i / 10, "hi": (i + 1) / 10, "count": 0 if i < 3 else 10 * i,
         "confidence": None if i < 3 else i / 10 + .05, "accuracy": None if i < 3 else min(1.0, i / 10 + .1)}
        for i in range(10)]}
    c["bins"][3].update(confidence=math.nan, accuracy=math.nan, count=0)  # the NaN spelling of an empty bin
    fig = plots.plot_calibration(c)
    ax = fig.axes[0]
    assert "ECE 1.23%" in ax.get_title()
    assert ax.get_xlabel() == "confidence (top score)" and ax.get_ylabel() == "accuracy"
    assert ax.get_xlim() == (0, 1) and ax.get_ylim() == (0, 1)
    assert ax.child_axes  # the histogram of counts, inside this Axes
    w, h = _png(fig, tmp_path / "cal.png")
    assert w >= 400 and h >= 400
    # both axes in percent, as the ECE in the title and every share on the page
    ticks = [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels() if t.get_text()]
    assert ticks and all(t.endswith("%") for t in ticks), ticks
    host = Figure()
    axes = host.subplots(2, 3)
    assert plots.plot_calibration(c, ax=axes[1, 1]) is host
    assert plots.plot_calibration({"ece": math.nan, "bins": []}, ax=axes[0, 0]) is host  # nothing scored
    _png(host, tmp_path / "host.png")


def test_plot_calibration_before_and_after_temperature_scaling(tmp_path):
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.normal(size=(3000, 5)) * 0.6)
    y = torch.from_numpy(rng.integers(0, 5, 3000))
    logits[torch.arange(2000), y[:2000]] += 2.5  # right two thirds of the time, with modest scores
    before = plots.calibration_from_probs(logits.softmax(1), y)
    after = plots.calibration_from_probs((logits / 0.5).softmax(1), y)
    fig = plots.plot_calibration(before, after=after, temperature=0.5)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0] == f"before: ECE {100 * before['ece']:.2f}%"
    assert labels[1] == f"after temperature scaling (T = 0.50): ECE {100 * after['ece']:.2f}%"
    curves = [line for line in ax.get_lines() if len(line.get_xdata()) > 2]
    assert len(curves) == 2  # before and after, beside the diagonal
    # a curve point is a bin's (mean confidence, accuracy); bins of a handful of images are left out
    kept = [b for b in before["bins"] if b["count"] >= 10]
    assert list(curves[0].get_xdata()) == [b["confidence"] for b in kept]
    assert "before and after" in ax.get_title()
    _png(fig, tmp_path / "cal2.png")


def test_plot_history_accuracy_in_percent():
    from minivision.report.history import plot_history

    hist = [{"epoch": e, "train_loss": 1 / e, "train_accuracy": 0.8 + e / 100, "val_loss": 1.1 / e,
             "val_accuracy": 0.78 + e / 100, "lr": 0.1 / e, "seconds": 1.0} for e in (1, 2, 3)]
    fig = plot_history(hist)
    acc, loss = fig.axes[0], fig.axes[1]
    from matplotlib.ticker import PercentFormatter

    assert isinstance(acc.yaxis.get_major_formatter(), PercentFormatter)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    assert all(float(t.get_text().replace("\u2212", "-")).is_integer() for t in acc.get_xticklabels() if t.get_text())
    assert not isinstance(loss.yaxis.get_major_formatter(), PercentFormatter)  # a loss is not a share


# ---------------------------------------------------------------------------------------------- class counts

def test_plot_class_counts(tmp_path):
    counts = {"train": [5400] * 10, "val": [600] * 10, "test": [1000] * 10}
    fig = plots.plot_class_counts(counts, CLASSES)
    ax = fig.axes[0]
    assert len(ax.patches) == 30
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train (54,000)", "val (6,000)", "test (10,000)"]
    assert "5,400" in [t.get_text() for t in ax.texts]
    assert [t.get_text() for t in ax.get_yticklabels()] == CLASSES
    w, h = _png(fig, tmp_path / "counts.png")
    assert 500 < w < 1500 and 300 < h < 1500
    host = Figure()
    assert plots.plot_class_counts({"train": [3, 0]}, ["a", HOSTILE], ax=host.subplots()) is host
    _png(host, tmp_path / "host.png")


# ---------------------------------------------------------------------------------------------- metrics

# rows true, columns predicted; "c" is never predicted, "d" has no images but is predicted once
CONFUSION = [[4, 1, 0, 0],
             [2, 3, 0, 0],
             [1, 0, 0, 1],
             [0, 0, 0, 0]]


def test_per_class_metrics_by_hand():
    rows = plots.per_class_metrics(CONFUSION, list("abcd"))
    assert [r["class"] for r in rows] == list("abcd")
    a, b, c, d = rows
    assert math.isclose(a["precision"], 4 / 7) and math.isclose(a["recall"], 4 / 5) and math.isclose(a["f1"], 2 / 3)
    assert math.isclose(b["precision"], 3 / 4) and math.isclose(b["recall"], 3 / 5) and math.isclose(b["f1"], 2 / 3)
    assert (c["precision"], c["recall"], c["f1"], c["support"]) == (0.0, 0.0, 0.0, 2)  # never predicted
    assert (d["precision"], d["recall"], d["f1"], d["support"]) == (0.0, 0.0, 0.0, 0)  # no images
    assert [r["support"] for r in rows] == [5, 5, 2, 0]
    assert all(isinstance(r[k], float) and not math.isnan(r[k]) for r in rows for k in ("precision", "recall", "f1"))


def test_most_confused_by_hand():
    pairs = plots.most_confused(np.array(CONFUSION), list("abcd"))
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [
        ("b", "a", 2), ("a", "b", 1), ("c", "a", 1), ("c", "d", 1)]  # largest first, zeros left out
    assert [p["fraction_of_true"] for p in pairs] == [2 / 5, 1 / 5, 1 / 2, 1 / 2]
    assert len(plots.most_confused(CONFUSION, list("abcd"), k=2)) == 2
    assert plots.most_confused([[3, 0], [0, 2]], ["x", "y"]) == []


# ---------------------------------------------------------------------------------------------- html

PNG = style.png_bytes(Figure(figsize=(1, 1)), dpi=20)


def _report(**over):
    classes = ["T-shirt/top", HOSTILE, "a&b", 'say "hi"']
    confusion = [[5, 1, 0, 0], [0, 4, 2, 0], [1, 0, 3, 0], [0, 0, 0, 0]]
    kw = dict(title="run <1>", headline=[("test accuracy", "91.29%"), ("model", "mvnet-t")],
              settings={"model": "mvnet-t", "epochs": 3, "optimizer": {"lr": 0.1}, "note": HOSTILE},
              dataset=[("name", "synthetic"), ("classes", ", ".join(classes))],
              images={k: PNG for k in ("results", "confusion", "confusion_normalized", "mistakes", "predictions",
                                       "calibration", "samples", "embedding")},
              per_class=plots.per_class_metrics(confusion, classes),
              confused=plots.most_confused(confusion, classes), calibration_ece=0.0123, notes=["a & b"])
    kw.update(over)
    return html.render_report(**kw)


def _section(page: str, sid: str) -> str:
    m = re.search(f'<section id="{sid}">(.*?)</section>', page, re.S)
    assert m, sid
    return m.group(1)


def test_render_report_escapes_every_text():
    page = _report()
    assert HOSTILE not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "a&b" not in page and "a&amp;b" in page
    assert 'say "hi"' not in page and "say &quot;hi&quot;" in page
    assert "run <1>" not in page and "<title>run &lt;1&gt;</title>" in page
    assert "<script" not in page.lower()


def test_render_report_sections_in_order_and_self_contained():
    page = _report(run_path="runs/train")
    ids = re.findall(r'<section id="([^"]+)">', page)
    assert ids == ["summary", "curves", "confusion", "per-class", "confused", "mistakes", "predictions", "calibration",
                   "samples", "embedding", "use", "dataset", "settings"]
    assert re.findall(r'<a href="#([^"]+)">', page) == ids  # the nav bar links every section
    assert "http://" not in page and "https://" not in page and "src=\"http" not in page
    assert page.count("data:image/png;base64,") == 8
    assert all('alt="' in img for img in re.findall(r"<img[^>]*>", page))
    assert "91.29%" in _section(page, "summary") and "a &amp; b" in _section(page, "summary")
    per_class = _section(page, "per-class")
    assert per_class.count("<tr") == 1 + 4 + 1  # header, 4 classes, macro average
    assert "83.3%" in per_class  # T-shirt/top: recall 5/6, one decimal
    assert "macro average (3 classes with images)" in per_class  # the last class has no images
    assert _section(page, "confused").count("<tr") == 1 + 3
    assert "1.23%" in _section(page, "calibration")
    settings = _section(page, "settings")
    assert "optimizer.lr" in settings and "0.1" in settings
    assert "<h2>Training settings</h2>" in settings  # no settings as used given: as given, under that name


def test_every_figure_opens_full_size_without_a_script():
    page = _report()
    figures = re.findall(r'<figure class="zoomable" id="(fig-[^"]+)">(.*?)</figure>', page, re.S)
    assert len(figures) == 8
    for fid, body in figures:
        # the picture is a link to its own figure (CSS :target shows it alone, full size) ...
        assert re.search(f'<a class="zoom" href="#{fid}" tabindex="-1">(<span [^>]*aria-hidden="true"></span>)*'
                         '<img [^>]*alt="[^"]+">', body), fid
        # opened, a shadow at each side while the picture goes on that way (checked in a browser in
        # test_report_browser.py), hidden from screen readers
        assert body.count('class="edge ') == 2 and body.count('class="cover ') == 2
        assert f'<a class="open" href="#{fid}">Open full size</a>' in body  # the keyboard's way in
        # ... and the full-size view has a way back to its section
        sid = re.search(r'<a class="close" href="#([^"]+)">Close</a>', body).group(1)
        assert f'<section id="{sid}">' in page and fid in _section(page, sid)
    assert "figure.zoomable:target" in page and "figure.zoomable:target img { max-width: none; }" in page
    assert "<script" not in page.lower()


def test_wide_tables_scroll_in_a_labelled_focusable_box_with_a_cue():
    page = _report()
    boxes = re.findall(r'<div class="table-wrap" tabindex="0" role="region" aria-label="([^"]+)">', page)
    assert boxes == ["Per-class metrics table", "Most confused pairs table"]
    css = re.search(r"\.table-wrap \{(.*?)\}", page, re.S).group(1)
    assert "overflow-x: auto" in css and css.count("radial-gradient") == 2 and css.count(" local") == 2
    assert ".table-wrap:focus-visible" in page and "a:focus-visible" in page  # a visible focus ring


def test_alt_texts_say_what_each_picture_shows():
    page = _report(alts={"confusion": "Confusion matrix of 20 test images: <12> right"})
    assert 'alt="Confusion matrix of 20 test images: &lt;12&gt; right"' in _section(page, "confusion")
    assert 'alt="Counts: rows are the true class' not in _section(page, "confusion")  # not the caption


def test_calibration_section_names_the_direction_and_before_after():
    before = {"n": 10_000, "ece": 0.0857, "confidence": 0.842, "accuracy": 0.928, "direction": "under-confident"}
    after = {"n": 10_000, "ece": 0.0123, "confidence": 0.921, "accuracy": 0.928, "direction": "calibrated"}
    details = {"split": "test", "before": before, "after": after, "temperature": 0.6812, "fitted_on": "validation",
               "fitted_n": 6000}
    cal = _section(_report(calibration=details, calibration_ece=0.0857), "calibration")
    assert ("Under-confident before temperature scaling: on the 10,000 test images the mean top score is 84.2% "
            "and the model is right 92.8% of the time: its scores claim 8.6 points less than it achieves.") in cal
    assert ("Well calibrated after it (the scores shown here, in predictions and by the service): on the 10,000 "
            "test images the mean top score is 92.1%") in cal
    assert "T = 0.681" in cal and "fitted on 6,000 validation images" in cal
    assert cal.count("<tr") == 3 and "8.57%" in cal and "1.23%" in cal and "calibrated" in cal
    cal = _section(_report(calibration=details, calibration_ece=0.0123), "calibration")
    assert "Expected calibration error (ECE): <strong>1.23%</strong> after temperature scaling (8.57% before)" in cal
    # a fit that kept T = 1: one sentence, and why
    kept = {**details, "after": before, "temperature": 1.0,
            "note": "T = 0.879 lowered the loss but not the calibration error: T = 1 kept"}
    cal = _section(_report(calibration=kept), "calibration")
    assert "before temperature scaling" not in cal and cal.count("Under-confident") == 1
    assert "fitted on 6,000 validation images: T = 0.879 lowered the loss but not the calibration error: T = 1 kept." \
        in cal and cal.count("T = 1 kept") == 1
    assert "divides the logits" not in cal
    # a model answering with TTA: the "after" figures are named the picture alone's
    cal = _section(_report(calibration={**details, "tta": "flip"}), "calibration")
    assert "after it (the picture alone; the model answers with flip TTA" in cal
    # no temperature: the direction, and a plain statement that the scores are the model's own
    over = dict(before, confidence=0.97, direction="over-confident")
    cal = _section(_report(calibration={**details, "before": over, "after": None, "temperature": None}), "calibration")
    assert "Over-confident" in cal and "4.2 points more than it achieves" in cal and "No temperature" in cal


def test_settings_as_used_and_use_this_model_sections():
    page = _report(used=[("device", "given: auto -> used: cpu"), ("CPU", "<cpu>")], run_path="runs/my run")
    settings = _section(page, "settings")
    assert "<h2>Settings as used</h2>" in settings and "given: auto -&gt; used: cpu" in settings
    assert "&lt;cpu&gt;" in settings and "Training settings as given (args.yaml)" in settings
    use = _section(page, "use")
    assert "minivision predict &#x27;runs/my run&#x27; photo.jpg" in use  # quoted for the shell
    assert "clf = load(&quot;runs/my run&quot;)" in use
    ids = re.findall(r'<section id="([^"]+)">', page)
    assert ids[-3:] == ["use", "dataset", "settings"]


def test_render_report_leaves_out_what_it_was_not_given(tmp_path):
    (tmp_path / "cm.png").write_bytes(PNG)
    page = _report(images={"confusion": tmp_path / "cm.png", "predictions": PNG}, calibration_ece=None,
                   settings={}, dataset=[])
    ids = re.findall(r'<section id="([^"]+)">', page)
    assert ids == ["summary", "confusion", "per-class", "confused", "predictions"]
    assert page.count("data:image/png;base64,") == 2
    assert 'href="#curves"' not in page and 'href="#mistakes"' not in page
    # no evaluation at all: no tables; a perfect model: the confused section says so
    assert re.findall(r'<section id="([^"]+)">', _report(images={}, per_class=[], confused=[], calibration_ece=None,
                                                          settings={}, dataset=[])) == ["summary"]
    assert "No image was misclassified" in _report(confused=[])
    # the calibration section stands on its ECE alone
    assert "1.23%" in _section(_report(images={}), "calibration")


def test_write_report_is_atomic(tmp_path):
    out = html.write_report(tmp_path / "sub" / "report.html", **dict(
        title="t", headline=[], settings={"a": 1}, dataset=[], images={"results": PNG}, per_class=[], confused=[],
        calibration_ece=None))
    assert out == tmp_path / "sub" / "report.html"
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # no temporary file left behind


# ---------------------------------------------------------------------------------------------- every script

WORLD = ["T恤", "ズボン", "حقيبة", "Écharpe", "외투", "Сумка"]  # Chinese, Japanese, Arabic, accents, Korean, Cyrillic


def _draw_every_picture(names: list[str]) -> list[Figure]:
    k = len(names)
    x = np.random.default_rng(0).integers(0, 256, (k, 1, 8, 8), dtype=np.uint8)
    confusion = torch.arange(k * k).view(k, k)
    from minivision.report.fonts import isolate

    return [plots.image_grid(x, [f"{isolate(n)} 93%\n({isolate(n)})" for n in names]),  # as the report's titles
            plots.plot_confusion(confusion, names),
            plots.plot_confusion(confusion, names, normalize=True),
            plots.plot_class_counts({"train": list(range(1, k + 1))}, names)]


def test_class_names_in_every_script_are_drawn_without_missing_glyphs():
    from minivision.report import fonts

    assert fonts.uncovered(WORLD) == ""  # the installed fonts have every glyph ...
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for fig in _draw_every_picture(WORLD):
            fig.savefig(io.BytesIO(), format="png")  # matplotlib's own savefig: nothing of ours filters here
    # ... and matplotlib uses them: it warns "Glyph ... missing from font(s)" for any it cannot draw
    assert not [str(w.message) for w in caught if "missing from" in str(w.message)]
    assert fonts.font_note(WORLD) is None


def test_a_right_to_left_name_is_isolated_so_the_percent_stays_after_the_number():
    """UAX #9: "حقيبة 93%" takes the Arabic name's direction, and the percent sign is drawn before the number;
    the name in a first-strong isolate keeps the line left to right. Names in other scripts are unchanged."""
    import matplotlib

    from minivision.report.fonts import isolate, use_fonts

    assert isolate("حقيبة") == "\u2068حقيبة\u2069" and isolate("תיק") == "\u2068תיק\u2069"
    assert [isolate(n) for n in ("T恤", "ズボン", "Écharpe", "외투", "Сумка", "bag 2")] == \
           ["T恤", "ズボン", "Écharpe", "외투", "Сумка", "bag 2"]

    def ink(text: str) -> np.ndarray:
        with matplotlib.rc_context({"font.family": use_fonts()}):
            fig = Figure(figsize=(2.4, 0.4))
            fig.text(0.02, 0.2, text, fontsize=14)
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=80)
        return np.asarray(Image.open(buf).convert("L")) < 128

    def columns(a: np.ndarray) -> np.ndarray:
        return np.flatnonzero(a.any(0))

    # drawn left to right, the isolated line ends with the same ink as "93%" alone, which ends it
    line, tail = ink(f"{isolate('حقيبة')} 93%"), ink("93%")
    right = columns(line)[-1] + 1
    width = columns(tail)[-1] + 1 - columns(tail)[0]
    assert np.array_equal(line[:, right - width:right], tail[:, columns(tail)[0]:columns(tail)[0] + width])
    bare = ink("حقيبة 93%")  # without the isolate the line does not end with "93%"
    right = columns(bare)[-1] + 1
    assert not np.array_equal(bare[:, right - width:right], tail[:, columns(tail)[0]:columns(tail)[0] + width])


def test_the_picture_shows_the_glyph_not_a_box():
    """The CJK name is drawn by the CJK font: its ink differs from the box DejaVu Sans draws alone."""
    import matplotlib

    from minivision.report import fonts

    def ink(families: list[str]) -> np.ndarray:
        with matplotlib.rc_context({"font.family": families}), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fig = Figure(figsize=(1, 0.5))
            fig.text(0.1, 0.2, "恤", fontsize=20)
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=60)
        return np.asarray(Image.open(buf).convert("L"))

    assert not np.array_equal(ink(fonts.use_fonts()), ink(["DejaVu Sans"]))


def test_without_the_fonts_a_note_and_no_warning(monkeypatch, tmp_path):
    from minivision.report import fonts

    dejavu = [(f, p) for f, p in fonts.installed_fonts() if f == "DejaVu Sans"]
    monkeypatch.setattr(fonts, "installed_fonts", lambda: tuple(dejavu))
    note = fonts.font_note(WORLD)
    assert note is not None and note.count("\n") == 0 and "恤" in note and "fonts-noto-cjk" in note
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # our drawing puts its filter back in front of this
            for i, fig in enumerate(_draw_every_picture(WORLD)):
                style.save_figure(fig, tmp_path / f"{i}.png")
                style.png_bytes(fig)
        assert not [str(w.message) for w in caught if "missing from" in str(w.message)]
        assert fonts.use_fonts() == ["DejaVu Sans"]
    finally:
        monkeypatch.undo()
        fonts.use_fonts()  # the full list again for the tests after this one


def test_a_saved_picture_uses_only_the_families_its_texts_need(tmp_path):
    """Saving narrows the fallback list to what the figure's texts need (each family costs time at every
    text drawn); the CJK name is still drawn by the CJK font, and a family set by hand is kept."""
    import matplotlib

    from minivision.report import fonts

    assert fonts.families_for(["Trouser", "Ankle boot", "Écharpe", "Пальто"]) == (["DejaVu Sans"], set())
    assert fonts.families_for(["T恤", "Bag"])[0] == ["DejaVu Sans", "Noto Sans CJK JP"]
    full = fonts.use_fonts()
    assert len(full) > 2

    def saved(name: str, hand_set: bool = False) -> tuple[np.ndarray, list[list[str]]]:
        fig, ax = style.figure_of(None, 1.5, 0.8)
        ax.set_axis_off()
        t = ax.text(0.1, 0.2, name, fontsize=20)
        if hand_set:
            t.set_fontfamily(["serif"])
        buf = io.BytesIO(style.png_bytes(fig, dpi=60))
        return np.asarray(Image.open(buf).convert("L")), [list(t.get_fontfamily())]

    _, (used,) = saved("Bag")
    assert used == ["DejaVu Sans"]
    cjk, (used,) = saved("恤")
    assert used == ["DejaVu Sans", "Noto Sans CJK JP"]
    with matplotlib.rc_context({"font.family": ["DejaVu Sans"]}), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        box, _ = saved("恤")  # DejaVu Sans alone draws a box
    assert not np.array_equal(cjk, box)
    _, (used,) = saved("Bag", hand_set=True)
    assert used == ["serif"]
    assert list(matplotlib.rcParams["font.family"]) == full  # saving put the full list back


def test_a_report_logs_the_font_note_once(monkeypatch, tmp_path):
    from minivision.report import fonts, run

    monkeypatch.setattr(fonts, "font_note", lambda texts: "note: no installed font draws X" if "X" in texts else None)
    k = 2
    split = type("S", (), {})()
    split.x = torch.zeros(6, 1, 8, 8, dtype=torch.uint8)
    split.y = torch.tensor([0, 1, 0, 1, 0, 1])
    lines: list[str] = []
    run.write_run_report(tmp_path, classes=["X", "Y"], split=split, split_name="test", logits=torch.randn(6, k),
                         history=None, meta={}, parameters=1, settings={}, dataset=[], log=lines.append)
    assert lines.count("note: no installed font draws X") == 1


def test_a_users_own_font_choice_is_kept():
    import matplotlib

    from minivision.report import fonts

    with matplotlib.rc_context({"font.family": ["serif"]}):
        assert fonts.use_fonts() == ["serif"] and list(matplotlib.rcParams["font.family"]) == ["serif"]
    with matplotlib.rc_context({"font.family": ["sans-serif"]}):  # matplotlib's default: ours replaces it
        assert "Noto Sans CJK JP" in fonts.use_fonts()


# ---------------------------------------------------------------------------------------------- report/run.py

def test_temperature_of_only_with_a_calibration_entry():
    from minivision.report.run import temperature_of

    assert temperature_of({"calibration": {"method": "temperature", "temperature": 1.4}}) == 1.4
    assert temperature_of({}) is None and temperature_of({"calibration": None}) is None  # older runs: uncalibrated
    for bad in ({"temperature": 0}, {"temperature": -1}, {"temperature": float("nan")}, {}):
        assert temperature_of({"calibration": bad}) == 1.0, bad  # malformed: T = 1, as trust.py reads it


def test_headline_names_the_tta_mode():
    """The TTA row says which views made it: the mode given, else the model's own, else flip (reports of
    models without one)."""
    from minivision.report.run import headline_for

    metrics = {"accuracy": 0.8, "loss": 0.5, "macro_f1": 0.79, "ece": 0.05}
    tta = {"accuracy": 0.83}

    def row(meta, mode=None):
        rows = dict(headline_for(meta, metrics, "test", 10, tta, None, mode))
        return next(((k, v) for k, v in rows.items() if "TTA" in k), None)

    assert row(_meta()) == ("test accuracy, flip TTA", "83.00%")
    assert row(_meta(tta="flip+shift")) == ("test accuracy, flip+shift TTA", "83.00%")
    assert row(_meta(tta="none"), "flip+shift") == ("test accuracy, flip+shift TTA", "83.00%")
    assert row(_meta(tta="flip+shift"), "flip") == ("test accuracy, flip TTA", "83.00%")
    assert dict(headline_for(_meta(tta="flip"), metrics, "test", 10)).keys().isdisjoint(
        {"test accuracy, flip TTA"})  # no TTA metrics, no row


def test_calibration_details_before_and_after_by_hand():
    from minivision.report.run import calibration_details

    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 3.0]])
    y = torch.tensor([0, 1, 1, 1])  # three right
    d = calibration_details(logits, y, "test", {})
    b = d["before"]
    conf = torch.softmax(logits, 1).max(1).values
    assert b["n"] == 4 and b["accuracy"] == 0.75 and math.isclose(b["confidence"], float(conf.mean()), rel_tol=1e-6)
    assert b["direction"] == "over-confident"  # mean top score 0.82 against 75% right
    assert d["after"] is None and d["temperature"] is None and d["split"] == "test"
    meta = {"calibration": {"method": "temperature", "temperature": 0.5, "fitted_on": "validation", "n": 600}}
    d = calibration_details(logits, y, "test", meta)
    sharp = torch.softmax(logits / 0.5, 1).max(1).values
    assert math.isclose(d["after"]["confidence"], float(sharp.mean()), rel_tol=1e-6)
    assert d["after"]["accuracy"] == 0.75  # T never changes the top class
    assert d["temperature"] == 0.5 and d["fitted_n"] == 600 and d["fitted_on"] == "validation"
    assert calibration_details(logits[:0], y[:0], "test", meta) is None


def _meta(**over):
    meta = {"architecture": {"name": "mvnet-t"}, "dataset": {"name": "synthetic"},
            "created": "2026-11-29T23:47:01+00:00",
            "versions": {"minivision": "0.1.0", "torch": "2.13.0"},
            "metrics": {"epochs": 3, "best_epoch": 3, "val_accuracy": 0.9, "train_seconds": 4.2},
            "used": {"device": "cpu", "precision": "fp32", "batch_size": 64, "epochs_planned": 3,
                     "started": "2026-11-29T23:46:33+00:00",
                     "hardware": {"cpu": "AMD EPYC", "cpu_flags": ["avx2"], "cores": 2, "threads": 1, "os": "Linux"}}}
    meta.update(over)
    return meta


def test_used_rows_say_given_and_used_where_they_differ():
    from minivision.report.run import settings_as_used, used_rows

    settings = {"device": "auto", "precision": "fp32", "batch_size": 64, "model": "mvnet-t"}
    rows = dict(used_rows(_meta(), settings))
    assert rows["device"] == "given: auto -> used: cpu"
    assert rows["precision"] == "fp32" and rows["batch size"] == "64"  # the same: said once
    assert rows["date"] == "2026-11-29 23:47 UTC" and rows["epochs"] == "3 trained"
    assert rows["CPU"] == "AMD EPYC" and rows["CPU features"].startswith("avx2 (of avx2, avx512f")
    assert rows["cores, threads"] == "2 cores, 1 PyTorch threads"
    assert rows["versions"] == "minivision 0.1.0, torch 2.13.0" and "GPU" not in rows and "time budget" not in rows
    assert settings_as_used(settings, _meta()) == {"model": "mvnet-t"}  # shown above, as used
    gpu = _meta()
    gpu["used"]["hardware"]["gpu"] = "NVIDIA H200"
    assert dict(used_rows(gpu, settings))["GPU"] == "NVIDIA H200"
    # a run from before model.json recorded them: what was given, and that the rest is unknown
    old = {k: v for k, v in _meta().items() if k != "used"}
    rows = dict(used_rows(old, settings))
    assert rows["device"] == "given: auto (the value used is not recorded for this run)"
    assert "CPU" not in rows and settings_as_used(settings, old) == settings


def test_budget_plan_in_words():
    from minivision.report.run import budget_text, used_rows

    plan = {"budget_s": 30.0, "model": "mvnet-t", "probed_s_per_epoch": {"mvnet-t": 2.4, "cnn1": 0.35},
            "total_steps": 1266, "replans": 4}
    assert budget_text(plan) == ("a 30s budget: network mvnet-t (timed: mvnet-t 2 s/epoch, cnn1 350 ms/epoch); "
                                 "1,266 steps planned from the measured speed, re-planned 4 times while training")
    assert budget_text({"budget_s": 90, "model": "cnn1", "resumed": True}) == (
        "a 1m30s budget: network cnn1; resumed with the step count planned before")
    meta = _meta(budget=plan)
    meta["used"]["epochs_planned"] = None
    rows = dict(used_rows(meta, {}))
    assert rows["epochs"] == "3 trained (1,266 steps)" and rows["time budget"] == budget_text(plan)


def test_dataset_rows_equal_counts_read_as_one_figure():
    from types import SimpleNamespace

    from minivision.data.dataset import Split
    from minivision.report.run import dataset_rows

    def split(counts):
        y = torch.cat([torch.full((n,), k, dtype=torch.int64) for k, n in enumerate(counts)])
        return Split(torch.zeros(len(y), 1, 2, 2, dtype=torch.uint8), y)

    ds = SimpleNamespace(name="d", classes=["a", "b", "c"], channels=1, image_size=(2, 2), source=None, skipped=[],
                         train=split([5, 5, 5]), val=split([1, 2, 3]), test=None)
    rows = dict(dataset_rows(ds))
    assert rows["train"] == "15 images; 5 per class"  # not "per class 5-5"
    assert rows["val"] == "6 images; 1-3 per class"


def test_use_this_model_commands_exist():
    """Every command the report offers parses with today's CLI, and the Python lines name the real API."""
    import shlex

    import minivision
    from minivision.cli import build_parser
    from minivision.report.html import use_commands

    shell, python = use_commands("runs/my run")
    assert [c.split()[1] for c in shell] == ["predict", "evaluate", "serve"]
    parser = build_parser()
    for cmd in shell:
        args = shlex.split(cmd)
        assert args[0] == "minivision"
        ns = parser.parse_args(args[1:])
        assert getattr(ns, "model", None) == "runs/my run", cmd
    code = "\n".join(python)
    assert "from minivision import load" in code and callable(minivision.load)
    tree = compile(code, "<use>", "exec")  # valid Python
    assert {"predict", "predict_proba", "load"} <= set(tree.co_names)
    assert all(hasattr(minivision.Classifier, name) for name in ("predict", "predict_proba"))


def test_run_path_for_is_absolute_so_the_commands_work_from_any_folder(tmp_path, monkeypatch):
    from pathlib import Path

    from minivision.report.run import run_path_for

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "train2").mkdir(parents=True)
    expected = str((tmp_path / "runs" / "train2").resolve())
    assert run_path_for(tmp_path / "runs" / "train2") == expected
    assert run_path_for(Path("runs/train2")) == expected  # relative as the CLI names it: made absolute
    elsewhere = tmp_path.parent / "other-runs" / "train"
    assert run_path_for(elsewhere) == str(elsewhere.resolve())


def test_settings_as_given_are_labelled_and_empty_ones_named_not_shown():
    settings = {"model": "mvnet-t", "budget": None, "imgsz": None, "data_dir": None, "optimizer": {"lr": 0.1},
                "note": "null"}  # a string that reads null is a value, not an empty setting
    page = _report(used=[("device", "cpu")], settings=settings)
    sec = _section(page, "settings")
    assert sec.index("<h2>Settings as used</h2>") < sec.index("<h3>Training settings as given (args.yaml)</h3>")
    rows = dict(re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td></tr>", sec))
    assert rows["model"] == "mvnet-t" and rows["optimizer.lr"] == "0.1" and rows["note"] == "null"
    assert not {"budget", "imgsz", "data_dir"} & set(rows)  # no row reads null...
    assert ("Not given (left empty in args.yaml, so the run chose): <code>budget</code>, <code>imgsz</code>, "
            "<code>data_dir</code>.") in sec  # ...they are named once, as not given
    # an older run (nothing recorded as used): the table is labelled as what was given
    old = _section(_report(settings=settings), "settings")
    assert "<h2>Training settings</h2>" in old and "As given (args.yaml); what the run used is not recorded." in old
    # all given: no note
    assert "Not given" not in _section(_report(used=[("device", "cpu")], settings={"model": "x"}), "settings")


def test_write_run_report_shows_calibrated_scores(tmp_path, monkeypatch):
    """With a temperature in model.json the pictures' scores are softmax(logits / T), the section
    compares before and after, and the page has every new section."""
    from minivision.data.dataset import Split
    from minivision.report import run

    from .conftest import synthetic_images

    x, y = synthetic_images(40, classes=4)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 4, generator=g) + 1.5 * torch.nn.functional.one_hot(torch.from_numpy(y), 4)
    titles: list[list[str]] = []
    real_grid = plots.image_grid

    def grid(images, t=None, **kw):
        titles.append(list(t or []))
        return real_grid(images, t, **kw)

    monkeypatch.setattr(plots, "image_grid", grid)
    meta = _meta(calibration={"method": "temperature", "temperature": 2.0, "fitted_on": "validation", "n": 100,
                              "ece_before": 0.1, "ece_after": 0.02, "before": "over-confident", "after": "calibrated"})
    split = Split(torch.from_numpy(x), torch.from_numpy(y))
    out = run.write_run_report(tmp_path, classes=["a", "b", "c", "d"], split=split, split_name="test",
                               logits=logits, history=None, meta=meta, parameters=10,
                               settings={"device": "auto", "model": "mvnet-t"}, dataset=[("name", "synthetic")],
                               log=lambda m: None)
    calibrated = torch.softmax(logits / 2.0, 1)
    pick = run.sample_indices(40, 40)
    expected = [f"{['a', 'b', 'c', 'd'][int(calibrated[i].argmax())]} {run._pct(float(calibrated[i].max()))}"
                for i in pick]
    assert [t.split("\n")[0] for t in titles[-1]] == expected  # the predictions grid: calibrated scores
    assert out["calibrated"]["ece"] != out["calibration"]["ece"]
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "T = 2" in _section(page, "calibration") and "given: auto -&gt; used: cpu" in page
    assert re.findall(r'<section id="([^"]+)">', page)[-3:] == ["use", "dataset", "settings"]
    assert "alt=\"Reliability diagram: accuracy against confidence in 15 bins" in page


def test_report_commands_name_the_run_folder_by_absolute_path_and_the_log_names_the_split(tmp_path, monkeypatch):
    """Every command of "Use this model" names an existing absolute path (so it works when pasted in
    any folder), and the log's report line says which split its ECE is on."""
    import shlex
    from html import unescape
    from pathlib import Path

    from minivision.cli import build_parser
    from minivision.data.dataset import Split
    from minivision.report import run

    from .conftest import synthetic_images

    x, y = synthetic_images(24, classes=3)
    logits = torch.randn(24, 3, generator=torch.Generator().manual_seed(1))
    work = tmp_path / "work"
    (work / "runs" / "train").mkdir(parents=True)
    monkeypatch.chdir(work)
    logs: list[str] = []
    meta = _meta(calibration={"method": "temperature", "temperature": 1.5, "fitted_on": "validation", "n": 50,
                              "ece_before": 0.1, "ece_after": 0.02, "before": "over-confident", "after": "calibrated"})
    run.write_run_report(Path("runs/train"), classes=["a", "b", "c"], split=Split(torch.from_numpy(x),
                         torch.from_numpy(y)), split_name="test", logits=logits, history=None, meta=meta,
                         parameters=10, settings={"model": "mvnet-t"}, dataset=[("name", "synthetic")],
                         log=logs.append)
    page = (work / "runs" / "train" / "report.html").read_text(encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # pasted from another folder
    use = _section(page, "use")
    assert "work from any folder" in use
    blocks = [unescape(b) for b in re.findall(r'<pre class="commands"><code>(.*?)</code></pre>', use, re.S)]
    shell = blocks[0].splitlines()
    assert len(shell) == 3
    parser = build_parser()
    for cmd in shell:
        model = parser.parse_args(shlex.split(cmd)[1:]).model
        assert Path(model).is_absolute() and Path(model).is_dir(), cmd
        assert (Path(model) / "report.html").is_file()
    loads = re.findall(r'load\(("[^"]*")\)', blocks[1])
    assert len(loads) == 1 and Path(json.loads(loads[0])) == (work / "runs" / "train").resolve()
    line = next(m for m in logs if m.startswith("report: "))
    assert re.search(r"calibration test ECE \d+\.\d\d% -> \d+\.\d\d% with temperature 1\.5\)$", line), line


def test_bold_labels_draw_without_matplotlib_font_weight_messages(tmp_path, caplog):
    """compare's best row is bold: families without a bold face fall back to the regular one, and matplotlib's
    "findfont: Failed to find font weight bold" log line about it stays out of minivision's output."""
    import logging

    import matplotlib.pyplot as plt

    from minivision.report.fonts import use_fonts

    families = use_fonts()
    fig, ax = plt.subplots()
    ax.set_title("best: mlp", fontweight="bold")
    with caplog.at_level(logging.DEBUG, logger="matplotlib.font_manager"):
        for family in families:  # each family of the fallback list, bold, as matplotlib looks them up
            from matplotlib import font_manager
            font_manager.fontManager.findfont(font_manager.FontProperties(family=family, weight="bold"))
        fig.savefig(tmp_path / "bold.png")
    plt.close(fig)
    assert not [r for r in caplog.records if "Failed to find font weight" in r.getMessage()]
