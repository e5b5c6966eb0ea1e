"""The trainer's events: what a listener sees, how it stops a run, and that listeners leave a run's
randomness alone (a run stopped by a listener and resumed ends bit for bit as one that never stopped)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from minivision.config import TrainConfig
from minivision.listeners import Listener, read_progress
from minivision.train import fit

from .conftest import synthetic_dataset

CFG = dict(model="cnn1", epochs=3, batch_size=32, augment="flip,shift=2", val_split=0.25)


def _fit(tmp_path, listeners=(), name="train", resume=None, **kw):
    cfg = TrainConfig(**{**CFG, **kw}, out=str(tmp_path), name=name) if resume is None else TrainConfig()
    return fit(cfg, dataset=synthetic_dataset(240, 80), progress=False, log=lambda m: None,
               listeners=list(listeners), resume=resume)


class Recorder(Listener):
    def __init__(self):
        self.events: list[tuple] = []

    def on_fit_start(self, t):
        self.events.append(("fit_start", t.step))

    def on_step_end(self, t):
        self.events.append(("step_end", t.step))

    def on_epoch_end(self, t, row):
        self.events.append(("epoch_end", row["epoch"], dict(row) == t.history[-1]))

    def on_fit_end(self, t):
        self.events.append(("fit_end", t.interrupted, t.scored[0] if t.scored else None,
                            (t.run_dir / "model.json").is_file()))


def test_events_in_order_with_the_history_rows(tmp_path):
    rec = Recorder()
    r = _fit(tmp_path, [rec])
    steps = [e[1] for e in rec.events if e[0] == "step_end"]
    per_epoch = 180 // 32 + 1  # 180 training images (a quarter held out), batches of 32
    assert steps == list(range(1, 3 * per_epoch + 1))
    kinds = [e[0] for e in rec.events]
    assert kinds[0] == "fit_start" and kinds[-1] == "fit_end" and kinds.count("epoch_end") == 3
    assert [e for e in rec.events if e[0] == "epoch_end"] == [("epoch_end", k, True) for k in (1, 2, 3)]
    assert kinds.index("epoch_end") == per_epoch + 1  # after the epoch's last step
    assert rec.events[-1] == ("fit_end", False, "test", True)  # called after model.json is written
    assert len(r.history) == 3


class StopAt(Listener):
    def __init__(self, step=None, epoch=None):
        self.step, self.epoch = step, epoch

    def on_step_end(self, t):
        if t.step == self.step:
            t.stop("step")

    def on_epoch_end(self, t, row):
        if row["epoch"] == self.epoch:
            t.stop("epoch")


def _model_tensors(run) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(run / "last.safetensors")).items() if k.startswith("model.")}


@pytest.mark.parametrize("stop_step", [9, 6])  # mid-epoch, and exactly at an epoch's end (6 steps an epoch)
def test_stop_at_a_step_then_resume_is_bit_exact(tmp_path, stop_step):
    ref = _fit(tmp_path, name="ref")
    cut = _fit(tmp_path, [StopAt(step=stop_step)], name="cut")
    assert cut.interrupted and not (cut.run_dir / "model.json").exists()
    assert read_progress(cut.run_dir)["state"] == "interrupted"
    done = _fit(tmp_path, resume=cut.run_dir)
    assert done.run_dir == cut.run_dir
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in ref.history]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in done.history] == strip
    a, b = _model_tensors(ref.run_dir), _model_tensors(done.run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert done.test == ref.test


def test_a_muon_run_stopped_and_resumed_is_bit_exact(tmp_path):
    """Muon's groups (their ``muon`` flag, momentum and Newton-Schulz steps) and momentum buffers go
    through the checkpoint and back: the resumed run ends as the one that never stopped."""
    kw = dict(optimizer="muon", lr=0.05, momentum=0.9)
    ref = _fit(tmp_path, name="ref", **kw)
    cut = _fit(tmp_path, [StopAt(step=9)], name="cut", **kw)
    assert cut.interrupted
    done = _fit(tmp_path, resume=cut.run_dir)
    a, b = _model_tensors(ref.run_dir), _model_tensors(done.run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert done.test == ref.test
    from safetensors import safe_open
    with safe_open(str(done.run_dir / "last.safetensors"), "pt") as f:
        groups = json.loads(f.metadata()["param_groups"])
    assert [g["muon"] for g in groups].count(True) >= 1  # the hidden weights did train with Muon


def test_stop_at_an_epoch_end_finishes_the_run(tmp_path):
    r = _fit(tmp_path, [StopAt(epoch=2)], epochs=5)
    assert not r.interrupted and len(r.history) == 2
    meta = json.loads((r.run_dir / "model.json").read_text())
    assert meta["metrics"]["epochs"] == 2 and "test_accuracy" in r.test
    assert (r.run_dir / "report.html").is_file()


def test_a_listener_that_reads_state_changes_nothing(tmp_path):
    class Reader(Listener):
        def on_step_end(self, t):
            torch.get_rng_state()
            t.model.state_dict()

        def on_epoch_end(self, t, row):
            (t.run_dir / f"seen{row['epoch']}.txt").write_text(str(row["val_accuracy"]))

    plain, watched = _fit(tmp_path, name="plain"), _fit(tmp_path, [Reader()], name="watched")
    a, b = _model_tensors(plain.run_dir), _model_tensors(watched.run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (watched.run_dir / "seen3.txt").is_file()


def test_progress_file_tells_a_watcher_where_training_is(tmp_path):
    seen = []

    class Watch(Listener):
        def on_epoch_end(self, t, row):
            seen.append(read_progress(t.run_dir))

    r = _fit(tmp_path, [Watch()])
    assert [p["epoch"] for p in seen] == [1, 2, 3] and seen[0]["state"] == "training"
    assert seen[0]["last"]["epoch"] == 1 and seen[0]["fraction"] == pytest.approx(1 / 3, abs=0.01)
    end = read_progress(r.run_dir)
    assert end["state"] == "finished" and end["fraction"] == 1.0
    assert end["metrics"]["test_accuracy"] == r.test["test_accuracy"]


def test_stop_refuses_an_unknown_boundary(tmp_path):
    class Bad(Listener):
        def on_fit_start(self, t):
            t.stop("batch")

    with pytest.raises(ValueError, match="'step' or 'epoch'"):
        _fit(tmp_path, [Bad()])


def test_classifier_fit_passes_listeners(tmp_path):
    import minivision as mv

    rec = Recorder()
    mv.Classifier(model="cnn1", epochs=1, batch_size=32, out=str(tmp_path)).fit(
        synthetic_dataset(240, 80), progress=False, listeners=[rec])
    assert [e[0] for e in rec.events].count("epoch_end") == 1 and rec.events[-1][0] == "fit_end"


# ----------------------------------------------------------------------------- epoch lines users can follow

class _FakeClock(Listener):
    """Each training step takes 0.05 s of fake time and nothing else takes any (as in test_invariants)."""

    def __init__(self) -> None:
        self.steps = 0

    def __call__(self) -> float:
        return self.steps * 0.05

    def on_step_end(self, trainer) -> None:
        self.steps += 1
        assert self.steps < 400, "a budget run that does not end"


def _epoch_lines(log: list[str]) -> list[str]:
    return [line.split("  train loss")[0] for line in log if line.startswith("epoch ")]


def test_a_budget_run_s_epoch_lines_say_the_time_left_and_the_last_reads_n_of_n(tmp_path, monkeypatch):
    """The plan changes as the planner learns the speed (the first guess, then a re-plan at every epoch
    end), so a denominator would jump; the lines give the time left, and the last one the total."""
    import re

    from minivision.listeners import Report

    monkeypatch.setattr(Report, "on_fit_end", lambda self, trainer: None)
    clock, log = _FakeClock(), []
    cfg = TrainConfig(budget=7.0, model="softmax", batch_size=16, val_split=0.25, augment="", out=str(tmp_path))
    r = fit(cfg, dataset=synthetic_dataset(240, 40), progress=False, log=log.append, clock=clock, listeners=[clock])
    lines = _epoch_lines(log)
    n = len(r.history)
    assert n >= 4 and len(lines) == n
    assert re.fullmatch(rf"epoch {n}/{n}( \(\d+ of \d+ steps\))?", lines[-1]), lines[-1]
    left = []
    for i, line in enumerate(lines[:-1], start=1):
        m = re.fullmatch(rf"epoch {i} · (\d+)s left", line)
        assert m, line
        left.append(int(m.group(1)))
    assert left == sorted(left, reverse=True) and left[0] <= 7  # counts down from the budget
    assert json.loads((r.run_dir / "model.json").read_text())["budget"]["replans"] >= 1  # the plan did move


def test_a_fixed_length_run_keeps_its_epoch_n_of_n_lines(tmp_path):
    log: list[str] = []
    fit(TrainConfig(model="softmax", epochs=3, augment="", out=str(tmp_path)), dataset=synthetic_dataset(40, 8),
        progress=False, log=log.append)
    assert _epoch_lines(log) == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]


def test_a_last_epoch_cut_short_says_how_many_of_its_steps_ran(tmp_path):
    log: list[str] = []
    # 40 pictures, a quarter held out: 30 to train, 4 batches of 8 an epoch; 5 steps end 1 step into epoch 2
    fit(TrainConfig(model="softmax", steps=5, batch_size=8, val_split=0.25, augment="", out=str(tmp_path)),
        dataset=synthetic_dataset(40, 8), progress=False, log=log.append)
    assert _epoch_lines(log) == ["epoch 1/2", "epoch 2/2 (1 of 4 steps)"]


def test_a_budget_plan_a_sliver_past_an_epoch_ends_on_the_boundary():
    """The planner's step count, a few steps past an epoch boundary, is moved back to it when planned, so the
    one-cycle schedule anneals there; a plan 10% or more into an epoch is kept."""
    from minivision.listeners import BudgetPlanner

    class Plan:
        total = 0

        def plan(self, step):
            return self.total

    class Trainer:
        batches_per_epoch, step, total_steps, replans = 100, 50, 1000, 0

        def agree_total_steps(self, total):
            return total

        def set_total_steps(self, total):
            self.total_steps = total

    plan, trainer = Plan(), Trainer()
    listener = BudgetPlanner(plan, clock=lambda: 0.0)
    for planned, kept in ((205, 200), (209, 200), (210, 210), (250, 250), (105, 100), (60, 60), (300, 300)):
        plan.total = planned
        listener._replan(trainer)
        assert trainer.total_steps == kept, planned
    trainer.step = 100  # the boundary already passed: the plan stands
    plan.total = 105
    listener._replan(trainer)
    assert trainer.total_steps == 105
    trainer.step = 200  # at an epoch's end, a plan a sliver past it stops there
    plan.total = 205
    listener._replan(trainer, at_epoch_end=True)
    assert trainer.total_steps == 200
