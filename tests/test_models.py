"""Tests for the model registry, the model contract, the tutorial models, mvnet and the summary table.

The generic tests are parametrised over ``list_models()`` so a model is tested the day it is
registered. The tutorial tests recompute, by hand from each tutorial's layer list, the parameter
counts Keras prints for a 1x28x28 input with 10 classes. The contract tests pin each model's
state-dict keys as data: saved runs and checkpoints load only while those stay the same.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from minivision.errors import MinivisionError
from minivision.models import (
    DEFAULT_MODEL,
    ClassifierNet,
    count_parameters,
    create_model,
    format_summary,
    list_models,
    model_info,
    register_model,
    registry,
    summarize,
)
from minivision.models.registry import TRAINING_KEYS, validate_defaults
from minivision.models.summary import summary_totals

# (in_channels, height, width, num_classes): Fashion-MNIST, CIFAR-10, a small odd one, a non-square one.
SHAPES = [(1, 28, 28, 10), (3, 32, 32, 10), (1, 20, 20, 3), (2, 20, 24, 5)]
SHAPE_IDS = ["fmnist", "cifar", "odd20", "nonsquare"]
ALL_MODELS = list_models()


def build(name: str, shape: tuple[int, int, int, int]) -> nn.Module:
    c, h, w, k = shape
    return create_model(name, in_channels=c, image_size=(h, w), num_classes=k)


# ----------------------------------------------------------------------------- every model

def test_registry_has_the_expected_models() -> None:
    expected = {"softmax", "mlp", "cnn1", "cnn2", "cnn2-bn", "cnn3", "cnn4", "mvnet", "mvnet-s", "mvnet-l"}
    assert expected <= set(ALL_MODELS)
    assert DEFAULT_MODEL in ALL_MODELS
    assert ALL_MODELS == sorted(ALL_MODELS)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_and_one_training_step(name: str, shape: tuple[int, int, int, int]) -> None:
    torch.manual_seed(0)
    c, h, w, k = shape
    model = build(name, shape).train()
    x, y = torch.randn(4, c, h, w), torch.randint(0, k, (4,))
    before = copy.deepcopy(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    logits = model(x)
    assert logits.shape == (4, k)
    loss = nn.functional.cross_entropy(logits, y)
    assert torch.isfinite(loss)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}: no finite gradient for {pname}"
    opt.step()
    changed = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert changed, f"{name}: one SGD step changed no weight"


@pytest.mark.parametrize("shape", SHAPES[:2], ids=SHAPE_IDS[:2])
@pytest.mark.parametrize("name", ALL_MODELS)
def test_channels_last_gives_the_same_logits(name: str, shape: tuple[int, int, int, int]) -> None:
    torch.manual_seed(0)
    c, h, w, _ = shape
    model = build(name, shape).eval()
    x = torch.randn(3, c, h, w)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        got = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_defaults_use_known_keys_and_valid_values(name: str) -> None:
    info = model_info(name)
    assert info.name == name and info.description and callable(info.builder)
    d = dict(info.defaults)
    assert set(d) <= set(TRAINING_KEYS)
    assert d.get("optimizer", "sgd") in {"adam", "sgd", "adamw", "gd"}
    assert d.get("schedule", "constant") in {"constant", "onecycle", "cosine"}
    assert d.get("normalize", "unit") in {"unit", "standard"}
    assert d.get("lr", 1.0) > 0 and d.get("weight_decay", 0.0) >= 0
    assert 0 <= d.get("momentum", 0.0) < 1 and 0 <= d.get("label_smoothing", 0.0) < 1
    assert isinstance(d.get("nesterov", False), bool)
    for key in ("batch_size", "epochs", "steps"):
        assert isinstance(d.get(key, 1), int) and d.get(key, 1) >= 1
    assert not ("val_split" in d and "val_first" in d)
    assert 0 <= d.get("val_split", 0.0) < 1 and d.get("val_first", 0) >= 0
    assert isinstance(d.get("augment", ""), str)
    assert validate_defaults(d) == d


@pytest.mark.parametrize("name", ALL_MODELS)
def test_summary_totals_match_count_parameters(name: str) -> None:
    model = build(name, SHAPES[0])
    totals = summary_totals(summarize(model, (1, 28, 28)))
    assert totals.params == count_parameters(model)
    assert totals.trainable == count_parameters(model, trainable_only=True)
    assert totals.macs > 0


# ----------------------------------------------------------------------------- the contract

# Penultimate width D for 1x28x28 input: the final Linear's in_features.
NUM_FEATURES = {"softmax": 784, "mlp": 100, "cnn2": 32, "cnn2-bn": 128, "cnn1": 128, "cnn3": 128, "cnn4": 128,
                "mvnet-t": 64, "mvnet-s": 64, "mvnet": 128, "mvnet-l": 256, "efficientnet-lite0": 1280}

# The state-dict keys of every model, in order (parameter order is the optimizer state's order in a
# checkpoint), as (module, kind): a saved run loads only while these stay exactly the same.
_KIND = {"w": ("weight",), "wb": ("weight", "bias"),
         "bn": ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
_MVNET_BLOCK = [("conv", "w"), ("norm", "bn")]


def _mvnet_layout(blocks: int) -> list[tuple[str, str]]:
    paths = ["stem"] + [f"blocks.{b}.{i}" for b in range(blocks) for i in range(2)]
    return [(f"{path}.{m}", kind) for path in paths for m, kind in _MVNET_BLOCK] + [("head", "w")]


STATE_LAYOUT = {
    "softmax": [("dense", "wb")],
    "mlp": [("dense", "wb"), ("dense_1", "wb"), ("dense_2", "wb")],
    "cnn2": [("conv2d", "wb"), ("conv2d_1", "wb"), ("dense", "wb"), ("dense_1", "wb"), ("dense_2", "wb")],
    "cnn2-bn": [("batch_normalization", "bn"), ("conv2d", "wb"), ("batch_normalization_1", "bn"),
                ("conv2d_1", "wb"), ("dense", "wb"), ("dense_1", "wb")],
    "cnn1": [("conv2d", "wb"), ("dense", "wb"), ("dense_1", "wb")],
    "cnn3": [("conv2d", "wb"), ("conv2d_1", "wb"), ("conv2d_2", "wb"), ("dense", "wb"), ("dense_1", "wb")],
    "cnn4": [("conv2d", "wb"), ("batch_normalization", "bn"), ("conv2d_1", "wb"), ("batch_normalization_1", "bn"),
             ("conv2d_2", "wb"), ("batch_normalization_2", "bn"), ("conv2d_3", "wb"),
             ("batch_normalization_3", "bn"), ("dense", "wb"), ("batch_normalization_4", "bn"), ("dense_1", "wb"),
             ("batch_normalization_5", "bn"), ("dense_2", "wb")],
    "mvnet-t": _mvnet_layout(2),
    "mvnet-s": _mvnet_layout(3),
    "mvnet": _mvnet_layout(3),
    "mvnet-l": _mvnet_layout(3),
    "efficientnet-lite0": [("conv_stem", "w"), ("bn1", "bn"), ("blocks.0.0.conv_dw", "w"), ("blocks.0.0.bn1", "bn"),
                           ("blocks.0.0.conv_pw", "w"), ("blocks.0.0.bn2", "bn")]
    + [(f"blocks.{s}.{i}.{m}", k) for s, n in enumerate((2, 2, 3, 3, 4, 1), 1) for i in range(n)
       for m, k in (("conv_pw", "w"), ("bn1", "bn"), ("conv_dw", "w"), ("bn2", "bn"), ("conv_pwl", "w"), ("bn3", "bn"))]
    + [("conv_head", "w"), ("bn2", "bn"), ("classifier", "wb")],
}


def state_keys(name: str) -> list[str]:
    return [f"{module}.{p}" for module, kind in STATE_LAYOUT[name] for p in _KIND[kind]]


def final_layer_input(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the final Linear receives in ``model(x)``, caught by a hook: the contract's definition of features."""
    seen: list[torch.Tensor] = []
    handle = model.get_classifier().register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        model(x)
    finally:
        handle.remove()
    assert len(seen) == 1
    return seen[0]


def test_every_model_has_its_contract_data() -> None:
    # A new model adds its D and its state-dict layout here; the tests below then cover it.
    assert set(NUM_FEATURES) == set(STATE_LAYOUT) == set(ALL_MODELS)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_is_forward_head_of_forward_features(name: str, shape: tuple[int, int, int, int]) -> None:
    torch.manual_seed(0)
    c, h, w, k = shape
    model = build(name, shape).eval()
    assert isinstance(model, ClassifierNet)
    x = torch.randn(5, c, h, w)
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model.forward_head(features)
        assert features.shape == (5, model.num_features) and features.dtype == torch.float32
        assert logits.shape == (5, k) and logits.dtype == torch.float32
        assert torch.equal(model(x), logits)
        assert torch.equal(final_layer_input(model, x), features)
    head = model.get_classifier()
    assert isinstance(head, nn.Linear)
    assert (head.in_features, head.out_features) == (model.num_features, model.num_classes) == (model.num_features, k)
    if shape == SHAPES[0]:
        assert model.num_features == NUM_FEATURES[name]


@pytest.mark.parametrize("name", ALL_MODELS)
def test_features_are_taken_after_dropout_in_training_mode(name: str) -> None:
    model = build(name, SHAPES[0]).train()
    x = torch.randn(4, 1, 28, 28)
    torch.manual_seed(1)
    received = final_layer_input(model, x)
    torch.manual_seed(1)
    assert torch.equal(model.forward_features(x), received)  # the same dropout mask: the same features


@pytest.mark.parametrize("name", ALL_MODELS)
def test_state_dict_keys_are_unchanged(name: str) -> None:
    for shape in SHAPES:
        assert list(build(name, shape).state_dict()) == state_keys(name), shape


@pytest.mark.parametrize("name", ALL_MODELS)
def test_reset_head_gives_a_fresh_k_class_head_and_keeps_the_backbone(name: str) -> None:
    torch.manual_seed(0)
    model = build(name, SHAPES[0]).eval()
    old_head = model.get_classifier()
    before = copy.deepcopy(model.state_dict())
    head_keys = {f"{model.classifier_name}.{p}" for p, _ in old_head.named_parameters()}
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        features = model.forward_features(x)

    model.reset_head(3)
    head = model.get_classifier()
    assert head is not old_head and head.training is old_head.training is False  # the model's eval mode
    assert model.num_classes == 3 and model.num_features == NUM_FEATURES[name]
    assert head.weight.shape == (3, model.num_features) and (head.bias is None) == (old_head.bias is None)
    after = model.state_dict()
    assert list(after) == list(before) == state_keys(name)
    for key, value in after.items():
        if key not in head_keys:
            assert torch.equal(value, before[key]), f"{name}: reset_head changed backbone weight {key}"
    with torch.no_grad():
        assert torch.equal(model.forward_features(x), features)
        assert model(x).shape == (3, 3)
    # freshly initialised as the net initialises its own: a new draw, Keras' zero bias for the tutorials
    model.reset_head(10)
    assert not torch.equal(model.get_classifier().weight, before[f"{model.classifier_name}.weight"])
    if head.bias is not None:
        assert torch.count_nonzero(model.get_classifier().bias) == 0
    # a re-headed model saves as an ordinary 10-class model of the same name
    create_model(name, in_channels=1, image_size=28, num_classes=10).load_state_dict(model.state_dict())


@pytest.mark.parametrize("name", ["cnn2", "mvnet-t"])
def test_reset_head_keeps_device_and_dtype(name: str) -> None:
    model = build(name, SHAPES[0]).to(torch.float64)
    model.reset_head(4)
    assert model.get_classifier().weight.dtype == torch.float64
    assert model(torch.randn(2, 1, 28, 28, dtype=torch.float64)).shape == (2, 4)
    model = build(name, SHAPES[0]).to("meta")  # a second device without needing one
    model.reset_head(4)
    assert model.get_classifier().weight.device.type == "meta"


def test_reset_head_refuses_fewer_than_two_classes() -> None:
    model = build("mvnet-t", SHAPES[0])
    for bad in (1, 0, 2.0, True):
        with pytest.raises(MinivisionError, match="at least 2 classes"):
            model.reset_head(bad)
    assert model.num_classes == 10


def test_a_builder_that_breaks_the_contract_is_refused(monkeypatch) -> None:
    info = registry.ModelInfo("plain", "a bare nn.Sequential", {}, lambda **kw: nn.Sequential(nn.Flatten()))
    monkeypatch.setitem(registry._REGISTRY, "plain", info)
    with pytest.raises(TypeError, match="not a ClassifierNet"):
        create_model("plain", in_channels=1, image_size=28, num_classes=10)


# ----------------------------------------------------------------------------- tutorial models

def conv(c_in: int, c_out: int) -> int:
    return c_in * 3 * 3 * c_out + c_out


def dense(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def bn(c: int) -> int:  # gamma and beta; Keras adds 2*c non-trainable running statistics
    return 2 * c


KERAS_TRAINABLE = {
    "softmax": dense(784, 10),
    "mlp": dense(784, 300) + dense(300, 100) + dense(100, 10),
    # 28 -> 26 -> 24 -> maxpool 3/2 -> 11
    "cnn2": conv(1, 16) + conv(16, 64) + dense(11 * 11 * 64, 64) + dense(64, 32) + dense(32, 10),
    # same convs keep 28; two 2x2 pools: 28 -> 14 -> 7
    "cnn2-bn": bn(1) + conv(1, 32) + bn(32) + conv(32, 32) + dense(7 * 7 * 32, 128) + dense(128, 10),
    # 28 -> 26 -> 13
    "cnn1": conv(1, 32) + dense(13 * 13 * 32, 128) + dense(128, 10),
    # 28 -> 26 -> 13 -> 11 -> 5 -> 3
    "cnn3": conv(1, 32) + conv(32, 64) + conv(64, 128) + dense(3 * 3 * 128, 128) + dense(128, 10),
    # 28 -> 26 -> 24 -> 12 -> 10 -> 8 -> 4
    "cnn4": conv(1, 32) + bn(32) + conv(32, 32) + bn(32) + conv(32, 64) + bn(64) + conv(64, 128) + bn(128)
    + dense(4 * 4 * 128, 512) + bn(512) + dense(512, 128) + bn(128) + dense(128, 10),
}
KERAS_BN_STATISTICS = {"cnn2-bn": bn(1) + bn(32), "cnn4": bn(32) * 2 + bn(64) + bn(128) + bn(512) + bn(128)}


def test_hand_counts_agree_with_known_keras_summaries() -> None:
    # Printed by Keras in the tutorials: guards the hand formulas themselves.
    assert KERAS_TRAINABLE["cnn2"] == 507_530
    assert KERAS_TRAINABLE["mlp"] == 266_610


@pytest.mark.parametrize("name", sorted(KERAS_TRAINABLE))
def test_tutorial_parameter_counts_match_keras(name: str) -> None:
    model = build(name, (1, 28, 28, 10))
    assert count_parameters(model) == KERAS_TRAINABLE[name]
    totals = summary_totals(summarize(model, (1, 28, 28)))
    assert totals.keras_total == KERAS_TRAINABLE[name] + KERAS_BN_STATISTICS.get(name, 0)


@pytest.mark.parametrize("name", sorted(KERAS_TRAINABLE))
def test_tutorial_models_use_keras_init_and_batchnorm(name: str) -> None:
    model = build(name, (1, 28, 28, 10))
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            assert torch.count_nonzero(module.bias) == 0
            fan_in = module.weight[0].numel()
            fan_out = module.weight.shape[0] * module.weight[0, 0].numel()
            assert module.weight.abs().max() <= (6 / (fan_in + fan_out)) ** 0.5 + 1e-6
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            assert module.eps == 1e-3 and module.momentum == pytest.approx(0.01)
    assert not any(isinstance(m, nn.Softmax | nn.LogSoftmax) for m in model.modules())


def test_cnn4_puts_relu_before_batchnorm() -> None:
    kinds = [type(m).__name__ for m in build("cnn4", (1, 28, 28, 10)).children()]
    assert kinds[:3] == ["Conv2d", "ReLU", "BatchNorm2d"]


@pytest.mark.parametrize("name", ["cnn3", "mvnet"])
def test_too_small_images_are_a_one_line_error(name: str) -> None:
    with pytest.raises(MinivisionError) as err:
        build(name, (1, 6, 6, 10))
    assert "6x6" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", list_models("mvnet*"))
def test_mvnet_takes_8x8_images_and_uses_widths_in_multiples_of_16(name: str) -> None:
    model = build(name, (3, 8, 8, 4)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 8, 8)).shape == (2, 4)
    assert all(m.out_channels % 16 == 0 for m in model.modules() if isinstance(m, nn.Conv2d))


# ----------------------------------------------------------------------------- registry

def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(MinivisionError, match="did you mean") as err:
        create_model("cnn22", in_channels=1, image_size=28, num_classes=10)
    assert "cnn2" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(MinivisionError, match="did you mean"):
        model_info("mvnet-xs")


def test_unknown_model_option_suggests_close_names() -> None:
    with pytest.raises(MinivisionError, match="did you mean 'width'"):
        create_model("mvnet", in_channels=1, image_size=28, num_classes=10, widht=2.0)
    with pytest.raises(MinivisionError, match="has no option"):
        create_model("cnn2", in_channels=1, image_size=28, num_classes=10, width=2.0)


def test_model_options_are_passed_to_the_builder() -> None:
    small = create_model("mvnet", in_channels=1, image_size=28, num_classes=10, width=0.5)
    assert count_parameters(small) == count_parameters(build("mvnet-s", (1, 28, 28, 10)))


def test_bad_shapes_are_user_errors() -> None:
    with pytest.raises(MinivisionError):
        create_model("cnn2", in_channels=0, image_size=28, num_classes=10)
    with pytest.raises(MinivisionError):
        create_model("cnn2", in_channels=1, image_size=28, num_classes=1)
    with pytest.raises(MinivisionError):
        create_model("cnn2", in_channels=1, image_size=(28, 28, 3), num_classes=10)


def test_list_models_filters_with_shell_patterns() -> None:
    assert list_models("cnn*") == ["cnn1", "cnn2", "cnn2-bn", "cnn3", "cnn4"]
    assert set(list_models("mvnet*")) >= {"mvnet", "mvnet-s", "mvnet-l"}
    assert list_models("nothing*") == []


def test_register_rejects_bad_defaults_and_duplicates() -> None:
    with pytest.raises(MinivisionError, match="did you mean 'epochs'"):
        register_model("bad-key", description="x", defaults={"epoch": 3})
    with pytest.raises(MinivisionError, match="optimizer"):
        register_model("bad-value", description="x", defaults={"optimizer": "rmsprop"})
    with pytest.raises(MinivisionError):
        validate_defaults({"val_split": 0.1, "val_first": 100})
    with pytest.raises(MinivisionError):
        validate_defaults({"batch_size": 0})
    with pytest.raises(MinivisionError):
        validate_defaults({"augment": "flip;shift=2"})
    assert validate_defaults({"augment": "flip,shift=2", "lr": 1}) == {"augment": "flip,shift=2", "lr": 1}
    with pytest.raises(ValueError, match="already registered"):
        register_model("cnn2", description="x")(lambda **kw: nn.Identity())
    assert "bad-key" not in list_models() and "bad-value" not in list_models()


# ----------------------------------------------------------------------------- summary

def test_summary_counts_macs_of_a_hand_computed_net() -> None:
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),  # 8x8 out: 4*8*8 outputs x 2*3*3 = 4,608
        nn.BatchNorm2d(4),  # 0 MACs, 8 params, 8 statistics
        nn.ReLU(),
        nn.Conv2d(4, 8, 3, groups=2, bias=False),  # 6x6 out: 8*6*6 outputs x (4/2)*3*3 = 5,184
        nn.MaxPool2d(2),  # 3x3
        nn.Flatten(),
        nn.Linear(8 * 3 * 3, 5),  # 72*5 = 360
    )
    rows = summarize(net, (2, 8, 8))
    shapes = [(4, 8, 8), (4, 8, 8), (4, 8, 8), (8, 6, 6), (8, 3, 3), (72,), (5,)]
    assert [r.output_shape for r in rows] == shapes
    assert [r.macs for r in rows] == [4608, 0, 0, 5184, 0, 0, 360]
    totals = summary_totals(rows)
    assert totals.macs == 4608 + 5184 + 360
    assert totals.params == count_parameters(net) == (2 * 9 * 4 + 4) + 8 + (2 * 9 * 8) + (72 * 5 + 5)
    assert totals.state == 8 and totals.keras_total == totals.params + 8


def test_summary_leaves_the_model_as_it_was() -> None:
    model = build("cnn4", (1, 28, 28, 10)).train()
    before = copy.deepcopy(model.state_dict())
    summarize(model, (1, 28, 28))
    assert model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_summary_counts_frozen_and_unused_parameters() -> None:
    class WithSpare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Linear(4, 3)
            self.spare = nn.Linear(3, 2)  # never called

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x.flatten(1))

    net = WithSpare()
    net.used.bias.requires_grad_(False)
    totals = summary_totals(summarize(net, (1, 2, 2)))
    assert totals.params == count_parameters(net) == 15 + 8
    assert totals.non_trainable == 3


def test_format_summary_reads_like_keras() -> None:
    text = format_summary(summarize(build("cnn2", (1, 28, 28, 10)), (1, 28, 28)), title="cnn2")
    assert text.splitlines()[0] == "cnn2"
    assert "conv2d (Conv2d)" in text and "(16, 26, 26)" in text
    assert "Total params: 507,530" in text and "Trainable params: 507,530" in text
    assert "Non-trainable params: 0" in text and "Multiply-adds per image" in text
    bn_text = format_summary(summarize(build("cnn2-bn", (1, 28, 28, 10)), (1, 28, 28)))
    assert "Keras total 211,822" in bn_text
