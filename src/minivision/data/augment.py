"""Augmentations the tutorials use (flip, shift, rotate, zoom) plus random erasing, on whole batches.

Every transform works on a float batch (N, C, H, W) already on the training device and draws its
randomness from one ``torch.Generator`` so a seeded run and its resume see the same images.
Spec strings: ``"flip,shift=2,rotate=10,zoom=0.1,erase=0.5"`` (a bare name takes its default).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import MinivisionError

# name -> (default value, lower bound, upper bound, meaning)
AUGMENTS: dict[str, tuple[float, float, float, str]] = {
    "flip": (0.5, 0.0, 1.0, "probability of a horizontal flip"),
    "vflip": (0.5, 0.0, 1.0, "probability of a vertical flip"),
    "shift": (2, 0, 16, "largest shift in pixels, each axis (zero padding)"),
    "rotate": (10, 0, 180, "largest rotation in degrees"),
    "zoom": (0.1, 0.0, 0.9, "largest relative zoom in or out"),
    "erase": (0.5, 0.0, 1.0, "probability of erasing a random rectangle"),
}


@dataclass(frozen=True)
class Augment:
    """Parsed augmentation settings; all zero means no augmentation."""

    flip: float = 0.0
    vflip: float = 0.0
    shift: int = 0
    rotate: float = 0.0
    zoom: float = 0.0
    erase: float = 0.0

    @classmethod
    def parse(cls, spec: str | None) -> Augment:
        values: dict[str, float] = {}
        for item in (spec or "").replace(" ", "").split(","):
            if not item or item == "none":
                continue
            name, _, raw = item.partition("=")
            if name not in AUGMENTS:
                close = difflib.get_close_matches(name, AUGMENTS, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise MinivisionError(f"unknown augmentation {name!r}{hint}; choose from {', '.join(AUGMENTS)}")
            default, lo, hi, _ = AUGMENTS[name]
            try:
                value = float(raw) if raw else float(default)
            except ValueError:
                raise MinivisionError(f"augmentation {name}={raw!r} is not a number") from None
            if not lo <= value <= hi:
                raise MinivisionError(f"augmentation {name}={raw} out of range [{lo}, {hi}]")
            values[name] = int(value) if name == "shift" else value
        return cls(**values)

    def __bool__(self) -> bool:
        return any((self.flip, self.vflip, self.shift, self.rotate, self.zoom, self.erase))

    def spec(self) -> str:
        return ",".join(f"{k}={getattr(self, k):g}" for k in AUGMENTS if getattr(self, k))

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if not self:
            return x
        n = x.shape[0]

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=g, device=g.device).to(x.device)

        if self.flip:
            x = torch.where((rand(n) < self.flip).view(n, 1, 1, 1), x.flip(3), x)
        if self.vflip:
            x = torch.where((rand(n) < self.vflip).view(n, 1, 1, 1), x.flip(2), x)
        if self.rotate or self.zoom:
            x = _affine(x, rand(n), rand(n), self.rotate, self.zoom)
        if self.shift:
            x = _shift(x, self.shift, rand(n), rand(n))
        if self.erase:
            x = _erase(x, self.erase, rand(n), rand(n), rand(n), rand(n), rand(n))
        return x


def _affine(x: torch.Tensor, u: torch.Tensor, v: torch.Tensor, degrees: float, zoom: float) -> torch.Tensor:
    """Rotate by up to ``degrees`` and scale by 1 +- ``zoom`` around the centre (bilinear, zero fill)."""
    angle = (u * 2 - 1) * math.radians(degrees)
    scale = 1 + (v * 2 - 1) * zoom
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    zeros = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zeros], 1), torch.stack([sin, cos, zeros], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _shift(x: torch.Tensor, k: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Translate each image by whole pixels in [-k, k] on each axis, filling with zeros."""
    n, _, h, w = x.shape
    dy = (u * (2 * k + 1)).long().clamp(max=2 * k)  # offsets into the padded image
    dx = (v * (2 * k + 1)).long().clamp(max=2 * k)
    padded = F.pad(x, (k, k, k, k))
    rows = (torch.arange(h, device=x.device).view(1, h) + dy.view(n, 1))  # n, h
    cols = (torch.arange(w, device=x.device).view(1, w) + dx.view(n, 1))  # n, w
    idx_n = torch.arange(n, device=x.device).view(n, 1, 1)
    out = padded.permute(0, 2, 3, 1)[idx_n, rows.view(n, h, 1), cols.view(n, 1, w)]  # n, h, w, c
    return out.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)


def _erase(x: torch.Tensor, p: float, u: torch.Tensor, v: torch.Tensor, a: torch.Tensor,
           b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Random erasing: zero a rectangle of 2-25% of the area in a fraction ``p`` of the images."""
    n, _, h, w = x.shape
    area = (0.02 + a * 0.23) * h * w
    ratio = torch.exp((b * 2 - 1) * math.log(3))
    eh = torch.sqrt(area * ratio).clamp(1, h).long()
    ew = torch.sqrt(area / ratio).clamp(1, w).long()
    top = (u * (h - eh + 1)).long()
    left = (v * (w - ew + 1)).long()
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    inside = ((ys >= top.view(n, 1, 1)) & (ys < (top + eh).view(n, 1, 1))
              & (xs >= left.view(n, 1, 1)) & (xs < (left + ew).view(n, 1, 1)))
    mask = inside & (c < p).view(n, 1, 1)
    return x.masked_fill(mask.unsqueeze(1), 0.0)
