#!/usr/bin/env python3
"""Pretrain minivision's own small backbones and write them, with their cards, into the package.

    OMP_NUM_THREADS=2 python3 bench/pretrain_backbones.py              # both backbones (~15-30 min on 2 cores)
    python3 bench/pretrain_backbones.py --only mvnet-fashion            # one of them
    python3 bench/pretrain_backbones.py --tiny 300 --out /tmp/bb        # a check: 300 pictures, 1 epoch

Each backbone is an ordinary ``minivision train`` run (the real CLI, ``python -m minivision``, in a
temporary folder, seed 0, a fixed number of epochs, so that the same machine gives the same weights:
a time budget would plan fewer steps on a busier machine), and what ships is exactly that run's
``model.safetensors`` (head included: ``pretrained`` resets it for the user's classes) plus a card,
``<name>.json``: what the weights are, what they were trained on, by whom, under which terms, the
input they expect (channels, size, mean/std of the run's saved preprocessing), the file's sha256,
the parameter count, and the run's own test accuracy with the exact command, date and machine.
Every figure on a card is read back from the run that made the weights.

Why our own backbones: the ImageNet backbone (EfficientNet-Lite0) has 16x the parameters and needs
pictures resized to 64-224 px: on 2 cores it trains at 98 pictures/s at 64 px and 45 at 96 px, where
mvnet trains at ~800 pictures/s at 28 px (batch 256 in 318 ms: models/mvnet.py). A small network
pretrained on a related small-picture dataset starts a fine-tuning from features that already know
edges, textures and shapes at the user's own picture size.

The two backbones (the rule the training follows: a backbone is never fine-tuned from by default, nor
benchmarked, on the data it was pretrained on; the card's ``dataset`` names that data):
  * ``mvnet-fashion``: mvnet (32-64-128, 292,656 parameters) on Fashion-MNIST's 60,000 training
    pictures (54,000 trained on, 6,000 held out to pick the best epoch), grey 28 x 28. For the jobs
    API's "fashion" uploads and other grey small pictures.
  * ``mvnet-cifar10``: the same network on CIFAR-10 (the JPEG folder: 45,000 trained on, 5,000 held
    out), colour 32 x 32. For colour small pictures.
mvnet rather than mvnet-s: its 128 features (mvnet-s: 64) are what a new head is trained on, and
one network for both keeps the two interchangeable; mvnet-s was not measured as a backbone.

Do they help? Measured 2026-11-30 on the 2-core AMD EPYC (fp32, 1 thread, one seed each): mvnet on
1,000 pictures (the first 100 per class of the training set; 900 trained on, 100 validation), scored
on the whole test set, ``--epochs 20 --batch-size 64 --seed 0``, from scratch against starting from
the other dataset's backbone through ``--init-from`` (first convolution adapted by
``pretrained.adapt_input_conv``, new head, the same recipe):
  Fashion-MNIST: from scratch 80.40%, from mvnet-cifar10 84.17%;
  CIFAR-10 (JPEG folder): from scratch 43.90%, from mvnet-fashion 49.50%
(``--pretrained``, the fine-tuning recipe's two phases, same flags: 83.76% and 45.60%).

Tiny mode (``--tiny N``) trains on the first N training pictures (N/10 per class) and N/2 test
pictures, copied into a temporary folder, for 1 epoch: a check that the whole path works, used by
``tests/test_own_backbones.py``. It refuses to write into the package.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "bench")]

import devpaths  # noqa: E402
from minivision import benchmark  # noqa: E402
from minivision.errors import MinivisionError  # noqa: E402
from minivision.fileio import load_tensors, read_json, write_bytes, write_json  # noqa: E402
from minivision.models.registry import count_parameters, create_model  # noqa: E402

PACKAGE_DIR = ROOT / "src" / "minivision" / "backbones"

# ----------------------------------------------------------------------------------------- Setup
# One entry per backbone: what to train and what its card says about the data. Every other setting
# is mvnet's registered recipe (SGD + Nesterov, one-cycle to lr 0.2, batch 256, label smoothing 0.1,
# flip + shift 2, per-channel standardisation, 10% validation).
BACKBONES = {
    "mvnet-fashion": {
        "model": "mvnet",
        "data": "fashion-mnist",  # minivision's named dataset (Debian's copy, else the cache)
        "dataset": "fashion-mnist",  # the name a run on this data records (model.json dataset.name)
        "epochs": 2,  # ~3 minutes on 2 free cores; 2 epochs of mvnet reach ~91% (mvnet docstring)
        "pretrained_on": "Fashion-MNIST: 60,000 grey 28 x 28 pictures of clothing, 10 classes "
                         "(54,000 trained on, 6,000 held out to pick the best epoch)",
        "licence": "MIT (minivision's licence) for the weights; trained on Fashion-MNIST, "
                   "MIT licence, (c) Zalando SE (github.com/zalandoresearch/fashion-mnist)",
        "notes": "For grey small pictures (the jobs API's 'fashion' uploads and the like). Never "
                 "fine-tune from it by default, nor benchmark it, on Fashion-MNIST: it has seen "
                 "Fashion-MNIST's pictures.",
    },
    "mvnet-cifar10": {
        "model": "mvnet",
        "data": None,  # the CIFAR-10 JPEG folder: --cifar, else the development machine's copy
        "dataset": "cifar10",  # minivision's name for CIFAR-10; a folder of it records its folder's name
        #                        ('cifar10-jpg'), which the training's rule matches by containment
        "epochs": 4,  # ~3 minutes per epoch on 2 free cores
        "pretrained_on": "CIFAR-10 (JPEG folder): 50,000 colour 32 x 32 photos, 10 classes "
                         "(45,000 trained on, 5,000 held out to pick the best epoch)",
        "licence": "MIT (minivision's licence) for the weights; trained on CIFAR-10 (Krizhevsky, "
                   "'Learning Multiple Layers of Features from Tiny Images', 2009), which its authors "
                   "distribute for research without a stated licence; the pictures come from the "
                   "80 Million Tiny Images collection. Check these terms before commercial use.",
        "notes": "For colour small pictures. Never fine-tune from it by default, nor benchmark it, "
                 "on CIFAR-10: it has seen CIFAR-10's pictures (training and validation splits). "
                 "cifar10-jpg in the command is CIFAR-10 as JPEG files in train/<class>/ and "
                 "test/<class>/ folders (a re-encoding: accuracies run a little lower than on the "
                 "original batches).",
    },
}


# ------------------------------------------------------------------------------------------ Data
def _fashion_tiny(folder: Path, n_train: int, n_test: int) -> str:
    """The first n/10 pictures per class of Fashion-MNIST's train and test splits, as an IDX folder
    named ``fashion-mnist`` (so the run records that dataset name and Fashion-MNIST's class names)."""
    from minivision.data import load_dataset

    ds = load_dataset("fashion-mnist")
    out = folder / "fashion-mnist"
    out.mkdir(parents=True)
    for prefix, split, n in (("train", ds.train, n_train), ("t10k", ds.test, n_test)):
        x, y = split.x.numpy()[:, 0], split.y.numpy()
        keep = np.concatenate([np.flatnonzero(y == k)[: max(1, n // 10)] for k in range(10)])
        keep.sort()
        images, labels = x[keep].astype(np.uint8), y[keep].astype(np.uint8)
        (out / f"{prefix}-images-idx3-ubyte").write_bytes(
            np.array([2051, len(keep), 28, 28], ">u4").tobytes() + images.tobytes())
        (out / f"{prefix}-labels-idx1-ubyte").write_bytes(
            np.array([2049, len(keep)], ">u4").tobytes() + labels.tobytes())
    return str(out)


def _cifar_tiny(folder: Path, source: Path, n_train: int, n_test: int) -> str:
    """The first n/10 JPEGs per class of the CIFAR-10 folder's train/ and test/, copied."""
    out = folder / "cifar10-jpg"
    for split, n in (("train", n_train), ("test", n_test)):
        for cls in sorted(p for p in (source / split).iterdir() if p.is_dir()):
            (out / split / cls.name).mkdir(parents=True)
            for f in sorted(cls.iterdir())[: max(1, n // 10)]:
                shutil.copyfile(f, out / split / cls.name / f.name)
    return str(out)


def _cifar_source(given: str | None) -> Path:
    folder, why = benchmark.cifar_folder(given or devpaths.cifar_source())
    if folder is None:
        raise MinivisionError(why)
    return Path(folder)


# ----------------------------------------------------------------------------------------- Train
def _train(name: str, spec: dict, data: str, epochs: int, scratch: Path) -> tuple[Path, list[str]]:
    """Run ``minivision train`` and return its run folder and the command as run."""
    cmd = ["minivision", "train", "--data", data, "--model", spec["model"], "--epochs", str(epochs),
           "--seed", "0", "--out", str(scratch), "--name", name, "--json"]
    print(f"[{name}] {' '.join(cmd)}", flush=True)
    p = subprocess.run([sys.executable, "-m", "minivision", *cmd[1:]], stdout=subprocess.PIPE, text=True)
    if p.returncode != 0:
        raise MinivisionError(f"{name}: minivision train failed (exit {p.returncode})")
    run = Path(json.loads(p.stdout.strip().splitlines()[-1])["run"])
    return run, cmd


# ------------------------------------------------------------------------------------------ Card
def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_card(name: str, spec: dict, run: Path, cmd: list[str], shown_data: str, file: Path,
              source: str) -> dict:
    """The card of backbone ``name`` from its run folder (model.json) and the shipped weights ``file``."""
    meta = read_json(run / "model.json")
    arch, pre, used, metrics = meta["architecture"], meta["preprocess"], meta["used"], meta["metrics"]
    model = create_model(arch["name"], in_channels=arch["in_channels"], image_size=tuple(arch["image_size"]),
                         num_classes=arch["num_classes"], **arch["kwargs"])
    tensors = load_tensors(file)
    threads = os.environ.get("OMP_NUM_THREADS")
    shown = cmd[:3] + [shown_data] + cmd[4:-5]  # the data as a reader would type it; no scratch --out
    command = " ".join(([f"OMP_NUM_THREADS={threads}"] if threads else []) + shown)
    hw = used.get("hardware", {})
    return {
        "name": name,
        "model": arch["name"],
        "model_kwargs": arch["kwargs"],
        "pretrained_on": spec["pretrained_on"],
        "dataset": spec["dataset"],
        "classes": meta["classes"],
        "by": "minivision",
        "licence": spec["licence"],
        "source": source,
        "channels": pre["channels"],
        "size": list(pre["size"]),
        "mean": pre["mean"],
        "std": pre["std"],
        "file": file.name,
        "sha256": _sha256(file),
        "params": count_parameters(model),
        "values": int(sum(t.numel() for t in tensors.values())),
        "results": {
            "test_accuracy": round(float(metrics["test_accuracy"]), 4),
            "dataset_name": meta["dataset"]["name"],  # as the run recorded it (a folder: its name)
            "test_n": metrics.get("test_n"),
            "val_accuracy": round(float(metrics["val_accuracy"]), 4),
            "epochs": metrics.get("epochs"),
            "train_seconds": metrics.get("train_seconds"),
            "command": command,
            "date": meta.get("created", dt.datetime.now(dt.UTC).isoformat(timespec="seconds")),
            "machine": f"{hw.get('cpu', '?')}, {hw.get('cores', '?')} cores, {hw.get('threads', '?')} threads, "
                       f"{used.get('device', 'cpu')} {used.get('precision', 'fp32')}, torch "
                       f"{meta['versions'].get('torch', '?')}, minivision {meta['versions'].get('minivision', '?')}",
        },
        "notes": spec["notes"],
    }


def pretrain(name: str, out: Path, *, tiny: int | None, cifar: str | None, scratch: Path) -> dict:
    """Train backbone ``name``, write ``out/<name>.safetensors`` and ``out/<name>.json``; return the card."""
    spec = BACKBONES[name]
    epochs = 1 if tiny else spec["epochs"]
    if name == "mvnet-fashion":
        data = _fashion_tiny(scratch / "data", tiny, tiny // 2) if tiny else spec["data"]
        shown = "fashion-mnist" if not tiny else data
    else:
        source = _cifar_source(cifar)
        data = _cifar_tiny(scratch / "data", source, tiny, tiny // 2) if tiny else str(source)
        shown = data if tiny else "cifar10-jpg"  # the folder (train/<class>/, test/<class>/ JPEGs)
    run, cmd = _train(name, spec, data, epochs, scratch / "runs")
    file = out / f"{name}.safetensors"
    write_bytes(file, (run / "model.safetensors").read_bytes())  # exactly the run's weights (atomic)
    source = " ".join(["python3 bench/pretrain_backbones.py", "--only", name] + (["--tiny", str(tiny)] if tiny else []))
    card = make_card(name, spec, run, cmd, shown, file, source)
    write_json(out / f"{name}.json", card)
    print(f"[{name}] test accuracy {card['results']['test_accuracy']:.2%} -> {file}", flush=True)
    return card


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", action="append", choices=sorted(BACKBONES), help="this backbone only (repeatable)")
    ap.add_argument("--out", type=Path, default=PACKAGE_DIR, help="where the files go (default: the package)")
    ap.add_argument("--cifar", help="CIFAR-10 JPEG folder (train/, test/) or its archive "
                                    "(default: the development machine's ../shared/datasets copy)")
    ap.add_argument("--tiny", type=int, help="a check: N training pictures, 1 epoch (not into the package)")
    a = ap.parse_args(argv)
    try:
        if a.tiny is not None and (a.tiny < 20 or a.out.resolve() == PACKAGE_DIR.resolve()):
            raise MinivisionError("--tiny needs N >= 20 and an --out folder outside the package")
        a.out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="pretrain-") as tmp:
            for name in a.only or sorted(BACKBONES, reverse=True):  # mvnet-fashion first: the shorter
                pretrain(name, a.out, tiny=a.tiny, cifar=a.cifar, scratch=Path(tmp) / name)
    except MinivisionError as e:
        print(f"pretrain_backbones: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
