"""What every reader of a trained model needs, and nothing of training: the device and precision to
run on, ``predict_logits`` (with flip TTA), the loss and accuracy of logits, the split to score.

``evaluate``, ``predict``, ``embed``, ``compare`` and the HTTP service import this module, never
``train``: serving a model must not load the trainer (tests/test_seams.py guards it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .data.dataset import Dataset, Split
from .errors import MinivisionError
from .preprocess import Preprocess


def pick_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda``.

    Raises MinivisionError for ``cuda`` on a machine without a CUDA GPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise MinivisionError("--device cuda: no CUDA GPU is available (use --device cpu or auto)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def cpu_supports_bf16() -> bool:
    """The CPU does bf16 natively (AVX-512 BF16 or AMX), as oneDNN reports it."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def pick_precision(name: str, device: torch.device) -> str:
    """``fp32`` or ``bf16``: for ``auto``, bf16 autocast where the hardware does it natively, fp32
    elsewhere; an explicit choice wins."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_supports_bf16() else "fp32"


@torch.inference_mode()
def predict_logits(model: nn.Module, pre: Preprocess, x: torch.Tensor, *, device: torch.device,
                   precision: str = "fp32", batch_size: int = 256, tta: bool = False,
                   temperature: float = 1.0) -> torch.Tensor:
    """Logits, float32 (N, K) on the CPU, for uint8 images ``x`` (N, C, H, W) at the model's size.

    ``pre`` (the model's saved preprocessing) turns pixels into the network's input; batches of
    ``batch_size`` run in eval mode under bf16 autocast when ``precision`` is ``bf16``.
    ``tta``: flip test-time augmentation. The result is the log of the mean of the softmax
    probabilities of each image and its horizontal mirror, log((softmax(f(x)) + softmax(f(flip x))) / 2)
    (fastai's choice: averaged probabilities, not logits), so softmax and cross-entropy apply to it
    unchanged. ``temperature`` (model.json's ``calibration``, see trust.py) divides each view's logits
    before anything else, so softmax of the result is the calibrated score. The model's training/eval
    mode is restored afterwards."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        xb = pre(x[i:i + batch_size].to(device, non_blocking=True))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(xb).float() / temperature
            if tta:
                mirrored = model(xb.flip(3)).float() / temperature
                logits = (logits.log_softmax(1).exp() + mirrored.log_softmax(1).exp()).mul_(0.5).log_()
            out.append(logits.cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


@torch.inference_mode()
def predict_features(model: nn.Module, pre: Preprocess, x: torch.Tensor, *, device: torch.device,
                     precision: str = "fp32", batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(features float32 (N, D), logits float32 (N, K)), both on the CPU, for uint8 images ``x`` (N, C, H, W):
    the penultimate features (``forward_features``) and the logits the final layer makes of them, in one
    pass, no TTA, no temperature; otherwise as ``predict_logits``."""
    was_training = model.training
    model.eval()
    feats, logits = [], []
    for i in range(0, len(x), batch_size):
        xb = pre(x[i:i + batch_size].to(device, non_blocking=True))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            f = model.forward_features(xb)
            logits.append(model.forward_head(f).float().cpu())
            feats.append(f.float().flatten(1).cpu())
    model.train(was_training)
    if not feats:
        return torch.empty(0), torch.empty(0)
    return torch.cat(feats), torch.cat(logits)


def loss_and_accuracy(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(mean cross-entropy, top-1 accuracy in [0, 1]) of float logits (N, K) against int64 labels (N,);
    (nan, nan) for an empty split."""
    if len(y) == 0:
        return float("nan"), float("nan")
    loss = F.cross_entropy(logits, y).item()
    acc = (logits.argmax(1) == y).float().mean().item()
    return loss, acc


# A picture is empty when the central 98% of its grey levels (1st to 99th percentile) span fewer than
# BLANK_SPREAD of 256: one colour, or so little contrast that nothing in it can be told apart. Why 10:
# sensor and JPEG noise on a plain backdrop spans a few levels once the picture is reduced to at most
# THUMB_PX a side, as ``predict`` does before the check (measured: one grey plus Gaussian noise of
# sd 2-3, 400 x 400, JPEG quality 75 or 95: 1-3 levels reduced, 5-15 at full size); a garment or a
# digit spans a hundred or more. Leaving out the outer 1% on each side keeps a speck or a dead pixel
# from making an empty picture look full.
BLANK_SPREAD = 10.0
THUMB_PX = 64
DETAIL_PX = 256
EMPTY_NOTE = "the picture is empty (one colour, or almost): the label is a guess"
EMPTY_INPUT_NOTE = "nothing stands out from the background (the model sees an empty picture): the label is a guess"


def blank_pictures(x: torch.Tensor, spread: float = BLANK_SPREAD) -> torch.Tensor:
    """bool (N,): which of the uint8 pictures ``x`` (N, C, H, W), any size and channels, are empty by the
    ``BLANK_SPREAD`` rule (grey level = the mean of the channels; ``spread``: another limit, in grey levels)."""
    import numpy as np

    if x.ndim != 4 or len(x) == 0:
        return torch.zeros(len(x) if x.ndim else 0, dtype=torch.bool)
    out = []
    for i in range(0, len(x), 1024):  # a bounded copy in float at a time
        grey = x[i:i + 1024].float().mean(1).flatten(1).numpy()
        lo, hi = np.percentile(grey, [1, 99], axis=1)
        out.append(torch.from_numpy((hi - lo) < spread))
    return torch.cat(out)


def empty_picture(img, model_input: torch.Tensor | None = None) -> bool:
    """``empty_reason(img, model_input) is not None``."""
    return empty_reason(img, model_input) is not None


def empty_reason(img, model_input: torch.Tensor | None = None) -> str | None:
    """Why a PIL image (any mode and size) is empty, or None when it is not.

    ``EMPTY_NOTE`` when the picture as given is flat by the ``BLANK_SPREAD`` rule, checked on a copy reduced to
    at most ``THUMB_PX`` a side (which averages sensor and JPEG noise away) and again, with twice the limit,
    at ``DETAIL_PX`` (fine noise averages to one grey at THUMB_PX yet spans 36-39 grey levels at DETAIL_PX,
    measured on 2,000 x 2,000 uniform noise as given and as the web page shrinks it to 256 px, while a plain
    backdrop with sensor and JPEG noise spans about 1: 3,000 x 2,000, sd 3, JPEG quality 75).
    ``EMPTY_INPUT_NOTE`` when ``model_input``, the uint8 (C, H, W) picture its conversion made for the model,
    is empty by the same rule and dark (its 99th percentile below ``2 x BLANK_SPREAD``: nothing of the photo
    was kept on the black canvas): a photo of a backdrop alone (a ramp of light spans 60 grey levels, but the
    conversion evens the light out and the model sees black) or of fine noise; its label is as much a
    guess. A model input of one light colour is an item that fills the frame, not an empty picture."""
    import numpy as np

    def flat(picture, side: int, spread: float) -> bool:
        picture.thumbnail((side, side))
        return bool(blank_pictures(torch.from_numpy(np.array(picture, dtype=np.uint8))[None, None], spread)[0])

    grey = img.convert("L")
    if flat(grey.copy(), THUMB_PX, BLANK_SPREAD) and flat(grey.copy(), DETAIL_PX, 2 * BLANK_SPREAD):
        return EMPTY_NOTE
    if model_input is not None and bool(blank_pictures(model_input[None])[0]):
        if float(np.percentile(model_input.float().mean(0).numpy(), 99)) < 2 * BLANK_SPREAD:
            return EMPTY_INPUT_NOTE
    return None


# A picture is noise when neighbouring pixels hardly correlate: the Pearson correlation of each grey level with
# its right and lower neighbours below NOISE_CORRELATION. Why 0.15: measured (bench/unsure.py's pictures, 28 x 28),
# uniform and Gaussian noise give -0.07 to 0.09 (the spread of a correlation over ~1,500 pixel pairs is about
# 0.03), the 10,000 Fashion-MNIST test pictures 0.24 at the least (0.58 at the 1st percentile), CIFAR-10 made grey
# 0.55 at the least. A thin line drawing can fall below it too; it is not a picture the model knows either.
NOISE_CORRELATION = 0.15
NOISE_NOTE = "the picture looks like noise (no shapes in it): the label is a guess"


def noise_pictures(x: torch.Tensor) -> torch.Tensor:
    """bool (N,): which of the uint8 pictures ``x`` (N, C, H, W) are noise by the ``NOISE_CORRELATION`` rule
    (grey level = the mean of the channels); an empty picture (no variation) is not noise."""
    if x.ndim != 4 or len(x) == 0 or min(x.shape[-2:]) < 2:
        return torch.zeros(len(x) if x.ndim else 0, dtype=torch.bool)
    out = []
    for i in range(0, len(x), 1024):
        g = x[i:i + 1024].float().mean(1)
        a = torch.cat([g[:, :, :-1].flatten(1), g[:, :-1, :].flatten(1)], 1)
        b = torch.cat([g[:, :, 1:].flatten(1), g[:, 1:, :].flatten(1)], 1)
        a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
        denom = a.norm(dim=1) * b.norm(dim=1)
        out.append((denom > 0) & ((a * b).sum(1) < NOISE_CORRELATION * denom))
    return torch.cat(out)


def noise_picture(img) -> bool:
    """A PIL image (any mode and size) is noise by the ``NOISE_CORRELATION`` rule, checked on a grey copy reduced
    to at most ``THUMB_PX`` a side (as ``empty_picture``)."""
    import numpy as np

    small = img.convert("L")
    small = small.copy() if small is img else small
    small.thumbnail((THUMB_PX, THUMB_PX))
    return bool(noise_pictures(torch.from_numpy(np.array(small, dtype=np.uint8))[None, None])[0])


def split_for(ds: Dataset, name: str) -> Split:
    """The split ``name`` (train, val or test) of ``ds``; MinivisionError when it is missing or empty."""
    split = getattr(ds, name, None)
    if split is None or len(split) == 0:
        raise MinivisionError(f"dataset {ds.name} has no {name} split")
    return split
