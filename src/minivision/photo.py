"""A user's photo -> the picture the model was trained on: the conversion saved with the model.

A model that scores 95% on its test set fails on real photos when prediction does not prepare a
picture the way the training data was prepared. Fashion-MNIST was made by Zalando from product
photos (a garment on a light background; arXiv:1708.07747): trim the edges that match the corner
colour, resize the longest edge to 28, sharpen, extend the short edge to 28 with the item
centred, negate, 8-bit grayscale. ``zalando`` repeats those steps on a photo, after evening out
the light on its backdrop and finding the item on it (``photo_light``: a photo taken in ordinary
light has no one backdrop colour to trim); ``resize`` does what
a folder dataset does to its pictures (``data/folder.py``: a LANCZOS resize to the working size,
the aspect ratio kept by ``fit``), for RGB and folder models. Which one a model uses, and its
settings, is a ``PictureConversion`` (frozen) in ``Preprocess.photo``, written to model.json as

    {"method": "zalando", "background": "auto", "box": 28}    # box: longest edge of the item
    {"method": "resize", "fit": "letterbox"}                  # fit: letterbox, crop or squash
    {"method": "resize"}                                      # squash (as before fit existed)

and used unchanged by everyone who turns a picture into model input: the folder reader
(``data/folder.py``: its pictures of other sizes), predict and the HTTP service
(``Preprocess.image_to_uint8``), and the training-jobs uploads (``preset(kind)``).

Choices, measured with ``bench/photos.py --ablations`` on photo-style renditions of 2,000
Fashion-MNIST test images (the default 30-second model: 89.4% on the plain test images, 89.3%
on their photos converted, 10.4% on the photos merely resized; docs/BENCHMARKS.md, "Photos"):

- background: the median of the four corner patches (robust to one corner covered by the item
  and to JPEG noise); pixels more than ``TRIM_THRESHOLD`` (24) from it are the item, and only
  2 x 2 blocks of them count, so a lone noisy pixel does not widen the box (a 3 x 3 median filter
  did the same in 12 ms a photo; the corner-colour trim took 1.8 ms a photo, the conversion with
  ``photo_light`` takes 20 ms on this busy 2-core machine: ``bench/photos.py``). Thresholds 16, 24
  and 32 are within 0.4 points of each other; 64 loses 1.7 points; no trim at all leaves 24%.
  24 keeps a margin for shadows and sensor noise, which the renditions (noise sd 3) lack.
- resampling: LANCZOS (89.3%, mean absolute difference to the original image 10.6 of 255)
  over BOX/area (89.0%, 11.0) and BICUBIC (89.2%, 11.1).
- levels: after negation the background is mapped to 0 and the item's strongest pixel to 255.
  Not in the paper's list, but in its data: 99% of Fashion-MNIST test images have a maximum of
  254 or 255 and half of all pixels are exactly 0. Without it: 87.0% and a difference of 23.1,
  since a dark-blue shirt on light grey is not black on white.
- sharpen: the paper's step, tried (Pillow's SHARPEN after the resize) and left out: 89.0% and a
  difference of 17.5. The renditions are made from already-sharpened images, so real photos may
  differ: ``SHARPEN = True`` to measure again.
- placement: Zalando's images put the odd pixel of margin on the top/left (measured on the test
  set: of the images with an odd margin, 94% of rows and 99.7% of columns have it so), so the
  item goes at ceil(margin / 2).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from . import photo_light
from .errors import MinivisionError

Method = Literal["zalando", "resize"]
Background = Literal["auto", "light", "dark"]
Fit = Literal["letterbox", "crop", "squash"]
METHODS = ("zalando", "resize")
BACKGROUNDS = ("auto", "light", "dark")
# How a resize meets a picture of another aspect ratio: ``letterbox`` scales the whole picture into
# the frame and pads the rest with PAD_VALUE (Ultralytics' LetterBox, fastai's ResizeMethod.Pad);
# ``crop`` scales it to cover the frame and cuts the centre (torchvision's Resize + CenterCrop,
# fastai's ResizeMethod.Crop at validation); ``squash`` stretches it (fastai's ResizeMethod.Squash;
# what a resize did before ``fit`` existed, and what a model.json without ``fit`` gets).
FITS = ("letterbox", "crop", "squash")
PAD_VALUE = 114              # 0-255 grey of letterbox padding: Ultralytics' LetterBox value (114, 114, 114)
TRIM_THRESHOLD = 24          # 0-255: a pixel this far from the background colour is part of the item
DARK_BORDER = 64             # 0-255: training images whose border median is below this have a dark background
SHARPEN = False              # the paper's sharpen step; measured to hurt, kept off (see the docstring)
RESAMPLE = Image.Resampling.LANCZOS
WORK_SIZE = 1024             # photos over twice this size are box-reduced first: 28 pixels need no more
_NAMED = {"fashion-mnist": 28, "mnist": 20}  # box of model.json files written before the photo setting


# ------------------------------------------------------------------------------------- the conversion

@dataclass(frozen=True)
class PictureConversion:
    """A picture -> the model's input, the way its training pictures were made: one object, saved
    with the model (model.json's ``preprocess.photo``) and used unchanged by the folder reader,
    predict, the HTTP service and the training-jobs uploads, so no path converts pictures its own way.

    Input (``convert``): a PIL image of any mode and size, upright (``data.images.open_image``
    applies EXIF orientation; this does not), or its uint8 pixels (H, W) / (H, W, 3). Modes other
    than L and RGB are flattened by the decoder's rule (``images.to_l_or_rgb``: transparency on
    white, 16-bit scaled). Output: uint8 numpy (C, H, W), C = ``channels``, (H, W) = ``size``,
    C-contiguous (``torch.from_numpy`` takes it as it is); ``to_image`` gives the same pixels as a
    mode L or RGB picture.

    ``method``: ``resize``, a LANCZOS resize to ``size``, what the folder reader does to its pictures,
    with ``fit`` saying how a picture of another aspect ratio meets the frame (``FITS``: letterbox
    pads with grey ``PAD_VALUE``, crop keeps the centre, squash stretches); ``zalando``,
    Fashion-MNIST's steps (the module docstring; grayscale only),
    with ``background`` the photo's polarity (``convert(img, background)`` overrides it for one
    picture) and ``box`` the item's longest edge. Invalid settings raise a one-line MinivisionError."""

    size: tuple[int, int]        # (height, width) of the model's input
    channels: int                # 1 grayscale, 3 RGB
    method: Method = "resize"    # zalando: Fashion-MNIST's steps; resize: the folder reader's plain resize
    background: Background = "auto"  # zalando: the photo's background; auto = from the corner colour
    box: int | None = None       # zalando: the item's longest edge, 1..max(size); None = min(size)
    fit: Fit = "squash"          # resize: letterbox | crop | squash (the folder reader's default: letterbox)

    def __post_init__(self) -> None:
        try:
            size = (int(self.size[0]), int(self.size[1]))
            ok = len(self.size) == 2 and size == tuple(self.size) and min(size) >= 1
        except (TypeError, ValueError, IndexError):
            ok = False
        if not ok:
            raise MinivisionError(f"photo size must be (height, width) of positive integers, got {_short(self.size)}")
        object.__setattr__(self, "size", size)
        if self.channels not in (1, 3) or isinstance(self.channels, bool):
            raise MinivisionError(f"photo channels must be 1 or 3, got {_short(self.channels)}")
        object.__setattr__(self, "channels", int(self.channels))
        if self.method not in METHODS:
            raise MinivisionError(f"photo method must be one of {', '.join(METHODS)}, got {_short(self.method)}")
        if self.background not in BACKGROUNDS:
            raise MinivisionError(f"photo background must be one of {', '.join(BACKGROUNDS)}, "
                                  f"got {_short(self.background)}")
        if self.fit not in FITS:
            raise MinivisionError(f"photo fit must be one of {', '.join(FITS)}, got {_short(self.fit)}")
        if self.method == "resize":
            if self.box is not None or self.background != "auto":
                raise MinivisionError("photo box and background are settings of the zalando method, not resize")
            return
        if self.fit != "squash":
            raise MinivisionError("photo fit is a setting of the resize method, not zalando (which frames the item)")
        if self.channels != 1:
            raise MinivisionError(f"the zalando photo method makes grayscale pictures; channels is {self.channels}")
        box = min(size) if self.box is None else self.box
        if not isinstance(box, int | np.integer) or isinstance(box, bool):
            raise MinivisionError(f"photo box must be an integer, got {_short(box)}")
        box = int(box)
        if not 1 <= box <= max(size):
            raise MinivisionError(f"photo box {box} is outside 1..{max(size)}")
        object.__setattr__(self, "box", box)

    def convert(self, img: Image.Image | np.ndarray, background: str | None = None) -> np.ndarray:
        """``img`` -> uint8 (C, H, W), the model's input. ``background`` (auto, light, dark)
        overrides the saved polarity of a zalando conversion; a resize has none. ``img`` may also be
        its pixels, uint8 (H, W) or (H, W, 3) (``Image.fromarray`` of them is the same picture): the
        folder reader's decoded arrays, which skip the round trip through Pillow (~40 us a picture)
        when there is nothing to resize."""
        if background is not None and background not in BACKGROUNDS:
            raise MinivisionError(f"background must be one of {', '.join(BACKGROUNDS)}, got {_short(background)}")
        if isinstance(img, np.ndarray):
            if (self.method == "resize" and img.dtype == np.uint8 and img.shape[:2] == self.size
                    and img.shape[2:] == ((3,) if self.channels == 3 else ())):
                return np.array(img[None] if img.ndim == 2 else img.transpose(2, 0, 1), order="C")
            img = Image.fromarray(img)
        if img.mode not in ("L", "RGB"):
            from .data.images import to_l_or_rgb  # here: the data package imports this module

            img = to_l_or_rgb(img)
        if self.method == "zalando":
            return zalando(img, self.size, background=background or self.background, box=self.box)[None]
        a = resize_like_folder(img, self.size, self.channels, self.fit)
        return a[None] if a.ndim == 2 else np.ascontiguousarray(a.transpose(2, 0, 1))

    @property
    def decode_side(self) -> int:
        """Pixels a picture's shorter side must keep when it is decoded at reduced size for this
        conversion (``data.images.open_image(min_side=...)``): a resize needs its frame's longer side
        (no fit needs more of either side), zalando its working size ``WORK_SIZE``. The folder reader,
        predict and the service all decode with it, so a picture gets the same pixels on every path."""
        return max(self.size) if self.method == "resize" else WORK_SIZE

    def to_image(self, img: Image.Image, background: str | None = None) -> Image.Image:
        """``convert``'s pixels as a picture, mode L or RGB (the jobs API stores them as PNG)."""
        a = self.convert(img, background)
        return Image.fromarray(a[0] if self.channels == 1 else a.transpose(1, 2, 0))

    def to_dict(self) -> dict[str, Any]:
        """model.json's ``preprocess.photo`` entry (size and channels are ``preprocess``'s own keys)."""
        if self.method == "resize":  # squash as {"method": "resize"}, byte for byte what it was before fit
            return {"method": "resize"} if self.fit == "squash" else {"method": "resize", "fit": self.fit}
        return {"method": self.method, "background": self.background, "box": self.box}

    @classmethod
    def from_dict(cls, d: Any, size: tuple[int, int], channels: int) -> PictureConversion:
        """Read back ``to_dict`` for a model taking (channels, *size) input, every field checked:
        MinivisionError with a one-line message for a malformed entry. A resize entry's background
        and box are ignored, as they always were; one without ``fit`` (written before it existed)
        squashes, as it always did."""
        if not isinstance(d, dict) or d.get("method") not in METHODS:
            raise MinivisionError(f"model.json has an unknown photo conversion {_short(d)} (known methods: "
                                  f"{', '.join(METHODS)}; written by a newer minivision?)")
        unknown = sorted(str(k) for k in d if k not in _KEYS)
        if unknown:
            near = difflib.get_close_matches(unknown[0], _KEYS, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f" (known: {', '.join(_KEYS)})"
            raise MinivisionError(f"model.json: unknown photo setting {_short(unknown[0])}{hint}")
        try:
            if d["method"] == "resize":
                return cls(size, channels, fit=d.get("fit", "squash"))
            box = d.get("box")
            if isinstance(box, float) and box.is_integer():
                box = int(box)  # 28.0: a JSON number written by another tool
            return cls(size, channels, "zalando", d.get("background", "auto"), box)
        except MinivisionError as e:
            raise MinivisionError(f"model.json: {e}") from None


_KEYS = ("method", "background", "box", "fit")


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ------------------------------------------------------------------------------------- presets

FASHION = PictureConversion((28, 28), 1, "zalando", box=28)  # 28 x 28 grey, a light item on black: Zalando's steps
GRAY = PictureConversion((28, 28), 1)                         # 28 x 28 grey, resized
RGB = PictureConversion((32, 32), 3)                          # 32 x 32 colour, resized (CIFAR-10's size)
PRESETS: Mapping[str, PictureConversion] = MappingProxyType({"fashion": FASHION, "gray": GRAY, "rgb": RGB})


def preset(kind: str) -> PictureConversion:
    """The named conversion of a dataset kind (the jobs API's ``kind``: fashion, gray, rgb)."""
    try:
        return PRESETS[kind]
    except (KeyError, TypeError):
        near = difflib.get_close_matches(str(kind), PRESETS, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise MinivisionError(f"unknown picture kind {_short(kind)} (known: {', '.join(PRESETS)}){hint}") from None


# ------------------------------------------------------------------------------------- choosing one

def choose_conversion(x: Any, source: PictureConversion | None = None) -> PictureConversion:
    """The conversion for a model trained on the uint8 images ``x`` (N, C, H, W); ``source``: the
    resize its pictures were made with (an image folder's ``Dataset.conversion``: its fit), kept
    when the rule below says resize.

    Rule: grayscale data whose image borders are mostly dark (the median of the outer two-pixel
    ring, over up to 2,000 images, below ``DARK_BORDER``) was made the Fashion-MNIST way, a light
    item on black -> ``zalando``, with ``box`` the median longest edge of the items' bounding
    boxes (28 for Fashion-MNIST, about 20 for MNIST, whose digits sit in a 20 x 20 box). Anything
    else (colour, or light backgrounds) -> ``resize``, as folder datasets resize their pictures."""
    resize = PictureConversion((int(x.shape[2]), int(x.shape[3])), int(x.shape[1]))
    if (source is not None and source.method == "resize"
            and (source.size, source.channels) == (resize.size, resize.channels)):
        resize = source
    if x.shape[1] != 1 or len(x) == 0 or min(x.shape[2:]) < 5:
        return resize
    import torch  # training only: readers of a model (and of an export) never choose a conversion

    idx = torch.linspace(0, len(x) - 1, min(len(x), 2000)).long()
    a = x[idx, 0].numpy()
    ring = np.concatenate([a[:, :2].reshape(len(a), -1), a[:, -2:].reshape(len(a), -1),
                           a[:, 2:-2, :2].reshape(len(a), -1), a[:, 2:-2, -2:].reshape(len(a), -1)], axis=1)
    if float(np.median(ring)) >= DARK_BORDER:
        return resize
    mask = a > TRIM_THRESHOLD
    rows, cols = mask.any(2), mask.any(1)
    found = rows.any(1)
    if not found.any():
        return resize
    height = a.shape[1] - rows[found].argmax(1) - rows[found][:, ::-1].argmax(1)
    width = a.shape[2] - cols[found].argmax(1) - cols[found][:, ::-1].argmax(1)
    box = int(np.median(np.maximum(height, width)))
    return PictureConversion(resize.size, 1, "zalando", "auto", max(1, min(box, *a.shape[1:])))


def default_conversion(dataset_name: str | None, size: tuple[int, int], channels: int) -> PictureConversion:
    """For a model.json written before the photo setting: zalando for Fashion-MNIST and MNIST."""
    box = _NAMED.get(str(dataset_name or "").lower())
    if box is None or channels != 1:
        return PictureConversion(size, channels)
    return PictureConversion(size, 1, "zalando", "auto", min(box, *size))


# ------------------------------------------------------------------------------------- the steps

def resize_like_folder(img: Image.Image, size: tuple[int, int], channels: int, fit: str = "squash") -> np.ndarray:
    """The resize method's pixels, uint8 (H, W) or (H, W, 3): LANCZOS to (H, W), a picture of another
    aspect ratio letterboxed (Pillow's ``ImageOps.pad``, centred, ``PAD_VALUE`` grey), centre-cropped
    (``ImageOps.fit``) or squashed, by ``fit`` (``FITS``)."""
    mode = "L" if channels == 1 else "RGB"
    if img.mode != mode:
        img = img.convert(mode)
    h, w = size
    if img.size != (w, h):
        if fit == "letterbox":
            pad = PAD_VALUE if mode == "L" else (PAD_VALUE,) * 3
            img = ImageOps.pad(img, (w, h), Image.Resampling.LANCZOS, color=pad)
        elif fit == "crop":
            img = ImageOps.fit(img, (w, h), Image.Resampling.LANCZOS)
        else:
            img = img.resize((w, h), Image.Resampling.LANCZOS)
    return np.array(img, dtype=np.uint8)  # a copy: torch.from_numpy wants a writable array


def corner_background(g: np.ndarray) -> float:
    """The background level of a grayscale array: the median of its four corner patches."""
    h, w = g.shape
    p = max(1, min(h, w) // 16)
    patches = [g[:p, :p], g[:p, -p:], g[-p:, :p], g[-p:, -p:]]
    return float(np.median(np.concatenate([c.ravel() for c in patches])))


def border_background(g: np.ndarray, light: bool) -> float:
    """The background level when its polarity is given: the median of the outer ring's pixels on
    that side of mid-grey (255 or 0 when the ring has none)."""
    ring = np.concatenate([g[0], g[-1], g[1:-1, 0], g[1:-1, -1]])
    side = ring[ring > 127] if light else ring[ring <= 127]
    return float(np.median(side)) if side.size else (255.0 if light else 0.0)


def trim_box(g: np.ndarray, bg: float, threshold: float = TRIM_THRESHOLD) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of everything farther than ``threshold`` from ``bg``; the whole
    picture when nothing is (a blank photo stays whole instead of collapsing to one pixel)."""
    h, w = g.shape
    mask = np.abs(g.astype(np.int16) - int(round(bg))) > threshold
    if min(h, w) >= 8:  # a lone noisy pixel (dust, JPEG ringing) is not the item: keep 2 x 2 blocks only
        mask = mask[:-1, :-1] & mask[1:, :-1] & mask[:-1, 1:] & mask[1:, 1:]
        grow = 2  # each kept block covers its pixel and the next one
    else:
        grow = 1
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(rows) == 0:
        return 0, 0, w, h
    return int(cols[0]), int(rows[0]), min(w, int(cols[-1]) + grow), min(h, int(rows[-1]) + grow)


def zalando(img: Image.Image, size: tuple[int, int], *, background: str = "auto", box: int | None = None,
            threshold: float = TRIM_THRESHOLD, resample: Image.Resampling = RESAMPLE, sharpen: bool = SHARPEN,
            levels: bool = True, even_light: bool = True) -> np.ndarray:
    """Fashion-MNIST's steps on one picture -> uint8 (H, W), a light item on black.

    grayscale; even out the backdrop's light and find the item on it (``photo_light``: a smooth
    backdrop surface fitted and divided out, a threshold above the backdrop's noise, the largest
    connected components, their bounding box); resize the item's longest edge to ``box``
    (antialiased); centre on an (H, W) canvas of background; the item's distance from the backdrop,
    so a light background is negated; levels (background 0, item's extreme 255). A picture already
    at (H, W) is already framed like the training images: it is only negated if its background is
    light (a Fashion-MNIST test PNG comes through unchanged). ``even_light=False`` trims by the corner
    colour and measures against one border level instead (the conversion before ``photo_light``);
    it and the other keyword arguments exist for ``bench/photos.py``'s comparisons. Raises
    MinivisionError for an unknown ``background``."""
    if background not in BACKGROUNDS:
        raise MinivisionError(f"background must be one of {', '.join(BACKGROUNDS)}, got {background!r}")
    h, w = size
    box = min(h, w) if box is None else box
    gray = img.convert("L")
    factor = max(gray.size) // WORK_SIZE
    if factor >= 2:  # a 12-megapixel phone photo: box-reduce first (a 16x smaller mask, 1.5x faster overall)
        gray = gray.reduce(factor)
    g = np.asarray(gray, dtype=np.uint8)
    bg = corner_background(g)
    light = bg > 127.5 if background == "auto" else background == "light"
    if light != (bg > 127.5):  # told the opposite of what the corners say (a vignette, an item in a corner)
        bg = border_background(g, light)
    if gray.size == (w, h):
        return (255 - g) if light else g.copy()
    if even_light:
        s = g if light else 255 - g  # the backdrop light, the item dark
        small = np.asarray(photo_light.reduced(gray), dtype=np.uint8)
        (left, top, right, bottom), backdrop = photo_light.find_item(s, small if light else 255 - small, threshold)
        dark = backdrop.flatten(s, (left, top, right, bottom))
    else:
        left, top, right, bottom = trim_box(g, bg, threshold)
        crop = g[top:bottom, left:right].astype(np.float32)
        dark = (bg - crop) if light else (crop - bg)  # the item's distance from the background, on the light side
    item = Image.fromarray(np.ascontiguousarray(dark, dtype=np.float32), "F")
    scale = min(box / max(item.size), w / item.size[0], h / item.size[1])
    new = (max(1, min(w, round(item.size[0] * scale))), max(1, min(h, round(item.size[1] * scale))))
    if item.size != new:
        item = item.resize(new, resample)
    if sharpen:
        item = item.filter(ImageFilter.SHARPEN)
    v = np.clip(np.asarray(item, dtype=np.float32), 0, None)
    if levels:
        top_value = float(v.max(initial=0.0))
        v = v * (255.0 / top_value) if top_value >= 8 else v  # a near-blank picture is not amplified
    out = np.zeros((h, w), dtype=np.uint8)
    x0, y0 = (w - new[0] + 1) // 2, (h - new[1] + 1) // 2  # the odd pixel of margin top/left, as Zalando's
    out[y0:y0 + new[1], x0:x0 + new[0]] = np.clip(np.rint(v), 0, 255).astype(np.uint8)
    return out


def model_input(pictures: Any, model: PictureConversion | str | Any) -> np.ndarray:
    """Picture files -> uint8 numpy (N, C, H, W), what an exported model's ``pixels`` input takes: each
    decoded as predict decodes it (``data.images.open_image``: upright by its EXIF orientation, the size
    limits) and converted by the model's saved conversion (for a Fashion-MNIST model, trimmed, centred on
    its frame and negated, as Zalando made the dataset). Needs no PyTorch.

    ``pictures``: one path (str or Path), bytes or PIL image, or a list of them. ``model``: an exported
    ``.onnx`` file (its conversion is read from its metadata by ``onnx_runtime.load_onnx``) or a
    ``PictureConversion``. Raises MinivisionError (one line) for a file that is not a picture or a model
    file that is not a minivision export."""
    from pathlib import Path

    from .data.images import open_image

    if not isinstance(model, PictureConversion):
        from .onnx_runtime import load_onnx

        model = load_onnx(model, threads=1).preprocess.photo
    items = pictures if isinstance(pictures, list | tuple) else [pictures]
    out = []
    for item in items:
        img = item if isinstance(item, Image.Image) else open_image(
            item if isinstance(item, bytes) else Path(item), min_side=model.decode_side)
        out.append(model.convert(img))
    if not out:
        return np.zeros((0, model.channels, *model.size), dtype=np.uint8)
    return np.stack(out)
