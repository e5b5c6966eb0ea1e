"""A 3 x 3 convolution's speed in fp32 and under bf16 autocast, side by side, in GFLOP/s.

``minivision.benchmark.conv_gflops`` (64 to 64 channels, batch 32 of 32 x 32, channels-last, forward and
backward) timed for ``--seconds`` per precision, in ``--rounds`` rounds that alternate which precision goes
first, so a slow minute of the machine hits both alike; prints the median of each and their ratio. It tells
what a CPU's bf16 instructions give the convolutions alone; ``bench/step_variants.py --variants base,bf16``
tells what they give a whole training step.

    python3 bench/conv_precision.py [--seconds 2] [--rounds 3]

Run it alone: the two cores are easily disturbed.
"""

from __future__ import annotations

import argparse
import statistics


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=2.0, help="seconds timed per precision and round (default 2)")
    p.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    a = p.parse_args(argv)
    if a.seconds <= 0 or a.rounds < 1:
        p.error("--seconds must be above 0 and --rounds at least 1")

    from minivision.benchmark import conv_gflops, describe_machine, machine_info

    print(describe_machine(machine_info()), flush=True)
    got: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for r in range(a.rounds):
        for precision in ("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32"):
            got[precision].append(conv_gflops(a.seconds, precision))
    med = {k: statistics.median(v) for k, v in got.items()}
    for k, v in got.items():
        print(f"{k}: {med[k]:.0f} GFLOP/s (rounds: {', '.join(f'{g:.0f}' for g in v)})")
    print(f"bf16 / fp32: {med['bf16'] / med['fp32']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
