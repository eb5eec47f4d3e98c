"""The idle read-only connection per index (mtl_core.index_keeper): the store's short-lived
connections no longer checkpoint and delete the WAL on every close, and a replaced index
(a rebuild) gets a keeper of its own without losing a row."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from store_support import config

from mtl_core import index_keeper
from mtl_core.store import RunStore


def test_closing_the_stores_connections_leaves_the_wal_to_the_automatic_checkpoint(store):
    run_id = store.create_run(config())
    store.add_metrics(run_id, [(1, 0.0, "val", "x", "loss", 1.0)])
    wal = Path(f"{store.db_path}-wal")
    # Every connection of the call above is closed; without a connection kept open the
    # last close would have checkpointed the WAL into runs.db and deleted it.
    assert str(store.db_path) in index_keeper.kept()
    assert wal.is_file() and wal.stat().st_size > 0
    assert store.metrics(run_id)["value"].tolist() == [1.0]


def test_a_rebuilt_index_gets_its_own_keeper_and_every_row_survives_the_old_ones_close(store):
    first = store.create_run(config("first"))
    store.add_metrics(first, [(1, 0.0, "val", "x", "loss", 1.0)])
    old = os.stat(store.db_path).st_ino
    for suffix in ("", "-wal", "-shm"):  # deleted by hand while this process keeps it open
        Path(f"{store.db_path}{suffix}").unlink(missing_ok=True)
    rebuilt = RunStore(store.runs_dir)
    second = rebuilt.create_run(config("second"))
    rebuilt.add_metrics(second, [(1, 0.0, "val", "x", "loss", 2.0)])
    assert os.stat(rebuilt.db_path).st_ino != old
    held = index_keeper._kept[str(rebuilt.db_path)]
    assert held[1][1] == os.stat(rebuilt.db_path).st_ino and held[2] is not None
    # Another process reads the new index, WAL included: the old keeper's close deleted
    # nothing of it.
    script = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
              "print(c.execute('SELECT COUNT(*) FROM runs').fetchone()[0], "
              "c.execute('SELECT COUNT(*) FROM metrics').fetchone()[0], "
              "c.execute('PRAGMA integrity_check').fetchone()[0])")
    out = subprocess.run([sys.executable, "-c", script, str(rebuilt.db_path)], check=True,
                         capture_output=True, text=True).stdout.split()
    assert out == ["2", "2", "ok"]  # the first run came back from its folder


def test_a_process_keeps_at_most_max_kept_indexes_open(tmp_path):
    stores = [RunStore(tmp_path / f"s{i}") for i in range(index_keeper.MAX_KEPT + 3)]
    for s in stores:
        s.create_run(config())
    kept = index_keeper.kept()
    assert len(kept) <= index_keeper.MAX_KEPT
    assert str(stores[-1].db_path) in kept  # the most recently used are the ones kept


def test_the_keeper_never_holds_a_read_transaction(store):
    """A reader inside a transaction would keep the WAL from restarting (it would grow)."""
    run_id = store.create_run(config())
    for step in range(3):
        store.add_metrics(run_id, [(step, 0.0, "val", "x", "loss", 1.0)])
    conn = sqlite3.connect(store.db_path, isolation_level=None)
    try:  # a full checkpoint with a truncate succeeds only when no reader is in the WAL
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        conn.close()
    assert busy == 0
    assert Path(f"{store.db_path}-wal").stat().st_size == 0
