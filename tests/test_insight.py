"""What a run shows a person: metrics, report files, TTA, show, TensorBoard events, CLI wiring.

Synthetic data only; the same files on real Fashion-MNIST and CIFAR-10 are in test_real_data.py."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from PIL import Image

import minivision as mv
from minivision.cli import main
from minivision.config import TrainConfig
from minivision.metrics import calibration, confusion_matrix, metrics_from_logits, most_confused, per_class_metrics
from minivision.report.run import REPORT_FILES
from minivision.train import fit, predict_logits

from .conftest import synthetic_dataset


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One small trained run with the report written at the end of training."""
    out = tmp_path_factory.mktemp("runs")
    ds = synthetic_dataset(240, 80, classes=4)
    ds.test.y[:8] = (ds.test.y[:8] + 1) % 4  # 8 wrong labels: the model must make mistakes on them
    r = fit(TrainConfig(model="cnn1", epochs=2, batch_size=32, out=str(out)), dataset=ds, progress=False,
            log=lambda m: None)
    return r, ds


# ----------------------------------------------------------------------------- metrics

def test_confusion_and_per_class_metrics_by_hand():
    y = torch.tensor([0, 0, 0, 1, 1, 2])
    pred = torch.tensor([0, 0, 1, 1, 0, 0])
    c = confusion_matrix(y, pred, 3)
    assert c.tolist() == [[2, 1, 0], [1, 1, 0], [1, 0, 0]]
    rows = per_class_metrics(c, ["a", "b", "c"])
    assert rows[0]["precision"] == pytest.approx(2 / 4) and rows[0]["recall"] == pytest.approx(2 / 3)
    assert rows[0]["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert rows[2] == {"class": "c", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}  # never predicted
    pairs = most_confused(c, ["a", "b", "c"])
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [("a", "b", 1), ("b", "a", 1), ("c", "a", 1)]
    assert pairs[0]["fraction_of_true"] == pytest.approx(1 / 3)


def test_calibration_error_by_hand():
    # two images at confidence 0.9 (one right) and one at 0.6 (right): ECE = 2/3*|0.5-0.9| + 1/3*|1-0.6|
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6]])
    y = torch.tensor([0, 1, 1])
    cal = calibration(probs, y, bins=10)
    assert cal["ece"] == pytest.approx(2 / 3 * 0.4 + 1 / 3 * 0.4)
    assert sum(b["count"] for b in cal["bins"]) == 3 and len(cal["bins"]) == 10
    assert cal["bins"][0]["accuracy"] is None and cal["bins"][0]["count"] == 0  # empty bin: valid JSON
    perfect = calibration(torch.tensor([[1.0, 0.0]] * 5), torch.zeros(5, dtype=torch.long))
    assert perfect["ece"] == pytest.approx(0.0)


def test_metrics_from_logits_agree_with_each_other():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(200, 5, generator=g), torch.randint(0, 5, (200,), generator=g)
    m = metrics_from_logits(logits, y, list("abcde"))
    assert sum(map(sum, m["confusion"])) == 200
    assert m["accuracy"] == pytest.approx(sum(m["confusion"][i][i] for i in range(5)) / 200)
    assert [r["support"] for r in m["classes"]] == torch.bincount(y, minlength=5).tolist()
    json.dumps(m)  # plain data


def test_flip_tta_averages_the_probabilities_of_both_views(run):
    r, ds = run
    x = ds.test.x[:16]
    dev = torch.device("cpu")
    plain = predict_logits(r.model, r.preprocess, x, device=dev).softmax(1)
    mirror = predict_logits(r.model, r.preprocess, x.flip(3), device=dev).softmax(1)
    tta = predict_logits(r.model, r.preprocess, x, device=dev, tta=True).softmax(1)
    assert torch.allclose(tta, (plain + mirror) / 2, atol=1e-5)


# ----------------------------------------------------------------------------- run folder report

def test_training_writes_every_report_file(run):
    r, ds = run
    for name in REPORT_FILES:
        assert (r.run_dir / name).is_file(), name
    with open(r.run_dir / "per_class.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["class"] for row in rows] == ds.classes + ["macro average"]
    assert sum(int(row["support"]) for row in rows[:-1]) == len(ds.test)
    for name in ("confusion_matrix.png", "mistakes.png", "predictions.png", "calibration.png"):
        img = Image.open(r.run_dir / name)
        assert img.format == "PNG" and min(img.size) > 200, name
    html = (r.run_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 6 and "http://" not in html and "https://" not in html
    for section in ("summary", "curves", "confusion", "per-class", "predictions", "calibration", "settings"):
        assert f'id="{section}"' in html, section


def test_evaluate_report_rewrites_the_report_and_shows_tta_side_by_side(run, capsys):
    r, ds = run
    (r.run_dir / "report.html").unlink()
    clf = mv.load(r.run_dir)
    out = clf.report(ds, tta=True)
    assert (r.run_dir / "report.html").is_file()
    m = out["metrics"]
    assert sum(map(sum, m["confusion"])) == len(ds.test) and out["tta_metrics"]["n"] == len(ds.test)
    assert "flip TTA" in (r.run_dir / "report.html").read_text()


def test_api_returns_data_and_plots_take_an_axes(run):
    from matplotlib.figure import Figure

    r, ds = run
    clf = mv.load(r.run_dir)
    assert [row["epoch"] for row in clf.history_] == [1, 2]
    cm = clf.confusion_matrix(ds)
    assert cm.shape == (4, 4) and int(cm.sum()) == len(ds.test)
    fig = Figure()
    axes = fig.subplots(2, 3)
    assert mv.plot_history(clf.history_, axes=axes[0]) is fig
    assert mv.plot_confusion(cm, ds.classes, ax=axes[1, 0]) is fig
    m = clf.evaluate(ds)
    assert mv.plot_calibration(m["calibration"], ax=axes[1, 1]) is fig
    assert mv.image_grid(ds.test.x[:8], ds.classes[:1] * 8, ax=axes[1, 2]) is fig


def test_show_writes_grid_and_counts(tmp_path, synth_csv, capsys):
    train_csv, test_csv = synth_csv
    assert main(["show", str(train_csv), "--test-data", str(test_csv), "--n", "12", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    folder = tmp_path / "show"
    assert (folder / "samples_train.png").is_file() and (folder / "class_counts.png").is_file()
    with open(folder / "class_counts.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["class", "train", "test"] and sum(int(r[1]) for r in rows[1:]) == 320
    assert "total" in out and "320" in out
    assert main(["show", str(train_csv), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "show2").is_dir()  # never overwritten


def test_show_errors_are_one_line(tmp_path, synth_csv, capsys):
    train_csv, _ = synth_csv
    assert main(["show", str(train_csv), "--split", "test", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and "no test split" in err
    assert main(["show", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2


def test_cli_evaluate_tta_and_report(run, capsys):
    r, _ = run
    # the run was trained on a Dataset object (data "synthetic"), so evaluate it through the API only;
    # the CLI path with --tta --report runs on real data in test_real_data.py
    with pytest.raises(SystemExit):
        main(["evaluate", str(r.run_dir), "--tta", "--bogus"])
    assert "unrecognized" in capsys.readouterr().err


def test_tensorboard_events_hold_scalars_and_pictures(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ds = synthetic_dataset(160, 40)
    r = fit(TrainConfig(model="mlp", epochs=2, batch_size=32, val_split=0.25, out=str(tmp_path), tensorboard=True),
            dataset=ds,
            progress=False, log=lambda m: None)
    acc = EventAccumulator(str(r.run_dir / "tensorboard"), size_guidance={"images": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"loss/train", "loss/val", "accuracy/train", "accuracy/val", "learning_rate"} <= set(tags["scalars"])
    assert [e.step for e in acc.Scalars("accuracy/val")] == [1, 2]
    assert acc.Scalars("loss/train")[-1].value == pytest.approx(r.history[-1]["train_loss"], rel=1e-5)
    assert {"report/confusion_matrix", "report/results", "report/calibration"} <= set(tags["images"])
