"""Data-parallel training on loopback: processes started by PyTorch's launcher (torchrun's module, or
``minivision train --nproc``), gloo on CPU, small data (a few hundred 28x28 pictures), the ``mlp``
network, one or two epochs. No test times anything.

What each test shows:
- two ranks end with the same weights, and those match a one-process run with the same global batch
  (the same pictures in every step; only the order in which the gradient sums are added differs);
- the sharding, batch and record rules (no processes: fast);
- ``minivision train --nproc 2``: a run folder written by rank 0 only, args.yaml's record;
- a rank killed mid-epoch: rank 0 saves the state after the last step every rank finished; the run
  resumes with ``--resume`` and ends with the weights of an uninterrupted run;
- two "machines" (two launchers, ``--nnodes 2``, c10d rendezvous on 127.0.0.1) finish a run.
All of them run in the fast suite (about 90 s together on 2 quiet cores): they are the promises of ``--nproc``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minivision import distributed
from minivision.distributed import World
from tests.conftest import synthetic_images, write_pixel_csv

# Same seed, same global batch: a two-process run and a one-process run see the same pictures in every
# step; the mean gradient is added up in another order (each rank's mean, then the mean of the two),
# which changes float32 results in their last bits (about 1e-7 relative a step). After 16 SGD steps at
# lr 0.01 the weights differ by far less than this; a wrong shard, a gradient summed instead of
# averaged, or a rank training on all the pictures moves them by 1e-3 or more.
WEIGHTS_ATOL = 1e-5

HELPER = '''
import json, os, signal, sys
from pathlib import Path

from safetensors.torch import save_file

from minivision.config import TrainConfig
from minivision.listeners import Listener
from minivision.train import fit

settings, out, kill_at = json.loads(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
rank = int(os.environ["RANK"])


class Weights(Listener):
    """Every rank's weights after the last epoch (after rank 0's batch-norm statistics were shared)."""

    def on_epoch_end(self, trainer, row):
        if trainer.epoch >= trainer.epochs:
            state = {k: v.detach().clone().contiguous() for k, v in trainer.model.state_dict().items()}
            save_file(state, str(out / f"rank{rank}.safetensors"))


class Kill(Listener):
    """Rank 1 dies (SIGKILL) after step ``kill_at``: a machine lost, not a clean stop."""

    def on_step_end(self, trainer):
        if rank == 1 and trainer.step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


fit(TrainConfig(**settings), listeners=[Weights(), Kill()], progress=False)
'''


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """``subprocess.run`` that stops a launcher with SIGTERM on a timeout (it then stops its workers, which
    run in their own sessions: a SIGKILL would leave them running). The timeout guards against a hang; it
    times nothing."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    try:
        out, err = proc.communicate(timeout=1800)
    except subprocess.TimeoutExpired:
        proc.terminate()
        out, err = proc.communicate(timeout=300)
        pytest.fail(f"{' '.join(cmd[:6])} ... did not finish: {err[-2000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MINIVISION_PRETRAINED": "none", **extra}
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture
def csv_data(tmp_path) -> tuple[Path, Path]:
    """320 training (256 after the validation split) and 80 test pictures of 4 learnable classes."""
    x, y = synthetic_images(400, classes=4)
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    write_pixel_csv(train, x[:320, 0], y[:320])
    write_pixel_csv(test, x[320:, 0], y[320:])
    return train, test


def _settings(csv_data, out: Path, **kw) -> dict:
    train, test = csv_data
    return {"data": str(train), "test_data": str(test), "model": "mlp", "epochs": 2, "batch_size": 32,
            "val_split": 0.2, "out": str(out), "pretrained": "none", **kw}


def _torchrun(tmp_path: Path, settings: dict, *, kill_at: int = 0, nproc: int = 2) -> subprocess.CompletedProcess:
    helper = tmp_path / "ddp_helper.py"
    helper.write_text(HELPER)
    weights = tmp_path / "weights"
    weights.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           str(helper), json.dumps(settings), str(weights), str(kill_at)]
    return _run(cmd, env=_env())


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _model(run: Path) -> dict[str, torch.Tensor]:
    return _weights(run / "model.safetensors")


def _one_run(root: Path) -> Path:
    runs = [p for p in root.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


# ----------------------------------------------------------------------------- fast

def test_two_ranks_agree_and_match_one_process_with_the_same_global_batch(tmp_path, csv_data):
    from minivision.config import TrainConfig
    from minivision.train import fit

    fp32 = {"precision": "fp32"}  # bf16 (the default on a CPU that has it) rounds each batch size its own way
    ddp = _torchrun(tmp_path, _settings(csv_data, tmp_path / "ddp", **fp32))
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    rank0, rank1 = _weights(tmp_path / "weights" / "rank0.safetensors"), _weights(tmp_path / "weights" /
                                                                                  "rank1.safetensors")
    assert rank0.keys() == rank1.keys()
    for k in rank0:
        assert torch.equal(rank0[k], rank1[k]), k  # DistributedDataParallel keeps the ranks identical

    run = _one_run(tmp_path / "ddp")  # only rank 0 made a folder
    one = fit(TrainConfig(**_settings(csv_data, tmp_path / "one", **fp32)), progress=False, log=lambda m: None)
    single = _model(one.run_dir)
    both = _model(run)
    worst = max(float((both[k].float() - single[k].float()).abs().max()) for k in single)
    assert worst < WEIGHTS_ATOL, worst
    # a check that can fail: one process with HALF the batch (what a rank alone computes) is far off
    half = fit(TrainConfig(**_settings(csv_data, tmp_path / "half", batch_size=16, **fp32)), progress=False,
               log=lambda m: None)
    off = max(float((_model(half.run_dir)[k] - single[k]).abs().max()) for k in single)
    assert off > 100 * WEIGHTS_ATOL

    import yaml

    args = yaml.safe_load((run / "args.yaml").read_text())
    assert args["nproc"] == 2 and args["batch_size"] == 32
    assert args["distributed"]["world_size"] == 2 and args["distributed"]["global_batch"] == 32
    assert args["distributed"]["per_process_batch"] == 16 and args["distributed"]["lr"] == pytest.approx(0.01)
    meta = json.loads((run / "model.json").read_text())
    assert meta["used"]["distributed"]["world_size"] == 2


def test_shards_batches_and_record_without_processes():
    perm = torch.randperm(100, generator=torch.Generator().manual_seed(0))
    batch = perm[:10]
    parts = [distributed.shard(batch, World(rank=r, size=3)) for r in range(3)]
    assert sorted(torch.cat(parts).tolist()) == sorted(batch.tolist())  # every picture once, none twice
    assert [len(p) for p in parts] == [4, 3, 3]
    assert torch.equal(distributed.shard(batch, World()), batch)
    # one process: the old rule (a lone last picture dropped); several: every rank gets two of the last batch
    assert distributed.batches_per_epoch(65, 32) == 2 and distributed.batches_per_epoch(66, 32) == 3
    assert distributed.batches_per_epoch(67, 32, 2) == 2 and distributed.batches_per_epoch(68, 32, 2) == 3
    with pytest.raises(Exception, match="--batch-size 3 is the global batch.*at least 4"):
        distributed.check_batch(3, World(rank=0, size=2))
    distributed.check_batch(4, World(rank=0, size=2))
    rec = distributed.record(World(rank=0, size=4, local_size=2, backend="gloo"), 30, 0.1)
    assert rec["nodes"] == 2 and rec["global_batch"] == 30 and rec["per_process_batch"] == "7-8"
    assert distributed.record(World(), 32, 0.1) is None
    assert distributed.threads_per_process(10_000) == 1


# ----------------------------------------------------------------------------- command, lost rank, 2 machines

def test_nproc_command_trains_with_rank_zero_writing(tmp_path, csv_data):
    train, test = csv_data
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "minivision", "train", "--data", str(train), "--test-data", str(test),
           "--model", "mlp", "--epochs", "1", "--batch-size", "32", "--val-split", "0.2", "--nproc", "2",
           "--out", str(out), "--json"]
    r = _run(cmd, env=_env(), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])  # rank 0 alone prints the result
    assert summary["test_n"] == 80
    run = _one_run(out)
    assert (run / "model.safetensors").is_file() and (run / "report.html").is_file()
    assert "Traceback" not in r.stderr
    # too small a global batch: one error line, no folder
    bad = _run(cmd[:-5] + ["--batch-size", "3", "--nproc", "2", "--out", str(tmp_path / "bad")], env=_env(),
               cwd=tmp_path)
    assert bad.returncode == 2, bad.stderr[-2000:]
    errors = [ln for ln in bad.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "at least 4" in errors[0] and "Traceback" not in bad.stderr


def test_a_killed_rank_stops_the_run_with_a_checkpoint_that_resumes_to_the_same_weights(tmp_path, csv_data):
    from minivision.runfiles import load_checkpoint

    (tmp_path / "a").mkdir()
    whole = _torchrun(tmp_path / "a", _settings(csv_data, tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-3000:]
    # 256 training pictures, global batch 32: 8 steps an epoch; rank 1 dies after step 11 (epoch 2)
    (tmp_path / "b").mkdir()
    killed = _torchrun(tmp_path / "b", _settings(csv_data, tmp_path / "killed"), kill_at=11)
    assert killed.returncode != 0
    run = _one_run(tmp_path / "killed")
    assert not (run / "model.json").exists()
    _, _, progress = load_checkpoint(run / "last.safetensors")
    assert progress["step"] == 11 and progress["epoch"] == 1  # the last step both ranks finished
    assert json.loads((run / "progress.json").read_text())["state"] == "interrupted"
    r = _run([sys.executable, "-m", "minivision", "train", "--resume", str(run)], env=_env(),
             cwd=tmp_path)  # two processes, as recorded in args.yaml
    assert r.returncode == 0, r.stderr[-3000:]
    resumed, uninterrupted = _model(run), _model(_one_run(tmp_path / "whole"))
    for k in uninterrupted:
        assert torch.equal(resumed[k], uninterrupted[k]), k


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_machines_on_loopback_finish_a_run(tmp_path, csv_data):
    train, test = csv_data
    port = _free_port()
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "minivision-test",
           "-m", "minivision", "train", "--data", str(train), "--test-data", str(test), "--model", "mlp",
           "--epochs", "1", "--batch-size", "32", "--val-split", "0.2", "--out", str(out)]
    nodes = [subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=tmp_path) for _ in range(2)]
    results = [n.communicate(timeout=1800) for n in nodes]
    for n, (_, err) in zip(nodes, results, strict=True):
        assert n.returncode == 0, err[-3000:]
    run = _one_run(out)
    import yaml

    args = yaml.safe_load((run / "args.yaml").read_text())
    assert args["distributed"]["world_size"] == 2 and args["distributed"]["nodes"] == 2
    assert (run / "model.safetensors").is_file()


def test_the_launcher_reports_a_failure_in_one_line(tmp_path, capsys):
    """Which process failed and how, once: rank 0's own error (exit 2) or interruption (130) is not repeated,
    the processes the launcher stopped after the first failure (SIGTERM) are not blamed, and a run folder
    with a checkpoint gets the resume command."""
    from types import SimpleNamespace

    def failed(**codes: int):  # the processes in the order they failed (ProcessFailure.timestamp)
        return SimpleNamespace(failures={int(k[1:]): SimpleNamespace(exitcode=v, timestamp=t)
                                         for t, (k, v) in enumerate(codes.items())})

    run = tmp_path / "runs" / "train"
    run.mkdir(parents=True)
    (run / "last.safetensors").write_bytes(b"")
    run_file = tmp_path / "run_dir"
    run_file.write_text(str(run))
    logs = tmp_path / "logs" / "attempt_0" / "1"
    logs.mkdir(parents=True)
    (logs / "stderr.log").write_text("error: no such file: x.csv\n")
    report = distributed._report_failure
    assert report(failed(r0=2, r1=-15), run_file, tmp_path / "logs", 2) == 2
    assert report(failed(r0=130, r1=-15), run_file, tmp_path / "logs", 2) == 130
    assert capsys.readouterr().err == ""
    assert report(failed(r1=-9, r0=130), run_file, tmp_path / "logs", 2) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: training process 1 of 2 was stopped (SIGKILL); resume from the last checkpoint with "
                   f"`minivision train --resume {run} --nproc 2`"]
    assert report(failed(r0=-15, r1=2), run_file, tmp_path / "logs", 2) == 1
    assert "training process 1 of 2 failed: no such file: x.csv" in capsys.readouterr().err
    # rank 1 killed first; rank 0, saving the checkpoint, outlived the launcher's grace period and was killed too
    assert report(failed(r1=-9, r0=-9), run_file, tmp_path / "logs", 2) == 1
    assert "training process 1 of 2 was stopped (SIGKILL)" in capsys.readouterr().err
