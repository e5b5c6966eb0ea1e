"""What every reader of a trained model needs, and nothing of training: the device and precision to
run on, ``predict_logits`` (with test-time augmentation), the loss and accuracy of logits, the split to score.

``evaluate``, ``predict``, ``embed``, ``compare`` and the HTTP service import this module, never
``train``: serving a model must not load the trainer (tests/test_seams.py guards it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .data.dataset import split_for  # noqa: F401 (a reader's name; torch-free, in data/dataset.py)
from .errors import MinivisionError
from .preprocess import Preprocess
from .scores import TTA_VIEWS, tta_mode


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


def reading_precision(name: str) -> str:
    """The precision a trained model is read in: by ``evaluate``, ``calibrate``, ``predict``, the service and
    the run's own validation and test passes. ``auto`` is fp32 on every device, so a run's figures are the
    ones ``evaluate`` gives, equal those of its (fp32) ONNX export, and do not change with the machine: bf16
    answers differ in a few pictures in a thousand (a bf16-trained mvnet-t, 10,000 Fashion-MNIST test
    pictures: 91.46% in bf16, 91.53% in fp32), and on a CPU with AMX bf16 halves the time of a pass
    (0.42 vs 0.79 s). ``bf16`` is used only when asked for."""
    return "fp32" if name == "auto" else name


def shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Pictures ``x`` (N, C, H, W) moved by ``dy`` rows and ``dx`` columns (positive: down, right), the border
    row/column repeated outwards (replicate padding; ``scores.shifted_np`` on numpy arrays); same shape."""
    if dy == 0 and dx == 0:
        return x
    h, w = x.shape[2], x.shape[3]
    big = F.pad(x, (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0)), mode="replicate")
    top, left = max(-dy, 0), max(-dx, 0)
    return big[:, :, top:top + h, left:left + w]


def view(x: torch.Tensor, v: tuple[bool, int, int]) -> torch.Tensor:
    """One test-time view (mirrored, dy, dx) of ``x`` (N, C, H, W) (``scores.TTA_VIEWS``): mirror, then move."""
    mirrored, dy, dx = v
    return shifted(x.flip(3) if mirrored else x, dy, dx)


def _as(like: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``x`` in ``like``'s memory format (a channels-last input stays channels-last: the fast path of the
    convolutions)."""
    return x.contiguous(memory_format=torch.channels_last) if (
        like.ndim == 4 and like.is_contiguous(memory_format=torch.channels_last)
        and not like.is_contiguous()) else x


@torch.inference_mode()
def predict_logits(model: nn.Module, pre: Preprocess, x: torch.Tensor, *, device: torch.device,
                   precision: str = "fp32", batch_size: int = 256, tta: bool | str = False,
                   temperature: float = 1.0) -> torch.Tensor:
    """Logits, float32 (N, K) on the CPU, for uint8 images ``x`` (N, C, H, W) at the model's size.

    ``pre`` (the model's saved preprocessing) turns pixels into the network's input; batches of
    ``batch_size`` run in eval mode under bf16 autocast when ``precision`` is ``bf16``.
    ``tta``: test-time augmentation, one of ``scores.TTA_MODES`` ("none", "flip": the image and its
    horizontal mirror, "flip+shift": those and their one-pixel moves, 10 views), True for "flip", False for
    "none". With more than one view the result is the log of the mean of the views' softmax probabilities,
    log(mean_v softmax(f(view_v x))) (fastai's choice: averaged probabilities, not logits), so softmax and
    cross-entropy apply to it unchanged. ``temperature`` (model.json's ``calibration``, see trust.py) divides
    each view's logits before anything else, so softmax of the result is the calibrated score. The model's
    training/eval mode is restored afterwards. Raises MinivisionError for an unknown ``tta``."""
    views = TTA_VIEWS[tta_mode(tta)]
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        xb = pre(x[i:i + batch_size].to(device, non_blocking=True))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            if len(views) == 1:
                out.append((model(xb).float() / temperature).cpu())
                continue
            probs = None
            for v in views:
                p = (model(_as(xb, view(xb, v))).float() / temperature).softmax(1)
                probs = p if probs is None else probs.add_(p)
            out.append(probs.div_(len(views)).log_().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


@torch.inference_mode()
def view_logits(model: nn.Module, pre: Preprocess, x: torch.Tensor, mode: str, *, device: torch.device,
                precision: str = "fp32", batch_size: int = 256, first: bool = True) -> torch.Tensor:
    """Logits of every test-time view, float32 (V, N, K) on the CPU, uncalibrated, for uint8 images ``x``
    (N, C, H, W): one row per view of ``scores.TTA_VIEWS[mode]``, in that order (the first is the picture as
    it is; ``first`` False leaves it out: V - 1 rows). For fitting a temperature to the views' mean (trust.py)
    and for comparing view sets."""
    views = TTA_VIEWS[tta_mode(mode)][0 if first else 1:]
    was_training = model.training
    model.eval()
    out: list[list[torch.Tensor]] = [[] for _ in views]
    for i in range(0, len(x), batch_size):
        xb = pre(x[i:i + batch_size].to(device, non_blocking=True))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            for j, v in enumerate(views):
                out[j].append(model(_as(xb, view(xb, v))).float().cpu())
    model.train(was_training)
    return torch.stack([torch.cat(o) if o else torch.empty(0) for o in out])


def mean_view_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log(mean_v softmax(logits_v / T)), float (N, K), of view logits (V, N, K): what ``predict_logits``
    gives for the same views and temperature."""
    if len(logits) == 1:
        return logits[0] / temperature
    return (logits / temperature).softmax(2).mean(0).log()


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


# The empty-picture and noise rules, their thresholds and texts live in scores.py (numpy), shared with the
# reader of an exported model; these take and give tensors.
from .scores import (  # noqa: E402, F401 (inference's names, as before)
    BLANK_SPREAD,
    DETAIL_PX,
    EMPTY_INPUT_NOTE,
    EMPTY_NOTE,
    NOISE_CORRELATION,
    NOISE_NOTE,
    THUMB_PX,
    blank_arrays,
    noise_arrays,
)
from .scores import empty_reason as _empty_reason  # noqa: E402
from .scores import noise_image as noise_picture  # noqa: E402, F401


def blank_pictures(x: torch.Tensor, spread: float = BLANK_SPREAD) -> torch.Tensor:
    """bool (N,): which of the uint8 pictures ``x`` (N, C, H, W), any size and channels, are empty by the
    ``BLANK_SPREAD`` rule (``scores.blank_arrays``; ``spread``: another limit, in grey levels)."""
    if x.ndim != 4 or len(x) == 0:
        return torch.zeros(len(x) if x.ndim else 0, dtype=torch.bool)
    return torch.from_numpy(blank_arrays(x.cpu().numpy(), spread))


def empty_picture(img, model_input: torch.Tensor | None = None) -> bool:
    """``empty_reason(img, model_input) is not None``."""
    return empty_reason(img, model_input) is not None


def empty_reason(img, model_input: torch.Tensor | None = None) -> str | None:
    """Why a PIL image is empty (``scores.EMPTY_NOTE`` or ``EMPTY_INPUT_NOTE``), or None: ``scores.empty_reason``,
    ``model_input`` the uint8 (C, H, W) tensor its conversion made for the model."""
    return _empty_reason(img, None if model_input is None else model_input.cpu().numpy())


def noise_pictures(x: torch.Tensor) -> torch.Tensor:
    """bool (N,): which of the uint8 pictures ``x`` (N, C, H, W) are noise by the ``NOISE_CORRELATION`` rule
    (``scores.noise_arrays``); an empty picture (no variation) is not noise."""
    if x.ndim != 4 or len(x) == 0:
        return torch.zeros(len(x) if x.ndim else 0, dtype=torch.bool)
    return torch.from_numpy(noise_arrays(x.cpu().numpy()))
