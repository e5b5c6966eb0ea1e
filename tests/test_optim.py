"""minivision.optim must follow torch.optim's update rules step for step, with and without parameter
groups, round-trip its state in torch.optim's layout, and build without importing torch._dynamo."""

import subprocess
import sys

import pytest
import torch

from minivision.errors import MinivisionError
from minivision.optim import SGD, Adam, OptimizerStateMismatch, accept_single_group, param_groups_weight_decay


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU(),
                               torch.nn.Linear(4, 3))


def _train(model, opt, steps, lrs=None):
    g = torch.Generator().manual_seed(1)
    for s in range(steps):
        if lrs:
            for group in opt.param_groups:
                group["lr"] = lrs[s] * group.get("lr_scale", 1.0)
        x, y = torch.randn(8, 5, generator=g), torch.randint(0, 3, (8,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


CASES = [
    ("sgd", dict(lr=0.1), dict(lr=0.1)),
    ("sgd", dict(lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True),
     dict(lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)),
    ("sgd", dict(lr=0.05, momentum=0.9), dict(lr=0.05, momentum=0.9)),
    ("adam", dict(lr=1e-2), dict(lr=1e-2)),
    ("adam", dict(lr=1e-2, weight_decay=1e-3), dict(lr=1e-2, weight_decay=1e-3)),
    ("adamw", dict(lr=1e-2, weight_decay=0.05, decoupled=True), dict(lr=1e-2, weight_decay=0.05)),
]


def _pair(kind, ours, theirs, params_a, params_b):
    if kind == "sgd":
        return SGD(params_a, **ours), torch.optim.SGD(params_b, **theirs)
    if kind == "adam":
        return Adam(params_a, **ours), torch.optim.Adam(params_b, **theirs)
    return Adam(params_a, **ours), torch.optim.AdamW(params_b, **theirs)


def _groups(model, wd, lr):
    """Three groups with their own settings: no decay on 1-d parameters, a smaller LR (and an
    ``lr_scale`` the test schedule honours) for the first layer, the defaults for the rest."""
    first, rest = list(model[0].parameters()), list(model[1:].parameters())
    return [{"params": [p for p in rest if p.ndim <= 1], "weight_decay": 0.0},
            {"params": first, "lr": lr * 0.3, "lr_scale": 0.3, "weight_decay": wd * 2},
            {"params": [p for p in rest if p.ndim > 1]}]


@pytest.mark.parametrize("kind,ours,theirs", CASES)
def test_updates_match_torch_optim(kind, ours, theirs):
    a, b = _model(), _model()
    opt_a, opt_b = _pair(kind, ours, theirs, a.parameters(), b.parameters())
    lrs = [theirs["lr"] * (1 + s / 10) for s in range(12)]  # a changing LR, as the schedules do
    for pa, pb in zip(_train(a, opt_a, 12, lrs), _train(b, opt_b, 12, lrs), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind,ours,theirs", CASES)
def test_updates_with_parameter_groups_match_torch_optim(kind, ours, theirs):
    a, b = _model(), _model()
    wd = theirs.get("weight_decay", 1e-3)
    opt_a, opt_b = _pair(kind, ours, theirs, _groups(a, wd, theirs["lr"]), _groups(b, wd, theirs["lr"]))
    assert [g["weight_decay"] for g in opt_a.param_groups] == [g["weight_decay"] for g in opt_b.param_groups]
    assert [g["lr"] for g in opt_a.param_groups] == [g["lr"] for g in opt_b.param_groups]
    lrs = [theirs["lr"] * (1 + s / 10) for s in range(12)]
    for pa, pb in zip(_train(a, opt_a, 12, lrs), _train(b, opt_b, 12, lrs), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7)
    _same_layout(opt_a.state_dict(), opt_b.state_dict())


def _same_layout(ours, theirs):
    """The same state keys per parameter index, the same indices per group, the same group settings
    for the keys both have (torch.optim has more: foreach, fused, maximize, ...)."""
    assert {i: set(s) for i, s in ours["state"].items()} == {i: set(s) for i, s in theirs["state"].items()}
    for i, s in ours["state"].items():
        for k, v in s.items():
            t = theirs["state"][i][k]
            assert (v.dtype, v.device, v.shape) == (t.dtype, t.device, t.shape), (i, k)
    assert len(ours["param_groups"]) == len(theirs["param_groups"])
    for g, t in zip(ours["param_groups"], theirs["param_groups"], strict=True):
        assert g["params"] == t["params"]
        assert {k: v for k, v in g.items() if k in t} == {k: v for k, v in t.items() if k in g}


def _trained_and_reloaded(make_model, build, steps):
    """A model and optimizer trained ``steps`` steps, and a fresh pair loaded from their state dicts."""
    a = make_model()
    opt_a = build(a)
    _train(a, opt_a, steps)
    b = make_model()
    b.load_state_dict(a.state_dict())
    opt_b = build(b)
    opt_b.load_state_dict(opt_a.state_dict())
    return a, opt_a, b, opt_b


@pytest.mark.parametrize("kind,ours,theirs", CASES)
@pytest.mark.parametrize("grouped", [False, True])
def test_state_dict_round_trip_continues_identically(kind, ours, theirs, grouped):
    def build(model):
        params = _groups(model, 1e-3, ours["lr"]) if grouped else model.parameters()
        return _pair(kind, ours, theirs, params, _model().parameters())[0]

    a, opt_a, b, opt_b = _trained_and_reloaded(_model, build, 5)
    assert opt_b.param_groups == [{**g, "params": gb["params"]}
                                  for g, gb in zip(opt_a.param_groups, opt_b.param_groups, strict=True)]
    lrs = [ours["lr"] * 0.9 ** s for s in range(4)]
    for pa, pb in zip(_train(a, opt_a, 4, lrs), _train(b, opt_b, 4, lrs), strict=True):
        assert torch.equal(pa, pb)


def test_loaded_group_settings_replace_the_optimizers_own():
    """As torch.optim: a resumed run goes on with the settings it was saved with."""
    saved = SGD(_groups(_model(), 1e-3, 0.1), lr=0.1, momentum=0.9)
    saved.param_groups[1]["lr"] = 0.01234
    fresh = SGD(_groups(_model(), 5e-2, 0.5), lr=0.5, momentum=0.5)
    fresh.load_state_dict(saved.state_dict())
    assert [{k: v for k, v in g.items() if k != "params"} for g in fresh.param_groups] == \
           [{k: v for k, v in g.items() if k != "params"} for g in saved.param_groups]


def test_adam_step_count_stays_a_cpu_float32_tensor():
    a = _model()
    opt = Adam(_groups(a, 0.0, 1e-2), lr=1e-2)
    _train(a, opt, 3)
    opt.load_state_dict(opt.state_dict())
    b = _model()
    ref = torch.optim.Adam(b.parameters(), lr=1e-2)
    _train(b, ref, 1)
    ref_step = ref.state[next(b.parameters())]["step"]
    for st in opt.state.values():
        assert (st["step"].device, st["step"].dtype, st["step"].shape) == (ref_step.device, ref_step.dtype,
                                                                         ref_step.shape)
        assert st["step"].item() == 3.0


def test_state_dict_must_match_the_parameters():
    opt = SGD(_model().parameters(), lr=0.1, momentum=0.9)
    other = SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(ValueError):
        opt.load_state_dict(other.state_dict())
    grouped = SGD(_groups(_model(), 0.0, 0.1), lr=0.1)
    with pytest.raises(OptimizerStateMismatch, match="parameter group"):
        grouped.load_state_dict(opt.state_dict())  # no hook: one group cannot fill three
    assert issubclass(OptimizerStateMismatch, MinivisionError)  # the CLI prints it on one line


def test_groups_are_checked_as_torch_optim_does():
    m = _model()
    with pytest.raises(ValueError, match="more than one"):
        SGD([{"params": list(m.parameters())}, {"params": [next(m.parameters())]}], lr=0.1)
    with pytest.raises(ValueError, match="empty"):
        SGD([], lr=0.1)
    with pytest.raises(TypeError):
        SGD(next(m.parameters()), lr=0.1)


# ------------------------------------------------------------------------- weight-decay groups

def _conv_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.LayerNorm(16), torch.nn.Linear(16, 3))


def test_no_weight_decay_on_biases_and_norm_layers():
    net = _conv_net()
    net[0].bias.requires_grad_(False)  # frozen: left out, as timm does
    groups = param_groups_weight_decay(net, 5e-4)
    names = {id(p): n for n, p in net.named_parameters()}
    assert [(g["weight_decay"], [names[id(p)] for p in g["params"]]) for g in groups] == [
        (0.0, ["1.weight", "1.bias", "4.weight", "4.bias", "5.bias"]),
        (5e-4, ["0.weight", "5.weight"]),
    ]
    assert all("lr_scale" not in g for g in groups)


def test_lr_scales_by_name_prefix():
    net = _conv_net()
    groups = param_groups_weight_decay(net, 1e-4, lr_scales={"": 0.1, "5": 1.0, "0.weight": 0.5})
    names = {id(p): n for n, p in net.named_parameters()}
    got = {(g["weight_decay"], g["lr_scale"]): [names[id(p)] for p in g["params"]] for g in groups}
    assert got == {(0.0, 0.1): ["0.bias", "1.weight", "1.bias", "4.weight", "4.bias"],
                   (0.0, 1.0): ["5.bias"], (1e-4, 0.5): ["0.weight"], (1e-4, 1.0): ["5.weight"]}


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_single_group_state_resumes_into_groups_exactly(kind):
    """A checkpoint from before parameter groups (one group, decay on everything) is read into the
    grouped optimizer and goes on exactly as the one-group optimizer would have."""
    def build(params):
        if kind == "sgd":
            return SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-2, nesterov=True)
        return Adam(params, lr=1e-2, weight_decay=0.05, decoupled=True)

    old_model = _model()
    old = build(old_model.parameters())
    _train(old_model, old, 5)
    new_model = _model()
    new_model.load_state_dict(old_model.state_dict())
    new = build(param_groups_weight_decay(new_model, 0.0))
    new.register_load_state_dict_pre_hook(accept_single_group(list(new_model.parameters())))
    new.load_state_dict(old.state_dict())
    assert len(new.param_groups) == 2 and all(g["weight_decay"] == old.param_groups[0]["weight_decay"]
                                              for g in new.param_groups)
    for pa, pb in zip(_train(old_model, old, 4, [0.05] * 4), _train(new_model, new, 4, [0.05] * 4), strict=True):
        assert torch.equal(pa, pb)
    with pytest.raises(OptimizerStateMismatch):  # one group of another model's parameters
        new.load_state_dict(SGD(torch.nn.Linear(5, 4).parameters(), lr=0.1).state_dict())


def _imports_dynamo(body: str) -> bool:
    """Whether running ``body`` (with torch and minivision.optim as ``o`` imported) in a fresh Python loads
    torch._dynamo (about 2 s of import)."""
    code = "import sys, torch\nimport minivision.optim as o\n" + body + "print('torch._dynamo' in sys.modules)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return out.strip() != "False"


def test_building_an_optimizer_does_not_import_dynamo():
    assert not _imports_dynamo("m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))\n"
                               "groups = o.param_groups_weight_decay(m, 1e-4)\n"
                               "o.SGD(groups, lr=0.1, momentum=0.9).step()\n"
                               "o.Adam(m.parameters(), lr=0.1).step()\n")


def test_a_run_saved_with_one_group_extends_exactly_as_it_started(tmp_path, monkeypatch):
    """End to end: a run folder whose checkpoint has one parameter group (as minivision wrote before
    parameter groups) extends with today's optimizer exactly as with the one-group optimizer."""
    from minivision import train
    from minivision.config import TrainConfig
    from minivision.runfiles import load_checkpoint

    from .conftest import synthetic_dataset

    def one_group(cfg, model, lr_scales=None):  # make_optimizer before parameter groups
        return SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                   nesterov=bool(cfg.nesterov))

    ds = synthetic_dataset(120, 40)
    quiet = {"dataset": ds, "progress": False, "log": lambda m: None}
    cfg = TrainConfig(model="mlp", epochs=1, optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-3,
                      val_split=0.25, out=str(tmp_path))
    with monkeypatch.context() as m:
        m.setattr(train, "make_optimizer", one_group)
        first = train.fit(cfg, **quiet)
        old = train.fit(TrainConfig(epochs=2), resume=first.run_dir, **quiet)
    new = train.fit(TrainConfig(epochs=2), resume=first.run_dir, **quiet)
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in new.history] == \
           [{k: v for k, v in r.items() if k != "seconds"} for r in old.history]
    a, b = old.model.state_dict(), new.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    _, opt_state, _ = load_checkpoint(new.run_dir / "last.safetensors")
    assert [g["weight_decay"] for g in opt_state["param_groups"]] == [5e-3, 5e-3]  # as the run started


# ------------------------------------------------------------------------- Muon

def _muon_net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.ReLU(), torch.nn.Linear(6, 8), torch.nn.ReLU(),
                               torch.nn.Linear(8, 3))


def test_muon_matches_torch_optim_muon_in_bf16():
    """With the iteration in bf16, as torch's, the hidden layer follows torch.optim.Muon step for step
    (torch.optim.Muon: lr, momentum 0.95, Nesterov, decoupled weight decay, "original" adjustment);
    the other layers follow torch.optim.SGD."""
    from minivision.optim import Muon
    a, b = _muon_net(), _muon_net()
    mine = [a[2].weight]
    rest = [p for p in a.parameters() if p is not a[2].weight]
    ours = Muon([{"params": rest}, {"params": mine, "muon": True, "weight_decay": 0.01}], lr=0.05,
                momentum=0.9, nesterov=True, ns_dtype=torch.bfloat16)
    t_muon = torch.optim.Muon([b[2].weight], lr=0.05, weight_decay=0.01, adjust_lr_fn="original")
    t_sgd = torch.optim.SGD([p for p in b.parameters() if p is not b[2].weight], lr=0.05, momentum=0.9,
                            nesterov=True)

    class Both:
        param_groups = t_muon.param_groups + t_sgd.param_groups

        def zero_grad(self, set_to_none=True):
            t_muon.zero_grad(set_to_none)
            t_sgd.zero_grad(set_to_none)

        def step(self):
            t_muon.step()
            t_sgd.step()

    lrs = [0.05 * (1 - s / 12) for s in range(8)]
    for pa, pb in zip(_train(a, ours, 8, lrs), _train(b, Both(), 8, lrs), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
    assert not torch.equal(a[2].weight, _muon_net()[2].weight)


def test_orthogonalize_brings_singular_values_near_one_for_any_shape():
    from minivision.optim import orthogonalize
    g = torch.Generator().manual_seed(0)
    for shape in [(8, 40), (40, 8), (16, 16)]:
        m = torch.randn(*shape, generator=g) * 1e-3  # the scale does not matter
        s = torch.linalg.svdvals(orthogonalize(m))
        assert orthogonalize(m).shape == shape
        assert s.min() > 0.5 and s.max() < 1.5, (shape, s)


def test_muon_updates_a_channels_last_convolution_as_its_matrix():
    """A 4-D weight (channels-last or not) gets the update of its (out, fan-in) matrix: the same as a
    2-D weight holding those numbers (orthogonalisation ignores the order of the columns)."""
    from minivision.optim import Muon
    g = torch.Generator().manual_seed(0)
    w0, grad = torch.randn(6, 3, 3, 3, generator=g), torch.randn(6, 3, 3, 3, generator=g)
    flat = torch.nn.Parameter(w0.reshape(6, -1).clone())
    flat.grad = grad.reshape(6, -1).clone()
    Muon([{"params": [flat], "muon": True}], lr=0.1).step()
    for fmt in (torch.contiguous_format, torch.channels_last):
        conv = torch.nn.Parameter(w0.clone().contiguous(memory_format=fmt))
        conv.grad = grad.clone().contiguous(memory_format=fmt)
        Muon([{"params": [conv], "muon": True}], lr=0.1).step()
        torch.testing.assert_close(conv.detach().reshape(6, -1), flat.detach(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="2-D and 4-D"):
        Muon([{"params": [torch.nn.Parameter(torch.zeros(3))], "muon": True}], lr=0.1)


def test_muon_groups_leave_the_first_layer_the_head_and_the_norms_on_sgd():
    from minivision.optim import MUON_LR_SCALE, muon_groups
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 4, 3),
                              torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4, 3))
    groups = muon_groups(net, param_groups_weight_decay(net, 5e-4))
    names = {id(p): n for n, p in net.named_parameters()}
    got = [(g["muon"], g["weight_decay"], g.get("lr_scale", 1.0), [names[id(p)] for p in g["params"]])
           for g in groups]
    assert got == [(False, 0.0, 1.0, ["0.bias", "1.weight", "1.bias", "2.bias", "3.weight", "3.bias", "5.bias"]),
                   (False, 5e-4, 1.0, ["0.weight", "5.weight"]),
                   (True, 5e-4, MUON_LR_SCALE, ["2.weight"])]


def test_muon_state_round_trips_and_continues_identically():
    from minivision.optim import Muon, muon_groups
    def build(m):
        return Muon(muon_groups(m, param_groups_weight_decay(m, 1e-3)), lr=0.05, momentum=0.9)
    a, opt_a, b, opt_b = _trained_and_reloaded(_muon_net, build, 3)
    for pa, pb in zip(_train(a, opt_a, 3, [0.02] * 3), _train(b, opt_b, 3, [0.02] * 3), strict=True):
        assert torch.equal(pa, pb)


def test_muon_builds_without_importing_dynamo():
    assert not _imports_dynamo("m = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 3), "
                               "torch.nn.Linear(3, 2))\n"
                               "opt = o.Muon(o.muon_groups(m, o.param_groups_weight_decay(m, 1e-4)), lr=0.1)\n"
                               "m(torch.randn(4, 2)).sum().backward(); opt.step()\n")


def test_a_loaded_muon_buffer_takes_its_channels_last_weight_s_layout():
    """A checkpoint stores tensors contiguous (NCHW); a channels-last weight's momentum buffer must come
    back channels-last, or the update's columns would be read in one order and written in another
    (without Nesterov, the update is the buffer itself)."""
    from minivision.optim import Muon

    def net():
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.Conv2d(4, 6, 3), torch.nn.Conv2d(6, 3, 3),
                                torch.nn.Flatten())
        return m.to(memory_format=torch.channels_last)

    def build(m):
        return Muon([{"params": [m[1].weight], "muon": True},
                     {"params": [p for p in m.parameters() if p is not m[1].weight]}], lr=0.05, nesterov=False)

    def steps(m, opt, n, seed):
        g = torch.Generator().manual_seed(seed)
        for _ in range(n):
            x = torch.randn(4, 2, 8, 8, generator=g).contiguous(memory_format=torch.channels_last)
            loss = m(x).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    a = net()
    opt_a = build(a)
    steps(a, opt_a, 3, 1)
    b = net()
    b.load_state_dict(a.state_dict())
    b = b.to(memory_format=torch.channels_last)
    opt_b = build(b)
    saved = opt_a.state_dict()
    saved = {"state": {i: {k: v.contiguous() for k, v in st.items()} for i, st in saved["state"].items()},
             "param_groups": saved["param_groups"]}  # as a checkpoint file gives them back
    opt_b.load_state_dict(saved)
    assert opt_b.state[0]["momentum_buffer"].is_contiguous(memory_format=torch.channels_last)
    steps(a, opt_a, 3, 2)
    steps(b, opt_b, 3, 2)
    torch.testing.assert_close(b[1].weight, a[1].weight, rtol=1e-6, atol=1e-7)


def test_muon_with_another_optimizer_s_recipe_needs_a_rate_and_is_refused_with_freeze():
    from minivision.config import TrainConfig, resolve, validate

    adam_recipe = {"optimizer": "adam", "lr": 1e-3, "momentum": 0.0}
    with pytest.raises(MinivisionError, match=r"recipe rate 0.001 is for adam; give --lr too"):
        resolve(TrainConfig(model="cnn3", optimizer="muon", epochs=1), adam_recipe)
    got = resolve(TrainConfig(model="cnn3", optimizer="muon", lr=0.2, epochs=1), adam_recipe)
    assert (got.lr, got.momentum, got.nesterov) == (0.2, 0.9, True)  # SGD-sized momentum, not Adam's 0
    sgd = resolve(TrainConfig(model="mvnet", optimizer="muon", epochs=1),
                  {"optimizer": "sgd", "lr": 0.2, "momentum": 0.9, "nesterov": True})
    assert (sgd.lr, sgd.momentum, sgd.nesterov) == (0.2, 0.9, True)
    with pytest.raises(MinivisionError, match="with --freeze only the head trains"):
        validate(TrainConfig(model="mvnet", optimizer="muon", lr=0.2, epochs=1, freeze=True))
