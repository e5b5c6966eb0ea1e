"""The speed and accuracy benchmark of ``minivision bench``: each row runs the real command line in a
child process and measures it.

Why a child process per run: the figures a user cares about are for the whole command (Python
start-up, imports, data loading, training, the test pass, the file writes), and a peak-memory
figure is only honest for a process that did nothing else. Each run is timed with
``time.perf_counter`` around ``Popen`` ... ``os.wait4``, and its peak RSS is the ``ru_maxrss`` that
``wait4`` reports for that child (KiB on Linux). Accuracy and per-epoch seconds are read back from
what the command printed (``--json``) and from its run folder (results.csv, model.json), so no
figure is computed by a code path the user does not run.

Speed is compared with a peer (the Keras tutorial's ``cnn2`` in TensorFlow: a script given with
``--peer-script``, run by the interpreter given with ``--peer-python``) measured in the same session
on the same machine, as a ratio; when the peer is not given or not installed, the peer's side is
skipped with a note saying how to install it, never failed. The CIFAR-10 rows need ``--cifar``: a
JPEG folder, or an archive of one, unpacked once (checksum, no path escapes) into the cache. A row
that misses its target says by how much.

Used by ``minivision bench`` (which prints the rows on the user's machine) and by the development
scripts in the repository's ``bench/`` folder, which know where the development machine keeps its
data and peer and record the rows in docs/BENCHMARKS.md. Tests replace ``run_child``.
"""

from __future__ import annotations

import datetime as dt
import difflib
import hashlib
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import MinivisionError

# ----------------------------------------------------------------------------- Setup

# How to get the peer, in the note of a [cnn2] row run without it (VENV: any folder the user picks).
PEER_INSTALL = ("`python3 -m venv VENV && VENV/bin/pip install tensorflow-cpu==2.21.0`, then pass "
                "`--peer-python VENV/bin/python --peer-script keras_peer.py` (a Keras script that trains the "
                "tutorial's cnn2 and prints one JSON line per epoch)")
PEER_PYTHON_ENV = "MINIVISION_PEER_PYTHON"  # read when --peer-python is not given
CIFAR_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")

# Flags of the [cifar-softmax] row: the softmax model's registered recipe is the tutorial's (plain
# gradient descent on x/255, 34.6% here); with standardised pixels, SGD + momentum, one-cycle and
# random flips the same linear model reaches 40.3% (10 epochs; 39.2% without flips, Adam 40.0%).
CIFAR_SOFTMAX_FLAGS: list[str] = ["--optimizer", "sgd", "--lr", "0.01", "--momentum", "0.9", "--normalize",
                                  "standard", "--batch-size", "128", "--epochs", "10", "--schedule", "onecycle",
                                  "--weight-decay", "5e-4", "--augment", "flip"]

CNN2_EPOCHS = 2  # both minivision and the peer; the rule for which epochs count is in steady_seconds
EVALUATE_REPEATS = 3
MB = 1e6  # memory is reported in MB = 10^6 bytes; the 1.5 GB target is 1.5e9 bytes

# Rows in the order they run (later rows reuse earlier runs: evaluate and memory use [default]'s
# trainings, memory the peer's RSS from [cnn2]).
ROW_IDS: tuple[str, ...] = ("default", "evaluate", "budget3m", "cnn2", "memory", "cifar-softmax",
                            "budget30m", "cifar15m", "cifar30m")
LONG_ROWS = frozenset({"budget30m", "cifar15m", "cifar30m"})
DEFAULT_ROWS: tuple[str, ...] = tuple(r for r in ROW_IDS if r not in LONG_ROWS)


class RowFailed(Exception):
    """A run of a row did not finish or printed something unreadable; the row is reported as failed."""


@dataclass
class ChildResult:
    """One finished child process: what it printed, its wall time and its peak resident memory."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    peak_rss_mb: float | None  # None where the OS has no wait4 (Windows)


def _pump(stream: Any, sink: list[str], echo: bool) -> None:
    for line in stream:
        sink.append(line)
        if echo and not line.startswith("{"):
            sys.stderr.write("    | " + line)
            sys.stderr.flush()
    stream.close()


def _as_users_run(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` without ``PYTHONDONTWRITEBYTECODE``: Python's default caches compiled modules, so a
    user's second command imports from the cache. Inherited from a developer's shell, the variable made
    every child compile minivision's modules again (about 0.6 s of each ``evaluate``)."""
    return {k: v for k, v in environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def run_child(argv: list[str], env: dict[str, str] | None = None, *, echo: bool = False,
              timeout: float | None = None) -> ChildResult:
    """Run ``argv`` to completion; wall time around Popen..wait4 and the child's own ru_maxrss."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
                            errors="replace", bufsize=1)
    out: list[str] = []
    err: list[str] = []
    pumps = [threading.Thread(target=_pump, args=(proc.stdout, out, echo), daemon=True),
             threading.Thread(target=_pump, args=(proc.stderr, err, echo), daemon=True)]
    for p in pumps:
        p.start()
    killer = threading.Timer(timeout, proc.kill) if timeout else None
    if killer:
        killer.start()
    rss: float | None = None
    try:
        if hasattr(os, "wait4"):
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - t0
            proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
            rss = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024) / MB
        else:
            proc.wait()
            wall = time.perf_counter() - t0
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
        raise
    finally:
        if killer:
            killer.cancel()
    for p in pumps:
        p.join()
    return ChildResult(list(argv), proc.returncode, "".join(out), "".join(err), wall, rss)


# ----------------------------------------------------------------------------- Arithmetic and wording

def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value: no spread to report)."""
    if not values:
        raise ValueError("no values")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def steady_seconds(seconds: list[float]) -> tuple[float, str]:
    """Seconds per epoch without the warm-up epoch, and the rule used (the same for both sides)."""
    if not seconds:
        raise ValueError("no epochs")
    if len(seconds) >= 3:
        return statistics.median(seconds[1:]), f"median of epochs 2-{len(seconds)} (epoch 1 is warm-up)"
    if len(seconds) == 2:
        return seconds[1], "epoch 2 of 2 (epoch 1 includes graph building / warm-up)"
    return seconds[0], "epoch 1 of 1 (includes warm-up)"


def _fmt(value: float, unit: str) -> str:
    if unit == "%":
        return f"{value:.2f}%"
    if unit == "s":
        return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"
    if unit == "MB":
        return f"{value:,.0f} MB"
    return f"{value:.2f}x"


def missed_by(label: str, value: float, target: float, *, higher_is_better: bool, unit: str) -> str | None:
    """None when ``value`` meets ``target``, else e.g. 'accuracy 91.59% is 0.41 points below the 92.00% target'.

    Percent values are in percent (92.0, not 0.92)."""
    if (value >= target) if higher_is_better else (value <= target):
        return None
    gap = abs(value - target)
    gap_text = {"%": f"{gap:.2f} points", "MB": f"{gap:,.0f} MB", "x": f"{gap:.2f}"}.get(unit) or _fmt(gap, unit)
    side = "below" if higher_is_better else "over"
    return f"{label} {_fmt(value, unit)} is {gap_text} {side} the {_fmt(target, unit)} target"


def pm(mean: float, std: float | None, unit: str) -> str:
    """'92.41 ± 0.08%', '28.7 ± 0.3 s'; a single value without the ±."""
    if std is None:
        return _fmt(mean, unit)
    if unit == "%":
        return f"{mean:.2f} ± {std:.2f}%"
    if unit == "s":
        return f"{mean:.1f} ± {std:.1f} s"
    if unit == "MB":
        return f"{mean:,.0f} ± {std:,.0f} MB"
    return f"{mean:.2f} ± {std:.2f}x"


# ----------------------------------------------------------------------------- Selection

def select_rows(text: str | None) -> list[str]:
    """Row ids from ``--rows``: none -> every row except the long ones; ``all``; or a comma list."""
    if text is None or not text.strip():
        return list(DEFAULT_ROWS)
    wanted = [w.strip() for w in text.split(",") if w.strip()]
    if wanted == ["all"]:
        return list(ROW_IDS)
    for w in wanted:
        if w not in ROW_IDS:
            close = difflib.get_close_matches(w, [*ROW_IDS, "all"], n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise MinivisionError(f"--rows: unknown row {w!r}{hint} (rows: {', '.join(ROW_IDS)}, or all)")
    return [r for r in ROW_IDS if r in wanted]


def parse_seeds(text: str | int) -> list[int]:
    """``--seeds 3`` -> seeds 0, 1, 2; ``--seeds 4,7`` -> seeds 4 and 7."""
    s = str(text).strip()
    try:
        if "," in s:
            seeds = [int(v) for v in s.split(",") if v.strip()]
        else:
            seeds = list(range(int(s)))
    except ValueError:
        raise MinivisionError(f"--seeds: expected a count like 3 or a list like 0,1,2, got {text!r}") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise MinivisionError(f"--seeds: expected at least one distinct seed >= 0, got {text!r}")
    return seeds


# ----------------------------------------------------------------------------- Machine

def conv_gflops(seconds: float = 1.0, precision: str = "fp32") -> float:
    """The machine's fp32 convolution speed in GFLOP/s (1 GFLOP = 10^9 multiplies and adds counted as 2):
    a 3 x 3 convolution, 64 to 64 channels, stride 1, padded, on a batch of 32 pictures of 32 x 32 in
    channels-last layout, forward and backward (the two backward products cost as much as the forward
    one each: 3x its 2 * 64 * 64 * 9 * 32 * 32 * 32 = 2.4 GFLOP), repeated for about ``seconds`` after
    one untimed pass, with torch's threads as set. ``precision="bf16"``: the same under bf16 autocast, as
    ``--precision bf16`` trains (``bench/conv_precision.py`` sets the two side by side); on a CPU without
    AVX-512 BF16 or AMX bf16 is emulated, and slow. Raises ``ValueError`` for another precision.

    Why: two CPUs with the same flags and model name train at speeds that differ by up to 2.5x (AMD
    EPYC 2-core VMs timed mvnet-s at 30 s per Fashion-MNIST epoch on one day and 82 s on another), so a
    row's figures are comparable only beside the speed of the machine that made them."""
    import torch

    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, not {precision!r}")
    conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
    x = torch.randn(32, 64, 32, 32).contiguous(memory_format=torch.channels_last).requires_grad_()
    flop = 3 * 2 * 64 * 64 * 9 * 32 * 32 * 32
    n, start = -1, 0.0
    while True:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            y = conv(x)
        y.float().sum().backward()
        now = time.perf_counter()
        if n < 0:
            n, start = 0, now
            continue
        n += 1
        if now - start >= seconds:
            return flop * n / (now - start) / 1e9


def machine_info(speed: bool = False) -> dict[str, Any]:
    """CPU model, cores, the CPU flags that decide the fast paths, torch version, date (UTC); with
    ``speed``, also ``conv_gflops``: the measured fp32 convolution speed (``conv_gflops``: a second, plus
    a first pass that took up to 4 s on a slow 2-core machine)."""
    import torch

    model: str | None = None
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model is None:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    model = model or platform.processor() or "unknown CPU"
    wanted = {f: f in flags for f in ("avx2", "avx512f", "avx512_bf16")}
    wanted["amx"] = any(f.startswith("amx") for f in flags)
    info = {"cpu": model, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "flags": wanted, "torch": torch.__version__, "python": platform.python_version(),
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    if speed:
        info["conv_gflops"] = round(conv_gflops(), 1)
    return info


def describe_machine(m: dict[str, Any]) -> str:
    flags = m.get("flags", {})
    have = [f for f, v in flags.items() if v]
    lacks = [f for f, v in flags.items() if not v]
    threads = m.get("torch_threads", "?")
    text = (f"{m.get('cpu', '?')}, {m.get('cpu_count', '?')} CPUs (torch uses {threads} "
            f"thread{'' if threads == 1 else 's'}), flags: {', '.join(have) or 'none of these'}"
            + (f" (no {', '.join(lacks)})" if lacks else "")
            + f"; torch {m.get('torch', '?')}, Python {m.get('python', '?')}")
    text += f"; GPU {m['gpu']}" if m.get("gpu") else "; no GPU"
    if m.get("conv_gflops"):
        text += f"; fp32 3 x 3 convolutions at {m['conv_gflops']:.0f} GFLOP/s (`benchmark.conv_gflops`)"
    return text


# ----------------------------------------------------------------------------- Reading runs

def last_json(stdout: str) -> dict[str, Any]:
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    if not lines:
        raise RowFailed("printed nothing on stdout")
    try:
        obj = json.loads(lines[-1])
    except json.JSONDecodeError:
        raise RowFailed(f"last stdout line is not JSON: {lines[-1][:120]!r}") from None
    if not isinstance(obj, dict):
        raise RowFailed("last stdout line is not a JSON object")
    return obj


def parse_train(child: ChildResult) -> dict[str, Any]:
    """What one `minivision train --json` run reached: accuracy, network, per-epoch seconds, budget plan."""
    summary = last_json(child.stdout)
    try:
        run = Path(summary["run"])
        # the accuracy of the model's answers: with its own test-time views when it has them
        accuracy = float(summary.get("test_accuracy_tta", summary["test_accuracy"]))
        plain = float(summary["test_accuracy"])
        meta = json.loads((run / "model.json").read_text())
        import csv

        with open(run / "results.csv", newline="") as f:
            epoch_seconds = [float(r["seconds"]) for r in csv.DictReader(f)]
    except (KeyError, TypeError, ValueError, OSError) as e:
        raise RowFailed(f"cannot read the run's results ({type(e).__name__}: {e})") from None
    budget = meta.get("budget") or {}
    return {"run": str(run), "accuracy": accuracy, "plain_accuracy": plain, "tta": summary.get("tta", "none"),
            "test_loss": summary.get("test_loss"),
            "test_n": summary.get("test_n"), "network": meta.get("architecture", {}).get("name"),
            "epochs": len(epoch_seconds), "epoch_seconds": epoch_seconds, "budget": budget,
            "best_epoch": meta.get("metrics", {}).get("best_epoch"),
            "precision": (meta.get("used") or {}).get("precision"),
            "wall_s": child.wall_s, "peak_rss_mb": child.peak_rss_mb}


def parse_peer(child: ChildResult) -> dict[str, Any]:
    """The peer's JSON lines: one per epoch with "seconds", a final one with test accuracy and peak RSS."""
    epochs, final = [], {}
    for line in child.stdout.splitlines():
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "epoch" in obj and "seconds" in obj:
            epochs.append(float(obj["seconds"]))
        elif "test_accuracy" in obj:
            final = obj
    if not epochs:
        raise RowFailed("the TensorFlow peer printed no epoch timings")
    return {"epoch_seconds": epochs, "test_accuracy": final.get("test_accuracy"),
            "framework": final.get("framework", "TensorFlow"), "printed_rss_mb": final.get("peak_rss_mb"),
            "peak_rss_mb": child.peak_rss_mb, "wall_s": child.wall_s}


# ----------------------------------------------------------------------------- The session

@dataclass
class Bench:
    """One benchmark session: settings, plus the runs that later rows reuse."""

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    out: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "minivision-bench")
    peer_python: str | None = None  # None: $MINIVISION_PEER_PYTHON if set, else the peer is skipped
    peer_script: Path | None = None  # None: the peer is skipped
    cifar: str | None = None  # a JPEG folder or an archive of one; None: the CIFAR-10 rows are skipped
    echo: bool = False  # stream the children's output to stderr
    shown: dict[str, str] = field(default_factory=dict)  # path -> how commands show it, e.g. {"/data/peer": "PEER"}
    log: Callable[[str], None] = field(default=lambda msg: print(msg, file=sys.stderr, flush=True))
    _default: dict[int, dict[str, Any]] = field(default_factory=dict)
    _peer: dict[str, Any] | None = None
    _cifar_dir: tuple[str | None, str] | None = None

    # -- running things

    def _minivision(self, args: list[str], *, timeout: float | None = None) -> ChildResult:
        argv = [sys.executable, "-m", "minivision", *args]
        src = str(Path(__file__).resolve().parents[1])  # the child runs this copy of minivision
        env = {**_as_users_run(os.environ), "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])])}
        return self._run(argv, env, timeout)

    def _run(self, argv: list[str], env: dict[str, str], timeout: float | None) -> ChildResult:
        self.log("$ " + self.show(argv))
        child = run_child(argv, env, echo=self.echo, timeout=timeout)
        if child.returncode != 0:
            tail = (child.stderr.strip() or child.stdout.strip()).splitlines()[-1:] or ["no output"]
            why = f"killed after {timeout:.0f} s" if timeout and child.returncode < 0 else f"exit {child.returncode}"
            raise RowFailed(f"`{self.show(argv)}` failed ({why}): {tail[0][:200]}")
        return child

    def show(self, argv: list[str]) -> str:
        """A command as a reader would type it: `minivision ...`, temporary folders as $TMP."""
        if argv[:3] == [sys.executable, "-m", "minivision"]:
            argv = ["minivision", *argv[3:]]
        text = shlex.join(argv).replace(str(self.out), "$TMP")
        if self._cifar_dir and self._cifar_dir[0]:
            text = text.replace(self._cifar_dir[0], "CIFAR_DIR")
        for path, short in self.shown.items():
            text = text.replace(path, short)
        return text

    def train(self, args: list[str], seed: int, *, expected_s: float) -> dict[str, Any]:
        out = self.out / "runs"
        child = self._minivision(["train", *args, "--seed", str(seed), "--out", str(out), "--json"],
                                 timeout=3 * expected_s + 600)
        result = {"seed": seed, **parse_train(child), "command": shlex.join(child.argv)}
        self.log(f"  seed {seed}: {result['accuracy']:.2%} test, {result['wall_s']:.1f} s, "
                 f"{result['network']}, peak {result['peak_rss_mb'] or 0:,.0f} MB")
        return result

    def default_run(self, seed: int) -> dict[str, Any]:
        """The [default] training of ``seed``, run once per session (evaluate and memory reuse it)."""
        if seed not in self._default:
            try:
                self._default[seed] = self.train([], seed, expected_s=30)
            except RowFailed as e:
                self._default[seed] = {"failed": str(e)}
        if "failed" in self._default[seed]:
            raise RowFailed(self._default[seed]["failed"])
        return self._default[seed]

    # -- the peer

    def peer_python_path(self) -> tuple[str | None, str]:
        """The peer's interpreter (--peer-python, else $MINIVISION_PEER_PYTHON), or None and why not."""
        python = self.peer_python or os.environ.get(PEER_PYTHON_ENV)
        if not python:
            return None, (f"TensorFlow peer not given (--peer-python or ${PEER_PYTHON_ENV}); "
                          f"to install it: {PEER_INSTALL}")
        if not Path(python).is_file():
            return None, f"TensorFlow peer not installed ({python} not found); to install it: {PEER_INSTALL}"
        return python, ""

    def run_peer(self, again: bool = False) -> tuple[dict[str, Any] | None, str]:
        """The TensorFlow run of [cnn2], or None and a note saying why it was skipped. The first run is
        kept (the [memory] row reads its RSS); ``again`` runs the peer once more (a seed of [cnn2])."""
        if self._peer is not None and not again:
            return self._peer, ""
        python, why = self.peer_python_path()
        if python is None:
            return None, why
        if self.peer_script is None:
            return None, f"TensorFlow peer script not given (--peer-script); to install the peer: {PEER_INSTALL}"
        if not Path(self.peer_script).is_file():
            return None, f"peer script {self.peer_script} not found (pass --peer-script)"
        data = fashion_idx_dir()
        if data is None:
            return None, "no Fashion-MNIST IDX .gz folder for the peer (apt-get install dataset-fashion-mnist)"
        argv = [python, str(self.peer_script), "--model", "cnn2", "--epochs", str(CNN2_EPOCHS), "--data", str(data)]
        env = {**_as_users_run(os.environ), "KERAS_BACKEND": "tensorflow", "PYTHONUNBUFFERED": "1"}
        try:
            child = self._run(argv, env, timeout=1800)
        except RowFailed as e:
            if "No module named" in str(e) and ("tensorflow" in str(e) or "keras" in str(e)):
                return None, f"TensorFlow peer not installed in {python}; to install it: {PEER_INSTALL}"
            raise
        result = {**parse_peer(child), "argv": argv, "command": "KERAS_BACKEND=tensorflow " + shlex.join(argv)}
        if self._peer is None:
            self._peer = result
        return result, ""

    # -- CIFAR-10

    def cifar_dir(self) -> tuple[str | None, str]:
        if self._cifar_dir is None:
            self._cifar_dir = cifar_folder(self.cifar)
        return self._cifar_dir


def fashion_idx_dir() -> Path | None:
    """A folder with the four Fashion-MNIST IDX .gz files (what the peer reads): Debian's, else the cache."""
    from .data import sources

    src = sources.get_source("fashion-mnist")
    for folder in [*sources._debian_dirs(src), sources.user_cache_dir() / "datasets" / "fashion-mnist"]:
        if all((folder / f.name).is_file() for f in src.files):
            return folder
    return None


def _is_image_folder(path: Path) -> bool:
    return (path / "train").is_dir() and (path / "test").is_dir()


def cifar_folder(given: str | None) -> tuple[str | None, str]:
    """The CIFAR-10 JPEG folder (train/<class>/ and test/<class>/) from ``--cifar``: the folder itself, or an
    archive of one unpacked once into the cache; or None and why (the CIFAR-10 rows are then skipped)."""
    if not given:
        return None, ("CIFAR-10 not given: pass --cifar with a JPEG folder (train/<class>/ and test/<class>/) "
                      f"or an archive of one ({', '.join(CIFAR_ARCHIVE_SUFFIXES)})")
    p = Path(given).expanduser()
    if p.is_dir():
        return (str(p), "") if _is_image_folder(p) else (None, f"--cifar {given}: no train/ and test/ folders in it")
    if not p.is_file():
        return None, f"--cifar {given}: no such folder or archive"
    if not p.name.endswith(CIFAR_ARCHIVE_SUFFIXES):
        return None, f"--cifar {given}: not a folder or an archive ({', '.join(CIFAR_ARCHIVE_SUFFIXES)})"
    from .data.sources import user_cache_dir

    try:
        return str(unpack_once(p, user_cache_dir() / "bench")), ""
    except (MinivisionError, OSError, tarfile.TarError, zipfile.BadZipFile) as e:
        return None, f"cannot unpack {given}: {e}"


def _stem(archive: Path) -> str:
    name = archive.name
    for suffix in CIFAR_ARCHIVE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def unpack_once(archive: Path, cache: Path) -> Path:
    """Unpack ``archive`` into ``cache/<stem>`` unless already there; checksum first, no path escapes.

    Unpacks into a temporary folder beside the target and renames it into place, so an interrupted
    unpack is never mistaken for a complete one."""
    final = cache / _stem(archive)
    if _is_image_folder(final):
        return final
    digest_file = archive.with_name(archive.name + ".sha256")
    if digest_file.is_file():
        expected = digest_file.read_text().split()[0].lower()
        h = hashlib.sha256()
        with open(archive, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        if h.hexdigest() != expected:
            raise MinivisionError(f"sha256 mismatch ({h.hexdigest()[:12]}... != {expected[:12]}...)")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=cache))
    try:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                for name in z.namelist():
                    _check_member(tmp, name)
                z.extractall(tmp)
        else:
            with tarfile.open(archive) as t:
                members = t.getmembers()
                for m in members:
                    if not (m.isfile() or m.isdir()):
                        raise MinivisionError(f"refusing archive member {m.name!r} (not a plain file or folder)")
                    _check_member(tmp, m.name)
                if hasattr(tarfile, "data_filter"):
                    t.extractall(tmp, members=members, filter="data")
                else:  # pragma: no cover - Python < 3.11.4
                    t.extractall(tmp, members=members)
        root = tmp if _is_image_folder(tmp) else next((d for d in tmp.iterdir() if _is_image_folder(d)), None)
        if root is None:
            raise MinivisionError("no train/ and test/ folders inside")
        os.replace(root, final)
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _check_member(dest: Path, name: str) -> None:
    target = (dest / name).resolve()
    if name.startswith(("/", "\\")) or not target.is_relative_to(dest.resolve()):
        raise MinivisionError(f"refusing archive member {name!r} (outside the target folder)")


# ----------------------------------------------------------------------------- Rows

@dataclass(frozen=True)
class RowSpec:
    id: str
    what: str
    target: str


SPECS: dict[str, RowSpec] = {s.id: s for s in (
    RowSpec("default", "`minivision train` with no flags (the 30-second recipe), Fashion-MNIST",
            ">= 92.0% test accuracy (93.0% when trained in bf16), whole command <= 30 s"),
    RowSpec("evaluate", "`minivision evaluate` of a [default] run on the 10,000 test images", "<= 2 s whole command"),
    RowSpec("budget3m", "`minivision train --budget 3m`, Fashion-MNIST", ">= 94.0% test accuracy"),
    RowSpec("cnn2", "`cnn2` with its tutorial settings, seconds per epoch, vs TensorFlow", "<= 0.5 x TensorFlow"),
    RowSpec("memory", "peak RSS of the [default] Fashion-MNIST trainings", "<= 1.5 GB"),
    RowSpec("cifar-softmax", "`softmax` on CIFAR-10 (JPEG folder)", ">= 39% test accuracy"),
    RowSpec("budget30m", "`minivision train --budget 30m`, Fashion-MNIST", ">= 95.5% test accuracy"),
    RowSpec("cifar15m", "`minivision train --budget 15m` on CIFAR-10 (JPEG folder)",
            ">= 90% test accuracy (93% when trained in bf16)"),
    RowSpec("cifar30m", "`minivision train --budget 30m` on CIFAR-10 (JPEG folder)", "report (stretch >= 94%)"),
)}


#: Accuracy targets (%, and the row's target text) of the rows whose runs trained in bf16 (a CPU with
#: AVX-512 BF16 or AMX where bf16 measured faster, so ``--precision auto`` turns it on): bf16 shortens the
#: training step there (to 0.6-0.7x its fp32 time on a Zen 5 EPYC), so the same budget is asked for more.
BF16_TARGETS = {"default": (93.0, ">= 93.0% test accuracy (trained in bf16), whole command <= 30 s"),
                "cifar15m": (93.0, ">= 93.0% test accuracy (trained in bf16)")}


def accuracy_target(row_id: str, target_pct: float | None, runs: list[dict[str, Any]]) -> tuple[float | None, str]:
    """The accuracy target (%) of ``row_id`` for these runs and the row's target text: ``BF16_TARGETS``'
    when every run trained in bf16 (``precision`` from its model.json), else ``target_pct`` and the spec's."""
    if row_id in BF16_TARGETS and runs and all(r.get("precision") == "bf16" for r in runs):
        return BF16_TARGETS[row_id]
    return target_pct, SPECS[row_id].target


def make_row(row_id: str, *, measured: str, met: bool | None, status: str | None = None, note: str = "",
             values: list[dict[str, Any]] | None = None, mean: dict[str, float] | None = None,
             std: dict[str, float | None] | None = None, peer: str = "", command: str = "",
             commands: list[str] | None = None, target: str | None = None) -> dict[str, Any]:
    spec = SPECS[row_id]
    if status is None:
        status = {True: "met", False: "missed", None: "skipped"}[met]
    return {"id": row_id, "what": spec.what, "target": target or spec.target, "measured": measured, "peer": peer,
            "met": met, "status": status, "note": note, "values": values or [], "mean": mean or {},
            "std": std or {}, "n": len(values or []), "command": command, "commands": commands or []}


def _accuracy_row(row_id: str, runs: list[dict[str, Any]], *, target_pct: float | None,
                  max_wall_s: float | None, command: str, budget_s: float | None = None,
                  stretch_pct: float | None = None) -> dict[str, Any]:
    accs = [r["accuracy"] * 100 for r in runs]
    walls = [r["wall_s"] for r in runs]
    target_pct, target_text = accuracy_target(row_id, target_pct, runs)
    (acc, acc_sd), (wall, wall_sd) = mean_std(accs), mean_std(walls)
    misses = []
    if target_pct is not None:
        misses.append(missed_by("mean accuracy", acc, target_pct, higher_is_better=True, unit="%"))
    if max_wall_s is not None:
        misses.append(missed_by("mean wall time", wall, max_wall_s, higher_is_better=False, unit="s"))
    misses = [m for m in misses if m]
    networks = sorted({str(r["network"]) for r in runs})
    notes = [f"network: {', '.join(networks)}; epochs: {', '.join(str(r['epochs']) for r in runs)}; "
             f"seeds {', '.join(str(r['seed']) for r in runs)}"]
    with_tta = [r for r in runs if r.get("tta", "none") != "none"]
    if with_tta:  # the accuracy is the model's answers' (its own test-time views); the plain one beside
        notes.append(f"accuracy with the model's {', '.join(sorted({r['tta'] for r in with_tta}))} TTA; without: "
                     + ", ".join(f"{r.get('plain_accuracy', r['accuracy']):.2%}" for r in runs))
    if budget_s is not None:
        notes.append(f"wall vs budget {budget_s:.0f} s: {', '.join(f'{w - budget_s:+.1f} s' for w in walls)}")
        replans = [r["budget"].get("replans") for r in runs if r["budget"]]
        if replans:
            notes.append(f"re-plans: {', '.join(map(str, replans))}")
    measured = f"{pm(acc, acc_sd, '%')} in {pm(wall, wall_sd, 's')} (n={len(runs)})"
    if target_pct is None:
        met, status = None, "report"
        if stretch_pct is not None:
            miss = missed_by("mean accuracy", acc, stretch_pct, higher_is_better=True, unit="%")
            notes.append(f"stretch {stretch_pct:.0f}%: " + (f"missed, {miss}" if miss else "reached"))
    else:
        met, status = not misses, None
        if misses:
            notes.insert(0, "missed: " + "; ".join(misses))
    return make_row(row_id, measured=measured, met=met, status=status, note=". ".join(notes),
                    values=[{k: r[k] for k in ("seed", "accuracy", "plain_accuracy", "tta", "wall_s", "peak_rss_mb",
                                              "network", "epochs", "epoch_seconds", "budget", "precision") if k in r}
                            for r in runs],
                    mean={"accuracy_pct": acc, "wall_s": wall}, std={"accuracy_pct": acc_sd, "wall_s": wall_sd},
                    command=command, commands=[r["command"] for r in runs], target=target_text)


def row_default(b: Bench) -> dict[str, Any]:
    runs = [b.default_run(s) for s in b.seeds]
    return _accuracy_row("default", runs, target_pct=92.0, max_wall_s=30.0, command="minivision train --seed S")


def _budget_row(b: Bench, row_id: str, budget: str, budget_s: float, target_pct: float | None,
                cifar: bool = False, stretch_pct: float | None = None) -> dict[str, Any]:
    args = ["--budget", budget]
    shown = f"minivision train --budget {budget}"
    if cifar:
        folder, why = b.cifar_dir()
        if folder is None:
            return make_row(row_id, measured="-", met=None, note=why, command=shown + " --data CIFAR_DIR")
        args += ["--data", folder]
        shown += " --data CIFAR_DIR"
    runs = [b.train(args, s, expected_s=budget_s) for s in b.seeds]
    return _accuracy_row(row_id, runs, target_pct=target_pct, max_wall_s=None, command=shown + " --seed S",
                         budget_s=budget_s, stretch_pct=stretch_pct)


def row_cnn2(b: Bench) -> dict[str, Any]:
    """[cnn2]: per seed, our run then the peer's (alternating, so a change in the machine's speed
    reaches both sides); the ratio of their steady seconds per epoch, each pair's, then the mean, and
    both sides' test accuracy (the tutorial settings must reach the same accuracy)."""
    values: list[dict[str, Any]] = []
    commands: list[str] = []
    ours_s, peer_s, ratios, our_acc, peer_acc = [], [], [], [], []
    rule = ""
    for i, seed in enumerate(b.seeds):
        ours = b.train(["--model", "cnn2", "--epochs", str(CNN2_EPOCHS)], seed, expected_s=120 * CNN2_EPOCHS)
        o_s, rule = steady_seconds(ours["epoch_seconds"])
        values.append({"side": "minivision", "seed": seed, "epoch_seconds": ours["epoch_seconds"], "steady_s": o_s,
                       "accuracy": ours["accuracy"], "wall_s": ours["wall_s"], "peak_rss_mb": ours["peak_rss_mb"]})
        commands.append(ours["command"])
        ours_s.append(o_s)
        our_acc.append(ours["accuracy"] * 100)
        try:
            peer, why = b.run_peer(again=i > 0)
        except RowFailed as e:  # keep our measured side in the row
            return make_row("cnn2", measured=f"{statistics.fmean(ours_s):.1f} s/epoch", met=False, status="failed",
                            note=f"peer failed: {e}", values=values, mean={"minivision_s": statistics.fmean(ours_s)},
                            peer="failed", command=f"minivision train --model cnn2 --epochs {CNN2_EPOCHS} --seed S",
                            commands=commands)
        if peer is None:
            return make_row("cnn2", measured=f"{o_s:.1f} s/epoch", met=None,
                            note=f"{why}. seconds per epoch = {rule}", values=values, mean={"minivision_s": o_s},
                            peer="not installed", command=f"minivision train --model cnn2 --epochs {CNN2_EPOCHS} "
                            f"--seed {seed}", commands=commands)
        p_s, _ = steady_seconds(peer["epoch_seconds"])
        values.append({"side": "tensorflow", "epoch_seconds": peer["epoch_seconds"], "steady_s": p_s,
                       "accuracy": peer["test_accuracy"], "wall_s": peer["wall_s"], "peak_rss_mb": peer["peak_rss_mb"],
                       "printed_rss_mb": peer["printed_rss_mb"], "framework": peer["framework"]})
        commands.append(peer["command"])
        peer_s.append(p_s)
        ratios.append(o_s / p_s)
        if peer["test_accuracy"] is not None:
            peer_acc.append(float(peer["test_accuracy"]) * 100)
    (o_mean, o_sd), (p_mean, p_sd), (ratio, ratio_sd) = mean_std(ours_s), mean_std(peer_s), mean_std(ratios)
    (oa, oa_sd), (pa, pa_sd) = mean_std(our_acc), mean_std(peer_acc) if peer_acc else (math.nan, None)

    def pm(mean: float, sd: float | None, fmt: str) -> str:
        return f"{mean:{fmt}}" + (f" ± {sd:{fmt}}" if sd is not None else "")

    n = len(ratios)
    miss = missed_by("ratio", ratio, 0.5, higher_is_better=False, unit="x")
    pairs = "; ".join(f"{o:.1f} vs {p:.1f} s ({r:.2f}x)" for o, p, r in zip(ours_s, peer_s, ratios, strict=True))
    note = (f"missed: {miss}. " if miss else "") + (
        f"seconds per epoch = {rule}, the same rule for both; both include the epoch's validation pass (12,000 "
        f"images). Pairs (ours vs TensorFlow, run one after the other): {pairs}. Test accuracy after "
        f"{CNN2_EPOCHS} epochs: minivision {pm(oa, oa_sd, '.2f')}%, TensorFlow {pm(pa, pa_sd, '.2f')}% "
        f"(the peer takes no seed: each of its runs starts differently). Peer: {values[-1]['framework']}. "
        f"Peer command: `KERAS_BACKEND=tensorflow {b.show(peer['argv'])}`")
    return make_row("cnn2", measured=f"{pm(o_mean, o_sd, '.1f')} s/epoch (n={n})", met=miss is None, note=note,
                    values=values,
                    mean={"minivision_s": o_mean, "tensorflow_s": p_mean, "ratio": ratio, "accuracy_pct": oa,
                          "peer_accuracy_pct": pa},
                    std={"minivision_s": o_sd, "tensorflow_s": p_sd, "ratio": ratio_sd, "accuracy_pct": oa_sd,
                         "peer_accuracy_pct": pa_sd},
                    peer=f"TF {pm(p_mean, p_sd, '.1f')} s/epoch; ratio {pm(ratio, ratio_sd, '.2f')}x",
                    command=f"minivision train --model cnn2 --epochs {CNN2_EPOCHS} --seed S", commands=commands)


def row_evaluate(b: Bench) -> dict[str, Any]:
    run = b.default_run(b.seeds[0])
    values, commands = [], []
    for i in range(EVALUATE_REPEATS):
        child = b._minivision(["evaluate", run["run"], "--json"], timeout=600)
        commands.append(shlex.join(child.argv))
        got = last_json(child.stdout)
        if "accuracy" not in got:
            raise RowFailed("`minivision evaluate --json` printed no accuracy")
        values.append({"repeat": i + 1, "wall_s": child.wall_s, "accuracy": float(got["accuracy"]),
                       "peak_rss_mb": child.peak_rss_mb})
    walls = [v["wall_s"] for v in values]
    median = statistics.median(walls)
    miss = missed_by("median wall time", median, 2.0, higher_is_better=False, unit="s")
    note = (f"missed: {miss}. " if miss else "") + (
        f"runs: {', '.join(f'{w:.2f}' for w in walls)} s; model: the [default] run of seed {b.seeds[0]} "
        f"({run['network']}); accuracy {values[0]['accuracy']:.2%} (training reported {run['accuracy']:.2%})")
    mean, sd = mean_std(walls)
    return make_row("evaluate", measured=f"{median:.2f} s (median of {len(walls)})", met=miss is None, note=note,
                    values=values, mean={"wall_s": mean, "median_wall_s": median}, std={"wall_s": sd},
                    command="minivision evaluate RUN --json", commands=commands)


def row_memory(b: Bench) -> dict[str, Any]:
    runs = [b.default_run(s) for s in b.seeds]
    rss = [r["peak_rss_mb"] for r in runs]
    if any(v is None for v in rss):
        return make_row("memory", measured="-", met=None, note="this OS does not report a child's peak RSS (wait4)",
                        command="minivision train --seed S")
    peak = max(rss)
    miss = missed_by("peak RSS", peak, 1.5e9 / MB, higher_is_better=False, unit="MB")
    peer_text, notes = "", [f"per seed: {', '.join(f'{v:,.0f}' for v in rss)} MB (MB = 10^6 bytes, ru_maxrss)"]
    if b._peer is not None and b._peer.get("peak_rss_mb"):
        peer_text = f"TF cnn2: {b._peer['peak_rss_mb']:,.0f} MB"
        printed = b._peer.get("printed_rss_mb")
        notes.append(f"TensorFlow peer ([cnn2] run, {CNN2_EPOCHS} epochs): {b._peer['peak_rss_mb']:,.0f} MB"
                     + (f" (it printed {printed} MiB)" if printed is not None else ""))
    if miss:
        notes.insert(0, f"missed: {miss}")
    mean, sd = mean_std(rss)
    return make_row("memory", measured=f"{peak:,.0f} MB (max of {len(rss)})", met=miss is None,
                    note=". ".join(notes), values=[{"seed": r["seed"], "peak_rss_mb": r["peak_rss_mb"]} for r in runs],
                    mean={"peak_rss_mb": mean, "max_rss_mb": peak}, std={"peak_rss_mb": sd}, peer=peer_text,
                    command="minivision train --seed S", commands=[r["command"] for r in runs])


def row_cifar_softmax(b: Bench) -> dict[str, Any]:
    shown = " ".join(["minivision train --model softmax --data CIFAR_DIR", *CIFAR_SOFTMAX_FLAGS]) + " --seed S"
    folder, why = b.cifar_dir()
    if folder is None:
        return make_row("cifar-softmax", measured="-", met=None, note=why, command=shown)
    runs = [b.train(["--model", "softmax", "--data", folder, *CIFAR_SOFTMAX_FLAGS], s, expected_s=300)
            for s in b.seeds]
    return _accuracy_row("cifar-softmax", runs, target_pct=39.0, max_wall_s=None, command=shown)


ROW_FUNCS: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "default": row_default,
    "evaluate": row_evaluate,
    "budget3m": lambda b: _budget_row(b, "budget3m", "3m", 180, 94.0),
    "cnn2": row_cnn2,
    "memory": row_memory,
    "cifar-softmax": row_cifar_softmax,
    "budget30m": lambda b: _budget_row(b, "budget30m", "30m", 1800, 95.5),
    "cifar15m": lambda b: _budget_row(b, "cifar15m", "15m", 900, 90.0, cifar=True),
    "cifar30m": lambda b: _budget_row(b, "cifar30m", "30m", 1800, None, cifar=True, stretch_pct=94.0),
}


def run_rows(bench: Bench, row_ids: list[str],
             on_row: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Run the rows in order; each result gets the date and machine (with its measured convolution speed,
    taken before the first row). ``on_row`` sees each as it finishes."""
    machine = machine_info(speed=True)
    bench.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for row_id in [r for r in ROW_IDS if r in row_ids]:
        bench.log(f"[{row_id}] {SPECS[row_id].what}; target {SPECS[row_id].target}")
        try:
            row = ROW_FUNCS[row_id](bench)
        except RowFailed as e:
            row = make_row(row_id, measured="-", met=False, status="failed", note=f"failed: {e}")
        row["date"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        row["machine"] = machine
        bench.log(f"  -> {row['measured']} [{row['status']}]" + (f" {row['peer']}" if row["peer"] else ""))
        rows.append(row)
        if on_row:
            on_row(row)
    return rows


# ----------------------------------------------------------------------------- Rendering

_STATUS = {"met": "yes", "missed": "**no**", "skipped": "skipped", "report": "report", "failed": "**failed**"}


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: the table, the machine(s), then one note per row (what it measured, misses, skips)."""
    order = {r: i for i, r in enumerate(ROW_IDS)}
    rows = sorted(rows, key=lambda r: order.get(r["id"], len(order)))
    lines = ["| row | target | measured (mean ± std over n seeds) | peer / ratio | met? | command |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        date = str(r.get("date", ""))[:10]
        command = f"`{r['command']}`" if r.get("command") else ""
        lines.append(f"| `{r['id']}` ({date}) | {_cell(r['target'])} | {_cell(r['measured'])} | "
                     f"{_cell(r.get('peer') or '-')} | {_STATUS.get(r['status'], r['status'])} | {_cell(command)} |")
    machines: dict[str, list[str]] = {}
    for r in rows:
        if r.get("machine"):
            machines.setdefault(describe_machine(r["machine"]), []).append(r["id"])
    lines.append("")
    if len(machines) == 1:
        lines.append(f"Machine: {next(iter(machines))}.")
    for desc, ids in machines.items() if len(machines) > 1 else ():
        lines.append(f"Machine for {', '.join(ids)}: {desc}.")
    lines.append("")
    for r in rows:
        lines.append(f"- `{r['id']}` ({r.get('date', '?')}): {r['what']}. " + (r.get("note") or ""))
    return "\n".join(lines)

