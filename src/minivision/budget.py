"""``--budget``: a wall-clock time for the whole run; minivision picks the network and step count.

How a budget is spent (``fit`` calls these):

1. ``parse_duration`` turns ``30s``, ``3m``, ``1h30m`` or ``90`` (seconds) into seconds.
2. ``plan_budget`` walks ``LADDER`` from the smallest network up: it times a few training steps of
   each on the real data, at the batch it would train with (the median step: ``probe_step_seconds``),
   and keeps the largest one that can still do its ``min_epochs`` in the time left. Larger networks
   reach higher accuracy, but only once they get enough epochs; below that a smaller network trained
   longer wins (measured on Fashion-MNIST, see docs/BENCHMARKS.md).
   Colour pictures walk ``COLOUR_LADDER`` (``ladder_for``), where mvnet takes over sooner (measured
   on CIFAR-10) and a short run keeps its recipe's augmentation.
   It stops probing at the first network that does not fit, so a 30-second run times one extra
   network for a fraction of a second. The ladders' epochs are those of the dataset each was
   measured on (Fashion-MNIST, CIFAR-10): a smaller dataset needs as many images seen, so
   ``small_data_scale`` multiplies them (``plan_small_data``: one rule for ``minivision train`` and
   the training-jobs API, whose uploads are small: 1,000 pictures get the smallest network, trained
   for many epochs, not the largest for a few). A small dataset also gets batches of at most a
   quarter of its images.
3. ``Planner`` (driven by the trainer's ``listeners.BudgetPlanner``) turns the time left into a step
   count: after a few timed steps of the real loop (augmentation included), at every epoch end
   (when the validation cost is known) and at half way, it re-plans ``total = steps done + time
   left / seconds per step``, keeping back the validation passes still to come and the final test
   pass and file writes. Seconds per step are the slower of the mean since the warm-up and the last
   steps' mean (a machine that slows down is planned on its current speed), and the files' reserve
   grows with a slow start-up (``Planner.REPORT_PER_STARTUP``). The one-cycle schedule is a function
   of ``step / total``, so it always ends at its lowest rate on time.

A budget run is reproducible in its settings (args.yaml) but not to the step: the step count
depends on the machine's speed at the time. An interrupted budget run resumes with the step count
it had planned.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .config import TrainConfig, resolve
from .errors import MinivisionError
from .models import create_model, model_info
from .optim import make_optimizer
from .preprocess import Preprocess

if TYPE_CHECKING:
    from .data.dataset import Dataset

DEFAULT_BUDGET_S = 30.0  # `minivision train` with no flags
MAX_BUDGET_S = 7 * 24 * 3600.0

_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hr": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(sec|min|hr|s|m|h|d)")


def parse_duration(text: str | float | int) -> float:
    """Seconds in ``30s``, ``3m``, ``1.5h``, ``1h30m``, ``2m30s`` or a bare number of seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        s = str(text).strip().lower()
        try:
            seconds = float(s)
        except ValueError:
            parts = _PART.findall(s)
            if not parts or _PART.sub("", s).strip():
                raise MinivisionError(
                    f"--budget: expected a duration like 30s, 3m, 1h30m or 90, got {text!r}") from None
            seconds = sum(float(v) * _UNITS[u] for v, u in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise MinivisionError(f"--budget must be more than 0 seconds, got {text!r}")
    if seconds > MAX_BUDGET_S:
        raise MinivisionError(f"--budget must be at most 7 days, got {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    m, s = divmod(seconds, 60)
    if m < 60:
        return f"{m}m{s:02d}s" if s else f"{m}m"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


@dataclass(frozen=True)
class Rung:
    model: str
    min_epochs: float  # fewer epochs than this and the next smaller network does better


# Smallest to largest. Evidence (Fashion-MNIST, 2-core VM, plain loop, batch 128, no augmentation,
# ~3 minutes of training): mvnet-t 92.83% (10.8 epochs), mvnet-t at width 1.5 93.04% (7.2 epochs),
# mvnet-s 93.09% (7.2 epochs): at ~7 epochs mvnet-s ties a smaller network trained longer, so it
# takes over from 6 epochs. mvnet (3x mvnet-s's compute) from 8 epochs: on a CPU with AVX-512 BF16
# (seeds 0, 1, 2, plain images at batch 128), mvnet for 8 epochs reached 94.12 / 93.93 / 93.82% test
# accuracy and in 3 minutes (8.6-10.1 epochs) 93.97 / 94.11 / 93.86%, where the 3-minute budget's mvnet-s
# (16-17 epochs) reached 93.31 / 93.24 / 93.56%; fewer than 8 epochs of it are not measured.
# mvnet-l from 30 epochs: in 30 minutes on the same CPU (seed 0), mvnet-l trained 32 epochs to 94.70% test
# accuracy where mvnet trained 69-71 to 94.32-94.46%; fewer than 30 epochs of it are not measured.
LADDER: tuple[Rung, ...] = (
    Rung("mvnet-t", 0.0),
    Rung("mvnet-s", 6.0),
    Rung("mvnet", 8.0),
    Rung("mvnet-l", 30.0),
)

# Colour pictures (three channels: CIFAR-10, most photo folders) under-fit a small network sooner: on the
# CIFAR-10 JPEG folder in 15 minutes, mvnet for 10 epochs (flip + shift 2, batch 256) reached 84.82%
# test accuracy where mvnet-s for 28 epochs reached 83.27% (2-core VM, one seed each). So on colour data
# mvnet takes over from 6 epochs, and a budget run keeps its recipe's augmentation and batch size (the
# run above), instead of the plain images that suit short Fashion-MNIST runs. mvnet-l from 14 epochs: on a
# CPU with AVX-512 BF16 (AMD EPYC, Zen 5, seed 0), mvnet-l in 11 minutes (14.6 epochs) reached 89.39% test
# accuracy with flip TTA (88.61% alone), where the 15-minute budget's mvnet trained 45 epochs to 87.97%
# (86.64% alone); in 30 minutes mvnet-l trained 27 epochs to 89.78% (88.78% alone) where mvnet trained 67
# to 88.48% (87.26% alone); fewer than 14 epochs of it are not measured.
COLOUR_LADDER: tuple[Rung, ...] = (
    Rung("mvnet-t", 0.0),
    Rung("mvnet-s", 6.0),
    Rung("mvnet", 6.0),
    Rung("mvnet-l", 14.0),
)


def ladder_for(channels: int) -> tuple[tuple[Rung, ...], bool]:
    """(the ladder, whether short runs train on plain images) for pictures of ``channels`` channels:
    ``COLOUR_LADDER`` and the recipes' own augmentation for colour (3 channels), else ``LADDER`` and
    ``SHORT_RUN`` below ``AUGMENT_MIN_EPOCHS``."""
    if channels == 3:
        return COLOUR_LADDER, False
    return LADDER, True


# Below this many epochs, augmentation costs more than it gives: at 8-11 epochs flip+shift cost
# 0.8-1.0 points (mvnet-t: 91.84% vs 92.83%; the stem-pooled 32-64-128 net: 91.98% vs mvnet-s's
# 93.09% without). At 16-18 epochs the recipe (flip+shift, batch 256) still cost 0.2-0.5 points: mvnet-s
# in 3 minutes on a CPU with AVX-512 BF16, 93.08% and 93.01% (18 and 16 epochs) where the same seeds reached
# 93.31% and 93.24% on plain images at batch 128 (16-17 epochs; 93.57% and 93.51% in 13 on another run).
# Short budget runs train on the plain images, at batch 128 (more steps); from 20 epochs on, longer runs
# than measured side by side, the recipe's.
AUGMENT_MIN_EPOCHS = 20.0
SHORT_RUN = {"augment": "", "batch_size": 128}

# The ladder's thresholds above are epochs of Fashion-MNIST's training split as the recipes make it
# (60,000 images less mvnet's 10% for validation). A network needs about as many images seen, not
# epochs, to reach what it can: on fewer images its thresholds grow in proportion.
LADDER_TRAIN_IMAGES = 54_000
# COLOUR_LADDER's are epochs of CIFAR-10's training split, where they were measured (50,000 less 10%)
COLOUR_LADDER_TRAIN_IMAGES = 45_000
MIN_STEPS_PER_EPOCH = 4  # a small dataset's batches hold at most a quarter of its images ...
MIN_SMALL_BATCH = 8      # ... and at least this many (batch-norm statistics need a few)


# The probe of each rung times at least PROBE_STEPS training steps and, while they have taken less than
# PROBE_SHARE of the budget, more, up to PROBE_MAX_STEPS: 0.06 s of the 30-second default (three steps of
# mvnet-s), 3.6 s of 30 minutes (about twelve of mvnet-l at batch 256), so a long run's choice rests on a
# steadier figure at a cost below the noise of its end.
PROBE_STEPS = 3
PROBE_MAX_STEPS = 15
PROBE_SHARE = 0.002


def small_data_scale(n_train: int, reference: int = LADDER_TRAIN_IMAGES) -> float:
    """How many epochs of a ``n_train``-image dataset make one of the ladder's, whose epochs are of
    ``reference`` images (``LADDER_TRAIN_IMAGES``, or ``COLOUR_LADDER_TRAIN_IMAGES`` for ``COLOUR_LADDER``);
    >= 1: a larger dataset keeps the thresholds as measured."""
    return max(1.0, reference / max(1, n_train))


def small_data_batch(n_train: int, batch_size: int) -> int:
    """The batch size for ``n_train`` training images: ``batch_size`` unless that leaves fewer than
    ``MIN_STEPS_PER_EPOCH`` steps an epoch (a recipe's 256 on 900 images is 4 steps, 60 pictures 1
    step: too few updates, and the planner re-plans only after ~15 steps), and never more than the images."""
    if n_train >= MIN_STEPS_PER_EPOCH * batch_size:
        return batch_size
    return max(1, min(n_train, max(MIN_SMALL_BATCH, min(batch_size, n_train // MIN_STEPS_PER_EPOCH))))


def pick_rung(seconds_per_epoch: dict[str, float], usable_s: float, ladder: tuple[Rung, ...] = LADDER,
              epoch_scale: float = 1.0) -> str:
    """The largest network whose ``min_epochs`` (times ``epoch_scale``: ``small_data_scale``) fit in
    ``usable_s`` (pure: tested without timing).

    ``seconds_per_epoch`` holds the networks probed so far; a network missing from it ends the
    search (it was not probed because a smaller one already did not fit)."""
    chosen = ladder[0].model
    for rung in ladder:
        spe = seconds_per_epoch.get(rung.model)
        if spe is None or spe * rung.min_epochs * epoch_scale > usable_s:
            break
        chosen = rung.model
    return chosen


@dataclass
class Plan:
    """What the planner decided; recorded in the run's model.json."""

    budget_s: float
    model: str
    probed_s_per_epoch: dict[str, float]
    total_steps: int = 0
    replans: int = 0
    startup_s: float = 0.0  # seconds from the budget's start to planning (imports, reading the data)


class Planner:
    """Re-plans the total step count so training, validation, test and file writes end by ``deadline``.

    ``clock`` is injectable so tests can drive the arithmetic without timing anything."""

    FIRST_PLAN_AT = 12  # steps timed before the first plan (after WARMUP untimed ones)
    WARMUP = 3
    END_RESERVE_S = 2.5  # results.png (~1.2 s with matplotlib's import), model file, model.json, exit
    REPORT_S = 1.8  # the report beyond results.png: five pictures, per_class.csv, report.html (measured: with
    # 2.5 s the default 30 s run ended at 28.1 s, 1.9 s early; before the report it ended 1.1 s early)
    FORWARD_COST = 0.5  # an evaluation pass per image / a training step per image (measured ~0.45)
    # Kept back per second of budget for the machine's noise: the 30-minute CIFAR-10 run ended 1.8 s late
    # (2026-12-01) and another 22.8 s early, so the end's estimate moves by a few seconds in a long run.
    # 0.3% is 0.09 s of the 30-second default and 5.4 s of 30 minutes.
    NOISE_SHARE = 0.003
    # The step rate planned on is the slower of the mean since the warm-up and the mean of the last
    # RECENT_STEPS steps: a machine that slows down mid-run (a noisy 2-core VM's last epoch of the 3-minute
    # budget ran at 111 ms per step after three at 97-101 ms, and the run ended 4.2 s late, 2026-12-02) is
    # planned on its current speed, one that speeds up on its mean (ending a little early, never late).
    RECENT_STEPS = 50
    # The report and the last files are Python and matplotlib work, whose speed varies between machines as
    # the start-up's does (imports, reading the data), not as the training step's: the fixed reserve above
    # is at least REPORT_PER_STARTUP times the run's own start-up. Measured with py-spy
    # (bench/profile_train.py, the 30-second default): the report took 1.4-1.9x the imports plus the data
    # reading on three 2-core machines (5.66 / 3.58 s and 6.33 / 4.63 s on AVX2 VMs, 2.33 / 1.22 s with
    # AVX-512 BF16); on the slowest, the fixed 4.3 s left the default run 1.3-2.1 s late (2026-12-02).
    REPORT_PER_STARTUP = 1.5

    def __init__(self, deadline: float, steps_per_epoch: int, n_val: int, n_test: int, batch_size: int,
                 clock: Callable[[], float] = time.monotonic, report: bool = True, n_end: int = 0,
                 budget_s: float = 0.0, startup_s: float = 0.0) -> None:
        """``n_end``: pictures the end of training passes through the network besides the test split (the
        calibration and unsure statistics: the validation split and up to trust.STATS_PICTURES training
        pictures), counted at the evaluation rate like the test pass. ``budget_s``: the whole budget, of
        which ``NOISE_SHARE`` is kept back as well. ``startup_s``: the run's start-up before planning
        (``Plan.startup_s``), which scales the report's reserve on a slow machine (``REPORT_PER_STARTUP``)."""
        self.deadline = deadline
        self.n_end = n_end
        fixed = self.END_RESERVE_S + (self.REPORT_S if report else 0.0)
        if report:
            fixed = max(fixed, self.REPORT_PER_STARTUP * startup_s)
        self.reserve_s = fixed + self.NOISE_SHARE * budget_s
        self.steps_per_epoch = steps_per_epoch
        self.n_val, self.n_test, self.batch_size = n_val, n_test, batch_size
        self.clock = clock
        self.val_s: float | None = None  # measured cost of one validation pass (+ checkpoint)
        self._t_mark: float | None = None
        self._step_mark = 0
        self._last: tuple[int, float] | None = None  # (step, time) of the last observe
        self._paused = 0.0  # epoch pauses since the last observe
        self._recent: collections.deque[float] = collections.deque(maxlen=self.RECENT_STEPS)
        self.s_per_step: float | None = None

    def eval_seconds(self, n: int) -> float:
        """Seconds to score ``n`` images, from the training speed (FORWARD_COST per image)."""
        if self.s_per_step is None:
            return 0.0
        return n / self.batch_size * self.s_per_step * self.FORWARD_COST

    def observe(self, step: int) -> None:
        """Call after each training step with the number of steps done. The rate (``s_per_step``, seconds)
        is the slower of the mean since the warm-up and, once half of ``RECENT_STEPS`` are timed, the mean
        of the last ``RECENT_STEPS``; epoch pauses are left out of both."""
        now = self.clock()
        if self._last is not None and step > self._last[0] >= self.WARMUP:
            self._recent.append((now - self._last[1] - self._paused) / (step - self._last[0]))
        self._last, self._paused = (step, now), 0.0
        if step == self.WARMUP:
            self._t_mark, self._step_mark = now, step
        elif self._t_mark is not None and step > self._step_mark:
            mean = (now - self._t_mark) / (step - self._step_mark)
            recent = statistics.fmean(self._recent) if len(self._recent) >= self.RECENT_STEPS // 2 else 0.0
            self.s_per_step = max(mean, recent)

    def epoch_pause(self, seconds: float) -> None:
        """Time spent between epochs (validation pass, checkpoint): excluded from the step rate."""
        self.val_s = seconds
        self._paused += seconds
        if self._t_mark is not None:
            self._t_mark += seconds

    def plan(self, step: int) -> int | None:
        """Total steps that end on time given the rate so far (None until the rate is known)."""
        if self.s_per_step is None or self.s_per_step <= 0:
            return None
        left = self.deadline - self.clock() - self.reserve_s - self.eval_seconds(self.n_test + self.n_end)
        per_epoch = self.val_s if self.val_s is not None else self.eval_seconds(self.n_val) + 0.1
        # each remaining step also carries its share of the validation passes still to come
        per_step = self.s_per_step + per_epoch / self.steps_per_epoch
        return step + max(1, int(left / per_step))


# ----------------------------------------------------------------------------- picking the network and the first plan

def default_budget(cfg: TrainConfig) -> TrainConfig:
    """No model, epochs, steps or budget: the 30-second recipe. A budget given as text -> seconds."""
    if cfg.budget is not None:
        return dataclasses.replace(cfg, budget=parse_duration(cfg.budget))
    if cfg.model is None and cfg.epochs is None and cfg.steps is None:
        return dataclasses.replace(cfg, budget=DEFAULT_BUDGET_S)
    return cfg


def probe_step_seconds(cfg: TrainConfig, ds: Dataset, device: torch.device, precision: str,
                       seconds: float = 0.0, steps: int = PROBE_STEPS, max_steps: int = PROBE_MAX_STEPS) -> float:
    """Seconds per training step of ``cfg.model`` at ``cfg.batch_size`` on real images: the median of at
    least ``steps`` timed steps after one untimed one, timing more (up to ``max_steps``) while the timed
    steps have taken less than ``seconds``. The model is thrown away; the global RNG is left as it was.

    The median, not the mean: the first steps after the warm-up one are often slower than the rest (the
    allocator and oneDNN's kernels settle), by up to 2.6x (mvnet-s at batch 128 on Fashion-MNIST, AMD EPYC
    Zen 4: 65 ms, then 24-26 ms), which a mean of three steps carries into the ladder's choice."""
    rng = torch.get_rng_state()
    model = create_model(cfg.model, in_channels=ds.channels, image_size=ds.image_size,
                         num_classes=ds.num_classes, **cfg.extra).to(device).to(memory_format=torch.channels_last)
    pre = Preprocess.fit(ds.train.x[:2048], cfg.normalize)
    opt = make_optimizer(cfg, model)
    bs = min(cfg.batch_size, len(ds.train.y))
    xb, yb = pre(ds.train.x[:bs].to(device)), ds.train.y[:bs].to(device)
    timed: list[float] = []
    t0 = None  # the first step is the untimed warm-up
    while len(timed) < steps or (len(timed) < max_steps and sum(timed) < seconds):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.cross_entropy(model(xb).float(), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        t1 = _sync_time(device)
        if t0 is not None:
            timed.append(t1 - t0)
        t0 = t1
    torch.set_rng_state(rng)
    return float(statistics.median(timed))


def _sync_time(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.monotonic()


def plan_budget(user_cfg: TrainConfig, cfg: TrainConfig, ds: Dataset, device: torch.device, precision: str,
                 started: float, log: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic) -> tuple[TrainConfig, Plan]:
    """Pick the network (unless the user named one) and a first step count for ``cfg.budget``.

    ``plan_small_data`` (the ladder scaled to the dataset's size, batches of at most a quarter of it)
    applies to every budget run: the CLI's and the training-jobs API's, which names its network."""
    budget = float(cfg.budget)
    deadline = started + budget
    startup = max(0.0, clock() - started)  # imports and reading the data, on this machine
    n = len(ds.train.y)
    # keep back the final test pass and file writes, roughly; the planner refines this as it runs
    usable = lambda: (deadline - clock()) * 0.9 - Planner.END_RESERVE_S  # noqa: E731
    probed: dict[str, float] = {}
    name = user_cfg.model
    ladder, plain_short_runs = ladder_for(int(ds.train.x.shape[1]))
    scale = small_data_scale(n, COLOUR_LADDER_TRAIN_IMAGES if ladder is COLOUR_LADDER else LADDER_TRAIN_IMAGES)

    def rung_settings(model: str, short: bool) -> TrainConfig:
        """``model``'s settings for this data: its recipe, or a short run's (user flags still win: resolve()
        only fills what they left unset), with the small-data batch rule."""
        extra = {**model_info(model).defaults, **(SHORT_RUN if short else {})}
        return plan_small_data(user_cfg, resolve(dataclasses.replace(user_cfg, model=model), extra), n)

    if name is None:
        def per_epoch(c: TrainConfig) -> float:
            step_s = probe_step_seconds(c, ds, device, precision, seconds=PROBE_SHARE * budget)
            return step_s * math.ceil(n / c.batch_size)

        for rung in ladder:
            if rung.min_epochs == 0:  # always possible: no need to time it
                probed[rung.model] = 0.0
                continue
            # timed at the batch it would train with if picked: a short run's on grey pictures unless it can
            # only be picked for a run long enough for its recipe, else (and once it proves long enough) the
            # recipe's
            short = plain_short_runs and rung.min_epochs < AUGMENT_MIN_EPOCHS
            c = rung_settings(rung.model, short)
            spe = per_epoch(c)
            if short and spe * AUGMENT_MIN_EPOCHS * scale <= usable():
                recipe = rung_settings(rung.model, False)
                if recipe.batch_size != c.batch_size:
                    spe = per_epoch(recipe)
            probed[rung.model] = spe
            if spe * rung.min_epochs * scale > usable():
                break
        name = pick_rung(probed, usable(), ladder, epoch_scale=scale)
    spe = probed.get(name) or 0.0
    short = spe == 0.0 or spe * AUGMENT_MIN_EPOCHS * scale > usable()
    final = rung_settings(name, user_cfg.model is None and short and (plain_short_runs or spe == 0.0))
    final = dataclasses.replace(final, **{k: getattr(cfg, k) for k in ("data", "data_dir", "test_data")})
    plan = Plan(budget_s=budget, model=name, probed_s_per_epoch={k: round(v, 3) for k, v in probed.items() if v},
                startup_s=round(startup, 3))
    explicit = user_cfg.epochs is not None or user_cfg.steps is not None
    if explicit:
        log(f"budget {format_duration(budget)}: {name}; --epochs/--steps given, so they set the length")
        return final, plan
    bpe = max(1, math.ceil(n / final.batch_size))
    first_guess = int(max(usable(), 1.0) / (spe / bpe)) if spe else (final.epochs or 1) * bpe
    # unmeasured (a named model): run at least until the planner's first plan, or a tiny dataset of one
    # batch per epoch would stop after its default 3 epochs = 3 steps, whatever the budget
    if not spe:
        first_guess = max(first_guess, Planner.WARMUP + Planner.FIRST_PLAN_AT + 1)
    final = dataclasses.replace(final, steps=max(1, first_guess), epochs=None)
    plan.total_steps = final.steps
    why = ", ".join(f"{k} {format_epoch_seconds(v)}/epoch" for k, v in plan.probed_s_per_epoch.items())
    small = f"; {n:,} training images: batches of {final.batch_size}" if scale > 1 else ""
    log(f"budget {format_duration(budget)}: {name}" + (f" (timed: {why})" if why else "") + small
        + "; the step count is planned from the measured speed as it trains")
    return final, plan


def plan_small_data(user_cfg: TrainConfig, cfg: TrainConfig, n_train: int) -> TrainConfig:
    """``cfg`` with the batch size ``small_data_batch`` gives ``n_train`` images, unless the user set one."""
    if user_cfg.batch_size is not None or cfg.batch_size is None:
        return cfg
    return dataclasses.replace(cfg, batch_size=small_data_batch(n_train, cfg.batch_size))


def small_data_batches(user_cfg: TrainConfig, cfg: TrainConfig, n_train: int,
                       log: Callable[[str], None]) -> TrainConfig:
    """``plan_small_data`` for a run of fixed length (``--epochs``/``--steps``, or none given): the same
    rule as a budget run's, with a note when it changes the recipe's batch size.

    Why every run: a recipe's batch of 128 on 108 pictures is one step an epoch; 10 epochs are 10
    updates and batch-norm running statistics averaged over a handful of batches, and the kept model
    answers every picture with the same scores. A batch the user set (``--batch-size``) is kept."""
    small = plan_small_data(user_cfg, cfg, n_train)
    if small.batch_size != cfg.batch_size:
        log(f"note: {n_train:,} training images: batches of {small.batch_size} instead of the recipe's "
            f"{cfg.batch_size}, so an epoch has at least {MIN_STEPS_PER_EPOCH} steps (--batch-size sets it)")
    return small


def format_epoch_seconds(seconds: float) -> str:
    """An epoch's time for the budget header: ``350 ms`` under a second, ``4 s`` above (never ``0 s``)."""
    if seconds < 1.0:
        return f"{max(1, round(seconds * 1000))} ms"
    return f"{seconds:.0f} s"


class EpochLines:
    """Which epoch lines to print when epochs are short: a run of tiny epochs (a budget run on a few
    pictures does hundreds a second) would fill the terminal with lines nobody can read.

    A line is shown for each of the first ``FIRST`` epochs, the last, an epoch whose validation
    accuracy is higher than any before (a new best by accuracy, not by a loss tie-break, which happens
    nearly every epoch), and otherwise at most one every ``EVERY_S`` seconds of wall time. Every epoch is still in the
    history (results.csv, progress.json). ``clock``: seconds, monotonic (a test seam)."""

    EVERY_S = 2.0
    FIRST = 10

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.last_shown: float | None = None
        self.best_acc = -math.inf
        self.hidden = 0  # epochs not shown
        self.seen = 0

    def show(self, val_accuracy: float, *, first: bool, last: bool) -> bool:
        """True when this epoch's line is printed (call once per epoch, in order)."""
        now = self.clock()
        self.seen += 1
        first = first or self.seen <= self.FIRST
        better = not math.isnan(val_accuracy) and val_accuracy > self.best_acc
        if better:
            self.best_acc = val_accuracy
        if first or last or better or self.last_shown is None or now - self.last_shown >= self.EVERY_S:
            self.last_shown = now
            return True
        self.hidden += 1
        return False

    def lines(self, text: str, val_accuracy: float, *, first: bool, last: bool) -> list[str]:
        """The lines to print for this epoch: ``[text]``, nothing, or (at the first epoch left out) a note
        saying which lines are shown."""
        if self.show(val_accuracy, first=first, last=last):
            return [text]
        if self.hidden == 1:
            return [f"(epochs are short: a line every {self.EVERY_S:.0f} s, at a new best and at the end; "
                    f"every epoch is in results.csv)"]
        return []
