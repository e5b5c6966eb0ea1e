"""A run that failed says so, and only our own words reach the user: an exploded or NaN loss stops the run
with the learning rate to try; a run that failed before its first checkpoint is marked failed in its
folder and evaluate/predict/--resume say why; a one-class dataset is refused in the user's terms; an
empty picture is predicted with a note; library warnings become one ``note:`` line. Small synthetic data
made here; the real-data check trains on a slice of Fashion-MNIST."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from minivision import listeners
from minivision.cli import main
from minivision.config import TrainConfig
from minivision.data.dataset import Dataset, Split
from minivision.errors import MinivisionError, TrainingFailed
from minivision.inference import (
    BLANK_SPREAD,
    EMPTY_INPUT_NOTE,
    EMPTY_NOTE,
    blank_pictures,
    empty_picture,
    empty_reason,
)
from minivision.listeners import Listener, read_progress
from minivision.models import create_model, list_models
from minivision.runfiles import load_model
from minivision.train import EXPLODED_LOSS, fit

from .conftest import needs_fashion_mnist, synthetic_dataset


def _fit(tmp_path, dataset: Dataset | None = None, **kw):
    cfg = TrainConfig(**{"model": "mvnet-t", "epochs": 3, "batch_size": 16, "augment": "", "out": str(tmp_path),
                         **kw})
    return fit(cfg, dataset=dataset or synthetic_dataset(240, 40), progress=False, log=lambda m: None)


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


# ----------------------------------------------------------------------------- a loss that explodes

def test_an_exploding_loss_stops_the_run_with_the_learning_rate_to_try(tmp_path, capsys):
    with pytest.raises(TrainingFailed) as e:
        _fit(tmp_path, lr=50.0, batch_size=4)  # explodes within the first epoch (by step 25 of 48)
    msg = str(e.value)
    assert "at chance accuracy" in msg and "the learning rate 50 is too high; try --lr 0.2" in msg, msg  # mvnet-t's
    loss = float(msg.split("the loss grew to ")[1].split(" ")[0])
    assert loss > EXPLODED_LOSS * math.log(4)
    run = tmp_path / "train"
    progress = read_progress(run)
    assert progress["state"] == "failed" and progress["error"] == msg
    assert not (run / "model.json").exists()
    # every reader of the folder says why, in one line
    for argv in (["evaluate", str(run)], ["predict", str(run), str(tmp_path)], ["train", "--resume", str(run)]):
        err = _one_line_error(capsys, argv)
        assert f"run {run} failed before its first checkpoint: training failed at epoch 1" in err
        assert err.endswith("the learning rate 50 is too high; try --lr 0.2; train again\n")


def test_a_run_that_diverged_after_a_checkpoint_says_train_again_not_resume(tmp_path, capsys):
    class DivergesInEpoch2(Listener):  # what the trainer raises when the loss explodes (tested above)
        def on_step_end(self, trainer) -> None:
            if trainer.epoch == 1:
                raise TrainingFailed("training failed at epoch 2, step 1: the loss grew to 1e+09")

    cfg = TrainConfig(model="mvnet-t", epochs=3, batch_size=16, augment="", out=str(tmp_path))
    with pytest.raises(TrainingFailed, match="training failed at epoch 2"):
        fit(cfg, dataset=synthetic_dataset(240, 40), progress=False, log=lambda m: None,
            listeners=[DivergesInEpoch2()])
    run = tmp_path / "train"
    assert (run / "last.safetensors").is_file() and read_progress(run)["state"] == "failed"
    assert read_progress(run)["resumable"] is False  # resuming would replay the same diverging steps
    for argv in (["evaluate", str(run)], ["train", "--resume", str(run)]):
        err = _one_line_error(capsys, argv)
        assert f"run {run} failed: training failed at epoch 2" in err and "train --resume" not in err
        assert err.endswith("train again with that change (resuming would repeat it)\n")


def test_a_run_that_failed_after_a_checkpoint_for_another_reason_says_it_can_be_resumed(tmp_path, capsys):
    class BreaksInEpoch2(Listener):
        def on_step_end(self, trainer) -> None:
            if trainer.epoch == 1:
                raise MinivisionError("the disk went away")

    cfg = TrainConfig(model="mvnet-t", epochs=3, batch_size=16, augment="", out=str(tmp_path))
    with pytest.raises(MinivisionError, match="the disk went away"):
        fit(cfg, dataset=synthetic_dataset(240, 40), progress=False, log=lambda m: None, listeners=[BreaksInEpoch2()])
    run = tmp_path / "train"
    assert (run / "last.safetensors").is_file() and read_progress(run)["resumable"] is True
    err = _one_line_error(capsys, ["evaluate", str(run)])
    assert err.startswith(f"error: run {run} failed: the disk went away")
    assert err.endswith(f"train again, or resume it from its last checkpoint with `minivision train --resume {run}`\n")


def test_a_run_that_learns_is_not_stopped_however_large_its_loss(tmp_path):
    """softmax at lr 50 reaches losses in the hundreds on the first steps, yet is right on most pictures:
    the rule asks for chance accuracy too."""
    r = _fit(tmp_path, model="softmax", lr=50.0)
    assert len(r.history) == 3 and r.history[-1]["train_accuracy"] > 0.5
    assert read_progress(r.run_dir)["state"] == "finished"


def test_a_nan_loss_stops_the_run_with_the_same_hint(tmp_path):
    hint = r"the loss became nan: the learning rate 1e\+30 is too high; try --lr 0\.2"
    with pytest.raises(TrainingFailed, match=hint):
        _fit(tmp_path, lr=1e30)
    assert read_progress(tmp_path / "train")["state"] == "failed"


@pytest.mark.parametrize("name", list_models())
def test_every_network_starts_well_below_the_exploded_loss(name):
    """The rule's premise: an untrained network's loss is near ln(K), far below EXPLODED_LOSS x ln(K)."""
    torch.manual_seed(0)
    model = create_model(name, in_channels=1, image_size=(28, 28), num_classes=10).eval()
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(x), torch.arange(16) % 10).item()
    assert loss < 3 * math.log(10) < EXPLODED_LOSS * math.log(10), (name, loss)


@needs_fashion_mnist
def test_real_fashion_mnist_with_a_far_too_high_learning_rate_stops_within_the_first_epoch(tmp_path):
    import minivision as mv

    ds = mv.load_dataset("fashion-mnist")
    small = Dataset("fashion-mnist", ds.classes, Split(ds.train.x[:3000], ds.train.y[:3000]))
    with pytest.raises(TrainingFailed, match=r"at chance accuracy .*the learning rate 50 is too high; try --lr 0.2"):
        _fit(tmp_path, lr=50.0, batch_size=64, epochs=1, dataset=small)


# ----------------------------------------------------------------------------- failed before its first checkpoint

class _Breaks(Listener):
    def __init__(self, error: Exception) -> None:
        self.error = error

    def on_step_end(self, trainer) -> None:
        raise self.error


@pytest.mark.parametrize("error, reason", [
    (MinivisionError("the data went away"), "the data went away"),
    (RuntimeError("out of memory\nCUDA detail"), "RuntimeError: out of memory"),
])
def test_a_run_that_fails_before_its_first_checkpoint_is_marked_failed(tmp_path, capsys, error, reason):
    with pytest.raises(type(error)):
        fit(TrainConfig(model="softmax", epochs=1, out=str(tmp_path)), dataset=synthetic_dataset(40, 8),
            progress=False, log=lambda m: None, listeners=[_Breaks(error)])
    run = tmp_path / "train"
    p = json.loads((run / "progress.json").read_text())
    assert p["state"] == "failed" and p["error"] == reason
    assert {"epoch", "epochs", "step", "total_steps", "fraction"} <= set(p)  # what the jobs API reads
    assert not (run / "last.safetensors").exists()
    err = _one_line_error(capsys, ["evaluate", str(run)])
    assert err == f"error: run {run} failed before its first checkpoint: {reason}; train again\n"


def test_a_run_folder_left_without_status_or_checkpoint_says_it_has_no_model(tmp_path):
    run = tmp_path / "train"
    run.mkdir()
    (run / "args.yaml").write_text("model: softmax\n")
    with pytest.raises(MinivisionError, match="still training, or it stopped before its first checkpoint"):
        load_model(run)
    (run / "args.yaml").unlink()
    with pytest.raises(MinivisionError, match="not a run folder"):  # the message can tell the two apart
        load_model(run)


def test_mark_failed_keeps_what_the_progress_file_said(tmp_path):
    (tmp_path / "progress.json").write_text(json.dumps({"state": "training", "epoch": 2, "step": 30}))
    listeners.mark_failed(tmp_path, "a reason\nover two lines")
    assert read_progress(tmp_path) == {"state": "failed", "epoch": 2, "step": 30, "error": "a reason over two lines",
                                      "resumable": True}


# ----------------------------------------------------------------------------- the user's terms

def test_a_dataset_of_one_class_is_refused_in_the_user_s_terms(tmp_path):
    x = torch.zeros(20, 1, 28, 28, dtype=torch.uint8)
    ds = Dataset("shoes", ["sneaker"], Split(x, torch.zeros(20, dtype=torch.int64)))
    with pytest.raises(MinivisionError, match=r"^shoes has 1 class \('sneaker'\): a classifier needs pictures of at "
                                              r"least 2 classes"):
        fit(TrainConfig(model="softmax", epochs=1, out=str(tmp_path)), dataset=ds, progress=False, log=lambda m: None)
    assert not list(tmp_path.iterdir())
    with pytest.raises(MinivisionError, match=r"^a classifier needs at least 2 classes; this one was asked for 1$"):
        create_model("softmax", in_channels=1, image_size=(28, 28), num_classes=1)


def test_muon_on_a_model_without_hidden_layers_is_refused_in_one_line(tmp_path, capsys):
    from .conftest import synthetic_images, write_pixel_csv

    x, y = synthetic_images(40, classes=4)
    write_pixel_csv(tmp_path / "train.csv", x[:, 0], y)
    err = _one_line_error(capsys, ["train", "--data", str(tmp_path / "train.csv"), "--model", "softmax",
                                   "--optimizer", "muon", "--lr", "0.1", "--epochs", "1",
                                   "--out", str(tmp_path / "runs")])
    assert "--optimizer muon acts on hidden layers, and softmax has none" in err and "--optimizer sgd" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # no run folder left


# ----------------------------------------------------------------------------- empty pictures

def test_blank_pictures_by_the_spread_of_their_grey_levels():
    rng = np.random.default_rng(0)
    flat = np.full((28, 28), 200, np.uint8)
    noisy = np.clip(200 + rng.normal(0, 2, (28, 28)), 0, 255).astype(np.uint8)
    speck = flat.copy()
    speck[3, 4] = 0  # one dead pixel: under 1% of the picture
    faint = flat.copy()
    faint[10:18, 10:18] = 200 - int(BLANK_SPREAD) - 2  # a faint square: just over the rule
    garment = flat.copy()
    garment[5:23, 8:20] = 30
    x = torch.from_numpy(np.stack([flat, noisy, speck, faint, garment])[:, None])
    assert blank_pictures(x).tolist() == [True, True, True, False, False]
    colour = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    colour[0] = torch.tensor([200, 30, 30]).view(3, 1, 1)  # one red: empty
    colour[1, :, :4] = 255  # half white, half black
    assert blank_pictures(colour).tolist() == [True, False]


def test_a_photo_of_a_plain_backdrop_is_empty_after_reduction():
    """Sensor noise of a 400 x 400 photo spans 10+ levels, more than the rule; reduced as predict does,
    it does not."""
    rng = np.random.default_rng(1)
    photo = np.clip(180 + rng.normal(0, 3, (400, 400)), 0, 255).astype(np.uint8)
    assert np.percentile(photo, 99) - np.percentile(photo, 1) > BLANK_SPREAD  # the full-size spread
    assert empty_picture(Image.fromarray(photo))
    photo[100:300, 150:250] = 40  # a dark garment on it
    assert not empty_picture(Image.fromarray(photo))


@pytest.fixture(scope="module")
def csv_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    r = fit(TrainConfig(model="softmax", epochs=1, augment="", out=str(d)), dataset=synthetic_dataset(80, 20),
            progress=False, log=lambda m: None)
    return r.run_dir


def test_predict_gives_an_empty_picture_its_label_and_a_note(csv_model, tmp_path, capsys):
    Image.new("RGB", (300, 200), (235, 235, 230)).save(tmp_path / "blank.png")
    full = np.full((280, 280), 230, np.uint8)
    full[60:220, 100:180] = 20
    Image.fromarray(full).save(tmp_path / "shape.png")
    assert main(["predict", str(csv_model), str(tmp_path / "blank.png"), str(tmp_path / "shape.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{tmp_path / 'blank.png'}: class") and lines[0].endswith(
        "[not sure: the picture is empty (one colour, or almost): the label is a guess]")  # the answer is unsure
    assert "note" not in lines[1]
    assert main(["predict", str(csv_model), str(tmp_path / "blank.png"), "--json"]) == 0
    (r,) = json.loads(capsys.readouterr().out)
    assert r["empty"] is True and r["label"].startswith("class") and "empty" in r["note"]


def test_the_service_gives_each_picture_a_note_field(csv_model, tmp_path):
    from fastapi.testclient import TestClient

    from minivision.serve.app import create_app

    buf = {}
    squares = np.kron(np.eye(8, dtype=np.uint8) * 255, np.ones((8, 8), np.uint8))
    for name, img in (("blank.png", Image.new("L", (64, 64), 128)), ("full.png", Image.fromarray(squares))):
        path = tmp_path / name
        img.save(path)
        buf[name] = path.read_bytes()
    with TestClient(create_app(str(csv_model), jobs_dir=None)) as client:
        r = client.post("/predict", files=[("file", (n, b, "image/png")) for n, b in buf.items()])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["files"] == ["blank.png", "full.png"]
    assert body["notes"][0].startswith("the picture is empty") and body["notes"][1] is None
    assert len(body["predictions"]) == 2


# ----------------------------------------------------------------------------- library warnings

def test_library_warnings_reach_the_cli_user_as_one_note_line(csv_model, tmp_path, capsys, monkeypatch):
    import minivision.predict as predict
    from minivision.errors import Note

    real = predict.predict_images

    def warns(*a, **kw):
        for _ in range(2):  # the same text twice: one line
            warnings.warn("The given NumPy array is not writable, and PyTorch does not support non-writable "
                          "tensors. This means writing to this tensor will result in undefined behavior.",
                          UserWarning, stacklevel=2)
        warnings.warn("An input array is constant; the result is not defined. See the docs.", RuntimeWarning,
                      stacklevel=2)
        warnings.warn(Note("one of ours. Two sentences, kept whole"), stacklevel=2)
        return real(*a, **kw)

    monkeypatch.setattr(predict, "predict_images", warns)
    Image.new("L", (40, 40), 0).save(tmp_path / "p.png")
    for _ in range(2):  # and again in a second command of the same process
        assert main(["predict", str(csv_model), str(tmp_path / "p.png")]) == 0
        err = capsys.readouterr().err.splitlines()
        assert err == ["note: The given NumPy array is not writable, and PyTorch does not support non-writable tensors",
                       "note: An input array is constant; the result is not defined",
                       "note: one of ours. Two sentences, kept whole"]


def test_pillow_s_decompression_bomb_warning_becomes_our_words(capsys):
    from minivision.cli import _SHOWN, _warning_line

    _SHOWN.clear()
    message = Image.DecompressionBombWarning("Image size (100000000 pixels) exceeds limit of 89478485 pixels, "
                                             "could be decompression bomb DOS attack.")
    _warning_line(message, Image.DecompressionBombWarning, "PIL/Image.py", 3000)
    assert capsys.readouterr().err == ("note: a picture is very large (100,000,000 pixels): decoding it takes long "
                                       "and much memory\n")


def backdrop_ramp(width: int = 400, height: int = 300) -> Image.Image:
    """A photo of a backdrop alone in uneven light: grey 180 to 240 from left to right, nothing on it."""
    return Image.fromarray(np.tile(np.linspace(180, 240, width), (height, 1)).astype(np.uint8)).convert("RGB")


def test_a_backdrop_in_uneven_light_is_empty_as_the_model_sees_it(csv_model, tmp_path, capsys):
    """The ramp spans 60 grey levels, so the photo alone is not empty; the conversion evens the light out
    and the model sees one colour: the same note (nothing stands out from the background), on the CLI, in
    the Python API and in the service. Fine noise (a large picture of random pixels) is not blank as given
    either, and its conversion is empty too: the same note, not "the picture is empty"."""
    from fastapi.testclient import TestClient

    from minivision.api import load
    from minivision.runfiles import load_model
    from minivision.serve.app import create_app

    ramp = backdrop_ramp()
    assert not empty_picture(ramp)  # the photo itself spans 60 levels
    model_input = load_model(csv_model).preprocess.image_to_uint8(ramp)
    assert blank_pictures(model_input[None]).tolist() == [True]
    assert empty_picture(ramp, model_input)
    ramp.save(tmp_path / "ramp.png")
    assert main(["predict", str(csv_model), str(tmp_path / "ramp.png"), "--json"]) == 0
    (r,) = json.loads(capsys.readouterr().out)
    assert r["empty"] is True and r["note"] == r["reason"] == EMPTY_INPUT_NOTE  # the photo is not blank itself
    with TestClient(create_app(str(csv_model), jobs_dir=None)) as client:
        got = client.post("/predict", files=[("file", ("ramp.png", (tmp_path / "ramp.png").read_bytes(), "image/png"))])
    assert got.status_code == 200 and got.json()["notes"][0] == EMPTY_INPUT_NOTE, got.text
    assert got.json()["unsure"] == [True] and got.json()["reasons"] == [EMPTY_INPUT_NOTE]
    with pytest.warns(UserWarning, match="picture 0 is empty"):
        load(csv_model).predict([str(tmp_path / "ramp.png")])
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (2000, 2000), dtype=np.uint8))
    assert empty_reason(noise) is None  # flat once reduced to 64 px, not at 256 px
    assert empty_reason(Image.new("L", (2000, 2000), 128)) == EMPTY_NOTE
