"""A Keras-style ``model.summary()`` table: layer, output shape, parameters, multiply-adds.

Why our own instead of torchinfo: one small dependency fewer, and the numbers are defined to
match what the tutorials print. Parameter counting follows PyTorch (learnable tensors only); the
running mean and variance of BatchNorm, which Keras lists as "Non-trainable params", are counted
separately as ``state`` and the footer shows the Keras total too, so a learner can check the
number on the tutorial's page.

Multiply-adds (MACs) are counted exactly for Conv2d and Linear (bias additions not included) and
as 0 for everything else (BatchNorm, activations, pooling, dropout): those are memory-bound, and
on a CPU their cost is better measured than counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["LayerRow", "SummaryTotals", "format_summary", "summarize", "summary_totals"]


@dataclass(frozen=True)
class LayerRow:
    """One leaf module, as seen in one forward pass of one image."""

    name: str  # dotted path in the model, e.g. "blocks.0.conv1"
    kind: str  # class name, e.g. "Conv2d"
    output_shape: tuple[int, ...] | None  # without the batch dimension; None if not called
    params: int  # learnable values owned by this module (counted on its first call only)
    trainable: int  # of which requires_grad
    state: int  # floating-point buffers such as BatchNorm running mean/var (Keras: non-trainable)
    macs: int  # multiply-adds for one image


@dataclass(frozen=True)
class SummaryTotals:
    params: int
    trainable: int
    non_trainable: int  # frozen parameters (requires_grad False)
    state: int  # BatchNorm running statistics and other float buffers
    macs: int

    @property
    def keras_total(self) -> int:
        """What Keras prints as "Total params" (it counts BatchNorm statistics as parameters)."""
        return self.params + self.state


def _macs(module: nn.Module, output: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        k_h, k_w = module.kernel_size
        per_output = (module.in_channels // module.groups) * k_h * k_w
        return output[0].numel() * per_output
    if isinstance(module, nn.Linear):
        return output[0].numel() * module.in_features
    return 0


def _own(module: nn.Module) -> tuple[int, int, int]:
    """(parameters, trainable ones, state) of ``module`` itself. Buffers a module names in ``frozen_weights``
    (mvnet's whitening filters) are weights that are never trained: non-trainable parameters, as Keras
    counts a frozen layer's weights, not state."""
    params = list(module.parameters(recurse=False))
    frozen = set(getattr(module, "frozen_weights", ()))
    buffers = list(module.named_buffers(recurse=False))
    fixed = sum(b.numel() for n, b in buffers if n in frozen)
    state = sum(b.numel() for n, b in buffers if n not in frozen and b.is_floating_point())
    return (sum(p.numel() for p in params) + fixed, sum(p.numel() for p in params if p.requires_grad), state)


def summarize(model: nn.Module, input_shape: tuple[int, int, int]) -> list[LayerRow]:
    """Run one zero image of ``input_shape`` (C, H, W) through ``model`` and describe each leaf module.

    Runs in eval mode under ``no_grad`` (so BatchNorm statistics are untouched) and restores the
    model's training mode afterwards. Modules that own parameters but were not called get a row
    with output_shape None, so the totals still cover every parameter.
    """
    watched = {m: n for n, m in model.named_modules()
               if not any(True for _ in m.children()) or any(True for _ in m.parameters(recurse=False))}
    rows: list[LayerRow] = []
    counted: set[nn.Module] = set()

    def hook(module: nn.Module, _inputs: object, output: object) -> None:
        if not isinstance(output, torch.Tensor):
            return
        params, trainable, state = _own(module) if module not in counted else (0, 0, 0)
        counted.add(module)
        rows.append(LayerRow(watched[module], type(module).__name__, tuple(output.shape[1:]),
                             params, trainable, state, _macs(module, output)))

    handles = [m.register_forward_hook(hook) for m in watched]
    was_training = model.training
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    for module, name in watched.items():
        if module not in counted and any(_own(module)):
            rows.append(LayerRow(name, type(module).__name__, None, *_own(module), 0))
    return rows


def summary_totals(rows: list[LayerRow]) -> SummaryTotals:
    params = sum(r.params for r in rows)
    trainable = sum(r.trainable for r in rows)
    return SummaryTotals(params, trainable, params - trainable, sum(r.state for r in rows),
                         sum(r.macs for r in rows))


def _shape(shape: tuple[int, ...] | None) -> str:
    return "(not called)" if shape is None else "(" + ", ".join(str(s) for s in shape) + ")"


def format_summary(rows: list[LayerRow], *, title: str | None = None, show_macs: bool = True) -> str:
    """Render rows as a Keras-like table with totals; ``title`` goes on the first line."""
    header = ["Layer (type)", "Output Shape", "Param #"] + (["Mult-adds"] if show_macs else [])
    body = [[f"{r.name} ({r.kind})", _shape(r.output_shape), f"{r.params:,}"]
            + ([f"{r.macs:,}"] if show_macs else []) for r in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first, *rest = cells
        right = (c.rjust(w) for c, w in zip(rest, widths[1:], strict=True))
        return "  ".join([first.ljust(widths[0]), *right])

    rule = "=" * len(line(header))
    totals = summary_totals(rows)
    out = [title] if title else []
    out += [rule, line(header), rule, *(line(cells) for cells in body), rule,
            f"Total params: {totals.params:,}",
            f"Trainable params: {totals.trainable:,}",
            f"Non-trainable params: {totals.non_trainable:,}"]
    if totals.state:
        out.append(f"BatchNorm statistics: {totals.state:,} (Keras counts them as non-trainable "
                   f"params: Keras total {totals.keras_total:,})")
    if show_macs:
        out.append(f"Multiply-adds per image: {totals.macs:,} ({_mega(totals.macs)}; Conv2d and Linear "
                   "only, bias adds and other layers count 0)")
    out.append(rule)
    return "\n".join(out)


def _mega(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n < 1e9 else f"{n / 1e9:.2f} G"

