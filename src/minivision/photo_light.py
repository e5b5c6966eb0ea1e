"""Photos in ordinary light: even out the backdrop's illumination and find the item on it.

A product photo taken near a window is brighter on one side; a lens darkens the corners (vignette);
a lamp leaves a soft shadow; paper and cloth have a texture. Trimming by the corner colour then keeps
a band of backdrop, and negating by one border level leaves the lit side grey: the garment ends up
small and off-centre in the 28 x 28 picture, which the model has never seen. Here, on a picture whose
backdrop is light (a dark backdrop is negated first), reduced to ``SEARCH_SIZE`` on its longest edge:

1. backdrop (``fit_backdrop``): a smooth surface, a polynomial of degree 2 in (x, y) fitted by least
   squares on a copy reduced to ``FIT_SIZE``, first to the border band (the backdrop's side of
   mid-grey), then refitted to every pixel within ``CLIP_SIGMAS`` robust sds of it, so the item drops
   out of the fit. A ramp is degree 1 and a vignette about degree 2 (cos^4 falloff ~ 1 - a r^2).
2. corrected picture (``Backdrop.flatten``): ``(surface - picture) x mean(surface) / surface``, the
   item's darkness relative to the light falling on it (illumination is a gain: dividing removes it),
   in grey levels of the mean backdrop.
3. shade (``shade_of``): what is left of the backdrop around the item (a soft shadow), averaged over
   backdrop pixels only and subtracted.
4. item (``find_item``): thresholded at ``max(threshold, NOISE_SIGMAS x the backdrop's noise)``,
   connected components labelled by scikit-image (``measure.label``), the largest kept with every one
   at least ``KEEP_SHARE`` of its size (a sandal's straps, a bag's handle), their bounding box; then
   refined at full size inside that box plus a margin with the 2 x 2-block rule of ``photo.trim_box``,
   so an evenly lit photo gets the box the corner-colour trim gave it, to the pixel.
``photo.zalando`` then applies Zalando's steps to the corrected picture inside that box.

What is ours and why: the surface fit is a dozen lines of numpy least squares, because no library
fits a robust low-order illumination surface (scikit-image's rolling-ball and morphological
backgrounds assume objects smaller than the ball, and a garment fills most of a product photo); the
shade is a normalised convolution (two scikit-image Gaussians). Otsu's threshold, the labelling and
hole filling are scikit-image's and SciPy's, resizing Pillow's.

Choices, measured on 1,500 Fashion-MNIST test images rendered by ``bench/photos.py`` (JPEG; a 3-epoch
``mvnet-t``, 92.7% on the plain images; accuracy / mean abs difference to the original, 0-255):

==========================  ===========  ===========  ===========
conversion                  even light   soft shadow  texture
==========================  ===========  ===========  ===========
corner-colour trim (before) 91.3 / 10.4  88.6 / 16.6  59.3 / 39.0
this, no shade              91.2 / 10.9  89.3 / 16.2  91.1 / 11.7
this, shade sd 3% of edge   90.9 / 11.2  90.4 / 13.8  91.1 / 11.9
this, shade sd 6% (shipped) 91.2 / 11.0  90.5 / 14.4  91.1 / 11.7
==========================  ===========  ===========  ===========

The shade costs even light nothing at 6% and takes back most of what a shadow costs; a faint part of a
garment outside its strong outline is averaged like backdrop, which is why a narrower shade (3%) loses
on even light. A shadow sharper than that (blurred less than ~5% of the garment's size) is partly kept.
Components: keeping those of at least 5% of the largest cut off faint fragments of garments (even
light, 1,000 images: 90.8% / 11.0 against the trim's 91.0% / 10.4); at 0.5% (shipped) 91.0% / 10.5,
the same as keeping every one, while dust a fraction of a percent of the item's size is still left out.
Rows for ramps, vignettes and noise: docs/BENCHMARKS.md, "Photos".
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from numpy.polynomial import polynomial as P
from PIL import Image

SEARCH_SIZE = 192    # px: longest edge of the reduced copy the item is searched in
FIT_SIZE = 48        # px: longest edge of the copy the backdrop surface is fitted on
DEGREE = 2           # the backdrop surface's polynomial degree (1: a ramp only; 2: ramps and vignettes)
BAND = 0.08          # share of the short side: the border band the first fit sees
CLIP_SIGMAS = 3.0    # a pixel this many robust sds from the surface is not backdrop (refit without it)
FIT_ROUNDS = 4       # refits; the kept set settles in 2-3
NOISE_SIGMAS = 5.0   # the item is this many sds of backdrop noise below the surface (texture, sensor noise)
KEEP_SHARE = 0.005   # components this share of the largest one's area are part of the item (dust is not)
SHADE_SIGMA = 0.06   # share of the longest edge: the scale a shadow is averaged over around the item
MARGIN = 2           # reduced-copy pixels around the found box searched again at full size


# ------------------------------------------------------------------------------------- the backdrop

def _grid(n: int) -> np.ndarray:
    """Pixel centres of an axis of n pixels, in -1..1 (the same frame at every size)."""
    return ((np.arange(n, dtype=np.float64) + 0.5) * (2.0 / n) - 1.0)


def _terms(degree: int) -> list[tuple[int, int]]:
    """(power of y, power of x) of a polynomial of total degree ``degree``."""
    return [(j, i) for j in range(degree + 1) for i in range(degree + 1 - j)]


@dataclass(frozen=True, eq=False)
class Backdrop:
    """A fitted backdrop: a light surface ``level(y, x)`` over the whole picture (coordinates -1..1,
    so one fit serves every size of the same frame), the robust sd of its pixels around it, and
    optionally what is left of it around the item (``shade``: a soft shadow), on the reduced copy."""

    coef: np.ndarray     # (degree + 1, degree + 1): coef[j, i] multiplies y^j x^i
    noise: float         # grey levels: robust sd of backdrop pixels around the surface, on the reduced copy
    mean: float          # grey levels: the surface's mean over the picture
    shade: np.ndarray | None = None  # float32 (h, w) of the reduced copy: darkness of the backdrop left

    def level(self, height: int, width: int, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """The surface on a (height, width) picture, float32 grey levels; ``box`` = (left, top, right,
        bottom) evaluates only that part."""
        left, top, right, bottom = box or (0, 0, width, height)
        return P.polygrid2d(_grid(height)[top:bottom], _grid(width)[left:right], self.coef).astype(np.float32)

    def flatten(self, s: np.ndarray, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """The item's darkness below the backdrop, float32, in grey levels of the mean backdrop:
        ``(surface - s) x mean / surface`` over ``box`` of ``s`` (uint8 or float, light backdrop).
        0 on the backdrop (noise around it), up to ~mean on a black item."""
        h, w = s.shape
        left, top, right, bottom = box or (0, 0, w, h)
        surface = np.maximum(self.level(h, w, box), 1.0)
        part = s[top:bottom, left:right].astype(np.float32)
        dark = (surface - part) * (np.float32(self.mean) / surface)
        if self.shade is None or right <= left or bottom <= top:
            return dark
        sh, sw = self.shade.shape  # the shade's pixels cover the same frame: scale the box to them
        src = (left * sw / w, top * sh / h, right * sw / w, bottom * sh / h)
        shade = Image.fromarray(self.shade, "F").resize((right - left, bottom - top), Image.Resampling.BILINEAR,
                                                        box=src)
        return dark - np.asarray(shade, dtype=np.float32)


def shade_of(dark: np.ndarray, cut: float) -> np.ndarray:
    """What is left of the backdrop around the item on a flattened reduced copy ``dark`` (float32
    (h, w), ``Backdrop.flatten``): a soft shadow, the coarse grain of a texture. The item is what
    stands out by Otsu's threshold (at least ``cut``), holes filled and grown by a pixel; around it,
    the backdrop's darkness is averaged by a Gaussian of sd ``SHADE_SIGMA`` x the longest edge
    over backdrop pixels only (normalised convolution), fading to 0 inside the item. Float32 (h, w),
    >= 0 (a shadow darkens; nothing here brightens)."""
    from scipy.ndimage import binary_dilation, binary_fill_holes
    from skimage.filters import gaussian, threshold_otsu

    strong = dark > max(cut, float(threshold_otsu(dark)))
    item = binary_dilation(binary_fill_holes(strong), np.ones((3, 3), bool))
    back = (~item).astype(np.float32)
    sigma = SHADE_SIGMA * max(dark.shape)
    num = gaussian(np.where(item, 0.0, dark).astype(np.float32), sigma=sigma, preserve_range=True)
    den = gaussian(back, sigma=sigma, preserve_range=True)
    return np.clip(num / np.maximum(den, 0.5), 0, None).astype(np.float32)


def fit_backdrop(small: np.ndarray, degree: int = DEGREE) -> Backdrop:
    """Fit the backdrop of ``small``, a (H, W) grayscale picture whose backdrop is light (uint8, a
    reduced copy), on a copy reduced again to ``FIT_SIZE`` (the surface is smooth); its noise is
    measured on ``small`` itself, where the threshold applies. See the module docstring."""
    h, w = small.shape
    fit = np.asarray(reduced(Image.fromarray(small), FIT_SIZE), dtype=np.float64)
    fh, fw = fit.shape
    if min(fh, fw) < 8:
        degree = 0  # too few pixels for a surface: a level
    terms = _terms(degree)
    y, x = _grid(fh)[:, None], _grid(fw)[None, :]
    design = np.stack([np.broadcast_to(y ** j * x ** i, (fh, fw)).ravel() for j, i in terms], 1)
    band = max(1, round(BAND * min(fh, fw)))
    ring = np.zeros((fh, fw), bool)
    ring[:band], ring[-band:], ring[:, :band], ring[:, -band:] = True, True, True, True
    keep = ring & (fit > 127.5)  # the backdrop's side of mid-grey, as photo.border_background
    if keep.sum() < 2 * len(terms):
        keep = ring
    flat, keep = fit.ravel(), keep.ravel()
    for _ in range(FIT_ROUNDS):
        c, *_ = np.linalg.lstsq(design[keep], flat[keep], rcond=None)
        r = flat - design @ c
        noise = max(1.0, _robust_sd(r[keep]))
        new = np.abs(r) < CLIP_SIGMAS * noise
        if new.sum() < 2 * len(terms) or np.array_equal(new, keep):
            break
        keep = new
    coef = np.zeros((degree + 1, degree + 1))
    for (j, i), value in zip(terms, c, strict=True):
        coef[j, i] = value
    backdrop = Backdrop(coef, 1.0, float(max(1.0, (design @ c).mean())))
    # the noise where the threshold applies: the backdrop pixels of the fit, at the reduced copy's size
    ys, xs = np.arange(h) * fh // h, np.arange(w) * fw // w
    on_backdrop = keep.reshape(fh, fw)[np.ix_(ys, xs)]
    d = backdrop.flatten(small)[on_backdrop]
    return Backdrop(coef, max(1.0, _robust_sd(d)) if d.size else 1.0, backdrop.mean)


def _robust_sd(r: np.ndarray) -> float:
    """The standard deviation of normal values estimated from their median absolute deviation."""
    return 1.4826 * float(np.median(np.abs(r - np.median(r))))


# ------------------------------------------------------------------------------------- the item

def reduced(gray: Image.Image, size: int = SEARCH_SIZE) -> Image.Image:
    """``gray`` with its longest edge at most ``size`` (Pillow's box filter: an average, which also
    lowers the noise the threshold must clear)."""
    factor = max(gray.size) / size
    if factor <= 1:
        return gray
    new = (max(1, round(gray.size[0] / factor)), max(1, round(gray.size[1] / factor)))
    return gray.resize(new, Image.Resampling.BOX)


def find_item(s: np.ndarray, small: np.ndarray, threshold: float, *,
              degree: int = DEGREE, shade: bool = True) -> tuple[tuple[int, int, int, int], Backdrop]:
    """(left, top, right, bottom) of the item in ``s`` and the fitted backdrop.

    ``s``: uint8 (H, W), the picture with a light backdrop; ``small``: the same picture reduced
    (``reduced``), where the backdrop is fitted and the item searched. ``threshold``: grey levels an
    item pixel lies below the backdrop at least (``photo.TRIM_THRESHOLD``); raised to
    ``NOISE_SIGMAS`` x the backdrop's noise on a textured or noisy backdrop. The whole picture when
    nothing stands out (a blank photo stays whole)."""
    from skimage.measure import label

    h, w = s.shape
    sh, sw = small.shape
    backdrop = fit_backdrop(small, degree)
    cut = max(float(threshold), NOISE_SIGMAS * backdrop.noise)
    if shade and SHADE_SIGMA > 0:
        backdrop = replace(backdrop, shade=shade_of(backdrop.flatten(small), cut))
    mask = backdrop.flatten(small) > cut
    labels = label(mask, connectivity=2)
    if labels.max() == 0:
        return (0, 0, w, h), backdrop
    area = np.bincount(labels.ravel())
    area[0] = 0
    kept = np.flatnonzero(area >= max(2, KEEP_SHARE * area.max()))
    if len(kept) == 0:
        return (0, 0, w, h), backdrop
    rows = np.flatnonzero(np.isin(labels, kept).any(1))
    cols = np.flatnonzero(np.isin(labels, kept).any(0))
    fy, fx = h / sh, w / sw  # full pixels per reduced pixel
    win = (max(0, int((cols[0] - MARGIN) * fx)), max(0, int((rows[0] - MARGIN) * fy)),
           min(w, int(np.ceil((cols[-1] + 1 + MARGIN) * fx))), min(h, int(np.ceil((rows[-1] + 1 + MARGIN) * fy))))
    d = backdrop.flatten(s, win) > cut
    if min(d.shape) >= 2:  # a lone noisy pixel is not the item: 2 x 2 blocks only (photo.trim_box's rule)
        d = d[:-1, :-1] & d[1:, :-1] & d[:-1, 1:] & d[1:, 1:]
        grow = 2
    else:
        grow = 1
    r, c = np.flatnonzero(d.any(1)), np.flatnonzero(d.any(0))
    if len(r) == 0:
        return win, backdrop
    left, top = win[0] + int(c[0]), win[1] + int(r[0])
    return (left, top, min(w, win[0] + int(c[-1]) + grow), min(h, win[1] + int(r[-1]) + grow)), backdrop
