"""The page of `minivision serve` in a real browser: Debian's chromium driven by Playwright.

A photo through the file input, a drawing made with the mouse, an SVG refused with the server's
415 shown in the page; the page must load nothing from outside (it works offline) and fit a
narrow window. Without a browser the tests skip, or fail where ``CI`` is set.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .test_report_browser import require_browser
from .test_serve import Server, clean_picture, encode, synthetic_run  # noqa: F401 (a fixture)

SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="20" height="20"><rect width="9"/></svg>'


@pytest.fixture(scope="module")
def served_page(synthetic_run, tmp_path_factory):  # noqa: F811
    s = Server(synthetic_run, log=tmp_path_factory.mktemp("serve-log") / "server.log")
    yield s
    assert s.stop() == 0


def _answer(page) -> dict:
    """What a person reads in the result panel once it settles."""
    page.wait_for_selector("#result[data-state=done], #result[data-state=error]", timeout=30_000)
    return page.evaluate("""() => ({
      state: document.querySelector('#result').dataset.state,
      label: document.querySelector('#top1-label').textContent,
      score: document.querySelector('#top1-score').textContent,
      error: document.querySelector('#error').hidden ? null : document.querySelector('#error').textContent,
      preview: [document.querySelector('#input-preview').naturalWidth,
                document.querySelector('#input-preview').naturalHeight],
      preview_shown: document.querySelector('#input-preview').getBoundingClientRect().width,
      yours: document.querySelector('#your-picture').naturalWidth,
      bars: [...document.querySelectorAll('#bars li')].map(li => [
        li.querySelector('.name').textContent, li.querySelector('.pct').textContent,
        li.querySelector('.fill').getBoundingClientRect().width]),
    })""")


def _reset(page) -> None:
    page.evaluate("() => { document.querySelector('#result').dataset.state = 'idle'; }")


def test_page_photo_drawing_and_errors(served_page, tmp_path):
    from playwright.sync_api import sync_playwright

    browser_path = require_browser()
    photo = tmp_path / "my photo.png"
    photo.write_bytes(encode(clean_picture(1, scale=6)))  # 168 x 168: class1, a square top right
    svg = tmp_path / "drawing.svg"
    svg.write_bytes(SVG)
    problems: list[str] = []
    outside: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"], headless=True)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 820})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" and "status of 415" not in
                    m.text else None)  # chromium logs the SVG's 415 answer, which is expected
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(
                (served_page.url, "data:", "blob:")) else None)
            page.goto(served_page.url + "/", wait_until="networkidle")
            assert page.title().startswith("minivision")
            page.wait_for_function("() => document.querySelector('#model').textContent.includes('4 classes')")
            assert page.input_value("#topk") == "4"  # min(5, number of classes)

            # 1. a photo through the file input
            page.set_input_files("#file", str(photo))
            a = _answer(page)
            assert a["state"] == "done" and a["error"] is None, a
            assert a["label"] == "class1" and a["score"].endswith("%"), a
            assert a["preview"] == [28, 28] and a["preview_shown"] >= 100 and a["yours"] == 168, a
            assert len(a["bars"]) == 4 and a["bars"][0][0] == "class1"
            widths = [w for _, _, w in a["bars"]]
            assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1], a["bars"]
            page.screenshot(path=str(tmp_path / "photo.png"), full_page=True)

            # 2. a drawing: fill the bottom-right cell with the mouse (class3), then classify it
            _reset(page)
            box = page.locator("#canvas").bounding_box()
            assert box and box["width"] >= 200
            scale = box["width"] / 280
            page.mouse.move(box["x"] + 165 * scale, box["y"] + 165 * scale)
            page.mouse.down()
            for i, y in enumerate(range(165, 260, 12)):
                x0, x1 = (165, 255) if i % 2 == 0 else (255, 165)
                page.mouse.move(box["x"] + x0 * scale, box["y"] + y * scale, steps=4)
                page.mouse.move(box["x"] + x1 * scale, box["y"] + y * scale, steps=8)
            page.mouse.up()
            page.click("#classify-drawing")
            a = _answer(page)
            assert a["state"] == "done" and a["label"] == "class3", a
            page.screenshot(path=str(tmp_path / "drawing.png"), full_page=True)
            page.click("#clear")
            assert page.evaluate("() => { const c = document.querySelector('#canvas').getContext('2d');"
                                 " return Math.max(...c.getImageData(0, 0, 280, 280).data.filter((_, i) => i % 4 == 0))"
                                 "; }") == 0  # cleared to black

            # 3. an SVG: the server's 415 is shown in the page
            _reset(page)
            page.set_input_files("#file", str(svg))
            a = _answer(page)
            assert a["state"] == "error" and "415" in a["error"] and "SVG" in a["error"], a
            assert page.is_visible("#error") and not page.is_visible("#answer")
            page.screenshot(path=str(tmp_path / "error.png"), full_page=True)

            # 4. after an error, a good picture works again and clears the message
            _reset(page)
            page.set_input_files("#file", str(photo))
            a = _answer(page)
            assert a["state"] == "done" and a["error"] is None and a["label"] == "class1"

            # 5. a narrow window (a phone): one column, nothing scrolls sideways
            page.set_viewport_size({"width": 380, "height": 800})
            assert not page.evaluate("() => document.documentElement.scrollWidth > "
                                     "document.documentElement.clientWidth + 1")
            page.screenshot(path=str(tmp_path / "narrow.png"), full_page=True)
        finally:
            browser.close()
    assert not problems, problems
    assert not outside, outside  # offline: nothing but the server itself
    from PIL import Image

    assert Image.open(tmp_path / "photo.png").size[0] == 1100
    assert Path(tmp_path / "narrow.png").stat().st_size > 1000
