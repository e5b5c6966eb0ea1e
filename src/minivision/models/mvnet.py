"""mvnet: minivision's default network, a small airbench-style CNN that trains fast on a laptop CPU.

PLACEHOLDER_DOCSTRING
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from minivision.errors import MinivisionError
from minivision.models.registry import register_model

#: Smallest side mvnet accepts: three 2x2 max-pools must leave at least one pixel.
MIN_IMAGE_SIZE = 8

BASE_WIDTHS = (32, 64, 128)  # output channels of the three blocks at width 1.0
HEAD_SCALE = 1 / 8  # fixed logit scale (airbench: 1/9); see the module docstring


def _round16(x: float) -> int:
    """Channel counts that are multiples of 16 keep oneDNN's vectorised convolutions fully used."""
    return max(16, int(round(x / 16)) * 16)


def _conv_bn_act(c_in: int, c_out: int, pool: bool) -> nn.Sequential:
    """conv3x3 -> [maxpool2] -> BN -> GELU. Pooling right after the conv (airbench order) runs BN and
    GELU on a quarter of the pixels."""
    layers: OrderedDict[str, nn.Module] = OrderedDict(conv=nn.Conv2d(c_in, c_out, 3, padding=1, bias=False))
    if pool:
        layers["pool"] = nn.MaxPool2d(2)
    layers["norm"] = nn.BatchNorm2d(c_out)
    layers["act"] = nn.GELU()
    return nn.Sequential(layers)


class Scale(nn.Module):
    """Multiply by a fixed factor (not learned)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor:g}"


class MVNet(nn.Module):
    """stem, then per block [conv3x3 -> maxpool2 -> BN -> GELU] + ``depth`` x [conv3x3 -> BN -> GELU],
    global max pool, linear head (no bias) times a fixed scale."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        widths: tuple[int, ...] = BASE_WIDTHS,
        stem_width: int = 16,
        depth: int = 1,
        head_scale: float = HEAD_SCALE,
    ) -> None:
        super().__init__()
        self.stem = _conv_bn_act(in_channels, stem_width, pool=False)
        blocks = []
        c_in = stem_width
        for width in widths:
            layers = [_conv_bn_act(c_in, width, pool=True)]
            layers += [_conv_bn_act(width, width, pool=False) for _ in range(depth)]
            blocks.append(nn.Sequential(*layers))
            c_in = width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(c_in, num_classes, bias=False)
        self.scale = Scale(head_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.scale(self.head(self.flatten(self.pool(x))))


def build_mvnet(
    in_channels: int,
    image_size: tuple[int, int],
    num_classes: int,
    width: float = 1.0,
    depth: int = 1,
    head_scale: float = HEAD_SCALE,
) -> MVNet:
    """MVNet with block widths ``BASE_WIDTHS`` x ``width`` (rounded to multiples of 16)."""
    if min(image_size) < MIN_IMAGE_SIZE:
        raise MinivisionError(
            f"mvnet needs images of at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}, "
            f"got {image_size[0]}x{image_size[1]}")
    if not width > 0 or depth < 0:
        raise MinivisionError(f"mvnet needs width > 0 and depth >= 0, got width={width}, depth={depth}")
    widths = tuple(_round16(w * width) for w in BASE_WIDTHS)
    return MVNet(in_channels, num_classes, widths, stem_width=_round16(widths[0] / 2), depth=depth,
                 head_scale=head_scale)


_RECIPE = {
    "optimizer": "sgd",
    "lr": 0.1,
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 5e-4,
    "batch_size": 256,
    "epochs": 8,
    "schedule": "onecycle",
    "label_smoothing": 0.1,
    "augment": "flip,shift=2",
    "normalize": "standard",
    "val_split": 0.1,
}



@register_model("mvnet-s", description="mvnet at half width (16-32-64): the quick baseline", defaults=_RECIPE)
def mvnet_s(in_channels: int, image_size: tuple[int, int], num_classes: int, width: float = 0.5,
            depth: int = 1, head_scale: float = HEAD_SCALE) -> nn.Module:
    return build_mvnet(in_channels, image_size, num_classes, width, depth, head_scale)


@register_model("mvnet", description="minivision's default CNN (airbench-style, 32-64-128)", defaults=_RECIPE)
def mvnet(in_channels: int, image_size: tuple[int, int], num_classes: int, width: float = 1.0,
          depth: int = 1, head_scale: float = HEAD_SCALE) -> nn.Module:
    return build_mvnet(in_channels, image_size, num_classes, width, depth, head_scale)


@register_model("mvnet-l", description="mvnet at double width (64-128-256): slower, more accurate",
                defaults=_RECIPE)
def mvnet_l(in_channels: int, image_size: tuple[int, int], num_classes: int, width: float = 2.0,
            depth: int = 1, head_scale: float = HEAD_SCALE) -> nn.Module:
    return build_mvnet(in_channels, image_size, num_classes, width, depth, head_scale)
