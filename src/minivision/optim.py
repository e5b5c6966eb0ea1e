"""SGD, Adam/AdamW and Muon with the update rules of ``torch.optim``, without its start-up cost.

Why not ``torch.optim``: building any of its optimizers imports ``torch._dynamo``. Measured again
with torch 2.13.0+cpu on the 2-core AMD EPYC dev VM (2026-11-29, other jobs running):
``python3 -c 'import time,torch; m=torch.nn.Linear(2,2); t=time.perf_counter();
torch.optim.SGD(m.parameters(),lr=.1); print(time.perf_counter()-t)'`` gives 2.5-5.0 s wall,
2.2-3.1 s CPU (3 runs), and ``-X importtime`` lists 81 ``torch._dynamo`` modules; these classes
take 4-20 ms and import none. That is 7-10% of the 30-second default run.

They keep ``torch.optim``'s interface and state-dict layout: ``params`` is a list of tensors or of
parameter groups (dicts with ``params`` and their own ``lr``, ``weight_decay``, ...); ``state``
is keyed by the parameter's index counted across the groups in order; ``param_groups`` hold each
group's settings and indices; a loaded state dict's group settings replace the optimizer's;
Adam's ``step`` stays a CPU float32 tensor (as ``torch.optim`` when not capturable).
``tests/test_optim.py`` checks every update, with and without groups, against ``torch.optim``.

``Muon`` has a second reason: ``torch.optim.Muon`` runs its Newton-Schulz iteration in bf16, which
CPUs without bf16 arithmetic (AVX2) emulate slowly, and it takes 2-D parameters only; ours runs it in
fp32 (bf16 on request, which the tests use to match ``torch.optim.Muon``) and reads a convolution's
4-D weight as the matrix its rows make.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .errors import MinivisionError

if TYPE_CHECKING:
    from .config import TrainConfig


class OptimizerStateMismatch(MinivisionError, ValueError):
    """A saved optimizer state that does not fit this optimizer's parameters (``ValueError``, as
    ``torch.optim`` raises; a ``MinivisionError``, so the CLI prints it on one line)."""


StateDictHook = Callable[["_Optimizer", dict[str, Any]], "dict[str, Any] | None"]


class _Optimizer:
    defaults: dict[str, Any]

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], **defaults: Any) -> None:
        if isinstance(params, torch.Tensor):
            raise TypeError("params must be an iterable of tensors or of dicts, not a tensor")
        self.defaults = defaults
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.param_groups: list[dict[str, Any]] = []
        for g in groups:
            ps = g["params"]
            ps = [ps] if isinstance(ps, torch.Tensor) else list(ps)
            self.param_groups.append({**defaults, **g, "params": ps})
        self.params = [p for g in self.param_groups for p in g["params"]]
        if len({id(p) for p in self.params}) != len(self.params):
            raise ValueError("some parameters appear in more than one parameter group")
        self.state: dict[int, dict[str, torch.Tensor]] = {}
        self._load_hooks: list[StateDictHook] = []

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def _indexed_groups(self) -> Iterable[tuple[dict[str, Any], list[tuple[int, torch.Tensor]]]]:
        """Each group with its (index, parameter) pairs, indices counted across the groups."""
        start = 0
        for g in self.param_groups:
            yield g, list(enumerate(g["params"], start))
            start += len(g["params"])

    def state_dict(self) -> dict[str, Any]:
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [i for i, _ in items]}
                  for g, items in self._indexed_groups()]
        return {"state": {i: dict(s) for i, s in self.state.items()}, "param_groups": groups}

    def register_load_state_dict_pre_hook(self, hook: StateDictHook) -> None:
        """As ``torch.optim``: ``hook(optimizer, state_dict)`` may return a replacement state dict."""
        self._load_hooks.append(hook)

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        for hook in self._load_hooks:
            sd = hook(self, sd) or sd
        groups = sd["param_groups"]
        if len(groups) != len(self.param_groups):
            raise OptimizerStateMismatch(
                f"the saved optimizer state has {len(groups)} parameter group(s), this optimizer "
                f"{len(self.param_groups)}")
        if any(len(s["params"]) != len(g["params"]) for s, g in zip(groups, self.param_groups, strict=True)):
            raise OptimizerStateMismatch("the saved optimizer state does not match the model's parameters")
        self.param_groups = [{**{k: tuple(v) if isinstance(v, list) else v for k, v in s.items()},
                              "params": g["params"]} for s, g in zip(groups, self.param_groups, strict=True)]
        self.state = {}
        for i, s in sd["state"].items():
            p = self.params[int(i)]
            # a buffer shaped as its parameter takes the parameter's memory layout (a checkpoint stores
            # tensors contiguous; a channels-last weight's buffer comes back channels-last)
            self.state[int(i)] = {k: (v.clone() if k == "step" else
                                      torch.empty_like(p).copy_(v) if v.shape == p.shape else
                                      v.to(p.device, p.dtype).clone()) for k, v in s.items()}


class SGD(_Optimizer):
    """``torch.optim.SGD``: L2 weight decay added to the gradient, momentum buffer started at the
    first gradient, optional Nesterov; momentum 0 is plain gradient descent."""

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False) -> None:
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
                         dampening=0)

    @torch.no_grad()
    def step(self) -> None:
        for g, items in self._indexed_groups():
            items = [(i, p) for i, p in items if p.grad is not None]
            if items:
                self._step_group(g, items)

    def _step_group(self, g: dict[str, Any], items: list[tuple[int, torch.Tensor]]) -> None:
        lr, mom, wd, nesterov = g["lr"], g["momentum"], g["weight_decay"], g["nesterov"]
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


#: Keller Jordan's quintic Newton-Schulz coefficients, as ``torch.optim.Muon``'s default.
NS_COEFFICIENTS = (3.4445, -4.775, 2.0315)
#: Muon's rate relative to ``--lr`` (the SGD rate of the other parameters). Fashion-MNIST,
#: ``mvnet-t``, 2 epochs, 3 seeds (``bench/recipe_search.py``): 0.5 (0.1 at ``--lr 0.2``) 91.72%,
#: 1.0 91.62%, SGD alone 91.36%.
MUON_LR_SCALE = 0.5


def orthogonalize(g: torch.Tensor, steps: int = 5, coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
                  eps: float = 1e-7, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The Newton-Schulz approximation of ``U V^T`` for ``g = U S V^T`` (Muon's "zeroth power").

    ``g``: a 2-D float tensor (out, in); returns the same shape in ``dtype``. The singular values
    come out between about 0.5 and 1.5, not exactly 1 (Keller Jordan, "Muon: An optimizer for
    hidden layers in neural networks", 2024; the same iteration as ``torch.optim.Muon``'s
    ``_zeropower_via_newtonschulz``, which always works in bf16)."""
    a, b, c = coefficients
    x = g.to(dtype)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def _as_matrix(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` (a weight's gradient or update, shaped as the weight ``like``) as the (out, fan-in)
    matrix Muon orthogonalises: 2-D as it is; 4-D with each row's columns in ``like``'s memory order
    (channels-last: kh, kw, in), which needs no copy when ``t`` is laid out as ``like``.
    Orthogonalisation commutes with a permutation of the columns, so the order does not change the
    update; ``_from_matrix`` reads it back in the same order, whatever ``t``'s own layout."""
    if like.ndim == 4 and like.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).reshape(t.shape[0], -1)
    return t.reshape(t.shape[0], -1)


def _from_matrix(m: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The inverse of ``_as_matrix`` for a tensor shaped and laid out as ``like``."""
    if like.ndim == 4 and like.is_contiguous(memory_format=torch.channels_last):
        o, i, kh, kw = like.shape
        return m.reshape(o, kh, kw, i).permute(0, 3, 1, 2)
    return m.reshape(like.shape)


class Muon(SGD):
    """Muon for the parameter groups marked ``muon=True``, SGD for the others.

    A Muon group's update (``torch.optim.Muon``'s, Keller Jordan 2024): the momentum buffer ``B``
    follows ``B <- mu B + (1 - mu) g`` (``muon_momentum``, 0.95), Nesterov's ``g + mu (B - g)`` is read
    as an (out, fan-in) matrix, orthogonalised by ``orthogonalize`` (5 steps, fp32 unless
    ``ns_dtype``), scaled by ``lr * sqrt(max(1, out / fan_in))`` (torch's "original" adjustment of a
    2-D weight, applied to a 4-D weight's (out, fan-in) matrix), after decoupled weight decay
    ``p <- p (1 - lr wd)`` (at Muon's rate, so far weaker than SGD's L2 decay of the same value).
    Each weight's update thus has every singular value near 1: a step of the same size in every
    direction, whatever the gradient's scale. Meant for the hidden convolution and dense weights
    (the first layer and the head stay on SGD, as Jordan advises); ``make_optimizer`` splits them
    so.

    Other groups: ``SGD``'s update (L2 weight decay, momentum, Nesterov). Parameters: 2-D or 4-D
    float tensors in Muon groups (anything in the others). Raises ``ValueError`` for a Muon
    parameter of another rank.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 nesterov: bool = True, muon_momentum: float = 0.95, ns_steps: int = 5,
                 ns_dtype: torch.dtype = torch.float32) -> None:
        _Optimizer.__init__(self, params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                            nesterov=nesterov, dampening=0, muon=False, muon_momentum=muon_momentum,
                            ns_steps=ns_steps)
        self.ns_dtype = ns_dtype
        for g in self.param_groups:
            if g["muon"] and any(p.ndim not in (2, 4) for p in g["params"]):
                raise ValueError("Muon updates 2-D and 4-D weights only; put the others in a group "
                                 "with muon=False")

    def _step_group(self, g: dict[str, Any], items: list[tuple[int, torch.Tensor]]) -> None:
        if not g["muon"]:
            super()._step_group(g, items)
            return
        lr, mom, wd = g["lr"], g["muon_momentum"], g["weight_decay"]
        for i, p in items:
            st = self.state.setdefault(i, {})
            if "momentum_buffer" not in st:
                st["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            buf = st["momentum_buffer"]
            buf.lerp_(p.grad, 1 - mom)
            update = p.grad.lerp(buf, mom) if g["nesterov"] else buf
            m = _as_matrix(update, p)
            o = orthogonalize(m, g["ns_steps"], dtype=self.ns_dtype)
            if wd:
                p.mul_(1 - lr * wd)
            p.add_(_from_matrix(o.to(p.dtype), p), alpha=-lr * max(1.0, m.shape[0] / m.shape[1]) ** 0.5)


class Adam(_Optimizer):
    """``torch.optim.Adam`` (L2 weight decay in the gradient) or, with ``decoupled=True``,
    ``torch.optim.AdamW`` (weights shrunk by ``lr * weight_decay`` before the update)."""

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decoupled: bool = False) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         decoupled_weight_decay=decoupled)

    @torch.no_grad()
    def step(self) -> None:
        for g, items in self._indexed_groups():
            lr, (b1, b2), eps, wd = g["lr"], g["betas"], g["eps"], g["weight_decay"]
            for i, p in items:
                if p.grad is None:
                    continue
                grad = p.grad
                st = self.state.setdefault(i, {})
                if not st:
                    st["step"] = torch.tensor(0.0, dtype=torch.float32)  # on the CPU, as torch.optim
                    st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["step"] += 1
                if wd:
                    if g["decoupled_weight_decay"]:
                        p.mul_(1 - lr * wd)
                    else:
                        grad = grad.add(p, alpha=wd)
                t = st["step"].item()
                st["exp_avg"].lerp_(grad, 1 - b1)
                st["exp_avg_sq"].mul_(b2).addcmul_(grad, grad.conj(), value=1 - b2)
                bias1 = 1 - b1 ** t
                bias2_sqrt = (1 - b2 ** t) ** 0.5
                denom = (st["exp_avg_sq"].sqrt() / bias2_sqrt).add_(eps)
                p.addcdiv_(st["exp_avg"], denom, value=-lr / bias1)


# ------------------------------------------------------------------------- parameter groups

def param_groups_weight_decay(model: nn.Module, weight_decay: float,
                              lr_scales: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
    """Parameter groups with no weight decay on biases and norm layers' weights.

    The rule of timm's ``param_groups_weight_decay`` (huggingface/pytorch-image-models,
    ``timm/optim/_param_groups.py``, Apache-2.0): a parameter with ``ndim <= 1`` (every bias,
    BatchNorm/LayerNorm scale and shift) or a name ending in ``.bias`` gets weight decay 0, the
    rest ``weight_decay``; frozen parameters (``requires_grad`` False) are left out; the no-decay
    group comes first, as in timm. Decay on a norm's scale only fights the next layer's weights
    (the net is scale-invariant there) and decay on biases pulls them to 0 for no benefit.

    ``lr_scales`` (for fine-tuning): parameter-name prefix -> learning-rate multiplier, e.g.
    ``{"": 0.1, "head": 1.0}``; the longest prefix that matches a name at a ``.`` boundary wins,
    unmatched names get 1.0. Groups are split further by scale and carry an ``lr_scale`` key,
    which the training loop's schedule multiplies (as timm's schedulers do). Empty groups are
    dropped; model order is kept within a group.
    """
    prefixes = sorted((lr_scales or {}).items(), key=lambda kv: len(kv[0]), reverse=True)

    def scale_of(name: str) -> float:
        for prefix, scale in prefixes:
            if not prefix or name == prefix or name.startswith(prefix + "."):
                return float(scale)
        return 1.0

    groups: dict[tuple[bool, float], list[torch.Tensor]] = {}
    for decay in (False, True):  # timm's order: no decay first
        for scale in dict.fromkeys([*(float(s) for _, s in prefixes), 1.0]):
            groups[(decay, scale)] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            decay = not (p.ndim <= 1 or name.endswith(".bias"))
            groups[(decay, scale_of(name))].append(p)
    out = []
    for (decay, scale), ps in groups.items():
        if ps:
            g: dict[str, Any] = {"params": ps, "weight_decay": weight_decay if decay else 0.0}
            if lr_scales:
                g["lr_scale"] = scale
            out.append(g)
    return out


def accept_single_group(params_in_saved_order: list[torch.Tensor]) -> StateDictHook:
    """A load-state-dict hook that reads a state saved with one parameter group (minivision
    before 2026-11-29: every parameter of ``model.parameters()`` that requires grad, in that
    order, all with the same weight decay) into this optimizer's groups. Each parameter keeps its state; every
    group takes the saved group's settings, so a resumed run goes on exactly as it started
    (weight decay on every parameter). Any other layout passes through unchanged."""
    def hook(opt: _Optimizer, sd: dict[str, Any]) -> dict[str, Any] | None:
        saved = sd["param_groups"]
        if len(saved) != 1 or len(opt.param_groups) == 1 or len(saved[0]["params"]) != len(params_in_saved_order):
            return None
        if {id(p) for p in params_in_saved_order} != {id(p) for p in opt.params}:
            raise OptimizerStateMismatch("the saved optimizer state does not match the model's parameters")
        old_index = {id(p): i for i, p in enumerate(params_in_saved_order)}
        settings = {k: v for k, v in saved[0].items() if k != "params"}
        state, groups = {}, []
        for _, items in opt._indexed_groups():
            groups.append({**settings, "params": [i for i, _ in items]})
            for i, p in items:
                s = sd["state"].get(old_index[id(p)], sd["state"].get(str(old_index[id(p)])))
                if s is not None:
                    state[i] = s
        return {"state": state, "param_groups": groups}
    return hook


def hidden_weights(model: nn.Module) -> list[torch.Tensor]:
    """The 2-D and 4-D parameters of ``model`` between its first and its last such parameter (in
    ``model.parameters()`` order), frozen or not, less depthwise convolution weights (one input
    channel per filter: a k x k matrix per channel, which neither Jordan's Muon nor torch's covers):
    the weights Muon is meant for."""
    mats = [p for p in model.parameters() if p.ndim in (2, 4)]
    return [p for p in mats[1:-1] if not (p.ndim == 4 and p.shape[1] == 1)]


def muon_groups(model: nn.Module, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``groups`` (from ``param_groups_weight_decay``) with the hidden weights moved to Muon groups.

    Hidden weights: the 2-D and 4-D parameters (dense and convolution weights) except the first and
    the last in the model's order (the input layer and the head, which stay on SGD, as Jordan
    advises), counted whether frozen or not, so a fine-tuning phase that trains the head
    alone keeps it on SGD. Each Muon group keeps its source group's weight decay and carries
    ``muon=True`` and ``lr_scale`` = the source's scale x ``MUON_LR_SCALE``; every other group gets
    ``muon=False``. Empty groups are dropped."""
    hidden = {id(p) for p in hidden_weights(model)}
    out: list[dict[str, Any]] = []
    for g in groups:
        rest = [p for p in g["params"] if id(p) not in hidden]
        mine = [p for p in g["params"] if id(p) in hidden]
        if rest:
            out.append({**g, "params": rest, "muon": False})
        if mine:
            out.append({**g, "params": mine, "muon": True,
                        "lr_scale": g.get("lr_scale", 1.0) * MUON_LR_SCALE})
    return out


def make_optimizer(cfg: TrainConfig, model: torch.nn.Module,
                   lr_scales: dict[str, float] | None = None) -> SGD | Adam | Muon:
    """torch.optim's update rules (see ``minivision.optim`` for why not torch.optim itself), with no
    weight decay on biases and norm layers (``param_groups_weight_decay``). ``lr_scales``:
    parameter-name prefix -> learning-rate multiplier (fine-tuning); the schedule multiplies each
    group's ``lr_scale``. ``muon``: ``Muon`` for the hidden weights (``muon_groups``), SGD with the
    configured momentum and Nesterov for the rest. Checkpoints saved with one parameter group still
    resume, as they started."""
    params = param_groups_weight_decay(model, cfg.weight_decay, lr_scales)
    if cfg.optimizer == "muon":
        params = muon_groups(model, params)
        if not hidden_weights(model):
            from .config import named

            raise MinivisionError(f"{named('optimizer', 'muon')} acts on hidden layers, and "
                                  f"{cfg.model or 'this model'} has none between its first layer and its head "
                                  f"(it would train as sgd): use {named('optimizer', 'sgd')}, or a deeper model")
    for group in params:
        group["lr"] = cfg.lr * group.get("lr_scale", 1.0)
    if cfg.optimizer == "muon":
        opt = Muon(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=bool(cfg.nesterov))
    elif cfg.optimizer in ("adam", "adamw"):
        opt = Adam(params, lr=cfg.lr, decoupled=cfg.optimizer == "adamw")
    else:
        momentum = 0.0 if cfg.optimizer == "gd" else cfg.momentum
        opt = SGD(params, lr=cfg.lr, momentum=momentum, nesterov=bool(cfg.nesterov and momentum > 0))
    opt.register_load_state_dict_pre_hook(
        accept_single_group([p for p in model.parameters() if p.requires_grad]))
    return opt
