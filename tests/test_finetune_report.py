"""What a fine-tuned run's files say about it: the ``phase`` column of results.csv and the report's
"started from" rows (backbone, what it was pretrained on, why, working size, phases)."""

from __future__ import annotations

import csv
import math

import pytest

from minivision.errors import MinivisionError
from minivision.report import html
from minivision.report.history import COLUMNS, read_history, write_history
from minivision.report.run import pretrained_rows, used_rows

LITE0 = "efficientnet-lite0"


def _row(epoch: int, phase: str | None = None) -> dict:
    row = {"epoch": epoch, "train_loss": 2.0 / epoch, "train_accuracy": 0.1 * epoch, "val_loss": 1.5,
           "val_accuracy": float("nan") if epoch == 1 else 0.5, "lr": 0.01, "seconds": 0.25}
    if phase is not None:
        row["phase"] = phase
    return row


def _record(**over) -> dict:
    record = {"backbone": LITE0, "from": None,
              "why": "360 training pictures is a small dataset (up to 5,000); --pretrained none trains from scratch",
              "freeze": False, "input_size": 96, "epochs_rule": "...",
              "phases": [{"name": "head", "trains": "the head, on cached features", "epochs": 17, "lr": 0.01,
                          "schedule": "cosine"},
                         {"name": "all", "trains": "every layer", "epochs": 5, "lr": 0.001, "schedule": "cosine",
                          "lr_scales": {"blocks.": 0.1}}]}
    record.update(over)
    return record


# ----------------------------------------------------------------------------- results.csv

def test_results_csv_has_a_phase_column_when_the_run_had_phases(tmp_path):
    history = [_row(1, "head"), _row(2, "head"), _row(3, "all")]
    write_history(tmp_path, history, plot=False)
    with open(tmp_path / "results.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == [*COLUMNS, "phase"]  # last: readers by position see the old columns unchanged
    assert [r[-1] for r in rows[1:]] == ["head", "head", "all"]
    back = read_history(tmp_path / "results.csv")
    assert [r["phase"] for r in back] == ["head", "head", "all"]
    assert back[2]["train_loss"] == history[2]["train_loss"] and math.isnan(back[0]["val_accuracy"])


def test_results_csv_of_a_run_without_phases_is_unchanged(tmp_path):
    write_history(tmp_path, [_row(1), _row(2)], plot=False)
    text = (tmp_path / "results.csv").read_text()
    assert text.splitlines()[0] == ",".join(COLUMNS) and "phase" not in text
    back = read_history(tmp_path / "results.csv")
    assert [r["epoch"] for r in back] == [1, 2] and all("phase" not in r for r in back)


def test_an_older_results_csv_still_reads_and_a_broken_one_is_one_line(tmp_path):
    old = tmp_path / "results.csv"
    old.write_text(",".join(COLUMNS) + "\n1,2.0,0.1,1.5,0.2,0.01,0.3\n")
    assert read_history(old) == [{"epoch": 1, "train_loss": 2.0, "train_accuracy": 0.1, "val_loss": 1.5,
                                  "val_accuracy": 0.2, "lr": 0.01, "seconds": 0.3}]
    old.write_text("epoch,phase\n1,head\n")
    with pytest.raises(MinivisionError, match="malformed results.csv"):
        read_history(old)


# ----------------------------------------------------------------------------- the report

def test_pretrained_rows_name_the_backbone_its_data_the_size_and_the_phases():
    rows = dict(pretrained_rows(_record()))
    assert rows["started from"].startswith(f"{LITE0}, pretrained on ImageNet-1k")
    assert "Apache-2.0" in rows["started from"]
    assert rows["why"].startswith("360 training pictures is a small dataset")
    assert rows["working size"].startswith("96 x 96 px")
    assert rows["phases"] == ("head: 17 epochs training the head, on cached features, learning rate 0.01, "
                              "cosine schedule; all: 5 epochs training every layer, learning rate 0.001, "
                              "cosine schedule")
    assert "frozen" not in rows
    frozen = dict(pretrained_rows(_record(freeze=True, phases=[_record()["phases"][0]], input_size=None)))
    assert frozen["frozen"].startswith("yes") and "working size" not in frozen
    run = dict(pretrained_rows(_record(backbone=None, **{"from": "/runs/cif"})))
    assert run["started from"] == "the weights of /runs/cif"
    unknown = dict(pretrained_rows(_record(backbone="gone-from-this-install")))
    assert unknown["started from"] == "gone-from-this-install"


def test_a_run_from_scratch_gets_no_started_from_rows():
    assert pretrained_rows(None) == [] and pretrained_rows("junk") == []
    assert pretrained_rows(_record(backbone=None, why="over 5,000 pictures", phases=[])) == []
    meta = {"metrics": {"epochs": 3}, "pretrained": _record(backbone=None, phases=[])}
    assert not any(name in ("started from", "phases", "working size") for name, _ in used_rows(meta, {}))


def test_report_html_says_where_the_run_started_and_its_phases():
    meta = {"metrics": {"epochs": 22}, "used": {"epochs_planned": 22}, "pretrained": _record(),
            "init_from": {"from": None}}
    page = html.render_report(title="run", headline=[("test accuracy", "66.29%")], settings={"epochs": 1},
                              dataset=[], images={}, per_class=[], confused=[], calibration_ece=0.01,
                              used=used_rows(meta, {}))
    for text in (LITE0, "pretrained on ImageNet-1k", "working size", "96 x 96 px", "phases",
                 "head: 17 epochs", "all: 5 epochs"):
        assert text in page, text
    scratch = html.render_report(title="run", headline=[("test accuracy", "66.29%")], settings={"epochs": 1},
                                 dataset=[], images={}, per_class=[], confused=[], calibration_ece=0.01,
                                 used=used_rows({"metrics": {"epochs": 3}}, {}))
    assert "started from" not in scratch and "pretrained on" not in scratch
