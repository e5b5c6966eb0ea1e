"""How long a run's report takes to draw, with the font fallback list narrowed and without.

A run's report (``report.run.write_run_report``: six PNG pictures, per_class.csv, report.html) for the
10,000 Fashion-MNIST test images, drawn the way ``minivision train`` draws it, alternately with the
fallback list narrowed to the families the pictures' texts need (``report.fonts.fit_fonts``, what
minivision does) and with the full list of installed families (the baseline: ``fit_fonts`` made a
no-op). Both write byte-for-byte comparable pictures; the script checks that their pixels are equal.

    python3 bench/report_draw.py [--rounds 3] [--json FILE]

The logits are a fixed random draw that scores about 90% (a report's drawing time does not depend on
the model). Run it alone: the two cores are easily disturbed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _report(out: Path, narrowed: bool, split, classes: list[str], logits: torch.Tensor,
            history: list[dict]) -> float:
    from minivision.report import fonts, run

    saved = fonts.fit_fonts
    if not narrowed:
        fonts.fit_fonts = lambda fig: contextlib.nullcontext()
    try:
        t0 = time.perf_counter()
        run.write_run_report(out, classes=classes, split=split, split_name="test", logits=logits, history=history,
                             meta={"calibration": {"temperature": 1.2}}, parameters=70_320, settings={},
                             dataset=[], log=lambda msg: None)
        return time.perf_counter() - t0
    finally:
        fonts.fit_fonts = saved


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="pairs of reports drawn (default 3)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    a = p.parse_args(argv)

    import matplotlib  # noqa: F401  imported before timing: both arms pay it once, in the first report

    from minivision.benchmark import machine_info
    from minivision.data import load_dataset

    ds = load_dataset("fashion-mnist")
    split = ds.test
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(len(split.y), len(ds.classes), generator=g) * 2
    logits[torch.arange(len(split.y)), split.y] += 4
    history = [{"epoch": e, "train_loss": 0.6 / e, "train_accuracy": 0.8 + e / 100, "val_loss": 0.4 / e,
                "val_accuracy": 0.85 + e / 100, "lr": 0.1 / e, "seconds": 15.0} for e in (1, 2, 3)]
    times: dict[str, list[float]] = {"narrowed": [], "full": []}
    with tempfile.TemporaryDirectory() as tmp:
        _report(Path(tmp) / "warm", True, split, ds.classes, logits, history)  # imports and font caches, untimed
        for _ in range(a.rounds):
            for arm in ("full", "narrowed"):
                out = Path(tmp) / arm
                out.mkdir(exist_ok=True)
                times[arm].append(_report(out, arm == "narrowed", split, ds.classes, logits, history))
        from PIL import Image

        same = all(np.array_equal(np.asarray(Image.open(Path(tmp) / "full" / f.name)), np.asarray(Image.open(f)))
                   for f in sorted((Path(tmp) / "narrowed").glob("*.png")))
    info = machine_info()
    flags = ", ".join(k for k, v in info["flags"].items() if v) or "none of avx2/avx512"
    print(f"machine: {info['cpu']}, {info['cpu_count']} CPUs, flags: {flags}; torch {info['torch']}")
    for arm, label in (("full", "full fallback list (baseline)"), ("narrowed", "narrowed to the texts' families")):
        runs = ", ".join(f"{t:.2f}" for t in times[arm])
        print(f"{label}: median {statistics.median(times[arm]):.2f} s (runs {runs})")
    print(f"pictures pixel-identical: {'yes' if same else 'NO'}")
    if a.json:
        a.json.write_text(json.dumps({"machine": info, "seconds": times, "pixel_identical": same}, indent=1))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
