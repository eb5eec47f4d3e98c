"""A store that cannot be lost: the run folders are the truth, runs.db an index rebuilt from
them when it is deleted, filled with garbage or of the older layout, also while a real worker
trains and while several processes write at once."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from browser_support import wait_until
from store_support import config

from mtl_core import jobs
from mtl_core.owners import Actor, browser_owner_id
from mtl_core.store import METRIC_COLUMNS, RunStore

ROOT = Path(__file__).resolve().parent.parent
ALICE = Actor(browser_owner_id("a" * 40), "Alice")




def fill(store: RunStore) -> dict[str, Any]:
    """Three runs (finished, stopped, queued) with metrics and snapshots; what they hold."""
    finished = store.create_run(config("finished"), owner=ALICE)
    store.claim_run(111, run_id=finished)
    store.add_metrics(finished, [(s, s / 10, "train", "a", "loss", 1.0 / s) for s in range(1, 51)])
    store.add_metrics(finished, [(50, 5.0, "val", "a", "accuracy", 0.9, 1)])  # a replica row
    store.add_snapshot(finished, 10, "predictions", {"outputs": {"a": [1, 0]}})
    store.add_snapshot(finished, 20, "predictions", {"outputs": {"a": [1, 1]}})
    store.set_progress(finished, 50, 50, 5.0)
    store.set_status(finished, "finished", summary={"test": {"a": {"accuracy": 0.9}}})
    stopped = store.create_run(config("stopped"))
    store.add_metrics(stopped, [(1, 0.1, "train", "a", "loss", float("nan"))])
    store.set_status(stopped, "stopped", "stopped by request")
    queued = store.create_run(config("queued"), owner=ALICE)
    store.rename_run(queued, "renamed", ALICE)
    return {"runs": {r.id: r for r in store.list_runs()},
            "metrics": {r.id: store.metrics(r.id) for r in store.list_runs()},
            "snapshots": store.snapshots(finished, "predictions"), "finished": finished}


def same_as_before(store: RunStore, before: dict[str, Any]) -> None:
    runs = {r.id: r for r in store.list_runs()}
    assert set(runs) == set(before["runs"])
    for run_id, old in before["runs"].items():
        new = runs[run_id]
        assert (new.name, new.status, new.owner, new.owner_name, new.step, new.summary,
                new.config, new.message) == (old.name, old.status, old.owner, old.owner_name,
                                             old.step, old.summary, old.config, old.message)
        assert new.created_at == pytest.approx(old.created_at)
        was, now = before["metrics"][run_id], store.metrics(run_id)
        assert now[METRIC_COLUMNS].equals(was[METRIC_COLUMNS]), run_id  # ids too: stable
    assert store.snapshots(before["finished"], "predictions") == before["snapshots"]


def test_a_new_store_is_not_a_recovery(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "fresh")
    assert store.recovered is None and store.recovery_note() is None
    assert store.list_runs() == [] and store.journal_mode() == "wal"


def test_folders_hold_everything_needed_to_show_a_run(store: RunStore) -> None:
    before = fill(store)
    folder = store.run_dir(before["finished"])
    doc = json.loads((folder / "run.json").read_text())
    assert (doc["status"], doc["step"], doc["owner"], doc["summary"]) == (
        "finished", 50, ALICE.id, {"test": {"a": {"accuracy": 0.9}}})
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 51 and json.loads(lines[-1])[:7] == [50, 5.0, "val", "a", "accuracy",
                                                              0.9, 1]
    assert len((folder / "snapshots.jsonl").read_text().splitlines()) == 2
    frame = store.metrics(before["finished"])
    assert frame["replica"].tolist() == [0] * 50 + [1]
    with pytest.raises(ValueError, match="6 or 7 elements"):
        store.add_metrics(before["finished"], [(1, 0.0, "train", "a")])


def test_deleted_index_is_rebuilt_with_every_run_and_curve(store: RunStore) -> None:
    before = fill(store)
    store.db_path.unlink()
    same_as_before(store, before)  # the next call of any method rebuilds
    assert store.recovered is not None and "runs.db was missing" in store.recovered
    when, note = RunStore(store.runs_dir).recovery_note()
    assert "rebuilt from 3 run folders" in note and "\n" not in note
    assert time.time() - when < 60
    assert store.journal_mode() == "wal"


def test_cli_lists_and_shows_runs_after_the_index_was_deleted(store: RunStore,
                                                              capsys: Any) -> None:
    from mtl_core import cli

    before = fill(store)
    store.db_path.unlink()
    assert cli.main(["runs", "--runs-dir", str(store.runs_dir)]) == 0
    out = capsys.readouterr().out
    assert all(run_id in out for run_id in before["runs"]) and "Alice" in out
    assert cli.main(["show", before["finished"], "--runs-dir", str(store.runs_dir)]) == 0
    assert "finished" in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_index_is_set_aside_and_rebuilt(store: RunStore, damage: str) -> None:
    before = fill(store)
    if damage == "garbage":
        store.db_path.write_bytes(os.urandom(64 * 1024))
    elif damage == "truncated":
        data = store.db_path.read_bytes()
        store.db_path.write_bytes(data[:100])
    else:
        store.db_path.write_bytes(b"")
    for suffix in ("-wal", "-shm"):
        Path(f"{store.db_path}{suffix}").unlink(missing_ok=True)
    fresh = RunStore(store.runs_dir)  # in the same process: the cached "ready" is not trusted
    same_as_before(fresh, before)
    note = fresh.recovery_note()[1]
    assert "rebuilt from 3 run folders" in note
    if damage != "empty":
        assert list(store.runs_dir.glob("runs.db.corrupt-*")), "the damaged file is kept"


def test_damage_while_a_store_is_in_use_by_another_process(store: RunStore) -> None:
    """A long-lived process (like the Streamlit server) sees the index replaced under it."""
    before = fill(store)
    store.db_path.write_bytes(b"garbage " * 1000)
    script = ("import sys; from mtl_core.store import RunStore\n"
              "s = RunStore(sys.argv[1]); print(len(s.list_runs()), s.recovered)\n")
    out = subprocess.run([sys.executable, "-c", script, str(store.runs_dir)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("3 runs.db was damaged")
    same_as_before(store, before)  # this process uses the rebuilt index, no traceback


# ---------------------------------------------------------------- the older layout

OLD_SCHEMA = """
CREATE TABLE runs (id TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL,
    config TEXT NOT NULL, created_at REAL NOT NULL, started_at REAL, ended_at REAL,
    step INTEGER NOT NULL DEFAULT 0, total_steps INTEGER NOT NULL DEFAULT 0,
    epoch REAL NOT NULL DEFAULT 0, message TEXT, device TEXT, pid INTEGER, heartbeat_at REAL,
    summary TEXT NOT NULL DEFAULT '{}');
CREATE TABLE metrics (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL,
    step INTEGER NOT NULL, epoch REAL NOT NULL, split TEXT NOT NULL, task TEXT NOT NULL,
    name TEXT NOT NULL, value REAL, time REAL NOT NULL);
CREATE TABLE snapshots (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL,
    step INTEGER NOT NULL, kind TEXT NOT NULL, payload TEXT NOT NULL, time REAL NOT NULL);
CREATE TABLE controls (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL,
    action TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE workers (pid INTEGER PRIMARY KEY, started_at REAL NOT NULL,
    seen_at REAL NOT NULL, run_id TEXT);
"""


def old_layout(runs: Path) -> dict[str, list[tuple[Any, ...]]]:
    """A runs dir as main wrote it before this change: rows only in runs.db, folders holding
    just config.yaml (and checkpoints). Returns each run's metric rows."""
    runs.mkdir(parents=True)
    db = sqlite3.connect(runs / "runs.db")
    db.executescript(OLD_SCHEMA)
    db.execute("PRAGMA journal_mode=WAL")
    expected: dict[str, list[tuple[Any, ...]]] = {}
    for i, (status, n) in enumerate((("finished", 40), ("failed", 7), ("queued", 0))):
        run_id = f"20250101-00000{i}-ab0{i}"
        doc = {"name": f"old{i}", "data": {"suite": "toy_2d"}}
        (runs / run_id).mkdir()
        (runs / run_id / "config.yaml").write_text(yaml.safe_dump(doc))
        db.execute("INSERT INTO runs (id, name, status, config, created_at, step, summary) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (run_id, f"old{i}", status, json.dumps(doc), 1000.0 + i, n,
                    json.dumps({"test": {"a": {"loss": 0.5}}} if status == "finished" else {})))
        rows = [(s, s / 10, "train", "a", "loss", None if s == 3 else 1.0 / s, 2000.0 + s)
                for s in range(1, n + 1)]
        db.executemany("INSERT INTO metrics (run_id, step, epoch, split, task, name, value, "
                       "time) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [(run_id, *r) for r in rows])
        if n:
            db.execute("INSERT INTO snapshots (run_id, step, kind, payload, time) VALUES "
                       "(?, 5, 'predictions', ?, 1.0)", (run_id, json.dumps({"outputs": [i]})))
        expected[run_id] = rows
    db.commit()
    db.close()
    return expected


def test_old_layout_is_migrated_without_loss(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    expected = old_layout(runs)
    store = RunStore(runs)
    assert store.recovered is not None and "older layout" in store.recovered
    assert list(runs.glob("runs.db.v1-*.bak")), "the old database is kept"
    listed = {r.id: r for r in store.list_runs()}
    assert set(listed) == set(expected)
    for run_id, rows in expected.items():
        run = listed[run_id]
        assert run.owner == "operator"  # runs from before owners belong to the operator
        frame = store.metrics(run_id)
        assert frame["step"].tolist() == [r[0] for r in rows]
        assert frame["value"].isna().tolist() == [r[5] is None for r in rows]
        assert frame["value"].dropna().tolist() == [r[5] for r in rows if r[5] is not None]
        assert frame["replica"].tolist() == [0] * len(rows)
        assert (runs / run_id / "run.json").is_file()
    first = "20250101-000000-ab00"
    assert listed[first].status == "finished" and listed[first].summary["test"]["a"]["loss"] == 0.5
    assert store.snapshots(first, "predictions") == [(5, {"outputs": [0]})]
    # Once migrated, losing the index loses nothing either.
    store.db_path.unlink()
    assert {r.id for r in RunStore(runs).list_runs()} == set(expected)
    assert len(store.metrics(first)) == 40


def test_a_folder_without_run_json_and_no_index_still_shows_up(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    (runs / "20240101-000000-dead").mkdir(parents=True)
    (runs / "20240101-000000-dead" / "config.yaml").write_text("name: lonely\n")
    (runs / "not a run").mkdir()
    run = RunStore(runs).get_run("20240101-000000-dead")
    assert (run.name, run.status, run.owner) == ("lonely", "stopped", "operator")
    assert "not recorded" in run.message


# ---------------------------------------------------------------- concurrent writers

WRITER = """
import sys, time
from mtl_core.store import RunStore
store = RunStore(sys.argv[1])
for batch in range(int(sys.argv[3])):
    store.add_metrics(sys.argv[2], [(batch, 0.0, "train", t, "loss", float(batch))
                                    for t in ("a", "b")])
    store.set_progress(sys.argv[2], batch, 0, 0.0)
    time.sleep(0.002)
"""


def test_concurrent_writers_and_a_lost_index_lose_and_duplicate_nothing(store: RunStore) -> None:
    run_ids = [store.create_run(config(f"w{i}")) for i in range(3)]
    batches = 150
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(store.runs_dir), run_id,
                               str(batches)], cwd=ROOT, stderr=subprocess.PIPE)
             for run_id in run_ids + [run_ids[0]]]  # two writers on the first run
    time.sleep(1.0)
    store.db_path.unlink()  # while they write
    time.sleep(0.5)
    store.db_path.write_bytes(b"\0garbage" * 4096)
    for proc in procs:
        assert proc.wait(120) == 0, proc.stderr.read().decode()
    counts = {run_id: len(store.metrics(run_id)) for run_id in run_ids}
    assert counts == {run_ids[0]: 4 * batches, run_ids[1]: 2 * batches,
                      run_ids[2]: 2 * batches}
    for run_id in run_ids:
        frame = store.metrics(run_id)
        assert frame["id"].is_unique and frame["id"].is_monotonic_increasing
        lines = (store.run_dir(run_id) / "metrics.jsonl").read_bytes().count(b"\n")
        assert lines == counts[run_id]


def test_a_reader_picks_up_lines_its_writer_never_indexed(store: RunStore) -> None:
    """A worker killed between appending its lines and indexing them loses nothing."""
    run_id = store.create_run(config())
    store.add_metrics(run_id, [(1, 0.0, "train", "a", "loss", 1.0)])
    path = store.run_dir(run_id) / "metrics.jsonl"
    with open(path, "a") as f:
        f.write(json.dumps([2, 0.0, "train", "a", "loss", 0.5, 0, time.time()]) + "\n")
        f.write('[3, 0.0, "train", "a", "lo')  # a line cut by the kill: not indexed
    old = time.time() - 10
    os.utime(path, (old, old))
    assert store.metrics(run_id)["value"].tolist() == [1.0, 0.5]


# ---------------------------------------------------------------- while a real worker trains

LONG = {"data": {"suite": "toy_2d", "params": {"n_samples": 200, "n_test": 50}},
        "optim": {"epochs": 30, "batch_size": 16, "eval_every": 10_000_000}, "log_every": 2,
        "device": "cpu"}


@pytest.fixture
def own_workers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(jobs, "IDLE_TIMEOUT_S", 5.0)
    started = len(jobs._children)
    yield
    for proc in jobs._children[started:]:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def test_index_deleted_and_corrupted_while_a_run_trains(store: RunStore,
                                                        own_workers: None) -> None:
    done = store.create_run(config("done"))
    store.add_metrics(done, [(s, 0.0, "train", "a", "loss", float(s)) for s in range(10)])
    store.set_status(done, "finished")
    run_id = jobs.submit(LONG, store.runs_dir)
    wait_until(lambda: store.get_run(run_id).step >= 20, 120, "20 steps")
    store.db_path.unlink()
    for suffix in ("-wal", "-shm"):
        Path(f"{store.db_path}{suffix}").unlink(missing_ok=True)
    wait_until(lambda: store.get_run(run_id).step >= 60, 120, "training on after the delete")
    store.db_path.write_bytes(os.urandom(8192))
    run = wait_until(lambda: (r := store.get_run(run_id)).status != "running" and r, 300,
                     "the run to end")
    assert run.status == "finished", run.message
    # Every logged point is there once: the train loss curve of each task has every step.
    frame = store.metrics(run_id)
    total = frame[(frame["split"] == "train") & (frame["task"] == "total")
                  & (frame["name"] == "loss")]["step"].tolist()
    assert total == [1, *range(2, run.step + 1, 2)], (total[:5], total[-5:], run.step)
    lines = (store.run_dir(run_id) / "metrics.jsonl").read_bytes().count(b"\n")
    assert len(frame) == lines
    assert store.load_checkpoint(run_id, "final")["step"] == run.step
    assert store.metrics(done)["value"].tolist() == [float(s) for s in range(10)]
    assert store.get_run(done).status == "finished"
