"""The run store: one SQLite database (WAL) plus a folder per run.

Layout of a runs directory:

    runs.db                      runs, metrics, snapshots, controls, workers
    <run_id>/config.yaml         the validated config, as the run was started
    <run_id>/checkpoints/*.pt    torch.save'd state dicts ("final", periodic ones)
    <run_id>/error.txt           the traceback when a run failed
    workers.log                  stdout/stderr of the worker processes

Concurrency model: every call opens its own short-lived connection, so a `RunStore` can be
shared by threads (Streamlit) and processes (workers). WAL mode lets readers run while a worker
writes; writers take the lock up front (`BEGIN IMMEDIATE`) and wait up to `BUSY_TIMEOUT_S`.
A committed row survives a killed worker (synchronous=NORMAL only risks the last commits on
power loss, not on a process crash).

SQLite stores NaN as NULL, so a diverged loss reads back as NaN in `metrics()`.
"""
from __future__ import annotations

import json
import math
import os
import re
import secrets
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtl_core.sink import Control, MetricRow, row_replica

if TYPE_CHECKING:
    import pandas as pd

    from mtl_core.config import ExperimentConfig

RUN_STATUSES = ("queued", "running", "paused", "finished", "stopped", "diverged", "failed")
LIVE_STATUSES = ("queued", "running", "paused")
ACTIVE_STATUSES = ("running", "paused")  # a worker holds the run
TERMINAL_STATUSES = ("finished", "stopped", "diverged", "failed")
CONTROL_ACTIONS = ("stop", "pause", "resume")
METRIC_COLUMNS = ["id", "step", "epoch", "split", "task", "name", "value", "time", "replica"]

DB_NAME = "runs.db"
BUSY_TIMEOUT_S = 5.0
HEARTBEAT_EVERY_S = 2.0  # the sink refreshes heartbeat_at at least this often while polled

# Columns of `runs` that set_status may write besides status/message.
_RUN_FIELDS = ("step", "total_steps", "epoch", "device", "pid", "heartbeat_at", "started_at",
               "ended_at", "summary")
_READY: set[Path] = set()  # databases whose schema this process has already ensured
_CHECKPOINT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    config TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    ended_at REAL,
    step INTEGER NOT NULL DEFAULT 0,
    total_steps INTEGER NOT NULL DEFAULT 0,
    epoch REAL NOT NULL DEFAULT 0,
    message TEXT,
    device TEXT,
    pid INTEGER,
    heartbeat_at REAL,
    summary TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status, created_at);
CREATE TABLE IF NOT EXISTS metrics (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    epoch REAL NOT NULL,
    split TEXT NOT NULL,
    task TEXT NOT NULL,
    name TEXT NOT NULL,
    value REAL,
    time REAL NOT NULL,
    replica INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS metrics_run ON metrics (run_id, id);
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    time REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS snapshots_run ON snapshots (run_id, kind, step);
CREATE TABLE IF NOT EXISTS controls (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    action TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS controls_run ON controls (run_id, id);
CREATE TABLE IF NOT EXISTS workers (
    pid INTEGER PRIMARY KEY,
    started_at REAL NOT NULL,
    seen_at REAL NOT NULL,
    run_id TEXT
);
"""


def default_runs_dir() -> Path:
    """$MTL_RUNS_DIR, else ./runs (relative to the current directory)."""
    env = os.environ.get("MTL_RUNS_DIR")
    return Path(env).expanduser() if env else Path("runs")


@dataclass
class RunInfo:
    id: str
    name: str
    status: str
    config: dict[str, Any]
    created_at: float
    started_at: float | None
    ended_at: float | None
    step: int
    total_steps: int
    epoch: float
    message: str | None
    device: str | None
    pid: int | None
    heartbeat_at: float | None
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def is_live(self) -> bool:
        return self.status in LIVE_STATUSES

    @property
    def duration(self) -> float | None:
        """Seconds from start to end (or to now while the run is live); None if never started."""
        if self.started_at is None:
            return None
        end = self.ended_at if self.ended_at is not None else time.time()
        return max(0.0, end - self.started_at)

    @property
    def suite(self) -> str:
        return str(self.config.get("data", {}).get("suite", ""))

    @property
    def architecture(self) -> str:
        return str(self.config.get("model", {}).get("architecture", ""))

    @property
    def method(self) -> str:
        return str(self.config.get("weighting", {}).get("method", ""))


def _run_from_row(row: sqlite3.Row) -> RunInfo:
    return RunInfo(
        id=row["id"], name=row["name"], status=row["status"], config=json.loads(row["config"]),
        created_at=row["created_at"], started_at=row["started_at"], ended_at=row["ended_at"],
        step=row["step"], total_steps=row["total_steps"], epoch=row["epoch"],
        message=row["message"], device=row["device"], pid=row["pid"],
        heartbeat_at=row["heartbeat_at"], summary=json.loads(row["summary"] or "{}"),
    )


def _new_run_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


class RunStore:
    """SQLite in WAL mode at <runs_dir>/runs.db plus a folder per run. Cheap to construct."""

    def __init__(self, runs_dir: str | Path | None = None) -> None:
        self.runs_dir = Path(runs_dir) if runs_dir is not None else default_runs_dir()
        self.db_path = self.runs_dir / DB_NAME
        key = self.db_path.resolve()
        if key in _READY and self.db_path.exists():
            return  # schema already ensured by this process: keep construction cheap
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            # journal_mode is persistent in the file; setting it again is a no-op.
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
            columns = {row[1] for row in conn.execute("PRAGMA table_info(metrics)")}
            if "replica" not in columns:  # a store made before stacked runs
                conn.execute("ALTER TABLE metrics ADD COLUMN replica INTEGER NOT NULL DEFAULT 0")
        _READY.add(key)

    # -- connections ---------------------------------------------------------------------------

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A fresh connection per call: never shared across threads or processes."""
        conn = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA synchronous=NORMAL")
            yield conn
        finally:
            conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the lock at BEGIN, so it waits instead of failing
        half-way when another writer holds the database."""
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def journal_mode(self) -> str:
        with self._connect() as conn:
            return str(conn.execute("PRAGMA journal_mode").fetchone()[0])

    # -- runs ----------------------------------------------------------------------------------

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    def create_run(self, cfg: ExperimentConfig, status: str = "queued") -> str:
        """Record a run (cfg already validated) and write <run_dir>/config.yaml."""
        _check_status(status)
        config_json = json.dumps(cfg.to_dict())
        now = time.time()
        while True:
            run_id = _new_run_id()
            try:
                self.run_dir(run_id).mkdir(parents=True)
            except FileExistsError:
                continue  # same second and same random suffix: draw again
            break
        (self.run_dir(run_id) / "config.yaml").write_text(cfg.to_yaml())
        started = now if status in ACTIVE_STATUSES else None
        with self._write() as conn:
            conn.execute(
                "INSERT INTO runs (id, name, status, config, created_at, started_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, cfg.name, status, config_json, now, started),
            )
        return run_id

    def get_run(self, run_id: str) -> RunInfo:
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise KeyError(f"unknown run {run_id!r}")
        return _run_from_row(row)

    def list_runs(self, statuses: Iterable[str] | None = None) -> list[RunInfo]:
        """Runs, newest first; only those with one of `statuses` if given."""
        query, args = "SELECT * FROM runs", []
        if statuses is not None:
            wanted = list(statuses)
            for s in wanted:
                _check_status(s)
            query += f" WHERE status IN ({','.join('?' * len(wanted))})"
            args = wanted
        with self._connect() as conn:
            rows = conn.execute(query + " ORDER BY created_at DESC, rowid DESC", args).fetchall()
        return [_run_from_row(r) for r in rows]

    def set_status(self, run_id: str, status: str, message: str | None = None, *,
                   expect: Iterable[str] | None = None, **fields: Any) -> bool:
        """Set a run's status (and message, and any of the `runs` columns in `fields`).

        Entering running/paused sets started_at once; a terminal status sets ended_at and drops
        pending control requests. With `expect`, only a run currently in one of those statuses
        is changed (so a late writer cannot overwrite a terminal status). Returns whether the
        run was changed; KeyError if it does not exist.
        """
        _check_status(status)
        unknown = set(fields) - set(_RUN_FIELDS)
        if unknown:
            raise TypeError(f"set_status: unknown fields {sorted(unknown)}; "
                            f"allowed: {', '.join(_RUN_FIELDS)}")
        if "summary" in fields:
            fields["summary"] = json.dumps(fields["summary"] or {})
        now = time.time()
        sets = ["status = ?", "message = ?"]
        args: list[Any] = [status, message]
        for key, value in fields.items():
            sets.append(f"{key} = ?")
            args.append(value)
        if status in ACTIVE_STATUSES and "started_at" not in fields:
            sets.append("started_at = COALESCE(started_at, ?)")
            args.append(now)
        if status in TERMINAL_STATUSES and "ended_at" not in fields:
            sets.append("ended_at = ?")
            args.append(now)
        where, where_args = "id = ?", [run_id]
        if expect is not None:
            wanted = list(expect)
            where += f" AND status IN ({','.join('?' * len(wanted))})"
            where_args += wanted
        with self._write() as conn:
            changed = conn.execute(f"UPDATE runs SET {', '.join(sets)} WHERE {where}",
                                   args + where_args).rowcount == 1
            if not changed and conn.execute("SELECT 1 FROM runs WHERE id = ?",
                                            (run_id,)).fetchone() is None:
                raise KeyError(f"unknown run {run_id!r}")
            if changed and status in TERMINAL_STATUSES:
                conn.execute("DELETE FROM controls WHERE run_id = ?", (run_id,))
        return changed

    def claim_run(self, pid: int, run_id: str | None = None,
                  max_active: int | None = None) -> str | None:
        """Atomically turn a queued run into `running` for the worker `pid`.

        Without `run_id` the oldest queued run is taken, but only while fewer than `max_active`
        runs are running or paused (the concurrency limit is enforced here, at the one place
        every worker goes through). Returns the run id, or None if there is nothing to take.
        """
        now = time.time()
        if run_id is None and not self._has_queued():
            return None  # idle workers poll often: no write lock when there is nothing to take
        with self._write() as conn:
            if run_id is None:
                if max_active is not None:
                    active = conn.execute(
                        "SELECT COUNT(*) FROM runs WHERE status IN ('running', 'paused')"
                    ).fetchone()[0]
                    if active >= max_active:
                        return None
                row = conn.execute("SELECT id FROM runs WHERE status = 'queued' "
                                   "ORDER BY created_at, rowid LIMIT 1").fetchone()
                if row is None:
                    return None
                run_id = row["id"]
            changed = conn.execute(
                "UPDATE runs SET status = 'running', message = NULL, pid = ?, "
                "started_at = ?, heartbeat_at = ? WHERE id = ? AND status = 'queued'",
                (pid, now, now, run_id),
            ).rowcount
            if not changed:
                return None
            conn.execute("UPDATE workers SET run_id = ?, seen_at = ? WHERE pid = ?",
                         (run_id, now, pid))
        return run_id

    def _has_queued(self) -> bool:
        with self._connect() as conn:
            return conn.execute("SELECT 1 FROM runs WHERE status = 'queued' LIMIT 1"
                                ).fetchone() is not None

    def delete_run(self, run_id: str) -> None:
        """Remove a run's rows and folder. ValueError while the run is live (stop it first)."""
        import shutil

        with self._write() as conn:
            row = conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise KeyError(f"unknown run {run_id!r}")
            if row["status"] in LIVE_STATUSES:
                raise ValueError(f"run {run_id!r} is {row['status']}; stop it before deleting")
            for table in ("metrics", "snapshots", "controls"):
                conn.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
            conn.execute("DELETE FROM runs WHERE id = ?", (run_id,))
        shutil.rmtree(self.run_dir(run_id), ignore_errors=True)

    # -- metrics and snapshots -----------------------------------------------------------------

    def add_metrics(self, run_id: str, rows: Iterable[MetricRow]) -> None:
        now = time.time()
        # 6-element rows (replica 0) or 7 (the replica of a stacked run, see mtl_core.sink)
        batch = [(run_id, int(r[0]), float(r[1]), r[2], r[3], r[4], _real(r[5]), now,
                  row_replica(r)) for r in rows]
        if not batch:
            return
        with self._write() as conn:
            conn.executemany(
                "INSERT INTO metrics (run_id, step, epoch, split, task, name, value, time, "
                "replica) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", batch)

    def metrics(self, run_id: str, after_id: int = 0) -> pd.DataFrame:
        """Metric rows with id > after_id, in the order written (incremental polling)."""
        import pandas as pd

        with self._connect() as conn:
            rows = conn.execute(
                f"SELECT {', '.join(METRIC_COLUMNS)} FROM metrics "
                "WHERE run_id = ? AND id > ? ORDER BY id", (run_id, after_id)).fetchall()
        frame = pd.DataFrame([tuple(r) for r in rows], columns=METRIC_COLUMNS)
        # Fixed dtypes, also for an empty frame; NULL (a NaN written by the trainer) -> NaN.
        return frame.astype({"id": "int64", "step": "int64", "epoch": "float64",
                             "value": "float64", "time": "float64", "replica": "int64"})

    def add_snapshot(self, run_id: str, step: int, kind: str, payload: dict[str, Any]) -> None:
        with self._write() as conn:
            conn.execute("INSERT INTO snapshots (run_id, step, kind, payload, time) "
                         "VALUES (?, ?, ?, ?, ?)",
                         (run_id, int(step), kind, json.dumps(payload), time.time()))

    def snapshots(self, run_id: str, kind: str) -> list[tuple[int, dict[str, Any]]]:
        with self._connect() as conn:
            rows = conn.execute("SELECT step, payload FROM snapshots WHERE run_id = ? "
                                "AND kind = ? ORDER BY step, id", (run_id, kind)).fetchall()
        return [(r["step"], json.loads(r["payload"])) for r in rows]

    def latest_snapshot(self, run_id: str, kind: str) -> tuple[int, dict[str, Any]] | None:
        with self._connect() as conn:
            row = conn.execute("SELECT step, payload FROM snapshots WHERE run_id = ? "
                               "AND kind = ? ORDER BY step DESC, id DESC LIMIT 1",
                               (run_id, kind)).fetchone()
        return None if row is None else (row["step"], json.loads(row["payload"]))

    # -- control requests ----------------------------------------------------------------------

    def request_control(self, run_id: str, action: str) -> None:
        if action not in CONTROL_ACTIONS:
            raise ValueError(f"unknown control action {action!r}; "
                             f"use one of: {', '.join(CONTROL_ACTIONS)}")
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
                raise KeyError(f"unknown run {run_id!r}")
            conn.execute("INSERT INTO controls (run_id, action, created_at) VALUES (?, ?, ?)",
                         (run_id, action, time.time()))

    def pending_controls(self, run_id: str) -> list[str]:
        with self._connect() as conn:
            rows = conn.execute("SELECT action FROM controls WHERE run_id = ? ORDER BY id",
                                (run_id,)).fetchall()
        return [r["action"] for r in rows]

    def take_control(self, run_id: str) -> str | None:
        """Pop the oldest pending request (each is returned exactly once)."""
        with self._connect() as conn:
            # A plain read first: the common "nothing pending" case takes no write lock.
            row = conn.execute("SELECT id, action FROM controls WHERE run_id = ? "
                               "ORDER BY id LIMIT 1", (run_id,)).fetchone()
            if row is None:
                return None
            # Only the reader whose DELETE removed the row gets it.
            if conn.execute("DELETE FROM controls WHERE id = ?", (row["id"],)).rowcount == 1:
                return str(row["action"])
        return None

    # -- progress ------------------------------------------------------------------------------

    def set_progress(self, run_id: str, step: int, total_steps: int, epoch: float) -> None:
        with self._write() as conn:
            conn.execute("UPDATE runs SET step = ?, total_steps = ?, epoch = ?, "
                         "heartbeat_at = ? WHERE id = ?",
                         (int(step), int(total_steps), float(epoch), time.time(), run_id))

    def heartbeat(self, run_id: str) -> bool:
        """Refresh heartbeat_at; False when the run is no longer running/paused."""
        with self._write() as conn:
            return conn.execute("UPDATE runs SET heartbeat_at = ? WHERE id = ? "
                                "AND status IN ('running', 'paused')",
                                (time.time(), run_id)).rowcount == 1

    # -- workers (processes that claim queued runs; see mtl_core.jobs) ---------------------------

    def add_worker(self, pid: int, replace: bool = True) -> None:
        """Register a worker process as idle. The spawner registers with replace=False, so it
        never resets a row the worker itself may already have updated."""
        now = time.time()
        on_conflict = ("DO UPDATE SET started_at = excluded.started_at, "
                       "seen_at = excluded.seen_at, run_id = NULL") if replace else "DO NOTHING"
        with self._write() as conn:
            conn.execute("INSERT INTO workers (pid, started_at, seen_at) VALUES (?, ?, ?) "
                         f"ON CONFLICT (pid) {on_conflict}", (pid, now, now))

    def worker_seen(self, pid: int, run_id: str | None = None) -> None:
        with self._write() as conn:
            conn.execute("UPDATE workers SET seen_at = ?, run_id = ? WHERE pid = ?",
                         (time.time(), run_id, pid))

    def remove_worker(self, pid: int) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM workers WHERE pid = ?", (pid,))

    def workers(self) -> list[tuple[int, str | None, float]]:
        """(pid, run_id or None when idle, seen_at) of every registered worker."""
        with self._connect() as conn:
            rows = conn.execute("SELECT pid, run_id, seen_at FROM workers "
                                "ORDER BY started_at").fetchall()
        return [(r["pid"], r["run_id"], r["seen_at"]) for r in rows]

    # -- checkpoints ---------------------------------------------------------------------------

    def checkpoint_path(self, run_id: str, name: str) -> Path:
        if not _CHECKPOINT_NAME.match(name):
            raise ValueError(f"bad checkpoint name {name!r}: use letters, digits, '_', '.', '-'")
        return self.run_dir(run_id) / "checkpoints" / f"{name}.pt"

    def save_checkpoint(self, run_id: str, state: dict[str, Any], name: str) -> Path:
        """torch.save to a temporary file, then rename: a reader never sees half a file."""
        import torch

        path = self.checkpoint_path(run_id, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(state, tmp)
        os.replace(tmp, path)
        return path

    def checkpoints(self, run_id: str) -> list[str]:
        folder = self.run_dir(run_id) / "checkpoints"
        return sorted(p.stem for p in folder.glob("*.pt")) if folder.is_dir() else []

    def load_checkpoint(self, run_id: str, name: str = "final",
                        map_location: str = "cpu") -> dict[str, Any]:
        """Load with weights_only=True: tensors and plain containers only, never code."""
        import torch

        path = self.checkpoint_path(run_id, name)
        if not path.is_file():
            have = ", ".join(self.checkpoints(run_id)) or "none"
            raise FileNotFoundError(f"run {run_id!r} has no checkpoint {name!r} "
                                    f"(it has: {have})")
        return torch.load(path, map_location=map_location, weights_only=True)

    # -- the trainer's sink --------------------------------------------------------------------

    def sink(self, run_id: str) -> StoreSink:
        return StoreSink(self, run_id)


class StoreSink:
    """A `mtl_core.sink.Sink` that writes one run's output to the store.

    Metric rows arrive batched per call (one transaction each). Every progress call and, at
    most every HEARTBEAT_EVERY_S, a control poll refresh the heartbeat, so a paused run (which
    only polls) still shows its worker is alive. If the run stopped being live behind the
    trainer's back (marked failed, deleted) or the worker was told to end (`force_stop`),
    control() answers "stop" so the trainer winds down.
    """

    def __init__(self, store: RunStore, run_id: str) -> None:
        self.store = store
        self.run_id = run_id
        self.force_stop = False  # set by the worker's SIGTERM handler
        self._last_beat = 0.0

    def metrics(self, rows: list[MetricRow]) -> None:
        self.store.add_metrics(self.run_id, rows)

    def snapshot(self, step: int, kind: str, payload: dict[str, Any]) -> None:
        self.store.add_snapshot(self.run_id, step, kind, payload)

    def progress(self, step: int, total_steps: int, epoch: float) -> None:
        self.store.set_progress(self.run_id, step, total_steps, epoch)
        self._last_beat = time.monotonic()

    def status(self, status: str, message: str | None = None) -> None:
        # The trainer only toggles running/paused; terminal statuses belong to the worker.
        self.store.set_status(self.run_id, status, message, expect=ACTIVE_STATUSES)

    def control(self) -> Control | None:
        if self.force_stop:
            return "stop"
        if time.monotonic() - self._last_beat >= HEARTBEAT_EVERY_S:
            self._last_beat = time.monotonic()
            if not self.store.heartbeat(self.run_id):
                return "stop"
        return self.store.take_control(self.run_id)  # type: ignore[return-value]

    def checkpoint(self, state: dict[str, Any], name: str) -> None:
        self.store.save_checkpoint(self.run_id, state, name)


def _check_status(status: str) -> None:
    if status not in RUN_STATUSES:
        raise ValueError(f"unknown run status {status!r}; use one of: {', '.join(RUN_STATUSES)}")


def _real(value: Any) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value
