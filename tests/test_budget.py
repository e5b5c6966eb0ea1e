"""--budget: duration parsing, the network ladder, the step planner (driven by a fake clock), and a
budget run end to end on synthetic data. No test asserts how long anything took."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import pytest
from safetensors import safe_open

from minivision.budget import (
    LADDER,
    EpochLines,
    Planner,
    Rung,
    default_budget,
    format_duration,
    format_epoch_seconds,
    parse_duration,
    pick_rung,
    small_data_batch,
    small_data_scale,
)
from minivision.cli import main
from minivision.config import TrainConfig
from minivision.errors import MinivisionError
from minivision.train import fit

from .conftest import synthetic_dataset


@pytest.mark.parametrize("text,seconds", [
    ("30s", 30), ("3m", 180), ("30m", 1800), ("1h30m", 5400), ("1.5h", 5400), ("2m30s", 150),
    ("90", 90), ("0.5", 0.5), (" 3 m ", 180), ("45sec", 45), ("2min", 120), ("1d", 86400), (120, 120),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "3x", "m", "-5", "0", "0s", "3m abc", "inf", "nan", "8d", "1e9"])
def test_parse_duration_rejects_with_one_line(text):
    with pytest.raises(MinivisionError) as e:
        parse_duration(text)
    assert "--budget" in str(e.value) and "\n" not in str(e.value)


def test_format_duration():
    assert [format_duration(s) for s in (29.6, 180, 150, 5400)] == ["30s", "3m", "2m30s", "1h30m"]


def test_ladder_goes_from_small_to_large_with_growing_epoch_needs():
    assert LADDER[0].min_epochs == 0  # the smallest network always fits
    assert [r.min_epochs for r in LADDER] == sorted(r.min_epochs for r in LADDER)


def test_the_colour_ladder_is_ordered_and_differs_where_it_was_measured():
    from minivision.budget import COLOUR_LADDER, ladder_for

    assert COLOUR_LADDER[0].min_epochs == 0
    assert [r.min_epochs for r in COLOUR_LADDER] == sorted(r.min_epochs for r in COLOUR_LADDER)
    assert [r.model for r in COLOUR_LADDER] == [r.model for r in LADDER]  # data-parallel runs index either
    assert ladder_for(3) == (COLOUR_LADDER, False) and ladder_for(1) == (LADDER, True)
    mvnet = {r.model: r.min_epochs for r in COLOUR_LADDER}["mvnet"]
    assert mvnet < {r.model: r.min_epochs for r in LADDER}["mvnet"]


def _plan_on_blank_pictures(monkeypatch, probe, n, channels, side, budget_text):
    """``plan_budget`` for ``n`` blank pictures of ``channels`` x ``side`` x ``side`` with ``probe`` in place of
    the timing probe, on a clock that stands still: (the final settings, the plan)."""
    import torch

    from minivision import budget
    from minivision.config import resolve
    from minivision.data.dataset import Dataset, Split
    from minivision.models import model_info

    monkeypatch.setattr(budget, "probe_step_seconds", probe)
    x = torch.zeros(n, channels, side, side, dtype=torch.uint8)
    ds = Dataset("pictures", [str(i) for i in range(10)], Split(x, torch.arange(n) % 10), None)
    user = default_budget(TrainConfig(budget=budget_text))
    cfg = resolve(dataclasses.replace(user, model="mvnet-t"), model_info("mvnet-t").defaults)
    return budget.plan_budget(user, cfg, ds, torch.device("cpu"), "fp32", started=0.0, log=lambda m: None,
                              clock=lambda: 0.0)


@pytest.mark.parametrize("channels,model,augment,batch", [(1, "mvnet-s", "", 128), (3, "mvnet", "flip,shift=2", 256)])
def test_a_budget_picks_from_the_ladder_of_its_pictures(monkeypatch, channels, model, augment, batch):
    """Same measured speeds, same budget: grey pictures get mvnet-s on plain images (mvnet cannot get its
    epochs), colour pictures mvnet with its recipe's augmentation (it gets its 6)."""
    from minivision import budget

    per_epoch = {"mvnet-s": 25.0, "mvnet": 40.0, "mvnet-l": 400.0}  # seconds; usable: 300 * 0.9 - 2.5 = 267.5
    assert per_epoch["mvnet"] * {r.model: r.min_epochs for r in budget.LADDER}["mvnet"] > 267.5
    n = budget.LADDER_TRAIN_IMAGES  # no small-data scaling
    probed = []

    def probe(cfg, ds, device, precision, **timing):
        probed.append(cfg.model)
        return per_epoch[cfg.model] / math.ceil(n / cfg.batch_size)

    final, plan = _plan_on_blank_pictures(monkeypatch, probe, n, channels, 28, "5m")
    assert (final.model, plan.model, final.augment, final.batch_size) == (model, model, augment, batch)
    assert probed[-1] == ("mvnet" if channels == 1 else "mvnet-l")  # the walk stops at the first that misses


def test_the_colour_ladder_counts_epochs_of_cifar_s_training_split(monkeypatch):
    """COLOUR_LADDER's thresholds were measured on CIFAR-10's 45,000 training pictures: a colour dataset of
    that size is not scaled (a grey one of that size is, by 54,000 / 45,000), so the largest network whose
    epochs fit in a 30-minute budget at CIFAR-10's size is picked."""
    from minivision import budget
    from minivision.budget import COLOUR_LADDER, COLOUR_LADDER_TRAIN_IMAGES

    n = COLOUR_LADDER_TRAIN_IMAGES
    assert small_data_scale(n, COLOUR_LADDER_TRAIN_IMAGES) == 1.0 and small_data_scale(n) == pytest.approx(1.2)
    usable = 1800 * 0.9 - budget.Planner.END_RESERVE_S
    top = COLOUR_LADDER[-1]
    # the largest network's threshold fits with 10% to spare unscaled, not when scaled by 1.2
    per_epoch = {"mvnet-s": 5.0, "mvnet": 10.0, top.model: usable / (top.min_epochs * 1.1)}

    def probe(cfg, ds, device, precision, **timing):
        return per_epoch[cfg.model] / math.ceil(n / cfg.batch_size)

    _, plan = _plan_on_blank_pictures(monkeypatch, probe, n, 3, 32, "30m")
    assert plan.model == top.model


@pytest.mark.parametrize("channels,probes", [
    # grey: mvnet-s and mvnet timed at the short run's batch, then, as each gets AUGMENT_MIN_EPOCHS there, again
    # at the recipe's 256; mvnet-l can only be picked for a run that long: timed at 256 straight away
    (1, [("mvnet-s", 128), ("mvnet-s", 256), ("mvnet", 128), ("mvnet", 256), ("mvnet-l", 256)]),
    # colour keeps its recipe's batch for every run
    (3, [("mvnet-s", 256), ("mvnet", 256), ("mvnet-l", 256)]),
])
def test_each_rung_is_timed_at_the_batch_it_would_train_with(monkeypatch, channels, probes):
    from minivision import budget

    ladder = {r.model: r.min_epochs for r in budget.LADDER}
    assert ladder["mvnet-s"] <= ladder["mvnet"] < budget.AUGMENT_MIN_EPOCHS <= ladder["mvnet-l"]
    n = budget.LADDER_TRAIN_IMAGES
    usable = 600 * 0.9 - budget.Planner.END_RESERVE_S
    long = budget.AUGMENT_MIN_EPOCHS
    # seconds per epoch: both smaller networks get the recipe's epochs at 128 (so are timed again), mvnet-l misses
    per_epoch = {("mvnet-s", 128): 10.0, ("mvnet-s", 256): 8.0, ("mvnet", 128): usable / (long + 1),
                 ("mvnet", 256): usable / (long + 2), ("mvnet-l", 256): 400.0}
    seen = []

    def probe(cfg, ds, device, precision, seconds=0.0):
        seen.append((cfg.model, cfg.batch_size))
        assert seconds == pytest.approx(budget.PROBE_SHARE * 600)
        return per_epoch[cfg.model, cfg.batch_size] / math.ceil(n / cfg.batch_size)

    final, plan = _plan_on_blank_pictures(monkeypatch, probe, n, channels, 28, "10m")
    assert seen == probes
    assert (plan.model, final.batch_size) == ("mvnet", 256)
    assert plan.probed_s_per_epoch["mvnet"] == pytest.approx(usable / (long + 2), abs=1e-3)


def test_the_probe_takes_the_median_step_and_times_more_steps_within_its_share(monkeypatch):
    """A fake clock: the warm-up step is not timed, a slow first timed step does not move the median, and
    the probe keeps timing while its steps have taken less than ``seconds`` (never past ``max_steps``)."""
    import torch

    from minivision import budget
    from minivision.config import resolve
    from minivision.data.dataset import Dataset, Split
    from minivision.models import model_info

    def run(step_seconds, **timing):
        marks = iter(itertools.accumulate([0.0, *step_seconds]))
        monkeypatch.setattr(budget, "_sync_time", lambda device: next(marks))
        x = torch.zeros(16, 1, 28, 28, dtype=torch.uint8)
        ds = Dataset("pictures", [str(i) for i in range(10)], Split(x, torch.arange(16) % 10), None)
        cfg = resolve(TrainConfig(model="mvnet-t", batch_size=8), model_info("mvnet-t").defaults)
        return budget.probe_step_seconds(cfg, ds, torch.device("cpu"), "fp32", **timing)

    # the clock's first mark ends the untimed warm-up step; the lists are the timed steps
    assert run([0.9, 0.1, 0.2]) == pytest.approx(0.2)  # three steps: the median, where the mean is 0.4
    assert run([0.9, 0.1, 0.2, 0.1, 0.1], seconds=1.35) == pytest.approx(0.1)  # five: 1.4 s >= 1.35 s
    with pytest.raises(StopIteration):  # it would time a sixth step: the clock has no more marks
        run([0.9, 0.1, 0.2, 0.1, 0.1], seconds=1.5)
    assert run([0.1] * 4, seconds=100.0, max_steps=4) == pytest.approx(0.1)


def test_pick_rung_takes_the_largest_network_that_gets_its_epochs():
    ladder = (Rung("a", 0), Rung("b", 6), Rung("c", 12))
    spe = {"a": 5.0, "b": 20.0, "c": 60.0}
    assert pick_rung(spe, 30, ladder) == "a"     # b needs 120 s
    assert pick_rung(spe, 120, ladder) == "b"
    assert pick_rung(spe, 719, ladder) == "b"    # c needs 720 s
    assert pick_rung(spe, 720, ladder) == "c"
    assert pick_rung({"a": 5.0, "b": 20.0}, 10_000, ladder) == "b"  # c not timed: the search stopped


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _drive(planner, clock, steps, s_per_step):
    for step in range(1, steps + 1):
        clock.t += s_per_step
        planner.observe(step)


def test_planner_fills_the_time_left_after_keeping_back_validation_test_and_files():
    clock = FakeClock()
    p = Planner(deadline=100.0, steps_per_epoch=100, n_val=1000, n_test=2000, batch_size=100, clock=clock)
    assert p.plan(0) is None  # no rate yet
    _drive(p, clock, 15, 0.1)
    assert p.s_per_step == pytest.approx(0.1)
    # left = 100 - 1.5 (elapsed) - files - the test pass (2000 images at FORWARD_COST of a step's per-image time);
    # each step costs 0.1 s plus 1/100 of a validation pass (1000 images, + 0.1 s)
    f = Planner.FORWARD_COST
    left = 100 - 1.5 - Planner.END_RESERVE_S - Planner.REPORT_S - 2000 / 100 * 0.1 * f
    per_step = 0.1 + (1000 / 100 * 0.1 * f + 0.1) / 100
    assert abs(p.plan(15) - (15 + left / per_step)) <= 1


def test_planner_excludes_epoch_pauses_from_the_step_rate_and_uses_the_measured_validation_time():
    clock = FakeClock()
    p = Planner(deadline=60.0, steps_per_epoch=10, n_val=500, n_test=500, batch_size=50, clock=clock, report=False)
    _drive(p, clock, 10, 0.2)
    clock.t += 3.0  # a slow validation pass
    p.epoch_pause(3.0)
    for step in range(11, 21):
        clock.t += 0.2
        p.observe(step)
    assert p.s_per_step == pytest.approx(0.2)
    assert p.val_s == 3.0
    left = 60 - clock.t - Planner.END_RESERVE_S - 500 / 50 * 0.2 * Planner.FORWARD_COST
    assert abs(p.plan(20) - (20 + left / (0.2 + 3.0 / 10))) <= 1


def test_the_plan_follows_a_machine_that_slows_down_but_not_one_that_speeds_up():
    clock = FakeClock()
    p = Planner(deadline=100.0, steps_per_epoch=100, n_val=0, n_test=0, batch_size=10, clock=clock)
    _drive(p, clock, 200, 0.1)
    assert p.s_per_step == pytest.approx(0.1)
    for step in range(201, 201 + Planner.RECENT_STEPS):  # the machine slows down by half
        clock.t += 0.15
        p.observe(step)
    assert p.s_per_step == pytest.approx(0.15)  # the mean since the warm-up would say ~0.111
    clock.t += 5.0  # an epoch's validation pass: not a step
    p.epoch_pause(5.0)
    for step in range(251, 251 + Planner.RECENT_STEPS):  # then speeds up again
        clock.t += 0.05
        p.observe(step)
    mean = (0.1 * (200 - Planner.WARMUP) + 0.15 * 50 + 0.05 * 50) / (300 - Planner.WARMUP)
    assert p.s_per_step == pytest.approx(mean)  # the slower of the two: ending early, never late


def test_a_slow_start_up_keeps_more_back_for_the_report():
    kw = dict(deadline=30.0, steps_per_epoch=100, n_val=0, n_test=0, batch_size=10)
    fixed = Planner.END_RESERVE_S + Planner.REPORT_S
    assert Planner(**kw, startup_s=1.2).reserve_s == pytest.approx(fixed)  # a fast machine: the fixed reserve
    assert Planner(**kw, startup_s=4.6).reserve_s == pytest.approx(4.6 * Planner.REPORT_PER_STARTUP)
    assert Planner(**kw, startup_s=4.6, report=False).reserve_s == pytest.approx(Planner.END_RESERVE_S)


def test_a_long_budget_keeps_a_share_back_for_the_machines_noise():
    clock = FakeClock()
    plain = Planner(deadline=1800.0, steps_per_epoch=100, n_val=0, n_test=0, batch_size=10, clock=clock)
    kept = Planner(deadline=1800.0, steps_per_epoch=100, n_val=0, n_test=0, batch_size=10, clock=clock,
                   budget_s=1800.0)
    _drive(plain, clock, 20, 0.1)
    clock.t = 0.0
    _drive(kept, clock, 20, 0.1)
    # 0.3% of 30 minutes is 5.4 s: 54 fewer steps of 0.1 s
    assert abs((plain.plan(20) - kept.plan(20)) - 1800 * Planner.NOISE_SHARE / 0.1) <= 1


def test_planner_always_allows_one_more_step_and_slows_down_when_the_machine_does():
    clock = FakeClock()
    p = Planner(deadline=10.0, steps_per_epoch=100, n_val=0, n_test=0, batch_size=10, clock=clock)
    _drive(p, clock, 20, 0.1)
    fast = p.plan(20)
    clock.t = 2.0
    slow = Planner(deadline=10.0, steps_per_epoch=100, n_val=0, n_test=0, batch_size=10, clock=FakeClock())
    _drive(slow, slow.clock, 20, 0.3)
    assert slow.plan(20) < fast
    clock.t = 50.0  # past the deadline
    assert p.plan(20) == 21


def test_no_flags_means_the_default_budget_and_explicit_lengths_do_not():
    assert default_budget(TrainConfig()).budget == 30.0
    assert default_budget(TrainConfig(budget="3m")).budget == 180.0
    assert default_budget(TrainConfig(epochs=2)).budget is None
    assert default_budget(TrainConfig(model="cnn2")).budget is None
    assert default_budget(TrainConfig(steps=10)).budget is None


def test_budget_run_picks_a_network_plans_steps_and_records_the_plan(tmp_path):
    ds = synthetic_dataset(400, 80)
    logs = []
    # augment="": the synthetic classes are coded by position, so a flip would change the label
    r = fit(TrainConfig(budget=8.0, out=str(tmp_path), val_split=0.25, augment=""), dataset=ds, progress=False,
            log=logs.append)
    meta = json.loads((r.run_dir / "model.json").read_text())
    plan = meta["budget"]
    assert plan["budget_s"] == 8.0 and plan["model"] in {rung.model for rung in LADDER}
    assert meta["architecture"]["name"] == plan["model"]
    with safe_open(str(r.run_dir / "last.safetensors"), framework="pt") as f:
        progress = json.loads(f.metadata()["progress"])
    # it trained the steps it planned, in epochs of ceil(300 training images / batch size) steps
    assert progress["total_steps"] == progress["step"] == plan["total_steps"]
    batches = math.ceil(300 / r.config.batch_size)
    assert len(r.history) == math.ceil(plan["total_steps"] / batches)
    assert any(line.startswith("budget 8s:") for line in logs)
    assert r.test["test_accuracy"] > 0.5


def test_epochs_override_the_planned_length_but_the_budget_still_picks_the_network(tmp_path):
    ds = synthetic_dataset(200, 40)
    r = fit(TrainConfig(budget=5.0, epochs=2, out=str(tmp_path)), dataset=ds, progress=False, log=lambda m: None)
    meta = json.loads((r.run_dir / "model.json").read_text())
    assert len(r.history) == 2 and meta["budget"]["model"] == meta["architecture"]["name"]


def test_a_named_model_keeps_its_name_under_a_budget(tmp_path):
    ds = synthetic_dataset(200, 40)
    r = fit(TrainConfig(budget=4.0, model="cnn1", out=str(tmp_path)), dataset=ds, progress=False, log=lambda m: None)
    assert json.loads((r.run_dir / "model.json").read_text())["architecture"]["name"] == "cnn1"


@pytest.mark.parametrize("value", ["abc", "0", "-3m"])
def test_cli_bad_budget_is_one_line(value, capsys):
    assert main(["train", f"--budget={value}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --budget") and err.count("\n") == 1


def test_a_finished_budget_run_extends_by_epochs_into_a_new_folder(tmp_path):
    ds = synthetic_dataset(200, 40)
    first = fit(TrainConfig(budget=3.0, out=str(tmp_path), augment=""), dataset=ds, progress=False,
                log=lambda m: None)
    done = len(first.history)
    ext = fit(TrainConfig(epochs=done + 1), dataset=ds, resume=first.run_dir, progress=False, log=lambda m: None)
    assert ext.run_dir != first.run_dir and len(ext.history) == done + 1
    assert json.loads((ext.run_dir / "model.json").read_text()).get("budget") is None


def test_a_named_model_on_a_tiny_dataset_trains_until_the_budget_is_planned(tmp_path):
    """One batch per epoch: the model's default length (a few epochs = a few steps) must not end the
    run before the planner has measured the speed and filled the budget."""
    ds = synthetic_dataset(60, 20)
    r = fit(TrainConfig(model="mvnet-t", budget=15, out=str(tmp_path)), dataset=ds,  # 1 batch of 128 an epoch
            progress=False, log=lambda m: None)
    meta = json.loads((r.run_dir / "model.json").read_text())
    assert meta["budget"]["total_steps"] > Planner.WARMUP + Planner.FIRST_PLAN_AT


# ----------------------------------------------------------------------------- small datasets (CLI and jobs API alike)

def test_small_data_scale_and_batch():
    assert small_data_scale(54_000) == 1.0 and small_data_scale(500_000) == 1.0  # measured size and up: as measured
    assert small_data_scale(900) == pytest.approx(60.0)
    assert small_data_batch(54_000, 256) == 256
    assert small_data_batch(900, 256) == 225  # 4 steps an epoch, not 4 of 256 (the last one 132)
    assert small_data_batch(60, 128) == 15
    assert small_data_batch(20, 128) == 8  # batch norm needs a few images
    assert small_data_batch(5, 128) == 5 and small_data_batch(1, 128) == 1  # never more than there are


def test_a_small_dataset_needs_as_many_images_seen_for_a_larger_network():
    spe = {"mvnet-t": 0.0, "mvnet-s": 0.5, "mvnet": 1.5, "mvnet-l": 3.0}  # seconds per epoch of 900 images
    assert pick_rung(spe, 108, LADDER) == "mvnet-l"  # counted in epochs: 30 epochs of mvnet-l fit in 108 s
    # counted in images seen: mvnet-s's 6 Fashion-MNIST epochs are 360 epochs of 900 images = 180 s
    assert pick_rung(spe, 108, LADDER, small_data_scale(900)) == "mvnet-t"
    assert pick_rung(spe, 180, LADDER, small_data_scale(900)) == "mvnet-s"


def test_the_cli_and_the_jobs_api_plan_a_small_dataset_the_same_way(tmp_path):
    """``minivision train --budget`` picks the network; the jobs API names mvnet-t: both get the small
    network, batches of a quarter of the images, and the step count from the planner."""
    ds = synthetic_dataset(200, 40)  # 150 training images after the 25% validation split
    runs = {name: fit(TrainConfig(budget=4.0, model=model, out=str(tmp_path), name=name, val_split=0.25, augment=""),
                      dataset=ds, progress=False, log=lambda m: None)
            for name, model in (("cli", None), ("jobs", "mvnet-t"))}
    for r in runs.values():
        meta = json.loads((r.run_dir / "model.json").read_text())
        assert meta["architecture"]["name"] == "mvnet-t"
        assert r.config.batch_size == small_data_batch(150, 128) == 37
        assert meta["budget"]["model"] == "mvnet-t" and meta["budget"]["total_steps"] >= 1
    # a batch size the user gives is kept
    r = fit(TrainConfig(budget=3.0, batch_size=64, out=str(tmp_path), val_split=0.25, augment=""), dataset=ds,
            progress=False, log=lambda m: None)
    assert r.config.batch_size == 64


def test_fixed_length_runs_get_the_small_data_batch_too(tmp_path):
    """A recipe's batch of 128 on 108 pictures is one step an epoch (a useless model after 10 epochs):
    fixed --epochs/--steps runs get the budget's small-data rule, with a note; a batch the user set is kept,
    and a dataset of Fashion-MNIST's size keeps the recipe's."""
    ds = synthetic_dataset(120, 20)  # 108 training images after the 10% validation split
    said: list[str] = []
    r = fit(TrainConfig(model="mvnet-t", epochs=1, augment="", out=str(tmp_path)), dataset=ds,
            progress=False, log=said.append)
    assert r.config.batch_size == small_data_batch(108, 128) == 27
    assert any(line.startswith("note: 108 training images: batches of 27 instead of the recipe's 128") for line in said)
    r = fit(TrainConfig(model="mvnet-t", steps=2, augment="", out=str(tmp_path)), dataset=ds,
            progress=False, log=lambda m: None)
    assert r.config.batch_size == 27
    said.clear()
    r = fit(TrainConfig(model="mvnet-t", epochs=1, batch_size=128, augment="", out=str(tmp_path)), dataset=ds,
            progress=False, log=said.append)
    assert r.config.batch_size == 128 and not any("instead of the recipe's" in line for line in said)
    assert small_data_batch(54_000, 128) == 128 and small_data_batch(512, 128) == 128  # 4+ steps: unchanged


def test_sub_second_epochs_are_not_printed_as_0_s():
    assert format_epoch_seconds(0.004) == "4 ms" and format_epoch_seconds(0.35) == "350 ms"
    assert format_epoch_seconds(0.0001) == "1 ms"  # never "0"
    assert format_epoch_seconds(4.2) == "4 s" and format_epoch_seconds(1.0) == "1 s"


def test_short_epochs_print_a_line_every_two_seconds_the_first_the_last_and_new_bests():
    now = [0.0]
    lines = EpochLines(clock=lambda: now[0])
    shown = []
    for epoch in range(1, 201):  # 200 epochs of 50 ms: 10 s
        now[0] += 0.05
        acc = 0.5 if epoch < 150 else 0.75  # a new best accuracy at epoch 150
        if lines.show(acc, first=epoch == 1, last=epoch == 200):
            shown.append(epoch)
    assert shown[:EpochLines.FIRST] == list(range(1, EpochLines.FIRST + 1))
    assert shown[-1] == 200 and 150 in shown
    later = [e for e in shown[EpochLines.FIRST:] if e not in (150, 200)]
    assert all(b - a >= 40 for a, b in zip(later, later[1:], strict=False))  # 2 s apart = 40 epochs of 50 ms
    assert 5 <= len(shown) - EpochLines.FIRST <= 8  # ~9.5 s of lines every 2 s, plus the best and the last
    # epochs of 2 s or more: every line
    slow = EpochLines(clock=lambda: now[0])
    shown = []
    for _ in range(30):
        now[0] += 2.5
        shown.append(slow.show(0.5, first=False, last=False))
    assert all(shown)


def test_a_run_of_short_epochs_prints_few_lines_but_keeps_every_epoch(tmp_path, monkeypatch):
    monkeypatch.setattr(EpochLines, "EVERY_S", 1e9)  # no time-based line: only first epochs, bests, last
    monkeypatch.setattr(EpochLines, "FIRST", 2)
    said: list[str] = []
    r = fit(TrainConfig(model="softmax", epochs=30, augment="", out=str(tmp_path)), dataset=synthetic_dataset(40, 8),
            progress=False, log=said.append)
    epoch_lines = [line for line in said if line.startswith("epoch ")]
    assert len(r.history) == 30 and len(epoch_lines) < 30
    assert epoch_lines[0].startswith("epoch 1/30") and epoch_lines[-1].startswith("epoch 30/30")
    assert sum("epochs are short" in line for line in said) == 1
    with open(r.run_dir / "results.csv") as f:
        assert len(f.read().splitlines()) == 31  # header + every epoch
