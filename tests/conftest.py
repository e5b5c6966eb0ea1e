"""Shared fixtures: an isolated cache per test, and small synthetic datasets written by the tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from minivision.data.dataset import Dataset, Split


def have_fashion_mnist() -> bool:
    """Fashion-MNIST is installed (Debian's dataset-fashion-mnist, the cache or $MINIVISION_DATA)."""
    from minivision.data.sources import locate
    from minivision.errors import DataError

    try:
        locate("fashion-mnist")
        return True
    except DataError:
        return False


needs_fashion_mnist = pytest.mark.skipif(not have_fashion_mnist(), reason="Fashion-MNIST not installed "
                                         "(apt-get install -y dataset-fashion-mnist)")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never read or write the user's real cache from a test."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("MINIVISION_CACHE", str(cache))
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.delenv("MINIVISION_DATA", raising=False)
    return cache


def synthetic_images(n: int, *, classes: int = 4, channels: int = 1, size: int = 28, seed: int = 0):
    """Learnable images: class k is a bright square in cell k of a grid, plus noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    rng.shuffle(y)
    x = rng.integers(0, 60, size=(n, channels, size, size)).astype(np.uint8)
    cell = size // 2
    for i, k in enumerate(y):
        r, c = divmod(int(k) % 4, 2)
        x[i, :, r * cell + 2:(r + 1) * cell - 2, c * cell + 2:(c + 1) * cell - 2] = 200 + (k // 4) * 20
    return x, y.astype(np.int64)


def synthetic_dataset(n_train: int = 240, n_test: int = 80, **kw) -> Dataset:
    x, y = synthetic_images(n_train + n_test, **kw)
    classes = [f"class{k}" for k in range(kw.get("classes", 4))]
    tr = Split(torch.from_numpy(x[:n_train]), torch.from_numpy(y[:n_train]))
    te = Split(torch.from_numpy(x[n_train:]), torch.from_numpy(y[n_train:]))
    return Dataset("synthetic", classes, tr, te)


def write_pixel_csv(path, x: np.ndarray, y: np.ndarray, header: bool = True) -> None:
    """Kaggle layout: label,pixel1..pixelN, one image per row."""
    flat = x.reshape(len(x), -1)
    lines = []
    if header:
        lines.append(",".join(["label"] + [f"pixel{i + 1}" for i in range(flat.shape[1])]))
    for label, row in zip(y, flat, strict=False):
        lines.append(f"{int(label)}," + ",".join(map(str, row.tolist())))
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def synth_csv(tmp_path):
    """(train.csv, test.csv) with 4 learnable classes of 28x28 grayscale images."""
    x, y = synthetic_images(400, classes=4)
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    write_pixel_csv(train, x[:320, 0], y[:320])
    write_pixel_csv(test, x[320:, 0], y[320:])
    return train, test
