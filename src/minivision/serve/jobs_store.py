"""The training jobs' state on disk: one SQLite file (WAL), so a server restart loses nothing.

A job is a row; its pictures and run folders live in ``<state_dir>/models/<id>/``. Every change is
one short transaction (``BEGIN IMMEDIATE``), which also serialises two server processes sharing a
state folder. The schema version is SQLite's ``user_version``: a newer file is refused, never
silently rewritten.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
STATES = ("created", "uploading", "queued", "training", "trained", "failed")
_ID = re.compile(r"^[0-9a-f]{16}$")
_RUN = re.compile(r"^run\d*$")

_SCHEMA = (
    """CREATE TABLE jobs (
        id TEXT PRIMARY KEY,            -- secrets.token_hex(8), never derived from the name
        name TEXT NOT NULL,
        kind TEXT NOT NULL,             -- fashion | gray | rgb: how pictures are converted
        base_model TEXT NOT NULL,       -- auto, none, a backbone or a network (jobs_runner.start_flags)
        state TEXT NOT NULL,            -- one of STATES
        classes TEXT NOT NULL DEFAULT '[]',  -- JSON list of class names; position = folder number
        budget TEXT,                    -- the training budget asked for, e.g. "2m"
        epochs INTEGER,                 -- epochs asked for, or NULL
        run_dir TEXT,                   -- folder name (run, run2, ...) of the current/last training
        model_run TEXT,                 -- folder name of the last successful training: what predict serves
        resume INTEGER NOT NULL DEFAULT 0,    -- 1: when started, continue run_dir from its checkpoint
        attempts INTEGER NOT NULL DEFAULT 0,  -- automatic resumes of this training so far
        pid INTEGER,                    -- the training process, while one runs
        pid_start TEXT,                 -- its start time (boot id + clock ticks): a reused pid is not ours
        log_offset INTEGER,             -- where this attempt's output starts in train.log
        progress TEXT,                  -- JSON {epoch, epochs, step, total_steps, fraction, seconds} while training
        metrics TEXT,                   -- JSON, from the trained model's model.json
        error TEXT,                     -- one line, when failed
        queued_at REAL,                 -- queue order (resumed jobs go first)
        created TEXT NOT NULL,
        updated TEXT NOT NULL
    )""",
    "CREATE INDEX jobs_state ON jobs(state, queued_at)",
)
_JSON_COLUMNS = ("classes", "progress", "metrics")


class JobError(Exception):
    """A request that cannot be served, with its HTTP status; the message is one line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = " ".join(message.split())


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def finite(obj: Any) -> Any:
    """NaN and infinities -> None, recursively (strict JSON for browsers)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


class Store:
    """The jobs table. One connection guarded by a lock: every statement is tiny."""

    def __init__(self, state_dir: Path) -> None:
        self.root = Path(state_dir).absolute()
        (self.root / "models").mkdir(parents=True, exist_ok=True)
        self.path = self.root / "jobs.sqlite3"
        self._lock = threading.RLock()
        self._con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._con.row_factory = sqlite3.Row
        self._con.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a power cut may lose the last commit, never corrupt the file
        self._con.execute("PRAGMA synchronous=NORMAL")
        self._migrate()

    # -- plumbing

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._con.execute("BEGIN IMMEDIATE")
            try:
                yield self._con
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
            self._con.execute("COMMIT")

    def _migrate(self) -> None:
        with self.transaction() as con:
            version = con.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"{self.path}: written by a newer minivision (schema {version}, this one "
                                   f"reads {SCHEMA_VERSION}); upgrade minivision")
            if version < 1:
                for statement in _SCHEMA:
                    con.execute(statement)
            con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._con.close()

    @staticmethod
    def _row(row: sqlite3.Row | None) -> dict[str, Any] | None:
        if row is None:
            return None
        job = dict(row)
        for col in _JSON_COLUMNS:
            job[col] = json.loads(job[col]) if job[col] else ([] if col == "classes" else None)
        return job

    # -- paths

    def model_dir(self, job_id: str) -> Path:
        if not _ID.match(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        return self.root / "models" / job_id

    def run_path(self, job: dict[str, Any], column: str = "run_dir") -> Path | None:
        name = job.get(column)
        if not name or not _RUN.match(name):
            return None
        return self.model_dir(job["id"]) / name

    # -- reads

    def get(self, job_id: str) -> dict[str, Any] | None:
        if not isinstance(job_id, str) or not _ID.match(job_id):
            return None
        with self._lock:
            return self._row(self._con.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def all(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._con.execute("SELECT * FROM jobs ORDER BY created, id").fetchall()
        return [self._row(r) for r in rows]

    def in_state(self, *states: str) -> list[dict[str, Any]]:
        marks = ",".join("?" * len(states))
        with self._lock:
            rows = self._con.execute(f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY queued_at, created",
                                     states).fetchall()
        return [self._row(r) for r in rows]

    def next_queued(self) -> dict[str, Any] | None:
        with self._lock:
            row = self._con.execute("SELECT * FROM jobs WHERE state = 'queued' ORDER BY queued_at, created "
                                    "LIMIT 1").fetchone()
        return self._row(row)

    def queue_position(self, job: dict[str, Any]) -> int:
        """1 = next to start."""
        with self._lock:
            ahead = self._con.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued' AND (queued_at < ? OR "
                                      "(queued_at = ? AND created < ?))",
                                      (job["queued_at"], job["queued_at"], job["created"])).fetchone()[0]
        return int(ahead) + 1

    # -- writes

    def create(self, name: str, kind: str, base_model: str) -> dict[str, Any]:
        stamp = now_iso()
        with self.transaction() as con:
            while True:
                job_id = secrets.token_hex(8)
                if con.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
                    break
            con.execute("INSERT INTO jobs (id, name, kind, base_model, state, created, updated) "
                        "VALUES (?, ?, ?, ?, 'created', ?, ?)", (job_id, name, kind, base_model, stamp, stamp))
        self.model_dir(job_id).mkdir(parents=True, exist_ok=True)
        return self.get(job_id)  # type: ignore[return-value]

    def update(self, job_id: str, *, only_if: tuple[str, ...] | None = None, unless: tuple[str, ...] = (),
               **fields: Any) -> bool:
        """Set columns; with ``only_if``/``unless`` only when the state allows it. True if a row changed."""
        fields["updated"] = now_iso()
        for col in _JSON_COLUMNS:
            if col in fields and fields[col] is not None:
                fields[col] = json.dumps(finite(fields[col]), allow_nan=False)
        sets = ", ".join(f"{k} = ?" for k in fields)
        where, args = "id = ?", [job_id]
        if only_if:
            where += f" AND state IN ({','.join('?' * len(only_if))})"
            args += list(only_if)
        if unless:
            where += f" AND state NOT IN ({','.join('?' * len(unless))})"
            args += list(unless)
        with self.transaction() as con:
            cur = con.execute(f"UPDATE jobs SET {sets} WHERE {where}", [*fields.values(), *args])
            return cur.rowcount > 0

    def add_classes(self, job_id: str, names: list[str], max_classes: int,
                    refuse: tuple[str, ...] = ("queued", "training")) -> list[str]:
        """Append the names not known yet (in one transaction, so two uploads never get the same number)."""
        with self.transaction() as con:
            row = con.execute("SELECT classes, state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobError(404, f"no model with id {job_id}")
            if row["state"] in refuse:
                raise JobError(409, f"model {job_id} is {row['state']}; upload images after training ends")
            classes = json.loads(row["classes"])
            new = [n for n in dict.fromkeys(names) if n not in classes]
            if len(classes) + len(new) > max_classes:
                raise JobError(400, f"a model can have at most {max_classes} classes")
            if new:
                classes += new
                con.execute("UPDATE jobs SET classes = ?, updated = ? WHERE id = ?",
                            (json.dumps(classes), now_iso(), job_id))
            return classes
