"""`minivision serve` as a client sees it: a real uvicorn server in a child process on a loopback port.

The server is started the way a user starts it (`python -m minivision serve RUN --port 0`, the URL
read from its first line), with a small model trained here on synthetic data. Hostile inputs are
sent one by one, each followed by a check that the server still answers; the last test checks a
normal prediction still works after all of them. tests/test_serve_browser.py reuses the fixtures.
"""

from __future__ import annotations

import base64
import io
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from minivision.config import TrainConfig
from minivision.train import fit

from .conftest import needs_fashion_mnist, synthetic_dataset

STARTUP_S = 60


# ----------------------------------------------------------------------------- a served run

class Server:
    """``minivision serve RUN --port 0 ARGS`` in a child process (in ``cwd``, else the test's working
    folder); ``url`` once it is listening. The training-jobs API is off unless ARGS give ``--jobs DIR``."""

    def __init__(self, run: Path, *args: str, log: Path, cwd: Path | None = None) -> None:
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "minivision", "serve", str(run), "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=open(log, "wb"), text=True, cwd=cwd)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(ln) for ln in self.proc.stdout], daemon=True).start()
        self.lines = lines
        try:
            first = lines.get(timeout=STARTUP_S)
        except queue.Empty:
            self.stop()
            raise AssertionError(f"server did not start: {self.log.read_text()[-2000:]}") from None
        assert first.startswith("serving ") and " at http://127.0.0.1:" in first, first
        self.url = first.split(" at ")[1].split()[0]
        self.client = httpx.Client(base_url=self.url, timeout=60)
        deadline = time.monotonic() + STARTUP_S
        while True:
            try:
                if self.client.get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and self.proc.poll() is None, self.log.read_text()[-2000:]
            time.sleep(0.1)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def alive(self) -> None:
        r = self.client.get("/health")
        assert r.status_code == 200 and r.json()["status"] == "ok", r.text

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def train_synthetic_run(out: Path) -> Path:
    """A small cnn1 trained on the four-class synthetic images (class k: a bright square in cell k).

    In colour, so the model's photo conversion is a plain resize: the grey light-on-black kind gets
    Fashion-MNIST's trim-and-centre conversion (photo.py), which would move the square that tells
    these classes apart. The real-data test below serves a model with that conversion."""
    r = fit(TrainConfig(model="cnn1", epochs=4, batch_size=32, out=str(out)), dataset=synthetic_dataset(channels=3),
            log=lambda m: None, progress=False)
    return r.run_dir


def clean_picture(k: int, size: int = 28, scale: int = 1) -> Image.Image:
    """Class ``k`` of the synthetic data without noise, ``scale`` times bigger (grey: the server makes it RGB)."""
    a = np.zeros((size, size), np.uint8)
    r, c, cell = k // 2, k % 2, size // 2
    a[r * cell + 2:(r + 1) * cell - 2, c * cell + 2:(c + 1) * cell - 2] = 220
    img = Image.fromarray(a, "L")
    return img.resize((size * scale, size * scale), Image.Resampling.NEAREST) if scale > 1 else img


def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory) -> Path:
    return train_synthetic_run(tmp_path_factory.mktemp("serve-runs"))


@pytest.fixture(scope="module")
def server(synthetic_run, tmp_path_factory):
    s = Server(synthetic_run, log=tmp_path_factory.mktemp("serve-log") / "server.log")
    yield s
    assert s.stop() == 0, s.log.read_text()[-2000:]


def _post_files(server: Server, files: list[tuple[str, bytes]], field: str = "file", **params):
    return server.client.post("/predict", params=params, files=[(field, (n, b, "application/octet-stream"))
                                                                for n, b in files])


# ----------------------------------------------------------------------------- normal use

def test_health_models_and_openapi(server, synthetic_run):
    h = server.client.get("/health").json()
    assert h["status"] == "ok" and h["model_loaded"] is True and h["uptime_s"] >= 0
    m = server.client.get("/models").json()["models"]
    assert len(m) == 1 and m[0]["classes"] == ["class0", "class1", "class2", "class3"]
    assert m[0]["input"] == {"channels": 3, "height": 28, "width": 28} and m[0]["parameters"] > 1000
    assert m[0]["architecture"] == "cnn1" and "test_accuracy" in m[0]["metrics"]
    assert str(synthetic_run) not in json.dumps(m)  # no server paths given away
    assert m[0]["version"] == h["version"] and h["version"].startswith("0.") and "+" in h["version"]
    spec = server.client.get("/openapi.json").json()
    assert {"/predict", "/health", "/models"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert server.client.get("/docs").status_code == 200
    page = server.client.get("/")
    assert page.status_code == 200 and 'id="file"' in page.text and "Content-Security-Policy" in page.headers
    # works offline: nothing loaded from outside (the browser test also watches the requests)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//|url\(\s*["']?(https?:)?//|@import""", page.text)


def test_openapi_says_what_the_server_does(server):
    spec = server.client.get("/openapi.json").json()
    post = spec["paths"]["/predict"]["post"]
    params = {p["name"]: p["schema"] for p in post["parameters"]}
    # "Try it out" works with the defaults: top_k 3 of 1..4 classes, background auto, include_input false
    assert (params["top_k"]["default"], params["top_k"]["minimum"], params["top_k"]["maximum"]) == (3, 1, 4)
    assert params["background"]["enum"] == ["auto", "light", "dark"] and params["background"]["default"] == "auto"
    assert params["include_input"]["default"] is False
    assert set(post["responses"]) == {"200", "400", "413", "415", "503"}
    assert "422" not in json.dumps(spec) and "HTTPValidationError" not in json.dumps(spec)
    for code in ("400", "413", "415"):
        assert post["responses"][code]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorResponse"}
    assert {"unsure", "reasons"} <= set(spec["components"]["schemas"]["PredictResponse"]["properties"])
    assert set(post["responses"]["503"]["content"]) == {"text/plain"}  # uvicorn's answer, not ours
    # GET /health, /models, /examples: a response schema naming every key the server really returns
    schemas = spec["components"]["schemas"]
    for path, name in (("/health", "HealthResponse"), ("/models", "ModelsResponse"), ("/examples", "ExamplesResponse")):
        ok = spec["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok == {"$ref": f"#/components/schemas/{name}"}, (path, ok)
    assert set(server.client.get("/health").json()) == set(schemas["HealthResponse"]["properties"])
    assert set(server.client.get("/models").json()["models"][0]) == set(schemas["ServedModelInfo"]["properties"])
    # the defaults really work, and a value out of the documented range is a 400 (never 422)
    png = encode(clean_picture(1))
    assert _post_files(server, [("a.png", png)], top_k=3, include_input="false", background="auto").status_code == 200
    assert _post_files(server, [("a.png", png)], top_k=5).status_code == 400
    # the docs pages load their scripts from this server only, under their own policy
    for path, asset in (("/docs", "/docs-assets/swagger-ui-bundle.js"), ("/redoc", "/docs-assets/redoc.standalone.js")):
        r = server.client.get(path)
        assert r.status_code == 200 and f'src="{asset}"' in r.text and '<html lang="en">' in r.text
        assert "script-src 'self'" in r.headers["content-security-policy"]
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", r.text), path
        js = server.client.get(asset)
        assert js.status_code == 200 and len(js.content) > 100_000 and "javascript" in js.headers["content-type"]
    assert server.client.get("/docs-assets/swagger-ui.css").status_code == 200
    assert server.client.get("/docs-assets/../model.json").status_code == 404
    assert server.client.head("/health").status_code == 200  # GET and HEAD, one operation in the docs
    assert "Duplicate Operation ID" not in server.log.read_text()


def test_jobs_endpoints_are_described(synthetic_run, tmp_path):
    from fastapi.testclient import TestClient

    from minivision.serve.app import create_app

    spec = TestClient(create_app(synthetic_run, device="cpu", jobs_dir=tmp_path / "state")).get("/openapi.json").json()
    create = spec["paths"]["/models"]["post"]
    schema = create["requestBody"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["name", "kind"] and schema["properties"]["kind"]["enum"] == ["fashion", "gray", "rgb"]
    train = spec["paths"]["/models/{job_id}/train"]["post"]
    props = train["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert props["budget"]["default"] == "2m" and props["epochs"]["minimum"] == 1
    images = spec["paths"]["/models/{job_id}/images"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/zip"} <= set(images)
    assert set(spec["paths"]["/models/{job_id}/images"]["post"]["responses"]) >= {"400", "404", "409", "413", "415"}
    assert "requestBody" in spec["paths"]["/models/{job_id}/predict"]["post"]
    assert "422" not in json.dumps(spec)


def test_multipart_one_and_several_files(server):
    r = _post_files(server, [("a.png", encode(clean_picture(2)))])
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"predictions", "model", "version", "files", "notes", "unsure", "reasons", "tta"}
    assert body["tta"] == server.client.get("/models").json()["models"][0]["tta"]  # the model's own
    assert body["notes"] == [None]  # a picture with something in it: no note
    # one flag and one reason per picture (a reason exactly when unsure; the trust rules are tested elsewhere)
    assert len(body["unsure"]) == len(body["reasons"]) == 1 and isinstance(body["unsure"][0], bool)
    assert (body["reasons"][0] is not None) == body["unsure"][0]
    assert len(body["predictions"]) == 1 and len(body["predictions"][0]) == 3  # default top_k 3
    top = body["predictions"][0][0]
    assert top["label"] == "class2" and top["index"] == 2 and 0 < top["score"] <= 1
    scores = [p["score"] for p in body["predictions"][0]]
    assert scores == sorted(scores, reverse=True)
    # several files, 'files' field, mixed formats, a bigger picture: one list per image, in order
    pics = [("0.png", encode(clean_picture(0))), ("3.jpg", encode(clean_picture(3, scale=4), "JPEG")),
            ("1.bmp", encode(clean_picture(1), "BMP")), ("2.gif", encode(clean_picture(2, scale=2), "GIF"))]
    r = _post_files(server, pics, field="files")
    assert r.status_code == 200, r.text
    assert [p[0]["label"] for p in r.json()["predictions"]] == ["class0", "class3", "class1", "class2"]
    assert r.json()["files"] == ["0.png", "3.jpg", "1.bmp", "2.gif"]


def test_base64_json(server):
    png = encode(clean_picture(1))
    b64 = base64.b64encode(png).decode()
    r = server.client.post("/predict", json={"image": "data:image/png;base64," + b64,
                                             "images": [b64, base64.urlsafe_b64encode(encode(clean_picture(3)))
                                                        .decode().rstrip("=")]})
    assert r.status_code == 200, r.text
    assert [p[0]["label"] for p in r.json()["predictions"]] == ["class1", "class1", "class3"]
    assert r.json()["files"] == ["image", "images[0]", "images[1]"]
    r = server.client.post("/predict", json={"images": [b64], "top_k": 4, "include_input": True})
    assert r.status_code == 200 and len(r.json()["predictions"][0]) == 4 and len(r.json()["inputs"]) == 1


def test_raw_image_body(server):
    r = server.client.post("/predict", content=encode(clean_picture(0)), headers={"Content-Type": "image/png"})
    assert r.status_code == 200 and r.json()["predictions"][0][0]["label"] == "class0"


@pytest.mark.parametrize("how", ["query", "form"])
def test_top_k(server, how):
    png = encode(clean_picture(3))
    for k in (1, 2, 4):
        if how == "query":
            r = _post_files(server, [("x.png", png)], top_k=k)
        else:
            r = server.client.post("/predict", files={"file": ("x.png", png)}, data={"top_k": str(k)})
        assert r.status_code == 200, r.text
        preds = r.json()["predictions"][0]
        assert len(preds) == k and preds[0]["label"] == "class3"
        if k == 4:
            assert sorted(p["index"] for p in preds) == [0, 1, 2, 3]
            assert sum(p["score"] for p in preds) == pytest.approx(1, abs=1e-4)
    for bad in ("0", "5", "-1", "two", "1.5"):
        r = _post_files(server, [("x.png", png)], top_k=bad)
        assert r.status_code == 400 and "top_k" in r.json()["error"], (bad, r.text)
    r = server.client.post("/predict?top_k=1", files={"file": ("x.png", png)}, data={"top_k": "2"})
    assert r.status_code == 400 and "twice" in r.json()["error"]


def test_include_input_returns_what_the_model_saw(server, synthetic_run):
    from minivision.predict import predict_images
    from minivision.runfiles import load_model

    photo = clean_picture(2, scale=5)  # 140 x 140 grey: the server makes it 28 x 28 RGB
    r = _post_files(server, [("big.png", encode(photo))], include_input="true")
    assert r.status_code == 200, r.text
    (b64,) = r.json()["inputs"]
    seen = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert seen.format == "PNG" and seen.size == (28, 28) and seen.mode == "RGB"
    # exactly the tensor predict_images feeds the model: the service adds nothing of its own
    [direct] = predict_images(load_model(synthetic_run), [photo], top_k=3, inputs=True, device="cpu")
    assert np.array_equal(np.asarray(seen).transpose(2, 0, 1), direct["input"].numpy())
    assert [p["label"] for p in r.json()["predictions"][0]] == [p["label"] for p in direct["top_k"]]
    assert r.json()["predictions"][0][0]["score"] == pytest.approx(direct["score"], abs=1e-5)
    assert "inputs" not in _post_files(server, [("big.png", encode(photo))], include_input="false").json()


def test_concurrent_clients_get_their_own_answers(server):
    pictures = {k: encode(clean_picture(k)) for k in range(4)}
    wrong: list[str] = []

    def client(k: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            for _ in range(8):
                r = c.post("/predict", files={"file": (f"{k}.png", pictures[k])})
                if r.status_code != 200 or r.json()["predictions"][0][0]["label"] != f"class{k}":
                    wrong.append(f"{k}: {r.status_code} {r.text[:200]}")

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong, wrong


# ----------------------------------------------------------------------------- hostile input

def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height grey pixels, with one tiny IDAT: a bomb by its header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _hostile_files() -> list[tuple[str, str, bytes, int, str]]:
    """(case, file name, bytes, expected status, a word the error must contain)."""
    png, jpeg = encode(clean_picture(1, scale=4)), encode(clean_picture(1, scale=4).convert("RGB"), "JPEG")
    return [
        ("svg", "x.svg", b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>',
         415, "SVG"),
        ("svg-no-xml-decl", "y.svg", b'<svg xmlns="http://www.w3.org/2000/svg"><rect width="9"/></svg>', 415, "SVG"),
        ("eps", "x.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", 415, "EPS"),
        ("pdf", "x.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer\n%%EOF\n", 415, "PDF"),
        ("text", "notes.txt", b"hello, this is not a picture\n" * 20, 415, "not a supported image"),
        ("html", "x.html", b"<html><body><script>alert(1)</script></body></html>", 415, "not a supported image"),
        ("truncated-png", "cut.png", png[:len(png) // 2], 400, "truncated"),
        ("truncated-jpeg", "cut.jpg", jpeg[:len(jpeg) // 2], 400, "truncated"),
        ("empty", "empty.png", b"", 400, "empty"),
        ("bomb-30000", "bomb.png", _png_header(30000, 30000), 400, "bomb"),
        ("bomb-10000", "bomb2.png", _png_header(10000, 10000), 400, "bomb"),
    ]


@pytest.mark.parametrize("case,name,data,status,word", _hostile_files(), ids=[c[0] for c in _hostile_files()])
def test_hostile_file_gets_a_json_error(server, case, name, data, status, word):
    r = _post_files(server, [("ok.png", encode(clean_picture(0))), (name, data)])
    assert r.status_code == status, (case, r.text)
    body = r.json()
    assert body == {"error": body["error"], "status": status} and "\n" not in body["error"]
    assert word.lower() in body["error"].lower() and name in body["error"], body  # which file, and why
    server.alive()


def test_too_many_files(server):
    png = encode(clean_picture(0))
    assert _post_files(server, [(f"{i}.png", png) for i in range(16)]).status_code == 200
    r = _post_files(server, [(f"{i}.png", png) for i in range(17)])
    assert r.status_code == 400 and "too many" in r.json()["error"], r.text
    r = server.client.post("/predict", json={"images": [base64.b64encode(png).decode()] * 17})
    assert r.status_code == 400 and "too many" in r.json()["error"], r.text
    server.alive()


@pytest.mark.parametrize("body,content_type,status,word", [
    (b'{"images": ["not base64 at all!"]}', "application/json", 400, "base64"),
    (b'{"image": "data:image/png;base64,@@@@"}', "application/json", 400, "base64"),
    (b'{"image": "data:image/png,rawbytes"}', "application/json", 400, "base64"),
    (b'{"images": "abc"}', "application/json", 400, "list"),
    (b'{"images": [42]}', "application/json", 400, "base64 string"),
    (b'{"images": []}', "application/json", 400, "no image"),
    (b'{"image": ""}', "application/json", 400, "empty"),
    (b'{"imgs": []}', "application/json", 400, "unknown JSON key"),
    (b'{"images": [', "application/json", 400, "malformed JSON"),
    (b"\xff\xfe\x00garbage", "application/json", 400, "malformed JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "application/json", 400, "JSON"),
    (b'["a list"]', "application/json", 400, "object"),
    (b"just text", "text/plain", 415, "Content-Type"),
    (b"a=1&b=2", "application/x-www-form-urlencoded", 415, "Content-Type"),
    (b"", "", 415, "Content-Type"),
    (b"--x\r\nContent-Disposition: form-data; name=\"top_k\"\r\n\r\n3\r\n--x--\r\n", "multipart/form-data; boundary=x",
     400, "no image"),
    (b"--x\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\nzz\r\n--x--\r\n",
     "multipart/form-data; boundary=x", 400, "'file' or 'files'"),
    (b"--x\r\nContent-Disposition: form-data; name=\"topk\"\r\n\r\n3\r\n--x--\r\n", "multipart/form-data; boundary=x",
     400, "did you mean 'top_k'"),
    (b"whatever", "multipart/form-data", 400, "boundary"),
])
def test_malformed_bodies(server, body, content_type, status, word):
    headers = {"Content-Type": content_type} if content_type else {}
    r = server.client.post("/predict", content=body, headers=headers)
    assert r.status_code == status, r.text
    assert r.json()["status"] == status and word.lower() in r.json()["error"].lower(), r.text
    server.alive()


def test_framework_errors_are_clean_json(server):
    for method, path, status in [("GET", "/nope", 404), ("GET", "/predict", 405), ("DELETE", "/models", 405)]:
        r = server.client.request(method, path)
        assert r.status_code == status and r.json() == {"error": r.json()["error"], "status": status}
    r = server.client.post("/predict?include_input=maybe", files={"file": ("a.png", encode(clean_picture(0)))})
    assert r.status_code == 400 and "include_input" in r.json()["error"]  # FastAPI's 422, as a 400


def test_upload_file_names_are_only_echoed(server, tmp_path):
    png = encode(clean_picture(0))
    names = ["../../etc/passwd", "/etc/shadow", "..\\..\\windows\\win.ini", "a%00b%0D%0Ac.png",
             "<img src=x onerror=alert(1)>.png", "x" * 1000 + ".png"]
    before = set(os.listdir(tmp_path.parent))
    r = _post_files(server, [(n, png) for n in names])
    assert r.status_code == 200, r.text
    files = r.json()["files"]
    assert files[:5] == names[:5]  # httpx percent-encodes control characters: they arrive as text
    assert len(files[5]) <= 120 and all(p[0]["label"] == "class0" for p in r.json()["predictions"])
    assert set(os.listdir(tmp_path.parent)) == before
    # raw control characters in a file name are dropped from the echo
    body = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="a\x00b\x1b[31mc\x7f.png"\r\n\r\n'
            + png + b"\r\n--b--\r\n")
    r = server.client.post("/predict", content=body, headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert r.status_code == 200 and r.json()["files"] == ["ab[31mc.png"], r.text
    # a bad file with a hostile name: the name is in the one-line JSON error, nothing else happens
    r = _post_files(server, [("../../etc/passwd", b"%PDF-1.4")])
    assert r.status_code == 415 and r.json()["error"].startswith("../../etc/passwd: PDF")


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")  # starlette 1.x wants httpx2
def test_pixel_limit_counts_the_whole_request(synthetic_run):
    """In process (Starlette's TestClient), with the limit lowered to 10,000 pixels."""
    from starlette.testclient import TestClient

    from minivision.serve.app import create_app

    with TestClient(create_app(synthetic_run, max_pixels=10_000)) as client:
        small = encode(clean_picture(0, scale=3))  # 84 x 84 = 7,056 pixels
        assert client.post("/predict", files=[("file", ("a.png", small))]).status_code == 200
        r = client.post("/predict", files=[("file", ("a.png", small)), ("file", ("b.png", small))])
        assert r.status_code == 400 and r.json()["error"].startswith("b.png: the pictures of this request"), r.text
        assert "14,112 pixels together, over the limit of 10,000" in r.json()["error"]
        r = client.post("/predict", files=[("file", ("big.png", encode(clean_picture(0, scale=4))))])
        assert r.status_code == 400 and "decompression bomb" in r.json()["error"]


# ----------------------------------------------------------------------------- body size limit

def _raw_request(port: int, head: bytes, body_chunks=None, limit: int = 50_000_000) -> tuple[bytes, int]:
    """Send ``head`` then chunks until the server answers (or ``limit`` bytes); (response, bytes sent)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    response = bytearray()
    answered = threading.Event()

    def read() -> None:
        try:
            while data := sock.recv(65536):
                response.extend(data)
                if b"\r\n\r\n" in response:
                    answered.set()
        except OSError:
            pass
        answered.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    sent = 0
    try:
        sock.sendall(head)
        for chunk in body_chunks or ():
            if answered.is_set() or sent >= limit:
                break
            sock.sendall(chunk)
            sent += len(chunk)
    except OSError:  # the server closed the connection after answering: expected
        pass
    answered.wait(30)
    reader.join(5)
    sock.close()
    return bytes(response), sent


def _status_and_json(response: bytes) -> tuple[int, dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_declared_oversize_body_is_refused_unread(server):
    big = 50_000_000
    head = (f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {big}\r\n\r\n"
            .encode())
    response, sent = _raw_request(server.port, head)  # not one byte of the body is sent
    status, body = _status_and_json(response)
    # answered with only the head sent: a server waiting for the body would never have answered
    assert sent == 0 and status == 413 and body["status"] == 413
    # one line that says the limit and what to send instead
    assert body["error"].startswith("request body is over the 10 MB limit: ") and "\n" not in body["error"]
    assert "28 x 28" in body["error"] and "web page shrinks pictures" in body["error"]
    # the same through an ordinary client, which sends its whole 50 MB body
    rss = server.rss_mb()
    try:
        r = server.client.post("/predict", files={"file": ("big.png", b"\0" * big)})
        assert r.status_code == 413 and r.json()["status"] == 413
    except httpx.TransportError:  # the server answered and closed while the client was still sending
        pass
    assert server.rss_mb() - rss < 25, (rss, server.rss_mb())
    server.alive()


@pytest.mark.parametrize("content_type,path", [("application/json", "/predict"),
                                               ("multipart/form-data; boundary=x", "/predict"),
                                               ("image/png", "/predict"), ("image/png", "/nowhere"),
                                               ("multipart/form-data; boundary=x", "/models/x/images")])
def test_chunked_oversize_body_is_cut_off_while_streaming(server, content_type, path):
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
            f"Transfer-Encoding: chunked\r\n\r\n").encode()
    piece = b"A" * 65536
    first = b'--x\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n' if "multipart" in \
        content_type else b'{"image": "' if "json" in content_type else b"\x89PNG\r\n\x1a\n"  # a valid start
    pieces = [first + piece] + [piece] * 800  # 52 MB if all were sent
    chunks = (b"%x\r\n" % len(p) + p + b"\r\n" for p in pieces)
    rss = server.rss_mb()
    response, sent = _raw_request(server.port, head, chunks)
    status, body = _status_and_json(response)
    if path == "/predict":
        assert status == 413 and body["status"] == 413, response[:300]
        assert body["error"].startswith("request body is over the 10 MB limit: "), body  # ours, not a bare 413
    else:  # no such route here (the jobs API is off): our JSON 404/405 before the body is read
        assert status in (404, 405) and body["status"] == status, response[:300]
    assert sent < 30_000_000, sent  # answered after ~10 MB (+ socket buffers), long before the client finished
    assert server.rss_mb() - rss < 25, (rss, server.rss_mb())
    server.alive()


def test_clients_that_hang_up_mid_upload(server):
    for head in (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000"
                 b'\r\n\r\n{"image": "abc',
                 b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n5\r\n--x\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(head)
            time.sleep(0.2)
    time.sleep(0.3)
    server.alive()
    assert "Traceback" not in server.log.read_text()


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_body_limit_per_path_prefix():
    """The training-jobs uploads (under /models/) may be bigger than /predict's bodies."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from minivision.serve.uploads import BodyLimit

    async def echo(request):
        return PlainTextResponse(str(len(b"".join([c async for c in request.stream()]))))

    app = Starlette(routes=[Route("/predict", echo, methods=["POST"]), Route("/models/{x}/images", echo,
                                                                              methods=["POST"])],
                    middleware=[Middleware(BodyLimit, max_bytes=1000, overrides={"/models/": 5000})])
    client = TestClient(app)  # no handler for BodyTooLarge in this app: the middleware answers itself
    assert client.post("/predict", content=b"x" * 1000).text == "1000"
    assert client.post("/predict", content=b"x" * 1001).status_code == 413
    assert client.post("/models/a/images", content=b"x" * 5000).text == "5000"
    r = client.post("/models/a/images", content=iter([b"x" * 4000, b"x" * 4000]))  # chunked: counted as it comes
    assert r.status_code == 413 and r.json() == {"error": "request body is over the 0.005 MB limit", "status": 413}


# ----------------------------------------------------------------------------- what the run shows

def test_models_lists_what_the_page_needs(server):
    from minivision.data.images import ACCEPTED

    m = server.client.get("/models").json()["models"][0]
    assert m["dataset"] == "synthetic" and m["test_accuracy"] == m["metrics"]["test_accuracy"]
    assert 0 <= m["test_accuracy"] <= 1 and m["max_upload_mb"] == 10 and m["report"] == "/report"
    # the one list of formats: data/images.py's, AVIF included where Pillow reads it
    assert m["accepted_formats"] == list(ACCEPTED.extensions) and ".png" in m["accepted_formats"]
    assert m["content_types"] == list(ACCEPTED.content_types) and "image/jpeg" in m["content_types"]
    from PIL import features

    assert (".avif" in m["accepted_formats"]) == features.check("avif")
    assert m["examples"] == len(server.client.get("/examples").json()["examples"]) == 4 * 3


def test_examples_are_the_runs_test_pictures(server, synthetic_run):
    from minivision.examples import load_examples

    examples = server.client.get("/examples").json()["examples"]
    kept = load_examples(synthetic_run)
    assert [(e["index"], e["label"]) for e in examples] == [(c, f"class{c}") for c, _ in kept]
    for e, (_, img) in zip(examples, kept, strict=True):
        pic = Image.open(io.BytesIO(base64.b64decode(e["png"])))
        assert pic.format == "PNG" and np.array_equal(np.asarray(pic).transpose(2, 0, 1), img.numpy())


@pytest.fixture(scope="module")
def report_run(synthetic_run, tmp_path_factory) -> Path:
    """A copy of the run whose report.html references pictures by file name, and pictures that a
    request must not reach: a link to a file outside, a file the report does not reference."""
    import shutil

    run = tmp_path_factory.mktemp("report-run") / "run"
    shutil.copytree(synthetic_run, run)
    secret = run.parent / "secret.png"
    secret.write_bytes(b"not yours")
    os.symlink(secret, run / "link.png")
    (run / "unlisted.png").write_bytes(encode(clean_picture(1)))
    (run / "fig.png").write_bytes(encode(clean_picture(0)))
    (run / "report.html").write_text(
        '<!doctype html><html lang="en"><head><title>r</title></head><body><a href="#top">top</a>'
        '<a href="fig.png"><img src="fig.png" alt="f"></a><img src="link.png" alt="l"><img src="../secret.png" alt="s">'
        f'<img src="{secret}" alt="a"><img src="missing.png" alt="m"></body></html>', encoding="utf-8")
    return run


def _client(run: Path):
    from fastapi.testclient import TestClient

    from minivision.serve.app import create_app

    return TestClient(create_app(run, device="cpu"))


def test_report_and_only_its_own_pictures(report_run):
    c = _client(report_run)
    r = c.get("/report")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in r.headers["content-security-policy"]
    # picture references point under /report/, the page's own anchors stay as they are
    assert 'src="/report/fig.png"' in r.text and 'href="/report/fig.png"' in r.text and 'href="#top"' in r.text
    fig = c.get("/report/fig.png")
    assert fig.status_code == 200 and fig.headers["content-type"] == "image/png"
    assert fig.content == (report_run / "fig.png").read_bytes()
    for bad in ("link.png", "unlisted.png", "missing.png", "model.safetensors", "report.html", "..%2Fsecret.png",
                "../secret.png", "%2E%2E/secret.png", "%2Fetc%2Fpasswd", str(report_run.parent / "secret.png"),
                "fig.png%00.txt", "FIG.PNG"):
        r = c.get("/report/" + bad)
        assert r.status_code == 404 and set(r.json()) == {"error", "status"}, (bad, r.text)
        assert b"not yours" not in r.content and "Traceback" not in r.text


def test_run_without_report_or_examples(report_run, tmp_path):
    import shutil

    run = tmp_path / "bare"
    shutil.copytree(report_run, run, symlinks=True)
    (run / "report.html").unlink()
    (run / "examples.safetensors").unlink()
    c = _client(run)
    m = c.get("/models").json()["models"][0]
    assert m["report"] is None and m["examples"] == 0
    assert c.get("/examples").json() == {"examples": []}
    r = c.get("/report")
    assert r.status_code == 404 and r.json()["status"] == 404 and "no report" in r.json()["error"]
    assert c.get("/report/fig.png").status_code == 404


@pytest.mark.parametrize("mode", ["flip", "flip+shift"])
def test_a_model_with_its_own_tta_is_served_with_it(synthetic_run, tmp_path, mode):
    """model.json's ``tta`` makes the service's scores the mean of the views', as ``predict`` gives them; /models
    and each answer say which views."""
    import shutil

    from minivision.predict import predict_images
    from minivision.runfiles import load_model

    run = tmp_path / "tta"
    shutil.copytree(synthetic_run, run)
    meta = json.loads((run / "model.json").read_text())
    meta["tta"] = mode
    (run / "model.json").write_text(json.dumps(meta))
    c = _client(run)
    assert c.get("/models").json()["models"][0]["tta"] == mode
    picture = encode(clean_picture(3, scale=3))
    r = c.post("/predict", params={"top_k": 4}, files={"file": ("3.png", picture)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tta"] == mode and set(body["predictions"][0][0]) == {"label", "index", "score"}  # no "plain"
    lm = load_model(run)
    [want] = predict_images(lm, [picture], top_k=4, device="cpu", tta=mode)
    [alone] = predict_images(lm, [picture], top_k=4, device="cpu", tta="none")
    served = [(p["label"], p["score"]) for p in body["predictions"][0]]
    assert served == [(t["label"], pytest.approx(t["score"], abs=1e-6)) for t in want["top_k"]]
    assert [s for _, s in served] != pytest.approx([t["score"] for t in alone["top_k"]], abs=1e-6)


def test_avif_upload(server):
    from PIL import features

    if not features.check("avif"):
        pytest.skip("this Pillow does not read AVIF")
    data = encode(clean_picture(3, scale=2).convert("RGB"), "AVIF")
    r = _post_files(server, [("x.avif", data)])
    assert r.status_code == 200 and r.json()["predictions"][0][0]["label"] == "class3", r.text
    r = server.client.post("/predict", content=data, headers={"Content-Type": "image/avif"})
    assert r.status_code == 200 and r.json()["predictions"][0][0]["label"] == "class3", r.text
    # a Content-Type outside the list gets the list, not a guess
    r = server.client.post("/predict", content=data, headers={"Content-Type": "image/svg+xml"})
    assert r.status_code == 415 and "AVIF" in r.json()["error"] and "PNG" in r.json()["error"]


# ----------------------------------------------------------------------------- the command

def test_cli_errors_before_starting(synthetic_run, tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "minivision", "serve", *args], capture_output=True, text=True,
                              timeout=120)

    p = run(str(tmp_path / "nothing-here"))
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and p.stderr.startswith("error: "), p.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        p = run(str(synthetic_run), "--port", str(taken.getsockname()[1]))
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "already in use" in p.stderr, p.stderr
    p = run(str(synthetic_run), "--max-body-mb", "0")
    assert p.returncode == 2 and p.stderr.startswith("error:")


def test_ctrl_c_stops_cleanly(synthetic_run, tmp_path):
    s = Server(synthetic_run, "--max-files", "2", log=tmp_path / "server.log")
    png = encode(clean_picture(0))
    assert _post_files(s, [("a.png", png)] * 2).status_code == 200
    assert _post_files(s, [("a.png", png)] * 3).status_code == 400  # --max-files took effect
    assert s.stop() == 0
    assert s.lines.get(timeout=5).strip() == "stopped"
    assert "Traceback" not in s.log.read_text()


def test_plain_serve_writes_nothing_and_jobs_are_opt_in(synthetic_run, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    s = Server(synthetic_run, log=tmp_path / "server.log", cwd=work)
    try:
        assert _post_files(s, [("a.png", encode(clean_picture(1)))]).status_code == 200
        r = s.client.post("/models", json={"name": "x", "kind": "gray"})
        assert r.status_code in (404, 405) and set(r.json()) == {"error", "status"}  # no jobs API
    finally:
        assert s.stop() == 0
    assert list(work.iterdir()) == []  # no runs/jobs/ or anything else in the working folder
    state = tmp_path / "state"
    s = Server(synthetic_run, "--jobs", str(state), log=tmp_path / "server2.log", cwd=work)
    try:
        said = s.lines.get(timeout=10)
        assert said.startswith("training-jobs API on: its state is written to ") and said.strip().endswith(
            str(state)), said
        assert s.client.post("/models", json={"name": "x", "kind": "gray"}).status_code == 201
    finally:
        assert s.stop() == 0
    assert state.is_dir() and list(work.iterdir()) == []


# ----------------------------------------------------------------------------- still alive

def test_after_everything_the_server_still_predicts(server):
    server.alive()
    r = _post_files(server, [("a.png", encode(clean_picture(3)))], include_input="true")
    assert r.status_code == 200 and r.json()["predictions"][0][0]["label"] == "class3"
    assert server.proc.poll() is None
    assert "Traceback" not in server.log.read_text()


# ----------------------------------------------------------------------------- real data

@needs_fashion_mnist
def test_real_fashion_mnist_model_served(small_fashion_run, tmp_path):
    import minivision as mv

    ds = mv.load_dataset("fashion-mnist")
    s = Server(small_fashion_run, log=tmp_path / "server.log")
    try:
        # real test images: the first Trouser, Bag and Ankle boot of the test set, as PNG files
        files = []
        for label in ("Trouser", "Bag", "Ankle boot"):
            i = int((ds.test.y == ds.classes.index(label)).nonzero()[0])
            files.append((f"{label}.png", encode(Image.fromarray(ds.test.x[i, 0].numpy(), "L"))))
        r = _post_files(s, files, include_input="true")
        assert r.status_code == 200, r.text
        body = r.json()
        for (name, _), preds in zip(files, body["predictions"], strict=True):
            assert name[:-4] in [p["label"] for p in preds], (name, preds)  # the right label in the top 3
        assert body["model"].endswith("/cnn1")
        seen = Image.open(io.BytesIO(base64.b64decode(body["inputs"][0])))
        assert seen.size == (28, 28)
        # a photo-like picture (dark trousers on white, bigger): detected as a light background and negated;
        # background=dark overrides the detection and leaves it as it is (mostly white)
        i = int((ds.test.y == ds.classes.index("Trouser")).nonzero()[0])
        photo = Image.fromarray(255 - ds.test.x[i, 0].numpy(), "L").resize((112, 112))
        means = {}
        for background in ("auto", "dark"):
            r = _post_files(s, [("photo.png", encode(photo))], include_input="true", background=background)
            assert r.status_code == 200, r.text
            means[background] = np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["inputs"][0])))).mean()
        assert means["auto"] < 100 < means["dark"]
        assert _post_files(s, [("photo.png", encode(photo))], background="upside-down").status_code == 400
        # the run's own test pictures and facts, and a real test image sent as AVIF
        m = s.client.get("/models").json()["models"][0]
        assert m["dataset"] == "fashion-mnist" and m["test_accuracy"] == m["metrics"]["test_accuracy"]
        examples = s.client.get("/examples").json()["examples"]
        assert m["examples"] == len(examples) == 30 and {e["label"] for e in examples} == set(ds.classes)
        from PIL import features

        if features.check("avif"):
            i = int((ds.test.y == ds.classes.index("Trouser")).nonzero()[0])
            avif = encode(Image.fromarray(ds.test.x[i, 0].numpy(), "L").convert("RGB"), "AVIF")
            r = s.client.post("/predict", content=avif, headers={"Content-Type": "image/avif"})
            assert r.status_code == 200 and "Trouser" in [p["label"] for p in r.json()["predictions"][0]], r.text
    finally:
        assert s.stop() == 0
