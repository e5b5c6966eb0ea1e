"""Fine-tuning as a user meets it: the working size (``--imgsz``) for every kind of data, large pictures
loaded at the working size, a run of another input shape, the API's and the environment's errors, the
budget's arithmetic, the phases in results.png, ``models --pretrained`` in 100 columns (test_pretrained)
and extending a finished fine-tune."""

from __future__ import annotations

import json

import pytest

from minivision import train as train_mod
from minivision.config import TrainConfig, as_parameters, named
from minivision.errors import MinivisionError
from minivision.train import fit

from .conftest import synthetic_dataset
from .test_finetune import install_fake_catalogue


@pytest.fixture
def fake_catalogue(monkeypatch):
    return install_fake_catalogue(monkeypatch)


# ----------------------------------------------------------------------------- errors: the API, the environment


def test_named_writes_a_flag_or_a_parameter():
    assert (named("pretrained", "none"), named("freeze"), named("epochs")) == ("--pretrained none", "--freeze",
                                                                               "--epochs")
    with as_parameters():
        assert (named("pretrained", "none"), named("freeze"), named("epochs")) == ("pretrained='none'",
                                                                                   "freeze=True", "epochs=")
    assert named("freeze") == "--freeze"  # only inside the block


def test_classifier_errors_name_parameters_not_flags(fake_catalogue):
    import minivision as mv

    ds = synthetic_dataset(40, 8)
    with pytest.raises(MinivisionError) as e:
        mv.Classifier(pretrained="none", freeze=True, epochs=1).fit(ds, progress=False)
    assert str(e.value) == "freeze=True keeps a pretrained backbone frozen: drop pretrained='none'"
    with pytest.raises(MinivisionError) as e:
        mv.Classifier(pretrained="fake-net", model="cnn1", epochs=1).fit(ds, progress=False)
    msg = str(e.value)
    assert msg.startswith("pretrained='fake-net' builds the mvnet-t network; drop model='cnn1'") and "--" not in msg
    with pytest.raises(MinivisionError) as e:
        mv.Classifier(pretrained="/nowhere/run", epochs=1).fit(ds, progress=False)
    msg = str(e.value)
    assert msg.startswith("pretrained='/nowhere/run': no such run folder") and "; pretrained= takes " in msg
    assert "--pretrained /" not in msg
    with pytest.raises(MinivisionError) as e:  # the command line keeps its flags
        fit(TrainConfig(pretrained="none", freeze=True), dataset=ds, progress=False, log=lambda m: None)
    assert str(e.value).startswith("--freeze keeps")


@pytest.mark.parametrize("value, says", [("fake-nett", "did you mean 'fake-net'"),
                                         ("/nowhere/weights.safetensors", "no such run folder or weights file")])
def test_a_bad_environment_default_is_refused_before_the_data_loads(tmp_path, fake_catalogue, monkeypatch, value,
                                                                    says):
    def no_loading(*a, **k):
        raise AssertionError("the data was loaded before the check")

    monkeypatch.setattr(train_mod, "load_dataset", no_loading)
    monkeypatch.setenv("MINIVISION_PRETRAINED", value)
    with pytest.raises(MinivisionError) as e:
        fit(TrainConfig(data=str(tmp_path / "pictures"), out=str(tmp_path)), progress=False, log=lambda m: None)
    msg = str(e.value)
    assert msg.startswith(f"$MINIVISION_PRETRAINED={value}: ") and says in msg and "\n" not in msg


# ----------------------------------------------------------------------------- extending a finished fine-tune


def _phases(r) -> list[str]:
    return [row["phase"] for row in r.history]


def test_extending_a_finished_fine_tune_counts_epochs_of_every_layer_as_a_new_one_does(tmp_path, fake_catalogue):
    from minivision import finetune

    ds = synthetic_dataset(240, 80)
    quiet = {"progress": False, "log": lambda m: None}
    first = fit(TrainConfig(pretrained="fake-net", epochs=1, batch_size=32, out=str(tmp_path)), dataset=ds, **quiet)
    head = finetune.head_epochs(7)
    assert _phases(first) == ["head"] * head + ["all"]
    lines: list[str] = []
    longer = fit(TrainConfig(epochs=3), dataset=ds, resume=first.run_dir, progress=False, log=lines.append)
    assert _phases(longer) == ["head"] * head + ["all"] * 3  # 3 epochs of every layer in all, as --epochs 3 is
    assert any("from 1 to 3 epoch(s) of every layer" in line for line in lines), lines
    meta = json.loads((longer.run_dir / "model.json").read_text())
    assert [p["epochs"] for p in meta["pretrained"]["phases"]] == [head, 3]
    assert meta["used"]["epochs_planned"] == head + 3
    with pytest.raises(MinivisionError, match=r"already finished 3 epoch\(s\) of every layer.*N > 3"):
        fit(TrainConfig(epochs=2), dataset=ds, resume=longer.run_dir, **quiet)
    frozen = fit(TrainConfig(pretrained="fake-net", freeze=True, epochs=2, batch_size=32, out=str(tmp_path)),
                 dataset=ds, **quiet)
    more = fit(TrainConfig(epochs=5), dataset=ds, resume=frozen.run_dir, **quiet)
    assert _phases(more) == ["head"] * 5  # --freeze: epochs of the head


def test_extend_phases_adds_every_layer_after_a_head_only_plan():
    from minivision import finetune
    from minivision.models import create_model

    net = create_model("mvnet-t", in_channels=1, image_size=(28, 28), num_classes=4)
    cfg = TrainConfig(epochs=1, lr=1e-3, schedule="onecycle")
    head_only = finetune.phases(cfg, net, freeze=False, steps_per_epoch=7, head_only=True)
    got = finetune.extend_phases(head_only, 2, cfg, net, freeze=False)
    assert [(p.name, p.epochs) for p in got] == [("head", finetune.head_epochs(7)), ("all", 2)]
    assert got[1].lr_scales == finetune.discriminative_lr_scales(net)
    assert finetune.extend_phases(got, 2, cfg, net, freeze=False) == got
