"""minivision.optim must follow torch.optim's update rules step for step, and round-trip its state."""

import pytest
import torch

from minivision.optim import SGD, Adam


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))


def _train(model, opt, steps, lrs=None):
    g = torch.Generator().manual_seed(1)
    for s in range(steps):
        if lrs:
            for group in opt.param_groups:
                group["lr"] = lrs[s]
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


@pytest.mark.parametrize("kind,ours,theirs", CASES)
def test_updates_match_torch_optim(kind, ours, theirs):
    a, b = _model(), _model()
    opt_a, opt_b = _pair(kind, ours, theirs, a.parameters(), b.parameters())
    lrs = [theirs["lr"] * (1 + s / 10) for s in range(12)]  # a changing LR, as the schedules do
    for pa, pb in zip(_train(a, opt_a, 12, lrs), _train(b, opt_b, 12, lrs), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind,ours,theirs", CASES)
def test_state_dict_round_trip_continues_identically(kind, ours, theirs):
    a = _model()
    opt_a, _ = _pair(kind, ours, theirs, a.parameters(), _model().parameters())
    _train(a, opt_a, 5)
    b = _model()
    b.load_state_dict(a.state_dict())
    opt_b, _ = _pair(kind, ours, theirs, b.parameters(), _model().parameters())
    opt_b.load_state_dict(opt_a.state_dict())
    for pa, pb in zip(_train(a, opt_a, 4), _train(b, opt_b, 4), strict=True):
        assert torch.equal(pa, pb)


def test_state_dict_must_match_the_parameters():
    opt = SGD(_model().parameters(), lr=0.1, momentum=0.9)
    other = SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(ValueError):
        opt.load_state_dict(other.state_dict())
