"""Shared fixtures: a sandboxed HOME, cache and working folder, the real-data guard, and small
synthetic datasets written by the tests."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from minivision.data.dataset import Dataset, Split

# ----------------------------------------------------------------------------- the sandbox
#
# Every test, fixture and child process runs with a temporary HOME, cache and working folder, set
# here before any test module is imported (pytest_configure runs before collection), so module- and
# session-scoped fixtures are sandboxed too, and a dataset lookup at collection time sees the same
# environment as the tests. Nothing is downloaded at collection time: the data guards only look.

_SANDBOX: Path | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _SANDBOX
    _SANDBOX = Path(tempfile.mkdtemp(prefix="minivision-tests-"))
    for var, sub in (("HOME", "home"), ("XDG_CACHE_HOME", "xdg-cache"), ("XDG_CONFIG_HOME", "xdg-config"),
                     ("XDG_DATA_HOME", "xdg-data"), ("MINIVISION_CACHE", "cache"), ("MPLCONFIGDIR", "mpl"),
                     ("TMPDIR", "tmp")):
        (_SANDBOX / sub).mkdir()
        os.environ[var] = str(_SANDBOX / sub)
    tempfile.tempdir = None  # re-read TMPDIR
    os.environ.pop("MINIVISION_DATA", None)
    # small datasets train from scratch unless a test asks for the automatic fine-tune (tests/test_finetune.py)
    os.environ["MINIVISION_PRETRAINED"] = "none"
    (_SANDBOX / "cwd").mkdir()
    config.addinivalue_line("markers", "needs_fashion_mnist: uses the real Fashion-MNIST (skipped without it; "
                                       "a failure where CI is set)")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove the sandbox after a green run; keep it (and say where) for a look at what failed."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter is not None else 0
    if os.environ.get("CI") and skipped and session.exitstatus == 0:
        session.exitstatus = 1  # a skip outside a test (at collection) fails a CI run too
        exitstatus = 1
    if _SANDBOX is None:
        return
    if exitstatus == 0:
        shutil.rmtree(_SANDBOX, ignore_errors=True)
    else:
        print(f"\ntest sandbox kept for inspection: {_SANDBOX}")


@pytest.fixture(scope="session", autouse=True)
def _sandbox_cwd():
    """Run every test in an empty folder of the sandbox: a default ``runs/`` or ``runs/jobs`` lands there."""
    old = os.getcwd()
    os.chdir(_SANDBOX / "cwd")
    yield
    os.chdir(old)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """A fresh cache per test: nothing one test downloads or unpacks is seen by another."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("MINIVISION_CACHE", str(cache))
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.delenv("MINIVISION_DATA", raising=False)
    return cache


# ----------------------------------------------------------------------------- real data and CI

MISSING_FASHION = "Fashion-MNIST not installed (./install.sh installs Debian's dataset-fashion-mnist)"


def have_fashion_mnist() -> bool:
    """A complete local copy of Fashion-MNIST exists (Debian's package, or $MINIVISION_DATA); never downloads."""
    from minivision.data.sources import find_local

    return find_local("fashion-mnist") is not None


def require_fashion_mnist() -> None:
    """Skip the calling test without Fashion-MNIST (a failure where CI is set: see pytest_runtest_makereport)."""
    if not have_fashion_mnist():
        pytest.skip(MISSING_FASHION)


needs_fashion_mnist = pytest.mark.needs_fashion_mnist  # checked at setup, in the sandbox's environment


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("needs_fashion_mnist") is not None:
        require_fashion_mnist()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    """Where ``CI`` is set, a skipped test is a failed one: a green CI run ran every test it lists."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped where CI is set (every test must run in CI): {reason}"


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    skipped = len(terminalreporter.stats.get("skipped", []))
    terminalreporter.write_line(f"skipped tests: {skipped}")


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


@pytest.fixture(scope="session")
def small_fashion_run(tmp_path_factory) -> Path:
    """A small real Fashion-MNIST run shared by the service's and the page's real-data tests: cnn1, one
    epoch on 3,000 training images (seeded pick), 500 validation and 500 test images (its report,
    examples and calibration made as any training makes them). Needs Fashion-MNIST: use it in tests
    marked ``needs_fashion_mnist``."""
    import dataclasses

    import minivision as mv

    ds = mv.load_dataset("fashion-mnist")
    g = torch.Generator().manual_seed(0)
    small = dataclasses.replace(ds, train=ds.train.subset(torch.randperm(len(ds.train), generator=g)[:3000]),
                                val=ds.val.subset(torch.arange(500)), test=ds.test.subset(torch.arange(500)))
    out = tmp_path_factory.mktemp("small-fashion")
    clf = mv.Classifier(model="cnn1", epochs=1, batch_size=64, out=str(out)).fit(small, progress=False)
    return Path(clf.run_dir_)


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (Debian's, through Playwright) for a module's browser tests; skips without it
    (fails where ``CI`` is set)."""
    from playwright.sync_api import sync_playwright

    from .test_report_browser import require_browser

    path = require_browser()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox"], headless=True)
        yield b
        b.close()

