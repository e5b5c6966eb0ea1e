"""The Keras tutorials' models, layer for layer, so a learner can reproduce each tutorial here.

Why "layer for layer" matters: a learner compares our parameter count and accuracy with the
tutorial's page. So every detail that changes either is copied from Keras: Glorot-uniform weights
and zero biases for Dense and Conv2D, BatchNormalization with eps 1e-3 and momentum 0.99 (PyTorch
momentum 0.01), ReLU *before* BatchNormalization (the tutorials write ``Conv2D(activation="relu")``
then ``BatchNormalization()``), 'valid' convolutions and poolings unless a tutorial says 'same'.
The one difference: the last Dense layer returns logits and the loss applies the softmax.

Each model adapts to the input: flatten sizes are computed from (channels, height, width), and an
input too small for a model's convolutions and poolings is a one-line MinivisionError.

Parameter counts for 1x28x28 input and 10 classes (Keras "Trainable params"; Keras' "Total" adds
2 non-trainable running statistics per BatchNorm channel):

=========  ==========  ============  =====================
model      parameters  Keras total   multiply-adds / image
=========  ==========  ============  =====================
softmax         7,850         7,850              7,840
mlp           266,610       266,610            266,200
cnn2          507,530       507,530          5,903,744
cnn2-bn       211,756       211,822          2,234,112
cnn1          693,962       693,962            888,192
cnn3          241,546       241,546          3,237,248
cnn4        1,219,754     1,221,546         13,180,288
=========  ==========  ============  =====================
"""

from __future__ import annotations

import itertools
from collections import Counter, OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from minivision.errors import MinivisionError
from minivision.models.base import ClassifierNet
from minivision.models.registry import register_model

# Keras BatchNormalization defaults, translated: PyTorch's momentum is 1 - Keras' momentum.
KERAS_BN_EPS = 1e-3
KERAS_BN_MOMENTUM = 0.01

# What every tutorial does that a modern recipe would not: inputs scaled by 1/255 (Keras
# Rescaling), no augmentation, a constant learning rate, no label smoothing, no weight decay.
_TUTORIAL = {
    "normalize": "unit",
    "augment": "",
    "schedule": "constant",
    "label_smoothing": 0.0,
    "weight_decay": 0.0,
    "momentum": 0.0,
    "nesterov": False,
}


# ----------------------------------------------------------------------------- layer specs

@dataclass(frozen=True)
class Conv:
    """Conv2D(filters, 3, activation="relu"), 'valid' unless ``same``."""

    filters: int
    same: bool = False


@dataclass(frozen=True)
class Pool:
    """MaxPooling2D(size, strides=stride or size), 'valid'."""

    size: int
    stride: int | None = None


@dataclass(frozen=True)
class Drop:
    """Dropout(rate) (element-wise, as Keras Dropout; not spatial dropout)."""

    rate: float


@dataclass(frozen=True)
class BN:
    """BatchNormalization() with Keras' eps and momentum."""


@dataclass(frozen=True)
class Flatten:
    """Flatten() (channel-first order; Keras flattens channel-last, which changes no result)."""


@dataclass(frozen=True)
class Dense:
    """Dense(units, activation="relu")."""

    units: int


Layer = Conv | Pool | Drop | BN | Flatten | Dense


def _keras_init(model: nn.Module) -> None:
    """Keras' initialisers: glorot_uniform kernels, zero biases (PyTorch uses kaiming-uniform)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class KerasSequential(ClassifierNet, nn.Sequential):
    """A Keras Sequential model whose last layer is the logits Dense: an ``nn.Sequential`` (same
    module names, so the same state-dict keys) that keeps the ``ClassifierNet`` contract.

    Features: what the last Dense receives, i.e. the output of every layer before it, dropout
    included (identity in eval mode): the last hidden Dense layer (after its ReLU, BatchNorm and
    Dropout when the spec has them), or the flattened input for ``softmax``.
    """

    @property
    def classifier_name(self) -> str:  # type: ignore[override]
        """The last module's name, e.g. "dense_2": ``keras_sequential`` always ends with the logits."""
        return next(reversed(self._modules))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Every layer but the last, in order (see ``ClassifierNet``)."""
        for module in itertools.islice(self, len(self) - 1):
            x = module(x)
        return x

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """The logits Dense (see ``ClassifierNet``)."""
        return self.get_classifier()(features)

    def init_classifier(self, layer: nn.Linear) -> None:
        """Keras' glorot-uniform kernel and zero bias, as the rest of the model."""
        _keras_init(layer)


def keras_sequential(
    model_name: str, spec: list[Layer], in_channels: int, image_size: tuple[int, int], num_classes: int
) -> KerasSequential:
    """Build ``spec`` followed by Dense(num_classes) logits, tracking the shape to size Flatten -> Dense.

    Module names follow Keras' layer names (conv2d, conv2d_1, max_pooling2d, ...) so our summary
    reads like the tutorial's ``model.summary()``.
    """
    channels, (height, width) = in_channels, image_size
    features: int | None = None  # set by Flatten
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    seen: Counter[str] = Counter()

    def add(base: str, module: nn.Module) -> str:
        name = base if seen[base] == 0 else f"{base}_{seen[base]}"
        seen[base] += 1
        layers[name] = module
        return name

    for layer in [*spec, None]:  # None: the final logits layer
        if isinstance(layer, Conv):
            name = add("conv2d", nn.Conv2d(channels, layer.filters, 3, padding=1 if layer.same else 0))
            layers[f"{name}_relu"] = nn.ReLU()
            channels = layer.filters
            if not layer.same:
                height, width = height - 2, width - 2
        elif isinstance(layer, Pool):
            stride = layer.stride or layer.size
            # conv -> ReLU -> max-pool computes the same as conv -> max-pool -> ReLU (ReLU is monotonic,
            # so it commutes with max; gradients agree except at exact ties), and the second runs ReLU
            # and its backward on 1/4-1/5 of the values: a cnn2 training step (batch 128, 2-core CPU) takes
            # 92 ms instead of 114 (median of 6 interleaved rounds).
            last = next(reversed(layers)) if layers else None
            relu = layers.pop(last) if last is not None and last.endswith("_relu") else None
            name = add("max_pooling2d", nn.MaxPool2d(layer.size, stride))
            if relu is not None:
                layers[last] = relu
            height, width = (height - layer.size) // stride + 1, (width - layer.size) // stride + 1
        elif isinstance(layer, Drop):
            name = add("dropout", nn.Dropout(layer.rate))
        elif isinstance(layer, BN):
            norm = nn.BatchNorm2d if features is None else nn.BatchNorm1d
            name = add("batch_normalization",
                       norm(channels if features is None else features,
                            eps=KERAS_BN_EPS, momentum=KERAS_BN_MOMENTUM))
        elif isinstance(layer, Flatten):
            name = add("flatten", nn.Flatten())
            features = channels * height * width
        else:  # Dense or the final logits layer
            if features is None:
                raise ValueError(f"model spec '{model_name}': Dense before Flatten")
            units = num_classes if layer is None else layer.units
            name = add("dense", nn.Linear(features, units))
            if layer is not None:
                layers[f"{name}_relu"] = nn.ReLU()
            features = units
        if height < 1 or width < 1:
            raise MinivisionError(
                f"model '{model_name}' needs larger images than {image_size[0]}x{image_size[1]}: "
                f"nothing is left after layer '{name}'")
    model = KerasSequential(layers)
    _keras_init(model)
    return model


# ----------------------------------------------------------------------------- the models

# lr 0.005 (the recipe we were given for this tutorial) is slow with a mean loss: 1000 steps reach about 72%
# test accuracy on Fashion-MNIST (lr 0.05: about 81%), short of the ~84% a linear model can reach.
@register_model(
    "softmax",
    description="softmax regression (TensorFlow's first MNIST tutorial): Flatten, Dense; plain "
                "gradient descent, 1000 steps of 100 images",
    defaults={**_TUTORIAL, "optimizer": "gd", "lr": 0.005, "batch_size": 100, "steps": 1000,
              "val_split": 0.1},
)
def softmax(in_channels: int, image_size: tuple[int, int], num_classes: int) -> KerasSequential:
    return keras_sequential("softmax", [Flatten()], in_channels, image_size, num_classes)


@register_model(
    "mlp",
    description="multilayer perceptron 300-100 (Hands-On ML, Keras chapter): SGD 0.01, batch 32, "
                "30 epochs, first 5000 images for validation",
    defaults={**_TUTORIAL, "optimizer": "sgd", "lr": 0.01, "batch_size": 32, "epochs": 30,
              "val_first": 5000},
)
def mlp(in_channels: int, image_size: tuple[int, int], num_classes: int) -> KerasSequential:
    spec: list[Layer] = [Flatten(), Dense(300), Dense(100)]
    return keras_sequential("mlp", spec, in_channels, image_size, num_classes)


@register_model(
    "cnn2",
    description="the Keras intro tutorial CNN: Conv16, Conv64, MaxPool 3/2, Dense 64-32; Adam, "
                "batch 128, 40 epochs, 20% validation",
    defaults={**_TUTORIAL, "optimizer": "adam", "lr": 0.001, "batch_size": 128, "epochs": 40,
              "val_split": 0.2},
)
def cnn2(in_channels: int, image_size: tuple[int, int], num_classes: int) -> KerasSequential:
    spec: list[Layer] = [Conv(16), Conv(64), Pool(3, 2), Flatten(), Dense(64), Dense(32)]
    return keras_sequential("cnn2", spec, in_channels, image_size, num_classes)


@register_model(
    "cnn2-bn",
    description="the Kaggle-CSV tutorial CNN: 2x [BatchNorm, Conv32 same, MaxPool 2, Dropout .25], "
                "Dense 128; SGD 0.01, batch 256, 5 epochs, 20% validation",
    defaults={**_TUTORIAL, "optimizer": "sgd", "lr": 0.01, "batch_size": 256, "epochs": 5,
              "val_split": 0.2},
)
def cnn2_bn(in_channels: int, image_size: tuple[int, int], num_classes: int) -> KerasSequential:
    block: list[Layer] = [BN(), Conv(32, same=True), Pool(2), Drop(0.25)]
    spec: list[Layer] = [*block, *block, Flatten(), Dense(128), Drop(0.5)]
    return keras_sequential("cnn2-bn", spec, in_channels, image_size, num_classes)


# The one-, three- and four-convolution tutorial CNNs share one recipe.
_CNN_RECIPE = {**_TUTORIAL, "optimizer": "adam", "lr": 0.001, "batch_size": 256, "epochs": 10,
               "val_split": 0.2}


@register_model(
    "cnn1",
    description="one-convolution tutorial CNN: Conv32, MaxPool 2, Dropout .2, Dense 128; Adam, "
                "batch 256, 10 epochs",
    defaults=_CNN_RECIPE,
)
def cnn1(in_channels: int, image_size: tuple[int, int], num_classes: int) -> KerasSequential:
    spec: list[Layer] = [Conv(32), Pool(2), Drop(0.2), Flatten(), Dense(128)]
    return keras_sequential("cnn1", spec, in_channels, image_size, num_classes)


@register_model(
    "cnn3",
    description="three-convolution tutorial CNN: Conv32-64-128 with MaxPool and Dropout, Dense 128; "
                "Adam, batch 256, 10 epochs",
    defaults=_CNN_RECIPE,
)
def cnn3(in_channels: int, image_size: tuple[int, int], num_classes: int) -> KerasSequential:
    spec: list[Layer] = [Conv(32), Pool(2), Drop(0.25), Conv(64), Pool(2), Drop(0.25),
                         Conv(128), Drop(0.4), Flatten(), Dense(128), Drop(0.3)]
    return keras_sequential("cnn3", spec, in_channels, image_size, num_classes)


@register_model(
    "cnn4",
    description="four-convolution tutorial CNN with BatchNorm after every layer: Conv32-32-64-128, "
                "Dense 512-128; Adam, batch 256, 10 epochs",
    defaults=_CNN_RECIPE,
)
def cnn4(in_channels: int, image_size: tuple[int, int], num_classes: int) -> KerasSequential:
    spec: list[Layer] = [Conv(32), BN(), Conv(32), BN(), Pool(2), Drop(0.25),
                         Conv(64), BN(), Drop(0.25),
                         Conv(128), BN(), Pool(2), Drop(0.25),
                         Flatten(), Dense(512), BN(), Drop(0.5), Dense(128), BN(), Drop(0.5)]
    return keras_sequential("cnn4", spec, in_channels, image_size, num_classes)
