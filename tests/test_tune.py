"""``minivision tune``: the search space and its checks, the storage's errors, a tiny study's outputs, the
printed command, continuing a study, a pruned trial, Ctrl-C, and two workers on one SQLite study."""

from __future__ import annotations

import csv
import dataclasses
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from minivision import tune as tn
from minivision.cli import build_parser, main
from minivision.config import given_settings
from minivision.errors import MinivisionError

from .conftest import synthetic_images, write_pixel_csv

TINY_SPACE = {"lr": {"low": 1e-4, "high": 1e-2, "log": True}, "batch_size": 32,
              "label_smoothing": {"low": 0.0, "high": 0.2, "step": 0.05}}


@pytest.fixture
def tiny_csv(tmp_path) -> Path:
    """160 learnable 28x28 grey pictures of 4 classes (the last 40 as the test file's), a quarter of them with
    a random label, so trials do not all reach 100% (parameter importances need accuracies that differ)."""
    x, y = synthetic_images(200, classes=4)
    rng = np.random.default_rng(1)
    noisy = rng.random(len(y)) < 0.25
    y[noisy] = rng.integers(0, 4, int(noisy.sum()))
    write_pixel_csv(tmp_path / "train.csv", x[:160, 0], y[:160])
    write_pixel_csv(tmp_path / "test.csv", x[160:, 0], y[160:])
    return tmp_path / "train.csv"


def _settings(tmp_path, data, **kw) -> tn.TuneSettings:
    base = dict(trials=2, data=str(data), model="cnn1", epochs=1, space=TINY_SPACE, out=str(tmp_path / "out"))
    return tn.TuneSettings(**{**base, **kw})


def _quiet(_: str) -> None:
    pass


# ----------------------------------------------------------------------------- the search space

def test_default_space_follows_the_model_family():
    cnn = tn.check_space(tn.default_space("cnn1"))  # Adam 0.001 at a constant rate, batch 256, no weight decay
    assert (cnn["lr"].low, cnn["lr"].high, cnn["lr"].log) == (1e-4, 1e-2, True)
    assert cnn["batch_size"].choices == (128, 256, 512)
    assert (cnn["weight_decay"].low, cnn["weight_decay"].high) == (1e-6, 1e-3)
    mv = tn.check_space(tn.default_space("mvnet-t"))  # one-cycle SGD 0.2, weight decay 5e-4, batch 128
    assert (mv["lr"].low, mv["lr"].high) == (0.02, 0.4)
    assert (mv["weight_decay"].low, mv["weight_decay"].high) == (5e-5, 5e-3)
    assert mv["batch_size"].choices == (64, 128, 256)
    assert set(mv) == {"lr", "weight_decay", "batch_size", "label_smoothing", "augment_strength"}


def test_default_space_on_a_small_dataset_keeps_train_s_batch_rule():
    """240 training pictures: train uses batches of 60 (budget.small_data_batch, 4 steps an epoch), so the
    default space searches 30 and 60, not cnn1's 128/256/512 (one step an epoch)."""
    from minivision.budget import small_data_batch

    assert small_data_batch(240, 256) == 60
    assert tn.check_space(tn.default_space("cnn1", 240))["batch_size"].choices == (30, 60)
    assert tn.check_space(tn.default_space("cnn1", 54_000))["batch_size"].choices == (128, 256, 512)


def test_a_tune_on_a_small_dataset_searches_small_batches_and_says_so(tmp_path, tiny_csv):
    lines: list[str] = []
    r = tn.tune(_settings(tmp_path, tiny_csv, trials=1, space=None), log=lines.append)
    note = [ln for ln in lines if ln.startswith("note:")]
    assert len(note) == 1 and "instead of the recipe's 128, 256, 512" in note[0], lines
    searched = yaml.safe_load((r.tune_dir / "best.yaml").read_text())["settings"]["batch_size"]
    assert searched <= 160 // 4, searched  # at least 4 steps an epoch, as train would


def test_bad_budget_per_trial_names_its_flag(tmp_path, capsys):
    rc = main(["tune", "--trials", "1", "--budget-per-trial", "10x", "--out", str(tmp_path / "o"), "--model", "cnn1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: --budget-per-trial: expected a duration"), err


def test_augment_strength_makes_valid_specs():
    from minivision.data.augment import Augment

    assert tn.augment_for(0, "fashion-mnist") == "none"
    full = tn.augment_for(1, "fashion-mnist")
    assert full == "flip,shift=4,rotate=15,zoom=0.15,erase=0.5"
    assert "flip" not in tn.augment_for(1, "mnist")  # a mirrored digit is another digit
    for s in (0.25, 0.5, 0.75, 1.0):
        Augment.parse(tn.augment_for(s, "cifar10"))  # raises on a malformed spec


@pytest.mark.parametrize("text, expected", [
    ("lrr: {low: 0.001, high: 0.1}", "did you mean 'lr'"),
    ("epochs: {low: 1, high: 5}", "cannot be searched"),
    ("val_split: 0.1", "cannot be searched"),
    ("lr: {low: 0.1, high: 0.01}", "low must be below high"),
    ("lr: {low: 0, high: 0.1}", "must be > 0"),
    ("weight_decay: {low: 0, high: 0.1, log: true}", "a log scale needs low > 0"),
    ("lr: {low: 0.001, hgih: 0.1}", "did you mean 'high'"),
    ("optimizer: [adam, sgdd]", "did you mean 'sgd'"),
    ("optimizer: {low: 1, high: 2}", "is not a number"),
    ("batch_size: {low: 16.5, high: 64}", "must be an integer"),
    ("batch_size: {low: 16, high: 64, step: 0.5}", "step must be"),
    ("label_smoothing: {low: 0, high: 1.5}", "must be in [0, 1)"),
    ("augment: none\naugment_strength: 0.5", "not both"),
    ("lr: [", "not valid YAML"),
    ("- lr", "expected a mapping"),
    ("", "expected a mapping"),
])
def test_bad_space_file_is_one_line_error(tmp_path, text, expected, capsys):
    f = tmp_path / "space.yaml"
    f.write_text(text)
    with pytest.raises(MinivisionError) as e:
        tn.check_space(tn.read_space(f), f"--space {f}")
    assert expected in str(e.value) and "\n" not in str(e.value) and str(f) in str(e.value)
    # the command: one error line, exit 2, nothing trained and no folder made
    rc = main(["tune", "--trials", "1", "--space", str(f), "--out", str(tmp_path / "o"), "--model", "cnn1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: --space") and expected in err[0]
    assert not (tmp_path / "o").exists()


def test_missing_space_file(tmp_path):
    with pytest.raises(MinivisionError, match="file not found"):
        tn.read_space(tmp_path / "nope.yaml")


@pytest.mark.parametrize("url, expected", [
    ("not a url", "--storage not a url"),
    ("sqlite:////no/such/folder/study.db", "unable to open database file"),
    ("postgresql://tuner:s3cret@127.0.0.1:1/db", "--storage postgresql://tuner:***@127.0.0.1:1/db"),
    ("foo://bar", "unknown database kind 'foo'; use sqlite:///FILE, postgresql://"),
])
def test_bad_storage_is_one_line_error_without_the_password(tmp_path, url, expected, capsys):
    rc = main(["tune", "--trials", "1", "--storage", url, "--out", str(tmp_path / "o"), "--model", "cnn1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: --storage") and expected in err[0], err
    assert "s3cret" not in err[0]
    assert not (tmp_path / "o").exists()


def test_a_folder_that_is_not_a_tune_folder_is_never_used(tmp_path):
    (tmp_path / "runs" / "tune").mkdir(parents=True)
    (tmp_path / "runs" / "tune" / "mine.txt").write_text("keep")
    with pytest.raises(MinivisionError, match="is not a tune folder"):
        tn.tune_folder(str(tmp_path / "runs"), "tune")
    assert (tmp_path / "runs" / "tune" / "mine.txt").read_text() == "keep"


def test_sampler_draws_per_trial_number():
    """Workers on one study draw different settings (trial numbers differ); the same seed draws the same."""
    import optuna

    def draws(seed):
        study = optuna.create_study(sampler=tn._trial_seeded_tpe(seed), direction="maximize")
        out = []
        for _ in range(3):
            t = study.ask()
            out.append((t.suggest_float("lr", 1e-4, 1e-1, log=True), t.suggest_categorical("bs", [32, 64, 128])))
            study.tell(t, 0.5)
        return out

    a, b, c = draws(0), draws(0), draws(1)
    assert a == b and a != c
    assert len({x[0] for x in a}) == 3  # trials 0, 1, 2 draw different rates


def test_default_pruner_waits_for_three_trials_and_the_second_epoch():
    import optuna

    study = optuna.create_study(direction="maximize", pruner=tn.default_pruner())

    def trial_below_the_median():
        t = study.ask()
        t.report(0.1, step=1)
        first = t.should_prune()
        t.report(0.1, step=2)
        return t, first, t.should_prune()

    for _ in range(3):
        t, first, second = trial_below_the_median()
        assert not first and not second  # the first 3 trials run in full
        study.tell(t, 0.1)
    for v in (0.9, 0.9, 0.9):  # three better trials: the median moves up
        t = study.ask()
        t.report(v, step=1)
        t.report(v, step=2)
        study.tell(t, v)
    t, first, second = trial_below_the_median()
    assert not first and second  # never after the first epoch; after the second, below the median


def _study_of(values):
    """An in-memory study of complete trials with these validation accuracies (settings drawn apart)."""
    import optuna
    from optuna.distributions import FloatDistribution

    study = optuna.create_study(direction="maximize", study_name="plots")
    study.set_user_attr("minivision", {"space": TINY_SPACE, "storage": "sqlite:///x", "data": "d"})
    for i, v in enumerate(values):
        study.add_trial(optuna.trial.create_trial(
            params={"lr": 10 ** -(1 + i), "label_smoothing": 0.05 * (i % 3)}, value=v,
            distributions={"lr": FloatDistribution(1e-5, 1, log=True), "label_smoothing": FloatDistribution(0, 0.2)},
            user_attrs={"settings": {"lr": 10 ** -(1 + i)}, "run": f"/x/trials/trial{i}"}))
    return study


def test_plots_and_report_from_a_study(tmp_path):
    files = tn.write_plots(_study_of([0.5, 0.7, 0.6, 0.9]), tmp_path)
    assert set(files) == {"history", "importances"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in files.values())
    page = tn.write_report(_study_of([0.5, 0.7, 0.6, 0.9]), tmp_path, None, files, model="cnn1").read_text()
    assert page.count("data:image/png") == 2 and "Parameter importances" in page and "http" not in page
    # equal accuracies: nothing to attribute; the page says why instead of a picture
    same = tmp_path / "same"
    same.mkdir()
    files = tn.write_plots(_study_of([0.75, 0.75]), same)
    assert set(files) == {"history"}
    page = tn.write_report(_study_of([0.75, 0.75]), same, None, files, model="cnn1").read_text()
    assert "No parameter importances yet" in page and page.count("data:image/png") == 1


# ----------------------------------------------------------------------------- studies that train

def test_tiny_study_writes_its_outputs_and_a_rerun_continues(tmp_path, tiny_csv):
    s = _settings(tmp_path, tiny_csv, test_data=str(tiny_csv.parent / "test.csv"))
    r = tn.tune(s, log=_quiet)
    d = r.tune_dir
    assert r.counts["complete"] == 2 and not r.interrupted and d == tmp_path / "out" / "tune"
    for name in ("best.yaml", "trials.csv", "trials.md", "history.png", "report.html", "study.db", "tune.json"):
        assert (d / name).is_file(), name
    best = yaml.safe_load((d / "best.yaml").read_text())
    assert best["trial"] == r.best["trial"] and Path(best["run"]).parent == d / "trials"
    assert (Path(best["run"]) / "model.json").is_file()  # the best trial's run folder, a normal run
    rows = list(csv.DictReader((d / "trials.csv").open()))
    assert [r_["trial"] for r_ in rows] == ["0", "1"] and sum("(best)" in r_["state"] for r_ in rows) == 1
    assert {"lr", "label_smoothing", "val_accuracy", "run"} <= set(rows[0])
    assert "Best settings" in (d / "report.html").read_text() and "data:image/png" in (d / "report.html").read_text()

    # the printed command is a valid train command with the best trial's settings
    words = shlex.split(best["command"])
    assert words[:2] == ["minivision", "train"]
    given = given_settings(build_parser().parse_args(words[1:]))
    assert given["lr"] == best["settings"]["lr"] and given["batch_size"] == 32 and given["epochs"] == 1
    assert given == {k: v for k, v in best["settings"].items() if v not in (None, False)}  # as argparse gives them

    # the same settings with more trials continue the study (same folder, numbers go on)
    r2 = tn.tune(dataclasses.replace(s, trials=3), log=_quiet)
    assert r2.tune_dir == d and r2.counts["done"] == 3
    assert sorted(p.name for p in (d / "trials").iterdir()) == ["trial0", "trial1", "trial2"]
    assert len(list(csv.DictReader((d / "trials.csv").open()))) == 3
    # nothing to do once the study has its trials
    r3 = tn.tune(dataclasses.replace(s, trials=3), log=_quiet)
    assert r3.counts["done"] == 3
    # fewer trials asked for than the study has: no "3 of 2"
    lines: list[str] = []
    assert tn.tune(dataclasses.replace(s, trials=2), log=lines.append).counts["done"] == 3
    assert "3 trials done, --trials 2" in lines[0] and "3 of 2" not in "\n".join(lines), lines
    # other settings on the same study are refused, in one line
    with pytest.raises(MinivisionError, match="was started with --epochs 1, not 2"):
        tn.tune(dataclasses.replace(s, trials=4, epochs=2), log=_quiet)


def test_a_pruned_trial_is_recorded_as_pruned(tmp_path, tiny_csv):
    import optuna

    s = _settings(tmp_path, tiny_csv, trials=1, epochs=3)
    always = optuna.pruners.ThresholdPruner(lower=1.01)  # every accuracy is below: prune at the first chance
    r = tn.tune(s, pruner=always, log=_quiet)
    assert r.counts == {"complete": 0, "pruned": 1, "diverged": 0, "failed": 0, "running": 0, "done": 1}
    assert r.best is None and not (r.tune_dir / "best.yaml").exists()
    rows = list(csv.DictReader((r.tune_dir / "trials.csv").open()))
    assert rows[0]["state"] == "pruned" and rows[0]["epochs"] == "1"
    run = r.tune_dir / rows[0]["run"]
    assert (run / "model.json").is_file() and len(list(csv.DictReader((run / "results.csv").open()))) == 1


def test_ctrl_c_keeps_the_finished_trials_and_a_rerun_continues(tmp_path, tiny_csv, monkeypatch):
    calls = []
    original = tn.PruneListener.on_fit_start

    def interrupt_second(self, trainer):  # as Ctrl-C in the second trial: stop with a checkpoint
        original(self, trainer)
        calls.append(self.trial.number)
        if self.trial.number == 1:
            trainer.stop("step")

    monkeypatch.setattr(tn.PruneListener, "on_fit_start", interrupt_second)
    s = _settings(tmp_path, tiny_csv, trials=2)
    r = tn.tune(s, log=_quiet)
    assert r.interrupted and r.counts["complete"] == 1 and r.counts["failed"] == 1
    assert (r.tune_dir / "best.yaml").is_file()  # written for the trials done
    monkeypatch.setattr(tn.PruneListener, "on_fit_start", original)
    r2 = tn.tune(s, log=_quiet)
    assert not r2.interrupted and r2.counts["complete"] == 2 and calls == [0, 1]


# ---------------------------------------------------------------------------- two workers (fast: 17 s); slow: real data

def test_two_workers_on_one_sqlite_study(tmp_path, tiny_csv):
    cmd = [sys.executable, "-m", "minivision", "tune", "--data", str(tiny_csv), "--model", "cnn1", "--epochs", "1",
           "--trials", "4", "--out", str(tmp_path / "out"), "--name", "shared"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
               for _ in range(2)]
    outputs = [w.communicate(timeout=900)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    import optuna

    study = optuna.load_study(study_name="shared", storage=f"sqlite:///{tmp_path / 'out' / 'shared' / 'study.db'}")
    trials = study.get_trials()
    assert len(trials) >= 4 and len({t.number for t in trials}) == len(trials)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    runs = {t.user_attrs["run"] for t in trials}
    assert len(runs) == len(trials) and all((Path(p) / "model.json").is_file() for p in runs)
    assert all("trial " in o for o in outputs)  # both workers trained


@pytest.mark.slow
def test_cli_prints_a_command_that_trains(tmp_path, tiny_csv, capsys):
    assert main(["tune", "--data", str(tiny_csv), "--model", "cnn1", "--epochs", "1", "--trials", "1",
                 "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out.splitlines()
    command = next(line for line in out if line.startswith("minivision train "))
    words = shlex.split(command)[1:] + ["--out", str(tmp_path / "again")]
    assert main(words) == 0
    assert (tmp_path / "again" / "train" / "model.json").is_file()


@pytest.mark.slow
@pytest.mark.needs_fashion_mnist
def test_real_fashion_mnist_study(tmp_path):
    import minivision as mv

    ds = mv.load_dataset("fashion-mnist")
    g = torch.Generator().manual_seed(0)
    small = dataclasses.replace(ds, train=ds.train.subset(torch.randperm(len(ds.train), generator=g)[:2000]),
                                test=ds.test.subset(torch.arange(500)))
    s = tn.TuneSettings(trials=3, model="cnn1", epochs=2, out=str(tmp_path / "out"), seed=0)
    r = tn.tune(s, dataset=small, log=_quiet)
    assert r.counts["done"] == 3 and r.best is not None
    assert r.best["value"] > 0.6  # 2 epochs of cnn1 on 1,600 real pictures: far above chance (10%)
    assert (r.tune_dir / "importances.png").is_file() and (r.tune_dir / "history.png").is_file()
