"""The store path around a stacked sweep's training (issue 12, sweep12): its points claimed,
started, polled and ended in one transaction each, every point still with its own status,
summary and run.json; and an idle worker that claims a just-queued run at once."""
from __future__ import annotations

import json
import threading
import time

import pytest
from store_support import config

from mtl_core import jobs, stacked_sweep, worker
from mtl_core.fair_queue import CARRIED_PREFIX
from mtl_core.stacked_sweep import PointSink, claim_carried, pick_carried
from mtl_core.store import RunStore
from mtl_core.sweep import submit_sweep
from mtl_core.trainer import TrainResult


class Transactions:
    """Counts the store's write transactions while installed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        write = RunStore._write

        def counting(store: RunStore):
            self.count += 1
            return write(store)

        monkeypatch.setattr(RunStore, "_write", counting)


def sweep_doc(tiny_doc):
    return tiny_doc({"data": {"params": {"n_samples": 300, "n_test": 100}},
                     "tasks": [{"name": "circle"}, {"name": "distance"}],
                     "optim": {"epochs": 1}})


def test_statuses_written_together_give_each_run_its_own(store):
    ids = [store.create_run(config(f"p{i}")) for i in range(4)]
    for run_id in ids[:3]:
        store.set_status(run_id, "running")
    changed = store.set_statuses([
        (ids[0], "finished", None, ["running"], {"step": 7, "summary": {"test": {"a": 1}}}),
        (ids[1], "diverged", "loss became nan", ["running"], {"step": 3}),
        (ids[2], "stopped", "stopped by request", ["running"], {}),
        (ids[3], "finished", None, ["running"], {}),  # queued, not running: left as it is
        ("no-such-run", "finished", None, None, {}),  # skipped, the others still written
    ])
    assert changed == [True, True, True, False, False]
    runs = [store.get_run(i) for i in ids]
    assert [(r.status, r.message, r.step) for r in runs] == [
        ("finished", None, 7), ("diverged", "loss became nan", 3),
        ("stopped", "stopped by request", 0), ("queued", None, 0)]
    assert runs[0].summary == {"test": {"a": 1}} and all(r.ended_at for r in runs[:3])
    for run in runs:  # the folder (the truth) says the same as the index
        doc = json.loads((store.run_dir(run.id) / "run.json").read_text())
        assert (doc["status"], doc["message"], doc["step"]) == (run.status, run.message,
                                                                run.step)
    with pytest.raises(ValueError, match="unknown run status"):
        store.set_statuses([(ids[3], "running", None, None, {}),
                            (ids[3], "done", None, None, {})])
    assert store.get_run(ids[3]).status == "queued"  # checked first: nothing written


def test_a_worker_claims_a_sweeps_first_point_and_the_others_in_one_transaction(
        tiny_doc, monkeypatch):
    monkeypatch.setattr(jobs, "dispatch", lambda *a, **k: None)
    alone = RunStore().create_run(config("older, not of the sweep"))
    sub = submit_sweep(sweep_doc(tiny_doc), 5)
    store = RunStore()
    counter = Transactions(monkeypatch)
    assert store.claim_with(7001, max_active=2, carry=pick_carried) == (alone, [])
    # the second idle worker woken by the same submit: it takes the whole sweep at once,
    # so a third one finds nothing of it left to split it with
    assert store.claim_with(7002, max_active=3, carry=pick_carried) == \
        (sub.run_ids[0], sub.run_ids[1:])
    assert counter.count == 2
    assert store.claim_run(7003, max_active=3) is None
    for run_id in sub.run_ids[1:]:
        run = store.get_run(run_id)
        assert (run.status, run.pid, run.message) == \
            ("running", 7002, f"{CARRIED_PREFIX}{sub.run_ids[0]}")
    assert jobs.active_count(store) == 2  # the carried points take no slot


def test_claim_carried_takes_the_points_left_in_one_transaction(tiny_doc, monkeypatch):
    monkeypatch.setattr(jobs, "dispatch", lambda *a, **k: None)
    sub = submit_sweep(sweep_doc(tiny_doc), 5)
    store = RunStore()
    assert store.claim_run(7002, sub.run_ids[0]) == sub.run_ids[0]
    counter = Transactions(monkeypatch)
    assert claim_carried(store, 7002, sub.run_ids[0]) == sub.run_ids[1:]
    assert counter.count == 1


def test_a_stacked_sweep_starts_and_ends_its_points_in_one_transaction_each(
        tiny_doc, monkeypatch):
    monkeypatch.setattr(jobs, "dispatch", lambda *a, **k: None)
    sub = submit_sweep(sweep_doc(tiny_doc), 4)
    store = RunStore()
    counter = Transactions(monkeypatch)
    marks: dict[str, int] = {}
    results = [TrainResult("finished", None, 9, {"test": {"circle": {"accuracy": 0.9}}}),
               TrainResult("diverged", "a task loss became nan", 4, {"val": {}}),
               TrainResult("finished", "early stopping after 2 evaluations", 6,
                           {"test": {"circle": {"accuracy": 0.7}}}),
               TrainResult("finished", None, 9, {"test": {"circle": {"accuracy": 0.8}}})]

    def fake_train_points(configs, sinks, messages):
        marks["start"] = counter.count
        assert len(configs) == 4 and messages[1:] == [f"{CARRIED_PREFIX}{sub.run_ids[0]}"] * 3
        for run_id in sub.run_ids[1:]:  # started together, marked as carried, on the device
            run = store.get_run(run_id)
            assert (run.status, run.device) == ("running", "cpu"), run
        marks["end"] = counter.count
        return results

    monkeypatch.setattr(stacked_sweep, "train_points", fake_train_points)
    w = worker.Worker(store, announce=False)
    before = counter.count
    claimed = store.claim_with(w.pid, carry=pick_carried)
    assert claimed == (sub.run_ids[0], sub.run_ids[1:])
    assert w.run_one(*claimed) == "finished"
    # the claim of every point (1) + the carrier running (1) + the carried running (1)
    assert marks["start"] - before == 3
    # after training: every point's final status (1), then the worker's row (1)
    assert counter.count - marks["end"] == 2
    for run_id, result in zip(sub.run_ids, results, strict=True):
        run = store.get_run(run_id)
        assert (run.status, run.message, run.step, run.summary) == \
            (result.status, result.message, result.steps, result.summary)
        assert json.loads((store.run_dir(run_id) / "run.json").read_text())["status"] == \
            result.status
    assert jobs.active_count(store) == 0


def test_carried_points_are_polled_in_one_read_and_beat_in_one_write(store, monkeypatch):
    ids = [store.create_run(config(f"p{i}")) for i in range(4)]
    for run_id in ids:
        store.set_status(run_id, "running", heartbeat_at=1.0)
    demux = PointSink([store.sink(i) for i in ids], 1, [None] + ["carried"] * 3)
    counter = Transactions(monkeypatch)
    assert demux.control() is None
    # the carrier's own heartbeat, and one for the three carried points together
    assert counter.count == 2
    assert all(store.get_run(i).heartbeat_at > 1.0 for i in ids)
    assert demux.control() is None and counter.count == 2  # no beat due: reads only
    store.request_control(ids[2], "pause")
    store.request_control(ids[3], "stop")
    assert demux.control() == "pause"  # the oldest request of any point, taken once
    assert demux.control() == "stop"
    assert demux.control() is None and store.pending_controls(ids[3]) == []
    store.set_status(ids[1], "failed", "marked failed elsewhere")
    demux.beat_at = -1e9  # a heartbeat is due
    assert demux.control() == "stop"  # a point no longer live stops the stacked run


def test_an_idle_worker_wakes_when_a_run_is_queued_not_at_its_next_poll(store, monkeypatch):
    monkeypatch.setattr(worker, "POLL_S", 60.0)
    w = worker.Worker(store, train=lambda cfg, sink: None, resolve_device=lambda d: "cpu",
                      announce=False)
    stamp = store.queue_stamp()
    threading.Timer(0.2, lambda: store.create_run(config())).start()
    start = time.monotonic()
    w._wait(stamp)
    assert time.monotonic() - start < 20  # woken by the queue stamp, not after 60 s
    assert store.queue_stamp() != stamp
    assert store.claim_run(w.pid) is not None
