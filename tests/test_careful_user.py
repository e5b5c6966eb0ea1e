"""Details a careful user checks: settings recorded as used (a val/ folder, fractional shifts, the
augmentation in model.json), flag suggestions from the command used, IDX files in the forms people have
them in --data-dir, and flip TTA on a model trained without flips."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from minivision.cli import main
from minivision.data import load_dataset, sources
from minivision.data.augment import Augment
from minivision.errors import DataError, MinivisionError, Note
from minivision.evaluate import NO_FLIPS_NOTE, format_metrics, trained_with_flips, tta_notes

from .conftest import needs_fashion_mnist, synthetic_images, write_pixel_csv
from .test_data_sources import IDX_NAMES, closed_port_url, server, synthetic_idx  # noqa: F401 (fixture)


def one_error_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# ----------------------------------------------------------------------------- suggestions from the command used

def test_an_unknown_flag_is_matched_against_the_command_used_only(capsys):
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "RUN", "--out", "x"])  # --out is a flag of other commands, not of evaluate
    line = one_error_line(capsys)
    assert e.value.code == 2 and "--out x" in line and "did you mean" not in line
    assert line.startswith("error: minivision evaluate: unrecognized arguments")


def test_every_unknown_flag_is_named_with_a_hint_where_one_is_close(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--epohcs", "2", "--zzz", "--vla-split=0.1"])
    line = one_error_line(capsys)
    assert "--epohcs (did you mean --epochs?)" in line
    assert "--zzz" in line  # no close match: still named
    assert "--vla-split=0.1 (did you mean --val-split?)" in line
    with pytest.raises(SystemExit):
        main(["predict", "RUN", "x.png", "--tpo-k", "3"])
    assert "--tpo-k (did you mean --top-k?)" in one_error_line(capsys)


# ----------------------------------------------------------------------------- --augment shift

def test_shift_takes_whole_pixels_or_a_fraction_of_the_side():
    assert Augment.parse("shift=2").shift_pixels(28, 28) == (2, 2)
    frac = Augment.parse("shift=0.1")
    assert frac.spec() == "shift=0.1" and Augment.parse(frac.spec()) == frac  # args.yaml round-trips
    assert frac.shift_pixels(28, 28) == (3, 3) and frac.shift_pixels(32, 64) == (3, 6)
    with pytest.raises(MinivisionError) as e:
        Augment.parse("shift=2.5")  # was cut to 2 without a word
    assert "whole pixels" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(MinivisionError, match="at most 0.5"):
        Augment.parse("shift=0.7")


def test_a_fractional_shift_moves_pictures_by_that_share_of_each_side():
    x = torch.zeros(400, 1, 8, 16)
    x[:, :, 4, 8] = 1.0  # one lit pixel
    out = Augment.parse("shift=0.25")(x, torch.Generator().manual_seed(0))
    at = out.flatten(1).argmax(1)
    dy, dx = at // 16 - 4, at % 16 - 8
    assert out.sum(dim=(1, 2, 3)).eq(1).all()  # moved, never cut off at these sizes
    assert dy.abs().max() == 2 and dx.abs().max() == 4  # 0.25 x 8 rows, 0.25 x 16 columns


# ----------------------------------------------------------------------------- a small run of each kind

def _folder(root: Path) -> Path:
    """train/ val/ test/ folders of 4 classes of 28 x 28 pictures (synthetic_images: a lit cell per class)."""
    x, y = synthetic_images(260, classes=4)
    for split, part in (("train", slice(0, 160)), ("val", slice(160, 220)), ("test", slice(220, 260))):
        for i in range(part.start, part.stop):
            d = root / split / f"c{y[i]}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i, 0]).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(run on a folder with val/, trained without augmentation; run on a CSV, trained with flips and a
    fractional shift; the folder; a picture): one epoch of mlp each."""
    tmp = tmp_path_factory.mktemp("careful")
    folder = _folder(tmp / "pictures")
    x, y = synthetic_images(200, classes=4, seed=1)
    write_pixel_csv(tmp / "train.csv", x[:160, 0], y[:160])
    write_pixel_csv(tmp / "test.csv", x[160:, 0], y[160:])
    common = ["--model", "mlp", "--epochs", "1", "--batch-size", "32", "--out", str(tmp / "runs")]
    assert main(["train", "--data", str(folder), *common, "--name", "plain"]) == 0
    assert main(["train", "--data", str(tmp / "train.csv"), "--test-data", str(tmp / "test.csv"), *common,
                 "--augment", "flip,shift=0.1", "--name", "flipped"]) == 0
    picture = tmp / "one.png"
    Image.fromarray(x[0, 0]).save(picture)
    return tmp / "runs" / "plain", tmp / "runs" / "flipped", folder, picture


def test_a_val_folder_is_recorded_as_the_validation_split(runs):
    plain = runs[0]
    args_text = (plain / "args.yaml").read_text()
    args = yaml.safe_load(args_text)
    assert args["val_split"] is None and args["val_first"] is None  # was val_split: 0.1 (mlp's recipe)
    assert args_text.startswith("# validation: the data's own val/ folder (60 pictures)")
    meta = json.loads((plain / "model.json").read_text())
    assert meta["dataset"]["val_split"] is None and "val/ folder" in meta["dataset"]["validation"]


@pytest.mark.parametrize("flag", [["--val-split", "0.2"], ["--val-first", "10"]])
def test_a_validation_rule_with_a_val_folder_is_refused(runs, flag, capsys, tmp_path):
    folder = runs[2]
    assert main(["train", "--data", str(folder), "--model", "mlp", "--epochs", "1", *flag,
                 "--out", str(tmp_path / "runs")]) == 2
    line = one_error_line(capsys)
    assert f"{flag[0]} {flag[1]}" in line and "own val/ folder (60 pictures)" in line
    assert not (tmp_path / "runs").exists()  # refused before a run folder was made


def test_model_json_records_the_augmentation(runs):
    plain, flipped = (json.loads((r / "model.json").read_text()) for r in runs[:2])
    assert plain["augment"] == {"spec": "", "horizontal_flip": False}
    assert flipped["augment"] == {"spec": "flip=0.5,shift=0.1", "horizontal_flip": True}
    assert yaml.safe_load((runs[1] / "args.yaml").read_text())["augment"] == "flip,shift=0.1"  # as given


# ----------------------------------------------------------------------------- flip TTA on a model without flips

def test_evaluate_tta_prints_both_figures_the_difference_and_a_note(runs, capsys):
    plain = runs[0]
    assert main(["evaluate", str(plain), "--tta"]) == 0
    out, err = capsys.readouterr()
    assert f"note: {NO_FLIPS_NOTE}" in err.splitlines()
    assert main(["evaluate", str(plain), "--tta", "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["tta_change"] == pytest.approx(m["tta_accuracy"] - m["accuracy"])
    head = out.splitlines()[:4]
    assert f"accuracy {m['accuracy']:.2%}" in head[0]
    tta_line = next(ln for ln in head if "with flip TTA" in ln)
    assert f"{m['tta_accuracy']:.2%}" in tta_line and f"{100 * m['tta_change']:+.2f} points" in tta_line


def test_predict_tta_says_when_the_model_never_saw_a_flip(runs, capsys):
    plain, flipped, _, picture = runs
    assert main(["predict", str(plain), str(picture), "--tta"]) == 0
    assert f"note: {NO_FLIPS_NOTE}" in capsys.readouterr().err
    assert main(["predict", str(flipped), str(picture), "--tta"]) == 0
    assert "without horizontal flips" not in capsys.readouterr().err


def test_the_python_api_notes_tta_on_a_model_without_flips(runs):
    import minivision as mv

    with pytest.warns(Note, match="trained without horizontal flips"):
        m = mv.load(runs[0]).evaluate(tta=True)
    assert m["tta_change"] == pytest.approx(m["tta_accuracy"] - m["accuracy"])


def test_tta_notes_from_the_record_or_an_older_runs_args(tmp_path):
    assert tta_notes({"augment": {"spec": "", "horizontal_flip": False}}) == [NO_FLIPS_NOTE]
    assert tta_notes({"augment": {"spec": "flip=0.5", "horizontal_flip": True}}) == []
    assert tta_notes({"augment": {"horizontal_flip": True}, "dataset": {"name": "mnist"}}) == [
        "flip TTA mirrors the images; a mirrored digit is another digit"]
    assert trained_with_flips({}) is None and tta_notes({}) == []  # nothing known: nothing said
    (tmp_path / "args.yaml").write_text("augment: shift=2\n")  # a run saved before model.json's record
    assert trained_with_flips({}, tmp_path) is False
    (tmp_path / "args.yaml").write_text("augment: flip=0.5,shift=2\n")
    assert trained_with_flips({}, tmp_path) is True


def test_format_metrics_says_when_tta_lowers_accuracy():
    m = {"accuracy": 0.8126, "loss": 0.5, "n": 10, "tta_accuracy": 0.7432, "tta_loss": 0.7, "tta_change": -0.0694,
         "classes": [], "confusion": [[5, 0], [0, 5]]}
    text = format_metrics(m, ["a", "b"], "run")
    assert "with flip TTA: accuracy 74.32%" in text and "(-6.94 points against 81.26% without)" in text
    assert "lowers the accuracy" in text


# ----------------------------------------------------------------------------- --data-dir: the forms IDX files come in

IDX_SOURCES = ("fashion-mnist", "mnist")


def test_every_idx_source_checks_decompressed_bytes():
    for name in IDX_SOURCES:
        for f in sources.SOURCES[name].files:
            assert f.name.endswith(".gz") and len(f.sha256 or "") == 64, (name, f)
    assert all(len(f.md5 or "") == 32 for f in sources.SOURCES["mnist"].files)  # the published archives' too
    assert set(IDX_SOURCES) == {n for n, s in sources.SOURCES.items() if s.files[0].name.endswith("idx3-ubyte.gz")}


def _point_at(monkeypatch, name: str, raw: dict[str, bytes], mirror: str) -> dict[str, bytes]:
    """The source ``name`` with the synthetic files' digests (MD5 of the .gz as published, sha256 of the
    decompressed bytes, as MNIST has both) and one mirror; returns the .gz bytes."""
    gz = {n: gzip.compress(raw[n], mtime=0) for n in IDX_NAMES}
    files = tuple(sources.RemoteFile(n + ".gz", md5=hashlib.md5(gz[n]).hexdigest(),
                                     sha256=hashlib.sha256(raw[n]).hexdigest()) for n in IDX_NAMES)
    monkeypatch.setitem(sources.SOURCES, name, sources.Source(name, files, (mirror,), sources.SOURCES[name].classes))
    monkeypatch.setattr(sources, "_debian_dirs", lambda source: [])
    return gz


@pytest.mark.parametrize("name", IDX_SOURCES)
@pytest.mark.parametrize("form", ["plain", "dotted", "dotted.gz"])
def test_data_dir_takes_decompressed_and_dotted_files(name, form, monkeypatch, tmp_path):
    raw = synthetic_idx()
    _point_at(monkeypatch, name, raw, closed_port_url())  # nothing may be downloaded
    compressed = form.endswith(".gz")

    def write(n: str, data: bytes) -> None:
        local = n if form == "plain" else n.replace("-idx", ".idx") + (".gz" if compressed else "")
        (tmp_path / local).write_bytes(gzip.compress(data) if compressed else data)

    for n in IDX_NAMES:
        write(n, raw[n])
    ds = load_dataset(name, data_dir=tmp_path)
    assert len(ds.train) == 20 and ds.test.y.tolist() == list(range(10))
    write("t10k-labels-idx1-ubyte", raw["t10k-labels-idx1-ubyte"][:-1] + b"\7")  # valid IDX, not the original
    with pytest.raises(DataError, match="t10k-labels.* sha256 .* does not match"):
        load_dataset(name, data_dir=tmp_path)


def test_a_partial_data_dir_is_completed_by_download(server, monkeypatch, tmp_path):  # noqa: F811
    www, url = server
    raw = synthetic_idx()
    gz = _point_at(monkeypatch, "mnist", raw, url)
    for n in IDX_NAMES:
        (www / f"{n}.gz").write_bytes(gz[n])
    mine = tmp_path / "mine"
    mine.mkdir()
    for n in IDX_NAMES[:2]:  # the training files, decompressed
        (mine / n).write_bytes(raw[n])
    ds = load_dataset("mnist", data_dir=mine)
    assert len(ds.train) == 20 and len(ds.test) == 10
    assert sorted(p.name for p in mine.iterdir()) == sorted([*IDX_NAMES[:2], *(n + ".gz" for n in IDX_NAMES[2:])])


def test_missing_files_in_a_data_dir_are_named_without_suggesting_data_dir(monkeypatch, tmp_path, _isolated_cache):
    raw = synthetic_idx()
    _point_at(monkeypatch, "mnist", raw, closed_port_url())
    cache = _isolated_cache / "datasets" / "mnist"  # another complete copy must not hide the folder given
    cache.mkdir(parents=True)
    for n in IDX_NAMES:
        (cache / n).write_bytes(raw[n])
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "train-images-idx3-ubyte").write_bytes(raw["train-images-idx3-ubyte"])
    with pytest.raises(DataError) as e:
        load_dataset("mnist", data_dir=mine)
    msg = str(e.value)
    assert "\n" not in msg and "pass --data-dir" not in msg
    assert (f"--data-dir {mine} lacks train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
            "t10k-labels-idx1-ubyte[.gz], and the download failed") in msg


def test_an_empty_data_dir_says_which_copy_is_used(monkeypatch, tmp_path, _isolated_cache):
    raw = synthetic_idx()
    _point_at(monkeypatch, "mnist", raw, closed_port_url())
    cache = _isolated_cache / "datasets" / "mnist"
    cache.mkdir(parents=True)
    for n in IDX_NAMES:
        (cache / n).write_bytes(raw[n])
    (tmp_path / "empty").mkdir()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert sources.locate("mnist", tmp_path / "empty") == cache
    notes = [str(w.message) for w in caught if issubclass(w.category, Note)]
    assert notes == [f"--data-dir {tmp_path / 'empty'} holds no mnist files; using the copy in {cache}"]


@needs_fashion_mnist
def test_real_fashion_mnist_decompressed_and_dotted_in_a_data_dir(tmp_path):
    """Debian's copy, its test files decompressed under Kaggle's dotted names: found, and their digests pass."""
    debian = sources.find_local("fashion-mnist")
    for n in IDX_NAMES[:2]:
        shutil.copy(debian / f"{n}.gz", tmp_path / f"{n}.gz")
    for n in IDX_NAMES[2:]:
        (tmp_path / n.replace("-idx", ".idx")).write_bytes(gzip.decompress((debian / f"{n}.gz").read_bytes()))
    ds = sources.load_named("fashion-mnist", tmp_path, test_only=True)
    assert ds.source == str(tmp_path) and len(ds.test) == 10_000
    assert np.bincount(ds.test.y.numpy()).tolist() == [1000] * 10
