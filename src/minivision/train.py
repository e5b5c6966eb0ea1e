"""The fit loop: data in memory, batches by indexing, a run folder that survives Ctrl-C and kill.

Every source of randomness is derived from (seed, epoch) or saved in the checkpoint, so a run that
is interrupted and resumed ends with the same weights and history, to the last digit, as one that
never stopped (same seed, same machine, CPU).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from . import finetune, imbalance
from .budget import LADDER, EpochLines, Plan, Planner, default_budget, format_duration, plan_budget, small_data_batches
from .config import TrainConfig, named, resolve
from .data import load_dataset
from .data.augment import Augment
from .data.dataset import Dataset, Split
from .data.rules import dataset_messages, skipped_listing
from .data.split import check_own_val, has_own_val, make_val, validation_used
from .errors import MinivisionError, TrainingFailed
from .examples import save_examples
from .fileio import new_run_dir, write_text
from .inference import (
    cpu_bf16_speedup,
    cpu_supports_bf16,
    loss_and_accuracy,
    mean_view_logits,
    pick_device,
    pick_precision,
    predict_features,
    predict_logits,
    reading_precision,
    view_logits,
)
from .listeners import (
    BudgetPlanner,
    Checkpoints,
    EarlyStopping,
    Listener,
    ProgressFile,
    Report,
    ResultsFiles,
    TensorBoard,
    mark_failed,
)
from .models import DEFAULT_MODEL, create_model, model_info
from .optim import make_optimizer
from .preprocess import Preprocess
from .runfiles import (
    InitSource,
    hardware,
    load_checkpoint,
    load_init_weights,
    read_args,
    read_init_source,
    save_checkpoint,
    save_model,
    versions,
    write_args,
)
from .scores import TTA_VIEWS, default_tta, tta_mode

MIRROR_SENSITIVE = {"mnist"}  # datasets whose default augmentation must not flip images

# A run whose loss explodes without becoming NaN is stopped. A classifier that outputs the same
# probabilities for every class has the loss ln(K) (K classes), and every network here starts near
# it (tests/test_failures.py checks that each registered one starts below 3 ln K). A step loss above
# EXPLODED_LOSS x ln(K) means logits in the tens or hundreds: updates that overshoot. When at least
# half of the last EXPLODED_STEPS steps (or of a shorter epoch's steps) exploded and those steps are
# no better than chance (accuracy below EXPLODED_ACC / K), the run is not learning and will not: the
# learning rate is too high. Half, not all: a network that blows up often dies a dozen steps later
# (every logit equal, the loss back at ln K, chance accuracy for good), which steps in a row miss.
# Measured on Fashion-MNIST with --lr 50, one epoch: mvnet-t's training
# loss 1.8e9 at 11.2% accuracy, cnn2's 3.1e13 at 9.7% (chance: 10%); softmax's 147 at 72% (learning,
# so not stopped).
EXPLODED_LOSS = 10.0
EXPLODED_STEPS = 20
EXPLODED_ACC = 1.5


# ----------------------------------------------------------------------------- Setup

def lr_at(step: int, total: int, peak: float, schedule: str) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total``."""
    if schedule == "constant" or total <= 1:
        return peak
    t = step / (total - 1)
    if schedule == "cosine":
        return peak * 0.5 * (1 + math.cos(math.pi * t))
    warm = 0.2  # onecycle: linear warm-up from peak/10 over the first 20%, then linear decay to 0
    if t < warm:
        return peak * (0.1 + 0.9 * t / warm)
    return peak * (1 - t) / (1 - warm)


def _epoch_seed(seed: int, epoch: int, stream: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + stream) % (2**63 - 1)


# ----------------------------------------------------------------------------- Train

@dataclass
class RunResult:
    """What ``fit`` leaves behind; ``run_dir`` holds all of it on disk."""

    run_dir: Path
    config: TrainConfig
    history: list[dict[str, float]]
    model: nn.Module
    preprocess: Preprocess
    classes: list[str]
    test: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False


class _StopFlag:
    """SIGINT/SIGTERM set a flag the loop checks between steps, so a checkpoint is never half a step.

    A second Ctrl-C falls through to Python's default and stops at once.
    """

    def __init__(self) -> None:
        self.stop = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.stop and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.stop = True

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _log(msg: str) -> None:
    tqdm.write(msg, file=sys.stdout)


def fit(cfg: TrainConfig, *, dataset: Dataset | None = None, resume: str | Path | None = None,
        progress: bool | None = None, log: Callable[[str], None] = _log, started: float | None = None,
        clock: Callable[[], float] = time.monotonic, resume_changes: dict[str, Any] | None = None,
        listeners: list[Listener] | None = None) -> RunResult:
    """Train as ``cfg`` says, in a new run folder (or the interrupted one given as ``resume``).

    With no model, epochs, steps or budget, the budget is ``budget.DEFAULT_BUDGET_S``; a budget is
    counted from ``started`` (``clock()``; the CLI passes the time it started). ``clock`` is the time
    the budget's deadline and ``Planner`` read (a test seam: a fake clock drives a budget run without
    timing anything; the network probe still times real steps). ``resume_changes``: with ``resume``,
    the settings a resume may change (``config.resume_changes``: epochs to extend a finished run,
    device, precision, tensorboard); without it, ``cfg``'s epochs/steps/tensorboard as before.
    ``listeners``: your own ``listeners.Listener`` objects, called after the built-in ones at every event
    (see ``minivision.listeners`` for the events and the rules; they must not draw random numbers)."""
    from . import distributed

    world = distributed.setup(_device_setting(cfg, resume, resume_changes))
    if not world.is_main:  # rank 0 speaks and writes; the others train quietly
        log, progress = _silent, False
    started = distributed.started_at(clock() if started is None else started)
    state: dict[str, Any] | None = None
    run_dir: Path | None = None
    history: list[dict[str, float]] = []
    if resume is not None:
        changes = resume_changes if resume_changes is not None else {
            k: v for k, v in (("epochs", cfg.epochs), ("steps", cfg.steps), ("tensorboard", cfg.tensorboard or None))
            if v is not None}
        cfg, run_dir, state, history = _prepare_resume(Path(resume), changes, log, main=world.is_main)
    augment_from_user = cfg.augment is not None
    user_cfg = cfg
    source: InitSource | None = None
    start_flag = "--init-from"
    if resume is None:
        _check_start_flags(cfg)
    auto_scratch = False
    if world.active and resume is None:
        cfg, auto_scratch = _data_parallel_start(cfg)
    if resume is None and cfg.init_from is not None:
        source = read_init_source(cfg.init_from)
        cfg = _network_of(cfg, source)
    elif resume is None and (given := _pretrained_value(cfg))[0] not in (None, "none") and \
            finetune.is_weights_path(given[0]):
        start_flag = given[1]
        source = _as_pretrained(read_init_source, given[0], flag=start_flag)
        cfg = _network_of(cfg, source, _given(start_flag, str(source.path)))
    budget_given = cfg.budget is not None
    if resume is None:
        user_cfg = cfg = default_budget(cfg)
        first = cfg.model or (LADDER[0].model if cfg.budget is not None else DEFAULT_MODEL)
        cfg = resolve(dataclasses.replace(cfg, model=first), model_info(first).defaults)
        cfg = _absolute_paths(cfg)
        user_cfg = dataclasses.replace(user_cfg, **{k: getattr(cfg, k) for k in ("data", "data_dir", "test_data")})
        _check_lr_auto(cfg, length_given=user_cfg.epochs is not None or user_cfg.steps is not None)
    Augment.parse(cfg.augment)  # fail on a bad spec before loading anything

    ds = dataset if dataset is not None else load_dataset(cfg.data, data_dir=cfg.data_dir, test_data=cfg.test_data,
                                                          imgsz=cfg.imgsz, fit=cfg.resize_mode)
    if resume is None:  # a --val-split/--val-first given with the data's own val/ folder would do nothing
        check_own_val(ds, val_split=user_cfg.val_split, val_first=user_cfg.val_first)
    own_val, validation = has_own_val(ds), validation_used(ds, val_split=cfg.val_split, val_first=cfg.val_first)
    ds = make_val(ds, val_split=cfg.val_split, val_first=cfg.val_first, seed=cfg.seed)
    for line in dataset_messages(ds):  # notes (a class left out, a split made smaller) and skipped files
        log(line)
    log(ds.describe())
    if auto_scratch and _would_fine_tune(user_cfg, ds):
        log(f"note: {world.size} processes train from scratch (a pretrained backbone is fine-tuned in one process)")
    if (line := imbalance.describe(cfg.class_weight, cfg.sampler, ds.train.y, ds.classes)) is not None:
        log(line)
    if ds.num_classes < 2:
        found = f" ({ds.classes[0]!r})" if ds.classes else ""
        raise MinivisionError(f"{ds.name} has {ds.num_classes} class{found}: a classifier needs pictures of at least "
                              f"2 classes (one folder or label per class)")
    start: finetune.Start | None = None
    if resume is None:
        start = _choose_start(user_cfg, ds, source, log)
        if start is not None and cfg.lr == "auto":
            raise MinivisionError(f"--lr auto finds the rate of a training from scratch; a fine-tune from a pretrained "
                                  f"backbone has its own rates ({named('pretrained', 'none')} to train from scratch)")
        if start is not None:
            if not budget_given and _pretrained_value(user_cfg)[0] is not None:
                # --pretrained named with no length flag: its recipe; the automatic choice keeps the default budget
                user_cfg = dataclasses.replace(user_cfg, budget=None)
            cfg = _fine_tune_settings(user_cfg, cfg, start)
            if start.source is not None and finetune.resizes_inside(str(cfg.model)):  # a run's EfficientNet-Lite0
                size = user_cfg.imgsz or (cfg.extra or {}).get("input_size")
                if size:
                    cfg = dataclasses.replace(cfg, extra={**(cfg.extra or {}), "input_size": int(size)})
                    start.input_size = int(size)
            if dataset is None:
                ds = _load_at_working_size(cfg, ds, start, log)
    elif state is not None and state["progress"].get("pretrained"):
        start = finetune.Start.from_record(state["progress"]["pretrained"])
        if world.active:
            raise MinivisionError(f"{resume} fine-tunes a pretrained backbone in phases: resume it in one process "
                                  f"({named('nproc', 1)})")

    if resume is None and start is None and source is None:  # a budget's rungs are made from the user's settings
        user_cfg, cfg = scratch_stem(user_cfg, ds, cfg.model), scratch_stem(cfg, ds)
    device = distributed.device_of(world, pick_device(cfg.device))
    if world.active and cfg.precision == "auto":  # rank 0 measures whether bf16 pays; every rank trains alike
        precision = str(distributed.broadcast_json(pick_precision("auto", device) if world.is_main else None,
                                                   device=device))
    else:
        precision = pick_precision(cfg.precision, device)
    if precision == "bf16" and device.type == "cpu" and not cpu_supports_bf16():
        log("note: this CPU has no native bf16; --precision bf16 will be slow")
    elif cfg.precision == "auto" and precision == "fp32" and device.type == "cpu" and world.is_main \
            and cpu_supports_bf16():
        log(f"note: training in fp32: bf16 convolutions ran at {cpu_bf16_speedup():.2f}x the speed of fp32 ones "
            f"on this CPU ({named('precision', 'bf16')} to use bf16 anyway)")

    plan: Plan | None = None
    if resume is None and cfg.budget is not None and start is None:
        cfg, plan = plan_budget(user_cfg, cfg, ds, device, precision, started, log, clock)
    elif resume is None:  # fixed epochs/steps: the budget's small-data batch rule too (a batch the user set is kept)
        cfg = small_data_batches(user_cfg, cfg, len(ds.train.y), log)
    if resume is None and not augment_from_user and (user_cfg.model is None or start is not None):
        cfg = _small_data_augment(cfg, ds, start, log)
    if resume is None and not augment_from_user and ds.name in MIRROR_SENSITIVE and Augment.parse(cfg.augment).flip:
        cfg = dataclasses.replace(cfg, augment=dataclasses.replace(Augment.parse(cfg.augment), flip=0.0).spec())
        log(f"note: no flip augmentation for {ds.name} (a mirrored digit is another digit); augment={cfg.augment!r}")

    if world.active:
        cfg, plan = _data_parallel_settings(cfg, plan, ds, world, device)
    torch.manual_seed(cfg.seed)
    architecture: dict[str, Any] | None = None
    if start is not None and start.backbone is not None and resume is None:
        from . import pretrained

        try:
            model, architecture = pretrained.build_pretrained(
                start.backbone.name, in_channels=ds.channels, image_size=ds.image_size, num_classes=ds.num_classes,
                input_size=start.input_size)
        except MinivisionError as e:
            if _pretrained_value(user_cfg)[0] is not None:
                raise
            raise MinivisionError(f"{e} (or {named('pretrained', 'none')} to train from scratch)") from None
        dropped = sorted(set(user_cfg.extra or {}) - set(architecture.get("kwargs") or {}))
        if dropped:
            log(f"note: {', '.join(dropped)} (extra) {'does' if len(dropped) == 1 else 'do'} not apply to the "
                f"pretrained {start.backbone.name}, which is built as it was trained: not used")
        cfg = dataclasses.replace(cfg, extra=dict(architecture.get("kwargs") or {}))
    else:
        model = create_model(cfg.model, in_channels=ds.channels, image_size=ds.image_size,
                             num_classes=ds.num_classes, **cfg.extra)
    model = model.to(device).to(memory_format=torch.channels_last)
    if resume is not None and start is not None and start.phases and run_dir != Path(resume):
        # extended: --epochs N is N epochs of every layer in all (of the head with --freeze), as on a new fine-tune
        start.phases = finetune.extend_phases(start.phases, int(cfg.epochs or 0), cfg, model, freeze=start.freeze)
    pre = Preprocess.fit(ds.train.x, cfg.normalize, ds.conversion)
    if state is not None and "preprocess" in state["progress"]:
        pre = Preprocess.from_dict(state["progress"]["preprocess"], dataset_name=ds.name)
    if resume is None and source is None and start is None:  # from scratch: mvnet's whitening stem, say
        init_from_data(model, ds, pre, cfg.seed, log)
    init: dict[str, Any] | None = None
    if source is not None:
        pre = _check_source_input(source, ds, flag=start_flag) or pre
        init = {"from": str(source.path), "head": _as_pretrained(load_init_weights, model, source, ds.classes,
                                                                 flag=start_flag)}
        log(f"starting from the weights of {source.path} ({'head kept' if init['head'] == 'kept' else 'new head'})")
    if hasattr(model, "network_input"):  # what the network does to its input before the backbone (model.json)
        pre.network_input = model.network_input()
        if start is not None and start.backbone is not None and resume is None and not pre.network_input.get("mean"):
            pre = finetune.backbone_normalisation(pre, start.backbone)
    fine_plan: finetune.FineTunePlan | None = None
    if start is not None:
        steps = batches_per_epoch(len(ds.train.y), cfg.batch_size)
        if resume is None:
            finetune.init_head(model)
        if resume is None and cfg.budget is not None and user_cfg.epochs is None:
            fine_plan = finetune.plan_budget(cfg, model, pre, ds, device, precision, budget_s=float(cfg.budget),
                                             left_s=started + float(cfg.budget) - clock(), freeze=start.freeze,
                                             end_pictures=trust_pictures(ds) + tta_pictures(
                                                 ds, answer_tta(cfg, ds, start)), steps_per_epoch=steps, log=log,
                                             input_size=start.input_size)
            cfg = dataclasses.replace(cfg, epochs=max(1, fine_plan.epochs if not start.freeze
                                                      else fine_plan.head_epochs), steps=None)
        if resume is None:
            head_only = fine_plan is not None and fine_plan.epochs == 0 and not start.freeze
            start.phases = finetune.phases(cfg, model, freeze=start.freeze, steps_per_epoch=steps,
                                           head_only=head_only)
            log(start.describe())
            if start.freeze and augment_from_user and cfg.augment:
                log(f"note: --freeze trains the head on features computed once: --augment {cfg.augment} cannot "
                    f"apply to them (drop --freeze to fine-tune with augmentation)")
    lr_found = None
    if cfg.lr == "auto":  # the range test on a copy of the model; this fresh one then trains with its rate
        from .lr_find import auto_lr

        cfg, lr_found = auto_lr(cfg, model, pre, ds, device, precision, log)
    optimizer = make_optimizer(cfg, model)

    if world.active and resume is None:  # args.yaml records the world, the global batch and the rate used
        cfg = dataclasses.replace(cfg, nproc=world.local_size,
                                  distributed=distributed.record(world, int(cfg.batch_size), cfg.lr))
    if run_dir is None and world.is_main:
        run_dir = new_run_dir(cfg.out, cfg.name)
        if own_val:  # args.yaml and model.json record the val/ folder used, not a fraction that was not
            cfg = dataclasses.replace(cfg, val_split=None, val_first=None)
        write_args(run_dir, cfg, comment=f"validation: {validation}")
        if lr_found is not None:  # lr_find.png / .csv: the curve the rate was read from
            lr_found.save(run_dir, f"{cfg.model} on {ds.name}")
        if ds.skipped:
            write_text(run_dir / "skipped.txt", skipped_listing(ds))
    if world.active:  # the other ranks learn rank 0's folder (for messages: they write nothing)
        run_dir = Path(distributed.broadcast_json(str(run_dir) if run_dir is not None else None, device=device))
    distributed.note_run_dir(run_dir)
    with _failure_recorded(run_dir) if world.is_main else contextlib.nullcontext():
        log(f"run folder: {run_dir}  (model {cfg.model}, {sum(p.numel() for p in model.parameters()):,} "
            f"parameters, {device.type} {precision})")

        meta = {
            "architecture": architecture or {"name": cfg.model, "in_channels": ds.channels,
                                             "image_size": list(ds.image_size), "num_classes": ds.num_classes,
                                             "kwargs": cfg.extra},
            "classes": ds.classes,
            "parameters": sum(p.numel() for p in model.parameters()),  # as the run's page counts them (exports)
            "preprocess": pre.to_dict(),
            "dataset": {"data": cfg.data, "data_dir": cfg.data_dir, "test_data": cfg.test_data, "name": ds.name,
                        "val_split": cfg.val_split, "val_first": cfg.val_first, "seed": cfg.seed,
                        "validation": validation},
            # what the training pictures went through (flip TTA suits a model trained with horizontal flips only)
            "augment": Augment.parse("" if start is not None and start.freeze else cfg.augment).record(),
            # the test-time augmentation its answers use (predict, evaluate, serve, exports; scores.TTA_VIEWS)
            "tta": answer_tta(cfg, ds, start, log),
            "versions": versions(),
            # the settings as used, beside args.yaml's as given (device auto -> cpu, precision auto -> fp32)
            "used": {"device": device.type, "precision": precision, "batch_size": cfg.batch_size,
                     "epochs_planned": sum(p.epochs for p in start.phases) if start is not None and start.phases
                     else cfg.epochs, "started": datetime.now(UTC).isoformat(timespec="seconds"),
                     "validation_precision": validation_precision(precision), "hardware": hardware(device)},
        }
        if world.active:
            meta["used"]["distributed"] = distributed.record(world, cfg.batch_size, cfg.lr)
        if init is not None:
            meta["init_from"] = init
        if start is not None:
            meta["pretrained"] = start.record()
            if fine_plan is not None:
                meta["budget"] = dataclasses.asdict(fine_plan)
        if plan is None and resume is not None and cfg.budget is not None:
            # a resumed budget run keeps the step count it had planned (restored from the checkpoint)
            meta["budget"] = {"budget_s": cfg.budget, "model": cfg.model, "resumed": True}
        # built-in listeners first (the checkpoint records what they did), the user's, the planner last (it
        # measures what the others cost at an epoch's end)
        built_in: list[Listener] = [Checkpoints(), ResultsFiles(), ProgressFile(), Report()]
        if cfg.patience is not None:  # first: its history column and its stop are in what the others save
            built_in.insert(0, EarlyStopping(cfg.patience))
        if cfg.tensorboard and world.is_main:
            built_in.append(TensorBoard(run_dir))  # after Report: it logs the report's pictures
        trainer = Trainer(cfg, ds, model, pre, optimizer, device, precision, run_dir, meta, history, log,
                          progress if progress is not None else None, listeners=[*built_in, *(listeners or [])],
                          phases=start.phases if start is not None else None, world=world)
        if fine_plan is not None:
            trainer.listeners.append(finetune.Deadline(started + fine_plan.budget_s, fine_plan.end_s, clock))
        if plan is not None:
            meta["budget"] = dataclasses.asdict(plan)
            if cfg.steps is not None and user_cfg.steps is None:
                trainer.listeners.append(BudgetPlanner(Planner(
                    started + plan.budget_s, trainer.batches_per_epoch, len(ds.val) if ds.val is not None else 0,
                    len(ds.test) if ds.test is not None else 0, cfg.batch_size, clock=clock,
                    report=trainer.report_follows,
                    n_end=trust_pictures(ds, reuses_validation=trainer.val_precision == trainer.read_precision)
                    + tta_pictures(ds, meta["tta"]),
                    budget_s=plan.budget_s, startup_s=plan.startup_s)))
                trainer.budget_end = (started + plan.budget_s, clock)  # the plan moves: epoch lines say time left
        if state is not None:
            trainer.restore(state)
        interrupted = trainer.run()
        trainer.leave_world()  # no collective after the loop: rank 0 finishes alone
        result = RunResult(run_dir, cfg, trainer.history, model, pre, ds.classes, interrupted=interrupted)
        if not interrupted and world.is_main:
            result.test = trainer.finish()
        return result


def _silent(msg: str) -> None:
    """The log of a rank other than 0."""


#: Training pictures a net's data-computed weights are taken from (airbench whitens from 5,000).
DATA_INIT_PICTURES = 5000


def scratch_stem(cfg: TrainConfig, ds: Dataset, model: str | None = None) -> TrainConfig:
    """``cfg`` with ``extra["stem"]`` set to ``mvnet.default_stem`` for the pictures of ``ds`` (the whitening
    stem for colour pictures), when ``model`` (default ``cfg.model``) takes a ``stem``: call it for a network
    trained from scratch. A stem the user named in ``extra`` is kept; on grey pictures nothing is added."""
    from .models.mvnet import scratch_options

    extra = dict(cfg.extra or {})
    model = model or cfg.model
    if model is None or "stem" in extra:
        return cfg
    added = scratch_options(model, ds.channels, ds.image_size)
    return dataclasses.replace(cfg, extra={**extra, **added}) if added else cfg


def init_from_data(model: nn.Module, ds: Dataset, pre: Preprocess, seed: int,
                   log: Callable[[str], None] = _silent) -> bool:
    """Give ``model`` its data-computed weights (``ClassifierNet.init_from_data``) from a seeded random pick of
    ``DATA_INIT_PICTURES`` training pictures as the network sees them (after ``pre``): a folder's training
    split comes in class order, so the first 5,000 could be one class. Returns whether the model had any."""
    net = getattr(model, "module", model)
    if not hasattr(net, "init_from_data") or ds.train is None or len(ds.train.y) == 0:
        return False
    n = len(ds.train.y)
    pick = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))[:DATA_INIT_PICTURES].sort().values
    if not net.init_from_data(pre(ds.train.x[pick])):
        return False
    log(f"whitening stem: computed from {len(pick):,} training pictures")
    return True


def _device_setting(cfg: TrainConfig, resume: str | Path | None, changes: dict[str, Any] | None) -> str:
    """The ``--device`` a run trains on, before its settings are read (the process group's backend
    depends on it): a resume's own unless the resume changes it."""
    if resume is None:
        return cfg.device
    if changes and changes.get("device"):
        return str(changes["device"])
    try:
        return read_args(Path(resume)).device
    except MinivisionError:
        return "auto"  # _prepare_resume says what is wrong with the folder


def _data_parallel_start(cfg: TrainConfig) -> tuple[TrainConfig, bool]:
    """Several processes train from scratch or from ``--init-from``: fine-tuning a pretrained backbone runs
    in phases with frozen layers and cached features, which ``DistributedDataParallel`` does not follow
    (its gradient hooks are set on the parameters that train when it is built). Returns the config with
    ``pretrained`` ``none`` and whether that replaced the automatic choice; a pretrained start asked for
    (``--pretrained``, ``--freeze``, ``$MINIVISION_PRETRAINED``) is a MinivisionError."""
    given, by = _pretrained_value(cfg)
    if cfg.freeze or given not in (None, "none"):
        what = named("freeze") if cfg.freeze else _given(by, str(given))
        raise MinivisionError(f"{what}: fine-tuning a pretrained backbone runs in one process; drop "
                              f"{named('nproc')} (or train from scratch with {named('pretrained', 'none')})")
    return dataclasses.replace(cfg, pretrained="none"), given is None and cfg.init_from is None


def _would_fine_tune(user_cfg: TrainConfig, ds: Dataset) -> bool:
    """Whether one process would have fine-tuned a pretrained backbone on ``ds`` by itself (the automatic
    choice: a small dataset and a backbone that fits the network asked for)."""
    try:
        backbone, _ = finetune.choose_backbone(len(ds.train.y), ds.channels, ds.name, model=user_cfg.model)
    except (ImportError, MinivisionError):
        return False
    return backbone is not None


def _data_parallel_settings(cfg: TrainConfig, plan: Plan | None, ds: Dataset, world: Any,
                            device: torch.device) -> tuple[TrainConfig, Plan | None]:
    """The settings every rank trains with. A budget run takes the smallest network any rank picked, with
    that rank's plan (the slowest rank's: every rank timed its own steps); the Planner then re-plans on the
    slowest rank too (``Trainer.agree_total_steps``). The global batch must give every rank two pictures."""
    from . import distributed

    if plan is not None:
        ladder = [r.model for r in LADDER]
        mine = ladder.index(cfg.model) if cfg.model in ladder else 0
        key = distributed.all_reduce(torch.tensor([mine * world.size + world.rank], device=device), "min")
        agreed = distributed.broadcast_json({"cfg": cfg.to_dict(), "plan": dataclasses.asdict(plan)},
                                            src=int(key.item()) % world.size, device=device)
        cfg, plan = TrainConfig.from_dict(agreed["cfg"]), Plan(**agreed["plan"])
    distributed.check_batch(int(cfg.batch_size), world)
    if distributed.batches_per_epoch(len(ds.train.y), int(cfg.batch_size), world.size) < 1:
        raise MinivisionError(f"{len(ds.train.y)} training pictures are too few for {world.size} processes "
                              f"(at least {2 * world.size})")
    return cfg, plan


def _rank_seed(seed: int, epoch: int, step: int, rank: int, stream: int) -> int:
    """Seed of rank ``rank``'s random stream ``stream`` at step ``step`` of ``epoch`` (several processes):
    a function of where training is, so a checkpoint needs no rank's generator state to resume."""
    return (_epoch_seed(seed, epoch, stream) * 1_000_033 + step * 8_191 + rank * 131 + 1) % (2**63 - 1)


def _check_lr_auto(cfg: TrainConfig, *, length_given: bool = False) -> None:
    """``--lr auto`` goes with a run of fixed length in one process (the range test takes time of its own);
    ``length_given``: the user gave --epochs or --steps."""
    if cfg.lr != "auto":
        return
    if cfg.budget is not None and length_given:
        raise MinivisionError("--lr auto cannot go with --budget: a --budget run has no time set aside for the range "
                              "test (drop --budget, or run minivision lr-find first and give its rate with --lr)")
    if cfg.budget is not None:
        raise MinivisionError("--lr auto goes with --epochs or --steps: a --budget run has no time set aside for the "
                              "range test (or run minivision lr-find first and give its rate with --lr)")
    if getattr(cfg, "nproc", 1) > 1:
        raise MinivisionError("--lr auto runs in one process: run minivision lr-find first and give its rate with --lr")


def batches_per_epoch(n: int, batch_size: int) -> int:
    """Steps in an epoch of ``n`` training pictures: a lone last picture is dropped (batch norm needs two)."""
    return n // batch_size + (1 if n % batch_size >= 2 or n < batch_size else 0)


def validation_precision(train_precision: str) -> str:
    """The precision of the validation pass after each epoch: the training's when it is bf16, else the reading
    precision (``inference.reading_precision``, fp32). The epochs' passes only pick the best epoch and draw
    the curves; after training the kept weights are scored again in fp32 for model.json, the calibration and
    the unsure statistics. Measured on a CPU with AVX-512 BF16 (``python3 bench/reading_precision.py RUN``,
    10,000 Fashion-MNIST test pictures): ``cnn2`` 0.63 s in bf16 against 1.67 s in fp32, top-1 86.84% against
    86.81%; ``mvnet-t`` 0.39 against 0.56 s, 92.37% against 92.34%."""
    return "bf16" if train_precision == "bf16" else reading_precision("auto")


def trust_pictures(ds: Dataset, *, reuses_validation: bool = False) -> int:
    """Pictures the calibration and unsure statistics pass through the network at the end of training
    (Trainer._fit_trust): up to trust.STATS_PICTURES training pictures and, unless the best epoch's
    validation pass is reused (``reuses_validation``: a run without fine-tuning phases), the validation
    split; 0 without a validation split (nothing is fitted then)."""
    from .trust import STATS_PICTURES

    if ds.val is None or not len(ds.val):
        return 0
    return (0 if reuses_validation else len(ds.val)) + min(len(ds.train), STATS_PICTURES)


def answer_tta(cfg: TrainConfig, ds: Dataset, start: finetune.Start | None = None,
               log: Callable[[str], None] | None = None) -> str:
    """The test-time augmentation a run's model answers with (model.json's ``tta``, one of scores.TTA_MODES):
    ``cfg.tta`` when set, else for ``auto`` ``scores.default_tta`` of the training's augmentation (a frozen
    backbone's fine-tune sees its pictures un-augmented) and the data's channels. ``log``: where a note goes
    when the mode asked for mirrors pictures the training never mirrored (``evaluate.NO_FLIPS_NOTE``)."""
    flips = Augment.parse("" if start is not None and start.freeze else cfg.augment).record()["horizontal_flip"]
    if cfg.tta == "auto":
        return default_tta(flips, ds.channels)
    if log is not None and not flips and any(mirrored for mirrored, _, _ in TTA_VIEWS[cfg.tta]):
        from .evaluate import NO_FLIPS_NOTE

        log(f"note: --tta {cfg.tta}: {NO_FLIPS_NOTE}")
    return cfg.tta


def tta_pictures(ds: Dataset, mode: str) -> int:
    """Pictures the test-time views add to the end of training: every view but the plain one of the test split
    (``Trainer.finish`` scores the test split with and without them) and of the validation split (the
    temperature is fitted to the answers the views give, trust.fit_for_model)."""
    n = sum(len(s) for s in (ds.test, ds.val) if s is not None)
    return (len(TTA_VIEWS[mode]) - 1) * n


@contextlib.contextmanager
def _failure_recorded(run_dir: Path):
    """Mark ``run_dir`` failed (``progress.json``: state ``failed`` and the reason) when training raises,
    so the folder does not sit there holding only ``args.yaml``; the exception goes on to the caller."""
    try:
        yield
    except KeyboardInterrupt:  # a second Ctrl-C: resumable only when a checkpoint was saved
        if not (run_dir / "last.safetensors").is_file():
            mark_failed(run_dir, "interrupted before its first checkpoint")
        raise
    except TrainingFailed as e:  # diverged: a resume would replay the same steps
        mark_failed(run_dir, str(e), resumable=False)
        raise
    except MinivisionError as e:
        mark_failed(run_dir, str(e))
        raise
    except Exception as e:  # a bug, or the machine (out of memory): the folder still says what happened
        first = str(e).splitlines()[0] if str(e) else "no message"
        mark_failed(run_dir, f"{type(e).__name__}: {first}")
        raise


def _network_of(cfg: TrainConfig, source: InitSource, who: str | None = None) -> TrainConfig:
    """``--init-from`` (or ``--pretrained``) a run: train its network (and its builder options) unless
    ``--model`` says the same. ``who``: how errors name the start (default ``--init-from PATH``)."""
    who = who or named("init_from", str(source.path))
    if source.architecture is None:
        if cfg.model is None:
            raise MinivisionError(f"{who}: a bare weights file needs {named('model')} (which network)")
        return cfg
    name = str(source.architecture["name"])
    if cfg.model is not None and cfg.model != name:
        raise MinivisionError(f"{who} holds a {name} network; drop {named('model', cfg.model)} "
                              f"(or use {named('model', name)})")
    return dataclasses.replace(cfg, model=name, extra=cfg.extra or dict(source.architecture.get("kwargs") or {}))


def _check_source_input(source: InitSource, ds: Dataset, flag: str = "--init-from") -> Preprocess | None:
    """A run's preprocessing is kept, so its input must be the dataset's: same channels and size. Except
    for a pretrained start (``flag`` ``--pretrained`` or ``$MINIVISION_PRETRAINED``) from a network that
    resizes its input itself (``finetune.resizes_inside``: EfficientNet-Lite0's adapter): it takes any
    picture size and 1 or 3 channels, so None is returned (the new data's own preprocessing). Else a
    one-line MinivisionError with both shapes and what to do (a folder: ``--imgsz`` at the run's size)."""
    pre = source.preprocess
    if pre is None:
        return None
    if (pre.channels, tuple(pre.size)) == (ds.channels, tuple(ds.image_size)):
        return pre
    network = str((source.architecture or {}).get("name", ""))
    resizes = bool(network) and finetune.resizes_inside(network)
    if flag != "--init-from" and resizes and {pre.channels, ds.channels} <= {1, 3}:
        return None
    run = f"{pre.channels}x{pre.size[0]}x{pre.size[1]}"
    if _is_folder(ds) and pre.channels == ds.channels:
        hint = f"read the folder at the run's size with {named('imgsz', max(pre.size))}"
    elif flag == "--init-from" and resizes:
        hint = f"{named('pretrained', 'RUN')} fine-tunes its {network} network on pictures of any size"
    else:
        hint = (f"train on {run} pictures, or start from a backbone that resizes any pictures "
                f"({named('pretrained', 'efficientnet-lite0')})")
    who = named("init_from", str(source.path)) if flag == "--init-from" else _given(flag, str(source.path))
    raise MinivisionError(f"{who}: that model takes {run} images, {ds.name}'s are "
                          f"{ds.channels}x{ds.image_size[0]}x{ds.image_size[1]}; {hint}")


# ----------------------------------------------------------------------------- starting from a pretrained model

PRETRAINED_TAKES = ("a backbone name (minivision models --pretrained), a run folder, a .safetensors file, "
                    "or none")


def _pretrained_value(cfg: TrainConfig) -> tuple[str | None, str]:
    """``--pretrained``'s value and where it came from: the flag (or setting), else ``$MINIVISION_PRETRAINED``
    (``finetune.default_pretrained``), else ``(None, "")``: the automatic choice."""
    if cfg.pretrained is not None:
        return cfg.pretrained, "--pretrained"
    env = finetune.default_pretrained()
    return (env, "$MINIVISION_PRETRAINED") if env is not None else (None, "")


def _check_start_flags(cfg: TrainConfig) -> None:
    """``--freeze`` needs something pretrained to freeze; ``--steps`` does not split into phases."""
    if cfg.pretrained is not None and not cfg.pretrained.strip():
        raise MinivisionError(f"{named('pretrained')} is empty: it takes {PRETRAINED_TAKES}")
    if cfg.freeze and cfg.pretrained == "none":
        raise MinivisionError(f"{named('freeze')} keeps a pretrained backbone frozen: drop "
                              f"{named('pretrained', 'none')}")
    if cfg.freeze and cfg.init_from is not None:
        raise MinivisionError(f"{named('freeze')} works with {named('pretrained')} (a new head on frozen features), "
                              f"not {named('init_from')}")
    if cfg.pretrained not in (None, "none") and cfg.steps is not None:
        raise MinivisionError(f"{named('pretrained')} trains in phases of whole epochs: give {named('epochs')} "
                              f"instead of {named('steps')}")
    given, by = _pretrained_value(cfg) if cfg.init_from is None else (cfg.pretrained, "--pretrained")
    if given in (None, "none"):
        return
    if finetune.is_weights_path(given):  # a run or file: fit reads it (and says what is wrong) before the data
        return
    try:
        backbone = finetune.resolve_backbone(given)  # before the data is loaded
    except MinivisionError as e:
        if by == "--pretrained":
            raise
        raise MinivisionError(f"{_given(by, given)}: {e}") from None
    _check_backbone_model(backbone, cfg, by)


def _given(by: str, value: str) -> str:
    """``--pretrained``'s value as a message names it: ``--pretrained X`` (``pretrained='X'`` from the
    API: ``config.named``) or ``$MINIVISION_PRETRAINED=X``."""
    return named("pretrained", value) if by == "--pretrained" else f"{by}={value}"


def _check_backbone_model(backbone: Any, cfg: TrainConfig, by: str = "--pretrained") -> None:
    if cfg.model is not None and cfg.model != backbone.model:
        raise MinivisionError(f"{_given(by, backbone.name)} builds the {backbone.model} network; drop "
                              f"{named('model', cfg.model)} (or use {named('model', backbone.model)})")


def _as_pretrained(read: Callable[..., Any], *args: Any, flag: str = "--pretrained") -> Any:
    """``runfiles``' init-from readers for ``--pretrained RUN|FILE``: their errors name the setting given
    (``flag``: ``--init-from``, ``--pretrained`` or ``$MINIVISION_PRETRAINED``; as parameters from the
    API: ``config.named``). ``load_init_weights`` gets the source without its head, so the head is always
    new (``reset``) for a pretrained start."""
    pretrained_start = flag != "--init-from"
    if read is load_init_weights:
        model, source, classes = args
        if pretrained_start:
            head = f"{model.classifier_name}."
            source = dataclasses.replace(source, classes=None,
                                         state={k: v for k, v in source.state.items() if not k.startswith(head)})
        args = (model, source, classes)
    try:
        return read(*args)
    except MinivisionError as e:
        def name(value: str) -> str:
            return _given(flag, value) if pretrained_start else named("init_from", value)

        msg = re.sub(r"--init-from (.*?): ", lambda m: name(m.group(1)) + ": ", str(e), count=1)
        if pretrained_start and read is read_init_source:
            if msg == str(e):
                msg = f"{name(str(args[0]))}: {msg}"
            msg += f"; {named('pretrained') if flag == '--pretrained' else flag} takes {PRETRAINED_TAKES}"
        raise MinivisionError(msg) from None


def _choose_start(user_cfg: TrainConfig, ds: Dataset, source: InitSource | None,
                  log: Callable[[str], None]) -> finetune.Start | None:
    """What a new run starts from: ``--pretrained RUN|FILE`` (``source``), ``--pretrained NAME``, or with
    neither (and no ``--init-from``) ``finetune.choose_backbone``'s pick for this dataset; None from scratch."""
    given, by = _pretrained_value(user_cfg)
    if user_cfg.init_from is not None or given == "none":
        return None
    if source is not None:
        return finetune.Start(source=source.path, why=f"named by {by}", freeze=user_cfg.freeze)
    n = len(ds.train.y)
    if given is not None:
        try:
            backbone = finetune.resolve_backbone(given)
        except MinivisionError as e:
            if by == "--pretrained":
                raise
            raise MinivisionError(f"{_given(by, given)}: {e}") from None
        _check_backbone_model(backbone, user_cfg, by)
        if not finetune.fits_input(backbone, ds.channels):
            raise MinivisionError(f"{_given(by, given)} takes {backbone.channels}-channel pictures; "
                                  f"{ds.name}'s have {ds.channels}")
        why = f"named by {by}"
        if finetune.same_data(backbone.dataset, ds.name):
            log(f"note: {given} was pretrained on {backbone.dataset}: a test score on {ds.name} is not a fair one")
    else:
        try:
            backbone, why = finetune.choose_backbone(n if not user_cfg.freeze else 0, ds.channels, ds.name,
                                                     model=user_cfg.model)
        except (ImportError, MinivisionError) as e:  # no catalogue: never stop a default run for it
            log(f"note: no pretrained backbone available ({e}); training from scratch")
            return None
        if backbone is None:
            if user_cfg.freeze:
                raise MinivisionError(f"{named('freeze')}: {why}; name one with {named('pretrained', 'NAME')}")
            return None
        if user_cfg.steps is not None:  # a fine-tune trains in phases of whole epochs: the steps asked for win
            if user_cfg.freeze:
                raise MinivisionError(f"{named('freeze')} fine-tunes a pretrained backbone in phases of whole "
                                      f"epochs: give {named('epochs')} instead of {named('steps')}")
            log(f"note: {named('steps')} trains from scratch; for {n:,} training pictures minivision would "
                f"fine-tune the pretrained {backbone.name}, in whole epochs ({named('epochs')} instead of "
                f"{named('steps')})")
            return None
        if user_cfg.freeze:
            why = "--freeze"
    if user_cfg.imgsz is not None and not _is_folder(ds) and not finetune.resizes_inside(backbone.model):
        log(f"note: {named('imgsz', user_cfg.imgsz)} does not apply: {backbone.name}'s {backbone.model} network "
            f"takes the pictures at their own size ({ds.image_size[0]}x{ds.image_size[1]})")
    return finetune.Start(backbone=backbone, why=why, freeze=user_cfg.freeze,
                          input_size=finetune.working_size(backbone, tuple(ds.image_size), ds.channels,
                                                           imgsz=user_cfg.imgsz))


def _is_folder(ds: Dataset) -> bool:
    """The dataset is an image folder's (its pictures resized to a working size when read)."""
    return ds.conversion is not None and getattr(ds.conversion, "method", None) == "resize"


def _load_at_working_size(cfg: TrainConfig, ds: Dataset, start: finetune.Start,
                          log: Callable[[str], None]) -> Dataset:
    """A folder of large pictures read at its default size (``folder.IMGSZ_CAP``, 64 px) for a network
    that works at a larger one (``start.input_size``, e.g. 96 px) would be enlarged inside the network,
    losing the detail the pictures had: read it again at the working size, capped at the pictures' own
    (median longer side: ``folder.median_side``), so nothing is enlarged twice. ``Dataset.conversion``
    (model.json's ``preprocess.photo``) then holds that size, and predict converts a picture the same
    way. ``--imgsz`` given sets the working size: a network that resizes inside (``finetune.resizes_inside``)
    still gets the pictures at their own size when that is smaller (the README's rule: read at the working
    size "or at the pictures' own size when that is smaller"), never enlarged on reading and again inside;
    another network takes them at ``--imgsz``. Unchanged: other data, pictures already read at their own size
    or at the working size."""
    from .data import folder

    side = max(ds.image_size)
    if cfg.imgsz is not None:
        own = folder.median_side(cfg.data) if _is_folder(ds) and finetune.resizes_inside(str(cfg.model)) else None
        if not own or own >= side:
            return ds
        log(f"note: reading the pictures at their own {own} px, not {side}: the network enlarges them to "
            f"{start.input_size or cfg.imgsz} px itself")
        again = load_dataset(cfg.data, data_dir=cfg.data_dir, test_data=cfg.test_data, imgsz=own,
                             fit=cfg.resize_mode)
        return make_val(again, val_split=cfg.val_split, val_first=cfg.val_first, seed=cfg.seed)
    if not _is_folder(ds) or not start.input_size or side >= start.input_size or side < folder.IMGSZ_CAP:
        return ds
    own = folder.median_side(cfg.data)
    want = min(int(start.input_size), own or side)
    if want <= side:
        return ds
    log(f"note: reading the pictures at {want} px, not {side}: the network works at {start.input_size} px "
        f"({named('imgsz')} sets another size)")
    again = load_dataset(cfg.data, data_dir=cfg.data_dir, test_data=cfg.test_data, imgsz=want, fit=cfg.resize_mode)
    return make_val(again, val_split=cfg.val_split, val_first=cfg.val_first, seed=cfg.seed)


def _fine_tune_settings(user_cfg: TrainConfig, cfg: TrainConfig, start: finetune.Start) -> TrainConfig:
    """The settings of a fine-tune: the backbone's network with its registered recipe (a run's or a
    weights file's network with ``finetune.FINETUNE_RECIPE`` over its from-scratch recipe), the user's
    flags over both; ``--freeze`` with no ``--epochs`` trains ``finetune.FREEZE_EPOCHS`` epochs."""
    if start.backbone is not None:
        name, defaults = start.backbone.model, dict(model_info(start.backbone.model).defaults)
        extra = user_cfg.extra
    else:
        name, extra = cfg.model, cfg.extra
        defaults = {**model_info(name).defaults, **finetune.FINETUNE_RECIPE}
    if start.freeze:
        defaults["epochs"] = finetune.FREEZE_EPOCHS
    defaults.pop("steps", None)
    out = resolve(dataclasses.replace(user_cfg, model=name, extra=extra), defaults)
    return dataclasses.replace(out, **{k: getattr(cfg, k) for k in ("data", "data_dir", "test_data", "init_from",
                                                                    "pretrained")})


def _small_data_augment(cfg: TrainConfig, ds: Dataset, start: finetune.Start | None,
                        log: Callable[[str], None]) -> TrainConfig:
    """No ``--augment`` given: the augmentation ``data.augment.small_data_augment`` picks for this many
    training pictures (None keeps the recipe's); none on cached features (``--freeze``). Called when
    minivision picks the network or fine-tunes: a model the user names keeps its recipe (a tutorial's
    model is the tutorial only when trained as it is)."""
    if start is not None and start.freeze:
        return cfg
    from .data.augment import small_data_augment

    spec = small_data_augment(len(ds.train.y), ds.channels, ds.name)
    if spec is None or spec == cfg.augment:
        return cfg
    log(f"note: {len(ds.train.y):,} training pictures: augment={spec!r} (--augment sets it)")
    return dataclasses.replace(cfg, augment=spec)


def _absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """Record file and folder arguments as absolute paths, so a resume works from any directory."""
    import os

    from .data import DATASETS

    fix = {k: os.path.abspath(v) for k in ("data", "data_dir", "test_data", "init_from")
           if (v := getattr(cfg, k)) and os.path.exists(v) and not (k == "data" and v.lower() in DATASETS)}
    return dataclasses.replace(cfg, **fix)


def _prepare_resume(path: Path, changes: dict[str, Any], log: Callable[[str], None], main: bool = True):
    """Resume an interrupted run in place, or extend a finished one into a new run folder (made by rank 0:
    ``main``; the others get None and learn it from rank 0).

    ``changes``: settings the user gave with ``--resume`` (checked by ``config.resume_changes``); each is
    honoured or refused with a one-line error, never ignored."""
    from .config import resume_changes

    if not path.is_dir():
        raise MinivisionError(f"--resume {path}: no such run folder")
    from .listeners import read_progress, run_state

    ckpt = path / "last.safetensors"
    if not ckpt.is_file():
        raise MinivisionError(run_state(path) or f"--resume {path}: no last.safetensors checkpoint in it")
    if (read_progress(path) or {}).get("resumable") is False:  # it diverged: resuming replays the same steps
        raise MinivisionError(run_state(path) or f"--resume {path}: this run cannot be resumed")
    cfg = read_args(path)
    # a flag repeating the run's own setting changes nothing; any other must be one a resume can honour
    changes = resume_changes({k: v for k, v in changes.items() if getattr(cfg, k) != v})
    honoured = {k: v for k, v in changes.items()
                if k in ("device", "precision", "tensorboard", "nproc", "patience", "tta")}
    if honoured:
        cfg = dataclasses.replace(cfg, **honoured)
        log("resume with " + ", ".join(f"{k}={v}" for k, v in honoured.items()))
    model_state, opt_state, progress = load_checkpoint(ckpt)
    state = {"model": model_state, "optimizer": opt_state, "progress": progress}
    history = [dict(r) for r in progress["history"]]
    if progress.get("finished") and not (path / "model.json").is_file():
        # stopped after the last epoch but before the model was written: just finish it
        log(f"finishing {path}: training was complete, writing the model")
        return cfg, path, state, history
    if not progress.get("finished"):
        if changes.get("epochs") is not None or changes.get("steps") is not None:
            raise MinivisionError(f"{path} was interrupted; resume it as it was, without --epochs/--steps")
        log(f"resuming {path} at epoch {progress['epoch'] + 1}, step {progress['step_in_epoch']}")
        return cfg, path, state, history
    # Finished: extend, keeping the original run folder untouched.
    done = len(history)
    counted, what = done, "epoch(s)"
    if progress.get("pretrained", {}).get("phases"):  # a fine-tune: --epochs N = N epochs of every layer in all
        counted, what = finetune.epochs_counted(progress["pretrained"])
    if changes.get("epochs") is None or changes["epochs"] <= counted:
        raise MinivisionError(f"{path} already finished {counted} {what}; extend it with --resume {path} "
                              f"--epochs N (N > {counted}{'' if what == 'epoch(s)' else ': ' + what + ' in all'})")
    # a run planned by steps or a budget continues by epochs from here
    cfg = dataclasses.replace(cfg, epochs=changes["epochs"], steps=None, budget=None)
    run_dir = new_run_dir(path.parent, path.name) if main else None
    if run_dir is not None:
        write_args(run_dir, cfg)
    progress["finished"] = False
    if what == "epoch(s)":
        log(f"extending {path} from {done} to {cfg.epochs} epochs in {run_dir}")
    else:
        log(f"extending {path} from {counted} to {cfg.epochs} {what} ({done} to {done + cfg.epochs - counted} "
            f"epochs in all) in {run_dir}")
    return cfg, run_dir, state, history


class Trainer:
    """One training run: the loop, its state (what the checkpoint saves) and its listeners.

    Read top to bottom, ``run`` is: per epoch, seed the epoch's random streams (from (seed, epoch), or
    the checkpoint's mid-epoch state), ``_train_epoch`` (steps; ``on_step_end`` after each), then
    ``_end_epoch`` (validation, the history row, ``on_epoch_end``). ``finish`` scores the best weights,
    writes model.json and calls ``on_fit_end``. What listeners may read: ``cfg``, ``ds``, ``model``,
    ``pre``, ``opt``, ``run_dir``, ``meta``, ``history``, ``epoch``/``epochs``, ``step``/``total_steps``,
    ``batches_per_epoch``, ``improved`` (this epoch set a new best), ``interrupted``, ``scored``."""

    def __init__(self, cfg, ds, model, pre, optimizer, device, precision, run_dir, meta, history, log, progress,
                 listeners: list[Listener] | None = None, phases: list[finetune.Phase] | None = None,
                 world: Any = None):
        """``phases`` (a fine-tune, ``finetune.phases``): the run's epochs in phases, each with its own
        frozen layers, optimizer, peak rate and schedule; phase "head" trains on cached features.
        ``world`` (``distributed.World``, several processes): this rank trains its share of every global batch
        through ``DistributedDataParallel`` (``net``); ``model`` stays the plain network listeners read."""
        from . import distributed

        self.world = world if world is not None else distributed.World()
        self.net: nn.Module = model
        if self.world.active:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        self._agreed_stop: str | None = None  # several processes: the stop every rank agreed on
        self.lost_rank = False  # several processes: a collective failed (another rank stopped)
        self.read_precision = reading_precision("auto")  # the test pass and the kept model's figures: evaluate's
        self.cfg, self.ds, self.model, self.pre, self.opt = cfg, ds, model, pre, optimizer
        self.device, self.precision, self.run_dir, self.meta, self.log = device, precision, run_dir, meta, log
        self.val_precision = validation_precision(precision)
        self.history = history
        self.progress = progress
        self.listeners: list[Listener] = list(listeners or [])
        # the end-of-training report (which draws results.png too) needs a test or validation split
        self.report_follows = any(s is not None and len(s) for s in (ds.test, ds.val))
        self.augment = Augment.parse(cfg.augment)
        self.x = ds.train.x.to(device)
        self.y = ds.train.y.to(device)
        self.class_weight = imbalance.loss_weights(cfg.class_weight, ds.train.y, ds.num_classes, device)
        n, bs = len(self.y), cfg.batch_size
        if n == 0:
            raise MinivisionError("the training split is empty")
        self.batches_per_epoch = distributed.batches_per_epoch(n, bs, self.world.size)
        self.phases = list(phases or [])
        self.phase: int | None = None  # index into phases of the one set up (optimizer, frozen layers)
        self.features: torch.Tensor | None = None  # cached training features (phase "head")
        self.val_features: torch.Tensor | None = None
        if self.phases:
            self.epochs = sum(p.epochs for p in self.phases)
            self.total_steps = self.epochs * self.batches_per_epoch
        elif cfg.steps is not None:
            self.total_steps = cfg.steps
            self.epochs = math.ceil(cfg.steps / self.batches_per_epoch)
        else:
            self.epochs = cfg.epochs
            self.total_steps = cfg.epochs * self.batches_per_epoch
        self.epoch, self.step_in_epoch, self.step = len(history), 0, len(history) * self.batches_per_epoch
        self.best_val = max((r["val_accuracy"] for r in history if not math.isnan(r["val_accuracy"])),
                            default=-1.0)
        # (features, logits) of the best epoch's validation pass, the weights best.safetensors holds: the
        # statistics after training (_fit_trust) reuse them instead of a second pass; None after a resume or
        # when that epoch scored cached features (phase "head")
        self.best_val_outputs: tuple[torch.Tensor, torch.Tensor] | None = None
        # loss sum, correct, count within the epoch; one tensor added to in step order, so a resumed
        # epoch sums in exactly the same order as an uninterrupted one
        self.sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        self.epoch_seconds = 0.0
        self._t0: float | None = None  # perf_counter at the (resumed) start of the current epoch
        self.rng_resume: dict[str, torch.Tensor] | None = None
        self.replans = 0
        self.improved = False
        self.interrupted = False
        self.scored: tuple[str, Split, torch.Tensor] | None = None
        self.scored_tta: torch.Tensor | None = None  # the scored split's logits with the model's test-time views
        self._stop_at: str | None = None
        # (when the budget ends, the clock it is read on): set for a budget run whose planner re-plans, so its
        # epoch lines say the time left instead of a planned total that moves (epoch 7/13, then 8/10)
        self.budget_end: tuple[float, Callable[[], float]] | None = None
        self.epoch_lines = EpochLines()  # short epochs: a line every few seconds, not hundreds a second
        self.epoch_notes: list[str] = []  # lines a listener logs after this epoch's line (EarlyStopping's stop)
        # the last EXPLODED_STEPS steps as [exploded 0/1, correct, images, loss] (see EXPLODED_LOSS)
        self.exploding: list[list[float]] = []

    def restore(self, state: dict[str, Any]) -> None:
        p = state["progress"]
        self.model.load_state_dict(state["model"])
        if self.phases:  # the optimizer saved is the one of the phase of the last step taken
            self._enter_phase(self.phase_of(p["epoch"] if p["step_in_epoch"] else max(p["epoch"] - 1, 0)))
        self.opt.load_state_dict(state["optimizer"])
        self.epoch, self.step_in_epoch, self.step = p["epoch"], p["step_in_epoch"], p["step"]
        self.best_val = p["best_val"]
        self.sums = torch.tensor(p["sums"], dtype=torch.float64, device=self.device)
        self.epoch_seconds = p["epoch_seconds"]
        window = p.get("exploding", [])
        self.exploding = [list(w) for w in window if isinstance(w, list) and len(w) == 4]  # older files: counters
        if "total_steps" in p and self.cfg.budget is not None and self.cfg.epochs is None:
            self.set_total_steps(p["total_steps"])  # a budget run resumes with the step count it had planned
        if self.step_in_epoch:
            self.rng_resume = p["rng"]

    # -- what listeners call

    def stop(self, at: str = "step") -> None:
        """Stop cleanly: ``"step"`` after the current step, with a checkpoint (resume it like a Ctrl-C'd run);
        ``"epoch"`` at the end of the current epoch, finishing the run normally (model, report)."""
        if at not in ("step", "epoch"):
            raise ValueError(f"stop(at=...) takes 'step' or 'epoch', not {at!r}")
        if self._stop_at != "step":
            self._stop_at = at

    # -- several processes (distributed.py): every decision that changes the loop is agreed by all ranks

    def _stopping(self, flag: _StopFlag) -> bool:
        """Stop before the next step: a signal or stop("step") here, or, with several processes, one that
        every rank agreed on (each rank's request travels with the step's figures: ``_agree_step``)."""
        if self.world.active:
            return self._agreed_stop == "step"
        return flag.stop or self._stop_at == "step"

    def _requests(self, flag: _StopFlag) -> list[float]:
        return [float(flag.stop or self._stop_at == "step"), float(self._stop_at == "epoch")]

    def _agree(self, requests: torch.Tensor) -> None:
        step, epoch = float(requests[0]), float(requests[1])
        if step > 0:
            self._agreed_stop = self._stop_at = "step"
        elif epoch > 0 and self._agreed_stop is None:
            self._agreed_stop = self._stop_at = "epoch"

    def _agree_step(self, step_sums: torch.Tensor, flag: _StopFlag) -> torch.Tensor:
        """The step's loss sum, right answers and pictures summed over the ranks, and the stop requests
        agreed (one all-reduce a step, before the optimizer step: when a rank is lost here, the state is the
        last step's)."""
        from . import distributed

        both = torch.cat([step_sums, torch.tensor(self._requests(flag), dtype=torch.float64, device=self.device)])
        distributed.all_reduce(both)
        self._agree(both[3:])
        return both[:3]

    def _agree_at_epoch_end(self, flag: _StopFlag) -> None:
        """Stop requests made during validation or by a listener's ``on_epoch_end`` (several processes)."""
        from . import distributed

        if self.world.active:
            requests = torch.tensor(self._requests(flag), dtype=torch.float64, device=self.device)
            self._agree(distributed.all_reduce(requests))

    def _seed_step(self, i: int) -> None:
        """Several processes: this rank's augmentation and dropout streams at step ``i`` of the epoch."""
        seed, rank = self.cfg.seed, self.world.rank
        self.aug_gen.manual_seed(_rank_seed(seed, self.epoch, i, rank, 1))
        torch.manual_seed(_rank_seed(seed, self.epoch, i, rank, 2))

    def leave_world(self) -> None:
        """Several processes, after the loop: drop ``DistributedDataParallel`` (its reducer holds the process
        group and the gradient hooks) while the group and the interpreter are alive, wait for every rank
        (unless one was lost), then leave the group. A reducer left to the interpreter's exit can take the
        process down with it (SIGABRT), and the launcher then stops rank 0 before it has finished."""
        from . import distributed

        if not self.world.active:
            return
        self.net = self.model
        gc.collect()
        distributed.teardown(wait=not self.lost_rank)

    def _sync_buffers(self) -> None:
        """Rank 0's buffers (batch-norm running statistics) on every rank before validation: each rank's
        forward updated them on its own part of the last batch."""
        import torch.distributed as dist

        for buffer in self.model.buffers():
            dist.broadcast(buffer, 0)

    def agree_total_steps(self, total: int | None) -> int | None:
        """A budget plan every rank takes: the smallest of the ranks' (the slowest rank's); None while no
        rank has one. One process: ``total`` unchanged."""
        if not self.world.active:
            return total
        from . import distributed

        t = torch.tensor([math.inf if total is None else float(total)], dtype=torch.float64, device=self.device)
        distributed.all_reduce(t, "min")
        return None if math.isinf(float(t.item())) else int(t.item())

    def set_total_steps(self, total: int) -> None:
        """Re-plan the run's length (the learning-rate schedule follows); never below the steps done."""
        self.total_steps = max(total, self.step)
        self.epochs = math.ceil(self.total_steps / self.batches_per_epoch)

    def save_checkpoint(self, finished: bool = False) -> None:
        """``last.safetensors``: model, optimizer, progress and random states, enough to resume bit for bit."""
        if self._t0 is not None:
            self.epoch_seconds = time.perf_counter() - self._t0
        rng = {"torch": torch.get_rng_state(), "augment": self.aug_gen.get_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        progress = {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "step": self.step,
                    "best_val": self.best_val, "sums": self.sums.tolist(), "epoch_seconds": self.epoch_seconds,
                    "total_steps": self.total_steps, "exploding": self.exploding,
                    "history": self.history, "finished": finished, "preprocess": self.pre.to_dict(), "rng": rng}
        if "pretrained" in self.meta:  # a resume rebuilds the phases from it
            progress["pretrained"] = self.meta["pretrained"]
        save_checkpoint(self.run_dir / "last.safetensors", self.model, self.opt, progress)

    def _emit(self, event: str, *args: Any) -> None:
        for listener in self.listeners:
            getattr(listener, event)(self, *args)

    # -- phases (a fine-tune)

    def phase_of(self, epoch: int) -> int:
        """Index of the phase epoch ``epoch`` (0-based) belongs to; the last phase takes any epochs beyond."""
        end = 0
        for i, p in enumerate(self.phases):
            end += p.epochs
            if epoch < end:
                return i
        return len(self.phases) - 1

    def _phase_start(self, i: int) -> int:
        """The step phase ``i`` starts at."""
        return sum(p.epochs for p in self.phases[:i]) * self.batches_per_epoch

    def _enter_phase(self, i: int) -> None:
        """Set up phase ``i``: frozen or trainable layers, a new optimizer over the trainable ones with the
        phase's per-group rates, no augmentation on cached features, and the features cached (once)."""
        from .optim import make_optimizer

        ph = self.phases[i]
        finetune.set_frozen(self.model, ph.cached)
        self.opt = make_optimizer(dataclasses.replace(self.cfg, lr=ph.lr), self.model, ph.lr_scales)
        self.augment = Augment.parse("" if ph.cached else self.cfg.augment)
        if ph.cached and self.features is None:
            t0 = time.perf_counter()
            kw = {"device": self.device, "precision": self.precision}
            self.features = finetune.compute_features(self.model, self.pre, self.x, **kw)
            if self.ds.val is not None and len(self.ds.val):
                self.val_features = finetune.compute_features(self.model, self.pre, self.ds.val.x, **kw)
            n = len(self.features) + (len(self.val_features) if self.val_features is not None else 0)
            self.log(f"phase {ph.name}: features of {n:,} pictures cached ({n * self.model.num_features * 4 / 1e6:.1f} "
                     f"MB) in {time.perf_counter() - t0:.1f}s" + (f"; no augmentation on them ({self.cfg.augment})"
                                                                 if self.cfg.augment else ""))
        if not ph.cached:
            self.features = self.val_features = None  # the backbone changes from here
        self.phase = i

    def lr_now(self, step: int) -> float:
        """The base learning rate at optimizer step ``step`` (each group multiplies its ``lr_scale``): the
        schedule over the whole run, or over the current phase's own steps at its peak rate."""
        if not self.phases:
            return lr_at(step, self.total_steps, self.cfg.lr, self.cfg.schedule)
        i = self.phase_of(step // self.batches_per_epoch)
        start = self._phase_start(i)
        end = self.total_steps if i == len(self.phases) - 1 else self._phase_start(i + 1)
        ph = self.phases[i]
        return lr_at(step - start, max(end - start, 1), ph.lr, ph.schedule)

    def _forward(self, xb: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Logits of a training batch: the network's, or on cached features (phase "head") its head's."""
        if self.features is not None:
            return self.model.forward_head(self.features[idx])
        return self.net(xb)

    # -- the loop

    def run(self) -> bool:
        """Train to the end; return True if stopped by a signal or a listener's stop("step") (checkpoint saved)."""
        cfg = self.cfg
        self.model.train()
        self._emit("on_fit_start")
        with _StopFlag() as flag:
            while self.epoch < self.epochs:
                e = self.epoch
                if self.phases and self.phase != self.phase_of(e):
                    self._enter_phase(self.phase_of(e))
                if self.phases:
                    finetune.train_mode(self.model)
                perm = imbalance.epoch_order(cfg.sampler, self.ds.train.y, self.ds.num_classes,
                                             torch.Generator().manual_seed(_epoch_seed(cfg.seed, e, 0)))
                perm = perm.to(self.device)
                self.aug_gen = torch.Generator(device=self.device).manual_seed(_epoch_seed(cfg.seed, e, 1))
                torch.manual_seed(_epoch_seed(cfg.seed, e, 2))
                if self.rng_resume is not None:
                    torch.set_rng_state(self.rng_resume["torch"])
                    self.aug_gen.set_state(self.rng_resume["augment"])
                    if "cuda" in self.rng_resume and self.device.type == "cuda":
                        torch.cuda.set_rng_state(self.rng_resume["cuda"], self.device)
                    self.rng_resume = None
                lost = None
                try:
                    stopped = self._train_epoch(perm, flag)
                    if not stopped:
                        self._end_epoch()
                        self._agree_at_epoch_end(flag)
                except RuntimeError as err:  # several processes: another one stopped (killed, crashed)
                    from . import distributed

                    if not (self.world.active and distributed.is_lost_rank(err)):
                        raise
                    stopped, lost = True, True  # the backend's own text speaks to developers
                    self.lost_rank = True
                if stopped:
                    self.interrupted = True
                    why = "interrupted" if lost is None else "another training process stopped; this one stopped"
                    self.log(f"\n{why} at epoch {e + 1}, step {self.step_in_epoch}; checkpoint saved. "
                             f"Resume with: minivision train --resume {self.run_dir}")
                    self._emit("on_fit_end")  # Checkpoints saves last.safetensors here
                    return True
                if (self._agreed_stop if self.world.active else self._stop_at) == "epoch" and self.epoch < self.epochs:
                    self.log(f"stopped by a listener after epoch {self.epoch}")
                    self.set_total_steps(self.step)
        return False

    def _batches_this_epoch(self) -> int:
        return min(self.batches_per_epoch, self.total_steps - self.epoch * self.batches_per_epoch)

    def _train_epoch(self, perm: torch.Tensor, flag: _StopFlag) -> bool:
        """The steps of one epoch; True when stopped (a signal or stop("step")) before its end."""
        cfg, bs = self.cfg, self.cfg.batch_size
        bar = tqdm(total=self._batches_this_epoch(), initial=self.step_in_epoch,
                   desc=self.epoch_label(self.epoch + 1), leave=False, unit="batch",
                   disable=None if self.progress is None else not self.progress, dynamic_ncols=True)
        self._t0 = time.perf_counter() - self.epoch_seconds
        autocast = self.precision == "bf16"
        try:
            while self.step_in_epoch < self._batches_this_epoch():
                if self._stopping(flag):
                    return True
                i = self.step_in_epoch
                whole = perm[i * bs:(i + 1) * bs]
                idx = whole[self.world.rank::self.world.size]  # this rank's part (all of it in one process)
                if self.world.active:
                    self._seed_step(i)
                xb = self.augment(self.pre(self.x[idx]), self.aug_gen, self.pre)
                yb = self.y[idx]
                # mixup/cutmix: soft targets (label smoothing still applies on top); the epoch's training
                # accuracy counts against the original labels, the loss against the mixed targets
                target = yb
                if self.augment.mixes:
                    xb, target = self.augment.mix(xb, yb, self.ds.num_classes, self.aug_gen)
                lr = self.lr_now(self.step)
                for group in self.opt.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast):
                    logits = self._forward(xb, idx)
                loss = F.cross_entropy(logits.float(), target, weight=self.class_weight,
                                       label_smoothing=cfg.label_smoothing)
                if not torch.isfinite(loss):
                    raise TrainingFailed(f"training failed at epoch {self.epoch + 1}, step {self.step_in_epoch + 1}: "
                                         f"the loss became {loss.item()}: {self._lr_hint()}")
                self.opt.zero_grad(set_to_none=True)
                # several processes: each rank's loss weighted by its share of the global batch, so the mean that
                # DistributedDataParallel takes of the ranks' gradients is the global batch's
                (loss * (len(idx) * self.world.size / len(whole)) if self.world.active else loss).backward()
                with torch.no_grad():
                    # history records the plain cross-entropy, comparable with the validation loss
                    plain = loss.detach() if not cfg.label_smoothing and self.class_weight is None \
                        else F.cross_entropy(logits.detach().float(), target)
                    right = (logits.argmax(1) == yb).sum()
                    step_sums = torch.stack([plain.double() * len(yb), right.double(),
                                             torch.tensor(float(len(yb)), device=self.device, dtype=torch.float64)])
                if self.world.active:  # the global batch's figures and the stop, agreed before anything changes
                    step_sums = self._agree_step(step_sums, flag)
                self.opt.step()
                self.sums += step_sums
                self.step_in_epoch += 1
                self.step += 1
                if self.world.active:
                    self._check_explosion(float(step_sums[0] / step_sums[2]), int(step_sums[1]), int(step_sums[2]))
                else:
                    self._check_explosion(plain.item(), int(right), len(yb))
                self._emit("on_step_end")
                n_batches = self._batches_this_epoch()
                if self.step_in_epoch % 20 == 0 or self.step_in_epoch >= n_batches:
                    s = self.sums.tolist()
                    bar.total = n_batches
                    bar.set_postfix_str(f"loss {s[0] / s[2]:.4f} acc {s[1] / s[2]:.2%}", refresh=False)
                    bar.update(self.step_in_epoch - bar.n)
        finally:
            bar.close()
            self.epoch_seconds = time.perf_counter() - self._t0
            self._t0 = None
        return False

    def _check_explosion(self, loss: float, correct: int, n: int) -> None:
        """Stop with TrainingFailed when the loss has exploded at chance accuracy (the rule beside
        EXPLODED_LOSS): ``loss``, ``correct`` and ``n`` are this step's mean loss, right answers and images."""
        k = max(self.ds.num_classes, 2)
        window = max(1, min(EXPLODED_STEPS, self.batches_per_epoch))
        self.exploding = (self.exploding + [[int(loss > EXPLODED_LOSS * math.log(k)), correct, n, loss]])[-window:]
        exploded = [w for w in self.exploding if w[0]]
        if not exploded or 2 * len(exploded) < window:
            return
        right, seen = sum(w[1] for w in exploded), sum(w[2] for w in exploded)
        if right / seen < EXPLODED_ACC / k:
            biggest = max(w[3] for w in exploded)
            raise TrainingFailed(f"training failed at epoch {self.epoch + 1}, step {self.step_in_epoch}: the loss "
                                 f"grew to {biggest:.3g} (from about {math.log(k):.2f} at the start) at chance "
                                 f"accuracy ({right / seen:.0%}) in {len(exploded)} of the last {len(self.exploding)} "
                                 f"steps: {self._lr_hint()}")

    def _lr_hint(self) -> str:
        """What to change after the loss blew up: the model's recipe learning rate when the run's is above it,
        else a tenth of the run's."""
        lr = self.cfg.lr
        recipe = model_info(self.cfg.model).defaults.get("lr") if self.cfg.model else None
        better = recipe if isinstance(recipe, (int, float)) and recipe < lr else lr / 10
        return f"the learning rate {lr:g} is too high; try --lr {better:g}"

    def epoch_label(self, n: int, total: int | None = None) -> str:
        """``epoch n/N`` (N: ``total``, else the planned epochs); in a budget run whose plan still moves,
        ``epoch n · 1m12s left`` (the time until the budget ends) until the last epoch, which reads ``epoch N/N``."""
        total = self.epochs if total is None else total
        if self.phases:
            return f"epoch {n}/{total} {self.phases[self.phase_of(n - 1)].name}"
        if self.budget_end is None or (n >= self.epochs and n == self.epoch):
            return f"epoch {n}/{total}"
        end, clock = self.budget_end
        return f"epoch {n} · {format_duration(max(end - clock(), 0.0))} left"

    def _end_epoch(self) -> None:
        """Validation, the history row, the best-epoch rule; then ``on_epoch_end``."""
        if self.world.active:
            self._sync_buffers()
        loss_sum, correct, count = self.sums.tolist()
        val_loss = val_acc = float("nan")
        val_outputs = None
        t_val = time.perf_counter()
        if self.val_features is not None:  # phase "head": the head on the cached validation features
            with torch.inference_mode():
                logits = self.model.forward_head(self.val_features).float().cpu()
            val_loss, val_acc = loss_and_accuracy(logits, self.ds.val.y)
        elif self.ds.val is not None and len(self.ds.val):
            if self.val_precision == self.read_precision:
                # the logits are forward()'s bit for bit (forward is forward_head(forward_features(x))); the
                # features come with them at no extra pass, for the calibration of the best epoch
                val_outputs = predict_features(self.model, self.pre, self.ds.val.x, device=self.device,
                                               precision=self.read_precision)
                val_loss, val_acc = loss_and_accuracy(val_outputs[1], self.ds.val.y)
            else:  # the training precision (bf16); finish() scores the kept model again in read_precision
                val_loss, val_acc = loss_and_accuracy(
                    predict_logits(self.model, self.pre, self.ds.val.x, device=self.device,
                                   precision=self.val_precision), self.ds.val.y)
        if self.phases:
            finetune.train_mode(self.model)
        # like Keras' epoch time: the validation pass counts as part of the epoch
        self.epoch_seconds += time.perf_counter() - t_val
        row = {"epoch": self.epoch + 1, "train_loss": loss_sum / count, "train_accuracy": correct / count,
               "val_loss": val_loss, "val_accuracy": val_acc,
               "lr": self.lr_now(max(self.step - 1, 0)),
               "seconds": round(self.epoch_seconds, 3)}
        if self.phases:
            row["phase"] = self.phases[self.phase_of(self.epoch)].name
        self.history.append(row)
        # a last epoch the plan cut short (a budget, --steps) says so on its line
        short = (f" ({self.step_in_epoch:,} of {self.batches_per_epoch:,} steps)"
                 if 0 < self.step_in_epoch < self.batches_per_epoch else "")
        self.epoch += 1
        self.step_in_epoch = 0
        self.sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        self.epoch_seconds = 0.0
        no_val = math.isnan(val_acc)
        # best = highest validation accuracy, ties broken by the lower validation loss (on a small or easy
        # validation split many epochs tie at the top accuracy; the later, more confident one is kept)
        tied_loss = min((r["val_loss"] for r in self.history[:-1] if r["val_accuracy"] == self.best_val),
                        default=math.inf)
        self.improved = not no_val and (val_acc > self.best_val or (val_acc == self.best_val and val_loss < tied_loss))
        if self.cfg.patience is not None:  # early stopping: the best epoch is the lowest validation loss (as Keras)
            self.improved = not no_val and val_loss < min((r["val_loss"] for r in self.history[:-1]), default=math.inf)
        if self.improved:
            self.best_val = val_acc
            self.best_val_outputs = val_outputs
        planned = self.epochs  # an early stop (on_epoch_end) shortens the run; the epoch's line keeps the plan
        self._emit("on_epoch_end", row)
        val = f"val loss {val_loss:.4f} acc {val_acc:.2%}" if not no_val else "no validation split"
        label = self.epoch_label(row["epoch"], planned if self.epoch_notes else None)
        text = (f"{label}{short}  train loss {row['train_loss']:.4f} acc "
                f"{row['train_accuracy']:.2%}  {val}  lr {row['lr']:.2e}  {row['seconds']:.1f}s"
                + ("  *" if self.improved else ""))
        for line in self.epoch_lines.lines(text, val_acc, first=len(self.history) == 1, last=self.epoch >= self.epochs):
            self.log(line)
        for line in self.epoch_notes:
            self.log(line)
        self.epoch_notes.clear()

    # -- the end

    def finish(self) -> dict[str, Any]:
        """Keep the best-validation weights as the run's model, score them on the test split (else the
        validation split), write model.json, then ``on_fit_end`` (the report, TensorBoard's pictures)."""
        from .fileio import load_tensors

        ds = self.ds
        best = self.run_dir / "best.safetensors"
        kept_best = best.is_file()
        if kept_best:
            self.model.load_state_dict(load_tensors(best))
        val_fp: tuple[float, float] | None = None  # the kept model's validation (loss, accuracy) in read_precision
        if self.val_precision != self.read_precision and ds.val is not None and len(ds.val) and self.history:
            # the epochs' validation passes ran in the training precision: the calibration, the unsure
            # statistics and model.json's validation figures take the kept weights in read_precision, as
            # ``evaluate --split val`` gives them
            self.best_val_outputs = predict_features(self.model, self.pre, ds.val.x, device=self.device,
                                                     precision=self.read_precision)
            val_fp = loss_and_accuracy(self.best_val_outputs[1], ds.val.y)
        test: dict[str, Any] = {}
        if ds.test is not None and len(ds.test):
            logits = predict_logits(self.model, self.pre, ds.test.x, device=self.device, precision=self.read_precision)
            loss, acc = loss_and_accuracy(logits, ds.test.y)
            test = {"test_loss": loss, "test_accuracy": acc, "test_n": len(ds.test)}
            self.scored = ("test", ds.test, logits)
            mode = tta_mode(self.meta.get("tta"), None)
            if mode != "none":  # the model answers with test-time views: its accuracy with them, beside
                # the picture's own pass is done (logits): only the other views go through the network
                others = view_logits(self.model, self.pre, ds.test.x, mode, device=self.device,
                                     precision=self.read_precision, first=False)
                tta_logits = mean_view_logits(torch.cat([logits[None], others]))
                tta_loss, tta_acc = loss_and_accuracy(tta_logits, ds.test.y)
                test.update(test_accuracy_tta=tta_acc, test_loss_tta=tta_loss, tta=mode)
                self.scored_tta = tta_logits
        elif ds.val is not None and len(ds.val):
            # the kept weights' fp32 logits, when the bf16 epochs made finish() compute them above
            self.scored = ("validation", ds.val, self.best_val_outputs[1] if val_fp is not None else
                           predict_logits(self.model, self.pre, ds.val.x, device=self.device,
                                          precision=self.read_precision))
        best_row = max(self.history, key=lambda r: (-1.0, 0.0) if math.isnan(r["val_accuracy"])
                       else (r["val_accuracy"], -r["val_loss"]) if self.cfg.patience is None
                       else (-r["val_loss"], -r["epoch"]))  # early stopping: the first lowest validation loss
        val_accuracy = val_fp[1] if val_fp is not None and kept_best else best_row["val_accuracy"]
        metrics = {"epochs": len(self.history), "best_epoch": best_row["epoch"],
                   "val_accuracy": val_accuracy, **{k: v for k, v in test.items() if k != "tta"},
                   "train_seconds": round(sum(r["seconds"] for r in self.history), 2)}
        if "budget" in self.meta:
            self.meta["budget"].update(total_steps=self.total_steps, replans=self.replans)
        self.meta["metrics"] = metrics
        self.meta["created"] = datetime.now(UTC).isoformat(timespec="seconds")
        self._fit_trust()
        scored = ds.test if ds.test is not None and len(ds.test) else ds.val
        if save_examples(self.run_dir, scored, ds.num_classes) is not None:
            self.meta["examples"] = {"file": "examples.safetensors", "split": self.scored[0] if self.scored else None}
        save_model(self.run_dir, self.model, self.meta)
        self._emit("on_fit_end")
        return test

    def _fit_trust(self) -> None:
        """Temperature scaling and the unsure-answer statistics on the validation split (trust.py), into
        ``meta`` and trust.safetensors; a run without a validation split keeps T = 1 (a note says so)."""
        from . import trust

        if self.ds.val is None or not len(self.ds.val):
            self.log("note: no validation split: scores are not calibrated and only empty or low-confidence "
                     "pictures are marked unsure")
            return
        cal, unsure, stats = trust.fit_for_model(self.model, self.pre, self.ds.train, self.ds.val,
                                                 self.ds.num_classes, device=self.device, precision=self.read_precision,
                                                 val_outputs=self.best_val_outputs,
                                                 tta=tta_mode(self.meta.get("tta"), None))
        trust.apply(self.meta, self.run_dir, cal, unsure, stats)
        self.log(f"calibration (validation split): {trust.describe(cal)}")
