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
the EXIF Orientation tag, 6 or 8, that makes them upright). Each image is also rendered once more as
a JPEG in uneven light, one of five round-robin (``lit``): a brightness ramp of 30-70 grey levels
across the frame in a random direction, a soft shadow, a vignette, a paper/cloth texture, or sensor
noise. Every file is read back through ``open_image`` and the model's saved conversion
(``Preprocess.image_to_uint8``, what ``minivision predict`` and the HTTP service call), and its
accuracy is reported beside the accuracy of the plain 28 x 28 test images, beside the conversion
before the light correction (``photo.zalando(even_light=False)``: trim by the corner colour), and
beside the same renditions with no conversion (a plain resize to 28 x 28 grayscale). ``--write``
stores the figures in bench/results/photos.json and the table between the photos markers in
docs/BENCHMARKS.md.
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
LIGHTS = ("ramp", "shadow", "vignette", "texture", "noise")  # uneven light (``lit``), as JPEGs
RENDITIONS = FORMATS + LIGHTS


# ------------------------------------------------------------------------------------- renditions

def render(x28: np.ndarray, fmt: str, rng: np.random.Generator, light: str = "even") -> bytes:
    """One 28 x 28 Fashion-MNIST image (light garment on black) -> the bytes of a photo-like file,
    lit as ``light`` says (``LIGHTS``; ``lit``)."""
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
    if light != "even":
        rgb = lit(rgb, a, background, side, light, rng)
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


def lit(rgb: np.ndarray, a: np.ndarray, background: float, side: int, light: str,
        rng: np.random.Generator) -> np.ndarray:
    """A rendition (float (H, W, 3), garment coverage ``a`` (H, W) in 0..1, the garment ``side`` px)
    in uneven light (``LIGHTS``):

    - ramp: a gain falling linearly across the frame in a random direction, so the backdrop goes
      from ``background`` to 30-70 grey levels darker (light from a window on one side);
    - shadow: the garment's silhouette, shifted 3-8% of its size in a random direction and blurred
      (sd 3-6% of its size), darkens the backdrop behind it by 15-35%;
    - vignette: a radial gain, 1 at the centre, 30-70 levels darker on the backdrop in the corners;
    - texture: paper or cloth: blurred noise (sd 4-8 levels, grain 1-3 px) plus a weave (a sine grid
      of period 4-10 px, amplitude 2-5 levels) on the backdrop;
    - noise: sensor noise, sd 6-12 levels on every pixel and channel.
    Gains multiply the whole picture (light falls on the garment too); shadow and texture are on the
    backdrop, under the garment."""
    from skimage.filters import gaussian

    h, w = a.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    back = (1 - a)[..., None]
    if light == "ramp":
        theta = rng.uniform(0, 2 * np.pi)
        t = np.cos(theta) * xx + np.sin(theta) * yy
        t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))  # 0..1 across the frame
        return rgb * (1 - rng.uniform(30, 70) / background * t)[..., None]
    if light == "shadow":
        theta, shift = rng.uniform(0, 2 * np.pi), rng.uniform(0.03, 0.08) * side
        dy, dx = int(round(shift * np.sin(theta))), int(round(shift * np.cos(theta)))
        moved = np.roll(a, (dy, dx), axis=(0, 1))
        soft = gaussian(moved, sigma=rng.uniform(0.03, 0.06) * side)
        shade = 1 - rng.uniform(0.15, 0.35) * np.clip(soft, 0, 1)
        return rgb * (back * shade[..., None] + (1 - back))
    if light == "vignette":
        r2 = ((xx - (w - 1) / 2) ** 2 + (yy - (h - 1) / 2) ** 2) / (((w - 1) / 2) ** 2 + ((h - 1) / 2) ** 2)
        return rgb * (1 - rng.uniform(30, 70) / background * r2)[..., None]
    if light == "texture":
        grain = gaussian(rng.standard_normal((h, w)), sigma=rng.uniform(1, 3))
        grain *= rng.uniform(4, 8) / max(1e-6, float(grain.std()))
        period = rng.uniform(4, 10)
        weave = rng.uniform(2, 5) * np.sin(2 * np.pi * xx / period) * np.sin(2 * np.pi * yy / period)
        return rgb + (back * (grain + weave)[..., None]).astype(np.float32)
    if light == "noise":
        return rgb + rng.uniform(6, 12) * rng.standard_normal(rgb.shape, dtype=np.float32)
    raise ValueError(f"unknown light {light!r}")


def write_renditions(x: np.ndarray, folder: Path, seed: int, all_formats: bool = False,
                     uneven: bool = True) -> list[tuple[int, str, Path]]:
    """Image i in format i mod 4 (or, with ``all_formats``, in all four), evenly lit; with ``uneven``
    also image i as a JPEG in light i mod 5 (``LIGHTS``). (image index, rendition, path) per file."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files = []
    for i in range(len(x)):
        for fmt in FORMATS if all_formats else (FORMATS[i % len(FORMATS)],):
            path = folder / f"{i:05d}-{fmt}{EXTENSIONS[fmt]}"
            path.write_bytes(render(x[i], fmt, rng))
            files.append((i, fmt, path))
    if uneven:
        light_rng = np.random.default_rng([seed, 1])  # its own stream: the even files stay as they were
        for i in range(len(x)):
            light = LIGHTS[i % len(LIGHTS)]
            path = folder / f"{i:05d}-{light}.jpg"
            path.write_bytes(render(x[i], "jpeg", light_rng, light))
            files.append((i, light, path))
    return files


# ------------------------------------------------------------------------------------- measuring

def conversions(lm: Any, ablations: bool) -> dict[str, Callable[[Image.Image], np.ndarray]]:
    """name -> picture-to-uint8 (H, W) function: the model's own conversion, no conversion, and with
    ``ablations`` each choice of photo.py changed on its own."""
    size, box = lm.preprocess.size, lm.preprocess.photo.box or 28
    out = {"converted": lambda img: lm.preprocess.image_to_uint8(img).numpy()[0],
           "corner-colour trim": lambda img: photo.zalando(img, size, box=box, even_light=False),
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
    kinds = np.array([f for _, f, _ in files])
    present = [r for r in RENDITIONS if (kinds == r).any()]
    plain_right = plain[index] == y[index]
    out: dict[str, Any] = {"n_images": len(x), "n_files": len(files),
                           "plain_accuracy": round(float((plain == y).mean()), 4),
                           "renditions": {r: {"files": int((kinds == r).sum()),
                                              "plain_accuracy": round(float(plain_right[kinds == r].mean()), 4)}
                                          for r in present},
                           "conversions": {}}
    groups = {"even": np.isin(kinds, FORMATS), "uneven": np.isin(kinds, LIGHTS)}
    for g, sel in groups.items():
        if sel.any():
            out[f"plain_accuracy_{g}"] = round(float(plain_right[sel].mean()), 4)
    for name, arr in seen.items():
        pred = proba_for_tensor(lm, torch.from_numpy(arr[:, None])).argmax(1).numpy()
        right = pred == y[index]
        mad = np.abs(arr.astype(np.int16) - x[index].astype(np.int16)).mean((1, 2))
        per = {r: {"accuracy": round(float(right[kinds == r].mean()), 4),
                   "mean_abs_diff": round(float(mad[kinds == r].mean()), 2)} for r in present}
        out["conversions"][name] = {"accuracy": round(float(right.mean()), 4),
                                    "mean_abs_diff": round(float(mad.mean()), 2),
                                    "ms_per_photo": round(1000 * seconds[name] / len(files), 2), "renditions": per,
                                    **{f"accuracy_{g}": round(float(right[sel].mean()), 4)
                                       for g, sel in groups.items() if sel.any()},
                                    **{f"mean_abs_diff_{g}": round(float(mad[sel].mean()), 2)
                                       for g, sel in groups.items() if sel.any()}}
    return out


def train_default(folder: Path) -> Path:
    p = subprocess.run([sys.executable, "-m", "minivision", "train", "--out", str(folder), "--json"],
                       capture_output=True, text=True, cwd=folder)
    if p.returncode != 0:
        raise SystemExit(f"training the default model failed:\n{p.stderr[-2000:]}")
    return Path(json.loads(p.stdout.strip().splitlines()[-1])["run"])


# ------------------------------------------------------------------------------------- report

def render_table(r: dict[str, Any]) -> str:
    conv, before = r["conversions"]["converted"], r["conversions"]["corner-colour trim"]
    raw = r["conversions"]["plain resize"]
    from minivision.benchmark import describe_machine

    m = r["machine"]
    lines = [f"Measured {m['date'][:10]} on {describe_machine(m)}. Command: `{r['command']}`. "
             f"Model: `{r['model']}` ({r['trained']}). "
             "Accuracy is the share of files whose top label is the image's true class.", "",
             "| rendition | light | files | the same images, plain 28 x 28 | photo, converted "
             "| photo, corner-colour trim (before) | photo, plain resize (no conversion) "
             "| mean abs diff to the original, converted (0-255) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]

    def row(name: str, light: str, files: int, plain: float, key: str | None, group: str | None = None) -> str:
        def acc(c: dict[str, Any]) -> str:
            return f"{(c['renditions'][key]['accuracy'] if key else c[f'accuracy_{group}']):.2%}"

        mad = conv["renditions"][key]["mean_abs_diff"] if key else conv[f"mean_abs_diff_{group}"]
        bold = "**" if key is None else ""
        return (f"| {bold}{name}{bold} | {light} | {files:,} | {plain:.2%} | {bold}{acc(conv)}{bold} | {acc(before)} "
                f"| {acc(raw)} | {mad:.1f} |")

    for group, kinds, light in (("even", FORMATS, "even"), ("uneven", LIGHTS, None)):
        present = [k for k in kinds if k in r["renditions"]]
        for k in present:
            lines.append(row("jpeg" if light is None else k, light or k, r["renditions"][k]["files"],
                             r["renditions"][k]["plain_accuracy"], k))
        if present:
            files = sum(r["renditions"][k]["files"] for k in present)
            lines.append(row(f"all {group}", "even" if light else "uneven", files, r[f"plain_accuracy_{group}"],
                             None, group))
    others = {k: v for k, v in r["conversions"].items() if k not in ("converted", "plain resize", "corner-colour trim")}
    if others:
        lines += ["", "Each choice of `photo.py` changed on its own (same files; `--ablations`):", "",
                  "| conversion | accuracy, even light | accuracy, uneven light | mean abs diff | ms per photo |",
                  "|---|---:|---:|---:|---:|"]
        for name, v in {"converted (as shipped)": conv, "corner-colour trim (before)": before, **others}.items():
            lines.append(f"| {name} | {v.get('accuracy_even', float('nan')):.2%} "
                         f"| {v.get('accuracy_uneven', float('nan')):.2%} | {v['mean_abs_diff']:.1f} "
                         f"| {v['ms_per_photo']:.1f} |")
    return "\n".join(lines)


INTRO = ("A photo of a garment must get the label its Fashion-MNIST image gets. `bench/photos.py` renders "
         "Fashion-MNIST test images as photos (a dark, coloured garment scaled up 5-12x, off-centre on a white or "
         "light-grey, slightly noisy canvas of another aspect ratio), each in one of four formats, round-robin: JPEG, "
         "PNG, a transparent cut-out PNG, and a JPEG stored rotated with an EXIF Orientation tag; and each once more "
         "as a JPEG in uneven light, one of five round-robin: a brightness ramp of 30-70 grey levels across the "
         "frame in a random direction, a soft shadow (the garment's silhouette shifted, blurred, 15-35% dark), a "
         "vignette (corners 30-70 levels darker), a paper/cloth texture (grain sd 4-8 levels and a weave), or sensor "
         "noise (sd 6-12 levels). Every file goes through `open_image` and the model's saved conversion, as in "
         "`minivision predict`, which converts each the way Zalando made the dataset after evening out the light "
         "(`src/minivision/photo.py`, `photo_light.py`: fit the backdrop's light and divide it out, find the item "
         "by a threshold above the backdrop's noise and its largest connected components, longest edge to 28, "
         "centre, negate, levels). The corner-colour trim column is the conversion without the light correction "
         "(trim by the corner colour, measure against one border level). Target: within 2 points of the plain "
         "test images. Raw figures: `bench/results/photos.json`.")


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
    ap.add_argument("--trained-by", metavar="TEXT", help="how the --run model was trained, for the table")
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
    trained = (a.trained_by or "the run given with --run") if a.run else \
        "trained for this measurement by `python3 -m minivision train`"
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
