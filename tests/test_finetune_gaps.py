"""Fine-tuning as a user meets it: the working size (``--imgsz``) for every kind of data, large pictures
loaded at the working size, a run of another input shape, the API's and the environment's errors, the
budget's arithmetic, the phases in results.png, ``models --pretrained`` in 100 columns (test_pretrained)
and extending a finished fine-tune."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from minivision import train as train_mod
from minivision.config import TrainConfig, as_parameters, named
from minivision.errors import MinivisionError
from minivision.train import fit

from .conftest import synthetic_dataset
from .test_finetune import install_fake_catalogue


@pytest.fixture
def fake_catalogue(monkeypatch):
    return install_fake_catalogue(monkeypatch)


# ----------------------------------------------------------------------------- errors: the API, the environment


def test_named_writes_a_flag_or_a_parameter():
    assert (named("pretrained", "none"), named("freeze"), named("epochs")) == ("--pretrained none", "--freeze",
                                                                               "--epochs")
    with as_parameters():
        assert (named("pretrained", "none"), named("freeze"), named("epochs")) == ("pretrained='none'",
                                                                                   "freeze=True", "epochs=")
    assert named("freeze") == "--freeze"  # only inside the block


def test_classifier_errors_name_parameters_not_flags(fake_catalogue):
    import minivision as mv

    ds = synthetic_dataset(40, 8)
    with pytest.raises(MinivisionError) as e:
        mv.Classifier(pretrained="none", freeze=True, epochs=1).fit(ds, progress=False)
    assert str(e.value) == "freeze=True keeps a pretrained backbone frozen: drop pretrained='none'"
    with pytest.raises(MinivisionError) as e:
        mv.Classifier(pretrained="fake-net", model="cnn1", epochs=1).fit(ds, progress=False)
    msg = str(e.value)
    assert msg.startswith("pretrained='fake-net' builds the mvnet-t network; drop model='cnn1'") and "--" not in msg
    with pytest.raises(MinivisionError) as e:
        mv.Classifier(pretrained="/nowhere/run", epochs=1).fit(ds, progress=False)
    msg = str(e.value)
    assert msg.startswith("pretrained='/nowhere/run': no such run folder") and "; pretrained= takes " in msg
    assert "--pretrained /" not in msg
    with pytest.raises(MinivisionError) as e:  # the command line keeps its flags
        fit(TrainConfig(pretrained="none", freeze=True), dataset=ds, progress=False, log=lambda m: None)
    assert str(e.value).startswith("--freeze keeps")


@pytest.mark.parametrize("value, says", [("fake-nett", "did you mean 'fake-net'"),
                                         ("/nowhere/weights.safetensors", "no such run folder or weights file")])
def test_a_bad_environment_default_is_refused_before_the_data_loads(tmp_path, fake_catalogue, monkeypatch, value,
                                                                    says):
    def no_loading(*a, **k):
        raise AssertionError("the data was loaded before the check")

    monkeypatch.setattr(train_mod, "load_dataset", no_loading)
    monkeypatch.setenv("MINIVISION_PRETRAINED", value)
    with pytest.raises(MinivisionError) as e:
        fit(TrainConfig(data=str(tmp_path / "pictures"), out=str(tmp_path)), progress=False, log=lambda m: None)
    msg = str(e.value)
    assert msg.startswith(f"$MINIVISION_PRETRAINED={value}: ") and says in msg and "\n" not in msg


# ----------------------------------------------------------------------------- extending a finished fine-tune


def _phases(r) -> list[str]:
    return [row["phase"] for row in r.history]


def test_extending_a_finished_fine_tune_counts_epochs_of_every_layer_as_a_new_one_does(tmp_path, fake_catalogue):
    from minivision import finetune

    ds = synthetic_dataset(240, 80)
    quiet = {"progress": False, "log": lambda m: None}
    first = fit(TrainConfig(pretrained="fake-net", epochs=1, batch_size=32, out=str(tmp_path)), dataset=ds, **quiet)
    head = finetune.head_epochs(7)
    assert _phases(first) == ["head"] * head + ["all"]
    lines: list[str] = []
    longer = fit(TrainConfig(epochs=3), dataset=ds, resume=first.run_dir, progress=False, log=lines.append)
    assert _phases(longer) == ["head"] * head + ["all"] * 3  # 3 epochs of every layer in all, as --epochs 3 is
    assert any("from 1 to 3 epoch(s) of every layer" in line for line in lines), lines
    meta = json.loads((longer.run_dir / "model.json").read_text())
    assert [p["epochs"] for p in meta["pretrained"]["phases"]] == [head, 3]
    assert meta["used"]["epochs_planned"] == head + 3
    with pytest.raises(MinivisionError, match=r"already finished 3 epoch\(s\) of every layer.*N > 3"):
        fit(TrainConfig(epochs=2), dataset=ds, resume=longer.run_dir, **quiet)
    frozen = fit(TrainConfig(pretrained="fake-net", freeze=True, epochs=2, batch_size=32, out=str(tmp_path)),
                 dataset=ds, **quiet)
    more = fit(TrainConfig(epochs=5), dataset=ds, resume=frozen.run_dir, **quiet)
    assert _phases(more) == ["head"] * 5  # --freeze: epochs of the head


def test_extend_phases_adds_every_layer_after_a_head_only_plan():
    from minivision import finetune
    from minivision.models import create_model

    net = create_model("mvnet-t", in_channels=1, image_size=(28, 28), num_classes=4)
    cfg = TrainConfig(epochs=1, lr=1e-3, schedule="onecycle")
    head_only = finetune.phases(cfg, net, freeze=False, steps_per_epoch=7, head_only=True)
    got = finetune.extend_phases(head_only, 2, cfg, net, freeze=False)
    assert [(p.name, p.epochs) for p in got] == [("head", finetune.head_epochs(7)), ("all", 2)]
    assert got[1].lr_scales == finetune.discriminative_lr_scales(net)
    assert finetune.extend_phases(got, 2, cfg, net, freeze=False) == got


# ----------------------------------------------------------------------------- the budget's arithmetic


def test_budget_costs_from_fixed_speeds():
    from minivision import finetune

    speeds = finetune.Speeds(picture_s=0.01, step_s=0.5)
    fixed, end, epoch = finetune.budget_costs(speeds, n_train=900, n_val=100, n_test=10_000, end_pictures=1_000,
                                              steps_per_epoch=15)
    assert end == pytest.approx(0.01 * 11_000 + 5.0)             # test pass + calibration + files
    assert fixed == pytest.approx(end + 0.01 * 1_000)             # + features of train and validation, once
    assert epoch == pytest.approx(0.5 * 15 + 0.01 * 100)          # steps + a validation pass


def test_forward_speed_is_timed_at_the_scoring_batch_not_the_training_batch(monkeypatch):
    """A fake clock (1 s a reading): the forward pass timed is one batch of SCORE_BATCH pictures, even
    with 10 pictures and batches of 4 (timed at the training batch, it overestimated the test pass)."""
    from minivision import finetune
    from minivision.models import create_model
    from minivision.preprocess import Preprocess

    ds = synthetic_dataset(10, 2)
    net = create_model("mvnet-t", in_channels=1, image_size=(28, 28), num_classes=4)
    seen: list[int] = []
    net.register_forward_pre_hook(lambda m, args: seen.append(len(args[0])))
    ticks = iter(range(100))
    speeds = finetune.measure_speeds(TrainConfig(batch_size=4, optimizer="adamw", lr=1e-3, weight_decay=0.0,
                                                 momentum=0.9), net, Preprocess.fit(ds.train.x, "dataset"),
                                     ds.train.x, ds.train.y, torch.device("cpu"), "fp32", freeze=False,
                                     clock=lambda: float(next(ticks)))
    assert seen[:2] == [8, finetune.SCORE_BATCH] and seen[2:] == [4, 4, 4]  # warm-up, timed batch, 3 steps
    assert speeds.picture_s == pytest.approx(1 / finetune.SCORE_BATCH)
    assert speeds.step_s == pytest.approx(0.5)  # 2 steps between two readings 1 s apart


def test_the_over_budget_note_adds_the_fixed_costs_to_the_time_spent(tmp_path, fake_catalogue, monkeypatch):
    from minivision import finetune

    monkeypatch.setattr(finetune, "measure_speeds", lambda *a, **k: finetune.Speeds(picture_s=0.01, step_s=0.2))
    now = [100.0]
    lines: list[str] = []
    ds = synthetic_dataset(240, 80)  # 216 train + 24 validation (10%), 80 test
    r = fit(TrainConfig(out=str(tmp_path)), dataset=ds, progress=False, log=lines.append, started=75.0,
            clock=lambda: now[0])  # 25 s of the 30 s default budget spent before planning
    note = next(line for line in lines if line.startswith("note: computing the features"))
    # fixed = 0.01 * (216 + 24) + 0.01 * (80 + 24 + 216) + 5 = 10.6 s; 25 + 10.6 = 35.6 s -> 36s
    assert "takes about 11 s" in note and "take about 36s" in note and "over its 30s budget" in note, note
    assert json.loads((r.run_dir / "model.json").read_text())["budget"]["fixed_s"] == 10.6


# ----------------------------------------------------------------------------- results.png marks the phases


def _rows(phases):
    return [{"epoch": e, "train_loss": 1.0 / e, "train_accuracy": 0.5, "val_loss": 1.0 / e, "val_accuracy": 0.5,
             "lr": 1e-3, "seconds": 1.0, **({"phase": p} if p else {})} for e, p in enumerate(phases, 1)]


def test_results_png_marks_where_the_head_phase_gives_way_to_every_layer(tmp_path):
    from minivision.report.history import plot_history, read_history, write_history
    from minivision.report.plots import phase_changes

    write_history(tmp_path, _rows(["head"] * 5 + ["all"] * 2))
    assert (tmp_path / "results.png").stat().st_size > 0
    history = read_history(tmp_path / "results.csv")  # the phase column, back from the file
    assert phase_changes(history) == [(5.5, "head", "all")]
    fig = plot_history(history)
    for ax in fig.axes:
        marks = [ln for ln in ax.get_lines() if list(ln.get_xdata()) == [5.5, 5.5]]
        assert len(marks) == 1 and marks[0].get_linestyle() == "--"
        assert "head only \u2192 all layers" in [t.get_text() for t in ax.get_legend().get_texts()]
    plain = plot_history(_rows([None] * 4))  # a run from scratch: nothing marked
    assert not any(list(ln.get_xdata()) == [2.5, 2.5] for ax in plain.axes for ln in ax.get_lines())
    assert plain.axes[2].get_legend() is None


# ----------------------------------------------------------------------------- the working size


def _write_idx(folder, x, y):
    import struct

    folder.mkdir()
    for name, a in [("train-images-idx3-ubyte", x[:48, 0]), ("train-labels-idx1-ubyte", y[:48]),
                    ("t10k-images-idx3-ubyte", x[48:, 0]), ("t10k-labels-idx1-ubyte", y[48:])]:
        a = np.ascontiguousarray(a, dtype=np.uint8)
        (folder / name).write_bytes(struct.pack(">BBBB", 0, 0, 8, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape)
                                    + a.tobytes())
    return folder


def _write_pictures(root, x, y, size=None):
    from PIL import Image

    for split, part in (("train", slice(0, 48)), ("test", slice(48, None))):
        for i, (img, label) in enumerate(zip(x[part], y[part], strict=True)):
            d = root / split / f"class{label}"
            d.mkdir(parents=True, exist_ok=True)
            pic = Image.fromarray(img[0])
            if size:
                pic = pic.resize((size, size), Image.Resampling.BILINEAR)
            pic.save(d / f"{i}.png")
    return root


def _data(kind, tmp_path, size=None):
    from .conftest import synthetic_images, write_pixel_csv

    x, y = synthetic_images(64, classes=3)
    if kind == "csv":
        write_pixel_csv(tmp_path / "train.csv", x[:48, 0], y[:48])
        write_pixel_csv(tmp_path / "test.csv", x[48:, 0], y[48:])
        return {"data": str(tmp_path / "train.csv"), "test_data": str(tmp_path / "test.csv")}
    if kind == "idx":
        return {"data": str(_write_idx(tmp_path / "idx", x, y))}
    return {"data": str(_write_pictures(tmp_path / "pictures", x, y, size))}


LITE0 = "efficientnet-lite0"


@pytest.mark.parametrize("kind", ["idx", pytest.param("csv", marks=pytest.mark.slow),
                                  pytest.param("folder", marks=pytest.mark.slow)])
def test_imgsz_sets_the_working_size_of_a_pretrained_start_for_every_kind_of_data(tmp_path, kind):
    """--imgsz 40 with EfficientNet-Lite0: the network resizes to 40 x 40 whatever the data (the default
    for 28 px grey pictures is 64), model.json records it, and predict rebuilds the same network."""
    from minivision.runfiles import load_model

    r = fit(TrainConfig(pretrained=LITE0, imgsz=40, epochs=1, batch_size=16, out=str(tmp_path / "runs"),
                        **_data(kind, tmp_path)), progress=False, log=lambda m: None)
    meta = json.loads((r.run_dir / "model.json").read_text())
    assert meta["pretrained"]["input_size"] == 40
    assert meta["preprocess"]["network_input"]["size"] == [40, 40]
    assert meta["architecture"]["kwargs"]["input_size"] == 40
    loaded = load_model(r.run_dir)
    assert loaded.model.network_input()["size"] == [40, 40]
    if kind == "folder":  # 28 px pictures are read at their own size, never enlarged on reading: the network does it
        assert meta["preprocess"]["size"] == [28, 28]
    else:
        assert meta["architecture"]["image_size"] == [28, 28]


def test_imgsz_help_says_it_sets_a_pretrained_networks_working_size():
    from minivision.config import SETTINGS

    assert "--pretrained" in SETTINGS["imgsz"].help and "any data" in SETTINGS["imgsz"].help


@pytest.mark.parametrize("side, imgsz, read_at, network", [
    (120, None, 96, LITE0), (80, None, 80, LITE0), (28, None, 28, LITE0), (120, 48, 48, LITE0),
    (28, 40, 28, LITE0), (32, 64, 32, LITE0),  # --imgsz over the pictures' own size: read at their own
    (28, 40, 40, "mvnet")])  # a network that does not resize takes the pictures at --imgsz
def test_a_folder_is_read_at_the_working_size_capped_at_the_pictures_own(tmp_path, side, imgsz, read_at, network):
    """Pictures of ``side`` px, a network working at 96 px (or --imgsz): the folder's default (64 px at most)
    would be enlarged inside the network; read at the working size, or at the pictures' own size when
    smaller, whether the working size is the network's or --imgsz's."""
    from minivision import finetune
    from minivision.data import load_dataset
    from minivision.data.folder import median_side

    data = _data("folder", tmp_path, size=side)["data"]
    cfg = TrainConfig(data=data, imgsz=imgsz, model=network)
    ds = load_dataset(data, imgsz=imgsz)
    lines: list[str] = []
    got = train_mod._load_at_working_size(cfg, ds, finetune.Start(input_size=imgsz or 96), lines.append)
    assert median_side(data) == side
    assert tuple(got.image_size) == (read_at, read_at) and got.conversion.size == (read_at, read_at)
    assert len(got.train) + len(got.val or []) == 48 and len(got.test) == 16
    assert bool(lines) == (read_at != max(ds.image_size)), lines


@pytest.mark.slow
def test_large_pictures_are_read_at_the_fine_tunes_working_size_and_recorded(tmp_path):
    lines: list[str] = []
    r = fit(TrainConfig(pretrained=LITE0, epochs=1, batch_size=16, out=str(tmp_path / "runs"),
                        **_data("folder", tmp_path, size=120)), progress=False, log=lines.append)
    meta = json.loads((r.run_dir / "model.json").read_text())
    assert meta["preprocess"]["size"] == [96, 96] and meta["architecture"]["image_size"] == [96, 96]
    assert meta["pretrained"]["input_size"] == 96 and meta["preprocess"]["network_input"]["size"] == [96, 96]
    assert any(line.startswith("note: reading the pictures at 96 px, not 64") for line in lines), lines


# ----------------------------------------------------------------------------- --pretrained RUN of another input shape


def _fake_run(folder, network, **kwargs):
    """A run folder holding an untrained ``network`` for 1 x 28 x 28 pictures of 3 classes."""
    from minivision.models import create_model
    from minivision.preprocess import Preprocess
    from minivision.runfiles import save_model

    folder.mkdir(parents=True)
    torch.manual_seed(0)
    model = create_model(network, in_channels=1, image_size=(28, 28), num_classes=3, **kwargs)
    save_model(folder, model, {"architecture": {"name": network, "in_channels": 1, "image_size": [28, 28],
                                                "num_classes": 3, "kwargs": kwargs},
                               "classes": ["a", "b", "c"], "preprocess": Preprocess(1, (28, 28)).to_dict()})
    return folder


def test_a_run_whose_network_resizes_fine_tunes_on_pictures_of_another_shape(tmp_path):
    run = _fake_run(tmp_path / "lite0", LITE0, input_size=48)
    lines: list[str] = []
    r = fit(TrainConfig(pretrained=str(run), epochs=1, batch_size=16, out=str(tmp_path / "runs")),
            dataset=synthetic_dataset(40, 8, channels=3, size=32), progress=False, log=lines.append)
    meta = json.loads((r.run_dir / "model.json").read_text())
    assert meta["architecture"]["in_channels"] == 3 and meta["architecture"]["image_size"] == [32, 32]
    assert meta["architecture"]["kwargs"]["input_size"] == 48 and meta["pretrained"]["input_size"] == 48
    assert meta["preprocess"]["network_input"]["size"] == [48, 48] and meta["init_from"]["head"] == "reset"
    assert any(line.startswith(f"starting from the weights of {run}") for line in lines)


def test_a_run_of_another_input_shape_says_what_to_do(tmp_path):
    run = _fake_run(tmp_path / "mvnet", "mvnet-t")
    quiet = {"progress": False, "log": lambda m: None}
    with pytest.raises(MinivisionError) as e:
        fit(TrainConfig(pretrained=str(run), epochs=1, out=str(tmp_path / "runs")),
            dataset=synthetic_dataset(40, 8, channels=3, size=32), **quiet)
    assert str(e.value) == (f"--pretrained {run}: that model takes 1x28x28 images, synthetic's are 3x32x32; train "
                            f"on 1x28x28 pictures, or start from a backbone that resizes any pictures "
                            f"(--pretrained efficientnet-lite0)")
    folder = _data("folder", tmp_path, size=40)["data"]  # grey 40 px pictures: read them at 28
    with pytest.raises(MinivisionError) as e:
        fit(TrainConfig(data=folder, pretrained=str(run), epochs=1, out=str(tmp_path / "runs")), **quiet)
    msg = str(e.value)
    assert "that model takes 1x28x28 images" in msg and "\n" not in msg
    assert msg.endswith("read the folder at the run's size with --imgsz 28")
    r = fit(TrainConfig(data=folder, imgsz=28, pretrained=str(run), epochs=1, batch_size=16,
                        out=str(tmp_path / "runs")), **quiet)  # as the message says
    assert json.loads((r.run_dir / "model.json").read_text())["preprocess"]["size"] == [28, 28]
