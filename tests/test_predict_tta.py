"""Test-time augmentation as a property of a model: model.json's ``tta`` ("none", "flip", "flip+shift") is what
predict, evaluate, the CLI and the Python API answer with, unless a call says otherwise.

One small mlp trained on a pixel CSV (so the CLI can read its data again); copies of its folder differ only in
model.json's ``tta``."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
from PIL import Image

import minivision as mv
from minivision.cli import main
from minivision.config import TrainConfig
from minivision.errors import MinivisionError, Note
from minivision.evaluate import (
    MIRRORED_DIGITS_NOTE,
    NO_FLIPS_NOTE,
    evaluate_split,
    format_metrics,
    split_logits,
    tta_figures,
    tta_notes,
)
from minivision.inference import predict_logits
from minivision.metrics import metrics_from_logits
from minivision.predict import predict_images, predict_pixel_csv, proba_for_tensor
from minivision.runfiles import load_model
from minivision.train import fit

from .conftest import synthetic_images, write_pixel_csv

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tta_runs(tmp_path_factory):
    """{None: a run whose model.json has no ``tta``, "none", "flip", "flip+shift": copies saying so}, the test
    CSV and a picture file. The mlp is trained with flips, so no note about mirrored pictures is due."""
    tmp = tmp_path_factory.mktemp("tta")
    x, y = synthetic_images(200, classes=4, seed=3)
    write_pixel_csv(tmp / "train.csv", x[:160, 0], y[:160])
    write_pixel_csv(tmp / "test.csv", x[160:, 0], y[160:])
    run = fit(TrainConfig(model="mlp", epochs=1, batch_size=32, out=str(tmp / "runs"), name="own",
                          data=str(tmp / "train.csv"), test_data=str(tmp / "test.csv"), augment="flip"),
              log=lambda m: None, progress=False).run_dir
    runs = {}
    for mode in (None, "none", "flip", "flip+shift"):
        copy = tmp / f"run-{mode}"
        shutil.copytree(run, copy)
        meta = json.loads((copy / "model.json").read_text())
        meta.pop("tta", None)
        if mode is not None:
            meta["tta"] = mode
        (copy / "model.json").write_text(json.dumps(meta))
        runs[mode] = copy
    picture = tmp / "one.png"
    Image.fromarray(x[170, 0]).save(picture)
    return runs, tmp / "test.csv", picture


def _averaged(lm, x: torch.Tensor, mode: str) -> torch.Tensor:
    """The calibrated probabilities of ``mode``'s views, (N, K), computed here as the core defines them."""
    return torch.softmax(predict_logits(lm.model, lm.preprocess, x, device=CPU, tta=mode,
                                        temperature=lm.temperature), 1)


# ----------------------------------------------------------------------------- predict

def test_predict_answers_with_the_models_own_tta_and_a_call_overrides_it(tta_runs):
    runs, _, picture = tta_runs
    lm = load_model(runs["flip+shift"])
    [own] = predict_images(lm, [picture], top_k=4, device="cpu", inputs=True)
    x = own["input"][None]
    want = _averaged(lm, x, "flip+shift")[0]
    assert [t["score"] for t in own["top_k"]] == pytest.approx(want.sort(descending=True).values.tolist(), abs=1e-5)
    plain = torch.softmax(predict_logits(lm.model, lm.preprocess, x, device=CPU) / lm.temperature, 1)[0]
    assert own["plain"] == {"label": lm.classes[int(plain.argmax())], "index": int(plain.argmax()),
                            "score": pytest.approx(float(plain.max()), abs=1e-5)}
    assert abs(own["score"] - own["plain"]["score"]) > 1e-4  # ten views do not answer as the picture alone
    assert own["tta"] == "flip+shift"  # the answer names its view set
    [alone] = predict_images(lm, [picture], top_k=4, device="cpu", tta="none")
    assert "plain" not in alone and alone["score"] == pytest.approx(float(plain.max()), abs=1e-5)
    assert predict_images(lm, [picture], top_k=4, device="cpu", tta=False)[0] == alone  # the old switch
    [flip] = predict_images(lm, [picture], top_k=4, device="cpu", tta="flip")
    assert flip["score"] == pytest.approx(float(_averaged(lm, x, "flip").max()), abs=1e-5)
    assert flip["score"] != own["score"] and flip["plain"] == own["plain"] and flip["tta"] == "flip"
    assert predict_images(lm, [picture], top_k=4, device="cpu", tta=True)[0] == flip


@pytest.mark.parametrize("mode", [None, "none"])
def test_a_model_without_tta_answers_from_the_picture_alone(tta_runs, mode):
    runs, _, picture = tta_runs
    [r] = predict_images(load_model(runs[mode]), [picture], device="cpu")
    assert "plain" not in r and set(r) >= {"label", "score", "top_k", "unsure", "reason"}


def test_unsure_judges_the_averaged_score(tta_runs, tmp_path):
    runs, _, picture = tta_runs
    [before] = predict_images(load_model(runs["flip+shift"]), [picture], device="cpu")
    tta_score, plain_score = before["score"], before["plain"]["score"]
    run = tmp_path / "strict"
    shutil.copytree(runs["flip+shift"], run)
    meta = json.loads((run / "model.json").read_text())
    meta["unsure"] = {"confidence_threshold": (tta_score + plain_score) / 2}  # between the two top scores
    (run / "model.json").write_text(json.dumps(meta))
    [r] = predict_images(load_model(run), [picture], device="cpu")
    assert r["unsure"] is (tta_score < plain_score)  # a verdict on the plain score would say the opposite
    if r["unsure"]:
        assert r["reason"] == f"low confidence: the top score is {tta_score:.1%}"


def test_pixel_csv_rows_follow_the_models_tta(tta_runs):
    runs, csv, _ = tta_runs
    lm = load_model(runs["flip"])
    rows = predict_pixel_csv(lm, csv, top_k=2, device="cpu")
    assert len(rows) == 40 and all("plain" in r for r in rows)
    from minivision.data.csvfile import read_pixel_table

    want = _averaged(lm, read_pixel_table(csv, need_labels=False).x, "flip").max(1).values
    assert [r["score"] for r in rows] == pytest.approx(want.tolist(), abs=1e-5)
    assert not any("plain" in r for r in predict_pixel_csv(lm, csv, top_k=2, device="cpu", tta="none"))


def test_predict_csv_names_the_view_set_and_the_plain_answer(tta_runs, tmp_path):
    import csv as csvlib

    from minivision.scores import write_csv

    runs, csv, picture = tta_runs
    lm = load_model(runs["flip"])
    rows = predict_pixel_csv(lm, csv, top_k=2, device="cpu")[:3] + [{"path": "gone.png", "error": "no such file"}]
    got = list(csvlib.DictReader(open(write_csv(rows, tmp_path / "p.csv"))))
    assert [g["tta"] for g in got] == ["flip"] * 3 + [""] and got[3]["error"] == "no such file"
    assert [g["plain_label"] for g in got[:3]] == [r["plain"]["label"] for r in rows[:3]]
    assert [float(g["plain_score"]) for g in got[:3]] == [r["plain"]["score"] for r in rows[:3]]
    alone = predict_pixel_csv(lm, csv, top_k=2, device="cpu", tta="none")[:3]
    assert "tta" not in next(csvlib.DictReader(open(write_csv(alone, tmp_path / "q.csv"))))  # no views: as before
    failed = [{"path": "gone.png", "error": "no such file"}]  # nothing answered: the columns answers would have
    header = open(write_csv(failed, tmp_path / "r.csv", top_k=2, views=True)).readline().strip().split(",")
    assert header == open(tmp_path / "p.csv").readline().strip().split(",")


def test_proba_for_tensor_follows_the_models_tta(tta_runs):
    runs, _, _ = tta_runs
    lm = load_model(runs["flip+shift"])
    x = torch.from_numpy(synthetic_images(6, seed=9)[0])
    assert torch.allclose(proba_for_tensor(lm, x, "cpu"), _averaged(lm, x, "flip+shift"), atol=1e-6)
    assert torch.allclose(proba_for_tensor(lm, x, "cpu", tta="none"), _averaged(lm, x, "none"), atol=1e-6)


@pytest.mark.parametrize("bad", ["mirror", "FLIP", 2])
def test_an_unknown_tta_is_a_one_line_error(tta_runs, bad):
    runs, csv, picture = tta_runs
    lm = load_model(runs["flip"])
    for call in (lambda: predict_images(lm, [picture], tta=bad), lambda: predict_pixel_csv(lm, csv, tta=bad),
                 lambda: evaluate_split(lm, lm_split(lm), tta=bad)):
        with pytest.raises(MinivisionError, match="tta must be one of none, flip, flip\\+shift") as e:
            call()
        assert "\n" not in str(e.value)


def lm_split(lm):
    from minivision.evaluate import scoring_data

    return scoring_data(lm).split


# ----------------------------------------------------------------------------- evaluate

def test_evaluate_split_gives_the_own_tta_figures_with_their_mode(tta_runs):
    runs, _, _ = tta_runs
    lm = load_model(runs["flip+shift"])
    split = lm_split(lm)
    m = evaluate_split(lm, split, device="cpu")
    t = metrics_from_logits(split_logits(lm, split, device="cpu", tta="flip+shift"), split.y, lm.classes)
    assert m["tta"] == "flip+shift" and m["tta_accuracy"] == t["accuracy"] and m["tta_loss"] == t["loss"]
    assert m["tta_change"] == pytest.approx(t["accuracy"] - m["accuracy"])
    assert split_logits(lm, split, device="cpu").equal(split_logits(lm, split, device="cpu", tta="none"))
    assert split_logits(lm, split, device="cpu", tta=None).equal(split_logits(lm, split, device="cpu",
                                                                              tta="flip+shift"))
    off = evaluate_split(lm, split, device="cpu", tta="none")
    assert not any(k.startswith("tta") for k in off) and off["accuracy"] == m["accuracy"]
    assert evaluate_split(lm, split, device="cpu", tta=True)["tta"] == "flip"
    assert not any(k.startswith("tta") for k in evaluate_split(load_model(runs[None]), split, device="cpu"))


def test_format_metrics_names_the_mode():
    m = {"accuracy": 0.8, "loss": 0.5, "n": 10, "tta_accuracy": 0.82, "tta_loss": 0.45, "tta_change": 0.02,
         "classes": [], "confusion": [[5, 0], [0, 5]]}
    assert "with flip TTA: accuracy 82.00%" in format_metrics(m, ["a", "b"], "run")  # figures without a mode
    text = format_metrics({**m, "tta": "flip+shift"}, ["a", "b"], "run")
    assert "with flip+shift TTA: accuracy 82.00%" in text and "lowers" not in text
    worse = format_metrics({**m, "tta": "flip+shift", "tta_accuracy": 0.7, "tta_change": -0.1}, ["a", "b"], "run")
    assert "flip+shift TTA lowers the accuracy of this model on this data: --tta none answers without it" in worse


def test_tta_notes_and_figures_name_the_mode():
    unflipped = {"augment": {"horizontal_flip": False}, "dataset": {"name": "mnist"}}
    assert tta_notes(unflipped) == [NO_FLIPS_NOTE, MIRRORED_DIGITS_NOTE]  # as before: flip's words
    assert tta_notes(unflipped, mode="flip") == [NO_FLIPS_NOTE, MIRRORED_DIGITS_NOTE]
    notes = tta_notes(unflipped, mode="flip+shift")
    assert len(notes) == 2 and all("flip+shift TTA" in n for n in notes)
    assert tta_notes(unflipped, mode="none") == []  # nothing mirrored, nothing to say
    plain, tta = {"accuracy": 0.5}, {"accuracy": 0.75, "loss": 0.3}
    assert tta_figures(plain, tta) == {"tta_accuracy": 0.75, "tta_loss": 0.3, "tta_change": 0.25}  # old callers
    assert tta_figures(plain, tta, "flip+shift")["tta"] == "flip+shift"


# ----------------------------------------------------------------------------- the CLI

def test_cli_evaluate_uses_the_models_tta_and_tta_none_turns_it_off(tta_runs, capsys):
    runs, _, _ = tta_runs
    own = str(runs["flip+shift"])
    assert main(["evaluate", own, "--device", "cpu"]) == 0
    assert "with flip+shift TTA: accuracy" in capsys.readouterr().out
    assert main(["evaluate", own, "--device", "cpu", "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["tta"] == "flip+shift" and "tta_accuracy" in m
    assert main(["evaluate", own, "--device", "cpu", "--tta", "none"]) == 0
    assert "TTA" not in capsys.readouterr().out
    assert main(["evaluate", str(runs[None]), "--device", "cpu"]) == 0
    assert "TTA" not in capsys.readouterr().out
    assert main(["evaluate", str(runs[None]), "--tta", "--device", "cpu"]) == 0  # --tta alone: flip, as before
    assert "with flip TTA: accuracy" in capsys.readouterr().out
    assert main(["evaluate", "--tta", own, "--device", "cpu"]) == 0  # a run folder after --tta is no mode
    assert "with flip TTA: accuracy" in capsys.readouterr().out


def test_cli_predict_line_names_the_tta(tta_runs, capsys):
    runs, _, picture = tta_runs
    own = str(runs["flip+shift"])
    assert main(["predict", own, str(picture), "--device", "cpu"]) == 0
    line = capsys.readouterr().out.strip()
    assert "  [flip+shift TTA; plain: " in line
    assert main(["predict", own, str(picture), "--tta", "none"]) == 0
    assert "TTA" not in capsys.readouterr().out
    assert main(["predict", str(runs[None]), "--tta", str(picture)]) == 0  # --tta alone before a picture: flip
    assert "  [flip TTA; plain: " in capsys.readouterr().out
    assert main(["predict", str(runs[None]), str(picture), "--tta", "flip+shift", "--json"]) == 0
    [r] = json.loads(capsys.readouterr().out)
    assert "plain" in r and r["tta"] == "flip+shift"
    assert main(["predict", own, str(picture), "--tta", "auto", "--json"]) == 0  # auto: the model's own, said
    [r] = json.loads(capsys.readouterr().out)
    assert r["tta"] == "flip+shift"


def test_cli_refuses_an_unknown_mode_with_a_suggestion(tta_runs, capsys):
    runs, _, picture = tta_runs
    with pytest.raises(SystemExit) as e:
        main(["predict", str(runs[None]), str(picture), "--tta", "flp"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "invalid choice: 'flp'" in err and "did you mean 'flip'?" in err


def test_help_says_what_the_default_is(capsys):
    for command in ("predict", "evaluate"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--tta [MODE]" in text and "flip+shift" in text and "the model's own setting" in text
        assert "--tta alone means flip" in text


# ----------------------------------------------------------------------------- the Python API

def test_the_api_answers_with_the_models_tta_unless_told(tta_runs):
    runs, csv, picture = tta_runs
    clf = mv.load(runs["flip+shift"])
    m = clf.evaluate()
    assert m["tta"] == "flip+shift" and "tta_accuracy" in m
    assert "tta" not in clf.evaluate(tta="none")
    assert clf.evaluate(tta="flip")["tta"] == "flip"
    with pytest.warns(Note, match="scoring all 40"):
        assert clf.score(str(csv)) == m["tta_accuracy"]  # the answers scored are the ones predict gives
    with pytest.warns(Note, match="scoring all 40"):
        assert clf.score(str(csv), tta="none") == m["accuracy"]
    assert clf.tta_ == "flip+shift" and mv.load(runs[None]).tta_ == "none"
    x = torch.from_numpy(synthetic_images(5, seed=4)[0])
    lm = load_model(runs["flip+shift"])
    y = clf.predict_proba(x, tta="none").argmax(1)  # the picture alone's answers, as labels: scored 1.0 alone
    assert clf.score(x, y, tta="none") == 1.0
    assert clf.score(x, y) == (clf.predict_proba(x).argmax(1) == y).mean()
    with pytest.raises(MinivisionError, match="tta must be one of"):
        clf.score(x, y, tta="flips")
    assert clf.predict_proba(x) == pytest.approx(_averaged(lm, x, "flip+shift").numpy(), abs=1e-6)
    assert clf.predict_proba(x, tta="none") == pytest.approx(_averaged(lm, x, "none").numpy(), abs=1e-6)
    assert all("plain" in d for d in clf.predict_details(x))
    assert not any("plain" in d for d in clf.predict_details(x, tta="none"))
    assert "plain" in clf.predict_details([str(picture)])[0]
    with pytest.raises(MinivisionError, match="tta must be one of"):
        clf.evaluate(tta="flips")


def test_the_api_report_names_the_mode(tta_runs, tmp_path):
    runs, _, _ = tta_runs
    run = tmp_path / "report"
    shutil.copytree(runs["flip+shift"], run)
    clf = mv.load(run)
    out = clf.report()
    assert out["tta_metrics"] is not None
    assert "accuracy, flip+shift TTA" in (run / "report.html").read_text()
    assert clf.report(tta="none")["tta_metrics"] is None
    assert " TTA<" not in (run / "report.html").read_text() and "flip+shift" not in (run / "report.html").read_text()


def test_the_api_notes_a_mirror_asked_of_a_model_trained_without_flips(tta_runs, tmp_path):
    runs, csv, _ = tta_runs
    run = tmp_path / "no-flips"
    shutil.copytree(runs[None], run)
    meta = json.loads((run / "model.json").read_text())
    meta["augment"] = {**(meta.get("augment") or {}), "horizontal_flip": False}
    (run / "model.json").write_text(json.dumps(meta))
    clf = mv.load(run)
    x = torch.from_numpy(synthetic_images(5, seed=4)[0])
    y = clf.predict_proba(x, tta="none").argmax(1)
    for call in (lambda: clf.predict_proba(x, tta="flip"), lambda: clf.predict(x, tta="flip"),
                 lambda: clf.score(x, y, tta="flip"), lambda: clf.predict_details(x, tta="flip+shift")):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
        said = [w for w in caught if issubclass(w.category, Note)]
        assert len(said) == 1 and "trained without horizontal flips" in str(said[0].message)
        assert said[0].filename == __file__  # the user's line, not minivision's
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clf.predict_proba(x)  # its own view set (none): nothing to say
