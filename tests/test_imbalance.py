"""Imbalanced classes: --class-weight balanced, --sampler balanced, and balanced accuracy / macro F1 beside accuracy."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from minivision import imbalance
from minivision.config import TrainConfig
from minivision.errors import MinivisionError
from minivision.listeners import Listener
from minivision.scores import metrics_np
from minivision.train import fit

from .conftest import needs_fashion_mnist, synthetic_dataset

QUIET = {"progress": False, "log": lambda m: None}


def imbalanced_dataset(keep: float = 0.1, n_train: int = 400, n_test: int = 80):
    """The synthetic 4-class set with classes 0 and 1 cut to ``keep`` of their training pictures (test kept whole)."""
    ds = synthetic_dataset(n_train, n_test)
    y = ds.train.y
    kept = []
    for k in range(4):
        idx = torch.nonzero(y == k).flatten()
        kept.append(idx[: max(2, int(len(idx) * keep))] if k < 2 else idx)
    return dataclasses.replace(ds, train=ds.train.subset(torch.sort(torch.cat(kept)).values))


def _fit(tmp_path, name, listeners=(), resume=None, **kw):
    cfg = TrainConfig(**{"model": "softmax", "epochs": 2, "batch_size": 16, "val_split": 0.25, **kw},
                      out=str(tmp_path), name=name) if resume is None else TrainConfig()
    return fit(cfg, dataset=imbalanced_dataset(), listeners=list(listeners), resume=resume, **QUIET)


def _weights(run) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


# ----------------------------------------------------------------------------- the rules

def test_balanced_weights_are_scikit_learn_s():
    from sklearn.utils.class_weight import compute_class_weight

    y = torch.tensor([0] * 10 + [1] * 30 + [2] * 60 + [4] * 5)  # class 3 has no picture
    w = imbalance.balanced_class_weights(y, 5)
    ref = compute_class_weight("balanced", classes=np.array([0, 1, 2, 4]), y=y.numpy())
    assert w.dtype == torch.float32 and w[3] == 0.0
    assert torch.allclose(w[[0, 1, 2, 4]], torch.tensor(ref, dtype=torch.float32))
    assert torch.equal(imbalance.balanced_class_weights(torch.arange(8) % 4, 4), torch.ones(4))  # balanced: all 1
    assert imbalance.loss_weights("none", y, 5) is None and imbalance.loss_weights(None, y, 5) is None


def test_shuffle_is_the_old_permutation_and_balanced_is_seeded_and_even():
    y = torch.tensor([0] * 900 + [1] * 90 + [2] * 10)
    g = torch.Generator().manual_seed(7)
    assert torch.equal(imbalance.epoch_order("shuffle", y, 3, torch.Generator().manual_seed(7)),
                       torch.randperm(1000, generator=g))  # runs without --sampler keep their history
    a = imbalance.epoch_order("balanced", y, 3, torch.Generator().manual_seed(7))
    b = imbalance.epoch_order("balanced", y, 3, torch.Generator().manual_seed(7))
    c = imbalance.epoch_order("balanced", y, 3, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c) and a.dtype == torch.int64 and len(a) == 1000
    share = torch.bincount(y[a], minlength=3).double() / 1000
    assert torch.all((share > 0.28) & (share < 0.39)), share  # a third each, where the data has 90% / 9% / 1%
    with pytest.raises(ValueError):
        imbalance.epoch_order("oversample", y, 3, g)


def test_balanced_accuracy_and_macro_f1_are_scikit_learn_s():
    from sklearn.metrics import balanced_accuracy_score, f1_score

    rng = np.random.default_rng(0)
    y = np.array([0] * 80 + [1] * 15 + [2] * 5)
    logits = rng.normal(size=(100, 3)).astype(np.float32)
    logits[np.arange(100), y] += rng.uniform(0, 2.5, size=100).astype(np.float32)  # mostly right, some wrong
    m = metrics_np(logits, y, ["a", "b", "c"])
    pred = logits.argmax(1)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-12)
    assert m["balanced_accuracy"] != pytest.approx(m["accuracy"])  # imbalanced: they tell different stories
    empty = metrics_np(np.zeros((0, 3), np.float32), np.zeros(0, np.int64), ["a", "b", "c"])
    assert np.isnan(empty["balanced_accuracy"]) and np.isnan(empty["macro_f1"])


# ----------------------------------------------------------------------------- training with them

def test_class_weights_weigh_the_loss_and_are_recorded(tmp_path, monkeypatch):
    seen = []
    real = torch.nn.functional.cross_entropy

    def spy(logits, target, *a, **kw):
        seen.append(kw.get("weight"))
        return real(logits, target, *a, **kw)

    monkeypatch.setattr("minivision.train.F.cross_entropy", spy)
    r = _fit(tmp_path, "weighted", class_weight="balanced", epochs=1)
    args = yaml.safe_load((r.run_dir / "args.yaml").read_text())
    assert args["class_weight"] == "balanced" and args["sampler"] == "shuffle"
    ds = imbalanced_dataset()
    w = [x for x in seen if x is not None]
    assert w and w[0][0] > 1.0 > w[0][3]  # the cut classes weigh more, the full ones less
    # from the training split's counts (after the validation split was taken out), not the whole set's
    assert not torch.allclose(w[0], imbalance.balanced_class_weights(ds.train.y, 4))
    # the history's training loss stays the plain cross-entropy, comparable with the validation loss
    assert np.isfinite(r.history[0]["train_loss"])
    plain = _fit(tmp_path, "plain", epochs=1)
    assert yaml.safe_load((plain.run_dir / "args.yaml").read_text())["class_weight"] == "none"
    a, b = _weights(r.run_dir), _weights(plain.run_dir)
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_balanced_sampler_evens_the_batches_and_resumes_bit_exact(tmp_path):
    class StopAt(Listener):
        def on_step_end(self, t):
            if t.step == 20:  # mid-epoch 2 (15 steps an epoch)
                t.stop("step")

    ref = _fit(tmp_path, "ref", sampler="balanced")
    cut = _fit(tmp_path, "cut", [StopAt()], sampler="balanced")
    assert cut.interrupted
    done = _fit(tmp_path, "cut", resume=cut.run_dir)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in ref.history]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in done.history] == strip
    a, b = _weights(ref.run_dir), _weights(done.run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    plain = _fit(tmp_path, "plain")
    assert plain.history[0]["train_loss"] != ref.history[0]["train_loss"]  # another order of pictures
    assert yaml.safe_load((ref.run_dir / "args.yaml").read_text())["sampler"] == "balanced"


def test_both_corrections_at_once_are_refused_in_one_line(tmp_path):
    with pytest.raises(MinivisionError, match="--class-weight balanced or --sampler balanced, not both"):
        _fit(tmp_path, "both", class_weight="balanced", sampler="balanced")
    assert not (tmp_path / "both").exists()
    out = subprocess.run([sys.executable, "-m", "minivision", "train", "--data", "nowhere.csv", "--sampler",
                          "balanced", "--class-weight", "balanced", "--epochs", "1"], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, out.stderr
    assert "not both" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run([sys.executable, "-m", "minivision", "train", "--sampler", "even"], capture_output=True,
                         text=True)
    assert out.returncode == 2 and "invalid choice" in out.stderr and "Traceback" not in out.stderr


def test_evaluate_and_the_report_show_balanced_accuracy_and_macro_f1(tmp_path):
    import minivision as mv
    from minivision.evaluate import format_metrics

    r = _fit(tmp_path, "run", epochs=1)
    html = (r.run_dir / "report.html").read_text()
    assert "test balanced accuracy" in html and "macro F1" in html
    clf = mv.load(r.run_dir)
    m = clf.evaluate(imbalanced_dataset())
    cm = np.array(m["confusion"])
    assert m["balanced_accuracy"] == pytest.approx((np.diag(cm) / cm.sum(1)).mean(), abs=1e-12)
    text = format_metrics(m, clf.classes_, "test")
    assert f"balanced accuracy {m['balanced_accuracy']:.2%}  macro F1 {m['macro_f1']:.2%}" in text.splitlines()[1]


# ----------------------------------------------------------------------------- real data

@needs_fashion_mnist
def test_fashion_mnist_with_four_classes_cut(tmp_path):
    """Fashion-MNIST, 2,000 training pictures with classes 0, 2, 4, 6 cut to 5%: the balanced sampler's batches
    hold every class about equally, the weights follow scikit-learn's rule, and evaluate's balanced accuracy is
    the mean recall on the (balanced) test set."""
    import minivision as mv
    from minivision.data.split import make_val

    ds = mv.load_dataset("fashion-mnist")
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(ds.train), generator=g)[:2000]
    y = ds.train.y[idx]
    cut = torch.isin(y, torch.tensor([0, 2, 4, 6]))
    keep = torch.cat([idx[~cut], idx[cut][: int(cut.sum() * 0.05)]])
    small = dataclasses.replace(ds, train=ds.train.subset(keep), test=ds.test.subset(torch.arange(1000)), val=None)
    counts = torch.bincount(small.train.y, minlength=10)
    assert counts[[0, 2, 4, 6]].max() * 10 < counts[[1, 3, 5]].min()
    order = imbalance.epoch_order("balanced", small.train.y, 10, torch.Generator().manual_seed(1))
    share = torch.bincount(small.train.y[order], minlength=10).double() / len(order)
    assert torch.all((share > 0.06) & (share < 0.14)), share
    run = fit(TrainConfig(model="softmax", epochs=1, batch_size=64, sampler="balanced", out=str(tmp_path)),
              dataset=make_val(small, val_split=0.2, val_first=None, seed=0), **QUIET)
    m = mv.load(run.run_dir).evaluate(dataclasses.replace(small, val=None))
    assert m["n"] == 1000
    cm = np.array(m["confusion"])
    assert m["balanced_accuracy"] == pytest.approx((np.diag(cm) / cm.sum(1)).mean(), abs=1e-12)
