"""Training settings: one dataclass, every field commented, resolved against the model's defaults.

A field left as ``None`` takes the model's tutorial setting (see ``models.registry``), then the
global default below; the resolved config is what ``args.yaml`` records, so a run says exactly
how it was trained.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import MinivisionError

OPTIMIZERS = ("adam", "sgd", "adamw", "gd")
SCHEDULES = ("constant", "onecycle", "cosine")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
NORMALIZE = ("unit", "standard")

# Used where neither the command line nor the model's registered defaults say otherwise.
GLOBAL_DEFAULTS: dict[str, Any] = {
    "optimizer": "adam",      # Keras' usual choice
    "lr": 1e-3,               # Keras' Adam default
    "momentum": 0.9,          # SGD only
    "nesterov": False,        # SGD only
    "weight_decay": 0.0,      # L2 for sgd/adam, decoupled for adamw
    "batch_size": 128,
    "epochs": 10,
    "steps": None,            # train for a step count instead of epochs
    "val_split": 0.2,         # stratified, seeded random fraction held out for validation
    "val_first": None,        # or: the first N training images as validation
    "schedule": "constant",
    "label_smoothing": 0.0,
    "augment": "",            # e.g. "flip,shift=2,rotate=10,zoom=0.1,erase=0.5"
    "normalize": "unit",      # unit: x/255 (Keras Rescaling); standard: per-channel mean/std
}


@dataclass
class TrainConfig:
    data: str = "fashion-mnist"          # dataset name, CSV file or image folder
    data_dir: str | None = None          # where named datasets live (else $MINIVISION_DATA, cache, Debian)
    test_data: str | None = None         # a second CSV used as the test split
    model: str | None = None             # registry name (`minivision models`); None: chosen by the budget
    budget: float | str | None = None    # wall-clock seconds (or "3m") for the whole run; see budget.py
    epochs: int | None = None            # passes over the training split
    steps: int | None = None             # or a number of optimizer steps
    batch_size: int | None = None
    optimizer: str | None = None         # adam | sgd | adamw | gd (plain gradient descent)
    lr: float | None = None              # peak learning rate
    momentum: float | None = None
    nesterov: bool | None = None
    weight_decay: float | None = None
    schedule: str | None = None          # constant | onecycle | cosine
    label_smoothing: float | None = None
    augment: str | None = None           # comma list, see data.augment
    normalize: str | None = None         # unit | standard
    val_split: float | None = None       # fraction of train held out (stratified, seeded)
    val_first: int | None = None         # first N train images held out instead
    seed: int = 0                        # same seed, same machine -> same history
    device: str = "auto"                 # auto | cpu | cuda
    precision: str = "auto"              # auto | fp32 | bf16 (autocast)
    out: str = "runs"                    # parent folder of run folders
    name: str = "train"                  # run folder name; train, train2, ... never overwritten
    tensorboard: bool = False            # also write TensorBoard event files to <run>/tensorboard
    extra: dict[str, Any] = field(default_factory=dict)  # model builder kwargs

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise MinivisionError(f"unknown setting(s) {', '.join(unknown)}")
        return cls(**d)


def resolve(cfg: TrainConfig, model_defaults: dict[str, Any]) -> TrainConfig:
    """Fill every ``None`` from the model's defaults, then the global defaults, and validate."""
    out = dataclasses.replace(cfg)
    explicit = {k for k in GLOBAL_DEFAULTS if getattr(cfg, k) is not None}
    for key, value in GLOBAL_DEFAULTS.items():
        if getattr(out, key) is None:
            setattr(out, key, model_defaults.get(key, value))
    # An explicit --epochs beats a model's default step count and vice versa.
    if "epochs" in explicit and "steps" not in explicit:
        out.steps = None
    if "steps" in explicit:
        out.epochs = None
    elif out.steps is not None:
        out.epochs = None
    # An explicit validation rule replaces the model's.
    if "val_first" in explicit and "val_split" not in explicit:
        out.val_split = None
    elif "val_split" in explicit:
        out.val_first = None
    elif out.val_first is not None:
        out.val_split = None
    validate(out)
    return out


def validate(cfg: TrainConfig) -> None:
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise MinivisionError(msg)

    need(cfg.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {cfg.optimizer!r}")
    need(cfg.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}, got {cfg.schedule!r}")
    need(cfg.device in DEVICES, f"--device must be one of {', '.join(DEVICES)}, got {cfg.device!r}")
    need(cfg.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}")
    need(cfg.normalize in NORMALIZE, f"--normalize must be one of {', '.join(NORMALIZE)}, got {cfg.normalize!r}")
    need(cfg.epochs is None or cfg.epochs >= 1, f"--epochs must be >= 1, got {cfg.epochs}")
    need(cfg.steps is None or cfg.steps >= 1, f"--steps must be >= 1, got {cfg.steps}")
    need(cfg.epochs is not None or cfg.steps is not None, "give --epochs or --steps")
    need(cfg.batch_size >= 1, f"--batch-size must be >= 1, got {cfg.batch_size}")
    need(cfg.lr > 0, f"--lr must be > 0, got {cfg.lr}")
    need(0 <= cfg.momentum < 1, f"--momentum must be in [0, 1), got {cfg.momentum}")
    need(cfg.weight_decay >= 0, f"--weight-decay must be >= 0, got {cfg.weight_decay}")
    need(0 <= cfg.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got {cfg.label_smoothing}")
    if cfg.val_split is not None:
        need(0 < cfg.val_split < 1, f"--val-split must be in (0, 1), got {cfg.val_split}")
    if cfg.val_first is not None:
        need(cfg.val_first >= 1, f"--val-first must be >= 1, got {cfg.val_first}")
    need(cfg.budget is None or (isinstance(cfg.budget, (int, float)) and cfg.budget > 0),
         f"--budget must be a positive number of seconds, got {cfg.budget!r}")
    need(cfg.seed >= 0, f"--seed must be >= 0, got {cfg.seed}")
    need(bool(cfg.name) and "/" not in cfg.name and cfg.name not in (".", ".."),
         f"--name must be a plain folder name, got {cfg.name!r}")
