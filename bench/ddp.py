#!/usr/bin/env python3
"""Data-parallel training speed: training pictures per second with 1 and 2 processes (``--nproc``).

    python3 bench/ddp.py                    # Fashion-MNIST, cnn1, 3 epochs, nproc 1 and 2 (a quiet machine)
    python3 bench/ddp.py --quick            # 600 synthetic pictures, mlp, 2 epochs: checks that it runs
    python3 bench/ddp.py --nproc 1,2,4 --model mvnet-t --epochs 5 --out /tmp/ddp

Each row runs the real command in a child process, ``minivision train ... --nproc N --json``, with
``OMP_NUM_THREADS`` = the CPUs this process may use / N (the same total threads in every row, as
``--nproc`` sets it when the variable is unset), and reports two rates:

- whole command: training pictures x epochs / the command's wall time (process start-up, torch
  import and the launcher's rendezvous, data loading, training, validation, test pass, report);
- steady state: training pictures / the seconds of the fastest epoch after the first (results.csv's
  ``seconds``: the epoch's steps and its validation pass, no start-up).

The global batch (``--batch-size``) is the same in every row, so every row takes the same steps; the
speed-up is the ratio to the one-process row. The load average is printed beside each row: run it on a
quiet machine (a busy one measures the others' work). Results: a JSON file and a markdown table in
``--out`` (default: a temporary folder, printed).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src")]

FASHION = "fashion-mnist"


def cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def quick_data(folder: Path, n: int = 600) -> tuple[Path, Path]:
    """A small pixel CSV pair (train, test) of 4 learnable classes, made here (no download)."""
    import numpy as np

    rng = np.random.default_rng(0)
    y = np.arange(n) % 4
    rng.shuffle(y)
    x = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
    for i, k in enumerate(y):
        r, c = divmod(int(k), 2)
        x[i, r * 14 + 2:(r + 1) * 14 - 2, c * 14 + 2:(c + 1) * 14 - 2] = 200
    paths = []
    for name, rows in (("train.csv", slice(0, n * 4 // 5)), ("test.csv", slice(n * 4 // 5, n))):
        lines = ["label," + ",".join(f"pixel{i + 1}" for i in range(784))]
        lines += [f"{int(lab)}," + ",".join(map(str, img.reshape(-1).tolist())) for lab, img in zip(y[rows], x[rows],
                                                                                                   strict=True)]
        (folder / name).write_text("\n".join(lines) + "\n")
        paths.append(folder / name)
    return paths[0], paths[1]


def run_row(nproc: int, data: list[str], args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """One ``minivision train --nproc N`` in a child process; its rates and what it ran."""
    threads = max(1, (args.cpus or cpus()) // nproc)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MINIVISION_PRETRAINED": "none",
           "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "minivision", "train", *data, "--model", args.model, "--epochs", str(args.epochs),
           "--batch-size", str(args.batch_size), "--seed", "0", "--nproc", str(nproc), "--out", str(out),
           "--name", f"nproc{nproc}", "--json"]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"error: nproc {nproc} failed ({r.returncode}): {r.stderr.strip().splitlines()[-1:]}")
    run = Path(json.loads(r.stdout.strip().splitlines()[-1])["run"])
    with open(run / "results.csv", newline="") as f:
        epochs = list(csv.DictReader(f))
    import yaml

    settings = yaml.safe_load((run / "args.yaml").read_text())
    meta = json.loads((run / "model.json").read_text())
    n_train = _train_count(run)
    steady = [float(e["seconds"]) for e in epochs[1:]] or [float(epochs[0]["seconds"])]
    return {"nproc": nproc, "threads_per_process": threads, "command": " ".join(cmd[1:]),
            "env": {"OMP_NUM_THREADS": str(threads)}, "wall_s": round(wall, 2), "train_pictures": n_train,
            "epochs": len(epochs), "whole_command_per_s": round(n_train * len(epochs) / wall, 1),
            "steady_per_s": round(n_train / min(steady), 1), "epoch_seconds": [float(e["seconds"]) for e in epochs],
            "test_accuracy": meta.get("metrics", {}).get("test_accuracy"), "global_batch": settings["batch_size"],
            "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2)}


def _train_count(run: Path) -> int:
    """Training pictures of a run: its data reloaded and split as the run split it."""
    from minivision.data import load_dataset
    from minivision.data.split import make_val
    from minivision.runfiles import read_args

    cfg = read_args(run)
    ds = make_val(load_dataset(cfg.data, data_dir=cfg.data_dir, test_data=cfg.test_data),
                  val_split=cfg.val_split, val_first=cfg.val_first, seed=cfg.seed)
    return len(ds.train.y)


def table(rows: list[dict[str, Any]]) -> str:
    base = rows[0]
    lines = ["| processes | threads each | whole command (pictures/s) | steady state (pictures/s) | speed-up "
             "(steady) | test top-1 | load before/after |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = f"{r['test_accuracy']:.2%}" if isinstance(r.get("test_accuracy"), float) else "-"
        lines.append(f"| {r['nproc']} | {r['threads_per_process']} | {r['whole_command_per_s']:,.0f} | "
                     f"{r['steady_per_s']:,.0f} | {r['steady_per_s'] / base['steady_per_s']:.2f}x | {acc} | "
                     f"{r['load_before']:.1f}/{r['load_after']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="600 synthetic pictures, mlp, 2 epochs (checks it runs)")
    ap.add_argument("--nproc", default="1,2", help="process counts to run, e.g. 1,2,4 (default 1,2)")
    ap.add_argument("--model", default=None, help="network (default cnn1; --quick: mlp)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs (default 3; --quick: 2)")
    ap.add_argument("--batch-size", type=int, default=128, help="the GLOBAL batch of every row (default 128)")
    ap.add_argument("--cpus", type=int, default=None, help="CPUs to share among the processes (default: all this "
                    "process may use); threads per process = CPUs / N, at least 1")
    ap.add_argument("--out", help="keep the run folders and results here (default: a temporary folder)")
    args = ap.parse_args(argv)
    args.model = args.model or ("mlp" if args.quick else "cnn1")
    args.epochs = args.epochs or (2 if args.quick else 3)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="minivision-ddp-"))
    out.mkdir(parents=True, exist_ok=True)
    if args.quick:
        train, test = quick_data(out)
        data = ["--data", str(train), "--test-data", str(test), "--val-split", "0.2"]
    else:
        data = ["--data", FASHION]
    rows = []
    for n in (int(v) for v in args.nproc.split(",")):
        rows.append(run_row(n, data, args, out / "runs"))
        print(json.dumps(rows[-1]), flush=True)
    md = table(rows)
    about = {"cpus": cpus(), "cpus_shared": args.cpus or cpus(), "date": time.strftime("%Y-%m-%d"),
             "python": sys.version.split()[0]}
    import torch

    about["torch"] = torch.__version__
    (out / "ddp.json").write_text(json.dumps({"about": about, "rows": rows}, indent=1))
    (out / "ddp.md").write_text(md + "\n")
    print(md)
    print(f"results: {out / 'ddp.json'}, {out / 'ddp.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
