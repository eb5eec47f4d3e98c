"""The run store: WAL, concurrent reads, incremental metrics, snapshots, controls, checkpoints."""
from __future__ import annotations

import math
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from store_support import config

from mtl_core import store as store_module
from mtl_core.store import METRIC_COLUMNS, RunStore, default_runs_dir

ROOT = Path(__file__).resolve().parent.parent




def test_wal_mode_and_layout(store: RunStore) -> None:
    assert store.journal_mode() == "wal"
    raw = sqlite3.connect(store.db_path)  # WAL is a property of the file, not of our connections
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()
    run_id = store.create_run(config("first"))
    saved = yaml.safe_load((store.run_dir(run_id) / "config.yaml").read_text())
    assert saved["name"] == "first" and saved["data"]["suite"] == "toy_2d"
    run = store.get_run(run_id)
    assert (run.status, run.name, run.suite, run.step, run.summary) == (
        "queued", "first", "toy_2d", 0, {})
    assert run.started_at is None and run.duration is None and run.is_live


def test_default_runs_dir_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MTL_RUNS_DIR", raising=False)
    assert default_runs_dir() == Path("runs")
    monkeypatch.setenv("MTL_RUNS_DIR", str(tmp_path / "elsewhere"))
    assert default_runs_dir() == tmp_path / "elsewhere"


def test_list_runs_newest_first_and_filtered(store: RunStore) -> None:
    ids = [store.create_run(config(f"r{i}")) for i in range(3)]
    store.set_status(ids[1], "running", pid=1)
    assert [r.id for r in store.list_runs()] == ids[::-1]
    assert [r.id for r in store.list_runs(["running"])] == [ids[1]]
    assert [r.id for r in store.list_runs(["queued", "paused"])] == [ids[2], ids[0]]
    with pytest.raises(ValueError, match="unknown run status 'done'"):
        store.list_runs(["done"])
    with pytest.raises(KeyError, match="unknown run 'nope'"):
        store.get_run("nope")


def test_set_status_times_guard_and_fields(store: RunStore) -> None:
    run_id = store.create_run(config())
    store.set_status(run_id, "running", device="cpu", pid=123)
    run = store.get_run(run_id)
    assert run.started_at is not None and run.ended_at is None
    assert (run.device, run.pid) == ("cpu", 123)
    store.request_control(run_id, "pause")
    assert store.set_status(run_id, "finished", step=8, summary={"test": {"a": {"loss": 0.5}}})
    run = store.get_run(run_id)
    assert run.ended_at is not None and run.ended_at >= run.started_at
    assert run.summary == {"test": {"a": {"loss": 0.5}}} and run.step == 8
    assert store.pending_controls(run_id) == []  # a terminal status drops pending requests
    # A late writer that expects a live run cannot overwrite the terminal status.
    assert not store.set_status(run_id, "running", expect=("running", "paused"))
    assert store.get_run(run_id).status == "finished"
    with pytest.raises(ValueError, match="unknown run status"):
        store.set_status(run_id, "done")
    with pytest.raises(TypeError, match="unknown fields"):
        store.set_status(run_id, "failed", colour="red")
    with pytest.raises(KeyError):
        store.set_status("nope", "failed")


def test_metrics_incremental_after_id(store: RunStore) -> None:
    run_id = store.create_run(config())
    other = store.create_run(config())
    empty = store.metrics(run_id)
    assert list(empty.columns) == METRIC_COLUMNS and len(empty) == 0
    sink = store.sink(run_id)
    sink.metrics([(1, 0.1, "train", "a", "loss", 2.0), (1, 0.1, "train", "b", "loss", 3.0)])
    store.sink(other).metrics([(1, 0.1, "train", "a", "loss", 99.0)])
    first = store.metrics(run_id)
    assert first["value"].tolist() == [2.0, 3.0] and first["task"].tolist() == ["a", "b"]
    sink.metrics([(2, 0.2, "train", "a", "loss", float("nan")),
                  (2, 0.2, "val", "a", "accuracy", float("inf"))])
    new = store.metrics(run_id, after_id=int(first["id"].max()))
    assert new["step"].tolist() == [2, 2] and new["split"].tolist() == ["train", "val"]
    assert math.isnan(new["value"].iloc[0]) and new["value"].iloc[1] == math.inf
    assert str(new["value"].dtype) == "float64"
    assert len(store.metrics(run_id, after_id=int(new["id"].max()))) == 0
    assert store.metrics(other)["value"].tolist() == [99.0]


def test_reader_never_blocked_by_an_open_write(store: RunStore) -> None:
    run_id = store.create_run(config())
    store.add_metrics(run_id, [(1, 0.0, "train", "a", "loss", 1.0)])
    writer = sqlite3.connect(store.db_path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # the writer holds the lock, uncommitted
    writer.execute("INSERT INTO metrics (run_id, id, step, epoch, split, task, name, value, "
                   "time) VALUES (?, 10000, 2, 0, 'train', 'a', 'loss', 2.0, 0)", (run_id,))
    start = time.monotonic()
    seen = store.metrics(run_id)["value"].tolist()
    assert time.monotonic() - start < 1.0  # not waiting for the busy timeout
    assert seen == [1.0]  # committed rows only
    writer.execute("COMMIT")
    writer.close()
    assert store.metrics(run_id)["value"].tolist() == [1.0, 2.0]


def test_concurrent_polling_reader_sees_every_row_once(store: RunStore) -> None:
    run_id = store.create_run(config())
    n_batches, per_batch = 60, 5

    def write() -> None:
        sink = store.sink(run_id)
        for step in range(n_batches):
            sink.metrics([(step, 0.0, "train", f"t{k}", "loss", float(step * per_batch + k))
                          for k in range(per_batch)])

    thread = threading.Thread(target=write)
    thread.start()
    values: list[float] = []
    after = 0
    while True:
        writing = thread.is_alive()  # read before polling: one last poll after the writer ends
        frame = store.metrics(run_id, after_id=after)
        if len(frame):
            assert frame["id"].is_monotonic_increasing and frame["id"].min() > after
            after = int(frame["id"].max())
            values.extend(frame["value"].tolist())
        elif not writing:
            break
    thread.join()
    assert values == [float(i) for i in range(n_batches * per_batch)]


def test_snapshots_in_step_order(store: RunStore) -> None:
    run_id = store.create_run(config())
    assert store.latest_snapshot(run_id, "grid") is None
    sink = store.sink(run_id)
    sink.snapshot(20, "grid", {"values": [[0.2]]})
    sink.snapshot(10, "grid", {"values": [[0.1]]})
    sink.snapshot(0, "probe", {"targets": {"a": [1, 0]}, "x": float("nan")})
    assert store.snapshots(run_id, "grid") == [(10, {"values": [[0.1]]}),
                                               (20, {"values": [[0.2]]})]
    assert store.latest_snapshot(run_id, "grid") == (20, {"values": [[0.2]]})
    step, probe = store.snapshots(run_id, "probe")[0]
    assert step == 0 and probe["targets"] == {"a": [1, 0]} and math.isnan(probe["x"])


def test_control_requests_consumed_once_in_order(store: RunStore) -> None:
    run_id = store.create_run(config())
    store.set_status(run_id, "running", pid=1)
    store.request_control(run_id, "pause")
    store.request_control(run_id, "resume")
    assert store.take_control(run_id) == "pause"
    assert store.take_control(run_id) == "resume"
    assert store.take_control(run_id) is None
    with pytest.raises(ValueError, match="use one of: stop, pause, resume"):
        store.request_control(run_id, "explode")
    with pytest.raises(KeyError):
        store.request_control("nope", "stop")

    # Many pollers at once: exactly one of them gets the single request.
    store.request_control(run_id, "stop")
    got: list[str | None] = []
    threads = [threading.Thread(target=lambda: got.append(store.take_control(run_id)))
               for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got.count("stop") == 1 and got.count(None) == 5


def test_sink_progress_heartbeat_and_status_guard(store: RunStore,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    run_id = store.create_run(config())
    store.set_status(run_id, "running", pid=1, heartbeat_at=0.0)
    sink = store.sink(run_id)
    sink.progress(40, 400, 1.5)
    run = store.get_run(run_id)
    assert (run.step, run.total_steps, run.epoch) == (40, 400, 1.5)
    assert run.heartbeat_at is not None and time.time() - run.heartbeat_at < 5
    sink.status("paused")
    assert store.get_run(run_id).status == "paused"
    sink.status("running")
    assert store.get_run(run_id).status == "running"

    monkeypatch.setattr(store_module, "HEARTBEAT_EVERY_S", 0.0)
    store.set_status(run_id, "running", heartbeat_at=0.0)
    assert sink.control() is None
    assert store.get_run(run_id).heartbeat_at > 0.0  # polling alone keeps the run alive
    store.set_status(run_id, "failed", "reconciled")
    sink.status("running")  # the trainer cannot revive a run that has ended
    assert store.get_run(run_id).status == "failed"
    assert sink.control() == "stop"  # and is told to wind down

    other = store.sink(store.create_run(config()))
    other.force_stop = True
    assert other.control() == "stop"


def test_claim_is_atomic_and_respects_the_limit(store: RunStore) -> None:
    ids = [store.create_run(config(f"r{i}")) for i in range(4)]
    claimed: list[str | None] = []
    lock = threading.Lock()

    def claim(pid: int) -> None:
        got = store.claim_run(pid, max_active=3)
        with lock:
            claimed.append(got)

    threads = [threading.Thread(target=claim, args=(1000 + i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    taken = [c for c in claimed if c is not None]
    assert sorted(taken) == sorted(ids[:3])  # the three oldest, each once
    assert [r.id for r in store.list_runs(["queued"])] == [ids[3]]
    assert store.claim_run(2000, max_active=3) is None  # the limit is reached
    store.set_status(ids[0], "finished")
    assert store.claim_run(2000, max_active=3) == ids[3]
    assert store.claim_run(2000, run_id=ids[3]) is None  # no longer queued
    run = store.get_run(ids[3])
    assert (run.status, run.pid) == ("running", 2000) and run.heartbeat_at is not None


def test_delete_refuses_live_runs(store: RunStore) -> None:
    run_id = store.create_run(config())
    store.add_metrics(run_id, [(1, 0.0, "train", "a", "loss", 1.0)])
    for status in ("queued", "running", "paused"):
        store.set_status(run_id, status)
        with pytest.raises(ValueError, match=f"is {status}; stop it before deleting"):
            store.delete_run(run_id)
        assert store.get_run(run_id).status == status
        assert len(store.metrics(run_id)) == 1
    store.set_status(run_id, "stopped")
    store.delete_run(run_id)
    with pytest.raises(KeyError):
        store.get_run(run_id)
    assert len(store.metrics(run_id)) == 0 and not store.run_dir(run_id).exists()


def test_checkpoints_round_trip_with_weights_only(store: RunStore) -> None:
    import pickle

    import torch

    run_id = store.create_run(config())
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "step": 7}
    store.sink(run_id).checkpoint(state, "final")
    store.save_checkpoint(run_id, {"step": 3}, "step-3")
    assert store.checkpoints(run_id) == ["final", "step-3"]
    loaded = store.load_checkpoint(run_id, "final")
    assert loaded["step"] == 7 and torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert not list(store.checkpoint_path(run_id, "final").parent.glob("*.tmp*"))

    # weights_only=True refuses pickled code: a checkpoint holding an arbitrary object fails.
    torch.save({"obj": _Evil()}, store.checkpoint_path(run_id, "evil"))
    with pytest.raises(pickle.UnpicklingError):
        store.load_checkpoint(run_id, "evil")
    with pytest.raises(FileNotFoundError, match="it has: evil, final, step-3"):
        store.load_checkpoint(run_id, "best")
    with pytest.raises(ValueError, match="bad checkpoint name"):
        store.checkpoint_path(run_id, "../escape")


class _Evil:
    pass


def test_metrics_survive_a_killed_writer(store: RunStore) -> None:
    run_id = store.create_run(config())
    script = (
        "import os, signal, sys\n"
        "from mtl_core.store import RunStore\n"
        "sink = RunStore(sys.argv[1]).sink(sys.argv[2])\n"
        "for step in range(50):\n"
        "    sink.metrics([(step, 0.0, 'train', 'a', 'loss', float(step))])\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(store.runs_dir), run_id],
                          cwd=ROOT, capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr.decode()
    assert store.metrics(run_id)["value"].tolist() == [float(s) for s in range(50)]
