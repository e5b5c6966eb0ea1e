"""``minivision compare`` on tiny runs trained with the real code on synthetic data."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import pytest

from minivision import compare
from minivision.compare import (
    CompareInterrupted,
    compare_runs,
    format_table,
    plot_comparison,
    run_row,
    train_and_compare,
    write_comparison,
)
from minivision.config import TrainConfig
from minivision.errors import MinivisionError
from minivision.models import count_parameters
from minivision.runfiles import load_model
from minivision.train import fit

from .conftest import synthetic_dataset

QUIET = {"log": lambda m: None, "progress": False}
MODELS = ("softmax", "mlp", "cnn1")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    """Three finished runs (one epoch each) on the same synthetic dataset."""
    out = tmp_path_factory.mktemp("runs")
    ds = synthetic_dataset()
    # val_split: mlp's own rule (the first 5000 images) needs more images than this
    return [fit(TrainConfig(model=m, epochs=1, batch_size=32, out=str(out), name=m, data="synthetic", val_split=0.25),
                dataset=ds, **QUIET).run_dir for m in MODELS]


def _rows(n: int = 5) -> list[dict]:
    """Hand-made rows with plausible Fashion-MNIST numbers, for the table and the picture."""
    table = [("softmax", 0.8412, 0.4633, 7_850, 7_840, 9.8, 31_528, 5),
             ("mlp", 0.8835, 0.3301, 266_610, 266_200, 61.2, 1_067_000, 30),
             ("cnn1", 0.9129, 0.2534, 693_962, 5_992_576, 28.9, 2_776_000, 10),
             ("cnn3", 0.9187, 0.2301, 241_546, 11_500_000, 88.4, 966_600, 10),
             ("cnn4", 0.9301, 0.2012, 1_264_000, 8_700_000, 151.0, 5_060_000, 10),
             ("mvnet-t", 0.9283, 0.2100, 70_000, 3_100_000, 30.1, 290_000, 11),
             ("mvnet-s", 0.9309, 0.2001, 170_000, 9_000_000, 180.0, 700_000, 7),
             ("mvnet", 0.9320, 0.1990, 660_000, 30_000_000, 400.0, 2_700_000, 8),
             ("mvnet-l", 0.9350, 0.1900, 2_600_000, 120_000_000, 1500.0, 10_500_000, 8),
             ("cnn2-bn", 0.9050, 0.2700, 420_000, 4_000_000, 40.0, 1_700_000, 5)]
    return [{"run": f"runs/compare/{m}", "model": m, "data": "fashion-mnist", "test_accuracy": a, "test_loss": lo,
             "val_accuracy": a + 0.002, "parameters": p, "macs": mac, "train_seconds": s, "epochs": e,
             "model_bytes": b, "data_source": "fashion-mnist"}
            for m, a, lo, p, mac, s, b, e in table[:n]]


# ----------------------------------------------------------------------------- rows from run folders

def test_rows_hold_the_values_in_model_json(runs):
    rows = compare_runs(runs)
    assert [r["model"] for r in rows] == list(MODELS)  # the order given
    for run, row in zip(runs, rows, strict=True):
        metrics = json.loads((run / "model.json").read_text())["metrics"]
        assert row["test_accuracy"] == metrics["test_accuracy"] and row["test_loss"] == metrics["test_loss"]
        assert row["val_accuracy"] == metrics["val_accuracy"] and row["epochs"] == metrics["epochs"] == 1
        assert row["train_seconds"] == metrics["train_seconds"]
        assert row["parameters"] == count_parameters(load_model(run).model)
        assert row["model_bytes"] == (run / "model.safetensors").stat().st_size
        assert row["data"] == "synthetic" and row["run"] == str(run) and "tta_accuracy" not in row
    assert rows[0]["macs"] == 28 * 28 * 4  # softmax: one Linear, 784 inputs x 4 classes
    assert rows[2]["macs"] > rows[1]["macs"] > rows[0]["macs"]


def test_run_row_accepts_model_json_and_reports_tta(runs, tmp_path):
    assert run_row(runs[0] / "model.json")["run"] == str(runs[0])
    copy = tmp_path / "tta"
    copy.mkdir()
    for f in ("model.safetensors", "model.json"):
        (copy / f).write_bytes((runs[0] / f).read_bytes())
    meta = json.loads((copy / "model.json").read_text())
    meta["metrics"]["tta_accuracy"] = 0.5
    (copy / "model.json").write_text(json.dumps(meta))
    assert run_row(copy)["tta_accuracy"] == 0.5


def _copy_with(run: Path, folder: Path, **meta_over) -> Path:
    """A copy of ``run`` whose model.json has ``meta_over`` (``metrics`` merged into its own)."""
    folder.mkdir()
    for f in ("model.safetensors", "model.json"):
        (folder / f).write_bytes((run / f).read_bytes())
    meta = json.loads((folder / "model.json").read_text())
    meta["metrics"].update(meta_over.pop("metrics", {}))
    meta.update(meta_over)
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


def test_a_model_answering_with_tta_has_its_column_named_by_the_mode(runs, tmp_path):
    both = _copy_with(runs[0], tmp_path / "both", tta="flip+shift", metrics={"test_accuracy_tta": 0.61, "tta": "x"})
    row = run_row(both)
    assert row["tta_accuracy"] == 0.61 and row["tta"] == "flip+shift"
    unrecorded = run_row(_copy_with(runs[1], tmp_path / "unrecorded", tta="flip+shift"))
    assert math.isnan(unrecorded["tta_accuracy"]) and unrecorded["tta"] == "flip+shift"  # shown as "-"
    plain = run_row(runs[2])
    assert "tta" not in plain and "tta_accuracy" not in plain
    rows = [row, unrecorded, plain]
    header = format_table(rows).splitlines()[0]
    assert "flip+shift TTA acc" in header
    assert "| Test accuracy (flip+shift TTA) |" in compare.format_markdown(rows).splitlines()[0]
    assert "61.00%" in format_table(rows).splitlines()[2]
    fields = compare.format_csv(rows).splitlines()[0].split(",")
    assert fields.index("tta_accuracy") + 1 == fields.index("tta")
    flip = run_row(_copy_with(runs[2], tmp_path / "flip", tta="flip", metrics={"test_accuracy_tta": 0.5}))
    mixed = format_table([row, flip]).splitlines()[0]
    assert " TTA acc" in mixed and "flip TTA acc" not in mixed and "flip+shift TTA acc" not in mixed
    assert "TTA" not in format_table([plain])


def test_not_a_run_and_duplicates_are_refused(runs, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MinivisionError, match=str(empty)):
        compare_runs([runs[0], empty])
    with pytest.raises(MinivisionError, match="no such run folder"):
        compare_runs([tmp_path / "missing"])
    with pytest.raises(MinivisionError, match="given twice"):
        compare_runs([runs[0], runs[1], runs[0] / "model.json"])
    with pytest.raises(MinivisionError, match="at least one"):
        compare_runs([])


def test_different_datasets_are_noted_not_refused(runs):
    rows = compare_runs(runs[:2])
    rows[1] = {**rows[1], "data": "mnist", "data_source": "mnist"}
    table = format_table(rows)
    assert "runs use different datasets: mnist, synthetic" in table
    assert "data" in table.splitlines()[0]
    assert "runs use different datasets" not in format_table(compare_runs(runs))


# ----------------------------------------------------------------------------- files

def test_comparison_files(runs, tmp_path):
    rows = compare_runs(runs)
    paths = write_comparison(rows, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compare.csv", "compare.md", "compare.png"]

    with open(paths["csv"], newline="") as f:
        back = list(csv.DictReader(f))
    assert [r["model"] for r in back] == list(MODELS)
    for row, read in zip(rows, back, strict=True):
        for key, value in row.items():
            assert (float(read[key]) == value) if isinstance(value, float) else read[key] == str(value), key

    md = paths["md"].read_text().splitlines()
    table = [line for line in md if line.startswith("|")]
    assert len(table) == 2 + len(MODELS)  # header, alignment row, one line per model
    best = max(range(3), key=lambda i: rows[i]["test_accuracy"])
    assert f"**{rows[best]['test_accuracy']:.2%}**" in table[2 + best]
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_markdown_units_and_bold_best():
    rows = _rows(5)
    text = compare.format_markdown(rows)
    lines = text.splitlines()
    assert lines[0] == ("| Model | Test accuracy | Test loss | Validation accuracy | Parameters | Multiply-adds "
                        "| Train time | Model size | Epochs | Run |")
    assert lines[2] == ("| softmax | 84.12% | 0.4633 | 84.32% | 7,850 | 7.84 K | 9.8 s | 32 KB | 5 "
                        "| `runs/compare/softmax` |")
    assert lines[4] == ("| cnn1 | 91.29% | 0.2534 | 91.49% | 693,962 | 5.99 M | 28.9 s | 2.8 MB | 10 "
                        "| `runs/compare/cnn1` |")
    assert "| 8.70 M |" in lines[6] and "| 11.5 M |" in lines[5] and "| 266 K |" in lines[3]
    assert "**93.01%**" in lines[6] and lines[6].startswith("| cnn4 |") and "151 s" in lines[6]
    assert text.count("**") == 4 and "**Bold**: best test accuracy" in text


def test_terminal_table_keeps_order_and_marks_best():
    rows = _rows(5)
    lines = format_table(rows).splitlines()
    assert [line.split()[0] for line in lines[2:7]] == ["softmax", "mlp", "cnn1", "cnn3", "cnn4"]
    assert "93.01% *" in lines[6] and lines.count("* best test accuracy") == 1
    assert len({line.index("runs/") for line in lines[2:7]}) == 1  # aligned columns
    assert lines[2].index("84.12%") == lines[6].index("93.01%")  # the marker does not shift the digits


def test_failed_rows_are_shown_not_fatal(tmp_path):
    rows = _rows(2) + [{"model": "cnn3", "data": "fashion-mnist", "run": "", "error": "failed: too small"}]
    table = format_table(rows)
    assert "cnn3: failed: too small" in table and "failed" in table.splitlines()[4]
    paths = write_comparison(rows, tmp_path)
    assert "cnn3: failed: too small" in paths["md"].read_text()
    assert "error" in paths["csv"].read_text().splitlines()[0]


def test_short_train_times_keep_two_significant_digits(tmp_path):
    assert [compare._seconds(v) for v in (0.031, 0.0042, 0.0, 0.25, 9.8, 151.0, math.nan)] == \
        ["0.031 s", "0.0042 s", "0.0 s", "0.2 s", "9.8 s", "151 s", "-"]
    rows = _rows(2)
    rows[0]["train_seconds"] = 0.031
    assert "0.031 s" in format_table(rows) and "| 0.031 s |" in compare.format_markdown(rows)
    fig = plot_comparison(rows)
    bar_texts = [t.get_text() for t in fig.axes[1].texts]
    assert any(t.startswith("0.031 s") for t in bar_texts), bar_texts


def test_curves_of_one_epoch_show_a_point_on_whole_epoch_ticks(runs):
    rows = compare_runs(runs)
    fig = compare.plot_curves(rows)
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks == [1.0], ticks  # one epoch: one whole-epoch tick, not 0.95, 1.00, 1.05
        for line in ax.get_lines():
            if len(line.get_xdata()) == 1:
                assert line.get_marker() == "o" and line.get_markersize() >= 5  # a single point is drawn


# ----------------------------------------------------------------------------- plot

def test_plot_comparison_with_and_without_ax():
    from matplotlib.figure import Figure

    fig = plot_comparison(_rows(5))
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    acc = fig.axes[0]
    assert 0.7 <= acc.get_ylim()[0] < 0.8412 and "axis starts at" in acc.get_ylabel()
    assert [t.get_text() for t in acc.get_xticklabels()] == ["softmax", "mlp", "cnn1", "cnn3", "cnn4"]

    own = Figure()
    ax = own.add_subplot(1, 1, 1)
    assert plot_comparison(_rows(3), metric="parameters", ax=ax) is own
    assert ax.get_yscale() == "log" and len(own.axes) == 1
    with pytest.raises(MinivisionError, match="did you mean 'test_accuracy'"):
        plot_comparison(_rows(3), metric="test_acuracy")


def test_plot_png_for_ten_models(tmp_path):
    write_comparison(_rows(10), tmp_path)  # for a person to look at: tests/test_compare.py keeps it honest
    assert (tmp_path / "compare.png").stat().st_size > 10_000


# ----------------------------------------------------------------------------- train and compare

def test_train_and_compare_two_models(tmp_path):
    ds = synthetic_dataset()
    folder, rows = train_and_compare(["softmax", "cnn1"], dataset=ds, epochs=1, batch_size=32, out=tmp_path, **QUIET)
    assert folder == tmp_path / "compare"
    assert sorted(p.name for p in folder.iterdir()) == ["cnn1", "compare.csv", "compare.md", "compare.png", "softmax"]
    assert [r["model"] for r in rows] == ["softmax", "cnn1"] and all(r["epochs"] == 1 for r in rows)
    assert all((folder / m / "model.json").is_file() for m in ("softmax", "cnn1"))
    assert all(r.pop("fixed") == "--epochs 1 --batch-size 32" for r in rows)  # what every run was given
    assert rows == compare_runs([folder / "softmax", folder / "cnn1"])  # the rest, as the run folders say
    again, _ = train_and_compare(["softmax"], dataset=ds, epochs=1, out=tmp_path, **QUIET)
    assert again == tmp_path / "compare2"  # never overwritten


def test_a_model_that_cannot_run_gets_an_error_row(tmp_path):
    ds = synthetic_dataset(120, 40, size=12)  # cnn3's three 3x3 convolutions and two poolings need more
    folder, rows = train_and_compare(["softmax", "cnn3"], dataset=ds, epochs=1, out=tmp_path, **QUIET)
    assert "error" not in rows[0] and "larger images" in rows[1]["error"]
    assert (folder / "softmax").is_dir() and not (folder / "cnn3").exists()
    assert "cnn3: failed" in (folder / "compare.md").read_text()


def test_ctrl_c_writes_the_finished_models_and_stops(tmp_path, monkeypatch):
    calls = []

    def stopped_second(cfg, **kw):
        calls.append(cfg.model)
        result = fit(cfg, **kw)
        return dataclasses.replace(result, interrupted=True) if len(calls) == 2 else result

    monkeypatch.setattr(compare, "fit", stopped_second)
    with pytest.raises(CompareInterrupted) as info:
        train_and_compare(["softmax", "mlp", "cnn1"], dataset=synthetic_dataset(), epochs=1, val_split=0.25,
                          out=tmp_path, **QUIET)
    assert isinstance(info.value, KeyboardInterrupt) and calls == ["softmax", "mlp"]  # cnn1 never started
    rows = info.value.rows
    assert "error" not in rows[0] and "interrupted" in rows[1]["error"]
    assert not (info.value.folder / "cnn1").exists()
    assert "| mlp | interrupted |" in (info.value.folder / "compare.md").read_text()


@pytest.mark.parametrize("models, kw, message", [
    (["softmax", "cnn9"], {"epochs": 1}, "unknown model 'cnn9'; did you mean"),
    (["softmax", "mlp"], {"epochs": 1, "budget": "1m"}, "not both"),
    ([], {"epochs": 1}, "at least one model"),
    (["mlp", "mlp"], {"epochs": 1}, "given twice"),
    (["mlp"], {"epochs": 1, "lr": -1.0}, "--lr must be > 0"),
    (["mlp"], {"epochs": 1, "batchsize": 8}, "did you mean 'batch_size'"),
    (["mlp"], {"budget": "soon"}, "duration"),
])
def test_bad_requests_fail_before_training(tmp_path, monkeypatch, models, kw, message):
    monkeypatch.setattr(compare, "fit", lambda *a, **k: pytest.fail("trained before checking"))
    with pytest.raises(MinivisionError, match=message):
        train_and_compare(models, dataset=synthetic_dataset(), out=tmp_path, **kw, **QUIET)
    assert not (tmp_path / "compare").exists()


def test_budget_and_own_settings_are_passed_to_fit(tmp_path, monkeypatch):
    seen: list[TrainConfig] = []
    logged: list[str] = []

    def record(cfg, **kw):
        seen.append(cfg)
        raise MinivisionError("stop here")

    monkeypatch.setattr(compare, "fit", record)
    ds = synthetic_dataset()
    with pytest.raises(MinivisionError, match="no model finished"):
        train_and_compare(["softmax", "mlp"], dataset=ds, budget="2m", out=tmp_path, log=logged.append)
    out = str(tmp_path / "compare")
    assert [(c.model, c.budget, c.epochs, c.out, c.name) for c in seen] == [("softmax", 120.0, None, out, "softmax"),
                                                                            ("mlp", 120.0, None, out, "mlp")]
    assert "each for 2m (about 4m in all)" in logged[0]
    seen.clear()
    with pytest.raises(MinivisionError, match="no model finished"):
        train_and_compare(["softmax", "mlp"], dataset=ds, out=tmp_path, log=logged.append)
    assert all(c.epochs is None and c.budget is None for c in seen)
    assert any("own registered settings: softmax 1000 steps, mlp 30 epochs" in m for m in logged)


def test_nan_test_metrics_without_a_test_split():
    rows = [{**r, "test_accuracy": math.nan, "test_loss": math.nan} for r in _rows(3)]
    assert "* best validation accuracy (no test split)" in format_table(rows)
    fig = plot_comparison(rows)
    assert "validation" in fig.axes[0].get_ylabel()


# ----------------------------------------------------------------------------- every column in Markdown, sweeps

def test_markdown_keeps_every_column_of_the_printed_table():
    rows = _rows(3)
    rows[1]["tta_accuracy"] = 0.8901
    import re

    def cells(line: str, markdown: bool) -> list[str]:
        parts = line.strip().strip("|").split("|") if markdown else re.split(r"\s{2,}", line.strip())
        return [c.strip().strip("`").replace("**", "").removesuffix(" *") for c in parts]

    term, md = format_table(rows).splitlines(), compare.format_markdown(rows).splitlines()
    assert len(cells(md[0], True)) == len(cells(term[0], False)) == 11  # with TTA, validation accuracy and run
    assert cells(md[0], True)[4] == "Validation accuracy" and cells(md[0], True)[-1] == "Run"
    for t, m in zip(term[2:5], md[2:5], strict=True):
        assert cells(m, True) == cells(t, False)  # the same cells, in the same order
    body = compare.format_markdown(rows).splitlines()[3]
    assert "| 88.55% |" in body and "| 89.01% |" in body and "`runs/compare/mlp`" in body  # val and TTA accuracy


def _sweep_fit(seen):
    def record(cfg, **kw):
        seen.append(cfg)
        raise MinivisionError("stop here")
    return record


def test_a_sweep_trains_one_model_once_per_value(tmp_path):
    ds = synthetic_dataset()
    folder, rows = train_and_compare(["softmax"], dataset=ds, epochs=1, batch_size=[16, 64], out=tmp_path, **QUIET)
    assert sorted(p.name for p in folder.iterdir()) == ["compare.csv", "compare.md", "compare.png", "curves.png",
                                                        "softmax-batch-size-16", "softmax-batch-size-64"]
    assert [(r["model"], r["setting"], r["value"]) for r in rows] == [("softmax", "batch_size", 16),
                                                                       ("softmax", "batch_size", 64)]
    import yaml

    assert [yaml.safe_load((folder / f"softmax-batch-size-{b}" / "args.yaml").read_text())["batch_size"]
            for b in (16, 64)] == [16, 64]
    md = (folder / "compare.md").read_text()
    assert "| softmax --batch-size 16 |" in md and "| softmax --batch-size 64 |" in md
    assert "every run: --epochs 1\n" in md and "every run: --epochs 1" in format_table(rows)
    assert all(r["fixed"] == "--epochs 1" for r in rows)  # what the row names omit
    assert "softmax --batch-size 64" in format_table(rows)
    header = (folder / "compare.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["model", "setting", "value"]
    assert (folder / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = compare.plot_curves(rows)
    acc, loss = fig.axes
    assert [line.get_label() for line in acc.get_lines()] == ["softmax --batch-size 16", "softmax --batch-size 64"]
    assert "Validation" in acc.get_title() and len(loss.get_lines()) == 4  # validation and training loss
    assert loss.get_title() == "Validation loss (hollow: training loss)"  # one epoch each: points, not lines


def test_the_shared_settings_read_as_train_takes_them():
    from minivision.compare import _as_flag

    assert [_as_flag("nesterov", True), _as_flag("nesterov", False)] == ["--nesterov", "--no-nesterov"]
    assert [_as_flag("tensorboard", True), _as_flag("tensorboard", False)] == ["--tensorboard", ""]
    assert [_as_flag("budget", 180.0), _as_flag("lr", 0.01), _as_flag("seed", 3)] == ["--budget 3m", "--lr 0.01",
                                                                                       "--seed 3"]


def test_an_epochs_sweep_and_any_setting_reach_fit(tmp_path, monkeypatch):
    seen: list[TrainConfig] = []
    logged: list[str] = []
    monkeypatch.setattr(compare, "fit", _sweep_fit(seen))
    ds = synthetic_dataset()
    with pytest.raises(MinivisionError, match="no model finished"):
        train_and_compare(["cnn2"], dataset=ds, epochs=[5, 10, 40], out=tmp_path, log=logged.append)
    assert [(c.model, c.epochs, c.name) for c in seen] == [("cnn2", 5, "cnn2-epochs-5"), ("cnn2", 10, "cnn2-epochs-10"),
                                                          ("cnn2", 40, "cnn2-epochs-40")]
    assert "comparing cnn2 with --epochs 5, 10, 40" in logged[0]
    seen.clear()
    with pytest.raises(MinivisionError, match="no model finished"):
        train_and_compare(["mlp"], dataset=ds, epochs=1, augment=["flip,shift=2", "none"], seed=[3],
                          out=tmp_path, **QUIET)
    assert [(c.augment, c.seed, c.name) for c in seen] == [("flip,shift=2", 3, "mlp-augment-flip_shift_2"),
                                                           ("none", 3, "mlp-augment-none")]
    seen.clear()
    with pytest.raises(MinivisionError, match="no model finished"):
        train_and_compare(["mlp"], dataset=ds, budget=["30s", "1m"], out=tmp_path, **QUIET)
    assert [(c.budget, c.epochs, c.name) for c in seen] == [(30.0, None, "mlp-budget-30s"),
                                                            (60.0, None, "mlp-budget-1m")]


@pytest.mark.parametrize("models, kw, message", [
    (["cnn2"], {"epochs": [1, 2], "batch_size": [16, 32]}, "one setting at a time: --epochs and --batch-size"),
    (["cnn2", "mlp"], {"epochs": 1, "lr": [0.1, 0.01]}, "one setting of one model"),
    (["cnn2"], {"epochs": 1, "batch_size": [32, 32]}, "--batch-size 32 is given twice"),
    (["cnn2"], {"epochs": 1, "batch_size": [32, 0]}, "--batch-size must be >= 1"),
    (["cnn2"], {"epochs": [1, 2], "budget": "1m"}, "not both"),
    (["cnn2"], {"epochs": [0, 2]}, "--epochs must be >= 1"),
])
def test_bad_sweeps_fail_before_training(tmp_path, monkeypatch, models, kw, message):
    monkeypatch.setattr(compare, "fit", lambda *a, **k: pytest.fail("trained before checking"))
    with pytest.raises(MinivisionError, match=message):
        train_and_compare(models, dataset=synthetic_dataset(), out=tmp_path, **kw, **QUIET)
    assert not (tmp_path / "compare").exists()


def test_the_command_line_takes_a_comma_list_for_any_setting(monkeypatch, capsys):
    from minivision import cli

    seen = {}

    def record(models, **kw):
        seen.update(kw, models=models)
        return None, []

    monkeypatch.setattr(compare, "train_and_compare", record)
    assert cli.main(["compare", "--models", "cnn2", "--batch-size", "32,128,512", "--epochs", "2", "--augment",
                     "flip,shift=2", "--augment", "none", "--nesterov", "--device", "cpu"]) == 0
    assert seen["models"] == ["cnn2"] and seen["batch_size"] == [32, 128, 512] and seen["epochs"] == 2
    assert seen["augment"] == ["flip,shift=2", "none"] and seen["nesterov"] is True and seen["device"] == "cpu"
    assert "seed" not in seen  # not given: the default
    for argv, message in ((["--lr", "0.1,x"], "--lr takes numbers, got 'x'"),
                          (["--schedule", "cosine,onecycl"], "did you mean 'onecycle'"),
                          (["--epochs", "5,,10"], "--epochs has an empty value"),
                          (["--budget", "1m,soon"], "duration")):
        assert cli.main(["compare", "--models", "cnn2", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and message in err and "\n" not in err, err


def test_runs_of_one_model_built_differently_are_named_by_what_differs(tmp_path):
    """Two mvnet-t runs in folders of the same name, one with the whitening stem (train's choice for colour
    pictures) and one with the learned stem: the table names the stem, and compare.csv records the options."""
    ds = synthetic_dataset(160, 40, channels=3, size=16)
    made = [fit(TrainConfig(model="mvnet-t", steps=2, batch_size=32, out=str(tmp_path / d), data="synthetic",
                            extra=extra), dataset=ds, **QUIET).run_dir
            for d, extra in (("a", None), ("b", {"stem": "conv"}))]
    assert made[0].name == made[1].name == "train"
    rows = compare_runs(made)
    assert rows[0]["options"] == {"stem": "whiten"} and rows[1]["options"] == {"stem": "conv"}
    table = format_table(rows)
    assert "mvnet-t stem=whiten" in table and "mvnet-t stem=conv" in table and "(train)" not in table
    assert "stem=whiten" in compare.format_csv(rows) and "options" in compare.format_csv(rows).splitlines()[0]
    # the same options: the folder names as before; a default left out equals it given
    again = compare_runs([made[1], made[0]]) + [dict(rows[1], run=str(tmp_path / "c" / "other"), options={})]
    labels = compare._labels(again)
    assert labels[0] == "mvnet-t stem=conv (train)" and labels[2] == "mvnet-t stem=conv (other)", labels
