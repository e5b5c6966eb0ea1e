"""The page of `minivision serve` in a real browser: Debian's chromium driven by Playwright.

A photo through the file input, a drawing made with the mouse and with the keyboard, an SVG refused
with the server's 415 shown in plain words; unsure answers shown as such; photos shrunk before upload
(EXIF orientation kept, never enlarged); the newest picture wins; example pictures, the class list and
the model's facts; "Classes shown" redraws without a request; a focus ring on everything focusable and
no serious or critical axe-core violation at desk and phone sizes. The page must load nothing from
outside (it works offline) and fit a narrow window. Without a browser the tests skip, or fail where
``CI`` is set.

Where the served model's ``/models`` lacks a field of the page's contract (accepted formats, upload
limit, report, ...) or ``/examples`` is missing, ``contract`` fills it in through ``page.route`` with
what the contract promises, so the page is tested against the contract; a server that has them is
used as it answers.
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .axe import axe_violations, format_violations
from .conftest import needs_fashion_mnist
from .test_serve import Server, clean_picture, encode, synthetic_run  # noqa: F401 (a fixture)

SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="20" height="20"><rect width="9"/></svg>'
DESK = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
FORMATS = [".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp"]


@pytest.fixture(scope="module")
def served_page(synthetic_run, tmp_path_factory):  # noqa: F811
    s = Server(synthetic_run, log=tmp_path_factory.mktemp("serve-log") / "server.log")
    yield s
    assert s.stop() == 0


class Watch:
    """What a page did: console errors and uncaught exceptions, requests to anything but the server,
    and the POST /predict requests (url, body bytes)."""

    def __init__(self, page, url: str, expected_errors: tuple[str, ...] = ()) -> None:
        self.problems: list[str] = []
        self.outside: list[str] = []
        self.predicts: list[tuple[str, bytes]] = []
        page.on("console", lambda m: self.problems.append(m.text) if m.type == "error" and not any(
            e in m.text for e in expected_errors) else None)
        page.on("pageerror", lambda e: self.problems.append(str(e)))
        page.on("request", self._request(url))

    def _request(self, url: str):
        def seen(r) -> None:
            if not r.url.startswith((url, "data:", "blob:")):
                self.outside.append(r.url)
            if r.method == "POST" and "/predict" in r.url:
                self.predicts.append((r.url, r.post_data_buffer or b""))
        return seen


def contract(page, classes: list[str], **models_fields) -> None:
    """Fill in what the served ``/models`` and ``/examples`` lack of the page's contract (see the module
    docstring); ``models_fields`` override the served values (to show AVIF, a 1 MB limit, ...)."""
    def models(route) -> None:
        response = route.fetch()
        body = response.json()
        m = body["models"][0]
        m.setdefault("accepted_formats", FORMATS)
        m.setdefault("content_types", ["image/png", "image/jpeg", "image/gif", "image/bmp", "image/tiff",
                                       "image/webp"])
        m.setdefault("max_upload_mb", 10)
        m.setdefault("test_accuracy", (m.get("metrics") or {}).get("test_accuracy"))
        m.setdefault("report", "/report")
        m.setdefault("examples", 2 * len(classes))
        m.update(models_fields)
        route.fulfill(response=response, json=body)

    def examples(route) -> None:
        response = route.fetch()
        if response.status == 200:
            route.fulfill(response=response)
            return
        items = [{"label": name, "index": k, "png": base64.b64encode(encode(clean_picture(k).convert("RGB"))).decode()}
                 for k, name in enumerate(classes) for _ in range(2)]
        route.fulfill(json={"examples": items})

    page.route(re.compile(r".*/models$"), models)
    page.route(re.compile(r".*/examples$"), examples)


def open_page(browser, server: Server, viewport=DESK, classes=("class0", "class1", "class2", "class3"),
              expected_errors: tuple[str, ...] = (), **models_fields):
    """A fresh page on the server (CSP bypassed so axe-core can be injected), with its Watch."""
    ctx = browser.new_context(viewport=viewport, bypass_csp=True)
    page = ctx.new_page()
    watch = Watch(page, server.url, expected_errors)
    contract(page, list(classes), **models_fields)
    page.goto(server.url + "/", wait_until="networkidle")
    page.wait_for_function("() => document.querySelector('#model').textContent.includes('classes')")
    return page, watch


def _answer(page) -> dict:
    """What a person reads in the result panel once it settles."""
    page.wait_for_selector("#result[data-state=done], #result[data-state=error]", timeout=30_000)
    return _panel(page)


def _panel(page) -> dict:
    return page.evaluate("""() => ({
      state: document.querySelector('#result').dataset.state,
      headline: document.querySelector('#headline').textContent,
      sure: document.querySelector('#headline').dataset.sure,
      label: (document.querySelector('#headline .label') || {}).textContent || null,
      label_weight: document.querySelector('#headline .label')
        ? getComputedStyle(document.querySelector('#headline .label')).fontWeight : null,
      score: (document.querySelector('#headline .score') || {}).textContent || null,
      truth: document.querySelector('#truth').textContent,
      status: document.querySelector('#status').textContent,
      answer_shown: !document.querySelector('#answer').hidden,
      error: document.querySelector('#error').hidden ? null : document.querySelector('#error').textContent,
      preview: [document.querySelector('#input-preview').naturalWidth,
                document.querySelector('#input-preview').naturalHeight],
      preview_shown: document.querySelector('#input-preview').getBoundingClientRect().width,
      yours: document.querySelector('#your-picture').naturalWidth,
      bars_title: document.querySelector('#bars-title').textContent,
      bars: [...document.querySelectorAll('#bars li')].map(li => [
        li.querySelector('.name').textContent, li.querySelector('.pct').textContent,
        li.querySelector('.fill').getBoundingClientRect().width,
        getComputedStyle(li.querySelector('.fill')).backgroundColor]),
    })""")


def _reset(page) -> None:
    page.evaluate("() => { document.querySelector('#result').dataset.state = 'idle'; }")


def _close(page, watch: Watch) -> None:
    page.context.close()
    assert not watch.problems, watch.problems
    assert not watch.outside, watch.outside  # offline: nothing but the server itself


GREEN = "rgb(20, 160, 107)"  # --bar-top: the sure answer's top bar


def _consistent(a: dict, top: str) -> None:
    """The answer's best class is ``top``; sure: a bold label with its score and a green bar; unsure:
    "Not sure: ..." with no label and no green bar."""
    assert a["bars"] and a["bars"][0][0] == top, a
    if a["sure"] == "true":
        assert a["label"] == top and a["score"] == a["bars"][0][1] and int(a["label_weight"]) >= 600, a
        assert a["bars"][0][3] == GREEN, a
    else:
        assert a["label"] is None and a["headline"].startswith("Not sure: "), a
        assert all(color != GREEN for *_, color in a["bars"]), a


# ----------------------------------------------------------------------------- the basic paths

def test_page_photo_drawing_and_errors(served_page, browser, tmp_path):
    photo = tmp_path / "my photo.png"
    photo.write_bytes(encode(clean_picture(1, scale=6)))  # 168 x 168: class1, a square top right
    svg = tmp_path / "drawing.svg"
    svg.write_bytes(SVG)
    page, watch = open_page(browser, served_page, viewport={"width": 1100, "height": 820},
                            expected_errors=("status of 415",))  # chromium logs the SVG's 415 answer
    assert page.title().startswith("minivision")
    assert "4 classes" in page.text_content("#model")
    assert page.input_value("#topk") == "4"  # min(5, number of classes)

    # 1. a photo through the file input (sure or not is the model's call: test_unsure_* pin both looks)
    page.set_input_files("#file", str(photo))
    a = _answer(page)
    assert a["state"] == "done" and a["error"] is None, a
    _consistent(a, "class1")
    assert a["preview"] == [28, 28] and a["preview_shown"] >= 100 and a["yours"] == 168, a
    assert len(a["bars"]) == 4 and a["bars"][0][0] == "class1"
    widths = [w for _, _, w, _ in a["bars"]]
    assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1], a["bars"]
    assert "top_k=4" in watch.predicts[-1][0]  # every class, so "Classes shown" needs no request

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
    assert a["state"] == "done", a
    _consistent(a, "class3")
    page.click("#clear")
    assert page.evaluate("() => { const c = document.querySelector('#canvas').getContext('2d');"
                         " return Math.max(...c.getImageData(0, 0, 280, 280).data.filter((_, i) => i % 4 == 0))"
                         "; }") == 0  # cleared to black

    # 3. an SVG: the server's 415 in plain words, the old answer gone
    _reset(page)
    page.set_input_files("#file", str(svg))
    a = _answer(page)
    assert a["state"] == "error" and "does not accept this kind of file" in a["error"] and "SVG" in a["error"], a
    assert page.is_visible("#error") and not page.is_visible("#answer") and a["headline"] == ""

    # 4. after an error, a good picture works again and clears the message
    _reset(page)
    page.set_input_files("#file", str(photo))
    a = _answer(page)
    assert a["state"] == "done" and a["error"] is None
    _consistent(a, "class1")

    # 5. a narrow window (a phone): one column, nothing scrolls sideways
    page.set_viewport_size({"width": 380, "height": 800})
    assert not page.evaluate("() => document.documentElement.scrollWidth > "
                             "document.documentElement.clientWidth + 1")
    page.screenshot(path=str(tmp_path / "narrow.png"), full_page=True)
    _close(page, watch)
    assert Path(tmp_path / "narrow.png").stat().st_size > 1000


def test_plain_words_for_413(served_page, browser, tmp_path):
    """A server that still refuses the (shrunk) upload as too large: the page says so with the limit."""
    photo = tmp_path / "p.png"
    photo.write_bytes(encode(clean_picture(0, scale=4)))
    page, watch = open_page(browser, served_page, max_upload_mb=3, expected_errors=("status of 413",))
    page.route(re.compile(r".*/predict\?.*"), lambda route: route.fulfill(
        status=413, json={"error": "request body is over the 3 MB limit", "status": 413}))
    page.set_input_files("#file", str(photo))
    a = _answer(page)
    assert a["state"] == "error" and "too big" in a["error"] and "3 MB" in a["error"], a
    assert "413" not in a["error"]
    _close(page, watch)


# ----------------------------------------------------------------------------- unsure answers

def _unsure_body(classes: list[str], reason: str | None, note: str | None = None, unsure: bool = True) -> dict:
    scores = [0.41, 0.3, 0.2, 0.09]
    preds = [{"label": c, "index": i, "score": s} for i, (c, s) in enumerate(zip(classes, scores, strict=True))]
    return {"predictions": [preds], "model": "m", "version": "v", "files": ["x.png"], "notes": [note],
            "unsure": [unsure], "reasons": [reason], "inputs": [base64.b64encode(encode(clean_picture(0))).decode()]}


def test_unsure_answers_are_not_headlines(served_page, browser, tmp_path):
    classes = ["class0", "class1", "class2", "class3"]
    photo = tmp_path / "p.png"
    photo.write_bytes(encode(clean_picture(2, scale=4)))
    page, watch = open_page(browser, served_page)
    answers: list[dict] = []
    page.route(re.compile(r".*/predict\?.*"), lambda route: route.fulfill(json=answers.pop(0)))

    # out of distribution: the reason as given, muted guesses, no bold label, no green bar
    ood = "this does not look like the pictures this model knows (out of distribution)"
    answers.append(_unsure_body(classes, ood))
    page.set_input_files("#file", str(photo))
    a = _answer(page)
    assert a["sure"] == "false" and a["headline"] == f"Not sure: {ood}" and a["label"] is None, a
    assert a["bars_title"] == "Top guesses" and len(a["bars"]) == 4, a
    assert all(color != GREEN for *_, color in a["bars"]), a["bars"]
    assert axe_violations(page) == []

    # low confidence, in the server's words but without a second colon
    answers.append(_unsure_body(classes, "low confidence: the top score is 41%"))
    page.set_input_files("#file", str(photo))
    a = _answer(page)
    assert a["headline"] == "Not sure: low confidence (the top score is 41%)" and a["label"] is None, a

    # unsure without a reason given: a default sentence, still not a headline
    answers.append(_unsure_body(classes, None))
    page.set_input_files("#file", str(photo))
    a = _answer(page)
    assert a["sure"] == "false" and a["headline"].startswith("Not sure: ") and a["label"] is None, a

    # a sure answer of the same server keeps the headline
    answers.append(_unsure_body(classes, None, unsure=False))
    page.set_input_files("#file", str(photo))
    a = _answer(page)
    assert a["sure"] == "true" and a["label"] == "class0" and a["score"] == "41.0%" and a["bars"][0][3] == GREEN, a
    _close(page, watch)


def test_empty_picture_is_unsure_from_the_real_server(served_page, browser, tmp_path):
    """A blank picture: the server's empty-picture note (and its unsure flag, where it sends one)."""
    blank = tmp_path / "blank.png"
    blank.write_bytes(encode(Image.new("RGB", (120, 90), (255, 255, 255))))
    page, watch = open_page(browser, served_page)
    page.set_input_files("#file", str(blank))
    a = _answer(page)
    assert a["state"] == "done" and a["sure"] == "false" and a["label"] is None, a
    assert a["headline"].startswith("Not sure: ") and len(a["headline"]) > 20, a
    assert all(color != GREEN for *_, color in a["bars"]), a["bars"]
    _close(page, watch)


# ----------------------------------------------------------------------------- uploads

def _sent_picture(body: bytes) -> tuple[bytes, Image.Image]:
    """The picture inside a multipart body the page sent (one the page made: Chromium reports those bytes)."""
    head, _, rest = body.partition(b"\r\n\r\n")
    boundary = head.split(b"\r\n", 1)[0]
    data = rest[:rest.rindex(b"\r\n" + boundary)]
    return data, Image.open(io.BytesIO(data))


def _noisy_photo(width: int, height: int, orientation: int | None = None) -> bytes:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    a[: height // 3] = [200, 30, 30]  # a red band at the top, to tell the orientation
    img = Image.fromarray(a, "RGB")
    buf = io.BytesIO()
    if orientation is None:
        img.save(buf, format="JPEG", quality=95)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        img.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def test_big_photo_is_shrunk_small_one_sent_as_is(served_page, browser, tmp_path):
    big = tmp_path / "big.jpg"
    big.write_bytes(_noisy_photo(2000, 1500))
    rotated = tmp_path / "rotated.jpg"  # stored 1600 x 1200 landscape, EXIF says turn it 90 degrees: portrait
    rotated.write_bytes(_noisy_photo(1600, 1200, orientation=6))
    small = tmp_path / "small.png"
    small.write_bytes(encode(clean_picture(3, scale=6)))  # 168 px: under the target side, never enlarged
    page, watch = open_page(browser, served_page)
    # routed, so Chromium hands over the request bodies (without interception it may report none)
    page.route(re.compile(r".*/predict\?.*"), lambda route: route.continue_())

    page.set_input_files("#file", str(big))
    _answer(page)
    data, img = _sent_picture(watch.predicts[-1][1])
    assert len(watch.predicts[-1][1]) < big.stat().st_size / 10, (len(data), big.stat().st_size)
    assert img.format == "JPEG" and img.size == (256, 192), (img.format, img.size)  # max(256, 4 x 28)

    _reset(page)
    page.set_input_files("#file", str(rotated))
    _answer(page)
    data, img = _sent_picture(watch.predicts[-1][1])
    assert img.size == (192, 256), img.size  # EXIF orientation applied before shrinking
    rgb = np.asarray(img.convert("RGB")).astype(float)
    right, left = rgb[:, -40:].mean(axis=(0, 1)), rgb[:, :40].mean(axis=(0, 1))
    assert right[0] > 150 and right[1] < 80 and abs(left[0] - left[1]) < 30, (right, left)  # the top band, turned

    _reset(page)
    page.set_input_files("#file", str(small))
    a = _answer(page)
    body = watch.predicts[-1][1]
    head, _, rest = body.partition(b"\r\n\r\n")
    data = rest[:rest.rindex(b"\r\n" + head.split(b"\r\n", 1)[0])]
    # the file itself: Chromium leaves a file's bytes out of the request it reports (an in-memory re-encoding
    # would be there), and the picture shown as "your picture" is the 168 px original
    assert b"filename=\"small.png\"" in head and data in (b"", small.read_bytes()), body[:300]
    assert a["yours"] == 168 and a["bars"][0][0] == "class3", a
    _close(page, watch)


def test_newest_choice_wins(served_page, browser, tmp_path):
    first, second = tmp_path / "first.png", tmp_path / "second.png"
    first.write_bytes(encode(clean_picture(1, scale=4)))
    second.write_bytes(encode(clean_picture(2, scale=4)))
    page, watch = open_page(browser, served_page, expected_errors=("ERR_ABORTED",))
    held: list = []

    def hold_the_first(route) -> None:
        if not held:
            held.append(route)  # answered later, after the second picture's answer is on screen
        else:
            route.continue_()

    page.route(re.compile(r".*/predict\?.*"), hold_the_first)
    page.set_input_files("#file", str(first))
    page.wait_for_selector("#result[data-state=busy]")
    for _ in range(200):
        if held:
            break
        page.wait_for_timeout(50)
    assert held, "the first upload never reached the server"
    busy = _panel(page)
    assert not busy["answer_shown"] and busy["headline"] == "" and busy["status"].startswith("Classifying"), busy

    page.set_input_files("#file", str(second))
    a = _answer(page)
    assert a["bars"][0][0] == "class2", a
    try:  # the page has aborted it: answering it now must change nothing
        held[0].fulfill(json=_unsure_body(["class0", "class1", "class2", "class3"], None, unsure=False))
    except Exception:
        pass
    page.wait_for_timeout(300)
    assert _panel(page)["bars"][0][0] == "class2"
    _close(page, watch)


# ----------------------------------------------------------------------------- context and controls

def test_examples_classes_formats_and_redraw(served_page, browser):
    page, watch = open_page(browser, served_page, accepted_formats=[*FORMATS, ".avif"],
                            content_types=["image/png", "image/avif"])
    # the model's facts
    about = page.inner_text("#about")
    assert all(f"class{k}" in about for k in range(4)), about
    assert "synthetic" in about and "%" in about, about
    assert page.get_attribute("#about-report a", "href") == "report"
    # one list of formats: the picker's accept and the help text
    accept = page.get_attribute("#file", "accept")
    assert ".avif" in accept and "image/avif" in accept and ".png" in accept, accept
    assert "AVIF" in page.inner_text("#drop") and "TIFF" in page.inner_text("#drop")

    # keyboard only: the strip is one Tab stop (a roving tabindex); the arrows, Home and End move inside it,
    # and Enter classifies the focused example
    page.wait_for_selector("#examples button")
    focused = "() => [...document.querySelectorAll('#examples button')].indexOf(document.activeElement)"
    page.focus("#drop")
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("() => !!document.activeElement.closest('#examples')"):
            break
    assert page.evaluate(focused) == 0
    n_examples = page.eval_on_selector_all("#examples button", "bs => bs.length")
    assert n_examples > 3
    assert page.eval_on_selector_all("#examples button", "bs => bs.filter(b => b.tabIndex === 0).length") == 1
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    assert page.evaluate(focused) == 2
    page.keyboard.press("ArrowLeft")
    assert page.evaluate(focused) == 1
    page.keyboard.press("End")
    assert page.evaluate(focused) == n_examples - 1
    page.keyboard.press("ArrowRight")  # wraps round
    assert page.evaluate(focused) == 0
    page.keyboard.press("Home")
    page.keyboard.press("ArrowDown")
    assert page.evaluate(focused) == 1
    # one Tab leaves the strip, Shift+Tab comes back to the example last focused
    page.keyboard.press("Tab")
    assert not page.evaluate("() => !!document.activeElement.closest('#examples')")
    page.keyboard.press("Shift+Tab")
    assert page.evaluate(focused) == 1
    title = page.evaluate("() => document.activeElement.title")
    assert title.startswith("example: class"), title
    page.keyboard.press("Enter")
    a = _answer(page)
    truth = title.removeprefix("example: ")
    assert a["truth"].startswith(f"true class: {truth} \u00b7 the ") and a["state"] == "done", a
    assert a["truth"].endswith("right" if a["bars"][0][0] == truth else "wrong"), a

    # "Classes shown" redraws at once, without a request
    n = len(watch.predicts)
    page.fill("#topk", "2")
    assert len(_panel(page)["bars"]) == 2
    page.fill("#topk", "3")
    assert len(_panel(page)["bars"]) == 3 and len(watch.predicts) == n
    _close(page, watch)


def test_a_model_answering_with_tta_says_so(served_page, browser):
    """/models' ``tta``: the About panel says how each answer is made and gives the accuracy with the views
    (the plain one beside); a model answering from the picture alone has no such row."""
    metrics = {"test_accuracy": 0.9, "test_accuracy_tta": 0.925}
    page, watch = open_page(browser, served_page, tta="flip+shift", metrics=metrics, test_accuracy=0.9)
    assert page.is_visible("#about-tta")
    assert "10 views" in page.inner_text("#about-tta") and "flip+shift" in page.inner_text("#about-tta")
    assert page.inner_text("#about-accuracy") == "92.5% (90.0% from the picture alone)"
    assert "92.5% test accuracy" in page.inner_text("#model")
    _close(page, watch)
    page, watch = open_page(browser, served_page, tta="none", metrics=metrics, test_accuracy=0.9)
    assert not page.is_visible("#about-tta") and page.inner_text("#about-accuracy") == "90.0%"
    _close(page, watch)


def test_background_control_is_sent(served_page, browser, tmp_path):
    photo = tmp_path / "p.png"
    photo.write_bytes(encode(clean_picture(0, scale=4)))
    page, watch = open_page(browser, served_page)
    page.set_input_files("#file", str(photo))
    _answer(page)
    assert "background=" not in watch.predicts[-1][0]  # auto: the server detects it
    _reset(page)
    page.select_option("#background", "dark")  # sends the same picture again with the new background
    _answer(page)
    assert "background=dark" in watch.predicts[-1][0] and len(watch.predicts) == 2, watch.predicts
    _close(page, watch)


def test_keyboard_paths_and_focus_rings(served_page, browser):
    page, watch = open_page(browser, served_page)
    page.wait_for_selector("#examples button")
    # Enter and Space on the drop zone open the file picker (the file input's click; recorded here, and
    # stopped, rather than waiting for Chromium's file chooser, which does not always open in a test browser
    # that has opened many pages)
    page.evaluate("""() => { window.picks = 0; document.querySelector('#file').addEventListener('click',
                     e => { window.picks++; e.preventDefault(); }); }""")
    page.focus("#drop")
    page.keyboard.press("Enter")
    page.keyboard.press(" ")
    assert page.evaluate("() => window.picks") == 2

    # every stop of the Tab order shows a ring of at least 2 px; the hidden file input is not a stop
    seen = []
    page.click("header h1")  # the Tab order starts from the top again
    for _ in range(40):
        page.keyboard.press("Tab")
        info = page.evaluate("""() => { const e = document.activeElement, s = getComputedStyle(e);
          return {id: e.id || e.title || e.tagName, style: s.outlineStyle, width: parseFloat(s.outlineWidth),
                  tag: e.tagName}; }""")
        if info["tag"] == "BODY" or (seen and info["id"] == seen[0]["id"]):
            break
        seen.append(info)
    ids = [s["id"] for s in seen]
    assert ids[0] == "drop" and "file" not in ids, ids
    for want in ("background", "canvas", "classify-drawing", "clear", "polarity", "pen", "topk"):
        assert want in ids, (want, ids)
    assert sum(i.startswith("example: ") for i in ids) == 1, ids  # the strip is one stop
    # from the top: drop zone, background, examples, canvas (the drawing controls follow)
    assert ids.index("canvas") <= 3, ids
    bad = [s for s in seen if s["style"] == "none" or s["width"] < 2]
    assert not bad, bad
    # Space on the focused example classifies it, as Enter does
    n = len(watch.predicts)
    page.focus("#examples button[tabindex='0']")
    page.keyboard.press("ArrowRight")
    page.keyboard.press(" ")
    assert _answer(page)["state"] == "done" and len(watch.predicts) == n + 1
    assert page.get_attribute("#examples button:nth-child(2)", "aria-pressed") == "true"
    _reset(page)

    # draw with the keyboard: the arrows draw in the bottom-right cell, Enter classifies
    page.focus("#canvas")
    for _ in range(5):
        page.keyboard.press("Shift+ArrowDown")
        page.keyboard.press("Shift+ArrowRight")
    for row in range(6):
        for _ in range(6):
            page.keyboard.press("ArrowRight" if row % 2 == 0 else "ArrowLeft")
        page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")
    a = _answer(page)
    assert a["state"] == "done", a
    _consistent(a, "class3")
    page.focus("#canvas")
    page.keyboard.press("Delete")
    assert page.evaluate("() => { const c = document.querySelector('#canvas').getContext('2d');"
                         " return Math.max(...c.getImageData(0, 0, 280, 280).data.filter((_, i) => i % 4 == 0))"
                         "; }") == 0
    # results are announced: the headline is inside a polite live region
    assert page.evaluate("() => document.querySelector('#headline').closest('[aria-live=polite]') !== null")
    _close(page, watch)


@pytest.mark.parametrize("viewport", [DESK, PHONE], ids=["desk", "phone"])
def test_no_serious_accessibility_violations(served_page, browser, tmp_path, viewport):
    photo = tmp_path / "p.png"
    photo.write_bytes(encode(clean_picture(1, scale=4)))
    page, watch = open_page(browser, served_page, viewport=viewport)
    page.wait_for_selector("#examples button")
    violations = axe_violations(page)
    assert not violations, "empty page: " + format_violations(violations)
    answers = [None, _unsure_body(["class0", "class1", "class2", "class3"], None, unsure=False),
               _unsure_body(["class0", "class1", "class2", "class3"], "low confidence: the top score is 41%")]

    def answer(route) -> None:  # the served answer first, then a sure and an unsure one
        body = answers.pop(0)
        route.continue_() if body is None else route.fulfill(json=body)

    page.route(re.compile(r".*/predict\?.*"), answer)
    for want in (None, "true", "false"):
        _reset(page)
        page.set_input_files("#file", str(photo))
        a = _answer(page)
        assert want is None or a["sure"] == want, a
        violations = axe_violations(page)
        assert not violations, f"with an answer (sure: {a['sure']}): " + format_violations(violations)
    assert not page.evaluate("() => document.documentElement.scrollWidth > document.documentElement.clientWidth + 1")
    _close(page, watch)


def test_page_without_the_newer_fields(served_page, browser, tmp_path):
    """An older server (no examples, formats, report or unsure): the page still works and hides what it lacks."""
    ctx = browser.new_context(viewport=DESK)
    page = ctx.new_page()
    watch = Watch(page, served_page.url, expected_errors=("status of 404",))

    def old_models(route) -> None:
        response = route.fetch()
        body = response.json()
        for key in ("accepted_formats", "content_types", "max_upload_mb", "test_accuracy", "report", "examples"):
            body["models"][0].pop(key, None)
        route.fulfill(response=response, json=body)

    page.route(re.compile(r".*/models$"), old_models)
    page.route(re.compile(r".*/examples$"),
               lambda route: route.fulfill(status=404, json={"error": "not found", "status": 404}))
    page.goto(served_page.url + "/", wait_until="networkidle")
    page.wait_for_function("() => document.querySelector('#model').textContent.includes('classes')")
    assert page.get_attribute("#file", "accept") == "image/*"
    assert not page.is_visible("#examples-block") and not page.is_visible("#about-report")
    photo = tmp_path / "p.png"
    photo.write_bytes(encode(clean_picture(1, scale=4)))
    page.set_input_files("#file", str(photo))
    a = _answer(page)
    assert a["state"] == "done", a
    _consistent(a, "class1")
    _close(page, watch)



# ----------------------------------------------------------------------------- real data

@needs_fashion_mnist
def test_real_fashion_mnist_page(browser, small_fashion_run, tmp_path):
    """A small real Fashion-MNIST run: its example strip (3 test pictures a class), an example predicted
    with its true class, a blank picture marked unsure, and no serious axe-core violation on a phone."""
    import minivision as mv

    ds = mv.load_dataset("fashion-mnist")
    server = Server(small_fashion_run, log=tmp_path / "server.log")
    try:
        page, watch = open_page(browser, server, viewport=PHONE, classes=tuple(ds.classes))
        page.wait_for_selector("#examples button")
        titles = page.eval_on_selector_all("#examples button", "bs => bs.map(b => b.title)")
        assert len(titles) == 30 and {t.removeprefix("example: ") for t in titles} == set(ds.classes), titles
        assert "fashion-mnist" in page.inner_text("#about")
        page.click("#examples button[title='example: Trouser']")
        a = _answer(page)
        assert a["state"] == "done" and a["truth"].startswith("true class: Trouser"), a
        violations = axe_violations(page)
        assert not violations, format_violations(violations)

        blank = tmp_path / "blank.png"
        blank.write_bytes(encode(Image.new("L", (200, 200), 235)))
        page.set_input_files("#file", str(blank))
        a = _answer(page)
        assert a["sure"] == "false" and a["label"] is None and a["headline"].startswith("Not sure: "), a
        _close(page, watch)
    finally:
        server.stop()
