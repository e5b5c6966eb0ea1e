"""One training at a time, as a ``minivision train`` subprocess, watched from a background thread.

A subprocess, not a thread: a crash in training cannot take the server down, and the run folder
(checkpoints, report) is the CLI's own. Its output goes straight to ``train.log`` (a file, not a
pipe, so it keeps working if the server dies; its ``error:`` line is a failed job's reason), and
progress is read from the run folder's ``progress.json``, which the training writes itself
(``listeners.ProgressFile``). The user's class names go into the pictures' folder as ``classes.json``
before training, so model.json and the report name them from the start.

Restart rules (``Runner.start``, run by ``resume_jobs`` at server start):
  * ``training`` and its process is still alive (same pid *and* start time, so a reused pid is not
    mistaken for it): keep watching it, start nothing else;
  * ``training``, process gone, model.json written: it finished while the server was down -> trained;
  * ``training``, process gone, ``last.safetensors`` in the run folder: resumed first with
    ``minivision train --resume <run folder>``. This counts as an automatic resume, as a kill from
    outside does: after ``MAX_AUTO_RESUMES`` of them the job fails with the reason, so a training that
    takes the server down with it (out of memory, say) is not restarted for ever;
  * ``training``, process gone, no checkpoint: failed ("the server stopped before the first
    checkpoint; train again");
  * ``queued``: stays queued.
A clean server shutdown stops the training with SIGTERM (the CLI saves a checkpoint and exits 130)
and queues it to resume at the next start. A lock file makes one server process per state folder
the one that runs trainings; the others only serve.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from minivision.data.folder import CLASS_NAMES_FILE
from minivision.errors import MinivisionError
from minivision.fileio import read_json, write_json

from .jobs_images import class_counts, class_folder
from .jobs_store import Store

log = logging.getLogger("minivision.serve.jobs")

MAX_AUTO_RESUMES = 3          # a training killed from outside is resumed at most this often
STOP_WAIT_S = 30.0            # at shutdown, how long the training gets to write its checkpoint
POLL_S = 0.5
_HEADER = "\n=== minivision jobs: "  # starts each attempt's section of train.log


# ----------------------------------------------------------------------------- processes

def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_identity(pid: int | None) -> str | None:
    """A string that identifies a running process across pid reuse (boot id + start time), or None if
    no such process runs (a zombie counts as gone)."""
    if not pid:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        stat = ""
    if stat:
        fields = stat[stat.rfind(")") + 2:].split()
        if not fields or fields[0] in ("Z", "X"):
            return None
        return f"{_boot_id()}:{fields[19]}"
    try:  # no /proc (macOS): ps gives the start time
        out = subprocess.run(["ps", "-o", "lstart=", "-p", str(pid)], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return f"ps:{out.stdout.strip()}" if out.returncode == 0 and out.stdout.strip() else None


def _log_section(path: Path, offset: int | None) -> str:
    """This attempt's output (from ``offset``), at most its last 64 KB."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(offset or 0, size - 65536)
            f.seek(start)
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def read_run_progress(run: Path | None, started: float | None = None) -> dict[str, Any]:
    """What a client sees of a training: epoch/epochs, step/total_steps and fraction (0 to 1), from the
    run folder's progress.json (``listeners.ProgressFile``, written by the training itself), plus the
    seconds since this server started it. Before the first write: epoch 0."""
    from minivision.listeners import read_progress

    p = read_progress(run) if run is not None else None
    progress: dict[str, Any] = {"epoch": 0, "epochs": None, "fraction": 0.0}
    if p is not None:
        progress = {k: p.get(k) for k in ("epoch", "epochs", "step", "total_steps", "fraction")}
    if started:
        progress["seconds"] = round(time.time() - started, 1)
    return progress


def _error_line(text: str) -> str | None:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    if errors:
        return errors[-1].removeprefix("error:").strip()
    if any(ln.startswith("Traceback") for ln in lines):
        return f"training crashed: {lines[-1][:300]}"
    return None


def apply_class_names(run_dir: Path, classes: list[str]) -> tuple[dict[str, Any], bool]:
    """The run's model.json, and whether its classes had to be renamed: a run trained before the image
    folder carried classes.json names its classes by folder (000, 001, ...); those get the user's names."""
    path = run_dir / "model.json"
    meta = read_json(path)
    folders = [str(c) for c in meta["classes"]]
    if folders != [class_folder(i) for i in range(len(folders))] or folders == list(classes):
        return meta, False
    meta["classes"] = list(classes)
    meta["class_folders"] = folders
    write_json(path, meta)
    return meta, True


def rewrite_report(run_dir: Path, log_path: Path) -> None:
    """The report written at the end of training names the classes by folder (000, 001, ...): write it
    again, now that model.json has the user's names (scored on the validation split: uploads have no
    test split). A failure leaves the first report and is logged; the model is served either way."""
    try:
        with open(log_path, "ab") as out:
            done = subprocess.run([sys.executable, "-m", "minivision", "evaluate", str(run_dir), "--split", "val",
                                   "--report"], stdout=out, stderr=subprocess.STDOUT, timeout=600, check=False)
    except (OSError, subprocess.SubprocessError) as e:  # a timeout, no disk space for the log, ...
        log.warning("training jobs: %s: the report was not rewritten with the class names (%s)", run_dir, e)
        return
    if done.returncode != 0:
        log.warning("training jobs: %s: the report was not rewritten with the class names (exit code %s; see "
                    "train.log)", run_dir, done.returncode)


# ----------------------------------------------------------------------------- what a job starts from

#: ``base_model`` when the request names none: fine-tune from the best backbone for the upload.
AUTO = "auto"
#: ``base_model`` that trains from scratch (the network then chosen by the budget, as the CLI does).
SCRATCH = "none"
#: The backbone an ``auto`` job of kind ``fashion`` fine-tunes from: mvnet pretrained on Fashion-MNIST,
#: grey 28 x 28 like the preset's pictures, at the picture size the preset makes (no resizing, ~800
#: training pictures/s on 2 cores, where EfficientNet-Lite0 takes 98/s at 64 px). It has seen
#: Fashion-MNIST, so a job's score on Fashion-MNIST pictures is not a fair benchmark.
FASHION_BACKBONE = "mvnet-fashion"


def base_model_choices() -> list[str]:
    """What ``base_model`` may be: ``auto``, ``none``, a backbone (``minivision models --pretrained``)
    or a registered network (trained from scratch unless the training picks a backbone built on it).
    A name that is both (``efficientnet-lite0``) is listed once and means the backbone."""
    from minivision.models import list_models
    from minivision.pretrained import list_backbones

    return list(dict.fromkeys([AUTO, SCRATCH, *(b.name for b in list_backbones()), *list_models()]))


def start_flags(base_model: str, kind: str) -> list[str]:
    """``minivision train`` flags for a job's ``base_model`` and ``kind``:

    * ``auto``: kind ``fashion`` -> ``--pretrained mvnet-fashion`` (``FASHION_BACKBONE``); other kinds
      -> no flag: the training's automatic choice (``finetune.choose_backbone``: small uploads are
      fine-tuned from the best backbone that fits, larger ones trained from scratch);
    * ``none`` -> ``--pretrained none`` (from scratch);
    * a backbone's name -> ``--pretrained NAME`` (the network is the backbone's);
    * a registered network -> ``--model NAME`` (jobs made before backbones stored ``mvnet-t``).
    The training's plan line and model.json's ``pretrained`` entry say what was used and why."""
    if base_model == AUTO:
        return ["--pretrained", FASHION_BACKBONE] if kind == "fashion" else []
    if base_model == SCRATCH:
        return ["--pretrained", SCRATCH]
    from minivision.pretrained import list_backbones

    if base_model in {b.name for b in list_backbones()}:
        return ["--pretrained", base_model]
    return ["--model", base_model]


def started_from(run: Path | None) -> dict[str, Any] | None:
    """What a job's training started from, from its run's model.json: ``{"backbone": name | None,
    "from": path | None, "why": "..."}`` (``None`` backbone and path: from scratch); None before the
    training has written model.json."""
    if run is None:
        return None
    try:
        meta = read_json(run / "model.json")
    except (MinivisionError, OSError, ValueError):
        return None
    record = meta.get("pretrained") if isinstance(meta, dict) else None
    if not isinstance(record, dict):
        return {"backbone": None, "from": None, "why": "trained from scratch"}
    return {"backbone": record.get("backbone"), "from": record.get("from"), "why": record.get("why", "")}


def small_data_flags(base_model: str, n_images: int, epochs: int | None) -> list[str]:
    """Extra ``train`` flags for a job: only the user's epochs. A small upload is planned by the budget
    planner's small-data rule (``budget.plan_small_data``: batches of at most a quarter of the pictures,
    the step count from the measured speed), the one ``minivision train --budget`` uses on a folder."""
    return [] if epochs is None else ["--epochs", str(epochs)]


# ----------------------------------------------------------------------------- the runner

class Runner:
    """The background thread that starts queued trainings one at a time and watches them."""

    def __init__(self, store: Store, on_trained=None) -> None:
        self.store = store
        self.on_trained = on_trained or (lambda job_id: None)
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._mutex = threading.Lock()
        self._thread: threading.Thread | None = None
        self._lock_fd: int | None = None
        self._adopted: list[tuple[str, int, str]] = []  # (job id, pid, identity)
        self._lock_refused = False

    # -- life cycle

    def start(self) -> list[str]:
        """Recover the jobs a previous server left behind and start the thread (once). Returns notes."""
        with self._mutex:
            if self._thread is not None:
                return []
            if not self._take_lock():
                if self._lock_refused:
                    return []
                self._lock_refused = True
                return [f"another server process runs the trainings of {self.store.root}; this one only serves"]
            self._stop.clear()
            notes = self._recover()
            self._thread = threading.Thread(target=self._loop, name="minivision-jobs", daemon=True)
            self._thread.start()
            return notes

    def stop(self) -> None:
        """Stop the thread; a running training is stopped with a checkpoint and resumes at the next start."""
        with self._mutex:
            self._stop.set()
            self.wake.set()
            if self._thread is not None:
                self._thread.join(STOP_WAIT_S + 10)
                self._thread = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None

    def _take_lock(self) -> bool:
        import fcntl

        fd = os.open(self.store.root / "jobs.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    # -- recovery at start

    def _recover(self) -> list[str]:
        notes = []
        for job in self.store.in_state("training"):
            jid, run = job["id"], self.store.run_path(job)
            identity = process_identity(job["pid"])
            if identity is not None and identity == job["pid_start"]:
                self._adopted.append((jid, job["pid"], identity))
                notes.append(f"{jid}: training process {job['pid']} is still running; watching it")
            elif run is not None and (run / "model.json").is_file():
                self._succeed(job, run)
                notes.append(f"{jid}: finished while the server was down; trained")
            elif run is not None and (run / "last.safetensors").is_file():
                if job["attempts"] >= MAX_AUTO_RESUMES:  # e.g. a training that takes the server down with it
                    self._fail(jid, f"training was interrupted {job['attempts'] + 1} times before it finished "
                                    f"(the last time the server stopped while it ran); see GET /models/{jid}/log "
                                    "and train again")
                    notes.append(f"{jid}: failed (interrupted {job['attempts'] + 1} times)")
                    continue
                self.store.update(jid, state="queued", resume=1, attempts=job["attempts"] + 1, queued_at=0.0,
                                  pid=None, pid_start=None)
                notes.append(f"{jid}: resumes from its checkpoint in {run.name}")
            else:
                self._fail(jid, "the server stopped before the first checkpoint; train again")
                notes.append(f"{jid}: failed (the server stopped before the first checkpoint)")
        notes += [f"{job['id']}: still queued" for job in self.store.in_state("queued") if job["resume"] == 0]
        return notes

    # -- the loop

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self._adopted:
                    self._watch_adopted(*self._adopted.pop(0))
                    continue
                job = self.store.next_queued()
                if job is None:
                    self.wake.wait(2.0)  # also polls: another process may queue jobs in the same folder
                    self.wake.clear()
                    continue
                self._run(job)
            except Exception:  # a bug here must not end the thread silently: log it and go on
                log.exception("training jobs: unexpected error")
                self._stop.wait(5.0)

    def _command(self, job: dict[str, Any], model_dir: Path) -> tuple[list[str], Path]:
        # the user's class names travel with the pictures (the folder reader's classes.json), so the run's
        # model.json and report name them from the start
        write_json(model_dir / "images" / CLASS_NAMES_FILE,
                   {class_folder(i): name for i, name in enumerate(job["classes"])})
        run = self.store.run_path(job)
        base = [sys.executable, "-m", "minivision", "train"]
        if job["resume"] and run is not None and (run / "last.safetensors").is_file():
            return [*base, "--resume", str(run), "--json"], run
        n = 1
        while (model_dir / ("run" if n == 1 else f"run{n}")).exists():
            n += 1
        run = model_dir / ("run" if n == 1 else f"run{n}")
        cmd = [*base, "--data", str(model_dir / "images"), *start_flags(job["base_model"], job["kind"]),
               "--budget", job["budget"], "--out", str(model_dir), "--name", "run", "--json"]
        n_images = sum(class_counts(model_dir / "images", job["classes"]).values())
        return cmd + small_data_flags(job["base_model"], n_images, job["epochs"]), run

    def _run(self, job: dict[str, Any]) -> None:
        jid = job["id"]
        model_dir = self.store.model_dir(jid)
        try:
            cmd, run = self._command(job, model_dir)
        except Exception as e:  # e.g. a base model no longer in the registry: fail the job, not the loop
            self.store.update(jid, only_if=("queued",), state="failed", error=f"cannot start training: {e}"[:500])
            return
        started = time.time()
        if not self.store.update(jid, only_if=("queued",), state="training", run_dir=run.name, pid=None,
                                 pid_start=None, progress=read_run_progress(None, started), error=None):
            return  # no longer queued (taken by another process)
        log_path = model_dir / "train.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "MINIVISION_CACHE": str(self.store.root / "cache")}
        try:
            with open(log_path, "ab") as out:
                offset = out.seek(0, os.SEEK_END)
                out.write(f"{_HEADER}{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(cmd)}\n".encode())
                out.flush()
                # its own session: a Ctrl-C meant for the server does not reach it; shutdown sends SIGTERM
                child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=model_dir, env=env, start_new_session=True)
        except OSError as e:  # disk full, no such interpreter, ...
            self._fail(jid, f"cannot start training: {e.strerror or e}")
            return
        self.store.update(jid, pid=child.pid, pid_start=process_identity(child.pid), log_offset=offset)
        stopped = False
        while child.poll() is None:
            if self._stop.wait(POLL_S):
                stopped = True
                child.send_signal(signal.SIGTERM)  # the CLI checkpoints at the next step and exits 130
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(STOP_WAIT_S)
                break
            self._progress(jid, started)
        self._finish(jid, child.poll(), stopped)

    def _watch_adopted(self, jid: str, pid: int, identity: str) -> None:
        """A training started by a previous server: not our child, so poll it until it is gone."""
        job = self.store.get(jid)
        if job is None:
            return
        stopped = False
        while process_identity(pid) == identity:
            if self._stop.wait(POLL_S):
                stopped = True
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + STOP_WAIT_S
                while process_identity(pid) == identity and time.monotonic() < deadline:
                    time.sleep(0.2)
                break
            self._progress(jid, None)
        self._finish(jid, None, stopped, still_running=process_identity(pid) == identity)

    def _progress(self, jid: str, started: float | None) -> None:
        job = self.store.get(jid)
        progress = read_run_progress(self.store.run_path(job) if job is not None else None, started)
        if job is not None and progress != job["progress"]:
            self.store.update(jid, only_if=("training",), progress=progress)

    # -- outcomes

    def _finish(self, jid: str, returncode: int | None, stopped: bool, still_running: bool = False) -> None:
        """Decide what an ended training means. ``returncode`` None: not our child (adopted)."""
        job = self.store.get(jid)
        if job is None or still_running:
            return  # still running at shutdown: the next start adopts it
        run = self.store.run_path(job)
        text = _log_section(self.store.model_dir(jid) / "train.log", job["log_offset"])
        if run is not None and (run / "model.json").is_file():
            self._succeed(job, run)
            return
        checkpoint = run is not None and (run / "last.safetensors").is_file()
        if stopped:  # we stopped it (server shutdown): continue at the next start
            self.store.update(jid, state="queued", resume=int(checkpoint), queued_at=0.0, pid=None, pid_start=None)
            return
        error = _error_line(text)
        killed = returncode is None or returncode < 0 or returncode == 130
        if error is None and killed and checkpoint and job["attempts"] < MAX_AUTO_RESUMES:
            log.warning("training job %s was stopped from outside; resuming from its checkpoint", jid)
            self.store.update(jid, state="queued", resume=1, attempts=job["attempts"] + 1, queued_at=0.0,
                              pid=None, pid_start=None)
            return
        if error is None:
            how = f"exit code {returncode}" if returncode is not None and returncode >= 0 else "killed"
            if returncode is not None and returncode < 0:
                how = f"killed by {signal.Signals(-returncode).name}"
            error = f"training stopped without a model ({how}); see GET /models/{jid}/log"
        self._fail(jid, error)

    def _succeed(self, job: dict[str, Any], run: Path) -> None:
        try:
            meta, renamed = apply_class_names(run, job["classes"])
        except Exception as e:  # a damaged model.json: say so rather than serve it
            # the reason without the server's path (not given away to clients)
            why = str(e).removeprefix(f"{run / 'model.json'}: ") if isinstance(e, MinivisionError) else \
                "not a model description"
            log.error("training jobs: %s: %s/model.json is unreadable: %s", job["id"], run, e)
            self._fail(job["id"], f"training finished but its model.json is unreadable ({why}); train again")
            return
        if renamed:  # its report names the folders too
            rewrite_report(run, self.store.model_dir(job["id"]) / "train.log")
        self.store.update(job["id"], state="trained", model_run=run.name, metrics=meta.get("metrics") or {},
                          progress=None, error=None, pid=None, pid_start=None, resume=0, attempts=0)
        self.on_trained(job["id"])

    def _fail(self, jid: str, reason: str) -> None:
        self.store.update(jid, state="failed", error=" ".join(reason.split())[:500], progress=None, pid=None,
                          pid_start=None, resume=0)
