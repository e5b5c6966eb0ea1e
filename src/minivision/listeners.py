"""The training loop's events and the listeners that ship with minivision.

The trainer (``train.Trainer``) calls four events, in this order over a run:

  ``on_fit_start(trainer)``           once, before the first step (also when resuming)
  ``on_step_end(trainer)``            after every optimizer step (``trainer.step`` counts them)
  ``on_epoch_end(trainer, row)``      after the validation pass; ``row`` is the history row just added
  ``on_fit_end(trainer)``             once, after the model and its metrics are saved (``trainer.scored``
                                      holds the split and logits it was scored on), or after an
                                      interruption (``trainer.interrupted``; checkpoint already saved)

A listener may call ``trainer.stop("step")`` (stop after this step, save a checkpoint, resumable as after
Ctrl-C) or ``trainer.stop("epoch")`` (end training at this epoch's end; the run finishes normally, as
Keras' EarlyStopping). Listeners must not draw random numbers (``torch.rand``, ``random``, a generator):
the run's random streams are derived from (seed, epoch) and saved in the checkpoint, and a listener
that drew from them would make a resumed run differ from an uninterrupted one. Saving files, logging,
reading the model's weights or ``torch.get_rng_state()`` are fine.

The built-in features are listeners: ``Checkpoints`` (best.safetensors, last.safetensors), ``ResultsFiles``
(results.csv / results.png), ``TensorBoard``, ``ProgressFile`` (progress.json, read by the training-jobs
API), ``Report`` (report.html and its pictures) and ``BudgetPlanner`` (re-plans the step count of a
``--budget`` run). Pass your own to ``train.fit(..., listeners=[...])`` or ``Classifier(...).fit(...,
listeners=[...])``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .fileio import write_json

if TYPE_CHECKING:
    from .budget import Planner
    from .train import Trainer

CHECKPOINT_EVERY_S = 120.0  # also save mid-epoch, so a kill -9 loses at most this much work
PROGRESS_EVERY_S = 2.0      # progress.json between epochs, at most this often
PROGRESS_FILE = "progress.json"


class Listener:
    """Base class: override the events you need; each default does nothing."""

    def on_fit_start(self, trainer: Trainer) -> None:
        pass

    def on_step_end(self, trainer: Trainer) -> None:
        pass

    def on_epoch_end(self, trainer: Trainer, row: dict[str, float]) -> None:
        pass

    def on_fit_end(self, trainer: Trainer) -> None:
        pass


class Checkpoints(Listener):
    """``best.safetensors`` when validation improves (or every epoch without a validation split) and
    ``last.safetensors`` (model, optimizer, progress, random states) at every epoch end, every
    ``CHECKPOINT_EVERY_S`` seconds within an epoch, and when training is interrupted."""

    def __init__(self, every_s: float = CHECKPOINT_EVERY_S) -> None:
        self.every_s = every_s
        self._last = time.perf_counter()

    def on_fit_start(self, trainer: Trainer) -> None:
        self._last = time.perf_counter()

    def on_step_end(self, trainer: Trainer) -> None:
        if time.perf_counter() - self._last > self.every_s:
            trainer.save_checkpoint()
            self._last = time.perf_counter()

    def on_epoch_end(self, trainer: Trainer, row: dict[str, float]) -> None:
        from .runfiles import save_model

        if trainer.improved or math.isnan(row["val_accuracy"]):  # no validation: the latest is the best we know
            save_model(trainer.run_dir, trainer.model, {}, weights_name="best")
        trainer.save_checkpoint(finished=trainer.epoch >= trainer.epochs)
        self._last = time.perf_counter()

    def on_fit_end(self, trainer: Trainer) -> None:
        if trainer.interrupted:
            trainer.save_checkpoint()


class ResultsFiles(Listener):
    """``results.csv`` every epoch; ``results.png`` every epoch in long runs (an epoch of 30 s or more),
    else at the end when no report follows (the report draws it: ~0.5 s saved in short runs)."""

    def on_epoch_end(self, trainer: Trainer, row: dict[str, float]) -> None:
        from .report.history import write_history

        last = trainer.epoch >= trainer.epochs
        write_history(trainer.run_dir, trainer.history,
                      plot=row["seconds"] >= 30 or (last and not trainer.report_follows))


class TensorBoard(Listener):
    """``train --tensorboard``: scalars per epoch, and the report's pictures at the end."""

    def __init__(self, run_dir: Path) -> None:
        from .report.tensorboard import TensorBoardLog

        self.log = TensorBoardLog(run_dir)

    def on_epoch_end(self, trainer: Trainer, row: dict[str, float]) -> None:
        self.log.epoch(row)

    def on_fit_end(self, trainer: Trainer) -> None:
        if not trainer.interrupted:
            self.log.add_pictures(trainer.run_dir, step=len(trainer.history))
        self.log.close()


class ProgressFile(Listener):
    """``progress.json`` in the run folder, for programs that watch a training (the training-jobs API):
    ``state`` (training | finished | interrupted | failed, with ``error`` the reason: see ``mark_failed``),
    ``epoch``/``epochs`` done and planned, ``step``/
    ``total_steps``, ``fraction`` (step / total_steps, 0 to 1), the last history row, and at the end the
    test metrics. Written atomically at the start, at most every ``PROGRESS_EVERY_S`` seconds while
    training, at every epoch end and at the end."""

    def __init__(self, every_s: float = PROGRESS_EVERY_S) -> None:
        self.every_s = every_s
        self._last = 0.0

    def _write(self, trainer: Trainer, state: str, **extra: Any) -> None:
        total = max(trainer.total_steps, 1)
        write_json(trainer.run_dir / PROGRESS_FILE, {
            "state": state, "epoch": trainer.epoch, "epochs": trainer.epochs, "step": trainer.step,
            "total_steps": trainer.total_steps, "fraction": round(min(trainer.step / total, 1.0), 4),
            "last": _finite(trainer.history[-1]) if trainer.history else None, **extra})
        self._last = time.monotonic()

    def on_fit_start(self, trainer: Trainer) -> None:
        self._write(trainer, "training")

    def on_step_end(self, trainer: Trainer) -> None:
        if time.monotonic() - self._last >= self.every_s:
            self._write(trainer, "training")

    def on_epoch_end(self, trainer: Trainer, row: dict[str, float]) -> None:
        self._write(trainer, "training")

    def on_fit_end(self, trainer: Trainer) -> None:
        if trainer.interrupted:
            self._write(trainer, "interrupted")
        else:
            self._write(trainer, "finished", metrics=_finite(trainer.meta.get("metrics", {})))


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def mark_failed(run_dir: Path, reason: str, *, resumable: bool = True) -> None:
    """Record in ``run_dir/progress.json`` that the run failed: ``state`` ``failed``, ``error`` the one-line
    reason, the rest of what it last said (epoch, step, ...) kept, so readers of the folder (``evaluate``,
    ``predict``, the training-jobs API) can say what happened. ``resumable=False`` (a training that diverged:
    resuming it repeats the same steps) records ``resumable: false`` so readers suggest training again rather
    than ``--resume``. Written atomically; never raises (it runs while another error is on its way to the user)."""
    old = read_progress(run_dir) or {"epoch": 0, "epochs": None, "step": 0, "total_steps": None, "fraction": 0.0,
                                     "last": None}
    try:
        write_json(Path(run_dir) / PROGRESS_FILE, {**old, "state": "failed", "error": " ".join(reason.split()),
                                                        "resumable": resumable})
    except OSError:
        pass


def run_state(run_dir: Path) -> str | None:
    """Why ``run_dir`` (a run folder without model.json) has no model, in one line for the user; None when
    it does not look like a run folder. Reads ``progress.json`` and ``last.safetensors``."""
    run_dir = Path(run_dir)
    p = read_progress(run_dir) or {}
    has_checkpoint = (run_dir / "last.safetensors").is_file()
    if p.get("state") == "failed":
        reason = p.get("error") or "no reason recorded"
        if has_checkpoint and p.get("resumable", True):
            return (f"run {run_dir} failed: {reason}; train again, or resume it from its last checkpoint with "
                    f"`minivision train --resume {run_dir}`")
        if has_checkpoint:
            return f"run {run_dir} failed: {reason}; train again with that change (resuming would repeat it)"
        return f"run {run_dir} failed before its first checkpoint: {reason}; train again"
    if has_checkpoint:
        return (f"{run_dir} has no finished model yet (training was interrupted): resume it with "
                f"`minivision train --resume {run_dir}`")
    if p or (run_dir / "args.yaml").is_file():
        return (f"run {run_dir} has no model: it is still training, or it stopped before its first checkpoint "
                f"(no last.safetensors); train again")
    return None


def read_progress(run_dir: Path) -> dict[str, Any] | None:
    """The ``progress.json`` of a run folder, or None when there is none yet or it cannot be read."""
    import json

    try:
        data = json.loads((Path(run_dir) / PROGRESS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class Report(Listener):
    """The run folder's report (report.html, confusion matrices, per_class.csv, mistakes, predictions,
    calibration) on the split the model was scored on."""

    def on_fit_end(self, trainer: Trainer) -> None:
        if trainer.interrupted:
            return
        if trainer.scored is None:
            if trainer.history:
                trainer.log("no test or validation split: no report")
            return
        from .report.run import dataset_rows, write_run_report

        split_name, split, logits = trainer.scored
        notes = [f"scored on the {split_name} split with the best-validation weights "
                 f"(epoch {trainer.meta['metrics']['best_epoch']} of {len(trainer.history)})"]
        write_run_report(trainer.run_dir, classes=trainer.ds.classes, split=split, split_name=split_name,
                         logits=logits, history=trainer.history, meta=trainer.meta,
                         parameters=sum(p.numel() for p in trainer.model.parameters()),
                         settings=trainer.cfg.to_dict(), dataset=dataset_rows(trainer.ds), notes=notes,
                         tta_logits=trainer.scored_tta, log=trainer.log)


class EarlyStopping(Listener):
    """``train --patience N``: end the run when the validation loss has not improved (fallen below its lowest so
    far) for ``patience`` epochs in a row, as Keras' ``EarlyStopping(monitor="val_loss", patience=N,
    restore_best_weights=True)``. The weights kept are those of the epoch with the lowest validation loss (the
    first of equals): with a patience the trainer's best-epoch rule is that loss (``Trainer.improved``,
    ``Trainer.finish``), so best.safetensors and model.safetensors hold that epoch's weights.

    Each history row gets ``epochs_since_best`` (0 on a new lowest loss; a column of results.csv), model.json
    ``early_stopping`` {monitor, patience, best_epoch, best_val_loss, stopped_epoch (None while it has not
    stopped)}. Its state is read back from the history at ``on_fit_start``, so a resumed run stops where an
    uninterrupted one does. It must run before ``Checkpoints``: the run's length is cut at the stopping epoch
    (``set_total_steps``), so the checkpoint saved then is a finished one. With ``--budget``, whichever ends
    first ends the run. Epochs without a validation loss (no validation split) are not counted."""

    def __init__(self, patience: int) -> None:
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.patience = patience
        self.best_loss = math.inf
        self.best_epoch: int | None = None
        self.wait = 0

    def on_fit_start(self, trainer: Trainer) -> None:
        self.best_loss, self.best_epoch, self.wait = math.inf, None, 0
        for row in trainer.history:
            self._count(row)
        if trainer.ds.val is None or not len(trainer.ds.val):
            trainer.log("note: --patience needs a validation split; training runs its full length")

    def _count(self, row: dict[str, Any]) -> None:
        loss = row.get("val_loss", math.nan)
        if math.isnan(loss):
            return
        if loss < self.best_loss:
            self.best_loss, self.best_epoch, self.wait = loss, int(row["epoch"]), 0
        else:
            self.wait += 1

    def on_epoch_end(self, trainer: Trainer, row: dict[str, float]) -> None:
        self._count(row)
        if math.isnan(row.get("val_loss", math.nan)):
            return
        row["epochs_since_best"] = self.wait
        stopped = self.wait >= self.patience and trainer.epoch < trainer.epochs
        record = trainer.meta.get("early_stopping") or {}
        trainer.meta["early_stopping"] = {
            "monitor": "val_loss", "patience": self.patience, "best_epoch": self.best_epoch,
            "best_val_loss": self.best_loss, "stopped_epoch": trainer.epoch if stopped else record.get("stopped_epoch")}
        if stopped:  # logged after the epoch's own line (Trainer.epoch_notes), which keeps the planned epochs
            trainer.epoch_notes.append(
                f"early stopping after epoch {trainer.epoch}: the validation loss has not improved for {self.wait} "
                f"epochs (lowest {self.best_loss:.4f} at epoch {self.best_epoch}, whose weights are kept)")
            trainer.set_total_steps(trainer.step)  # ends the loop here; the checkpoint saved next is a finished one


class BudgetPlanner(Listener):
    """``--budget``: re-plans ``trainer.total_steps`` so the run ends on time (see ``budget.Planner``):
    after the first timed steps, at half, three quarters and nine tenths of the plan, and at every epoch
    end, where the time since the last step (validation, checkpoint, files) is measured as the per-epoch
    cost. Runs after the other listeners of an event, so that cost includes theirs."""

    def __init__(self, planner: Planner, clock: Callable[[], float] | None = None) -> None:
        self.planner = planner
        self.clock = clock or planner.clock
        self._step0 = 0
        self._next_plan = 0.5
        self._last_step_t = 0.0

    def on_fit_start(self, trainer: Trainer) -> None:
        self._step0 = trainer.step

    def on_step_end(self, trainer: Trainer) -> None:
        from .budget import Planner

        done = trainer.step - self._step0
        self.planner.observe(done)
        first = done == Planner.WARMUP + Planner.FIRST_PLAN_AT
        if first or trainer.step >= self._next_plan * trainer.total_steps:
            self._next_plan = next((f for f in (0.5, 0.75, 0.9) if trainer.step < f * trainer.total_steps), 2.0)
            self._replan(trainer)
        self._last_step_t = self.clock()

    def on_epoch_end(self, trainer: Trainer, row: dict[str, float]) -> None:
        self.planner.epoch_pause(self.clock() - self._last_step_t)
        if trainer.epoch < trainer.epochs:
            self._replan(trainer, at_epoch_end=True)

    def _replan(self, trainer: Trainer, at_epoch_end: bool = False) -> None:
        total = trainer.agree_total_steps(self.planner.plan(trainer.step))  # several processes: the slowest's
        if total is None:
            return
        bpe = trainer.batches_per_epoch
        sliver = total % bpe
        if 0 < sliver < 0.1 * bpe and total - sliver > trainer.step:
            # a sliver of an epoch past a boundary is not worth another validation pass: end on the boundary,
            # planned now, so the one-cycle schedule anneals to its lowest rate there (cut at the epoch's end
            # instead, the last steps ran at ~13% of the peak rate; docs/BENCHMARKS.md)
            total -= sliver
        if at_epoch_end and total - trainer.step < 0.1 * bpe:
            total = trainer.step  # a sliver of an epoch is not worth another validation pass: stop here
        elif not at_epoch_end:
            total = max(total, trainer.step + 1)
        if total != trainer.total_steps:
            trainer.set_total_steps(total)
            trainer.replans += 1
