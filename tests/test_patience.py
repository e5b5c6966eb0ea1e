"""``train --patience N``: early stopping on the validation loss, the lowest-loss epoch's weights kept bit for bit."""

from __future__ import annotations

import csv
import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from minivision.config import TrainConfig
from minivision.data.dataset import Split
from minivision.errors import MinivisionError
from minivision.listeners import EarlyStopping, Listener
from minivision.train import fit

from .conftest import synthetic_dataset

QUIET = {"progress": False, "log": lambda m: None}


def misled(shifted: float = 0.5):
    """The synthetic set with its own validation split (40 pictures) in which ``shifted`` of the labels name the
    next class: the network learns the training pictures, grows confident on the mislabelled half, and the
    validation loss rises after an epoch or two."""
    ds = synthetic_dataset(160, 30)
    val = ds.train.subset(torch.arange(120, 160))
    y = val.y.clone()
    n = int(len(y) * shifted)
    y[:n] = (y[:n] + 1) % 4
    return dataclasses.replace(ds, train=ds.train.subset(torch.arange(120)), val=Split(val.x, y))


# (validation loss, validation accuracy) per epoch: the lowest loss at epoch 2, the best accuracy at epoch 4
SCRIPT = [(1.0, 0.5), (0.8, 0.6), (0.9, 0.9), (0.95, 0.95), (0.99, 0.97), (1.2, 0.98), (1.3, 0.98)]


@pytest.fixture
def scripted(monkeypatch):
    """The validation figures of each epoch as SCRIPT says (the test split's are computed as usual)."""
    from minivision import train

    real, calls = train.loss_and_accuracy, []

    def figures(logits, y):
        if len(y) != 40:
            return real(logits, y)
        calls.append(1)
        return SCRIPT[len(calls) - 1]

    monkeypatch.setattr(train, "loss_and_accuracy", figures)
    return calls


class Snapshots(Listener):
    """The model's weights at every epoch end (a copy), to compare with what the run kept."""

    def __init__(self):
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def on_epoch_end(self, t, row):
        self.weights[row["epoch"]] = {k: v.detach().clone() for k, v in t.model.state_dict().items()}


def _fit(tmp_path, name="train", listeners=(), resume=None, **kw):
    cfg = TrainConfig(**{"model": "softmax", "epochs": 6, "batch_size": 16, "lr": 0.01, "patience": 2,
                         "precision": "fp32", **kw},
                      out=str(tmp_path), name=name) if resume is None else TrainConfig()
    return fit(cfg, dataset=misled(), listeners=list(listeners), resume=resume, **QUIET)


def test_stops_on_the_validation_loss_and_keeps_the_best_epoch_s_weights_bit_for_bit(tmp_path, scripted):
    snaps = Snapshots()
    r = _fit(tmp_path, listeners=[snaps])
    assert len(r.history) == 4  # the lowest loss at epoch 2, then two epochs without a lower one: stop
    meta = json.loads((r.run_dir / "model.json").read_text())
    assert meta["metrics"]["best_epoch"] == 2 and meta["metrics"]["epochs"] == 4
    assert meta["metrics"]["val_accuracy"] == 0.6
    assert meta["early_stopping"] == {"monitor": "val_loss", "patience": 2, "best_epoch": 2, "best_val_loss": 0.8,
                                      "stopped_epoch": 4}
    kept = load_file(str(r.run_dir / "model.safetensors"))
    want = snaps.weights[2]
    assert kept.keys() == want.keys() and all(torch.equal(kept[k], want[k]) for k in want)
    assert any(not torch.equal(kept[k], snaps.weights[4][k]) for k in want)  # not the last epoch's
    assert any(not torch.equal(kept[k], snaps.weights[1][k]) for k in want)
    # the history records it: results.csv's epochs_since_best, 0 on each new lowest loss
    rows = list(csv.DictReader((r.run_dir / "results.csv").open()))
    assert [int(x["epochs_since_best"]) for x in rows] == [0, 0, 1, 2]
    html = (r.run_dir / "report.html").read_text()
    assert "early stopping (patience 2)" in html and "stopped after epoch 4 of 6" in html
    assert "lowest val loss (epoch 2)" in html
    assert "patience: 2" in (r.run_dir / "args.yaml").read_text()
    # the checkpoint saved at the stop is a finished one: --resume extends the run instead of training on in place
    with pytest.raises(MinivisionError, match="already finished"):
        fit(TrainConfig(), resume=r.run_dir, **QUIET)
    # extended with another patience: honoured (recorded in the new run's args.yaml), never silently ignored
    more = fit(TrainConfig(), dataset=misled(), resume=r.run_dir, resume_changes={"epochs": 7, "patience": 5},
               **QUIET)
    assert len(more.history) == 7 and "patience: 5" in (more.run_dir / "args.yaml").read_text()


def test_the_stop_line_follows_the_epoch_line_which_keeps_the_planned_total(tmp_path, scripted):
    lines: list[str] = []
    cfg = TrainConfig(model="softmax", epochs=6, batch_size=16, lr=0.01, patience=2, out=str(tmp_path), name="log")
    fit(cfg, dataset=misled(), progress=False, log=lines.append)
    epochs = [i for i, ln in enumerate(lines) if ln.startswith("epoch ")]
    stop = [i for i, ln in enumerate(lines) if ln.startswith("early stopping after epoch 4:")]
    assert len(stop) == 1 and lines[epochs[-1]].startswith("epoch 4/6 ")  # the plan (6), not the cut length (4)
    assert stop[0] == epochs[-1] + 1, lines  # the stop is said right after its epoch's line
    assert "lowest 0.8000 at epoch 2" in lines[stop[0]]


def test_without_patience_the_best_accuracy_is_kept_as_before(tmp_path, scripted):
    r = _fit(tmp_path, patience=None)
    assert len(r.history) == 6 and "epochs_since_best" not in r.history[0]  # SCRIPT's first 6 epochs
    meta = json.loads((r.run_dir / "model.json").read_text())
    assert "early_stopping" not in meta and meta["metrics"]["best_epoch"] == 6
    assert "epochs_since_best" not in (r.run_dir / "results.csv").read_text()


def test_a_step_count_run_stops_early_too(tmp_path, scripted):
    """A --budget run trains a planned step count; --patience ends it sooner when the loss stops falling (the
    same path: the run's length is cut at the stopping epoch; whichever comes first ends the run)."""
    r = _fit(tmp_path, epochs=None, steps=48)  # 6 epochs of 8 steps
    assert len(r.history) == 4 and r.history[-1]["epochs_since_best"] == 2


def test_a_real_run_stops_and_an_interrupted_one_resumes_to_the_same_stop_and_weights(tmp_path):
    class StopAt(Listener):
        def on_step_end(self, t):
            if t.step == 11:  # mid-epoch 2 (8 steps an epoch)
                t.stop("step")

    ref = _fit(tmp_path, "ref", epochs=12)
    losses = [row["val_loss"] for row in ref.history]
    assert len(ref.history) < 12 and len(ref.history) == 1 + losses.index(min(losses)) + 2
    cut = _fit(tmp_path, "cut", [StopAt()], epochs=12)
    assert cut.interrupted
    done = _fit(tmp_path, resume=cut.run_dir)
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in ref.history]
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in done.history] == strip
    a, b = load_file(str(ref.run_dir / "model.safetensors")), load_file(str(done.run_dir / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_patience_is_checked():
    from minivision.config import check_settings

    with pytest.raises(MinivisionError, match="--patience must be >= 1"):
        check_settings({"patience": 0})
    with pytest.raises(ValueError):
        EarlyStopping(0)
