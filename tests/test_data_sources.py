"""Named datasets: lookup order, verified downloads from a local server, and load_dataset dispatch."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import http.server
import socket
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from minivision.data import DATASETS, load_dataset, sources
from minivision.data.idx import read_idx
from minivision.errors import DataError

IDX_NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def one_line_naming(excinfo: pytest.ExceptionInfo, name: object) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and str(name) in msg, msg
    return msg


def idx_bytes(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 8, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.tobytes()


def synthetic_idx() -> dict[str, bytes]:
    """Decompressed IDX files of a tiny 10-class dataset: 20 train and 10 test 5x5 images."""
    rng = np.random.default_rng(0)
    return {
        "train-images-idx3-ubyte": idx_bytes(rng.integers(0, 256, (20, 5, 5), dtype=np.uint8)),
        "train-labels-idx1-ubyte": idx_bytes((np.arange(20) % 10).astype(np.uint8)),
        "t10k-images-idx3-ubyte": idx_bytes(rng.integers(0, 256, (10, 5, 5), dtype=np.uint8)),
        "t10k-labels-idx1-ubyte": idx_bytes(np.arange(10, dtype=np.uint8)),
    }


def write_gz(folder: Path, raw: dict[str, bytes]) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, data in raw.items():
        written[name + ".gz"] = gzip.compress(data, mtime=0)
        (folder / f"{name}.gz").write_bytes(written[name + ".gz"])
    return written


def with_digests(monkeypatch, name: str, gz: dict[str, bytes], raw: dict[str, bytes], kind: str,
                 mirrors: tuple[str, ...] | None = None) -> None:
    """Point a registered source at the synthetic files (digests of kind md5 or sha256)."""
    files = tuple(sources.RemoteFile(
        n + ".gz",
        md5=hashlib.md5(gz[n + ".gz"]).hexdigest() if kind == "md5" else None,
        sha256=hashlib.sha256(raw[n]).hexdigest() if kind == "sha256" else None) for n in IDX_NAMES)
    src = dataclasses.replace(sources.SOURCES[name], files=files,
                              mirrors=mirrors if mirrors is not None else sources.SOURCES[name].mirrors)
    monkeypatch.setitem(sources.SOURCES, name, src)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/www; yields (folder, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=root)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def no_debian(monkeypatch):
    monkeypatch.setattr(sources, "_debian_dirs", lambda source: [])


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


# ------------------------------------------------------------------------------------------------
# locate
# ------------------------------------------------------------------------------------------------

def test_locate_order(tmp_path, monkeypatch, _isolated_cache):
    raw = synthetic_idx()
    debian, cache = tmp_path / "debian", _isolated_cache / "datasets" / "fashion-mnist"
    env_dir, arg_dir = tmp_path / "env", tmp_path / "arg"
    monkeypatch.setattr(sources, "DEBIAN_FASHION_DIR", debian)
    write_gz(debian, raw)
    assert sources.locate("fashion-mnist") == debian
    write_gz(cache, raw)
    assert sources.locate("fashion-mnist") == cache
    write_gz(env_dir / "fashion-mnist", raw)  # a data folder may hold one sub-folder per dataset
    monkeypatch.setenv("MINIVISION_DATA", str(env_dir))
    assert sources.locate("fashion-mnist") == env_dir / "fashion-mnist"
    arg_dir.mkdir()
    for name, data in raw.items():  # decompressed copies count for sha256-verified sources
        (arg_dir / name).write_bytes(data)
    assert sources.locate("fashion-mnist", arg_dir) == arg_dir


def test_locate_incomplete_folder_is_skipped(tmp_path, monkeypatch, _isolated_cache):
    raw = synthetic_idx()
    monkeypatch.setattr(sources, "DEBIAN_FASHION_DIR", tmp_path / "debian")
    write_gz(tmp_path / "debian", raw)
    write_gz(_isolated_cache / "datasets" / "fashion-mnist", {IDX_NAMES[0]: raw[IDX_NAMES[0]]})
    assert sources.locate("fashion-mnist") == tmp_path / "debian"


def test_user_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("MINIVISION_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert sources.user_cache_dir() == tmp_path / "xdg" / "minivision"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert sources.user_cache_dir() == Path.home() / ".cache" / "minivision"


# ------------------------------------------------------------------------------------------------
# downloads
# ------------------------------------------------------------------------------------------------

def test_download_md5_source_into_cache(server, monkeypatch, no_debian, _isolated_cache):
    www, url = server
    raw = synthetic_idx()
    gz = write_gz(www / "good", raw)
    with_digests(monkeypatch, "mnist", gz, raw, "md5", mirrors=(url + "missing/", url + "good/"))
    folder = sources.locate("mnist")
    assert folder == _isolated_cache / "datasets" / "mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(gz)  # no temporary files left
    ds = sources.load_named("mnist")
    assert ds.classes == [str(i) for i in range(10)]
    assert ds.train.x.shape == (20, 1, 5, 5) and ds.test.y.tolist() == list(range(10))


def test_download_sha256_source_via_env_mirror_into_data_dir(server, monkeypatch, no_debian, tmp_path):
    www, url = server
    raw = synthetic_idx()
    gz = write_gz(www, raw)
    with_digests(monkeypatch, "fashion-mnist", gz, raw, "sha256", mirrors=("http://unused.invalid/",))
    monkeypatch.setenv("MINIVISION_MIRROR_FASHION_MNIST", url)
    target = tmp_path / "mine"
    ds = load_dataset("fashion-mnist", data_dir=target)
    assert sorted(p.name for p in target.iterdir()) == sorted(gz)
    assert ds.classes[0] == "T-shirt/top" and len(ds.train) == 20 and len(ds.test) == 10


def test_download_with_wrong_digest_leaves_nothing(server, monkeypatch, no_debian, _isolated_cache):
    www, url = server
    raw = synthetic_idx()
    gz = write_gz(www, raw)
    with_digests(monkeypatch, "mnist", gz, raw, "md5", mirrors=(url,))
    bad = dataclasses.replace(sources.SOURCES["mnist"].files[0], md5="0" * 32)
    monkeypatch.setitem(sources.SOURCES, "mnist",
                        dataclasses.replace(sources.SOURCES["mnist"],
                                            files=(bad, *sources.SOURCES["mnist"].files[1:])))
    with pytest.raises(DataError) as e:
        sources.locate("mnist")
    msg = one_line_naming(e, "train-images-idx3-ubyte.gz")
    assert "does not match" in msg
    folder = _isolated_cache / "datasets" / "mnist"
    assert list(folder.iterdir()) == []


def test_unreachable_mirror_says_how_to_get_it(monkeypatch, no_debian, _isolated_cache):
    monkeypatch.setenv("MINIVISION_MIRROR_FASHION_MNIST", closed_port_url())
    with pytest.raises(DataError) as e:
        load_dataset("fashion-mnist")
    msg = one_line_naming(e, "train-images-idx3-ubyte.gz")
    assert msg.startswith("fashion-mnist not found and download failed (")
    assert "apt-get install -y dataset-fashion-mnist" in msg and "--data-dir" in msg
    assert str(_isolated_cache / "datasets" / "fashion-mnist") in msg
    assert not any((_isolated_cache / "datasets" / "fashion-mnist").iterdir())


def test_corrupt_local_copy_is_named(monkeypatch, no_debian, _isolated_cache):
    raw = synthetic_idx()
    folder = _isolated_cache / "datasets" / "fashion-mnist"
    gz = write_gz(folder, raw)
    with_digests(monkeypatch, "fashion-mnist", gz, raw, "sha256")
    altered = raw["t10k-labels-idx1-ubyte"][:-1] + b"\7"  # a valid file, just not the published one
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(altered))
    with pytest.raises(DataError) as e:
        sources.load_named("fashion-mnist")
    assert "sha256" in one_line_naming(e, folder / "t10k-labels-idx1-ubyte.gz")


# ------------------------------------------------------------------------------------------------
# load_dataset dispatch
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, hint", [("fashon-mnist", "did you mean fashion-mnist?"),
                                        ("cifar", "did you mean cifar10?"), ("zzzz", "known: ")])
def test_unknown_name(name, hint):
    with pytest.raises(DataError) as e:
        load_dataset(name)
    assert hint in one_line_naming(e, name)


def test_missing_path():
    with pytest.raises(DataError) as e:
        load_dataset("no/such/file.csv")
    assert "no such file" in one_line_naming(e, "no/such/file.csv")


def test_registered_names():
    assert DATASETS == ("fashion-mnist", "mnist", "cifar10")


def csv_rows(n: int, labels) -> str:
    rows = [",".join(["label"] + [f"pixel{i + 1}" for i in range(784)])]
    rows += [f"{labels[i]}," + ",".join(["7"] * 784) for i in range(n)]
    return "\n".join(rows) + "\n"


def test_csv_dispatch_and_class_names(tmp_path):
    fashion = tmp_path / "fashion-mnist_train.csv"
    fashion.write_text(csv_rows(10, list(range(10))))
    test = tmp_path / "fashion-mnist_test.csv"
    test.write_text(csv_rows(3, [0, 1, 2]))
    ds = load_dataset(str(fashion), test_data=str(test))
    assert ds.classes[9] == "Ankle boot" and len(ds.test) == 3 and ds.image_size == (28, 28)
    other = tmp_path / "digits.csv"
    other.write_text(csv_rows(3, [0, 4, 2]))
    ds = load_dataset(str(other))
    assert ds.classes == ["0", "2", "4"] and ds.train.y.tolist() == [0, 2, 1]  # the labels found, not 0..4


def test_idx_folder_dispatch(tmp_path):
    write_gz(tmp_path / "idx", synthetic_idx())
    ds = load_dataset(str(tmp_path / "idx"))
    assert ds.classes == [str(i) for i in range(10)] and len(ds.train) == 20 and len(ds.test) == 10
    (tmp_path / "idx" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as e:
        load_dataset(str(tmp_path / "idx"))
    assert "t10k-labels" in one_line_naming(e, tmp_path / "idx")


def test_cifar_bin_dispatch(tmp_path):
    path = tmp_path / "data_batch_1.bin"
    path.write_bytes((bytes([3]) + bytes(3072)) * 2)
    ds = load_dataset(str(path))
    assert ds.classes[3] == "cat" and ds.train.x.shape == (2, 3, 32, 32)


def test_unsupported_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(DataError) as e:
        load_dataset(str(path))
    assert "unsupported file type" in one_line_naming(e, path)


# ------------------------------------------------------------------------------------------------
# the real Fashion-MNIST from Debian's dataset-fashion-mnist, when installed
# ------------------------------------------------------------------------------------------------

DEBIAN = sources.DEBIAN_FASHION_DIR
needs_debian = pytest.mark.skipif(not (DEBIAN / "t10k-images-idx3-ubyte.gz").is_file(),
                                  reason="dataset-fashion-mnist is not installed")


@needs_debian
def test_real_fashion_mnist_test_files():
    remotes = {f.name: f for f in sources.SOURCES["fashion-mnist"].files}
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        sources.verify(DEBIAN / name, remotes[name])  # the published sha256 of the decompressed bytes
    images = read_idx(DEBIAN / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(DEBIAN / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    assert np.bincount(labels).tolist() == [1000] * 10


@pytest.mark.slow
@needs_debian
def test_real_fashion_mnist_full():
    ds = load_dataset("fashion-mnist")
    assert ds.classes == list(sources.FASHION_CLASSES)
    assert ds.train.x.shape == (60000, 1, 28, 28) and ds.test.x.shape == (10000, 1, 28, 28)
    assert ds.train.y.bincount().tolist() == [6000] * 10 and ds.test.y.bincount().tolist() == [1000] * 10
