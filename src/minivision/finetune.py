"""Starting from what a model already knows: which backbone a run fine-tunes from, and the two recipes.

Three ways to start (``train --pretrained``):

* ``NAME`` (``minivision models --pretrained``): a backbone of ``pretrained.py``, built by
  ``pretrained.build_pretrained`` with a new head for the dataset's classes and the input adapted
  inside the network (grey to 3 channels, resized to the working size, the backbone's mean/std).
* ``RUN`` or ``FILE``: the weights of a run or a .safetensors file, as ``--init-from`` reads them,
  but always with a new head and this module's recipe. ``--init-from`` is for continuing a training
  (a matching head is kept, the model's usual recipe); ``--pretrained`` starts a new task.
* nothing: ``choose_backbone`` picks one for a small dataset (the rule and its evidence are there);
  ``--pretrained none`` trains from scratch.

The recipes, as phases of the one training loop (``train.Trainer`` runs them; ``Phase`` says how):

* ``--freeze`` (feature extraction, the VGG19 chapter of the Keras CNN tutorial): the backbone runs
  once, in eval mode, over the training and validation pictures; its features (``forward_features``,
  float32 N x D, 4 x D bytes a picture: 5 KB for EfficientNet-Lite0's 1,280) stay in memory and only
  the head is trained on them, so an epoch costs milliseconds. Augmentation cannot apply to cached
  features. The saved model is the whole network, so ``predict`` and the service need nothing else.
* fine-tuning (fastai's ``Learner.fine_tune(epochs, base_lr, freeze_epochs=1)``, Howard & Gugger,
  "Fastai: a layered API for deep learning", Information 2020, and the fastai book ch. 5): phase
  ``head`` trains the new head with the backbone frozen (here on cached features: the backbone in
  eval mode, its batch-norm running statistics kept as pretrained); phase ``all`` unfreezes every
  layer with discriminative learning rates (``discriminative_lr_scales``) and the one-cycle
  schedule. fastai halves the base rate for the second phase and uses the full rate for the head
  phase; so does ``phases``. Two departures, each measured: the head phase runs at least
  ``HEAD_MIN_STEPS`` steps (cheap on cached features), and batch norm stays in eval mode in phase
  ``all`` too (``train_mode`` has the figures).

Our own code, not a library's: fastai depends on torchvision (no CPU build for the torch used
here) and its ``Learner`` would replace minivision's loop (resume, budget, events); the recipe is a
few lines over the existing optimizer groups.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .listeners import Listener

if TYPE_CHECKING:
    from .config import TrainConfig
    from .data.dataset import Dataset
    from .preprocess import Preprocess

# Small data: at most this many training pictures are fine-tuned from a backbone by default. Why 5,000:
# it is where fine-tuning stops fitting the few-minute runs minivision is made for on a 2-core CPU.
# EfficientNet-Lite0 trains at 98 pictures/s at 64 px and 45 at 96 px there (batch 64, fp32,
# channels-last), so one epoch of 5,000 pictures costs 51-111 s and the fine-tune's two phases plus
# the test pass need at least 3-5 minutes; a from-scratch mvnet sees 5,000 pictures in ~2 s and, on
# Fashion-MNIST, reaches 90%+ with tens of thousands of pictures (docs/BENCHMARKS.md). Below the line the
# fine-tune's case rests on colour pictures: 100 CIFAR-10 pictures per class reached 77.3% fine-tuned at
# 128 px against 49.8% from scratch (mean of 5 draws, docs/BENCHMARKS.md); on grey Fashion-MNIST pictures
# the two are within a standard deviation of each other (84.3% fine-tuned at 128 px, 83.4% from scratch).
SMALL_DATA_MAX = 5_000

# Backbones in order of preference for a small dataset, grey or colour. EfficientNet-Lite0 (ImageNet)
# first for both: it is the only one measured against training from scratch at 100 pictures per class
# (Fashion-MNIST and CIFAR-10; bench/fewshot.py). Backbones not named here come after, in name order;
# a backbone is never chosen for the dataset it was pretrained on.
PREFERENCE = ("efficientnet-lite0",)

# The working size (pixels, square) the network resizes the pictures to, per backbone: the cost of a
# training step grows with its square (EfficientNet-Lite0 on 2 cores, batch 64: 98 pictures/s at 64 px,
# 45 at 96, 24 at 128, 13 at 160), while the ImageNet features improve towards the 224 px they were
# trained at. Measured (linear probe: a linear head trained 300 Adam steps on the frozen features of 100
# training pictures per class, scored on 2,000 test pictures; one draw, 2026-11-30, 2 cores shared):
# Fashion-MNIST 81.4% at 64 px, 82.3% at 96, 84.3% at 128; CIFAR-10 58.8% at 64 px, 69.4% at 96. So grey
# pictures up to 32 px work at 64 px (+0.9 points at 96 px is not worth 2.3x the time), colour ones at
# 96 px (+10.6 points). Larger pictures: 96 px. A backbone not listed keeps its card's size. These are the
# automatic fine-tune's sizes, sized for its 30-second default budget; with the time for it, --imgsz 128
# scores best (5 draws at 128 px: see SMALL_DATA_MAX's figures).
SMALL_GREY_INPUT = {"efficientnet-lite0": 64}
SMALL_COLOUR_INPUT = {"efficientnet-lite0": 96}
LARGE_INPUT = {"efficientnet-lite0": 96}

HEAD_EPOCHS = 1        # fastai's freeze_epochs ...
HEAD_MIN_STEPS = 100   # ... but at least this many steps: on cached features they cost milliseconds, and a new
                       # linear head needs more than the 3-15 steps one epoch of a small dataset gives (measured:
                       # 200 Fashion-MNIST pictures, 6 head steps, then 6 of everything: 19% test accuracy)
HEAD_INIT_STD = 0.01   # a new head's weights ~ N(0, 0.01^2), bias 0: logits near 0 whatever the features' scale
LR_MULT = 100.0        # earliest layer group's rate = the head's / LR_MULT (fastai's fine_tune default, lr_mult=100)
FREEZE_EPOCHS = 20     # --freeze with no --epochs: epochs on cached features cost milliseconds
# What --epochs means with a pretrained start (the help, model.json's "pretrained" entry and the plan say it)
EPOCHS_RULE = ("--epochs N: N epochs of every layer, after the head's epochs on cached features (at least "
               f"{HEAD_MIN_STEPS} steps); with --freeze, N epochs of the head; extending a finished run "
               "(--resume RUN --epochs N): N of them in all")
# --pretrained RUN|FILE: the network is the run's; its recipe is for training from scratch, so these
# fine-tuning settings go over it (the same as EfficientNet-Lite0's registered recipe)
FINETUNE_RECIPE = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.01, "schedule": "onecycle", "epochs": 5}


# ----------------------------------------------------------------------------- which backbone

def _catalogue() -> Any:
    """``minivision.pretrained`` (imported on use: a test may stand a small catalogue in for it)."""
    return importlib.import_module("minivision.pretrained")


def _plain(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def same_data(backbone_dataset: str, dataset_name: str) -> bool:
    """True when a run's dataset is the one a backbone was pretrained on: the names compared without
    case and punctuation, the backbone's contained in the run's (``cifar10`` matches ``CIFAR-10``,
    ``cifar10-jpeg`` and ``cifar10_100pc``), so a folder made from that dataset is caught too."""
    b = _plain(backbone_dataset)
    return bool(b) and b in _plain(dataset_name)


def fits_input(backbone: Any, channels: int) -> bool:
    """A backbone takes pictures of its own channel count, and grey for colour or colour for grey (as
    ``pretrained.build_pretrained`` adapts them: repeated, or the first convolution summed)."""
    return channels == backbone.channels or {channels, backbone.channels} == {1, 3}


def choose_backbone(n_train: int, channels: int, dataset_name: str, *, model: str | None = None,
                    backbones: list[Any] | None = None) -> tuple[Any | None, str]:
    """The backbone a run with no ``--pretrained`` fine-tunes from, and why (a phrase for the plan line).

    ``n_train``: training pictures (after the validation split); ``channels``: 1 or 3; ``dataset_name``:
    the run's dataset (``Dataset.name``); ``model``: the network the user named (``--model``), which
    the backbone must be built on; ``backbones``: ``pretrained.list_backbones()`` by default.
    Returns ``(None, why)`` for from scratch: more than ``SMALL_DATA_MAX`` pictures, or no backbone
    that fits (channels, network, and never one pretrained on this dataset: ``same_data``). The order
    of preference is ``PREFERENCE`` (its evidence is beside it)."""
    if n_train > SMALL_DATA_MAX:
        return None, f"{n_train:,} training pictures is not a small dataset (over {SMALL_DATA_MAX:,})"
    if backbones is None:
        backbones = list(_catalogue().list_backbones())
    rank = {name: i for i, name in enumerate(PREFERENCE)}
    fitting = [b for b in backbones if fits_input(b, channels) and not same_data(b.dataset, dataset_name)
               and (model is None or b.model == model)]
    fitting.sort(key=lambda b: (rank.get(b.name, len(rank)), b.name))
    if not fitting:
        net = f" built on --model {model}" if model else ""
        return None, f"no pretrained backbone{net} fits {channels}-channel pictures of {dataset_name}"
    return fitting[0], (f"{n_train:,} training pictures is a small dataset (up to {SMALL_DATA_MAX:,}); "
                        f"--pretrained none trains from scratch")


def resizes_inside(network: str) -> bool:
    """True when the registered ``network`` resizes its input to a working size itself (its builder
    takes ``input_size``: EfficientNet-Lite0's input adapter), so any picture size fits it."""
    import inspect

    from .errors import MinivisionError
    from .models import model_info

    try:
        return "input_size" in inspect.signature(model_info(network).builder).parameters
    except (MinivisionError, TypeError, ValueError):
        return False


def working_size(backbone: Any, image_size: tuple[int, int], channels: int = 1,
                 imgsz: int | None = None) -> int | None:
    """The square input size (pixels) the network resizes ``channels`` x ``image_size`` (H, W) pictures
    to for ``backbone``: ``imgsz`` (``--imgsz``) when given and the network resizes (``resizes_inside``),
    else by the rule and figures beside ``SMALL_GREY_INPUT``; None keeps the card's (or, for a network
    that does not resize, the pictures' own size)."""
    if imgsz is not None and resizes_inside(backbone.model):
        return int(imgsz)
    if max(image_size) > 32:
        table = LARGE_INPUT
    else:
        table = SMALL_GREY_INPUT if channels == 1 else SMALL_COLOUR_INPUT
    return table.get(backbone.name)


def backbone_normalisation(pre: Preprocess, backbone: Any) -> Preprocess:
    """``pre`` with the mean/std the backbone was trained with (its card), for a network that does not
    normalise its input itself (our mvnet backbones): the features were learnt on inputs scaled so.
    A grey dataset on a colour backbone takes the channels' average (the first convolution is summed
    over them: ``pretrained.adapt_input_conv``); colour on grey repeats the grey figures."""
    import dataclasses

    mean, std = [float(v) for v in backbone.mean or []], [float(v) for v in backbone.std or []]
    if not mean or not std:
        return pre
    if len(mean) != pre.channels:
        mean, std = [sum(mean) / len(mean)] * pre.channels, [sum(std) / len(std)] * pre.channels
    return dataclasses.replace(pre, mean=mean, std=std)


def default_pretrained() -> str | None:
    """``--pretrained``'s value when it is not given: ``$MINIVISION_PRETRAINED`` (``none``: small datasets
    train from scratch too; a backbone name: that one), else None (the automatic choice)."""
    import os

    return os.environ.get("MINIVISION_PRETRAINED") or None


def resolve_backbone(value: str) -> Any:
    """``--pretrained NAME``: the catalogue's entry (did-you-mean on an unknown name, MinivisionError)."""
    return _catalogue().backbone_info(value)


def is_weights_path(value: str) -> bool:
    """``--pretrained`` names a run or a weights file (else a backbone name): an existing path, or one
    ending in .safetensors / .json (a missing file gets the init-from machinery's one-line error)."""
    return Path(value).exists() or value.endswith((".safetensors", ".json")) or "/" in value


@dataclass
class Start:
    """What a run starts from (model.json's ``pretrained`` entry is ``record()``)."""

    backbone: Any | None = None       # pretrained.Backbone
    source: Path | None = None        # --pretrained RUN|FILE
    why: str = ""
    freeze: bool = False
    input_size: int | None = None
    phases: list[Phase] = field(default_factory=list)
    backbone_name: str | None = None  # a resumed run's (its record holds the name only)

    def record(self) -> dict[str, Any]:
        return {"backbone": self.backbone.name if self.backbone is not None else self.backbone_name,
                "from": str(self.source) if self.source is not None else None, "why": self.why,
                "freeze": self.freeze, "input_size": self.input_size, "epochs_rule": EPOCHS_RULE,
                "phases": [p.record() for p in self.phases]}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Start:
        """Back from ``record()`` (a resumed run's checkpoint): the phases; the backbone by name only."""
        return cls(source=Path(record["from"]) if record.get("from") else None, why=str(record.get("why", "")),
                   backbone_name=record.get("backbone"),
                   freeze=bool(record.get("freeze")), input_size=record.get("input_size"),
                   phases=[Phase(p["name"], int(p["epochs"]), float(p["lr"]), str(p["schedule"]),
                                 p.get("lr_scales")) for p in record.get("phases", [])])

    def describe(self) -> str:
        """The plan line: ``fine-tuning efficientnet-lite0 (ImageNet-1k: ...) at 64 px: why``."""
        what = "frozen features of" if self.freeze else "fine-tuning"
        if self.backbone is not None:
            name = f"{self.backbone.name} ({self.backbone.pretrained_on})"
        else:
            name = str(self.source)
        size = f" at {self.input_size} px" if self.input_size else ""
        return f"{what} {name}{size}" + (f": {self.why}" if self.why else "")


# ----------------------------------------------------------------------------- phases

@dataclass(frozen=True)
class Phase:
    """One phase of a fine-tune: ``epochs`` epochs at peak rate ``lr`` under ``schedule`` (over the
    phase's own steps). ``name`` "head" (backbone frozen, trained on cached features) or "all" (every
    layer, rates scaled per layer group by ``lr_scales``: parameter-name prefix -> multiplier)."""

    name: str
    epochs: int
    lr: float
    schedule: str
    lr_scales: dict[str, float] | None = None

    @property
    def cached(self) -> bool:
        return self.name == "head"

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "trains": "the head, on cached features" if self.cached else "every layer",
                "epochs": self.epochs, "lr": self.lr, "schedule": self.schedule,
                **({"lr_scales": self.lr_scales} if self.lr_scales else {})}


def head_epochs(steps_per_epoch: int) -> int:
    """Epochs of the head phase: ``HEAD_EPOCHS``, or more to make ``HEAD_MIN_STEPS`` steps."""
    return max(HEAD_EPOCHS, math.ceil(HEAD_MIN_STEPS / max(1, steps_per_epoch)))


def phases(cfg: TrainConfig, model: nn.Module, *, freeze: bool, steps_per_epoch: int,
           head_only: bool = False) -> list[Phase]:
    """The phases of a run (``EPOCHS_RULE``): ``--freeze``: the head for ``cfg.epochs`` on cached features
    at ``cfg.lr``; else fastai's ``fine_tune``: ``head_epochs(steps_per_epoch)`` of the head at 2 x
    ``cfg.lr`` (fastai's base_lr; it halves it for the second phase), then ``cfg.epochs`` of everything at
    ``cfg.lr`` for the head and lower rates for earlier layers, both under ``cfg.schedule``. ``head_only``
    (a budget with no time for an epoch of every layer): the head phase alone, its usual epochs."""
    if freeze:
        return [Phase("head", int(cfg.epochs), cfg.lr, cfg.schedule)]
    head = Phase("head", head_epochs(steps_per_epoch), 2 * cfg.lr, cfg.schedule)
    if head_only:
        return [head]
    return [head, Phase("all", int(cfg.epochs), cfg.lr, cfg.schedule, discriminative_lr_scales(model))]


def epochs_counted(record: dict[str, Any]) -> tuple[int, str]:
    """What ``--epochs`` counts in a fine-tune's ``record`` (model.json's ``pretrained`` entry:
    ``EPOCHS_RULE``): its epochs of every layer (phase ``all``), or with ``--freeze`` of the head;
    returns ``(epochs, "epoch(s) of every layer" | "epoch(s) of the head")``."""
    name = "head" if record.get("freeze") else "all"
    done = sum(int(p["epochs"]) for p in record.get("phases", []) if p["name"] == name)
    return done, "epoch(s) of the head" if name == "head" else "epoch(s) of every layer"


def extend_phases(done: list[Phase], epochs: int, cfg: TrainConfig, model: nn.Module, *,
                  freeze: bool) -> list[Phase]:
    """The phases of a finished fine-tune extended (``train --resume RUN --epochs N``) so that ``epochs``
    is what ``--epochs`` means on a new one (``EPOCHS_RULE``): N epochs of every layer in all (phase
    ``all`` grows, or is added after a head-only plan at ``cfg.lr`` with ``discriminative_lr_scales``),
    with ``freeze`` N epochs of the head. Phases already at N or more are returned as they were."""
    name = "head" if freeze else "all"
    out = list(done)
    more = epochs - sum(p.epochs for p in out if p.name == name)
    if more <= 0:
        return out
    if out and out[-1].name == name:
        out[-1] = Phase(out[-1].name, out[-1].epochs + more, out[-1].lr, out[-1].schedule, out[-1].lr_scales)
    else:
        out.append(Phase("all", more, cfg.lr, cfg.schedule, discriminative_lr_scales(model)))
    return out


def layer_groups(model: nn.Module) -> list[str]:
    """The network's parameter-name prefixes in model order, one per layer group: a name's leading
    components up to and including the first number (``blocks.3`` of ``blocks.3.1.conv_dw.weight``:
    a stage), else its first component (``conv_stem``, ``bn1``); the head (``classifier_name``) last."""
    head = getattr(model, "classifier_name", None)
    out: list[str] = []
    for name, _ in model.named_parameters():
        parts = name.split(".")
        digits = [i for i, p in enumerate(parts[:-1]) if p.isdigit()]
        prefix = ".".join(parts[:digits[0] + 1]) if digits else parts[0]
        if prefix != head and prefix not in out:
            out.append(prefix)
    return out + ([head] if head else [])


def discriminative_lr_scales(model: nn.Module, lr_mult: float = LR_MULT) -> dict[str, float]:
    """Learning-rate multipliers per layer group (``layer_groups``): geometric from 1 / ``lr_mult``
    for the first group to 1 for the head, as fastai's ``even_mults(lr / lr_mult, lr, n)`` spreads
    ``slice(lr / lr_mult, lr)`` over a model's groups (fastai.torch_core; the idea: Howard & Ruder,
    "Universal Language Model Fine-tuning", ACL 2018, section 3.2: earlier layers hold more general
    features and need less change). Here every stage is a group (EfficientNet-Lite0: stem, its BN, 7
    stages, head conv, its BN, classifier: 12 groups, 0.01 to 1)."""
    groups = layer_groups(model)
    n = len(groups)
    if n < 2:
        return {g: 1.0 for g in groups}
    return {g: round(lr_mult ** -(1 - i / (n - 1)), 6) for i, g in enumerate(groups)}


def init_head(model: nn.Module, std: float = HEAD_INIT_STD) -> None:
    """A new head for fine-tuning: weights ~ N(0, ``std``^2), bias 0, so the first logits are near 0
    and the first gradients do not shake the pretrained layers (the linear-probing head of MAE, He et
    al. 2022, ``main_linprobe.py``: std 0.01). A network's own initialiser is for training from
    scratch (EfficientNet's uniform(+-1/sqrt(K)) gives logits of std ~6 on its 1,280 features: a
    first loss of 13 measured on Fashion-MNIST)."""
    head = model.get_classifier()
    with torch.no_grad():
        nn.init.normal_(head.weight, 0.0, std)
        if head.bias is not None:
            nn.init.zeros_(head.bias)


def set_frozen(model: nn.Module, frozen: bool, *, keep_bn_stats: bool = True) -> None:
    """Freeze (``requires_grad`` False) or unfreeze every parameter but the head's (``classifier_name``).
    ``keep_bn_stats`` (always when frozen): the backbone's batch-norm layers stay in eval mode, their
    running statistics as pretrained; their scale and shift still train when unfrozen."""
    head = model.classifier_name + "."
    for name, p in model.named_parameters():
        p.requires_grad_(not frozen or name.startswith(head))
    model._minivision_bn_eval = frozen or keep_bn_stats  # read by train_mode
    train_mode(model, model.training)


def train_mode(model: nn.Module, training: bool = True) -> None:
    """``model.train(training)``, with the backbone's batch-norm layers kept in eval mode after
    ``set_frozen`` (running statistics as pretrained, normalising with them rather than the batch's).

    Why also when every layer trains (phase "all"): Keras' transfer-learning guide (F. Chollet,
    keras.io/guides/transfer_learning) keeps batch norm in inference mode when unfreezing, "otherwise
    the updates applied to the non-trainable weights will suddenly destroy what the model has learned".
    Measured here with fastai's way (batch norm training in phase "all"): Fashion-MNIST, 900 pictures,
    EfficientNet-Lite0 at 64 px: validation accuracy 83% after the head phase fell to 67% after the first
    epoch of phase "all" (training accuracy 96% -> 37%)."""
    model.train(training)
    if training and getattr(model, "_minivision_bn_eval", False):
        head = model.get_submodule(model.classifier_name)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m is not head:
                m.eval()


@torch.no_grad()  # not inference_mode: the features are the head's training input, indexed into batches
def compute_features(model: nn.Module, pre: Preprocess, x: torch.Tensor, *, device: torch.device,
                     precision: str = "fp32", batch_size: int = 256) -> torch.Tensor:
    """Penultimate features float32 (N, D) on ``device`` of uint8 pictures ``x`` (N, C, H, W): the
    network's ``forward_features`` in eval mode (dropout off, batch-norm running statistics), in
    batches; the model's mode is restored after."""
    was = model.training
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        xb = pre(x[i:i + batch_size].to(device))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out.append(model.forward_features(xb).float())
    train_mode(model, was)
    d = model.num_features
    return torch.cat(out) if out else torch.empty(0, d, device=device)


# ----------------------------------------------------------------------------- planning a budget

@dataclass
class FineTunePlan:
    """A fine-tune's budget plan: phase epochs and the measured costs it came from (model.json)."""

    budget_s: float
    head_epochs: int
    epochs: int
    seconds_per_step: float     # a training step of phase "all"
    seconds_per_picture: float  # a forward pass (features, validation, test)
    fixed_s: float              # features, test pass, end-of-training pictures, files
    end_s: float                # of which after training: the test pass, end-of-training pictures, files


SCORE_BATCH = 256  # pictures a forward batch at scoring: inference.predict_logits' default, and compute_features'


@dataclass(frozen=True)
class Speeds:
    """Measured costs a fine-tune's budget is planned from (seconds)."""

    picture_s: float  # a forward pass, per picture, in batches of SCORE_BATCH (features, validation, test, calibration)
    step_s: float     # a training step of every layer at the run's batch size (0 with --freeze)


def measure_speeds(cfg: TrainConfig, model: nn.Module, pre: Preprocess, x: torch.Tensor, y: torch.Tensor,
                   device: torch.device, precision: str, *, freeze: bool,
                   clock: Callable[[], float] | None = None) -> Speeds:
    """Time the run's network on its own pictures ``x`` (uint8 N x C x H x W, labels ``y``): one forward
    batch of ``SCORE_BATCH`` pictures (``x`` repeated when it has fewer), after an untimed warm-up of 8,
    the way features and scores are computed (``inference.predict_logits``: eval mode, no autograd,
    batches of 256); and unless ``freeze`` two training steps of every layer at ``cfg.batch_size`` after
    an untimed one. Why the batch matters: timing the forward pass at the training batch (32-64) made
    the per-picture cost ~1.5-2x that of scoring's batches of 256 (EfficientNet-Lite0 at 64 px, 2 cores),
    and the test pass is most of a small run's fixed cost. The model's weights and the global random
    state are put back. ``clock``: seconds (default: a monotonic clock, CUDA synchronised)."""
    from .inference import predict_logits

    clock = clock or (lambda: _now(device))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    reps = -(-SCORE_BATCH // max(1, len(x)))
    xs = x[:SCORE_BATCH].repeat(reps, 1, 1, 1)[:SCORE_BATCH].to(device)
    predict_logits(model, pre, xs[:8], device=device, precision=precision)  # warm-up: first-call costs
    t0 = clock()
    predict_logits(model, pre, xs, device=device, precision=precision, batch_size=SCORE_BATCH)
    picture_s = (clock() - t0) / len(xs)
    step_s = 0.0
    if not freeze:
        from .optim import make_optimizer

        bs = min(int(cfg.batch_size), len(x))
        xb, yb = x[:bs].to(device), y[:bs].to(device)
        opt = make_optimizer(cfg, model)
        model.train()
        for i in range(3):
            if i == 1:
                t0 = clock()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = torch.nn.functional.cross_entropy(model(pre(xb)).float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        step_s = (clock() - t0) / 2
        model.load_state_dict(state)
    torch.set_rng_state(rng)
    return Speeds(picture_s, step_s)


def budget_costs(speeds: Speeds, *, n_train: int, n_val: int, n_test: int, end_pictures: int,
                 steps_per_epoch: int, files_s: float = 5.0) -> tuple[float, float, float]:
    """A fine-tune's costs in seconds, ``(fixed, end, epoch)``: ``end`` = the test pass and the
    ``end_pictures`` of calibration (``train.trust_pictures``) + ``files_s`` of files and report;
    ``fixed`` = ``end`` + caching the features of the training and validation pictures once;
    ``epoch`` = an epoch of every layer (``steps_per_epoch`` steps) and its validation pass."""
    end = speeds.picture_s * (n_test + end_pictures) + files_s
    fixed = speeds.picture_s * (n_train + n_val) + end
    epoch = speeds.step_s * steps_per_epoch + speeds.picture_s * n_val
    return fixed, end, epoch


def plan_budget(cfg: TrainConfig, model: nn.Module, pre: Preprocess, ds: Dataset, device: torch.device,
                precision: str, *, budget_s: float, left_s: float, freeze: bool, end_pictures: int,
                steps_per_epoch: int, log: Callable[[str], None], input_size: int | None = None) -> FineTunePlan:
    """Epochs of each phase that fit ``left_s`` seconds of a ``budget_s`` budget, from timed passes.

    The speeds are timed on the run's own pictures (``measure_speeds``), the costs are ``budget_costs``:
    caching train + validation features once, per epoch of phase "all" its steps and a validation pass,
    the test pass and ``end_pictures`` (calibration) at the end, and 5 s of files and report. A budget too
    small for one epoch of phase "all" gets the head phase only, its usual ``head_epochs`` (noted); when
    the fixed costs alone pass the budget, a note says so up front with the whole command's expected
    time (``input_size``: the working size in pixels, for that note)."""
    from .budget import format_duration

    n, bs = len(ds.train.y), min(cfg.batch_size, len(ds.train.y))
    n_val = len(ds.val) if ds.val is not None else 0
    n_test = len(ds.test) if ds.test is not None else 0
    speeds = measure_speeds(cfg, model, pre, ds.train.x, ds.train.y, device, precision, freeze=freeze)
    per_picture, per_step = speeds.picture_s, speeds.step_s
    fixed, end, epoch_s = budget_costs(speeds, n_train=n, n_val=n_val, n_test=n_test, end_pictures=end_pictures,
                                       steps_per_epoch=steps_per_epoch)
    head = head_epochs(steps_per_epoch) if not freeze else max(1, int(cfg.epochs or FREEZE_EPOCHS))
    epochs = 0 if freeze else int(max(0.0, left_s - fixed) // max(epoch_s, 1e-9))
    plan = FineTunePlan(budget_s, head, epochs, round(per_step, 4), round(per_picture, 5), round(fixed, 1),
                        round(end, 1))
    if fixed > left_s:
        total = (budget_s - left_s) + fixed
        size = f" at {input_size} px" if input_size else ""
        log(f"note: computing the features of {n + n_val:,} pictures and scoring the {n_test:,} test pictures"
            f"{size} takes about {fixed:.0f} s, so this run will take about {format_duration(math.ceil(total))}, "
            f"over its {format_duration(budget_s)} budget; --budget sets more, --pretrained none trains from scratch")
    elif freeze:
        log(f"budget {format_duration(budget_s)}: features once ({per_picture * 1000:.1f} ms a picture), "
            f"{head} epochs of the head on them")
    elif epochs == 0:
        log(f"note: budget {format_duration(budget_s)} leaves no time for an epoch of every layer "
            f"({epoch_s:.0f} s each after {fixed:.0f} s of features and scoring): the head only")
    else:
        log(f"budget {format_duration(budget_s)}: {head} epoch(s) of the head on cached features, then "
            f"{epochs} of every layer ({epoch_s:.1f} s each: {per_step:.2f} s a step of {bs}); "
            f"{fixed:.0f} s for features, the test pass and files")
    return plan


class Deadline(Listener):
    """A fine-tune's ``--budget``: stop at the end of an epoch when the next one (as long as the last
    one took) and ``end_s`` (the test pass, calibration, files: ``FineTunePlan.end_s``) would pass
    ``deadline`` (``clock()`` time). The plan's epochs come from a few timed steps; this keeps a run
    on a machine slower than when it was timed on time. Draws no random numbers."""

    def __init__(self, deadline: float, end_s: float, clock: Callable[[], float]) -> None:
        self.deadline, self.end_s, self.clock = deadline, end_s, clock

    def on_epoch_end(self, trainer: Any, row: dict[str, Any]) -> None:
        if row.get("phase") == "head":  # epochs on cached features cost milliseconds: stopping saves nothing
            return
        left = self.deadline - self.clock()
        if trainer.epoch < trainer.epochs and left < row["seconds"] + self.end_s:
            trainer.log(f"budget: {left:.0f} s left, an epoch takes {row['seconds']:.0f} s: stopping here")
            trainer.stop("epoch")


def _now(device: torch.device) -> float:
    import time

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.monotonic()
