"""The learning-rate range test: which rate to train with, measured on the model and data at hand.

Leslie Smith's range test ("Cyclical Learning Rates for Training Neural Networks", 2015,
arXiv:1506.01186, section 3.3) as fastai's ``Learner.lr_find`` runs it (fastai/callback/schedule.py):
train a copy of the model for up to ``steps`` optimizer steps while the rate rises exponentially from
``start_lr`` to ``end_lr``, record each step's training loss, smooth it with a debiased exponential
moving average (beta 0.98), and stop early once the smoothed loss exceeds 4 x the lowest seen (it has
blown up) or is not a number. The suggestion is fastai's default, ``valley``: the middle of the
longest run of falling loss (fastai's rule, its 10% warm-up points and last 5 points left out), a rate
at which the loss still falls fast and is far from the blow-up. Our own code, not fastai's: it is a
short loop over our own training step (optimizer, augmentation, label smoothing as ``train`` uses
them), and fastai would bring its whole training framework.

Nothing is changed for the caller: the test trains a deep copy of the model with its own optimizer,
and the global random state is restored afterwards, so ``train --lr auto`` trains a fresh model with
the rate found exactly as ``train --lr X`` would.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import TrainConfig
from .errors import MinivisionError

if TYPE_CHECKING:  # torch is imported where tensors are made: the CLI's parser reads this module's constants
    import torch
    from torch import nn

START_LR = 1e-7   # fastai's sweep: 1e-7 to 10
END_LR = 10.0
STEPS = 200       # fastai runs 100; 200 draws a smoother curve at a few seconds for the small networks
BETA = 0.98       # fastai's smoothing of the loss
DIVERGE = 4.0     # stop when the smoothed loss exceeds 4 x its lowest (fastai's stop_div)
MIN_POINTS = 10   # fewer recorded steps than this: no suggestion


@dataclass
class LRFind:
    """The test's record. ``lrs``: the rate of each step taken; ``losses``: its training loss (the mean
    cross-entropy of the batch, label smoothing included); ``smoothed``: the debiased moving average;
    ``suggestion``: the suggested rate (one of ``lrs``) and ``index`` its step; ``minimum``: the rate of the
    lowest smoothed loss; ``stopped``: why the test ended before ``steps`` (None: it ran them all)."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float
    index: int
    minimum: float
    start_lr: float
    end_lr: float
    steps: int
    stopped: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """What args.yaml's ``lr_found`` keeps: the sweep and the suggestion, not the curve."""
        return {"by": "learning-rate range test", "suggested": self.suggestion, "start_lr": self.start_lr,
                "end_lr": self.end_lr, "steps_planned": self.steps, "steps_run": len(self.lrs),
                "rule": "valley (fastai)"}

    def save(self, folder: Path, title: str = "") -> dict[str, Path]:
        """``folder/lr_find.png`` (the plot) and ``folder/lr_find.csv`` (step, lr, loss, smoothed), atomically."""
        from .fileio import write_text
        from .report import style

        rows = ["step,lr,loss,smoothed"] + [f"{i + 1},{lr:.6g},{loss:.6f},{s:.6f}" for i, (lr, loss, s)
                                            in enumerate(zip(self.lrs, self.losses, self.smoothed, strict=True))]
        write_text(folder / "lr_find.csv", "\n".join(rows) + "\n")
        return {"plot": style.save_figure(plot_lr_find(self, title), folder / "lr_find.png"),
                "csv": folder / "lr_find.csv"}


def rate_at(step: int, steps: int, start_lr: float, end_lr: float) -> float:
    """The exponential sweep: ``start_lr * (end_lr / start_lr) ** (step / (steps - 1))`` for step 0..steps-1."""
    return start_lr * (end_lr / start_lr) ** (step / max(steps - 1, 1))


def valley(losses: list[float]) -> int:
    """fastai's ``valley`` (fastai/callback/schedule.py): the index a third and a half of a third into the
    longest strictly falling subsequence of ``losses``, i.e. about its middle. O(n^2), n a few hundred."""
    n = len(losses)
    lds = [1] * n
    start = end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[end] < lds[i]:
                end = i
                start = end - lds[end]
    sections = (end - start) / 3
    return start + int(sections) + int(sections / 2)


def check_sweep(start_lr: float, end_lr: float, steps: int) -> None:
    """MinivisionError (one line) for a sweep that is not rising (``0 < start_lr < end_lr``, both finite) or
    has fewer than ``MIN_POINTS`` steps: checked before any data is loaded."""
    if not (0 < start_lr < end_lr) or not (math.isfinite(start_lr) and math.isfinite(end_lr)):
        raise MinivisionError(f"the sweep must rise: 0 < --start-lr < --end-lr, got {start_lr:g} and {end_lr:g}")
    if steps < MIN_POINTS:
        raise MinivisionError(f"--steps must be at least {MIN_POINTS} for a suggestion, got {steps}")


def lr_range_test(model: nn.Module, pre: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                  cfg: TrainConfig, *, num_classes: int, device: torch.device | str = "cpu", precision: str = "fp32",
                  start_lr: float = START_LR, end_lr: float = END_LR, steps: int = STEPS,
                  log: Callable[[str], None] | None = None) -> LRFind:
    """Run the range test on a copy of ``model`` (``nn.Module`` taking ``pre(x)``) with training pictures
    ``x`` (uint8 N x C x H x W) and labels ``y`` (int64 N), batches of ``cfg.batch_size`` drawn without
    replacement (reshuffled each pass, seeded by ``cfg.seed``), ``cfg``'s optimizer, momentum, weight
    decay, augmentation and label smoothing. Rates are in the optimizer's units (the ``--lr`` value).

    Raises MinivisionError for a sweep that is not rising (``0 < start_lr < end_lr``), fewer than
    ``MIN_POINTS`` steps, fewer than 2 pictures, or a loss that blew up before ``MIN_POINTS`` steps."""
    import torch
    import torch.nn.functional as F

    from .data.augment import Augment
    from .optim import make_optimizer

    check_sweep(start_lr, end_lr, steps)
    if len(y) < 2:
        raise MinivisionError("the range test needs at least 2 training pictures")
    device = torch.device(device)
    work = copy.deepcopy(model).to(device).train()
    opt = make_optimizer(dataclasses.replace(cfg, lr=start_lr), work)
    augment = Augment.parse(cfg.augment)
    order = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    bs = max(2, min(int(cfg.batch_size), len(y)))
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    stopped, avg, best = None, 0.0, math.inf
    perm, pos = torch.randperm(len(y), generator=order), 0
    with torch.random.fork_rng(devices=[]):  # dropout's draws: the caller's random state is left as it was
        torch.manual_seed(cfg.seed)
        for i in range(steps):
            lr = rate_at(i, steps, start_lr, end_lr)
            for group in opt.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            if pos + bs > len(y):
                perm, pos = torch.randperm(len(y), generator=order), 0
            idx = perm[pos:pos + bs]
            pos += bs
            xb = augment(pre(x[idx].to(device)), aug_gen, pre)
            yb = target = y[idx].to(device)
            if augment.mixes:
                xb, target = augment.mix(xb, yb, num_classes, aug_gen)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                logits = work(xb)
            loss = F.cross_entropy(logits.float(), target, label_smoothing=cfg.label_smoothing or 0.0)
            value = float(loss.item())
            if not math.isfinite(value):
                stopped = f"the loss became {value} at rate {lr:.3g}"
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            avg = BETA * avg + (1 - BETA) * value
            smooth = avg / (1 - BETA ** (i + 1))
            lrs.append(lr)
            losses.append(value)
            smoothed.append(smooth)
            best = min(best, smooth)
            if smooth > DIVERGE * best:
                stopped = f"the smoothed loss passed {DIVERGE:g} x its lowest at rate {lr:.3g}"
                break
            if log is not None and (i + 1) % 50 == 0:
                log(f"lr-find: step {i + 1}/{steps}, rate {lr:.2e}, smoothed loss {smooth:.4f}")
    if len(lrs) < MIN_POINTS:
        raise MinivisionError(f"the loss blew up after {len(lrs)} steps of the range test ({stopped}): start the "
                              f"sweep lower (--start-lr below {start_lr:g})")
    lo = len(lrs) // 10  # fastai leaves out the first tenth and the last 5 points
    hi = max(lo + MIN_POINTS // 2, len(lrs) - 5)
    index = lo + valley(smoothed[lo:hi])
    low = min(range(len(smoothed)), key=smoothed.__getitem__)
    return LRFind(lrs, losses, smoothed, lrs[index], index, lrs[low], start_lr, end_lr, steps, stopped)


def round_rate(lr: float) -> float:
    """Two significant digits (0.00317 -> 0.0032): what a person types, well inside the test's resolution."""
    return float(f"{lr:.2g}")


def plot_lr_find(result: LRFind, title: str = "") -> Any:
    """Loss against learning rate (log scale): each step's loss faint, the smoothed loss, the suggestion
    marked with its value. Matplotlib's object API (report/style.py)."""
    from .report import style

    fig, ax = style.figure_of(None, 7.5, 4.6)
    ax.plot(result.lrs, result.losses, color="#c7c7c7", linewidth=0.8, label="loss of each step")
    ax.plot(result.lrs, result.smoothed, color="#1f77b4", linewidth=2, label="smoothed (moving average)")
    ax.set_xscale("log")
    s, i = result.suggestion, result.index
    ax.axvline(s, color=style.WRONG, linestyle="--", linewidth=1)
    ax.plot([s], [result.smoothed[i]], "o", color=style.WRONG, markersize=8,
            label=f"suggested rate {round_rate(s):g}")
    # from the lowest loss before the smoothed minimum (the raw curve's dip shows) to a little above the start
    first, lowest = result.smoothed[0], min(range(len(result.smoothed)), key=result.smoothed.__getitem__)
    low = min(min(result.losses[:lowest + 1]), result.smoothed[lowest])
    top = max(first, low) + 0.3 * max(abs(first - low), 0.1 * abs(first) + 1e-3)
    ax.set_ylim(low - 0.05 * (top - low), top)
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    ax.text(0.99, 0.02, f"the smoothed loss averages about the last {round(1 / (1 - BETA))} steps, so it trails "
            "the steps' own", transform=ax.transAxes, ha="right", va="bottom", fontsize=7, color="#57606a")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)
    sweep = f"{len(result.lrs)} steps from {result.start_lr:g} to {result.lrs[-1]:.3g}"
    ax.set_title((title + "\n" if title else "") + f"Learning-rate range test: {sweep}", fontsize=10)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------- the commands

#: The train settings ``minivision lr-find`` takes (what the test trains with); others do not change it.
LR_FIND_SETTINGS = ("data", "data_dir", "test_data", "imgsz", "resize_mode", "model", "batch_size", "optimizer",
                    "momentum", "nesterov", "weight_decay", "label_smoothing", "augment", "normalize", "val_split",
                    "val_first", "seed", "device", "precision", "out")


def train_command(given: dict[str, Any], lr: float) -> str:
    """The ``minivision train`` command with the settings as ``given`` (flags) and ``--lr lr``."""
    from .config import SETTINGS

    parts = ["minivision", "train"]
    for key, value in given.items():
        if key in ("out", "lr") or value is None:
            continue
        s = SETTINGS[key]
        if s.kind is bool:
            parts.append(s.option if value else f"--no-{s.option[2:]}")
        else:
            parts += [s.option, shlex.quote(str(value))]
    return " ".join(parts + ["--lr", f"{round_rate(lr):g}"])


def prepare(cfg: TrainConfig, log: Callable[[str], None]) -> tuple[TrainConfig, Any, nn.Module, Any, torch.device,
                                                                   str]:
    """(resolved config, dataset with its validation split, fresh model, Preprocess, device, precision) as
    ``train`` would make them for a run from scratch."""
    import torch

    from .config import resolve
    from .data import load_dataset
    from .data.split import make_val
    from .inference import pick_device, pick_precision
    from .models import DEFAULT_MODEL, create_model, model_info
    from .preprocess import Preprocess

    name = cfg.model or DEFAULT_MODEL
    cfg = resolve(dataclasses.replace(cfg, model=name), model_info(name).defaults)
    ds = load_dataset(cfg.data, data_dir=cfg.data_dir, test_data=cfg.test_data, imgsz=cfg.imgsz, fit=cfg.resize_mode)
    ds = make_val(ds, val_split=cfg.val_split, val_first=cfg.val_first, seed=cfg.seed)
    log(ds.describe())
    from .train import init_from_data, scratch_stem

    cfg = scratch_stem(cfg, ds)  # the network train would build (colour pictures: mvnet's whitening stem)
    torch.manual_seed(cfg.seed)
    model = create_model(name, in_channels=ds.channels, image_size=ds.image_size, num_classes=ds.num_classes,
                         **cfg.extra)
    device = pick_device(cfg.device)
    model = model.to(device).to(memory_format=torch.channels_last)
    pre = Preprocess.fit(ds.train.x, cfg.normalize, ds.conversion)
    init_from_data(model, ds, pre, cfg.seed)
    return cfg, ds, model, pre, device, pick_precision(cfg.precision, device)


def lr_find_command(given: dict[str, Any], *, steps: int = STEPS, start_lr: float = START_LR, end_lr: float = END_LR,
                    log: Callable[[str], None] = print) -> tuple[LRFind, dict[str, Path], str]:
    """``minivision lr-find``: the test for the model and data ``given`` (train's settings by name; model
    default: the one ``train --epochs`` uses), its plot and CSV in a new folder ``OUT/lr-find`` (``lr-find2``,
    ... never overwritten), and the ready ``train`` command. Returns (result, files, command)."""
    from .budget import small_data_batches
    from .config import config_from
    from .fileio import new_run_dir
    from .finetune import SMALL_DATA_MAX
    from .models import model_info

    check_sweep(start_lr, end_lr, steps)  # before the data is loaded
    user_cfg = config_from(given)
    cfg, ds, model, pre, device, precision = prepare(user_cfg, log)
    n = len(ds.train.y)
    # train's batch on a small dataset (at most a quarter of its pictures, unless --batch-size is given): the
    # rate is measured at the batch size the printed command will train with
    cfg = small_data_batches(user_cfg, cfg, n, log)
    log(f"lr-find: {cfg.model} on {n:,} training pictures, batch {cfg.batch_size}, {cfg.optimizer}; rate from "
        f"{start_lr:g} to {end_lr:g} over up to {steps} steps")
    result = lr_range_test(model, pre, ds.train.x, ds.train.y, cfg, num_classes=ds.num_classes, device=device,
                           precision=precision, start_lr=start_lr, end_lr=end_lr, steps=steps, log=log)
    folder = new_run_dir(cfg.out, "lr-find")
    files = result.save(folder, f"{cfg.model} on {ds.name}")
    command_given = {"model": cfg.model, **{k: v for k, v in given.items() if k != "model"}}
    if n <= SMALL_DATA_MAX and "pretrained" not in given:  # train would fine-tune a backbone; this rate is from scratch
        command_given["pretrained"] = "none"
    command = train_command(command_given, result.suggestion)
    if result.stopped:
        log(f"lr-find: stopped after {len(result.lrs)} steps: {result.stopped}")
    recipe = model_info(cfg.model).defaults.get("lr")
    log(f"saved {files['plot']} and {files['csv']}")
    log(f"suggested learning rate: {round_rate(result.suggestion):g} (the loss was lowest at "
        f"{result.minimum:.2g}; {cfg.model}'s recipe uses {recipe:g})" if recipe else
        f"suggested learning rate: {round_rate(result.suggestion):g} (the loss was lowest at {result.minimum:.2g})")
    return result, files, command


def auto_lr(cfg: TrainConfig, model: nn.Module, pre: Any, ds: Any, device: torch.device, precision: str,
            log: Callable[[str], None]) -> tuple[TrainConfig, LRFind]:
    """``train --lr auto``: the range test on a copy of ``model`` (left untouched) with the run's settings;
    returns ``cfg`` with ``lr`` the suggestion (two significant digits) and ``lr_found`` its record."""
    log(f"--lr auto: learning-rate range test ({STEPS} steps at most, from {START_LR:g} to {END_LR:g})")
    result = lr_range_test(model, pre, ds.train.x, ds.train.y, cfg, num_classes=ds.num_classes, device=device,
                           precision=precision)
    lr = round_rate(result.suggestion)
    log(f"--lr auto: learning rate {lr:g} (the range test's suggestion; loss lowest at {result.minimum:.2g}); "
        "the run trains a fresh model with it")
    return dataclasses.replace(cfg, lr=lr, lr_found=result.record()), result
