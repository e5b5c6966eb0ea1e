"""Where the development machine keeps the benchmarks' data and peer, and the docs/BENCHMARKS.md writer.

Not part of the package: ``minivision bench`` on a user's machine is given its peer with
``--peer-python``/``--peer-script`` and CIFAR-10 with ``--cifar``. The bench scripts use these paths
as their defaults, so the development machine's runs need no flags. The layout around the checkout:

    ../shared/peers/keras_peer.py         the TensorFlow peer (Keras tutorial models)
    ../shared/datasets/cifar10-jpg.tar.gz  CIFAR-10 as a JPEG folder, archived (+ .sha256)
    ../.venv-peer/                         the peer's virtual environment (tensorflow-cpu)
"""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the checkout
SHARED = ROOT.parent / "shared"
PEER_SCRIPT = SHARED / "peers" / "keras_peer.py"
PEER_VENV = ROOT.parent / ".venv-peer"
PEER_PYTHON = PEER_VENV / "bin" / "python"
CIFAR_UNPACKED = Path("/tmp/cifar10-jpg/cifar10-jpg")  # where the lead unpacks it by hand
CIFAR_ARCHIVES = SHARED / "datasets"
CIFAR_PATTERNS = ("cifar10*.tar.gz", "cifar10*.tgz", "cifar10*.tar", "cifar10*.zip")

SPEED_HEADING = "## Speed and accuracy"  # bench/speed.py's section; photos and load go above it

# How the recorded commands show these paths (relative to the checkout, as a reader would type them).
SHOWN = {str(SHARED): "../shared", str(PEER_VENV): "../.venv-peer"}


def peer_python() -> str:
    """$MINIVISION_PEER_PYTHON, else the development machine's peer venv."""
    return os.environ.get("MINIVISION_PEER_PYTHON") or str(PEER_PYTHON)


def cifar_source() -> str | None:
    """CIFAR-10 for ``--cifar``: $MINIVISION_CIFAR_JPG or the folder unpacked by hand, else the shared
    archive (``minivision.benchmark.cifar_folder`` unpacks it once into the cache); None if neither."""
    for folder in filter(None, (os.environ.get("MINIVISION_CIFAR_JPG"), str(CIFAR_UNPACKED))):
        if (Path(folder) / "train").is_dir() and (Path(folder) / "test").is_dir():
            return folder
    if not CIFAR_ARCHIVES.is_dir():
        return None
    archives = sorted(p for pattern in CIFAR_PATTERNS for p in CIFAR_ARCHIVES.glob(pattern))
    return str(archives[0]) if archives else None


def replace_section(text: str, begin: str, end: str, body: str, heading: str, before: str | None = None) -> str:
    """``text`` (docs/BENCHMARKS.md) with the block between the ``begin``/``end`` markers replaced by
    ``body``; without the markers, ``heading`` and the block are inserted above the line ``before`` (or
    appended). Every bench script writes its section of the doc through this."""
    block = f"{begin}\n{body}\n{end}"
    if begin in text and end in text:
        return re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, count=1, flags=re.S)
    line = re.compile(f"^{re.escape(before)}$", re.M) if before else None
    if line and line.search(text):  # the whole line, so "## Speed" does not match "## Speed and accuracy"
        return line.sub(lambda m: f"{heading}\n\n{block}\n\n{m.group(0)}", text, count=1)
    return text.rstrip("\n") + f"\n\n{heading}\n\n{block}\n"
