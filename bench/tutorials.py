#!/usr/bin/env python3
"""Each tutorial model trained with its tutorial's settings; writes the table in docs/BENCHMARKS.md.

    python3 bench/tutorials.py                       # every row, tutorial epochs
    python3 bench/tutorials.py --only mlp,cnn1 --epochs cnn2=15

Runs the real CLI (`python -m minivision train`) in a temporary folder, one model at a time, and
reads back results.csv and model.json. Nothing is assumed: every figure in the table is measured
in this run, on this machine, with the command shown.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "bench")]

import devpaths  # noqa: E402
from minivision import benchmark  # noqa: E402

DOC = ROOT / "docs" / "BENCHMARKS.md"
BEGIN, END = "<!-- tutorials:begin -->", "<!-- tutorials:end -->"

# (model, dataset, what the tutorial reports)
ROWS = [
    ("softmax", "fashion-mnist", "- (a linear model can reach ~84%)"),
    ("mlp", "fashion-mnist", "88.2% test after 30 epochs"),
    ("cnn2", "fashion-mnist", "~92% validation after 40 epochs"),
    ("cnn2-bn", "fashion-mnist", "-"),
    ("cnn1", "fashion-mnist", "- (2-conv CNNs: 91-93%)"),
    ("cnn3", "fashion-mnist", "-"),
    ("cnn4", "fashion-mnist", "-"),
    ("softmax", "cifar10-folder", "25-31% test"),
]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run_one(model: str, data: str, epochs: int | None, workdir: Path) -> dict:
    cmd = [sys.executable, "-m", "minivision", "train", "--model", model, "--data", data,
           "--out", str(workdir), "--name", f"{model}", "--json"]
    if epochs:
        cmd += ["--epochs", str(epochs)]
    shown = "minivision train --model {} --data {}{}".format(
        model, "cifar10-jpg/ (JPEG folder)" if data.endswith("cifar10-jpg") else data,
        f" --epochs {epochs}" if epochs else "")
    print("$", shown, flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if p.returncode != 0:
        raise SystemExit(f"{shown} failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    run = Path(summary["run"])
    meta = json.loads((run / "model.json").read_text())
    import csv

    with open(run / "results.csv") as f:
        hist = list(csv.DictReader(f))
    secs = [float(r["seconds"]) for r in hist]
    return {"command": shown, "model": model, "data": data, "epochs": len(hist),
            "test_accuracy": summary["test_accuracy"], "best_val": max(float(r["val_accuracy"]) for r in hist),
            "best_epoch": meta["metrics"]["best_epoch"],
            "sec_per_epoch": statistics.median(secs), "total_s": sum(secs), "meta": meta}


def count_params(model: str, meta: dict) -> int:
    from minivision.models import count_parameters, create_model

    a = meta["architecture"]
    return count_parameters(create_model(model, in_channels=a["in_channels"], image_size=tuple(a["image_size"]),
                                         num_classes=a["num_classes"]))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma list of models to run")
    ap.add_argument("--epochs", default="", help="overrides, e.g. cnn2=15,mlp=10")
    ap.add_argument("--cifar", help="CIFAR-10 JPEG folder or archive (default: the folder unpacked by hand, else "
                                    "unpack ../shared/datasets/cifar10-jpg.tar.gz into ~/.cache/minivision/bench once)")
    ap.add_argument("--no-write", action="store_true", help="print the table only")
    a = ap.parse_args(argv)
    overrides = {k: int(v) for k, v in (kv.split("=") for kv in a.epochs.split(",") if kv)}
    only = set(a.only.split(",")) if a.only else None
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for model, data, reference in ROWS:
            if only and model not in only and f"{model}@{data}" not in only:
                continue
            if data == "cifar10-folder":
                data, why = benchmark.cifar_folder(a.cifar or devpaths.cifar_source())
                if data is None:
                    print(f"skipping CIFAR-10 row: {why}")
                    continue
            r = run_one(model, data, overrides.get(model if "cifar" not in data else f"{model}@cifar"),
                        tmp / "runs")
            r["params"] = count_params(model, r["meta"])
            r["reference"] = reference
            results.append(r)
            print(f"  test {r['test_accuracy']:.2%}  best val {r['best_val']:.2%} (epoch {r['best_epoch']})  "
                  f"{r['sec_per_epoch']:.1f} s/epoch", flush=True)
    table = render(results)
    print(table)
    if not a.no_write:
        write_section(table)


def render(results: list[dict]) -> str:
    import torch

    date = dt.date.today().isoformat()
    lines = [f"Measured {date} on {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} "
             f"(CPU, fp32: this CPU has no native bf16), Python {platform.python_version()}. "
             f"Command: `python3 bench/tutorials.py`.", "",
             "| model | data | epochs | test acc | best val (epoch) | params | s/epoch | train s | tutorial reports |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        data = "CIFAR-10 (JPEG folder)" if "cifar" in r["data"] else r["data"]
        lines.append(f"| `{r['model']}` | {data} | {r['epochs']} | {r['test_accuracy']:.2%} | "
                     f"{r['best_val']:.2%} ({r['best_epoch']}) | {r['params']:,} | {r['sec_per_epoch']:.1f} | "
                     f"{r['total_s']:.0f} | {r['reference']} |")
    lines += ["", "Commands:", ""] + [f"    {r['command']}" for r in results]
    return "\n".join(lines)


def write_section(table: str) -> None:
    text = DOC.read_text() if DOC.is_file() else "# Benchmarks\n"
    block = f"{BEGIN}\n{table}\n{END}"
    if BEGIN in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text += f"\n## Tutorial models, tutorial settings\n\n{block}\n"
    tmp = DOC.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, DOC)
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
