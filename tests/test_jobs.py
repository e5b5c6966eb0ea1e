"""Training jobs over HTTP (serve/jobs*.py), tested the way a user runs them: the shipped command
``python -m minivision serve RUN --jobs STATE_DIR --port 0`` in a subprocess (its URL read from the
first line it prints), httpx as the client, real training subprocesses, real restarts.

Crash recovery (jobs_runner: ``Runner._recover`` at start, ``Runner._finish`` when a training ends) is
tested in the default run, each restart rule by name. A crash is what it leaves on disk: a job row
in jobs.sqlite3 still marked ``training``, its run folder as the training left it, and the pid of a
process that is gone, still running, or by now another program. So a rule is tested either by a real
crash (``trained_job``: SIGKILL of a server and its training after a checkpoint) or by writing the
state directly and starting a real server on it, which is exactly what a restart after a crash is.
``after_a_crash`` is one such restart, of the real crash with written jobs beside it. The slow set
keeps two longer runs with real trainings only: a real training adopted and finishing, and a clean
shutdown in mid-training resumed to the end.

  * trained: served again after the restart -> test_train_poll_predict_and_survive_a_restart
  * training, checkpoint, process gone: resumed from the checkpoint (and counted) ->
    test_hard_kill_after_a_checkpoint_resumes
  * training, no checkpoint, process gone (or its pid reused): failed with the reason ->
    test_stopped_before_the_first_checkpoint_fails_with_the_reason
  * training, model.json written, process gone: trained -> test_finished_while_the_server_was_down_is_trained
  * model.json damaged: failed with the reason, not served -> test_damaged_model_json_fails_and_is_not_served
  * resumed MAX_AUTO_RESUMES times already: failed, not resumed -> test_a_crash_loop_is_not_resumed_for_ever
  * training, process still running: adopted, nothing else started; when it ends, an error line in
    train.log fails the job with that reason -> test_a_running_training_is_adopted_not_started_again
  * killed from outside: resumed MAX_AUTO_RESUMES times, then failed with the reason ->
    test_outside_kills_are_resumed_at_most_max_auto_resumes_times
  * the lock: a second server on the folder only serves; a clean shutdown stops the training and queues
    it -> test_a_second_server_only_serves_and_a_clean_stop_requeues

The pictures are made here: class k is a bright square in corner k of a dark 28x28 picture (as in
conftest.synthetic_images), which a tiny network separates in a few seconds of training.
"""

from __future__ import annotations

import base64
import io
import json
import os
import queue
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from minivision.config import TrainConfig
from minivision.fileio import read_json, write_json
from minivision.serve import jobs_images
from minivision.serve.jobs_runner import (
    FASHION_BACKBONE,
    MAX_AUTO_RESUMES,
    base_model_choices,
    process_identity,
    small_data_flags,
    start_flags,
    started_from,
)
from minivision.serve.jobs_store import JobError, Store
from minivision.train import fit

from .conftest import synthetic_dataset

CLASSES = ["T-shirt", "ankle boot", "bag"]  # user names with a space and a dash: folders are 000, 001, 002
                                            # (an upload numbers its classes in sorted folder-name order)
STARTUP_S = 240       # generous: other test runs share this machine's two cores
EPOCHS = 8            # of the real trainings: enough to learn the squares, and 7 epochs to spare after
                      # the first checkpoint, when the crash kills one
HEADER = "=== minivision jobs: "  # starts each training attempt's section of train.log
FAKE_TRAINING = """
import pathlib, sys, time
go = pathlib.Path(sys.argv[1])
while not go.exists():
    time.sleep(0.05)
sys.exit(int(sys.argv[2]))
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

@pytest.fixture(scope="module")
def served_run(tmp_path_factory) -> Path:
    """The RUN that ``minivision serve`` serves at /predict (a tiny cnn1 on synthetic data, one epoch); the
    jobs API beside it trains and serves its own models."""
    out = tmp_path_factory.mktemp("served")
    return fit(TrainConfig(model="cnn1", epochs=1, batch_size=32, out=str(out)),
               dataset=synthetic_dataset(n_train=64, n_test=32), log=lambda m: None, progress=False).run_dir


class Server:
    """``python -m minivision serve RUN --jobs STATE_DIR --port 0 ARGS``; stderr (the jobs' notes) in a file."""

    def __init__(self, run: Path, state_dir: Path, *args: str) -> None:
        self.state_dir = state_dir
        self.log = state_dir.parent / f"server-{state_dir.name}-{time.monotonic_ns()}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "minivision", "serve", str(run), "--jobs", str(state_dir), "--port", "0", *args]
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
                                         env=env, text=True)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(ln) for ln in self.proc.stdout], daemon=True).start()
        first = ""
        deadline = time.monotonic() + STARTUP_S
        while not first and time.monotonic() < deadline and self.proc.poll() is None:
            try:
                first = lines.get(timeout=0.2)
            except queue.Empty:
                pass
        if not (first.startswith("serving ") and " at http://127.0.0.1:" in first):
            self.kill()
            raise AssertionError(f"server did not start: {first!r}\n{self.output()[-3000:]}")
        url = first.split(" at ")[1].split()[0]
        self.port = int(url.rsplit(":", 1)[1])
        self.client = httpx.Client(base_url=url, timeout=60)
        while True:  # the first line comes before uvicorn listens and the jobs are recovered
            try:
                if self.client.get("/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.kill()
                raise AssertionError(f"server does not answer: {self.output()[-3000:]}")
            time.sleep(0.05)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs (a crash)."""
        if hasattr(self, "client"):
            self.client.close()
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM: uvicorn's graceful shutdown, the jobs router's lifespan exit included."""
        if hasattr(self, "client"):
            self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def job_row(state_dir: Path, job_id: str) -> dict:
    """The job's row as the database holds it (what the next server start reads)."""
    with sqlite3.connect(state_dir / "jobs.sqlite3") as con:
        con.row_factory = sqlite3.Row
        row = con.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return dict(row) if row else {}


def training_process(state_dir: Path, job_id: str) -> tuple[int | None, str | None]:
    """(pid, identity) the database holds for the job's training process."""
    row = job_row(state_dir, job_id)
    return row.get("pid"), row.get("pid_start")


def kill_training(state_dir: Path, job_id: str) -> int | None:
    """SIGKILL the job's training process, if the one recorded is still the one running (ours)."""
    pid, identity = training_process(state_dir, job_id)
    if pid and identity and process_identity(pid) == identity:
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while process_identity(pid) == identity and time.monotonic() < deadline:
            time.sleep(0.02)
        return pid
    return None


def parent_pid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rfind(")") + 2:].split()[1])


@pytest.fixture
def servers(served_run, tmp_path):
    """Start servers with ``servers(state_dir, *args)``; all stopped, and stray trainings killed, at the end."""
    started: list[Server] = []

    def start(state_dir: Path | None = None, *args: str) -> Server:
        server = Server(served_run, state_dir or tmp_path / "state", *args)
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
def svc(served_run, tmp_path_factory):
    """One server for the tests that do not train."""
    server = Server(served_run, tmp_path_factory.mktemp("svc") / "state")
    yield server
    server.stop()


@pytest.fixture
def processes():
    """Start helper processes with ``processes(code, *args)``; killed and reaped at the end."""
    started: list[subprocess.Popen] = []

    def start(code: str, *args: object) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdin=subprocess.DEVNULL)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def new_model(server: Server, kind: str = "gray", **extra) -> str:
    """A job training the tiny mvnet-t from scratch (unless ``extra`` names another ``base_model``): these
    tests are about the runner, and fine-tuning a backbone is tested on its own."""
    r = server.client.post("/models", json={"name": "clothes", "kind": kind, "base_model": "mvnet-t", **extra})
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
        time.sleep(0.1)
    log = server.client.get(f"/models/{job_id}/log").text
    raise AssertionError(f"job still {job['state']} after {timeout} s: {job}\n{log[-3000:]}\n{server.output()[-2000:]}")


def top1(server: Server, job_id: str, k: int, seed: int) -> str:
    r = server.client.post(f"/models/{job_id}/predict", files={"file": (f"{k}.png", picture(k, seed))})
    assert r.status_code == 200, r.text
    return r.json()["predictions"][0][0]["label"]


def assert_error(r: httpx.Response, status: int, *words: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "status"} and body["status"] == status and "\n" not in body["error"]
    for word in words:
        assert word in body["error"], body["error"]


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def raw_request(server: Server, head: bytes) -> tuple[int, dict]:
    """Send a request head (and no body) on a socket; (status, JSON body) of the answer, read until the
    server closes the connection."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, body = data.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), json.loads(body)


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


def test_small_uploads_are_planned_by_the_budget_planner_as_the_cli_does():
    # batches and length come from budget.plan_small_data (tests/test_budget.py), not from job flags
    assert small_data_flags("mvnet-t", 60, None) == [] and small_data_flags("mvnet-t", 60_000, None) == []
    assert small_data_flags("mvnet-t", 60, 4) == ["--epochs", "4"]  # the user's epochs win


def test_base_model_says_where_a_job_starts():
    assert start_flags("auto", "fashion") == ["--pretrained", FASHION_BACKBONE] == ["--pretrained", "mvnet-fashion"]
    assert start_flags("auto", "gray") == start_flags("auto", "rgb") == []  # the training's automatic choice
    assert start_flags("none", "fashion") == ["--pretrained", "none"]
    assert start_flags("mvnet-cifar10", "rgb") == ["--pretrained", "mvnet-cifar10"]
    assert start_flags("mvnet-t", "fashion") == ["--model", "mvnet-t"]  # jobs stored before backbones
    assert start_flags("efficientnet-lite0", "gray") == ["--pretrained", "efficientnet-lite0"]  # the backbone
    choices = base_model_choices()
    assert choices[:2] == ["auto", "none"] and len(choices) == len(set(choices))
    assert {"mvnet-fashion", "mvnet-cifar10", "efficientnet-lite0", "mvnet-t", "cnn2"} <= set(choices)


def test_started_from_reads_the_runs_model_json(tmp_path):
    assert started_from(None) is None and started_from(tmp_path) is None  # no model.json yet
    write_json(tmp_path / "model.json", {"pretrained": {"backbone": "mvnet-fashion", "from": None,
                                                        "why": "named by --pretrained", "phases": []}})
    assert started_from(tmp_path) == {"backbone": "mvnet-fashion", "from": None, "why": "named by --pretrained"}
    write_json(tmp_path / "model.json", {"architecture": {}})
    assert started_from(tmp_path)["backbone"] is None


def _fashion_zip(classes: dict[int, str], per_class: int, offset: int) -> tuple[bytes, list[tuple[str, bytes]]]:
    """Real Fashion-MNIST test pictures (PNG) of ``classes`` (index -> the user's name): a zip of
    ``per_class`` each, and 3 more each (name, PNG) held out for predict."""
    from minivision.data import load_dataset

    test = load_dataset("fashion-mnist", test_only=True).test
    x, y = test.x.numpy()[:, 0], test.y.numpy()
    buf, held = io.BytesIO(), []
    with zipfile.ZipFile(buf, "w") as z:
        for k, name in classes.items():
            rows = np.flatnonzero(y == k)[offset:offset + per_class + 3]
            for i, row in enumerate(rows):
                png = io.BytesIO()
                Image.fromarray(x[row]).save(png, "PNG")
                if i < per_class:
                    z.writestr(f"{name}/{row}.png", png.getvalue())
                else:
                    held.append((name, png.getvalue()))
    return buf.getvalue(), held


@pytest.mark.needs_fashion_mnist
def test_a_fashion_job_fine_tunes_from_mvnet_fashion_by_default(servers):
    """A small real upload of the fashion kind, with no base_model: trained from our Fashion-MNIST backbone,
    and the job says so."""
    server = servers()
    job_id = server.client.post("/models", json={"name": "shop", "kind": "fashion"}).json()["id"]
    data, held = _fashion_zip({1: "trousers", 7: "sneakers", 8: "bags"}, per_class=12, offset=500)
    assert upload_zip(server, job_id, data).status_code == 200
    r = server.client.post(f"/models/{job_id}/train", json={"budget": "1m", "epochs": 2})
    assert r.status_code == 202, r.text
    job = wait_for(server, job_id, ("trained", "failed"), timeout=400)
    log_text = server.client.get(f"/models/{job_id}/log").text
    assert job["state"] == "trained", log_text[-3000:]
    assert job["base_model"] == "auto" and job["started_from"]["backbone"] == "mvnet-fashion", job
    assert "--pretrained mvnet-fashion" in log_text and "mvnet-fashion (Fashion-MNIST" in log_text
    right = 0
    for name, png in held:
        answer = server.client.post(f"/models/{job_id}/predict", files={"file": ("x.png", png)}).json()
        right += answer["predictions"][0][0]["label"] == name
    assert right >= len(held) - 2, (right, len(held))


# ----------------------------------------------------------------------------- requests (one server, no training)

def test_create_model_validates_and_ids_are_random(svc):
    a, b = new_model(svc), new_model(svc)
    assert a != b and re.fullmatch(r"[0-9a-f]{16}", a)
    job = svc.client.get(f"/models/{a}").json()
    assert job["state"] == "created" and job["kind"] == "gray" and job["base_model"] == "mvnet-t"
    assert job["classes"] == {} and job["created"]
    c = svc.client
    r = c.post("/models", json={"name": "x", "kind": "fashion"})  # no base_model: the best backbone for it
    assert r.status_code == 201 and r.json()["base_model"] == "auto", r.text
    for base in ("none", "mvnet-cifar10", "efficientnet-lite0"):
        assert c.post("/models", json={"name": "x", "kind": "rgb", "base_model": base}).json()["base_model"] == base
    assert_error(c.post("/models", json={"name": "x", "kind": "rgb", "base_model": "mvnet-fashon"}), 400,
                 "did you mean 'mvnet-fashion'")
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


def zip_of(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


@pytest.mark.parametrize("wrapper", ["", "my-dataset/"])
def test_an_upload_numbers_classes_by_sorted_folder_and_reads_classes_json(wrapper):
    # members in the order a zip tool may store them; classes.json names a folder as the folder reader does
    members = {f"{wrapper}zeta/0.png": picture(0, 1), f"{wrapper}Alpha/1.png": picture(1, 2),
               f"{wrapper}mid/2.png": picture(2, 3), f"{wrapper}classes.json": b'{"mid": "T-shirt/top"}'}
    batch = jobs_images.Batch()
    jobs_images.read_zip(io.BytesIO(zip_of(members)), "gray", 10**8, batch)
    assert batch.labels() == ["Alpha", "T-shirt/top", "zeta"] and batch.skipped == []


@pytest.mark.parametrize("names, words", [(b"[1, 2]", "expected a JSON object"), (b"{not json", "JSON object"),
                                          (b'{"nope": "x"}', "no class folder named 'nope'"),
                                          (b'{"a": "bell\\u0007"}', "control character")])
def test_a_bad_classes_json_in_a_zip_is_a_400(names, words):
    with pytest.raises(JobError) as e:
        jobs_images.read_zip(io.BytesIO(zip_of({"a/0.png": picture(0, 1), "classes.json": names})), "gray", 10**8,
                             jobs_images.Batch())
    assert e.value.status == 400 and words in e.value.message


def test_an_upload_adds_its_new_classes_after_the_jobs_earlier_ones_sorted(svc):
    job_id = new_model(svc)
    r = svc.client.post(f"/models/{job_id}/images", files=[("files", ("a.png", picture(0, 70)))],
                        data={"label": "zeta"})
    assert r.status_code == 200, r.text
    r = upload_zip(svc, job_id, zip_of({"y/0.png": picture(1, 71), "b/1.png": picture(2, 72),
                                        "zeta/2.png": picture(0, 73), "classes.json": b'{"b": "Bag"}'}))
    assert r.status_code == 200, r.text
    assert list(r.json()["classes"]) == ["zeta", "Bag", "y"]  # the earlier class keeps its number
    assert list(svc.client.get(f"/models/{job_id}").json()["classes"]) == ["zeta", "Bag", "y"]


def test_a_trained_job_scores_a_folder_of_its_classes_by_name(trained_job, tmp_path, capsys):
    """``minivision evaluate JOB_RUN --data FOLDER``: folders named in another case sort in another order than
    the job's classes (T-shirt, ankle boot, bag); matched by name they score as the model predicts."""
    from minivision.cli import main

    run = trained_job["state_dir"] / "models" / trained_job["id"] / "run"
    names = {0: "t-shirt", 1: "Ankle boot", 2: "bag"}  # sorted: Ankle boot, bag, t-shirt
    for k, name in names.items():
        (tmp_path / "eval" / name).mkdir(parents=True)
        for i in range(6):
            (tmp_path / "eval" / name / f"{i}.png").write_bytes(picture(k, 7000 + 10 * k + i))
    assert main(["evaluate", str(run), "--data", str(tmp_path / "eval"), "--device", "cpu", "--json"]) == 0
    out = capsys.readouterr()
    m = json.loads(out.out)
    assert m["n"] == 18 and m["accuracy"] == 1.0 and "t-shirt -> T-shirt" in out.err


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
    # members whose headers add up to more than the upload limit x INFLATE_FACTOR (5 x 200 MB): refused
    # before one is inflated (the sizes are written into the headers: 1 GB of zeros takes a while to zip)
    many = io.BytesIO()
    with zipfile.ZipFile(many, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(40):
            z.writestr(f"bag/{i}.png", b"\x00")
    many = bytearray(many.getvalue())
    at = many.find(b"PK\x01\x02")
    while at >= 0:  # each central-directory entry: uncompressed size at offset 24
        many[at + 24:at + 28] = (30 << 20).to_bytes(4, "little")
        at = many.find(b"PK\x01\x02", at + 4)
    assert_error(upload_zip(svc, job_id, bytes(many)), 400, "inflate to 1258 MB", "at most 1000 MB")
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


def test_uploaded_files_are_closed_after_the_request(served_run, tmp_path, monkeypatch):
    """Each upload's spooled temporary files are closed by the service, so Python never prints
    'Unclosed file ...' in the server's output. The server shows ResourceWarnings here (Python hides
    them by default), and one picture is over the 1 MB at which Starlette spools an upload to disk."""
    monkeypatch.setenv("PYTHONWARNINGS", "always::ResourceWarning")
    server = Server(served_run, tmp_path / "state")
    try:
        job_id = new_model(server, kind="rgb")
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (700, 700, 3), dtype=np.uint8)).save(buf, "PNG")
        big = buf.getvalue()
        assert len(big) > 1 << 20
        files = [("files", ("big.png", big, "image/png")), ("files", ("small.png", picture(0, 80), "image/png"))]
        r = server.client.post(f"/models/{job_id}/images", files=files, data={"label": "bag"})
        assert r.status_code == 200, r.text
        zipped = zip_of({"coat/0.png": big})
        assert server.client.post(f"/models/{job_id}/images", files={"zip": ("d.zip", zipped)}).status_code == 200
        r = server.client.post(f"/models/{job_id}/images", files=files, data={"labels": ["bag"]})
        assert r.status_code == 400  # a refused upload closes its files too
        for _ in range(3):  # later requests: the earlier requests' objects are gone by then
            assert server.client.get(f"/models/{job_id}").status_code == 200
        server.stop()
        assert "nclosed file" not in server.output(), server.output()[-2000:]
    finally:
        server.kill()


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
    assert_error(svc.client.post(f"/models/{job_id}/train", json={}), 400, "at least 2 images", "ankle boot")
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
    """``serve`` takes jobs uploads of up to 200 MB (its /predict limit, --max-body-mb, is 10 MB)."""
    job_id = new_model(svc)
    big = 200_000_001
    status, body = raw_request(svc, (f"POST /models/{job_id}/images HTTP/1.1\r\nHost: x\r\nContent-Type: "
                                     f"application/zip\r\nContent-Length: {big}\r\n\r\n").encode())
    assert status == 413 and body == {"error": "request body is over the 200 MB limit", "status": 413}
    r = svc.client.post(f"/models/{job_id}/images", content=os.urandom(10_500_000),  # over --max-body-mb: fine here
                        headers={"content-type": "application/zip"})
    assert_error(r, 400, "not a readable zip")

    def chunks():  # no Content-Length: counted while it streams in
        for _ in range(200_000_001 // 65536 + 2):
            yield b"\x00" * 65536

    try:
        r = svc.client.post(f"/models/{job_id}/images", content=chunks(), headers={"content-type": "application/zip"})
    except httpx.TransportError:
        pass  # the server may close the connection before the client has sent everything
    else:
        assert_error(r, 413)
    assert svc.client.get(f"/models/{job_id}").json()["state"] == "created"


# ----------------------------------------------------------------------------- training, predicting, restarting

@pytest.fixture(scope="module")
def trained_job(served_run, tmp_path_factory) -> dict:
    """A server's life until a crash. It trains a model through the API, the way a client does (what the
    client saw on the way is recorded), then starts a second training, and dies (SIGKILL, with that
    training) after the second training's first checkpoint, as in a crash of the machine. The restart
    is ``after_a_crash``; the restart tests copy the trained model's pictures and run folder."""
    state_dir = tmp_path_factory.mktemp("trained") / "state"
    server = Server(served_run, state_dir)
    try:
        seen: dict = {"state_dir": state_dir, "states": set(), "progress_keys": set()}
        seen["id"] = new_model(server)
        job_id = seen["id"]
        extra = {"bag/drawing.svg": b'<svg xmlns="http://www.w3.org/2000/svg"/>'}
        seen["zip"] = upload_zip(server, job_id, dataset_zip(18, extra, wrapper="my-dataset/")).json()
        files = [("files", (f"{i}.png", picture(CLASSES.index("ankle boot"), 500 + i))) for i in range(2)]
        seen["pictures"] = server.client.post(f"/models/{job_id}/images", files=files,
                                              data={"label": "ankle boot"}).json()
        seen["train"] = server.client.post(f"/models/{job_id}/train", json={"budget": "20s", "epochs": EPOCHS})
        seen["train_again"] = server.client.post(f"/models/{job_id}/train", json={})
        seen["upload_while_training"] = upload_zip(server, job_id, dataset_zip(1))
        deadline = time.monotonic() + 300
        while (job := server.client.get(f"/models/{job_id}").json())["state"] not in ("trained", "failed"):
            seen["states"].add(job["state"])
            if job["state"] == "training":
                seen["progress_keys"] |= set(job["progress"])
            assert time.monotonic() < deadline, job
            time.sleep(0.1)
        seen["job"] = job
        seen["log"] = server.client.get(f"/models/{job_id}/log").text
        seen["listed"] = server.client.get("/models").json()
        # the crash: a second training killed together with its server after its first checkpoint
        seen["killed"] = killed = _start_training(server, epochs=EPOCHS)
        run = _wait_for_checkpoint(server, killed)  # written at the end of epoch 1
        server.kill()
        assert kill_training(state_dir, killed) is not None
        assert not (run / "model.json").exists()
    finally:
        server.kill()
        for job_id in {seen.get("id"), seen.get("killed")} - {None}:
            kill_training(state_dir, job_id)
    return seen


def test_train_poll_predict_and_survive_a_restart(trained_job, after_a_crash):
    seen, job_id = trained_job, trained_job["id"]
    assert seen["zip"]["added"] == {name: 18 for name in CLASSES}, seen["zip"]
    assert [s["name"] for s in seen["zip"]["skipped"]] == ["my-dataset/bag/drawing.svg"]
    assert seen["pictures"]["classes"]["ankle boot"] == 20
    r = seen["train"]
    assert r.status_code == 202 and r.json()["state"] in ("queued", "training"), r.text
    assert_error(seen["train_again"], 409, "already")
    assert_error(seen["upload_while_training"], 409, "training ends")
    job = seen["job"]
    assert job["state"] == "trained", seen["log"][-3000:]
    assert "training" in seen["states"] and {"epoch", "epochs", "fraction"} <= seen["progress_keys"]
    assert "progress" not in job and "error" not in job
    assert job["metrics"]["val_accuracy"] == 1.0 and job["metrics"]["epochs"] == EPOCHS
    assert "epoch 1/" in seen["log"] and seen["log"].count(HEADER) == 1
    assert {j["id"]: j["state"] for j in seen["listed"]["jobs"]} == {job_id: "trained"}  # the app's GET /models
    # the model folder: the user's class names in model.json, the run's files beside the pictures
    model_dir = seen["state_dir"] / "models" / job_id
    meta = json.loads((model_dir / "run" / "model.json").read_text())
    assert meta["classes"] == CLASSES and "class_folders" not in meta  # named at training, from classes.json
    assert read_json(model_dir / "images" / "classes.json") == dict(zip(["000", "001", "002"], CLASSES, strict=True))
    with open(model_dir / "run" / "per_class.csv") as f:  # the report training wrote names them too
        assert [line.split(",")[0] for line in f.read().splitlines()[1:4]] == CLASSES
    assert seen["log"].count("report: ") == 1, seen["log"]  # training's own report; no second pass rewrote it
    assert {"images", "run", "train.log"} <= {p.name for p in model_dir.iterdir()}

    # after the crash that ended trained_job's server, the restarted one serves the model as it was (same
    # metrics) and predicts
    server = after_a_crash["server"]
    again = server.client.get(f"/models/{job_id}").json()
    assert again["state"] == "trained" and again["metrics"] == job["metrics"]
    assert job_id not in server.output()  # nothing to recover

    def predictions(r: httpx.Response) -> list:
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == job_id and body["version"].startswith("0.") and len(body["predictions"]) >= 1
        return body["predictions"]

    assert [top1(server, job_id, k, 9000 + k) for k in range(3)] == CLASSES
    p = predictions(server.client.post(f"/models/{job_id}/predict", files={"file": ("0.png", picture(0, 9100))}))
    assert len(p[0]) == 3 and set(p[0][0]) == {"label", "index", "score"}
    b64 = base64.b64encode(picture(1, 9100)).decode()
    p = predictions(server.client.post(f"/models/{job_id}/predict?top_k=1",
                                       json={"images": [b64, "data:image/png;base64," + b64]}))
    assert [x[0]["label"] for x in p] == [CLASSES[1]] * 2 and len(p[0]) == 1
    assert_error(server.client.post(f"/models/{job_id}/predict", files={"file": ("x.svg", b"<svg></svg>")}), 415)
    assert_error(server.client.post(f"/models/{job_id}/predict", files={"file": ("x.png", picture(0, 1)[:80])}), 400)
    many = [("files", (f"{i}.png", picture(0, i))) for i in range(17)]  # serve's --max-files default: 16
    assert_error(server.client.post(f"/models/{job_id}/predict", files=many), 400, "more than 16")
    assert_error(server.client.post(f"/models/{job_id}/predict?top_k=9", files={"file": ("a.png", picture(0, 1))}),
                 400, "top_k")


def _start_training(server: Server, epochs: int, per_class: int = 20) -> str:
    job_id = new_model(server)
    assert upload_zip(server, job_id, dataset_zip(per_class)).status_code == 200
    r = server.client.post(f"/models/{job_id}/train", json={"budget": "10m", "epochs": epochs})
    assert r.status_code == 202, r.text
    return job_id


def _wait_for_checkpoint(server: Server, job_id: str, timeout: float = 120) -> Path:
    run = server.state_dir / "models" / job_id / "run"
    deadline = time.monotonic() + timeout
    while not (run / "last.safetensors").exists():
        assert time.monotonic() < deadline, server.client.get(f"/models/{job_id}/log").text
        time.sleep(0.02)
    return run


# ----------------------------------------------------------------------------- restarts from a crash's state on disk

def gone_process() -> tuple[int, str]:
    """(pid, identity) of a process that ran and is gone: what the database holds after a crash."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], stdin=subprocess.DEVNULL)
    identity = process_identity(proc.pid)
    proc.kill()
    proc.wait(10)
    assert identity and process_identity(proc.pid) is None
    return proc.pid, identity


def as_an_older_training_wrote_it(model_json: Path) -> None:
    """model.json as a training started before the pictures' folder carried classes.json wrote it: classes
    named by folder (000, 001, ...), which the server renames when it takes the model in."""
    meta = read_json(model_json)
    assert meta["classes"] == CLASSES and "class_folders" not in meta  # a training now names them itself
    meta["classes"] = [jobs_images.class_folder(i) for i in range(len(CLASSES))]
    write_json(model_json, meta)


def crashed_job(state_dir: Path, trained: dict, run_files: tuple[str, ...], *, state: str = "training",
                pid: int | None = None, pid_start: str | None = None, attempts: int = 0,
                resume: int = 0) -> tuple[str, Path]:
    """Write what a server that died while a job trained leaves behind: the job's row in jobs.sqlite3
    (``state``, run folder ``run``, the training's pid and start time), and its folder: the pictures and
    train.log of ``trained`` (the module's trained job) and a run folder holding ``run_files`` of its run.
    Returns (job id, run folder)."""
    store = Store(state_dir)
    try:
        job_id = store.create("clothes", "gray", "mvnet-t")["id"]
        src, dst = trained["state_dir"] / "models" / trained["id"], store.model_dir(job_id)
        shutil.copytree(src / "images", dst / "images")
        shutil.copy2(src / "train.log", dst / "train.log")
        (dst / "run").mkdir()
        for name in run_files:
            shutil.copy2(src / "run" / name, dst / "run" / name)
        if "model.json" in run_files:
            as_an_older_training_wrote_it(dst / "run" / "model.json")
        store.update(job_id, state=state, classes=CLASSES, budget="2m", epochs=None, run_dir="run", pid=pid,
                     pid_start=pid_start, attempts=attempts, resume=resume, queued_at=time.time(),
                     log_offset=(dst / "train.log").stat().st_size,
                     progress={"epoch": 0, "epochs": None, "fraction": 0.0} if state == "training" else None)
    finally:
        store.close()
    return job_id, dst / "run"


@pytest.fixture(scope="module")
def after_a_crash(trained_job, served_run) -> dict:
    """The restart after ``trained_job``'s crash. Beside its trained job and the training it killed, jobs
    are written as crashes at other moments leave them (copies of the trained job's pictures and run
    files); then a real server starts on the folder. Returns {"server": it, case: job id}."""
    state_dir, pid, identity = trained_job["state_dir"], *gone_process()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], stdin=subprocess.DEVNULL)
    files = ("args.yaml", "last.safetensors", "model.safetensors", "model.json")
    jobs = {
        # the CLI writes args.yaml first and its first checkpoint after one epoch; the training process is
        # gone, or its pid now belongs to another program (alive, but not started when the training was)
        "gone": crashed_job(state_dir, trained_job, ("args.yaml",), pid=pid, pid_start=identity),
        "reused": crashed_job(state_dir, trained_job, ("args.yaml",), pid=other.pid,
                              pid_start=process_identity(os.getpid())),  # started seconds earlier
        "finished": crashed_job(state_dir, trained_job, files, pid=pid, pid_start=identity),
        "cut": crashed_job(state_dir, trained_job, files, pid=pid, pid_start=identity),
        "alien": crashed_job(state_dir, trained_job, files, pid=pid, pid_start=identity),
        # resumed MAX_AUTO_RESUMES times already (crashes or kills): a crash loop
        "spent": crashed_job(state_dir, trained_job, ("args.yaml", "last.safetensors"), pid=pid,
                             pid_start=identity, attempts=MAX_AUTO_RESUMES),
    }
    cut_json = jobs["cut"][1] / "model.json"
    cut_json.write_bytes(cut_json.read_bytes()[:60])  # cut short
    (jobs["alien"][1] / "model.json").write_text("[1, 2, 3]\n")  # JSON, but no model description
    ids = {case: job_id for case, (job_id, _) in jobs.items()}
    try:
        server = Server(served_run, state_dir)
        yield {"server": server, "killed": trained_job["killed"], "other": other,
               "attempts_of_killed": job_row(state_dir, trained_job["killed"])["attempts"], **ids}
        server.stop()
    finally:
        for job_id in (*ids.values(), trained_job["killed"]):
            kill_training(state_dir, job_id)
        other.kill()
        other.wait(10)


def test_hard_kill_after_a_checkpoint_resumes(after_a_crash):
    server, job_id = after_a_crash["server"], after_a_crash["killed"]
    assert f"{job_id}: resumes from its checkpoint in run" in server.output()
    assert after_a_crash["attempts_of_killed"] == 1  # counted towards MAX_AUTO_RESUMES
    job = wait_for(server, job_id, ("trained", "failed"))
    log = server.client.get(f"/models/{job_id}/log").text
    assert job["state"] == "trained", log[-3000:]
    assert log.count(HEADER) == 2 and "--resume" in log.split(HEADER)[2].splitlines()[0]
    assert re.search(r"^resuming .* at epoch \d+", log, re.M) and job["metrics"]["epochs"] == EPOCHS
    assert job_row(server.state_dir, job_id)["attempts"] == 0  # trained: the count starts again
    assert top1(server, job_id, 1, 77) == CLASSES[1]


def test_stopped_before_the_first_checkpoint_fails_with_the_reason(after_a_crash):
    server = after_a_crash["server"]
    reason = "the server stopped before the first checkpoint; train again"
    assert after_a_crash["other"].poll() is None  # the program that has the reused pid was left alone
    for job_id in (after_a_crash["gone"], after_a_crash["reused"]):
        job = server.client.get(f"/models/{job_id}").json()
        assert job["state"] == "failed" and job["error"] == reason, job
        assert f"{job_id}: failed (the server stopped before the first checkpoint)" in server.output()
        assert_error(server.client.post(f"/models/{job_id}/predict", files={"file": ("a.png", picture(0, 1))}),
                     409, "not trained")
    job_id = after_a_crash["gone"]
    r = server.client.post(f"/models/{job_id}/train", json={"epochs": 3})  # and it can be trained again
    assert r.status_code == 202 and r.json()["state"] in ("queued", "training"), r.text
    deadline = time.monotonic() + 300  # after the resumed training of test_hard_kill_...: one at a time
    while not kill_training(server.state_dir, job_id):  # started: that is all this test needs
        assert time.monotonic() < deadline, server.client.get(f"/models/{job_id}").json()
        time.sleep(0.02)
    log = server.client.get(f"/models/{job_id}/log").text
    assert log.count(HEADER) == 2 and "--resume" not in log.split(HEADER)[2].splitlines()[0]  # from the start


def test_finished_while_the_server_was_down_is_trained(trained_job, after_a_crash):
    server, job_id = after_a_crash["server"], after_a_crash["finished"]
    assert f"{job_id}: finished while the server was down; trained" in server.output()
    job = server.client.get(f"/models/{job_id}").json()
    assert job["state"] == "trained" and job["metrics"] == trained_job["job"]["metrics"], job
    run = server.state_dir / "models" / job_id / "run"
    assert read_json(run / "model.json")["classes"] == CLASSES  # the user's names, as a normal end gives
    assert job_row(server.state_dir, job_id)["pid"] is None
    assert [top1(server, job_id, k, 9300 + k) for k in range(3)] == CLASSES


def test_damaged_model_json_fails_and_is_not_served(after_a_crash):
    server = after_a_crash["server"]
    for job_id, why in ((after_a_crash["cut"], "not valid JSON"), (after_a_crash["alien"], "not a model description")):
        job = server.client.get(f"/models/{job_id}").json()
        assert job["state"] == "failed" and "metrics" not in job, job
        assert job["error"].startswith(f"training finished but its model.json is unreadable ({why}"), job
        assert job["error"].endswith("train again") and str(server.state_dir) not in job["error"]  # no server path
        assert_error(server.client.post(f"/models/{job_id}/predict", files={"file": ("a.png", picture(0, 1))}),
                     409, "not trained")


def test_a_crash_loop_is_not_resumed_for_ever(after_a_crash):
    """Crashes count like outside kills: a training resumed MAX_AUTO_RESUMES times already (say it took
    its server down each time) is not resumed at the next start but fails with the reason."""
    server, job_id = after_a_crash["server"], after_a_crash["spent"]
    job = server.client.get(f"/models/{job_id}").json()
    assert job["state"] == "failed", job
    assert job["error"].startswith(f"training was interrupted {MAX_AUTO_RESUMES + 1} times before it finished")
    assert f"see GET /models/{job_id}/log" in job["error"]
    assert f"{job_id}: failed (interrupted {MAX_AUTO_RESUMES + 1} times)" in server.output()
    log = server.client.get(f"/models/{job_id}/log").text
    assert log.count(HEADER) == 1  # the copied first training's: nothing was started


def test_a_running_training_is_adopted_not_started_again(trained_job, servers, processes, tmp_path):
    """The server died, its training did not (its own session): the new server watches that process,
    shows its progress from train.log, starts nothing else, and when the process ends judges it by what
    it left (here an error line: failed with that reason)."""
    state_dir = tmp_path / "state"
    go = tmp_path / "go"
    training = processes(FAKE_TRAINING, go, 1)  # stands in for `minivision train`: runs until told to stop
    job_id, run = crashed_job(state_dir, trained_job, ("args.yaml", "last.safetensors"), pid=training.pid,
                              pid_start=process_identity(training.pid))
    log_path = run.parent / "train.log"
    with open(log_path, "a") as f:
        f.write(f"\n{HEADER}2030-01-01 00:00:00: python -m minivision train ...\nepoch 1/30  train loss 1.0\n")
    # what the training's ProgressFile listener writes as it goes
    write_json(run / "progress.json", {"state": "training", "epoch": 4, "epochs": 30, "step": 40, "total_steps": 300,
                                       "fraction": round(40 / 300, 4), "last": None})
    server = servers(state_dir)
    assert f"{job_id}: training process {training.pid} is still running; watching it" in server.output()
    deadline = time.monotonic() + 30
    while (job := server.client.get(f"/models/{job_id}").json())["progress"]["epoch"] != 4:  # from progress.json
        assert job["state"] == "training" and time.monotonic() < deadline, job
        time.sleep(0.1)
    assert job["progress"] == {"epoch": 4, "epochs": 30, "step": 40, "total_steps": 300, "fraction": 0.1333}
    time.sleep(1.5)  # a few of the runner's polls: it must not start a training of its own meanwhile
    assert server.client.get(f"/models/{job_id}").json()["state"] == "training"
    assert training_process(state_dir, job_id) == (training.pid, process_identity(training.pid))
    assert log_path.read_text().count(HEADER) == 2  # the copied first training's and the adopted one's
    with open(log_path, "a") as f:  # the training ends with an error (it has a checkpoint: not resumed)
        f.write("epoch 5/30  train loss 0.4\nerror: no space left on device while writing best.safetensors\n")
    go.touch()
    assert training.wait(30) == 1
    job = wait_for(server, job_id, ("failed", "trained", "queued"), timeout=60)
    assert job["state"] == "failed" and job["error"] == "no space left on device while writing best.safetensors"
    assert log_path.read_text().count(HEADER) == 2 and job_row(state_dir, job_id)["pid"] is None


def test_outside_kills_are_resumed_at_most_max_auto_resumes_times(trained_job, servers, tmp_path):
    """A training killed from outside (the OOM killer, a user's kill) is resumed from its checkpoint
    MAX_AUTO_RESUMES times; killed once more, the job fails with the reason."""
    state_dir = tmp_path / "state"
    # queued to resume, as a clean shutdown leaves a training it stopped at a checkpoint
    job_id, run = crashed_job(state_dir, trained_job, ("args.yaml", "last.safetensors"), state="queued", resume=1)
    server = servers(state_dir)
    killed: list[tuple[int, str]] = []
    for _ in range(MAX_AUTO_RESUMES + 1):
        deadline = time.monotonic() + 60
        while True:  # each start of `minivision train --resume`: killed as soon as the database names it
            row = job_row(state_dir, job_id)
            assert row["state"] != "failed", f"failed after {len(killed)} kills: {row['error']}"
            if row["pid"] and row["pid_start"] and (row["pid"], row["pid_start"]) not in killed:
                break
            assert time.monotonic() < deadline, (row, server.output()[-2000:])
            time.sleep(0.02)
        assert kill_training(state_dir, job_id) == row["pid"]
        killed.append((row["pid"], row["pid_start"]))
    job = wait_for(server, job_id, ("failed", "trained"), timeout=60)
    assert job["state"] == "failed", job
    assert job["error"] == f"training stopped without a model (killed by SIGKILL); see GET /models/{job_id}/log"
    starts = (run.parent / "train.log").read_text().split(HEADER)[2:]  # after the copied first training
    assert len(starts) == MAX_AUTO_RESUMES + 1 and all("--resume" in s.splitlines()[0] for s in starts)
    time.sleep(1.0)  # and nothing starts again
    assert job_row(state_dir, job_id)["pid"] is None
    assert server.client.get(f"/models/{job_id}").json()["state"] == "failed"


def test_a_second_server_only_serves_and_a_clean_stop_requeues(servers, tmp_path):
    first = servers()
    job_id = new_model(first)
    assert upload_zip(first, job_id, dataset_zip(4)).status_code == 200
    second = servers(first.state_dir)
    assert (f"another server process runs the trainings of {first.state_dir}; this one only serves"
            in second.output())
    assert "only serves" not in first.output()
    r = second.client.post(f"/models/{job_id}/train", json={"epochs": 50})  # queued through the second server
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + 30
    while not (pid := training_process(first.state_dir, job_id)[0]):
        assert time.monotonic() < deadline, second.client.get(f"/models/{job_id}").json()
        time.sleep(0.02)
    assert parent_pid(pid) == first.proc.pid  # started by the server holding the lock, not by the second
    identity = process_identity(pid)
    first.stop()  # a clean shutdown stops the training (SIGTERM) and queues it for the next start
    assert process_identity(pid) != identity  # the training did not outlive its server
    row = job_row(first.state_dir, job_id)
    assert row["state"] == "queued" and row["pid"] is None, row
    assert second.client.get(f"/models/{job_id}").json()["state"] == "queued"  # the second still serves
    assert not any("Traceback" in s.output() for s in (first, second))


# ----------------------------------------------------------------------------- long (real processes, slow)

@pytest.mark.slow
def test_hard_kill_of_the_server_keeps_watching_its_training(servers):
    server = servers()
    job_id = _start_training(server, epochs=100)
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
    assert job["state"] == "trained" and "resuming" not in log and log.count(HEADER) == 1, log[-3000:]


@pytest.mark.slow
def test_graceful_shutdown_checkpoints_and_resumes(servers):
    server = servers()
    job_id = _start_training(server, epochs=60)
    _wait_for_checkpoint(server, job_id)
    pid, identity = training_process(server.state_dir, job_id)
    server.stop()  # SIGTERM: the router's lifespan stops the training with a checkpoint
    assert process_identity(pid) != identity  # the training did not outlive the server
    row = job_row(server.state_dir, job_id)
    assert (row["state"], row["resume"]) == ("queued", 1)
    again = servers(server.state_dir)
    job = wait_for(again, job_id, ("trained", "failed"))
    assert job["state"] == "trained" and job["metrics"]["epochs"] == 60
    assert "resuming" in again.client.get(f"/models/{job_id}/log").text
