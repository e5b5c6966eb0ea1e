"""Open one picture safely: the single entry point for image files, folder datasets, predict and serve.

Pictures come from users (a folder they point at, an upload to the HTTP service), so this module
treats every file as untrusted: only a short allowlist of raster formats is even parsed (no
EPS/PostScript, which Pillow hands to Ghostscript, no SVG, no PDF), the pixel count is checked
from the header *before* decoding (decompression bombs), the whole file is decoded so a truncated
file fails here instead of becoming a half-grey training image, EXIF orientation is applied, and
the result is always mode "L" or "RGB" with transparency flattened on white.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

from minivision.errors import DataError

# Raster formats we accept. Pillow's format ids; "PPM" covers PBM/PGM/PPM, "MPO" is how some
# Pillow versions label multi-picture JPEGs from phones.
ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "MPO", "GIF", "BMP", "TIFF", "WEBP", "PPM", "ICO")

# File name extensions of those formats, for folder scans (the content decides, not the name).
IMAGE_EXTENSIONS: frozenset[str] = frozenset({
    ".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".gif", ".bmp", ".dib", ".tif", ".tiff", ".webp",
    ".ppm", ".pgm", ".pbm", ".pnm", ".ico",
})

# Pillow's own default bomb limit (~89.5 MP): a large phone photo fits, a 20k x 20k PNG does not.
DEFAULT_MAX_PIXELS: int = 89_478_485
# No legitimate picture for this tool is this big on disk; refuse before reading it into memory.
MAX_FILE_BYTES: int = 256 * 1024 * 1024

# Recognisable formats we refuse on purpose, so the user gets a reason and not "unknown format".
_REFUSED_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"%!PS", "PostScript/EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"%PDF", "PDF"),
    (b"<svg", "SVG"),
    (b"<?xml", "SVG/XML"),
)

_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})

# Truncated files must fail, never be padded with grey. Re-asserted here in case another library
# in the process flipped Pillow's global switch.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageError(DataError):
    """A picture that cannot be used, with ``kind`` saying why, for callers that answer differently
    (the HTTP service: 415 for ``unsupported``, 400 for ``corrupt``/``bomb``, 413 for ``too_large``):
    ``unsupported`` (not an allowed raster format: EPS, SVG, PDF, text, ...), ``corrupt`` (truncated,
    broken or empty), ``bomb`` (too many pixels), ``too_large`` (too many bytes), ``unreadable`` (I/O)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def _allowed_formats() -> list[str]:
    Image.init()
    return [f for f in ALLOWED_FORMATS if f in Image.OPEN]


def _describe(source: str | Path | bytes) -> str:
    return "<uploaded bytes>" if isinstance(source, bytes | bytearray) else str(source)


def _refused_kind(head: bytes) -> str | None:
    stripped = head.lstrip()
    for signature, kind in _REFUSED_SIGNATURES:
        if head.startswith(signature) or stripped.startswith(signature):
            return kind
    if stripped.startswith(b"<") and b"<svg" in head[:1024].lower():  # text that is SVG markup
        return "SVG"
    return None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def to_l_or_rgb(img: Image.Image) -> Image.Image:
    """Flatten any decoded mode to "L" or "RGB", compositing transparency on white (also the rule
    ``photo.PictureConversion`` applies to a picture of another mode handed to it directly)."""
    mode = img.mode
    gray = mode in _GRAY_MODES
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # 16/32-bit grayscale: Pillow's convert("L") clips instead of scaling, so scale here.
        arr = np.asarray(img)
        if mode == "F":
            arr = arr * 255.0 if float(np.nanmax(arr, initial=0.0)) <= 1.0 else arr
            arr = np.nan_to_num(arr).clip(0, 255).astype(np.uint8)
        else:
            arr = (arr.astype(np.int64) >> 8) if int(arr.max(initial=0)) > 255 else arr
            arr = arr.clip(0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L")
    has_alpha = mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        flat = Image.alpha_composite(white, rgba).convert("RGB")
        return flat.convert("L") if gray else flat
    if mode in ("L", "RGB"):
        return img
    return img.convert("L" if gray else "RGB")


def open_image(source: str | Path | bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode one untrusted picture fully into a mode "L" or "RGB" image (first frame only).

    Raises DataError with a one-line reason naming the file for anything unusable: unreadable,
    not an allowed format, too many pixels, truncated or corrupt.
    """
    where = _describe(source)
    try:
        if isinstance(source, bytes | bytearray):
            data = bytes(source)
        else:
            with open(source, "rb") as handle:
                if os.fstat(handle.fileno()).st_size > MAX_FILE_BYTES:
                    raise ImageError(f"{where}: file is over {MAX_FILE_BYTES >> 20} MB, refused", "too_large")
                data = handle.read()
    except OSError as exc:
        raise ImageError(f"{where}: cannot read file ({exc.strerror or _one_line(exc)})", "unreadable") from None
    if not data:
        raise ImageError(f"{where}: empty file", "corrupt")
    refused = _refused_kind(data[:1024])
    if refused:
        raise ImageError(f"{where}: {refused} files are not accepted; use PNG, JPEG, BMP, GIF, TIFF or WEBP",
                         "unsupported")
    try:
        img = Image.open(io.BytesIO(data), formats=_allowed_formats())
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{where}: image too large, refused as a possible decompression bomb "
                         f"({_one_line(exc)})", "bomb") from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"{where}: not a supported image (allowed: {', '.join(ALLOWED_FORMATS)})",
                         "unsupported") from None
    except Exception as exc:  # Pillow raises many types for malformed headers
        raise ImageError(f"{where}: corrupt image header ({_one_line(exc)})", "corrupt") from None
    with img:
        width, height = img.size
        if width * height > max_pixels:
            raise ImageError(f"{where}: image is {width}x{height} = {width * height:,} pixels, over the "
                             f"{max_pixels:,} limit (possible decompression bomb)", "bomb")
        if width == 0 or height == 0:
            raise ImageError(f"{where}: image has zero size", "corrupt")
        try:
            img.load()
            upright = ImageOps.exif_transpose(img)
            result = to_l_or_rgb(upright)
        except Exception as exc:  # truncated data, bad Huffman tables, broken EXIF, ...
            raise ImageError(f"{where}: corrupt or truncated image ({_one_line(exc)})", "corrupt") from None
    result.load()
    return result


def is_grayscale(img: Image.Image | np.ndarray) -> bool:
    """True for a single-channel image or an RGB one whose three channels are identical.

    Folder datasets use this to store grey pictures saved as RGB (common for scans and exports)
    as one channel, which makes the model three times cheaper at the input layer. Also takes the
    H x W (x 3) array of an image, to avoid converting twice.
    """
    if isinstance(img, Image.Image):
        if img.mode in _GRAY_MODES:
            return True
        img = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
    if img.ndim == 2 or img.shape[-1] == 1:
        return True
    return bool((img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all())
