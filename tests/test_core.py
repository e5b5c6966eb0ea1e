"""Config resolution, validation splits, augmentation, atomic files: the pieces under the fit loop."""

from __future__ import annotations

import os
import re

import pytest
import torch

from minivision.config import TrainConfig, resolve
from minivision.data.augment import Augment
from minivision.data.split import make_val, stratified_indices
from minivision.errors import MinivisionError
from minivision.fileio import atomic_path, new_run_dir, write_text
from minivision.preprocess import Preprocess
from minivision.train import lr_at

from .conftest import synthetic_dataset


def test_resolve_takes_model_defaults_then_global():
    cfg = resolve(TrainConfig(model="mlp"), {"optimizer": "sgd", "lr": 0.01, "batch_size": 32, "epochs": 30,
                                             "val_first": 5000})
    assert (cfg.optimizer, cfg.lr, cfg.batch_size, cfg.epochs) == ("sgd", 0.01, 32, 30)
    assert cfg.val_first == 5000 and cfg.val_split is None
    assert cfg.label_smoothing == 0.0 and cfg.schedule == "constant"


def test_resolve_explicit_flags_win():
    d = {"steps": 1000, "val_first": 5000, "lr": 0.005}
    cfg = resolve(TrainConfig(epochs=2, val_split=0.1, lr=0.1), d)
    assert cfg.epochs == 2 and cfg.steps is None
    assert cfg.val_split == 0.1 and cfg.val_first is None
    assert cfg.lr == 0.1
    cfg = resolve(TrainConfig(), d)
    assert cfg.steps == 1000 and cfg.epochs is None


@pytest.mark.parametrize("field,value,needle", [
    ("optimizer", "rmsprop", "--optimizer"), ("lr", -1.0, "--lr"), ("batch_size", 0, "--batch-size"),
    ("val_split", 1.5, "--val-split"), ("name", "a/b", "--name"), ("label_smoothing", 1.0, "--label-smoothing"),
])
def test_resolve_rejects_bad_values(field, value, needle):
    with pytest.raises(MinivisionError) as e:
        resolve(TrainConfig(**{field: value}), {})
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_stratified_split_is_seeded_and_balanced():
    y = torch.arange(1000) % 10
    tr, va = stratified_indices(y, 0.2, seed=3)
    assert len(va) == 200 and len(tr) == 800
    assert torch.bincount(y[va]).tolist() == [20] * 10
    assert set(tr.tolist()).isdisjoint(va.tolist())
    assert torch.equal(va, stratified_indices(y, 0.2, seed=3)[1])
    assert not torch.equal(va, stratified_indices(y, 0.2, seed=4)[1])


def test_val_first_and_val_split_leave_test_alone():
    ds = synthetic_dataset(100, 20)
    first = make_val(ds, val_split=None, val_first=30, seed=0)
    assert torch.equal(first.val.x, ds.train.x[:30]) and len(first.train) == 70
    assert first.test is ds.test
    split = make_val(ds, val_split=0.25, val_first=None, seed=0)
    assert len(split.val) == 25 and split.test is ds.test
    small = make_val(ds, val_split=None, val_first=100, seed=0)  # more than half: a stratified 10% instead
    assert len(small.val) == 10 and len(small.train) == 90 and "stratified 10%" in small.notes[0]


def test_augment_parse_and_errors():
    a = Augment.parse("flip,shift=3,rotate=15")
    assert (a.flip, a.shift, a.rotate) == (0.5, 3, 15.0) and bool(a)
    assert not Augment.parse("") and not Augment.parse("none")
    with pytest.raises(MinivisionError, match="did you mean 'rotate'"):
        Augment.parse("rotat=5")
    with pytest.raises(MinivisionError, match="out of range"):
        Augment.parse("shift=99")
    with pytest.raises(MinivisionError, match="not a number"):
        Augment.parse("zoom=big")


def test_augment_is_batched_seeded_and_shape_preserving():
    x = torch.rand(64, 1, 28, 28)
    aug = Augment.parse("flip,shift=2,rotate=10,zoom=0.1,erase=0.5")
    a = aug(x, torch.Generator().manual_seed(0))
    b = aug(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, x)


def test_shift_moves_pixels_by_whole_steps():
    x = torch.zeros(200, 1, 9, 9)
    x[:, :, 4, 4] = 1.0
    out = Augment(shift=2)(x, torch.Generator().manual_seed(1))
    pos = out.flatten(1).argmax(1)
    rows, cols = pos // 9, pos % 9
    assert out.sum().item() == 200  # nothing lost, nothing smeared
    assert set(rows.tolist()) == {2, 3, 4, 5, 6} and set(cols.tolist()) == {2, 3, 4, 5, 6}


def test_flip_is_exact_mirror():
    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(50, 1, 1, 1)
    out = Augment(flip=1.0)(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, x.flip(3))


def test_lr_schedules():
    assert lr_at(0, 100, 0.1, "constant") == 0.1
    assert lr_at(0, 100, 0.1, "cosine") == pytest.approx(0.1)
    assert lr_at(99, 100, 0.1, "cosine") == pytest.approx(0.0, abs=1e-12)
    peak = max(lr_at(s, 100, 0.1, "onecycle") for s in range(100))
    assert peak == pytest.approx(0.1, rel=0.02)
    assert lr_at(0, 100, 0.1, "onecycle") < 0.02 and lr_at(99, 100, 0.1, "onecycle") == pytest.approx(0.0, abs=1e-12)


def test_preprocess_round_trip_and_standardize():
    x = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    pre = Preprocess.fit(x, "standard")
    out = pre(x)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert abs(out.mean().item()) < 0.05 and abs(out.std().item() - 1) < 0.05
    assert Preprocess.from_dict(pre.to_dict()) == pre
    unit = Preprocess.fit(x, "unit")
    assert torch.allclose(unit(x), x.float() / 255)


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    p = tmp_path / "f.txt"
    write_text(p, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert p.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_run_dirs_never_reused(tmp_path):
    dirs = [new_run_dir(tmp_path, "train") for _ in range(3)]
    assert [d.name for d in dirs] == ["train", "train2", "train3"]


@pytest.mark.parametrize("k", [3, 12])
def test_confusion_matrix_printout_has_one_column_per_class_under_its_number(k):
    from minivision.evaluate import format_metrics

    classes = ["T-shirt/top", "Ankle boot", "Bag"] + [f"c{i}" for i in range(3, k)]
    confusion = [[(100 * i + j) if i != j else 12345 for j in range(k)] for i in range(k)]
    text = format_metrics({"accuracy": 0.5, "loss": 1.0, "n": 10, "confusion": confusion}, classes, "run")
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("confusion matrix"))
    header, rows = lines[at + 1], lines[at + 2:at + 2 + k]
    assert header.split() == [str(j) for j in range(k)]
    for i, (name, line) in enumerate(zip(classes, rows, strict=True)):
        label = f"{i} {name}"
        assert line.split()[:len(label.split())] == label.split()
        cells = line.split()[len(label.split()):]
        assert cells == [str(v) for v in confusion[i]], line  # no trailing extra column
        assert len(line) == len(header)  # each number right-aligned under its column's number
        ends = [m.end() for m in re.finditer(r"\d+", header)]
        assert [line[e - 1] for e in ends] == [str(v)[-1] for v in confusion[i]]
