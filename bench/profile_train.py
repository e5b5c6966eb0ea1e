#!/usr/bin/env python3
"""Where a training command's time goes: the whole command by phase, and a training step by kind of work.

    python3 bench/profile_train.py          # the default run, cnn2 and a CIFAR-10 run
    python3 bench/profile_train.py --rows default --doc  # one row; --doc also writes docs/BENCHMARKS.md
    python3 bench/profile_train.py --cifar /path/to/cifar10-jpg # the CIFAR-10 JPEG folder (or its archive)

Two measurements per row, both on the real code:

1. **The whole command, by phase.** ``minivision train FLAGS`` runs in a child process under py-spy, the
   sampling profiler (``py-spy record --idle --threads``, 100 samples a second, the main thread's stacks
   only; the child is not changed or slowed). Each sample goes to the first phase whose function is on its
   stack (``PHASES``): imports, reading the data, the budget's timing probe, the training steps (split into
   forward, backward, optimizer step, augmentation, input conversion and the rest of the step's Python),
   the validation pass after each epoch, the test pass with calibration, the unsure-answer statistics,
   the report, and the rest (start-up, saving, exit). Samples x 10 ms = seconds of the whole command.
   Why a sampling profiler: it sees the whole process, imports and exit included, at no cost to it;
   cProfile would slow every Python call and so inflate exactly the per-step overhead being measured.
2. **A training step, by kind of work.** The same settings trained in this process (``train.fit``) with a
   listener that runs ``torch.profiler`` over ``--steps`` steps after ``--warmup`` steps and then stops the
   run. Operator self-times are grouped: the operators the optimizer's step ran, then by name (``KINDS``:
   convolutions, norms, activations, pooling, matrix products, the loss, dropout, other operators; the
   backward operators with their forward ones; an operator another one called, with its caller), and
   "Python and the rest" is the
   step's wall time less the operators' time. torch.profiler adds a little time to every operator, so the
   shares, not the milliseconds, are the figures to read.

Results: bench/results/profile.json and profile.md (``--out`` for another folder); ``--doc`` also replaces
the section between the profile markers in docs/BENCHMARKS.md. Needs py-spy (``pip install -e .[bench]``).
Run it alone on the machine: other work inflates the times (the load average is recorded beside each row).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "bench")]

import devpaths  # noqa: E402

DOC = ROOT / "docs" / "BENCHMARKS.md"
BEGIN, END = "<!-- profile:begin -->", "<!-- profile:end -->"
HEADING = "## Where the time goes: profiles"
RATE = 100  # py-spy samples per second

# Rows: name -> (what it is, the `minivision train` flags; "{cifar}" is the CIFAR-10 folder)
ROWS: dict[str, tuple[str, list[str]]] = {
    "default": ("`minivision train` (the 30-second recipe, Fashion-MNIST)", []),
    "cnn2": ("`cnn2` with its tutorial settings, 1 epoch (Fashion-MNIST)", ["--model", "cnn2", "--epochs", "1"]),
    "cifar": ("`minivision train --data CIFAR_DIR` (the 30-second recipe, CIFAR-10 JPEG folder)",
              ["--data", "{cifar}"]),
}

# Phase of a sample: the first rule (in this order) with a function on the sample's stack. A rule is
# (phase, function name, a piece of its file's path or "").
PHASES: list[tuple[str, str, str]] = [
    ("after training: unsure-answer statistics", "_fit_trust", "minivision/train.py"),
    ("after training: report (HTML, plots)", "write_run_report", ""),
    ("after training: test pass, calibration", "finish", "minivision/train.py"),
    ("validation pass (each epoch)", "_end_epoch", "minivision/train.py"),
    ("steps: backward", "backward", "torch/"),
    ("steps: optimizer step", "step", "torch/optim/"),
    ("steps: augmentation", "__call__", "minivision/data/augment.py"),
    ("steps: forward", "_forward", "minivision/train.py"),
    ("steps: input conversion (uint8 to normalised float)", "__call__", "minivision/preprocess.py"),
    ("steps: the rest of the step (loss, metrics, bookkeeping)", "_train_epoch", "minivision/train.py"),
    ("budget: timing probe", "probe_step_seconds", "minivision/budget.py"),
    ("reading the data", "load_dataset", "minivision/"),
    ("imports", "_find_and_load", ""),
]
OTHER = "the rest (start-up, planning, saving, exit)"

# Kind of an operator (torch.profiler's name, lower case): the first kind with a matching piece.
KINDS: list[tuple[str, tuple[str, ...]]] = [
    ("convolutions", ("conv",)),
    ("norms", ("batch_norm", "layer_norm", "group_norm", "_norm")),
    ("activations", ("relu", "gelu", "silu", "sigmoid", "hardswish", "threshold", "tanh", "softplus")),
    ("pooling", ("pool",)),
    ("matrix products (dense layers)", ("addmm", "::mm", "matmul", "linear", "bmm")),
    ("loss", ("cross_entropy", "log_softmax", "nll_loss", "_softmax")),
    ("dropout", ("dropout", "bernoulli")),
]
OTHER_OPS = "other operators (copies, indexing, element-wise)"


def load1() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def cpu_line() -> str:
    from minivision import runfiles

    model, found = runfiles.cpu_info()
    flags = set(found or [])
    have = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    lack = [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f not in flags]
    import torch

    return (f"{model}, {os.cpu_count()} CPUs (torch uses "
            f"{torch.get_num_threads()} threads), flags: {', '.join(have) or 'none of avx2/avx512'}"
            f"{' (no ' + ', '.join(lack) + ')' if lack else ''}; torch {torch.__version__}, Python "
            f"{platform.python_version()}")


# ------------------------------------------------------------------------------------ 1. the whole command


def phase_of(frames: list[str]) -> str:
    """The phase (``PHASES``) of one sample's stack, ``frames`` root first, each ``"name (file:line)"``."""
    parsed = []
    for f in frames:
        name, _, where = f.partition(" (")
        parsed.append((name.strip(), where))
    for phase, name, path in PHASES:
        for n, where in parsed:
            if (n == name or n.endswith("." + name)) and path in where:  # py-spy names methods Class.name
                return phase
    return OTHER


def main_thread_samples(raw: str) -> collections.Counter[str]:
    """Phase -> samples of py-spy's ``--format raw --threads`` output (``thread (0x..);frame;...;frame N``
    per line), for the thread that ran ``minivision``'s ``main``."""
    by_thread: dict[str, list[tuple[list[str], int]]] = collections.defaultdict(list)
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        by_thread[frames[0]].append((frames[1:], int(count)))
    main = max(by_thread.items(), key=lambda kv: sum(c for fr, c in kv[1] if any(
        f.startswith("main (") and "minivision/cli.py" in f for f in fr)), default=(None, []))[1]
    out: collections.Counter[str] = collections.Counter()
    for frames, count in main:
        out[phase_of(frames)] += count
    return out


def whole_command(flags: list[str], work: Path) -> dict[str, Any]:
    """Run ``minivision train FLAGS`` under py-spy; phase -> seconds, the wall time and the run's figures."""
    if shutil.which("py-spy") is None:
        sys.exit("bench/profile_train.py needs py-spy: pip install -e .[bench]")
    raw = work / "pyspy.txt"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    cmd = ["py-spy", "record", "--idle", "--threads", "--rate", str(RATE), "--format", "raw", "-o", str(raw),
           "--", sys.executable, "-m", "minivision", "train", *flags, "--out", str(work), "--name", "run",
           "--json"]
    load = load1()
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"the profiled command failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    # py-spy writes its own lines to stdout too; the command's --json answer is the line that is JSON
    summary = json.loads([ln for ln in done.stdout.splitlines() if ln.startswith("{")][-1])
    counts = main_thread_samples(raw.read_text())
    model = json.loads((work / "run" / "model.json").read_text())
    return {"seconds": {k: v / RATE for k, v in counts.most_common()}, "sampled_s": sum(counts.values()) / RATE,
            "wall_s": round(wall, 2), "load": load, "test_accuracy": summary.get("test_accuracy"),
            "model": model["architecture"]["name"], "epochs": model["metrics"]["epochs"],
            "batch_size": model["used"]["batch_size"], "precision": model["used"]["precision"]}


# ------------------------------------------------------------------------------------ 2. a training step


def kind_of(op: str) -> str:
    low = op.lower()
    for kind, pieces in KINDS:
        if any(p in low for p in pieces):
            return kind
    return OTHER_OPS


def step_profile(flags: list[str], work: Path, warmup: int, steps: int) -> dict[str, Any]:
    """Train with ``flags`` in this process, profile ``steps`` steps after ``warmup``; kind -> ms per step."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from minivision import cli
    from minivision.config import config_from, given_settings
    from minivision.listeners import Listener
    from minivision.train import fit

    args = cli.build_parser().parse_args(["train", *flags, "--out", str(work), "--name", "steps"])
    given = given_settings(args)
    if given.get("budget") is None and not any(f in flags for f in ("--epochs", "--steps")):
        given["steps"] = warmup + steps + 1  # the budget run's own network and settings, without the probe

    class StepProfile(Listener):
        def __init__(self) -> None:
            self.prof: Any = None
            self.wall = 0.0

        def on_step_end(self, trainer: Any) -> None:
            if trainer.step == warmup:
                step = trainer.opt.step  # minivision's optimizers are its own: name their step for the profiler

                def named_step(*args: Any, **kwargs: Any) -> Any:
                    with record_function("Optimizer.step#minivision"):
                        return step(*args, **kwargs)

                trainer.opt.step = named_step
                self.prof = profile(activities=[ProfilerActivity.CPU])
                self.prof.__enter__()
                self.t0 = time.perf_counter()
            elif trainer.step == warmup + steps and self.prof is not None:
                self.wall = time.perf_counter() - self.t0
                self.prof.__exit__(None, None, None)
                del trainer.opt.step
                trainer.stop("step")

    listener = StepProfile()
    fit(config_from(given), progress=False, log=lambda m: None, listeners=[listener])
    if listener.prof is None:
        sys.exit(f"the run ended before step {warmup + steps}: give more --epochs or fewer --steps")
    by_kind: collections.Counter[str] = collections.Counter()
    top: collections.Counter[str] = collections.Counter()
    events = [ev for ev in listener.prof.events() if ev.device_type == torch.autograd.DeviceType.CPU]
    in_optimizer: set[int] = set()  # the operators the optimizer's step ran, whatever their names
    for ev in events:
        if ev.name.startswith("Optimizer.step"):
            todo = list(ev.cpu_children)
            while todo:
                child = todo.pop()
                in_optimizer.add(id(child))
                todo.extend(child.cpu_children)
    for ev in events:
        if not ev.name.startswith("aten::"):
            continue  # scopes and autograd's wrapper nodes (...Backward0): no arithmetic of their own
        us = float(ev.self_cpu_time_total)
        outer = ev  # an operator another operator called (the fill_ of a pooling's backward) counts as that one
        while outer.cpu_parent is not None and outer.cpu_parent.name.startswith("aten::"):
            outer = outer.cpu_parent
        kind = kind_of(outer.name)
        by_kind["optimizer step" if id(ev) in in_optimizer else kind if kind != OTHER_OPS else kind_of(ev.name)] += us
        top[ev.name] += us
    wall_ms = listener.wall * 1000 / steps
    ops_ms = {k: v / 1000 / steps for k, v in by_kind.most_common()}
    rest = max(0.0, wall_ms - sum(ops_ms.values()))
    return {"ms_per_step": round(wall_ms, 2), "ops_ms": {k: round(v, 3) for k, v in ops_ms.items()},
            "python_and_rest_ms": round(rest, 3), "steps": steps, "warmup": warmup,
            "top_ops_ms": {k: round(v / 1000 / steps, 3) for k, v in top.most_common(12)}}


# ------------------------------------------------------------------------------------ the tables


def render(results: dict[str, Any], command: str) -> str:
    lines = [f"Measured {results['date']} on {results['machine']}. Command: `{command}`. Whole command: "
             f"py-spy samples of the main thread at {RATE}/s (10 ms each); a step: torch.profiler over "
             f"the steps named, after the warm-up steps named. Load: the 1-minute load average at the start.", ""]
    for row in results["rows"].values():
        w, s = row["whole"], row["step"]
        total = w["sampled_s"] or 1.0
        lines += [f"**{row['what']}**: `minivision train {' '.join(row['flags_shown'])}`. {w['model']}, "
                  f"batch {w['batch_size']}, {w['precision']}, {w['epochs']} epoch(s), test top-1 "
                  f"{w['test_accuracy']:.2%}; whole command {w['wall_s']:.1f} s (load {w['load']}).", "",
                  "| phase of the whole command | seconds | share |", "|---|---:|---:|"]
        lines += [f"| {k} | {v:.2f} | {v / total:.0%} |" for k, v in w["seconds"].items()]
        step_total = s["ms_per_step"] or 1.0
        lines += ["", f"| a training step ({s['steps']} steps after {s['warmup']}): kind of work | ms per step | "
                  "share |", "|---|---:|---:|"]
        lines += [f"| {k} | {v:.2f} | {v / step_total:.0%} |" for k, v in s["ops_ms"].items()]
        lines += [f"| Python and the rest (the step's wall time less its operators) | "
                  f"{s['python_and_rest_ms']:.2f} | {s['python_and_rest_ms'] / step_total:.0%} |",
                  f"| **the whole step** | **{s['ms_per_step']:.2f}** | 100% |", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_doc(text: str) -> None:
    from minivision.fileio import write_text

    doc = DOC.read_text(encoding="utf-8")
    block = f"{BEGIN}\n{text}{END}"
    if BEGIN in doc and END in doc:
        doc = doc[:doc.index(BEGIN)] + block + doc[doc.index(END) + len(END):]
    else:
        doc = doc.rstrip() + f"\n\n{HEADING}\n\n{block}\n"
    write_text(DOC, doc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma list of {', '.join(ROWS)}")
    ap.add_argument("--cifar", help="the CIFAR-10 JPEG folder or its archive (default: the shared one)")
    ap.add_argument("--warmup", type=int, default=20, help="steps before the profiled ones (default 20)")
    ap.add_argument("--steps", type=int, default=30, help="profiled training steps (default 30)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="folder for profile.json/.md")
    ap.add_argument("--doc", action="store_true", help="also write the section of docs/BENCHMARKS.md")
    a = ap.parse_args()
    rows = [r.strip() for r in a.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        sys.exit(f"unknown row(s) {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    cifar = None
    if "cifar" in rows:
        from minivision import benchmark

        source = a.cifar or devpaths.cifar_source()
        if source is None:
            sys.exit("the cifar row needs the CIFAR-10 JPEG folder: --cifar PATH")
        cifar, why = benchmark.cifar_folder(source)
        if cifar is None:
            sys.exit(why)
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "machine": cpu_line(), "rows": {}}
    for name in rows:
        what, flags = ROWS[name]
        flags = [f.replace("{cifar}", cifar or "") for f in flags]
        shown = [("CIFAR_DIR" if f == cifar else f) for f in flags]
        print(f"{name}: the whole command under py-spy", flush=True)
        with tempfile.TemporaryDirectory(prefix="minivision-profile-") as tmp:
            whole = whole_command(flags, Path(tmp))
        print(f"{name}: {a.steps} training steps under torch.profiler", flush=True)
        with tempfile.TemporaryDirectory(prefix="minivision-profile-") as tmp:
            step = step_profile(flags, Path(tmp), a.warmup, a.steps)
        results["rows"][name] = {"what": what, "flags_shown": shown, "whole": whole, "step": step}
    command = "python3 bench/profile_train.py" + ("" if a.rows == ",".join(ROWS) else f" --rows {a.rows}")
    text = render(results, command)
    a.out.mkdir(parents=True, exist_ok=True)
    from minivision.fileio import write_json, write_text

    write_json(a.out / "profile.json", results)
    write_text(a.out / "profile.md", text)
    print(text)
    if a.doc:
        write_doc(text)
        print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
