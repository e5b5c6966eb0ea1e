"""Data-parallel training: several processes, one model, gradients averaged after every step.

What a user runs:

  ``minivision train --nproc N ...``   N processes on this machine, started by PyTorch's elastic launcher
                                       (``torch.distributed.launcher.api.elastic_launch``, what ``torchrun``
                                       runs), rendezvous on 127.0.0.1 at a free port
  ``torchrun --nnodes M --nproc-per-node N --rdzv-backend c10d --rdzv-endpoint HOST:PORT -m minivision train ...``
                                       the same training over M machines (each runs that command)

Every process ("rank") loads the data into memory, builds the same model from the same seed and trains
on its own part of each step's batch: the epoch's permutation is drawn from (seed, epoch) by every rank
alike, and rank r takes the positions r, r + W, r + 2W, ... of each global batch (W: the world size),
the split ``torch.utils.data.DistributedSampler`` makes of a permutation. A step therefore sees the
same pictures as a one-process run with the same ``--batch-size``, which is the GLOBAL batch. Gradients
are averaged by ``torch.nn.parallel.DistributedDataParallel`` (each rank's loss weighted by its share
of the batch, so the average is the global batch's mean when the batch does not divide evenly). gloo
on CPU, NCCL on CUDA.

The learning rate is not rescaled: ``--batch-size`` is the global batch, so the same command with more
processes takes the same steps with the same learning rate. Raising the global batch k times is
another matter; the linear scaling rule (Goyal et al. 2017, "Accurate, Large Minibatch SGD: Training
ImageNet in 1 Hour", arXiv:1706.02677) then suggests k times the learning rate with a warm-up, and
minivision leaves that choice to the user (``--lr``).

Only rank 0 writes the run folder (args.yaml, checkpoints, history, model, report). Stopping is agreed:
a Ctrl-C, a SIGTERM or a listener's ``stop`` on any rank is summed over the ranks with the step's loss,
so every rank stops after the same step and rank 0 saves a checkpoint any world size can resume. When
a rank dies (killed, out of memory) the others' next collective fails; rank 0 then saves the state
after the last step every rank finished, and the launcher stops the rest.

Why our own code here: which ranks read which pictures, the agreement on stopping and the checkpoint
are the product's (its in-memory batches and resume promise); process start-up, rendezvous, restarts
on failure and the collectives are PyTorch's.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from .errors import MinivisionError

ENV_STARTED = "MINIVISION_STARTED_AT"  # launcher -> ranks: time.time() when the command started (a --budget)
ENV_RUN_FILE = "MINIVISION_RUN_FILE"   # launcher -> rank 0: write the run folder's path here
# a collective waits this long for a rank that is still working (rank 0 writing a checkpoint or a report
# while the others wait): generous, but a rank that hangs is noticed within it
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class World:
    """Where this process stands: ``rank`` of ``size`` processes in all, ``local_rank`` of ``local_size``
    on this machine (torchrun's RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE). ``World()`` is one
    process alone."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    backend: str | None = None

    @property
    def active(self) -> bool:
        """More than one process trains (collectives are needed)."""
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes files and speaks to the user."""
        return self.rank == 0


_WORLD = World()


def current() -> World:
    """The world ``setup`` joined (``World()`` outside a distributed run)."""
    return _WORLD


def in_worker() -> bool:
    """This process was started by torchrun or ``--nproc`` (torchrun's environment variables are set)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def threads_per_process(local_size: int) -> int:
    """CPU threads for each of ``local_size`` processes on this machine: the cores this process may use
    divided among them (at least 1), so N processes do not oversubscribe the cores."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, local_size))


def setup(device: str = "auto") -> World:
    """Join the process group when started by a launcher (else return ``World()``): gloo on CPU, NCCL when
    ``device`` (the ``--device`` setting) resolves to CUDA; on CUDA each process takes the GPU of its
    local rank. CPU threads: ``OMP_NUM_THREADS`` when set, else ``threads_per_process``. Idempotent."""
    global _WORLD
    if not in_worker():
        return World()
    import torch
    import torch.distributed as dist

    env = os.environ
    size, rank = int(env["WORLD_SIZE"]), int(env["RANK"])
    local_size = int(env.get("LOCAL_WORLD_SIZE", size))
    local_rank = int(env["LOCAL_RANK"])
    if "OMP_NUM_THREADS" not in env:
        torch.set_num_threads(threads_per_process(local_size))
    if size <= 1:
        _WORLD = World(rank, size, local_rank, local_size)
        return _WORLD
    if dist.is_initialized():
        return _WORLD
    cuda = device != "cpu" and torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise MinivisionError("--device cuda: no CUDA device is available")
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    try:
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    except (RuntimeError, ValueError) as e:
        raise MinivisionError(f"could not join the other training processes: {str(e).splitlines()[0]}") from None
    _WORLD = World(rank, size, local_rank, local_size, backend)
    return _WORLD


def teardown(wait: bool = False) -> None:
    """Leave the process group (after training; also after a lost rank). ``wait``: first a barrier, so no
    rank shuts its connections while another still uses them (never after a lost rank: it would wait for
    the collective timeout)."""
    global _WORLD
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if wait:
            with contextlib.suppress(RuntimeError):
                dist.barrier()
        try:
            dist.destroy_process_group()
        except RuntimeError:
            pass
    _WORLD = World(_WORLD.rank, _WORLD.size, _WORLD.local_rank, _WORLD.local_size)


def device_of(world: World, device: Any) -> Any:
    """The torch device this rank trains on: ``device`` (from ``inference.pick_device``), with the local
    rank's GPU index on CUDA."""
    import torch

    if world.active and device.type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return device


def is_lost_rank(error: BaseException) -> bool:
    """``error`` says a collective failed: another rank stopped (killed, crashed) or the network broke."""
    import torch.distributed as dist

    kinds = tuple(k for k in (getattr(dist, "DistError", None),) if k is not None)
    if kinds and isinstance(error, kinds):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(s in text for s in (
        "Connection closed by peer", "Connection reset by peer", "Broken pipe", "gloo", "NCCL", "Timed out"))


# ----------------------------------------------------------------------------- collectives the trainer uses

def all_reduce(values: Any, op: str = "sum") -> Any:
    """Sum (``op="sum"``), ``"min"`` or ``"max"`` of a tensor over the ranks, in place; returns it."""
    import torch.distributed as dist

    ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
    dist.all_reduce(values, op=ops[op])
    return values


def broadcast_json(value: Any, src: int = 0, device: Any = None) -> Any:
    """``value`` (JSON-able) as rank ``src`` has it, on every rank: the text as a uint8 tensor, never a
    pickle (``torch.distributed.broadcast_object_list`` unpickles what it receives)."""
    import torch
    import torch.distributed as dist

    world = current()
    if not world.active:
        return value
    data = json.dumps(value).encode() if world.rank == src else b""
    size = torch.tensor([len(data)], dtype=torch.int64, device=device)
    dist.broadcast(size, src)
    buf = (torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device) if world.rank == src
           else torch.empty(int(size.item()), dtype=torch.uint8, device=device))
    dist.broadcast(buf, src)
    return json.loads(bytes(buf.cpu().tolist()).decode()) if world.rank != src else value


def shard(batch: Any, world: World) -> Any:
    """Rank ``world.rank``'s part of a global batch (indices or pictures along dim 0): the positions
    rank, rank + size, ... (``DistributedSampler``'s split). Ranks' parts differ in size by at most one."""
    return batch[world.rank::world.size] if world.active else batch


def batches_per_epoch(n: int, batch_size: int, world_size: int = 1) -> int:
    """Steps in an epoch of ``n`` pictures at global batch ``batch_size``. One process: a lone last picture
    is dropped (batch norm needs two). W processes: the last, partial batch is kept only when each rank
    gets at least two of its pictures."""
    if world_size <= 1:
        return n // batch_size + (1 if n % batch_size >= 2 or n < batch_size else 0)
    return n // batch_size + (1 if n % batch_size >= 2 * world_size else 0)


def check_batch(batch_size: int, world: World) -> None:
    """A global batch must give every rank at least two pictures (batch norm in training mode needs two);
    raises MinivisionError naming the smallest that works."""
    if world.active:
        check_global_batch(batch_size, world.size)


def check_global_batch(batch_size: int, processes: int) -> None:
    """``check_batch`` for ``processes`` processes, before any starts (``--nproc`` with ``--batch-size``): one
    error line from the launching command instead of one from each process."""
    if processes > 1 and batch_size < 2 * processes:
        raise MinivisionError(f"--batch-size {batch_size} is the global batch, shared by {processes} processes: "
                              f"it must be at least {2 * processes} (2 pictures per process)")


def record(world: World, batch_size: int, lr: float | str) -> dict[str, Any] | None:
    """What args.yaml records of a data-parallel run (``distributed``): world size, machines, processes per
    machine, global and per-process batch, learning rate and the scaling rule; None for one process."""
    if not world.active:
        return None
    lo, hi = batch_size // world.size, -(-batch_size // world.size)
    return {"world_size": world.size, "nodes": max(1, world.size // world.local_size),
            "processes_per_node": world.local_size, "backend": world.backend, "global_batch": batch_size,
            "per_process_batch": lo if lo == hi else f"{lo}-{hi}", "lr": lr,
            "lr_scaling": "none: --batch-size is the global batch, the same for any number of processes"}


def note_run_dir(path: Path) -> None:
    """Rank 0 tells the ``--nproc`` launcher where the run folder is (for its messages)."""
    target = os.environ.get(ENV_RUN_FILE)
    if target and current().is_main:
        try:
            Path(target).write_text(str(path), encoding="utf-8")
        except OSError:
            pass


def started_at(default: float) -> float:
    """When the command started, on ``time.monotonic``'s scale: the ``--nproc`` launcher's start (a budget
    counts from the command, not from each process's start), else ``default``."""
    wall = os.environ.get(ENV_STARTED)
    if not wall or not in_worker():
        return default
    try:
        return time.monotonic() - max(0.0, time.time() - float(wall))
    except ValueError:
        return default


# ----------------------------------------------------------------------------- minivision train --nproc N

def launch(argv: Sequence[str], nproc: int, started_wall: float) -> int:
    """Run ``python -m minivision <argv>`` in ``nproc`` processes on this machine through PyTorch's elastic
    launcher (as ``torchrun --standalone --nproc-per-node N`` does: c10d rendezvous on 127.0.0.1, a free
    port, no restarts) and return the command's exit status. Rank 0's output is shown; the other ranks'
    goes to log files, whose last error line is printed when one of them fails. Each process gets
    ``threads_per_process(nproc)`` CPU threads unless ``OMP_NUM_THREADS`` is set."""
    import logging

    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, SignalException, Std
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # the launcher's own log lines (a signal received, a worker's exit code) speak to developers: we say what
    # happened in one line; each of its modules' loggers has its own level, so each is set
    for name in [n for n in logging.root.manager.loggerDict if n.startswith("torch.distributed")]:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    scratch = Path(tempfile.mkdtemp(prefix="minivision-nproc-"))
    run_file = scratch / "run_dir"
    env = {ENV_STARTED: repr(started_wall), ENV_RUN_FILE: str(run_file),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads_per_process(nproc)))}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    logs = DefaultLogsSpecs(log_dir=str(scratch / "logs"), redirects={r: Std.ALL for r in range(1, nproc)})
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"minivision-{uuid.uuid4().hex}",
                          rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", max_restarts=0, logs_specs=logs,
                          shutdown_timeout=120)  # rank 0 saves a checkpoint before it stops
    try:
        elastic_launch(config, sys.executable)("-m", "minivision", *argv)
        return 0
    except ChildFailedError as e:
        return _report_failure(e, run_file, scratch / "logs", nproc)
    except SignalException:
        return 130  # Ctrl-C: the ranks were stopped with it; rank 0 said how to resume
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(scratch, ignore_errors=True)


def _report_failure(error: Any, run_file: Path, log_dir: Path, nproc: int) -> int:
    """One line for the user when a rank failed (rank 0 printed its own error or resume hint already)."""
    import signal

    failures = dict(getattr(error, "failures", {}) or {})
    codes = {rank: f.exitcode for rank, f in failures.items()}
    stopped = (-signal.SIGTERM, -signal.SIGINT)  # what the launcher sends the others once one has failed
    if codes.get(0) == 2 or (codes.get(0) == 130 and all(c in (130, *stopped) for c in codes.values())):
        return codes[0]  # rank 0 said it: an error in the settings or data, or an interruption
    run = run_file.read_text(encoding="utf-8").strip() if run_file.is_file() else None
    # not those the launcher stopped, nor an interrupted one (130): they stopped because another failed
    causes = [r for r, c in codes.items() if c not in (130, *stopped)] or list(codes)
    # the first to fail (the launcher may kill the others later, when they outlive its grace period)
    worst = min(causes, key=lambda r: (getattr(failures[r], "timestamp", 0) or 0, r)) if causes else None
    if worst is None:
        what = "a training process failed"
    elif codes[worst] < 0:
        try:
            name = signal.Signals(-codes[worst]).name
        except ValueError:
            name = f"signal {-codes[worst]}"
        what = f"training process {worst} of {nproc} was stopped ({name})"
    else:
        said = _last_error_line(log_dir, worst)
        what = f"training process {worst} of {nproc} failed" + (f": {said}" if said
                                                                  else f" (exit status {codes[worst]})")
    hint = (f"; resume from the last checkpoint with `minivision train --resume {run} --nproc {nproc}`"
            if run and (Path(run) / "last.safetensors").is_file() else "")
    print(f"error: {what}{hint}", file=sys.stderr)
    return 1


def _last_error_line(log_dir: Path, rank: int) -> str | None:
    """The last ``error: ...`` line (or last line) rank ``rank`` wrote to its redirected stderr."""
    for path in sorted(log_dir.rglob("stderr.log")):
        if path.parent.name != str(rank):
            continue
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("error: ")]
        if errors:
            return errors[-1][len("error: "):]
        return lines[-1] if lines else None
    return None


def processes_wanted(given: int | None, resume: str | None) -> int:
    """How many processes ``minivision train`` runs: ``--nproc`` if given, else a resumed run's own
    (args.yaml), else 1."""
    if given is not None:
        return given
    if resume:
        from .runfiles import read_args

        try:
            return int(read_args(Path(resume)).nproc or 1)
        except MinivisionError:
            return 1  # fit says what is wrong with the folder
    return 1
