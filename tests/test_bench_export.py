"""bench/export.py, the export benchmark: its timing helper, the in-process measurement of PyTorch fp32/bf16 and
ONNX fp32/int8 on a small run made here, whole-command timing, the table and the files it writes (the doc
section replaced, never the rest); and its ``--quick`` run on Fashion-MNIST (slow). No test asserts how long
anything took."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import needs_fashion_mnist, synthetic_images, write_pixel_csv
from .test_onnx_runtime import export_for_test

ROOT = Path(__file__).resolve().parents[1]


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_export", ROOT / "bench" / "export.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> dict:
    """A cnn1 trained for one epoch on a 3-class grey CSV, exported (fp32) in the export format by the tracer
    (``export_for_test``: seconds, where ``minivision export`` and its parity check take half a minute; the
    slow test below runs the real command), and its test pictures."""
    from minivision.config import TrainConfig
    from minivision.train import fit

    d = tmp_path_factory.mktemp("bench-export")
    x, y = synthetic_images(240, classes=3)
    write_pixel_csv(d / "train.csv", x[:180, 0], y[:180])
    write_pixel_csv(d / "test.csv", x[180:, 0], y[180:])
    cfg = TrainConfig(model="cnn1", epochs=1, batch_size=32, data=str(d / "train.csv"),
                      test_data=str(d / "test.csv"), out=str(d / "runs"))
    run = fit(cfg, log=lambda m: None, progress=False).run_dir
    export_for_test(run, d / "model.onnx")
    return {"run": run, "onnx": str(d / "model.onnx"), "x": np.asarray(x[180:]), "y": np.asarray(y[180:])}


def test_median_seconds_times_each_call_after_the_warmup():
    ticks = iter([0.0, 1.0, 10.0, 13.0, 20.0, 22.0])  # three timed calls: 1, 3 and 2 s
    calls = []
    assert bench.median_seconds(calls.append, 3, warmup=2, clock=lambda: next(ticks)) == 2.0
    assert calls == [0, 1, 0, 1, 2]


def test_measure_gives_every_engine_its_figures(small_run):
    run, files = small_run["run"], {"ONNX fp32": small_run["onnx"]}
    s = {**bench.SETTINGS["quick"], "latency_n": 4, "warmup": 1, "throughput_n": 50}
    got = bench.measure(run, files, small_run["x"], small_run["y"], threads=1, s=s)
    assert list(got) == ["PyTorch fp32", "PyTorch bf16", "ONNX fp32"]
    assert got["PyTorch fp32"]["agreement"] == 1.0 and got["PyTorch fp32"]["max_logit_diff"] == 0.0
    assert got["ONNX fp32"]["agreement"] == 1.0 and got["ONNX fp32"]["max_logit_diff"] < 1e-3
    assert got["ONNX fp32"]["accuracy"] == got["PyTorch fp32"]["accuracy"]
    for row in got.values():
        assert 0.0 <= row["accuracy"] <= 1.0 and row["latency_ms"] > 0 and row["throughput"] > 0


def test_time_command_takes_the_median_and_reports_a_failure(tmp_path):
    env = bench.command_env(tmp_path / "cache")
    ok = bench.time_command([sys.executable, "-c", "pass"], 3, env)
    assert len(ok["runs"]) == 3 and ok["seconds"] == sorted(r["seconds"] for r in ok["runs"])[1]
    bad = bench.time_command([sys.executable, "-c", "raise SystemExit('error: no such model')"], 3, env)
    assert bad == {"error": "error: no such model"}


def test_command_env_keeps_a_bytecode_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    env = bench.command_env(tmp_path)
    assert "PYTHONDONTWRITEBYTECODE" not in env and env["PYTHONPYCACHEPREFIX"] == str(tmp_path)
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE")
    monkeypatch.delenv("PYTHONPYCACHEPREFIX", raising=False)
    assert "PYTHONPYCACHEPREFIX" not in bench.command_env(tmp_path)  # bytecode is written where Python puts it


def _result(bf16_native: bool = False) -> dict:
    engine = {"accuracy": 0.9046, "agreement": 1.0, "max_logit_diff": 3.8e-6, "latency_ms": 0.19,
              "throughput": 3417.0, "load": 4.1}
    command = {"seconds": 1.12, "runs": [{"seconds": 1.12, "load": 3.5}, {"seconds": 1.3, "load": 4.5}]}
    model = {"label": "default", "run": "runs/train", "architecture": "mvnet-t", "trained": "`minivision train`",
             "exports": {"ONNX fp32": {"file": "a.onnx", "bytes": 292810},
                         "ONNX int8": {"error": "the int8 model loses 3.1 points"}},
             "files": {"PyTorch fp32": 286000, "PyTorch bf16": 286000, "ONNX fp32": 292810},
             "engines": {"PyTorch fp32": engine, "PyTorch bf16": {**engine, "agreement": 0.9993},
                         "ONNX fp32": engine},
             "commands": {"PyTorch (run folder)": {"predict": command, "evaluate": {"error": "boom"}},
                          "ONNX fp32": {"predict": command, "evaluate": command}}}
    return {"command": "python3 bench/export.py --quick",
            "machine": {"cpu": "Test CPU", "cpu_count": 2, "torch_threads": 1, "flags": {"avx2": True},
                        "torch": "2.x", "python": "3.11", "date": "2026-11-30T07:00:00+00:00"},
            "onnxruntime": "1.x", "bf16_native": bf16_native, "threads": 1, "quick": True,
            "settings": bench.SETTINGS["quick"], "command_env": {"bytecode_cache": True, "OMP_NUM_THREADS": "1"},
            "models": [model]}


def test_the_table_says_what_was_measured_and_what_failed():
    text = bench.render(_result())
    assert "emulated" in text and "Test CPU" in text and "OMP_NUM_THREADS=1" in text
    assert "| default (`mvnet-t`, `minivision train`) | ONNX fp32 | 293 kB | 90.46% | 100.00% |" in text
    assert "| ONNX int8 | - | - | - | - | - | - | the int8 model loses 3.1 points |" in text
    assert "| default (`mvnet-t`) | PyTorch (run folder) | 1.12 s (load 3.5-4.5) | failed |" in text
    assert "native" in bench.render(_result(bf16_native=True)).split("Latency")[0]


def test_results_and_the_doc_section_are_written_and_replaced(tmp_path):
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\n## Speed and accuracy\n\nkept as it is\n")
    bench.write_results(_result(), tmp_path / "out", doc)
    first = doc.read_text()
    assert first.startswith("# Benchmarks\n\n## Speed and accuracy\n\nkept as it is\n")
    assert first.count(bench.HEADING) == 1 and bench.BEGIN in first
    got = json.loads((tmp_path / "out" / "export.json").read_text())
    assert got["models"][0]["engines"]["ONNX fp32"]["throughput"] == 3417.0
    assert (tmp_path / "out" / "export.md").read_text().startswith("Measured 2026-11-30")
    changed = _result()
    changed["models"][0]["engines"]["ONNX fp32"]["latency_ms"] = 0.5
    bench.write_results(changed, tmp_path / "out", doc)  # a second run replaces the table, nothing else
    second = doc.read_text()
    assert second.count(bench.HEADING) == 1 and "0.50 ms" in second and "kept as it is" in second


@pytest.mark.slow
@needs_fashion_mnist
def test_quick_run_on_fashion_mnist_writes_its_figures(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "export.py"), "--quick", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    got = json.loads((tmp_path / "export.json").read_text())
    (model,) = got["models"]
    assert model["label"] == "default" and {"PyTorch fp32", "PyTorch bf16", "ONNX fp32"} <= set(model["engines"])
    assert model["engines"]["ONNX fp32"]["agreement"] >= 0.999
    assert "seconds" in model["commands"]["ONNX fp32"]["evaluate"]
    assert "| ONNX fp32 |" in (tmp_path / "export.md").read_text()
