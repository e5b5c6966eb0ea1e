"""Issue 5: a user's photo goes through the same conversion the training images went through.

Synthetic pictures made here (known canvases, EXIF-rotated JPEGs, transparent PNGs), a few real
Fashion-MNIST test images when the dataset is installed, and the predict CLI on a model trained
for a second on synthetic data.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from minivision import photo
from minivision.cli import main
from minivision.config import TrainConfig
from minivision.data.images import open_image
from minivision.errors import MinivisionError
from minivision.fileio import read_json, write_json
from minivision.predict import predict_images
from minivision.preprocess import Preprocess
from minivision.runfiles import load_model
from minivision.train import fit

from .conftest import require_fashion_mnist, synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]
ZALANDO = photo.PictureConversion((28, 28), 1, "zalando", "auto", 28)
ZALANDO_JSON = {"method": "zalando", "background": "auto", "box": 28}  # its model.json entry


def _canvas(w: int, h: int, bg: int = 255, box: tuple[int, int, int, int] | None = None, value: int = 30,
            mode: str = "L") -> Image.Image:
    """A ``bg`` canvas with a ``value`` rectangle at ``box`` = (left, top, right, bottom)."""
    a = np.full((h, w), bg, np.uint8)
    if box:
        a[box[1]:box[3], box[0]:box[2]] = value
    img = Image.fromarray(a, "L")
    return img.convert(mode) if mode != "L" else img


def _bounds(a: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero((a > 0).any(1)), np.flatnonzero((a > 0).any(0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92, **kw)
    return buf.getvalue()


def _bench_photos():
    spec = importlib.util.spec_from_file_location("bench_photos", ROOT / "bench" / "photos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fashion_test(n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    from minivision.data import load_dataset

    require_fashion_mnist()
    ds = load_dataset("fashion-mnist", test_only=True)
    idx = torch.linspace(0, len(ds.test) - 1, n).long()
    return ds.test.x[idx, 0].numpy(), ds.test.y[idx].numpy()


# ------------------------------------------------------------------------------------- the steps

def test_trim_finds_the_item_on_a_known_canvas_and_ignores_noise():
    img = _canvas(200, 150, box=(40, 30, 90, 130))
    g = np.asarray(img)
    assert photo.corner_background(g) == 255
    assert photo.trim_box(g, 255) == (40, 30, 90, 130)
    noisy = g.astype(np.int16) + np.random.default_rng(0).normal(0, 6, g.shape).round().astype(np.int16)
    noisy = noisy.clip(0, 255).astype(np.uint8)
    noisy[5, 190] = 0  # one dead pixel far from the item: not part of it
    assert photo.trim_box(noisy, photo.corner_background(noisy)) == (40, 30, 90, 130)
    jpeg = np.asarray(open_image(_jpeg(img)))  # JPEG ringing around the edges stays within a pixel
    assert all(abs(a - b) <= 1 for a, b in zip(photo.trim_box(jpeg, photo.corner_background(jpeg)),
                                               (40, 30, 90, 130), strict=True))


def test_a_blank_picture_stays_whole():
    g = np.full((60, 80), 240, np.uint8)
    assert photo.trim_box(g, 240) == (0, 0, 80, 60)
    out = photo.zalando(Image.fromarray(g), (28, 28))
    assert out.shape == (28, 28) and out.max() == 0


def test_longest_edge_becomes_28_and_the_item_is_centred():
    out = photo.zalando(_canvas(300, 200, box=(170, 20, 220, 120)), (28, 28))  # a 50 x 100 item, off-centre
    assert out.dtype == np.uint8 and out.shape == (28, 28)
    assert _bounds(out) == (7, 0, 21, 28)  # 14 x 28, centred
    assert out[0, 7:21].min() == 255 and out[:, :7].max() == 0 and out[:, 21:].max() == 0
    wide = photo.zalando(_canvas(300, 200, box=(10, 50, 110, 75)), (28, 28))  # 100 x 25 -> 28 x 7
    assert _bounds(wide) == (0, 11, 28, 18)  # an odd margin: the extra pixel on top, as Zalando's images
    small = photo.zalando(_canvas(300, 200, box=(100, 50, 200, 150)), (28, 28), box=20)  # MNIST's 20-pixel box
    assert _bounds(small) == (4, 4, 24, 24)


def test_light_background_is_negated_dark_is_not_and_the_override_wins():
    dark_on_light = _canvas(120, 90, bg=250, box=(30, 20, 60, 70), value=20)
    light_on_dark = _canvas(120, 90, bg=5, box=(30, 20, 60, 70), value=235)
    a, b = photo.zalando(dark_on_light, (28, 28)), photo.zalando(light_on_dark, (28, 28))
    assert a[14, 14] == 255 and a[0, 0] == 0  # negated: a light item on black
    assert np.array_equal(a, b)  # the same item either way
    assert np.array_equal(photo.zalando(dark_on_light, (28, 28), background="light"), a)
    assert not np.array_equal(photo.zalando(dark_on_light, (28, 28), background="dark"), a)
    # dark corners (a vignette) fool the detection; --background light puts it right
    vignette = np.asarray(dark_on_light).copy()
    for sl in ((slice(0, 12), slice(0, 12)), (slice(0, 12), slice(-12, None)), (slice(-12, None), slice(0, 12)),
               (slice(-12, None), slice(-12, None))):
        vignette[sl] = 10
    fooled = photo.zalando(Image.fromarray(vignette), (28, 28))
    fixed = photo.zalando(Image.fromarray(vignette), (28, 28), background="light")
    assert fooled[14, 10] < 20 and fooled[14, 22] > 200  # the item dark, the background light: wrong way round
    assert fixed[14, 10] > 200 and fixed[14, 22] == 0  # (the corners are kept: they are not the background)
    with pytest.raises(MinivisionError, match="background"):
        photo.zalando(dark_on_light, (28, 28), background="grey")


def test_transparent_png_is_composited_on_white_then_negated(tmp_path):
    rgba = np.zeros((100, 80, 4), np.uint8)  # background: black pixels, fully transparent
    rgba[20:80, 30:50] = (20, 40, 90, 255)  # an opaque dark-blue item
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")
    flat = np.full((100, 80, 3), 255, np.uint8)
    flat[20:80, 30:50] = (20, 40, 90)
    Image.fromarray(flat, "RGB").save(tmp_path / "white.png")
    pre = Preprocess(1, (28, 28), photo=ZALANDO)
    cut = pre.image_to_uint8(open_image(tmp_path / "cutout.png"))[0].numpy()
    assert np.array_equal(cut, pre.image_to_uint8(open_image(tmp_path / "white.png"))[0].numpy())
    assert cut[0, 0] == 0 and cut.max() == 255 and _bounds(cut) == (10, 0, 19, 28)  # 20 x 60 -> 9 x 28


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_exif_rotated_jpeg_comes_out_upright(orientation):
    a = np.full((160, 120), 250, np.uint8)
    a[20:140, 30:50] = 10   # an L: a tall bar ...
    a[120:140, 30:100] = 10  # ... with a foot to the right
    upright = Image.fromarray(a, "L").convert("RGB")
    stored = upright.transpose({6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270,
                                3: Image.Transpose.ROTATE_180}[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    pre = Preprocess(1, (28, 28), photo=ZALANDO)
    want = pre.image_to_uint8(open_image(_jpeg(upright)))[0].numpy().astype(int)
    got = pre.image_to_uint8(open_image(_jpeg(stored, exif=exif)))[0].numpy().astype(int)
    assert np.abs(got - want).mean() < 3
    assert got[26, 20] > 200 and got[2, 20] < 30  # the foot is at the bottom right


def test_resize_method_is_what_folder_datasets_do(tmp_path):
    from minivision.data.folder import read_image_folder

    rgb = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    assert Preprocess(3, (32, 32)).photo == photo.PictureConversion((32, 32), 3, "resize")
    (tmp_path / "c").mkdir()
    for i, picture in enumerate([rgb[:32, :32], rgb[10:42, 5:37], rgb]):  # 32 x 32 is the common shape
        Image.fromarray(picture).save(tmp_path / "c" / f"{i}.png")
    ds = read_image_folder(tmp_path, cache=False)
    assert ds.conversion.size == (32, 32) and ds.conversion.fit == "letterbox"
    got = Preprocess(3, (32, 32), photo=ds.conversion).image_to_uint8(Image.fromarray(rgb)).numpy()
    assert np.array_equal(got, ds.train.x[2].numpy())  # the 70 x 50 picture: letterboxed, not squashed
    assert not np.array_equal(got, Preprocess(3, (32, 32)).image_to_uint8(Image.fromarray(rgb)).numpy())
    light = _canvas(120, 90, bg=250, box=(30, 20, 60, 70), value=20)
    plain = Preprocess(1, (28, 28)).image_to_uint8(light)[0].numpy()
    assert plain[0, 0] > 200  # resize only: no trim, no negation


# ------------------------------------------------------------------------------------- the setting

def test_fit_chooses_zalando_for_dark_bordered_gray_and_resize_otherwise():
    x = torch.zeros(50, 1, 28, 28, dtype=torch.uint8)
    x[:, :, 4:24, 9:19] = 200  # a 10 x 20 item on black
    assert Preprocess.fit(x, "unit").photo == photo.PictureConversion((28, 28), 1, "zalando", "auto", 20)
    assert Preprocess.fit(255 - x, "standard").photo == photo.PictureConversion((28, 28), 1)  # light borders
    assert Preprocess.fit(x.repeat(1, 3, 1, 1), "unit").photo == photo.PictureConversion((28, 28), 3)  # colour
    synthetic = synthetic_dataset(40, 8).train.x  # noise 0-60 around bright squares: still dark
    assert Preprocess.fit(synthetic, "unit").photo.method == "zalando"


def test_photo_setting_round_trips_and_is_checked():
    pre = Preprocess(1, (28, 28), [0.3], [0.35], ZALANDO)
    d = json.loads(json.dumps(pre.to_dict()))
    assert d["photo"] == ZALANDO_JSON and Preprocess.from_dict(d) == pre
    for bad in ({"method": "magic"}, {"method": "zalando", "background": "grey"},
                {"method": "zalando", "box": 99}, "zalando"):
        with pytest.raises(MinivisionError, match="photo"):
            Preprocess.from_dict({**d, "photo": bad})
    old = {k: v for k, v in d.items() if k != "photo"}
    assert Preprocess.from_dict(old, dataset_name="fashion-mnist").photo == ZALANDO
    assert Preprocess.from_dict(old, dataset_name="mnist").photo.box == 20
    assert Preprocess.from_dict(old, dataset_name="my-folder").photo.to_dict() == {"method": "resize"}
    assert Preprocess.from_dict(old).photo.to_dict() == {"method": "resize"}


# ------------------------------------------------------------------------------------- real images

def test_fashion_mnist_test_images_come_through_unchanged(tmp_path):
    x, _ = _fashion_test(30)
    pre = Preprocess(1, (28, 28), photo=ZALANDO)
    for i, a in enumerate(x):
        Image.fromarray(a).save(tmp_path / f"{i}.png")
        Image.fromarray(255 - a).save(tmp_path / f"{i}-light.png")
        assert np.array_equal(pre.image_to_uint8(open_image(tmp_path / f"{i}.png"))[0].numpy(), a)
        assert np.array_equal(pre.image_to_uint8(open_image(tmp_path / f"{i}-light.png"))[0].numpy(), a)


def test_photo_renditions_of_fashion_mnist_convert_back_close():
    x, _ = _fashion_test(12)
    bench = _bench_photos()
    rng = np.random.default_rng(0)
    pre = Preprocess(1, (28, 28), photo=ZALANDO)
    for fmt in bench.FORMATS:
        diffs = []
        for a in x:
            img = open_image(bench.render(a, fmt, rng))
            got = pre.image_to_uint8(img)[0].numpy().astype(int)
            diffs.append(np.abs(got - a.astype(int)).mean())
            raw = np.asarray(photo.resize_like_folder(img, (28, 28), 1), dtype=int)
            diffs_raw = np.abs(raw - a.astype(int)).mean()
            assert diffs_raw > 40  # without the conversion the model would see something else entirely
        assert np.mean(diffs) < 16, (fmt, diffs)  # ~10 measured: JPEG, tint and resampling, not framing


# ------------------------------------------------------------------------------------- predict CLI

@pytest.fixture(scope="module")
def photo_run(tmp_path_factory) -> Path:
    """A model trained for a second on synthetic light-on-dark squares (so it uses zalando)."""
    out = tmp_path_factory.mktemp("runs")
    r = fit(TrainConfig(model="mlp", epochs=1, val_split=0.25, out=str(out)), dataset=synthetic_dataset(120, 40),
            progress=False, log=lambda m: None)
    return r.run_dir


def _photos(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "shirt.jpg", folder / "boot.png", folder / "sub" / "shirt.png"]
    paths[2].parent.mkdir(exist_ok=True)
    _canvas(400, 300, box=(50, 40, 150, 250), value=40, mode="RGB").save(paths[0], quality=90)
    _canvas(300, 300, bg=230, box=(150, 150, 260, 280), value=10).save(paths[1])
    _canvas(64, 48, box=(10, 10, 30, 40)).save(paths[2])
    return paths


def test_predict_cli_csv_show_errors_and_exit_codes(photo_run, tmp_path, capsys):
    assert load_model(photo_run).preprocess.photo.method == "zalando"
    paths = _photos(tmp_path / "in")
    (tmp_path / "corrupt.jpg").write_bytes(_jpeg(_canvas(50, 50))[:200])
    (tmp_path / "notes.txt").write_text("not a picture\n")
    bad = [str(tmp_path / "corrupt.jpg"), str(tmp_path / "notes.txt")]
    show = tmp_path / "show"
    show.mkdir()
    (show / "shirt.png").write_bytes(b"an older file")
    args = ["predict", str(photo_run), str(tmp_path / "in"), *bad, "--top-k", "2"]
    assert main([*args, "--csv", str(tmp_path / "out.csv"), "--show", str(show)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 5 and sum(": error: " in line for line in out) == 2
    rows = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert [r["path"] for r in rows] == [str(p) for p in sorted(paths)] + bad
    assert rows[0].keys() >= {"path", "label", "score", "label_1", "score_1", "label_2", "score_2", "error"}
    assert all(r["label"] and not r["error"] for r in rows[:3]) and all(r["error"] and not r["label"] for r in rows[3:])
    assert (show / "shirt.png").read_bytes() == b"an older file"  # never overwritten
    made = sorted(p.name for p in show.iterdir())
    assert made == ["boot.png", "shirt-2.png", "shirt-3.png", "shirt.png"]
    for name in made[:3]:
        with Image.open(show / name) as im:
            assert im.format == "PNG" and im.size[0] > 600

    assert main([*args, "--json", "--background", "light"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 5 and "error" in results[3] and "error" in results[4]
    assert all("input" not in r for r in results)
    assert main(["predict", str(photo_run), *bad]) == 1  # nothing predicted
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
    assert main(["predict", str(photo_run), *bad, "--json"]) == 1


def test_predict_images_returns_what_the_model_saw(photo_run):
    lm = load_model(photo_run)
    img = _canvas(300, 200, box=(170, 20, 220, 120))
    r = predict_images(lm, [img], inputs=True)[0]
    assert r["input"].dtype == torch.uint8 and r["input"].shape == (1, 28, 28)
    assert _bounds(r["input"][0].numpy()) == (7, 0, 21, 28)
    dark = predict_images(lm, [img], inputs=True, background="dark")[0]["input"]
    assert not torch.equal(dark, r["input"])
    with pytest.raises(MinivisionError, match="background"):
        predict_images(lm, [img], background="grey")


def test_old_model_json_without_photo_gets_the_default_of_its_dataset(photo_run, tmp_path):
    import shutil

    run = tmp_path / "old"
    shutil.copytree(photo_run, run)
    meta = read_json(run / "model.json")
    del meta["preprocess"]["photo"]
    meta["dataset"]["name"] = "fashion-mnist"
    write_json(run / "model.json", meta)
    assert load_model(run).preprocess.photo == ZALANDO
    meta["dataset"]["name"] = "some-folder"
    write_json(run / "model.json", meta)
    assert load_model(run).preprocess.photo.to_dict() == {"method": "resize"}


def test_a_run_with_a_malformed_photo_entry_is_a_one_line_error(photo_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "bad"
    shutil.copytree(photo_run, run)
    meta = read_json(run / "model.json")
    meta["preprocess"]["photo"] = {"method": "zalando", "background": "auto", "box": "large"}
    write_json(run / "model.json", meta)
    _canvas(64, 48, box=(10, 10, 30, 40)).save(tmp_path / "p.png")
    assert main(["predict", str(run), str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: model.json: photo box must be an integer"), err
