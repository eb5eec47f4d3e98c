"""The run store: a folder per run (the truth) plus `runs.db`, an SQLite index (WAL) of them.

Layout of a runs directory (layout version 2):

    runs.db                      the index: runs, metrics, snapshots (rebuilt from the folders
                                 whenever it is missing, corrupt or of an older layout), and the
                                 transient controls and workers tables
    limits.json                  class-wide quotas set by the teacher (mtl_core.owners.Limits)
    queued.stamp                 replaced (a new file) whenever runs are queued: idle workers
                                 watch it (a stat) to claim at once, between their index polls
    workers.log                  stdout/stderr of the worker processes
    <run_id>/run.json            {"layout": 2, "id", "name", "owner", "owner_name", "status",
                                 "config", "created_at", "started_at", "ended_at", "step",
                                 "total_steps", "epoch", "message", "device", "pid",
                                 "heartbeat_at", "summary"}: rewritten atomically (temp file +
                                 os.replace) after every change of the run's row
    <run_id>/config.yaml         the validated config, as the run was started
    <run_id>/metrics.jsonl       one JSON array per line, appended:
                                 [step, epoch, split, task, name, value|null, replica, time]
    <run_id>/snapshots.jsonl     one JSON object per line, appended:
                                 {"step", "kind", "payload", "time"}
    <run_id>/checkpoints/*.pt    torch.save'd state dicts ("final", periodic ones)
    <run_id>/error.txt           the traceback when a run failed

(Line formats and atomic writes: mtl_core.run_files. Claim order: mtl_core.fair_queue.)

A metric row's `id` is 1 + the byte offset of its line in metrics.jsonl (likewise snapshots):
stable across rebuilds, increasing in the order written, so incremental readers
(`metrics(run_id, after_id)`) keep working after the index is rebuilt. The index remembers per
run how many bytes of each .jsonl it holds (`metrics_offset`, `snapshots_offset`); a writer
appends its lines to the file first (one O_APPEND write), then, in one index transaction,
ingests everything past that offset and moves the offset (`add_many`: the files of several
runs, and their progress, in one transaction). A crash between the two, or an index
rebuilt meanwhile, loses nothing: the next ingest (by any writer, by a reader that finds the
file ahead of the index, or by a rebuild) picks the lines up, and never twice.

Concurrency model: every call opens its own short-lived connection, so a `RunStore` can be
shared by threads (Streamlit) and processes (workers); one idle read-only connection per index
and process (mtl_core.index_keeper) keeps their closes from checkpointing the WAL each time.
WAL mode lets readers run while a worker writes; writers take the lock up front
(`BEGIN IMMEDIATE`) and wait up to `BUSY_TIMEOUT_S`.
run.json is written while the index's write lock is held, so two writers never interleave.
Rebuilding the index takes an exclusive lock file (`.index.lock`), builds a new database beside
it and moves it into place; a process that finds the index broken waits for that lock and
retries. Controls and worker rows are transient and not kept across a rebuild.

A runs dir of the older layout (metrics and snapshots only in runs.db) is migrated on first
open: every run's rows are exported into its folder, the old database is kept as
`runs.db.v1-<time>.bak`, and the index is rebuilt. A corrupt index is kept as
`runs.db.corrupt-<time>`. `RunStore.recovered` (this process) and `recovery_note()` (any
process) say what happened, in one line.

SQLite stores NaN as NULL, so a diverged loss reads back as NaN in `metrics()`.
"""
from __future__ import annotations

import functools
import json
import math
import os
import re
import secrets
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from mtl_core.fair_queue import count_by_owner, fair_order, last_served, queued_rows
from mtl_core.index_keeper import keep_open
from mtl_core.owners import OPERATOR, OPERATOR_ID, Actor, Limits, check_limit, env_limits, require
from mtl_core.run_files import (
    append,
    file_lock,
    item_line,
    metric_item,
    metric_line,
    metric_row,
    snapshot_line,
    snapshot_row,
    write_bytes_atomic,
    write_json_atomic,
)
from mtl_core.sink import Control, MetricRow, SnapshotEntry

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
LAYOUT = 2  # PRAGMA user_version of the index; the older layout (0) kept metrics only here
RUN_JSON = "run.json"
METRICS_FILE = "metrics.jsonl"
SNAPSHOTS_FILE = "snapshots.jsonl"
LIMITS_FILE = "limits.json"
QUEUE_STAMP = "queued.stamp"
LOCK_FILE = ".index.lock"
BUSY_TIMEOUT_S = 5.0
HEARTBEAT_EVERY_S = 2.0  # the sink refreshes heartbeat_at at least this often while polled
READER_HEAL_AFTER_S = 1.0  # a reader ingests a .jsonl this long ahead of the index itself
MAX_RUN_NAME_CHARS = 100
RUN_JSON_EVERY_S = 1.0  # progress alone rewrites run.json at most this often

# Columns of `runs` that set_status may write besides status/message.
_RUN_FIELDS = ("step", "total_steps", "epoch", "device", "pid", "heartbeat_at", "started_at",
               "ended_at", "summary")
# Columns of `runs` mirrored in run.json (the offsets are the index's own bookkeeping).
_RUN_JSON_FIELDS = ("id", "name", "owner", "owner_name", "status", "config", "created_at",
                    "started_at", "ended_at", "step", "total_steps", "epoch", "message",
                    "device", "pid", "heartbeat_at", "summary")
_READY: set[Path] = set()  # indexes this process has already checked
_JSON_SAVED_AT: dict[Path, float] = {}  # run folder -> when this process last wrote run.json
_CHECKPOINT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_F = TypeVar("_F", bound=Callable[..., Any])
SnapshotItem = tuple[str, int, str, dict[str, Any]]  # (run_id, step, kind, payload)

_SCHEMA = f"""
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
    summary TEXT NOT NULL DEFAULT '{{}}',
    owner TEXT NOT NULL DEFAULT '{OPERATOR_ID}',
    owner_name TEXT,
    metrics_offset INTEGER NOT NULL DEFAULT 0,
    snapshots_offset INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status, created_at);
CREATE INDEX IF NOT EXISTS runs_owner ON runs (owner, status);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL,
    id INTEGER NOT NULL,
    step INTEGER NOT NULL,
    epoch REAL NOT NULL,
    split TEXT NOT NULL,
    task TEXT NOT NULL,
    name TEXT NOT NULL,
    value REAL,
    replica INTEGER NOT NULL DEFAULT 0,
    time REAL NOT NULL,
    PRIMARY KEY (run_id, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snapshots (
    run_id TEXT NOT NULL,
    id INTEGER NOT NULL,
    step INTEGER NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    time REAL NOT NULL,
    PRIMARY KEY (run_id, id)
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
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
PRAGMA user_version = {LAYOUT};
"""


class QuotaError(ValueError):
    """A submit refused by a per-owner quota (the message says which and how to go on)."""


class IndexMissing(sqlite3.DatabaseError):
    """runs.db is not there (deleted): rebuild it from the run folders."""


def default_runs_dir() -> Path:
    """$MTL_RUNS_DIR, else ./runs (relative to the current directory)."""
    env = os.environ.get("MTL_RUNS_DIR")
    return Path(env).expanduser() if env else Path("runs")


def has_store(runs_dir: str | Path) -> bool:
    """Whether `runs_dir` holds a run store: its index, or run folders to rebuild it from."""
    path = Path(runs_dir)
    if (path / DB_NAME).is_file():
        return True
    return path.is_dir() and any((p / RUN_JSON).is_file() or (p / "config.yaml").is_file()
                                 for p in path.iterdir() if p.is_dir())


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
    owner: str = OPERATOR_ID
    owner_name: str | None = None

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
    def owner_label(self) -> str:
        return self.owner_name or self.owner

    @property
    def suite(self) -> str:
        return str(self.config.get("data", {}).get("suite", ""))

    @property
    def architecture(self) -> str:
        return str(self.config.get("model", {}).get("architecture", ""))

    @property
    def method(self) -> str:
        return str(self.config.get("weighting", {}).get("method", ""))


# claim_with's `carry`: (the run just claimed, a function giving the queued runs, oldest
# first) -> (the ids to claim with it, the message they get)
Carry = Callable[[RunInfo, Callable[[], list[RunInfo]]], tuple[list[str], str]]


@dataclass(frozen=True)
class QueuePlace:
    """Where a queued run stands: `position` (1 = next) among `queued`, `active` of
    `max_active` slots busy, and `owner_active` of the owner's `owner_cap` (0 = no cap)."""

    position: int
    queued: int
    active: int
    max_active: int | None
    owner_active: int
    owner_cap: int


def _run_from_row(row: sqlite3.Row) -> RunInfo:
    return RunInfo(
        id=row["id"], name=row["name"], status=row["status"], config=json.loads(row["config"]),
        created_at=row["created_at"], started_at=row["started_at"], ended_at=row["ended_at"],
        step=row["step"], total_steps=row["total_steps"], epoch=row["epoch"],
        message=row["message"], device=row["device"], pid=row["pid"],
        heartbeat_at=row["heartbeat_at"], summary=json.loads(row["summary"] or "{}"),
        owner=row["owner"], owner_name=row["owner_name"],
    )


def _new_run_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def _index_broken(exc: sqlite3.DatabaseError) -> bool:
    """Whether an sqlite error means the index is gone or damaged (not busy, not a bad query
    of ours): then it is rebuilt from the folders."""
    if isinstance(exc, IndexMissing):
        return True
    if isinstance(exc, (sqlite3.IntegrityError, sqlite3.ProgrammingError)):
        return False
    text = str(exc).lower()
    return any(s in text for s in ("no such table", "no such column", "not a database",
                                   "malformed", "disk i/o error", "database schema has changed"))


def _recovering(method: _F) -> _F:
    """Run a store method; if the index turns out missing or damaged, rebuild it from the run
    folders (once) and run the method again. Decorated methods must be safe to repeat: they
    touch only the index (file appends happen before, outside them)."""

    @functools.wraps(method)
    def wrapper(self: RunStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            if not _index_broken(exc):
                raise
            self._recover(str(exc))
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class RunStore:
    """A folder per run plus the SQLite index <runs_dir>/runs.db. Cheap to construct."""

    def __init__(self, runs_dir: str | Path | None = None) -> None:
        self.runs_dir = Path(runs_dir) if runs_dir is not None else default_runs_dir()
        self.db_path = self.runs_dir / DB_NAME
        self.recovered: str | None = None  # what this instance rebuilt, in one line
        key = self.db_path.resolve()
        if key in _READY and self.db_path.exists():
            return  # index already checked by this process: keep construction cheap
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        if self._probe() != "ok":
            self._recover("opening the store")
        _READY.add(key)

    # -- connections ---------------------------------------------------------------------------

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A fresh connection per call: never shared across threads or processes."""
        if not self.db_path.exists():  # sqlite would create an empty file: rebuild instead
            raise IndexMissing(f"{self.db_path} is missing")
        keep_open(self.db_path)  # so that closing this connection does not checkpoint
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

    @_recovering
    def journal_mode(self) -> str:
        with self._connect() as conn:
            return str(conn.execute("PRAGMA journal_mode").fetchone()[0])

    # -- the index: checks, rebuild, migration ---------------------------------------------------

    def _probe(self, thorough: bool = False) -> str:
        """"ok", "missing", "corrupt", "empty" (no runs table) or "old" (an older layout)."""
        if not self.db_path.exists():
            return "missing"
        try:
            conn = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            try:
                conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
                tables = {r[0] for r in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'")}
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if thorough and conn.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                    return "corrupt"
            finally:
                conn.close()
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc).lower():
                return "ok"  # busy, not broken: the caller's own retry will tell
            return "corrupt"
        except sqlite3.DatabaseError:
            return "corrupt"
        if "runs" not in tables:
            return "empty"
        return "old" if version < LAYOUT else "ok"

    def _recover(self, why: str) -> None:
        """Make the index usable again: migrate an older layout, set a corrupt file aside,
        rebuild from the folders. One process at a time; the others wait and find it done."""
        with file_lock(self.runs_dir / LOCK_FILE):
            state = self._probe(thorough=True)
            if state == "ok":
                return  # another process (or thread) repaired it while we waited
            stamp = time.strftime("%Y%m%d-%H%M%S")
            if state == "old":
                migrated = self._export_old_layout()
                kept = self.db_path.with_name(f"{DB_NAME}.v1-{stamp}.bak")
                self._set_aside(kept)
                what = (f"runs.db was of an older layout: moved {migrated} runs' metrics and "
                        f"snapshots into their folders (old file kept as {kept.name})")
            elif state == "corrupt":
                kept = self.db_path.with_name(f"{DB_NAME}.corrupt-{stamp}")
                self._set_aside(kept)
                what = f"runs.db was damaged (kept as {kept.name})"
            else:
                self._set_aside(None)
                if not self._run_folders():
                    self._rebuild()  # a new store: nothing was lost, nothing to say
                    return
                what = "runs.db was missing" if state == "missing" else "runs.db was empty"
            count = self._rebuild()
            message = f"{what}; the run index was rebuilt from {count} run folders."
            self._note(message)
            self.recovered = message

    def _set_aside(self, target: Path | None) -> None:
        """Move runs.db away (or delete it) with its -wal/-shm: a stale WAL must never be
        replayed into the new index."""
        for suffix in ("", "-wal", "-shm", "-journal"):
            path = Path(f"{self.db_path}{suffix}")
            if not path.exists():
                continue
            if target is not None and suffix in ("", "-wal"):
                os.replace(path, Path(f"{target}{suffix}"))
            else:
                path.unlink(missing_ok=True)

    def _run_folders(self) -> list[Path]:
        if not self.runs_dir.is_dir():
            return []
        return sorted(p for p in self.runs_dir.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and _RUN_ID.match(p.name)
                      and ((p / RUN_JSON).is_file() or (p / "config.yaml").is_file()))

    def _rebuild(self) -> int:
        """Build a fresh index from every run folder beside runs.db, then move it in place."""
        tmp = self.runs_dir / f".{DB_NAME}.rebuild-{os.getpid()}"
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{tmp}{suffix}").unlink(missing_ok=True)
        conn = sqlite3.connect(tmp, isolation_level=None)
        count = 0
        try:
            conn.row_factory = sqlite3.Row
            conn.executescript(_SCHEMA)
            conn.execute("BEGIN")
            for folder in self._run_folders():
                doc = self._read_run_json(folder)
                if doc is None:
                    continue
                cols = [c for c in _RUN_JSON_FIELDS if c in doc]
                conn.execute(f"INSERT OR REPLACE INTO runs ({', '.join(cols)}) "
                             f"VALUES ({', '.join('?' * len(cols))})",
                             [_to_column(c, doc[c]) for c in cols])
                for kind in ("metrics", "snapshots"):
                    self._ingest(conn, folder.name, kind)
                count += 1
            conn.execute("COMMIT")
            conn.execute("PRAGMA journal_mode=WAL")
        finally:
            conn.close()
        os.replace(tmp, self.db_path)
        return count

    def _read_run_json(self, folder: Path) -> dict[str, Any] | None:
        """A folder's run.json; for a folder with only config.yaml (an older layout whose
        index is lost), a row saying so. None when neither can be read."""
        try:
            doc = json.loads((folder / RUN_JSON).read_text())
            if isinstance(doc, dict) and doc.get("id") == folder.name:
                return doc
        except (OSError, ValueError):
            pass
        try:
            import yaml

            config = yaml.safe_load((folder / "config.yaml").read_text())
        except (OSError, ValueError, ImportError):
            return None
        if not isinstance(config, dict):
            return None
        return {"id": folder.name, "name": str(config.get("name", folder.name)),
                "status": "stopped", "config": config,
                "created_at": folder.stat().st_mtime, "owner": OPERATOR_ID,
                "message": "recovered from its folder; its final status was not recorded"}

    def _export_old_layout(self) -> int:
        """Write every run of an older-layout runs.db into its folder (run.json, metrics.jsonl,
        snapshots.jsonl; existing files are kept). Returns the number of runs."""
        conn = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT_S)
        conn.row_factory = sqlite3.Row
        try:
            names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            count = 0
            for row in conn.execute("SELECT * FROM runs ORDER BY created_at, rowid").fetchall():
                run_id = row["id"]
                folder = self.run_dir(run_id)
                folder.mkdir(parents=True, exist_ok=True)
                keys = row.keys()
                if "metrics" in names and not (folder / METRICS_FILE).exists():
                    has_replica = "replica" in {c[1] for c in conn.execute(
                        "PRAGMA table_info(metrics)")}
                    rep = "replica" if has_replica else "0"
                    lines = [metric_line(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7])
                             for r in conn.execute(
                                 f"SELECT step, epoch, split, task, name, value, {rep}, time "
                                 "FROM metrics WHERE run_id = ? ORDER BY id", (run_id,))]
                    write_bytes_atomic(folder / METRICS_FILE, b"".join(lines))
                if "snapshots" in names and not (folder / SNAPSHOTS_FILE).exists():
                    lines = [snapshot_line(r[0], r[1], json.loads(r[2]), r[3])
                             for r in conn.execute(
                                 "SELECT step, kind, payload, time FROM snapshots "
                                 "WHERE run_id = ? ORDER BY id", (run_id,))]
                    write_bytes_atomic(folder / SNAPSHOTS_FILE, b"".join(lines))
                if not (folder / "config.yaml").exists():
                    import yaml

                    (folder / "config.yaml").write_text(
                        yaml.safe_dump(json.loads(row["config"]), sort_keys=False))
                if not (folder / RUN_JSON).exists():
                    doc = {c: row[c] for c in _RUN_JSON_FIELDS if c in keys}
                    doc.setdefault("owner", OPERATOR_ID)
                    doc["config"] = json.loads(row["config"])
                    doc["summary"] = json.loads(row["summary"] or "{}")
                    write_json_atomic(folder / RUN_JSON, {"layout": LAYOUT, **doc})
                count += 1
        finally:
            conn.close()
        return count

    def _note(self, message: str) -> None:
        with self._write() as conn:
            conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                             [("recovered", message), ("recovered_at", repr(time.time()))])

    @_recovering
    def recovery_note(self) -> tuple[float, str] | None:
        """(when, what) of the last rebuild of the index, by any process; None if never."""
        with self._connect() as conn:
            rows = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        if "recovered" not in rows:
            return None
        return float(rows.get("recovered_at", "0")), str(rows["recovered"])

    def _ingest(self, conn: sqlite3.Connection, run_id: str, kind: str) -> None:
        """Index the complete lines of <run>/<kind>.jsonl past the offset the index holds."""
        row = conn.execute(f"SELECT {kind}_offset FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            return
        offset = int(row[0])
        path = self.run_dir(run_id) / f"{kind}.jsonl"
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next ingest
        if end == 0:
            return
        batch, pos = [], offset
        for line in data[:end].splitlines(keepends=True):
            line_id, pos = pos + 1, pos + len(line)
            try:
                item = json.loads(line)
                batch.append(metric_row(run_id, line_id, item) if kind == "metrics"
                             else snapshot_row(run_id, line_id, item, line))
            except (ValueError, TypeError, KeyError, IndexError):
                continue  # a damaged line (e.g. cut by a crash) is skipped, not fatal
        _insert_rows(conn, run_id, kind, batch, offset + end)

    def _index_appended(self, conn: sqlite3.Connection, run_id: str, kind: str,
                        done: _Appended) -> bool:
        """Index lines appended at [done.start, done.end) if the index holds the file exactly
        up to done.start; False (nothing done) otherwise."""
        row = conn.execute(f"SELECT {kind}_offset FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None or int(row[0]) != done.start:
            return False
        batch, pos = [], done.start
        for line, rest in done.items:
            batch.append((run_id, pos + 1, *rest))  # a line's id: 1 + its byte offset
            pos += len(line)
        _insert_rows(conn, run_id, kind, batch, done.end)
        return True

    def _sync(self, run_id: str, kind: str) -> None:
        self._sync_all([(run_id, kind)])

    @_recovering
    def _sync_all(self, files: list[tuple[str, str]],
                  progress: Mapping[str, tuple[int, int, float]] | None = None,
                  appended: Mapping[tuple[str, str], _Appended] | None = None) -> None:
        """Ingest the (run_id, "metrics" | "snapshots") files and set the runs' progress, in
        one transaction. A file this writer has just appended to (`appended`) whose index
        offset is where its lines start gets their rows as they are, without reading and
        parsing them back (a stacked sweep's evaluation: ~3 MB of JSON); any other file, or
        one where lines of another writer or an earlier failed batch come first, is read
        from its offset, as always."""
        with self._write() as conn:
            for run_id, kind in files:
                done = appended.get((run_id, kind)) if appended else None
                if done is None or not self._index_appended(conn, run_id, kind, done):
                    self._ingest(conn, run_id, kind)
            for run_id, (step, total_steps, epoch) in (progress or {}).items():
                self._progress(conn, run_id, step, total_steps, epoch)

    def _heal(self, conn: sqlite3.Connection, run_id: str, kind: str) -> None:
        """A reader that finds a .jsonl settled ahead of the index (its writer died between
        append and ingest, or the index was rebuilt meanwhile) ingests it."""
        rows = conn.execute(f"SELECT {kind}_offset FROM runs WHERE id = ?",
                            (run_id,)).fetchall()  # fetchall: no statement left open
        if not rows:
            return
        row = rows[0]
        try:
            st = (self.run_dir(run_id) / f"{kind}.jsonl").stat()
        except FileNotFoundError:
            return
        if st.st_size > int(row[0]) and time.time() - st.st_mtime > READER_HEAL_AFTER_S:
            self._sync(run_id, kind)

    def _save_run_json(self, conn: sqlite3.Connection, run_id: str,
                       throttle: bool = False) -> None:
        """Mirror the run's row into <run>/run.json (called with the write lock held). With
        `throttle` (progress), at most every RUN_JSON_EVERY_S per run and process: the index has
        the latest step, and any change of status writes the file at once."""
        folder = self.run_dir(run_id)
        now = time.monotonic()
        if throttle and now - _JSON_SAVED_AT.get(folder, -math.inf) < RUN_JSON_EVERY_S:
            return
        row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None or not folder.is_dir():
            return
        _JSON_SAVED_AT[folder] = now
        doc: dict[str, Any] = {"layout": LAYOUT}
        for c in _RUN_JSON_FIELDS:
            doc[c] = row[c]
        doc["config"] = json.loads(row["config"])
        doc["summary"] = json.loads(row["summary"] or "{}")
        write_json_atomic(folder / RUN_JSON, doc)

    # -- runs ----------------------------------------------------------------------------------

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    def create_run(self, cfg: ExperimentConfig, status: str = "queued", *,
                   owner: Actor = OPERATOR) -> str:
        """Record a run (cfg already validated) owned by `owner`, with its folder. A queued run
        of a non-privileged owner counts against the per-owner queue quota (QuotaError)."""
        _check_status(status)
        if status == "queued":
            self.check_queue_room(owner)
        doc = self._new_run_folder(cfg, status, owner)
        self._index_new_run(doc)
        return doc["id"]

    def create_runs(self, cfgs: list[ExperimentConfig], *, owner: Actor = OPERATOR
                    ) -> list[str]:
        """Queue several runs (cfgs already validated) as one: every folder first, then one
        index transaction, so a worker sees all of them or none (a sweep's points, which the
        first worker to claim one stacks: mtl_core.stacked_sweep)."""
        self.check_queue_room(owner, len(cfgs))
        docs = [self._new_run_folder(cfg, "queued", owner) for cfg in cfgs]
        self._index_new_runs(docs)
        return [d["id"] for d in docs]

    def _new_run_folder(self, cfg: ExperimentConfig, status: str, owner: Actor
                        ) -> dict[str, Any]:
        """A new run's folder, complete; its run.json document."""
        config = cfg.to_dict()
        now = time.time()
        while True:
            run_id = _new_run_id()
            try:
                self.run_dir(run_id).mkdir(parents=True)
            except FileExistsError:
                continue  # same second and same random suffix: draw again
            break
        folder = self.run_dir(run_id)
        (folder / "config.yaml").write_text(cfg.to_yaml())
        started = now if status in ACTIVE_STATUSES else None
        doc = {"layout": LAYOUT, "id": run_id, "name": cfg.name, "owner": owner.id,
               "owner_name": owner.name or None, "status": status, "config": config,
               "created_at": now, "started_at": started, "ended_at": None, "step": 0,
               "total_steps": 0, "epoch": 0.0, "message": None, "device": None, "pid": None,
               "heartbeat_at": None, "summary": {}}
        write_json_atomic(folder / RUN_JSON, doc)  # the folder is complete before the index
        return doc

    def _index_new_run(self, doc: dict[str, Any]) -> None:
        self._index_new_runs([doc])

    @_recovering
    def _index_new_runs(self, docs: list[dict[str, Any]]) -> None:
        with self._write() as conn:
            for doc in docs:
                cols = [c for c in _RUN_JSON_FIELDS if c in doc]
                conn.execute(f"INSERT OR IGNORE INTO runs ({', '.join(cols)}) "
                             f"VALUES ({', '.join('?' * len(cols))})",
                             [_to_column(c, doc[c]) for c in cols])
        if any(doc["status"] == "queued" for doc in docs):
            self._stamp_queue()

    def _stamp_queue(self) -> None:
        """Tell idle workers that runs were queued (after the commit: they claim at once)."""
        try:
            write_bytes_atomic(self.runs_dir / QUEUE_STAMP, repr(time.time()).encode())
        except OSError:
            pass  # only a wake-up: the workers' own polls still find the runs

    def queue_stamp(self) -> tuple[int, int] | None:
        """Changes whenever runs are queued (a stat, no index read): (inode, mtime) of
        queued.stamp, None before the first queued run."""
        try:
            st = os.stat(self.runs_dir / QUEUE_STAMP)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns

    @_recovering
    def check_queue_room(self, owner: Actor, adding: int = 1) -> None:
        """QuotaError unless `owner` may queue `adding` more runs (the teacher and the operator
        always may)."""
        cap = self.limits().max_queued_per_owner
        if not cap or owner.privileged:
            return
        with self._connect() as conn:
            waiting = conn.execute("SELECT COUNT(*) FROM runs WHERE owner = ? AND "
                                   "status = 'queued'", (owner.id,)).fetchone()[0]
        if waiting + adding > cap:
            more = "" if adding == 1 else f" and these {adding} would make {waiting + adding}"
            raise QuotaError(
                f"you already have {waiting} run{'s' if waiting != 1 else ''} waiting in the "
                f"queue{more}; the class limit is {cap} per person (max_queued_per_owner). "
                "Wait for one to start, or stop one, then start again.")

    @_recovering
    def get_run(self, run_id: str) -> RunInfo:
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise KeyError(f"unknown run {run_id!r}")
        return _run_from_row(row)

    @_recovering
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

    @_recovering
    def set_status(self, run_id: str, status: str, message: str | None = None, *,
                   expect: Iterable[str] | None = None, **fields: Any) -> bool:
        """Set a run's status (and message, and any of the `runs` columns in `fields`).

        Entering running/paused sets started_at once; a terminal status sets ended_at and drops
        pending control requests. With `expect`, only a run currently in one of those statuses
        is changed (so a late writer cannot overwrite a terminal status). Returns whether the
        run was changed; KeyError if it does not exist.
        """
        update = _status_update(run_id, status, message, expect, fields)
        with self._write() as conn:
            return self._apply_status(conn, update)

    @_recovering
    def set_statuses(self, updates: Iterable[StatusUpdate]) -> list[bool]:
        """Several runs' `set_status`, each with its own status, message, `expect` and
        fields, in one transaction (a stacked sweep's points as it starts and as it ends);
        whether each run was changed. Every update is checked before anything is written
        (ValueError, TypeError: nothing changed); a run that does not exist is not changed
        (False), and the others still are."""
        checked = [_status_update(*u) for u in updates]
        with self._write() as conn:
            return [self._apply_status(conn, u, missing_ok=True) for u in checked]

    def _apply_status(self, conn: sqlite3.Connection, update: _StatusSQL,
                      missing_ok: bool = False) -> bool:
        run_id, status, sets, args, where, where_args = update
        changed = conn.execute(f"UPDATE runs SET {', '.join(sets)} WHERE {where}",
                               args + where_args).rowcount == 1
        if not changed and not missing_ok and conn.execute(
                "SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
            raise KeyError(f"unknown run {run_id!r}")
        if changed:
            if status in TERMINAL_STATUSES:
                conn.execute("DELETE FROM controls WHERE run_id = ?", (run_id,))
            self._save_run_json(conn, run_id)
        return changed

    @_recovering
    def rename_run(self, run_id: str, name: str, actor: Actor = OPERATOR) -> None:
        """Give a run a new display name (its config keeps the name it was started with)."""
        name = "".join(ch for ch in str(name) if ch.isprintable()).strip()
        if not name or len(name) > MAX_RUN_NAME_CHARS:
            raise ValueError(f"a run name must have 1 to {MAX_RUN_NAME_CHARS} characters "
                             f"(got {len(name)})")
        with self._write() as conn:
            self._owned(conn, run_id, actor, "rename")
            conn.execute("UPDATE runs SET name = ? WHERE id = ?", (name, run_id))
            self._save_run_json(conn, run_id)

    @_recovering
    def set_owner_name(self, owner: str, name: str | None) -> int:
        """Set the display name shown on every run of `owner`; the number of runs changed."""
        with self._write() as conn:
            ids = [r[0] for r in conn.execute(
                "SELECT id FROM runs WHERE owner = ? AND COALESCE(owner_name, '') != ?",
                (owner, name or "")).fetchall()]
            for run_id in ids:
                conn.execute("UPDATE runs SET owner_name = ? WHERE id = ?", (name, run_id))
                self._save_run_json(conn, run_id)
        return len(ids)

    def _owned(self, conn: sqlite3.Connection, run_id: str, actor: Actor,
               action: str) -> sqlite3.Row:
        """The run's row, once `actor` may `action` it (KeyError, PermissionError)."""
        row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise KeyError(f"unknown run {run_id!r}")
        require(actor, run_id, row["owner"], row["owner_name"], action)
        return row

    def check_actor(self, run_id: str, actor: Actor, action: str) -> RunInfo:
        """The run, after checking that `actor` may `action` it (KeyError, PermissionError)."""
        run = self.get_run(run_id)
        require(actor, run_id, run.owner, run.owner_name, action)
        return run

    def claim_run(self, pid: int, run_id: str | None = None,
                  max_active: int | None = None) -> str | None:
        """Atomically turn a queued run into `running` for the worker `pid`.

        Without `run_id` the next queued run in fair order is taken (`fair_order`: owners in
        turn, the one served least recently first; within an owner, oldest first; an owner at
        the per-owner active quota waits), but only while fewer than `max_active` runs are
        running or paused (the concurrency limit is enforced here, at the one place every
        worker goes through). Returns the run id, or None if there is nothing to take.
        """
        claimed = self.claim_with(pid, run_id, max_active)
        return None if claimed is None else claimed[0]

    @_recovering
    def claim_with(self, pid: int, run_id: str | None = None, max_active: int | None = None,
                   carry: Carry | None = None) -> tuple[str, list[str]] | None:
        """`claim_run`, and in the same transaction the queued runs that `carry(run, queued)`
        picks to train with it (a stacked sweep's points: mtl_core.stacked_sweep), each
        `running` for `pid` with the message it gives: (run id, the ids carried with it).
        One transaction, so two idle workers woken by the same submit cannot split a sweep
        between them."""
        now = time.time()
        if run_id is None and not self._has_queued():
            return None  # idle workers poll often: no write lock when there is nothing to take
        with self._write() as conn:
            if run_id is None:
                active = count_by_owner(conn, ACTIVE_STATUSES)
                if max_active is not None and sum(active.values()) >= max_active:
                    return None
                order = fair_order(queued_rows(conn), last_served(conn), active,
                                   self._owner_cap())
                if not order or order[0][1]:
                    return None  # everyone waiting is at their owner's active quota
                run_id = order[0][0]
            changed = conn.execute(
                "UPDATE runs SET status = 'running', message = NULL, pid = ?, "
                "started_at = ?, heartbeat_at = ? WHERE id = ? AND status = 'queued'",
                (pid, now, now, run_id),
            ).rowcount
            if not changed:
                return None
            conn.execute("UPDATE workers SET run_id = ?, seen_at = ? WHERE pid = ?",
                         (run_id, now, pid))
            self._save_run_json(conn, run_id)
            carried: list[str] = []
            if carry is not None:
                run = _run_from_row(conn.execute("SELECT * FROM runs WHERE id = ?",
                                                 (run_id,)).fetchone())

                def queued() -> list[RunInfo]:
                    return [_run_from_row(r) for r in conn.execute(
                        "SELECT * FROM runs WHERE status = 'queued' "
                        "ORDER BY created_at, rowid").fetchall()]

                try:
                    wanted, message = carry(run, queued)
                except Exception:  # noqa: BLE001 - e.g. an odd config: the run trains alone
                    wanted, message = [], ""
                carried = self._claim_each(conn, pid, wanted, message, now)
        return run_id, carried

    @_recovering
    def claim_runs(self, pid: int, run_ids: Iterable[str], message: str) -> list[str]:
        """Turn those of `run_ids` still queued into `running` for worker `pid` with
        `message`, in one transaction (a stacked sweep's carrier takes its points at once,
        mtl_core.stacked_sweep); the ids it took, in order."""
        with self._write() as conn:
            return self._claim_each(conn, pid, run_ids, message, time.time())

    def _claim_each(self, conn: sqlite3.Connection, pid: int, run_ids: Iterable[str],
                    message: str, now: float) -> list[str]:
        taken = []
        for run_id in run_ids:
            if conn.execute(
                    "UPDATE runs SET status = 'running', message = ?, pid = ?, "
                    "started_at = ?, heartbeat_at = ? WHERE id = ? AND status = 'queued'",
                    (message, pid, now, now, run_id)).rowcount:
                taken.append(run_id)
        for run_id in taken:
            self._save_run_json(conn, run_id)
        return taken

    @_recovering
    def queue_place(self, run_id: str, max_active: int | None = None) -> QueuePlace | None:
        """Where a queued run stands in the fair order; None if it is not queued."""
        with self._connect() as conn:
            row = conn.execute("SELECT owner FROM runs WHERE id = ? AND status = 'queued'",
                               (run_id,)).fetchone()
            if row is None:
                return None
            active = count_by_owner(conn, ACTIVE_STATUSES)
            queued = queued_rows(conn)
            served = last_served(conn)
        cap = self._owner_cap()
        order = [rid for rid, _ in fair_order(queued, served, active, cap)]
        owner = row["owner"]
        return QueuePlace(position=order.index(run_id) + 1, queued=len(order),
                          active=sum(active.values()), max_active=max_active,
                          owner_active=active.get(owner, 0),
                          owner_cap=0 if owner == OPERATOR_ID else cap)

    @_recovering
    def _has_queued(self) -> bool:
        with self._connect() as conn:
            return conn.execute("SELECT 1 FROM runs WHERE status = 'queued' LIMIT 1"
                                ).fetchone() is not None

    @_recovering
    def delete_run(self, run_id: str, actor: Actor = OPERATOR) -> None:
        """Remove a run's rows and folder. ValueError while the run is live (stop it first),
        PermissionError unless `actor` owns it or is the teacher/operator."""
        with self._write() as conn:
            row = self._owned(conn, run_id, actor, "delete")
            if row["status"] in LIVE_STATUSES:
                raise ValueError(f"run {run_id!r} is {row['status']}; stop it before deleting")
            for table in ("metrics", "snapshots", "controls"):
                conn.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
            conn.execute("DELETE FROM runs WHERE id = ?", (run_id,))
            # Renamed (one atomic step) before it is removed: a rebuild never resurrects half a
            # folder. Last in the transaction: if the rename fails, the rows stay too.
            folder = self.run_dir(run_id)
            trash = self.runs_dir / f".trash-{run_id}-{os.getpid()}"
            if folder.exists():
                os.replace(folder, trash)
        shutil.rmtree(trash, ignore_errors=True)

    # -- quotas --------------------------------------------------------------------------------

    def limits(self) -> Limits:
        """The class-wide quotas: limits.json (set by the teacher) over the env defaults."""
        base = env_limits()
        try:
            doc = json.loads((self.runs_dir / LIMITS_FILE).read_text())
        except (OSError, ValueError):
            return base
        values = base.to_dict()
        if isinstance(doc, Mapping):
            for key in values:
                try:
                    values[key] = check_limit(key, doc.get(key, values[key]))
                except ValueError:
                    pass  # a hand-edited bad value falls back to the default
        return Limits(**values)

    def _owner_cap(self) -> int:
        """The per-owner active cap for claiming; a malformed env default must not stop every
        worker (submits report it, see check_queue_room), so it counts as no cap here."""
        try:
            return self.limits().max_active_per_owner
        except ValueError:
            return 0

    def set_limits(self, actor: Actor, **values: int) -> Limits:
        """Change class-wide quotas (teacher or operator only); the new limits."""
        if not actor.privileged:
            raise PermissionError(f"only the teacher can change the class limits; you are "
                                  f"{actor.label}")
        current = self.limits().to_dict()
        for key, value in values.items():
            current[key] = check_limit(key, value)
        write_json_atomic(self.runs_dir / LIMITS_FILE, current)
        return Limits(**current)

    # -- metrics and snapshots -----------------------------------------------------------------

    def add_metrics(self, run_id: str, rows: Iterable[MetricRow | tuple[Any, ...]]) -> None:
        """Append metric rows, (step, epoch, split, task, name, value) or with a 7th element,
        the replica index, to <run>/metrics.jsonl, then index them."""
        self.add_many(metrics={run_id: rows})

    def add_many(self, metrics: Mapping[str, Iterable[MetricRow | tuple[Any, ...]]] | None = None,
                 snapshots: Iterable[SnapshotItem] = (),
                 progress: Mapping[str, tuple[int, int, float]] | None = None) -> None:
        """Metric rows, snapshots and progress of one run or several, written together: each
        run's new lines are appended to its metrics.jsonl / snapshots.jsonl in one O_APPEND
        write each (never interleaved with another writer's), then ONE index transaction
        ingests every file written and sets every run's progress (as `set_progress`), instead
        of one per call (a stacked run's evaluation writes about five snapshots per replica,
        a stacked sweep's every point's). A run whose folder is gone (deleted) is skipped;
        the others are written; nothing is written when any item is malformed (a bad row or
        run id: ValueError). As with single writes, a crash between the appends and the
        transaction loses nothing (the next ingest of each file picks its lines up).
        `snapshots` items are (run_id, step, kind, payload); `progress` values
        (step, total_steps, epoch)."""
        now = time.time()
        # (run_id, kind) -> its new lines, each with the index row it makes (id left out)
        files: dict[tuple[str, str], list[tuple[bytes, tuple[Any, ...]]]] = {}
        snapshots = list(snapshots)
        for run_id in [*(metrics or {}), *(item[0] for item in snapshots), *(progress or {})]:
            if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
                raise ValueError(f"run id {run_id!r} is not a run id (letters, digits, "
                                 "'_', '.', '-')")
        for run_id, rows in (metrics or {}).items():
            lines = [_metric_line(row, now) for row in rows]
            if lines:
                files.setdefault((run_id, "metrics"), []).extend(lines)
        for run_id, step, kind, payload in snapshots:
            line = snapshot_line(step, kind, payload, now)
            doc = {"step": step, "kind": kind, "payload": payload, "time": now}
            files.setdefault((run_id, "snapshots"), []).append(
                (line, snapshot_row(run_id, 0, doc, line)[2:]))
        written: list[tuple[str, str]] = []
        appended: dict[tuple[str, str], _Appended] = {}
        for (run_id, kind), items in files.items():
            folder = self.run_dir(run_id)
            if not folder.is_dir():
                continue  # the run was deleted: nothing to keep its lines for
            data = b"".join(line for line, _ in items)
            start = append(folder / (METRICS_FILE if kind == "metrics" else SNAPSHOTS_FILE),
                           data)
            written.append((run_id, kind))
            if start is not None:
                appended[(run_id, kind)] = _Appended(start, start + len(data), items)
        if written or progress:
            self._sync_all(written, progress or {}, appended=appended)

    @_recovering
    def metrics(self, run_id: str, after_id: int = 0) -> pd.DataFrame:
        """Metric rows with id > after_id, in the order written (incremental polling)."""
        import pandas as pd

        with self._connect() as conn:
            self._heal(conn, run_id, "metrics")
            rows = conn.execute(
                f"SELECT {', '.join(METRIC_COLUMNS)} FROM metrics "
                "WHERE run_id = ? AND id > ? ORDER BY id", (run_id, after_id)).fetchall()
        frame = pd.DataFrame([tuple(r) for r in rows], columns=METRIC_COLUMNS)
        # Fixed dtypes, also for an empty frame; NULL (a NaN written by the trainer) -> NaN.
        return frame.astype({"id": "int64", "step": "int64", "epoch": "float64",
                             "value": "float64", "time": "float64", "replica": "int64"})

    def add_snapshot(self, run_id: str, step: int, kind: str, payload: dict[str, Any]) -> None:
        self.add_many(snapshots=[(run_id, step, kind, payload)])

    @_recovering
    def snapshots(self, run_id: str, kind: str) -> list[tuple[int, dict[str, Any]]]:
        with self._connect() as conn:
            self._heal(conn, run_id, "snapshots")
            rows = conn.execute("SELECT step, payload FROM snapshots WHERE run_id = ? "
                                "AND kind = ? ORDER BY step, id", (run_id, kind)).fetchall()
        return [(r["step"], json.loads(r["payload"])) for r in rows]

    @_recovering
    def latest_snapshot(self, run_id: str, kind: str) -> tuple[int, dict[str, Any]] | None:
        with self._connect() as conn:
            self._heal(conn, run_id, "snapshots")
            row = conn.execute("SELECT step, payload FROM snapshots WHERE run_id = ? "
                               "AND kind = ? ORDER BY step DESC, id DESC LIMIT 1",
                               (run_id, kind)).fetchone()
        return None if row is None else (row["step"], json.loads(row["payload"]))

    # -- control requests ----------------------------------------------------------------------

    @_recovering
    def request_control(self, run_id: str, action: str) -> None:
        if action not in CONTROL_ACTIONS:
            raise ValueError(f"unknown control action {action!r}; "
                             f"use one of: {', '.join(CONTROL_ACTIONS)}")
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
                raise KeyError(f"unknown run {run_id!r}")
            conn.execute("INSERT INTO controls (run_id, action, created_at) VALUES (?, ?, ?)",
                         (run_id, action, time.time()))

    @_recovering
    def pending_controls(self, run_id: str) -> list[str]:
        with self._connect() as conn:
            rows = conn.execute("SELECT action FROM controls WHERE run_id = ? ORDER BY id",
                                (run_id,)).fetchall()
        return [r["action"] for r in rows]

    @_recovering
    def take_control(self, run_id: str) -> str | None:
        """Pop the oldest pending request (each is returned exactly once)."""
        return self._pop_control([run_id])

    def _pop_control(self, run_ids: list[str]) -> str | None:
        """Pop the oldest pending request of any of `run_ids`."""
        marks = ",".join("?" * len(run_ids))
        with self._connect() as conn:
            # A plain read first: the common "nothing pending" case takes no write lock.
            row = conn.execute(f"SELECT id, action FROM controls WHERE run_id IN ({marks}) "
                               "ORDER BY id LIMIT 1", run_ids).fetchone()
            if row is None:
                return None
            # Only the reader whose DELETE removed the row gets it.
            if conn.execute("DELETE FROM controls WHERE id = ?", (row["id"],)).rowcount == 1:
                return str(row["action"])
        return None

    @_recovering
    def poll_controls(self, run_ids: list[str], heartbeat: bool) -> str | None:
        """Several runs polled as one (a stacked sweep's carried points, which share one
        trainer): with `heartbeat`, every one's heartbeat refreshed in one transaction, and
        "stop" when any of them is no longer running/paused (as `StoreSink.control` answers
        for its run); then the oldest pending request of any of them, popped (one read when
        there is none)."""
        wanted = list(dict.fromkeys(run_ids))
        if not wanted:
            return None
        marks = ",".join("?" * len(wanted))
        if heartbeat:
            with self._write() as conn:
                live = conn.execute(f"UPDATE runs SET heartbeat_at = ? WHERE id IN ({marks}) "
                                    "AND status IN ('running', 'paused')",
                                    (time.time(), *wanted)).rowcount
            if live != len(wanted):
                return "stop"
        return self._pop_control(wanted)

    # -- progress ------------------------------------------------------------------------------

    @_recovering
    def set_progress(self, run_id: str, step: int, total_steps: int, epoch: float) -> None:
        with self._write() as conn:
            self._progress(conn, run_id, step, total_steps, epoch)

    def _progress(self, conn: sqlite3.Connection, run_id: str, step: int, total_steps: int,
                  epoch: float) -> None:
        if conn.execute("UPDATE runs SET step = ?, total_steps = ?, epoch = ?, "
                        "heartbeat_at = ? WHERE id = ?",
                        (int(step), int(total_steps), float(epoch), time.time(),
                         run_id)).rowcount:
            self._save_run_json(conn, run_id, throttle=True)

    @_recovering
    def heartbeat(self, run_id: str) -> bool:
        """Refresh heartbeat_at; False when the run is no longer running/paused."""
        with self._write() as conn:
            return conn.execute("UPDATE runs SET heartbeat_at = ? WHERE id = ? "
                                "AND status IN ('running', 'paused')",
                                (time.time(), run_id)).rowcount == 1

    # -- workers (processes that claim queued runs; see mtl_core.jobs) ---------------------------

    @_recovering
    def add_worker(self, pid: int, replace: bool = True) -> None:
        """Register a worker process as idle. The spawner registers with replace=False, so it
        never resets a row the worker itself may already have updated."""
        now = time.time()
        on_conflict = ("DO UPDATE SET started_at = excluded.started_at, "
                       "seen_at = excluded.seen_at, run_id = NULL") if replace else "DO NOTHING"
        with self._write() as conn:
            conn.execute("INSERT INTO workers (pid, started_at, seen_at) VALUES (?, ?, ?) "
                         f"ON CONFLICT (pid) {on_conflict}", (pid, now, now))

    @_recovering
    def worker_seen(self, pid: int, run_id: str | None = None) -> None:
        with self._write() as conn:
            conn.execute("UPDATE workers SET seen_at = ?, run_id = ? WHERE pid = ?",
                         (time.time(), run_id, pid))

    @_recovering
    def remove_worker(self, pid: int) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM workers WHERE pid = ?", (pid,))

    @_recovering
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

    Metric rows arrive batched per call (one append and one index transaction each), and so
    do the snapshots of one evaluation (`snapshot_many`). Every
    progress call and, at most every HEARTBEAT_EVERY_S, a control poll refresh the heartbeat,
    so a paused run (which only polls) still shows its worker is alive. If the run stopped
    being live behind the trainer's back (marked failed, deleted) or the worker was told to end
    (`force_stop`), control() answers "stop" so the trainer winds down.
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

    def snapshot_many(self, items: list[SnapshotEntry]) -> None:
        self.store.add_many(snapshots=[(self.run_id, *item) for item in items])

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


@dataclass(frozen=True)
class _Appended:
    """Lines one add_many appended to a file at [start, end), each with its index row but for
    the run id and the line id."""

    start: int
    end: int
    items: list[tuple[bytes, tuple[Any, ...]]]


def _metric_line(row: MetricRow | tuple[Any, ...], when: float
                 ) -> tuple[bytes, tuple[Any, ...]]:
    """A metric row's line and its index row (without run id and line id), the row as
    `metric_row` reads it back from the line."""
    if len(row) == 6:
        step, epoch, split, task, name, value = row
        replica = 0
    elif len(row) == 7:
        step, epoch, split, task, name, value, replica = row
    else:
        raise ValueError(f"a metric row has 6 or 7 elements (got {len(row)}: {row!r})")
    item = metric_item(step, epoch, split, task, name, value, replica, when)
    return item_line(item), metric_row("", 0, item)[2:]


# set_statuses' items: (run_id, status, message, expect, fields)
StatusUpdate = tuple[str, str, str | None, Iterable[str] | None, Mapping[str, Any]]
# (run_id, status, SET clauses, their args, WHERE clause, its args)
_StatusSQL = tuple[str, str, list[str], list[Any], str, list[Any]]


def _status_update(run_id: str, status: str, message: str | None,
                   expect: Iterable[str] | None, fields: Mapping[str, Any]) -> _StatusSQL:
    """The UPDATE of `set_status` (ValueError/TypeError for a bad status or field)."""
    _check_status(status)
    unknown = set(fields) - set(_RUN_FIELDS)
    if unknown:
        raise TypeError(f"set_status: unknown fields {sorted(unknown)}; "
                        f"allowed: {', '.join(_RUN_FIELDS)}")
    fields = dict(fields)
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
    return run_id, status, sets, args, where, where_args


def _to_column(name: str, value: Any) -> Any:
    """A run.json value as its `runs` column holds it."""
    if name in ("config", "summary"):
        return json.dumps(value if value is not None else {})
    return value


def _check_status(status: str) -> None:
    if status not in RUN_STATUSES:
        raise ValueError(f"unknown run status {status!r}; use one of: {', '.join(RUN_STATUSES)}")


def _insert_rows(conn: sqlite3.Connection, run_id: str, kind: str, batch: list[tuple],
                 offset: int) -> None:
    """Index rows of a run's metrics or snapshots file and the offset indexed up to."""
    if kind == "metrics":
        conn.executemany("INSERT OR IGNORE INTO metrics (run_id, id, step, epoch, split, "
                         "task, name, value, replica, time) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", batch)
    else:
        conn.executemany("INSERT OR IGNORE INTO snapshots (run_id, id, step, kind, payload, "
                         "time) VALUES (?, ?, ?, ?, ?, ?)", batch)
    conn.execute(f"UPDATE runs SET {kind}_offset = ? WHERE id = ?", (offset, run_id))
