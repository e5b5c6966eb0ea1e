"""SGD and Adam/AdamW with the exact update rules of ``torch.optim``, without its start-up cost.

Why not ``torch.optim``: building any of its optimizers imports ``torch._dynamo`` (1.9 s on the
2-core dev VM, measured with ``python -c "import torch; torch.optim.SGD(...)"``), which is 6% of
the 30-second default run. These classes keep ``torch.optim``'s state-dict layout (``state``
keyed by parameter index, ``param_groups`` with ``lr``), so checkpoints and the LR schedule code
treat them the same way; ``tests/test_optim.py`` checks every update against ``torch.optim``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch


class _Optimizer:
    defaults: dict[str, Any]

    def __init__(self, params: Iterable[torch.nn.Parameter], **defaults: Any) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.param_groups = [{**defaults, "params": self.params}]
        self.state: dict[int, dict[str, torch.Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def state_dict(self) -> dict[str, Any]:
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        return {"state": {i: dict(s) for i, s in self.state.items()},
                "param_groups": [{**group, "params": list(range(len(self.params)))}]}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        groups = sd["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.params):
            raise ValueError("optimizer state does not match the model's parameters")
        for k, v in groups[0].items():
            if k != "params":
                self.param_groups[0][k] = tuple(v) if isinstance(v, list) else v
        self.state = {}
        for i, s in sd["state"].items():
            p = self.params[int(i)]
            self.state[int(i)] = {k: (v.to(p.device) if k == "step" else v.to(p.device, p.dtype)).clone()
                                  for k, v in s.items()}

    def _with_grads(self) -> list[tuple[int, torch.nn.Parameter]]:
        return [(i, p) for i, p in enumerate(self.params) if p.grad is not None]


class SGD(_Optimizer):
    """``torch.optim.SGD``: L2 weight decay added to the gradient, momentum buffer started at the
    first gradient, optional Nesterov; momentum 0 is plain gradient descent."""

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False) -> None:
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
                         dampening=0)

    @torch.no_grad()
    def step(self) -> None:
        g = self.param_groups[0]
        lr, mom, wd, nesterov = g["lr"], g["momentum"], g["weight_decay"], g["nesterov"]
        items = self._with_grads()
        if not items:
            return
        params = [p for _, p in items]
        grads = [p.grad for _, p in items]
        if wd:
            grads = torch._foreach_add(grads, params, alpha=wd)
        if mom:
            bufs = []
            for (i, _), d in zip(items, grads, strict=True):
                st = self.state.setdefault(i, {})
                if "momentum_buffer" not in st:
                    st["momentum_buffer"] = d.detach().clone()
                else:
                    st["momentum_buffer"].mul_(mom).add_(d)
                bufs.append(st["momentum_buffer"])
            grads = torch._foreach_add(grads, bufs, alpha=mom) if nesterov else bufs
        torch._foreach_add_(params, grads, alpha=-lr)


class Adam(_Optimizer):
    """``torch.optim.Adam`` (L2 weight decay in the gradient) or, with ``decoupled=True``,
    ``torch.optim.AdamW`` (weights shrunk by ``lr * weight_decay`` before the update)."""

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decoupled: bool = False) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         decoupled_weight_decay=decoupled)

    @torch.no_grad()
    def step(self) -> None:
        g = self.param_groups[0]
        lr, (b1, b2), eps, wd = g["lr"], g["betas"], g["eps"], g["weight_decay"]
        for i, p in self._with_grads():
            grad = p.grad
            st = self.state.setdefault(i, {})
            if not st:
                st["step"] = torch.tensor(0.0)
                st["exp_avg"] = torch.zeros_like(p)
                st["exp_avg_sq"] = torch.zeros_like(p)
            if wd:
                if g["decoupled_weight_decay"]:
                    p.mul_(1 - lr * wd)
                else:
                    grad = grad.add(p, alpha=wd)
            st["step"] += 1
            t = st["step"].item()
            st["exp_avg"].lerp_(grad, 1 - b1)
            st["exp_avg_sq"].mul_(b2).addcmul_(grad, grad.conj(), value=1 - b2)
            bias1 = 1 - b1 ** t
            bias2_sqrt = math.sqrt(1 - b2 ** t)
            denom = (st["exp_avg_sq"].sqrt() / bias2_sqrt).add_(eps)
            p.addcdiv_(st["exp_avg"], denom, value=-lr / bias1)
