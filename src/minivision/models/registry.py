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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from torch import nn

from minivision.config import SETTINGS, check_recipe
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

#: The training settings a model may set as its defaults, with what each means (from config.SETTINGS).
TRAINING_KEYS: Mapping[str, str] = MappingProxyType({n: s.help for n, s in SETTINGS.items() if s.recipe})


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


def validate_defaults(defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Check a model's training defaults with the settings schema (``config.check_recipe``): known keys,
    valid values, no contradictions. Raises MinivisionError (one line) naming the first problem;
    returns a plain copy."""
    return check_recipe(defaults)


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
