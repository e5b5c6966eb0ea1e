"""Pictures of any size: the folder working size (imgsz, letterbox/crop/squash), reduced-size JPEG
decoding, and the one decompression-bomb limit (pixels as decoded, expansion over the file's size)."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from minivision.data import images
from minivision.data.folder import IMGSZ_CAP, read_image_folder, working_size
from minivision.data.images import ImageError, bomb_message, open_image, picture_size
from minivision.errors import DataError, MinivisionError
from minivision.photo import FITS, PAD_VALUE, PictureConversion

from .conftest import needs_fashion_mnist

# ----------------------------------------------------------------------------- the working size


@pytest.mark.parametrize("sizes, imgsz, frame", [
    ([(28, 28)] * 5, None, (28, 28)),                      # Fashion-MNIST-like: never enlarged
    ([(32, 32)] * 5, None, (32, 32)),                      # CIFAR-10-like
    ([(8, 8)] * 3, None, (8, 8)),                          # tiny pictures stay tiny
    ([(1600, 1200)] * 24, None, (48, 64)),                 # phone photos, landscape: their shape, capped
    ([(1200, 1600)] * 24, None, (64, 48)),                 # portrait
    ([(4032, 3024)] * 9 + [(4000, 3000)], None, (48, 64)),  # within 2%: one shape
    ([(1600, 1200)] * 9 + [(1200, 1600)], None, (48, 64)),  # 90% share the shape: the odd one letterboxed
    ([(300, 400), (400, 300)] * 20, None, (64, 64)),       # portrait and landscape mixed: square
    ([(1600, 1200)] * 24, 96, (72, 96)),                   # --imgsz: the longer side
    ([(300, 400), (400, 300)] * 20, 32, (32, 32)),
    ([(12, 10)] * 3 + [(40, 40)], None, (12, 12)),         # median longer side; 75% is not enough
])
def test_working_size_rule(sizes, imgsz, frame):
    assert working_size(sizes, imgsz) == frame


def test_working_size_cap_and_bad_imgsz():
    assert working_size([(5000, 5000)]) == (IMGSZ_CAP, IMGSZ_CAP)
    for bad in (0, -3, 2.5, True, "64"):
        with pytest.raises(DataError, match="imgsz must be a positive integer"):
            working_size([(10, 10)], bad)


def test_the_settings_choices_are_the_conversions_fits():
    from minivision.config import SETTINGS, TrainConfig

    assert SETTINGS["resize_mode"].choices == FITS and TrainConfig().resize_mode == "letterbox"
    assert SETTINGS["imgsz"].problem(0) and SETTINGS["imgsz"].problem(64) is None


# ----------------------------------------------------------------------------- letterbox / crop / squash

def two_colour(width: int, height: int) -> Image.Image:
    """Left half red, right half blue."""
    a = np.zeros((height, width, 3), np.uint8)
    a[:, : width // 2] = (255, 0, 0)
    a[:, width // 2:] = (0, 0, 255)
    return Image.fromarray(a)


def test_letterbox_crop_and_squash_pixels():
    wide = two_colour(40, 20)  # 2:1 into a 16 x 16 frame
    box = PictureConversion((16, 16), 3, fit="letterbox").convert(wide)
    assert box.shape == (3, 16, 16)
    assert (box[:, :4] == PAD_VALUE).all() and (box[:, 12:] == PAD_VALUE).all()  # 4 grey rows above, below
    assert box[:, 4:12, 0].tolist() == [[255] * 8, [0] * 8, [0] * 8]               # the whole width kept
    assert box[:, 4:12, -1].tolist() == [[0] * 8, [0] * 8, [255] * 8]
    crop = PictureConversion((16, 16), 3, fit="crop").convert(wide)  # the centre: half red, half blue
    assert (crop[0, :, :6] == 255).all() and (crop[2, :, -6:] == 255).all() and not (crop == PAD_VALUE).all(0).any()
    squash = PictureConversion((16, 16), 3, fit="squash").convert(wide)
    assert (squash[0, :, :5] == 255).all() and not (squash == PAD_VALUE).all(0).any()
    same = PictureConversion((16, 16), 3, fit="letterbox").convert(two_colour(16, 16))
    assert np.array_equal(same, PictureConversion((16, 16), 3).convert(two_colour(16, 16)))  # no shape to keep


def test_fit_is_saved_and_old_files_still_squash():
    conv = PictureConversion((48, 64), 3, fit="letterbox")
    assert conv.to_dict() == {"method": "resize", "fit": "letterbox"}
    assert PictureConversion.from_dict(conv.to_dict(), (48, 64), 3) == conv
    old = PictureConversion.from_dict({"method": "resize"}, (48, 64), 3)  # a model.json written before fit
    assert old.fit == "squash" and old.to_dict() == {"method": "resize"}
    with pytest.raises(MinivisionError, match="photo fit must be one of letterbox, crop, squash"):
        PictureConversion.from_dict({"method": "resize", "fit": "pad"}, (48, 64), 3)
    with pytest.raises(MinivisionError, match="not zalando"):
        PictureConversion((28, 28), 1, "zalando", fit="crop")


def write_jpeg(path, width: int, height: int, colour=(200, 60, 30), quality: int = 85) -> None:
    """A JPEG with some structure (a gradient and a block), cheap to write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    g = Image.linear_gradient("L").resize((width, height))
    img = Image.merge("RGB", (g, g.transpose(Image.Transpose.FLIP_LEFT_RIGHT), g.transpose(Image.Transpose.ROTATE_180)))
    img.paste(colour, (width // 4, height // 4, width // 2, height // 2))
    img.save(path, "JPEG", quality=quality)


def test_mixed_portrait_and_landscape_keep_their_aspect(tmp_path):
    """A landscape picture letterboxed into the square frame has grey rows, a portrait one grey columns;
    nothing is squashed. The frame and fit reach the model's saved conversion through Dataset.conversion."""
    for i in range(4):
        write_jpeg(tmp_path / "a" / f"l{i}.jpg", 400, 300)
        write_jpeg(tmp_path / "b" / f"p{i}.jpg", 300, 400)
    ds = read_image_folder(tmp_path)
    assert ds.image_size == (64, 64) and ds.channels == 3
    assert ds.conversion == PictureConversion((64, 64), 3, fit="letterbox")
    land, port = ds.train.x[0].numpy(), ds.train.x[4].numpy()
    assert (land[:, :8] == PAD_VALUE).all() and (land[:, -8:] == PAD_VALUE).all()  # 64 x 48 content
    assert (port[:, :, :8] == PAD_VALUE).all() and (port[:, :, -8:] == PAD_VALUE).all()
    assert not (land[:, 8:-8] == PAD_VALUE).all() and not (port[:, :, 8:-8] == PAD_VALUE).all()
    crop = read_image_folder(tmp_path, imgsz=32, fit="crop")
    assert crop.image_size == (32, 32) and crop.conversion.fit == "crop"
    assert not (crop.train.x[0].numpy() == PAD_VALUE).all(0).all(1).any()  # no padded row


def test_cache_is_keyed_by_the_working_size(tmp_path, monkeypatch):
    from minivision.data import folder

    for i in range(3):
        write_jpeg(tmp_path / "a" / f"{i}.jpg", 160, 120)
        write_jpeg(tmp_path / "b" / f"{i}.jpg", 160, 120, colour=(0, 200, 0))
    builds = []
    real = folder._build
    monkeypatch.setattr(folder, "_build", lambda *a: builds.append(a[4:6]) or real(*a))
    assert read_image_folder(tmp_path).image_size == (48, 64)
    assert read_image_folder(tmp_path, imgsz=32).image_size == (24, 32)  # not the cached 48 x 64
    assert read_image_folder(tmp_path, imgsz=32, fit="squash").conversion.fit == "squash"
    read_image_folder(tmp_path, imgsz=32)  # one entry a folder: its latest settings
    again = read_image_folder(tmp_path, imgsz=32)  # a hit, with its conversion
    assert again.conversion == PictureConversion((24, 32), 3, fit="letterbox")
    assert builds == [(None, "letterbox"), (32, "letterbox"), (32, "squash"), (32, "letterbox")]
    with pytest.raises(DataError, match="fit must be one of letterbox, crop, squash"):
        read_image_folder(tmp_path, fit="pad")


def test_a_models_conversion_reads_another_folder_the_same_way(tmp_path):
    """Scoring or a --test-data folder: the training frame, fit and channels, whatever that folder's sizes."""
    from minivision.data import load_dataset

    for i in range(3):
        write_jpeg(tmp_path / "train" / "a" / f"{i}.jpg", 400, 300)
        write_jpeg(tmp_path / "train" / "b" / f"{i}.jpg", 300, 400)
        write_jpeg(tmp_path / "held" / "a" / f"{i}.jpg", 200, 100)
    ds = load_dataset(str(tmp_path / "train"), test_data=tmp_path / "held", imgsz=40)
    assert ds.image_size == (40, 40) and tuple(ds.test.x.shape[1:]) == (3, 40, 40)
    grey = read_image_folder(tmp_path / "held", conversion=PictureConversion((20, 30), 1, fit="crop"))
    assert tuple(grey.train.x.shape[1:]) == (1, 20, 30) and grey.conversion.fit == "crop"


@needs_fashion_mnist
def test_fashion_mnist_pictures_in_a_folder_stay_28_by_28_and_unchanged(tmp_path):
    """Real data: 500 Fashion-MNIST test pictures written as PNG class folders come back as a one-channel
    28 x 28 dataset with exactly their pixels (grey data like Fashion-MNIST is never enlarged), and the
    model's conversion chosen from them is still Zalando's."""
    from minivision.data import load_dataset
    from minivision.preprocess import Preprocess

    fm = load_dataset("fashion-mnist", test_only=True)
    x, y = fm.test.x[:500].numpy(), fm.test.y[:500].numpy()
    for i, (img, label) in enumerate(zip(x, y, strict=True)):
        path = tmp_path / f"{label:02d}" / f"{i:04d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(img[0]).save(path)
    ds = read_image_folder(tmp_path)
    assert ds.image_size == (28, 28) and ds.channels == 1
    order = np.lexsort((np.arange(len(y)), y))  # class folder, then file name
    assert np.array_equal(ds.train.x.numpy(), x[order]) and np.array_equal(ds.train.y.numpy(), y[order])
    assert Preprocess.fit(ds.train.x, "unit", ds.conversion).photo.method == "zalando"


# ----------------------------------------------------------------------------- reduced-size decoding

def test_jpegs_are_decoded_at_the_reduction_the_frame_allows(tmp_path, monkeypatch):
    path = tmp_path / "big.jpg"
    write_jpeg(path, 2400, 1800)
    assert open_image(path, min_side=64).size == (300, 225)    # 1/8
    assert open_image(path, min_side=400).size == (600, 450)   # 1/4: 1/8 would leave 225 < 400
    assert open_image(path, min_side=None).size == (2400, 1800)
    assert open_image(path).size == (2400, 1800)  # the default keeps 1024 a side: 1/2 would leave 900
    assert picture_size(path) == (2400, 1800)
    png = tmp_path / "big.png"
    Image.new("RGB", (600, 450), (1, 2, 3)).save(png)
    assert open_image(png, min_side=64).size == (600, 450)     # only JPEG decoders reduce

    from minivision.data import folder

    decoded = []
    real = folder.open_image
    monkeypatch.setattr(folder, "open_image", lambda *a, **k: decoded.append(real(*a, **k).size) or real(*a, **k))
    for i in range(2):
        write_jpeg(tmp_path / "f" / "a" / f"{i}.jpg", 2400, 1800)
        write_jpeg(tmp_path / "f" / "b" / f"{i}.jpg", 2400, 1800)
    ds = read_image_folder(tmp_path / "f", cache=False)
    assert ds.image_size == (48, 64) and set(decoded) == {(300, 225)}


def test_exif_rotated_photos_count_upright(tmp_path):
    """A portrait phone photo is stored landscape with EXIF orientation 6: the frame is portrait."""
    for i in range(3):
        img = Image.new("RGB", (160, 120), (10 * i, 80, 160))
        exif = Image.Exif()
        exif[0x0112] = 6
        (tmp_path / "a").mkdir(exist_ok=True)
        img.save(tmp_path / "a" / f"{i}.jpg", "JPEG", exif=exif)
    assert picture_size(tmp_path / "a" / "0.jpg") == (120, 160)
    assert read_image_folder(tmp_path).image_size == (64, 48)


def test_predict_prepares_a_big_photo_as_the_folder_did(tmp_path):
    """Train one epoch on a folder of 1600 x 1200 JPEGs (and a portrait one): model.json keeps the frame and
    fit, and predict gives a training file exactly the pixels the folder reader gave it."""
    from minivision.config import TrainConfig
    from minivision.predict import predict_images
    from minivision.runfiles import load_model
    from minivision.train import fit

    for i in range(5):  # 10 of 11 landscape: a landscape frame, the portrait one cropped
        write_jpeg(tmp_path / "data" / "a" / f"{i}.jpg", 1600, 1200, colour=(250, 20 * i, 0))
        write_jpeg(tmp_path / "data" / "b" / f"{i}.jpg", 1600, 1200, colour=(0, 20 * i, 250))
    write_jpeg(tmp_path / "data" / "b" / "portrait.jpg", 1200, 1600)
    run = fit(TrainConfig(data=str(tmp_path / "data"), model="cnn1", epochs=1, out=str(tmp_path / "runs"),
                          resize_mode="crop", imgsz=40), progress=False, log=lambda m: None).run_dir
    meta = json.loads((run / "model.json").read_text())
    assert meta["preprocess"]["size"] == [30, 40] and meta["preprocess"]["photo"] == {"method": "resize", "fit": "crop"}
    lm = load_model(run)
    ds = read_image_folder(tmp_path / "data", imgsz=40, fit="crop")
    files = sorted((tmp_path / "data" / "a").glob("*.jpg")) + sorted((tmp_path / "data" / "b").glob("*.jpg"))
    results = predict_images(lm, [str(f) for f in files], inputs=True)
    for r, x in zip(results, ds.train.x, strict=True):
        assert np.array_equal(r["input"].numpy(), x.numpy()), r["path"]

    from minivision.cli import main

    assert main(["evaluate", str(run), "--json"]) == 0  # its own folder, read again at 30 x 40 with crop
    for i in range(2):  # other data: square pictures of another size, converted as predict converts them
        write_jpeg(tmp_path / "other" / "a" / f"{i}.jpg", 90, 90, colour=(250, 0, 0))
        write_jpeg(tmp_path / "other" / "b" / f"{i}.jpg", 90, 90, colour=(0, 0, 250))
    assert main(["evaluate", str(run), "--data", str(tmp_path / "other"), "--json"]) == 0


# ----------------------------------------------------------------------------- the one bomb limit

def png_header(width: int, height: int, mode: int = 0) -> bytes:
    """A PNG whose header claims width x height pixels, with one tiny IDAT: the cost is in the header."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, mode, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_bombs_are_refused_by_what_they_cost_to_decode(tmp_path):
    with pytest.raises(ImageError) as e:  # 20000 x 20000: over the pixel limit, whatever the file's size
        open_image(png_header(20000, 20000))
    assert e.value.kind == "bomb" and "400,000,000 pixels, over the limit of 89,478,485" in str(e.value)
    with pytest.raises(ImageError) as e:  # 5000 x 5000 (25 MP) from 100 bytes: over 200 times its size
        open_image(png_header(5000, 5000))
    assert e.value.kind == "bomb" and "over 200 times its size" in str(e.value)
    blank = io.BytesIO()
    Image.new("RGB", (2000, 1500), (255, 255, 255)).save(blank, "PNG")  # a blank 3 MP scan: not a bomb
    assert open_image(blank.getvalue()).size == (2000, 1500)
    # the limit counts the pixels decoded: a 2400 x 1800 JPEG reduced to 300 x 225 is under 100,000
    path = tmp_path / "photo.jpg"
    write_jpeg(path, 2400, 1800)
    assert open_image(path, max_pixels=100_000, min_side=64).size == (300, 225)
    with pytest.raises(ImageError, match="decodes to 2400x1800 = 4,320,000 pixels, over the limit of 100,000"):
        open_image(path, max_pixels=100_000, min_side=None)


def test_one_wording_for_every_path():
    assert bomb_message("x.png", 100, 100) is None
    said = bomb_message("x.png", 10000, 10000)
    assert said.startswith("x.png: refused as a possible decompression bomb") and f"{images.MAX_PIXELS:,}" in said
    from minivision.serve import app

    assert app.create_app.__kwdefaults__["max_pixels"] == images.MAX_PIXELS


def test_no_pillow_warning_for_a_large_header():
    """100 megapixels declared (over Pillow's own warning figure): our words only, no DecompressionBombWarning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageError, match="decompression bomb"):
            open_image(png_header(10000, 10000))
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)], caught


def big_phone_jpeg(path, width: int = 12000, height: int = 9000) -> int:
    """A smooth 108-megapixel JPEG like a phone's (about 1.9 MB); returns its size in bytes."""
    g = Image.linear_gradient("L").resize((width, height), Image.Resampling.BILINEAR)
    Image.merge("RGB", (g, g.transpose(Image.Transpose.ROTATE_180), g.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
                ).save(path, "JPEG", quality=90)
    return path.stat().st_size


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_a_108_megapixel_phone_photo_is_predicted_and_served(tmp_path):
    """The real thing: predict (CLI, no library warning on stderr) and the HTTP service take it; a PNG
    header of the same size is refused in our words."""
    from starlette.testclient import TestClient

    from minivision.config import TrainConfig
    from minivision.serve.app import create_app
    from minivision.train import fit

    for i in range(6):
        write_jpeg(tmp_path / "data" / "a" / f"{i}.jpg", 64, 48, colour=(250, 0, 0))
        write_jpeg(tmp_path / "data" / "b" / f"{i}.jpg", 64, 48, colour=(0, 0, 250))
    synthetic_run = fit(TrainConfig(data=str(tmp_path / "data"), model="cnn1", epochs=1, out=str(tmp_path / "runs")),
                        progress=False, log=lambda m: None).run_dir
    path = tmp_path / "IMG_0001.JPG"
    assert big_phone_jpeg(path) < 4_000_000
    assert open_image(path).size == (1500, 1125)  # decoded at 1/8: 1.7 MP
    done = subprocess.run([sys.executable, "-m", "minivision", "predict", str(synthetic_run), str(path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "IMG_0001.JPG" in done.stdout, done.stdout + done.stderr
    assert "Warning" not in done.stderr and "bomb" not in done.stdout + done.stderr, done.stderr
    with TestClient(create_app(synthetic_run)) as client:
        r = client.post("/predict", files=[("file", ("IMG_0001.JPG", path.read_bytes()))])
        assert r.status_code == 200, r.text
        r = client.post("/predict", files=[("file", ("huge.png", png_header(12000, 9000)))])
        assert r.status_code == 400 and "refused as a possible decompression bomb" in r.json()["error"]


def test_a_progressive_jpeg_counts_at_full_size(tmp_path):
    """libjpeg keeps a progressive JPEG's coefficients for the whole picture whatever draft mode reduces the
    output to, so its cost is its full size: refused over the limit in the same words; the same picture
    saved as a baseline JPEG keeps the reduced-size rule."""
    g = Image.linear_gradient("L").resize((2400, 1800))
    baseline, progressive = tmp_path / "baseline.jpg", tmp_path / "progressive.jpg"
    Image.merge("RGB", (g, g, g)).save(baseline, "JPEG", quality=85)
    Image.merge("RGB", (g, g, g)).save(progressive, "JPEG", quality=85, progressive=True)
    with Image.open(progressive) as img:
        assert images.is_progressive_jpeg(img)
    with Image.open(baseline) as img:
        assert not images.is_progressive_jpeg(img)
    assert open_image(baseline, max_pixels=100_000, min_side=64).size == (300, 225)  # 1/8 scale: 67,500 pixels
    with pytest.raises(ImageError) as e:
        open_image(progressive, max_pixels=100_000, min_side=64)
    assert e.value.kind == "bomb"
    assert str(e.value) == bomb_message(str(progressive), 2400, 1800, max_pixels=100_000)
    assert "progressive ones at full size" in str(e.value)
    # under the limit a progressive JPEG is still decoded at the reduced size
    assert open_image(progressive, max_pixels=5_000_000, min_side=64).size == (300, 225)


def test_a_progressive_jpeg_over_the_limit_is_skipped_by_the_folder_reader(tmp_path):
    for k in ("a", "b"):
        (tmp_path / k).mkdir()
        for i in range(3):
            write_jpeg(tmp_path / k / f"{i}.jpg", 64, 64, colour=(200, 60 * i, 30) if k == "a" else (20, 60 * i, 230))
    Image.new("RGB", (2400, 1800), (90, 90, 90)).save(tmp_path / "a" / "big.jpg", "JPEG", progressive=True)
    ds = read_image_folder(tmp_path, cache=False, max_pixels=100_000)
    assert any("big.jpg" in str(s) and "decompression bomb" in str(s) for s in ds.skipped), ds.skipped
