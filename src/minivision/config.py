"""Training settings, each declared once: type, default, bounds or choices, help, and whether
``--resume`` may change it.

A ``TrainConfig`` field's metadata (``_setting``) is the only place a setting's rules are written.
From it come: the ``train`` command's flags (``add_train_arguments``), ``validate`` (every caller:
the CLI, the Python API, ``compare``, a resumed run's args.yaml), the registry's check of a model's
recipe (``check_recipe``), ``compare``'s per-model settings (``check_settings``) and the resume
rule (``resume_changes``). Written by hand, not with a schema library: the rules are few, and the
CLI flags, the messages and the recipe check all come from the same lines (in the manner of
nanoGPT's commented dataclass and Ultralytics' typed keys).

A recipe field left as ``None`` takes the model's registered default (see ``models.registry``),
then its ``fallback`` below; the resolved config is what ``args.yaml`` records, so a run says
exactly how it was trained.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import difflib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import MinivisionError
from .scores import TTA_MODES

OPTIMIZERS = ("adam", "sgd", "adamw", "gd", "muon")
SCHEDULES = ("constant", "onecycle", "cosine")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
NORMALIZE = ("unit", "standard")

_AUGMENT_ITEM = re.compile(r"^[a-z][a-z0-9_]*(=[0-9]+(\.[0-9]+)?)?$")


@dataclass(frozen=True)
class Setting:
    """The rules of one training setting (built from a ``TrainConfig`` field's metadata)."""

    name: str
    kind: type                     # int, float, str, bool or dict
    help: str
    choices: tuple[str, ...] | None = None
    lo: float | None = None        # bounds; lo_open / hi_open make them strict
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    recipe: bool = False           # a model may set it as a default; None means "the model's, then fallback"
    fallback: Any = None           # the global default of a recipe setting
    resume: bool = False           # `--resume` may change it
    group: str | None = None       # settings of one group are alternatives (one flag at a time)
    flag: bool = True              # a flag of `minivision train`
    metavar: str | None = None
    words: tuple[str, ...] = ()    # words a number setting also takes (--lr auto)

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    def bounds_text(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {_num(self.lo)}"
        return f"{'<' if self.hi_open else '<='} {_num(self.hi)}"

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not valid for this setting (a phrase), or None. ``None`` values are fine."""
        if value is None or (isinstance(value, str) and value in self.words):
            return None
        if self.kind is bool:
            return None if isinstance(value, bool) else "must be true or false"
        if self.name == "budget" and isinstance(value, str):  # "3m", "1h30m": what --budget takes
            from .budget import parse_duration

            try:
                parse_duration(value)
            except MinivisionError:
                return "must be a duration like 30s, 3m or 1h30m, or a number of seconds"
            return None
        if self.kind in (int, float):
            ok = (isinstance(value, int) if self.kind is int else isinstance(value, int | float))
            if not ok or isinstance(value, bool) or (isinstance(value, float) and not math.isfinite(value)):
                return "must be an integer" if self.kind is int else "must be a number"
            lo_bad = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
            hi_bad = self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)
            return f"must be {self.bounds_text()}" if lo_bad or hi_bad else None
        if self.kind is str and not isinstance(value, str):
            return "must be a string"
        if self.choices is not None and value not in self.choices:
            close = difflib.get_close_matches(str(value), self.choices, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            return f"must be one of {', '.join(self.choices)}{hint}"
        if self.name == "augment":
            bad = [t for t in value.split(",") if value and t.strip() != "none" and not _AUGMENT_ITEM.match(t.strip())]
            return f"has malformed item(s) {', '.join(repr(b) for b in bad)} (e.g. 'flip,shift=2')" if bad else None
        if self.name == "name" and (not value or "/" in value or value in (".", "..")):
            return "must be a plain folder name"
        return None


def _num(v: float) -> str:
    return f"{v:g}"


def _setting(default: Any = None, help: str = "", **rules: Any) -> Any:
    return field(default=default, metadata={"setting": rules | {"help": help}})


@dataclass
class TrainConfig:
    """How to train: every field's rules are in its metadata (see ``SETTINGS``)."""

    data: str = _setting("fashion-mnist", "fashion-mnist (default), mnist, cifar10, a CSV file or an image folder")
    data_dir: str | None = _setting(None, "folder with the dataset files (else $MINIVISION_DATA, cache, ...)")
    test_data: str | None = _setting(None, "a second CSV file used as the test split")
    imgsz: int | None = _setting(None, "image folders: the working size's longer side in pixels (default: the "
                                       "pictures' median longer side, at most 64; with --pretrained, up to the "
                                       "network's working size); with --pretrained efficientnet-lite0, any data: "
                                       "the square size the network resizes the pictures to (default: 64 for "
                                       "small grey pictures, else 96)", kind=int, lo=1, hi=1024)
    resize_mode: str = _setting("letterbox", "image folders: how pictures of another shape meet the working "
                                             "size: letterbox (scaled whole, padded grey), crop (the centre) or "
                                             "squash (stretched)", choices=("letterbox", "crop", "squash"))
    model: str | None = _setting(None, "model name (see `minivision models`); default: the largest that fits "
                                       "the budget")
    init_from: str | None = _setting(
        None, "continue from the weights of a run (its folder, model.json or model.safetensors) or of a "
              ".safetensors weights file with the usual recipe; a run's network and preprocessing are kept, "
              "and its head is kept when the classes are the same (else replaced)", metavar="RUN_OR_WEIGHTS",
        group="start")
    pretrained: str | None = _setting(
        None, "fine-tune from a pretrained backbone (a name from `minivision models --pretrained`, e.g. "
              "efficientnet-lite0), a run folder or a .safetensors file: always a new head for these classes "
              "and the fine-tuning recipe (head first, then everything at lower rates for earlier layers); "
              "none: train from scratch. Default: small datasets (up to 5,000 training pictures) are "
              "fine-tuned from the best backbone for them ($MINIVISION_PRETRAINED sets another default). "
              "--epochs N then means N epochs of every layer, after the head's own epochs on cached features "
              "(at least 100 steps, milliseconds each)",
        metavar="NAME|RUN|FILE|none", group="start")
    freeze: bool = _setting(False, "with a pretrained backbone: keep it frozen, compute its features once and "
                                   "train only the head on them (feature extraction); --epochs N: N epochs of the "
                                   "head; --augment cannot apply to cached features", kind=bool)
    budget: float | str | None = _setting(
        None, "wall-clock time for the whole run, e.g. 30s, 3m, 1h30m: picks the network and the number of "
              "steps (default 30s when no --model/--epochs/--steps is given)", kind=float, lo=0, lo_open=True,
        metavar="DURATION")
    epochs: int | None = _setting(None, "passes over the training split (with --pretrained: epochs of every layer, "
                                        "after the head's epochs on cached features; with --freeze: of the head; "
                                        "--resume RUN --epochs N extends a finished run to N such epochs in all)",
                                  kind=int, lo=1, recipe=True,
                                  fallback=10, resume=True, group="length")
    steps: int | None = _setting(None, "or a number of optimizer steps", kind=int, lo=1, recipe=True,
                                 group="length")
    batch_size: int | None = _setting(None, "images per step (with --nproc: in all processes together)", kind=int,
                                      lo=1, recipe=True, fallback=128)
    optimizer: str | None = _setting(None, "adam | sgd | adamw | gd (plain gradient descent: SGD without "
                                           "momentum) | muon (Muon, momentum 0.95, for the hidden convolution "
                                           "and dense weights at half --lr; SGD with --momentum for the first "
                                           "layer, the head, norms and biases; --nesterov applies to both)",
                                     choices=OPTIMIZERS, recipe=True, fallback="adam")
    lr: float | str | None = _setting(None, "(peak) learning rate; Keras' Adam default 0.001; auto: found first by "
                                            "the learning-rate range test (minivision lr-find), then the run trains "
                                            "a fresh model with it", kind=float, lo=0, lo_open=True, recipe=True,
                                      fallback=1e-3, words=("auto",), metavar="LR|auto")
    momentum: float | None = _setting(None, "SGD momentum", kind=float, lo=0, hi=1, hi_open=True, recipe=True,
                                      fallback=0.9)
    nesterov: bool | None = _setting(None, "Nesterov momentum (sgd and muon)", kind=bool, recipe=True, fallback=False)
    weight_decay: float | None = _setting(None, "L2 weight decay for sgd/adam; decoupled (multiplied by the rate, "
                                                "so weaker at the same value) for adamw and muon's hidden "
                                                "weights; never on biases and norm layers", kind=float, lo=0,
                                          recipe=True, fallback=0.0)
    schedule: str | None = _setting(None, "learning-rate schedule", choices=SCHEDULES, recipe=True,
                                    fallback="constant")
    label_smoothing: float | None = _setting(None, "label smoothing of the cross-entropy loss", kind=float, lo=0,
                                             hi=1, hi_open=True, recipe=True, fallback=0.0)
    class_weight: str = _setting("none", "imbalanced classes: balanced weights each class's loss term by "
                                         "n_samples / (n_classes x its training count) (scikit-learn's rule); "
                                         "none: every picture counts the same", choices=("none", "balanced"))
    sampler: str = _setting("shuffle", "the order of an epoch: shuffle (every training picture once) or balanced "
                                       "(pictures drawn with replacement so every class is equally likely in each "
                                       "batch; for imbalanced classes)", choices=("shuffle", "balanced"))
    patience: int | None = _setting(None, "early stopping: end training when the validation loss has not improved "
                                          "for N epochs, and keep the weights of the epoch with the lowest "
                                          "validation loss (as Keras' EarlyStopping(restore_best_weights=True)); "
                                          "with --budget, whichever comes first", kind=int, lo=1, resume=True)
    augment: str | None = _setting(None, 'e.g. "flip,shift=2,rotate=10,zoom=0.1,erase=0.5", '
                                         '"crop=0.35,flip,jitter=0.4,trivial,mixup=0.2,cutmix=1", or "none"; '
                                         "shift: whole pixels from 1, or below 1 a fraction of the picture's side "
                                         "(shift=0.1: a tenth of it, as Keras' width_shift_range)",
                                   recipe=True, fallback="")
    tta: str = _setting("auto", "test-time augmentation the model answers with (predict, evaluate, the HTTP "
                                "service, its exports): none; flip (the picture and its mirror: twice the time per "
                                "answer); flip+shift (those and their one-pixel moves: 10 views); auto: flip for a "
                                "model trained with horizontal flips on colour pictures, else none. "
                                "predict/evaluate --tta MODE overrides it per call",
                        choices=("auto", *TTA_MODES), resume=True)
    normalize: str | None = _setting(None, "unit: x/255 (Keras Rescaling); standard: per-channel mean/std of the "
                                           "training set", choices=NORMALIZE, recipe=True, fallback="unit")
    val_split: float | None = _setting(None, "stratified, seeded random fraction of train for validation "
                                             "(default 0.2)", kind=float, lo=0, hi=1, lo_open=True, hi_open=True,
                                       recipe=True, fallback=0.2, group="validation")
    val_first: int | None = _setting(None, "the first N training images as validation (as the MLP tutorial)",
                                     kind=int, lo=1, recipe=True, group="validation")
    seed: int = _setting(0, "same seed, same machine: same history", kind=int, lo=0)
    device: str = _setting("auto", "where to train", choices=DEVICES, resume=True)
    precision: str = _setting("auto", "training steps: auto is bf16 autocast on a GPU that has it and on a CPU "
                              "with AVX-512 BF16 or AMX where bf16 measured faster than fp32 (once per machine), "
                              "else fp32; the run's validation and test passes are fp32, as "
                              "evaluate and predict",
                              choices=PRECISIONS, resume=True)
    out: str = _setting("runs", "parent folder of run folders (default runs)")
    name: str = _setting("train", "run folder name (default train; never overwritten: train2, train3, ...)")
    tensorboard: bool = _setting(False, "also write TensorBoard events (scalars per epoch, the report's pictures) "
                                        "to RUN/tensorboard", kind=bool, resume=True)
    nproc: int = _setting(1, "train in N processes on this machine (data-parallel, PyTorch's elastic launcher; "
                             "across machines: torchrun ... -m minivision train). --batch-size stays the GLOBAL "
                             "batch (each process takes its share), so the steps and the learning rate stay those "
                             "of one process: the rate is not rescaled (for a k times larger batch, the linear "
                             "rule of Goyal et al. 2017 suggests k x --lr; set it yourself); threads per process: "
                             "the cores / N unless OMP_NUM_THREADS is set",
                          kind=int, lo=1, hi=256, resume=True, metavar="N")
    extra: dict[str, Any] = field(default_factory=dict, metadata={"setting": {
        "help": "model builder keyword arguments", "kind": dict, "flag": False}})
    lr_found: dict[str, Any] | None = field(default=None, metadata={"setting": {
        "help": "how --lr auto found the learning rate (the range test's sweep and suggestion; written by "
                "training)", "kind": dict, "flag": False}})
    distributed: dict[str, Any] | None = field(default=None, metadata={"setting": {
        "help": "a data-parallel run as it trained: world size, global and per-process batch, learning rate "
                "(written by training)", "kind": dict, "flag": False}})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        unknown = sorted(set(d) - set(SETTINGS))
        if unknown:
            raise MinivisionError(f"unknown setting(s) {', '.join(unknown)}")
        return cls(**d)


def _build_settings() -> dict[str, Setting]:
    out = {}
    for f in dataclasses.fields(TrainConfig):
        rules = dict(f.metadata["setting"])
        rules.setdefault("kind", str)
        out[f.name] = Setting(name=f.name, **rules)
    return out


#: Every training setting by name, in declaration order.
SETTINGS: dict[str, Setting] = _build_settings()
#: The settings a model may set as its recipe, with the global default each falls back to.
GLOBAL_DEFAULTS: dict[str, Any] = {n: s.fallback for n, s in SETTINGS.items() if s.recipe}


# ----------------------------------------------------------------------------- naming a setting in a message

# True while the Python API trains (``Classifier.fit``): messages name settings as parameters, not flags
_AS_PARAMETERS: contextvars.ContextVar[bool] = contextvars.ContextVar("minivision_as_parameters", default=False)
_NO_VALUE = object()


@contextlib.contextmanager
def as_parameters():
    """Within this block ``named`` writes settings as the API's parameters (``pretrained='x'``), as
    ``check_settings(as_flags=False)`` does, instead of the command line's flags (``--pretrained x``)."""
    token = _AS_PARAMETERS.set(True)
    try:
        yield
    finally:
        _AS_PARAMETERS.reset(token)


def named(key: str, value: Any = _NO_VALUE) -> str:
    """Setting ``key`` (a ``SETTINGS`` name) as a message names it, with ``value`` if given: the flag
    (``--pretrained none``, ``--freeze``) on the command line, the parameter (``pretrained='none'``,
    ``freeze=True``, ``pretrained=`` without a value) inside ``as_parameters()``: one source for both."""
    s = SETTINGS[key]
    if _AS_PARAMETERS.get():
        if value is _NO_VALUE:
            return f"{key}=True" if s.kind is bool else f"{key}="
        return f"{key}={value!r}"
    if value is _NO_VALUE or s.kind is bool:
        return s.option
    return f"{s.option} {value}"


# ----------------------------------------------------------------------------- checks

def check_settings(values: Mapping[str, Any], *, allowed: Mapping[str, Setting] | None = None,
                   what: str = "setting", as_flags: bool = True) -> None:
    """Known names (with a "did you mean") and valid values; raises MinivisionError naming the first problem
    (as its flag, ``--lr``, or with ``as_flags=False`` as ``WHAT lr``)."""
    allowed = SETTINGS if allowed is None else allowed
    for key, value in values.items():
        if key not in allowed:
            hint = difflib.get_close_matches(key, list(allowed), n=1)
            extra = f"; did you mean '{hint[0]}'?" if hint else f"; known: {', '.join(allowed)}"
            raise MinivisionError(f"unknown {what} '{key}'{extra}")
        problem = allowed[key].problem(value)
        if problem:
            named = allowed[key].option if as_flags else f"{what} {key}"
            got = "" if repr(value) in problem else f", got {value!r}"
            raise MinivisionError(f"{named} {problem}{got}")


def check_recipe(defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Check a model's registered training defaults: recipe settings only, valid values, no contradictions.

    Raises MinivisionError (one line) naming the first problem; returns a plain copy."""
    recipe = {n: s for n, s in SETTINGS.items() if s.recipe}
    check_settings(defaults, allowed=recipe, what="training setting", as_flags=False)
    _check_together(defaults)
    if defaults.get("nesterov") and defaults.get("optimizer", "sgd") not in ("sgd", "muon"):
        raise MinivisionError("nesterov=True needs optimizer 'sgd' or 'muon'")
    if defaults.get("nesterov") and not defaults.get("momentum"):
        raise MinivisionError("nesterov=True needs momentum > 0")
    return dict(defaults)


def _check_together(values: Mapping[str, Any]) -> None:
    """At most one setting of each group (``--epochs``/``--steps``, ``--val-split``/``--val-first``)."""
    groups: dict[str, list[Setting]] = {}
    for s in SETTINGS.values():
        if s.group and values.get(s.name) is not None:
            groups.setdefault(s.group, []).append(s)
    for members in groups.values():
        if len(members) > 1:
            raise MinivisionError(f"give {members[0].option} or {members[1].option}, not both")


def validate(cfg: TrainConfig) -> None:
    """Check a resolved config (every caller: CLI, API, compare, resume); raises MinivisionError."""
    check_settings({k: v for k, v in cfg.to_dict().items()})
    if cfg.epochs is None and cfg.steps is None:
        raise MinivisionError("give --epochs or --steps")
    if cfg.optimizer == "muon" and cfg.freeze:
        raise MinivisionError(f"{named('optimizer', 'muon')} acts on hidden layers, and with {named('freeze')} "
                              f"only the head trains: use {named('optimizer', 'sgd')} or adamw")
    if cfg.class_weight == "balanced" and cfg.sampler == "balanced":
        raise MinivisionError(f"give {named('class_weight', 'balanced')} or {named('sampler', 'balanced')}, not "
                              "both: each corrects the imbalance on its own, together they over-correct")
    for name in GLOBAL_DEFAULTS:
        if getattr(cfg, name) is None and SETTINGS[name].group is None:
            raise MinivisionError(f"{SETTINGS[name].option} is not set")


def resolve(cfg: TrainConfig, model_defaults: Mapping[str, Any]) -> TrainConfig:
    """Fill every ``None`` from the model's defaults, then the global defaults, and validate."""
    out = dataclasses.replace(cfg)
    explicit = {k for k in GLOBAL_DEFAULTS if getattr(cfg, k) is not None}
    for key, value in GLOBAL_DEFAULTS.items():
        if getattr(out, key) is None:
            setattr(out, key, model_defaults.get(key, value))
    # of two alternatives, the one given explicitly wins over the model's, and the model's over the fallback
    for group in {s.group for s in SETTINGS.values() if s.group}:
        names = [n for n, s in SETTINGS.items() if s.group == group]
        chosen = ([n for n in names if n in explicit] or [n for n in names if n in model_defaults]
                  or [n for n in names if SETTINGS[n].fallback is not None])
        for n in names:
            if chosen and n != chosen[0]:
                setattr(out, n, None)
    recipe_optimizer = model_defaults.get("optimizer", GLOBAL_DEFAULTS["optimizer"])
    if out.optimizer == "muon" and recipe_optimizer not in ("sgd", "muon"):
        # the recipe's rate and momentum were chosen for another optimizer: Muon needs SGD-sized ones
        if "lr" not in explicit:
            raise MinivisionError(
                f"{named('optimizer', 'muon')}: {out.model or 'the model'}'s recipe rate {out.lr:g} is for "
                f"{recipe_optimizer}; give {named('lr')} too (mvnet's recipe: 0.2, of which Muon takes half)")
        if "momentum" not in explicit:
            out.momentum = 0.9
        if cfg.nesterov is None:
            out.nesterov = True
    if out.optimizer not in ("sgd", "muon") and ("momentum" in explicit or cfg.nesterov):
        raise MinivisionError(f"--{'nesterov' if cfg.nesterov else 'momentum'} applies to --optimizer sgd or "
                              f"muon only (the optimizer is {out.optimizer})")
    validate(out)
    return out


def resume_changes(given: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a ``--resume`` may change, from those the user gave; any other raises MinivisionError
    (a resumed run trains with its own settings: changing them would not be the same run)."""
    refused = [SETTINGS[k].option for k, v in given.items() if v is not None and not SETTINGS[k].resume]
    if refused:
        return_hint = ", ".join(s.option for s in SETTINGS.values() if s.resume and s.flag)
        raise MinivisionError(f"--resume trains with the run's own settings: {', '.join(refused)} cannot change "
                              f"(only {return_hint} can)")
    return {k: v for k, v in given.items() if v is not None}


# ----------------------------------------------------------------------------- the train command's flags

def add_train_arguments(parser: Any, number: Callable[..., Callable[[str], Any]],
                        only: tuple[str, ...] | None = None) -> None:
    """Add one flag per setting to ``parser`` (argparse), every default None so a given flag can be told
    from an absent one; ``number(kind, lo, hi, lo_open=, hi_open=)`` parses a bounded number. ``only``:
    these settings' flags alone (another command that takes some of train's, as ``lr-find``)."""
    import argparse

    groups: dict[str, Any] = {}
    for s in SETTINGS.values():
        if not s.flag or (only is not None and s.name not in only):
            continue
        target = parser
        if s.group:
            if s.group not in groups:
                groups[s.group] = parser.add_mutually_exclusive_group()
            target = groups[s.group]
        bounds = f" ({s.bounds_text()})" if s.lo is not None or s.hi is not None else ""
        kw: dict[str, Any] = {"default": None, "help": s.help + bounds, "dest": s.name}
        if s.kind is bool:  # a recipe's switch can be turned off too (--no-nesterov); others only on
            kw["action"] = argparse.BooleanOptionalAction if s.recipe else "store_true"
        elif s.choices is not None:
            kw["choices"] = s.choices
        elif s.kind in (int, float) and s.name != "budget":
            kw["type"] = number(s.kind, s.lo, s.hi, lo_open=s.lo_open, hi_open=s.hi_open)
            if s.words:  # --lr auto: the word as given, else the number's own check and message
                kw["type"] = _or_words(kw["type"], s.words)
        if s.metavar:
            kw["metavar"] = s.metavar
        target.add_argument(s.option, **kw)


def _or_words(parse: Callable[[str], Any], words: tuple[str, ...]) -> Callable[[str], Any]:
    """``parse`` (a bounded number), or one of ``words`` as given; a bad value's message names the words too."""
    import argparse

    def parse_or_word(text: str) -> Any:
        if text in words:
            return text
        try:
            return parse(text)
        except argparse.ArgumentTypeError as e:
            raise argparse.ArgumentTypeError(f"{e} (or {' or '.join(words)})") from None
    return parse_or_word


def given_settings(namespace: Any) -> dict[str, Any]:
    """The settings given on the command line (argparse namespace from ``add_train_arguments``)."""
    return {n: getattr(namespace, n) for n, s in SETTINGS.items()
            if s.flag and getattr(namespace, n, None) not in (None, False)}


def config_from(given: Mapping[str, Any]) -> TrainConfig:
    """A TrainConfig from given settings (the rest at their declared defaults), checked."""
    check_settings(given)
    _check_together(given)
    return TrainConfig(**given)


# ----------------------------------------------------------------------------- the compare command's flags

#: Settings ``compare`` sets for every run (its own flags), not per model.
COMPARE_FIXED = ("model", "data", "data_dir", "test_data", "epochs", "budget", "seed", "out", "name", "device")
#: Of those, the ones a sweep may also vary.
COMPARE_SWEEPABLE = ("epochs", "budget", "seed")


def add_setting_arguments(parser: Any) -> None:
    """``compare``'s flags for the training settings (argparse): ``--epochs``, ``--budget``, ``--seed`` and every
    setting of ``train`` but the data, model, device and folders; each takes one value or a comma list (a
    sweep), or is given more than once (``--augment flip --augment none``: values that hold commas)."""
    for s in compare_flag_settings():
        help_text = {"epochs": "the same number of epochs for every model",
                     "budget": "the same time budget for every model, e.g. 1m",
                     "seed": "random seed (default 0)"}.get(s.name, s.help)
        parser.add_argument(s.option, dest=s.name, action="append", default=None, metavar="VALUE[,VALUE...]",
                            help=f"{help_text}; a comma list (or the flag again) trains one run per value",
                            **({"nargs": "?", "const": "true"} if s.kind is bool else {}))


def compare_flag_settings() -> list[Any]:
    """The settings ``compare`` takes as flags: every flag of ``train`` but ``COMPARE_FIXED``'s, and those of them in
    ``COMPARE_SWEEPABLE``."""
    return [s for s in SETTINGS.values() if s.flag and (s.name not in COMPARE_FIXED or s.name in COMPARE_SWEEPABLE)]
