"""mvnet's patch-whitening stem: the filters whiten, stay frozen, are saved with the run, and ``train``
gives the stem to networks trained from scratch on colour pictures only."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from minivision.config import TrainConfig
from minivision.data.split import make_val
from minivision.errors import MinivisionError
from minivision.listeners import Listener
from minivision.models import create_model
from minivision.models.mvnet import (
    AUTO_WHITEN_SIZE,
    MIN_WHITEN_SIZE,
    WHITEN_EPS,
    PatchWhitening,
    default_stem,
)
from minivision.preprocess import Preprocess
from minivision.runfiles import load_model
from minivision.train import DATA_INIT_PICTURES, fit

from .conftest import synthetic_dataset


def _patch_cov(conv: PatchWhitening, x: torch.Tensor) -> torch.Tensor:
    out = F.conv2d(x, conv.weight)[:, : conv.out_channels // 2]
    return torch.cov(out.permute(0, 2, 3, 1).reshape(-1, conv.out_channels // 2).T)


def test_the_filters_decorrelate_patches_to_unit_variance() -> None:
    torch.manual_seed(0)
    x = torch.randn(400, 3, 16, 16) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1)
    x[:, 1] += 0.9 * x[:, 0]  # correlated channels
    x = x + 0.8 * x.roll(1, dims=3)  # correlated neighbours
    conv = PatchWhitening(3)
    before = _patch_cov(conv, x)
    conv.init_from_data(x)
    cov = _patch_cov(conv, x)
    assert conv.out_channels == 24 and conv.weight.shape == (24, 3, 2, 2)
    # decorrelated, and unit variance but where eps (1e-2 of the mean eigenvalue) shrinks a rare direction
    assert torch.allclose(cov - torch.diag(cov.diag()), torch.zeros(12, 12), atol=0.05), cov
    assert cov.diag().max() < 1.01 and cov.diag().min() > 0.5 and (cov.diag() > 0.95).sum() >= 8, cov.diag()
    assert not torch.allclose(before, torch.eye(12), atol=0.3)
    assert torch.equal(conv.weight[12:], -conv.weight[:12])  # each filter and its negative


def test_chunked_covariance_matches_one_pass() -> None:
    torch.manual_seed(1)
    x = torch.randn(50, 3, 9, 9)
    a, b = PatchWhitening(3), PatchWhitening(3)
    a.init_from_data(x, chunk=7)
    b.init_from_data(x, chunk=50)
    assert torch.allclose(a.weight, b.weight, atol=1e-5)


def test_nearly_equal_channels_are_not_blown_up() -> None:
    """Grey photos saved as RGB: the channels differ by a little noise; eps relative to the mean eigenvalue
    keeps the near-empty directions from being multiplied ~45-fold."""
    torch.manual_seed(2)
    grey = torch.randn(300, 1, 12, 12)
    x = grey.repeat(1, 3, 1, 1) + 1e-3 * torch.randn(300, 3, 12, 12)
    conv = PatchWhitening(3)
    conv.init_from_data(x)
    assert _patch_cov(conv, x).diag().max() < 1.05


def test_a_direction_the_pictures_hardly_use_is_amplified_at_most_tenfold(monkeypatch) -> None:
    """Tinted pictures (the channels move together): the gain of a direction they hardly use is capped at
    10 x the mean's, so a colour picture's features are a quarter or less of what airbench's eps gives."""
    from minivision.models import mvnet

    torch.manual_seed(3)
    grey = torch.randn(300, 1, 12, 12)
    tint = torch.tensor([1.0, 0.8, 0.5]).view(1, 3, 1, 1)
    pictures = grey * tint + 1e-4 * torch.randn(300, 3, 12, 12)
    ours, airbench = PatchWhitening(3), PatchWhitening(3)
    ours.init_from_data(pictures)
    monkeypatch.setattr(mvnet, "WHITEN_EPS", 5e-4)
    airbench.init_from_data(pictures)
    mean_eig = pictures.var(dim=(0, 2, 3)).mean()  # the patches' mean eigenvalue: the trace over 12 dims / 12
    assert ours.weight.flatten(1).norm(dim=1).max() <= (WHITEN_EPS * mean_eig) ** -0.5 * 1.01
    colour = torch.randn(50, 3, 12, 12)
    size = [F.conv2d(colour, c.weight).abs().mean() for c in (ours, airbench)]
    assert size[0] < size[1] / 4, size


def test_the_filters_are_a_frozen_buffer_and_the_bias_learns() -> None:
    torch.manual_seed(0)
    model = create_model("mvnet", in_channels=3, image_size=16, num_classes=4, stem="whiten")
    conv = model.stem.conv
    assert isinstance(conv, PatchWhitening)
    assert "stem.conv.weight" in model.state_dict() and "stem.conv.weight" in dict(model.named_buffers())
    assert [n for n, _ in model.named_parameters() if n.startswith("stem")] == ["stem.conv.bias"]
    assert model.init_from_data(torch.randn(64, 3, 16, 16)) is True
    w, b = conv.weight.clone(), conv.bias.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=5e-4)
    F.cross_entropy(model(torch.randn(8, 3, 16, 16)), torch.randint(0, 4, (8,))).backward()
    opt.step()
    assert torch.equal(conv.weight, w) and not torch.equal(conv.bias.detach(), b)
    for p in model.parameters():  # a fine-tune's unfreezing cannot reach it either
        p.requires_grad_(True)
    assert not conv.weight.requires_grad


def test_stem_choice_and_shape_errors() -> None:
    assert default_stem(3, (32, 32)) == "whiten" and default_stem(1, (28, 28)) == "conv"
    assert default_stem(3, (AUTO_WHITEN_SIZE - 1, 32)) == "conv" and default_stem(4, (32, 32)) == "conv"
    assert default_stem(3, (AUTO_WHITEN_SIZE, AUTO_WHITEN_SIZE)) == "whiten"
    assert create_model("mvnet", in_channels=3, image_size=32, num_classes=3).init_from_data(
        torch.randn(4, 3, 32, 32)) is False  # the learned stem: nothing to compute
    with pytest.raises(MinivisionError, match="stem is one of conv, whiten"):
        create_model("mvnet", in_channels=3, image_size=32, num_classes=3, stem="pca")
    with pytest.raises(MinivisionError, match="at least 9x9 with the whitening stem") as err:
        create_model("mvnet-t", in_channels=3, image_size=8, num_classes=3, stem="whiten")
    assert "\n" not in str(err.value)
    with pytest.raises(MinivisionError, match="needs pictures N x 3"):
        PatchWhitening(3).init_from_data(torch.randn(4, 1, 8, 8))
    for name in ("mvnet-t", "mvnet-s", "mvnet", "mvnet-l"):
        net = create_model(name, in_channels=3, image_size=MIN_WHITEN_SIZE, num_classes=3, stem="whiten").eval()
        assert net(torch.randn(2, 3, MIN_WHITEN_SIZE, MIN_WHITEN_SIZE)).shape == (2, 3)


class StartWeights(Listener):
    def on_fit_start(self, t):
        self.state = {k: v.detach().clone() for k, v in t.model.state_dict().items()}


def _fit(tmp_path, ds, name="run", listeners=(), **kw):
    cfg = TrainConfig(**{"model": "mvnet-s", "epochs": 1, "batch_size": 32, "out": str(tmp_path), "name": name,
                         **kw})
    lines: list[str] = []
    r = fit(cfg, dataset=ds, progress=False, log=lines.append, listeners=list(listeners))
    return r, json.loads((r.run_dir / "model.json").read_text()), lines


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("whiten")
    ds = synthetic_dataset(240, 80, channels=3, size=16)
    start = StartWeights()
    r, meta, lines = _fit(out, ds, listeners=[start])
    return {"out": out, "ds": ds, "run": r, "meta": meta, "lines": lines, "start": start.state}


def test_a_colour_run_from_scratch_starts_from_whitening_of_its_own_pictures(colour_run) -> None:
    r, meta, ds = colour_run["run"], colour_run["meta"], colour_run["ds"]
    assert meta["architecture"]["kwargs"] == {"stem": "whiten"}
    assert any(line.startswith("whitening stem: computed from") for line in colour_run["lines"])
    # the filters at the start whiten the training split's pictures as the network sees them
    train = make_val(ds, val_split=0.1, val_first=None, seed=0).train
    pre = Preprocess.from_dict(meta["preprocess"])
    pick = torch.randperm(len(train.y), generator=torch.Generator().manual_seed(0))[:DATA_INIT_PICTURES]
    expected = PatchWhitening(3)
    expected.init_from_data(pre(train.x[pick.sort().values]))
    start = colour_run["start"]["stem.conv.weight"]
    sign = torch.sign((start * expected.weight).sum((1, 2, 3))).view(-1, 1, 1, 1)  # eigenvectors: up to sign
    assert torch.allclose(start, sign * expected.weight, atol=1e-4)
    probe = PatchWhitening(3)
    probe.weight.copy_(start)
    cov = _patch_cov(probe, pre(train.x))
    assert torch.allclose(cov - torch.diag(cov.diag()), torch.zeros(12, 12), atol=0.05)
    assert cov.diag().max() < 1.01 and cov.diag().min() > 0.5
    # ... training leaves them as they were, and the saved run loads them back
    assert torch.equal(r.model.stem.conv.weight.cpu(), start)
    lm = load_model(r.run_dir)
    assert torch.equal(lm.model.stem.conv.weight.cpu(), start)
    x = pre(ds.test.x[:8])
    r.model.eval()
    with torch.no_grad():
        assert torch.allclose(lm.model(x), r.model.cpu()(x), atol=1e-5)


def test_grey_runs_and_a_named_stem_keep_the_learned_stem(tmp_path) -> None:
    _, grey, _ = _fit(tmp_path, synthetic_dataset(160, 40, channels=1, size=16), name="grey")
    assert grey["architecture"]["kwargs"] == {}
    _, own, lines = _fit(tmp_path, synthetic_dataset(160, 40, channels=3, size=16), name="own",
                         extra={"stem": "conv"})
    assert own["architecture"]["kwargs"] == {"stem": "conv"} and not any("whitening" in s for s in lines)
    _, small, _ = _fit(tmp_path, synthetic_dataset(160, 40, channels=3, size=8), name="small")
    assert small["architecture"]["kwargs"] == {}  # 8 x 8: below the size train gives it to
    _, other, _ = _fit(tmp_path, synthetic_dataset(160, 40, channels=3, size=16), name="cnn", model="cnn1")
    assert other["architecture"]["kwargs"] == {}  # a model without a stem option


def test_a_run_started_from_a_whitened_run_keeps_its_filters(colour_run, tmp_path) -> None:
    saved = load_model(colour_run["run"].run_dir).model.stem.conv.weight.clone()
    other = synthetic_dataset(240, 80, channels=3, size=16, seed=9)  # other pictures: no new whitening
    start = StartWeights()
    r, meta, lines = _fit(tmp_path, other, name="from", listeners=[start], model=None,
                          init_from=str(colour_run["run"].run_dir))
    assert meta["architecture"]["kwargs"] == {"stem": "whiten"} and not any("whitening" in s for s in lines)
    assert torch.equal(start.state["stem.conv.weight"], saved)
    assert torch.equal(r.model.stem.conv.weight.cpu(), saved)


def test_a_budget_run_on_colour_pictures_times_and_trains_the_whitened_networks(tmp_path) -> None:
    """The budget's ladder builds its networks from the user's settings: each rung gets the stem."""
    lines: list[str] = []
    r = fit(TrainConfig(budget=5.0, epochs=1, out=str(tmp_path)), dataset=synthetic_dataset(160, 40, channels=3,
                                                                                          size=16),
            progress=False, log=lines.append)
    meta = json.loads((r.run_dir / "model.json").read_text())
    assert meta["architecture"]["name"].startswith("mvnet") and meta["architecture"]["kwargs"] == {"stem": "whiten"}
    assert isinstance(r.model.stem.conv, PatchWhitening)
    assert any(line.startswith("whitening stem: computed from 144 training pictures") for line in lines), lines


def test_the_summary_shows_the_stem_train_builds_and_counts_its_filters_as_non_trainable(capsys) -> None:
    from minivision.cli import main
    from minivision.models import summarize
    from minivision.models.summary import summary_totals

    m = create_model("mvnet-s", in_channels=3, image_size=32, num_classes=10, stem="whiten")
    t = summary_totals(summarize(m, (3, 32, 32)))
    assert t.non_trainable == 288 and t.trainable == sum(p.numel() for p in m.parameters())
    assert t.state == sum(b.numel() for n, b in m.named_buffers() if "norm" in n and b.is_floating_point())
    assert main(["summary", "mvnet-s", "--input", "3x32x32"]) == 0
    out = capsys.readouterr().out
    assert "PatchWhitening" in out and "whitening stem" in out.splitlines()[0] and "Non-trainable params: 288" in out
    assert main(["summary", "mvnet-s", "--input", "1x28x28"]) == 0
    assert "PatchWhitening" not in capsys.readouterr().out


def test_a_stem_of_none_in_the_api_is_the_default(tmp_path) -> None:
    import numpy as np

    import minivision as mv

    ds = synthetic_dataset(160, 40, channels=3, size=16)
    x, y = ds.train.x.permute(0, 2, 3, 1).numpy(), ds.train.y.numpy()
    clf = mv.Classifier("mvnet-t", steps=2, batch_size=32, out=str(tmp_path), extra={"stem": None, "width": None})
    clf.fit(x, y, progress=False)
    meta = json.loads((clf.run_dir_ / "model.json").read_text())
    assert meta["architecture"]["kwargs"] == {"stem": "whiten"}
    assert len(clf.predict(x[:3])) == 3 and np.asarray(clf.predict_proba(x[:3])).shape == (3, 4)


def test_extra_that_is_not_a_dict_is_a_one_line_error(tmp_path) -> None:
    import minivision as mv

    ds = synthetic_dataset(160, 40, channels=3, size=16)
    x, y = ds.train.x.permute(0, 2, 3, 1).numpy(), ds.train.y.numpy()
    with pytest.raises(MinivisionError, match="parameter extra must be a dict .* got str 'stem=conv'"):
        mv.Classifier("mvnet-t", steps=2, out=str(tmp_path), extra="stem=conv").fit(x, y, progress=False)
