#!/usr/bin/env python3
"""The photo benchmark: does a photo of a garment get the label its Fashion-MNIST image gets?

    python3 bench/photos.py --run runs/train            # a trained Fashion-MNIST run; print only
    python3 bench/photos.py --write                      # trains the default model first (~30 s)
    python3 bench/photos.py --run runs/train --ablations # also each choice of photo.py switched

Each of ``--n`` Fashion-MNIST test images (a fixed, seeded subset) is rendered as a photo in one of
four formats, round-robin (``--all-formats``: in all four, 4x the time): the image inverted so the garment
is dark, tinted a random dark colour, scaled up 5-12x with antialiasing, placed off-centre on a
4:3, 3:4, 16:9 or 1:1 canvas with a white or light-grey, slightly noisy background, and saved as
``jpeg`` (quality 85-90), ``png``, ``png-alpha`` (a cut-out: background alpha 0 over black RGB, so
a reader that drops alpha sees black) and ``jpeg-exif`` (pixels stored rotated a quarter turn with
the EXIF Orientation tag, 6 or 8, that makes them upright). Every file is read back through
``open_image`` and the model's saved conversion (``Preprocess.image_to_uint8``, what ``minivision
predict`` and the HTTP service call), and its accuracy is reported beside the accuracy of the
plain 28 x 28 test images, and beside the same renditions with no conversion (a plain resize to
28 x 28 grayscale). ``--write`` stores the figures in bench/results/photos.json and the table
between the photos markers in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "bench")]

import devpaths  # noqa: E402
from minivision import photo  # noqa: E402
from minivision.data.images import open_image  # noqa: E402

DOC = ROOT / "docs" / "BENCHMARKS.md"
RESULTS = ROOT / "bench" / "results" / "photos.json"
BEGIN, END = "<!-- photos:begin -->", "<!-- photos:end -->"
HEADING = "## Photos"
FORMATS = ("jpeg", "png", "png-alpha", "jpeg-exif")
EXTENSIONS = {"jpeg": ".jpg", "png": ".png", "png-alpha": ".png", "jpeg-exif": ".jpg"}
ASPECTS = ((4, 3), (3, 4), (16, 9), (1, 1))


# ------------------------------------------------------------------------------------- renditions

def render(x28: np.ndarray, fmt: str, rng: np.random.Generator) -> bytes:
    """One 28 x 28 Fashion-MNIST image (light garment on black) -> the bytes of a photo-like file."""
    scale = rng.uniform(5, 12)
    side = int(round(28 * scale))
    garment = Image.fromarray(x28.astype(np.float32) / 255, "F")  # 1 where the garment is, 0 off it
    alpha = np.clip(np.asarray(garment.resize((side, side), Image.Resampling.LANCZOS)), 0, 1)
    aw, ah = ASPECTS[int(rng.integers(len(ASPECTS)))]
    k = side * rng.uniform(1.2, 1.8) / min(aw, ah)
    w, h = max(side + 2, int(round(k * aw))), max(side + 2, int(round(k * ah)))
    x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    a = np.zeros((h, w), np.float32)
    a[y0:y0 + side, x0:x0 + side] = alpha
    background = 255.0 if rng.random() < 0.5 else rng.uniform(205, 240)  # white or light grey
    color = rng.uniform(0, 110, size=3)  # a dark garment colour
    base = background + 3 * rng.standard_normal((h, w, 1), dtype=np.float32)  # a slightly noisy background
    rgb = base * (1 - a[..., None]) + color.astype(np.float32) * a[..., None]
    img = Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), "RGB")
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.save(buf, "JPEG", quality=int(rng.integers(85, 91)))
    elif fmt == "png":
        img.save(buf, "PNG", compress_type=zlib.Z_HUFFMAN_ONLY)  # noise does not deflate: 3x faster, as small
    elif fmt == "png-alpha":
        # a cut-out: the garment opaque, the background fully transparent over black pixels
        white = np.clip(np.rint(255 * (1 - a[..., None]) + color * a[..., None]), 0, 255).astype(np.uint8)
        opaque = a > 0.02
        rgba = np.dstack([np.where(opaque[..., None], white, 0), np.where(opaque, 255, 0).astype(np.uint8)])
        Image.fromarray(rgba.astype(np.uint8), "RGBA").save(buf, "PNG", compress_level=1)
    elif fmt == "jpeg-exif":
        orientation = 6 if rng.random() < 0.5 else 8  # 6: shown turned 90 degrees clockwise; 8: anticlockwise
        stored = img.transpose(Image.Transpose.ROTATE_90 if orientation == 6 else Image.Transpose.ROTATE_270)
        exif = Image.Exif()
        exif[0x0112] = orientation
        stored.save(buf, "JPEG", quality=int(rng.integers(85, 91)), exif=exif)
    else:
        raise ValueError(f"unknown format {fmt!r}")
    return buf.getvalue()


def write_renditions(x: np.ndarray, folder: Path, seed: int, all_formats: bool = False) -> list[tuple[int, str, Path]]:
    """Image i in format i mod 4 (or, with ``all_formats``, in all four); (image index, format, path) per file."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files = []
    for i in range(len(x)):
        for fmt in FORMATS if all_formats else (FORMATS[i % len(FORMATS)],):
            path = folder / f"{i:05d}-{fmt}{EXTENSIONS[fmt]}"
            path.write_bytes(render(x[i], fmt, rng))
            files.append((i, fmt, path))
    return files


# ------------------------------------------------------------------------------------- measuring

def conversions(lm: Any, ablations: bool) -> dict[str, Callable[[Image.Image], np.ndarray]]:
    """name -> picture-to-uint8 (H, W) function: the model's own conversion, no conversion, and with
    ``ablations`` each choice of photo.py changed on its own."""
    size, box = lm.preprocess.size, lm.preprocess.photo.box or 28
    out = {"converted": lambda img: lm.preprocess.image_to_uint8(img).numpy()[0],
           "plain resize": lambda img: photo.resize_like_folder(img, size, 1)}
    if ablations:
        def variant(**kw: Any) -> Callable[[Image.Image], np.ndarray]:
            return lambda img: photo.zalando(img, size, box=box, **kw)

        out |= {"BOX (area) resampling": variant(resample=Image.Resampling.BOX),
                "BICUBIC resampling": variant(resample=Image.Resampling.BICUBIC),
                "with sharpen": variant(sharpen=True),
                "no levels (negation only)": variant(levels=False),
                "trim threshold 16": variant(threshold=16),
                "trim threshold 32": variant(threshold=32),
                "trim threshold 64": variant(threshold=64),
                "no trim (threshold 255)": variant(threshold=255)}
    return out


def measure(lm: Any, files: list[tuple[int, str, Path]], x: np.ndarray, y: np.ndarray,
            ablations: bool = False) -> dict[str, Any]:
    """Accuracy and mean absolute difference to the original image, per conversion and format."""
    import torch

    from minivision.predict import proba_for_tensor

    convs = conversions(lm, ablations)
    plain = proba_for_tensor(lm, torch.from_numpy(x[:, None])).argmax(1).numpy()
    seen = {name: np.zeros((len(files), *lm.preprocess.size), np.uint8) for name in convs}
    seconds = dict.fromkeys(convs, 0.0)
    for j, (_, _, path) in enumerate(files):
        img = open_image(path)
        for name, fn in convs.items():
            t0 = time.perf_counter()
            seen[name][j] = fn(img)
            seconds[name] += time.perf_counter() - t0
    index = np.array([i for i, _, _ in files])
    formats = np.array([f for _, f, _ in files])
    plain_right = plain[index] == y[index]
    out: dict[str, Any] = {"n_images": len(x), "n_files": len(files),
                           "plain_accuracy": round(float((plain == y).mean()), 4),
                           "formats": {f: {"files": int((formats == f).sum()),
                                           "plain_accuracy": round(float(plain_right[formats == f].mean()), 4)}
                                       for f in FORMATS},
                           "conversions": {}}
    for name, arr in seen.items():
        pred = proba_for_tensor(lm, torch.from_numpy(arr[:, None])).argmax(1).numpy()
        right = pred == y[index]
        mad = np.abs(arr.astype(np.int16) - x[index].astype(np.int16)).mean((1, 2))
        per = {f: {"accuracy": round(float(right[formats == f].mean()), 4),
                   "mean_abs_diff": round(float(mad[formats == f].mean()), 2)} for f in FORMATS}
        out["conversions"][name] = {"accuracy": round(float(right.mean()), 4),
                                    "mean_abs_diff": round(float(mad.mean()), 2),
                                    "ms_per_photo": round(1000 * seconds[name] / len(files), 2), "formats": per}
    return out


def train_default(folder: Path) -> Path:
    p = subprocess.run([sys.executable, "-m", "minivision", "train", "--out", str(folder), "--json"],
                       capture_output=True, text=True, cwd=folder)
    if p.returncode != 0:
        raise SystemExit(f"training the default model failed:\n{p.stderr[-2000:]}")
    return Path(json.loads(p.stdout.strip().splitlines()[-1])["run"])


# ------------------------------------------------------------------------------------- report

def render_table(r: dict[str, Any]) -> str:
    conv, raw = r["conversions"]["converted"], r["conversions"]["plain resize"]
    m = r["machine"]
    lines = [f"Measured {m['date'][:10]} on {m['cpu']}, {m['cpu_count']} cores, torch {m['torch']}, Python "
             f"{m['python']}. Command: `{r['command']}`. Model: `{r['model']}` ({r['trained']}). "
             "Accuracy is the share of files whose top label is the image's true class.", "",
             "| rendition | files | the same images, plain 28 x 28 | photo, converted "
             "| photo, plain resize (no conversion) | mean abs diff to the original, converted (0-255) |",
             "|---|---:|---:|---:|---:|---:|"]
    for f in FORMATS:
        fr = r["formats"][f]
        lines.append(f"| {f} | {fr['files']:,} | {fr['plain_accuracy']:.2%} | {conv['formats'][f]['accuracy']:.2%} "
                     f"| {raw['formats'][f]['accuracy']:.2%} | {conv['formats'][f]['mean_abs_diff']:.1f} |")
    lines.append(f"| **all** | {r['n_files']:,} | **{r['plain_accuracy']:.2%}** | **{conv['accuracy']:.2%}** "
                 f"| {raw['accuracy']:.2%} | {conv['mean_abs_diff']:.1f} |")
    others = {k: v for k, v in r["conversions"].items() if k not in ("converted", "plain resize")}
    if others:
        lines += ["", "Each choice of `photo.py` changed on its own (same files; `--ablations`):", "",
                  "| conversion | accuracy | mean abs diff | ms per photo |", "|---|---:|---:|---:|"]
        for name, v in {"converted (as shipped)": conv, **others}.items():
            lines.append(f"| {name} | {v['accuracy']:.2%} | {v['mean_abs_diff']:.1f} | {v['ms_per_photo']:.1f} |")
    return "\n".join(lines)


INTRO = ("A photo of a garment must get the label its Fashion-MNIST image gets. `bench/photos.py` renders "
         "Fashion-MNIST test images as photos (a dark, coloured garment scaled up 5-12x, off-centre on a white or "
         "light-grey, slightly noisy canvas of another aspect ratio), each in one of four formats, round-robin: JPEG, "
         "PNG, a transparent cut-out PNG, and a JPEG stored rotated with an EXIF Orientation tag. Every file goes "
         "through `open_image` and the model's saved conversion, as in `minivision predict`, which converts each the "
         "way Zalando made the dataset (`src/minivision/photo.py`: trim the corner colour, longest edge to 28, "
         "centre, negate, levels). Target: within 2 points of the plain test images. Raw figures: "
         "`bench/results/photos.json`.")


def rewrite_section(text: str, table: str) -> str:
    return devpaths.replace_section(text, BEGIN, END, f"{INTRO}\n\n{table}", HEADING,
                                    before=devpaths.SPEED_HEADING)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a Fashion-MNIST run folder (default: train the default model in a temp folder)")
    ap.add_argument("--n", type=int, default=2000, help="test images (default 2000), image i in format i mod 4")
    ap.add_argument("--all-formats", action="store_true", help="render every image in all four formats")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", metavar="DIR", help="write the renditions here and keep them (default: a temp folder)")
    ap.add_argument("--ablations", action="store_true", help="also measure each choice of photo.py switched")
    ap.add_argument("--write", action="store_true", help="store bench/results/photos.json and the docs table")
    a = ap.parse_args(argv)

    from minivision.benchmark import machine_info
    from minivision.data import load_dataset
    from minivision.fileio import write_json, write_text
    from minivision.runfiles import load_model

    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="minivision-photos-"))
    try:
        run = Path(a.run) if a.run else train_default(tmp)
        lm = load_model(run)
        if lm.preprocess.photo.method != "zalando":
            print(f"note: {run} does not use the zalando conversion ({lm.preprocess.photo.to_dict()})",
                  file=sys.stderr)
        ds = load_dataset("fashion-mnist", test_only=True)
        pick = np.sort(np.random.default_rng(a.seed).permutation(len(ds.test))[:a.n])
        x, y = ds.test.x[pick, 0].numpy(), ds.test.y[pick].numpy()
        folder = Path(a.keep) if a.keep else tmp / "renditions"
        t0 = time.monotonic()
        files = write_renditions(x, folder, a.seed, a.all_formats)
        render_s = time.monotonic() - t0
        result = measure(lm, files, x, y, ablations=a.ablations)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    command = "python3 bench/photos.py" + "".join(f" {s}" for s in (argv if argv is not None else sys.argv[1:]))
    trained = "the run given with --run" if a.run else "trained for this measurement by `python3 -m minivision train`"
    result = {"command": command, "machine": machine_info(), "model": lm.name, "run": str(run), "trained": trained,
              "seed": a.seed, "render_s": round(render_s, 1), "total_s": round(time.monotonic() - started, 1),
              **result}
    table = render_table(result)
    print(table)
    if a.write:
        write_json(RESULTS, {"about": "bench/photos.py results; see docs/BENCHMARKS.md", **result})
        write_text(DOC, rewrite_section(DOC.read_text(), table))
        print(f"\nwrote {RESULTS} and {DOC}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
