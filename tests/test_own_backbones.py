"""minivision's own pretrained backbones (mvnet-fashion, mvnet-cifar10): shipped files, cards, loading.

The shipped safetensors and their cards must agree (sha256, parameter count, tensor names and shapes
of the registered network the card names), each loads through ``pretrained.build_pretrained`` into
grey and colour data with its head reset, and ``bench/pretrain_backbones.py`` (which made them)
still writes a valid card (tiny mode, slow).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from minivision import pretrained
from minivision.errors import MinivisionError
from minivision.fileio import load_tensors
from minivision.models.registry import count_parameters, create_model
from tests.conftest import needs_fashion_mnist

ROOT = Path(__file__).resolve().parents[1]
OWN = ("mvnet-cifar10", "mvnet-fashion")
CARD_KEYS = {"name", "model", "model_kwargs", "pretrained_on", "dataset", "by", "licence", "source", "channels",
             "size", "mean", "std", "file", "sha256", "params", "results", "notes"}
TRAINED_ON = {"mvnet-fashion": ("fashion-mnist", 1, [28, 28]), "mvnet-cifar10": ("cifar10", 3, [32, 32])}


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_pretrain_backbones", ROOT / "bench" / "pretrain_backbones.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_card(card: dict, folder: Path) -> dict[str, torch.Tensor]:
    """Everything a card promises about its weights file; returns the file's tensors."""
    assert CARD_KEYS <= set(card), CARD_KEYS - set(card)
    file = folder / card["file"]
    assert card["file"] == f"{card['name']}.safetensors"
    assert hashlib.sha256(file.read_bytes()).hexdigest() == card["sha256"]
    tensors = load_tensors(file)
    net = create_model(card["model"], in_channels=card["channels"], image_size=tuple(card["size"]),
                       num_classes=len(card["classes"]), **card["model_kwargs"])
    own = net.state_dict()
    assert set(tensors) == set(own)  # the registered network's state-dict names, head included
    assert all(tensors[k].shape == own[k].shape and tensors[k].dtype == own[k].dtype for k in own)
    assert card["params"] == count_parameters(net)
    assert len(card["mean"]) == len(card["std"]) == card["channels"]
    assert all(0 < s <= 1 for s in card["std"]) and all(0 <= m <= 1 for m in card["mean"])
    assert 0 < card["results"]["test_accuracy"] <= 1
    assert card["results"]["command"].split("minivision train", 1)[1].startswith(" --data")
    assert card["by"] == "minivision" and "MIT" in card["licence"]
    return tensors


# ----------------------------------------------------------------------------- the shipped files

@pytest.mark.parametrize("name", OWN)
def test_shipped_card_matches_its_weights(name):
    card_path = pretrained.BACKBONES_DIR / f"{name}.json"
    card = json.loads(card_path.read_text())
    assert card["name"] == name
    dataset, channels, size = TRAINED_ON[name]
    assert (card["dataset"], card["channels"], card["size"]) == (dataset, channels, size)
    tensors = _check_card(card, card_path.parent)
    assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())
    assert card["params"] == {1: 292_656, 3: 292_944}[channels] and card["model"] == "mvnet"  # mvnet's docstring
    assert card["results"]["test_accuracy"] > 0.4 and card["results"]["test_n"] == 10_000  # real pretraining
    info = pretrained.backbone_info(name)  # the catalogue reads it: contract 1's fields
    assert (info.dataset, info.channels, info.size, info.sha256) == (dataset, channels, tuple(size), card["sha256"])
    assert name in [b.name for b in pretrained.list_backbones()]


@pytest.mark.parametrize("name", OWN)
@pytest.mark.parametrize("channels,size,classes", [(1, (28, 28), 3), (3, (32, 32), 5), (3, (40, 24), 2)])
def test_own_backbone_loads_into_grey_and_colour_data_with_a_new_head(name, channels, size, classes):
    state = pretrained.backbone_state(name)
    model, arch = pretrained.build_pretrained(name, in_channels=channels, image_size=size, num_classes=classes)
    got = model.state_dict()
    assert got["head.weight"].shape == (classes, 128)
    assert not torch.equal(got["head.weight"][: min(classes, 10)], state["head.weight"][:classes])  # reset
    stem = "stem.conv.weight"
    for key in got:  # everything but the head and the first conv is the backbone's, unchanged
        if key not in ("head.weight", stem):
            assert torch.equal(got[key], state[key]), key
    trained_channels = TRAINED_ON[name][1]
    if channels == trained_channels:
        assert torch.equal(got[stem], state[stem])
    else:  # the first conv adapted: a grey picture repeated to colour (or colour summed) answers alike
        assert got[stem].shape[1] == channels
        torch.testing.assert_close(got[stem].sum(1), state[stem].sum(1))
    model.eval()
    x = torch.rand(4, channels, *size)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (4, classes) and logits.dtype == torch.float32 and torch.isfinite(logits).all()
    rebuilt = create_model(arch["name"], in_channels=arch["in_channels"], image_size=tuple(arch["image_size"]),
                           num_classes=arch["num_classes"], **arch["kwargs"])
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in got.items()}
    assert pretrained.network_input(model)["from_channels"] == channels


def test_a_damaged_weights_file_is_refused(tmp_path, monkeypatch):
    src = pretrained.BACKBONES_DIR
    for f in ("mvnet-fashion.json", "mvnet-fashion.safetensors"):
        (tmp_path / f).write_bytes((src / f).read_bytes())
    data = bytearray((tmp_path / "mvnet-fashion.safetensors").read_bytes())
    data[-1] ^= 1
    (tmp_path / "mvnet-fashion.safetensors").write_bytes(bytes(data))
    monkeypatch.setattr(pretrained, "BACKBONES_DIR", tmp_path)
    with pytest.raises(MinivisionError, match="sha256"):
        pretrained.backbone_state("mvnet-fashion")


@needs_fashion_mnist
def test_mvnet_fashion_recognises_real_fashion_pictures_with_its_cards_normalisation():
    """The card's mean/std and the pretrained head give the card's accuracy on real test pictures."""
    from minivision.data import load_dataset

    card = pretrained.backbone_info("mvnet-fashion")
    model = create_model("mvnet", in_channels=1, image_size=(28, 28), num_classes=10)
    model.load_state_dict(pretrained.backbone_state("mvnet-fashion"))
    model.eval()
    test = load_dataset("fashion-mnist", test_only=True).test
    x = test.x[:2000].float() / 255
    x = (x - torch.tensor(card.mean).view(1, -1, 1, 1)) / torch.tensor(card.std).view(1, -1, 1, 1)
    with torch.no_grad():
        acc = (model(x).argmax(1) == test.y[:2000]).float().mean().item()
    assert abs(acc - card.card["results"]["test_accuracy"]) < 0.03, acc
    wrong = (torch.rand(2000, 1, 28, 28) - 0.5) * 3  # noise is not clothing: near chance
    with torch.no_grad():
        assert (model(wrong).argmax(1) == test.y[:2000]).float().mean().item() < 0.3


# ----------------------------------------------------------------------------- the pretraining command

def test_pretrain_tiny_mode_refuses_to_write_into_the_package(capsys):
    bench = _bench_module()
    assert bench.main(["--tiny", "100"]) == 1
    assert "outside the package" in capsys.readouterr().err
    assert bench.main(["--tiny", "5", "--out", "/tmp/x"]) == 1


def test_pretrain_without_cifar_is_one_line(tmp_path, capsys):
    bench = _bench_module()
    assert bench.main(["--only", "mvnet-cifar10", "--tiny", "100", "--out", str(tmp_path),
                       "--cifar", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("pretrain_backbones: ") and "no such folder" in err and "\n" not in err


def _jpeg_folder(root: Path, per_class: int) -> Path:
    """A CIFAR-10-shaped JPEG folder: 10 classes of 32 x 32 colour pictures (a colour square per class)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    for split, n in (("train", per_class), ("test", per_class // 2)):
        for k, cls in enumerate(names):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                a = rng.integers(0, 80, (32, 32, 3), dtype=np.uint8)
                a[4 + k: 20 + k, 6:22, k % 3] = 230
                Image.fromarray(a).save(root / split / cls / f"{i:04d}.jpg", quality=95)
    return root


@pytest.mark.slow
def test_pretrain_tiny_mode_writes_a_valid_card_for_cifar10(tmp_path):
    cifar = _jpeg_folder(tmp_path / "cifar10-jpg", 12)
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "pretrain_backbones.py"), "--only", "mvnet-cifar10",
                        "--tiny", "100", "--out", str(out), "--cifar", str(cifar)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    card = json.loads((out / "mvnet-cifar10.json").read_text())
    _check_card(card, out)
    assert (card["channels"], card["size"], card["dataset"]) == (3, [32, 32], "cifar10")
    assert card["results"]["test_n"] == 50 and card["results"]["epochs"] == 1
    assert card["source"] == "python3 bench/pretrain_backbones.py --only mvnet-cifar10 --tiny 100"
    assert "--epochs 1 --seed 0" in card["results"]["command"] and "--out" not in card["results"]["command"]
    assert card["results"]["dataset_name"] == "cifar10-jpg"  # the folder's name, as the run recorded it


@pytest.mark.slow
@needs_fashion_mnist
def test_pretrain_tiny_mode_on_real_fashion_mnist(tmp_path):
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "pretrain_backbones.py"), "--only", "mvnet-fashion",
                        "--tiny", "300", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    card = json.loads((out / "mvnet-fashion.json").read_text())
    _check_card(card, out)
    assert (card["channels"], card["size"], card["dataset"]) == (1, [28, 28], "fashion-mnist")
    assert card["classes"][0] == "T-shirt/top" and card["results"]["test_n"] == 150
