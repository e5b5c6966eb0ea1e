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


#: ``auto`` trains a CPU in bf16 only where a 3 x 3 convolution runs more than this many times as fast under
#: bf16 autocast as in fp32 (``bf16_speedup``). The convolution's ratio and the training step's move together:
#: an AMD EPYC of CPU family 26 (Zen 5; flags avx512_bf16, no AMX) steps in 0.59-0.70x its fp32 time in bf16
#: (``python3 bench/step_variants.py --variants base,bf16``: mvnet-t 8.8 against 12.5 ms, mvnet on colour
#: pictures at batch 256 88.6 against 150.3 ms), while an Intel Xeon with the same flags (family 6, model 207,
#: its AMX not exposed) runs the convolution at 0.58x in bf16 (``python3 bench/conv_precision.py``: 128
#: against 222 GFLOP/s) and steps in 1.13x (mvnet-t, 25.7 against 22.7 ms) to 1.22x (mvnet, 278.7 against
#: 227.6 ms) its fp32 time. So what oneDNN reports it supports does not say whether bf16 pays; a measurement
#: does. bf16 also costs some accuracy, so a tie goes to fp32.
BF16_MIN_SPEEDUP = 1.0
_CPU_BF16: dict[str, float] = {}


def bf16_speedup(rounds: int = 2, seconds: float = 0.05, measure=None) -> float:
    """How many times as fast a 3 x 3 convolution runs under bf16 autocast as in fp32 on this CPU
    (``benchmark.conv_gflops``: 64 to 64 channels, a batch of 32 pictures of 32 x 32, forward and backward),
    the best of ``rounds`` alternating rounds of about ``seconds`` each per precision (the first round of a
    process runs slow while its threads start). About 0.6 s on a 2-core Xeon. ``measure(seconds, precision)``
    replaces the timing (tests). Returns a float > 0."""
    if measure is None:
        from .benchmark import conv_gflops as measure
    best = {"fp32": 0.0, "bf16": 0.0}
    for _ in range(max(1, rounds)):
        for precision in best:
            best[precision] = max(best[precision], float(measure(seconds, precision)))
    return best["bf16"] / best["fp32"] if best["fp32"] > 0 else 0.0


def _cpu_key() -> str:
    """This CPU, as far as bf16's speed goes: its model name, flags, torch's version and threads."""
    from .benchmark import machine_info

    m = machine_info()
    flags = ",".join(sorted(f for f, on in m["flags"].items() if on))
    return f"{m['cpu']} | {flags} | torch {m['torch']} | {m['torch_threads']} threads"


def cpu_bf16_speedup(measure=None) -> float:
    """``bf16_speedup`` of this CPU, measured once per machine: kept in this process and in
    ``<cache>/cpu-precision.json`` (cache: ``$MINIVISION_CACHE``, else ``$XDG_CACHE_HOME/minivision``, else
    ``~/.cache/minivision``), keyed by CPU model, flags, torch version and threads. A cache that cannot be
    read or written is measured again, silently: it only saves the 0.6 s."""
    from .data.sources import user_cache_dir
    from .fileio import read_json, write_json

    key = _cpu_key()
    if key in _CPU_BF16:
        return _CPU_BF16[key]
    path = user_cache_dir() / "cpu-precision.json"
    known: dict = {}
    try:
        data = read_json(path) if path.is_file() else {}
        known = dict(data.get("machines", {})) if isinstance(data, dict) else {}
        value = known.get(key, {}).get("bf16_speedup") if isinstance(known.get(key), dict) else None
        if isinstance(value, (int, float)) and value > 0:
            _CPU_BF16[key] = float(value)
            return float(value)
    except (MinivisionError, OSError, AttributeError):
        known = {}
    speedup = round(bf16_speedup(measure=measure), 3)
    _CPU_BF16[key] = speedup
    known[key] = {"bf16_speedup": speedup}
    try:
        write_json(path, {"about": "minivision: a 3 x 3 convolution's speed under bf16 autocast over fp32, per "
                                   "CPU; --precision auto trains in bf16 where it is > 1 (delete to measure again)",
                          "machines": known})
    except (MinivisionError, OSError):
        pass
    return speedup


def pick_precision(name: str, device: torch.device) -> str:
    """``fp32`` or ``bf16``; an explicit choice wins. For ``auto``: on CUDA, bf16 where the GPU supports
    it; on a CPU, bf16 where oneDNN does it natively (AVX-512 BF16 or AMX) AND it measurably pays: a 3 x 3
    convolution more than ``BF16_MIN_SPEEDUP`` times as fast as in fp32 (``cpu_bf16_speedup``, measured once
    per machine and kept in the cache); fp32 elsewhere."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if not cpu_supports_bf16():
        return "fp32"
    return "bf16" if cpu_bf16_speedup() > BF16_MIN_SPEEDUP else "fp32"


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
