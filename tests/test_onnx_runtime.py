"""Running an exported model without PyTorch: ``minivision predict/evaluate/serve FILE.onnx``.

Each test makes its own small runs (a grey CSV-trained model, whose photos get Fashion-MNIST's
trim-and-centre conversion, and a colour folder-trained one, whose photos are resized) and exports them
here with ``torch.onnx.export`` in the export format (uint8 ``pixels`` in, ``logits`` and ``features``
out, the ``minivision`` metadata, the trust file beside it). The answers of the export are compared with
the run's own: labels equal, scores within 1e-4, the same unsure verdicts, the same evaluate figures.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from minivision import onnx_runtime as rt
from minivision.cli import main
from minivision.config import TrainConfig
from minivision.errors import MinivisionError, Note
from minivision.train import fit

from .conftest import needs_fashion_mnist, synthetic_images, write_pixel_csv

CASES = Path("/work/shared/cases")


# ----------------------------------------------------------------------------- making exports

def export_for_test(run: Path, out: Path, *, metadata: bool = True, trust: bool = True, **changes) -> Path:
    """``run`` exported in the export format (export.py's contract): the network with the normalisation
    inside, uint8 N x C x H x W input ``pixels``, outputs ``logits`` and ``features``; ``changes`` replace
    entries of the ``minivision`` metadata (``metadata=False``: none at all)."""
    import onnx

    from minivision.runfiles import load_model

    lm = load_model(run)
    pre = lm.preprocess

    class Graph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = lm.model.to(memory_format=torch.contiguous_format)

        def forward(self, pixels: torch.Tensor):
            f = self.net.forward_features(pre(pixels).contiguous())
            return self.net.forward_head(f), f.flatten(1)

    x = torch.zeros(2, pre.channels, *pre.size, dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings are about tracing, not the test
        torch.onnx.export(Graph().eval(), (x,), str(out), input_names=["pixels"], output_names=["logits", "features"],
                          dynamic_axes={"pixels": {0: "n"}, "logits": {0: "n"}, "features": {0: "n"}}, dynamo=False)
    model = onnx.load(str(out))
    if metadata:
        info = {"format": "minivision-onnx", "format_version": 1, "minivision_version": "test",
                "classes": lm.classes, "model_json": json.loads((run / "model.json").read_text()),
                "weights_sha256": hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest(),
                "input": {"name": "pixels", "dtype": "uint8", "layout": "NCHW",
                          "shape": ["N", pre.channels, *pre.size]},
                "outputs": ["logits", "features"], "precision": "fp32"}
        if trust and (run / "trust.safetensors").is_file():
            info["trust_file"] = out.name + ".trust.safetensors"
            shutil.copyfile(run / "trust.safetensors", out.parent / info["trust_file"])
        info.update(changes)
        entry = model.metadata_props.add()
        entry.key, entry.value = "minivision", json.dumps(info)
    onnx.save(model, str(out))
    return out


def _train(cfg: TrainConfig) -> Path:
    return fit(cfg, log=lambda m: None, progress=False).run_dir


@pytest.fixture(scope="module")
def grey(tmp_path_factory) -> dict:
    """A grey model trained on a pixel CSV (light squares on dark: the zalando conversion) and its export."""
    d = tmp_path_factory.mktemp("onnx-grey")
    x, y = synthetic_images(400, classes=4)
    write_pixel_csv(d / "train.csv", x[:320, 0], y[:320])
    write_pixel_csv(d / "test.csv", x[320:, 0], y[320:])
    run = _train(TrainConfig(model="mvnet-t", epochs=2, batch_size=32, data=str(d / "train.csv"),
                             test_data=str(d / "test.csv"), out=str(d / "runs")))
    return {"run": run, "onnx": export_for_test(run, d / "grey.onnx"), "dir": d, "x": x, "y": y}


@pytest.fixture(scope="module")
def colour(tmp_path_factory) -> dict:
    """A colour model trained on an image folder (train/ and test/; resized photos) and its export."""
    d = tmp_path_factory.mktemp("onnx-colour")
    x, y = synthetic_images(120, classes=4, channels=3, size=32, seed=1)
    for i, (img, k) in enumerate(zip(x, y, strict=True)):
        split = "test" if i >= 96 else "train"
        folder = d / "pics" / split / f"class{k}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.transpose(1, 2, 0)).save(folder / f"{i}.png")
    run = _train(TrainConfig(model="mvnet-t", epochs=2, batch_size=16, data=str(d / "pics"), out=str(d / "runs")))
    return {"run": run, "onnx": export_for_test(run, d / "colour.onnx"), "dir": d}


def photos(folder: Path, colour: bool) -> list[str]:
    """Photo-like files: each class's square at another size and place on a light or dark backdrop, a
    one-colour picture (empty) and noise."""
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(3)
    paths = []
    for k in range(4):
        a = np.full((90, 120), 40 if k % 2 else 225, np.uint8)
        r, c = divmod(k, 2)
        a[10 + r * 40:40 + r * 40, 15 + c * 50:55 + c * 50] = 240 if k % 2 else 30
        img = Image.fromarray(a, "L").convert("RGB" if colour else "L")
        paths.append(str(folder / f"photo{k}.jpg"))
        img.save(paths[-1], quality=90)
    Image.new("RGB", (64, 48), (128, 128, 128)).save(folder / "empty.png")
    Image.fromarray(rng.integers(0, 256, (80, 80), dtype=np.uint8)).save(folder / "noise.png")
    return [*paths, str(folder / "empty.png"), str(folder / "noise.png"), str(folder / "missing.png")]


def assert_same_answers(ours: list[dict], theirs: list[dict]) -> None:
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert set(a) == set(b), (a, b)
        if "error" in b:
            assert a == b
            continue
        assert (a["label"], a["index"], a["unsure"], a["reason"], a.get("note")) == \
               (b["label"], b["index"], b["unsure"], b["reason"], b.get("note")), (a, b)
        assert [t["label"] for t in a["top_k"]] == [t["label"] for t in b["top_k"]]
        assert np.allclose([t["score"] for t in a["top_k"]], [t["score"] for t in b["top_k"]], atol=1e-4)
        if "plain" in b:
            assert a["plain"]["label"] == b["plain"]["label"]
            assert abs(a["plain"]["score"] - b["plain"]["score"]) < 1e-4
            assert a["tta"] == b["tta"]


# ----------------------------------------------------------------------------- the same answers

@pytest.mark.parametrize("kind", ["grey", "colour"])
@pytest.mark.parametrize("tta", [False, True])
def test_predict_gives_the_runs_answers(kind, tta, request, tmp_path):
    from minivision.predict import predict_images
    from minivision.runfiles import load_model

    m = request.getfixturevalue(kind)
    files = photos(tmp_path, colour=kind == "colour")
    om = rt.load_onnx(m["onnx"])
    theirs = predict_images(load_model(m["run"]), files, top_k=3, tta=tta)
    ours = rt.predict_images(om, files, top_k=3, tta=tta)
    assert_same_answers(ours, theirs)
    assert ours[4]["empty"] and ours[4]["unsure"]  # the one-colour picture
    assert "error" in ours[-1]
    # the numbers a client reads are the export's own (not copied): scores differ from another model's
    assert ours[0]["top_k"][0]["score"] == pytest.approx(theirs[0]["top_k"][0]["score"], abs=1e-4)


def test_predict_a_pixel_csv_gives_the_runs_answers(grey):
    from minivision.predict import predict_pixel_csv
    from minivision.runfiles import load_model

    csv = grey["dir"] / "test.csv"
    assert_same_answers(rt.predict_pixel_csv(rt.load_onnx(grey["onnx"]), csv, top_k=2),
                        predict_pixel_csv(load_model(grey["run"]), csv, top_k=2))


def _cli_json(capsys, *argv: str):
    rc = main(list(argv))
    out = capsys.readouterr()
    assert rc == 0, out.err
    return json.loads(out.out)


@pytest.mark.parametrize("kind", ["grey", "colour"])
def test_evaluate_gives_the_runs_figures(kind, request, capsys):
    m = request.getfixturevalue(kind)
    ours = _cli_json(capsys, "evaluate", str(m["onnx"]), "--json")
    theirs = _cli_json(capsys, "evaluate", str(m["run"]), "--json")
    assert ours.pop("model") == str(m["onnx"]) and theirs.pop("model") == str(m["run"])
    assert set(ours) == set(theirs)
    for key in ("n", "split", "confusion", "per_class", "most_confused", "notes", "temperature", "calibrated",
                "confidence"):
        assert ours[key] == theirs[key], key
    for key in ("accuracy", "macro_f1"):
        assert ours[key] == theirs[key], key
    for key in ("loss", "ece", "ece_before"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-5), key
    assert ours["unsure"]["n"] == theirs["unsure"]["n"]
    assert [r["class"] for r in ours["classes"]] == [r["class"] for r in theirs["classes"]]


@pytest.mark.parametrize("int8", [False, True])
def test_minivisions_own_export_runs_here(grey, int8, tmp_path, capsys):
    """``minivision export``'s file (fp32: the run's answers; int8: its own, close to them) runs here."""
    from minivision.export import export_run
    from minivision.predict import predict_images
    from minivision.runfiles import load_model

    out = tmp_path / ("model.int8.onnx" if int8 else "model.onnx")
    export_run(grey["run"], int8=int8, out=out, log=lambda m: None)
    files = photos(tmp_path / "photos", colour=False)
    ours = rt.predict_images(rt.load_onnx(out), files, top_k=3)
    theirs = predict_images(load_model(grey["run"]), files, top_k=3)
    if not int8:
        assert_same_answers(ours, theirs)
        assert _cli_json(capsys, "evaluate", str(out), "--json")["confusion"] == \
            _cli_json(capsys, "evaluate", str(grey["run"]), "--json")["confusion"]
    else:  # quantized weights: other numbers, the same kind of answer, the same labels on the test pictures
        from minivision.predict import predict_pixel_csv

        assert [set(r) for r in ours] == [set(r) for r in theirs]
        csv = grey["dir"] / "test.csv"
        ours = rt.predict_pixel_csv(rt.load_onnx(out), csv, top_k=1)
        theirs = predict_pixel_csv(load_model(grey["run"]), csv, top_k=1)
        assert np.mean([a["label"] == b["label"] for a, b in zip(ours, theirs, strict=True)]) >= 0.95


def test_evaluate_text_and_tta_match(grey, capsys):
    assert main(["evaluate", str(grey["onnx"]), "--tta"]) == 0
    ours = capsys.readouterr().out
    assert main(["evaluate", str(grey["run"]), "--tta"]) == 0
    theirs = capsys.readouterr().out
    # the same table but for the model's name in the headline
    assert ours.split(":", 1)[1] == theirs.split(":", 1)[1]


def test_evaluate_other_data_is_matched_by_name(colour, tmp_path, capsys):
    """A folder naming two of the model's classes in capitals, scored whole: matched by name, as the run does."""
    other = tmp_path / "other"
    for k, name in ((0, "Class0"), (2, "CLASS2")):
        shutil.copytree(colour["dir"] / "pics" / "test" / f"class{k}", other / name)
    ours = _cli_json(capsys, "evaluate", str(colour["onnx"]), "--data", str(other), "--json")
    theirs = _cli_json(capsys, "evaluate", str(colour["run"]), "--data", str(other), "--json")
    assert ours["split"] == theirs["split"] == "all"
    assert ours["classes_scored"] == theirs["classes_scored"] == ["class0", "class2"]
    assert (ours["accuracy"], ours["confusion"], ours["notes"]) == (theirs["accuracy"], theirs["confusion"],
                                                                     theirs["notes"])


def test_predict_evaluate_and_serve_import_no_torch(grey, tmp_path):
    files = photos(tmp_path, colour=False)[:2]
    code = ("import sys, json\nfrom minivision.cli import main\n"
            f"assert main(['predict', {str(grey['onnx'])!r}, *{files!r}, '--json']) == 0\n"
            f"assert main(['evaluate', {str(grey['onnx'])!r}, '--json']) == 0\n"
            "from fastapi.testclient import TestClient\nfrom minivision.serve.app import create_app\n"
            f"client = TestClient(create_app({str(grey['onnx'])!r}, device='cpu'))\n"
            f"picture = open({files[0]!r}, 'rb').read()\n"
            "assert client.post('/predict', files={'file': ('p.jpg', picture)}).status_code == 200\n"
            "print('TORCH', 'torch' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "TORCH False"
    # and the same command on the run folder does load torch: the check above can fail
    code = code.replace(str(grey["onnx"]), str(grey["run"]))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.stdout.strip().splitlines()[-1] == "TORCH True"


def test_serve_predicts_with_an_export(colour, tmp_path):
    from fastapi.testclient import TestClient

    from minivision.serve.app import create_app

    files = photos(tmp_path, colour=True)[:5]
    answers, infos, examples = [], [], []
    for model in (colour["onnx"], colour["run"]):
        client = TestClient(create_app(model, device="cpu"))
        body = [("file", (Path(f).name, Path(f).read_bytes(), "image/jpeg" if f.endswith("jpg") else "image/png"))
                for f in files]
        r = client.post("/predict", files=body, params={"include_input": "true"})
        assert r.status_code == 200, r.text
        answers.append(r.json())
        infos.append(client.get("/models").json()["models"][0])
        examples.append(client.get("/examples").json())
    ours, theirs = answers
    assert [[t["label"] for t in p] for p in ours["predictions"]] == \
           [[t["label"] for t in p] for p in theirs["predictions"]]
    assert np.allclose([[t["score"] for t in p] for p in ours["predictions"]],
                       [[t["score"] for t in p] for p in theirs["predictions"]], atol=1e-4)
    assert (ours["unsure"], ours["reasons"], ours["notes"], ours["inputs"]) == \
           (theirs["unsure"], theirs["reasons"], theirs["notes"], theirs["inputs"])
    assert ours["model"] == "colour.onnx/mvnet-t"
    ours_info, their_info = infos
    assert ours_info["run"] == "colour.onnx" and ours_info["classes"] == their_info["classes"]
    assert ours_info["parameters"] == their_info["parameters"] > 0  # the run's count, recorded in model_json
    # example pictures from the run's test split, as many of each class as the run's own
    ours_ex, their_ex = (e["examples"] for e in examples)
    assert sorted(e["label"] for e in ours_ex) == sorted(e["label"] for e in their_ex) and ours_ex
    assert ours_info["examples"] == len(ours_ex)
    # the report line says the export has none and where it is, not "none in this run"
    assert ours_info["report"] is None and "run folder" in ours_info["report_note"]
    assert their_info["report_note"] is None


def test_serve_an_export_says_what_it_lacks(colour, tmp_path):
    from fastapi.testclient import TestClient

    from minivision.serve.app import create_app

    meta = json.loads((colour["run"] / "model.json").read_text())
    older = {k: v for k, v in meta.items() if k != "parameters"}  # a run that did not record its count
    gone = {**older, "dataset": {**meta["dataset"], "data": str(tmp_path / "moved")}}
    client = TestClient(create_app(export_for_test(colour["run"], tmp_path / "old.onnx", model_json=gone),
                                   device="cpu"))
    assert client.get("/models").json()["models"][0]["parameters"] is None  # said nothing, not a wrong count
    r = client.get("/examples").json()
    assert r["examples"] == [] and "cannot be read" in r["note"]
    no_test = {**meta, "metrics": {k: v for k, v in meta["metrics"].items() if k != "test_accuracy"}}
    client = TestClient(create_app(export_for_test(colour["run"], tmp_path / "nt.onnx", model_json=no_test),
                                   device="cpu"))
    assert "no test split" in client.get("/examples").json()["note"]


# ----------------------------------------------------------------------------- the numpy twins of the torch figures

def test_numpy_figures_equal_the_torch_ones():
    from minivision.metrics import metrics_from_logits
    from minivision.scores import mahalanobis_score, metrics_np
    from minivision.trust import Mahalanobis

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 7, generator=g) * 3
    y = torch.randint(0, 7, (500,), generator=g)
    classes = [f"c{i}" for i in range(7)]
    a, b = metrics_np(logits.numpy(), y.numpy(), classes), metrics_from_logits(logits, y, classes)
    for key in ("accuracy", "n", "per_class", "confusion", "classes", "macro_f1", "most_confused"):
        assert a[key] == b[key], key
    assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
    assert a["ece"] == pytest.approx(b["ece"], abs=1e-6)
    assert [x["count"] for x in a["calibration"]["bins"]] == [x["count"] for x in b["calibration"]["bins"]]
    feats = torch.randn(300, 16, generator=g) * (1 + torch.rand(300, 1, generator=g))
    labels = torch.randint(0, 3, (300,), generator=g)
    for log_norm in (True, False):  # the score now, and the unit-length one of models fitted before
        stats = Mahalanobis.fit(feats, labels, 3, log_norm=log_norm)
        length = feats.double().norm(dim=1, keepdim=True)
        v = torch.cat([feats / length, length.log()], 1) if log_norm else feats / length
        ref = torch.einsum("nkd,de,nke->nk", *(lambda d: (d, stats.precision.double(), d))(
            v.double()[:, None] - stats.means.double()[None])).min(1).values
        assert np.allclose(mahalanobis_score(feats.numpy(), stats.means.numpy(), stats.precision.numpy(),
                                             log_norm=log_norm), ref.numpy(), rtol=1e-5)


def test_numpy_trust_figures_equal_the_torch_ones(grey):
    from minivision.data.dataset import Split
    from minivision.evaluate import trust_metrics
    from minivision.runfiles import load_model
    from minivision.scores import trust_metrics_np

    lm = load_model(grey["run"])
    x, y = torch.from_numpy(grey["x"][:200]), torch.from_numpy(grey["y"][:200])
    x[:5] = 0  # empty pictures: unsure
    logits = torch.randn(200, 4, generator=torch.Generator().manual_seed(1)) * 2
    theirs = trust_metrics(lm, Split(x, y), logits, device="cpu")
    feats = rt.load_onnx(grey["onnx"]).outputs(x.numpy())[1]
    ours = trust_metrics_np(lm.meta, x.numpy(), y.numpy(), logits.numpy(), rt.load_onnx(grey["onnx"]).ood(feats))
    assert ours["unsure"] == theirs["unsure"] and ours["confidence"] == theirs["confidence"]
    assert ours["ece"] == pytest.approx(theirs["ece"], abs=1e-6)  # float32 softmax of torch vs numpy


# ----------------------------------------------------------------------------- test-time augmentation

SHIFT_T = 1.7  # the temperature the flip+shift export below carries: scores that ignore it differ


@pytest.fixture(scope="module")
def grey_shift(grey) -> Path:
    """The grey run exported with a model.json that says ``tta`` "flip+shift", temperature ``SHIFT_T`` and a
    model trained without flips (so ``evaluate.tta_notes`` has a note to give)."""
    meta = json.loads((grey["run"] / "model.json").read_text())
    meta.update(tta="flip+shift", calibration={**(meta.get("calibration") or {}), "temperature": SHIFT_T},
                augment={**(meta.get("augment") or {}), "horizontal_flip": False})
    return export_for_test(grey["run"], grey["dir"] / "shift.onnx", model_json=meta)


def _torch_scores(run: Path, x: np.ndarray, mode: str, temperature: float) -> np.ndarray:
    """softmax of ``inference.predict_logits`` with the view set ``mode``: the run's own scores, float32 (N, K)."""
    from minivision.inference import predict_logits
    from minivision.runfiles import load_model

    lm = load_model(run)
    out = predict_logits(lm.model, lm.preprocess, torch.from_numpy(np.ascontiguousarray(x)), device=torch.device("cpu"),
                         tta=mode, temperature=temperature)
    return torch.softmax(out, 1).numpy()


def _scores(rows: list[dict], k: int) -> np.ndarray:
    out = np.zeros((len(rows), k))
    for i, r in enumerate(rows):
        for t in r["top_k"]:
            out[i, t["index"]] = t["score"]
    return out


def test_the_models_own_view_set_gives_the_torch_runs_answers(grey, grey_shift, tmp_path):
    om = rt.load_onnx(grey_shift)
    assert om.meta["tta"] == "flip+shift" and om.temperature == SHIFT_T
    ours = [r for r in rt.predict_images(om, photos(tmp_path, colour=False), top_k=4, inputs=True) if "input" in r]
    seen = np.stack([r["input"] for r in ours])
    want, plain = (_torch_scores(grey["run"], seen, mode, SHIFT_T) for mode in ("flip+shift", "none"))
    np.testing.assert_allclose(_scores(ours, 4), want, atol=2e-6)  # scores are rounded to 6 places
    assert [r["index"] for r in ours] == want.argmax(1).tolist()
    assert [r["plain"]["index"] for r in ours] == plain.argmax(1).tolist()
    np.testing.assert_allclose([r["plain"]["score"] for r in ours], plain.max(1), atol=2e-6)
    # the unsure verdicts are made on the views' mean: a low score names the mean's
    for r, w in zip(ours, want, strict=True):
        if (r["reason"] or "").startswith("low confidence"):
            assert r["reason"] == f"low confidence: the top score is {w.max():.1%}"
    # and the mean is not the picture alone's: 500 times the tolerance above apart (a model this small is unsure)
    assert np.abs(want - plain).max() > 1e-3
    # the run's own predict, told the same view set and temperature, gives the same answers, plain ones beside
    from minivision.predict import predict_images
    from minivision.runfiles import load_model

    lm = load_model(grey["run"])
    lm.meta.update(tta="flip+shift", calibration={**(lm.meta.get("calibration") or {}), "temperature": SHIFT_T})
    files = photos(tmp_path / "again", colour=False)
    theirs = predict_images(lm, files, top_k=3, device="cpu")
    assert all("plain" in r for r in theirs if "error" not in r)
    assert_same_answers(rt.predict_images(om, files, top_k=3), theirs)


@pytest.mark.parametrize("tta, mode", [(None, "flip+shift"), ("auto", "flip+shift"), ("flip+shift", "flip+shift"),
                                       ("none", "none"), (False, "none"), (True, "flip"), ("flip", "flip")])
def test_a_view_set_asked_for_overrides_the_models_own(grey, grey_shift, tta, mode):
    om = rt.load_onnx(grey_shift)
    rows = rt.predict_pixel_csv(om, grey["dir"] / "test.csv", top_k=4, tta=tta)
    np.testing.assert_allclose(_scores(rows, 4), _torch_scores(grey["run"], grey["x"][320:], mode, SHIFT_T),
                               atol=2e-6)
    assert all(("plain" in r) == (mode != "none") and r.get("tta", "none") == mode for r in rows)
    if mode != "none":  # the views change the scores by far more than the tolerance
        assert np.abs(_scores(rows, 4) - _torch_scores(grey["run"], grey["x"][320:], "none", SHIFT_T)).max() > 1e-3


def test_evaluate_figures_the_models_own_view_set(grey, grey_shift, capsys):
    import argparse

    import torch.nn.functional as F

    from minivision.evaluate import tta_notes

    om = rt.load_onnx(grey_shift)
    metrics, sd = rt.evaluate(om)
    x, y = np.asarray(sd.split.x), torch.from_numpy(np.asarray(sd.split.y))
    mean = torch.from_numpy(np.log(_torch_scores(grey["run"], x, "flip+shift", 1.0)))  # uncalibrated, as the run's
    assert metrics["tta"] == "flip+shift"
    assert metrics["tta_accuracy"] == pytest.approx((mean.argmax(1) == y).float().mean().item(), abs=1e-9)
    assert metrics["tta_loss"] == pytest.approx(F.cross_entropy(mean, y).item(), abs=1e-5)
    from minivision.metrics import calibration  # the answers' calibration error: the views' calibrated mean

    answers = torch.from_numpy(_torch_scores(grey["run"], x, "flip+shift", om.temperature))
    assert metrics["tta_ece"] == pytest.approx(calibration(answers, y)["ece"], abs=1e-5)
    plain, _ = rt.evaluate(om, tta="none")
    assert not {"tta", "tta_accuracy", "tta_loss", "tta_ece"} & set(plain)
    assert plain["accuracy"] == metrics["accuracy"] and plain["loss"] == metrics["loss"]  # the picture alone's
    # the CLI's notes (naming the view set) come with one that mirrors, asked for or the model's own; not with none
    for tta, mode in ((None, "flip+shift"), ("flip", "flip"), ("none", "none")):
        a = argparse.Namespace(model=str(grey_shift), data=None, data_dir=None, test_data=None, split=None, tta=tta)
        rt.evaluate_command(a)
        err = capsys.readouterr().err
        notes = tta_notes(om.meta, sd.dataset.name, mode="flip" if mode == "none" else mode)
        assert notes and all((note in err) == (mode != "none") for note in notes), (tta, err)


def test_a_bad_view_set_is_one_line(grey, grey_shift):
    om = rt.load_onnx(grey_shift)
    calls = [lambda: rt.predict_images(om, [], tta="flip+shfit"),
             lambda: rt.predict_pixel_csv(om, grey["dir"] / "missing.csv", tta="mirror"),  # before the file is read
             lambda: rt.answer_batch(om, grey["x"][:2], 1, tta=2),
             lambda: rt.evaluate(om, tta="shift")]
    for call in calls:
        with pytest.raises(MinivisionError, match="tta must be one of none, flip, flip\\+shift") as e:
            call()
        assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- errors: one line each

def _one_line_error(capsys, argv: list[str], *words: str) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    return err


def test_an_onnx_file_that_is_not_ours(grey, tmp_path, capsys):
    plain = export_for_test(grey["run"], tmp_path / "plain.onnx", metadata=False)
    _one_line_error(capsys, ["predict", str(plain), str(CASES / "uneven-light-trouser.jpg")],
                    "not a minivision export", "'minivision'")
    _one_line_error(capsys, ["evaluate", str(plain)], "not a minivision export")
    newer = export_for_test(grey["run"], tmp_path / "newer.onnx", format_version=2)
    _one_line_error(capsys, ["evaluate", str(newer)], "newer minivision")
    no_classes = export_for_test(grey["run"], tmp_path / "noclasses.onnx", classes=[])
    _one_line_error(capsys, ["evaluate", str(no_classes)], "no classes")
    with pytest.raises(MinivisionError, match="no model_json"):
        rt.load_onnx(export_for_test(grey["run"], tmp_path / "nojson.onnx", model_json=None))


def test_a_damaged_or_missing_file(grey, tmp_path, capsys):
    data = grey["onnx"].read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    _one_line_error(capsys, ["predict", str(tmp_path / "cut.onnx"), "x.png"], "not a readable ONNX model")
    (tmp_path / "text.onnx").write_text("hello")
    _one_line_error(capsys, ["evaluate", str(tmp_path / "text.onnx")], "not a readable ONNX model")
    _one_line_error(capsys, ["evaluate", str(tmp_path / "gone.onnx")], "no such file")
    # a damaged trust file is an error; a missing one a note (the out-of-distribution check is skipped)
    bad = export_for_test(grey["run"], tmp_path / "bad.onnx")
    (tmp_path / "bad.onnx.trust.safetensors").write_bytes(b"\x10\x00\x00")
    _one_line_error(capsys, ["evaluate", str(bad)], "bad.onnx.trust.safetensors")
    (tmp_path / "bad.onnx.trust.safetensors").unlink()
    assert main(["predict", str(bad), str(CASES / "uneven-light-trouser.jpg")]) == 0
    assert "out-of-distribution check" in capsys.readouterr().err


def test_a_renamed_export_finds_its_own_trust_file(grey, tmp_path):
    """FILE.trust.safetensors beside the file first; the recorded name only when its sha256 matches."""
    (tmp_path / "a").mkdir()
    sha = hashlib.sha256((grey["run"] / "trust.safetensors").read_bytes()).hexdigest()
    orig = export_for_test(grey["run"], tmp_path / "a" / "model.onnx", trust_sha256=sha)
    # renamed with its trust file renamed the README's way, in a new folder: the renamed one is used
    (tmp_path / "b").mkdir()
    shutil.copyfile(orig, tmp_path / "b" / "renamed.onnx")
    shutil.copyfile(tmp_path / "a" / "model.onnx.trust.safetensors", tmp_path / "b" / "renamed.onnx.trust.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no note: nothing is skipped, nothing guessed
        assert rt.load_onnx(tmp_path / "b" / "renamed.onnx").trust is not None
    # a renamed copy in the original folder: the recorded name's file matches its checksum, used with a note
    shutil.copyfile(orig, tmp_path / "a" / "copy.onnx")
    with pytest.warns(Note, match="model.onnx.trust.safetensors"):
        assert rt.load_onnx(tmp_path / "a" / "copy.onnx").trust is not None
    # ... but another model's statistics under the recorded name are not taken
    t = tmp_path / "a" / "model.onnx.trust.safetensors"
    from safetensors.numpy import load_file, save_file
    other = {k: v + 1 for k, v in load_file(str(t)).items()}
    save_file(other, str(t))
    with pytest.warns(Note, match="out-of-distribution check"):
        assert rt.load_onnx(tmp_path / "a" / "copy.onnx").trust is None
    # another export's statistics of the same shape under the file's own name: not used, and a note says so
    save_file(other, str(tmp_path / "b" / "renamed.onnx.trust.safetensors"))
    with pytest.warns(Note, match="renamed.onnx.trust.safetensors is not the file renamed.onnx records"):
        assert rt.load_onnx(tmp_path / "b" / "renamed.onnx").trust is None
    # a damaged one is an error, not another export's
    good = (tmp_path / "a" / "model.onnx.trust.safetensors")
    (tmp_path / "b" / "renamed.onnx.trust.safetensors").write_bytes(good.read_bytes()[:60])
    with pytest.raises(MinivisionError, match="not a readable safetensors file.*export the run again"):
        rt.load_onnx(tmp_path / "b" / "renamed.onnx")


def test_without_onnxruntime(grey, tmp_path):
    code = ("import sys\nsys.modules['onnxruntime'] = None\nfrom minivision.cli import main\n"
            f"sys.exit(main(['evaluate', {str(grey['onnx'])!r}]))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip() == "error: running an .onnx export needs onnxruntime (pip install onnxruntime)"


def test_what_an_export_cannot_do_says_so(grey, tmp_path, capsys):
    _one_line_error(capsys, ["predict", str(grey["onnx"]), "x.png", "--show", str(tmp_path / "s")], "--show")
    _one_line_error(capsys, ["evaluate", str(grey["onnx"]), "--report"], "--report")
    # the validation split was drawn with PyTorch's generator: refused in one line, not drawn otherwise
    _one_line_error(capsys, ["evaluate", str(grey["onnx"]), "--split", "val"], "PyTorch's random generator")


def test_evaluate_of_a_run_without_a_test_split_names_what_works(tmp_path, capsys):
    x, y = synthetic_images(64, classes=2, channels=3, size=16, seed=3)
    for i, (img, k) in enumerate(zip(x, y, strict=True)):
        folder = tmp_path / ("pics" if i < 48 else "more") / f"class{k}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.transpose(1, 2, 0)).save(folder / f"{i}.png")
    run = _train(TrainConfig(model="mvnet-t", epochs=1, batch_size=16, data=str(tmp_path / "pics"),
                             out=str(tmp_path / "runs")))
    onnx_file = export_for_test(run, tmp_path / "nosplit.onnx")
    for extra in ([], ["--split", "test"], ["--split", "val"], ["--split", "train"]):
        err = _one_line_error(capsys, ["evaluate", str(onnx_file), *extra], "--data FOLDER", "minivision evaluate RUN")
        assert "--split" not in err, err  # never suggests a split that fails
    # both ways it names work
    assert main(["evaluate", str(onnx_file), "--data", str(tmp_path / "more"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 16
    assert main(["evaluate", str(run)]) == 0


# ----------------------------------------------------------------------------- real data

@pytest.fixture(scope="module")
def fashion_export(small_fashion_run, tmp_path_factory) -> Path:
    return export_for_test(small_fashion_run, tmp_path_factory.mktemp("onnx-fashion") / "fashion.onnx")


@needs_fashion_mnist
def test_fashion_mnist_photos_get_the_runs_answers(small_fashion_run, fashion_export, tmp_path):
    """A Fashion-MNIST model's photo conversion (trim, centre, negate) on real photos and test pictures."""
    from minivision.data import load_dataset
    from minivision.predict import predict_images
    from minivision.runfiles import load_model

    test = load_dataset("fashion-mnist", test_only=True).test
    files = [str(p) for p in sorted(CASES.glob("*.jpg"))]
    for i in range(8):  # test pictures as a user would save them
        Image.fromarray(255 - test.x[i, 0].numpy()).resize((112, 112)).save(tmp_path / f"t{i}.png")
        files.append(str(tmp_path / f"t{i}.png"))
    assert_same_answers(rt.predict_images(rt.load_onnx(fashion_export), files, top_k=3),
                        predict_images(load_model(small_fashion_run), files, top_k=3))


@needs_fashion_mnist
@pytest.mark.slow
def test_fashion_mnist_evaluate_gives_the_runs_figures(small_fashion_run, fashion_export, capsys):
    ours = _cli_json(capsys, "evaluate", str(fashion_export), "--json")
    theirs = _cli_json(capsys, "evaluate", str(small_fashion_run), "--json")
    assert ours["n"] == theirs["n"] == 10_000
    assert (ours["accuracy"], ours["confusion"], ours["unsure"]["n"]) == \
           (theirs["accuracy"], theirs["confusion"], theirs["unsure"]["n"])
    assert ours["loss"] == pytest.approx(theirs["loss"], abs=1e-5)


# ----------------------------------------------------------------------------- speed: the same answers, faster

def _reference_blank(x: np.ndarray, spread: float) -> np.ndarray:
    """The rule as first written: float grey levels, ``np.percentile``."""
    grey = x.astype(np.float32).mean(1).reshape(len(x), -1)
    lo, hi = np.percentile(grey, [1, 99], axis=1)
    return (hi - lo) < spread


def _reference_noise(x: np.ndarray) -> np.ndarray:
    """The rule as first written: the mean-centred neighbour pairs, concatenated, in float32."""
    g = x.astype(np.float32).mean(1)
    n = len(g)
    a = np.concatenate([g[:, :, :-1].reshape(n, -1), g[:, :-1, :].reshape(n, -1)], 1)
    b = np.concatenate([g[:, :, 1:].reshape(n, -1), g[:, 1:, :].reshape(n, -1)], 1)
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (denom > 0) & ((a * b).sum(1) < 0.15 * denom)


@pytest.mark.parametrize("shape", [(400, 1, 28, 28), (200, 3, 32, 32), (60, 1, 2, 2), (60, 3, 5, 7)])
def test_empty_and_noise_rules_give_the_reference_verdicts(shape):
    from minivision.scores import blank_arrays, noise_arrays

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, shape, dtype=np.uint8)  # noise
    for k in range(0, len(x), 3):  # low contrast around a random grey: empty at some spreads, not others
        x[k] = x[k] // rng.integers(1, 60) + rng.integers(0, 150)
    for k in range(1, len(x), 5):  # smooth ramps: neighbours correlate, not noise
        x[k] = np.clip(np.cumsum(x[k] // 16, axis=-1), 0, 255)
    x[2] = 77  # one colour
    ours_noise, ref_noise = noise_arrays(x), _reference_noise(x)
    assert (ours_noise == ref_noise).all() and 0 < ref_noise.sum() < len(x)
    for spread in (3.0, 10.0, 20.0):
        ours, ref = blank_arrays(x, spread), _reference_blank(x, spread)
        assert (ours == ref).all(), spread
    assert blank_arrays(x)[2] and not noise_arrays(x)[2]
    assert 0 < _reference_blank(x, 10.0).sum() < len(x)


def test_mahalanobis_score_is_the_distance_to_the_nearest_class():
    from minivision.scores import mahalanobis_score

    rng = np.random.default_rng(1)
    f, means = rng.normal(size=(700, 12)).astype(np.float32), rng.normal(size=(5, 12)).astype(np.float32)
    a = rng.normal(size=(12, 12))
    precision = (a @ a.T + np.eye(12)).astype(np.float32)
    unit = (f / np.linalg.norm(f, axis=1, keepdims=True)).astype(np.float64)
    d = unit[:, None, :] - means.astype(np.float64)[None]
    ref = np.einsum("nkd,de,nke->nk", d, precision.astype(np.float64), d).min(1)
    assert np.allclose(mahalanobis_score(f, means, precision, batch=256, log_norm=False), ref, rtol=1e-5)
    assert mahalanobis_score(f[:0], means, precision).shape == (0,)
    # with the log length as a 13th coordinate (the score of models fitted now)
    means13, b = rng.normal(size=(5, 13)).astype(np.float32), rng.normal(size=(13, 13))
    precision13 = (b @ b.T + np.eye(13)).astype(np.float32)
    v = np.concatenate([unit, np.log(np.linalg.norm(f.astype(np.float64), axis=1, keepdims=True))], 1)
    d = v[:, None, :] - means13.astype(np.float64)[None]
    ref = np.einsum("nkd,de,nke->nk", d, precision13.astype(np.float64), d).min(1)
    assert np.allclose(mahalanobis_score(f, means13, precision13, batch=256), ref, rtol=1e-5)


def test_default_threads_follow_the_free_cpus(monkeypatch, tmp_path):
    import os

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    # the runnable-task count of /proc/loadavg, when there is one, wins over the load average
    monkeypatch.setattr(rt, "running_elsewhere", lambda: 0)
    monkeypatch.setattr(os, "getloadavg", lambda: (cpus + 5.0, 0.0, 0.0))
    assert rt.default_threads() == cpus
    monkeypatch.setattr(rt, "running_elsewhere", lambda: cpus + 3)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert rt.default_threads() == 1
    # without /proc: the load average
    monkeypatch.setattr(rt, "running_elsewhere", lambda: None)
    assert rt.default_threads() == cpus
    monkeypatch.setattr(os, "getloadavg", lambda: (cpus + 5.0, 0.0, 0.0))
    assert rt.default_threads() == 1

    def no_load():
        raise OSError("no load average here")

    monkeypatch.setattr(os, "getloadavg", no_load)
    assert rt.default_threads() == cpus


def test_running_elsewhere_reads_the_runnable_field(tmp_path):
    f = tmp_path / "loadavg"
    f.write_text("1.17 1.21 1.24 3/76 11491\n")
    assert rt.running_elsewhere(str(f)) == 2  # this process is one of the 3
    f.write_text("0.00 0.00 0.00 1/76 11491\n")
    assert rt.running_elsewhere(str(f)) == 0
    f.write_text("garbage\n")
    assert rt.running_elsewhere(str(f)) is None
    assert rt.running_elsewhere(str(tmp_path / "absent")) is None


def test_sessions_do_not_spin_and_take_the_threads_asked_for(grey):
    session = rt.load_onnx(grey["onnx"], threads=3).session
    options = session.get_session_options()
    assert options.intra_op_num_threads == 3
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    om = rt.load_onnx(grey["onnx"])
    assert om.session.get_session_options().intra_op_num_threads >= 1


def test_outputs_do_not_depend_on_the_batch_size(grey):
    om = rt.load_onnx(grey["onnx"])
    x = np.random.default_rng(2).integers(0, 256, (300, *om.session.get_inputs()[0].shape[1:]), dtype=np.uint8)
    logits, features = om.outputs(x)
    small, small_features = om.outputs(x, batch_size=7)
    assert logits.shape == (300, len(om.classes)) and np.allclose(logits, small, atol=1e-5)
    assert np.allclose(features, small_features, atol=1e-5)


def test_reading_named_or_idx_data_leaves_the_folder_reader_and_downloader_unloaded(tmp_path):
    code = ("import sys\nimport minivision.evaluate, minivision.onnx_runtime, minivision.data.sources\n"
            "print(sorted(m for m in ('minivision.data.folder', 'urllib.request', 'concurrent.futures.process')"
            " if m in sys.modules))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "[]"
    # a folder of pictures still loads its reader (the check above can fail)
    folder = tmp_path / "pics"
    for name in ("a", "b"):
        (folder / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8), 40 * i + (100 if name == "b" else 0), np.uint8)).save(
                folder / name / f"{i}.png")
    code = ("import sys\nfrom minivision.data import load_dataset\n"
            f"ds = load_dataset({str(folder)!r})\nprint(len(ds.train), 'minivision.data.folder' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1].endswith("True")
