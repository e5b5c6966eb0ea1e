"""Image-folder datasets: layouts, skipped files, channels, sizes and the decoded-array cache."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from minivision.data import folder, load_dataset
from minivision.data.folder import read_image_folder
from minivision.data.sources import user_cache_dir
from minivision.errors import DataError


def put(path, value: int = 128, size=(8, 8), mode: str = "L", fmt: str = "PNG", color=None) -> None:
    """Write a flat image; ``color`` (r, g, b) makes a colour one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fill = color or (value if mode == "L" else (value,) * 3)
    img = Image.new("RGB" if color else mode, size, fill)
    img.save(path, fmt)


def one_line_naming(excinfo: pytest.ExceptionInfo, name: object) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and str(name) in msg, msg
    return msg


def cache_files():
    base = user_cache_dir() / "folders"
    return sorted(base.iterdir()) if base.is_dir() else []


def test_class_layout_goes_to_train(tmp_path):
    for i in range(3):
        put(tmp_path / "dog" / f"{i}.png", 10 * i)
        put(tmp_path / "cat" / f"{i}.png", 100 + i)
    ds = read_image_folder(tmp_path)
    assert ds.classes == ["cat", "dog"]
    assert ds.train.x.shape == (6, 1, 8, 8) and ds.val is None and ds.test is None
    assert ds.train.y.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.train.x[0, 0, 0, 0] == 100 and ds.name == tmp_path.name and ds.skipped == []


def test_split_layout_with_union_of_classes(tmp_path):
    put(tmp_path / "train" / "b" / "1.png")
    put(tmp_path / "train" / "c" / "1.png")
    put(tmp_path / "valid" / "c" / "1.png")
    put(tmp_path / "test" / "a" / "1.png")  # a class only the test split has
    ds = read_image_folder(tmp_path)
    assert ds.classes == ["a", "b", "c"]
    assert ds.train.y.tolist() == [1, 2] and ds.val.y.tolist() == [2] and ds.test.y.tolist() == [0]
    assert any("test/ has class folder a with no counterpart in train/" in n for n in ds.notes), ds.notes


@pytest.mark.parametrize("cache", [False, True])
def test_split_class_folders_spelled_another_way_are_trains_classes(tmp_path, cache):
    # train/Bag + test/bag must not make a class with no training pictures
    put(tmp_path / "train" / "Bag" / "1.png", 10)
    put(tmp_path / "train" / "Ankle boot" / "1.png", 20)
    put(tmp_path / "train" / "T-shirt top" / "1.png", 30)
    put(tmp_path / "test" / "bag" / "1.png", 40)
    put(tmp_path / "test" / "Bag" / "2.png", 45)
    put(tmp_path / "test" / "ankle_boot" / "1.png", 50)
    put(tmp_path / "val" / "t-shirt_top" / "1.png", 60)
    for _ in range(2 if cache else 1):  # the second read comes from the cache: same classes, same notes
        ds = read_image_folder(tmp_path, cache=cache)
        assert ds.classes == ["Ankle boot", "Bag", "T-shirt top"]
        pairs = zip(ds.test.y.tolist(), ds.test.x[:, 0, 0, 0].tolist(), strict=True)
        assert sorted(pairs) == [(0, 50), (1, 40), (1, 45)]
        assert ds.val.y.tolist() == [2]
        assert any("test/bag -> train/Bag" in n and "test/ankle_boot -> train/Ankle boot" in n for n in ds.notes)
        assert any("val/t-shirt_top -> train/T-shirt top" in n for n in ds.notes), ds.notes
        assert not any("no counterpart" in n for n in ds.notes)


def test_hidden_and_non_image_entries_are_ignored(tmp_path):
    put(tmp_path / "a" / "1.png")
    put(tmp_path / "a" / ".hidden.png")
    put(tmp_path / "a" / ".thumbs" / "t.png")
    put(tmp_path / ".git" / "x.png")
    (tmp_path / "a" / "notes.txt").write_text("not a picture")
    (tmp_path / "a" / ".DS_Store").write_bytes(b"\0\0")
    put(tmp_path / "b" / "nested" / "2.png")  # sub-folders of a class count
    ds = read_image_folder(tmp_path)
    assert ds.classes == ["a", "b"] and len(ds.train) == 2 and ds.skipped == []


def test_bad_files_are_skipped_and_listed(tmp_path):
    put(tmp_path / "a" / "good.png")
    put(tmp_path / "b" / "good.jpg", fmt="JPEG")
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    data = (tmp_path / "b" / "good.jpg").read_bytes()
    (tmp_path / "b" / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "b" / "doc.svg").write_text("<svg/>")  # not an image extension: ignored, not listed
    put(tmp_path / "stray.png")  # not inside a class folder
    ds = read_image_folder(tmp_path)
    assert len(ds.train) == 2
    reasons = dict(ds.skipped)
    assert set(reasons) == {str(tmp_path / "a" / "broken.png"), str(tmp_path / "b" / "cut.jpg"),
                            str(tmp_path / "stray.png")}
    assert all(reason and "\n" not in reason for reason in reasons.values())


def test_gray_detection(tmp_path):
    put(tmp_path / "a" / "1.png", 50)
    put(tmp_path / "b" / "2.png", 90, mode="RGB")  # grey stored as RGB
    assert read_image_folder(tmp_path).channels == 1
    put(tmp_path / "b" / "3.png", color=(200, 10, 10))
    ds = read_image_folder(tmp_path)
    assert ds.channels == 3
    assert ds.train.x[0, :, 0, 0].tolist() == [50, 50, 50]  # grey images expanded to 3 channels
    assert ds.train.x[2, :, 0, 0].tolist() == [200, 10, 10]


def test_mixed_shapes_make_a_square_frame_and_keep_their_aspect(tmp_path):
    """Three 12 x 10 pictures and one 40 x 40 (75% share a shape, under 90%): a 12 x 12 frame (the median
    longer side), the 12 x 10 ones letterboxed (a grey row above and below), the square one shrunk whole."""
    for i in range(3):
        put(tmp_path / "a" / f"{i}.png", size=(12, 10))
    put(tmp_path / "b" / "big.png", 200, size=(40, 40))
    ds = read_image_folder(tmp_path)
    assert ds.image_size == (12, 12) and ds.conversion.fit == "letterbox"
    assert ds.train.x[0, 0, 0].tolist() == [114] * 12 and ds.train.x[0, 0, -1].tolist() == [114] * 12
    assert ds.train.x[0, 0, 1:-1].unique().tolist() == [128]
    assert ds.train.x[3].float().mean().item() == pytest.approx(200, abs=1)
    squashed = read_image_folder(tmp_path, fit="squash")  # another setting: another cache entry
    assert squashed.image_size == (12, 12) and squashed.train.x[0].unique().tolist() == [128]


@pytest.mark.parametrize("make, expect", [
    (lambda root: None, "no class folders"),
    (lambda root: (root / "a").mkdir(), "class folder has no images"),
    (lambda root: ((root / "a").mkdir(), (root / "a" / "x.txt").write_text("x")),
     "class folder has no images"),
    (lambda root: (root / "a").mkdir() or (root / "a" / "x.png").write_bytes(b"junk"), "no readable images"),
    (lambda root: (put(root / "train" / "a" / "1.png"), put(root / "extra" / "1.png")),
     "mixes split folders"),
    (lambda root: put(root / "test" / "a" / "1.png") or put(root / "val" / "a" / "1.png"), "no train/"),
])
def test_folder_errors(tmp_path, make, expect):
    root = tmp_path / "data"
    root.mkdir()
    make(root)
    with pytest.raises(DataError) as e:
        read_image_folder(root)
    assert expect in one_line_naming(e, root)


def test_missing_folder(tmp_path):
    with pytest.raises(DataError) as e:
        read_image_folder(tmp_path / "nowhere")
    one_line_naming(e, "nowhere")


def test_cache_hit_miss_and_corrupt(tmp_path, monkeypatch):
    put(tmp_path / "a" / "1.png", 10)
    put(tmp_path / "b" / "1.png", 20)
    (tmp_path / "b" / "bad.png").write_bytes(b"junk")
    first = read_image_folder(tmp_path)
    files = cache_files()
    assert [f.suffix for f in files] == [".json", ".safetensors"]

    calls = []
    real_build = folder._build
    monkeypatch.setattr(folder, "_build", lambda *a: calls.append(1) or real_build(*a))
    again = read_image_folder(tmp_path)  # hit: nothing decoded
    assert calls == []
    assert (again.train.x == first.train.x).all() and again.classes == first.classes
    assert again.skipped == first.skipped and again.source == first.source

    put(tmp_path / "b" / "2.png", 30)  # a new file: miss, and the stale entry is replaced
    changed = read_image_folder(tmp_path)
    assert calls == [1] and len(changed.train) == 3 and len(cache_files()) == 2

    os.utime(tmp_path / "a" / "1.png", ns=(1, 1))  # same name and size, new mtime: miss
    read_image_folder(tmp_path)
    assert calls == [1, 1]

    tensors = next(f for f in cache_files() if f.suffix == ".safetensors")
    tensors.write_bytes(tensors.read_bytes()[:100])  # damaged arrays, intact JSON: ignored, rebuilt
    rebuilt = read_image_folder(tmp_path)
    assert calls == [1, 1, 1] and len(rebuilt.train) == 3
    meta = json.loads(next(f for f in cache_files() if f.suffix == ".json").read_text())
    assert meta["classes"] == ["a", "b"]

    read_image_folder(tmp_path, cache=False)
    assert calls == [1, 1, 1, 1]


def test_process_pool_gives_same_result(tmp_path, monkeypatch):
    for i in range(12):
        put(tmp_path / f"c{i % 3}" / f"{i}.png", 20 * i, color=(i, 2 * i, 3 * i) if i % 2 else None)
    (tmp_path / "c0" / "bad.png").write_bytes(b"junk")
    serial = read_image_folder(tmp_path, cache=False)
    monkeypatch.setattr(folder, "_POOL_MIN_FILES", 1)
    monkeypatch.setattr(folder, "_CHUNK", 5)
    monkeypatch.setattr(folder, "_workers", lambda: 2)
    pooled = read_image_folder(tmp_path, cache=False)
    assert (pooled.train.x == serial.train.x).all() and (pooled.train.y == serial.train.y).all()
    assert pooled.skipped == serial.skipped and len(pooled.skipped) == 1


def test_load_dataset_dispatches_to_folder(tmp_path):
    put(tmp_path / "imgs" / "x" / "1.png")
    put(tmp_path / "imgs" / "y" / "1.png")
    put(tmp_path / "held" / "y" / "1.png", 7)
    ds = load_dataset(str(tmp_path / "imgs"), test_data=tmp_path / "held")
    assert ds.classes == ["x", "y"] and ds.test.y.tolist() == [1]
    assert np.asarray(ds.test.x)[0, 0, 0, 0] == 7


def _old_folder_resize(arr: np.ndarray, size: tuple[int, int], channels: int) -> np.ndarray:
    """The folder reader's resize before photo.PictureConversion (kept here as the reference): LANCZOS in
    the picture's own mode, then its first channel or three copies of it."""
    if arr.shape[:2] != size:
        arr = np.asarray(Image.fromarray(arr).resize((size[1], size[0]), Image.Resampling.LANCZOS))
    if channels == 1:
        return arr if arr.ndim == 2 else arr[..., 0]
    return arr if arr.ndim == 3 else np.repeat(arr[..., None], 3, axis=2)


@pytest.mark.parametrize("colour", [False, True])
@pytest.mark.parametrize("fit", ["squash", "letterbox", "crop"])
def test_folder_pixels_are_the_conversion_of_each_file(tmp_path, colour, fit):
    """Every picture of a folder dataset is ``PictureConversion(size, channels, fit=fit).convert(open_image(file))``,
    the conversion predict and serve apply to a photo for a resize model; squashed, the same pixels as the
    folder reader made before it went through that conversion."""
    from minivision.data.images import open_image
    from minivision.photo import PictureConversion

    rng = np.random.default_rng(3)
    for i in range(9):  # most 20 x 24; others larger, smaller, other aspect; grey as L, as RGB, with alpha
        h, w = [(20, 24), (20, 24), (20, 24), (20, 24), (57, 31), (9, 13), (20, 24), (40, 48), (33, 33)][i]
        grey = rng.integers(0, 256, (h, w), dtype=np.uint8)
        if colour and i % 2:
            img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        elif i % 3 == 1:
            img = Image.fromarray(np.stack([grey] * 3, 2))  # grey pixels saved as RGB
        else:
            img = Image.fromarray(grey)
        if i >= 7:
            img = img.convert("LA" if img.mode == "L" else "RGBA")  # opaque alpha: decoded to L / RGB
        folder_ = tmp_path / ("a" if i % 2 else "b")
        folder_.mkdir(exist_ok=True)
        img.save(folder_ / f"{i}.png")
    ds = read_image_folder(tmp_path, cache=False, fit=fit)
    conversion = PictureConversion((24, 24), 3 if colour else 1, fit=fit)  # 6 of 9 share a shape: square
    assert ds.conversion == conversion and ds.train.x.shape == (9, conversion.channels, 24, 24)
    files = sorted(tmp_path.glob("a/*.png")) + sorted(tmp_path.glob("b/*.png"))
    for x, path in zip(ds.train.x.numpy(), files, strict=True):
        decoded = open_image(path)
        assert np.array_equal(x, conversion.convert(decoded)), path
        if fit == "squash":
            before = _old_folder_resize(np.asarray(decoded), (24, 24), conversion.channels)
            assert np.array_equal(x, before.reshape(24, 24, -1).transpose(2, 0, 1)), path


def test_classes_json_names_the_class_folders(tmp_path):
    for k, name in enumerate(("000", "001")):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.fromarray(np.full((8, 8), 40 + 100 * k + i, np.uint8)).save(tmp_path / name / f"{i}.png")
    assert read_image_folder(tmp_path).classes == ["000", "001"]
    (tmp_path / "classes.json").write_text(json.dumps({"000": "T-shirt/top", "001": "ankle boot"}))
    assert read_image_folder(tmp_path).classes == ["T-shirt/top", "ankle boot"]  # also from the cache
    assert read_image_folder(tmp_path, cache=False).classes == ["T-shirt/top", "ankle boot"]
    for bad, words in (({"002": "x"}, "no class folder named '002'"), ({"000": "a", "001": "a"}, "same name"),
                       (["a"], "expected an object")):
        (tmp_path / "classes.json").write_text(json.dumps(bad))
        with pytest.raises(DataError, match=words):
            read_image_folder(tmp_path)


def test_evaluate_scores_the_validation_split_of_a_folder_without_test(tmp_path, capsys):
    """As the run's report did: a folder with no test/ has only its validation split to score."""
    from minivision.cli import main
    from minivision.config import TrainConfig
    from minivision.train import fit

    for k, name in enumerate(("a", "b")):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(np.full((8, 8), 30 + 150 * k + i, np.uint8)).save(tmp_path / "data" / name / f"{i}.png")
    run = fit(TrainConfig(data=str(tmp_path / "data"), model="cnn1", epochs=1, out=str(tmp_path)), progress=False,
              log=lambda m: None).run_dir
    assert main(["evaluate", str(run), "--json"]) == 0
    out = capsys.readouterr()
    result = json.loads(out.out)
    assert result["split"] == "val" and result["n"] == 4 and "no test split" in out.err  # 20% of 2 x 12
    assert main(["evaluate", str(run), "--split", "test"]) == 2  # asked for explicitly: still an error


def test_train_on_a_folder_without_test_prints_its_validation_accuracy(tmp_path, capsys):
    from minivision.cli import main

    for k, name in enumerate(("a", "b")):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(np.full((8, 8), 30 + 150 * k + i, np.uint8)).save(tmp_path / "data" / name / f"{i}.png")
    assert main(["train", "--data", str(tmp_path / "data"), "--model", "cnn1", "--epochs", "2",
                 "--out", str(tmp_path / "runs")]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    rows = (tmp_path / "runs" / "train" / "results.csv").read_text().splitlines()
    header = rows[0].split(",")
    accs = [float(r.split(",")[header.index("val_accuracy")]) for r in rows[1:]]
    assert last.startswith(f"validation accuracy {max(accs):.2%} (best epoch ") and "no test split" in last, last
