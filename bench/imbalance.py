#!/usr/bin/env python3
"""Imbalanced classes: Fashion-MNIST with four classes cut to 5% of their training pictures, trained three ways.

    python3 bench/imbalance.py                     # mlp, 5 epochs, classes 0,2,4,6 cut to 5%, seed 0
    python3 bench/imbalance.py --model cnn1 --epochs 3 --seeds 0,1,2
    python3 bench/imbalance.py --quick             # a minute's check that it all runs (3,000 pictures, 1 epoch)

Rows (the same model, epochs, batch size, seed and data; only the correction differs):

- ``none``: plain training (``--class-weight none --sampler shuffle``);
- ``weights``: ``--class-weight balanced`` (each class's loss term weighted n_samples / (n_classes * count));
- ``sampler``: ``--sampler balanced`` (each batch drawn with equal class probability, with replacement).

The cut: of the 60,000 training pictures, the classes given by ``--cut`` (default T-shirt/top, Pullover, Coat,
Shirt: the four classes most confused with each other, so the cut matters) keep their first ``--keep`` (5%)
pictures after a seeded shuffle; the other six keep all 6,000. The validation split is a stratified 10% of what is
left (as imbalanced as the training split, as a user's would be); the test set is the whole, balanced, 10,000.
Figures per row: test accuracy, balanced accuracy (mean recall per class), macro F1, and the mean recall of the cut
classes, each the mean (+- sample std with several seeds) over the seeds. Accuracy does not depend on the machine's
load (fixed epochs, CPU, same seed: same weights), so this can run beside other work; the seconds can.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROWS = {"none": {}, "weights": {"class_weight": "balanced"}, "sampler": {"sampler": "balanced"}}


def cut_dataset(keep: float, cut: list[int], seed: int, limit: int | None = None):
    """Fashion-MNIST with the classes ``cut`` reduced to ``keep`` of their training pictures (seeded pick),
    optionally only the first ``limit`` training pictures of a seeded shuffle first (``--quick``)."""
    import dataclasses

    import torch

    import minivision as mv

    ds = mv.load_dataset("fashion-mnist")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(ds.train), generator=g)
    if limit:
        order = order[:limit]
    y = ds.train.y[order]
    parts = []
    for k in range(ds.num_classes):
        idx = order[y == k]
        parts.append(idx[: max(2, round(len(idx) * keep))] if k in cut else idx)
    kept = torch.sort(torch.cat(parts)).values
    return dataclasses.replace(ds, train=ds.train.subset(kept), val=None)


def run_row(name: str, ds, args, seed: int, out: Path) -> dict:
    import minivision as mv
    from minivision.config import TrainConfig
    from minivision.train import fit

    cfg = TrainConfig(model=args.model, epochs=args.epochs, batch_size=args.batch_size, seed=seed, val_split=0.1,
                      out=str(out), name=f"{name}-seed{seed}", **ROWS[name])
    t0 = time.perf_counter()
    result = fit(cfg, dataset=ds, progress=False, log=lambda m: None)
    seconds = time.perf_counter() - t0
    m = mv.load(result.run_dir).evaluate(ds, split="test")
    recall = {r["class"]: r["recall"] for r in m["classes"]}
    cut_names = [ds.classes[k] for k in args.cut]
    return {"row": name, "seed": seed, "accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"],
            "macro_f1": m["macro_f1"], "cut_recall": statistics.fmean(recall[c] for c in cut_names),
            "seconds": round(seconds, 1), "run": str(result.run_dir)}


def _stat(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2%}"
    return f"{statistics.fmean(values):.2%} +- {statistics.stdev(values):.2%}"


def table(results: list[dict]) -> str:
    lines = ["| row | test accuracy | balanced accuracy | macro F1 | recall of the cut classes "
             "| seconds (load-dependent) |",
             "|---|---:|---:|---:|---:|---:|"]
    for name in ROWS:
        rs = [r for r in results if r["row"] == name]
        if not rs:
            continue
        lines.append(f"| {name} | {_stat([r['accuracy'] for r in rs])} | {_stat([r['balanced_accuracy'] for r in rs])}"
                     f" | {_stat([r['macro_f1'] for r in rs])} | {_stat([r['cut_recall'] for r in rs])}"
                     f" | {statistics.fmean(r['seconds'] for r in rs):.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mlp")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--keep", type=float, default=0.05, help="share of the cut classes' pictures kept (default 0.05)")
    p.add_argument("--cut", default="0,2,4,6", help="the classes cut (default 0,2,4,6)")
    p.add_argument("--seeds", default="0", help="comma list of seeds (the cut and the training)")
    p.add_argument("--rows", default="none,weights,sampler")
    p.add_argument("--out", default="/tmp/minivision-bench-imbalance", help="parent of the run folders")
    p.add_argument("--json", default=None, help="write the results here (default: print only)")
    p.add_argument("--quick", action="store_true", help="3,000 training pictures, 1 epoch: does it run")
    args = p.parse_args(argv)
    args.cut = [int(c) for c in args.cut.split(",")]
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    bad = [r for r in rows if r not in ROWS]
    if bad:
        p.error(f"unknown row(s) {', '.join(bad)}; choose from {', '.join(ROWS)}")
    if args.quick:
        args.epochs = 1
    out = Path(args.out) / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    results = []
    for seed in (int(s) for s in args.seeds.split(",")):
        ds = cut_dataset(args.keep, args.cut, seed, limit=3000 if args.quick else None)
        for name in rows:
            r = run_row(name, ds, args, seed, out)
            print(json.dumps(r), file=sys.stderr)
            results.append(r)
    import torch

    import minivision

    command = "python3 bench/imbalance.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"command: {command.strip()}\nmodel {args.model}, {args.epochs} epochs, batch {args.batch_size}, classes "
          f"{args.cut} cut to {args.keep:.0%}; minivision {minivision.__version__}, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, {dt.date.today()}\n")
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps({"command": command, "date": str(dt.date.today()), "args": vars(args),
                                               "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
