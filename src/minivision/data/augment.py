"""Augmentations on whole batches: the tutorials' (flip, shift, rotate, zoom), random erasing, and the
small-data set (random resized crop, colour jitter, TrivialAugment, mixup, cutmix).

Every transform works on a float batch (N, C, H, W) already on the training device and draws its
randomness from one ``torch.Generator`` (the run's, reseeded per epoch and saved in checkpoints) so a
seeded run and its resume see the same images, bit for bit. Spec strings:
``"flip,shift=2,rotate=10,zoom=0.1,erase=0.5"`` or ``"crop=0.35,flip,jitter=0.4,mixup=0.2"`` (a bare
name takes its default; ``AUGMENTS`` lists names, defaults and bounds). The old names draw exactly
the numbers they always did, so an old spec gives the same pictures for the same seed.

Order within a batch: crop, flip, vflip, rotate/zoom, shift, jitter, trivial, erase (erasing last, as
timm does); ``mix`` (mixup or cutmix) runs after, on the augmented batch, and changes the targets.

Photometric ops (jitter, trivial) work on the 0-1 pixel scale: ``__call__`` takes the run's
normalisation (``pre``: anything with per-channel ``mean``/``std`` lists on the 0-1 scale, e.g.
``Preprocess``) to undo it around them, so "brightness x 1.2" means the same with ``normalize=standard``
as with ``unit``. Geometric ops commute with a per-channel affine normalisation except for their fill:
the old ones fill with 0 of the normalised input (as they always did); trivial's fill black pixels.

Why our own code rather than a library: kornia's random augmentations draw from torch's global RNG
(not a generator we can save and restore), which breaks the bit-exact resume this project promises, and
torchvision (whose ``v2`` transforms do these per picture, not per batch) has no CPU build for the
torch used here. Each op below is a few tensor lines, batched: one ``grid_sample`` per batch for all
geometric ops.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import MinivisionError

# name -> (default value, lower bound, upper bound, meaning)
AUGMENTS: dict[str, tuple[float, float, float, str]] = {
    "flip": (0.5, 0.0, 1.0, "probability of a horizontal flip"),
    "vflip": (0.5, 0.0, 1.0, "probability of a vertical flip"),
    "shift": (2, 0, 16, "largest shift on each axis (zero padding): whole pixels from 1, or below 1 a fraction "
                        "of the picture's side (0.1 = 10%, as Keras' width_shift_range)"),
    "rotate": (10, 0, 180, "largest rotation in degrees"),
    "zoom": (0.1, 0.0, 0.9, "largest relative zoom in or out"),
    "erase": (0.5, 0.0, 1.0, "probability of erasing a random rectangle"),
    # fastai's small-data examples use min_scale=0.35; torchvision's ImageNet default 0.08 is too harsh
    # for 28-32 px pictures (a 0.08 crop of a 28 px picture is 8 px wide)
    "crop": (0.35, 0.0, 1.0, "random resized crop: smallest area fraction kept (0 = off)"),
    "jitter": (0.4, 0.0, 1.0, "colour jitter strength: brightness, contrast (and saturation) x [1-s, 1+s]"),
    "trivial": (1.0, 0.0, 1.0, "probability of one TrivialAugment op of random strength per picture"),
    "mixup": (0.2, 0.0, 4.0, "mixup alpha (Beta(alpha, alpha) mixing weight; 0 = off)"),
    "cutmix": (1.0, 0.0, 4.0, "cutmix alpha (Beta(alpha, alpha) area kept; 0 = off)"),
}

#: The largest shift given as a fraction of the picture's side (``shift=0.5``: half the picture).
MAX_SHIFT_FRACTION = 0.5

#: Random resized crop's aspect-ratio range (Szegedy et al. 2015, "Going deeper with convolutions", as
#: torchvision's and timm's ``RandomResizedCrop`` use it).
CROP_RATIO = (3 / 4, 4 / 3)
#: ITU-R 601-2 luma weights, as PIL's and torchvision's ``rgb_to_grayscale``.
LUMA = (0.299, 0.587, 0.114)


class Normalisation(Protocol):
    """What ``Augment`` needs of the run's preprocessing: per-channel mean and std on the 0-1 scale
    (empty lists: the input is already on the 0-1 scale)."""

    mean: Sequence[float]
    std: Sequence[float]


@dataclass(frozen=True)
class Augment:
    """Parsed augmentation settings; all zero means no augmentation.

    ``Augment.parse("crop=0.35,flip,jitter")`` then ``aug(x, generator, pre)`` per batch and, when
    ``aug.mixes``, ``aug.mix(x, y, num_classes, generator)`` for the soft targets."""

    flip: float = 0.0
    vflip: float = 0.0
    shift: float = 0  # whole pixels (int) from 1, or a fraction of the picture's side below 1 (``shift_pixels``)
    rotate: float = 0.0
    zoom: float = 0.0
    erase: float = 0.0
    crop: float = 0.0
    jitter: float = 0.0
    trivial: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0

    @classmethod
    def parse(cls, spec: str | None) -> Augment:
        """A spec string (``"flip,shift=2"``; ``""``, ``"none"`` or None: nothing) -> Augment.
        Raises MinivisionError for an unknown name (with a "did you mean"), a value that is not a number
        or one outside its bounds (``AUGMENTS``), and a shift that is neither whole pixels nor a fraction
        of the picture's side (``shift=2.5``).

        ``shift`` follows Keras' ``width_shift_range``/``height_shift_range``: a value below 1 is a fraction of
        the picture's side, 1 and above are pixels. Shifts move whole pixels here, so pixels must be whole;
        a fraction is rounded to whole pixels per side (``shift_pixels``)."""
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
                raise MinivisionError(f"augmentation {name}={raw} out of range [{lo:g}, {hi:g}]")
            if name == "shift":
                value = _shift_value(raw, value)
            values[name] = value
        return cls(**values)

    def __bool__(self) -> bool:
        return any(getattr(self, k) for k in AUGMENTS)

    @property
    def mixes(self) -> bool:
        """True when ``mix`` changes the batch (mixup or cutmix set): the loss then takes soft targets."""
        return bool(self.mixup or self.cutmix)

    def spec(self) -> str:
        return ",".join(f"{k}={getattr(self, k):g}" for k in AUGMENTS if getattr(self, k))

    def shift_pixels(self, height: int, width: int) -> tuple[int, int]:
        """The largest shift in whole pixels on each axis (rows, columns) for pictures of ``height`` x
        ``width``: ``shift`` itself when it is pixels, else round(fraction x side)."""
        if not self.shift or self.shift >= 1:
            return int(self.shift), int(self.shift)
        return round(self.shift * height), round(self.shift * width)

    def record(self) -> dict:
        """What model.json's ``augment`` says of a run's training pictures: ``spec`` (canonical, "" for none)
        and ``horizontal_flip`` (whether pictures were mirrored left-right: flip TTA suits only then)."""
        return {"spec": self.spec(), "horizontal_flip": bool(self.flip)}

    def __call__(self, x: torch.Tensor, g: torch.Generator, pre: Normalisation | None = None) -> torch.Tensor:
        """Augment a float batch (N, C, H, W) on any device; same shape and dtype back.

        ``g``: the run's generator (every random number comes from it); ``pre``: the normalisation ``x``
        has had (None: ``x`` is on the 0-1 scale), needed only by jitter and trivial."""
        if not self:
            return x
        n = x.shape[0]

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=g, device=g.device).to(x.device)

        if self.crop:
            x = _resized_crop(x, self.crop, rand(n), rand(n), rand(n), rand(n))
        if self.flip:
            x = torch.where((rand(n) < self.flip).view(n, 1, 1, 1), x.flip(3), x)
        if self.vflip:
            x = torch.where((rand(n) < self.vflip).view(n, 1, 1, 1), x.flip(2), x)
        if self.rotate or self.zoom:
            x = _affine(x, rand(n), rand(n), self.rotate, self.zoom)
        if self.shift:
            x = _shift(x, *self.shift_pixels(x.shape[2], x.shape[3]), rand(n), rand(n))
        if self.jitter or self.trivial:
            mean, std = _scale(pre, x)
            p = x * std + mean
            if self.jitter:
                p = _jitter(p, self.jitter, rand(n), rand(n), rand(n))
            if self.trivial:
                p = _trivial(p, self.trivial, rand(n), rand(n), rand(n), rand(n))
            x = ((p - mean) / std).contiguous(memory_format=torch.channels_last)
        if self.erase:
            x = _erase(x, self.erase, rand(n), rand(n), rand(n), rand(n), rand(n))
        return x

    def mix(self, x: torch.Tensor, y: torch.Tensor, num_classes: int,
            g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixup (Zhang et al. 2018, arXiv:1710.09412) or cutmix (Yun et al. 2019, arXiv:1905.04899) of a
        batch with itself reversed, one mixing weight per batch, as timm's ``Mixup`` (mode "batch").

        ``x``: float (N, C, H, W); ``y``: int64 (N,) class indices < ``num_classes``. Returns the mixed
        batch and soft targets, float (N, num_classes) in ``x``'s dtype, rows summing to 1. The weight
        lambda ~ Beta(alpha, alpha); mixup blends whole pictures, cutmix pastes a box of area 1 - lambda
        (clipped at the edges, lambda then corrected to the area really pasted). With both set, each
        batch takes one of them, 50/50, as timm does. Neither set: ``x`` unchanged and hard one-hots.
        Always draws the same count of numbers from ``g``, so the stream does not depend on the choice."""
        target = F.one_hot(y, num_classes).to(x.dtype)
        if not self.mixes:
            return x, target
        u = torch.rand(3, generator=g, device=g.device).tolist()
        seed = int(torch.randint(0, 2**62, (1,), generator=g, device=g.device).item())
        use_cutmix = bool(self.cutmix) and (not self.mixup or u[0] < 0.5)
        alpha = self.cutmix if use_cutmix else self.mixup
        lam = float(np.random.default_rng(seed).beta(alpha, alpha))  # torch's Beta has no generator argument
        other = x.flip(0)
        if use_cutmix:
            h, w = x.shape[2:]
            cut = math.sqrt(1.0 - lam)
            ch, cw = int(h * cut), int(w * cut)
            cy, cx = int(u[1] * h), int(u[2] * w)
            y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
            x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
            x = x.clone()
            x[:, :, y0:y1, x0:x1] = other[:, :, y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
        else:
            x = x * lam + other * (1.0 - lam)
        return x, target * lam + target.flip(0) * (1.0 - lam)


def _scale(pre: Normalisation | None, x: torch.Tensor) -> tuple[torch.Tensor | float, torch.Tensor | float]:
    """The normalisation's per-channel mean and std as (1, C, 1, 1) tensors (0 and 1 when none)."""
    if pre is None or not pre.mean:
        return 0.0, 1.0
    mean = torch.tensor(list(pre.mean), dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(list(pre.std), dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return mean, std


def _resized_crop(x: torch.Tensor, smallest: float, a: torch.Tensor, r: torch.Tensor, u: torch.Tensor,
                  v: torch.Tensor) -> torch.Tensor:
    """Random resized crop (Szegedy et al. 2015; torchvision's and timm's ``RandomResizedCrop``): a box of
    area fraction uniform in [smallest, 1] and aspect ratio log-uniform in ``CROP_RATIO``, anywhere in
    the picture, resized (bilinear) back to the picture's size.

    Batched, so without torchvision's ten retries: a box wider or taller than the picture is clipped to
    it (the area then falls a little below the draw, the ratio moves toward the picture's). Box edges
    are not rounded to whole pixels."""
    n, _, h, w = x.shape
    area = smallest + a * (1.0 - smallest)
    lo, hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    ratio = torch.exp(lo + r * (hi - lo))
    fw = torch.sqrt(area * ratio).clamp(max=1.0)  # box width / picture width
    fh = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (u * (1 - fw) + fw / 2) * 2 - 1  # box centre in grid coordinates (-1..1)
    cy = (v * (1 - fh) + fh / 2) * 2 - 1
    zeros = torch.zeros_like(fw)
    theta = torch.stack([torch.stack([fw, zeros, cx], 1), torch.stack([zeros, fh, cy], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), [n, x.shape[1], h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _grey(p: torch.Tensor) -> torch.Tensor:
    """Luma (N, 1, H, W) of a 0-1 batch: the LUMA weights for colour, the channel itself for grey."""
    if p.shape[1] != 3:
        return p.mean(1, keepdim=True)
    weights = torch.tensor(LUMA, dtype=p.dtype, device=p.device).view(1, 3, 1, 1)
    return (p * weights).sum(1, keepdim=True)


def _blend(p: torch.Tensor, base: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ``ImageEnhance`` rule: ``base + factor * (p - base)``, clipped to 0-1; ``factor`` (N,)."""
    return (base + factor.view(-1, 1, 1, 1) * (p - base)).clamp(0.0, 1.0)


def _brightness(p: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(p, torch.zeros_like(p[:, :1]), f)


def _contrast(p: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(p, _grey(p).mean((2, 3), keepdim=True), f)


def _saturation(p: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(p, _grey(p), f) if p.shape[1] == 3 else p


def _jitter(p: torch.Tensor, strength: float, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Colour jitter on a 0-1 batch: brightness, contrast and (colour only) saturation, each a factor
    uniform in [1 - strength, 1 + strength] per picture (torchvision's ``ColorJitter`` with the same
    value for the three; timm's default 0.4), applied in that fixed order (torchvision shuffles it)."""
    lo = max(0.0, 1.0 - strength)
    span = 1.0 + strength - lo
    p = _brightness(p, lo + a * span)
    p = _contrast(p, lo + b * span)
    return _saturation(p, lo + c * span)


def _sharpness(p: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """PIL's ``ImageEnhance.Sharpness``: blend with its SMOOTH filter (3 x 3, centre 5, others 1, /13),
    the border pixels kept, as PIL and torchvision do."""
    c = p.shape[1]
    kernel = torch.ones(3, 3, dtype=p.dtype, device=p.device)
    kernel[1, 1] = 5.0
    kernel = (kernel / 13.0).expand(c, 1, 3, 3)
    smooth = p.clone()
    smooth[:, :, 1:-1, 1:-1] = F.conv2d(p, kernel, groups=c)
    return _blend(p, smooth, f)


def _posterize(p: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Keep 8 - round(4 m) bits of each 8-bit value (8 down to 4 bits)."""
    step = (2.0 ** torch.round(4 * m)).view(-1, 1, 1, 1)
    return torch.floor(torch.round(p * 255) / step) * step / 255


def _solarize(p: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Invert the values at or above the threshold 1 - m."""
    return torch.where(p >= (1.0 - m).view(-1, 1, 1, 1), 1.0 - p, p)


def _autocontrast(p: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Stretch each channel to the full 0-1 range (a flat channel is left alone); ``m`` unused."""
    lo = p.amin((2, 3), keepdim=True)
    hi = p.amax((2, 3), keepdim=True)
    flat = hi <= lo
    return torch.where(flat, p, (p - lo) / torch.where(flat, torch.ones_like(hi), hi - lo))


# TrivialAugment's ops (Mueller & Hutter 2021, arXiv:2103.10158) with RandAugment's ranges as torchvision's
# ``RandAugment`` sets them (the paper's "TA (RA)"), not the wider "TA (Wide)": on 28-32 px pictures a
# 135-degree rotation or a 32 px translation leaves little of the picture. Strength m ~ U(0, 1) scales the
# op's largest change, with a random sign where the op has one. Equalize is left out: a per-picture
# histogram does not batch; colour is left out for grey pictures, where it does nothing.
_TRIVIAL_PHOTOMETRIC = {  # name -> (op, signed); factors are 1 +- 0.9 m
    "identity": (None, False),
    "brightness": (lambda p, m: _brightness(p, 1 + 0.9 * m), True),
    "color": (lambda p, m: _saturation(p, 1 + 0.9 * m), True),
    "contrast": (lambda p, m: _contrast(p, 1 + 0.9 * m), True),
    "sharpness": (lambda p, m: _sharpness(p, 1 + 0.9 * m), True),
    "posterize": (_posterize, False),
    "solarize": (_solarize, False),
    "autocontrast": (_autocontrast, False),
}
_TRIVIAL_GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")  # 30 degrees, 0.3, 45%
TRIVIAL_OPS = tuple(_TRIVIAL_PHOTOMETRIC) + _TRIVIAL_GEOMETRIC


def trivial_ops(channels: int) -> tuple[str, ...]:
    """The ops TrivialAugment draws from, uniformly, for pictures with ``channels`` channels."""
    return tuple(op for op in TRIVIAL_OPS if channels == 3 or op != "color")


def _trivial(p: torch.Tensor, prob: float, op_u: torch.Tensor, m: torch.Tensor, sign_u: torch.Tensor,
             apply_u: torch.Tensor) -> torch.Tensor:
    """TrivialAugment on a 0-1 batch: each picture, with probability ``prob``, gets one op drawn uniformly
    from ``trivial_ops`` at strength ``m`` ~ U(0, 1) (sign from ``sign_u`` for signed ops)."""
    n, _, h, w = p.shape
    ops = trivial_ops(p.shape[1])
    which = (op_u * len(ops)).long().clamp(max=len(ops) - 1)
    which = torch.where(apply_u < prob, which, torch.zeros_like(which))  # 0 = identity
    signed = torch.where(sign_u < 0.5, -m, m)
    out = p.clone()
    for k, name in enumerate(ops):
        if name == "identity" or name in _TRIVIAL_GEOMETRIC:
            continue
        sel = which == k
        if bool(sel.any()):
            fn, has_sign = _TRIVIAL_PHOTOMETRIC[name]
            out[sel] = fn(p[sel], (signed if has_sign else m)[sel])
    geo = torch.zeros(n, dtype=torch.bool, device=p.device)
    one, zero = torch.ones_like(m), torch.zeros_like(m)
    a, b, c, d, tx, ty = one, zero, zero, one, zero, zero  # output grid -> input grid (grid coordinates)
    for name in _TRIVIAL_GEOMETRIC:
        sel = which == ops.index(name)
        geo |= sel
        if name == "rotate":
            angle = torch.where(sel, signed * math.radians(30.0), zero)
            a, b, c, d = torch.cos(angle), -torch.sin(angle), torch.sin(angle), torch.cos(angle)
        elif name == "shear_x":
            b = torch.where(sel, signed * 0.3, b)
        elif name == "shear_y":
            c = torch.where(sel, signed * 0.3, c)
        elif name == "translate_x":
            tx = torch.where(sel, signed * 0.45 * 2, tx)  # 45% of the width; the grid spans 2
        else:
            ty = torch.where(sel, signed * 0.45 * 2, ty)
    if bool(geo.any()):
        theta = torch.stack([torch.stack([a, b, tx], 1), torch.stack([c, d, ty], 1)], 1)[geo]
        grid = F.affine_grid(theta.to(p.dtype), [int(geo.sum()), p.shape[1], h, w], align_corners=False)
        out[geo] = F.grid_sample(p[geo], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out


def _affine(x: torch.Tensor, u: torch.Tensor, v: torch.Tensor, degrees: float, zoom: float) -> torch.Tensor:
    """Rotate by up to ``degrees`` and scale by 1 +- ``zoom`` around the centre (bilinear, zero fill)."""
    angle = (u * 2 - 1) * math.radians(degrees)
    scale = 1 + (v * 2 - 1) * zoom
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    zeros = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zeros], 1), torch.stack([sin, cos, zeros], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _shift_value(raw: str, value: float) -> float:
    """A parsed ``shift``: whole pixels as an int (1 and above), or a fraction of the side (below 1);
    MinivisionError for pixels that are not whole and fractions over ``MAX_SHIFT_FRACTION``."""
    if value >= 1:
        if value != int(value):
            raise MinivisionError(f"augmentation shift={raw}: shifts move whole pixels; give whole pixels "
                                  f"(shift={int(value)}) or a fraction of the picture's side below 1 (shift=0.1 "
                                  "for 10%)")
        return int(value)
    if value > MAX_SHIFT_FRACTION:
        raise MinivisionError(f"augmentation shift={raw}: a fraction of the picture's side must be at most "
                              f"{MAX_SHIFT_FRACTION:g} (or give whole pixels, 1 and above)")
    return value if value else 0


def _shift(x: torch.Tensor, kh: int, kw: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Translate each image by whole pixels in [-kh, kh] down and [-kw, kw] across, filling with zeros."""
    n, _, h, w = x.shape
    dy = (u * (2 * kh + 1)).long().clamp(max=2 * kh)  # offsets into the padded image
    dx = (v * (2 * kw + 1)).long().clamp(max=2 * kw)
    padded = F.pad(x, (kw, kw, kh, kh))
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


# ----------------------------------------------------------------------------- small data

#: Up to this many training pictures a dataset counts as small and gets ``small_data_augment``'s policy
#: (the issue's "a few thousand training images or fewer"; the same line as ``finetune.SMALL_DATA_MAX``,
#: where a run with no ``--pretrained`` starts fine-tuning; Fashion-MNIST's 100 per class is 1,000).
SMALL_DATA = 5000
#: The policy for small datasets: airbench's flip + translate by 2 px (see ``small_data_augment`` for the
#: measurement that chose it over the stronger ones).
SMALL_DATA_POLICY = "flip,shift=2"


def small_data_augment(n_train: int, channels: int, dataset_name: str) -> str | None:
    """The augmentation spec the training picks by itself for a small dataset (a spec string for
    ``Augment.parse`` and args.yaml), or None (keep the model's recipe) above ``SMALL_DATA`` pictures.

    ``n_train``: training pictures (after the validation split); ``channels``: 1 or 3 (unused: the same
    policy measured best on grey and colour pictures); ``dataset_name``: the dataset's name
    (``Dataset.name``): the datasets a mirror changes (``train.MIRROR_SENSITIVE``: digits) get no flip.

    Rule: horizontal flip + shift by up to 2 px, whatever the network (it is mvnet's recipe already; it
    gives it to mvnet-t, whose short-run recipe has none, and to a fine-tuned EfficientNet-Lite0, whose
    recipe has none). The stronger augmentations lost at the training lengths a small dataset gets here
    (a few minutes on 2 cores). Measured 2026-11-30, 100 training pictures per class drawn with seed 0
    (``bench/fewshot.py``'s draw 0; 10% of them held out for validation), mvnet-s from scratch, 40 epochs,
    batch 64, one seed, ``OMP_NUM_THREADS=1`` on a shared 2-core AMD EPYC, test accuracy on the whole
    test set (single runs: about a point of noise):

    ============================================  ==============  ===================
    --augment                                     Fashion-MNIST   CIFAR-10 (JPEG)
    ============================================  ==============  ===================
    none                                          83.39%
    flip,shift=2 (this policy)                    84.32%          51.77%
    flip,shift=2,jitter=0.4                       83.68%
    flip,shift=2,mixup=0.2                        83.80%
    flip,shift=2,trivial                          82.36%
    flip,shift=2,cutmix=1                         80.33%
    crop=0.35,flip                                82.34%
    crop=0.35,flip,jitter=0.4                     80.46%          45.71%
    crop=0.35,flip,jitter=0.4,cutmix=1            78.23%
    crop=0.35,flip,jitter=0.4,mixup=0.2           79.81%
    crop=0.35,flip,trivial                        80.04%
    crop=0.8,flip,shift=2                         81.72%
    ============================================  ==============  ===================

    Command: ``minivision train --data DRAW --model mvnet-s --pretrained none --epochs 40 --batch-size 64
    --augment SPEC --seed 0``. Random resized crops (even 80%) and cutmix cost 2-6 points; jitter and mixup are
    within a single run's noise of the policy, so they are left to the user (``--augment``).
    """
    from ..train import MIRROR_SENSITIVE  # here: train imports this module

    if n_train > SMALL_DATA:
        return None
    spec = Augment.parse(SMALL_DATA_POLICY)
    if dataset_name.lower() in MIRROR_SENSITIVE:
        spec = Augment(**{**spec.__dict__, "flip": 0.0})
    return spec.spec()
