"""The learning-rate range test: the sweep, the smoothing, the suggestion inside the range swept, the
caller's model, optimizer and random state untouched; `minivision lr-find`; `train --lr auto` (recorded in
args.yaml, and the same weights as `train --lr X` with the rate it found); one-line errors."""

from __future__ import annotations

import math
import re

import pytest
import torch
import yaml

from minivision.cli import main
from minivision.config import TrainConfig, resolve
from minivision.errors import MinivisionError
from minivision.lr_find import BETA, lr_range_test, rate_at, round_rate, train_command, valley
from minivision.models import create_model, model_info
from minivision.optim import make_optimizer
from minivision.preprocess import Preprocess
from minivision.train import fit

from .conftest import needs_fashion_mnist, synthetic_dataset


def test_valley_is_in_the_longest_fall():
    losses = [2.3, 2.3, 2.2, 2.0, 1.7, 1.3, 1.0, 0.8, 0.7, 0.9, 1.5, 3.0]
    i = valley(losses)
    assert 2 <= i <= 8 and losses[i] < losses[0]  # within the fall, before the minimum's blow-up
    assert valley([1.0, 1.0, 1.0]) == 0


def test_rate_rises_exponentially_from_start_to_end():
    rates = [rate_at(i, 5, 1e-4, 1.0) for i in range(5)]
    assert rates[0] == pytest.approx(1e-4) and rates[-1] == pytest.approx(1.0)
    assert all(b / a == pytest.approx(10.0) for a, b in zip(rates, rates[1:], strict=False))
    assert round_rate(0.0031623) == 0.0032 and round_rate(0.2) == 0.2


def _setup(model_name="cnn1", **over):
    ds = synthetic_dataset(160, 20)
    cfg = resolve(TrainConfig(model=model_name, batch_size=16, **over), model_info(model_name).defaults)
    torch.manual_seed(0)
    model = create_model(model_name, in_channels=1, image_size=(28, 28), num_classes=4)
    return ds, cfg, model, Preprocess.fit(ds.train.x, cfg.normalize)


def test_the_test_leaves_model_optimizer_and_randomness_untouched_and_suggests_inside_the_sweep():
    ds, cfg, model, pre = _setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = make_optimizer(cfg, model)
    opt_before = repr(opt.state_dict())
    rng = torch.get_rng_state()
    result = lr_range_test(model, pre, ds.train.x, ds.train.y, cfg, num_classes=4, start_lr=1e-5, end_lr=1.0, steps=40)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert repr(opt.state_dict()) == opt_before and torch.equal(torch.get_rng_state(), rng)
    assert 1e-5 <= result.suggestion <= 1.0 and result.suggestion in result.lrs
    assert result.lrs[result.index] == result.suggestion and 1e-5 <= result.minimum <= 1.0
    assert len(result.lrs) == len(result.losses) == len(result.smoothed) <= 40
    assert result.lrs == [rate_at(i, 40, 1e-5, 1.0) for i in range(len(result.lrs))]
    avg = 0.0
    for i, loss in enumerate(result.losses):  # the debiased moving average, recomputed
        avg = BETA * avg + (1 - BETA) * loss
        assert result.smoothed[i] == pytest.approx(avg / (1 - BETA ** (i + 1)))
    assert result.smoothed[0] == pytest.approx(result.losses[0])
    again = lr_range_test(model, pre, ds.train.x, ds.train.y, cfg, num_classes=4, start_lr=1e-5, end_lr=1.0, steps=40)
    assert again.losses == result.losses  # seeded: the same curve twice


def test_the_test_stops_when_the_loss_blows_up():
    # a linear model on random labels: at a high rate its logits grow without bound and so does the loss (a ReLU
    # network may die instead, at a constant guess's loss, which is not 4 x its lowest: the sweep then runs on)
    ds, cfg, model, pre = _setup("softmax", optimizer="gd")
    y = torch.randint(0, 4, (len(ds.train.y),), generator=torch.Generator().manual_seed(0))
    result = lr_range_test(model, pre, ds.train.x, y, cfg, num_classes=4, start_lr=1e-3, end_lr=1e6, steps=200)
    assert result.stopped is not None and len(result.lrs) < 200
    assert 1e-3 <= result.suggestion < result.lrs[-1]
    assert not any(math.isnan(v) for v in result.smoothed)


def test_bad_sweeps_are_one_line_errors():
    ds, cfg, model, pre = _setup()
    for kw, needle in (({"start_lr": 1.0, "end_lr": 0.1}, "must rise"), ({"steps": 5}, "at least 10")):
        with pytest.raises(MinivisionError, match=needle):
            lr_range_test(model, pre, ds.train.x, ds.train.y, cfg, num_classes=4, **kw)


def test_train_command_is_ready_to_paste():
    cmd = train_command({"model": "cnn2", "data": "my pictures", "batch_size": 64, "nesterov": False,
                         "out": "x"}, 0.0031623)
    assert cmd == "minivision train --model cnn2 --data 'my pictures' --batch-size 64 --no-nesterov --lr 0.0032"


def test_lr_find_command_prints_a_train_command_and_saves_the_plot(synth_csv, tmp_path, capsys):
    train, test = synth_csv
    assert main(["lr-find", "--data", str(train), "--model", "cnn1", "--batch-size", "32", "--steps", "30",
                 "--start-lr", "1e-5", "--end-lr", "1", "--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    cmd = out.strip()
    assert cmd.startswith(f"minivision train --model cnn1 --data {train} --batch-size 32 ")
    assert "--pretrained none" in cmd  # a small dataset: train would fine-tune a backbone, this rate is from scratch
    lr = float(re.search(r"--lr (\S+)$", cmd).group(1))
    assert 1e-5 <= lr <= 1.0
    assert "suggested learning rate" in err
    assert (tmp_path / "lr-find" / "lr_find.png").is_file() and (tmp_path / "lr-find" / "lr_find.csv").is_file()
    rows = (tmp_path / "lr-find" / "lr_find.csv").read_text().splitlines()
    assert rows[0] == "step,lr,loss,smoothed" and 10 <= len(rows) - 1 <= 30
    assert main(["lr-find", "--data", str(train), "--model", "cnn1", "--steps", "10", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "lr-find2" / "lr_find.png").is_file()  # never overwritten


def test_lr_find_on_a_small_dataset_uses_train_s_batch(synth_csv, tmp_path, capsys):
    """256 training pictures (320 less cnn1's validation split): train's batches of 64 (a quarter), not cnn1's
    recipe 256 (one step an epoch); lr-find measures at that batch and says so as train does."""
    train, _ = synth_csv
    assert main(["lr-find", "--data", str(train), "--model", "cnn1", "--steps", "10", "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "note: 256 training images: batches of 64 instead of the recipe's 256" in err, err
    assert "batch 64," in err


def test_train_lr_auto_records_the_rate_and_trains_a_fresh_model(synth_csv, tmp_path, capsys):
    from minivision.fileio import load_tensors

    train, _ = synth_csv
    common = ["train", "--data", str(train), "--model", "cnn1", "--epochs", "1", "--batch-size", "32",
              "--val-split", "0.25", "--out", str(tmp_path)]
    assert main([*common, "--lr", "auto", "--name", "auto"]) == 0
    args = yaml.safe_load((tmp_path / "auto" / "args.yaml").read_text())
    lr = args["lr"]
    assert isinstance(lr, float) and 1e-7 <= lr <= 10
    assert args["lr_found"]["by"] == "learning-rate range test" and args["lr_found"]["steps_run"] >= 10
    assert round_rate(args["lr_found"]["suggested"]) == lr
    assert (tmp_path / "auto" / "lr_find.png").is_file()
    assert main([*common, "--lr", repr(lr), "--name", "fixed"]) == 0
    a = load_tensors(tmp_path / "auto" / "model.safetensors")
    b = load_tensors(tmp_path / "fixed" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the test changed nothing else
    capsys.readouterr()


def _rc(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse's own checks
        return int(e.code)


@pytest.mark.parametrize("argv,needle", [
    (["train", "--lr", "fast"], "expected a number, got 'fast' (or auto)"),
    (["train", "--lr", "auto", "--budget", "10s", "--data", "x.csv"], "--lr auto goes with --epochs or --steps"),
    (["train", "--lr", "auto", "--epochs", "1", "--budget", "30s", "--data", "x.csv"],
     "--lr auto cannot go with --budget"),
    (["lr-find", "--start-lr", "1", "--end-lr", "0.1", "--data", "x.csv"], "the sweep must rise"),
    (["lr-find", "--start-lr", "0"], "--start-lr"),
    (["lr-find", "--steps", "3"], "--steps"),
])
def test_cli_errors_are_one_line(argv, needle, capsys, synth_csv, tmp_path):
    train, _ = synth_csv
    argv = [str(train) if a == "x.csv" else a for a in argv] + (["--out", str(tmp_path)] if "x.csv" in argv else [])
    assert _rc(argv) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0], err
    assert not (tmp_path / "train").exists()


def test_lr_auto_with_a_pretrained_start_is_one_line(synth_csv, tmp_path):
    train, _ = synth_csv
    cfg = TrainConfig(data=str(train), epochs=1, lr="auto", pretrained="efficientnet-lite0", out=str(tmp_path))
    with pytest.raises(MinivisionError, match="--lr auto finds the rate of a training from scratch"):
        fit(cfg, progress=False, log=lambda m: None)


@needs_fashion_mnist
def test_lr_find_on_fashion_mnist(tmp_path, capsys):
    """Real data: cnn2 on Fashion-MNIST's training split, a short sweep; the suggestion is a rate Adam trains
    cnn2 with (between 1e-4 and 1e-1; its recipe's is 1e-3)."""
    assert main(["lr-find", "--model", "cnn2", "--steps", "60", "--start-lr", "1e-6", "--out", str(tmp_path)]) == 0
    lr = float(re.search(r"--lr (\S+)$", capsys.readouterr().out.strip()).group(1))
    assert 1e-4 <= lr <= 1e-1
