#!/usr/bin/env python3
"""Export benchmark: one run as PyTorch fp32, PyTorch bf16, ONNX fp32 and ONNX int8, measured in the same run
on the same machine, for the default model and one larger model, on Fashion-MNIST.

    OMP_NUM_THREADS=1 python3 bench/export.py                  # trains both models (~10 min on 2 shared cores)
    python3 bench/export.py --run runs/train --large-run runs/train2   # reuse run folders
    python3 bench/export.py --quick                            # a short check that it all runs (~2 min)
    python3 bench/export.py --doc                              # also write the section of docs/BENCHMARKS.md

Models: ``default`` is ``minivision train`` with no flags (the 30-second recipe) and ``large`` is
``minivision train --model mvnet --epochs 2`` (4x the default's parameters), unless ``--run`` /
``--large-run`` give run folders. Each run is exported with ``minivision export RUN`` and ``--int8``
(the export's own parity check on the test split runs then, as it always does).

Per model and precision, on the 10,000 Fashion-MNIST test pictures:

- file size: PyTorch's ``model.safetensors``, the two ``.onnx`` files (their sidecars not counted);
- test top-1 accuracy, and top-1 agreement with PyTorch fp32 (largest absolute logit difference too);
- latency at batch 1: the median of ``latency_n`` single-picture calls (a different picture each, after
  warm-up calls), milliseconds per picture, through the code ``minivision`` runs: ``predict_logits`` for
  PyTorch (bf16: under autocast), the onnxruntime session for ONNX (its ``logits`` output);
- throughput at batch 256: pictures per second over ``throughput_n`` pictures, the median of
  ``throughput_repeats`` passes.

Both engines get the same intra-op threads (``--threads``, default 1: on a shared machine single-thread
figures are the stable comparison; the commands below use the product's own defaults). bf16 on a CPU without
AVX-512 BF16 or AMX is emulated by PyTorch (the table says which).

Whole commands, each a subprocess timed from outside, the median of ``command_repeats`` after one uncounted
warm-up (which also fills the bytecode cache): start-up of a one-image ``minivision predict TARGET PICTURE``
(a Fashion-MNIST test picture as a PNG) and ``minivision evaluate TARGET`` of the 10,000 test pictures, for
the run folder and for each export. Where ``$PYTHONDONTWRITEBYTECODE`` is set (this machine sets it), the
commands run with it unset and ``$PYTHONPYCACHEPREFIX`` in a temporary folder, as an installed package
(pip compiles its modules) would run. The 1-minute load average is recorded beside every timing: above the
number of CPUs, other work shared the machine and the times are inflated.

Results: bench/results/export.json and export.md (``--out`` for another folder); ``--doc`` also replaces the
section between the export markers in docs/BENCHMARKS.md (appended at the end when absent).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "bench")]

import devpaths  # noqa: E402

DOC = ROOT / "docs" / "BENCHMARKS.md"
BEGIN, END = "<!-- export:begin -->", "<!-- export:end -->"
HEADING = "## Export: ONNX, int8 and PyTorch"

# ----------------------------------------------------------------------------------------------- Setup

SETTINGS = {
    "full": {
        "latency_n": 300,  # batch-1 calls per engine, after `warmup` calls; the median is reported
        "warmup": 20,
        "throughput_n": 2560,  # pictures per throughput pass (10 batches of 256)
        "throughput_repeats": 5,  # passes; the median is reported
        "command_repeats": 3,  # timed runs of each whole command, after one uncounted warm-up
        "large": ["--model", "mvnet", "--epochs", "2"],  # the larger model's training flags
        "default": [],  # `minivision train` with no flags
    },
    "quick": {
        "latency_n": 20,
        "warmup": 3,
        "throughput_n": 512,
        "throughput_repeats": 1,
        "command_repeats": 1,
        "large": None,  # no larger model unless --large-run names one
        "default": ["--steps", "20"],  # a few seconds of training: enough for a run that exports
    },
}
BATCH = 256
ENGINES = ("PyTorch fp32", "PyTorch bf16", "ONNX fp32", "ONNX int8")


def load1() -> float | None:
    """The 1-minute load average, None where the system has none (Windows)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def command_env(cache: Path) -> dict[str, str]:
    """The environment for timed commands: this one, with a bytecode cache (module docstring)."""
    env = dict(os.environ)
    if env.pop("PYTHONDONTWRITEBYTECODE", None) is not None:
        env["PYTHONPYCACHEPREFIX"] = str(cache)
    return env


# ----------------------------------------------------------------------------------------------- Models

def minivision(*args: str, env: dict[str, str] | None = None, timeout: float = 3600) -> subprocess.CompletedProcess:
    """``python3 -m minivision ARGS``, captured."""
    return subprocess.run([sys.executable, "-m", "minivision", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def train(flags: list[str], out: Path, data_dir: str | None) -> Path:
    """A Fashion-MNIST run trained by ``minivision train FLAGS --json`` into ``out``; its folder."""
    p = minivision("train", *flags, "--out", str(out), "--json", *(["--data-dir", data_dir] if data_dir else []))
    if p.returncode != 0:
        raise SystemExit(f"minivision train {' '.join(flags)} failed:\n{p.stderr[-2000:]}")
    return Path(json.loads(p.stdout.strip().splitlines()[-1])["run"])


def export(run: Path, out: Path, int8: bool) -> dict[str, Any]:
    """``minivision export RUN [--int8] --out FILE --json``: {file, bytes, parity} or {error} (an int8 model
    that loses too much is refused: the row then says why)."""
    p = minivision("export", str(run), "--out", str(out), *(["--int8"] if int8 else []), "--json")
    if p.returncode != 0:
        lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")] or p.stderr.splitlines()[-1:]
        return {"error": (lines[-1] if lines else f"exit {p.returncode}").removeprefix("error: ")}
    answer = json.loads(p.stdout)
    return {"file": str(out), "bytes": out.stat().st_size, "parity": answer.get("parity")}


# ----------------------------------------------------------------------------------------------- Measure

def median_seconds(step: Callable[[int], Any], n: int, warmup: int = 0,
                   clock: Callable[[], float] = time.perf_counter) -> float:
    """The median of ``n`` timed calls ``step(i)`` (i = 0..n-1) after ``warmup`` untimed ones, in seconds."""
    for i in range(warmup):
        step(i)
    times = []
    for i in range(n):
        t0 = clock()
        step(i)
        times.append(clock() - t0)
    return statistics.median(times)


def runners(run: Path, onnx_files: dict[str, str], threads: int) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Engine name -> a function from uint8 pictures (N, C, H, W) to float32 logits (N, K), for the run's
    PyTorch model (fp32; bf16 under autocast) and each ONNX file ({"ONNX fp32": path, ...})."""
    import torch

    from minivision.inference import predict_logits
    from minivision.onnx_runtime import LOGITS, load_onnx
    from minivision.runfiles import load_model

    torch.set_num_threads(threads)
    lm = load_model(run)
    cpu = torch.device("cpu")

    def torch_runner(precision: str) -> Callable[[np.ndarray], np.ndarray]:
        def go(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return predict_logits(lm.model, lm.preprocess, torch.from_numpy(x), device=cpu,
                                      precision=precision, batch_size=BATCH).numpy()
        return go

    out = {"PyTorch fp32": torch_runner("fp32"), "PyTorch bf16": torch_runner("bf16")}
    for name, path in onnx_files.items():
        session = load_onnx(path, threads=threads).session
        out[name] = (lambda s: lambda x: np.concatenate(
            [s.run([LOGITS], {"pixels": x[i:i + BATCH]})[0] for i in range(0, len(x), BATCH)]))(session)
    return out


def measure(run: Path, onnx_files: dict[str, str], x: np.ndarray, y: np.ndarray, threads: int,
            s: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per engine: accuracy, agreement (top-1 with PyTorch fp32), max_logit_diff, latency_ms (batch 1),
    throughput (pictures/s at batch 256) and the load average at its start, on uint8 ``x`` (N, C, H, W) and
    int64 labels ``y`` (N,)."""
    x = np.ascontiguousarray(x)
    out: dict[str, dict[str, Any]] = {}
    reference = None
    for name, go in runners(run, onnx_files, threads).items():
        row: dict[str, Any] = {"load": load1()}
        logits = go(x)
        reference = logits if reference is None else reference
        row.update(accuracy=float((logits.argmax(1) == y).mean()),
                   agreement=float((logits.argmax(1) == reference.argmax(1)).mean()),
                   max_logit_diff=float(np.abs(logits - reference).max()))
        k = min(len(x), s["latency_n"])
        row["latency_ms"] = 1000 * median_seconds(lambda i, go=go, k=k: go(x[i % k:i % k + 1]), s["latency_n"],
                                                  s["warmup"])
        n = min(len(x), s["throughput_n"])
        seconds = median_seconds(lambda i, go=go, n=n: go(x[:n]), s["throughput_repeats"], 1)
        row["throughput"] = n / seconds
        out[name] = row
    return out


def bf16_native() -> bool:
    from minivision.inference import cpu_supports_bf16

    return cpu_supports_bf16()


def time_command(argv: Sequence[str], repeats: int, env: dict[str, str]) -> dict[str, Any]:
    """A whole command timed from outside: {seconds (median), runs [{seconds, load}], error}; one uncounted
    warm-up run first."""
    def once() -> tuple[float, subprocess.CompletedProcess]:
        t0 = time.perf_counter()
        p = subprocess.run(list(argv), capture_output=True, text=True, env=env, timeout=600)
        return time.perf_counter() - t0, p

    _, p = once()
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1][:300]}
    runs = []
    for _ in range(repeats):
        load = load1()
        seconds, _ = once()
        runs.append({"seconds": round(seconds, 3), "load": load})
    return {"seconds": statistics.median(r["seconds"] for r in runs), "runs": runs}


def commands(run: Path, onnx_files: dict[str, str], picture: Path, data_dir: str | None, repeats: int,
             env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Per target (the run folder, each export): one-image predict and evaluate of the test split, whole
    commands (``time_command``)."""
    data = ["--data-dir", data_dir] if data_dir else []
    out = {}
    for name, target in {"PyTorch (run folder)": str(run), **onnx_files}.items():
        base = [sys.executable, "-m", "minivision"]
        out[name] = {"predict": time_command([*base, "predict", target, str(picture)], repeats, env),
                     "evaluate": time_command([*base, "evaluate", target, *data], repeats, env)}
    return out


# ----------------------------------------------------------------------------------------------- Report

def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def _load_range(values: list[float | None]) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "-"
    return f"{min(got):.1f}" if min(got) == max(got) else f"{min(got):.1f}-{max(got):.1f}"


def _command_cell(c: dict[str, Any] | None) -> str:
    if not c:
        return "-"
    if "error" in c:
        return "failed"
    return f"{c['seconds']:.2f} s (load {_load_range([r['load'] for r in c['runs']])})"


def render(result: dict[str, Any]) -> str:
    """The markdown table(s) of a result (``run_all``'s dict)."""
    from minivision.benchmark import describe_machine

    m = result["machine"]
    bf16 = "native" if result["bf16_native"] else "emulated (this CPU has no AVX-512 BF16 or AMX)"
    env = result["command_env"]
    lines = [f"Measured {m['date'][:10]} on {describe_machine(m)}; onnxruntime {result['onnxruntime']}. "
             f"Command: `{result['command']}`. In-process figures with {result['threads']} intra-op "
             f"thread(s) for both engines; PyTorch bf16 is autocast, {bf16}. Latency: median of "
             f"{result['settings']['latency_n']} single-picture calls; throughput: batch {BATCH}, median of "
             f"{result['settings']['throughput_repeats']} passes over {result['settings']['throughput_n']:,} "
             f"pictures. Commands: whole `minivision` commands timed from outside, median of "
             f"{result['settings']['command_repeats']} after a warm-up, the product's default threads"
             + (", bytecode cached as an installed package has it" if env.get("bytecode_cache") else "")
             + (f", OMP_NUM_THREADS={env['OMP_NUM_THREADS']}" if env.get("OMP_NUM_THREADS") else "")
             + ". Load: the 1-minute load average at the start of each measurement (above "
             f"{m.get('cpu_count', '?')} other work shared the machine and times are inflated).", ""]
    lines += ["| model | engine | file | test top-1 | top-1 agreement with PyTorch fp32 | largest logit diff "
              "| latency, batch 1 | throughput, batch 256 | load |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for mr in result["models"]:
        label = f"{mr['label']} (`{mr['architecture']}`, {mr['trained']})"
        for engine in ENGINES:
            e = mr["engines"].get(engine)
            size = mr["files"].get(engine)
            if e is None:
                why = mr["exports"].get(engine, {}).get("error", "not measured")
                lines.append(f"| {label} | {engine} | - | - | - | - | - | - | {why} |")
                continue
            lines.append(f"| {label} | {engine} | {_mb(size)} | {e['accuracy']:.2%} | {e['agreement']:.2%} "
                         f"| {e['max_logit_diff']:.2g} | {e['latency_ms']:.2f} ms | {e['throughput']:,.0f} /s "
                         f"| {e['load'] if e['load'] is not None else '-'} |")
    lines += ["", "| model | target | one-image `predict`, whole command | `evaluate` of 10,000 test pictures, "
              "whole command |", "|---|---|---:|---:|"]
    for mr in result["models"]:
        for target, c in mr["commands"].items():
            lines.append(f"| {mr['label']} (`{mr['architecture']}`) | {target} | {_command_cell(c.get('predict'))} "
                         f"| {_command_cell(c.get('evaluate'))} |")
    return "\n".join(lines)


def write_results(result: dict[str, Any], out: Path, doc: Path | None) -> str:
    """export.json and export.md in ``out``; the section of ``doc`` (docs/BENCHMARKS.md) when given."""
    from minivision.fileio import write_json, write_text

    table = render(result)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "export.json", {"about": "bench/export.py results; see docs/BENCHMARKS.md", **result})
    write_text(out / "export.md", table + "\n")
    if doc is not None:
        write_text(doc, devpaths.replace_section(doc.read_text(), BEGIN, END, table, HEADING))
    return table


# ----------------------------------------------------------------------------------------------- Main

def model_result(label: str, run: Path, trained: str, tmp: Path, x: np.ndarray, y: np.ndarray, picture: Path,
                 a: argparse.Namespace, s: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    meta = json.loads((run / "model.json").read_text())
    exports = {"ONNX fp32": export(run, tmp / f"{label}.onnx", int8=False),
               "ONNX int8": export(run, tmp / f"{label}.int8.onnx", int8=True)}
    files = {k: v["file"] for k, v in exports.items() if "file" in v}
    weights = run / "model.safetensors"
    sizes = {"PyTorch fp32": weights.stat().st_size if weights.is_file() else None,
             **{k: v["bytes"] for k, v in exports.items() if "bytes" in v}}
    sizes["PyTorch bf16"] = sizes["PyTorch fp32"]  # the same weights, cast at run time
    print(f"{label}: measuring {', '.join(['PyTorch fp32', 'PyTorch bf16', *files])}", file=sys.stderr)
    engines = measure(run, files, x, y, a.threads, s)
    print(f"{label}: timing whole commands", file=sys.stderr)
    return {"label": label, "run": str(run), "architecture": (meta.get("architecture") or {}).get("name", "?"),
            "trained": trained, "exports": exports, "files": sizes, "engines": engines,
            "commands": commands(run, files, picture, a.data_dir, s["command_repeats"], env)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="the default model's run folder (default: train it)")
    ap.add_argument("--large-run", help="the larger model's run folder (default: train mvnet, 2 epochs)")
    ap.add_argument("--quick", action="store_true", help="a short check: tiny training, few repeats, no larger "
                                                         "model unless --large-run")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads of both engines in-process (default 1)")
    ap.add_argument("--data-dir", help="Fashion-MNIST's folder (default: where minivision finds it)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="folder for export.json/.md")
    ap.add_argument("--doc", action="store_true", help="also write the section of docs/BENCHMARKS.md")
    a = ap.parse_args(argv)
    if a.threads < 1:
        ap.error("--threads must be >= 1")
    for flag, given in (("--run", a.run), ("--large-run", a.large_run)):
        if given and not (Path(given) / "model.json").is_file():
            ap.error(f"{flag} {given}: not a run folder (no model.json in it)")
    s = SETTINGS["quick" if a.quick else "full"]

    import onnxruntime
    from PIL import Image

    from minivision.benchmark import machine_info
    from minivision.data import load_dataset
    from minivision.data.dataset import numpy_arrays

    with numpy_arrays():
        test = load_dataset("fashion-mnist", data_dir=a.data_dir, test_only=True).test
    x, y = np.asarray(test.x), np.asarray(test.y)
    tmp = Path(tempfile.mkdtemp(prefix="minivision-bench-export-"))
    try:
        env = command_env(tmp / "pycache")
        picture = tmp / "picture.png"
        Image.fromarray(x[0, 0]).save(picture)
        plan = [("default", a.run, s["default"], "`minivision train" + "".join(f" {f}" for f in s["default"]) + "`"),
                ("larger", a.large_run, s["large"], f"`minivision train {' '.join(s['large'] or [])}`")]
        models = []
        for label, given, flags, how in plan:
            if given is None and flags is None:
                continue
            print(f"{label}: {'reusing ' + given if given else 'training: ' + how}", file=sys.stderr)
            run = Path(given) if given else train(flags, tmp / "runs", a.data_dir)
            models.append(model_result(label, run, "given with --run" if given else how, tmp, x, y, picture, a, s,
                                       env))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shown = "python3 bench/export.py" + "".join(f" {t}" for t in (argv if argv is not None else sys.argv[1:]))
    result = {"command": shown, "machine": machine_info(), "onnxruntime": onnxruntime.__version__,
              "bf16_native": bf16_native(), "threads": a.threads, "quick": a.quick, "settings": s,
              "command_env": {"bytecode_cache": "PYTHONPYCACHEPREFIX" in env,
                              "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
              "models": models}
    print(write_results(result, a.out, DOC if a.doc else None))
    print(f"wrote {a.out / 'export.json'} and {a.out / 'export.md'}" + (f" and {DOC}" if a.doc else ""),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
