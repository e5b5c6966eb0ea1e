"""The fit loop end to end on small synthetic data: run folder, determinism, kill and resume, CLI."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import minivision as mv
from minivision.cli import main
from minivision.config import TrainConfig
from minivision.train import fit

from .conftest import synthetic_dataset, synthetic_images, write_pixel_csv


def _history(run: Path) -> list[list[str]]:
    """results.csv without the wall-clock column, which is the only thing allowed to differ."""
    with open(run / "results.csv") as f:
        return [row[:-1] for row in csv.reader(f)]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(run / "last.safetensors")).items() if k.startswith("model.")}


def test_fit_writes_a_complete_run_folder(tmp_path):
    ds = synthetic_dataset(240, 80)
    r = fit(TrainConfig(model="cnn1", epochs=3, batch_size=32, out=str(tmp_path), augment="flip", val_split=0.25),
            dataset=ds, progress=False, log=lambda m: None)
    for name in ("model.safetensors", "model.json", "results.csv", "results.png", "args.yaml",
                 "last.safetensors", "best.safetensors"):
        assert (r.run_dir / name).is_file(), name
    meta = json.loads((r.run_dir / "model.json").read_text())
    assert meta["classes"] == ds.classes and meta["architecture"]["name"] == "cnn1"
    assert meta["preprocess"]["size"] == [28, 28] and "torch" in meta["versions"]
    assert len(r.history) == 3 and r.history[-1]["train_accuracy"] > 0.5
    assert r.test["test_accuracy"] > 0.6  # four clearly separable classes
    assert Image.open(r.run_dir / "results.png").size[0] > 500


def test_same_seed_same_history_different_seed_differs(tmp_path):
    ds = synthetic_dataset(200, 40)
    runs = [fit(TrainConfig(model="cnn2-bn", epochs=2, seed=s, out=str(tmp_path), augment="flip,shift=2"),
                dataset=ds, progress=False, log=lambda m: None) for s in (5, 5, 6)]
    assert _history(runs[0].run_dir) == _history(runs[1].run_dir)
    assert _history(runs[0].run_dir) != _history(runs[2].run_dir)
    assert [r.run_dir.name for r in runs] == ["train", "train2", "train3"]


def _cli(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "minivision", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


TRAIN = ("train", "--model", "cnn2-bn", "--epochs", "4", "--seed", "3", "--augment", "flip,shift=1",
         "--batch-size", "16")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_kill_and_resume_matches_uninterrupted_run(tmp_path, synth_csv, sig):
    train_csv, test_csv = synth_csv
    data = ("--data", str(train_csv), "--test-data", str(test_csv))
    ref = _cli(*TRAIN, *data, "--name", "ref", cwd=tmp_path)
    assert ref.wait(timeout=300) == 0, ref.stdout.read()

    p = _cli(*TRAIN, *data, "--name", "cut", cwd=tmp_path)
    run = tmp_path / "runs" / "cut"
    deadline = time.time() + 120
    while not (run / "results.csv").is_file() and time.time() < deadline:
        time.sleep(0.02)
    p.send_signal(sig)
    out = p.communicate(timeout=120)[0]
    if sig == signal.SIGINT:
        assert p.returncode == 130, out
        assert f"minivision train --resume {Path('runs') / 'cut'}" in out
    assert len(_history(run)) < 5, "the run finished before it could be interrupted"

    res = _cli("train", "--resume", str(run), cwd=tmp_path)
    out = res.communicate(timeout=300)[0]
    assert res.returncode == 0, out
    assert "test accuracy" in out
    assert _history(run) == _history(tmp_path / "runs" / "ref")
    a, b = _weights(run), _weights(tmp_path / "runs" / "ref")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_extend_a_finished_run_into_a_new_folder(tmp_path):
    ds = synthetic_dataset(120, 40)
    first = fit(TrainConfig(model="mlp", epochs=1, val_split=0.25, out=str(tmp_path)), dataset=ds,
                progress=False, log=lambda m: None)
    before = (first.run_dir / "results.csv").read_text()
    ext = fit(TrainConfig(epochs=3), dataset=ds, resume=first.run_dir, progress=False, log=lambda m: None)
    assert ext.run_dir != first.run_dir and len(ext.history) == 3
    assert (first.run_dir / "results.csv").read_text() == before  # the original run is untouched
    with pytest.raises(mv.MinivisionError, match="already finished"):
        fit(TrainConfig(epochs=1), dataset=ds, resume=first.run_dir, progress=False, log=lambda m: None)


def test_cli_round_trip_train_evaluate_predict(tmp_path, synth_csv, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train_csv, test_csv = synth_csv
    assert main(["train", "--data", str(train_csv), "--test-data", str(test_csv), "--model", "cnn1",
                 "--epochs", "2", "--json"]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)  # stdout is the one JSON object; the progress lines went to stderr
    assert "epoch 2/2" in err
    assert "guessing" not in err  # it learned: no note that it did not
    run = Path(summary["run"])
    assert summary["test_n"] == 80

    assert main(["evaluate", str(run), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["n"] == 80 and set(m["per_class"]) == {"0", "1", "2", "3"}
    assert m["accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-6)
    assert sum(map(sum, m["confusion"])) == 80

    x, y = synthetic_images(6, classes=4, seed=9)
    for i in range(3):
        Image.fromarray(x[i, 0]).save(tmp_path / f"img{i}.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    assert main(["predict", str(run), str(tmp_path / "img*.png"), str(tmp_path / "broken.png"),
                 "--top-k", "2", "--json"]) == 0
    preds = json.loads(capsys.readouterr().out)
    assert len(preds) == 4
    assert all(len(p["top_k"]) == 2 and p["label"] in "0123" for p in preds[:3])
    assert "error" in preds[3] and preds[3]["path"].endswith("broken.png")


def test_api_fit_predict_evaluate_save_load(tmp_path):
    ds = synthetic_dataset(200, 60)
    clf = mv.Classifier(model="cnn1", epochs=2, out=str(tmp_path)).fit(ds, progress=False)
    assert clf.classes_ == ds.classes and len(clf.history_) == 2
    proba = clf.predict_proba(ds.test.x.numpy())
    assert proba.shape == (60, 4) and np.allclose(proba.sum(1), 1, atol=1e-5)
    labels = clf.predict(ds.test.x[:5])
    assert all(lbl in ds.classes for lbl in labels)
    m = clf.evaluate(ds)
    assert m["n"] == 60
    assert m["accuracy"] == pytest.approx(float((proba.argmax(1) == ds.test.y.numpy()).mean()), abs=1e-6)
    saved = clf.save(tmp_path / "exported")
    again = mv.load(saved)
    assert np.allclose(again.predict_proba(ds.test.x.numpy()), proba, atol=1e-6)
    with pytest.raises(mv.MinivisionError, match="already exists"):
        clf.save(saved)
    with pytest.raises(mv.MinivisionError, match="not fitted"):
        mv.Classifier().predict(ds.test.x)


@pytest.mark.parametrize("argv,needle", [
    (["train", "--epohcs", "3"], "did you mean --epochs"),
    (["train", "--lr", "-1"], "must be > 0"),
    (["train", "--model", "cnn9"], "did you mean"),
    (["trian"], "did you mean 'train'"),
    (["train", "--data", "/nonexistent/file.csv"], "file.csv"),
    (["train", "--data", "fashion-mnst"], "did you mean"),
    (["train", "--augment", "flip,rotat=3"], "did you mean 'rotate'"),
    (["evaluate", "/nonexistent/run"], "no such run folder"),
    (["predict", "/nonexistent/run", "x.png"], "no such run folder"),
    (["summary", "mvnet", "--input", "28x28"], "--input"),
    (["train", "--resume", "/nonexistent/run"], "no such run folder"),
])
def test_cli_errors_are_one_line(argv, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = subprocess.run([sys.executable, "-m", "minivision", *argv], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), p.stderr
    assert needle in lines[0]
    assert "Traceback" not in p.stderr and not (tmp_path / "runs").exists()


def test_models_and_summary_commands(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("softmax", "mlp", "cnn2", "cnn2-bn", "cnn1", "cnn3", "cnn4", "mvnet"):
        assert f"\n{name} " in out
    assert main(["summary", "cnn2"]) == 0
    out = capsys.readouterr().out
    assert "507,530" in out


def test_resume_after_a_stop_between_last_epoch_and_model_file(tmp_path):
    """Killed after the last checkpoint but before model.json: resume writes the model, trains nothing."""
    ds = synthetic_dataset(120, 40)
    run = fit(TrainConfig(model="softmax", epochs=2, val_split=0.25, out=str(tmp_path)), dataset=ds,
              progress=False, log=lambda m: None).run_dir
    (run / "model.json").unlink()
    with pytest.raises(mv.MinivisionError, match="--resume"):
        mv.load(run)
    again = fit(TrainConfig(), dataset=ds, resume=run, progress=False, log=lambda m: None)
    assert again.run_dir == run and len(again.history) == 2
    assert mv.load(run).classes_ == ds.classes


def test_best_epoch_breaks_accuracy_ties_by_validation_loss(tmp_path):
    """Separable classes: validation accuracy hits 100% early and stays; the kept weights are those of
    the tied epoch with the lowest validation loss, not the first one."""
    r = fit(TrainConfig(model="mlp", epochs=6, batch_size=32, val_split=0.25, out=str(tmp_path)),
            dataset=synthetic_dataset(240, 40), progress=False, log=lambda m: None)
    top = max(row["val_accuracy"] for row in r.history)
    tied = [row for row in r.history if row["val_accuracy"] == top]
    assert len(tied) >= 2  # the situation this test is about
    best = json.loads((r.run_dir / "model.json").read_text())["metrics"]["best_epoch"]
    assert best == min(tied, key=lambda row: row["val_loss"])["epoch"]


def test_a_run_that_learned_nothing_says_so_in_one_line(tmp_path, capsys, monkeypatch):
    """Labels unrelated to the pictures: test accuracy near chance, and one note line on stderr (stdout keeps
    its one JSON line); a run that learned (the round trip above, 4 classes) gets no such note."""
    from minivision.cli import guessing_note

    monkeypatch.chdir(tmp_path)
    x, _ = synthetic_images(400, classes=4)
    y = np.random.default_rng(0).integers(0, 4, 400)
    write_pixel_csv(tmp_path / "train.csv", x[:320, 0], y[:320])
    write_pixel_csv(tmp_path / "test.csv", x[320:, 0], y[320:])
    assert main(["train", "--data", str(tmp_path / "train.csv"), "--test-data", str(tmp_path / "test.csv"),
                 "--model", "mlp", "--epochs", "1", "--json"]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["test_accuracy"] < 1.5 / 4
    notes = [line for line in err.splitlines() if line.startswith("note: ") and "guessing" in line]
    assert len(notes) == 1 and "with 4 classes (25.0%)" in notes[0], err
    assert guessing_note(0.90, 10, []) is None and guessing_note(0.149, 10, []) is not None
    assert guessing_note(0.151, 10, []) is None and guessing_note(0.0, 1, []) is None


@pytest.mark.parametrize(("speedup", "used"), [(0.58, "fp32"), (2.5, "bf16")])
def test_auto_precision_says_why_a_bf16_cpu_trains_in_fp32(tmp_path, monkeypatch, speedup, used):
    from minivision import inference, train

    monkeypatch.setattr(inference, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(train, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(inference, "cpu_bf16_speedup", lambda measure=None: speedup)
    monkeypatch.setattr(train, "cpu_bf16_speedup", lambda measure=None: speedup)
    lines: list[str] = []
    r = fit(TrainConfig(model="softmax", epochs=1, out=str(tmp_path), device="cpu"),
            dataset=synthetic_dataset(120, 40), progress=False, log=lines.append)
    assert json.loads((r.run_dir / "model.json").read_text())["used"]["precision"] == used
    notes = [line for line in lines if "bf16 convolutions ran at" in line]
    assert notes == ([f"note: training in fp32: bf16 convolutions ran at {speedup:.2f}x the speed of fp32 ones on "
                      "this CPU (--precision bf16 to use bf16 anyway)"] if used == "fp32" else [])
