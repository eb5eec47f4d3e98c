"""One idle read-only connection per run index and process, so that closing the store's
short-lived connections does not checkpoint the WAL every time.

SQLite checkpoints a WAL database (copies the WAL into it, with two fsyncs) and deletes the
WAL whenever the *last* connection to it closes. The run store opens a connection per call, so
a worker alone on its store paid that on every write: about 5 ms per transaction here, more
than the write itself (bench/RESULTS.md, issue 12 sweep12). A connection that stays open makes
those closes not the last; the WAL is then checkpointed by SQLite's automatic checkpoint
(every ~1000 pages) as with any long-lived connection. Durability is unchanged
(synchronous=NORMAL commits never fsynced; the checkpoints that do still happen).

The keeper is opened read-only (`mode=ro`) and holds no transaction, so it never blocks a
writer or a checkpoint, and closing it never checkpoints or deletes a WAL: that matters when
the index was replaced under it (a rebuild moves a new file into place): a read-write
connection to the old file closing last would delete the *new* file's WAL by name. It is
reopened when the file at the path is another one (device and inode differ) or the process
is another (a fork does not inherit SQLite's locks). At most MAX_KEPT indexes are kept per
process (tests open hundreds of stores); any failure to open one just leaves it out.
"""
from __future__ import annotations

import os
import sqlite3
import threading
from collections import OrderedDict
from pathlib import Path

MAX_KEPT = 4

_lock = threading.Lock()
# db path -> (pid, (st_dev, st_ino), connection), least recently used first
# (None: it could not be opened; tried again once the file at the path changes)
_kept: OrderedDict[str, tuple[int, tuple[int, int], sqlite3.Connection | None]] = OrderedDict()
# a parent process's keepers found after a fork: referenced, so never closed from here
_inherited: list[sqlite3.Connection | None] = []


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # another thread of the parent may have held it


os.register_at_fork(after_in_child=_after_fork_in_child)


def keep_open(db_path: Path) -> None:
    """Make sure this process holds an idle read-only connection to the index at db_path."""
    key = str(db_path)
    try:
        st = os.stat(key)
    except OSError:
        return
    identity, pid = (st.st_dev, st.st_ino), os.getpid()
    with _lock:
        held = _kept.get(key)
        if held is not None and held[0] == pid and held[1] == identity:
            _kept.move_to_end(key)
            return
        if held is not None:
            del _kept[key]
            _drop(held[0], held[2])
        _kept[key] = (pid, identity, _open(key))
        while len(_kept) > MAX_KEPT:
            _, (owner, _, old) = _kept.popitem(last=False)
            _drop(owner, old)


def kept() -> list[str]:
    """The index paths this process holds open (tests)."""
    with _lock:
        return [key for key, (pid, _, conn) in _kept.items()
                if pid == os.getpid() and conn is not None]


def _open(path: str) -> sqlite3.Connection | None:
    try:
        conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True,
                               isolation_level=None, check_same_thread=False, timeout=0.1)
        # A read opens the WAL and takes the shared lock that is held while the connection
        # lives; fetchall steps the statement to its end, so no read transaction stays open.
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        return conn
    except (sqlite3.Error, OSError, ValueError):
        return None


def _drop(owner: int, conn: sqlite3.Connection | None) -> None:
    """Close a keeper of this process; keep one inherited through a fork referenced."""
    if owner == os.getpid():
        _close(conn)
    else:
        _inherited.append(conn)


def _close(conn: sqlite3.Connection | None) -> None:
    if conn is None:
        return
    try:
        conn.close()
    except sqlite3.Error:
        pass
