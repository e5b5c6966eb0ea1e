"""report.html in a real browser: Debian's chromium driven by Playwright (no download, no network).

``inspect_report`` is shared: tests/test_real_data.py runs it on a real training run's report.
Without a browser the tests skip, or fail where ``CI`` is set, so a CI machine cannot pass them
by accident.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

MISSING = ("no Chromium browser for the report tests: ./install.sh --test installs Debian's chromium "
           "(or set MINIVISION_CHROMIUM to a Chrome or Chromium binary)")

_COLLECT = """() => {
  const sectionOf = el => { const s = el.closest('section'); return s ? s.id : null; };
  const tables = {};
  for (const t of document.querySelectorAll('table')) {
    const id = sectionOf(t) || '';
    tables[id] = (tables[id] || 0) + t.querySelectorAll('tr').length;
  }
  return {
    title: document.title,
    sections: [...document.querySelectorAll('section')].map(s => s.id),
    h2: [...document.querySelectorAll('h2')].map(h => h.textContent.trim()),
    nav: [...document.querySelectorAll('nav a')].map(a => a.getAttribute('href')),
    images: [...document.images].map(i => [i.naturalWidth, i.naturalHeight]),
    image_alts: [...document.images].map(i => i.alt),
    image_sections: [...document.images].map(sectionOf),
    tables: tables,
    text: document.body.innerText,
  };
}"""


def find_browser() -> str | None:
    """``MINIVISION_CHROMIUM`` (None if that is not an executable), else the first Chromium-like browser on PATH."""
    env = os.environ.get("MINIVISION_CHROMIUM")
    if env:
        return env if os.path.isfile(env) and os.access(env, os.X_OK) else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def require_browser() -> str:
    """The browser's path; skips the test without one (fails it where ``CI`` is set)."""
    path = find_browser()
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        path = None
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    return path


PHONE = {"width": 390, "height": 844}  # an iPhone 12-15's viewport in CSS pixels


def inspect_report(path: str | Path, screenshot: str | Path | None = None, *, width: int = 1280,
                   narrow: int = PHONE["width"], axe: bool = False) -> dict[str, Any]:
    """Open ``path`` in headless Chromium and return what a person would see.

    Keys: title, sections (ids in page order), h2 (texts), nav (hrefs), images ((naturalWidth,
    naturalHeight) per ``<img>``: 0 where the browser could not decode it), image_alts,
    image_sections, tables ({section id: rows of its tables}), text (the page's visible text),
    console_errors (console errors and uncaught exceptions), requests (URLs fetched other than the
    page itself and ``data:`` URLs: should be none), narrow_overflow (True when, ``narrow`` pixels
    wide, the page scrolls sideways). ``screenshot`` saves a full-page PNG at ``width``. ``axe``
    adds axe_desk and axe_phone: axe-core's serious and critical violations at ``width`` and at a
    phone's 390 x 844 (tests/axe.py).
    """
    from playwright.sync_api import sync_playwright

    from .axe import axe_violations

    browser_path = require_browser()
    url = Path(path).resolve().as_uri()
    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"], headless=True)
        try:
            context = browser.new_context(viewport={"width": width, "height": 900}, bypass_csp=True)
            page = context.new_page()
            page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"exception: {e}"))
            page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url[:120]}"))
            page.on("request", lambda r: requests.append(r.url[:120]) if r.url not in (url,)
                    and not r.url.startswith("data:") else None)
            page.goto(url, wait_until="load")
            info = page.evaluate(_COLLECT)
            info["images"] = [tuple(wh) for wh in info["images"]]
            if screenshot is not None:
                Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=True)
            if axe:
                info["axe_desk"] = axe_violations(page)
            page.set_viewport_size({"width": narrow, "height": PHONE["height"]})
            info["narrow_overflow"] = page.evaluate(
                "() => document.documentElement.scrollWidth > document.documentElement.clientWidth + 1")
            if axe:
                info["axe_phone"] = axe_violations(page)
        finally:
            browser.close()
    info["console_errors"] = errors
    info["requests"] = requests
    return info


# ---------------------------------------------------------------------------------------------- tests

def _synthetic_report(tmp_path: Path, classes: list[str]) -> Path:
    """A report with every section, its pictures drawn by report.plots from small synthetic data."""
    import numpy as np
    import torch

    from minivision.report import history, html, plots, style

    from .conftest import synthetic_images

    k = len(classes)
    x, y = synthetic_images(60, classes=k)
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.normal(size=(60, k)) + 3 * np.eye(k)[y])
    probs = logits.softmax(1)
    conf, pred = probs.max(1)
    confusion = torch.bincount(torch.from_numpy(y) * k + pred, minlength=k * k).view(k, k)
    hist = [{"epoch": e, "train_loss": 1 / e, "train_accuracy": 1 - 0.5 / e, "val_loss": 1.1 / e,
             "val_accuracy": 1 - 0.6 / e, "lr": 0.1 / e, "seconds": 1.0} for e in (1, 2, 3)]
    titles = [f"{classes[int(pred[i])]} {float(conf[i]):.0%}\n({classes[int(y[i])]})" for i in range(20)]
    colors = [style.RIGHT if int(pred[i]) == int(y[i]) else style.WRONG for i in range(20)]
    images = {
        "results": style.png_bytes(history.plot_history(hist), dpi=50),
        "confusion": style.png_bytes(plots.plot_confusion(confusion, classes), dpi=50),
        "confusion_normalized": style.save_figure(plots.plot_confusion(confusion, classes, normalize=True),
                                                  tmp_path / "cm.png", dpi=50),
        "mistakes": style.png_bytes(plots.image_grid(x[:10], titles[:10], colors=[style.WRONG] * 10), dpi=50),
        "predictions": style.png_bytes(plots.image_grid(x[:20], titles, colors=colors), dpi=50),
        "calibration": style.png_bytes(plots.plot_calibration(plots.calibration_from_probs(probs, y)), dpi=50),
        "samples": style.png_bytes(plots.plot_class_counts({"train": [40] * k, "test": [20] * k}, classes), dpi=50),
    }
    per_class = plots.per_class_metrics(confusion, classes)
    return html.write_report(
        tmp_path / "report.html", title="minivision report: <train>", headline=[("test accuracy", "91.29%"),
                                                                                ("model", "mvnet-t")],
        settings={"model": "mvnet-t", "epochs": 3, "optimizer": {"name": "sgd", "lr": 0.1}, "augment": ["flip"]},
        dataset=[("name", "synthetic"), ("classes", ", ".join(classes))], images=images, per_class=per_class,
        confused=plots.most_confused(confusion, classes), calibration_ece=0.0123, notes=["a <note> & more"],
        used=[("device", "given: auto -> used: cpu"), ("CPU", "AMD EPYC"), ("versions", "minivision 0.1.0")],
        run_path=str(tmp_path / "a-folder-name-long-enough-to-need-two-lines-on-a-phone" / "runs" / "train"),
        alts={"confusion": f"Confusion matrix of 60 images over {k} classes"})


def test_report_renders_in_chromium(tmp_path):
    require_browser()
    classes = ["T-shirt/top", "<script>alert(1)</script>", "a&b", "Ankle boot"]
    page = inspect_report(_synthetic_report(tmp_path, classes), screenshot=tmp_path / "page.png")
    assert page["sections"] == ["summary", "curves", "confusion", "per-class", "confused", "mistakes", "predictions",
                                "calibration", "samples", "use", "dataset", "settings"]
    assert page["nav"] == [f"#{s}" for s in page["sections"]]
    assert len(page["h2"]) == len(page["sections"]) and "Per-class metrics" in page["h2"]
    # every picture decoded: results, 2 confusion matrices, mistakes, predictions, calibration, samples
    assert len(page["images"]) == 7 and all(w > 0 and h > 0 for w, h in page["images"]), page["images"]
    assert all(page["image_alts"])
    assert page["tables"]["per-class"] == 1 + len(classes) + 1  # header, one row a class, macro average
    assert page["tables"]["settings"] == 3 + 5  # as used; model, epochs, optimizer.name, optimizer.lr, augment
    assert page["tables"]["dataset"] == 2
    # the class names are shown as text, never run as markup
    assert "<script>alert(1)</script>" in page["text"] and "a&b" in page["text"] and "<note>" in page["text"]
    assert page["title"] == "minivision report: <train>"
    assert not page["console_errors"] and not page["requests"]
    assert not page["narrow_overflow"]
    from PIL import Image

    assert Image.open(tmp_path / "page.png").size[0] == 1280


# ---------------------------------------------------------------------------------------------- on a phone

LONG = "Aclassnamemuchlongerthanaphonescreeniswide" * 2  # no space or hyphen to wrap at


def _phone_page(p, url: str):
    browser = p.chromium.launch(executable_path=require_browser(), args=["--no-sandbox"], headless=True)
    context = browser.new_context(viewport=PHONE, bypass_csp=True)
    page = context.new_page()
    page.goto(url, wait_until="load")
    return browser, page


def test_on_a_phone_tables_scroll_in_their_box_with_a_cue_and_the_page_never_sideways(tmp_path):
    from playwright.sync_api import sync_playwright

    url = _synthetic_report(tmp_path, ["T-shirt/top", LONG, "Bag"]).resolve().as_uri()
    with sync_playwright() as p:
        browser, page = _phone_page(p, url)
        try:
            assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]
            boxes = page.evaluate("""() => [...document.querySelectorAll('.table-wrap')].map(e => ({
                section: e.closest('section').id, scroll: e.scrollWidth, width: e.clientWidth,
                overflow: getComputedStyle(e).overflowX, layers: getComputedStyle(e).backgroundAttachment,
                image: getComputedStyle(e).backgroundImage, focusable: e.tabIndex === 0,
                name: e.getAttribute('aria-label')}))""")
            wide = {b["section"]: b for b in boxes}
            assert wide["per-class"]["scroll"] > wide["per-class"]["width"]  # the long name: this box scrolls...
            for b in boxes:  # ... inside a box with shadows at its edges, reachable by keyboard, named
                assert b["overflow"] == "auto" and b["width"] <= PHONE["width"]
                assert b["layers"] == "local, local, scroll, scroll" and b["image"].count("radial-gradient") == 2
                assert b["focusable"] and b["name"]
            # the shadow is seen: the right edge of the scrolling box is darker than its left edge
            shot = page.locator("#per-class .table-wrap").screenshot()
            from io import BytesIO

            import numpy as np
            from PIL import Image

            grey = np.asarray(Image.open(BytesIO(shot)).convert("L"), dtype=float)
            assert grey[:, -5:].mean() < grey[:, :5].mean() - 8, (grey[:, -5:].mean(), grey[:, :5].mean())
            page.locator("#per-class .table-wrap").evaluate("e => { e.scrollLeft = e.scrollWidth; }")
            grey = np.asarray(Image.open(BytesIO(page.locator("#per-class .table-wrap").screenshot())).convert("L"),
                              dtype=float)
            assert grey[:, :5].mean() < grey[:, -5:].mean() - 8  # scrolled to the end: the shadow moves left
        finally:
            browser.close()


def test_each_figure_opens_full_size_by_keyboard_and_closes(tmp_path):
    from playwright.sync_api import sync_playwright

    url = _synthetic_report(tmp_path, CLASSES4).resolve().as_uri()
    with sync_playwright() as p:
        browser, page = _phone_page(p, url)
        try:
            n = page.evaluate("() => document.querySelectorAll('figure.zoomable').length")
            assert n == 7
            shown = page.evaluate("() => document.querySelector('#fig-predictions img').getBoundingClientRect().width")
            assert shown < PHONE["width"]  # on the page: shrunk to the screen
            # keyboard only: Tab to the picture's link (the focus ring shows), Enter opens it
            for _ in range(80):
                page.keyboard.press("Tab")
                if page.evaluate("() => document.activeElement.matches('#fig-predictions a.open')"):
                    break
            else:
                raise AssertionError("the figure's link is not reachable with Tab")
            ring = page.evaluate("() => { const s = getComputedStyle(document.activeElement); "
                                 "return [s.outlineStyle, parseFloat(s.outlineWidth)]; }")
            assert ring[0] == "solid" and ring[1] >= 2, ring
            page.keyboard.press("Enter")
            page.wait_for_function("() => location.hash === '#fig-predictions'")
            view = page.evaluate("""() => { const f = document.querySelector('figure:target');
                const r = f.getBoundingClientRect(), i = f.querySelector('img');
                return {id: f.id, position: getComputedStyle(f).position, x: r.x, y: r.y, w: r.width, h: r.height,
                        img: i.clientWidth, natural: i.naturalWidth,
                        close: getComputedStyle(f.querySelector('a.close')).display}; }""")
            assert view["id"] == "fig-predictions" and view["position"] == "fixed"
            assert (view["x"], view["y"], view["w"], view["h"]) == (0, 0, PHONE["width"], PHONE["height"])
            assert view["img"] == view["natural"] > PHONE["width"]  # full size, scrolls inside the view
            assert view["close"] != "none"
            assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]
            _check_open_view_scroll_cue(page, "#fig-predictions")
            page.keyboard.press("Tab")  # the view is where Tab starts now: its Close link comes first
            assert page.evaluate("() => document.activeElement.textContent") == "Close"
            page.keyboard.press("Enter")
            page.wait_for_function("() => location.hash === '#predictions'")
            assert page.evaluate("() => document.querySelector('figure:target')") is None
            # a tap on the picture opens it too
            page.locator("#fig-confusion a.zoom").click()
            page.wait_for_function("() => location.hash === '#fig-confusion'")
            assert page.evaluate("() => getComputedStyle(document.querySelector('#fig-confusion')).position") == "fixed"
        finally:
            browser.close()


def _check_open_view_scroll_cue(page, fig: str) -> None:
    """The opened picture, wider than the phone, shows a shadow at the side it goes on beyond: at
    the right edge at first, at the left edge once scrolled to the end, and none where it ends. The
    shadow is seen: the screen's edge columns are darker with the cue than with it hidden."""
    from io import BytesIO

    import numpy as np
    from PIL import Image

    def edges() -> tuple[float, float]:
        grey = np.asarray(Image.open(BytesIO(page.screenshot())).convert("L"), dtype=float)
        r = page.evaluate(f"() => {{ const r = document.querySelector('{fig} img').getBoundingClientRect(); "
                          "return [r.top, r.bottom]; }")
        band = grey[max(int(r[0]) + 2, 0):int(r[1]) - 2, :]  # the picture's rows
        return band[:, :5].mean(), band[:, -5:].mean()

    def without_cue() -> tuple[float, float]:
        page.evaluate(f"() => document.querySelectorAll('{fig} .edge').forEach(e => e.style.visibility = 'hidden')")
        out = edges()
        page.evaluate(f"() => document.querySelectorAll('{fig} .edge').forEach(e => e.style.visibility = '')")
        return out

    view = page.locator(fig)
    assert view.evaluate("e => e.scrollWidth > e.clientWidth")  # the picture is wider than the phone
    (left, right), (left0, right0) = edges(), without_cue()
    assert right < right0 - 8, (right, right0)  # more to the right: the right edge is shaded
    assert abs(left - left0) < 1, (left, left0)  # nothing to the left yet: no shadow there
    view.evaluate("e => { e.scrollLeft = e.scrollWidth; }")
    (left, right), (left0, right0) = edges(), without_cue()
    assert left < left0 - 8, (left, left0)  # scrolled to the end: the shadow moves to the left
    assert abs(right - right0) < 1, (right, right0)
    view.evaluate("e => { e.scrollLeft = 0; }")


CLASSES4 = ["T-shirt/top", "Trouser", "Pullover", "Ankle boot"]


def test_axe_finds_no_serious_violation_at_desk_and_phone_sizes(tmp_path):
    from .axe import format_violations

    page = inspect_report(_synthetic_report(tmp_path, CLASSES4 + [LONG]), axe=True)
    assert not page["axe_desk"], format_violations(page["axe_desk"])
    assert not page["axe_phone"], format_violations(page["axe_phone"])
    assert not page["narrow_overflow"]


def test_axe_check_can_fail(tmp_path):
    """A picture without alt text and a scrolling box out of keyboard reach: axe must see both."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html lang="en"><head><title>t</title></head><body><main>'
                   '<img src="data:image/png;base64,iVBORw0KGgo=">'
                   '<div style="overflow-x:auto;width:100px"><p style="width:900px">wide text here</p></div>'
                   "</main></body></html>", encoding="utf-8")
    page = inspect_report(bad, axe=True)
    ids = {v["id"] for v in page["axe_phone"]}
    assert "image-alt" in ids, ids


# ---------------------------------------------------------------------------------------------- every script

WORLD = ["T恤", "ズボン", "حقيبة", "Écharpe", "외투", "Сумка"]

_MARK = """names => {
  // the innermost element whose whole text is the name gets data-name-index, and the first one only
  const found = [];
  names.forEach((name, i) => {
    const el = [...document.querySelectorAll('body *')].find(e => e.children.length === 0
                                                               && e.textContent.trim() === name);
    if (el) { el.setAttribute('data-name-index', String(i)); found.push(i); }
  });
  void document.body.offsetHeight;  // lay the page out again now, before the fonts are asked for
  return found;
}"""


def _charmap(family: str) -> set[int]:
    """The code points of the font file fontconfig (Chromium's font source on Linux) uses for ``family``."""
    import subprocess

    from matplotlib.ft2font import FT2Font

    path = subprocess.run(["fc-match", "-f", "%{file}", family], capture_output=True, text=True, check=True).stdout
    return set(FT2Font(path).get_charmap())


def fonts_in_use(url: str, names: list[str], setup: str | None = None) -> dict[str, list[str]]:
    """{name: families Chromium drew it with} for each of ``names`` found as an element's whole text on
    the page at ``url`` (``setup``: JavaScript run first, with ``names`` as its argument). Uses the
    DevTools call ``CSS.getPlatformFontsForNode``: the fonts that actually rendered the node's glyphs."""
    from playwright.sync_api import sync_playwright

    browser_path = require_browser()
    out: dict[str, list[str]] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"], headless=True)
        try:
            page = browser.new_page()
            page.goto(url, wait_until="load")
            if setup:
                page.evaluate(setup, names)
            found = page.evaluate(_MARK, names)
            # two animation frames: the page is laid out and painted, so the fonts are known
            page.evaluate("() => document.fonts.ready.then(() => new Promise(r => "
                          "requestAnimationFrame(() => requestAnimationFrame(r))))")
            cdp = page.context.new_cdp_session(page)
            cdp.send("DOM.enable")
            cdp.send("CSS.enable")
            root = cdp.send("DOM.getDocument", {"depth": -1})["root"]["nodeId"]  # the whole tree, laid out
            for i in found:
                node = cdp.send("DOM.querySelector", {"nodeId": root, "selector": f'[data-name-index="{i}"]'})
                fonts = cdp.send("CSS.getPlatformFontsForNode", {"nodeId": node["nodeId"]})["fonts"]
                out[names[i]] = [f["familyName"] for f in fonts]
        finally:
            browser.close()
    return out


def _assert_drawn(used: dict[str, list[str]], names: list[str]) -> None:
    assert sorted(used) == sorted(names), f"names not shown as text: {set(names) - set(used)}"
    for name, families in used.items():
        covered = set().union(*(_charmap(f) for f in families))
        missing = [ch for ch in name if ord(ch) not in covered]
        assert not missing, f"{name!r} drawn with {families}, which lack {missing} (empty boxes)"


def test_class_names_in_every_script_render_in_the_report(tmp_path):
    require_browser()
    used = fonts_in_use(_synthetic_report(tmp_path, WORLD).resolve().as_uri(), WORLD)
    _assert_drawn(used, WORLD)
    assert any("CJK" in f for f in used["T恤"])  # a font with the glyph, not DejaVu Sans's box


def test_class_names_in_every_script_render_on_the_web_page(tmp_path):
    """The service's page, its font stack as shipped; the bars a prediction fills are made by the page's
    own script, here given the names directly."""
    require_browser()
    from minivision.serve import app

    page_html = tmp_path / "page.html"
    page_html.write_text((Path(app.__file__).parent / "page.html").read_text(encoding="utf-8"), encoding="utf-8")
    setup = """names => { const ol = document.getElementById('bars');
      for (const n of names) { const li = document.createElement('li'); const s = document.createElement('span');
        s.className = 'name'; s.textContent = n; li.appendChild(s); ol.appendChild(li); }
      document.getElementById('answer').hidden = false; }"""
    used = fonts_in_use(page_html.resolve().as_uri(), WORLD, setup)
    _assert_drawn(used, WORLD)


def test_the_font_check_can_fail(tmp_path):
    """A private-use character no font has: the check must see the box."""
    require_browser()
    page = tmp_path / "box.html"
    page.write_text("<p>\U000F0041</p><p>T恤</p>", encoding="utf-8")
    used = fonts_in_use(page.resolve().as_uri(), ["\U000F0041", "T恤"])
    with pytest.raises(AssertionError, match="empty boxes"):
        _assert_drawn(used, ["\U000F0041", "T恤"])
