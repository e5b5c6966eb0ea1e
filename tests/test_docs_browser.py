"""The API docs of `minivision serve` in a real browser, offline: Debian's chromium driven by Playwright
with every request to another host aborted (and counted: there must be none).

``/docs`` (Swagger UI): POST /predict expanded, "Try it out" with the schema's defaults, a picture
chosen, Execute, a 200 answer with predictions; no serious or critical axe-core violation at all on the
page as loaded, after "Try it out" and after Execute (Swagger UI's unnamed controls are named by our
``docs-a11y.js``), with an answer whose scores are fractions, so that axe-core judges the contrast of
the highlighted numbers (our stylesheet lightens them). ``/redoc`` (ReDoc) renders the operations, with
no serious or critical violation. Without a browser the tests skip, or fail where ``CI`` is set.
"""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import ImageChops
from playwright.sync_api import expect

from .axe import axe_source, axe_violations, format_violations
from .test_serve import Server, clean_picture, encode, synthetic_run  # noqa: F401 (a fixture)

DESK = {"width": 1280, "height": 800}


def assert_no_violations(page, state: str) -> None:
    """No serious or critical axe-core violation on ``page`` now; ``state`` names the moment."""
    violations = axe_violations(page)
    assert not violations, f"{state}:\n" + format_violations(violations)


@pytest.fixture(scope="module")
def docs_server(synthetic_run, tmp_path_factory):  # noqa: F811
    # the synthetic run without its calibration (as an older run: scores at T = 1): its fitted temperature
    # is tiny (its validation pictures are told apart perfectly), which rounds every score to 1 or 0
    run = tmp_path_factory.mktemp("docs-run") / "train"
    shutil.copytree(synthetic_run, run)
    meta = json.loads((run / "model.json").read_text())
    meta.pop("calibration", None)
    (run / "model.json").write_text(json.dumps(meta))
    s = Server(run, "--jobs", str(tmp_path_factory.mktemp("docs-jobs")),
               log=tmp_path_factory.mktemp("serve-log") / "server.log")
    yield s
    assert s.stop() == 0


class Offline:
    """A browser context that can reach only ``url``: any other request is aborted and recorded, as are
    console errors and uncaught exceptions. ``bypass_csp`` only so axe-core can be injected: with it on,
    a request the page's Content-Security-Policy would stop reaches the router (and is counted)."""

    def __init__(self, browser, url: str, bypass_csp: bool = True) -> None:
        self.url = url
        self.blocked: list[str] = []
        self.local: list[str] = []
        self.problems: list[str] = []
        self.context = browser.new_context(viewport=DESK, bypass_csp=bypass_csp)
        self.context.route("**/*", self._route)

    def _route(self, route) -> None:
        u = route.request.url
        if u.startswith((self.url + "/", "data:", "blob:")) or u == self.url:
            self.local.append(u)
            route.continue_()
        else:
            self.blocked.append(u)
            route.abort()

    def page(self):
        page = self.context.new_page()
        page.on("console", lambda m: self.problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.problems.append(str(e)))
        return page

    def close(self) -> None:
        self.context.close()


def highlighted_contrast(page, body: str) -> dict:
    """axe-core's color-contrast rule alone on the highlighted code block ``body`` (a CSS selector):
    how many of its number tokens of two characters or more it checked and passed, how many it left
    incomplete (e.g. text too short to judge) and how many fail. Numbers of one character ("0", "1")
    are only "incomplete" for axe-core, so a body of those would hide a low contrast."""
    page.add_script_tag(content=axe_source())
    return page.evaluate("""async (sel) => {
      const code = document.querySelector(sel);
      const nums = [...code.querySelectorAll('span')].filter(s => !s.children.length
        && /^-?[0-9][0-9.e+-]+$/.test(s.textContent.trim()));
      nums.forEach(s => s.setAttribute('data-number', ''));
      const r = await axe.run(code, {runOnly: ['color-contrast'], elementRef: true});
      const count = kind => r[kind].flatMap(v => v.nodes).filter(n => n.element.hasAttribute('data-number')).length;
      return {numbers: nums.length, passes: count('passes'), incomplete: count('incomplete'),
              violations: count('violations'), colors: [...new Set(nums.map(s => getComputedStyle(s).color))]};
    }""", body)


def test_swagger_ui_try_it_out_offline(browser, docs_server, tmp_path):
    # two classes' squares at once: the model hesitates between them, so the answer's scores are
    # fractions such as 0.86 (scores of 1 and 0 are too short for axe-core's contrast check)
    picture = tmp_path / "square.png"
    picture.write_bytes(encode(ImageChops.lighter(clean_picture(1), clean_picture(2)).resize((84, 84))))
    web = Offline(browser, docs_server.url)
    try:
        page = web.page()
        response = page.goto(docs_server.url + "/docs")
        assert response.status == 200 and "script-src 'self'" in response.headers["content-security-policy"]
        op = page.locator("#operations-default-predict_predict_post")
        op.wait_for(timeout=30_000)
        assert_no_violations(page, "as loaded")
        op.locator(".opblock-summary").first.click()
        assert_no_violations(page, "POST /predict opened")
        op.get_by_role("button", name="Try it out").click()
        # the schema's defaults fill the form: top_k 3 (1 to 4 classes), background auto, include_input false
        assert op.locator("tr[data-param-name='top_k'] input").input_value() == "3"
        assert op.locator("tr[data-param-name='background'] select").input_value() == "auto"
        # the controls Swagger UI leaves unnamed are named by our script, as users of a screen reader hear them
        expect(op.get_by_role("combobox", name="background")).to_have_count(1)
        expect(op.get_by_role("combobox", name="include_input")).to_have_count(1)
        file_input = op.locator("input[type=file]")
        assert file_input.get_attribute("aria-label") == "Request body file: file"  # the multipart field's name
        assert_no_violations(page, "after Try it out")
        file_input.set_input_files(str(picture))
        op.get_by_role("button", name="Execute").click()
        status = op.locator(".live-responses-table tbody .response-col_status").first
        status.wait_for(timeout=30_000)
        assert status.inner_text().strip() == "200", op.locator(".live-responses-table").inner_text()
        body = json.loads(op.locator(".live-responses-table tbody .response-col_description pre").first
                          .inner_text())
        assert body["files"] == ["square.png"] and len(body["predictions"][0]) == 3
        assert set(body) >= {"unsure", "reasons"}
        assert any(0.01 < p["score"] < 0.99 for p in body["predictions"][0]), body
        # the body is highlighted, and axe-core really judged its numbers' contrast (not "incomplete")
        code = ".live-responses-table tbody .response-col_description .microlight"
        checked = highlighted_contrast(page, code)
        assert checked["numbers"] >= 1 and checked["passes"] == checked["numbers"], checked
        assert checked["violations"] == 0 and checked["incomplete"] == 0, checked
        assert checked["colors"] == ["rgb(242, 145, 145)"], checked  # our lighter number colour, 5.56:1 on #333
        # the copy buttons beside the curl command and the response body
        assert op.get_by_role("button", name="Copy to clipboard").count() >= 2
        assert not web.blocked, web.blocked  # nothing was asked of another host
        assert any("/docs-assets/swagger-ui-bundle.js" in u for u in web.local)
        assert any(u.endswith("/docs-a11y.js") for u in web.local)
        assert not web.problems, web.problems
        assert_no_violations(page, "after Execute")
    finally:
        web.close()


def test_docs_script_is_served_and_allowed_by_the_csp(docs_server):
    # our script that names Swagger UI's / ReDoc's controls: served by us, referenced by both pages, and
    # same-origin, so the pages' CSP (script-src 'self', no other host) lets it run
    script = docs_server.client.get("/docs-a11y.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert "MutationObserver" in script.text
    for path in ("/docs", "/redoc"):
        page = docs_server.client.get(path)
        assert '<script src="/docs-a11y.js" defer></script>' in page.text, path
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self' 'unsafe-inline';" in csp, csp


def test_swagger_ui_controls_named_with_the_csp_enforced(browser, docs_server):
    web = Offline(browser, docs_server.url, bypass_csp=False)
    try:
        page = web.page()
        page.goto(docs_server.url + "/docs")
        op = page.locator("#operations-default-predict_predict_post")
        op.locator(".opblock-summary").first.click(timeout=30_000)
        op.get_by_role("button", name="Try it out").click()
        expect(op.get_by_role("combobox", name="background")).to_have_count(1)
        assert op.locator("input[type=file]").get_attribute("aria-label").startswith("Request body file")
        assert not web.blocked, web.blocked
        assert not web.problems, web.problems  # nothing refused by the CSP
    finally:
        web.close()


def test_jobs_endpoints_have_request_bodies_in_the_docs(browser, docs_server):
    web = Offline(browser, docs_server.url)
    try:
        page = web.page()
        page.goto(docs_server.url + "/docs")
        op = page.locator("#operations-training_jobs-train_models__job_id__train_post")
        op.locator(".opblock-summary").first.click(timeout=30_000)
        # the click only starts the expansion: wait for the body's section before reading the text
        op.locator(".opblock-section-request-body").first.wait_for(timeout=30_000)
        text = op.inner_text()
        assert "Request body" in text and "budget" in text and "epochs" in text, text[:2000]
        assert "422" not in page.locator("#swagger-ui").inner_text()
        assert not web.blocked, web.blocked
    finally:
        web.close()


def test_redoc_renders_offline(browser, docs_server):
    # ReDoc 2.5's sidebar shows Redocly's logo from cdn.redoc.ly: the page's CSP refuses it (one console
    # line) and our stylesheet hides the empty picture; with the CSP bypassed the request is aborted and
    # counted here. Either way no request leaves the machine.
    for bypass_csp in (False, True):
        web = Offline(browser, docs_server.url, bypass_csp=bypass_csp)
        try:
            page = web.page()
            response = page.goto(docs_server.url + "/redoc")
            assert response.status == 200
            page.get_by_text("Classify one or more pictures").first.wait_for(timeout=60_000)
            assert page.get_by_text("Queue a training").count() >= 1
            assert any("/docs-assets/redoc.standalone.js" in u for u in web.local)
            if bypass_csp:
                assert web.blocked == ["https://cdn.redoc.ly/redoc/logo-mini.svg"], web.blocked
            else:
                assert not web.blocked, web.blocked
                assert all("cdn.redoc.ly" in m for m in web.problems), web.problems
            logo = page.locator("img[src^='https://cdn.redoc.ly']")
            assert logo.count() == 0 or not logo.first.is_visible()
            if bypass_csp:  # axe-core is injected as an inline script
                assert_no_violations(page, "/redoc")
        finally:
            web.close()
