"""The speed benchmark's machinery: arithmetic, wording, row selection, reading runs, the table, the
BENCHMARKS.md rewrite, the peer-missing path, CIFAR-10 from a folder or an archive, and the split
between the package (what `minivision bench` needs) and bench/ (the development machine's paths).
``run_child`` is replaced by a fake that writes run folders, so no training runs; no test asserts
how long anything took."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import re
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from minivision import benchmark, inference
from minivision.benchmark import Bench, ChildResult, RowFailed
from minivision.cli import main
from minivision.errors import MinivisionError

ROOT = Path(__file__).resolve().parents[1]


def _load_speed():
    spec = importlib.util.spec_from_file_location("bench_speed", ROOT / "bench" / "speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


speed = _load_speed()
devpaths = speed.devpaths  # bench/devpaths.py, imported by bench/speed.py


# ----------------------------------------------------------------------------- a fake CLI

def _write_run(out: Path, argv: list[str], accuracy: float, epoch_seconds: list[float]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    n = 1
    while (out / f"train{n}").exists():
        n += 1
    run = out / f"train{n}"
    run.mkdir()
    model = argv[argv.index("--model") + 1] if "--model" in argv else "mvnet-s"
    meta = {"architecture": {"name": model}, "metrics": {"best_epoch": len(epoch_seconds), "test_accuracy": accuracy}}
    if "--budget" in argv:
        meta["budget"] = {"budget_s": 180.0, "model": model, "probed_s_per_epoch": {}, "total_steps": 99,
                          "replans": 3}
    (run / "model.json").write_text(json.dumps(meta))
    with open(run / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "val_accuracy", "seconds"])
        for i, s in enumerate(epoch_seconds):
            w.writerow([i + 1, 0.9, s])
    return run


class FakeCLI:
    """Stands in for run_child: answers `minivision train/evaluate` and the peer like the real ones would."""

    def __init__(self, accuracy=0.93, wall=20.0, rss=900.0, epochs=(14.0, 10.0), peer=(30.0, 25.0), fail=()):
        self.accuracy, self.wall, self.rss, self.epochs, self.peer, self.fail = accuracy, wall, rss, epochs, peer, fail
        self.calls: list[list[str]] = []
        self.envs: list[dict] = []

    def __call__(self, argv, env=None, *, echo=False, timeout=None) -> ChildResult:
        self.calls.append(list(argv))
        self.envs.append(dict(env or {}))
        if any(f in argv for f in self.fail):
            return ChildResult(list(argv), 2, "", "error: something a user can fix\n", 1.0, 100.0)
        if argv[1].endswith("keras_peer.py"):
            lines = [json.dumps({"epoch": i + 1, "seconds": s, "val_accuracy": 0.88}) for i, s in enumerate(self.peer)]
            lines.append(json.dumps({"model": "cnn2", "framework": "keras 3.x (tensorflow)", "epochs": len(self.peer),
                                     "fit_seconds": 55.0, "test_accuracy": 0.89, "peak_rss_mb": 1000}))
            return ChildResult(list(argv), 0, "\n".join(lines) + "\n", "", 70.0, 1100.0)
        command = argv[3]
        if command == "train":
            seed = int(argv[argv.index("--seed") + 1])
            acc = self.accuracy + 0.002 * seed
            run = _write_run(Path(argv[argv.index("--out") + 1]), argv, acc, list(self.epochs))
            stdout = "epoch 1/2 ...\n" + json.dumps({"run": str(run), "test_accuracy": acc, "test_loss": 0.3,
                                                     "test_n": 10000}) + "\n"
            return ChildResult(list(argv), 0, stdout, "", self.wall + seed, self.rss + 10 * seed)
        if command == "evaluate":
            walls = [1.5, 1.2, 1.9]
            wall = walls[sum(1 for c in self.calls if c[3:4] == ["evaluate"]) - 1]
            return ChildResult(list(argv), 0, json.dumps({"accuracy": 0.93, "loss": 0.3, "n": 10000}) + "\n", "",
                               wall, 500.0)
        raise AssertionError(f"unexpected command {argv}")


@pytest.fixture
def fake(monkeypatch, tmp_path):
    monkeypatch.delenv("MINIVISION_PEER_PYTHON", raising=False)
    cli = FakeCLI()
    monkeypatch.setattr(benchmark, "run_child", cli)
    monkeypatch.setattr(benchmark, "fashion_idx_dir", lambda: tmp_path)
    monkeypatch.setattr(benchmark, "machine_info", lambda **kw: {"cpu": "Test CPU", "cpu_count": 2, "torch_threads": 2,
                                                            "flags": {"avx2": True, "avx512f": False},
                                                            "torch": "2.x", "python": "3.11"})
    return cli


def _bench(tmp_path, **kw) -> Bench:
    peer = tmp_path / "peer-python"
    peer.write_text("")
    script = tmp_path / "keras_peer.py"
    script.write_text("")
    kw.setdefault("peer_python", str(peer))
    kw.setdefault("seeds", [0, 1, 2])
    return Bench(out=tmp_path / "out", peer_script=script, log=lambda msg: None, **kw)


# ----------------------------------------------------------------------------- arithmetic and wording

def test_mean_std():
    assert benchmark.mean_std([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))
    assert benchmark.mean_std([5.0]) == (5.0, None)
    with pytest.raises(ValueError):
        benchmark.mean_std([])


def test_plus_minus_formatting():
    assert benchmark.pm(92.4133, 0.081, "%") == "92.41 ± 0.08%"
    assert benchmark.pm(28.66, 0.31, "s") == "28.7 ± 0.3 s"
    assert benchmark.pm(92.4133, None, "%") == "92.41%"


def test_missed_by_wording():
    assert benchmark.missed_by("mean accuracy", 92.5, 92.0, higher_is_better=True, unit="%") is None
    assert benchmark.missed_by("mean accuracy", 92.0, 92.0, higher_is_better=True, unit="%") is None
    assert (benchmark.missed_by("mean accuracy", 91.59, 92.0, higher_is_better=True, unit="%")
            == "mean accuracy 91.59% is 0.41 points below the 92.00% target")
    assert (benchmark.missed_by("mean wall time", 33.2, 30.0, higher_is_better=False, unit="s")
            == "mean wall time 33.2 s is 3.20 s over the 30.0 s target")
    assert (benchmark.missed_by("ratio", 0.62, 0.5, higher_is_better=False, unit="x")
            == "ratio 0.62x is 0.12 over the 0.50x target")
    assert "84 MB over" in benchmark.missed_by("peak RSS", 1584, 1500, higher_is_better=False, unit="MB")


def test_steady_seconds_rule_skips_the_warm_up_epoch():
    assert benchmark.steady_seconds([30.0, 20.0, 22.0, 21.0])[0] == 21.0
    value, rule = benchmark.steady_seconds([30.0, 20.0])
    assert value == 20.0 and "epoch 2" in rule
    assert benchmark.steady_seconds([30.0])[0] == 30.0


# ----------------------------------------------------------------------------- selection

def test_row_selection():
    default = benchmark.select_rows(None)
    assert "default" in default and "cnn2" in default
    assert not set(default) & benchmark.LONG_ROWS
    assert benchmark.select_rows("all") == list(benchmark.ROW_IDS)
    assert benchmark.select_rows("cnn2,default") == ["default", "cnn2"]  # run order, not typed order


def test_unknown_row_is_one_line_with_did_you_mean():
    with pytest.raises(MinivisionError) as e:
        benchmark.select_rows("default,budget3")
    assert "did you mean budget3m?" in str(e.value) and "\n" not in str(e.value)


def test_bench_command_unknown_row(capsys):
    assert main(["bench", "--rows", "defualt"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "did you mean default?" in err and "\n" not in err


@pytest.mark.parametrize("text,seeds", [("3", [0, 1, 2]), ("1", [0]), ("4,7", [4, 7]), (2, [0, 1])])
def test_parse_seeds(text, seeds):
    assert benchmark.parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["x", "0", "-1", "1,1", "a,b"])
def test_parse_seeds_rejects(text):
    with pytest.raises(MinivisionError):
        benchmark.parse_seeds(text)


# ----------------------------------------------------------------------------- reading runs

def test_parse_train_reads_a_results_folder(tmp_path):
    run = _write_run(tmp_path, ["--budget", "3m"], 0.9412, [12.5, 10.25, 10.5])
    stdout = "some log line\n" + json.dumps({"run": str(run), "test_accuracy": 0.9412, "test_loss": 0.2,
                                             "test_n": 10000}) + "\n\n"
    got = benchmark.parse_train(ChildResult(["x"], 0, stdout, "", 42.0, 800.0))
    assert got["accuracy"] == pytest.approx(0.9412)
    assert got["epoch_seconds"] == [12.5, 10.25, 10.5] and got["epochs"] == 3
    assert got["network"] == "mvnet-s" and got["budget"]["replans"] == 3
    assert got["wall_s"] == 42.0 and got["peak_rss_mb"] == 800.0


def test_a_row_scores_a_model_that_answers_with_tta_by_its_answers(tmp_path):
    run = _write_run(tmp_path, ["--budget", "15m"], 0.85, [80.0, 80.0])
    stdout = json.dumps({"run": str(run), "test_accuracy": 0.85, "test_loss": 0.5, "test_n": 10000,
                         "test_accuracy_tta": 0.861, "test_loss_tta": 0.45, "tta": "flip"}) + "\n"
    got = benchmark.parse_train(ChildResult(["x"], 0, stdout, "", 900.0, 800.0))
    assert got["accuracy"] == pytest.approx(0.861) and got["plain_accuracy"] == pytest.approx(0.85)
    assert got["tta"] == "flip"
    row = benchmark._accuracy_row("cifar15m", [dict(got, seed=0, command="c")], target_pct=90.0, max_wall_s=None,
                                  command="c")
    assert row["mean"]["accuracy_pct"] == pytest.approx(86.1)
    assert "with the model's flip TTA; without: 85.00%" in row["note"]


@pytest.mark.parametrize("precision,target,met", [
    ("bf16", ">= 93.0% test accuracy (trained in bf16)", False),
    ("fp32", ">= 92.0% test accuracy (93.0% when trained in bf16)", True)])
def test_a_run_trained_in_bf16_is_held_to_the_bf16_target(tmp_path, precision, target, met):
    run = _write_run(tmp_path, [], 0.925, [7.0, 7.0])
    meta = json.loads((run / "model.json").read_text())
    (run / "model.json").write_text(json.dumps({**meta, "used": {"device": "cpu", "precision": precision}}))
    stdout = json.dumps({"run": str(run), "test_accuracy": 0.925, "test_loss": 0.3, "test_n": 10000}) + "\n"
    got = benchmark.parse_train(ChildResult(["x"], 0, stdout, "", 28.0, 400.0))
    assert got["precision"] == precision
    row = benchmark._accuracy_row("default", [dict(got, seed=0, command="c")], target_pct=92.0, max_wall_s=30.0,
                                  command="c")
    assert row["target"].startswith(target) and row["met"] is met and row["values"][0]["precision"] == precision
    assert ("missed: mean accuracy 92.50% is 0.50 points below the 93.00% target" in row["note"]) is not met


def test_parse_train_unreadable_output_fails_the_row(tmp_path):
    with pytest.raises(RowFailed):
        benchmark.parse_train(ChildResult(["x"], 0, "no json here\n", "", 1.0, 1.0))
    with pytest.raises(RowFailed):
        benchmark.parse_train(ChildResult(["x"], 0, json.dumps({"run": str(tmp_path / "gone"),
                                                                 "test_accuracy": 0.9}), "", 1.0, 1.0))


def test_parse_peer_lines():
    out = "\n".join([json.dumps({"epoch": 1, "seconds": 21.0, "val_accuracy": 0.8}), "TF noise",
                     json.dumps({"epoch": 2, "seconds": 17.5, "val_accuracy": 0.85}),
                     json.dumps({"test_accuracy": 0.86, "peak_rss_mb": 990, "framework": "keras 3"})])
    got = benchmark.parse_peer(ChildResult(["p"], 0, out, "", 50.0, 1040.0))
    assert got["epoch_seconds"] == [21.0, 17.5] and got["printed_rss_mb"] == 990 and got["peak_rss_mb"] == 1040.0


def test_run_child_measures_a_real_child():
    child = benchmark.run_child([sys.executable, "-c", "print('hello'); import sys; print('x', file=sys.stderr)"])
    assert child.returncode == 0 and child.stdout == "hello\n" and child.stderr == "x\n"
    assert child.wall_s > 0 and (child.peak_rss_mb is None or child.peak_rss_mb > 0)


# ----------------------------------------------------------------------------- rows with the fake CLI

def test_rows_with_a_fake_cli(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")  # a developer's shell: the children still cache bytecode
    rows = {r["id"]: r for r in benchmark.run_rows(_bench(tmp_path), ["default", "evaluate", "cnn2", "memory"])}
    d = rows["default"]
    assert d["met"] is True and d["n"] == 3
    assert d["mean"]["accuracy_pct"] == pytest.approx(93.2) and d["mean"]["wall_s"] == pytest.approx(21.0)
    assert "93.20 ± 0.20%" in d["measured"] and "21.0 ± 1.0 s" in d["measured"]
    assert len(d["commands"]) == 3 and all("--json" in c for c in d["commands"])
    assert d["date"] and d["machine"]["cpu"] == "Test CPU"

    e = rows["evaluate"]
    assert e["mean"]["median_wall_s"] == pytest.approx(1.5) and e["met"] is True
    trains = [c for c in fake.calls if c[3:4] == ["train"]]
    assert len(trains) == 6  # 3 default seeds (reused by evaluate and memory) + 3 of cnn2

    c = rows["cnn2"]
    assert c["mean"]["ratio"] == pytest.approx(10.0 / 25.0) and c["met"] is True  # epoch 2 of 2, both sides
    assert "ratio 0.40 ± 0.00x" in c["peer"] and "epoch 2 of 2" in c["note"] and "(n=3)" in c["measured"]
    peer_runs = [a for a in fake.calls if a[1].endswith("keras_peer.py")]
    assert len(peer_runs) == 3  # one peer run per seed, each after ours
    order = [("peer" if a[1].endswith("keras_peer.py") else a[3]) for a in fake.calls]
    cnn2_order = [o for a, o in zip(fake.calls, order, strict=True) if "cnn2" in a or o == "peer"]
    assert cnn2_order == ["train", "peer"] * 3
    assert c["mean"]["accuracy_pct"] == pytest.approx(93.2) and c["mean"]["peer_accuracy_pct"] == pytest.approx(89.0)
    assert "minivision 93.20 ± 0.20%, TensorFlow 89.00 ± 0.00%" in c["note"]
    peer_env = fake.envs[[i for i, a in enumerate(fake.calls) if a[1].endswith("keras_peer.py")][0]]
    assert peer_env["KERAS_BACKEND"] == "tensorflow"
    assert fake.envs and not [env for env in fake.envs if "PYTHONDONTWRITEBYTECODE" in env]

    m = rows["memory"]
    assert m["mean"]["max_rss_mb"] == pytest.approx(920.0) and m["met"] is True
    assert "1,100 MB" in m["peer"]


def test_a_missed_row_says_by_how_much(fake, tmp_path):
    fake.accuracy, fake.wall = 0.915, 33.0
    row = benchmark.run_rows(_bench(tmp_path, seeds=[0]), ["default"])[0]
    assert row["met"] is False and row["status"] == "missed"
    assert "0.50 points below the 92.00% target" in row["note"]
    assert "3.00 s over the 30.0 s target" in row["note"]


def test_peer_missing_skips_the_row(fake, tmp_path):
    b = _bench(tmp_path, seeds=[0], peer_python=str(tmp_path / "nonexistent" / "python"))
    row = benchmark.run_rows(b, ["cnn2"])[0]
    assert row["met"] is None and row["status"] == "skipped"
    assert "TensorFlow peer not installed" in row["note"] and "tensorflow-cpu==2.21.0" in row["note"]
    assert not any(a[1].endswith("keras_peer.py") for a in fake.calls)
    assert row["mean"]["minivision_s"] == 10.0  # our side is still measured


_CHECKOUT_PATHS = (str(ROOT), str(ROOT.parent), "../shared", "shared/peers", ".venv-peer", "/tmp/cifar10-jpg")


@pytest.mark.parametrize("python,script", [(False, False), (False, True), (True, False)])
def test_peer_not_given_says_how_to_install_it_without_naming_this_checkout(fake, tmp_path, python, script):
    b = _bench(tmp_path, seeds=[0])  # (False, False) is what `minivision bench` with no peer flags builds
    b.peer_python = b.peer_python if python else None
    b.peer_script = b.peer_script if script else None
    row = benchmark.run_rows(b, ["cnn2"])[0]
    assert row["status"] == "skipped" and row["peer"] == "not installed"
    assert "tensorflow-cpu==2.21.0" in row["note"] and "--peer-python" in row["note"]
    assert "--peer-script" in row["note"]
    assert not any(p in row["note"] for p in _CHECKOUT_PATHS), row["note"]
    assert not any(a[1].endswith("keras_peer.py") for a in fake.calls)


def test_peer_python_from_the_environment(fake, tmp_path, monkeypatch):
    python = tmp_path / "env-python"
    python.write_text("")
    monkeypatch.setenv("MINIVISION_PEER_PYTHON", str(python))
    row = benchmark.run_rows(_bench(tmp_path, seeds=[0], peer_python=None), ["cnn2"])[0]
    assert row["status"] == "met" and [a[0] for a in fake.calls if a[1].endswith("keras_peer.py")] == [str(python)]


def test_failed_peer_keeps_our_side(fake, tmp_path):
    fake.fail = (str(tmp_path / "keras_peer.py"),)  # the peer exits 2; our cnn2 run succeeds
    row = benchmark.run_rows(_bench(tmp_path, seeds=[0]), ["cnn2"])[0]
    assert row["status"] == "failed" and "peer failed" in row["note"] and row["mean"]["minivision_s"] == 10.0


def test_failed_run_fails_its_row_and_the_rows_that_need_it(fake, tmp_path):
    fake.fail = ("train",)
    rows = benchmark.run_rows(_bench(tmp_path, seeds=[0]), ["default", "evaluate"])
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert "something a user can fix" in rows[0]["note"]
    assert len([c for c in fake.calls if c[3:4] == ["train"]]) == 1  # not retried for evaluate


def test_cifar_rows_skip_without_data(fake, tmp_path):
    rows = benchmark.run_rows(_bench(tmp_path, seeds=[0]), ["cifar-softmax", "cifar15m"])
    assert all(r["status"] == "skipped" and "--cifar" in r["note"] for r in rows)
    assert not any(p in r["note"] for r in rows for p in _CHECKOUT_PATHS)
    assert not fake.calls


@pytest.mark.parametrize("what,why", [("missing", "no such folder or archive"), ("empty-dir", "no train/ and test/"),
                                      ("text-file", "not a folder or an archive")])
def test_cifar_given_but_unusable_skips_with_the_reason(fake, tmp_path, what, why):
    path = tmp_path / what
    if what == "empty-dir":
        path.mkdir()
    elif what == "text-file":
        path.write_text("x")
    row = benchmark.run_rows(_bench(tmp_path, seeds=[0], cifar=str(path)), ["cifar-softmax"])[0]
    assert row["status"] == "skipped" and why in row["note"] and not fake.calls


def test_cifar_given_as_an_archive_is_unpacked_once_into_the_cache(fake, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("MINIVISION_CACHE", str(cache))
    archive = tmp_path / "cifar10-jpg.tar.gz"
    _tar(archive, {"cifar10-jpg/train/cat/1.jpg": b"x", "cifar10-jpg/test/cat/1.jpg": b"y"})
    row = benchmark.run_rows(_bench(tmp_path, seeds=[0], cifar=str(archive)), ["cifar-softmax"])[0]
    folder = cache / "bench" / "cifar10-jpg"
    assert row["status"] == "met" and (folder / "train" / "cat" / "1.jpg").is_file()
    assert str(folder) in row["commands"][0] and "CIFAR_DIR" in row["command"]


def test_cifar30m_is_reported_against_its_stretch(fake, tmp_path):
    data = tmp_path / "cifar"
    (data / "train").mkdir(parents=True)
    (data / "test").mkdir()
    row = benchmark.run_rows(_bench(tmp_path, seeds=[0], cifar=str(data)), ["cifar30m"])[0]
    assert row["status"] == "report" and row["met"] is None and "stretch 94%" in row["note"]
    assert "CIFAR_DIR" in row["command"] and str(data) in row["commands"][0]


def test_bench_command_prints_the_table(fake, tmp_path, capsys):
    assert main(["bench", "--rows", "cnn2", "--seeds", "1", "--peer-python", str(tmp_path / "no-python")]) == 0
    out = capsys.readouterr().out
    assert "| `cnn2`" in out and "skipped" in out and "Machine: Test CPU" in out
    assert main(["bench", "--rows", "cnn2,cifar-softmax", "--seeds", "1"]) == 0  # no peer, no CIFAR-10: skipped
    out = capsys.readouterr().out
    assert out.count("| skipped |") == 2 and "tensorflow-cpu==2.21.0" in out and "--cifar" in out
    assert not any(p in out for p in _CHECKOUT_PATHS), out
    assert main(["bench", "--rows", "default", "--seeds", "1", "--json", "--out", str(tmp_path / "keep")]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["rows"][0]["id"] == "default" and (tmp_path / "keep" / "runs").is_dir()


# ----------------------------------------------------------------------------- table and BENCHMARKS.md

def _row(row_id, status="met", date="2026-11-25T10:00:00+00:00", **kw):
    met = {"met": True, "missed": False}.get(status)
    r = benchmark.make_row(row_id, measured="93.00 ± 0.10% in 28.0 ± 0.5 s (n=3)", met=met, status=status,
                           note=kw.pop("note", ""), command="minivision train --seed S", **kw)
    r.update(date=date, machine={"cpu": "Test CPU", "cpu_count": 2, "torch_threads": 2, "flags": {"avx2": True}})
    return r


def test_render_table():
    table = benchmark.render_table([_row("cnn2", "skipped", note="TensorFlow peer not installed"),
                                    _row("default", "missed", note="missed: mean accuracy ...")])
    lines = table.splitlines()
    assert lines[0].startswith("| row | target | measured (mean ± std over n seeds) | peer / ratio | met? | command |")
    assert lines[2].startswith("| `default` (2026-11-25)") and "**no**" in lines[2]  # table order, not input order
    assert "skipped" in lines[3] and "`minivision train --seed S`" in lines[2]
    assert "Machine: Test CPU, 2 CPUs" in table
    assert "- `cnn2` (2026-11-25T10:00:00+00:00): " in table and "TensorFlow peer not installed" in table


def test_rewrite_section_on_a_copy_of_benchmarks_md(tmp_path):
    doc = tmp_path / "BENCHMARKS.md"
    original = (ROOT / "docs" / "BENCHMARKS.md").read_text()
    doc.write_text(original)
    speed.write_doc("| the | table |", doc)
    text = doc.read_text()
    assert text.count(speed.BEGIN) == 1 and "| the | table |" in text
    before, after = original.split(speed.BEGIN)[0], original.split(speed.END)[1]
    assert text.startswith(before) and text.endswith(after)  # nothing outside the markers changes
    speed.write_doc("| new |", doc)
    assert "| new |" in doc.read_text() and "| the | table |" not in doc.read_text()


def test_rewrite_section_adds_heading_and_markers_when_missing():
    text = speed.rewrite_section("# Benchmarks\n\nintro\n", "| t |")
    assert text.startswith("# Benchmarks\n\nintro\n") and speed.HEADING in text
    assert text.index(speed.BEGIN) < text.index("| t |") < text.index(speed.END)


def test_a_new_section_goes_above_the_whole_heading_line():
    doc = "# B\n\n## Speed and accuracy on a GPU\n\nx\n\n## Speed and accuracy\n\ny\n"
    text = devpaths.replace_section(doc, "<!-- a -->", "<!-- /a -->", "| a |", "## A", before="## Speed and accuracy")
    assert text.index("## Speed and accuracy on a GPU") < text.index("## A") < text.index("## Speed and accuracy\n")
    assert devpaths.replace_section("# B\n", "<a>", "</a>", "b", "## A", before="## Nowhere").endswith(
        "\n\n## A\n\n<a>\nb\n</a>\n")


def test_the_section_headings_the_bench_scripts_look_for_are_in_benchmarks_md():
    headings = (ROOT / "docs" / "BENCHMARKS.md").read_text().splitlines()
    assert speed.HEADING == devpaths.SPEED_HEADING and speed.HEADING in headings
    for name in ("photos", "load"):
        assert _load_script(name).HEADING in headings


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lstrip("#").strip().lower()).replace(" ", "-")


def test_links_to_benchmarks_md_sections_resolve():
    doc = (ROOT / "docs" / "BENCHMARKS.md").read_text()
    anchors = {_slug(line) for line in doc.splitlines() if line.startswith("#")}
    links = re.findall(r"\]\(#([^)]+)\)", doc)
    links += re.findall(r"BENCHMARKS\.md#([^)\s]+)", (ROOT / "README.md").read_text())
    assert links and not [a for a in links if a not in anchors], sorted(anchors)
    assert _slug("## Speed and accuracy") in links


def test_no_issue_numbers_in_the_benchmark_texts():
    files = [ROOT / "docs" / "BENCHMARKS.md", ROOT / "src" / "minivision" / "benchmark.py",
             *sorted((ROOT / "bench").glob("*.py"))]
    found = [f"{f.name}: {m.group(0)}" for f in files
             for m in re.finditer(r"[Ii]ssues? ?#?[0-9]+|issue-[0-9]", f.read_text())]
    assert not found


def test_speed_write_keeps_rows_not_rerun(fake, tmp_path, monkeypatch):
    results, doc = tmp_path / "results" / "speed.json", tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n")
    monkeypatch.setattr(speed, "RESULTS", results)
    monkeypatch.setattr(speed, "DOC", doc)
    monkeypatch.setattr(speed, "machine_kind", lambda info=None: "avx2")
    speed.save_results({"budget3m": _row("budget3m", date="2026-01-01T00:00:00+00:00")})
    assert speed.main(["--rows", "default", "--seeds", "1", "--write", "--quiet"]) == 0
    stored = speed.load_results()
    assert set(stored) == {"budget3m", "default"}
    text = doc.read_text()
    assert "`budget3m` (2026-01-01)" in text and "| `default` (" in text


@pytest.mark.parametrize("kind", ["amx", "avx512bf16", "avx512"])
def test_a_bf16_cpu_keeps_its_own_rows_and_table(fake, tmp_path, monkeypatch, kind):
    results, doc = tmp_path / "results" / "speed.json", tmp_path / "BENCHMARKS.md"
    original = (ROOT / "docs" / "BENCHMARKS.md").read_text()
    doc.write_text(original)
    monkeypatch.setattr(speed, "RESULTS", results)
    monkeypatch.setattr(speed, "DOC", doc)
    monkeypatch.setattr(speed, "machine_kind", lambda info=None: kind)
    assert speed.main(["--rows", "default", "--seeds", "1", "--write", "--quiet"]) == 0
    name = f"speed-{kind}.json"
    assert not results.exists() and set(speed.load_results(results.with_name(name))) == {"default"}
    text = doc.read_text()
    begin, end = speed.KINDS[kind][1:3]
    assert text.split(speed.BEGIN)[1].split(speed.END)[0] == original.split(speed.BEGIN)[1].split(speed.END)[0]
    section = text.split(begin)[1].split(end)[0]
    assert "| `default` (" in section and name in section and speed.KIND_WORDS[kind] in section
    assert text.index(speed.END) < text.index(begin) < text.index("### What the rows that miss would need")


def test_the_cpu_flags_and_the_measured_precision_decide_which_rows_a_machine_writes():
    assert speed.machine_kind({"flags": {"avx2": True, "amx": True}}) == "amx"
    assert speed.machine_kind({"flags": {"avx2": True, "avx512f": False, "amx": False}}) == "avx2"
    assert speed.machine_kind({"flags": {"avx2": True, "avx512f": True, "amx": False}}) == "avx512"
    bf16_flags = {"flags": {"avx2": True, "avx512f": True, "avx512_bf16": True, "amx": False}}
    assert speed.machine_kind(bf16_flags, auto_precision="bf16") == "avx512bf16"
    # the same flags where bf16 convolutions measured slower than fp32 ones: --precision auto trains in fp32
    assert speed.machine_kind(bf16_flags, auto_precision="fp32") == "avx512"
    assert speed.machine_kind({"flags": {"avx512_bf16": True, "amx": True}}) == "amx"


def test_the_machine_line_carries_its_measured_convolution_speed(monkeypatch):
    ticks = iter(range(100))
    monkeypatch.setattr(benchmark.time, "perf_counter", lambda: next(ticks) * 0.5)  # each pass takes 0.5 s
    # after the untimed pass, two passes fill the second: 2 x 3 x (2 * 64 * 64 * 9 * 32 * 32 * 32) FLOP in 1 s
    assert benchmark.conv_gflops(seconds=1.0) == pytest.approx(2 * 3 * 2 * 64 * 64 * 9 * 32 * 32 * 32 / 1e9)
    # the same count under bf16 autocast (bench/conv_precision.py sets the two side by side)
    assert benchmark.conv_gflops(seconds=1.0, precision="bf16") == pytest.approx(2 * 3 * 2 * 64 * 64 * 9 * 32**3 / 1e9)
    with pytest.raises(ValueError, match="fp32 or bf16"):
        benchmark.conv_gflops(precision="fp16")
    base = {"cpu": "AMD EPYC", "cpu_count": 2, "torch_threads": 2, "flags": {"avx2": True}, "torch": "2.x"}
    slow, fast = {**base, "conv_gflops": 23.2}, {**base, "conv_gflops": 61.0}
    assert "fp32 3 x 3 convolutions at 23 GFLOP/s" in benchmark.describe_machine(slow)
    assert "GFLOP/s" not in benchmark.describe_machine(base)  # rows measured before it was recorded
    rows = [{"id": "default", "target": "t", "measured": "m", "status": "met", "what": "w", "machine": slow},
            {"id": "cnn2", "target": "t", "measured": "m", "status": "met", "what": "w", "machine": fast}]
    table = benchmark.render_table(rows)
    assert "Machine for default: " in table and "Machine for cnn2: " in table  # same flags, different speed


def test_speed_unknown_row(capsys):
    assert speed.main(["--rows", "nope"]) == 2
    assert capsys.readouterr().err.startswith("error: --rows: unknown row 'nope'")


# ----------------------------------------------------------------------------- the package knows no checkout

def test_the_package_names_no_path_of_this_checkout():
    """`minivision bench` runs on a user's machine: the development paths live in bench/devpaths.py."""
    for name in ("REPO_ROOT", "SHARED", "PEER_SCRIPT", "PEER_PYTHON", "CIFAR_UNPACKED", "CIFAR_ARCHIVES",
                 "find_cifar", "replace_section"):
        assert not hasattr(benchmark, name), name
    source = Path(benchmark.__file__).read_text()
    assert not any(p in source for p in ("../shared", "shared/", ".venv-peer", "/tmp/cifar10-jpg", "parents[2]"))


def test_development_defaults(tmp_path, monkeypatch):
    assert devpaths.PEER_SCRIPT == ROOT.parent / "shared" / "peers" / "keras_peer.py"
    monkeypatch.delenv("MINIVISION_PEER_PYTHON", raising=False)
    assert devpaths.peer_python() == str(ROOT.parent / ".venv-peer" / "bin" / "python")
    monkeypatch.setattr(devpaths, "CIFAR_UNPACKED", tmp_path / "not-unpacked")
    monkeypatch.setattr(devpaths, "CIFAR_ARCHIVES", tmp_path / "datasets")
    monkeypatch.delenv("MINIVISION_CIFAR_JPG", raising=False)
    assert devpaths.cifar_source() is None
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "cifar10-jpg.tar.gz").write_bytes(b"")
    assert devpaths.cifar_source() == str(tmp_path / "datasets" / "cifar10-jpg.tar.gz")  # the package unpacks it
    folder = tmp_path / "jpg"
    (folder / "train").mkdir(parents=True)
    (folder / "test").mkdir()
    monkeypatch.setenv("MINIVISION_CIFAR_JPG", str(folder))
    assert devpaths.cifar_source() == str(folder)


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["speed", "photos", "load", "tutorials", "report_draw", "step_variants",
                                  "conv_precision", "reading_precision"])
def test_bench_scripts_import_and_print_their_help(name, capsys):
    module = _load_script(name)
    with pytest.raises(SystemExit) as e:
        module.main(["--help"])
    assert e.value.code == 0 and "usage:" in capsys.readouterr().out


def test_the_reading_precision_bench_refuses_a_folder_that_is_no_run(tmp_path, capsys):
    assert _load_script("reading_precision").main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


@pytest.mark.needs_fashion_mnist
def test_the_reading_precision_bench_scores_a_real_run_both_ways(small_fashion_run, capsys):
    assert _load_script("reading_precision").main([str(small_fashion_run), "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    found = dict(re.findall(r"^(fp32|bf16): top-1 ([0-9.]+)%", out, re.M))
    assert set(found) == {"fp32", "bf16"} and "10,000 test pictures" in out
    # the same weights read two ways: the answers differ in a few pictures at most
    assert 50 < float(found["fp32"]) < 100 and abs(float(found["fp32"]) - float(found["bf16"])) < 2


def test_a_bench_script_runs_as_a_script():
    """As `python3 bench/NAME.py` (the lightest one; the others import the same way)."""
    import subprocess

    p = subprocess.run([sys.executable, str(ROOT / "bench" / "tutorials.py"), "--help"], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0 and "usage:" in p.stdout, p.stderr[-1000:]


# ----------------------------------------------------------------------------- unpacking CIFAR

def _tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))


def test_unpack_once(tmp_path):
    archive = tmp_path / "cifar10-jpg.tar.gz"
    _tar(archive, {"cifar10-jpg/train/cat/0001.jpg": b"x", "cifar10-jpg/test/cat/0001.jpg": b"y"})
    folder = benchmark.unpack_once(archive, tmp_path / "cache")
    assert folder == tmp_path / "cache" / "cifar10-jpg" and (folder / "train" / "cat" / "0001.jpg").read_bytes() == b"x"
    archive.unlink()
    assert benchmark.unpack_once(archive, tmp_path / "cache") == folder  # once: not unpacked again
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["cifar10-jpg"]  # no temporary leftovers


def test_unpack_refuses_escapes_and_bad_checksums(tmp_path):
    evil = tmp_path / "cifar10-evil.tar.gz"
    _tar(evil, {"../outside.txt": b"x", "train/a.jpg": b"", "test/a.jpg": b""})
    with pytest.raises(MinivisionError, match="outside"):
        benchmark.unpack_once(evil, tmp_path / "cache")
    assert not (tmp_path / "outside.txt").exists()
    good = tmp_path / "cifar10-jpg.tar.gz"
    _tar(good, {"train/a.jpg": b"", "test/a.jpg": b""})
    (tmp_path / "cifar10-jpg.tar.gz.sha256").write_text("0" * 64 + "  cifar10-jpg.tar.gz\n")
    with pytest.raises(MinivisionError, match="sha256"):
        benchmark.unpack_once(good, tmp_path / "cache")


def _fake_conv(speeds: dict[str, list[float]], calls: list[str]):
    """A stand-in for ``conv_gflops``: the next of ``speeds[precision]`` on each call, in order."""
    left = {p: list(v) for p, v in speeds.items()}

    def measure(seconds: float, precision: str) -> float:
        calls.append(precision)
        return left[precision].pop(0)
    return measure


def test_bf16_speedup_alternates_and_takes_each_precisions_best_round():
    calls: list[str] = []
    # the first fp32 round runs slow (threads starting): the best of each precision counts
    measure = _fake_conv({"fp32": [100.0, 200.0], "bf16": [120.0, 110.0]}, calls)
    assert inference.bf16_speedup(rounds=2, measure=measure) == pytest.approx(0.6)
    assert calls == ["fp32", "bf16", "fp32", "bf16"]


@pytest.mark.parametrize(("fp32", "bf16", "picked"), [(222.0, 128.0, "fp32"),   # slower in bf16: fp32
                                                      (200.0, 200.0, "fp32"),   # a tie: fp32 (bf16 costs accuracy)
                                                      (300.0, 750.0, "bf16")])  # faster in bf16: bf16
def test_auto_precision_trains_in_bf16_only_where_it_measured_faster(monkeypatch, fp32, bf16, picked):
    monkeypatch.setattr(inference, "_CPU_BF16", {})
    monkeypatch.setattr(inference, "cpu_supports_bf16", lambda: True)
    calls: list[str] = []
    monkeypatch.setattr(benchmark, "conv_gflops", _fake_conv({"fp32": [fp32] * 2, "bf16": [bf16] * 2}, calls))
    cpu = torch.device("cpu")
    assert inference.pick_precision("auto", cpu) == picked
    assert inference.pick_precision("fp32", cpu) == "fp32" and inference.pick_precision("bf16", cpu) == "bf16"
    assert len(calls) == 4  # measured once; the explicit choices measure nothing


def test_the_bf16_measurement_is_kept_per_machine_in_the_cache(monkeypatch, _isolated_cache):
    monkeypatch.setattr(inference, "_CPU_BF16", {})
    monkeypatch.setattr(inference, "cpu_supports_bf16", lambda: True)
    calls: list[str] = []
    monkeypatch.setattr(benchmark, "conv_gflops", _fake_conv({"fp32": [100.0] * 4, "bf16": [250.0] * 4}, calls))
    assert inference.pick_precision("auto", torch.device("cpu")) == "bf16" and len(calls) == 4
    stored = json.loads((_isolated_cache / "cpu-precision.json").read_text())
    assert list(stored["machines"].values()) == [{"bf16_speedup": 2.5}]
    monkeypatch.setattr(inference, "_CPU_BF16", {})  # a new process on the same machine reads the cache
    assert inference.cpu_bf16_speedup() == 2.5 and len(calls) == 4
    # an unreadable cache is measured again and rewritten, never an error
    (_isolated_cache / "cpu-precision.json").write_text("{not json")
    monkeypatch.setattr(inference, "_CPU_BF16", {})
    assert inference.cpu_bf16_speedup() == 2.5 and len(calls) == 8
    assert json.loads((_isolated_cache / "cpu-precision.json").read_text())["machines"]
