"""The real Fashion-MNIST, from Debian's package: a small subset in the fast suite, full runs marked slow."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import minivision as mv
from minivision.data.sources import locate
from minivision.errors import DataError


def _have_fashion() -> bool:
    try:
        locate("fashion-mnist")
        return True
    except DataError:
        return False


pytestmark = pytest.mark.skipif(not _have_fashion(), reason="Fashion-MNIST not installed (apt-get install -y "
                                "dataset-fashion-mnist)")


def test_small_real_subset_trains_evaluates_and_predicts(tmp_path):
    ds = mv.load_dataset("fashion-mnist")
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    assert (len(ds.train), len(ds.val), len(ds.test)) == (48_000, 12_000, 10_000)
    g = torch.Generator().manual_seed(0)
    small = dataclasses.replace(
        ds, train=ds.train.subset(torch.randperm(len(ds.train), generator=g)[:3000]),
        val=ds.val.subset(torch.arange(1000)), test=ds.test.subset(torch.arange(2000)))
    clf = mv.Classifier(model="cnn1", epochs=2, batch_size=64, out=str(tmp_path)).fit(small, progress=False)
    m = clf.evaluate(small)
    assert m["n"] == 2000
    assert m["accuracy"] > 0.70, m["accuracy"]  # 3,000 real images, two epochs: ~78% measured
    assert clf.predict(ds.test.x[:20]).count("Trouser") >= 1


def test_default_command_on_full_fashion_mnist(tmp_path):
    """The README's main job: `minivision train` with no flags (the 30-second budget), on all
    60,000 images, then `evaluate` on the run. Accuracy only: how long it took is a benchmark's
    business (bench/speed.py), never a test's."""
    p = subprocess.run([sys.executable, "-m", "minivision", "train", "--json", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["test_n"] == 10_000
    assert summary["test_accuracy"] > 0.88  # ~91% measured; a slower machine gets fewer steps
    meta = json.loads((Path(summary["run"]) / "model.json").read_text())
    assert meta["budget"]["budget_s"] == 30 and meta["budget"]["total_steps"] > 100
    e = subprocess.run([sys.executable, "-m", "minivision", "evaluate", summary["run"], "--json"],
                       capture_output=True, text=True, timeout=300)
    assert e.returncode == 0, e.stderr[-2000:]
    assert json.loads(e.stdout)["accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-6)
