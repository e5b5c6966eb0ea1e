"""One set of dataset rules on every path: ignored entries, empty classes, small datasets' splits,
and show reporting unreadable files as train does. Every input is made here."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from minivision.config import TrainConfig
from minivision.data.dataset import Dataset, Split
from minivision.data.folder import read_image_folder
from minivision.data.rules import dataset_messages, drop_empty_classes, is_ignored, is_ignored_path
from minivision.data.split import make_val
from minivision.errors import DataError
from minivision.predict import expand_paths
from minivision.serve.jobs_images import Batch, read_zip
from minivision.show import show_dataset

from .conftest import needs_fashion_mnist


def _png(value: int, size: int = 12) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


# what a user's folder holds beside the pictures: OS and tool droppings, each a valid PNG where it can
# be, so a reader that does not ignore it would use it (and a class "__MACOSX" would appear)
JUNK = ["__MACOSX/bag/._1.png", "__MACOSX/bag/2.png", ".ipynb_checkpoints/3-checkpoint.png",
        "bag/.ipynb_checkpoints/4-checkpoint.png", "bag/.DS_Store", "bag/Thumbs.db", "shoe/desktop.ini",
        "shoe/THUMBS.DB", ".DS_Store", "shoe/._5.png", "$RECYCLE.BIN/6.png", "bag/.hidden.png"]
REAL = ["bag/1.png", "bag/2.png", "bag/deep/3.png", "shoe/1.png", "shoe/2.png"]


def _messy_folder(root: Path) -> Path:
    for i, rel in enumerate(REAL + JUNK):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(_png(i))
    return root


def test_is_ignored_names():
    for name in (".DS_Store", ".ipynb_checkpoints", "__MACOSX", "Thumbs.db", "thumbs.db", "DESKTOP.INI",
                 "desktop.ini", "ehthumbs.db", "._IMG_1.JPG", ".git", "$RECYCLE.BIN"):
        assert is_ignored(name), name
    for name in ("bag", "T恤", "IMG_0001.JPG", "MACOSX", "thumbs", "desktop.png", "Écharpe"):
        assert not is_ignored(name), name
    assert is_ignored_path(["bag", "__MACOSX", "x.png"]) and not is_ignored_path(["bag", "x.png"])


def test_folder_predict_and_zip_upload_take_the_same_pictures(tmp_path):
    root = _messy_folder(tmp_path / "data")
    ds = read_image_folder(root, cache=False)
    assert ds.classes == ["bag", "shoe"] and len(ds.train) == len(REAL)
    assert ds.skipped == []  # Thumbs.db and desktop.ini are ignored, not reported as unreadable
    # predict walks the folder with the same rule
    found = sorted(Path(p).relative_to(root).as_posix() for p in expand_paths([str(root)]))
    assert found == sorted(REAL)
    # the jobs API's zip upload: the same folder zipped (as Finder does, with __MACOSX) gives the same pictures
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for rel in REAL + JUNK:
            z.writestr(rel, (root / rel).read_bytes())
    batch = Batch()
    read_zip(io.BytesIO(buf.getvalue()), "gray", 1 << 26, batch)
    assert batch.skipped == [] and sorted(label for label, _ in batch.items) == ["bag"] * 3 + ["shoe"] * 2


def _dataset(counts: list[int], test: list[int] | None = None) -> Dataset:
    def split(per_class):
        y = torch.tensor([c for c, n in enumerate(per_class) for _ in range(n)], dtype=torch.int64)
        return Split(torch.zeros(len(y), 1, 8, 8, dtype=torch.uint8), y)
    return Dataset("d", [f"c{i}" for i in range(len(counts))], split(counts),
                   test=split(test) if test is not None else None)


def test_an_empty_class_is_left_out_with_a_note():
    ds, notes = drop_empty_classes(_dataset([3, 0, 2, 0]))
    assert ds.classes == ["c0", "c2"] and ds.train.y.tolist() == [0, 0, 0, 1, 1]
    assert len(notes) == 1 and "'c1', 'c3'" in notes[0] and "left out" in notes[0]
    # a class with pictures only in test/ is kept (the union of the splits' classes)
    ds, notes = drop_empty_classes(_dataset([3, 0, 2], test=[1, 1, 0]))
    assert ds.classes == ["c0", "c1", "c2"] and notes == []
    with pytest.raises(DataError, match="at least two classes"):
        drop_empty_classes(_dataset([3, 0, 0]))


def test_an_empty_class_folder_is_left_out_as_a_csv_label_that_is_not_there(tmp_path):
    root = tmp_path / "data"
    for rel in ("bag/1.png", "shoe/1.png", "shoe/2.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(_png(len(rel)))
    (root / "coat").mkdir()  # made, never filled
    (root / "hat").mkdir()
    (root / "hat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a picture")  # nothing readable
    ds = read_image_folder(root, cache=False)
    assert ds.classes == ["bag", "shoe"] and ds.train.y.tolist() == [0, 1, 1]
    assert "'coat', 'hat'" in ds.notes[0]
    assert [Path(p).name for p, _ in ds.skipped] == ["broken.png"]


def test_small_datasets_get_a_smaller_split_or_none_with_a_note():
    # one picture per class: nothing to validate on, trained on all of them
    ds = make_val(_dataset([1, 1, 1]), val_split=0.1, val_first=None, seed=0)
    assert ds.val is None and len(ds.train) == 3 and "no validation split" in ds.notes[0]
    # a class with one picture keeps it; the others give one each
    ds = make_val(_dataset([1, 2, 5]), val_split=0.1, val_first=None, seed=0)
    assert len(ds.val) == 2 and ds.val.y.tolist() == [1, 2] and "single training image" in ds.notes[0]
    # a recipe's first 5,000 on 40 images: a stratified 10% instead
    ds = make_val(_dataset([20, 20]), val_split=None, val_first=5000, seed=0)
    assert sorted(ds.val.y.tolist()) == [0, 0, 1, 1] and len(ds.train) == 36 and "stratified 10%" in ds.notes[0]
    # big enough: exactly as asked, no note
    ds = make_val(_dataset([50, 50]), val_split=None, val_first=30, seed=0)
    assert len(ds.val) == 30 and ds.notes == []


def test_a_folder_with_one_picture_per_class_trains(tmp_path):
    from minivision.train import fit

    root = tmp_path / "data"
    for c in ("a", "b", "c"):
        (root / c).mkdir(parents=True)
        (root / c / "1.png").write_bytes(_png(ord(c), 28))
    lines: list[str] = []
    r = fit(TrainConfig(data=str(root), model="mvnet-t", epochs=2, out=str(tmp_path / "runs")),
            progress=False, log=lines.append)
    assert len(r.history) == 2 and (r.run_dir / "model.safetensors").is_file()
    assert any("no validation split" in line for line in lines)


def test_show_reports_unreadable_files_as_train_does(tmp_path):
    root = _messy_folder(tmp_path / "data")
    (root / "shoe" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    lines: list[str] = []
    out = show_dataset(str(root), out=tmp_path / "runs", log=lines.append)
    ds = out["dataset"]
    expected = dataset_messages(ds)
    assert expected and expected[-1].startswith("skipped 1 unreadable file(s)") and "broken.jpg" in expected[-1]
    assert lines[:len(expected)] == expected  # the very line train prints
    assert (out["folder"] / "skipped.txt").read_text().startswith(str(root / "shoe" / "broken.jpg") + "\t")


@needs_fashion_mnist
def test_real_pictures_in_a_messy_folder_with_names_in_every_script(tmp_path):
    """Fashion-MNIST pictures in class folders named in five scripts, beside the junk a zip from a Mac
    or a Windows share holds: the reader, predict and the zip upload take the same pictures; a one-epoch
    run's report is drawn with no missing-glyph warning and names every class."""
    import warnings

    from minivision.data import load_dataset
    from minivision.train import fit

    names = ["T恤", "ズボン", "حقيبة", "Écharpe", "외투"]
    ds = load_dataset("fashion-mnist")
    root = tmp_path / "data"
    for label, name in enumerate(names):
        idx = torch.nonzero(ds.train.y == label).flatten()[:12]
        for i in idx.tolist():
            (root / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(ds.train.x[i, 0].numpy()).save(root / name / f"{i}.png")
        (root / name / "Thumbs.db").write_bytes(b"\0")
        (root / "__MACOSX" / name).mkdir(parents=True, exist_ok=True)
        (root / "__MACOSX" / name / f"._{int(idx[0])}.png").write_bytes(b"\0\5\26\7")
    (root / ".DS_Store").write_bytes(b"\0")
    read = read_image_folder(root, cache=False)
    assert sorted(read.classes) == sorted(names) and len(read.train) == 60 and read.skipped == []
    assert len(expand_paths([str(root)])) == 60
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = fit(TrainConfig(data=str(root), model="mvnet-t", epochs=1, out=str(tmp_path / "runs")),
                progress=False, log=lambda m: None)
    assert not [str(w.message) for w in caught if "missing from" in str(w.message)]
    page = (r.run_dir / "report.html").read_text(encoding="utf-8")
    assert all(name in page for name in names)
