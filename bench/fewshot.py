#!/usr/bin/env python3
"""Few-shot benchmark: 100 training pictures per class, 5 seeded draws, scored on the whole test set.

    python3 bench/fewshot.py                                  # every row, both datasets, 5 draws
    python3 bench/fewshot.py --datasets fashion-mnist --rows scratch,finetuned --draws 2 --budget 2m
    python3 bench/fewshot.py --quick                          # a few seconds' check that it all runs

Rows (each one `minivision train` command per draw, run as a user would, timed from outside):

- ``scratch``: from scratch with our small-data recipe (``--pretrained none``: the training then picks
  its small-data augmentation itself);
- ``frozen``: frozen ImageNet features + a trained head (``--pretrained efficientnet-lite0 --freeze``),
  the CNN tutorial's feature-extraction chapter done with EfficientNet-Lite0 instead of VGG19;
- ``finetuned``: ImageNet fine-tuned (``--pretrained efficientnet-lite0``);
- ``own``: fine-tuned from our own small backbone of the other dataset (``--pretrained mvnet-cifar10``
  on Fashion-MNIST, ``--pretrained mvnet-fashion`` on CIFAR-10: never the dataset it was pretrained on);
- ``auto``: no ``--pretrained`` at all: what ``minivision train`` picks by itself for a small dataset;
- ``tutorial``: the tutorial's own setting: the whole Fashion-MNIST training set, frozen ImageNet
  features + head (one run per draw's seed; no draw: every picture is used).

How the CLI gets exactly the drawn pictures: the draw is written as a dataset of the same kind the CLI
reads, in a temporary folder, and given to ``--data``; the test split is the whole original test set.

- Fashion-MNIST: an IDX folder named ``fashion-mnist`` (the drawn training pictures as
  ``train-images-idx3-ubyte``/``train-labels-idx1-ubyte``, and links to the original ``t10k`` files).
  An IDX folder keeps what the named dataset has: 28 x 28 grey pictures, the Fashion-MNIST class names
  (the reader names them from the folder's name) and the dataset's name, which the training reads
  (no mirror rules, and "never fine-tune from the data a backbone was pretrained on"). A pixel CSV would
  keep the pixels too but is named after the file and costs a parse of 10,000 test rows per run;
  pointing ``--data-dir`` at smaller IDX files fails the published-digest check (rightly).
- CIFAR-10 (JPEG folder): an image folder named ``cifar10`` with ``train/<class>/`` holding links to the
  drawn JPEGs and ``test`` a link to the whole test folder: the same pictures, decoded the same way, as
  the full folder gives.

The commands shown write ``DRAWk/NAME`` for draw k's folder (a temporary one, deleted after its run).

Draws: per class, ``numpy.random.default_rng(seed)`` picks ``--per-class`` training pictures without
replacement (``draw``); draw k uses seed k for every row, and the run is trained with ``--seed k``.
Each row's figure is the mean +- sample std over the draws of the test accuracy the run reports (the
best-validation weights on the whole test set) and of the whole command's wall-clock seconds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "bench")]

import devpaths  # noqa: E402
from minivision.errors import MinivisionError  # noqa: E402
from minivision.fileio import write_bytes, write_json, write_text  # noqa: E402
from tutorials import cpu_name  # noqa: E402

BACKBONE = "efficientnet-lite0"
# row -> (what the table calls it, the flags it adds, the datasets it applies to, None = all)
ROWS: dict[str, tuple[str, list[str], tuple[str, ...] | None]] = {
    "scratch": ("from scratch (our small-data recipe)", ["--pretrained", "none"], None),
    "frozen": ("frozen ImageNet features + head", ["--pretrained", BACKBONE, "--freeze"], None),
    "finetuned": ("ImageNet fine-tuned", ["--pretrained", BACKBONE], None),
    "own": ("fine-tuned from our backbone of the other dataset", ["--pretrained", "OWN"], None),
    "auto": ("minivision's automatic choice (no --pretrained)", [], None),
    "tutorial": ("whole training set, frozen ImageNet features + head (the tutorial's setting)",
                 ["--pretrained", BACKBONE, "--freeze"], ("fashion-mnist",)),
}
DATASETS = ("fashion-mnist", "cifar10")
# the own backbone each dataset's "own" row fine-tunes from: the one pretrained on the other dataset
OWN = {"fashion-mnist": "mvnet-cifar10", "cifar10": "mvnet-fashion"}
SHOWN_DATA = {"fashion-mnist": "Fashion-MNIST", "cifar10": "CIFAR-10 (JPEG folder)"}
IDX_NAMES = {"images": "train-images-idx3-ubyte", "labels": "train-labels-idx1-ubyte"}


# ----------------------------------------------------------------------------- the draw

def draw(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Indices into ``labels`` (int array, N) of ``per_class`` pictures of every class, drawn without
    replacement by ``numpy.random.default_rng(seed)`` class by class (classes in increasing order);
    sorted, int64. Raises MinivisionError when a class has fewer than ``per_class`` pictures."""
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels):
        pool = np.flatnonzero(labels == c)
        if len(pool) < per_class:
            raise MinivisionError(f"class {c} has {len(pool)} training pictures, fewer than {per_class}")
        picked.append(rng.choice(pool, size=per_class, replace=False))
    return np.sort(np.concatenate(picked)).astype(np.int64)


def _idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file's bytes for a uint8 array (magic 0x00 0x00 0x08 ndim, big-endian dims, data)."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def fashion_draw(source: Path, per_class: int, seed: int, parent: Path,
                 train: tuple[np.ndarray, np.ndarray] | None = None) -> Path:
    """Write draw ``seed`` of Fashion-MNIST as the IDX folder ``parent/fashion-mnist`` and return it:
    the drawn training pictures and labels, and links to ``source``'s test files (the whole test set).
    ``source``: a folder with the four original IDX files; ``train``: its (images, labels), if read."""
    from minivision.data import idx

    files = idx.find_idx_files(source)
    if not {"train-images", "train-labels", "t10k-images", "t10k-labels"} <= set(files):
        raise MinivisionError(f"{source}: not a complete Fashion-MNIST IDX folder")
    images, labels = train or (idx.read_idx(files["train-images"]), idx.read_idx(files["train-labels"]))
    chosen = draw(labels, per_class, seed)
    folder = parent / "fashion-mnist"
    folder.mkdir(parents=True, exist_ok=True)
    write_bytes(folder / IDX_NAMES["images"], _idx_bytes(images[chosen]))
    write_bytes(folder / IDX_NAMES["labels"], _idx_bytes(labels[chosen]))
    for key in ("t10k-images", "t10k-labels"):
        (folder / files[key].name).symlink_to(files[key].resolve())
    return folder


def folder_files(root: Path) -> tuple[list[str], list[Path], np.ndarray]:
    """An image folder's split ``root``: (class names sorted, every picture's path sorted within its
    class, each picture's class index)."""
    from minivision.data.images import IMAGE_EXTENSIONS

    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    paths, labels = [], []
    for i, c in enumerate(classes):
        found = sorted(p for p in (root / c).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        paths += found
        labels += [i] * len(found)
    return classes, paths, np.asarray(labels, dtype=np.int64)


def folder_draw(source: Path, per_class: int, seed: int, parent: Path, name: str = "cifar10",
                listing: tuple[list[str], list[Path], np.ndarray] | None = None) -> Path:
    """Write draw ``seed`` of an image folder (``source/train/<class>/``, ``source/test/<class>/``) as the
    folder ``parent/name``: ``train/<class>/`` with links to the drawn pictures, ``test`` a link to
    ``source/test``. ``listing``: ``folder_files(source / "train")``, if already made."""
    classes, paths, labels = listing or folder_files(source / "train")
    folder = parent / name
    for i in draw(labels, per_class, seed):
        target = folder / "train" / classes[labels[i]] / paths[i].name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(paths[i].resolve())
    (folder / "test").symlink_to((source / "test").resolve(), target_is_directory=True)
    return folder


# ----------------------------------------------------------------------------- the runs

def cli_has(flag: str) -> bool:
    """Whether ``minivision train`` takes ``flag`` (the benchmark adapts to the CLI it is given)."""
    p = subprocess.run([sys.executable, "-m", "minivision", "train", "--help"], capture_output=True, text=True)
    return flag in p.stdout


def run_one(data: Path, flags: list[str], length: list[str], seed: int, out: Path, name: str) -> dict:
    """One ``minivision train`` command, timed from outside; its summary (test accuracy) and settings."""
    cmd = [sys.executable, "-m", "minivision", "train", "--data", str(data), *flags, *length,
           "--seed", str(seed), "--out", str(out), "--name", name, "--json"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seconds = time.perf_counter() - t0
    if p.returncode != 0:
        tail = (p.stderr.strip() or p.stdout.strip()).splitlines()[-3:]
        return {"error": " | ".join(tail) or f"exit status {p.returncode}", "seconds": seconds}
    import yaml

    summary = json.loads(p.stdout.strip().splitlines()[-1])
    run = Path(summary["run"])
    meta = json.loads((run / "model.json").read_text())
    used = yaml.safe_load((run / "args.yaml").read_text())  # the settings as the run used them
    return {"test_accuracy": summary["test_accuracy"], "seconds": seconds,
            "model": meta.get("architecture", {}).get("name"), "epochs": meta.get("metrics", {}).get("epochs"),
            "pretrained": meta.get("pretrained") or meta.get("init_from"),
            "settings": {k: used.get(k) for k in ("model", "pretrained", "freeze", "augment", "batch_size", "lr",
                                                  "optimizer", "schedule", "label_smoothing", "budget", "epochs")}}


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default=",".join(DATASETS), help=f"comma list of {', '.join(DATASETS)}")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma list of {', '.join(ROWS)}")
    ap.add_argument("--draws", type=int, default=5, help="seeded draws per row (draw k: seed k; default 5)")
    ap.add_argument("--per-class", type=int, default=100, help="training pictures per class (default 100)")
    ap.add_argument("--budget", default="3m", help="each run's --budget (default 3m; the issue's limit is 5 "
                                                   "minutes a whole command)")
    ap.add_argument("--epochs", type=int, help="a fixed number of epochs instead of --budget")
    ap.add_argument("--row-flags", action="append", default=[], metavar="[DATASET:]ROW=FLAGS",
                    help="flags for one row's runs, after the row's own and instead of --budget/--epochs when they "
                         "set a length (repeatable), e.g. 'cifar10:finetuned=--imgsz 128 --epochs 3'")
    ap.add_argument("--row-draws", action="append", default=[], metavar="[DATASET:]ROW=N",
                    help="draws for one row instead of --draws (repeatable), e.g. 'tutorial=1': the tutorial row "
                         "trains on the whole training set, so its draws differ only in the seed")
    ap.add_argument("--continue", dest="resume", action="store_true",
                    help="reuse the runs already in OUT/fewshot.runs.jsonl (every finished run is appended there) "
                         "whose command is the same: a long benchmark can stop and go on")
    ap.add_argument("--fashion", help="Fashion-MNIST IDX folder (default: where minivision finds it)")
    ap.add_argument("--cifar", help="CIFAR-10 JPEG folder or archive (default: the development machine's)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results",
                    help="folder for fewshot.md and fewshot.json (default bench/results)")
    ap.add_argument("--quick", action="store_true",
                    help="a check that everything runs: 5 per class, 2 draws, scratch on Fashion-MNIST, 1 epoch")
    a = ap.parse_args(argv)
    a.command = " ".join(["python3 bench/fewshot.py", *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    if a.quick:
        a.per_class, a.epochs = 5, 1
        if "--draws" not in (argv or sys.argv):
            a.draws = 2
        if "--rows" not in (argv or sys.argv):
            a.rows = "scratch"
        if "--datasets" not in (argv or sys.argv):
            a.datasets = "fashion-mnist"
    try:
        return _run(a)
    except MinivisionError as e:
        print(f"fewshot: {e}", file=sys.stderr)
        return 2


def _check_names(given: str, known, what: str) -> list[str]:
    names = [n.strip() for n in given.split(",") if n.strip()]
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise MinivisionError(f"unknown {what} {', '.join(bad) or '(none given)'}; choose from {', '.join(known)}")
    return names


def _run(a: argparse.Namespace) -> int:
    datasets = _check_names(a.datasets, DATASETS, "dataset")
    rows = _check_names(a.rows, ROWS, "row")
    if a.draws < 1 or a.per_class < 1:
        raise MinivisionError("--draws and --per-class must be at least 1")
    length = ["--epochs", str(a.epochs)] if a.epochs else ["--budget", a.budget]
    extra = _row_flags(a.row_flags, datasets, rows)
    draws = _row_draws(a.row_draws, datasets, rows)
    has_pretrained = cli_has("--pretrained")
    a.out.mkdir(parents=True, exist_ok=True)
    log = a.out / "fewshot.runs.jsonl"
    done = {}
    if a.resume and log.is_file():
        for line in log.read_text().splitlines():
            r = json.loads(line)
            done[r["command"]] = r
    elif log.is_file():
        log.unlink()
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="fewshot-") as tmp:
        tmp = Path(tmp)
        for name in datasets:
            source, listing, train = _source(name, a)
            for row in rows:
                label, flags, only = ROWS[row]
                flags = [OWN[name] if f == "OWN" else f for f in flags]
                own_length = length
                if (name, row) in extra:
                    flags = flags + extra[name, row]
                    if {"--epochs", "--budget", "--steps"} & set(extra[name, row]):
                        own_length = []
                if only is not None and name not in only:
                    continue
                if not has_pretrained:  # until --pretrained lands, scratch is the plain CLI and the others wait
                    if row != "scratch":
                        print(f"skipping {row} on {name}: this minivision has no --pretrained", flush=True)
                        continue
                    flags = []
                runs = []
                for k in range(draws.get((name, row), a.draws)):
                    where = tmp / f"{name}-{row}-{k}"
                    if row == "tutorial":
                        data = Path(name)  # the named dataset, whole
                    elif name == "fashion-mnist":
                        data = fashion_draw(source, a.per_class, k, where, train)
                    else:
                        data = folder_draw(source, a.per_class, k, where, listing=listing)
                    shown = " ".join(["minivision train --data", name if row == "tutorial" else f"DRAW{k}/{name}",
                                      *flags, *own_length, "--seed", str(k)])
                    print(f"$ {shown}", flush=True)
                    if shown in done and "error" not in done[shown]:
                        runs.append(done[shown])
                        print(f"  (from {log.name}) test {done[shown]['test_accuracy']:.2%}, "
                              f"{done[shown]['seconds']:.0f} s", flush=True)
                        shutil.rmtree(where, ignore_errors=True)
                        continue
                    load0 = os.getloadavg()[0]
                    r = run_one(data, flags, own_length, k, tmp / "runs", f"{name}-{row}-{k}")
                    r |= {"draw": k, "command": shown, "load": [load0, os.getloadavg()[0]]}
                    with open(log, "a") as fh:
                        fh.write(json.dumps(r) + "\n")
                    runs.append(r)
                    print("  " + (f"failed: {r['error']}" if "error" in r else
                                  f"test {r['test_accuracy']:.2%}, {r['seconds']:.0f} s"), flush=True)
                    shutil.rmtree(where, ignore_errors=True)
                results.append(_summarise(name, row, label, runs, a, flags, own_length))
    _write(results, a, length)
    return 0 if all(r["ok"] for r in results) else 1


def _row_flags(given: list[str], datasets: list[str], rows: list[str]) -> dict[tuple[str, str], list[str]]:
    """``--row-flags [DATASET:]ROW=FLAGS`` values -> {(dataset, row): flags}; raises MinivisionError on an
    unknown dataset or row."""
    out: dict[tuple[str, str], list[str]] = {}
    for item in given:
        key, sep, flags = item.partition("=")
        if not sep:
            raise MinivisionError(f"--row-flags {item!r}: expected [DATASET:]ROW=FLAGS")
        data, _, row = key.rpartition(":")
        _check_names(row, ROWS, "row")
        for name in _check_names(data, DATASETS, "dataset") if data else datasets:
            out[name, row] = shlex.split(flags)
    return out


def _row_draws(given: list[str], datasets: list[str], rows: list[str]) -> dict[tuple[str, str], int]:
    """``--row-draws [DATASET:]ROW=N`` values -> {(dataset, row): N}; raises MinivisionError on an unknown
    dataset or row or an N below 1."""
    out: dict[tuple[str, str], int] = {}
    for item in given:
        key, sep, n = item.partition("=")
        if not sep or not n.strip().isdigit() or int(n) < 1:
            raise MinivisionError(f"--row-draws {item!r}: expected [DATASET:]ROW=N with N at least 1")
        data, _, row = key.rpartition(":")
        _check_names(row, ROWS, "row")
        for name in _check_names(data, DATASETS, "dataset") if data else datasets:
            out[name, row] = int(n)
    return out


def _source(name: str, a: argparse.Namespace):
    """(source folder, its train listing for folders, its train arrays for IDX) for ``name``."""
    if name == "fashion-mnist":
        from minivision.data import idx
        from minivision.data.sources import locate

        source = Path(a.fashion) if a.fashion else locate("fashion-mnist")
        files = idx.find_idx_files(source)
        train = (idx.read_idx(files["train-images"]), idx.read_idx(files["train-labels"]))
        return source, None, train
    from minivision import benchmark

    folder, why = benchmark.cifar_folder(a.cifar or devpaths.cifar_source())
    if folder is None:
        raise MinivisionError(why)
    return Path(folder), folder_files(Path(folder) / "train"), None


def _summarise(name: str, row: str, label: str, runs: list[dict], a: argparse.Namespace, flags: list[str],
               length: list[str]) -> dict:
    good = [r for r in runs if "error" in r] == []
    acc = [r["test_accuracy"] for r in runs if "error" not in r]
    secs = [r["seconds"] for r in runs if "error" not in r]
    out = {"dataset": name, "row": row, "label": label, "ok": good and bool(acc), "draws": len(runs),
           "per_class": None if row == "tutorial" else a.per_class, "flags": flags + length, "runs": runs}
    if acc:
        (out["accuracy_mean"], out["accuracy_std"]), (out["seconds_mean"], out["seconds_std"]) = \
            mean_std(acc), mean_std(secs)
    return out


def _write(results: list[dict], a: argparse.Namespace, length: list[str]) -> None:
    import torch

    date = dt.date.today().isoformat()
    lines = [f"Measured {date} on {cpu_name()}, {os.cpu_count()} cores, "
             f"torch {torch.__version__}, Python {platform.python_version()}. Command: "
             f"`{a.command}` ({a.draws} draws (unless the row says fewer) of {a.per_class} "
             f"training pictures per class; {' '.join(length)} per run unless the row's flags set a length; test "
             "accuracy on the whole test set; seconds for the whole command, timed from outside; load: the "
             f"1-minute load average at each run's start and end, averaged: above {os.cpu_count()} other work "
             "shared the machine and the seconds are inflated, while a fixed --epochs keeps the accuracy "
             "the same).", "",
             "| data | row | flags | pictures per class | test accuracy (mean +- std) | seconds (mean +- std) | "
             "load (1-min average, mean) | failed |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        failed = sum("error" in x for x in r["runs"])
        acc = (f"{r['accuracy_mean']:.2%} +- {r['accuracy_std']:.2%}" if "accuracy_mean" in r else "-")
        secs = (f"{r['seconds_mean']:.0f} +- {r['seconds_std']:.0f}" if "seconds_mean" in r else "-")
        loads = [sum(x["load"]) / 2 for x in r["runs"] if "load" in x]
        load = f"{statistics.fmean(loads):.1f}" if loads else "-"
        lines.append(f"| {SHOWN_DATA[r['dataset']]} | {r['label']} | `{' '.join(r['flags'])}` | "
                     f"{r['per_class'] or 'all'} | {acc} | {secs} | {load} | {failed} of {r['draws']} |")
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    a.out.mkdir(parents=True, exist_ok=True)
    write_text(a.out / "fewshot.md", table)
    write_json(a.out / "fewshot.json", {"date": date, "cores": os.cpu_count(), "draws": a.draws,
                                        "per_class": a.per_class, "quick": a.quick, "results": results})
    print(f"wrote {a.out / 'fewshot.md'} and {a.out / 'fewshot.json'}")


if __name__ == "__main__":
    sys.exit(main())
