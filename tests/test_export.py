"""``minivision export``: the file's graph (uint8 pixels in, normalisation inside, logits and features out,
dynamic batch), its metadata and sidecar, the parity check and its refusals, int8, TorchScript, never
overwriting, one-line errors; and a real Fashion-MNIST run exported fp32 and int8."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from minivision import export as ex
from minivision.cli import main
from minivision.config import TrainConfig
from minivision.errors import MinivisionError
from minivision.inference import predict_features
from minivision.runfiles import load_model

from .conftest import needs_fashion_mnist, synthetic_images, write_pixel_csv


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory) -> Path:
    """A small cnn1 trained on a 4-class grey CSV (so the run's test split can be read again), with standard
    normalisation (mean/std inside the export) and its trust statistics."""
    from minivision.train import fit

    d = tmp_path_factory.mktemp("export-data")
    x, y = synthetic_images(400, classes=4)
    write_pixel_csv(d / "train.csv", x[:320, 0], y[:320])
    write_pixel_csv(d / "test.csv", x[320:, 0], y[320:])
    cfg = TrainConfig(model="cnn1", epochs=2, batch_size=32, normalize="standard", data=str(d / "train.csv"),
                      test_data=str(d / "test.csv"), out=str(tmp_path_factory.mktemp("export-runs")))
    return fit(cfg, log=lambda m: None, progress=False).run_dir


@pytest.fixture(scope="module")
def onnx_export(csv_run) -> dict:
    return ex.export_run(csv_run, log=lambda m: None)


def _pictures(n: int, shape=(1, 28, 28), seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (n, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def _torch_outputs(run: Path, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    lm = load_model(run)
    f, logits = predict_features(lm.model, lm.preprocess, x, device=torch.device("cpu"))
    return logits.numpy(), f.numpy()


# ----------------------------------------------------------------------------- the ONNX file

def test_onnx_file_passes_the_checker_and_takes_uint8_pixels(onnx_export, csv_run):
    path = Path(onnx_export["path"])
    assert path == csv_run / "export" / "model.onnx"
    onnx.checker.check_model(str(path), full_check=True)
    mp = onnx.load(str(path))
    assert mp.opset_import[0].version >= 17
    (inp,) = mp.graph.input
    assert inp.name == "pixels" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 28, 28]
    assert [o.name for o in mp.graph.output] == ["logits", "features"]


def test_onnx_answers_as_pytorch_at_batch_1_and_5(onnx_export, csv_run):
    session = ort.InferenceSession(onnx_export["path"], providers=["CPUExecutionProvider"])
    for n in (1, 5):
        x = _pictures(n, seed=n)
        logits, features = session.run(None, {"pixels": x.numpy()})
        ref_logits, ref_features = _torch_outputs(csv_run, x)
        assert logits.dtype == np.float32 and logits.shape == (n, 4)
        assert features.shape == ref_features.shape == (n, 128)
        np.testing.assert_allclose(logits, ref_logits, atol=1e-4)
        np.testing.assert_allclose(features, ref_features, atol=1e-4)
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument):  # the file takes uint8 only
        session.run(None, {"pixels": x.numpy().astype(np.float32)})


def test_metadata_round_trip_and_sidecar(onnx_export, csv_run):
    path = Path(onnx_export["path"])
    meta = ex.read_metadata(path)
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["classes"]) == meta["classes"] == ["0", "1", "2", "3"]
    assert props["minivision_version"] == meta["minivision_version"]
    assert meta["format"] == "minivision-onnx" and meta["format_version"] == 1 and meta["precision"] == "fp32"
    assert meta["model_json"] == json.loads((csv_run / "model.json").read_text())
    assert meta["model_json"]["preprocess"]["mean"]  # standard normalisation: done inside the graph
    assert meta["weights_sha256"] == hashlib.sha256((csv_run / "model.safetensors").read_bytes()).hexdigest()
    assert meta["input"] == {"name": "pixels", "dtype": "uint8", "layout": "NCHW", "shape": [None, 1, 28, 28]}
    assert meta["outputs"] == ["logits", "features"]
    sidecar = json.loads(path.with_name("model.onnx.json").read_text())
    assert {k: sidecar[k] for k in meta} == meta
    assert sidecar["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sidecar["bytes"] == path.stat().st_size
    # the trust statistics beside it, named in the metadata
    assert meta["trust_file"] == "model.onnx.trust.safetensors"
    assert (path.parent / meta["trust_file"]).read_bytes() == (csv_run / "trust.safetensors").read_bytes()


def test_the_models_view_set_travels_with_fp32_and_int8_exports(csv_run, tmp_path):
    """model.json's ``tta`` is in the metadata's ``model_json`` (fp32 and int8 alike), where onnx_runtime reads it."""
    import shutil

    from minivision.onnx_runtime import load_onnx

    run = tmp_path / "run"
    shutil.copytree(csv_run, run, ignore=shutil.ignore_patterns("export"))
    meta = json.loads((run / "model.json").read_text())
    meta["tta"] = "flip+shift"
    (run / "model.json").write_text(json.dumps(meta))
    for int8 in (False, True):
        info = ex.export_run(run, int8=int8, out=tmp_path / f"m{int(int8)}.onnx", log=lambda m: None)
        path = Path(info["path"])
        assert ex.read_metadata(path)["model_json"].get("tta") == "flip+shift", int8
        assert json.loads(path.with_name(path.name + ".json").read_text())["model_json"].get("tta") == "flip+shift"
        assert load_onnx(path).meta.get("tta") == "flip+shift", int8


def test_parity_figures_on_the_runs_test_split(onnx_export):
    p = onnx_export["parity"]
    # the CSV run's own test file (80), topped up with its validation and training pictures: all 400 it has
    assert p["n"] == 400 and p["labelled"] == 80 and p["labelled_images"] == "test split"
    assert "80 of the test split" in p["images"] and "of the validation split" in p["images"]
    assert p["agreement"] == 1.0 and p["max_abs_logit_diff"] < 1e-3
    assert p["accuracy_torch"] == p["accuracy_export"] and p["accuracy_torch"] > 0.5


def test_an_export_that_disagrees_is_refused_and_leaves_no_file(csv_run, tmp_path, monkeypatch):
    real = ex.onnx_runner

    def swapped(path):  # a runner whose answers are the file's with two classes swapped
        run = real(path)
        return lambda x: (run(x)[0][:, [1, 0, 2, 3]], run(x)[1])

    monkeypatch.setattr(ex, "onnx_runner", swapped)
    out = tmp_path / "m.onnx"
    with pytest.raises(MinivisionError, match=r"agrees with PyTorch on \d+\.\d+% of 400 top-1 answers") as e:
        ex.export_run(csv_run, out=out, log=lambda m: None)
    assert "\n" not in str(e.value) and "largest logit difference" in str(e.value)
    assert list(tmp_path.iterdir()) == []  # neither the file, its temporary, nor its sidecar


def _fake_dataset(n_test: int, n_val: int, n_train: int):
    from minivision.data.dataset import Dataset, Split

    def split(n, value):
        return Split(torch.full((n, 1, 28, 28), value, dtype=torch.uint8), torch.full((n,), value % 4)) if n else None
    return Dataset("tiny", ["0", "1", "2", "3"], split(n_train, 3), test=split(n_test, 1), val=split(n_val, 2))


@pytest.mark.parametrize("sizes, want", [
    ((20, 500, 3000), (20, 500, 1480)),   # a tiny test split: all the validation, then training pictures
    ((20, 0, 3000), (20, 0, 1980)),
    ((0, 20, 3000), (0, 20, 1980)),       # no test split: the validation split is the labelled one
    ((20, 30, 100), (20, 30, 100)),       # fewer than 2,000 in all: every picture
    ((2500, 500, 3000), (2500, 0, 0)),    # a test split of 2,000 or more: it alone
])
def test_parity_is_topped_up_to_2000_real_pictures(sizes, want, csv_run, monkeypatch):
    import minivision.evaluate

    monkeypatch.setattr(minivision.evaluate, "dataset_for", lambda lm, *a, **k: _fake_dataset(*sizes))
    x, y, source = ex.parity_pictures(load_model(csv_run), lambda m: None)
    counts = tuple(int((x[:, 0, 0, 0] == v).sum()) for v in (1, 2, 3))
    assert counts == want and source["n"] == len(x) == sum(want)
    labelled = want[0] or want[1]
    assert len(y) == labelled == source["labelled"] and x[:labelled, 0, 0, 0].eq(1 if want[0] else 2).all()
    again, _, _ = ex.parity_pictures(load_model(csv_run), lambda m: None)
    assert torch.equal(x, again)  # seeded


def test_accuracy_is_figured_on_the_labelled_pictures_only():
    ref = torch.tensor([[1.0, 0.0]] * 4)  # PyTorch says class 0 for all four
    run = lambda x: (torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]), None)  # noqa: E731
    p = ex.compare(run, torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 0]), ref,
                   {"images": "x", "labelled": 2, "labelled_images": "test split"})
    assert p["n"] == 4 and p["agreement"] == 0.25 and p["accuracy_torch"] == 1.0 and p["accuracy_export"] == 0.5
    assert "accuracy 50.00% (PyTorch 100.00%) on the 2 pictures of the test split" in ex.parity_line(p, "ONNX")


def test_parity_falls_back_to_seeded_pictures_when_the_data_is_gone(csv_run, monkeypatch):
    import minivision.evaluate

    def gone(*a, **k):
        raise MinivisionError("train.csv: file not found")

    monkeypatch.setattr(minivision.evaluate, "dataset_for", gone)
    lines: list[str] = []
    x, y, source = ex.parity_pictures(load_model(csv_run), lines.append)
    x2, _, _ = ex.parity_pictures(load_model(csv_run), lines.append)
    assert y is None and x.shape == (2000, 1, 28, 28) and x.dtype == torch.uint8 and torch.equal(x, x2)
    assert "random" in source["images"] and "file not found" in lines[0]


def test_colour_folder_run_with_standard_normalisation(tmp_path):
    """A colour image-folder run (per-channel mean/std inside the graph): parity on its own test folder, and
    the file answers as PyTorch does on the pictures as the folder reader made them."""
    from PIL import Image

    from minivision.train import fit

    x, y = synthetic_images(90, classes=3, channels=3, seed=5)
    x[:, 1] //= 2  # the channels differ, so a mixed-up channel order would show
    for i, (img, label) in enumerate(zip(x, y, strict=True)):
        part = "test" if i >= 60 else "train"
        (tmp_path / "data" / part / f"c{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.transpose(1, 2, 0), "RGB").save(tmp_path / "data" / part / f"c{label}" / f"{i}.png")
    run = fit(TrainConfig(model="cnn1", epochs=1, batch_size=16, normalize="standard", data=str(tmp_path / "data"),
                          out=str(tmp_path / "runs")), log=lambda m: None, progress=False).run_dir
    info = ex.export_run(run, log=lambda m: None)
    meta = info["model_json"]["preprocess"]
    assert len(meta["mean"]) == 3 and meta["mean"][0] != meta["mean"][1]
    assert info["input"]["shape"] == [None, 3, 28, 28] and info["classes"] == ["c0", "c1", "c2"]
    p = info["parity"]
    assert p["n"] == 90 and p["labelled"] == 30 and "30 of the test split" in p["images"] and p["agreement"] == 1.0
    session = ort.InferenceSession(info["path"], providers=["CPUExecutionProvider"])
    pics = torch.from_numpy(x[60:])
    logits, _ = session.run(None, {"pixels": pics.numpy()})
    np.testing.assert_allclose(logits, _torch_outputs(run, pics)[0], atol=1e-4)


# ----------------------------------------------------------------------------- int8

def test_int8_is_smaller_and_still_takes_uint8(csv_run, onnx_export):
    info = ex.export_run(csv_run, int8=True, log=lambda m: None)
    path = Path(info["path"])
    assert path.name == "model.int8.onnx" and info["precision"] == "int8"
    assert info["bytes"] < onnx_export["bytes"] / 2 and info["fp32_bytes"] > info["bytes"]
    mp = onnx.load(str(path))
    assert mp.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert any(n.op_type == "QuantizeLinear" for n in mp.graph.node)
    weights = [onnx.numpy_helper.to_array(t) for t in mp.graph.initializer  # the layers' weights (not zero points)
               if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2]
    assert weights and max(int(np.abs(w.astype(np.int16)).max()) for w in weights) <= 64  # the 7-bit range
    cal = ex.read_metadata(path)["calibration_set"]
    assert cal["n"] == 256 and cal["seed"] == 0 and "training" in cal["images"]  # 320 less the validation's 64
    p = info["parity"]
    assert p["n"] == 400 and p["accuracy_torch"] - p["accuracy_export"] <= ex.MAX_INT8_LOSS
    assert info["fp32_parity"]["agreement"] == 1.0
    # only the operator sets its nodes use (the graph optimisation declares a dozen it never uses)
    assert {o.domain for o in mp.opset_import} == {n.domain for n in mp.graph.node} | {""}
    onnx.checker.check_model(str(path), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.run(None, {"pixels": _pictures(5).numpy()})[0].shape == (5, 4)


def test_unused_opset_imports_are_dropped():
    from onnx import helper

    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    mp = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1),
                                                 helper.make_opsetid("org.pytorch.aten", 1)])
    assert ex.drop_unused_opsets(mp) and [(o.domain, o.version) for o in mp.opset_import] == [("", 18)]
    assert not ex.drop_unused_opsets(mp)
    onnx.checker.check_model(mp)


@pytest.mark.parametrize("fast_int8", [False, True, None])
def test_int8_line_says_which_fp32_size_it_prints(csv_run, tmp_path, monkeypatch, fast_int8):
    monkeypatch.setattr(ex, "int8_dot_product", lambda: fast_int8)
    lines: list[str] = []
    info = ex.export_run(csv_run, int8=True, out=tmp_path / "q.onnx", log=lines.append)
    line = next(m for m in lines if m.startswith("parity (ONNX int8"))
    assert f"{info['bytes']:,} bytes (the fp32 graph it was quantized from {info['fp32_bytes']:,}" in line
    # a CPU without int8 dot-product instructions is told not to expect a speed-up; others hear nothing
    notes = [m for m in lines if "no int8 dot-product instructions" in m]
    assert len(notes) == (1 if fast_int8 is False else 0)


def test_int8_dot_product_reads_the_cpu_flags(monkeypatch):
    from minivision import runfiles

    for flags, want in [(["avx2", "fma"], False), (["avx2", "avx512_vnni"], True), (["avx_vnni"], True),
                        (["amx_int8", "amx_tile"], True), (None, None)]:
        monkeypatch.setattr(runfiles, "cpu_info", lambda flags=flags: ("CPU", flags))
        assert runfiles.int8_dot_product() is want


def test_int8_that_loses_accuracy_is_refused(csv_run, tmp_path, monkeypatch):
    monkeypatch.setattr(ex, "MAX_INT8_LOSS", -1.0)  # any int8 file now loses too much
    with pytest.raises(MinivisionError, match=r"int8 export refused.*accuracy \d+\.\d+% vs PyTorch's") as e:
        ex.export_run(csv_run, int8=True, out=tmp_path / "q.onnx", log=lambda m: None)
    assert "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- TorchScript

def test_torchscript_export_and_parity(csv_run, tmp_path):
    info = ex.export_run(csv_run, fmt="torchscript", out=tmp_path / "m.torchscript", log=lambda m: None)
    assert info["parity"]["agreement"] == 1.0 and info["parity"]["n"] == 400
    extra = {"minivision.json": ""}
    module = torch.jit.load(str(tmp_path / "m.torchscript"), _extra_files=extra)
    meta = json.loads(extra["minivision.json"])
    assert meta["format"] == "minivision-torchscript" and meta["classes"] == ["0", "1", "2", "3"]
    for n in (1, 5):
        x = _pictures(n, seed=10 + n)
        logits, features = module(x)
        ref_logits, _ = _torch_outputs(csv_run, x)
        np.testing.assert_allclose(logits.detach().numpy(), ref_logits, atol=1e-4)
    assert (tmp_path / "m.torchscript.json").is_file()


# ----------------------------------------------------------------------------- never overwritten, errors

def test_default_names_count_up_and_out_is_never_replaced(csv_run, tmp_path, capsys):
    first = ex.export_run(csv_run, fmt="torchscript", log=lambda m: None)
    second = ex.export_run(csv_run, fmt="torchscript", log=lambda m: None)
    assert Path(first["path"]).name == "model.torchscript" and Path(second["path"]).name == "model2.torchscript"
    out = tmp_path / "keep.onnx"
    out.write_bytes(b"mine")
    assert main(["export", str(csv_run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out") and "never overwritten" in err and err.count("\n") == 1
    assert out.read_bytes() == b"mine"


def test_out_under_a_file_is_one_line_naming_out(csv_run, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "y.onnx"
    assert main(["export", str(csv_run), "--format", "torchscript", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write --out {out}") and "is a file, not a folder" in err
    assert err.count("\n") == 1


def test_out_in_a_read_only_folder_names_out_not_a_temporary(csv_run, tmp_path, capsys, monkeypatch):
    import os
    import tempfile

    def refused(*a, **k):  # as a read-only folder answers (a chmod would not stop root, who runs some CI)
        raise PermissionError(13, "Permission denied", str(tmp_path / "ro" / ".m.ts.abc123.tmp"))

    folder = tmp_path / "ro"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "mkstemp", refused)
    monkeypatch.setattr(os, "access", lambda *a, **k: True)
    assert main(["export", str(csv_run), "--format", "torchscript", "--out", str(folder / "m.ts")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write --out {folder / 'm.ts'}") and "Permission denied" in err
    assert ".tmp" not in err and err.count("\n") == 1 and list(folder.iterdir()) == []
    monkeypatch.setattr(os, "access", lambda *a, **k: False)  # the folder found not writable before any work
    assert main(["export", str(csv_run), "--format", "torchscript", "--out", str(folder / "m.ts")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write --out {folder / 'm.ts'}: the folder") and err.count("\n") == 1


def test_a_refused_export_removes_the_folders_it_made(csv_run, tmp_path, monkeypatch):
    (tmp_path / "mine").mkdir()
    monkeypatch.setattr(ex, "MIN_AGREEMENT", 1.01)  # every export now refused
    with pytest.raises(MinivisionError, match="export refused"):
        ex.export_run(csv_run, fmt="torchscript", out=tmp_path / "mine" / "new" / "deeper" / "m.ts",
                      log=lambda m: None)
    assert [p.name for p in tmp_path.iterdir()] == ["mine"] and list((tmp_path / "mine").iterdir()) == []


def test_classifier_export_takes_out_as_the_command_does(csv_run, tmp_path):
    import minivision as mv

    clf = mv.load(csv_run)
    assert Path(clf.export(out=tmp_path / "a.ts", format="torchscript")["path"]) == tmp_path / "a.ts"
    assert Path(clf.export(path=tmp_path / "b.ts", format="torchscript")["path"]) == tmp_path / "b.ts"
    with pytest.raises(MinivisionError, match="not both"):
        clf.export(out=tmp_path / "c.ts", path=tmp_path / "d.ts", format="torchscript")


def test_a_file_that_appears_meanwhile_is_kept(csv_run, tmp_path, monkeypatch):
    out = tmp_path / "m.torchscript"
    real = ex.compare

    def other_export_finishes_first(*a, **k):
        out.write_bytes(b"theirs")
        return real(*a, **k)

    monkeypatch.setattr(ex, "compare", other_export_finishes_first)
    with pytest.raises(MinivisionError, match="appeared while exporting"):
        ex.export_run(csv_run, fmt="torchscript", out=out, log=lambda m: None)
    assert out.read_bytes() == b"theirs" and sorted(p.name for p in tmp_path.iterdir()) == ["m.torchscript"]


def test_cli_export_json(csv_run, tmp_path, capsys):
    assert main(["export", str(csv_run), "--format", "torchscript", "--out", str(tmp_path / "a.ts"), "--json"]) == 0
    cap = capsys.readouterr()
    info = json.loads(cap.out)
    assert info["parity"]["agreement"] == 1.0 and "parity (TorchScript vs PyTorch" in cap.err


@pytest.mark.parametrize("argv, message", [
    (["export", "{tmp}"], "is not a run folder"),
    (["export", "{unfinished}"], "no model"),
    (["export", "{run}", "--format", "tflite"], "invalid choice: 'tflite'"),
    (["export", "{run}", "--format", "torchscript", "--int8"], "--int8 is for ONNX exports"),
])
def test_errors_are_one_line(argv, message, csv_run, tmp_path, capsys):
    unfinished = tmp_path / "train3"
    unfinished.mkdir()
    (unfinished / "args.yaml").write_text("model: cnn1\n")
    args = [a.format(tmp=tmp_path, unfinished=unfinished, run=csv_run) for a in argv]
    try:
        rc = main(args)
    except SystemExit as e:  # argparse's own check (the choices of --format)
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and err.count("\n") == 1


def test_api_unknown_format_did_you_mean(csv_run):
    with pytest.raises(MinivisionError, match="did you mean 'torchscript'"):
        ex.export_run(csv_run, fmt="torchscrpt")


# ----------------------------------------------------------------------------- real data

@needs_fashion_mnist
def test_real_fashion_mnist_run_exports_fp32_and_int8(small_fashion_run, tmp_path):
    """A 1-epoch cnn1 on 3,000 Fashion-MNIST pictures: parity on the real test split (10,000 pictures)."""
    import minivision as mv

    clf = mv.load(small_fashion_run)
    fp32 = clf.export(tmp_path / "f.onnx")
    p = fp32["parity"]
    assert p["n"] == 10_000 and p["images"] == "fashion-mnist: 10,000 of the test split"
    assert p["agreement"] >= ex.MIN_AGREEMENT and p["accuracy_export"] > 0.6
    int8 = clf.export(tmp_path / "q.onnx", int8=True)
    q = int8["parity"]
    assert q["accuracy_torch"] - q["accuracy_export"] <= ex.MAX_INT8_LOSS and int8["bytes"] < fp32["bytes"] / 2
    assert int8["calibration_set"]["images"] == "fashion-mnist training split"


# ----------------------------------------------------------------------------- every registered model

@pytest.fixture(scope="module")
def csv_files(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("registry-data")
    x, y = synthetic_images(200, classes=4, seed=3)
    write_pixel_csv(d / "train.csv", x[:160, 0], y[:160])
    write_pixel_csv(d / "test.csv", x[160:, 0], y[160:])
    return d / "train.csv", d / "test.csv"


def _registry() -> list[str]:
    from minivision.models import list_models

    return list_models("*")


@pytest.mark.slow
@pytest.mark.parametrize("name", _registry())
def test_every_registered_model_exports_with_parity(name, csv_files, tmp_path):
    """Each network trained one epoch, exported and checked (the cnn1 tests above are the fast sibling)."""
    from minivision.train import fit

    train, test = csv_files
    run = fit(TrainConfig(model=name, epochs=1, batch_size=32, data=str(train), test_data=str(test),
                          out=str(tmp_path / "runs")), log=lambda m: None, progress=False).run_dir
    info = ex.export_run(run, out=tmp_path / "m.onnx", log=lambda m: None)
    p = info["parity"]
    assert p["n"] == 40 and p["agreement"] >= ex.MIN_AGREEMENT and p["accuracy_torch"] == p["accuracy_export"]
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    logits, features = session.run(None, {"pixels": _pictures(3).numpy()})
    assert logits.shape == (3, 4) and features.shape[0] == 3


# ----------------------------------------------------------------------------- preparing a photo for an export

def test_model_input_prepares_a_photo_as_predict_does_without_torch(onnx_export, csv_run, tmp_path):
    import subprocess
    import sys

    from PIL import Image

    from minivision.data.images import open_image
    from minivision.photo import model_input

    rng = np.random.default_rng(0)
    photo = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, (50, 40), dtype=np.uint8), "L").save(photo)
    x = model_input(str(photo), onnx_export["path"])
    conversion = load_model(csv_run).preprocess.photo
    assert x.dtype == np.uint8 and x.shape == (1, 1, 28, 28)
    np.testing.assert_array_equal(x[0], conversion.convert(open_image(photo, min_side=conversion.decode_side)))
    assert model_input([photo, photo], conversion).shape == (2, 1, 28, 28)
    code = ("import sys; from minivision.photo import model_input; "
            f"x = model_input({str(photo)!r}, {onnx_export['path']!r}); print(x.shape, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "(1, 1, 28, 28) False"
    with pytest.raises(MinivisionError):
        model_input(str(tmp_path / "missing.jpg"), conversion)


def test_exporter_cause_is_the_inner_error_without_colour_codes():
    try:
        try:
            raise ValueError("Unsupported operator: aten::weird\nmore detail")
        except ValueError as inner:
            raise RuntimeError("Failed to export the model with torch.export. \x1b[96mThis is step 1/3\x1b[0m of "
                               "exporting the model to ONNX. Next steps:\n...") from inner
    except RuntimeError as e:
        assert ex.exporter_cause(e) == "Unsupported operator: aten::weird"
    assert ex.exporter_cause(RuntimeError("\x1b[96mcoloured\x1b[0m only")) == "coloured only"
    assert ex.exporter_cause(RuntimeError("")) == "RuntimeError"


def test_a_ctrl_c_the_exporter_wrapped_is_still_an_interruption(monkeypatch, tmp_path):
    def interrupted_export(*args, **kwargs):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as e:
            raise RuntimeError("Failed to export the model with torch.export. This is step 1/3") from e

    monkeypatch.setattr(torch.onnx, "export", interrupted_export)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with pytest.raises(KeyboardInterrupt):
        ex.write_onnx(net, (1, 2, 2), tmp_path / "m.onnx")


def test_an_onnx_export_name_must_end_in_onnx(tmp_path):
    with pytest.raises(MinivisionError, match=r"must end in \.onnx .* e\.g\. .*y\.txt\.onnx"):
        ex.choose_path(None, "onnx", False, tmp_path / "y.txt")
    assert ex.choose_path(None, "onnx", False, tmp_path / "Y.ONNX") == tmp_path / "Y.ONNX"
    assert ex.choose_path(None, "torchscript", False, tmp_path / "m.pt") == tmp_path / "m.pt"


def test_a_sigterm_during_an_export_leaves_nothing_behind(csv_run, tmp_path):
    """``kill PID`` stops an export as Ctrl-C does: exit 130, no file, no temporary file, no folder it made."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "new" / "deeper" / "m.onnx"
    env = {**os.environ, "PYTHONPATH": str(Path(ex.__file__).parents[1])}
    child = subprocess.Popen([sys.executable, "-m", "minivision", "export", str(csv_run), "--out", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120  # a hang guard: the folders appear once the run is loaded
        while not any(out.parent.glob(".m.onnx.*.tmp")) and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert child.poll() is None, child.communicate()  # still exporting when the signal comes
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == 130 and err.strip().splitlines()[-1] == "interrupted", err
    assert list(tmp_path.iterdir()) == []  # neither the file, its temporary, nor the folders made for it


def test_an_export_stopped_while_writing_its_sidecar_leaves_nothing(csv_run, tmp_path, monkeypatch):
    """The file is in place before its sidecar and trust copy: a stop then takes the file away again."""
    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ex, "write_json", stopped)
    with pytest.raises(KeyboardInterrupt):
        ex.export_run(csv_run, out=tmp_path / "new" / "m.onnx", log=lambda m: None)
    assert list(tmp_path.iterdir()) == []
