"""Photos taken in ordinary light: the conversion evens out the backdrop's light and finds the item.

A garment photographed with a brightness ramp across the backdrop (4 directions), a soft shadow, a
vignette, a textured backdrop or sensor noise must convert to the picture the same garment gets on
an evenly lit backdrop; the corner-colour trim (``even_light=False``, the conversion before) fails the
ramp, shadow, vignette and texture. Every picture is made here; the real-data tests add Fashion-MNIST
garments, a short-trained model and the trouser photo in tests/data (a backdrop brightening from grey
190 on the left to 240 on the right; the corner-colour trim made it "Bag").
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minivision import photo, photo_light

from .conftest import needs_fashion_mnist

CASE = Path(__file__).parent / "data" / "uneven-light-trouser.jpg"
LIGHTS = [("ramp", 0), ("ramp", 1), ("ramp", 2), ("ramp", 3), ("shadow", 0), ("vignette", 0), ("texture", 0),
          ("noise", 0)]


def _garment() -> np.ndarray:
    """A 28 x 28 T-shirt, light on black as Fashion-MNIST's: body, sleeves, neck, stripes, brighter seams."""
    a = np.zeros((28, 28), np.uint8)
    a[5:27, 8:20] = 180
    a[3:11, 2:26] = 180
    a[3:6, 12:16] = 0
    a[8:27:3, 8:20] = 230
    a[3:11, 2] = a[3:11, 25] = 255
    return a


def _render(x28: np.ndarray, light: str = "even", direction: int = 0, *, bg: float = 230.0, color: float = 40.0,
            size: tuple[int, int] = (420, 340), dark_backdrop: bool = False, seed: int = 0) -> Image.Image:
    """``x28`` photographed: scaled 10x, dark (``color``) on a ``bg`` backdrop with sensor noise sd 2, in
    ``light``: ramp (60 levels darker towards the side ``direction`` names: 0 right, 1 left, 2 bottom,
    3 top), shadow (the silhouette moved 14 px down-right, blurred sd 16 px, 30% dark), vignette (60 levels
    at the corners), texture (grain sd 8 + a weave of amplitude 5), noise (sd 10); saved as a JPEG."""
    from skimage.filters import gaussian

    rng = np.random.default_rng(seed)
    w, h = size
    side = 280 * min(w, h) // 340
    item = np.asarray(Image.fromarray(x28.astype(np.float32) / 255, "F").resize((side, side),
                                                                                Image.Resampling.LANCZOS))
    a = np.zeros((h, w), np.float32)
    top, left = (h - side) // 4, (w - side) // 3
    a[top:top + side, left:left + side] = np.clip(item, 0, 1)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    back = bg + 2 * rng.standard_normal((h, w)).astype(np.float32)
    gain = np.ones((h, w), np.float32)
    if light == "ramp":
        gain = 1 - 60 / bg * [xx / (w - 1), 1 - xx / (w - 1), yy / (h - 1), 1 - yy / (h - 1)][direction]
    elif light == "shadow":
        back = back * (1 - 0.3 * np.clip(gaussian(np.roll(a, (14, 14), (0, 1)), sigma=16), 0, 1))
    elif light == "vignette":
        gain = 1 - 60 / bg * ((xx - (w - 1) / 2) ** 2 + (yy - (h - 1) / 2) ** 2) / (((w - 1) / 2) ** 2
                                                                                 + ((h - 1) / 2) ** 2)
    elif light == "texture":
        grain = gaussian(rng.standard_normal((h, w)), sigma=2)
        back = back + 8 * grain / grain.std() + 5 * np.sin(2 * np.pi * xx / 6) * np.sin(2 * np.pi * yy / 6)
    picture = (back * (1 - a) + color * a) * gain
    if light == "noise":
        picture = picture + 10 * rng.standard_normal((h, w))
    if dark_backdrop:
        picture = 255 - picture
    buf = io.BytesIO()
    Image.fromarray(np.clip(np.rint(picture), 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return Image.open(io.BytesIO(buf.getvalue()))


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1])


@pytest.fixture(scope="module")
def even() -> np.ndarray:
    return photo.zalando(_render(_garment()), (28, 28))


# ------------------------------------------------------------------------------------- synthetic renditions

# mean absolute difference to the even-light conversion (0-255), measured: ramps 1.3-3.8, shadow 10.5,
# vignette 1.3, texture 4.1, noise 2.5 (correlation >= 0.99 for all); the corner-colour trim: ramps 78-86,
# shadow 32, vignette 82, texture 82 (noise alone it handled: 2.7). Bounds with room for JPEG and
# resampling, far below what the trim gives.
BOUND = {"ramp": 8.0, "shadow": 16.0, "vignette": 8.0, "texture": 8.0, "noise": 8.0}


@pytest.mark.parametrize("light, direction", LIGHTS)
def test_uneven_light_converts_like_even_light(even, light, direction):
    img = _render(_garment(), light, direction)
    got = photo.zalando(img, (28, 28))
    assert _mad(got, even) < BOUND[light] and _corr(got, even) > 0.98, (_mad(got, even), _corr(got, even))
    assert np.array_equal(photo.FASHION.convert(img)[0], got)  # what predict and the service use
    before = photo.zalando(img, (28, 28), even_light=False)
    if light != "noise":  # the corner-colour trim kept backdrop in the picture
        assert _mad(before, even) > 20, _mad(before, even)


def test_a_light_item_on_a_dark_backdrop_in_uneven_light():
    for light in ("ramp", "vignette"):
        img = _render(_garment(), light, dark_backdrop=True)
        ref = photo.zalando(_render(_garment(), dark_backdrop=True), (28, 28))
        got = photo.zalando(img, (28, 28))
        assert _mad(got, ref) < 8 and _corr(got, ref) > 0.98, light


def test_a_phone_size_photo_converts_as_its_small_copy(even):
    big = _render(_garment(), "ramp", 1, size=(2100, 1700))  # box-reduced before the search, as a phone photo
    got = photo.zalando(big, (28, 28))
    assert _mad(got, even) < 8 and _corr(got, even) > 0.98


def test_the_backdrop_fit_recovers_a_vignette_under_a_large_item():
    h, w = 150, 200
    y, x = np.mgrid[0:h, 0:w]
    yn, xn = (y + 0.5) * 2 / h - 1, (x + 0.5) * 2 / w - 1
    surface = 240 - 40 * (xn ** 2 + yn ** 2) / 2 + 10 * xn  # a vignette and a ramp
    s = surface.copy()
    s[20:140, 40:150] = 50  # an item over 44% of the frame, touching no border
    fit = photo_light.fit_backdrop(s.astype(np.uint8))
    assert np.abs(fit.level(h, w) - surface).max() < 2  # grey levels (uint8 rounding of the input: 0.5)
    assert fit.noise == 1.0  # no noise: the floor


def test_in_even_light_the_box_is_the_corner_colour_trims_to_the_pixel():
    a = np.full((150, 200), 250, np.uint8)
    a[30:130, 40:90] = 30
    noisy = (a + np.random.default_rng(0).normal(0, 4, a.shape)).clip(0, 255).astype(np.uint8)
    for g in (a, noisy):
        box, _ = photo_light.find_item(g, np.asarray(photo_light.reduced(Image.fromarray(g))), photo.TRIM_THRESHOLD)
        assert box == (40, 30, 90, 130)


def test_a_blank_backdrop_in_uneven_light_stays_whole_and_black():
    ramp = np.tile(np.linspace(190, 240, 300), (200, 1)).astype(np.uint8)
    box, _ = photo_light.find_item(ramp, np.asarray(photo_light.reduced(Image.fromarray(ramp))), 24)
    assert box == (0, 0, 300, 200)
    assert photo.zalando(Image.fromarray(ramp), (28, 28)).max() == 0


def test_the_item_is_its_largest_components_not_dust_or_a_stain():
    a = np.full((240, 320), 235, np.uint8)
    a[40:200, 120:200] = 30         # the item
    a[10:13, 300:303] = 0           # dust: 9 pixels
    a[225:229, 10:14] = 60          # a small stain
    box, _ = photo_light.find_item(a, np.asarray(photo_light.reduced(Image.fromarray(a))), 24)
    assert box == (120, 40, 200, 200)


# ------------------------------------------------------------------------------------- the shared case

def _bounds(a: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero((a > 0).any(1)), np.flatnonzero((a > 0).any(0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def test_the_trouser_photo_is_framed_like_fashion_mnist():
    from minivision.data.images import open_image

    img = open_image(CASE)
    got = photo.FASHION.convert(img)[0]
    left, top, right, bottom = _bounds(got > 16)  # the garment, not its faint JPEG fringe
    assert (top, bottom) == (0, 28) and 8 <= right - left <= 16  # a trouser: full height, narrow
    assert abs(left - (28 - right)) <= 1  # centred
    assert got[:, :left - 1].max() == 0 and got[:, right + 1:].max() == 0  # the backdrop black
    before = photo.zalando(img, (28, 28), even_light=False)
    assert before[:, :3].mean() > 20 and _bounds(before > 16)[1] > 0  # the lit backdrop kept, the trouser small


# ------------------------------------------------------------------------------------- real data

@pytest.fixture(scope="module")
def fashion_run(tmp_path_factory):
    """A linear model trained one epoch on Fashion-MNIST with Adam (~83% on the test set; the trousers
    are among its surest classes), and 100 test images."""
    from minivision.config import TrainConfig
    from minivision.data import load_dataset
    from minivision.runfiles import load_model
    from minivision.train import fit

    run = fit(TrainConfig(model="softmax", epochs=1, data="fashion-mnist", out=str(tmp_path_factory.mktemp("runs")),
                          val_split=0.05, batch_size=128, optimizer="adam", lr=0.001), log=lambda m: None,
              progress=False).run_dir
    test = load_dataset("fashion-mnist", test_only=True).test
    pick = np.random.default_rng(0).permutation(len(test))[:100]
    return load_model(run), test.x[pick, 0].numpy(), test.y[pick].numpy()


@needs_fashion_mnist
def test_the_trouser_photo_is_a_trouser(fashion_run):
    from minivision.data.images import open_image
    from minivision.predict import predict_images

    lm, _, _ = fashion_run
    result = predict_images(lm, [open_image(CASE)])[0]
    assert result["label"] == "Trouser", result


@pytest.mark.slow  # ~500 photos rendered and converted
@needs_fashion_mnist
def test_fashion_mnist_garments_in_uneven_light_score_as_the_plain_images(fashion_run):
    import torch

    from minivision.predict import proba_for_tensor

    lm, x, y = fashion_run

    def accuracy(pictures: list[np.ndarray]) -> float:
        pred = proba_for_tensor(lm, torch.from_numpy(np.stack(pictures)[:, None])).argmax(1).numpy()
        return float((pred == y).mean())

    plain = accuracy(list(x))
    for light, direction in (("ramp", 0), ("ramp", 3), ("shadow", 0), ("vignette", 0), ("texture", 0)):
        photos = [_render(a, light, direction, seed=i) for i, a in enumerate(x)]
        got = accuracy([photo.FASHION.convert(p)[0] for p in photos])
        assert got >= plain - 0.06, (light, got, plain)
        if light in ("ramp", "vignette"):
            before = accuracy([photo.zalando(p, (28, 28), even_light=False) for p in photos])
            assert before < plain - 0.2, (light, before, plain)
