#!/usr/bin/env python3
"""The speed and accuracy table: runs the rows and, with --write, records them in docs/BENCHMARKS.md.

    python3 bench/speed.py                            # every row except the long ones, 3 seeds, print only
    python3 bench/speed.py --rows default,cnn2 --write
    python3 bench/speed.py --rows all --seeds 3 --write   # adds budget30m, cifar15m, cifar30m (hours)

Every figure comes from the real CLI run in a child process on this machine (src/minivision/
benchmark.py says how each row is measured). With --write, each finished row is stored in
bench/results/speed.json at once (an interrupted session keeps the rows it finished) and the
table between the speed markers in docs/BENCHMARKS.md is re-rendered from all stored rows, so rows
not re-run this time keep their earlier figures and dates. Each kind of CPU keeps its own rows and
table: an AVX2 machine bench/results/speed.json and the first table, a machine with AMX (bf16 matrix
units) bench/results/speed-amx.json and the table under "On a CPU with AMX", one with AVX-512 BF16 but no
AMX (bf16 dot products in the vector units, such as AMD Zen 4) bench/results/speed-avx512bf16.json and the
table under "On a CPU with AVX-512 BF16", and one with AVX-512 where bf16 does not pay (`--precision auto`
measures it: an Intel Xeon with AVX-512 BF16 whose AMX is not exposed runs bf16 convolutions at 0.6x fp32's speed)
bench/results/speed-avx512.json and the table under "On a CPU with AVX-512 where bf16 does not pay". On the two
bf16 kinds `--precision auto` trains in bf16, on the others in fp32. `minivision bench`
runs the same rows on a user's machine without touching these files. The development machine's peer and CIFAR-10
are the defaults here (bench/devpaths.py); `minivision bench` is given them with flags.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "bench")]

import devpaths  # noqa: E402
from minivision import benchmark  # noqa: E402
from minivision.errors import MinivisionError  # noqa: E402
from minivision.fileio import read_json, write_json, write_text  # noqa: E402

DOC = ROOT / "docs" / "BENCHMARKS.md"
RESULTS = ROOT / "bench" / "results" / "speed.json"
BEGIN, END = "<!-- speed:begin -->", "<!-- speed:end -->"
HEADING = devpaths.SPEED_HEADING
#: Where a machine of each kind keeps its rows: (results file name beside RESULTS, begin marker, end marker,
#: heading, the doc line its section goes above when it has none yet).
KINDS = {
    "avx2": ("speed.json", BEGIN, END, HEADING, None),
    "amx": ("speed-amx.json", "<!-- speed-amx:begin -->", "<!-- speed-amx:end -->",
            "### On a CPU with AMX (bf16 in hardware)", "### What the rows that miss would need, and what was tried"),
    "avx512bf16": ("speed-avx512bf16.json", "<!-- speed-avx512bf16:begin -->", "<!-- speed-avx512bf16:end -->",
                   "### On a CPU with AVX-512 BF16 and no AMX (bf16 in hardware)",
                   "### What the rows that miss would need, and what was tried"),
    "avx512": ("speed-avx512.json", "<!-- speed-avx512:begin -->", "<!-- speed-avx512:end -->",
               "### On a CPU with AVX-512 where bf16 does not pay (fp32)",
               "### What the rows that miss would need, and what was tried"),
}
#: What each kind is, in the words of its table's introduction.
KIND_WORDS = {"amx": "a CPU with AMX, where `--precision auto` trains in bf16",
              "avx512bf16": "a CPU with AVX-512 BF16 but no AMX, where `--precision auto` trains in bf16",
              "avx512": "a CPU with AVX-512 where bf16 convolutions are not faster than fp32 ones (whether or not "
                        "it has AVX-512 BF16), so `--precision auto` trains in fp32"}
INTRO = ("Each row runs the real command in a child process: wall time is the whole command (start-up, data "
         "loading, training, test pass, file writes), peak memory is the child's `ru_maxrss`, speed is a ratio "
         "to the TensorFlow peer measured in the same session. Rows re-run at different times carry their own "
         "date. Exact commands of every run: `bench/results/speed.json`. Refresh with "
         "`python3 bench/speed.py --rows ROWS --write`.")


def machine_kind(info: dict[str, Any] | None = None, auto_precision: str | None = None) -> str:
    """``amx`` on a CPU with AMX (bf16 matrix units), ``avx512bf16`` on one with AVX-512 BF16 and no AMX where
    ``--precision auto`` trains in bf16, ``avx512`` on another with AVX-512 (fp32), else ``avx2`` (fp32).
    ``auto_precision``: what ``--precision auto`` picks here (default: ask ``inference.pick_precision``)."""
    flags = (info or benchmark.machine_info()).get("flags", {})
    if flags.get("amx"):
        return "amx"
    if flags.get("avx512_bf16"):
        if auto_precision is None:
            import torch

            from minivision.inference import pick_precision

            auto_precision = pick_precision("auto", torch.device("cpu"))
        if auto_precision == "bf16":
            return "avx512bf16"
    return "avx512" if flags.get("avx512f") else "avx2"


def results_file(kind: str) -> Path:
    """The stored rows of machines of ``kind``."""
    return RESULTS.with_name(KINDS[kind][0])


def load_results(path: Path | None = None) -> dict[str, dict[str, Any]]:
    """Stored rows by id ({} when nothing was stored yet)."""
    path = path or RESULTS
    if not path.is_file():
        return {}
    data = read_json(path)
    return dict(data.get("rows", {})) if isinstance(data, dict) else {}


def save_results(rows: dict[str, dict[str, Any]], path: Path | None = None) -> None:
    about = "bench/speed.py results, one entry per row (exact commands included); see docs/BENCHMARKS.md"
    write_json(path or RESULTS, {"about": about, "rows": rows})


def rewrite_section(text: str, table: str, kind: str = "avx2") -> str:
    """``text`` with the speed section of machines of ``kind`` replaced (or inserted under its heading when
    the markers are missing)."""
    _, begin, end, heading, before = KINDS[kind]
    intro = INTRO if kind == "avx2" else (
        f"The same rows, measured the same way, on {KIND_WORDS[kind]}. "
        f"Exact commands: `bench/results/{KINDS[kind][0]}`.")
    return devpaths.replace_section(text, begin, end, f"{intro}\n\n{table}", heading, before)


def write_doc(table: str, doc: Path | None = None, kind: str = "avx2") -> None:
    doc = doc or DOC
    text = doc.read_text() if doc.is_file() else "# Benchmarks\n"
    write_text(doc, rewrite_section(text, table, kind))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", help=f"comma list of {', '.join(benchmark.ROW_IDS)}, or all "
                                   f"(default: all but {', '.join(sorted(benchmark.LONG_ROWS))})")
    ap.add_argument("--seeds", default="3", help="number of seeds (3 = seeds 0,1,2) or a list like 0,1,2")
    ap.add_argument("--write", action="store_true",
                    help="store rows in bench/results/speed.json (speed-amx.json on a CPU with AMX, "
                         "speed-avx512bf16.json on one with AVX-512 BF16 only, speed-avx512.json on one with "
                         "AVX-512 where bf16 does not pay) and "
                         "rewrite that machine's table in docs/BENCHMARKS.md")
    ap.add_argument("--out", help="keep the run folders here (default: a temporary folder, deleted)")
    ap.add_argument("--cifar", help="CIFAR-10 JPEG folder or archive (default: $MINIVISION_CIFAR_JPG, "
                                    f"{devpaths.CIFAR_UNPACKED}, else unpack ../shared/datasets/cifar10-jpg.tar.gz "
                                    "into ~/.cache/minivision/bench once)")
    ap.add_argument("--peer-python", help="python of the TensorFlow venv (default: $MINIVISION_PEER_PYTHON, "
                                          "else ../.venv-peer/bin/python)")
    ap.add_argument("--peer-script", default=str(devpaths.PEER_SCRIPT), help="keras_peer.py "
                                                                           "(default ../shared/peers/keras_peer.py)")
    ap.add_argument("--quiet", action="store_true", help="do not echo the runs' own output")
    a = ap.parse_args(argv)
    try:
        rows = benchmark.select_rows(a.rows)
        seeds = benchmark.parse_seeds(a.seeds)
        kind = machine_kind()
        results = results_file(kind)
        stored = load_results(results) if a.write else {}
        out = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="minivision-speed-"))
        bench = benchmark.Bench(seeds=seeds, out=out, peer_python=a.peer_python or devpaths.peer_python(),
                                peer_script=Path(a.peer_script), cifar=a.cifar or devpaths.cifar_source(),
                                echo=not a.quiet, shown=dict(devpaths.SHOWN))

        def record(row: dict[str, Any]) -> None:
            if a.write:
                stored[row["id"]] = row
                save_results(stored, results)
                write_doc(benchmark.render_table(list(stored.values())), kind=kind)

        try:
            new = benchmark.run_rows(bench, rows, on_row=record)
        finally:
            if not a.out:
                shutil.rmtree(out, ignore_errors=True)
    except MinivisionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted" + (" (finished rows are stored)" if a.write else ""), file=sys.stderr)
        return 130
    print(benchmark.render_table(list(stored.values()) if a.write else new))
    if a.write:
        print(f"\nwrote {results} and {DOC}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
