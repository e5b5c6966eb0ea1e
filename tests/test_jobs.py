"""Training jobs over HTTP (serve/jobs*.py), tested the way a client uses them: a real uvicorn in a
subprocess on a free loopback port, httpx as the client, real training subprocesses, real restarts.

The pictures are made here: class k is a bright square in corner k of a dark 28x28 picture (as in
conftest.synthetic_images), which a tiny network separates in a few seconds of training.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from minivision.serve import jobs_images
from minivision.serve.jobs_runner import process_identity, small_data_flags
from minivision.serve.jobs_store import JobError

CLASSES = ["T-shirt", "bag", "ankle boot"]  # user names with a space and a dash: folders are 000, 001, 002
SERVER = """
import sys
from pathlib import Path
import uvicorn
from fastapi import FastAPI
from minivision.serve.jobs import jobs_router
app = FastAPI()
app.include_router(jobs_router(Path(sys.argv[1]), max_upload_mb=int(sys.argv[3]), max_files=4))
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


# ----------------------------------------------------------------------------- pictures

def picture(k: int, seed: int, size: int = 28) -> bytes:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 60, (size, size)).astype(np.uint8)
    r, c = divmod(k % 4, 2)
    h = size // 2
    a[r * h + 2:(r + 1) * h - 2, c * h + 2:(c + 1) * h - 2] = 200
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def dataset_zip(per_class: int = 20, extra: dict[str, bytes] | None = None, wrapper: str = "") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for k, name in enumerate(CLASSES):
            for i in range(per_class):
                z.writestr(f"{wrapper}{name}/{i}.png", picture(k, seed=1000 * k + i))
        for member, data in (extra or {}).items():
            z.writestr(f"{wrapper}{member}", data)
    return buf.getvalue()


# ----------------------------------------------------------------------------- a real server

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -c SERVER state_dir port max_mb`` on uvicorn; stderr kept in a file."""

    def __init__(self, state_dir: Path, max_mb: int = 200) -> None:
        self.state_dir = state_dir
        self.log = state_dir.parent / f"server-{state_dir.name}-{time.monotonic_ns()}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for _ in range(5):  # a port taken between probing and binding: try another
            self.port = _free_port()
            with open(self.log, "wb") as out:
                self.proc = subprocess.Popen([sys.executable, "-c", SERVER, str(state_dir), str(self.port),
                                              str(max_mb)], stdout=out, stderr=subprocess.STDOUT, env=env)
            self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60)
            if self._ready():
                return
            self.stop()
        raise RuntimeError(f"server did not start: {self.log.read_text()[-2000:]}")

    def _ready(self) -> bool:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if self.client.get("/models/0000000000000000").status_code == 404:
                    return True
            except httpx.TransportError:
                time.sleep(0.1)
        return False

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        self.client.close()
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM: uvicorn's graceful shutdown, the router's lifespan exit included."""
        self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def training_process(state_dir: Path, job_id: str) -> tuple[int | None, str | None]:
    """(pid, identity) the database holds for the job's training process."""
    with sqlite3.connect(state_dir / "jobs.sqlite3") as con:
        row = con.execute("SELECT pid, pid_start FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return (row[0], row[1]) if row else (None, None)


def kill_training(state_dir: Path, job_id: str) -> int | None:
    """SIGKILL the job's training process, if the one recorded is still the one running (ours)."""
    pid, identity = training_process(state_dir, job_id)
    if pid and identity and process_identity(pid) == identity:
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while process_identity(pid) == identity and time.monotonic() < deadline:
            time.sleep(0.05)
        return pid
    return None


@pytest.fixture
def servers(tmp_path):
    """Start servers with ``servers(state_dir)``; all stopped, and stray trainings killed, at the end."""
    started: list[Server] = []

    def start(state_dir: Path | None = None, max_mb: int = 200) -> Server:
        server = Server(state_dir or tmp_path / "state", max_mb)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
    for state_dir in {s.state_dir for s in started}:
        if (state_dir / "jobs.sqlite3").exists():
            with sqlite3.connect(state_dir / "jobs.sqlite3") as con:
                ids = [r[0] for r in con.execute("SELECT id FROM jobs WHERE pid IS NOT NULL")]
            for job_id in ids:
                kill_training(state_dir, job_id)


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    """One server for the tests that do not train (limit 1 MB: the limits are reachable quickly)."""
    server = Server(tmp_path_factory.mktemp("svc") / "state", max_mb=1)
    yield server
    server.stop()


def new_model(server: Server, kind: str = "gray", **extra) -> str:
    r = server.client.post("/models", json={"name": "clothes", "kind": kind, **extra})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def upload_zip(server: Server, job_id: str, data: bytes, field: str = "zip") -> httpx.Response:
    return server.client.post(f"/models/{job_id}/images", files={field: ("data.zip", data, "application/zip")})


def wait_for(server: Server, job_id: str, states: tuple[str, ...], timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = server.client.get(f"/models/{job_id}").json()
        if job["state"] in states:
            return job
        time.sleep(0.25)
    log = server.client.get(f"/models/{job_id}/log").text
    raise AssertionError(f"job still {job['state']} after {timeout} s: {job}\n{log[-3000:]}")


def assert_error(r: httpx.Response, status: int, *words: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "status"} and body["status"] == status and "\n" not in body["error"]
    for word in words:
        assert word in body["error"], body["error"]


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------- units (no server)

def test_class_names_are_checked():
    assert jobs_images.check_name("  ankle boot ") == "ankle boot"
    assert jobs_images.check_name("Cafe\u0301") == "Caf\u00e9"  # NFC
    for bad in ("", "   ", "a\x00b", "bell\x07", "tab\there", "x" * 65, "rtl\u202eoverride", 7):
        with pytest.raises(JobError) as e:
            jobs_images.check_name(bad)
        assert e.value.status == 400


def test_zip_member_paths_never_climb_out():
    parts = jobs_images._member_parts
    assert parts("bag/1.png") == ["bag", "1.png"]
    assert parts("./bag//1.png") == ["bag", "1.png"]
    assert parts("../../evil.png") is None
    assert parts("bag/../../evil.png") is None
    assert parts("/etc/evil.png") is None
    assert parts("C:\\evil.png") is None
    assert parts("bag\\..\\..\\evil.png") is None


def test_fashion_conversion_makes_light_items_on_dark():
    # a dark item (a tall bar) on a light 120x80 photo background, off centre
    a = np.full((120, 80), 235, np.uint8)
    a[10:100, 50:70] = 30
    out = jobs_images._to_training_image(Image.fromarray(a).convert("RGB"), "fashion")
    x = np.asarray(out)
    assert out.mode == "L" and out.size == (28, 28)
    assert x[0, 0] < 40 and x[:, 14].max() > 200  # background dark, the item light and centred
    assert x[:, :6].max() < 60 and x[:, -6:].max() < 60  # the item was trimmed to its box and centred
    # an already light-on-dark 28x28 picture keeps its polarity
    y = np.asarray(jobs_images._to_training_image(Image.open(io.BytesIO(picture(0, 1))), "fashion"))
    assert y[0, 0] < 100 and y.max() >= 190
    rgb = jobs_images._to_training_image(Image.fromarray(a), "rgb")
    assert rgb.mode == "RGB" and rgb.size == (32, 32)


def test_small_uploads_get_batches_and_epochs_that_learn():
    flags = small_data_flags("mvnet-t", 60, None)
    assert flags[0] == "--batch-size" and 8 <= int(flags[1]) <= 15 and flags[2] == "--epochs" and int(flags[3]) >= 15
    assert small_data_flags("mvnet-t", 60, 4)[2:] == ["--epochs", "4"]  # the user's epochs win
    assert small_data_flags("mvnet-t", 60_000, None) == []  # the budget planner does it


# ----------------------------------------------------------------------------- requests (one server, no training)

def test_create_model_validates_and_ids_are_random(svc):
    a, b = new_model(svc), new_model(svc)
    assert a != b and re.fullmatch(r"[0-9a-f]{16}", a)
    job = svc.client.get(f"/models/{a}").json()
    assert job["state"] == "created" and job["kind"] == "gray" and job["base_model"] == "mvnet-t"
    assert job["classes"] == {} and job["created"]
    c = svc.client
    assert_error(c.post("/models", json={"name": "x", "kind": "fashon"}), 400, "did you mean 'fashion'")
    assert_error(c.post("/models", json={"name": "x", "kind": "rgb", "base_model": "mvnet-tt"}), 400,
                 "did you mean 'mvnet-t'")
    assert_error(c.post("/models", json={"name": "x", "kind": "rgb", "base_modle": "cnn2"}), 400,
                 "did you mean 'base_model'")
    assert_error(c.post("/models", json={"name": "bad\x1bname", "kind": "rgb"}), 400, "control character")
    assert_error(c.post("/models", json={"kind": "rgb"}), 400, "name")
    assert_error(c.post("/models", content=b"{not json", headers={"content-type": "application/json"}), 400, "JSON")


def test_unknown_id_is_404(svc):
    for job_id in ("0123456789abcdef", "nope", "ZZZZ"):
        assert_error(svc.client.get(f"/models/{job_id}"), 404, "no model")
        assert_error(svc.client.post(f"/models/{job_id}/train", json={}), 404)
        assert_error(svc.client.post(f"/models/{job_id}/predict", files={"file": ("a.png", picture(0, 0))}), 404)
        assert_error(upload_zip(svc, job_id, dataset_zip(1)), 404)


def test_hostile_zip_writes_nothing_outside_its_folder(svc, tmp_path):
    job_id = new_model(svc)
    outside = tmp_path / "outside"
    evil = {
        "../../evil.png": picture(0, 1),
        "T-shirt/../../../evil2.png": picture(0, 2),
        f"{outside}/evil3.png": picture(0, 3),  # an absolute path
        "C:\\evil4.png": picture(0, 4),
        "__MACOSX/T-shirt/._0.png": b"\x00\x05\x16\x07 resource fork",
        "bag/.DS_Store": b"\x00\x00\x00\x01Bud1",
        ".hidden/x.png": picture(0, 5),
        "bag/drawing.svg": b'<svg xmlns="http://www.w3.org/2000/svg"><rect width="9" height="9"/></svg>',
        "bag/notes.txt": b"not a picture",
        "bag/cut.png": picture(1, 6)[:60],  # truncated
        "loose.png": picture(1, 7),
        "bad\x07class/1.png": picture(1, 8),
    }
    r = upload_zip(svc, job_id, dataset_zip(3, evil))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["added"] == {name: 3 for name in CLASSES} and body["classes"] == body["added"]
    assert body["state"] == "uploading"
    reasons = {s["name"]: s["reason"] for s in body["skipped"]}
    for name in ("../../evil.png", "T-shirt/../../../evil2.png", f"{outside}/evil3.png", "C:\\evil4.png"):
        assert "unsafe path" in reasons[name]
    assert "SVG" in reasons["bag/drawing.svg"]
    assert "bag/notes.txt" in reasons and "bag/cut.png" in reasons
    assert "class folder" in reasons["loose.png"]
    assert "control character" in reasons["bad?class/1.png"]  # echoed with the control character replaced
    assert not any("MACOSX" in n or "DS_Store" in n or "hidden" in n for n in reasons)  # ignored, not listed
    assert body["skipped_count"] == len(body["skipped"]) == 9
    # the file system: nothing named evil anywhere, nothing outside models/<id>/images/<NNN>/<sha256>.png
    root = svc.state_dir.parent
    assert not outside.exists() and not any("evil" in p for p in files_under(root))
    assert not any("evil" in p for p in files_under(tmp_path))
    images = files_under(svc.state_dir / "models" / job_id)
    assert images and all(re.fullmatch(r"images/00[0-2]/[0-9a-f]{64}\.png", p) for p in images), images
    assert len(images) == 9
    again = upload_zip(svc, job_id, dataset_zip(3)).json()  # the same pictures again: stored once
    assert again["added"] == {} and again["duplicates"] == 9


def test_zip_bombs_and_non_zips_are_refused(svc):
    job_id = new_model(svc)
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:  # 40 MB of zeros in ~40 KB
        z.writestr("bag/bomb.png", b"\x00" * (40 << 20))
    assert len(bomb.getvalue()) < 200_000
    assert_error(upload_zip(svc, job_id, bomb.getvalue()), 400, "zip bomb")
    many = io.BytesIO()
    with zipfile.ZipFile(many, "w", zipfile.ZIP_DEFLATED) as z:  # each member small, together past 5 x 1 MB
        for i in range(4):
            z.writestr(f"bag/{i}.png", b"\x00" * (2 << 20))
    assert_error(upload_zip(svc, job_id, many.getvalue()), 400, "inflate")
    # the header lies about the size: counted while inflating anyway
    liar = bytearray(bomb.getvalue())
    for sig, off in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = liar.find(sig)
        liar[at + off:at + off + 4] = (100).to_bytes(4, "little")
    r = upload_zip(svc, job_id, bytes(liar))
    assert r.status_code in (200, 400), r.text
    assert r.status_code == 400 or r.json()["added"] == {}
    assert_error(upload_zip(svc, job_id, picture(0, 0)), 400, "zip")  # a PNG sent as the zip
    assert_error(svc.client.post(f"/models/{job_id}/images", content=b"PK\x03\x04 garbage",
                                 headers={"content-type": "application/zip"}), 400, "zip")
    assert_error(svc.client.post(f"/models/{job_id}/images", files={"file": ("a.png", picture(0, 0))}), 400,
                 "label")  # a picture without a label
    assert_error(svc.client.post(f"/models/{job_id}/images", content=b"x", headers={"content-type": "text/plain"}),
                 415)
    job = svc.client.get(f"/models/{job_id}").json()
    assert job["state"] == "created" and job["images"] == 0  # nothing from a refused upload was kept


def test_pictures_with_labels(svc):
    job_id = new_model(svc, kind="rgb")
    files = [("files", (f"{i}.png", picture(0, 50 + i), "image/png")) for i in range(3)]
    r = svc.client.post(f"/models/{job_id}/images", files=files, data={"label": "  T-shirt "})
    assert r.status_code == 200 and r.json()["added"] == {"T-shirt": 3}, r.text
    files = [("files", ("a.png", picture(1, 60))), ("files", ("b.svg", b"<svg></svg>")),
             ("files", ("c.png", picture(2, 61)))]
    r = svc.client.post(f"/models/{job_id}/images", files=files, data={"labels": ["bag", "bag", "ankle boot"]})
    body = r.json()
    assert body["added"] == {"bag": 1, "ankle boot": 1} and [s["name"] for s in body["skipped"]] == ["b.svg"]
    assert body["classes"] == {"T-shirt": 3, "bag": 1, "ankle boot": 1}
    png = Image.open(next((svc.state_dir / "models" / job_id / "images" / "000").glob("*.png")))
    assert png.mode == "RGB" and png.size == (32, 32)  # rgb kind: 32x32 colour
    assert_error(svc.client.post(f"/models/{job_id}/images", files=files, data={"labels": ["bag"]}), 400,
                 "labels for")
    assert_error(svc.client.post(f"/models/{job_id}/images", files=files, data={"label": "bell\x07"}), 400,
                 "control character")
    assert_error(svc.client.post(f"/models/{job_id}/images", files=files, data={"label": "y" * 65}), 400,
                 "characters")
    assert_error(svc.client.post(f"/models/{job_id}/images", files=files, data={"lable": "bag"}), 400,
                 "did you mean 'label'")
    # training needs 2 images in every class; predicting needs a trained model
    assert_error(svc.client.post(f"/models/{job_id}/train", json={}), 400, "at least 2 images", "bag")
    assert_error(svc.client.post(f"/models/{job_id}/predict", files={"file": ("a.png", picture(0, 0))}), 409,
                 "not trained")


def test_fashion_pictures_are_stored_light_on_dark(svc):
    job_id = new_model(svc, kind="fashion")
    photo = np.full((90, 160, 3), 240, np.uint8)  # a dark-blue item on a light product-photo background
    photo[20:70, 60:100] = (20, 30, 90)
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, "JPEG", quality=90)
    r = svc.client.post(f"/models/{job_id}/images", files={"file": ("shirt.jpg", buf.getvalue(), "image/jpeg")},
                        data={"label": "shirt"})
    assert r.json()["added"] == {"shirt": 1}, r.text
    stored = Image.open(next((svc.state_dir / "models" / job_id / "images" / "000").glob("*.png")))
    x = np.asarray(stored)
    assert stored.mode == "L" and stored.size == (28, 28)
    assert x[0, 0] < 30 and x[14, 14] > 200  # negated: background black, the item light and centred


def test_train_needs_two_classes_and_sane_settings(svc):
    job_id = new_model(svc)
    assert_error(svc.client.post(f"/models/{job_id}/train"), 400, "at least 2 classes", "no images")
    files = [("files", (f"{i}.png", picture(0, 70 + i))) for i in range(4)]
    svc.client.post(f"/models/{job_id}/images", files=files, data={"label": "bag"})
    assert_error(svc.client.post(f"/models/{job_id}/train", json={"budget": "20s"}), 400,
                 "at least 2 classes", "bag: 4")
    for settings, words in (({"budget": "2 weeks"}, ("budget",)), ({"budget": "1h"}, ("30m",)),
                            ({"budget": "1s"}, ("10s",)), ({"epochs": 0}, ("epochs",)),
                            ({"epochs": "3"}, ("epochs",)), ({"epoch": 3}, ("did you mean 'epochs'",))):
        assert_error(svc.client.post(f"/models/{job_id}/train", json=settings), 400, *words)
    assert svc.client.get(f"/models/{job_id}").json()["state"] == "uploading"


def test_body_limits_are_413(svc):
    job_id = new_model(svc)
    big = os.urandom(1_500_000)  # over the 1 MB limit of this server
    assert_error(upload_zip(svc, job_id, big), 413, "limit")
    assert_error(svc.client.post(f"/models/{job_id}/images", content=big,
                                 headers={"content-type": "application/zip"}), 413)

    def chunks():  # no Content-Length: counted while it streams in
        for _ in range(30):
            yield b"\x00" * 65536

    try:
        r = svc.client.post(f"/models/{job_id}/images", content=chunks(), headers={"content-type": "application/zip"})
    except httpx.TransportError:
        pass  # the server may close the connection before the client has sent everything
    else:
        assert_error(r, 413)
    assert svc.client.get(f"/models/{job_id}").json()["state"] == "created"


# ----------------------------------------------------------------------------- training, predicting, restarting

def test_train_poll_predict_and_survive_a_restart(servers, tmp_path):
    server = servers()
    job_id = new_model(server)
    extra = {"bag/drawing.svg": b'<svg xmlns="http://www.w3.org/2000/svg"/>'}
    r = upload_zip(server, job_id, dataset_zip(18, extra, wrapper="my-dataset/"))  # a zipped folder of folders
    assert r.json()["added"] == {name: 18 for name in CLASSES}, r.text
    assert [s["name"] for s in r.json()["skipped"]] == ["my-dataset/bag/drawing.svg"]
    files = [("files", (f"{i}.png", picture(2, 500 + i))) for i in range(2)]
    assert server.client.post(f"/models/{job_id}/images", files=files,
                              data={"label": "ankle boot"}).json()["classes"]["ankle boot"] == 20
    r = server.client.post(f"/models/{job_id}/train", json={"budget": "20s"})
    assert r.status_code == 202 and r.json()["state"] in ("queued", "training"), r.text
    assert_error(server.client.post(f"/models/{job_id}/train", json={}), 409, "already")
    assert_error(upload_zip(server, job_id, dataset_zip(1)), 409, "training ends")
    seen = set()
    deadline = time.monotonic() + 240
    while (job := server.client.get(f"/models/{job_id}").json())["state"] not in ("trained", "failed"):
        seen.add(job["state"])
        if job["state"] == "training":
            assert {"epoch", "epochs", "fraction"} <= set(job["progress"])
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    assert job["state"] == "trained", server.client.get(f"/models/{job_id}/log").text[-3000:]
    assert "training" in seen and "progress" not in job and "error" not in job
    assert job["metrics"]["val_accuracy"] == 1.0 and job["metrics"]["epochs"] >= 3
    assert "epoch 1/" in server.client.get(f"/models/{job_id}/log").text

    def top1(server: Server, k: int, seed: int) -> str:
        r = server.client.post(f"/models/{job_id}/predict", files={"file": (f"{k}.png", picture(k, seed))})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == job_id and body["version"].startswith("0.") and len(body["predictions"]) == 1
        assert len(body["predictions"][0]) == 3 and set(body["predictions"][0][0]) == {"label", "index", "score"}
        return body["predictions"][0][0]["label"]

    assert [top1(server, k, 9000 + k) for k in range(3)] == CLASSES
    b64 = base64.b64encode(picture(1, 9100)).decode()
    r = server.client.post(f"/models/{job_id}/predict?top_k=1", json={"images": [b64, "data:image/png;base64," + b64]})
    assert [p[0]["label"] for p in r.json()["predictions"]] == ["bag", "bag"] and len(r.json()["predictions"][0]) == 1
    assert_error(server.client.post(f"/models/{job_id}/predict", files={"file": ("x.svg", b"<svg></svg>")}), 415)
    assert_error(server.client.post(f"/models/{job_id}/predict", files={"file": ("x.png", picture(0, 1)[:80])}), 400)
    five = [("files", (f"{i}.png", picture(0, i))) for i in range(5)]
    assert_error(server.client.post(f"/models/{job_id}/predict", files=five), 400, "more than 4")
    assert_error(server.client.post(f"/models/{job_id}/predict?top_k=9", files={"file": ("a.png", picture(0, 1))}),
                 400, "top_k")
    # the model folder: the user's class names in model.json, the run's files beside the pictures
    model_dir = server.state_dir / "models" / job_id
    meta = json.loads((model_dir / "run" / "model.json").read_text())
    assert meta["classes"] == CLASSES and meta["class_folders"] == ["000", "001", "002"]
    with open(model_dir / "run" / "per_class.csv") as f:  # the report, rewritten with the user's names
        assert [line.split(",")[0] for line in f.read().splitlines()[1:4]] == CLASSES
    assert {"images", "run", "train.log"} <= {p.name for p in model_dir.iterdir()}
    # a restart (graceful) loses nothing: listed, same metrics, still predicts
    from minivision.serve.jobs import list_models_json

    listed = {j["id"]: j for j in list_models_json(server.state_dir)}
    assert listed[job_id]["state"] == "trained"
    server.stop()
    again = servers(server.state_dir)
    job2 = again.client.get(f"/models/{job_id}").json()
    assert job2["state"] == "trained" and job2["metrics"] == job["metrics"]
    assert [top1(again, k, 9200 + k) for k in range(3)] == CLASSES


def _start_long_training(server: Server, epochs: int, model: str = "mvnet-t") -> str:
    job_id = new_model(server, base_model=model)
    assert upload_zip(server, job_id, dataset_zip(20)).status_code == 200
    r = server.client.post(f"/models/{job_id}/train", json={"budget": "10m", "epochs": epochs})
    assert r.status_code == 202, r.text
    return job_id


def _wait_for_checkpoint(server: Server, job_id: str, timeout: float = 120) -> Path:
    run = server.state_dir / "models" / job_id / "run"
    deadline = time.monotonic() + timeout
    while not (run / "last.safetensors").exists():
        assert time.monotonic() < deadline, server.client.get(f"/models/{job_id}/log").text
        time.sleep(0.1)
    return run


@pytest.mark.slow
def test_hard_kill_after_a_checkpoint_resumes(servers):
    server = servers()
    job_id = _start_long_training(server, epochs=40)
    _wait_for_checkpoint(server, job_id)
    server.kill()  # the server and its training die together, as in a crash of the machine
    assert kill_training(server.state_dir, job_id) is not None
    again = servers(server.state_dir)
    assert "resumes from its checkpoint" in again.output()
    job = wait_for(again, job_id, ("trained", "failed"))
    log = again.client.get(f"/models/{job_id}/log").text
    assert job["state"] == "trained", log[-3000:]
    assert "resuming" in log and job["metrics"]["epochs"] == 40
    r = again.client.post(f"/models/{job_id}/predict", files={"file": ("a.png", picture(1, 77))})
    assert r.json()["predictions"][0][0]["label"] == "bag"


@pytest.mark.slow
def test_hard_kill_of_the_server_keeps_watching_its_training(servers):
    server = servers()
    job_id = _start_long_training(server, epochs=100)
    _wait_for_checkpoint(server, job_id)
    pid, identity = training_process(server.state_dir, job_id)
    server.kill()  # only the server: the training goes on
    assert process_identity(pid) == identity
    again = servers(server.state_dir)
    job = again.client.get(f"/models/{job_id}").json()
    if job["state"] == "training":  # still running when the new server started: watched, not started twice
        assert f"training process {pid} is still running" in again.output()
        assert training_process(again.state_dir, job_id)[0] == pid
    job = wait_for(again, job_id, ("trained", "failed"))
    log = again.client.get(f"/models/{job_id}/log").text
    assert job["state"] == "trained" and "resuming" not in log and log.count("=== minivision jobs") == 1, log[-3000:]


@pytest.mark.slow
def test_hard_kill_before_the_first_checkpoint_fails_with_the_reason(servers):
    server = servers()
    job_id = _start_long_training(server, epochs=40)
    wait_for(server, job_id, ("training",), timeout=30)
    deadline = time.monotonic() + 10
    while training_process(server.state_dir, job_id)[0] is None and time.monotonic() < deadline:
        time.sleep(0.02)  # the pid is recorded just after the process starts
    server.kill()
    kill_training(server.state_dir, job_id)  # within a second of starting: it is still importing torch
    run = server.state_dir / "models" / job_id / "run"
    if (run / "last.safetensors").exists():
        pytest.skip("the training wrote a checkpoint before it was killed (a very fast machine)")
    again = servers(server.state_dir)
    job = again.client.get(f"/models/{job_id}").json()
    assert job["state"] == "failed" and job["error"] == "the server stopped before the first checkpoint; train again"
    r = again.client.post(f"/models/{job_id}/train", json={"epochs": 3})  # and it can be trained again
    assert r.status_code == 202, r.text
    assert wait_for(again, job_id, ("trained", "failed"))["state"] == "trained"
    assert list((server.state_dir / "models" / job_id).glob("run*/model.json"))


@pytest.mark.slow
def test_graceful_shutdown_checkpoints_and_resumes(servers):
    server = servers()
    job_id = _start_long_training(server, epochs=60)
    _wait_for_checkpoint(server, job_id)
    pid, identity = training_process(server.state_dir, job_id)
    server.stop()  # SIGTERM: the router's lifespan stops the training with a checkpoint
    assert process_identity(pid) != identity  # the training did not outlive the server
    with sqlite3.connect(server.state_dir / "jobs.sqlite3") as con:
        assert con.execute("SELECT state, resume FROM jobs WHERE id = ?", (job_id,)).fetchone() == ("queued", 1)
    again = servers(server.state_dir)
    job = wait_for(again, job_id, ("trained", "failed"))
    assert job["state"] == "trained" and job["metrics"]["epochs"] == 60
    assert "resuming" in again.client.get(f"/models/{job_id}/log").text
