"""Invariants checked against a hand computation, each built so that breaking the feature fails it:
flip TTA (evaluate, predict and the Python function), the budget planner driving the real loop on a
fake clock, the best-validation weights in model.safetensors, report.html against ``evaluate``, and
a resumed budget run's step count. Small synthetic data; nothing here times anything."""

from __future__ import annotations

import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

import minivision as mv
from minivision.budget import Planner
from minivision.cli import main
from minivision.config import TrainConfig
from minivision.data.images import open_image
from minivision.data.split import make_val
from minivision.inference import pick_precision, predict_logits
from minivision.listeners import Listener, Report
from minivision.models import create_model
from minivision.runfiles import load_model, read_args
from minivision.train import fit

from .conftest import synthetic_dataset, synthetic_images, write_pixel_csv

CPU = torch.device("cpu")


# ----------------------------------------------------------------------------- a trained run on pixel CSVs

@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    """A model trained on pixel CSVs (so ``evaluate`` can reload its data): dark squares on a light
    background (the photo conversion is then a plain resize), class = the square's quadrant, so a
    mirrored image is another class and flip TTA changes the scores. 12 of the 80 test labels are
    wrong on purpose, so the test figures are not all 100%."""
    d = tmp_path_factory.mktemp("csv_run")
    x, y = synthetic_images(400, classes=4)
    x = 255 - x
    y_test = y[320:].copy()
    wrong = np.arange(0, 80, 7)[:12]
    y_test[wrong] = (y_test[wrong] + 1 + np.arange(12) % 3) % 4
    write_pixel_csv(d / "train.csv", x[:320, 0], y[:320])
    write_pixel_csv(d / "test.csv", x[320:, 0], y_test)
    r = fit(TrainConfig(model="softmax", epochs=2, val_split=0.25, augment="", data=str(d / "train.csv"),
                        test_data=str(d / "test.csv"), out=str(d)), progress=False, log=lambda m: None)
    return r.run_dir, torch.from_numpy(x[320:]), torch.from_numpy(y_test)


def _hand_scores(lm, x: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(plain, TTA) probabilities by hand: the model on the images and on their mirror images
    (flipped left-right), TTA = the mean of the two softmaxes (of logits / ``temperature``); at the
    precision ``evaluate`` uses."""
    bf16 = pick_precision("auto", CPU) == "bf16"
    model = lm.model.to(CPU).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        p = torch.softmax(model(lm.preprocess(x)).float() / temperature, 1)
        p_mirror = torch.softmax(model(lm.preprocess(x.flip(3))).float() / temperature, 1)
    return p, (p + p_mirror) / 2


def _tolerance() -> float:
    return 2e-2 if pick_precision("auto", CPU) == "bf16" else 1e-5


def _accuracy_matches(reported: float, probs: torch.Tensor, y: torch.Tensor, tol: float) -> bool:
    """``reported`` is the accuracy of ``probs``, up to images whose top two scores are within ``tol``
    (a tie that rounding may break either way)."""
    top2 = probs.topk(2, 1).values
    near_tie = int(((top2[:, 0] - top2[:, 1]) <= tol).sum())
    correct = int((probs.argmax(1) == y).sum())
    return abs(reported * len(y) - correct) < near_tie + 0.5


def test_tta_is_the_mean_of_the_image_and_mirror_softmaxes_in_evaluate(csv_run, capsys):
    run, x, y = csv_run
    lm = load_model(run)
    plain, tta = _hand_scores(lm, x)
    hand_loss = float(-tta[torch.arange(len(y)), y].log().mean())
    plain_loss = float(-plain[torch.arange(len(y)), y].log().mean())
    assert abs(hand_loss - plain_loss) > 0.1  # mirroring changes the scores: a TTA that does nothing is caught

    assert main(["evaluate", str(run), "--tta", "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["n"] == len(y) and [sum(r) for r in m["confusion"]] == torch.bincount(y, minlength=4).tolist()
    assert m["tta_loss"] == pytest.approx(hand_loss, rel=10 * _tolerance())
    assert m["loss"] == pytest.approx(plain_loss, rel=10 * _tolerance())
    assert _accuracy_matches(m["tta_accuracy"], tta, y, _tolerance())
    assert _accuracy_matches(m["accuracy"], plain, y, _tolerance())

    api = mv.load(run).evaluate(tta=True)  # the Python API reads the same CSVs back
    assert api["tta_loss"] == pytest.approx(hand_loss, rel=10 * _tolerance())
    assert _accuracy_matches(api["tta_accuracy"], tta, y, _tolerance())


def test_tta_scores_of_predict_and_predict_logits_are_the_mean_of_the_softmaxes(csv_run, capsys, tmp_path):
    run, x, y = csv_run
    lm = load_model(run)
    paths = []
    for i in range(6):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(x[i, 0].numpy()).save(paths[-1])
    seen = torch.stack([lm.preprocess.image_to_uint8(open_image(p)) for p in paths])  # the model's input
    plain, tta = _hand_scores(lm, seen)
    assert float((tta - plain).abs().max()) > 0.1

    assert main(["predict", str(run), *map(str, paths), "--tta", "--top-k", "4", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    tol = _tolerance() + 1e-6  # scores are printed to 6 decimals
    plain_shown, tta_shown = _hand_scores(lm, seen, lm.temperature)  # predict shows calibrated scores
    for j, r in enumerate(results):
        scores = torch.zeros(4)
        for t in r["top_k"]:
            scores[t["index"]] = t["score"]
        assert torch.allclose(scores, tta_shown[j], atol=tol), (r, tta_shown[j])
        assert r["plain"]["score"] == pytest.approx(float(plain_shown[j].max()), abs=tol)

    # the Python function: softmax of its TTA logits is the same mean
    got = torch.softmax(predict_logits(lm.model, lm.preprocess, seen, device=CPU, tta=True), 1)
    assert torch.allclose(got, tta, atol=_tolerance())


# ----------------------------------------------------------------------------- report.html = evaluate

class _Page(HTMLParser):
    """report.html as data: the summary cards {label: value}, each section's table rows and text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.section: str | None = None
        self.cards: dict[str, str] = {}
        self.rows: dict[str, list[list[str]]] = {}
        self.text: dict[str, str] = {}
        self._row: list[str] | None = None
        self._cell: str | None = None
        self._div: str | None = None
        self._buf = ""
        self._value = ""
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.section = a.get("id")
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag == "div" and a.get("class") in ("value", "label"):
            self._div, self._buf = a["class"], ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(self._cell.strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.setdefault(self.section, []).append(self._row)
            self._row = None
        elif tag == "div" and self._div is not None:
            if self._div == "value":
                self._value = self._buf.strip()
            else:
                self.cards[self._buf.strip()] = self._value
            self._div = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        if self._div is not None:
            self._buf += data
        if self.section is not None:
            self.text[self.section] = self.text.get(self.section, "") + data


def _shows(text: str, value: float, decimals: int) -> bool:
    """``text`` ("87.50%", "0.4321", "1,234") is ``value`` rounded to ``decimals`` places (of the
    percentage for a percentage)."""
    text = text.replace(",", "").strip()
    shown = float(text.rstrip("%")) / 100 if text.endswith("%") else float(text)
    unit = 10.0 ** -decimals / (100 if text.endswith("%") else 1)
    return abs(shown - value) <= unit / 2 + 1e-9


def _check_report_shows(page: _Page, m: dict) -> None:
    cards = page.cards
    assert _shows(cards["test accuracy"], m["accuracy"], 2), (cards, m["accuracy"])
    assert _shows(cards["test loss"], m["loss"], 4), (cards, m["loss"])
    assert _shows(cards["macro F1"], m["macro_f1"], 2)
    assert _shows(cards["calibration error (ECE)"], m["ece"], 2)
    ece_text = re.search(r"\(ECE\):\s*([0-9.]+%)", page.text["calibration"]).group(1)
    assert _shows(ece_text, m["ece"], 2)

    header, *rows, total = page.rows["per-class"]
    assert header == ["class", "precision", "recall", "F1", "support"]
    assert [r[0] for r in rows] == [c["class"] for c in m["classes"]]
    for row, c in zip(rows, m["classes"], strict=True):
        for text, key in zip(row[1:4], ("precision", "recall", "f1"), strict=True):
            assert _shows(text, c[key], 1), (row, c)
        assert int(row[4].replace(",", "")) == c["support"] == sum(m["confusion"][m["classes"].index(c)])
        assert _shows(row[2], m["per_class"][c["class"]], 1)  # recall is the per-class accuracy
    assert _shows(total[3], m["macro_f1"], 1) and int(total[4]) == m["n"]

    confused = page.rows["confused"][1:]
    assert [(r[0], r[1], int(r[2])) for r in confused] == [(p["true"], p["predicted"], p["count"])
                                                            for p in m["most_confused"]]
    for r, p in zip(confused, m["most_confused"], strict=True):
        assert _shows(r[3], p["fraction_of_true"], 1)


def test_report_html_shows_the_figures_evaluate_prints(csv_run, capsys):
    run, x, y = csv_run
    assert main(["evaluate", str(run), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert 0.5 < m["accuracy"] < 1 and m["most_confused"]  # figures worth comparing (12 labels are wrong)
    _check_report_shows(_Page((run / "report.html").read_text(encoding="utf-8")), m)  # written by training

    # rewritten by evaluate --report --tta: the same figures, and the TTA accuracy beside them
    assert main(["evaluate", str(run), "--report", "--tta", "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    page = _Page((run / "report.html").read_text(encoding="utf-8"))
    _check_report_shows(page, m)
    assert _shows(page.cards["test accuracy, flip TTA"], m["tta_accuracy"], 2)
    assert abs(m["tta_accuracy"] - m["accuracy"]) > 0.1  # so a report showing the plain figure twice fails


@pytest.fixture
def no_report(monkeypatch):
    """Skip drawing the end-of-training report (seconds of matplotlib) in tests about something else."""
    monkeypatch.setattr(Report, "on_fit_end", lambda self, trainer: None)


# ----------------------------------------------------------------------------- best-validation weights

class EpochWeights(Listener):
    """A copy of the weights at each epoch's end."""

    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []

    def on_epoch_end(self, trainer, row) -> None:
        self.weights.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})


def test_model_file_holds_the_best_validation_epoch(tmp_path, no_report):
    """A high learning rate makes validation accuracy swing from epoch to epoch; each epoch's validation
    figures are recomputed by hand from its weights."""
    ds = synthetic_dataset(240, 40)
    g = np.random.default_rng(1)
    noisy = g.random(240) < 0.3
    ds.train.y[torch.from_numpy(noisy)] = torch.from_numpy(g.integers(0, 4, int(noisy.sum())))
    epochs = EpochWeights()
    r = fit(TrainConfig(model="softmax", epochs=6, batch_size=16, optimizer="sgd", lr=1.0, schedule="constant",
                        val_split=0.25, augment="", out=str(tmp_path)), dataset=ds, progress=False,
            log=lambda m: None, listeners=[epochs])
    assert len(epochs.weights) == len(r.history) == 6

    val = make_val(ds, val_split=r.config.val_split, val_first=r.config.val_first, seed=r.config.seed).val
    model = create_model("softmax", in_channels=1, image_size=(28, 28), num_classes=4).eval()
    scores = []
    for w in epochs.weights:
        model.load_state_dict(w)
        with torch.no_grad():
            logits = model(r.preprocess(val.x)).float()
        acc = float((logits.argmax(1) == val.y).float().mean())
        loss = float(torch.nn.functional.cross_entropy(logits, val.y))
        scores.append((acc, -loss))
    best = max(range(len(scores)), key=lambda i: scores[i])  # highest accuracy; a tie -> the lower loss
    assert best != len(scores) - 1  # the situation this test is about: the last epoch is not the best

    saved = load_file(str(r.run_dir / "model.safetensors"))
    assert saved.keys() == epochs.weights[best].keys()
    assert all(torch.equal(saved[k], epochs.weights[best][k]) for k in saved)
    assert json.loads((r.run_dir / "model.json").read_text())["metrics"]["best_epoch"] == best + 1


# ----------------------------------------------------------------------------- budget runs on a fake clock

BUDGET_S, DT, BATCH = 7.0, 0.05, 16


class StepClock(Listener):
    """Fake time for a budget run: each training step takes ``DT`` seconds and nothing else takes any.
    As a listener it moves on at each step's end, before the budget planner (always the last listener)
    reads it. ``stop_at``: stop after that step, as Ctrl-C does (checkpoint; resumable). A run still
    training at twice the budget's worth of steps fails at once (a planner that ignores the deadline
    would otherwise train for ever)."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.steps, self.stop_at = 0, stop_at

    def __call__(self) -> float:
        return self.steps * DT

    def on_step_end(self, trainer) -> None:
        self.steps += 1
        assert self.steps <= 2 * BUDGET_S / DT, f"still training at {self()} s of a {BUDGET_S} s budget"
        if trainer.step == self.stop_at:
            trainer.stop("step")


# the pictures the end of training passes through the network besides the test split: the unsure statistics'
# 180 training pictures (train.trust_pictures; the calibration reuses the kept epoch's validation pass, so the
# 60 validation pictures are not passed again)
END_PICTURES = 180


def _planned_steps(n_test: int, end_pictures: int = END_PICTURES) -> int:
    """What the planner must plan when a step takes DT and validation takes no time: the budget less
    the files and report reserve, the share kept back for the machine's noise, the test pass and the end's
    calibration pass, divided by the time of a step."""
    scoring = (n_test + end_pictures) / BATCH * DT * Planner.FORWARD_COST
    left = BUDGET_S - Planner.END_RESERVE_S - Planner.REPORT_S - Planner.NOISE_SHARE * BUDGET_S - scoring
    return int(left / DT)


def _budget_run(out: Path, clock: StepClock, **kw):
    # a named model: no network probe (which would time real steps); 180 training images = 12 batches an
    # epoch, so the first epoch ends (and the validation cost is measured) before the planner's first plan
    # fp32 unless asked: "auto" would pick bf16 on a CPU that has it, which validates differently (below)
    kw.setdefault("precision", "fp32")
    cfg = TrainConfig(budget=BUDGET_S, model="softmax", batch_size=BATCH, val_split=0.25, augment="", out=str(out),
                      precision=kw.pop("precision"))
    return fit(cfg, dataset=synthetic_dataset(240, 40), progress=False, log=lambda m: None, clock=clock,
               listeners=[clock], **kw)


def _progress(run: Path) -> dict:
    with safe_open(str(run / "last.safetensors"), framework="pt") as f:
        return json.loads(f.metadata()["progress"])


def test_a_budget_run_trains_the_steps_the_planner_plans_on_its_clock(tmp_path, no_report):
    clock = StepClock()
    r = _budget_run(tmp_path, clock)
    expected = _planned_steps(n_test=40)
    assert expected % 12 > 1  # not a sliver of an epoch, which the loop may skip
    meta = json.loads((r.run_dir / "model.json").read_text())
    assert meta["budget"]["total_steps"] == expected
    assert meta["budget"]["replans"] >= 1  # the first guess (the model's default length) was replaced
    assert clock.steps == expected  # steps trained
    assert _progress(r.run_dir)["step"] == expected
    assert len(r.history) == math.ceil(expected / 12)
    assert clock() <= BUDGET_S - Planner.END_RESERVE_S - Planner.REPORT_S  # ended when the planner said


def test_a_bf16_budget_run_plans_for_the_validation_pass_it_repeats_in_fp32_at_the_end(tmp_path, no_report):
    # bf16 training validates each epoch in bf16; the kept weights' 60 validation pictures go through the
    # network again in fp32 after training (for model.json and the calibration), so the plan counts them
    clock = StepClock()
    r = _budget_run(tmp_path, clock, precision="bf16")
    meta = json.loads((r.run_dir / "model.json").read_text())
    assert meta["used"]["validation_precision"] == "bf16"
    assert meta["budget"]["total_steps"] == _planned_steps(n_test=40, end_pictures=END_PICTURES + 60)
    assert _planned_steps(n_test=40, end_pictures=END_PICTURES + 60) < _planned_steps(n_test=40)


def test_bf16_training_validates_each_epoch_in_bf16_and_keeps_the_fp32_figures(tmp_path, monkeypatch, no_report):
    from minivision import train

    passes: list[str] = []
    real = train.predict_logits

    def spy(*a, **kw):
        passes.append(kw["precision"])
        return real(*a, **kw)

    class Grab(Listener):
        def on_fit_end(self, t):
            self.val, self.outputs = t.ds.val, t.best_val_outputs

    monkeypatch.setattr(train, "predict_logits", spy)
    grab = Grab()
    cfg = TrainConfig(model="softmax", epochs=2, batch_size=BATCH, val_split=0.25, augment="", precision="bf16",
                      out=str(tmp_path))
    r = fit(cfg, dataset=synthetic_dataset(240, 40), progress=False, log=lambda m: None, listeners=[grab])
    assert passes == ["bf16", "bf16", "fp32"]  # the two epochs' validation passes, then the test pass
    meta = json.loads((r.run_dir / "model.json").read_text())
    assert meta["used"]["validation_precision"] == "bf16"
    fp32 = real(r.model, r.preprocess, grab.val.x, device=torch.device("cpu"), precision="fp32")
    assert torch.equal(grab.outputs[1], fp32)  # the calibration took the kept weights' fp32 logits
    assert meta["metrics"]["val_accuracy"] == train.loss_and_accuracy(fp32, grab.val.y)[1]


def test_a_resumed_budget_run_keeps_the_step_count_planned_before_the_interruption(tmp_path, no_report):
    stop_at = 40  # in the 4th epoch: the planner has planned at three epoch ends by then
    first = _budget_run(tmp_path, StepClock(stop_at=stop_at))
    assert first.interrupted
    before = _progress(first.run_dir)
    assert before["step"] == stop_at and not before["finished"]
    planned = before["total_steps"]
    assert planned == _planned_steps(n_test=40)
    assert planned != read_args(first.run_dir).steps  # the planner replaced the first guess in args.yaml

    # the resumed process has its own clock, which starts again at 0: a fresh plan would differ
    clock = StepClock()
    again = fit(TrainConfig(), dataset=synthetic_dataset(240, 40), resume=first.run_dir, progress=False,
                log=lambda m: None, clock=clock, listeners=[clock])
    assert not again.interrupted and again.run_dir == first.run_dir
    meta = json.loads((again.run_dir / "model.json").read_text())
    assert meta["budget"]["total_steps"] == planned
    assert _progress(again.run_dir)["step"] == planned
    assert clock.steps == planned - stop_at
    assert len(again.history) == math.ceil(planned / 12)
