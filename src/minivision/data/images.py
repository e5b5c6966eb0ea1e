"""Open one picture safely: the single entry point for image files, folder datasets, predict and serve.

Pictures come from users (a folder they point at, an upload to the HTTP service), so this module
treats every file as untrusted: only a short allowlist of raster formats is even parsed (no
EPS/PostScript, which Pillow hands to Ghostscript, no SVG, no PDF), the cost of decoding is checked
from the header *before* decoding (decompression bombs, below), the whole file is decoded so a
truncated file fails here instead of becoming a half-grey training image, EXIF orientation is
applied, and the result is always mode "L" or "RGB" with transparency flattened on white.

Reduced-size decoding. Every reader of a picture here makes a small model input (28 to a few
hundred pixels), so a JPEG is decoded at the largest reduction its decoder offers (1/2, 1/4 or 1/8,
Pillow's ``Image.draft``, done inside libjpeg's inverse DCT) that keeps both sides at least
``min_side``: a 12-megapixel phone photo asked for 64 pixels is decoded at 500 x 375 (0.19 MP), in
a fraction of the time and memory of the full picture. ``open_image``'s default ``min_side``
(``DECODE_SIDE``, 1024) leaves enough for any conversion in ``photo.py``; the folder reader asks
for its working size.

The one limit (decompression bombs). A picture is refused when what it would cost to decode is too
much, measured on the pixels actually decoded (after the reduction above), not on the header's size:

- more than ``MAX_PIXELS`` (89,478,485, Pillow's own default, about 89 megapixels: 268 MB as RGB)
  decoded pixels; or
- more than ``EXPANSION_FLOOR`` (16,777,216, 4096 x 4096) decoded pixels that are over
  ``MAX_EXPANSION`` (200) times the file's size in bytes (a 9000 x 9000 PNG of one colour is 258 kB
  and would decode to 243 MB, 941 times its size; photos decode to 5-30 times theirs).

A progressive JPEG counts at its full size: libjpeg keeps all of its DCT coefficients (about 2 bytes
x full pixels x components) however much draft mode reduces the output, so a 28000 x 28000
progressive JPEG of 4 MB would take ~1.8 GB to decode at any reduction; it is refused.

So a 108-megapixel, 3 MB (baseline) JPEG from a phone is decoded at 1/8 scale (1.7 MP) and let through; a
20000 x 20000 PNG is refused whatever its file size; a 108-megapixel PNG too. The same rule and the
same words (``bomb_message``) serve predict, the HTTP service, folder datasets and the jobs
uploads. Pillow's own check (at twice its limit, on the header size) is raised for the moment of
opening only, so a large JPEG reaches our rule, and its DecompressionBombWarning is silenced: our
rule, stricter where it matters, decides.
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

from minivision.errors import DataError

# Raster formats we accept: Pillow's format id -> (file name extensions, MIME types), the first of
# each the usual one. "PPM" covers PBM/PGM/PPM; "MPO" is how Pillow labels multi-picture JPEGs from
# phones (sent as image/jpeg). AVIF only where the installed Pillow decodes it (``features.check``).
# This table is the one list: folder scans, predict, the service's Content-Types, /models and the
# web page's file picker all read it through ``ACCEPTED``.
FORMATS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "PNG": ((".png",), ("image/png",)),
    "JPEG": ((".jpg", ".jpeg", ".jpe", ".jfif"), ("image/jpeg", "image/pjpeg")),
    "MPO": ((".mpo",), ()),
    "GIF": ((".gif",), ("image/gif",)),
    "BMP": ((".bmp", ".dib"), ("image/bmp", "image/x-ms-bmp")),
    "TIFF": ((".tif", ".tiff"), ("image/tiff",)),
    "WEBP": ((".webp",), ("image/webp",)),
    "PPM": ((".ppm", ".pgm", ".pbm", ".pnm"), ("image/x-portable-anymap", "image/x-portable-pixmap",
                                              "image/x-portable-graymap", "image/x-portable-bitmap")),
    "ICO": ((".ico",), ("image/x-icon", "image/vnd.microsoft.icon")),
    "AVIF": ((".avif",), ("image/avif",)),
}


def _readable(fmt: str) -> bool:
    if fmt == "AVIF":
        from PIL import features

        return bool(features.check("avif"))
    Image.init()
    return fmt in Image.OPEN


# The formats this installation reads, in the table's order (Pillow ids).
ALLOWED_FORMATS: tuple[str, ...] = tuple(f for f in FORMATS if _readable(f))


@dataclass(frozen=True)
class Accepted:
    """What this installation accepts, for anyone who must say it: ``formats`` (Pillow ids, e.g.
    ``"PNG"``), ``extensions`` (lower case with the dot, e.g. ``".png"``), ``content_types`` (MIME
    types, e.g. ``"image/png"``) and ``names`` (the short list for messages: "PNG, JPEG, ...")."""

    formats: tuple[str, ...]
    extensions: tuple[str, ...]
    content_types: tuple[str, ...]

    @property
    def names(self) -> str:
        return ", ".join(f for f in self.formats if f != "MPO")


ACCEPTED = Accepted(ALLOWED_FORMATS, tuple(e for f in ALLOWED_FORMATS for e in FORMATS[f][0]),
                    tuple(t for f in ALLOWED_FORMATS for t in FORMATS[f][1]))

# File name extensions of those formats, for folder scans (the content decides, not the name).
IMAGE_EXTENSIONS: frozenset[str] = frozenset(ACCEPTED.extensions)

# The one decompression-bomb limit (module docstring): decoded pixels per picture, after reduced-size
# decoding. Pillow's own default figure (~89.5 MP, 268 MB as RGB).
MAX_PIXELS: int = 89_478_485
DEFAULT_MAX_PIXELS: int = MAX_PIXELS  # the older name, kept for callers
# Decoded bytes per byte of file above which a large picture (over EXPANSION_FLOOR pixels) is refused.
MAX_EXPANSION: int = 200
EXPANSION_FLOOR: int = 4096 * 4096
# JPEG decoding is reduced (1/2, 1/4, 1/8) as long as both sides stay at least this many pixels.
DECODE_SIDE: int = 1024
_MAX_REDUCTION = 8  # libjpeg's largest DCT scaling, Pillow's draft()
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

# Our limit decides (module docstring); Pillow's warning about a header over its own figure would only
# repeat it in a library's words, so it is silenced here. Pillow's error stays on as a backstop.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
_OPEN_LOCK = threading.Lock()  # Pillow's limit is a module global: raised only while we open a header


class ImageError(DataError):
    """A picture that cannot be used, with ``kind`` saying why, for callers that answer differently
    (the HTTP service: 415 for ``unsupported``, 400 for ``corrupt``/``bomb``, 413 for ``too_large``):
    ``unsupported`` (not an allowed raster format: EPS, SVG, PDF, text, ...), ``corrupt`` (truncated,
    broken or empty), ``bomb`` (too many pixels), ``too_large`` (too many bytes), ``unreadable`` (I/O)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def _allowed_formats() -> list[str]:
    return list(ALLOWED_FORMATS)


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


def bomb_message(where: str, width: int, height: int, *, file_bytes: int | None = None,
                 max_pixels: int = MAX_PIXELS) -> str | None:
    """Why a picture decoding to ``width`` x ``height`` pixels (after any reduced-size decoding) from a
    file of ``file_bytes`` bytes is refused as a possible decompression bomb, or None when it is not:
    the one rule and its wording for every path (module docstring; limits MAX_PIXELS, MAX_EXPANSION
    above EXPANSION_FLOOR pixels). ``max_pixels`` defaults to MAX_PIXELS."""
    pixels = width * height
    if pixels > max_pixels:
        return (f"{where}: refused as a possible decompression bomb: it decodes to {width}x{height} = "
                f"{pixels:,} pixels, over the limit of {max_pixels:,} pixels a picture "
                f"(large baseline JPEGs count at the reduced size they are decoded at, progressive ones at "
                f"full size)")
    if file_bytes and pixels > EXPANSION_FLOOR and pixels * 3 > MAX_EXPANSION * file_bytes:
        return (f"{where}: refused as a possible decompression bomb: {width}x{height} = {pixels:,} pixels "
                f"from a file of {file_bytes:,} bytes, over {MAX_EXPANSION} times its size "
                f"(the limit for pictures over {EXPANSION_FLOOR:,} pixels)")
    return None


def reduction(width: int, height: int, min_side: int | None) -> int:
    """The JPEG reduction (1, 2, 4 or 8) that keeps both sides of a ``width`` x ``height`` picture at
    least ``min_side`` pixels (Pillow's ``Image.draft`` rule); 1 when ``min_side`` is None."""
    if not min_side:
        return 1
    scale = min(width // min_side, height // min_side)
    return next((s for s in (8, 4, 2) if scale >= s), 1)


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


def _read(source: str | Path | bytes, where: str) -> bytes:
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
        raise ImageError(f"{where}: {refused} files are not accepted; use {ACCEPTED.names}",
                         "unsupported")
    return data


def _open_header(data: bytes | io.BufferedReader, where: str) -> Image.Image:
    """Pillow's lazy open (the header only) of an allowed format, its errors in our words. Pillow's
    own bomb check is raised for this moment to what reduced-size decoding can bring under our limit
    (``_MAX_REDUCTION`` squared times ``MAX_PIXELS``); our rule follows once the decoded size is known."""
    fp = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        with _OPEN_LOCK:
            saved = Image.MAX_IMAGE_PIXELS
            if saved is not None:
                Image.MAX_IMAGE_PIXELS = max(saved, MAX_PIXELS * _MAX_REDUCTION ** 2 // 2)
            try:
                return Image.open(fp, formats=_allowed_formats())
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except Image.DecompressionBombError:
        raise ImageError(f"{where}: refused as a possible decompression bomb: its header declares over "
                         f"{MAX_PIXELS * _MAX_REDUCTION ** 2:,} pixels, more than can be decoded within the limit "
                         f"of {MAX_PIXELS:,} pixels a picture", "bomb") from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"{where}: not a supported image (accepted: {ACCEPTED.names})",
                         "unsupported") from None
    except Exception as exc:  # Pillow raises many types for malformed headers
        raise ImageError(f"{where}: corrupt image header ({_one_line(exc)})", "corrupt") from None


def _draft(img: Image.Image, min_side: int | None) -> None:
    """Ask a JPEG's decoder for the reduced size (``reduction``); other formats decode at full size."""
    if min_side and img.format in ("JPEG", "MPO") and reduction(*img.size, min_side) > 1:
        img.draft(None, (min_side, min_side))


def is_progressive_jpeg(img: Image.Image) -> bool:
    """True for a progressive (or multi-scan) JPEG, from the header Pillow has read (``info``)."""
    return img.format in ("JPEG", "MPO") and bool(img.info.get("progressive") or img.info.get("progression"))


def decode_cost_size(img: Image.Image, header_size: tuple[int, int]) -> tuple[int, int]:
    """(width, height) that decoding ``img`` costs, for the bomb rule: its size after ``_draft`` for a
    baseline JPEG and other formats; ``header_size`` (the size before ``_draft``) for a progressive
    JPEG, whose decoder (libjpeg) holds every DCT coefficient of the whole picture, about 2 bytes x
    full pixels x components, whatever the draft reduction."""
    return header_size if is_progressive_jpeg(img) else img.size


def picture_size(path: str | Path) -> tuple[int, int] | None:
    """(width, height) of a picture file as ``open_image`` will return it before ``min_side`` reduction:
    the header's size, sides swapped when its EXIF orientation turns it by 90 degrees; None when the
    header cannot be read (``open_image`` then says why). Reads the header only (~0.1 ms a JPEG)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(1024)
            if not head or _refused_kind(head):
                return None
            handle.seek(0)
            with _open_header(handle, str(path)) as img:  # type: ignore[arg-type]
                width, height = img.size
                try:
                    turned = img.getexif().get(0x0112) in (5, 6, 7, 8)  # EXIF Orientation: transposed or 90/270
                except Exception:
                    turned = False
    except (OSError, ImageError):
        return None
    return (height, width) if turned else (width, height)


def open_image(source: str | Path | bytes, *, max_pixels: int = MAX_PIXELS,
               min_side: int | None = DECODE_SIDE) -> Image.Image:
    """Decode one untrusted picture fully into a mode "L" or "RGB" image (first frame only), upright.

    ``min_side``: a JPEG is decoded at the largest reduction (1/2, 1/4, 1/8) that keeps both sides at
    least this many pixels (None: full size); other formats decode at full size. The decoded size is
    checked against the one bomb limit (``bomb_message``: ``max_pixels``, default MAX_PIXELS, and
    MAX_EXPANSION) before any pixel is decoded.

    Raises ImageError (a DataError) with a one-line reason naming the file for anything unusable:
    unreadable, not an allowed format, a possible decompression bomb, truncated or corrupt.
    """
    where = _describe(source)
    data = _read(source, where)
    img = _open_header(data, where)
    with img:
        if img.width == 0 or img.height == 0:
            raise ImageError(f"{where}: image has zero size", "corrupt")
        header_size = img.size
        try:
            _draft(img, min_side)
        except Exception as exc:
            raise ImageError(f"{where}: corrupt image header ({_one_line(exc)})", "corrupt") from None
        width, height = decode_cost_size(img, header_size)
        refused = bomb_message(where, width, height, file_bytes=len(data), max_pixels=max_pixels)
        if refused:
            raise ImageError(refused, "bomb")
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
