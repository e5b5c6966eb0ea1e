"""init_from: start a training from a run's or a weights file's weights (the seam fine-tuning builds on)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file

from minivision.cli import main
from minivision.config import TrainConfig
from minivision.errors import MinivisionError
from minivision.listeners import Listener
from minivision.runfiles import load_model
from minivision.train import fit

from .conftest import synthetic_dataset


class StartWeights(Listener):
    """The model's weights as training starts (before the first step)."""

    def on_fit_start(self, t):
        self.state = {k: v.detach().clone() for k, v in t.model.state_dict().items()}


def _fit(tmp_path, ds, listeners=(), **kw):
    return fit(TrainConfig(**{"epochs": 1, "batch_size": 32, "out": str(tmp_path), **kw}), dataset=ds,
               progress=False, log=lambda m: None, listeners=list(listeners))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    out = tmp_path_factory.mktemp("src")
    return fit(TrainConfig(model="cnn1", epochs=2, batch_size=32, out=str(out), normalize="standard"),
               dataset=synthetic_dataset(240, 80), progress=False, log=lambda m: None).run_dir


def test_same_classes_keep_every_weight_and_the_preprocessing(tmp_path, source):
    seen = StartWeights()
    r = _fit(tmp_path, synthetic_dataset(240, 80, seed=1), [seen], init_from=str(source))
    src = load_model(source)
    assert r.config.model == "cnn1"  # the run's network, without --model
    assert all(torch.equal(seen.state[k], v) for k, v in src.model.state_dict().items())
    meta = json.loads((r.run_dir / "model.json").read_text())
    assert meta["init_from"] == {"from": str(source), "head": "kept"}
    assert meta["preprocess"] == src.preprocess.to_dict()  # the source's normalisation, not refitted


def test_other_classes_get_a_new_head_on_the_same_backbone(tmp_path, source):
    ds = synthetic_dataset(240, 80, classes=3, seed=2)
    ds = dataclasses.replace(ds, classes=["a", "b", "c"])
    seen = StartWeights()
    r = _fit(tmp_path, ds, [seen], init_from=str(source))
    src = load_model(source).model.state_dict()
    head = load_model(source).model.classifier_name
    for k, v in src.items():
        if k.startswith(head + "."):
            assert seen.state[k].shape[0] == 3  # 3 classes now
        else:
            assert torch.equal(seen.state[k], v), k
    assert json.loads((r.run_dir / "model.json").read_text())["init_from"]["head"] == "reset"


def test_a_bare_weights_file_needs_the_network_named(tmp_path, source):
    weights = tmp_path / "w.safetensors"
    save_file(load_model(source).model.state_dict(), str(weights))
    with pytest.raises(MinivisionError, match="needs --model"):
        _fit(tmp_path, synthetic_dataset(240, 80), init_from=str(weights))
    seen = StartWeights()
    _fit(tmp_path, synthetic_dataset(240, 80), [seen], init_from=str(weights), model="cnn1")
    assert all(torch.equal(seen.state[k], v) for k, v in load_model(source).model.state_dict().items())
    with pytest.raises(MinivisionError, match="has shape|is not in"):
        _fit(tmp_path, synthetic_dataset(240, 80), init_from=str(weights), model="mlp", val_split=0.2)


def test_mismatches_are_one_line_errors(tmp_path, source):
    with pytest.raises(MinivisionError, match="holds a cnn1 network"):
        _fit(tmp_path, synthetic_dataset(240, 80), init_from=str(source), model="mlp")
    with pytest.raises(MinivisionError, match="takes 1x28x28 images"):
        _fit(tmp_path, synthetic_dataset(240, 80, size=32), init_from=str(source))
    with pytest.raises(MinivisionError, match="no such run folder"):
        _fit(tmp_path, synthetic_dataset(240, 80), init_from=str(tmp_path / "nope"))


def test_cli_flag(tmp_path, source, capsys):
    from .conftest import synthetic_images, write_pixel_csv

    x, y = synthetic_images(300, classes=4)
    write_pixel_csv(tmp_path / "train.csv", x[:240, 0], y[:240])
    rc = main(["train", "--data", str(tmp_path / "train.csv"), "--init-from", str(source), "--epochs", "1",
               "--out", str(tmp_path), "--json"])
    assert rc == 0
    run = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["run"]
    args = (tmp_path / "train" / "args.yaml").read_text()
    assert f"init_from: {source}" in args and run.endswith("train")
