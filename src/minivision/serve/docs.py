"""The API's own documentation, offline: Swagger UI at ``/docs`` and ReDoc at ``/redoc``, and the
OpenAPI descriptions they read (request bodies, defaults and bounds, the error codes really returned).

FastAPI's default pages load Swagger UI and ReDoc from a CDN, so they are blank without internet.
Here their scripts and stylesheet come from the installed ``fastapi-offline`` package (it bundles
Swagger UI's and ReDoc's release files; we use its files, not its app factory, so that our pages
carry their own Content-Security-Policy and a ``lang`` attribute), served under ``/docs-assets/``.
The HTML around them is FastAPI's own (``get_swagger_ui_html``, ``get_redoc_html``). Swagger UI leaves
some controls without an accessible name (a parameter's <select>, a request body's file input, the
"copy to clipboard" buttons); our small script ``static/docs-a11y.js``, served at ``/docs-a11y.js``
(same origin, so within the page's ``script-src 'self'``), names them as Swagger UI draws them, and
does the same for ReDoc's content-type <select>s and sidebar entries on ``/redoc``.

The server answers a request it cannot use with 400 (never FastAPI's 422: every validation error
goes through the app's one error handler), so ``clean_openapi`` removes the 422 responses FastAPI
adds on its own and the validation-error schemas they point at.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from ..photo import BACKGROUNDS

ASSETS_URL = "/docs-assets"
A11Y_URL = "/docs-a11y.js"
A11Y_JS = Path(__file__).parent / "static" / "docs-a11y.js"
# The docs pages run Swagger UI's / ReDoc's own scripts from this server, plus FastAPI's inline start-up
# script; ReDoc starts its search index in a worker made from a blob: URL. Nothing else is loaded.
DOCS_CSP = ("default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
# A few rules over Swagger UI's stylesheet (5.x) for axe-core's serious rules that CSS can meet: its
# greys, green and badges on white are below WCAG AA's 4.5:1 contrast (color-contrast), and its code
# blocks scroll without being focusable (scrollable-region-focusable): here they grow instead.
# Its code blocks (examples, response bodies) are highlighted with the "agate" theme as inline styles
# on a #333 background: numbers, bullets and symbols #d36363 (3.45:1) and comments #888 (3.56:1) are
# below 4.5:1, so they are matched by their inline colour and made lighter (#f29191: 5.56:1, #b3b3b3:
# 6.03:1; WCAG 2.x relative-luminance formula). Its other token colours pass: keys white (12.6:1),
# strings #a2fca2 (10.2:1), literals and keywords #fcc28c (8.0:1), tags #62c8f3 (6.7:1).
_DOCS_STYLE = """<style>
.swagger-ui .opblock .opblock-summary-description, .swagger-ui .parameter__in, .swagger-ui .prop-format,
.swagger-ui .parameter__type, .swagger-ui .parameter__extension, .swagger-ui .parameter__deprecated,
.swagger-ui .response-col_links, .swagger-ui .opblock-description-wrapper p, .swagger-ui .renderedMarkdown p,
.swagger-ui table thead tr td, .swagger-ui table thead tr th, .swagger-ui .model-title,
.swagger-ui .tab li { color: #3b4151; }
.swagger-ui .info .title small { background-color: #545b64; }
.swagger-ui .info .title small.version-stamp { background-color: #1e6b22; }
.swagger-ui .download-contents { background-color: #545b64; color: #fff; }
.swagger-ui .btn.execute, .swagger-ui .opblock.opblock-post .opblock-summary-method { background-color: #1f7a4d; }
.swagger-ui .opblock.opblock-get .opblock-summary-method { background-color: #1a5fa8; }
.swagger-ui .response-control-media-type__accept-message { color: #1e6b22; }
.swagger-ui .btn.cancel { color: #b3261e; border-color: #b3261e; }
.swagger-ui a.nostyle, .swagger-ui .info a { color: #1a5fa8; }
.swagger-ui .highlight-code > .microlight, .swagger-ui .microlight { max-height: none; overflow: visible; }
.swagger-ui :focus-visible { outline: 3px solid #1a5fa8; outline-offset: 2px; }
.swagger-ui .microlight span[style*="rgb(211, 99, 99)"], .swagger-ui .microlight span[style*="#d36363" i]
  { color: #f29191 !important; }
.swagger-ui .microlight span[style*="rgb(136, 136, 136)"], .swagger-ui .microlight span[style*="#888" i]
  { color: #b3b3b3 !important; }
</style>"""

# ReDoc (2.x): its logo from cdn.redoc.ly, which DOCS_CSP refuses, is hidden; its half-transparent
# headings, red inline code and the red error-status tabs on its dark panel are below WCAG AA's 4.5:1
# contrast (color-contrast). Its class names are generated, hence element selectors with !important.
_REDOC_STYLE = """<style>
img[src^="https://cdn.redoc.ly"] { display: none; }
redoc h5 { color: #545b64 !important; }
redoc code:not(.redoc-json code) { color: #b3261e !important; }
redoc li.tab-error:not(.react-tabs__tab--selected) { color: #ff8a80 !important; }
</style>"""


def assets_dir() -> Path:
    """The folder of Swagger UI's and ReDoc's files in the installed ``fastapi-offline`` package."""
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


def mount_docs(app: FastAPI, title: str) -> None:
    """Serve ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) from the installed assets, each with
    ``DOCS_CSP``. The app must be created with ``docs_url=None, redoc_url=None``."""
    app.mount(ASSETS_URL, StaticFiles(directory=assets_dir()), name="docs-assets")
    headers = {"Content-Security-Policy": DOCS_CSP, "Cache-Control": "no-cache"}

    @app.get(A11Y_URL, include_in_schema=False)
    async def docs_a11y() -> FileResponse:
        return FileResponse(A11Y_JS, media_type="text/javascript",
                            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

    def page(html: str) -> HTMLResponse:
        html = html.replace("<html>", '<html lang="en">', 1)
        return HTMLResponse(html, headers=headers)

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        html = get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json", title=f"{title} - API docs",
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js", swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
            # no validator badge: it would send the spec to validator.swagger.io; no deep links: their
            # anchors sit inside each operation's toggle button (axe-core: nested-interactive)
            swagger_ui_parameters={"validatorUrl": None, "deepLinking": False,
                                   "defaultModelsExpandDepth": 0}).body.decode()
        return page(html.replace("</head>", f'{_DOCS_STYLE}\n<script src="{A11Y_URL}" defer></script>\n</head>', 1))

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        html = get_redoc_html(openapi_url=app.openapi_url or "/openapi.json", title=f"{title} - API reference",
                              redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
                              redoc_favicon_url=f"{ASSETS_URL}/favicon.png", with_google_fonts=False).body.decode()
        # ReDoc's sidebar shows Redocly's logo from cdn.redoc.ly, which DOCS_CSP refuses: hide the empty picture
        return page(html.replace("</head>", f'{_REDOC_STYLE}\n<script src="{A11Y_URL}" defer></script>\n</head>', 1))


def clean_openapi(app: FastAPI) -> None:
    """Replace ``app.openapi`` by one that drops FastAPI's automatic 422 responses (this server answers
    400) and the validation-error schemas only they used."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            for path in spec.get("paths", {}).values():
                for operation in path.values():
                    if isinstance(operation, dict):
                        operation.get("responses", {}).pop("422", None)
            schemas = spec.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


# ----------------------------------------------------------------------------- shared descriptions

class ErrorResponse(BaseModel):
    """Every error the service returns: ``{"error": "<one line>", "status": N}``."""

    error: str
    status: int


ERROR_TEXT = {
    400: "bad request: a corrupt or truncated picture, a decompression bomb, too many files, an unknown field, "
         "a value out of range, malformed JSON or base64",
    404: "no such model, or the run has no report",
    409: "the model is queued or training, or not trained yet",
    413: "request body over the size limit (refused from its Content-Length, or cut off as it streams in)",
    415: "not an accepted picture format or Content-Type",
    500: "the trained model's files are missing or cannot be loaded",
    503: "the server has too many open connections; try again (answered by the HTTP server, as plain text)",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these error codes, each with the error body's schema; 503 is
    answered by the HTTP server (uvicorn's connection limit) before the app runs, as plain text."""
    return {code: {"description": ERROR_TEXT[code], "content": {"text/plain": {"schema": {"type": "string"}}}}
            if code == 503 else {"model": ErrorResponse, "description": ERROR_TEXT[code]} for code in codes}


def _options(n_classes: int | None, top_k: int) -> dict[str, dict[str, Any]]:
    top = {"type": "integer", "minimum": 1, "default": top_k,
           "description": "classes per picture, best first (1 to the number of classes)"}
    if n_classes is not None:
        top["maximum"] = n_classes
        top["description"] = f"classes per picture, best first (1 to {n_classes}, the number of classes)"
    return {
        "top_k": top,
        "include_input": {"type": "boolean", "default": False,
                          "description": "also return what the model saw, as base64 PNGs"},
        "background": {"type": "string", "enum": list(BACKGROUNDS), "default": "auto",
                       "description": "the photos' background: auto (detected), light or dark"},
    }


def predict_openapi(n_classes: int | None, top_k: int, formats: str) -> dict[str, Any]:
    """``openapi_extra`` for a predict endpoint: the query parameters (the endpoint reads them itself,
    so that a bad value gets the service's own 400) and the three body kinds it takes. ``n_classes``
    None: not known in advance (a training job's model), no maximum given."""
    options = _options(n_classes, top_k if n_classes is None else min(top_k, n_classes))
    file = {"type": "string", "format": "binary",
            "description": f"a picture ({formats}); repeat the field (named 'file' or 'files') to send several"}
    return {
        "parameters": [{"name": k, "in": "query", "required": False, "schema": v, "description": v["description"]}
                       for k, v in options.items()],
        "requestBody": {"required": True, "content": {
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["file"], "properties": {"file": file},
                "description": "top_k, include_input and background may also be sent as form fields"}},
            "application/json": {"schema": {"type": "object", "properties": {
                "images": {"type": "array", "items": {"type": "string"},
                           "description": "base64 pictures; a data:image/...;base64, prefix is accepted"},
                "image": {"type": "string", "description": "one base64 picture"}, **options}}},
            "image/*": {"schema": {"type": "string", "format": "binary"},
                        "description": "one picture as the whole body"}}},
    }


def jobs_create_openapi(kinds: dict[str, str], models: list[str]) -> dict[str, Any]:
    """``openapi_extra`` for ``POST /models``."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["name", "kind"], "additionalProperties": False, "properties": {
            "name": {"type": "string", "maxLength": 64, "description": "a name for the model", "example": "shoes"},
            "kind": {"type": "string", "enum": list(kinds), "default": "fashion",
                     "description": "; ".join(f"{k}: {v}" for k, v in kinds.items())},
            "base_model": {"type": "string", "enum": models, "default": "auto",
                           "description": "auto: fine-tune from the best pretrained backbone for the pictures "
                                          "(fashion: mvnet-fashion); none: train from scratch; a backbone "
                                          "(fine-tune from it) or a network (train it)"}}}}}}}


def jobs_images_openapi(formats: str) -> dict[str, Any]:
    """``openapi_extra`` for ``POST /models/{id}/images``."""
    picture = {"type": "string", "format": "binary"}
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "zip": {"type": "array", "items": picture, "description": "zips of <class>/<picture> folders"},
            "files": {"type": "array", "items": picture,
                      "description": f"pictures ({formats}) with 'label' or 'labels'; without a label, zips"},
            "label": {"type": "string", "description": "one class name for every picture"},
            "labels": {"type": "array", "items": {"type": "string"}, "description": "one class name per picture"},
        }}},
        "application/zip": {"schema": picture, "description": "a zip of <class>/<picture> folders"}}}}


def jobs_train_openapi(default_budget: str, min_budget: str, max_budget: str, max_epochs: int) -> dict[str, Any]:
    """``openapi_extra`` for ``POST /models/{id}/train`` (the body is optional)."""
    return {"requestBody": {"required": False, "content": {"application/json": {"schema": {
        "type": "object", "additionalProperties": False, "properties": {
            "budget": {"type": "string", "default": default_budget,
                       "description": f"the training's wall-clock time, from {min_budget} to {max_budget} "
                                      "(30s, 2m, 1h, or seconds)"},
            "epochs": {"type": "integer", "minimum": 1, "maximum": max_epochs,
                       "description": "a fixed number of epochs (else the budget plans them)"}}}}}}}
