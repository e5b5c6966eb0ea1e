"""Test-time augmentation at its source: the view sets (scores.TTA_VIEWS), their arithmetic in predict_logits, and
the trainer's choice of a model's own views (model.json's ``tta``, ``train --tta``), with the test split scored
with them at the end of training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from minivision.budget import Planner
from minivision.config import TrainConfig
from minivision.errors import MinivisionError
from minivision.inference import mean_view_logits, predict_logits, shifted, view, view_logits
from minivision.scores import TTA_MODES, TTA_VIEWS, default_tta, shifted_np, tta_mode, view_np
from minivision.train import fit, tta_pictures

from .conftest import synthetic_dataset

CPU = torch.device("cpu")


def test_tta_mode_reads_the_models_own_and_refuses_other_values():
    assert tta_mode(None, {"tta": "flip+shift"}) == "flip+shift"
    assert tta_mode("auto", {"tta": "flip"}) == "flip"
    assert tta_mode(None, {}) == "none" and tta_mode(None, None) == "none"
    assert tta_mode(None, {"tta": None}) == "none"
    for damaged in ("sideways", "FLIP", "", 5, "auto"):  # a damaged model.json must not quietly change the answers
        with pytest.raises(MinivisionError, match="model.json: tta must be one of"):
            tta_mode(None, {"tta": damaged})
    assert tta_mode("flip", {"tta": "sideways"}) == "flip"  # a mode asked for still answers
    assert tta_mode(True, {"tta": "flip+shift"}) == "flip" and tta_mode(False, {"tta": "flip"}) == "none"
    assert tta_mode("none", {"tta": "flip"}) == "none"
    with pytest.raises(MinivisionError, match="one of none, flip, flip"):
        tta_mode("mirror", {})
    assert [len(TTA_VIEWS[m]) for m in TTA_MODES] == [1, 2, 10]
    assert TTA_VIEWS["flip+shift"][:2] == TTA_VIEWS["flip"] and TTA_VIEWS["flip"][:1] == TTA_VIEWS["none"]


def test_default_tta_is_flip_for_colour_runs_trained_with_flips_only():
    assert default_tta(True, 3) == "flip"
    assert default_tta(True, 1) == "none"
    assert default_tta(False, 3) == "none"


def test_a_shift_moves_the_picture_and_repeats_its_border_in_numpy_and_torch_alike():
    x = np.arange(2 * 3 * 4 * 5, dtype=np.uint8).reshape(2, 3, 4, 5)
    right = shifted_np(x, 0, 1)
    assert (right[..., 1:] == x[..., :-1]).all() and (right[..., 0] == x[..., 0]).all()
    down = shifted_np(x, 1, 0)
    assert (down[:, :, 1:] == x[:, :, :-1]).all() and (down[:, :, 0] == x[:, :, 0]).all()
    up_left = shifted_np(x, -1, -1)
    assert (up_left[:, :, :-1, :-1] == x[:, :, 1:, 1:]).all() and (up_left[:, :, -1, -1] == x[:, :, -1, -1]).all()
    t = torch.from_numpy(x).float()
    for v in TTA_VIEWS["flip+shift"]:
        assert np.array_equal(view(t, v).numpy(), view_np(x, v).astype(np.float32)), v
        assert view(t, v).shape == t.shape
    assert shifted(t, 0, 0) is t


def test_predict_logits_averages_the_views_probabilities_with_the_temperature():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 4))
    x = torch.randint(0, 256, (9, 3, 6, 6), dtype=torch.uint8)

    def pre(b):
        return b.float() / 255

    per_view = view_logits(net, pre, x, "flip+shift", device=CPU, batch_size=4)
    assert per_view.shape == (10, 9, 4)
    by_hand = torch.stack([net(view(pre(x), v)) for v in TTA_VIEWS["flip+shift"]]).detach()
    assert torch.allclose(per_view, by_hand, atol=1e-6)
    for mode, n in (("flip", 2), ("flip+shift", 10)):
        got = predict_logits(net, pre, x, device=CPU, tta=mode, temperature=1.7, batch_size=4)
        want = (by_hand[:n] / 1.7).softmax(2).mean(0).log()
        assert torch.allclose(got, want, atol=1e-5), mode
        assert torch.allclose(got, mean_view_logits(per_view[:n], 1.7), atol=1e-5)
    plain = predict_logits(net, pre, x, device=CPU, tta="none", temperature=1.7)
    assert torch.allclose(plain, by_hand[0] / 1.7, atol=1e-5)
    assert torch.equal(predict_logits(net, pre, x, device=CPU, tta=True), predict_logits(net, pre, x, device=CPU,
                                                                                           tta="flip"))
    with pytest.raises(MinivisionError):
        predict_logits(net, pre, x, device=CPU, tta="rotate")


def _fit(tmp_path, name, *, channels, **kw):
    ds = synthetic_dataset(240, 80, channels=channels, size=16)
    r = fit(TrainConfig(model="cnn1", epochs=2, batch_size=32, out=str(tmp_path), name=name, val_split=0.25, **kw),
            dataset=ds, progress=False, log=lambda m: None)
    return r, json.loads((r.run_dir / "model.json").read_text())


def test_a_colour_run_trained_with_flips_answers_with_flip_tta_and_says_how_it_scores(tmp_path):
    r, meta = _fit(tmp_path, "colour", channels=3, augment="flip")
    assert meta["tta"] == "flip"
    assert r.test["tta"] == "flip" and 0 <= r.test["test_accuracy_tta"] <= 1
    assert meta["metrics"]["test_accuracy_tta"] == r.test["test_accuracy_tta"] and "tta" not in meta["metrics"]
    from minivision.runfiles import load_model

    lm = load_model(r.run_dir)
    ds = synthetic_dataset(240, 80, channels=3, size=16)
    logits = predict_logits(lm.model, lm.preprocess, ds.test.x, device=CPU, tta="flip")
    assert r.test["test_accuracy_tta"] == pytest.approx(float((logits.argmax(1) == ds.test.y).float().mean()))


@pytest.mark.parametrize(("channels", "kw", "want"), [
    (1, {"augment": "flip"}, "none"),            # grey: the mirror adds about a tenth of a point
    (3, {"augment": "none"}, "none"),            # never saw a mirrored picture
    (1, {"augment": "none", "tta": "flip+shift"}, "flip+shift"),  # asked for: kept
    (3, {"augment": "flip", "tta": "none"}, "none"),
])
def test_the_runs_own_tta_follows_the_rule_or_the_flag(tmp_path, channels, kw, want):
    r, meta = _fit(tmp_path, "run", channels=channels, **kw)
    assert meta["tta"] == want
    assert ("test_accuracy_tta" in r.test) == (want != "none")


def test_the_budget_counts_the_extra_views_of_the_test_split():
    ds = synthetic_dataset(240, 80)
    assert tta_pictures(ds, "none") == 0 and tta_pictures(ds, "flip") == 80 and tta_pictures(ds, "flip+shift") == 720
    clock = [0.0]
    plain = Planner(100.0, 10, 0, 80, 32, clock=lambda: clock[0], report=False, n_end=0)
    more = Planner(100.0, 10, 0, 80, 32, clock=lambda: clock[0], report=False, n_end=tta_pictures(ds, "flip+shift"))
    for p in (plain, more):
        for step in range(1, 20):
            clock[0] = step * 0.5
            p.observe(step)
    clock[0] = 10.0
    assert more.plan(19) < plain.plan(19)


def test_train_prints_the_tta_accuracy_first(tmp_path, capsys, monkeypatch):
    from minivision import cli

    class Result:
        interrupted = False
        run_dir = tmp_path
        classes = ["a", "b"]
        history = []
        test = {"test_accuracy": 0.8, "test_loss": 0.5, "test_n": 80, "test_accuracy_tta": 0.825, "tta": "flip"}

    monkeypatch.setattr("minivision.train.fit", lambda *a, **k: Result())
    assert cli.main(["train", "--epochs", "1", "--model", "cnn1"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy 82.50% with flip TTA (80.00% without; 80 images)" in out


def test_the_temperature_of_a_model_with_views_is_fitted_to_its_answers():
    from minivision.trust import calibrated_probs, calibration_entry, fit_temperature, nll

    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 5, (400,), generator=g)
    z = torch.randn(400, 5, generator=g)
    z[torch.arange(400), y] += 1.5  # a model that learned something, its two views disagreeing a little,
    views = 4 * (z + 0.7 * torch.randn(2, 400, 5, generator=g))  # over-confident
    t = fit_temperature(views, y)
    grid = torch.linspace(0.3, 8, 800).tolist()
    best = min(grid, key=lambda c: nll(views, y, c))
    assert nll(views, y, t) <= nll(views, y, best) + 1e-9 and abs(t - best) < 0.05
    assert fit_temperature(views[:1], y) == pytest.approx(fit_temperature(views[0], y))
    assert t != pytest.approx(fit_temperature(views[0], y), abs=0.01)  # the answers' T is not the plain view's
    assert torch.allclose(calibrated_probs(views, 2.0), (views.double() / 2).softmax(2).mean(0))
    entry = calibration_entry(views, y, tta="flip")
    assert entry["tta"] == "flip" and entry["temperature"] == pytest.approx(t, rel=1e-5)
    assert "tta" not in calibration_entry(views[0], y)
    with pytest.raises(MinivisionError):
        fit_temperature(views[:, :10], y)


def test_a_colour_run_with_flip_tta_is_calibrated_on_its_answers_and_evaluate_says_how_well(tmp_path):
    from minivision.evaluate import evaluate_split, format_trust
    from minivision.metrics import calibration
    from minivision.runfiles import load_model
    from minivision.trust import calibration_entry

    r, meta = _fit(tmp_path, "colour", channels=3, augment="flip")
    assert meta["calibration"]["tta"] == "flip"
    lm = load_model(r.run_dir)
    ds = synthetic_dataset(240, 80, channels=3, size=16)
    m = evaluate_split(lm, ds.test)
    answers = predict_logits(lm.model, lm.preprocess, ds.test.x, device=CPU, tta="flip",
                             temperature=lm.temperature).softmax(1)
    assert m["tta"] == "flip" and m["tta_ece"] == pytest.approx(calibration(answers, ds.test.y)["ece"], abs=1e-6)
    assert "answers with flip TTA: ECE" in format_trust(m)
    assert "tta_ece" not in evaluate_split(lm, ds.test, tta="none")
    # fit_for_model, which the trainer calls, fits the temperature to the answers the views give
    from minivision.trust import fit_for_model

    cal, unsure, _ = fit_for_model(lm.model, lm.preprocess, ds.train, ds.test, 4, device=CPU, tta="flip")
    views = view_logits(lm.model, lm.preprocess, ds.test.x, "flip", device=CPU)
    assert cal == calibration_entry(views, ds.test.y, tta="flip")
    plain, _, _ = fit_for_model(lm.model, lm.preprocess, ds.train, ds.test, 4, device=CPU)
    assert plain == calibration_entry(views[0], ds.test.y) and "tta" not in plain


def test_resume_honours_a_new_tta_and_asking_for_mirrors_a_run_never_saw_gets_a_note(tmp_path):
    ds = synthetic_dataset(240, 80, channels=3, size=16)
    said: list[str] = []
    r = fit(TrainConfig(model="cnn1", epochs=1, batch_size=32, out=str(tmp_path), val_split=0.25, augment="none",
                        tta="flip"), dataset=ds, progress=False, log=said.append)
    assert any("--tta flip: this model was trained without horizontal flips" in m for m in said)
    assert json.loads((r.run_dir / "model.json").read_text())["tta"] == "flip"
    longer = fit(TrainConfig(), dataset=ds, resume=r.run_dir, resume_changes={"epochs": 2, "tta": "none"},
                 progress=False, log=lambda m: None)
    assert longer.run_dir != r.run_dir
    assert json.loads((longer.run_dir / "model.json").read_text())["tta"] == "none"
    assert "test_accuracy_tta" not in longer.test
