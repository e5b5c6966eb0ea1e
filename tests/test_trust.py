"""Calibrated scores and unsure answers (trust.py): temperature scaling recovers a known temperature, the
out-of-distribution score and thresholds, and a trained run that saves them and shows them in predict and
evaluate; an older run without them keeps working and ``minivision calibrate`` fits them."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from minivision import trust
from minivision.inference import EMPTY_NOTE
from minivision.metrics import calibration

from .conftest import needs_fashion_mnist, synthetic_images, write_pixel_csv


def _labels_at_temperature(n: int, k: int, t: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (n, k) and labels drawn from softmax(logits / t): the temperature that calibrates them is t."""
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(n, k, generator=g)
    y = torch.multinomial(torch.softmax(logits / t, 1), 1, generator=g).squeeze(1)
    return logits, y


@pytest.mark.parametrize("t_true", [0.5, 2.0])
def test_fit_temperature_recovers_a_known_temperature(t_true):
    logits, y = _labels_at_temperature(20_000, 10, t_true)
    t = trust.fit_temperature(logits, y)
    assert t == pytest.approx(t_true, rel=0.06)
    assert trust.fit_temperature(logits, y) == t  # deterministic
    before = calibration(torch.softmax(logits, 1), y)["ece"]
    after = calibration(torch.softmax(logits / t, 1), y)["ece"]
    assert after <= before and after < 0.02
    entry = trust.calibration_entry(logits, y)
    # T < 1: the plain scores were too low (under-confident); T > 1: too high
    assert entry["before"] == ("under-confident" if t_true < 1 else "over-confident")
    assert entry["ece_after"] <= entry["ece_before"] and entry["n"] == 20_000
    assert set(entry) == {"method", "temperature", "fitted_on", "n", "ece_before", "ece_after", "before", "after"}
    assert entry["ece_after"] <= entry["ece_before"]


def test_a_temperature_that_worsens_the_ece_is_not_kept(monkeypatch):
    logits, y = _labels_at_temperature(2000, 10, 1.0)
    monkeypatch.setattr(trust, "fit_temperature", lambda *a, **k: 0.05)  # as a near-chance run got
    entry = trust.calibration_entry(logits, y)
    assert entry["temperature"] == 1.0 and entry["ece_after"] == entry["ece_before"] and "note" in entry


def test_fit_temperature_refuses_mismatched_input():
    with pytest.raises(trust.MinivisionError, match="temperature scaling needs"):
        trust.fit_temperature(torch.zeros(3, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(trust.MinivisionError):
        trust.fit_temperature(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))


def test_direction_says_mixed_when_the_scores_err_both_ways():
    """Scores too sure at the top and too unsure below: the mean gap is near 0 but the ECE is large, which
    must not read "calibrated"; one-sided errors keep their names."""
    from minivision.scores import direction_np

    def probs_for(conf: np.ndarray) -> np.ndarray:
        return np.stack([conf, 1 - conf], 1)

    n = 1000
    y = np.zeros(2 * n, dtype=np.int64)
    # half the pictures at score 0.99 but right 80% of the time, half at 0.61 but right 80%: +19 / -19 points
    conf = np.r_[np.full(n, 0.99), np.full(n, 0.61)]
    y[np.r_[np.arange(n)[int(0.8 * n):], n + np.arange(n)[int(0.8 * n):]]] = 1
    p = probs_for(conf)
    assert abs(p.max(1).mean() - (p.argmax(1) == y).mean()) < 0.01  # the mean gap alone says "calibrated"
    assert direction_np(p, y) == "mixed" and trust.direction(torch.from_numpy(p), torch.from_numpy(y)) == "mixed"
    assert direction_np(probs_for(np.full(2 * n, 0.99)), y) == "over-confident"
    assert direction_np(probs_for(np.full(2 * n, 0.61)), y) == "under-confident"
    assert direction_np(probs_for(np.full(2 * n, 0.80)), y) == "calibrated"
    # a small error both ways (under a point each) is still "calibrated"
    near = np.r_[np.full(n, 0.805), np.full(n, 0.795)]
    assert direction_np(probs_for(near), y) == "calibrated"


def test_mixed_is_not_said_of_sampling_noise():
    """A calibrated model's bins err both ways by chance, the more so on few pictures: never "mixed"; a model
    really too sure at high scores and too unsure at low ones: "mixed" once there are enough pictures."""
    from minivision.scores import direction_np

    rng = np.random.default_rng(0)
    for n in (60, 200, 1000):
        said = []
        for _ in range(40):
            conf = rng.uniform(0.5, 1.0, n)
            p = np.stack([conf, 1 - conf], 1)
            calibrated = np.where(rng.random(n) < conf, 0, 1)
            acc = np.where(conf > 0.75, conf - 0.12, np.minimum(conf + 0.12, 1.0))
            mixed = np.where(rng.random(n) < acc, 0, 1)
            said.append((direction_np(p, calibrated), direction_np(p, mixed)))
        assert all(c != "mixed" for c, _ in said), n
        if n >= 1000:
            assert sum(m == "mixed" for _, m in said) >= 36, said


def test_describe_names_the_direction():
    kept = trust.describe({"temperature": 1.0, "ece_before": 0.124, "ece_after": 0.124, "before": "mixed",
                           "after": "mixed", "note": "T = 0.879 lowered the loss but not the calibration error: "
                                                     "T = 1 kept"})
    assert kept == ("ECE 12.4%, mixed (temperature scaling: T = 0.879 lowered the loss but not the calibration "
                    "error: T = 1 kept)")
    text = trust.describe({"temperature": 0.71, "ece_before": 0.086, "ece_after": 0.012, "before": "under-confident",
                           "after": "over-confident"})
    assert text == "ECE 1.2% after temperature scaling, over-confident (T = 0.71; 8.6% before, under-confident)"


def test_temperature_of_old_or_malformed_model_json_is_one():
    assert trust.temperature_of({}) == 1.0
    assert trust.temperature_of({"calibration": {"temperature": "x"}}) == 1.0
    assert trust.temperature_of({"calibration": {"temperature": -2}}) == 1.0
    assert trust.temperature_of({"calibration": {"temperature": 0.7}}) == 0.7


def test_mahalanobis_scores_far_directions_and_unseen_sizes_higher():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(400) % 2
    directions = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    f = (directions[y] + 0.05 * torch.randn(400, 3, generator=g)) * (1 + 3 * torch.rand(400, 1, generator=g))
    for log_norm in (True, False):
        m = trust.Mahalanobis.fit(f, y, 2, log_norm=log_norm)
        assert m.means.shape == (2, 3 + log_norm) and m.score_name == (trust.OOD_SCORE if log_norm
                                                                        else trust.OOD_SCORE_UNIT)
        near, between, away = m.score(torch.tensor([[2.0, 0.1, 0], [1.0, 1.0, 0], [0.0, 0.0, 2.0]]))
        assert near < between and near < away and away > 100 * near
    # the unit-length score (models fitted before the size term) ignores the length: 7x is the same picture
    unit = trust.Mahalanobis.fit(f, y, 2, log_norm=False)
    assert torch.allclose(unit.score(f[:10]), unit.score(7 * f[:10]), rtol=1e-4)
    # the default counts it: the training lengths are 1-4, so lengths 1.5 and 3.5 pass the training pictures'
    # 99th percentile and 30 (the size a whitening stem can give a picture unlike its training pictures) is far
    m = trust.Mahalanobis.fit(f, y, 2)
    top = float(torch.quantile(m.score(f), 0.99))
    base = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert m.log_norm and (m.score(1.5 * base) < top).all() and (m.score(3.5 * base) < top).all()
    assert (m.score(30 * base) > 2 * top).all() and (unit.score(30 * base) < top).all()
    # the numpy score an export's reader uses is the same
    from minivision.scores import mahalanobis_score

    np_scores = mahalanobis_score(f[:20].numpy(), m.means.numpy(), m.precision.numpy())
    assert torch.allclose(torch.from_numpy(np_scores), m.score(f[:20]))
    assert trust.energy(torch.tensor([[10.0, 0, 0]])) < trust.energy(torch.tensor([[0.0, 0, 0]]))


def test_statistics_of_another_width_are_a_one_line_error():
    """A trust file whose statistics do not fit the model's features (copied from another run) says so."""
    from minivision.scores import mahalanobis_score

    m = trust.Mahalanobis.fit(torch.randn(100, 4), torch.arange(100) % 2, 2)
    with pytest.raises(trust.MinivisionError, match="5 wide, the model's features 6"):
        mahalanobis_score(torch.randn(3, 6).numpy(), m.means.numpy(), m.precision.numpy())


def test_mahalanobis_precision_is_the_inverse_and_falls_back_to_the_pseudo_inverse(monkeypatch):
    """The Cholesky inverse equals the pseudo-inverse it replaced; with more dimensions than pictures (a
    softmax model's pixels) the ridge keeps it defined; a factorisation that fails takes the pseudo-inverse."""
    g = torch.Generator().manual_seed(0)
    for n, d in ((500, 8), (40, 64)):  # many pictures per dimension; fewer pictures than dimensions
        f, y = torch.randn(n, d, generator=g), torch.arange(n) % 3
        m = trust.Mahalanobis.fit(f, y, 3)
        cent = torch.from_numpy(trust.ood_vectors(f.numpy())).double()
        cent = cent - torch.stack([cent[y == k].mean(0) for k in range(3)])[y]
        cov = cent.T @ cent / n
        ridged = cov + 1e-6 * float(cov.diagonal().mean()) * torch.eye(d + 1, dtype=torch.float64)
        assert torch.isfinite(m.precision).all()
        reference = torch.linalg.pinv(ridged, hermitian=True)
        assert float((m.precision.double() - reference).abs().max() / reference.abs().max()) < 1e-5, (n, d)
    f, y = torch.randn(300, 6, generator=g), torch.arange(300) % 2
    fast = trust.Mahalanobis.fit(f, y, 2)
    monkeypatch.setattr(torch.linalg, "cholesky_ex", lambda a: (a, torch.tensor(1)))  # "not positive definite"
    slow = trust.Mahalanobis.fit(f, y, 2)
    assert torch.allclose(fast.precision, slow.precision, rtol=1e-4, atol=1e-4)


def test_noise_rule_tells_noise_from_pictures():
    from minivision.inference import noise_picture, noise_pictures

    g = torch.Generator().manual_seed(0)
    uniform = torch.randint(0, 256, (20, 1, 28, 28), generator=g, dtype=torch.uint8)
    gaussian = (128 + 64 * torch.randn(20, 3, 28, 28, generator=g)).clamp(0, 255).to(torch.uint8)
    assert noise_pictures(uniform).all() and noise_pictures(gaussian).all()
    x = torch.from_numpy(synthetic_images(20, classes=4)[0])  # squares on a noisy backdrop
    blank = torch.full((1, 1, 28, 28), 90, dtype=torch.uint8)
    assert not noise_pictures(x).any() and not noise_pictures(blank).any()
    pics = noise_pictures_pil()
    assert noise_picture(pics["uniform"]) and noise_picture(pics["gaussian"])
    assert not noise_picture(pics["smiley"]) and not noise_picture(pics["blank"])


def test_confidence_threshold_is_where_the_answers_below_are_mostly_wrong():
    # 1,000 pictures, top scores 0.35..0.99 (of 3 classes), wrong up to 0.6 and right above: the pictures below
    # t are right less than half the time up to t = 0.6 + (0.6 - 0.35) = 0.85, where right and wrong even out
    conf = torch.linspace(0.35, 0.99, 1000)
    probs = torch.stack([conf, (1 - conf) / 2, (1 - conf) / 2], 1)
    right = conf > 0.6
    y = torch.where(right, 0, 1)
    t = trust.confidence_threshold(probs, y)
    assert t == pytest.approx(0.85, abs=0.01)
    assert right[conf < t].float().mean() < 0.5 <= right[conf < t + 0.02].float().mean()
    # a model right everywhere: the lower bound; wrong everywhere: the upper bound
    assert trust.confidence_threshold(probs, torch.zeros(1000, dtype=torch.long)) == trust.CONFIDENCE_BOUNDS[0]
    assert trust.confidence_threshold(probs, torch.ones(1000, dtype=torch.long)) == trust.CONFIDENCE_BOUNDS[1]


def test_judge_rules_and_their_order():
    from minivision.inference import NOISE_NOTE

    meta = {"unsure": {"score": trust.OOD_SCORE, "ood_threshold": 10.0, "confidence_threshold": 0.6}}
    top1 = torch.tensor([0.95, 0.95, 0.4, 0.95, 0.3, 0.95])
    ood = torch.tensor([1.0, 50.0, 1.0, 1.0, 50.0, 1.0])
    empty = torch.tensor([False, False, False, True, False, False])
    noise = torch.tensor([False, False, False, True, False, True])
    out = trust.judge(top1, ood, empty, meta, EMPTY_NOTE, noise)
    assert out[5] == (True, NOISE_NOTE)
    assert out[0] == (False, None)
    assert out[1] == (True, trust.OOD_REASON)
    assert out[2] == (True, "low confidence: the top score is 40.0%")
    assert out[3] == (True, EMPTY_NOTE)  # empty comes first
    assert out[4] == (True, trust.OOD_REASON)  # out of distribution says more than a low score
    # an older model: no out-of-distribution score, the default confidence threshold
    old = trust.judge(torch.tensor([0.45, 0.55]), None, torch.tensor([False, False]), {}, EMPTY_NOTE)
    assert old == [(True, "low confidence: the top score is 45.0%"), (False, None)]


# ---------------------------------------------------------------------------------------------- a trained run

@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    """A tiny cnn1 trained through the CLI on a pixel CSV (so ``calibrate`` can read its data again)."""
    d = tmp_path_factory.mktemp("trust")
    x, y = synthetic_images(600, classes=4)
    write_pixel_csv(d / "train.csv", x[:480, 0], y[:480])
    write_pixel_csv(d / "test.csv", x[480:, 0], y[480:])
    _cli("train", "--data", str(d / "train.csv"), "--test-data", str(d / "test.csv"), "--model", "cnn1",
         "--epochs", "3", "--batch-size", "32", "--out", str(d / "runs"))
    return d, d / "runs" / "train"


def _cli(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "minivision", *args], capture_output=True, text=True, timeout=600)
    if ok:
        assert p.returncode == 0, (args, p.stderr[-2000:])
    return p


def test_a_trained_run_saves_calibration_and_unsure(csv_run):
    _, run = csv_run
    meta = json.loads((run / "model.json").read_text())
    cal, unsure = meta["calibration"], meta["unsure"]
    assert cal["method"] == "temperature" and cal["fitted_on"] == "validation" and cal["n"] > 0
    assert cal["temperature"] > 0 and 0 <= cal["ece_after"] <= 1 and 0 <= cal["ece_before"] <= 1
    assert cal["before"] in ("over-confident", "under-confident", "calibrated", "mixed")
    assert unsure["score"] == trust.OOD_SCORE and unsure["file"] == "trust.safetensors"
    assert math.isfinite(unsure["ood_threshold"]) and 0.3 <= unsure["confidence_threshold"] <= 0.9
    assert (run / "trust.safetensors").is_file()
    from minivision.runfiles import load_model

    lm = load_model(run)
    assert lm.trust is not None and lm.temperature == cal["temperature"]


def test_predict_json_and_text_carry_unsure_and_reason(csv_run, tmp_path):
    _, run = csv_run
    x, _ = synthetic_images(4, classes=4, seed=5)
    Image.fromarray(x[0, 0]).save(tmp_path / "clean.png")
    Image.new("L", (40, 40), 128).save(tmp_path / "blank.png")
    out = json.loads(_cli("predict", str(run), str(tmp_path / "clean.png"), str(tmp_path / "blank.png"),
                          "--json").stdout)
    assert all(isinstance(r["unsure"], bool) and "reason" in r for r in out)
    blank = next(r for r in out if r["path"].endswith("blank.png"))
    assert blank["unsure"] is True and blank["reason"] == EMPTY_NOTE
    text = _cli("predict", str(run), str(tmp_path / "blank.png")).stdout
    assert f"[not sure: {EMPTY_NOTE}]" in text and text.count(EMPTY_NOTE) == 1
    import csv

    _cli("predict", str(run), str(tmp_path / "blank.png"), "--csv", str(tmp_path / "out.csv"))
    row = next(csv.DictReader((tmp_path / "out.csv").open()))
    assert row["unsure"] == "true" and row["reason"] == EMPTY_NOTE and row["error"] == ""


def test_scores_are_calibrated_in_predict_and_the_api(csv_run):
    _, run = csv_run
    import minivision as mv
    from minivision.inference import pick_device, predict_logits
    from minivision.runfiles import load_model

    lm = load_model(run)
    x = torch.from_numpy(synthetic_images(8, classes=4, seed=9)[0])
    logits = predict_logits(lm.model, lm.preprocess, x, device=pick_device("cpu"))
    want = torch.softmax(logits / lm.temperature, 1).numpy()
    got = mv.load(run).predict_proba(x.numpy())
    assert np.allclose(got, want, atol=1e-5)
    assert lm.temperature != 1.0  # so the check above tells calibrated from plain scores


def test_api_predict_details_say_when_unsure(csv_run, tmp_path):
    _, run = csv_run
    import minivision as mv

    clf = mv.load(run)
    x = synthetic_images(6, classes=4, seed=3)[0]
    blank = np.zeros((1, *x.shape[1:]), dtype=np.uint8)
    got = clf.predict_details(np.concatenate([x, blank]), top_k=2)
    assert len(got) == 7 and all(len(d["top_k"]) == 2 for d in got)
    probs = clf.predict_proba(np.concatenate([x, blank]))
    assert [d["index"] for d in got] == probs.argmax(1).tolist()
    assert np.allclose([d["score"] for d in got], probs.max(1), atol=1e-5)
    assert got[-1]["unsure"] is True and "empty" in got[-1]["reason"]
    assert all(d["reason"] is None for d in got if not d["unsure"])
    Image.new("L", (60, 60), 200).save(tmp_path / "grey.png")  # a path: the photo conversion, same keys
    one = clf.predict_details(str(tmp_path / "grey.png"))[0]
    assert one["unsure"] is True and one["path"].endswith("grey.png")
    with pytest.raises(mv.MinivisionError):
        clf.predict_details(x, top_k=0)


def test_evaluate_prints_ece_before_and_after(csv_run):
    _, run = csv_run
    text = _cli("evaluate", str(run)).stdout
    assert re.search(r"after temperature scaling, (over-confident|under-confident|calibrated|mixed) \(T = ", text), text
    assert "before, " in text and "unsure: " in text
    m = json.loads(_cli("evaluate", str(run), "--json").stdout)
    assert m["calibrated"] is True and m["temperature"] > 0 and 0 <= m["ece"] <= 1 and 0 <= m["ece_before"] <= 1
    assert 0 <= m["unsure"]["share"] <= 1


def test_training_reuses_the_kept_epochs_validation_pass_for_the_statistics(csv_run, tmp_path):
    """Training fits the temperature and the unsure statistics on the kept epoch's own validation pass (no
    second pass over the validation split); ``calibrate`` runs that pass afresh on the saved model and must
    fit the same figures, bit for bit: the kept epoch's outputs are the saved weights' outputs."""
    import shutil

    from minivision.fileio import load_tensors

    _, run = csv_run
    again = tmp_path / "again"
    shutil.copytree(run, again)
    _cli("calibrate", str(again))
    trained, refit = (json.loads((r / "model.json").read_text()) for r in (run, again))
    assert refit["calibration"] == trained["calibration"]
    assert refit["unsure"] == trained["unsure"]
    a, b = load_tensors(run / "trust.safetensors"), load_tensors(again / "trust.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fit_for_model_takes_the_validation_outputs_given():
    from minivision.data.dataset import Split
    from minivision.errors import MinivisionError

    x, y = synthetic_images(40, classes=4)
    val = Split(torch.from_numpy(x), torch.from_numpy(y).long())
    feats = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
    logits = torch.randn(40, 4, generator=torch.Generator().manual_seed(1))

    class NoNetwork:  # a second pass would call it
        def __getattr__(self, name):
            raise AssertionError("the network was run although the validation outputs were given")

    cal, unsure, stats = trust.fit_for_model(NoNetwork(), None, None, val, 4, device=torch.device("cpu"),
                                             val_outputs=(feats, logits))
    assert cal == trust.fit_trust(feats, val.y, feats, logits, val.y, 4)[0]
    assert unsure["statistics_from"] == "validation" and unsure["n"] == 40
    with pytest.raises(MinivisionError, match="rows for 40 pictures"):
        trust.fit_for_model(NoNetwork(), None, None, val, 4, device=torch.device("cpu"),
                            val_outputs=(feats[:39], logits[:39]))


def test_old_run_without_trust_loads_and_calibrate_fits_it(csv_run, tmp_path):
    import shutil

    _, run = csv_run
    old = tmp_path / "old"
    shutil.copytree(run, old)
    meta = json.loads((old / "model.json").read_text())
    del meta["calibration"], meta["unsure"]
    (old / "model.json").write_text(json.dumps(meta))
    (old / "trust.safetensors").unlink()
    x, _ = synthetic_images(2, classes=4, seed=3)
    Image.fromarray(x[0, 0]).save(tmp_path / "p.png")
    r = json.loads(_cli("predict", str(old), str(tmp_path / "p.png"), "--json").stdout)[0]
    assert isinstance(r["unsure"], bool)  # only the empty and low-confidence rules (T = 1)
    text = _cli("evaluate", str(old)).stdout
    assert "the scores are not calibrated" in text
    p = _cli("calibrate", str(old))
    assert "after temperature scaling, " in p.stdout and "(T = " in p.stdout
    again = json.loads((old / "model.json").read_text())
    assert {k: v for k, v in again.items() if k not in ("calibration", "unsure")} == meta  # the rest kept
    assert again["calibration"]["temperature"] > 0 and (old / "trust.safetensors").is_file()


def test_calibrate_refuses_other_data_in_one_line(csv_run, tmp_path):
    d, run = csv_run
    x, y = synthetic_images(40, classes=4, seed=1)
    write_pixel_csv(tmp_path / "other.csv", x[:, 0], y)
    p = _cli("calibrate", str(run), "--data", str(tmp_path / "other.csv"), ok=False)
    assert p.returncode != 0 and p.stderr.startswith("error: calibrate fits on")
    assert len(p.stderr.strip().splitlines()) == 1
    assert "Traceback" not in p.stderr


def smiley(size: int = 200) -> Image.Image:
    """A black smiley drawn on white paper, as a user would photograph it."""
    img = Image.new("L", (size, size), 255)
    d = ImageDraw.Draw(img)
    d.ellipse([20, 20, size - 20, size - 20], outline=0, width=6)
    d.ellipse([65, 70, 80, 85], fill=0)
    d.ellipse([120, 70, 135, 85], fill=0)
    d.arc([60, 80, 140, 150], 20, 160, fill=0, width=6)
    return img


def noise_pictures_pil(size: int = 64) -> dict[str, Image.Image]:
    """Uniform and Gaussian noise, a blank and a smiley drawing, as PIL pictures a user could send."""
    rng = np.random.default_rng(0)
    return {"uniform": Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)),
            "gaussian": Image.fromarray(np.clip(rng.normal(128, 50, (size, size)), 0, 255).astype(np.uint8)),
            "blank": Image.new("L", (size, size), 200), "smiley": smiley()}


# ---------------------------------------------------------------------------------------------- real data

@needs_fashion_mnist
def test_real_fashion_mnist_test_pictures_are_neither_noise_nor_empty():
    from minivision.data import load_dataset
    from minivision.inference import blank_pictures, noise_pictures

    test = load_dataset("fashion-mnist", test_only=True).test
    assert int(noise_pictures(test.x).sum()) == 0 and int(blank_pictures(test.x).sum()) == 0


def test_a_run_fitted_before_the_size_term_keeps_its_score_until_calibrated_again(csv_run, tmp_path):
    """A model.json whose unsure check is the unit-length score (``OOD_SCORE_UNIT``, statistics D wide) loads
    and answers with that score; ``minivision calibrate`` refits it with the log length (D + 1 wide)."""
    import shutil

    from minivision.fileio import load_tensors, save_tensors, write_json
    from minivision.inference import pick_device, predict_features
    from minivision.runfiles import load_model

    _, run = csv_run
    old = tmp_path / "old"
    shutil.copytree(run, old)
    lm = load_model(old)
    x, y = synthetic_images(200, classes=4, seed=11)
    feats, _ = predict_features(lm.model, lm.preprocess, torch.from_numpy(x), device=pick_device("cpu"))
    unit = trust.Mahalanobis.fit(feats, torch.from_numpy(y), 4, log_norm=False)
    save_tensors(old / "trust.safetensors", unit.tensors(), metadata={"score": trust.OOD_SCORE_UNIT})
    meta = json.loads((old / "model.json").read_text())
    meta["unsure"]["score"] = trust.OOD_SCORE_UNIT
    meta["unsure"].pop("sha256")  # not recorded before the size term either
    write_json(old / "model.json", meta)
    lm = load_model(old)
    assert lm.trust is not None and not lm.trust.log_norm and lm.trust.means.shape[1] == feats.shape[1]
    assert torch.allclose(lm.trust.score(feats), unit.score(feats))
    answers = json.loads(_cli("predict", str(old), *[str(p) for p in _pngs(x[:3], tmp_path)], "--json").stdout)
    assert len(answers) == 3 and all("unsure" in a for a in answers)
    said = _cli("calibrate", str(old)).stdout
    assert "now weighs the size of the model's features as well as their direction" in said
    assert "now weighs" not in _cli("calibrate", str(old)).stdout  # said once: the run has the new score now
    again = load_model(old)
    assert json.loads((old / "model.json").read_text())["unsure"]["score"] == trust.OOD_SCORE
    assert again.trust.log_norm and load_tensors(old / "trust.safetensors")["means"].shape[1] == feats.shape[1] + 1


def _pngs(x: np.ndarray, folder) -> list:
    paths = []
    for i, a in enumerate(x):
        p = folder / f"p{i}.png"
        Image.fromarray(a[0]).save(p)
        paths.append(p)
    return paths


def test_a_missing_swapped_damaged_or_unknown_trust_file_says_so(csv_run, tmp_path):
    """The run folder's statistics: missing, another run's (same shape), of an unknown score: a note and the
    out-of-distribution check skipped; damaged: a one-line error. Each says how to fit them again."""
    import shutil
    import warnings

    from minivision.errors import Note
    from minivision.fileio import sha256_file, write_json
    from minivision.runfiles import load_model

    _, run = csv_run
    meta = json.loads((run / "model.json").read_text())
    assert meta["unsure"]["sha256"] == sha256_file(run / "trust.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the run's own file: no note
        assert load_model(run).trust is not None

    def copy(name: str) -> Path:
        folder = tmp_path / name
        shutil.copytree(run, folder)
        return folder

    gone = copy("gone")
    (gone / "trust.safetensors").unlink()
    with pytest.warns(Note, match="trust.safetensors is missing: its answers skip the out-of-distribution check"):
        assert load_model(gone).trust is None
    swapped = copy("swapped")
    stats = load_model(run).trust
    trust.save_trust(swapped, trust.Mahalanobis(stats.means + 1, stats.precision, stats.log_norm))
    with pytest.warns(Note, match="not the file model.json records.*minivision calibrate RUN"):
        assert load_model(swapped).trust is None
    future = copy("future")
    write_json(future / "model.json", {**meta, "unsure": {**meta["unsure"], "score": "mahalanobis-future"}})
    with pytest.warns(Note, match="'mahalanobis-future' is one this version of minivision does not know"):
        assert load_model(future).trust is None
    damaged = copy("damaged")
    (damaged / "trust.safetensors").write_bytes((run / "trust.safetensors").read_bytes()[:40])
    with pytest.raises(trust.MinivisionError, match="not a readable safetensors file.*minivision calibrate RUN"):
        load_model(damaged)
    # ... and calibrate, as the error says, fits it again without reading it (nor noting what it replaces)
    p = _cli("calibrate", str(damaged))
    assert "note:" not in p.stderr and "error" not in p.stderr, p.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_model(damaged).trust is not None
    # calibrate fits them again, and records the new file's checksum
    _cli("calibrate", str(swapped))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_model(swapped).trust is not None
