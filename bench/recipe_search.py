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

``steps=N`` trains a fixed number of steps instead (see ``run`` for the optimizer, lookahead,
progressive-resizing and training-set options). ``RECIPE_DATA=DIR`` trains on another dataset
minivision reads (e.g. the CIFAR-10 JPEG folder); ``Net(whiten=True)`` starts with airbench's
frozen patch-whitening layer. Run it alone: two OpenMP threads slow down badly when anything else shares the two cores.
"""

from __future__ import annotations

import os
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
# RECIPE_DATA: another dataset minivision reads (a CIFAR-10 image folder, ...); Fashion-MNIST by default
DS = load_dataset(os.environ.get("RECIPE_DATA", "fashion-mnist"))
XTR, YTR, XTE, YTE = DS.train.x, DS.train.y, DS.test.x, DS.test.y
CHANNELS = XTR.shape[1]
MEAN = (XTR.float() / 255).mean(dim=(0, 2, 3), keepdim=True)
STD = (XTR.float() / 255).std(dim=(0, 2, 3), keepdim=True)


def pre(x: torch.Tensor) -> torch.Tensor:
    return ((x.float() / 255 - MEAN) / STD).contiguous(memory_format=torch.channels_last)


class MatConv(nn.Module):
    """A bias-free k x k convolution whose weight is stored as a (out, in * k * k) matrix, the shape
    ``torch.optim.Muon`` accepts (it orthogonalises 2-D updates only)."""

    def __init__(self, ci: int, co: int, k: int) -> None:
        super().__init__()
        self.shape = (co, ci, k, k)
        self.weight = nn.Parameter(nn.Conv2d(ci, co, k, bias=False).weight.detach().reshape(co, -1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight.view(self.shape), padding=self.shape[-1] // 2)


class Muon32:
    """Muon for 4-D convolution weights, in fp32: the update of ``torch.optim.Muon`` (Nesterov
    momentum, five quintic Newton-Schulz steps with Keller Jordan's coefficients, the "original" RMS
    adjustment), but each weight's gradient is seen as an (out, k * k * in) matrix in its
    channels-last memory order (orthogonalisation does not depend on the order of the columns), and
    the iteration runs in fp32 (torch's runs in bf16, which is slow on CPUs without bf16 arithmetic)."""

    def __init__(self, params: list[torch.Tensor], lr: float, momentum: float = 0.95) -> None:
        self.param_groups = [{"params": params, "lr": lr, "scale": 1.0}]
        self.momentum = momentum
        self.bufs = [torch.zeros_like(p) for p in params]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.param_groups[0]["params"]:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        a, b, c = 3.4445, -4.775, 2.0315
        lr = self.param_groups[0]["lr"]
        for p, buf in zip(self.param_groups[0]["params"], self.bufs, strict=True):
            buf.lerp_(p.grad, 1 - self.momentum)
            u = p.grad.lerp(buf, self.momentum).permute(0, 2, 3, 1).reshape(p.shape[0], -1)
            tall = u.shape[0] > u.shape[1]
            x = u.T if tall else u
            x = x / x.norm().clamp(min=1e-7)
            for _ in range(5):
                gram = x @ x.T
                x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
            if tall:
                x = x.T
            scale = max(1.0, u.shape[0] / u.shape[1]) ** 0.5
            p.sub_(x.reshape(p.shape[0], p.shape[2], p.shape[3], p.shape[1]).permute(0, 3, 1, 2), alpha=lr * scale)


MATRIX_CONVS = False  # set True before building a Net for ``opt="muon"``


def cba(ci: int, co: int, pool: bool, k: int = 3) -> nn.Sequential:
    conv = MatConv(ci, co, k) if MATRIX_CONVS else nn.Conv2d(ci, co, k, padding=k // 2, bias=False)
    layers: OrderedDict[str, nn.Module] = OrderedDict(conv=conv)
    if pool:
        layers["pool"] = nn.MaxPool2d(2)
    layers["norm"] = nn.BatchNorm2d(co)
    layers["act"] = ACT()
    return nn.Sequential(layers)


WHITEN_EPS = 5e-4  # airbench's; a screen may set another before building a Net (the mean eigenvalue is ~1 here)


def whitening_conv(k: int = 2, eps: float | None = None, n: int = 5000) -> nn.Conv2d:
    """airbench's first layer: a frozen k x k convolution (no padding) whose filters are the
    eigenvectors of the covariance of k x k patches of the (normalised) training pictures, each
    scaled by 1 / sqrt(eigenvalue + eps), with their negatives: 2 * channels * k * k outputs. The
    bias stays trainable (airbench trains it for the first epochs). The ``n`` pictures are a seeded random
    pick: a folder's training split comes in class order."""
    eps = WHITEN_EPS if eps is None else eps
    pick = torch.randperm(len(XTR), generator=torch.Generator().manual_seed(0))[:n]
    x = pre(XTR[pick]).contiguous()
    patches = F.unfold(x, k).transpose(1, 2).reshape(-1, CHANNELS * k * k).double()
    cov = torch.cov(patches.T)
    eigval, eigvec = torch.linalg.eigh(cov)
    w = (eigvec.T / (eigval + eps).sqrt()[:, None]).float().reshape(-1, CHANNELS, k, k)
    conv = nn.Conv2d(CHANNELS, 2 * w.shape[0], k, bias=True)
    with torch.no_grad():
        conv.weight.copy_(torch.cat([w, -w]))
        conv.bias.zero_()
    conv.weight.requires_grad_(False)
    return conv


class Net(nn.Module):
    def __init__(self, stem: int = 16, stem_pool: bool = False, widths: tuple[int, ...] = (16, 32, 64),
                 depth: int = 1, whiten: bool = False) -> None:
        """``whiten``: the frozen 2 x 2 patch-whitening convolution and a GELU (airbench) instead of the
        learned conv3x3-BN-GELU stem; ``stem`` is then its output count (2 * channels * 4)."""
        super().__init__()
        if whiten:
            conv = whitening_conv()
            layers: list[nn.Module] = [nn.Sequential(conv, *([nn.MaxPool2d(2)] if stem_pool else []), ACT())]
            stem = conv.out_channels
        else:
            layers = [cba(CHANNELS, stem, stem_pool)]
        c = stem
        for w in widths:
            layers.append(cba(c, w, True))
            layers += [cba(w, w, False) for _ in range(depth)]
            c = w
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c, n_classes(), bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.adaptive_max_pool2d(self.body(x), 1).flatten(1)) / 8


def n_classes() -> int:
    return int(YTR.max()) + 1


def _scores(net: nn.Module, flip: bool) -> torch.Tensor:
    out = []
    for i in range(0, len(YTE), 1000):
        xb = pre(XTE[i:i + 1000])
        out.append(net(xb.flip(3) if flip else xb))
    return torch.cat(out)


def run(name: str, net: nn.Module, bs: int = 256, lr: float = 0.2, wd: float = 5e-4, ls: float = 0.1,
        budget: float = 20.0, aug: str = "", tta: bool = False, seed: int = 0, adam: bool = False,
        ema: tuple[float, ...] = (), steps: int | None = None, opt: str = "sgd", muon_lr: float = 0.05,
        norm_wd: bool = True, norm_lr: float = 1.0, lookahead: tuple[int, float] | None = None,
        ntrain: int | None = None, prog: tuple[int, float] | None = None) -> float:
    """Train ``net`` and print its test accuracy.

    ``steps`` fixes the step count (no timing, so variants with the same per-step cost compare
    without the machine's speed in the result). ``opt="muon"`` updates the matrix-shaped convolution
    weights (``MatConv``) with ``torch.optim.Muon`` at ``muon_lr`` (its "original" RMS adjustment)
    and every other parameter with the SGD below. ``norm_wd=False`` drops weight decay on norm
    parameters and ``norm_lr`` multiplies their rate (airbench's "BN biases at a higher rate").
    ``lookahead=(k, alpha)``: every k steps the slow weights move alpha of the way to the fast ones
    and the fast ones restart there (Zhang et al., 2019). ``ntrain`` trains on that many pictures of a
    fixed shuffle (54,000 is the product's split with 10% held out). ``prog=(size, frac)`` trains the
    first ``frac`` of the steps on pictures resized to ``size`` x ``size`` (progressive resizing).
    """
    import copy

    torch.manual_seed(seed)
    net = net.to(memory_format=torch.channels_last)
    averages = [(d, copy.deepcopy(net)) for d in ema]
    norms = [p for m in net.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()]
    mats = ([m.weight for m in net.modules() if isinstance(m, MatConv)] if opt == "muon" else
            [m.weight for m in net.modules()  # every trainable convolution but the first layer's
             if isinstance(m, nn.Conv2d) and m.in_channels != CHANNELS and m.weight.requires_grad] if opt == "muon32"
            else [])
    taken = {id(p) for p in norms + mats}
    rest = [p for p in net.parameters() if id(p) not in taken and p.requires_grad]
    groups = [{"params": rest, "scale": 1.0},
              {"params": norms, "scale": norm_lr, "weight_decay": wd if norm_wd else 0.0}]
    optimizers = [torch.optim.AdamW(groups, lr=lr, weight_decay=wd) if adam else
                  torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True, weight_decay=wd)]
    if mats and opt == "muon32":
        optimizers.append(Muon32(mats, muon_lr))
        optimizers[-1].param_groups[0]["scale"] = muon_lr / lr
    elif mats:
        optimizers.append(torch.optim.Muon([{"params": mats, "scale": muon_lr / lr}], lr=muon_lr,
                                           weight_decay=0.0, adjust_lr_fn="original"))
    slow = [p.detach().clone() for p in net.parameters()] if lookahead else []
    augment = Augment.parse(aug) if aug else None
    g = torch.Generator().manual_seed(seed)
    xtr, ytr = XTR, YTR
    if ntrain:
        keep = torch.randperm(len(YTR), generator=torch.Generator().manual_seed(1234))[:ntrain]
        xtr, ytr = XTR[keep], YTR[keep]
    n = len(ytr)
    total = steps
    net.train()
    t = time.perf_counter()
    step, t_mark = 0, 0.0
    perm, pi = torch.randperm(n, generator=g), 0
    while total is None or step < total:
        if pi + bs > n:
            perm, pi = torch.randperm(n, generator=g), 0
        idx = perm[pi:pi + bs]
        pi += bs
        xb, yb = pre(xtr[idx]), ytr[idx]
        if augment:
            xb = augment(xb, g)
        if prog and total is not None and step < prog[1] * total:
            xb = F.interpolate(xb, size=(prog[0], prog[0]), mode="bilinear", antialias=True,
                               align_corners=False).contiguous(memory_format=torch.channels_last)
        if total is None and step == 3:
            t_mark = time.perf_counter()
        if total is None and step == 13:  # plan the schedule over the steps that fit in the budget
            per_step = (time.perf_counter() - t_mark) / 10
            total = step + int((budget - (time.perf_counter() - t)) / per_step)
        frac = step / max((total or 10**9) - 1, 1)
        cur = lr * 0.1 if total is None else lr * (0.1 + 0.9 * frac / 0.2) if frac < 0.2 else lr * (1 - frac) / 0.8
        for o in optimizers:
            for group in o.param_groups:
                group["lr"] = cur * group["scale"]
        loss = F.cross_entropy(net(xb), yb, label_smoothing=ls)
        for o in optimizers:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in optimizers:
            o.step()
        step += 1
        if lookahead and step % lookahead[0] == 0:
            with torch.no_grad():
                fast = list(net.parameters())
                torch._foreach_lerp_(slow, fast, lookahead[1])
                torch._foreach_copy_(fast, slow)
        for d, avg in averages:
            with torch.no_grad():
                torch._foreach_lerp_(list(avg.parameters()), list(net.parameters()), 1 - d)
                for b_avg, b in zip(avg.buffers(), net.buffers(), strict=True):
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
