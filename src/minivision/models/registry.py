"""Model registry: every network is a named builder plus the training settings it was designed for.

Why a registry (timm style) instead of an ``if name == ...`` chain: the CLI, the run directory's
JSON sidecar and the tests all refer to models by name, and a test parametrised over
``list_models()`` checks each new model the day it is added.

Why each model carries training ``defaults``: a tutorial model is only "the tutorial" when it is
trained the way the tutorial trains it (optimizer, batch size, epochs, validation split, input
scaling). The registry stores only the settings that differ from the global defaults; the
training configuration merges them (global < model defaults < user flags). Defaults are checked
when the model is registered, so a typo fails at import time, not after an hour of training.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from torch import nn

from minivision.config import NORMALIZE, OPTIMIZERS, SCHEDULES
from minivision.errors import MinivisionError
from minivision.models.base import ClassifierNet, check_num_classes

__all__ = [
    "TRAINING_KEYS",
    "ModelInfo",
    "count_parameters",
    "create_model",
    "list_models",
    "model_info",
    "register_model",
    "validate_defaults",
]

Builder = Callable[..., ClassifierNet]

#: The training settings a model may set as its defaults, with what each means.
TRAINING_KEYS: Mapping[str, str] = MappingProxyType({
    "optimizer": '"adam" | "sgd" | "adamw" | "gd" (plain gradient descent: SGD without momentum)',
    "lr": "learning rate (peak learning rate for the onecycle and cosine schedules)",
    "momentum": "SGD momentum in [0, 1)",
    "nesterov": "use Nesterov momentum (SGD only)",
    "weight_decay": "L2 / decoupled weight decay, >= 0",
    "batch_size": "images per step",
    "epochs": "passes over the training split",
    "steps": "train for this many steps instead of epochs (takes precedence over epochs)",
    "val_split": "fraction of the training images held out for validation, in [0, 1)",
    "val_first": "hold out the first N training images for validation (as the MLP tutorial does)",
    "schedule": '"constant" | "onecycle" | "cosine"',
    "label_smoothing": "label smoothing of the cross-entropy loss, in [0, 1)",
    "augment": 'comma-separated augmentations, e.g. "flip,shift=2"; "" for none',
    "normalize": '"unit" (x/255, as Keras Rescaling) | "standard" (per-channel mean/std of the training set)',
})

_CHOICES = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "normalize": NORMALIZE}  # the same lists config checks
_AUGMENT_TOKEN = re.compile(r"^[a-z][a-z0-9_]*(=[0-9]+(\.[0-9]+)?)?$")


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about one model."""

    name: str
    description: str
    defaults: Mapping[str, Any]  # read-only; only the settings that differ from the global defaults
    builder: Builder


_REGISTRY: dict[str, ModelInfo] = {}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_value(key: str, value: Any) -> str | None:
    """Return why ``value`` is invalid for ``key``, or None when it is fine."""
    if key in _CHOICES:
        return None if value in _CHOICES[key] else f"must be one of {', '.join(_CHOICES[key])}"
    if key == "nesterov":
        return None if isinstance(value, bool) else "must be true or false"
    if key in ("batch_size", "epochs", "steps"):
        return None if _is_int(value) and value >= 1 else "must be an integer >= 1"
    if key == "val_first":
        return None if _is_int(value) and value >= 0 else "must be an integer >= 0"
    if key == "lr":
        return None if _is_number(value) and value > 0 else "must be a number > 0"
    if key == "weight_decay":
        return None if _is_number(value) and value >= 0 else "must be a number >= 0"
    if key in ("momentum", "val_split", "label_smoothing"):
        return None if _is_number(value) and 0 <= value < 1 else "must be a number in [0, 1)"
    if key == "augment":
        if not isinstance(value, str):
            return "must be a string such as 'flip,shift=2' or ''"
        bad = [t for t in value.split(",") if value and not _AUGMENT_TOKEN.match(t.strip())]
        return f"has malformed item(s) {bad}" if bad else None
    return None


def validate_defaults(defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Check a model's training defaults: known keys, valid values, no contradictions.

    Raises MinivisionError (one line) naming the first problem; returns a plain copy.
    """
    for key, value in defaults.items():
        if key not in TRAINING_KEYS:
            hint = difflib.get_close_matches(key, list(TRAINING_KEYS), n=1)
            extra = f"; did you mean '{hint[0]}'?" if hint else f"; known: {', '.join(TRAINING_KEYS)}"
            raise MinivisionError(f"unknown training setting '{key}'{extra}")
        problem = _check_value(key, value)
        if problem:
            raise MinivisionError(f"training setting {key}={value!r} {problem}")
    if "val_split" in defaults and "val_first" in defaults:
        raise MinivisionError("give either val_split or val_first, not both")
    if defaults.get("nesterov") and defaults.get("optimizer", "sgd") != "sgd":
        raise MinivisionError("nesterov=True needs optimizer 'sgd'")
    if defaults.get("nesterov") and not defaults.get("momentum"):
        raise MinivisionError("nesterov=True needs momentum > 0")
    return dict(defaults)


def register_model(
    name: str, *, description: str, defaults: Mapping[str, Any] | None = None
) -> Callable[[Builder], Builder]:
    """Decorator: register ``fn(in_channels, image_size, num_classes, **kwargs) -> ClassifierNet`` as ``name``.

    Registering a name twice is a programming error (two models would silently shadow each other),
    so it raises ValueError rather than MinivisionError.
    """
    checked = validate_defaults(defaults or {})

    def decorator(fn: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is already registered")
        _REGISTRY[name] = ModelInfo(name, description, MappingProxyType(checked), fn)
        return fn

    return decorator


def _unknown(name: str) -> MinivisionError:
    names = sorted(_REGISTRY)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    if close:
        return MinivisionError(f"unknown model '{name}'; did you mean {' or '.join(repr(c) for c in close)}?")
    return MinivisionError(f"unknown model '{name}'; available: {', '.join(names)}")


def model_info(name: str) -> ModelInfo:
    """Look up a registered model; unknown names raise MinivisionError with a suggestion."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise _unknown(name) from None


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern`` (e.g. ``"cnn*"``), sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def _check_kwargs(info: ModelInfo, kwargs: Mapping[str, Any]) -> None:
    """Turn a misspelt model option into a one-line error instead of a TypeError traceback."""
    params = inspect.signature(info.builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = [n for n in params if n not in ("in_channels", "image_size", "num_classes")]
    for key in kwargs:
        if key not in allowed:
            hint = difflib.get_close_matches(key, allowed, n=1)
            extra = f"; did you mean '{hint[0]}'?" if hint else f"; it takes {', '.join(allowed) or 'none'}"
            raise MinivisionError(f"model '{info.name}' has no option '{key}'{extra}")


def create_model(
    name: str,
    *,
    in_channels: int,
    image_size: int | tuple[int, int],
    num_classes: int,
    **kwargs: Any,
) -> ClassifierNet:
    """Build model ``name`` for images of ``in_channels`` x ``image_size`` and ``num_classes`` classes.

    The model returns logits (no softmax): the loss applies log-softmax itself, which is both
    faster and numerically safer. It keeps the ``ClassifierNet`` contract (``forward_features``,
    ``forward_head``, ``reset_head``, ``num_features``; see the package docstring): a builder that
    returns anything else is a programming error and raises TypeError.
    """
    info = model_info(name)
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or not all(_is_int(s) and s >= 1 for s in size):
        raise MinivisionError(f"image_size must be (height, width) of positive integers, got {image_size!r}")
    if not (_is_int(in_channels) and in_channels >= 1):
        raise MinivisionError(f"in_channels must be an integer >= 1, got {in_channels!r}")
    check_num_classes(num_classes)
    _check_kwargs(info, kwargs)
    model = info.builder(in_channels=in_channels, image_size=size, num_classes=num_classes, **kwargs)
    if not isinstance(model, ClassifierNet):
        raise TypeError(f"model '{name}' built a {type(model).__name__}, not a ClassifierNet")
    return model


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of learnable values (PyTorch convention: BatchNorm running statistics are buffers, not
    parameters; Keras counts them as non-trainable params, see ``summary``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
