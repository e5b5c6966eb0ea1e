#!/usr/bin/env python3
"""A trained model's test pass read in fp32 against bf16 autocast: top-1 accuracy and seconds per pass.

    python3 bench/reading_precision.py RUN [--rounds 3]

``RUN`` is a finished run folder; its test split is scored with the picture alone (no TTA), in rounds that
alternate fp32 and bf16 so a slow minute of the machine reaches both; the pass is ``evaluate``'s own
(``minivision.evaluate.split_logits``, batches of 256, the product's threads), timed without loading the model
or the data. ``minivision`` reads a model in fp32 under ``--precision auto`` so that its figures equal
``evaluate``'s, ``predict``'s and the fp32 export's on every CPU; this measures what that costs where bf16
is in hardware (a CPU with AVX-512 BF16 or AMX; elsewhere bf16 is emulated and slower).
Run it alone: the two cores are easily disturbed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from minivision.benchmark import machine_info  # noqa: E402
from minivision.errors import MinivisionError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a finished run folder")
    p.add_argument("--rounds", type=int, default=3, help="passes per precision (default 3)")
    a = p.parse_args(argv)
    if a.rounds < 1:
        p.error(f"--rounds must be at least 1 (got {a.rounds})")
    from minivision.evaluate import scoring_data, split_logits
    from minivision.runfiles import load_model

    try:
        lm = load_model(a.run, trust=False)
        data = scoring_data(lm)
    except MinivisionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    y = data.split.y
    info = machine_info()
    flags = ", ".join(k for k, v in info["flags"].items() if v) or "none of avx2/avx512"
    print(f"machine: {info['cpu']}, {info['cpu_count']} CPUs, flags: {flags}; torch {info['torch']}; "
          f"model {lm.meta.get('architecture', {}).get('name')} ({a.run}), {len(y):,} {data.split_name} pictures")
    seconds: dict[str, list[float]] = {"fp32": [], "bf16": []}
    accuracy: dict[str, float] = {}
    split_logits(lm, data.split, precision="fp32")  # warm-up: the first pass allocates and picks kernels
    for r in range(a.rounds):
        for precision in (("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32")):
            t0 = time.perf_counter()
            logits = split_logits(lm, data.split, precision=precision)
            seconds[precision].append(time.perf_counter() - t0)
            accuracy[precision] = float((logits.argmax(1) == torch.as_tensor(y)).float().mean())
    for precision, times in seconds.items():
        print(f"{precision}: top-1 {accuracy[precision]:.2%}, {statistics.median(times):.2f} s per pass "
              f"(median of {a.rounds}: {', '.join(f'{t:.2f}' for t in times)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
