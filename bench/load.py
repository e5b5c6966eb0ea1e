#!/usr/bin/env python3
"""Load test of `minivision serve` on loopback: requests/s and latency percentiles, zero errors expected.

    python3 bench/load.py RUN                          # 4 clients for 30 s, print only
    python3 bench/load.py RUN --clients 1,4 --seconds 30 --write
    python3 bench/load.py RUN --server-args="--threads 1"

Starts the real server (`python -m minivision serve RUN --port 0`) in a child process, then N
client threads, each on its own keep-alive `http.client` connection, post one real Fashion-MNIST
test image (PNG, as a multipart upload) to /predict in a loop for T seconds. Latency is measured per
request with perf_counter, from sending the request to having parsed the JSON answer; an answer
that is not 200 with a prediction counts as an error. The clients run in this process and share
the machine with the server: on a 2-core machine they take CPU the server would otherwise have, so
the figures are a floor. With --write, the rows go to bench/results/load.json and the table between
the load markers in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import queue
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "bench")]

import devpaths  # noqa: E402
from minivision import benchmark  # noqa: E402
from minivision.errors import MinivisionError  # noqa: E402
from minivision.fileio import write_json, write_text  # noqa: E402

DOC = ROOT / "docs" / "BENCHMARKS.md"
RESULTS = ROOT / "bench" / "results" / "load.json"
BEGIN, END = "<!-- load:begin -->", "<!-- load:end -->"
HEADING = "## HTTP service load test"
BEFORE = devpaths.SPEED_HEADING  # the section goes just above this line


# ----------------------------------------------------------------------------- Setup

def test_image_png(path: str | None) -> tuple[bytes, str]:
    """The picture to post: ``path``, or the first Fashion-MNIST test image as PNG; and its true label."""
    if path:
        return Path(path).read_bytes(), "?"
    from PIL import Image

    import minivision as mv

    ds = mv.load_dataset("fashion-mnist")
    buf = io.BytesIO()
    Image.fromarray(ds.test.x[0, 0].numpy(), "L").save(buf, format="PNG")
    return buf.getvalue(), ds.classes[int(ds.test.y[0])]


def multipart(png: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="test.png"\r\n'
            f"Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


class Server:
    """``minivision serve RUN --port 0`` in a child process, until ``stop``."""

    def __init__(self, run: str, extra: list[str]) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.command = [sys.executable, "-m", "minivision", "serve", run, "--port", "0", *extra]
        self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(ln) for ln in self.proc.stdout], daemon=True).start()
        try:
            first = lines.get(timeout=120)
        except queue.Empty:
            self.stop()
            raise MinivisionError("the server did not start within 120 s") from None
        if not first.startswith("serving "):
            self.stop()
            raise MinivisionError(f"the server did not start: {first.strip()} {self.proc.stderr.read()[-500:]}")
        self.url = first.split(" at ")[1].split()[0]
        host, port = self.url[len("http://"):].rsplit(":", 1)
        self.host, self.port = host, int(port)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
        return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ----------------------------------------------------------------------------- Load

def client(server: Server, body: bytes, content_type: str, deadline: float, out: dict[str, Any]) -> None:
    """Post ``body`` in a loop on one keep-alive connection until ``deadline``; latencies in seconds."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
    headers = {"Content-Type": content_type, "Content-Length": str(len(body))}
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/predict", body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            answer = json.loads(data)
            ok = resp.status == 200 and answer["predictions"][0][0]["label"]
            if ok:
                out["latencies"].append(time.perf_counter() - t0)
                out["labels"][answer["predictions"][0][0]["label"]] = 1 + out["labels"].get(
                    answer["predictions"][0][0]["label"], 0)
            else:
                out["errors"].append(f"{resp.status}: {data[:200]!r}")
        except (OSError, http.client.HTTPException, ValueError, KeyError, IndexError) as e:
            out["errors"].append(f"{type(e).__name__}: {e}")
            conn.close()
            conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
    conn.close()


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def run_load(server: Server, body: bytes, content_type: str, clients: int, seconds: float) -> dict[str, Any]:
    outs = [{"latencies": [], "errors": [], "labels": {}} for _ in range(clients)]
    start = time.perf_counter()
    deadline = start + seconds
    threads = [threading.Thread(target=client, args=(server, body, content_type, deadline, o)) for o in outs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    lat = sorted(x for o in outs for x in o["latencies"])
    errors = [e for o in outs for e in o["errors"]]
    labels: dict[str, int] = {}
    for o in outs:
        for k, v in o["labels"].items():
            labels[k] = labels.get(k, 0) + v
    ms = 1000.0
    return {"clients": clients, "seconds": round(wall, 2), "requests": len(lat), "errors": len(errors),
            "error_samples": errors[:5], "requests_per_s": round(len(lat) / wall, 1),
            "p50_ms": round(percentile(lat, 50) * ms, 2), "p90_ms": round(percentile(lat, 90) * ms, 2),
            "p99_ms": round(percentile(lat, 99) * ms, 2), "max_ms": round((lat[-1] if lat else float("nan")) * ms, 2),
            "mean_ms": round(statistics.fmean(lat) * ms, 2) if lat else None, "labels": labels,
            "server_rss_mb": server.rss_mb()}


# ----------------------------------------------------------------------------- Report

def render_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| clients | requests/s | p50 | p90 | p99 | max | requests | errors | server RSS |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['clients']} | {r['requests_per_s']:.1f} | {r['p50_ms']:.1f} ms | {r['p90_ms']:.1f} ms | "
                     f"{r['p99_ms']:.1f} ms | {r['max_ms']:.1f} ms | {r['requests']} in {r['seconds']:.0f} s | "
                     f"{r['errors']} | {r['server_rss_mb']:.0f} MB |")
    return "\n".join(lines)


def render_section(result: dict[str, Any]) -> str:
    answers = sorted({label for r in result["rows"] for label in r["labels"]})
    intro = (f"`{result['command']}` on {result['date']}, serving the run's model `{result['model']}` "
             f"({result['version']}), posting one real Fashion-MNIST test image "
             f"(PNG, multipart, true label {result['true_label']}; answers: {', '.join(answers)}) over "
             f"keep-alive loopback connections, each client waiting for its answer before the next request. "
             f"Latency: request sent to JSON parsed, per request. Machine: {result['machine']}. The client "
             f"threads run on the same machine as the server. Raw results: `bench/results/load.json`.")
    return f"{intro}\n\n{render_table(result['rows'])}"


def write_doc(section: str, path: Path = DOC) -> None:
    write_text(path, devpaths.replace_section(path.read_text(encoding="utf-8"), BEGIN, END, section, HEADING,
                                              before=BEFORE))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="run folder to serve")
    p.add_argument("--clients", default="4", help="concurrent clients, or a comma list run one after another")
    p.add_argument("--seconds", type=float, default=30.0, help="per client count (default 30)")
    p.add_argument("--image", help="picture to post (default: the first Fashion-MNIST test image)")
    p.add_argument("--server-args", default="", help="extra `minivision serve` flags, e.g. '--threads 1'")
    p.add_argument("--write", action="store_true", help="record in bench/results/load.json and docs/BENCHMARKS.md")
    a = p.parse_args(argv)
    counts = [int(c) for c in a.clients.split(",")]
    if any(c < 1 for c in counts) or not 0 < a.seconds <= 3600:
        p.error("--clients must be >= 1 and --seconds in (0, 3600]")
    png, truth = test_image_png(a.image)
    body, content_type = multipart(png)
    server = Server(a.run, shlex.split(a.server_args))
    try:
        health = json.loads(_get(server, "/health"))
        run_load(server, body, content_type, 1, min(2.0, a.seconds))  # warm-up, not reported
        rows = []
        for n in counts:
            row = run_load(server, body, content_type, n, a.seconds)
            rows.append(row)
            print(render_table([row]).splitlines()[-1], flush=True)
            if row["errors"]:
                print(f"errors, first ones: {row['error_samples']}", file=sys.stderr)
    finally:
        server.stop()
    machine = benchmark.machine_info()
    machine["torch_threads"] = health.get("torch_threads", "?")  # the server's, not this client process's
    result = {"command": "python3 bench/load.py " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:])),
              "date": machine["date"][:10], "machine": benchmark.describe_machine(machine),
              "model": health["model"], "version": health["version"], "true_label": truth,
              "server_command": " ".join(server.command[1:]), "rows": rows}
    print(render_table(rows))
    if a.write:
        write_json(RESULTS, result)
        write_doc(render_section(result))
        print(f"wrote {RESULTS.relative_to(ROOT)} and {DOC.relative_to(ROOT)}")
    return 0 if all(r["errors"] == 0 for r in rows) else 1


def _get(server: Server, path: str) -> bytes:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:
        conn.request("GET", path)
        return conn.getresponse().read()
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(main())
