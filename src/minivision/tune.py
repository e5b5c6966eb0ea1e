"""``minivision tune``: hyperparameter search with Optuna, each trial an ordinary minivision training run.

Why Optuna rather than our own search: it is the field's well-kept library for this (Ultralytics'
``tune``, Lightning's examples), its TPE sampler (Bergstra et al. 2011, "Algorithms for
Hyper-Parameter Optimization") and pruners are tested by others, and its relational storage (SQLite
here by default, PostgreSQL or MySQL by URL) lets several processes or machines work on one study.
What is ours: the search space per model family, the trial as a minivision run, and the outputs.

Choices, and why:

- Sampler: TPE, seeded. Its random draws for trial ``n`` come from ``(seed, n)`` (``_TrialSeededTPE``), so
  two workers on one study never draw the same settings, and a study run again with the same seed
  draws the same ones. Optuna's defaults otherwise (10 random start-up trials, then TPE).
- Pruner: the median rule (``optuna.pruners.MedianPruner``: stop a trial whose best validation accuracy
  so far is below the median of earlier trials at the same epoch), not Hyperband. A study on a laptop
  CPU has tens of trials of a few epochs; Hyperband splits them into brackets that each compare only a
  handful, and needs the trial length in advance, which a ``--budget-per-trial`` run plans as it goes.
  The median rule needs neither. ``PRUNER_STARTUP`` trials run in full first, and no trial is stopped
  after its first epoch (``PRUNER_WARMUP``: a one-cycle schedule's warm-up makes the first epoch rank
  trials badly) nor at its last (the work is done; a pruned trial would lose its result).
- The figure searched: the trial's best validation accuracy (the epoch its ``model.safetensors``
  keeps). Never the test split: choosing settings by the test split would make its score optimistic.
- The trial is ``train.fit`` with a listener (``PruneListener``) that reports each epoch's validation
  accuracy to Optuna and, when the pruner says so, calls ``trainer.stop("epoch")``: the run ends as a
  normal run at that epoch (model, report), and the trial is recorded as pruned.
- ``--trials N`` is the size of the study: a command stops when N trials are done (complete, pruned or
  diverged), counting those that other workers are running, so a rerun continues up to N, and several
  workers together end with N (a trial or so more when two start at the same moment).
- Trials train from scratch (``--pretrained none``): fine-tuning has its own recipe of phases and rates.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import difflib
import io
import json
import math
import os
import shlex
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import SETTINGS, Setting
from .errors import MinivisionError, TrainingFailed
from .fileio import read_json, write_json, write_text
from .listeners import Listener

if TYPE_CHECKING:
    import optuna

    from .data.dataset import Dataset
    from .train import Trainer

PRUNER_STARTUP = 3   # trials that run in full before the median rule prunes any
PRUNER_WARMUP = 1    # epochs of a trial that are never pruned
TUNE_FILE = "tune.json"
STUDY_FILE = "study.db"
# SQLite: wait this long for another worker's write lock instead of failing ("database is locked")
SQLITE_TIMEOUT_S = 60
# a worker killed outright leaves its trial "running"; after this long without a heartbeat it is marked failed
HEARTBEAT_S, GRACE_S = 60, 180

#: Settings a search space may not hold: the trial's length comes from --epochs/--budget-per-trial, and the
#: validation split is the yardstick every trial is measured on.
NOT_SEARCHED = {"epochs": "a trial's length is set by --epochs or --budget-per-trial",
                "steps": "a trial's length is set by --epochs or --budget-per-trial",
                "val_split": "the validation split is what every trial is measured on; it stays fixed",
                "val_first": "the validation split is what every trial is measured on; it stays fixed"}
AUGMENT_STRENGTH = "augment_strength"
_SEARCHABLE: dict[str, Setting] = {n: s for n, s in SETTINGS.items() if s.recipe and n not in NOT_SEARCHED}
_SEARCHABLE[AUGMENT_STRENGTH] = Setting(name=AUGMENT_STRENGTH, kind=float, help="augmentation strength", lo=0, hi=1)
_ENTRY_KEYS = ("low", "high", "log", "step", "choices")


# ----------------------------------------------------------------------------- the search space

@dataclass(frozen=True)
class Param:
    """One searched (or fixed) setting: a float or int range (``log``: log-uniform; ``step``: a grid),
    a list of ``choices``, or a fixed ``value``."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] | None = None
    value: Any = None

    @property
    def fixed(self) -> bool:
        return self.low is None and self.choices is None

    def describe(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(str(c) for c in self.choices)
        if self.fixed:
            return f"fixed: {self.value}"
        how = "log-uniform" if self.log else "uniform" + (f", step {self.step:g}" if self.step else "")
        return f"{self.low:g} to {self.high:g} ({how})"


def default_space(model: str, n_train: int | None = None) -> dict[str, Any]:
    """The search space for ``model``'s family, around its registered recipe (``models.model_info``):

    - ``lr``: log-uniform from a tenth of the recipe's rate to 10x for the tutorial models (Adam or plain
      SGD at a constant rate), 2x for the rest (one-cycle recipes, whose peak rate is already high: mvnet's
      0.2 with Nesterov momentum 0.9);
    - ``weight_decay``: log-uniform, a decade either side of the recipe's, or 1e-6 to 1e-3 when it has none
      (a log scale cannot reach 0);
    - ``batch_size``: half, the same as, or twice the recipe's; on ``n_train`` training pictures too few for
      the recipe's batch to make ``budget.MIN_STEPS_PER_EPOCH`` steps an epoch, half or the same as
      ``budget.small_data_batch``'s (the batch ``train`` uses there);
    - ``label_smoothing``: 0 to 0.2 in steps of 0.05 (0.1 is Szegedy et al. 2016's value, our recipes');
    - ``augment_strength``: 0 to 1 in steps of 0.25 (``augment_for``: shift, rotation, zoom and erasing grow
      with it; flips except for digits).

    Returns the space as a ``--space`` file would write it (a dict of entries)."""
    from .budget import small_data_batch
    from .config import GLOBAL_DEFAULTS
    from .models import model_info

    recipe = {**GLOBAL_DEFAULTS, **model_info(model).defaults}
    lr, wd, bs = float(recipe["lr"]), float(recipe["weight_decay"]), int(recipe["batch_size"])
    tutorial = recipe.get("schedule") == "constant"
    small = bs if n_train is None else small_data_batch(n_train, bs)
    batches = sorted({max(bs // 2, 1), bs, bs * 2}) if small == bs else sorted({max(small // 2, 1), small})
    return {
        "lr": {"low": _round(lr / 10), "high": _round(lr * (10 if tutorial else 2)), "log": True},
        "weight_decay": ({"low": _round(wd / 10), "high": _round(wd * 10), "log": True} if wd > 0
                         else {"low": 1e-6, "high": 1e-3, "log": True}),
        "batch_size": {"choices": batches},
        "label_smoothing": {"low": 0.0, "high": 0.2, "step": 0.05},
        AUGMENT_STRENGTH: {"low": 0.0, "high": 1.0, "step": 0.25},
    }


def augment_for(strength: float, data: str) -> str:
    """The ``--augment`` spec of an augmentation strength in [0, 1]: ``none`` at 0; at 1
    ``flip,shift=4,rotate=15,zoom=0.15,erase=0.5`` (random erasing at Zhong et al. 2017's p = 0.5),
    everything but the flip scaled by the strength. No flip for MNIST (a mirrored digit is another digit)."""
    from .train import MIRROR_SENSITIVE

    s = min(max(float(strength), 0.0), 1.0)
    if s == 0:
        return "none"
    items = [] if str(data).lower() in MIRROR_SENSITIVE else ["flip"]
    items += [f"shift={max(1, round(4 * s))}", f"rotate={round(15 * s)}", f"zoom={_round(0.15 * s)}",
              f"erase={_round(0.5 * s)}"]
    return ",".join(items)


def _round(v: float) -> float:
    """Three significant digits: what a command line shows, and what the trial then trains with."""
    return float(f"{v:.3g}")


def read_space(path: str | os.PathLike) -> dict[str, Any]:
    """A ``--space`` YAML file (safe YAML) as a dict; MinivisionError (one line) when unreadable."""
    import yaml

    where = f"--space {path}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MinivisionError(f"{where}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MinivisionError(f"{where}: cannot be read ({getattr(e, 'strerror', None) or e})") from None
    try:
        space = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise MinivisionError(f"{where}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(space, dict) or not space:
        raise MinivisionError(f"{where}: expected a mapping of settings to ranges, e.g. "
                              "'lr: {low: 0.0001, high: 0.1, log: true}'")
    return space


def check_space(space: Mapping[str, Any], where: str = "--space") -> dict[str, Param]:
    """Check a search space and return its ``Param`` per setting. An entry is a fixed value, a list of
    choices, or a mapping with ``low``/``high`` (and ``log: true`` or ``step``) or ``choices``; values must
    be valid for the setting (``config.SETTINGS``). Raises MinivisionError naming the first problem."""
    if AUGMENT_STRENGTH in space and "augment" in space:
        raise MinivisionError(f"{where}: give augment or augment_strength, not both")
    out = {}
    for name, entry in space.items():
        out[str(name)] = _param(str(name), entry, f"{where}: {name}")
    return out


def _param(name: str, entry: Any, where: str) -> Param:
    if name in NOT_SEARCHED:
        raise MinivisionError(f"{where} cannot be searched: {NOT_SEARCHED[name]}")
    s = _SEARCHABLE.get(name)
    if s is None:
        close = difflib.get_close_matches(name, list(_SEARCHABLE), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; searchable: {', '.join(_SEARCHABLE)}"
        raise MinivisionError(f"{where}: not a setting that can be searched{hint}")

    def check(value: Any) -> Any:
        if s.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        problem = s.problem(value) if value is not None else "must not be empty"
        if problem:
            raise MinivisionError(f"{where} {problem}, got {value!r}")
        return value

    if isinstance(entry, list):
        entry = {"choices": entry}
    if not isinstance(entry, dict):
        return Param(name, value=check(entry))
    unknown = [k for k in entry if k not in _ENTRY_KEYS]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), _ENTRY_KEYS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; use {', '.join(_ENTRY_KEYS)}"
        raise MinivisionError(f"{where}: unknown key {unknown[0]!r}{hint}")
    if "choices" in entry:
        if set(entry) != {"choices"}:
            raise MinivisionError(f"{where}: give choices or low/high, not both")
        choices = entry["choices"]
        if not isinstance(choices, list) or not choices:
            raise MinivisionError(f"{where}: choices must be a non-empty list")
        return Param(name, choices=tuple(check(c) for c in choices))
    if s.kind not in (int, float):
        raise MinivisionError(f"{where} is not a number: give a fixed value or choices: [...]")
    if "low" not in entry or "high" not in entry:
        raise MinivisionError(f"{where}: give both low and high (or choices)")
    low, high = check(entry["low"]), check(entry["high"])
    if s.kind is int and not all(isinstance(v, int) for v in (low, high)):
        raise MinivisionError(f"{where}: low and high must be integers")
    if not low < high:
        raise MinivisionError(f"{where}: low must be below high, got {low!r} and {high!r}")
    log = entry.get("log", False)
    if not isinstance(log, bool):
        raise MinivisionError(f"{where}: log must be true or false, got {log!r}")
    if log and low <= 0:
        raise MinivisionError(f"{where}: a log scale needs low > 0, got {low!r}")
    step = entry.get("step")
    if step is not None:
        if log:
            raise MinivisionError(f"{where}: give log or step, not both")
        ok = isinstance(step, int | float) and not isinstance(step, bool) and math.isfinite(step) and step > 0
        if not ok or (s.kind is int and not isinstance(step, int)):
            raise MinivisionError(f"{where}: step must be a number above 0{' (an integer)' if s.kind is int else ''}"
                                  f", got {step!r}")
    return Param(name, low=low, high=high, log=log, step=step)


def suggest(trial: optuna.Trial, params: Mapping[str, Param], data: str) -> dict[str, Any]:
    """The training settings of one trial (floats to 3 significant digits; ``augment_strength`` turned
    into ``augment``). The trial's own ``params`` keep what the sampler drew."""
    out: dict[str, Any] = {}
    for name, p in params.items():
        if p.fixed:
            v = p.value
        elif p.choices is not None:
            v = trial.suggest_categorical(name, list(p.choices))
        elif _SEARCHABLE[name].kind is int:
            v = trial.suggest_int(name, p.low, p.high, log=p.log, step=int(p.step or 1))
        else:
            v = _round(trial.suggest_float(name, float(p.low), float(p.high), log=p.log, step=p.step))
        if name == AUGMENT_STRENGTH:
            out["augment"] = augment_for(v, data)
        else:
            out[name] = v
    return out


# ----------------------------------------------------------------------------- the study

@dataclass
class TuneSettings:
    """What ``minivision tune`` was asked for. ``trials``: the study's size (see the module docstring);
    ``epochs`` or ``budget_per_trial`` (seconds): each trial's length, else the model's recipe epochs;
    ``space``: a dict or a YAML file, else ``default_space(model)``; ``storage``: an Optuna storage URL,
    else SQLite in the tune folder; ``study``: its name, else the tune folder's name."""

    trials: int
    data: str = "fashion-mnist"
    data_dir: str | None = None
    test_data: str | None = None
    model: str | None = None
    epochs: int | None = None
    budget_per_trial: float | None = None
    space: str | dict[str, Any] | None = None
    storage: str | None = None
    study: str | None = None
    out: str = "runs"
    name: str = "tune"
    seed: int = 0


@dataclass
class TuneResult:
    """What ``tune`` leaves: the tune folder, the study's counts, and the best trial (None before any
    trial completed): its number, value, settings, run folder and ``command``."""

    tune_dir: Path
    study_name: str
    storage: str               # with any password hidden
    counts: dict[str, int]
    best: dict[str, Any] | None = None
    interrupted: bool = False
    files: dict[str, Path] = field(default_factory=dict)


class PruneListener(Listener):
    """Reports each epoch's validation accuracy to the Optuna trial; stops the run at the end of an epoch
    (``trainer.stop("epoch")``) when the pruner says so. Records the run folder on the trial. Draws no
    random numbers (the pruner is a rule on the stored values)."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial
        self.pruned_at: int | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        self.trial.set_user_attr("run", str(trainer.run_dir))

    def on_epoch_end(self, trainer: Trainer, row: dict[str, float]) -> None:
        value = row["val_accuracy"]
        if math.isnan(value):
            return
        self.trial.report(value, step=int(row["epoch"]))
        if self.pruned_at is None and trainer.epoch < trainer.epochs and self.trial.should_prune():
            self.pruned_at = int(row["epoch"])
            trainer.stop("epoch")


def default_pruner() -> optuna.pruners.BasePruner:
    """The median rule after ``PRUNER_STARTUP`` full trials, never within a trial's first ``PRUNER_WARMUP``
    epochs (the module docstring says why not Hyperband)."""
    import optuna

    # a trial's steps are its epoch numbers (1, 2, ...); Optuna prunes from step n_warmup_steps on
    return optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP, n_warmup_steps=PRUNER_WARMUP + 1)


def _trial_seeded_tpe(seed: int) -> optuna.samplers.BaseSampler:
    """TPE (Optuna's defaults) whose random draws for trial ``n`` are seeded from ``(seed, n)``: workers on
    one study draw different settings, and the same seed draws the same ones again. Uses two of the
    sampler's attributes (``_rng``, ``_random_sampler._rng``), checked against the pinned Optuna by
    tests/test_tune.py."""
    import optuna

    class _TrialSeededTPE(optuna.samplers.TPESampler):
        def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            s = (seed * 1_000_003 + trial.number) % 2**32
            self._rng.rng.seed(s)
            self._random_sampler._rng.rng.seed(s)
            super().before_trial(study, trial)

    return _TrialSeededTPE(seed=seed)


def hide_password(url: str) -> str:
    """``url`` with any password replaced by ``***`` (what messages, tune.json and the report show)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL sqlalchemy reads: say it as given minus anything after user:
        return url.split("@", 1)[-1] if "@" in url else url


STORAGE_KINDS = "sqlite:///FILE, postgresql://USER:PASSWORD@HOST/DATABASE or mysql://USER:PASSWORD@HOST/DATABASE"


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna relational storage for ``url`` (``sqlite:///path``, ``postgresql://user:pw@host/db``,
    ``mysql://...``), with a heartbeat (a killed worker's trial is marked failed after ``GRACE_S``) and, for
    SQLite, a lock timeout. MinivisionError (one line) for a URL that is malformed, a database driver that is
    not installed, or a database that cannot be reached."""
    import optuna

    engine: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine["connect_args"] = {"timeout": SQLITE_TIMEOUT_S}
    try:
        for attempt in range(3):
            try:
                with _quiet_optuna():  # the heartbeat is marked experimental
                    return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S,
                                                      grace_period=GRACE_S, failed_trial_callback=None)
            except Exception as e:  # two workers creating the tables at once: the loser retries
                racing = type(e).__name__ in ("OperationalError", "IntegrityError") and (
                    "already exists" in str(e) or "UNIQUE constraint failed" in str(e))
                if attempt == 2 or not racing:
                    raise
                time.sleep(1.0)
        raise AssertionError("unreachable")
    except ModuleNotFoundError as e:
        raise MinivisionError(f"--storage {hide_password(url)}: its database driver is not installed "
                              f"({e.name}); pip install it") from None
    except Exception as e:  # sqlalchemy's ArgumentError / OperationalError, optuna's own
        if type(e).__name__ == "NoSuchModuleError":  # sqlalchemy: "Can't load plugin: sqlalchemy.dialects:foo"
            kind = url.split(":", 1)[0]
            raise MinivisionError(f"--storage {hide_password(url)}: unknown database kind {kind!r}; use "
                                  f"{STORAGE_KINDS}") from None
        first = " ".join(str(e).split("\n")[0].split()) or type(e).__name__
        raise MinivisionError(f"--storage {hide_password(url)}: {first}"[:400]) from None


# ----------------------------------------------------------------------------- the tune folder

def tune_folder(out: str, name: str) -> Path:
    """``out/name``: new, or a tune folder to continue (it holds ``tune.json``). Never another folder:
    MinivisionError when ``out/name`` exists and is not a tune folder."""
    problem = SETTINGS["name"].problem(name)
    if problem:
        raise MinivisionError(f"--name {problem}, got {name!r}")
    path = Path(out).absolute() / name
    # study.db without tune.json: another worker of the same command is setting the folder up right now
    if path.exists() and not (path / TUNE_FILE).is_file() and not (path / STUDY_FILE).is_file():
        if not path.is_dir() or any(path.iterdir()):
            raise MinivisionError(f"{path} exists and is not a tune folder (no {TUNE_FILE}): give another --name "
                                  "or --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MinivisionError(f"cannot create the tune folder {path}: {e.strerror}") from None
    return path


def _record(settings: TuneSettings, model: str, space: Mapping[str, Any], storage: str, study: str) -> dict[str, Any]:
    """What makes a study the same study: rerunning with other values would mix trials of two searches."""
    return {"data": settings.data, "data_dir": settings.data_dir, "test_data": settings.test_data, "model": model,
            "epochs": settings.epochs, "budget_per_trial": settings.budget_per_trial, "seed": settings.seed,
            "space": dict(space), "study": study, "storage": hide_password(storage)}


def _check_same(old: Mapping[str, Any], new: Mapping[str, Any], where: str) -> None:
    flags = {"data": "--data", "data_dir": "--data-dir", "test_data": "--test-data", "model": "--model",
             "epochs": "--epochs", "budget_per_trial": "--budget-per-trial", "seed": "--seed", "space": "--space",
             "study": "--study", "storage": "--storage"}
    for key, flag in flags.items():
        if key in old and json.dumps(old[key], sort_keys=True) != json.dumps(new[key], sort_keys=True):
            raise MinivisionError(f"{where} was started with {flag} {_shown(old[key])}, not {_shown(new[key])}: "
                                  "rerun with the same settings to continue it, or give another --name")


def _shown(v: Any) -> str:
    if v is None:
        return "(not given)"
    return json.dumps(v, sort_keys=True) if isinstance(v, dict) else str(v)


# ----------------------------------------------------------------------------- the search

def tune(settings: TuneSettings, *, dataset: Dataset | None = None, pruner: optuna.pruners.BasePruner | None = None,
         log: Callable[[str], None] = print) -> TuneResult:
    """Run (or continue) the study ``settings`` describe until it has ``settings.trials`` trials done; write
    the table, ``best.yaml``, the plots and ``report.html`` in the tune folder and return what it found.

    ``dataset``: the data already loaded (else ``settings.data`` is read once for every trial). ``pruner``:
    another Optuna pruner (default: the median rule; a test seam). A Ctrl-C stops the running trial at its
    next step, records it as failed (interrupted), writes the outputs for the trials done and returns with
    ``interrupted`` set; the study keeps every finished trial. Raises MinivisionError for bad settings."""
    from .budget import parse_duration
    from .models import DEFAULT_MODEL, model_info

    if not isinstance(settings.trials, int) or isinstance(settings.trials, bool) or settings.trials < 1:
        raise MinivisionError(f"--trials must be an integer >= 1, got {settings.trials!r}")
    if settings.epochs is not None and settings.budget_per_trial is not None:
        raise MinivisionError("give --epochs or --budget-per-trial, not both")
    for key in ("epochs", "seed"):
        problem = SETTINGS[key].problem(getattr(settings, key))
        if problem:
            raise MinivisionError(f"--{key} {problem}, got {getattr(settings, key)!r}")
    if settings.budget_per_trial is not None:
        try:
            seconds = parse_duration(settings.budget_per_trial)
        except MinivisionError as e:  # parse_duration speaks of train's --budget
            raise MinivisionError(str(e).replace("--budget", "--budget-per-trial", 1)) from None
        settings = dataclasses.replace(settings, budget_per_trial=seconds)
    model = settings.model or DEFAULT_MODEL
    model_info(model)  # an unknown model: one line with a "did you mean"
    space_where = f"--space {settings.space}" if isinstance(settings.space, str | os.PathLike) else "--space"
    given_space = (read_space(settings.space) if isinstance(settings.space, str | os.PathLike)
                   else dict(settings.space) if settings.space is not None else None)
    if given_space is not None:
        check_space(given_space, space_where)  # a bad space: before the data is loaded
    settings = _absolute(settings)

    storage = open_storage(settings.storage) if settings.storage else None  # a bad URL: before any folder
    from .data import load_dataset

    ds = dataset if dataset is not None else load_dataset(settings.data, data_dir=settings.data_dir,
                                                          test_data=settings.test_data)
    if given_space is None:
        n_train = training_pictures(settings, model, ds)
        space = default_space(model, n_train)
        _note_small_batches(space, model, n_train, log)
    else:
        space = given_space
    params = check_space(space, space_where)
    tune_dir = tune_folder(settings.out, settings.name)
    storage_url = settings.storage or f"sqlite:///{tune_dir / STUDY_FILE}"
    study_name = settings.study or settings.name
    record = _record(settings, model, space, storage_url, study_name)
    if (tune_dir / TUNE_FILE).is_file():
        _check_same(read_json(tune_dir / TUNE_FILE), record, str(tune_dir))
    storage = storage or open_storage(storage_url)
    sampler = _trial_seeded_tpe(settings.seed)
    pruner = pruner or default_pruner()
    with _quiet_optuna():
        study = _create_study(storage, study_name, sampler, pruner)
        if study.user_attrs.get("minivision"):
            _check_same(study.user_attrs["minivision"], record, f"study {study_name!r}")
        else:
            study.set_user_attr("minivision", record)
    if not (tune_dir / TUNE_FILE).is_file():
        write_json(tune_dir / TUNE_FILE, record)

    done = _counts(study)["done"]
    progress = (f"{done} of {settings.trials} trials done" if done <= settings.trials
                else f"{done} trial{'s' if done != 1 else ''} done, --trials {settings.trials}")
    log(f"tune folder: {tune_dir}  (study {study_name!r} in {hide_password(storage_url)}; {progress})")
    log("search space: " + "; ".join(f"{p.name} {p.describe()}" for p in params.values()))
    interrupted = False
    if done < settings.trials:
        objective = _Objective(settings, model, params, ds, tune_dir, log)
        try:
            with _quiet_optuna():
                study.optimize(objective, catch=(TrainingFailed,), callbacks=[_enough(settings.trials, tune_dir, log)])
        except KeyboardInterrupt:
            interrupted = True
    else:
        log(f"the study already has {done} trials done: give --trials more than {done} to run more")
    files = write_outputs(study, tune_dir, model=model, settings=settings)
    result = TuneResult(tune_dir, study_name, hide_password(storage_url), _counts(study), best_trial(study, settings),
                        interrupted, files)
    if interrupted:
        log(f"interrupted: the {result.counts['done']} trials done are kept in {result.storage}; run the same "
            "command to continue the study")
    return result


def training_pictures(settings: TuneSettings, model: str, ds: Dataset) -> int:
    """How many training pictures a trial's run has: ``ds`` less the validation split ``train`` makes with
    ``model``'s recipe and the study's seed (the number ``train``'s small-data batch rule reads)."""
    from .config import TrainConfig, resolve
    from .data.split import make_val
    from .models import model_info

    cfg = resolve(TrainConfig(**train_settings(settings, model, {})), model_info(model).defaults)
    return len(make_val(ds, val_split=cfg.val_split, val_first=cfg.val_first, seed=cfg.seed).train.y)


def _note_small_batches(space: Mapping[str, Any], model: str, n_train: int, log: Callable[[str], None]) -> None:
    """The note ``train`` prints for its small-data batch, for the default space's batch sizes."""
    from .budget import MIN_STEPS_PER_EPOCH

    usual = default_space(model)["batch_size"]["choices"]
    searched = space["batch_size"]["choices"]
    if searched != usual:
        log(f"note: {n_train:,} training images: batch sizes {', '.join(map(str, searched))} searched instead of "
            f"the recipe's {', '.join(map(str, usual))}, so an epoch has at least {MIN_STEPS_PER_EPOCH} steps "
            "(--space sets them)")


def _absolute(settings: TuneSettings) -> TuneSettings:
    """Files and folders as absolute paths (the printed command then works from any folder), as train does."""
    from .data import DATASETS

    fix = {k: os.path.abspath(v) for k in ("data", "data_dir", "test_data")
           if (v := getattr(settings, k)) and os.path.exists(v) and not (k == "data" and v.lower() in DATASETS)}
    return dataclasses.replace(settings, **fix)


def _create_study(storage: Any, name: str, sampler: Any, pruner: Any) -> optuna.Study:
    """Create or load the study; two workers starting at once may both try to create it (a few retries)."""
    import optuna

    last: Exception | None = None
    for _ in range(5):
        try:
            return optuna.create_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner,
                                       direction="maximize", load_if_exists=True)
        except optuna.exceptions.DuplicatedStudyError as e:  # created by the other worker meanwhile: load it
            last = e
        except ValueError as e:  # a study of that name that minimizes or has several objectives
            raise MinivisionError(f"--study {name}: {e}") from None
    raise MinivisionError(f"--study {name}: could not be created or loaded ({last})")


@contextlib.contextmanager
def _quiet_optuna():
    """Optuna's own log lines (and a failed trial's traceback) are not shown: tune prints its own."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(level)


def _counts(study: optuna.Study) -> dict[str, int]:
    """Trials by outcome: complete, pruned, diverged (the loss blew up: counted as done), failed
    (interrupted, killed, an error), running; ``done`` = complete + pruned + diverged."""
    c = dict.fromkeys(("complete", "pruned", "diverged", "failed", "running"), 0)
    for t in study.get_trials(deepcopy=False):
        c[_outcome(t)] += 1
    c["done"] = c["complete"] + c["pruned"] + c["diverged"]
    return c


def _outcome(t: optuna.trial.FrozenTrial) -> str:
    from optuna.trial import TrialState

    if t.state == TrialState.COMPLETE:
        return "complete"
    if t.state == TrialState.PRUNED:
        return "pruned"
    if t.state in (TrialState.RUNNING, TrialState.WAITING):
        return "running"
    return "diverged" if t.user_attrs.get("diverged") else "failed"


def _enough(n: int, tune_dir: Path, log: Callable[[str], None]) -> Callable[..., None]:
    """After each trial: update the table and best.yaml; stop once done + running (other workers') >= n."""

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        c = _counts(study)
        write_tables(study, tune_dir)
        if c["done"] + c["running"] >= n:
            study.stop()

    return callback


class _Objective:
    """One trial: settings from the sampler, a minivision training run, its best validation accuracy."""

    def __init__(self, settings: TuneSettings, model: str, params: Mapping[str, Param], ds: Dataset,
                 tune_dir: Path, log: Callable[[str], None]) -> None:
        self.settings, self.model, self.params, self.ds, self.tune_dir, self.log = (
            settings, model, params, ds, tune_dir, log)

    def __call__(self, trial: optuna.Trial) -> float:
        import optuna

        from .config import TrainConfig
        from .train import fit

        s = self.settings
        tuned = suggest(trial, self.params, s.data)
        trial.set_user_attr("settings", tuned)
        cfg = TrainConfig(**train_settings(s, self.model, tuned), out=str(self.tune_dir / "trials"),
                          name=f"trial{trial.number}")
        self.log(f"trial {trial.number}: " + ", ".join(f"{k} {v}" for k, v in tuned.items()))
        listener = PruneListener(trial)
        try:
            result = fit(cfg, dataset=self.ds, listeners=[listener], log=lambda m: self.log("  " + m))
        except TrainingFailed as e:
            trial.set_user_attr("diverged", str(e))
            self.log(f"trial {trial.number}: diverged ({e})")
            raise
        if result.interrupted:
            trial.set_user_attr("interrupted", True)
            raise KeyboardInterrupt
        scored = [r["val_accuracy"] for r in result.history if not math.isnan(r["val_accuracy"])]
        if not scored:
            raise MinivisionError("tune needs a validation split to compare trials (the data gave none)")
        best = max(scored)
        trial.set_user_attr("epochs", len(result.history))
        trial.set_user_attr("seconds", round(sum(r["seconds"] for r in result.history), 1))
        if result.test:
            trial.set_user_attr("test_accuracy", result.test["test_accuracy"])
        if listener.pruned_at is not None:
            self.log(f"trial {trial.number}: pruned after epoch {listener.pruned_at} (validation accuracy "
                     f"{best:.2%}, below the median of earlier trials)")
            raise optuna.TrialPruned()
        self.log(f"trial {trial.number}: validation accuracy {best:.2%}  ({result.run_dir})")
        return best


def train_settings(s: TuneSettings, model: str, tuned: Mapping[str, Any]) -> dict[str, Any]:
    """The ``config.TrainConfig`` fields of a trial: the data, the model, the trial's length, the seed,
    training from scratch, and the searched settings."""
    length: dict[str, Any] = ({"epochs": s.epochs} if s.epochs is not None else
                              {"budget": s.budget_per_trial} if s.budget_per_trial is not None else {})
    base = {"data": s.data, "data_dir": s.data_dir, "test_data": s.test_data, "model": model, **length,
            "seed": s.seed, "pretrained": "none"}
    return {k: v for k, v in {**base, **tuned}.items() if v is not None}


# ----------------------------------------------------------------------------- outputs

def train_command(settings: Mapping[str, Any]) -> str:
    """The ``minivision train`` command line for ``settings`` (``TrainConfig`` fields), quoted for a POSIX shell."""
    from .budget import format_duration

    words = ["minivision", "train"]
    for key, value in settings.items():
        option = SETTINGS[key].option
        if SETTINGS[key].kind is bool:
            words.append(option if value else f"--no-{option[2:]}")
        elif key == "budget":
            words += [option, format_duration(float(value))]
        else:
            words += [option, str(value)]
    return " ".join(shlex.quote(w) for w in words)


def best_trial(study: optuna.Study, settings: TuneSettings) -> dict[str, Any] | None:
    """The best complete trial as ``{trial, value, run, settings, command, test_accuracy}``; None before any."""
    try:
        t = study.best_trial
    except ValueError:
        return None
    record = study.user_attrs.get("minivision") or {}
    model = record.get("model") or settings.model
    full = train_settings(settings, model, t.user_attrs.get("settings", {}))
    return {"trial": t.number, "value": t.value, "run": t.user_attrs.get("run"), "settings": full,
            "command": train_command(full), "test_accuracy": t.user_attrs.get("test_accuracy")}


def trial_rows(study: optuna.Study) -> tuple[list[str], list[list[Any]]]:
    """The trials table: header and one row per trial (number order): trial, outcome, best validation
    accuracy (a pruned trial's best before it stopped), epochs, seconds, each searched setting, run folder."""
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    names: list[str] = []
    for t in trials:
        for k in t.user_attrs.get("settings", {}):
            if k not in names:
                names.append(k)
    try:
        best = study.best_trial.number
    except ValueError:
        best = None
    header = ["trial", "state", "val_accuracy", "epochs", "seconds", *names, "run"]
    rows = []
    for t in trials:
        value = t.value if t.value is not None else max(t.intermediate_values.values(), default=None)
        tuned = t.user_attrs.get("settings", {})
        state = _outcome(t) + (" (best)" if t.number == best else "")
        rows.append([t.number, state, value, t.user_attrs.get("epochs", max(t.intermediate_values, default=None)),
                     t.user_attrs.get("seconds"), *[tuned.get(n) for n in names], t.user_attrs.get("run")])
    return header, rows


def write_tables(study: optuna.Study, tune_dir: Path) -> dict[str, Path]:
    """``trials.csv`` and ``trials.md`` (run folders relative to the tune folder)."""
    header, rows = trial_rows(study)
    rows = [[*r[:-1], _relative(r[-1], tune_dir)] for r in rows]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows([["" if v is None else v for v in r] for r in rows])
    write_text(tune_dir / "trials.csv", buf.getvalue())
    md = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if i in (0, 2, 3, 4) else "---"
                                                         for i in range(len(header))) + "|"]
    md += ["| " + " | ".join(_cell(v, i == 2) for i, v in enumerate(r)) + " |" for r in rows]
    write_text(tune_dir / "trials.md", "\n".join(md) + "\n")
    return {"csv": tune_dir / "trials.csv", "markdown": tune_dir / "trials.md"}


def _relative(run: str | None, base: Path) -> str | None:
    if not run:
        return None
    with contextlib.suppress(ValueError):
        return str(Path(run).relative_to(base))
    return run


def _cell(v: Any, percent: bool = False) -> str:
    if v is None:
        return ""
    if percent and isinstance(v, float):
        return f"{v:.2%}"
    return str(v).replace("|", "\\|")


def write_outputs(study: optuna.Study, tune_dir: Path, *, model: str, settings: TuneSettings) -> dict[str, Path]:
    """The table, ``best.yaml`` (when a trial completed), ``history.png``, ``importances.png`` (from 2
    complete trials that differ) and ``report.html``."""
    import yaml

    files = write_tables(study, tune_dir)
    best = best_trial(study, settings)
    if best is not None:
        c = _counts(study)
        head = (f"# minivision tune: the best of {c['done']} trials done in study {study.study_name!r} "
                f"(validation accuracy {best['value']:.4f}, trial {best['trial']})\n")
        write_text(tune_dir / "best.yaml", head + yaml.safe_dump(
            {"command": best["command"], "trial": best["trial"], "val_accuracy": best["value"], "run": best["run"],
             "settings": best["settings"]}, sort_keys=False, allow_unicode=True, width=10**6))
        files["best"] = tune_dir / "best.yaml"
    files.update(write_plots(study, tune_dir, seed=settings.seed))
    files["report"] = write_report(study, tune_dir, best, files, model=model)
    return files


def write_plots(study: optuna.Study, tune_dir: Path, *, seed: int = 0) -> dict[str, Path]:
    """Optuna's optimisation history and parameter importances (fANOVA, seeded) as PNGs, drawn with
    ``optuna.visualization.matplotlib`` (no plotly needed). Importances need 2 complete trials that differ
    in a searched setting; a plot that cannot be drawn is left out."""
    import matplotlib
    import optuna
    from optuna.trial import TrialState

    from .report.style import save_figure

    out: dict[str, Path] = {}
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return out
    plots: list[tuple[str, Callable[[], Any]]] = [
        ("history", lambda: optuna.visualization.matplotlib.plot_optimization_history(study))]
    names = {k for t in complete for k in t.params}
    if any(len({json.dumps(t.params.get(k)) for t in complete}) > 1 for k in names):  # some setting varied
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
        plots.append(("importances", lambda: optuna.visualization.matplotlib.plot_param_importances(
            study, evaluator=evaluator)))
    import matplotlib.pyplot as plt

    for key, draw in plots:
        with _quiet_optuna(), matplotlib.rc_context(), warnings.catch_warnings():  # optuna sets the ggplot style
            warnings.simplefilter("ignore")
            try:
                ax = draw()
            except (ValueError, RuntimeError):  # too few or too alike trials for the evaluator
                continue
            _relabel(ax, key)
            fig = ax.figure
            fig.set_size_inches(7, 4)
            fig.tight_layout()
            out[key] = save_figure(fig, tune_dir / f"{key}.png")
            plt.close(fig)
    return out


def _relabel(ax: Any, key: str) -> None:
    """Optuna's plots say "Objective Value": name it (validation accuracy), and count trials in whole numbers."""
    from matplotlib.ticker import MaxNLocator

    if key == "history":
        ax.set_ylabel("Validation accuracy")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, [lab.replace("Objective Value", "Validation accuracy") for lab in labels],
                  loc="lower right" if key == "history" else "best")


def write_report(study: optuna.Study, tune_dir: Path, best: Mapping[str, Any] | None, files: Mapping[str, Path], *,
                 model: str) -> Path:
    """``report.html``: the summary, the best settings and their command, the plots, the trials table, the
    search space and the study; styled as a run's report (report/html.py), self-contained."""
    from html import escape

    from .report.html import _figure, _section, _summary, _table, render_page

    c = _counts(study)
    record = study.user_attrs.get("minivision") or {}
    headline = [("trials done", str(c["done"])), ("complete", str(c["complete"])), ("pruned", str(c["pruned"]))]
    if best is not None:
        headline = [("best validation accuracy", f"{best['value']:.2%}"), ("best trial", str(best["trial"])),
                    *headline]
    notes = [f"{c['diverged']} trial(s) diverged (the loss blew up)"] if c["diverged"] else []
    if c["failed"]:
        notes.append(f"{c['failed']} trial(s) stopped without a result (interrupted or killed)")
    sections = [_summary(headline, notes)]
    if best is not None:
        body = (f'<pre class="commands"><code>{escape(best["command"])}</code></pre>'
                f"<p>The best trial's run folder: <code>{escape(str(best['run']))}</code> (its own report.html is "
                "there). Validation accuracy is what the search compared; ")
        body += (f"that run's test accuracy is {best['test_accuracy']:.2%}.</p>" if best.get("test_accuracy")
                 is not None else "the data has no test split.</p>")
        body += _table(None, [(k, str(v)) for k, v in best["settings"].items()], css="kv")
        sections.append(_section("best", "Best settings", body))
    captions = {"history": "Optimisation history: each complete trial's validation accuracy and the best so far",
                "importances": "Parameter importances (fANOVA): how much of the variation in validation accuracy "
                               "each setting explains"}
    figures = "".join(_figure(files[k], cap, None, f"fig-{k}", k) for k, cap in captions.items() if k in files)
    if "history" in files and "importances" not in files:
        figures += ('<p class="muted">No parameter importances yet: they need at least two complete trials whose '
                    "settings and validation accuracies differ.</p>")
    if figures:
        sections.append(_section("plots", "Plots", figures))
    header, rows = trial_rows(study)
    shown = [[_cell(v, i == 2) if i != len(r) - 1 else _relative(v, tune_dir) or "" for i, v in enumerate(r)]
             for r in rows]
    sections.append(_section("trials", "Trials", _table(header, shown, numeric=[True, False, True, True, True],
                                                        label="Trials")))
    space = record.get("space") or {}
    sections.append(_section("space", "Search space", _table(
        None, [(k, Param.describe(_param(k, v, k))) for k, v in space.items()], css="kv")))
    study_rows = [("study", study.study_name), ("storage", str(record.get("storage"))), ("model", model),
                  ("data", str(record.get("data"))), ("sampler", "TPE (seeded per trial)"),
                  ("pruner", "median rule (after 3 trials, never at the first or last epoch)")]
    sections.append(_section("study", "Study", _table(None, study_rows, css="kv")))
    path = tune_dir / "report.html"
    write_text(path, render_page(f"minivision tune: {tune_dir.name}", sections))
    return path


# ----------------------------------------------------------------------------- the command

def add_tune_arguments(parser: Any, number: Callable[..., Callable[[str], Any]]) -> None:
    """The ``tune`` command's flags (argparse); ``number(kind, lo, ...)`` parses a bounded number."""
    parser.add_argument("--data", default="fashion-mnist",
                        help="fashion-mnist (default), mnist, cifar10, a CSV file or an image folder")
    parser.add_argument("--data-dir", help="folder with the dataset files")
    parser.add_argument("--test-data", help="a second CSV file used as the test split")
    parser.add_argument("--model", help="the model every trial trains (default: the default model); its family "
                                        "sets the default search space")
    parser.add_argument("--trials", type=number(int, 1), required=True,
                        help="trials in the study: the command stops when this many are done (complete, pruned "
                             "or diverged), with every worker's counted; rerun with more to continue")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=number(int, 1), help="epochs of each trial (default: the model's recipe)")
    length.add_argument("--budget-per-trial", metavar="DURATION",
                        help="wall-clock time of each trial, e.g. 30s, 2m")
    parser.add_argument("--space", metavar="FILE",
                        help="YAML search space replacing the default, e.g. 'lr: {low: 0.0001, high: 0.1, log: "
                             "true}', 'batch_size: [64, 128]', 'augment_strength: {low: 0, high: 1, step: 0.25}'")
    parser.add_argument("--storage", metavar="URL",
                        help="Optuna storage URL (default: sqlite:///OUT/NAME/study.db), e.g. "
                             "postgresql://user:password@host/db for workers on several machines")
    parser.add_argument("--study", metavar="NAME", help="study name in the storage (default: --name)")
    parser.add_argument("--out", default="runs", help="parent folder of the tune folder (default runs)")
    parser.add_argument("--name", default="tune",
                        help="tune folder name (default tune); the same --out/--name continues its study")
    parser.add_argument("--seed", type=number(int, 0), default=0,
                        help="seed of the sampler and of every trial's training (default 0)")


def command(a: Any) -> int:
    """``minivision tune``: run the study, print the best settings as a ``minivision train`` command."""
    settings = TuneSettings(trials=a.trials, data=a.data, data_dir=a.data_dir, test_data=a.test_data, model=a.model,
                            epochs=a.epochs, budget_per_trial=a.budget_per_trial, space=a.space, storage=a.storage,
                            study=a.study, out=a.out, name=a.name, seed=a.seed)
    r = tune(settings)
    c = r.counts
    print(f"{c['done']} trials done ({c['complete']} complete, {c['pruned']} pruned, {c['diverged']} diverged)"
          + (f", {c['failed']} stopped without a result" if c["failed"] else ""))
    if r.best is not None:
        test = (f", test accuracy {r.best['test_accuracy']:.2%}" if r.best.get("test_accuracy") is not None else "")
        print(f"best: trial {r.best['trial']}, validation accuracy {r.best['value']:.2%}{test}; run {r.best['run']}")
        print(r.best["command"])
    print("saved " + ", ".join(str(p) for p in r.files.values()))
    return 130 if r.interrupted else 0
