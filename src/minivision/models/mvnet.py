"""mvnet: minivision's default network, a small airbench-style CNN that trains fast on a laptop CPU.

Why this shape: KellerJordan's airbench94 (``legacy/airbench94.py``) reaches 94% on CIFAR-10 in a
few seconds of GPU time with a plain stack of [conv3x3 -> maxpool2 -> BN -> GELU -> conv3x3 -> BN
-> GELU] groups, a global max pool and a linear head with a fixed output scale. Pooling straight
after the first conv of a group runs BN and GELU on a quarter of the pixels; no residual branches,
no depthwise convs and no attention, which are slow or memory-bound on a 2-core CPU. What we
changed, and why:

* widths 32-64-128 (airbench: 64-256-256, 7x the multiply-adds): at the ~75 GFLOP/s these convs
  reach on 2 cores, multiply-adds are time;
* two stems. ``stem="conv"`` (the builders' default; grey pictures) is a learned conv3x3 -> BN ->
  GELU: it needs no pass over the data, its BN keeps the net tolerant of either input
  normalisation, and 3x3 "same" padding keeps all pixels. ``stem="whiten"`` is airbench's frozen
  2x2 patch-whitening conv then GELU (``PatchWhitening``): its filters come from the training
  pictures (``init_from_data``), so ``train`` picks it for colour pictures from scratch, where it
  paid in a screen of three paired seeds (CIFAR-10, 180 s: +0.96 points, +1.16 with flip TTA, and
  8-12% less time per step); on Fashion-MNIST it tied (+0.11), so grey runs keep the learned stem;
* standard BatchNorm (learned scale, eps 1e-5) and PyTorch's default init; no lookahead or
  test-time augmentation here (those belong to the training loop);
* head scale 1/8 (airbench: 1/9); over 2 epochs it tied with a scale of 1 (91.4 vs 91.2%).

Channel counts are multiples of 16 so oneDNN's AVX2 kernels run full vectors; use
``model.to(memory_format=torch.channels_last)`` with channels-last input (1.2-1.6x faster below).
Any in_channels, num_classes and image side >= 8 (three pools: 28 -> 14 -> 7 -> 3, 32 -> 4).

Variants (``width`` multiplies the block widths; ``depth`` adds conv-BN-GELU layers per block).
Params and multiply-adds per 1x28x28 image (Conv2d + Linear), and forward+backward+SGD step time
per batch of 256 on the 2-core AVX2 dev VM (AMD EPYC, torch 2.13 CPU, fp32, 2 threads, min of 8;
the VM is shared, so timings are +-15%; cnn2 for scale: 156 ms channels-last, 181 ms NCHW):

=========  ============  ==========  =============  =============  ==========
model      widths        params      mult-adds      channels_last  NCHW
=========  ============  ==========  =============  =============  ==========
mvnet-s    16-32-64          74,992      4,961,152         119 ms      188 ms
mvnet      32-64-128        292,656     15,891,968         318 ms      402 ms
mvnet-l    64-128-256     1,165,920     63,339,520       1,024 ms    1,228 ms
=========  ============  ==========  =============  =============  ==========

(3x32x32: mvnet 21.7 M mult-adds, 445 ms channels-last vs 607 ms NCHW. With the whitening stem, whose
unpadded 2x2 conv makes the maps 31 -> 15 -> 7 -> 3: mvnet-t 3.5 M, mvnet-s 6.8 M, mvnet 19.9 M, mvnet-l
65.4 M mult-adds, against 4.0 / 6.9 / 21.7 / 85.8 M with the learned stem; its 288 frozen filter weights
are a buffer, not counted as parameters.)

Recipe (``_RECIPE``, the registered defaults): SGD + Nesterov 0.9, one-cycle to lr 0.2, weight
decay 5e-4, batch 256, 8 epochs, label smoothing 0.1, random flip + shift by up to 2 pixels,
per-channel standardisation, 10% validation. Evidence, Fashion-MNIST, plain PyTorch loop, 54,000
training images, test accuracy, 1 run (seed 0), 1 thread:
mvnet 93.3% (per epoch: 86.0 88.9 89.5 89.1 90.9 91.7 93.3 93.3; 860 s). For scale, the Keras
tutorial CNN (cnn2) stalls at ~92% after 40 epochs. Over 2 epochs, peak lr 0.05 / 0.1 / 0.2 gave
90.3 / 91.4 / 91.4% and ReLU instead of GELU 91.1%. Not yet measured: mvnet-s and mvnet-l over 8
epochs, several seeds, CIFAR-10.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from minivision.errors import MinivisionError
from minivision.models.base import ClassifierNet
from minivision.models.registry import register_model

#: Smallest side mvnet accepts: three 2x2 max-pools must leave at least one pixel.
MIN_IMAGE_SIZE = 8
#: ... and with the whitening stem, whose unpadded 2x2 conv takes one pixel off each side first.
MIN_WHITEN_SIZE = 9
#: The smallest side ``train`` gives the whitening stem to by itself: it was measured on 32 x 32 pictures, and
#: on 9-10 pixel folders 20-step runs with it stayed at chance where the learned stem reached ~48-57%.
AUTO_WHITEN_SIZE = 16

STEMS = ("conv", "whiten")
WHITEN_KERNEL = 2  # airbench's patch size
WHITEN_EPS = 1e-2  # times the mean eigenvalue; airbench's 5e-4 amplifies rare directions 45-fold (PatchWhitening)

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


class PatchWhitening(nn.Conv2d):
    """airbench's first layer (KellerJordan/airbench, ``airbench94.py``: ``init_whitening_conv``): a
    frozen k x k convolution, no padding, whose 2 x C x k x k filters are the eigenvectors of the
    covariance of the k x k patches of training pictures, each divided by sqrt(eigenvalue + eps), and
    their negatives (the GELU after it keeps both signs). Its output's patches are decorrelated with
    unit variance, so the first learned layer starts from whitened input.

    The filters are a buffer named ``weight``: saved with the run and exported like any conv
    weight, never trained (not in the optimizer, and a fine-tune's unfreezing leaves them alone).
    The bias is learned (airbench trains it too). Until ``init_from_data`` they are PyTorch's
    random conv init.

    What differs from airbench: eps is 1e-2 times the mean eigenvalue, not 5e-4 absolute. Relative,
    it means the same on standardised pictures (minivision's default, where the mean eigenvalue is
    about 1) and on ``normalize="unit"`` pixels. Larger, it caps the gain of a direction the training
    pictures hardly use at 10 (x the mean's), not 45: a model whitened on tinted pictures, whose
    channels move together, met ordinary colour photos with features ~30 times the size of its
    training pictures' and answered them at 100%. On CIFAR-10 (500 steps, three paired seeds) 1e-2
    scored +0.23 points against 5e-4 (+0.24 with flip TTA): no cost.
    """

    frozen_weights = ("weight",)  # a weight never trained (the model summary counts it as non-trainable)

    def __init__(self, in_channels: int, kernel_size: int = WHITEN_KERNEL) -> None:
        super().__init__(in_channels, 2 * in_channels * kernel_size ** 2, kernel_size, bias=True)
        weight = self.weight.detach().clone()
        del self.weight
        self.register_buffer("weight", weight)
        with torch.no_grad():
            self.bias.zero_()

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor, chunk: int = 500) -> None:
        """Set the filters from preprocessed pictures ``x``: float N x C x H x W (H, W >= k), N >= 1.

        The patch covariance (float64) is summed over chunks of ``chunk`` pictures, so 5,000
        32 x 32 colour pictures take a few MB, not the 460 MB of all their patches at once.
        Raises MinivisionError when ``x`` has the wrong channel count or is smaller than a patch."""
        k, c = self.kernel_size[0], self.in_channels
        if x.ndim != 4 or x.shape[1] != c or min(x.shape[2:]) < k or len(x) == 0:
            raise MinivisionError(f"the whitening stem needs pictures N x {c} x H x W of at least {k} x {k}, "
                                  f"got {tuple(x.shape)}")
        d = c * k * k
        total = torch.zeros(d, dtype=torch.float64)
        products = torch.zeros(d, d, dtype=torch.float64)
        n = 0
        for i in range(0, len(x), chunk):
            patches = F.unfold(x[i:i + chunk].detach().float().cpu(), k).transpose(1, 2).reshape(-1, d).double()
            total += patches.sum(0)
            products += patches.T @ patches
            n += len(patches)
        mean = total / n
        cov = (products - n * torch.outer(mean, mean)) / max(n - 1, 1)
        eigval, eigvec = torch.linalg.eigh(cov)
        eigval = eigval.clamp_min(0.0)
        eps = WHITEN_EPS * max(float(eigval.mean()), 1e-12)
        w = (eigvec.T / (eigval + eps).sqrt()[:, None]).reshape(d, c, k, k)
        self.weight.copy_(torch.cat([w, -w]).to(self.weight.dtype))


class Scale(nn.Module):
    """Multiply by a fixed factor (not learned)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor:g}"


class MVNet(ClassifierNet):
    """stem [conv3x3 -> (maxpool2) -> BN -> GELU] (``stem="whiten"``: [PatchWhitening 2x2 -> (maxpool2) ->
    GELU], 2 x C x 4 channels), then per block [conv3x3 -> maxpool2 -> BN -> GELU]
    + ``depth`` x [conv3x3 -> BN -> GELU], global max pool, linear head (no bias) times a fixed scale.

    Features (``forward_features``): the globally max-pooled output of the last block, N x D with
    D = the last block's width (mvnet-t 64, mvnet-s 64, mvnet 128, mvnet-l 256). Head
    (``forward_head``): ``self.head`` (Linear, no bias) then the fixed scale; no dropout.
    """

    classifier_name = "head"

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        widths: tuple[int, ...] = BASE_WIDTHS,
        stem_width: int = 16,
        depth: int = 1,
        head_scale: float = HEAD_SCALE,
        stem_pool: bool = False,
        stem: str = "conv",
    ) -> None:
        super().__init__()
        if stem == "whiten":
            whiten = PatchWhitening(in_channels)
            layers: OrderedDict[str, nn.Module] = OrderedDict(conv=whiten)
            if stem_pool:
                layers["pool"] = nn.MaxPool2d(2)
            layers["act"] = nn.GELU()
            self.stem = nn.Sequential(layers)
            stem_width = whiten.out_channels
        else:
            self.stem = _conv_bn_act(in_channels, stem_width, pool=stem_pool)
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

    def init_from_data(self, x: torch.Tensor) -> bool:
        """The whitening stem's filters from preprocessed training pictures ``x`` (float N x C x H x W;
        ``PatchWhitening.init_from_data``). Returns whether anything was set (False: a learned stem)."""
        if isinstance(self.stem.conv, PatchWhitening):
            self.stem.conv.init_from_data(x)
            return True
        return False

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features N x D of preprocessed images N x C x H x W (see ``ClassifierNet``)."""
        return self.flatten(self.pool(self.blocks(self.stem(x))))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits N x K: the head, then the fixed logit scale (see ``ClassifierNet``)."""
        return self.scale(self.head(features))


def default_stem(in_channels: int, image_size: tuple[int, int]) -> str:
    """The stem ``train`` gives an mvnet trained from scratch: ``"whiten"`` for colour pictures (3
    channels) of at least ``AUTO_WHITEN_SIZE`` pixels a side, else ``"conv"`` (see the module docstring)."""
    return "whiten" if in_channels == 3 and min(image_size) >= AUTO_WHITEN_SIZE else "conv"


def scratch_options(name: str, in_channels: int, image_size: tuple[int, int]) -> dict[str, str]:
    """The builder options ``train`` adds to model ``name`` trained from scratch on pictures of ``in_channels``
    x ``image_size``: ``{"stem": "whiten"}`` for a model that takes a ``stem`` where ``default_stem`` says so,
    else ``{}``. Raises MinivisionError for an unknown model name."""
    import inspect

    from minivision.models.registry import model_info

    if "stem" not in inspect.signature(model_info(name).builder).parameters:
        return {}
    stem = default_stem(in_channels, image_size)
    return {} if stem == "conv" else {"stem": stem}


def _check_shape(image_size: tuple[int, int], stem: str) -> None:
    if stem not in STEMS:
        raise MinivisionError(f"mvnet's stem is one of {', '.join(STEMS)}, got {stem!r}")
    least = MIN_WHITEN_SIZE if stem == "whiten" else MIN_IMAGE_SIZE
    if min(image_size) < least:
        what = " with the whitening stem" if stem == "whiten" else ""
        raise MinivisionError(f"mvnet needs images of at least {least}x{least}{what}, "
                              f"got {image_size[0]}x{image_size[1]}")


def build_mvnet(
    in_channels: int,
    image_size: tuple[int, int],
    num_classes: int,
    width: float = 1.0,
    depth: int = 1,
    head_scale: float = HEAD_SCALE,
    stem: str = "conv",
) -> MVNet:
    """MVNet with block widths ``BASE_WIDTHS`` x ``width`` (rounded to multiples of 16); ``stem`` is
    ``"conv"`` or ``"whiten"`` (``PatchWhitening``: call ``init_from_data`` before training)."""
    _check_shape(image_size, stem)
    if not width > 0 or depth < 0:
        raise MinivisionError(f"mvnet needs width > 0 and depth >= 0, got width={width}, depth={depth}")
    widths = tuple(_round16(w * width) for w in BASE_WIDTHS)
    return MVNet(in_channels, num_classes, widths, stem_width=_round16(widths[0] / 2), depth=depth,
                 head_scale=head_scale, stem=stem)


# The training recipe every mvnet variant is registered with (see "Recipe" in the module docstring).
_RECIPE = {
    "optimizer": "sgd",  # SGD + Nesterov: what airbench and most fast CIFAR recipes use with BN nets
    "lr": 0.2,  # peak of the one-cycle schedule; 0.1 and 0.2 tie over 2 epochs, 0.05 is 1 point worse
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 5e-4,  # the standard value for BN CNNs trained with SGD at this batch size
    "batch_size": 256,  # big enough for oneDNN to use both cores well, small enough for ~200 steps/epoch
    "epochs": 8,
    "schedule": "onecycle",  # warm-up then anneal: reaches a good minimum in few epochs
    "label_smoothing": 0.1,  # airbench uses 0.2 with test-time augmentation; 0.1 without
    "augment": "flip,shift=2",  # airbench's flip + translate 2; wrong for digits (MNIST): drop flip there
    "normalize": "standard",  # per-channel mean/std, so the first conv sees zero-mean unit-variance input
    "val_split": 0.1,
}


# The 30-second network: pooling right after the stem runs everything else at a quarter of the
# pixels, and two blocks instead of three. Fashion-MNIST, 2-core VM, plain loop, 20 s of training,
# test accuracy: this 91.0% (batch 128, 1.2 epochs) vs mvnet-s 88.6% (batch 256, 0.6 epochs); given
# 60 s, 92.4% (3.7 epochs). Short runs: no augmentation (random flips cost 1.3 points at 20 s).
_TINY_RECIPE = {**_RECIPE, "batch_size": 128, "epochs": 3, "augment": ""}


@register_model("mvnet-t", description="tiny mvnet (stem pooled, 32-64): the 30-second network",
                defaults=_TINY_RECIPE)
def mvnet_t(in_channels: int, image_size: tuple[int, int], num_classes: int, width: float = 1.0,
            depth: int = 1, head_scale: float = HEAD_SCALE, stem: str = "conv") -> MVNet:
    _check_shape(image_size, stem)
    widths = tuple(_round16(w * width) for w in (32, 64))
    return MVNet(in_channels, num_classes, widths, stem_width=16, depth=depth, head_scale=head_scale,
                 stem_pool=True, stem=stem)


@register_model("mvnet-s", description="mvnet at half width (16-32-64): the quick baseline", defaults=_RECIPE)
def mvnet_s(in_channels: int, image_size: tuple[int, int], num_classes: int, width: float = 0.5,
            depth: int = 1, head_scale: float = HEAD_SCALE, stem: str = "conv") -> MVNet:
    return build_mvnet(in_channels, image_size, num_classes, width, depth, head_scale, stem)


@register_model("mvnet", description="minivision's default CNN (airbench-style, 32-64-128)", defaults=_RECIPE)
def mvnet(in_channels: int, image_size: tuple[int, int], num_classes: int, width: float = 1.0,
          depth: int = 1, head_scale: float = HEAD_SCALE, stem: str = "conv") -> MVNet:
    return build_mvnet(in_channels, image_size, num_classes, width, depth, head_scale, stem)


@register_model("mvnet-l", description="mvnet at double width (64-128-256): 4x the compute of mvnet",
                defaults=_RECIPE)
def mvnet_l(in_channels: int, image_size: tuple[int, int], num_classes: int, width: float = 2.0,
            depth: int = 1, head_scale: float = HEAD_SCALE, stem: str = "conv") -> MVNet:
    return build_mvnet(in_channels, image_size, num_classes, width, depth, head_scale, stem)
