"""The exploration loop behind the 30-second recipe (docs/BENCHMARKS.md, "How the 30-second recipe was found").

A plain training loop with a training-time budget, for trying networks and settings quickly
outside the product's fit loop (no run folder, no checkpoints). ``Net(stem, stem_pool, widths,
depth)`` is the mvnet family (``Net(16, True, (32, 64))`` is mvnet-t, ``Net(16, False, (16, 32,
64))`` mvnet-s); ``run(name, net, bs, lr, wd, ls, budget, aug, tta, seed, adam)`` trains for
``budget`` seconds of training (throughput timed on steps 3-13, then the one-cycle schedule is
planned over the steps that fit) and prints the test accuracy. ``ema=(0.999, ...)`` also keeps an
exponential moving average of the weights and buffers for each decay (updated every step, as timm's
``ModelEmaV2``), and prints each average's test accuracy beside the plain one: a paired comparison
from one run. Run experiments as Python:

    python3 bench/recipe_search.py 'run("mvnet-t", Net(16, True, (32, 64)), bs=128, budget=20)'

Run it alone: two OpenMP threads slow down badly when anything else shares the two cores.
"""

from __future__ import annotations

import sys
import time
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from minivision.data import load_dataset
from minivision.data.augment import Augment

torch.set_num_threads(2)
ACT = nn.GELU
DS = load_dataset("fashion-mnist")
XTR, YTR, XTE, YTE = DS.train.x, DS.train.y, DS.test.x, DS.test.y
MEAN = XTR.float().mean() / 255
STD = (XTR.float() / 255).std()


def pre(x: torch.Tensor) -> torch.Tensor:
    return ((x.float() / 255 - MEAN) / STD).contiguous(memory_format=torch.channels_last)


def cba(ci: int, co: int, pool: bool, k: int = 3) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict(conv=nn.Conv2d(ci, co, k, padding=k // 2, bias=False))
    if pool:
        layers["pool"] = nn.MaxPool2d(2)
    layers["norm"] = nn.BatchNorm2d(co)
    layers["act"] = ACT()
    return nn.Sequential(layers)


class Net(nn.Module):
    def __init__(self, stem: int = 16, stem_pool: bool = False, widths: tuple[int, ...] = (16, 32, 64),
                 depth: int = 1) -> None:
        super().__init__()
        layers = [cba(1, stem, stem_pool)]
        c = stem
        for w in widths:
            layers.append(cba(c, w, True))
            layers += [cba(w, w, False) for _ in range(depth)]
            c = w
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c, 10, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.adaptive_max_pool2d(self.body(x), 1).flatten(1)) / 8


def _scores(net: nn.Module, flip: bool) -> torch.Tensor:
    out = []
    for i in range(0, len(YTE), 1000):
        xb = pre(XTE[i:i + 1000])
        out.append(net(xb.flip(3) if flip else xb))
    return torch.cat(out)


def run(name: str, net: nn.Module, bs: int = 256, lr: float = 0.2, wd: float = 5e-4, ls: float = 0.1,
        budget: float = 20.0, aug: str = "", tta: bool = False, seed: int = 0, adam: bool = False,
        ema: tuple[float, ...] = ()) -> float:
    import copy

    torch.manual_seed(seed)
    net = net.to(memory_format=torch.channels_last)
    averages = [(d, copy.deepcopy(net)) for d in ema]
    opt = (torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=wd) if adam else
           torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=wd))
    augment = Augment.parse(aug) if aug else None
    g = torch.Generator().manual_seed(seed)
    n = len(YTR)
    net.train()
    t = time.perf_counter()
    step, total, t_mark = 0, None, 0.0
    perm, pi = torch.randperm(n, generator=g), 0
    while total is None or step < total:
        if pi + bs > n:
            perm, pi = torch.randperm(n, generator=g), 0
        idx = perm[pi:pi + bs]
        pi += bs
        xb, yb = pre(XTR[idx]), YTR[idx]
        if augment:
            xb = augment(xb, g)
        if total is None and step == 3:
            t_mark = time.perf_counter()
        if total is None and step == 13:  # plan the schedule over the steps that fit in the budget
            per_step = (time.perf_counter() - t_mark) / 10
            total = step + int((budget - (time.perf_counter() - t)) / per_step)
        frac = step / max((total or 10**9) - 1, 1)
        cur = lr * 0.1 if total is None else lr * (0.1 + 0.9 * frac / 0.2) if frac < 0.2 else lr * (1 - frac) / 0.8
        for group in opt.param_groups:
            group["lr"] = cur
        loss = F.cross_entropy(net(xb), yb, label_smoothing=ls)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        for d, avg in averages:
            with torch.no_grad():
                torch._foreach_lerp_(list(avg.parameters()), list(net.parameters()), 1 - d)
                for b_avg, b in zip(avg.buffers(), net.buffers()):
                    b_avg.copy_(b) if not b.is_floating_point() else b_avg.lerp_(b, 1 - d)
    train_s = time.perf_counter() - t
    net.eval()
    with torch.no_grad():
        logits = _scores(net, False)
        acc = (logits.argmax(1) == YTE).float().mean().item()
        acc_tta = ((logits + _scores(net, True)).argmax(1) == YTE).float().mean().item() if tta else float("nan")
        ema_text = ""
        for d, avg in averages:
            avg.eval()
            ema_text += f" ema {d:g} {(_scores(avg, False).argmax(1) == YTE).float().mean().item():.4f}"
    print(f"{name:40s} steps {step} ep {step * bs / n:.2f} ms/step {1000 * train_s / step:.0f} "
          f"train {train_s:.1f}s test {acc:.4f} tta {acc_tta:.4f}{ema_text}", flush=True)
    return acc


if __name__ == "__main__":
    exec(sys.argv[1])  # a developer's experiment, e.g. 'run("mvnet-t", Net(16, True, (32, 64)), bs=128)'
