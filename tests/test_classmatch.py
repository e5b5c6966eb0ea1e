"""Classes matched by name whenever data other than the training data is scored (classmatch.py), and such
data scored whole (evaluate.scoring_data): through ``minivision evaluate --data``, the Python API and a
model trained through the jobs API (whose classes are in upload order)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import minivision as mv
from minivision.classmatch import align_dataset, match_classes
from minivision.cli import main
from minivision.config import TrainConfig
from minivision.data.dataset import Dataset, Split
from minivision.errors import MinivisionError
from minivision.evaluate import scoring_data
from minivision.inference import predict_logits
from minivision.runfiles import load_model
from minivision.train import fit

from .conftest import needs_fashion_mnist, synthetic_images, write_pixel_csv

MODEL_CLASSES = ["bag", "coat", "sneaker", "trouser"]  # the model's order (a folder's sorted names)


# ----------------------------------------------------------------------------- the rule

def test_same_names_in_another_order_map_by_name():
    m = match_classes(MODEL_CLASSES, ["trouser", "bag", "sneaker", "coat"])
    assert m.index == (3, 0, 2, 1) and not m.is_subset
    assert any("another order" in n for n in m.notes)


def test_identical_names_need_no_note():
    m = match_classes(MODEL_CLASSES, list(MODEL_CLASSES))
    assert m.is_identity and m.notes == ()


def test_names_differing_in_case_or_spacing_match_with_a_note():
    m = match_classes(MODEL_CLASSES, ["Bag", "coat ", "SNEAKER", "trouser"], data_name="eval")
    assert m.index == (0, 1, 2, 3)
    assert len(m.notes) == 1 and "Bag -> bag" in m.notes[0] and "SNEAKER -> sneaker" in m.notes[0]


FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


@pytest.mark.parametrize("folder", ["T-shirt-top", "T-shirt_top", "t shirt top", "T-Shirt__Top", "T-shirt\u2215top",
                                    "ｔ-shirt top"])
def test_separators_and_punctuation_count_as_one_separator(folder):
    # a folder name cannot hold "/": "T-shirt/top" must be reachable from what people write instead
    m = match_classes(FASHION, [folder, "Ankle_boot", "bag"], data_name="eval")
    assert m.index == (0, 9, 8)
    assert f"{folder} -> T-shirt/top" in m.notes[0] and "Ankle_boot -> Ankle boot" in m.notes[0]


def test_names_equal_after_separators_are_still_refused_when_two_become_one():
    with pytest.raises(MinivisionError, match="two classes would both be the model's 'Ankle boot'"):
        match_classes(FASHION, ["Ankle_boot", "ankle-boot"])
    with pytest.raises(MinivisionError, match="a_b"):  # two model classes share the key: not guessed
        match_classes(["a-b", "a b", "c"], ["a_b"])


def test_name_key_is_unicode_normalised_and_keeps_letters_of_any_script():
    from minivision.classmatch import name_key
    assert name_key("Cafe\u0301") == name_key("Café") == "café"
    assert name_key("猫_ねこ") == "猫 ねこ" and name_key("Ärmel-Hemd") == "ärmel hemd"
    assert name_key("---") != name_key("___")  # a name of separators only is never the empty key


def test_a_subset_is_scored_on_its_classes():
    m = match_classes(MODEL_CLASSES, ["Trouser", "bag"])
    assert m.index == (3, 0) and m.present == (0, 3) and m.is_subset
    assert any("2 of the model's 4 classes" in n and "bag, trouser" in n for n in m.notes)


@pytest.mark.parametrize("data, words", [
    (["bags", "coat"], ["bags", "is not among the model's classes"]),
    (["bag", "shoe", "hat"], ["shoe, hat", "are not among"]),
    (["0", "7"], ["7"]),  # numbers past the model's classes: not a position either
])
def test_names_that_do_not_match_are_refused_with_both_lists(data, words):
    with pytest.raises(MinivisionError) as e:
        match_classes(MODEL_CLASSES, data, data_name="eval")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("eval: ")
    assert "the model's: bag, coat, sneaker, trouser" in msg and f"the data's: {', '.join(data)}" in msg
    assert all(w in msg for w in words), msg


def test_two_data_classes_that_become_one_are_refused():
    with pytest.raises(MinivisionError, match="two classes would both be the model's 'bag'"):
        match_classes(MODEL_CLASSES, ["bag", "Bag"])


def test_a_name_two_model_classes_share_by_case_is_not_guessed():
    with pytest.raises(MinivisionError, match="BAG"):
        match_classes(["Bag", "bag", "coat"], ["BAG"])


def test_numbered_data_keeps_positions_unless_the_model_has_those_numbers():
    m = match_classes(MODEL_CLASSES, ["0", "2", "3"])
    assert m.index == (0, 2, 3) and "numbered classes" in m.notes[0] and "2 = sneaker" in m.notes[0]
    m = match_classes(["1", "2", "3"], ["1", "3"])  # a model trained on labels 1..3: matched by name
    assert m.index == (0, 2)


def test_list_lengths_are_capped_in_messages():
    many = [f"c{i}" for i in range(40)]
    with pytest.raises(MinivisionError) as e:
        match_classes(many, ["zz"])
    assert "... (28 more)" in str(e.value)


def test_align_dataset_rewrites_every_split():
    x = torch.zeros(3, 1, 4, 4, dtype=torch.uint8)
    ds = Dataset("d", ["trouser", "Bag"], Split(x, torch.tensor([0, 1, 0])), test=Split(x, torch.tensor([1, 1, 0])))
    out, m = align_dataset(ds, MODEL_CLASSES)
    assert out.classes == MODEL_CLASSES and out.train.y.tolist() == [3, 0, 3] and out.test.y.tolist() == [0, 0, 3]
    assert ds.train.y.tolist() == [0, 1, 0]  # the input is left alone


# ----------------------------------------------------------------------------- a trained model, real commands

@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny cnn1 trained on the synthetic squares with classes named as a folder would name them, and the
    test images (uint8 N x 1 x 28 x 28) with labels in the model's indices."""
    out = tmp_path_factory.mktemp("classmatch")
    x, y = synthetic_images(400, classes=4, seed=3)
    ds = Dataset("squares", list(MODEL_CLASSES), Split(torch.from_numpy(x[:320]), torch.from_numpy(y[:320])),
                 test=Split(torch.from_numpy(x[320:]), torch.from_numpy(y[320:])))
    run = fit(TrainConfig(model="cnn1", epochs=3, batch_size=32, out=str(out)), dataset=ds, log=lambda m: None,
              progress=False).run_dir
    lm = load_model(run)
    pred = predict_logits(lm.model, lm.preprocess, ds.test.x, device=torch.device("cpu")).argmax(1)
    return {"run": run, "x": x[320:], "y": y[320:], "pred": pred.numpy(), "dir": out}


def write_folder(root: Path, x: np.ndarray, y: np.ndarray, names: dict[int, str]) -> Path:
    """Pictures of the model's classes ``names`` (model index -> folder name) as root/<folder>/<i>.png."""
    for i, (img, k) in enumerate(zip(x, y, strict=True)):
        if int(k) in names:
            (root / names[int(k)]).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img[0]).save(root / names[int(k)] / f"{i}.png")
    return root


def evaluate_json(capsys, *args: str) -> tuple[dict, str]:
    assert main(["evaluate", *map(str, args), "--device", "cpu", "--json"]) == 0
    out = capsys.readouterr()
    return json.loads(out.out), out.err


def test_a_folder_in_another_order_and_case_scores_as_the_model_really_does(model, tmp_path, capsys):
    # sorted, these folders are Bag, Trouser, coat, sneaker: by position three of four classes would be wrong
    folder = write_folder(tmp_path / "eval", model["x"], model["y"], {0: "Bag", 1: "coat", 2: "sneaker", 3: "Trouser"})
    m, err = evaluate_json(capsys, model["run"], "--data", folder)
    assert m["accuracy"] == pytest.approx(float((model["pred"] == model["y"]).mean()))
    assert m["accuracy"] > 0.9  # the model learned: a positional match would score about a quarter of this
    assert m["n"] == len(model["y"]) and m["split"] == "all"
    assert "Bag -> bag" in err and "Trouser -> trouser" in err and "scoring all 80 of its images" in err
    assert [r["class"] for r in m["classes"]] == MODEL_CLASSES


def test_a_subset_of_the_classes_is_scored_on_those(model, tmp_path, capsys):
    folder = write_folder(tmp_path / "eval", model["x"], model["y"], {3: "trouser", 0: "bag"})
    m, err = evaluate_json(capsys, model["run"], "--data", folder)
    keep = np.isin(model["y"], [0, 3])
    assert m["n"] == int(keep.sum())
    assert m["accuracy"] == pytest.approx(float((model["pred"][keep] == model["y"][keep]).mean()))
    assert m["classes_scored"] == ["bag", "trouser"] and [r["class"] for r in m["classes"]] == ["bag", "trouser"]
    assert set(m["per_class"]) == {"bag", "trouser"} and len(m["confusion"]) == 4
    assert "2 of the model's 4 classes" in err


def test_classes_that_do_not_match_are_one_line_with_both_lists(model, tmp_path):
    folder = write_folder(tmp_path / "eval", model["x"], model["y"], {0: "bags", 1: "coat"})
    p = subprocess.run([sys.executable, "-m", "minivision", "evaluate", str(model["run"]), "--data", str(folder)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert "bags" in lines[0] and "the model's: bag, coat, sneaker, trouser" in lines[0] \
        and "the data's: bags, coat" in lines[0]


def test_a_csv_with_names_or_numbers_is_scored_whole(model, tmp_path, capsys):
    x, y = model["x"], model["y"]
    numbered = tmp_path / "test.csv"
    write_pixel_csv(numbered, x[:, 0], y)  # labels 0-3: positions
    m, err = evaluate_json(capsys, model["run"], "--data", numbered)
    assert m["n"] == len(y) and m["split"] == "all"  # every row, none held back for validation
    assert m["accuracy"] == pytest.approx(float((model["pred"] == y).mean()))
    assert "numbered classes" in err and "scoring all 80" in err
    named = tmp_path / "named.csv"
    rows = ["label," + ",".join(f"pixel{i + 1}" for i in range(784))]
    rows += [f'"{MODEL_CLASSES[k].upper()}",' + ",".join(map(str, img.ravel())) for img, k in zip(x, y, strict=True)]
    named.write_text("\n".join(rows) + "\n")
    m, err = evaluate_json(capsys, model["run"], "--data", named)
    assert m["n"] == len(y) and m["accuracy"] == pytest.approx(float((model["pred"] == y).mean()))
    assert "BAG -> bag" in err


def test_the_python_api_matches_by_name_too(model, tmp_path):
    folder = write_folder(tmp_path / "eval", model["x"], model["y"], {0: "Bag", 1: "coat", 2: "sneaker", 3: "Trouser"})
    clf = mv.load(model["run"])
    m = clf.evaluate(str(folder))
    assert m["accuracy"] == pytest.approx(float((model["pred"] == model["y"]).mean()))
    assert m["split"] == "all" and any("Bag -> bag" in n for n in m["notes"])
    x, y = torch.from_numpy(model["x"]), torch.from_numpy(model["y"])
    reversed_names = Dataset("mine", MODEL_CLASSES[::-1], Split(x, 3 - y))  # a Dataset object, classes reversed
    m = clf.evaluate(reversed_names)
    assert m["accuracy"] == pytest.approx(float((model["pred"] == model["y"]).mean()))
    with pytest.raises(MinivisionError, match="the model's: bag, coat"):
        clf.evaluate(Dataset("mine", ["a", "b", "c", "d"], Split(x, y)))


def test_other_data_with_split_folders_scores_its_test_split(model, tmp_path):
    names = {0: "bag", 1: "coat", 2: "sneaker", 3: "trouser"}
    write_folder(tmp_path / "d" / "train", model["x"][:40], model["y"][:40], names)
    write_folder(tmp_path / "d" / "test", model["x"][40:], model["y"][40:], names)
    sd = scoring_data(load_model(model["run"]), str(tmp_path / "d"))
    assert sd.split_name == "test" and len(sd.split) == 40
    sd = scoring_data(load_model(model["run"]), str(tmp_path / "d"), split="train")
    assert sd.split_name == "train" and len(sd.split) == 40  # nothing held back for validation


# ----------------------------------------------------------------------------- real data

@needs_fashion_mnist
def test_fashion_mnist_test_pictures_in_named_folders_score_as_the_test_split(tmp_path, capsys):
    """A model trained on Fashion-MNIST (classes in the dataset's order) scored on test pictures written as
    class folders named by class name (sorted: another order) and as a Kaggle CSV of numbered labels."""
    from minivision.data import load_dataset

    fm = load_dataset("fashion-mnist", test_only=True)
    run = fit(TrainConfig(model="softmax", epochs=1, data="fashion-mnist", out=str(tmp_path), val_split=0.1,
                          batch_size=256), log=lambda m: None, progress=False).run_dir
    n = 500
    x, y = fm.test.x[:n].numpy(), fm.test.y[:n].numpy()
    plain, _ = evaluate_json(capsys, run, "--split", "test")
    lm = load_model(run)
    pred = predict_logits(lm.model, lm.preprocess, fm.test.x[:n], device=torch.device("cpu")).argmax(1).numpy()
    folder = tmp_path / "fm"
    write_folder(folder, x, y, {k: c.replace("/", "_") for k, c in enumerate(fm.classes)})
    (folder / "classes.json").write_text(json.dumps({"T-shirt_top": "T-shirt/top"}))
    m, err = evaluate_json(capsys, run, "--data", folder)
    assert m["accuracy"] == pytest.approx(float((pred == y).mean())) and m["n"] == n
    assert abs(m["accuracy"] - plain["accuracy"]) < 0.05 and m["accuracy"] > 0.5  # by position: ~10%
    # without a classes.json: folders spelled as people do ("T-shirt-top", "Ankle_boot") match by name
    folder = tmp_path / "fm-spelled"
    write_folder(folder, x, y, {k: c.replace("/", "-").replace(" ", "_") for k, c in enumerate(fm.classes)})
    m, err = evaluate_json(capsys, run, "--data", folder)
    assert m["accuracy"] == pytest.approx(float((pred == y).mean())) and m["n"] == n
    assert "T-shirt-top -> T-shirt/top" in err and "Ankle_boot -> Ankle boot" in err
    csv = tmp_path / "fashion-mnist_test.csv"
    write_pixel_csv(csv, x, y)
    m, _ = evaluate_json(capsys, run, "--data", csv)
    assert m["accuracy"] == pytest.approx(float((pred == y).mean())) and m["n"] == n


# ----------------------------------------------------------------------------- predict on a pixel CSV

def test_predict_an_unlabelled_kaggle_csv_one_row_per_image_in_file_order(model, tmp_path, capsys):
    x, pred = model["x"], model["pred"]
    test = tmp_path / "test.csv"
    test.write_text("id," + ",".join(f"pixel{i + 1}" for i in range(784)) + "\n"
                    + "\n".join(f"{1000 + i}," + ",".join(map(str, img.ravel())) for i, img in enumerate(x)) + "\n")
    out = tmp_path / "out.csv"
    assert main(["predict", str(model["run"]), str(test), "--csv", str(out), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "80 pictures, one per row" in captured.err
    lines = out.read_text().splitlines()
    assert lines[0].startswith("path,id,label,score") and len(lines) == 1 + len(x)
    rows = [line.split(",") for line in lines[1:]]
    assert [r[0] for r in rows] == [f"{test}#{i + 1}" for i in range(len(x))]
    assert [r[1] for r in rows] == [str(1000 + i) for i in range(len(x))]
    assert [r[2] for r in rows] == [MODEL_CLASSES[k] for k in pred]  # the model's own predictions, in order
    bare = tmp_path / "bare.csv"  # no header, no id: pixels only
    bare.write_text("\n".join(",".join(map(str, img.ravel())) for img in x[:5]) + "\n")
    assert main(["predict", str(model["run"]), str(bare), "--json", "--device", "cpu"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert [r["row"] for r in got] == [1, 2, 3, 4, 5]
    assert [r["label"] for r in got] == [MODEL_CLASSES[k] for k in pred[:5]]


def test_predict_a_csv_of_another_size_is_one_line(model, tmp_path):
    small = tmp_path / "small.csv"
    small.write_text("pixel1,pixel2,pixel3,pixel4\n1,2,3,4\n")
    p = subprocess.run([sys.executable, "-m", "minivision", "predict", str(model["run"]), str(small)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "2x2" in p.stderr and "1x28x28" in p.stderr


def test_a_csv_run_trained_when_classes_ran_to_the_largest_label_still_scores_its_own_data(tmp_path, capsys):
    """A run whose classes are 0..4 for labels 1..4 (the reader once made a class of every number up to the
    largest label): its own CSV, now read as classes 1..4, is matched by name, not shifted by one."""
    x, y = synthetic_images(300, classes=4, seed=5)
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    write_pixel_csv(train, x[:240, 0], y[:240] + 1)
    write_pixel_csv(test, x[240:, 0], y[240:] + 1)
    as_read_once = Dataset("train", ["0", "1", "2", "3", "4"],
                           Split(torch.from_numpy(x[:240]), torch.from_numpy(y[:240] + 1)),
                           test=Split(torch.from_numpy(x[240:]), torch.from_numpy(y[240:] + 1)))
    run = fit(TrainConfig(model="cnn1", epochs=2, batch_size=32, out=str(tmp_path), data=str(train),
                          test_data=str(test)), dataset=as_read_once, log=lambda m: None, progress=False).run_dir
    lm = load_model(run)
    pred = predict_logits(lm.model, lm.preprocess, as_read_once.test.x, device=torch.device("cpu")).argmax(1)
    m, _ = evaluate_json(capsys, run)
    assert m["split"] == "test" and m["n"] == 60
    assert m["accuracy"] == pytest.approx(float((pred.numpy() == y[240:] + 1).mean()))
    assert m["accuracy"] > 0.9  # shifted by one it would be near 0
