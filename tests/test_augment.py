"""Small-data augmentation (random resized crop, jitter, TrivialAugment, mixup, cutmix), the automatic
policy, the training loop's soft targets, and the few-shot benchmark's draw."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from minivision.config import TrainConfig
from minivision.data import idx, load_dataset
from minivision.data.augment import (
    SMALL_DATA,
    Augment,
    _autocontrast,
    _posterize,
    _solarize,
    _trivial,
    small_data_augment,
    trivial_ops,
)
from minivision.errors import MinivisionError
from minivision.listeners import Listener
from minivision.preprocess import Preprocess
from minivision.train import MIRROR_SENSITIVE, fit

from .conftest import needs_fashion_mnist, synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import fewshot  # noqa: E402


def _batch(n=16, c=3, h=12, w=12, seed=7):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- the spec


# The old names' outputs for one input and seed, measured before the new names were added: the old specs
# must keep drawing the same numbers in the same order (a resumed or repeated run sees the same pictures).
OLD_SPECS = {
    "flip,shift=2,rotate=10,zoom=0.1,erase=0.5": (2534.4556752468925, 120472.64141174103),
    "flip,vflip,shift=3": (2586.5909918546677, 124178.34563219547),
    "rotate=20,zoom=0.2": (2942.876117342268, 141547.55193229602),
    "erase=1": (3227.9152143001556, 154379.16279911995),
}


@pytest.mark.parametrize("spec", OLD_SPECS)
def test_old_specs_give_the_same_pictures_as_before(spec):
    x = _batch()
    weights = torch.arange(x.numel(), dtype=torch.float64).view_as(x) % 97
    out = Augment.parse(spec)(x, torch.Generator().manual_seed(3)).double()
    total, weighted = OLD_SPECS[spec]
    # rotate and zoom resample in float32, whose last bits differ between AVX2 and AVX-512 kernels (a few
    # parts in 1e9 of the sum); another draw of the random numbers moves the sum by parts in 1e3
    assert out.sum().item() == pytest.approx(total, rel=1e-7)
    assert (out * weights).sum().item() == pytest.approx(weighted, rel=1e-7)


def test_new_names_parse_with_defaults_bounds_and_hints():
    a = Augment.parse("crop,jitter,trivial,mixup,cutmix")
    assert (a.crop, a.jitter, a.trivial, a.mixup, a.cutmix) == (0.35, 0.4, 1.0, 0.2, 1.0)
    assert a.mixes and not Augment.parse("crop=0.5").mixes
    assert Augment.parse(a.spec()) == a  # the spec string round-trips
    with pytest.raises(MinivisionError, match="did you mean 'cutmix'"):
        Augment.parse("cutmx=1")
    with pytest.raises(MinivisionError, match=r"out of range \[0, 1\]"):
        Augment.parse("crop=1.5")
    with pytest.raises(MinivisionError, match="out of range"):
        Augment.parse("mixup=9")


@pytest.mark.parametrize("spec", ["crop", "jitter", "trivial", "crop=0.2,flip,jitter=0.8,trivial,erase=0.5"])
def test_new_augmentations_keep_shape_and_repeat_with_the_seed(spec):
    x = _batch(32, 3, 16, 16)
    aug = Augment.parse(spec)
    a, b = aug(x, torch.Generator().manual_seed(0)), aug(x, torch.Generator().manual_seed(0))
    c = aug(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and a.dtype == x.dtype and torch.equal(a, b)
    assert not torch.equal(a, x) and not torch.equal(a, c)


# ----------------------------------------------------------------------------- crop


def test_random_resized_crop_keeps_an_area_and_ratio_in_range():
    n, h, w = 400, 48, 48
    ramp = torch.linspace(0, 1, w)
    x = torch.stack([ramp.view(1, w).expand(h, w), ramp.view(h, 1).expand(h, w)]).unsqueeze(0).repeat(n, 1, 1, 1)
    out = Augment(crop=0.35)(x, torch.Generator().manual_seed(0))
    # the ramps' span across the output is the box's width and height as fractions of the picture
    fw = out[:, 0, h // 2, -1] - out[:, 0, h // 2, 0]
    fh = out[:, 1, -1, w // 2] - out[:, 1, 0, w // 2]
    area = fw * fh
    assert area.min() > 0.35 * 0.93 and area.max() <= 1.0 + 1e-5
    unclipped = (fw < 0.99) & (fh < 0.99)
    ratio = (fw / fh)[unclipped]
    assert ratio.min() > 3 / 4 - 0.03 and ratio.max() < 4 / 3 + 0.03
    assert 0.5 < area.mean() < 0.7  # uniform in [0.35, 1]: mean 0.675, a little less where clipped
    assert (out >= 0).all() and (out <= 1).all()  # a crop resamples inside the picture: no fill


# ----------------------------------------------------------------------------- jitter and trivial


def test_photometric_ops_work_on_the_pixel_scale_whatever_the_normalisation():
    x = _batch(24, 3, 10, 10)
    pre = Preprocess(3, (10, 10), [0.2, 0.5, 0.7], [0.3, 0.2, 0.1])
    mean, std = torch.tensor(pre.mean).view(1, 3, 1, 1), torch.tensor(pre.std).view(1, 3, 1, 1)
    for spec in ("jitter=0.5", "trivial"):
        aug = Augment.parse(spec)
        unit = aug(x, torch.Generator().manual_seed(4))
        normalised = aug((x - mean) / std, torch.Generator().manual_seed(4), pre)
        assert torch.allclose(normalised * std + mean, unit, atol=1e-5)
        assert unit.min() >= 0 and unit.max() <= 1  # clipped to the pixel range, as PIL does


def test_jitter_changes_brightness_and_contrast_within_its_strength():
    x = torch.full((200, 1, 8, 8), 0.5)
    x[:, :, :4] = 0.25
    out = Augment(jitter=0.3)(x, torch.Generator().manual_seed(0))
    ratio = out.mean((1, 2, 3)) / x.mean((1, 2, 3))
    assert ratio.min() > (0.7 - 1e-6) and ratio.max() < 1.3 + 1e-6 and ratio.std() > 0.05
    spread = out[:, 0, 7, 0] - out[:, 0, 0, 0]  # the two halves' difference: brightness x contrast
    assert spread.min() > 0.25 * 0.7 * 0.7 - 1e-6 and spread.max() < 0.25 * 1.3 * 1.3 + 1e-6


def test_trivial_draws_one_op_per_picture_from_the_documented_set():
    assert "color" not in trivial_ops(1) and "color" in trivial_ops(3) and "identity" in trivial_ops(1)
    assert len(trivial_ops(3)) == 13
    x = _batch(600, 1, 12, 12)
    out = Augment(trivial=1.0)(x, torch.Generator().manual_seed(0))
    changed = (out - x).abs().flatten(1).amax(1) > 1e-6
    # one op in 12 is the identity; a few ops can leave a picture as it was at a small strength
    assert 0.75 < changed.float().mean() < 0.95
    none = Augment(trivial=1e-9)(x, torch.Generator().manual_seed(0))
    assert torch.equal(none, x)  # probability ~0: every picture gets the identity


def test_trivial_ops_at_full_strength():
    p = torch.tensor([0.0, 0.2, 0.6, 1.0]).view(1, 1, 2, 2)
    one = torch.ones(1)
    assert torch.allclose(_solarize(p, one), 1 - p)  # threshold 0: everything inverted
    assert torch.equal(_solarize(p, torch.zeros(1)), torch.where(p >= 1, 1 - p, p))
    levels = _posterize(torch.linspace(0, 1, 256).view(1, 1, 16, 16), one).unique()
    assert len(levels) == 16  # 4 bits kept
    stretched = _autocontrast(p * 0.5 + 0.2, one)
    assert torch.allclose(stretched, p)
    # translate_x at full strength moves a picture 45% of its width (9 of 20 px; this sign: to the left)
    x = torch.zeros(1, 1, 20, 20)
    x[0, 0, :, 9:11] = 1.0
    k = trivial_ops(1).index("translate_x")
    u = torch.tensor([(k + 0.5) / len(trivial_ops(1))])
    moved = _trivial(x, 1.0, u, one, torch.ones(1), torch.zeros(1))
    assert torch.equal(moved[0, 0, 0].nonzero().flatten(), torch.tensor([0, 1]))


# ----------------------------------------------------------------------------- mixup and cutmix


def test_mix_without_mixup_or_cutmix_is_the_hard_one_hots():
    x, y = _batch(8), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    out, t = Augment(flip=0.5).mix(x, y, 5, torch.Generator().manual_seed(0))
    assert out is x and torch.equal(t, torch.nn.functional.one_hot(y, 5).float())


def test_mixup_blends_the_batch_with_itself_reversed_and_the_targets_alike():
    x, y = _batch(8), torch.arange(8) % 4
    out, t = Augment(mixup=1.0).mix(x, y, 4, torch.Generator().manual_seed(0))
    assert torch.allclose(t.sum(1), torch.ones(8))
    lam = float(t[0, y[0]]) if y[0] != y[-1] else None
    assert lam is not None and 0 < lam < 1
    assert torch.allclose(out, lam * x + (1 - lam) * x.flip(0), atol=1e-6)


def test_cutmix_pastes_one_box_and_weights_the_targets_by_its_area():
    x, y = _batch(8, 3, 32, 32), torch.arange(8) % 4
    for seed in range(5):
        out, t = Augment(cutmix=1.0).mix(x, y, 4, torch.Generator().manual_seed(seed))
        pasted = (out != x).any(1)[0].float().mean().item()  # picture 0's share of pixels from picture 7
        assert torch.equal(torch.where((out != x).any(1, keepdim=True), x.flip(0), out), out)
        assert t[0, y[-1]].item() == pytest.approx(pasted, abs=1e-6)
        assert torch.allclose(t.sum(1), torch.ones(8))


def test_mixup_and_cutmix_together_take_turns_and_draw_the_same_count():
    x, y = _batch(8, 1, 16, 16), torch.arange(8) % 4
    kinds = set()
    for seed in range(20):
        out, _ = Augment(mixup=0.5, cutmix=1.0).mix(x, y, 4, torch.Generator().manual_seed(seed))
        box = ((out - x).abs() > 1e-7) & ((out - x.flip(0)).abs() > 1e-7)  # mixup: neither picture's value
        kinds.add("mixup" if box.any() else "cutmix")
    assert kinds == {"mixup", "cutmix"}
    states = []
    for aug in (Augment(mixup=0.5), Augment(cutmix=1.0), Augment(mixup=0.5, cutmix=1.0)):
        g = torch.Generator().manual_seed(0)
        aug.mix(x, y, 4, g)
        states.append(g.get_state())
    assert all(torch.equal(states[0], s) for s in states)


# ----------------------------------------------------------------------------- the automatic policy


def test_small_data_policy_by_size_and_dataset():
    spec = small_data_augment(1000, 1, "fashion-mnist")
    assert Augment.parse(spec) == Augment(flip=0.5, shift=2)  # the measured policy (its docstring)
    assert small_data_augment(SMALL_DATA, 3, "cifar10") == small_data_augment(10, 3, "cifar10")
    assert small_data_augment(SMALL_DATA + 1, 3, "cifar10") is None  # large enough: the model's recipe
    for name in MIRROR_SENSITIVE:
        assert not Augment.parse(small_data_augment(500, 1, name)).flip
        assert not Augment.parse(small_data_augment(500, 1, name.upper())).flip


# ----------------------------------------------------------------------------- in the training loop

NEW = "crop=0.35,flip,jitter=0.4,trivial,mixup=0.4,cutmix=1"


class _StopAt(Listener):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, t):
        if t.step == self.step:
            t.stop("step")


def _fit(tmp_path, name, listeners=(), resume=None, **kw):
    cfg = TrainConfig(**{"model": "cnn1", "epochs": 2, "batch_size": 32, "augment": NEW, "val_split": 0.25,
                         "label_smoothing": 0.1, "normalize": "standard", **kw}, out=str(tmp_path), name=name)
    return fit(cfg if resume is None else TrainConfig(), dataset=synthetic_dataset(160, 40, channels=3),
               progress=False, log=lambda m: None, listeners=list(listeners), resume=resume)


def test_mixing_run_resumes_bit_exact(tmp_path):
    ref = _fit(tmp_path, "ref")
    cut = _fit(tmp_path, "cut", [_StopAt(5)])  # mid-epoch (4 steps an epoch)
    assert cut.interrupted
    done = _fit(tmp_path, "cut", resume=cut.run_dir)
    a = load_file(str(ref.run_dir / "last.safetensors"))
    b = load_file(str(done.run_dir / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("model."))
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in ref.history]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in done.history] == strip
    for row in ref.history:  # accuracy against the original labels; loss against the mixed targets
        assert 0.0 <= row["train_accuracy"] <= 1.0 and math.isfinite(row["train_loss"])


def test_soft_targets_reach_the_loss(tmp_path):
    plain = _fit(tmp_path, "plain", augment="crop=0.35", epochs=1)
    mixed = _fit(tmp_path, "mixed", augment="crop=0.35,mixup=4", epochs=1)
    # same pictures, same draws up to the mix: a different loss means the mixed targets were used
    assert plain.history[0]["train_loss"] != mixed.history[0]["train_loss"]


@needs_fashion_mnist
def test_policy_with_cutmix_learns_real_fashion_mnist(tmp_path):
    """Real pictures: 50 per class trained 20 epochs with the small-data policy plus cutmix, scored on
    1,000 test pictures, clears chance (10%) by far: the soft targets train the network."""
    full = load_dataset("fashion-mnist")
    keep = torch.from_numpy(fewshot.draw(full.train.y.numpy(), 50, 0))
    from minivision.data.dataset import Dataset, Split

    ds = Dataset(name="fashion-mnist", classes=full.classes, train=Split(full.train.x[keep], full.train.y[keep]),
                 test=Split(full.test.x[:1000], full.test.y[:1000]))
    spec = small_data_augment(len(keep), 1, ds.name) + ",cutmix=1"
    r = fit(TrainConfig(model="mvnet-t", epochs=20, batch_size=64, augment=spec, out=str(tmp_path)), dataset=ds,
            progress=False, log=lambda m: None)
    assert r.test["test_accuracy"] > 0.4


# ----------------------------------------------------------------------------- the few-shot benchmark


def _fake_idx(folder: Path, n_train=300, n_test=50, classes=10):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    train_x = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    train_x[:, 0, 0] = np.arange(n_train) % 256  # tell pictures apart
    train_y = (np.arange(n_train) % classes).astype(np.uint8)
    test_x = rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    test_y = (np.arange(n_test) % classes).astype(np.uint8)
    for name, a in [("train-images-idx3-ubyte", train_x), ("train-labels-idx1-ubyte", train_y),
                    ("t10k-images-idx3-ubyte", test_x), ("t10k-labels-idx1-ubyte", test_y)]:
        (folder / name).write_bytes(fewshot._idx_bytes(a))
    return train_x, train_y, test_x, test_y


def test_draw_is_seeded_balanced_and_from_the_training_split(tmp_path):
    labels = np.repeat(np.arange(10), 30)[np.random.default_rng(1).permutation(300)]
    a, b, c = fewshot.draw(labels, 7, 0), fewshot.draw(labels, 7, 0), fewshot.draw(labels, 7, 1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert len(np.unique(a)) == 70 and np.array_equal(np.bincount(labels[a]), np.full(10, 7))
    with pytest.raises(MinivisionError, match="fewer than 31"):
        fewshot.draw(labels, 31, 0)
    train_x, train_y, test_x, test_y = _fake_idx(tmp_path / "src")
    folder = fewshot.fashion_draw(tmp_path / "src", 5, 3, tmp_path / "d3")
    ds = load_dataset(str(folder))
    assert ds.name == "fashion-mnist" and ds.classes[0] == "T-shirt/top"  # named as the real dataset
    chosen = fewshot.draw(train_y, 5, 3)
    assert torch.equal(ds.train.x[:, 0], torch.from_numpy(train_x[chosen]))
    assert np.array_equal(np.bincount(ds.train.y.numpy()), np.full(10, 5))
    assert torch.equal(ds.test.x[:, 0], torch.from_numpy(test_x))  # the whole test set, untouched
    test_rows = {bytes(t) for t in test_x.reshape(len(test_x), -1)}
    assert not any(bytes(t) in test_rows for t in ds.train.x.reshape(len(ds.train.x), -1).numpy())
    assert idx.read_idx(folder / "train-labels-idx1-ubyte").tolist() == train_y[chosen].tolist()


def test_folder_draw_links_the_drawn_pictures_and_the_whole_test_folder(tmp_path):
    from PIL import Image

    src = tmp_path / "cifar"
    for split, n in (("train", 6), ("test", 2)):
        for c in ("cat", "dog"):
            (src / split / c).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (i * 30, 0, 0)).save(src / split / c / f"{i:04d}.png")
    folder = fewshot.folder_draw(src, 3, 0, tmp_path / "d0")
    assert folder.name == "cifar10"
    links = sorted((folder / "train").rglob("*.png"))
    assert len(links) == 6 and all(p.is_symlink() and p.resolve().parent.parent == (src / "train").resolve()
                                   for p in links)
    assert all(p.resolve().parent.name == p.parent.name for p in links)  # each in its own class
    again = fewshot.folder_draw(src, 3, 0, tmp_path / "again")
    assert [p.resolve() for p in links] == [p.resolve() for p in sorted((again / "train").rglob("*.png"))]
    ds = load_dataset(str(folder))
    assert len(ds.train) == 6 and len(ds.test) == 4 and ds.name == "cifar10"


def test_quick_refuses_unknown_rows(tmp_path, capsys):
    assert fewshot.main(["--quick", "--rows", "scrach", "--out", str(tmp_path)]) == 2
    assert "unknown row scrach" in capsys.readouterr().err


@pytest.mark.slow
@needs_fashion_mnist
def test_fewshot_quick_runs_the_cli_and_writes_its_table(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "fewshot.py"), "--quick", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    got = json.loads((tmp_path / "fewshot.json").read_text())
    (row,) = got["results"]
    assert row["row"] == "scratch" and row["ok"] and len(row["runs"]) == 2
    assert all(0.0 < r["test_accuracy"] <= 1.0 and r["seconds"] > 0 for r in row["runs"])
    assert "| Fashion-MNIST | from scratch" in (tmp_path / "fewshot.md").read_text()
