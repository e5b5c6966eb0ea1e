"""photo.PictureConversion: the one picture conversion, its model.json form, its checks and its presets.

The presets are compared with what the training-jobs uploads make today (``serve/jobs_images.py``,
imported read-only: its ``_to_training_image`` and ``to_png``), array for array, on synthetic pictures
of several modes, sizes and backgrounds.
"""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
from PIL import Image

from minivision import photo
from minivision.data.images import open_image
from minivision.errors import MinivisionError
from minivision.photo import PictureConversion
from minivision.preprocess import Preprocess

# model.json "preprocess" entries exactly as minivision wrote them before PictureConversion (json.dumps
# of Preprocess.to_dict(): a Fashion-MNIST run, a colour folder run, and an MNIST run)
SAVED = [
    '{"channels": 1, "size": [28, 28], "mean": [0.286041], "std": [0.353024], '
    '"photo": {"method": "zalando", "background": "auto", "box": 28}}',
    '{"channels": 3, "size": [32, 32], "mean": [], "std": [], "photo": {"method": "resize"}}',
    '{"channels": 1, "size": [28, 28], "mean": [0.1307], "std": [0.3081], '
    '"photo": {"method": "zalando", "background": "dark", "box": 20}}',
]


def _pictures() -> list[Image.Image]:
    """Photos and training-like pictures: dark on light, light on dark, colour, small, large, odd modes."""
    rng = np.random.default_rng(7)
    out = []
    for i, (w, h, bg) in enumerate([(300, 200, 245), (120, 160, 8), (28, 28, 0), (31, 17, 200), (640, 480, 230),
                                    (20, 50, 128), (64, 64, 250), (1200, 900, 240)]):
        a = np.full((h, w, 3), bg, np.uint8)
        a[h // 5:4 * h // 5, w // 3:2 * w // 3] = rng.integers(0, 256, 3)
        a = (a.astype(int) + rng.normal(0, 3, a.shape)).clip(0, 255).astype(np.uint8)
        img = Image.fromarray(a)
        out.append(img.convert("L") if i % 3 == 0 else img)
    return out


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------- model.json

@pytest.mark.parametrize("text", SAVED)
def test_a_preprocess_entry_saved_before_loads_and_is_written_back_byte_for_byte(text):
    pre = Preprocess.from_dict(json.loads(text))
    assert isinstance(pre.photo, PictureConversion)
    assert (pre.photo.size, pre.photo.channels) == (pre.size, pre.channels)
    assert json.dumps(pre.to_dict()) == text  # the same keys, in the same order
    assert Preprocess.from_dict(json.loads(json.dumps(pre.to_dict()))) == pre


def test_the_dataclass_round_trips_and_fills_in_defaults():
    for conv in (PictureConversion((28, 28), 1, "zalando"), PictureConversion((20, 24), 1, "zalando", "light", 24),
                 PictureConversion((32, 32), 3), *photo.PRESETS.values()):
        assert PictureConversion.from_dict(json.loads(json.dumps(conv.to_dict())), conv.size, conv.channels) == conv
    assert PictureConversion((28, 28), 1, "zalando").box == 28  # box: min(size) unless given
    assert PictureConversion.from_dict({"method": "zalando"}, (28, 20), 1).box == 20
    assert PictureConversion.from_dict({"method": "zalando", "box": 20.0}, (28, 28), 1).box == 20
    # a resize entry's background and box were ignored when read; they still are
    assert PictureConversion.from_dict({"method": "resize", "box": 7}, (8, 8), 3) == PictureConversion((8, 8), 3)
    with pytest.raises(dataclasses.FrozenInstanceError):  # a model's conversion is not changed in place
        photo.FASHION.box = 20  # type: ignore[misc]


def test_an_old_model_json_without_a_photo_setting_gets_the_same_default_as_before():
    old = {"channels": 1, "size": [28, 28], "mean": [], "std": []}
    assert Preprocess.from_dict(old, "fashion-mnist").photo.to_dict() == {"method": "zalando", "background": "auto",
                                                                         "box": 28}
    assert Preprocess.from_dict(old, "MNIST").photo.to_dict() == {"method": "zalando", "background": "auto", "box": 20}
    assert Preprocess.from_dict(old, "my-folder").photo.to_dict() == {"method": "resize"}
    assert Preprocess.from_dict({**old, "channels": 3}, "fashion-mnist").photo == PictureConversion((28, 28), 3)


@pytest.mark.parametrize("bad, words", [
    ("zalando", "unknown photo conversion"),
    (None, "unknown photo conversion"),
    ({"method": "magic"}, "unknown photo conversion"),
    ({"method": "zalando", "background": "grey"}, "background"),
    ({"method": "zalando", "box": 99}, "outside 1..28"),
    ({"method": "zalando", "box": 0}, "outside 1..28"),
    ({"method": "zalando", "box": "28"}, "box must be an integer"),
    ({"method": "zalando", "box": True}, "box must be an integer"),
    ({"method": "zalando", "box": 2.5}, "box must be an integer"),
    ({"method": "zalando", "bx": 20}, "did you mean 'box'"),
    ({"method": "resize", "colour\nspace": 1}, "unknown photo setting"),
    ({"method": "zalando", "box": "x" * 500}, "box must be an integer"),
])
def test_a_malformed_photo_entry_is_a_one_line_error(bad, words):
    entry = {"channels": 1, "size": [28, 28], "mean": [], "std": [], "photo": bad}
    with pytest.raises(MinivisionError, match="photo") as info:
        Preprocess.from_dict(entry)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("model.json") and words in msg and len(msg) < 200, msg


def test_settings_that_cannot_make_the_models_input_are_refused():
    with pytest.raises(MinivisionError, match="grayscale"):
        PictureConversion((32, 32), 3, "zalando")
    with pytest.raises(MinivisionError, match="channels"):
        PictureConversion((28, 28), 4)
    with pytest.raises(MinivisionError, match="size"):
        PictureConversion((28, 0), 1)
    with pytest.raises(MinivisionError, match="zalando"):
        PictureConversion((28, 28), 1, "resize", box=20)
    with pytest.raises(MinivisionError, match="model.json: photo channels"):
        Preprocess.from_dict({"channels": 2, "size": [28, 28], "photo": {"method": "resize"}})
    with pytest.raises(MinivisionError, match="model takes 3 x 28 x 28"):
        Preprocess(3, (28, 28), photo=photo.FASHION)
    with pytest.raises(TypeError, match="PictureConversion"):
        Preprocess(1, (28, 28), photo={"method": "resize"})  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------- convert

@pytest.mark.parametrize("conv", [photo.FASHION, photo.GRAY, photo.RGB, PictureConversion((20, 24), 1, "zalando")])
def test_convert_gives_uint8_c_h_w_for_a_picture_of_any_mode(conv):
    base = _pictures()[0]
    for mode in ("L", "RGB", "RGBA", "LA", "P", "1", "I;16", "CMYK"):
        a = conv.convert(base.convert(mode))
        assert a.dtype == np.uint8 and a.shape == (conv.channels, *conv.size) and a.flags.c_contiguous, mode
    decoded = open_image(_png(base.convert("RGBA")))  # transparency: the decoder's rule, both ways
    assert np.array_equal(conv.convert(base.convert("RGBA")), conv.convert(decoded))
    image = conv.to_image(base)
    assert image.mode == ("L" if conv.channels == 1 else "RGB") and (image.height, image.width) == conv.size
    with pytest.raises(MinivisionError, match="background"):
        conv.convert(base, background="grey")


def test_pixels_convert_as_their_picture_does():
    rng = np.random.default_rng(1)
    for conv in (photo.GRAY, photo.RGB, photo.FASHION):
        for shape in ((28, 28), (28, 28, 3), (32, 32), (32, 32, 3), (40, 21), (17, 50, 3)):
            a = rng.integers(0, 256, shape, dtype=np.uint8)
            got = conv.convert(a)
            assert np.array_equal(got, conv.convert(Image.fromarray(a))) and got.flags.c_contiguous, shape
            assert not np.shares_memory(got, a)


def test_preprocess_image_to_uint8_is_the_conversion():
    pre = Preprocess(1, (28, 28), photo=photo.FASHION)
    for img in _pictures():
        for background in (None, "light", "dark"):
            got = pre.image_to_uint8(img, background)
            assert np.array_equal(got.numpy(), photo.FASHION.convert(img, background))


# ------------------------------------------------------------------------------------- presets

def test_every_jobs_kind_has_a_preset_and_unknown_kinds_say_which_exist():
    from minivision.serve.jobs_images import KINDS

    assert set(photo.PRESETS) == set(KINDS)
    assert all(photo.preset(kind) is photo.PRESETS[kind] for kind in KINDS)
    with pytest.raises(MinivisionError, match="did you mean 'fashion'"):
        photo.preset("fashon")
    with pytest.raises(MinivisionError, match="known: fashion, gray, rgb"):
        photo.preset("sepia")


@pytest.mark.parametrize("kind", ["fashion", "gray", "rgb"])
def test_presets_make_what_the_jobs_uploads_make(kind):
    from minivision.serve import jobs_images

    conv = photo.preset(kind)
    for img in _pictures():
        decoded = open_image(_png(img))
        made = np.asarray(jobs_images._to_training_image(decoded, kind))
        stored = np.asarray(Image.open(io.BytesIO(jobs_images.to_png(decoded, kind))))
        ours = conv.convert(decoded)
        ours_hwc = ours[0] if conv.channels == 1 else ours.transpose(1, 2, 0)
        assert made.shape == ours_hwc.shape and np.array_equal(made, ours_hwc)
        assert np.array_equal(stored, ours_hwc)
        assert np.array_equal(np.asarray(conv.to_image(decoded)), made)
