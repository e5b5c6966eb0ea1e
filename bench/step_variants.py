"""Milliseconds per training step of an mvnet network, as built and with one change at a time.

Each variant builds the registered network (``--model``, default mvnet-t), takes ``--warmup`` steps
untimed and times ``--steps`` steps of SGD with momentum on one fixed random batch (forward, loss,
backward, update), in rounds that visit the variants in turn so a slow minute of the machine hits
them all alike; each round starts one variant later than the last (a first version that always ran
``base`` first found GELU's tanh form at 0.81x its time; with the order turned it was 0.98x).
Variants:

- ``base``: the network as minivision trains it (channels-last memory format, eager PyTorch);
- ``nchw``: the same network in the default (NCHW) memory format;
- ``reshape-max``: each 2x2 max-pool written as a reshape and ``amax`` (the same function);
- ``gelu-tanh``: GELU's tanh approximation instead of the exact erf form;
- ``relu``: ReLU instead of GELU (a different network: for its step time only);
- ``compile``: ``torch.compile`` of the step function; its first call (the compilation) is timed apart;
- ``bf16``: the base network with forward and loss under bf16 autocast, as ``--precision bf16`` (and
  ``auto`` on a CPU with AVX-512 BF16 or AMX) trains it; on a CPU without them bf16 is emulated and slow;
- ``compile-bf16``: ``torch.compile`` of the ``bf16`` step (Inductor can fuse the casts autocast adds around
  each operator); its first call is timed apart.

    python3 bench/step_variants.py [--model mvnet-t] [--variants base,compile,...] [--rounds 3]

Run it alone: the two cores are easily disturbed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

VARIANTS = ("base", "nchw", "reshape-max", "gelu-tanh", "relu", "compile", "bf16", "compile-bf16")


class ReshapeMax(nn.Module):
    """2x2 max-pool as reshape + amax (floor of odd sides, as nn.MaxPool2d(2) does)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2] // 2, x.shape[3] // 2
        return x[:, :, :2 * h, :2 * w].unflatten(3, (w, 2)).unflatten(2, (h, 2)).amax((3, 5))


def build(model: str, variant: str, channels: int, side: int) -> nn.Module:
    import minivision.models  # noqa: F401  registers the networks
    from minivision.models.registry import create_model

    net = create_model(model, in_channels=channels, image_size=(side, side), num_classes=10)
    for mod in net.modules():
        if not isinstance(mod, nn.Sequential):
            continue
        if variant == "reshape-max" and "pool" in mod._modules:
            mod._modules["pool"] = ReshapeMax()
        if variant in ("gelu-tanh", "relu") and "act" in mod._modules:
            mod._modules["act"] = nn.GELU(approximate="tanh") if variant == "gelu-tanh" else nn.ReLU()
    return net if variant == "nchw" else net.to(memory_format=torch.channels_last)


def time_variant(model: str, variant: str, batch: int, channels: int, side: int, warmup: int,
                 steps: int) -> tuple[float, float | None]:
    """(ms per step, seconds of the first call when compiled else None)."""
    torch.manual_seed(0)
    net = build(model, variant, channels, side)
    x = torch.randn(batch, channels, side, side)
    if variant != "nchw":
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True)

    def step() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant in ("bf16", "compile-bf16")):
            loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        return loss

    compiled = variant.startswith("compile")
    fn = torch.compile(step) if compiled else step
    t0 = time.perf_counter()
    fn()
    opt.step()
    first = time.perf_counter() - t0 if compiled else None
    for _ in range(warmup):
        fn()
        opt.step()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
        opt.step()
    return (time.perf_counter() - t0) / steps * 1000, first


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mvnet-t", help="a registered mvnet network (default mvnet-t)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma list of " + ", ".join(VARIANTS)
                   + " (default: all)")
    p.add_argument("--batch", type=int, default=128, help="pictures per step (default 128)")
    p.add_argument("--channels", type=int, default=1, help="1: Fashion-MNIST's grey (default), 3: CIFAR's colour")
    p.add_argument("--side", type=int, default=28, help="picture side in pixels (default 28)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before the timed ones (default 5)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per variant and round (default 20)")
    p.add_argument("--rounds", type=int, default=3, help="rounds over the variants (default 3)")
    a = p.parse_args(argv)
    for name in ("batch", "channels", "side", "steps", "rounds"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be at least 1 (got {getattr(a, name)})")
    if a.warmup < 0:
        p.error(f"--warmup must be 0 or more (got {a.warmup})")
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")

    from minivision.benchmark import machine_info

    info = machine_info()
    flags = ", ".join(k for k, v in info["flags"].items() if v) or "none of avx2/avx512"
    print(f"machine: {info['cpu']}, {info['cpu_count']} CPUs, flags: {flags}; torch {info['torch']}; "
          f"{a.model}, batch {a.batch} of {a.channels}x{a.side}x{a.side}, fp32 unless the variant says", flush=True)
    ms: dict[str, list[float]] = {v: [] for v in variants}
    compile_s: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(a.rounds):
        for v in variants[r % len(variants):] + variants[:r % len(variants)]:
            per_step, first = time_variant(a.model, v, a.batch, a.channels, a.side, a.warmup, a.steps)
            ms[v].append(per_step)
            if first is not None:
                compile_s[v].append(first)
    base = statistics.median(ms["base"]) if "base" in ms else None
    for v in variants:
        med = statistics.median(ms[v])
        vs = f", {med / base:.2f}x base" if base and v != "base" else ""
        first = compile_s[v]
        extra = (f"; first call (compiling) {first[0]:.1f} s in the first round, "
                 f"{', '.join(f'{c:.1f}' for c in first[1:])} s after (cached)") if first else ""
        print(f"{v:12s} {med:6.1f} ms/step (median of {a.rounds}: {', '.join(f'{t:.1f}' for t in ms[v])}){vs}{extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
