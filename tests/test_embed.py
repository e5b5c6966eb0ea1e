"""Embeddings: penultimate features, projections, the scatter, and TensorBoard's projector reading our files."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from minivision.config import TrainConfig
from minivision.embed import (
    choose_subset,
    embed_run,
    penultimate_features,
    plot_embedding,
    plot_embeddings,
    project,
    raw_pixels,
    write_projector,
)
from minivision.errors import MinivisionError
from minivision.runfiles import load_model
from minivision.train import fit

from .conftest import synthetic_dataset, synthetic_images, write_pixel_csv

CLASSES = [f"class{k}" for k in range(4)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny trained run per architecture family, trained once for the module (~3 s).

    The mvnet-t run reads its data from CSV files, so ``embed_run`` can load them back from model.json.
    """
    root = tmp_path_factory.mktemp("embed-runs")
    x, y = synthetic_images(320, classes=4)
    train_csv, test_csv = root / "train.csv", root / "test.csv"
    write_pixel_csv(train_csv, x[:240, 0], y[:240])
    write_pixel_csv(test_csv, x[240:, 0], y[240:])
    out = {}
    quiet = {"log": lambda m: None, "progress": False}
    out["mvnet-t"] = fit(TrainConfig(model="mvnet-t", epochs=1, batch_size=32, out=str(root), data=str(train_csv),
                                     test_data=str(test_csv), name="mvnet-t"), **quiet).run_dir
    for name in ("mlp", "softmax"):
        cfg = TrainConfig(model=name, epochs=1, batch_size=32, val_split=0.25, out=str(root), name=name)
        out[name] = fit(cfg, dataset=synthetic_dataset(), **quiet).run_dir
    return out


@pytest.fixture(scope="module")
def images():
    x, y = synthetic_images(60, classes=4, seed=1)
    return torch.from_numpy(x), torch.from_numpy(y)


# ----------------------------------------------------------------------------- features

@pytest.mark.parametrize("name, dim", [("mvnet-t", 64), ("mlp", 100), ("softmax", 784)])
def test_penultimate_features_are_the_models_forward_features(runs, images, name, dim):
    lm = load_model(runs[name])
    x = images[0]
    feats = penultimate_features(lm, x, device="cpu", batch_size=16)  # several batches
    assert feats.shape == (len(x), dim) == (len(x), lm.model.num_features) and feats.dtype == np.float32
    with torch.inference_mode():  # the head applied to the features gives the model's own logits
        logits = lm.model(lm.preprocess(x))
        again = lm.model.forward_head(torch.from_numpy(feats))
    torch.testing.assert_close(again, logits, rtol=1e-4, atol=1e-4)
    if name == "softmax":  # the normalised pixels themselves
        np.testing.assert_allclose(feats, lm.preprocess(x).flatten(1).numpy(), atol=1e-6)
    assert penultimate_features(lm, x[:0]).shape == (0, dim)
    assert not lm.model.training  # left in the mode it was loaded in


def test_features_leave_a_training_model_in_training_mode(runs, images):
    lm = load_model(runs["mlp"])
    lm.model.train()
    feats = penultimate_features(lm, images[0][:8], device="cpu")
    assert lm.model.training
    np.testing.assert_array_equal(feats, penultimate_features(lm, images[0][:8], device="cpu"))  # eval: deterministic


def test_a_model_without_forward_features_is_refused(runs, images):
    lm = load_model(runs["mlp"])
    lm.model = torch.nn.Sequential(torch.nn.Flatten())
    with pytest.raises(MinivisionError, match="no forward_features"):
        penultimate_features(lm, images[0])


def test_raw_pixels_are_unit_scaled_rows(images):
    px = raw_pixels(images[0])
    assert px.shape == (60, 784) and px.dtype == np.float32
    assert np.allclose(px, images[0].reshape(60, -1).numpy() / 255, rtol=0, atol=1e-7)  # every pixel, 0-1


# ----------------------------------------------------------------------------- projections

def test_pca_shape_determinism_and_variance_order(images):
    px = raw_pixels(images[0])
    a, b = project(px, "pca"), project(px, "PCA", seed=7)
    assert a.shape == (60, 2) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)  # exact: no randomness, signs fixed
    assert a[:, 0].var() >= a[:, 1].var()
    np.testing.assert_allclose(a.mean(0), 0, atol=1e-4)
    assert project(np.ones((3, 1)), "pca").shape == (3, 2)  # fewer dimensions than 2: padded


def test_tsne_is_seeded():
    x, y = synthetic_images(100, classes=4, seed=2)
    px = raw_pixels(torch.from_numpy(x))
    a = project(px, "tsne", seed=3)
    assert a.shape == (100, 2) and np.isfinite(a).all()
    np.testing.assert_allclose(a, project(px, "t-SNE", seed=3), atol=1e-4)
    centres = np.stack([a[y == k].mean(0) for k in range(4)])  # four clean classes: four clusters
    spread = max(np.linalg.norm(a[y == k] - centres[k], axis=1).mean() for k in range(4))
    gaps = min(np.linalg.norm(centres[i] - centres[j]) for i in range(4) for j in range(i))
    assert gaps > 2 * spread


@pytest.mark.slow  # ~12 s on the 2-core VM, nearly all of it numba compiling umap-learn's code
def test_umap_runs_and_is_seeded():
    x, _ = synthetic_images(100, classes=4, seed=2)
    px = raw_pixels(torch.from_numpy(x))
    a = project(px, "umap", seed=1)
    assert a.shape == (100, 2) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, project(px, "umap", seed=1))


@pytest.mark.parametrize("method, hint", [("tsen", "did you mean tsne?"), ("pac", "did you mean pca?"),
                                          ("umpa", "did you mean umap?")])
def test_unknown_method_suggests_the_closest(method, hint):
    with pytest.raises(MinivisionError, match=hint.replace("?", r"\?")):
        project(np.zeros((10, 3)), method)


@pytest.mark.parametrize("method, n", [("pca", 2), ("tsne", 4), ("umap", 4)])
def test_too_few_points_are_refused(method, n):
    with pytest.raises(MinivisionError, match="at least"):
        project(np.random.default_rng(0).normal(size=(n, 5)), method)


@pytest.mark.parametrize("module, method, package",
                         [("sklearn", "tsne", "scikit-learn"), ("umap", "umap", "umap-learn")])
def test_a_missing_optional_library_says_what_to_install(monkeypatch, module, method, package):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    if module == "sklearn":
        monkeypatch.setitem(sys.modules, "sklearn.manifold", None)
    with pytest.raises(MinivisionError, match=f"pip install {package}"):
        project(np.random.default_rng(0).normal(size=(20, 5)), method)


def test_nan_features_are_refused():
    x = np.zeros((10, 3))
    x[2, 1] = np.nan
    with pytest.raises(MinivisionError, match="NaN"):
        project(x, "pca")


# ----------------------------------------------------------------------------- subsets

def test_stratified_subset_covers_every_class_and_is_seeded():
    y = torch.tensor([0] * 500 + [1] * 30 + [2] * 2 + [3] * 1 + [4] * 467)
    idx = choose_subset(y, 50, seed=1)
    counts = torch.bincount(y[idx], minlength=5).tolist()
    assert len(idx) == 50 == sum(counts) and min(counts) >= 1
    assert counts[0] == pytest.approx(25, abs=1) and counts[4] == pytest.approx(23, abs=1)
    assert len(set(idx.tolist())) == 50 and idx.tolist() == sorted(idx.tolist())
    assert torch.equal(idx, choose_subset(y, 50, seed=1))
    assert not torch.equal(idx, choose_subset(y, 50, seed=2))
    assert torch.equal(choose_subset(y, 5000), torch.arange(1000))
    with pytest.raises(MinivisionError):
        choose_subset(y, 0)


# ----------------------------------------------------------------------------- plots

def test_plot_embedding_with_and_without_ax(tmp_path):
    from matplotlib.figure import Figure

    from minivision.report.style import save_figure

    rng = np.random.default_rng(0)
    pts, labels = rng.normal(size=(200, 2)), rng.integers(0, 4, 200)
    fig = plot_embedding(pts, labels, CLASSES, title="t")
    ax = fig.axes[0]
    assert isinstance(fig, Figure) and ax.get_title() == "t" and not ax.get_xticks().size
    assert [t.get_text() for t in ax.get_legend().get_texts()] == CLASSES
    own = Figure()
    target = own.add_subplot(1, 2, 2)
    assert plot_embedding(pts, labels, CLASSES, ax=target) is own
    assert len(target.collections) == 1
    both = plot_embeddings([("raw pixels (PCA)", pts), ("model features (PCA)", pts * 2)], labels, CLASSES,
                           title="x")
    assert [a.get_title() for a in both.axes] == ["raw pixels (PCA)", "model features (PCA)"]
    assert len(both.legends) == 1 and all(a.get_legend() is None for a in both.axes)
    assert Image.open(save_figure(both, tmp_path / "e.png")).size[0] > 800


# ----------------------------------------------------------------------------- projector files

def _write_small_projector(folder: Path, n: int = 50):
    x, y = synthetic_images(n, classes=4, seed=3)
    xt = torch.from_numpy(x)
    feats = np.random.default_rng(0).normal(size=(n, 8)).astype(np.float32)
    paths = write_projector(folder, {"features": feats, "pixels": raw_pixels(xt)}, y, CLASSES, xt)
    return paths, feats, y


def test_projector_files(tmp_path):
    from google.protobuf import text_format
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

    folder = tmp_path / "proj" / "sub"  # created on demand
    paths, feats, y = _write_small_projector(folder, 50)
    assert sorted(p.name for p in paths) == ["features.tsv", "metadata.tsv", "pixels.tsv",
                                             "projector_config.pbtxt", "sprite.png"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in paths)  # no temporary files left
    meta = (folder / "metadata.tsv").read_text().splitlines()
    assert len(meta) == 51 and meta[0] == "class\tclass_index\tindex"
    assert meta[1:4] == [f"{CLASSES[y[i]]}\t{y[i]}\t{i}" for i in range(3)]
    rows = (folder / "features.tsv").read_text().splitlines()
    assert len(rows) == 50 and all(len(r.split("\t")) == 8 for r in rows)
    np.testing.assert_allclose(np.loadtxt(folder / "features.tsv", delimiter="\t"), feats, rtol=1e-5)
    assert len((folder / "pixels.tsv").read_text().splitlines()[0].split("\t")) == 784
    sprite = Image.open(folder / "sprite.png")
    side = math.ceil(math.sqrt(50)) * 28
    assert sprite.size == (side, side) and sprite.mode == "L"
    tiles = np.asarray(sprite)
    x, _ = synthetic_images(50, classes=4, seed=3)
    np.testing.assert_array_equal(tiles[28:56, 2 * 28:3 * 28], x[8 + 2, 0])  # row-major: image 10 at row 1, col 2
    cfg = text_format.Parse((folder / "projector_config.pbtxt").read_text(), ProjectorConfig())
    assert [e.tensor_name for e in cfg.embeddings] == ["features", "pixels"]
    first = cfg.embeddings[0]
    assert (first.tensor_path, first.metadata_path, list(first.tensor_shape)) == ("features.tsv", "metadata.tsv",
                                                                                  [50, 8])
    assert first.sprite.image_path == "sprite.png" and list(first.sprite.single_image_dim) == [28, 28]


def test_projector_rgb_sprite_and_size_limit(tmp_path):
    x = torch.randint(0, 255, (5, 3, 32, 16), dtype=torch.uint8)
    write_projector(tmp_path, {"v": np.zeros((5, 2))}, [0, 1, 0, 1, 0], ["a", "b\tc"], x)
    sprite = Image.open(tmp_path / "sprite.png")
    assert sprite.mode == "RGB" and sprite.size == (3 * 16, 3 * 32)  # single_image_dim is width, height
    np.testing.assert_array_equal(np.asarray(sprite)[32:64, 0:16], x[3].permute(1, 2, 0).numpy())
    assert "single_image_dim: 16\n    single_image_dim: 32" in (tmp_path / "projector_config.pbtxt").read_text()
    assert (tmp_path / "metadata.tsv").read_text().splitlines()[2] == "b c\t1\t1"  # no tab inside a cell
    big = torch.zeros((85265, 1, 1, 28), dtype=torch.uint8)  # 292 tiles of 28 px fit in 8192: 85,264 images
    with pytest.raises(MinivisionError, match="at most 85,264"):
        write_projector(tmp_path / "big", {"v": np.zeros((85265, 1))}, np.zeros(85265), ["a"], big)
    assert not (tmp_path / "big").exists()
    with pytest.raises(MinivisionError, match="rows"):
        write_projector(tmp_path, {"v": np.zeros((4, 2))}, [0] * 5, ["a"], x)


# ----------------------------------------------------------------------------- the command

def test_embed_run_writes_the_plot_and_projector(runs, tmp_path):
    lines = []
    r = embed_run(runs["mvnet-t"], n=40, projector=tmp_path / "proj", seed=1, log=lines.append)
    assert r["points"]["features"].shape == (40, 2) and r["points"]["pixels"].shape == (40, 2)
    assert r["features"].shape == (40, 64) and len(r["labels"]) == 40
    assert r["classes"] == ["0", "1", "2", "3"]  # a CSV file names its classes by label
    assert set(r["labels"].tolist()) == {0, 1, 2, 3}
    assert r["png"] == runs["mvnet-t"] / "embedding_pca_test.png" and Image.open(r["png"]).size[0] > 800
    assert r["projector"] == tmp_path / "proj"
    assert f"wrote {r['png']}" in lines and f"wrote {tmp_path / 'proj' / 'sprite.png'}" in lines
    assert len((tmp_path / "proj" / "metadata.tsv").read_text().splitlines()) == 41
    # the same seed picks the same images; another output file on request
    again = embed_run(runs["mvnet-t"], n=40, seed=1, out=tmp_path / "e.png", log=lambda m: None)
    np.testing.assert_array_equal(again["features"], r["features"])
    assert again["png"] == tmp_path / "e.png" and again["projector"] is None


def test_embed_run_checks_its_arguments_before_working(runs):
    with pytest.raises(MinivisionError, match="did you mean tsne"):
        embed_run(runs["mvnet-t"], method="tnse", log=lambda m: None)
    with pytest.raises(MinivisionError, match="did you mean test"):
        embed_run(runs["mvnet-t"], split="tset", log=lambda m: None)
    with pytest.raises(MinivisionError, match="at least 5"):
        embed_run(runs["mvnet-t"], method="tsne", n=4, log=lambda m: None)


# ----------------------------------------------------------------------------- real TensorBoard

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_tensorboard_projector_lists_our_embeddings(tmp_path):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        pytest.fail("tensorboard is a dependency of minivision's projector output: pip install tensorboard")
    folder = tmp_path / "projector"
    _write_small_projector(folder, 50)
    port = _free_port()
    log = open(tmp_path / "tensorboard.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(folder),
                             "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}/data/plugin/projector"
    try:
        deadline = time.monotonic() + 60
        runs = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                status, body = _get(f"{base}/runs")
                if status == 200:
                    runs = json.loads(body)
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.3)
        if runs is None:
            log.seek(0)
            pytest.fail(f"TensorBoard did not answer within 60 s (exit code {proc.poll()}):\n{log.read()[-3000:]}")
        assert runs == ["."]  # no event files: the logdir itself is the run
        enabled = False  # the Projector tab: the plugin decides in a background thread
        while not enabled and time.monotonic() < deadline:
            enabled = json.loads(_get(f"http://127.0.0.1:{port}/data/plugins_listing")[1])["projector"]["enabled"]
            time.sleep(0.2)
        assert enabled

        status, body = _get(f"{base}/info?run=.")
        assert status == 200, body
        info = json.loads(body)
        shapes = {e["tensorName"]: [int(v) for v in e["tensorShape"]] for e in info["embeddings"]}
        assert shapes == {"features": [50, 8], "pixels": [50, 784]}
        assert info["embeddings"][0]["sprite"]["singleImageDim"] == [28, 28]

        status, body = _get(f"{base}/tensor?run=.&name=features")
        assert status == 200 and len(body) == 50 * 8 * 4  # float32, as the page reads it

        status, body = _get(f"{base}/metadata?run=.&name=features")
        lines = body.decode().splitlines()
        assert status == 200 and lines[0].split("\t")[0] == "class" and len(lines) == 51
        assert {line.split("\t")[0] for line in lines[1:]} == set(CLASSES)

        status, body = _get(f"{base}/sprite_image?run=.&name={urllib.parse.quote('pixels')}")
        assert status == 200 and body.startswith(b"\x89PNG")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
