"""The run store's batched write (`RunStore.add_many`) and the sinks that use it: several
snapshots, metric rows and progress, of one run or several, in one index transaction."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from store_support import config

from mtl_core import store as store_module
from mtl_core.config import parse_config
from mtl_core.sink import MemorySink
from mtl_core.stacked_sweep import PointSink
from mtl_core.store import RunStore
from mtl_core.trainer import train


class Counter:
    """Counts the store's write transactions and file appends while installed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.transactions, self.appends = 0, []
        write, append = RunStore._write, store_module.append

        def counting_write(store: RunStore):
            self.transactions += 1
            return write(store)

        def counting_append(path: Path, data: bytes) -> None:
            self.appends.append(path)
            append(path, data)

        monkeypatch.setattr(RunStore, "_write", counting_write)
        monkeypatch.setattr(store_module, "append", counting_append)


def test_add_many_round_trips_several_runs_in_one_transaction(store, monkeypatch):
    a, b = store.create_run(config("a")), store.create_run(config("b"))
    counter = Counter(monkeypatch)
    store.add_many(
        metrics={a: [(5, 0.5, "val", "x", "loss", 0.25, 1)], b: [(5, 0.5, "train", "x", "loss",
                                                                  float("nan"))]},
        snapshots=[(a, 5, "predictions", {"outputs": {"x": [1, 0]}}),
                   (b, 5, "predictions/r1", {"outputs": {"x": [0.5]}}),
                   (a, 5, "grid", {"values": [[0.1]]})],
        progress={a: (5, 10, 0.5), b: (6, 12, 0.5)})
    assert counter.transactions == 1
    # one append per run and file: each run's lines land in one O_APPEND write
    assert sorted(p.name for p in counter.appends) == ["metrics.jsonl", "metrics.jsonl",
                                                        "snapshots.jsonl", "snapshots.jsonl"]
    assert store.snapshots(a, "predictions") == [(5, {"outputs": {"x": [1, 0]}})]
    assert store.snapshots(a, "grid") == [(5, {"values": [[0.1]]})]
    assert store.snapshots(b, "predictions/r1") == [(5, {"outputs": {"x": [0.5]}})]
    assert store.snapshots(b, "predictions") == []
    rows_a, rows_b = store.metrics(a), store.metrics(b)
    assert rows_a[["step", "split", "value", "replica"]].values.tolist() == [[5, "val", 0.25, 1]]
    assert rows_b["value"].isna().all() and rows_b["replica"].tolist() == [0]  # NaN kept
    assert (store.get_run(a).step, store.get_run(a).total_steps) == (5, 10)
    assert (store.get_run(b).step, store.get_run(b).total_steps) == (6, 12)
    assert json.loads((store.run_dir(b) / "run.json").read_text())["step"] == 6


def test_add_many_lines_are_the_folders_truth_after_a_rebuild(store):
    a, b = store.create_run(config("a")), store.create_run(config("b"))
    store.add_many(snapshots=[(a, 1, "scatter", {"x": {"true": [1.0], "pred": [2.0]}}),
                   (b, 1, "scatter", {"x": {"true": [3.0], "pred": [4.0]}})])
    store.db_path.unlink()
    rebuilt = RunStore(store.runs_dir)
    rebuilt.get_run(a)  # any call: the index is rebuilt from the folders
    assert rebuilt.snapshots(a, "scatter") == [(1, {"x": {"true": [1.0], "pred": [2.0]}})]
    assert rebuilt.snapshots(b, "scatter") == [(1, {"x": {"true": [3.0], "pred": [4.0]}})]


def test_add_many_skips_a_deleted_run_and_writes_the_others(store):
    a, gone = store.create_run(config("a")), store.create_run(config("gone"), "stopped")
    store.delete_run(gone)
    store.add_many(metrics={gone: [(1, 0.0, "val", "x", "loss", 1.0)]},
                   snapshots=[(gone, 1, "predictions", {"o": 1}), (a, 1, "predictions", {"o": 2})])
    assert store.snapshots(a, "predictions") == [(1, {"o": 2})]
    assert not store.run_dir(gone).exists()


@pytest.mark.parametrize("bad", [
    {"metrics": {"RUN": [(1, 0.0, "val", "x", "loss")]}},  # 5 elements
    {"snapshots": [("../elsewhere", 1, "predictions", {})]},  # not a run id
])
def test_add_many_writes_nothing_when_an_item_is_malformed(store, bad):
    run_id = store.create_run(config())
    bad = json.loads(json.dumps(bad).replace("RUN", run_id))
    with pytest.raises(ValueError, match="metric row has 6 or 7|is not a run id"):
        store.add_many(snapshots=[(run_id, 1, "predictions", {"o": 1}),
                                  *[tuple(s) for s in bad.get("snapshots", [])]],
                       metrics=bad.get("metrics"))
    assert not (store.run_dir(run_id) / "snapshots.jsonl").exists()
    assert not (store.runs_dir.parent / "elsewhere").exists()
    assert store.snapshots(run_id, "predictions") == []


def test_a_batch_whose_transaction_fails_is_picked_up_by_the_next_write(store, monkeypatch):
    run_id = store.create_run(config())
    original = RunStore._sync_all

    def locked(self, files, progress=None, appended=None):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(RunStore, "_sync_all", locked)
    with pytest.raises(sqlite3.OperationalError):
        store.add_many(snapshots=[(run_id, 1, "predictions", {"o": 1}),
                                  (run_id, 1, "confusion", {"x": [[1]]})])
    monkeypatch.setattr(RunStore, "_sync_all", original)
    store.add_many(snapshots=[(run_id, 2, "predictions", {"o": 2})])
    assert store.snapshots(run_id, "predictions") == [(1, {"o": 1}), (2, {"o": 2})]  # once each
    assert store.snapshots(run_id, "confusion") == [(1, {"x": [[1]]})]


def test_point_sink_writes_every_points_snapshots_and_flush_in_one_transaction(
        store, monkeypatch):
    ids = [store.create_run(config(f"p{i}")) for i in range(3)]
    for run_id in ids:
        store.set_status(run_id, "running")
    demux = PointSink([store.sink(i) for i in ids], 2, [None, "carried", "carried"])
    counter = Counter(monkeypatch)
    # slots 0..5 = (point, replica) pairs; an evaluation of every slot in one call
    demux.snapshot_many([(3, "predictions" if s == 0 else f"predictions/r{s}", {"slot": s})
                         for s in range(6)])
    assert counter.transactions == 1
    demux.metrics([(3, 1.0, "val", "x", "loss", float(s), s) for s in range(6)])
    demux.progress(3, 9, 1.0)
    before = counter.transactions
    demux.flush()
    assert counter.transactions == before + 1  # both carried points' rows and progress
    for p, run_id in enumerate(ids):
        assert store.snapshots(run_id, "predictions") == [(3, {"slot": 2 * p})]
        assert store.snapshots(run_id, "predictions/r1") == [(3, {"slot": 2 * p + 1})]
        rows = store.metrics(run_id)
        assert sorted(zip(rows["replica"], rows["value"], strict=True)) == \
            [(0, 2.0 * p), (1, 2.0 * p + 1)]
        assert store.get_run(run_id).step == 3


def test_a_stacked_run_writes_each_evaluation_in_one_snapshot_transaction(
        store, monkeypatch, tiny_doc):
    cfg = parse_config(tiny_doc({"replicas": 3, "optim": {"epochs": 2}}))
    run_id = store.create_run(cfg)
    store.set_status(run_id, "running")
    calls: list[list] = []
    add_many = RunStore.add_many

    def recording(self, metrics=None, snapshots=(), progress=None):
        snapshots = list(snapshots)
        if snapshots:
            calls.append(snapshots)
        return add_many(self, metrics, snapshots, progress)

    monkeypatch.setattr(RunStore, "add_many", recording)
    train(cfg, store.sink(run_id))
    memory = MemorySink()
    train(cfg, memory)
    # the probes (step 0), then one write per evaluation (2 epochs) for all 3 replicas
    steps = sorted({s for s, _, _ in memory.snapshots})
    assert len(steps) == 3  # step 0 and the end of each epoch
    assert [sorted({item[1] for item in call}) for call in calls] == [[s] for s in steps]
    assert all({item[0] for item in call} == {run_id} for call in calls)
    assert sum(len(call) for call in calls) == len(memory.snapshots)
    for r in range(3):  # what the Predictions page reads for each replica
        kind = "predictions" if r == 0 else f"predictions/r{r}"
        assert store.snapshots(run_id, kind) == [(s, p) for s, k, p in memory.snapshots
                                                 if k == kind]


def test_snapshot_payload_text_survives_the_index_as_written(store):
    run_id = store.create_run(config())
    tricky = {"values": [[0.5, float("inf")]], "time": 3, "note": ',"time":1}',
              "payload": {"kind": '"payload":', "é": "\"x"}}
    store.add_snapshot(run_id, 1, 'odd","payload":kind', tricky)
    store.add_snapshot(run_id, 2, "plain", {})
    for reader in (store, _rebuilt(store)):
        assert reader.snapshots(run_id, 'odd","payload":kind') == [(1, tricky)]
        assert reader.snapshots(run_id, "plain") == [(2, {})]


def _rebuilt(store: RunStore) -> RunStore:
    store.db_path.unlink()
    return RunStore(store.runs_dir)


def predictions(sink: MemorySink, kind: str) -> dict[int, dict]:
    return {step: payload for step, k, payload in sink.snapshots if k == kind}


def test_other_seeds_write_snapshots_at_spread_evaluations_and_the_last(tiny_doc):
    from mtl_core.replicas import REPLICA_SNAPSHOTS

    doc = tiny_doc({"optim": {"epochs": 12}})  # 12 evaluations: every 3rd for seed 1
    stacked, alone = MemorySink(), MemorySink()
    train(parse_config({**doc, "replicas": 2}), stacked)
    train(parse_config({**doc, "seed": 1}), alone)
    steps = sorted(predictions(stacked, "predictions"))  # the run's own seed: every one
    assert len(steps) == 12 and REPLICA_SNAPSHOTS == 5
    other = predictions(stacked, "predictions/r1")
    assert sorted(other) == [steps[2], steps[5], steps[8], steps[11]]
    for step, payload in other.items():  # the payload of that evaluation, not a later one
        for task, values in payload["outputs"].items():
            assert values == pytest.approx(predictions(alone, "predictions")[step]["outputs"][task],
                                           rel=1e-4, abs=1e-5)
    # val rows are not throttled: every evaluation of every seed
    val_steps = {r[0] for r in stacked.rows if r[2] == "val" and r[6] == 1}
    assert sorted(val_steps) == steps


def test_a_run_ended_early_keeps_each_seeds_last_evaluation(tiny_doc):
    sink = MemorySink()
    doc = tiny_doc({"replicas": 3, "optim": {"epochs": 40, "eval_every": 2, "lr": 0.05,
                                             "early_stopping": {"patience": 1}}})
    result = train(parse_config(doc), sink)
    assert "early stopping" in (result.message or "")
    for r in range(3):
        kind = "predictions" if r == 0 else f"predictions/r{r}"
        last_val = max(row[0] for row in sink.rows if row[2] == "val" and row[6] == r)
        assert max(predictions(sink, kind)) == last_val
        if r:  # held back in between: fewer than one per evaluation
            evaluations = {row[0] for row in sink.rows if row[2] == "val" and row[6] == r}
            assert len(predictions(sink, kind)) < len(evaluations)


def _index_rows(store: RunStore, run_id: str) -> tuple[list, list]:
    with store._connect() as conn:
        metrics = [tuple(r) for r in conn.execute(
            "SELECT * FROM metrics WHERE run_id = ? ORDER BY id", (run_id,))]
        snapshots = [tuple(r) for r in conn.execute(
            "SELECT * FROM snapshots WHERE run_id = ? ORDER BY id", (run_id,))]
    return metrics, snapshots


def test_a_writers_own_lines_are_indexed_without_reading_them_back_as_a_rebuild_would(
        store, monkeypatch):
    run_id = store.create_run(config())
    ingested: list[tuple[str, str]] = []
    ingest = RunStore._ingest

    def recording(self, conn, rid, kind):
        ingested.append((rid, kind))
        return ingest(self, conn, rid, kind)

    monkeypatch.setattr(RunStore, "_ingest", recording)
    for step in (1, 2):
        store.add_many(
            metrics={run_id: [(step, 0.5, "val", "x", "loss", 0.1 * step, 1),
                              (step, 0.5, "train", "x", "loss", float("nan")),
                              (step, 0.5, "train", "y", "loss", float("inf"), 0)]},
            snapshots=[(run_id, step, "scatter", {"x": {"true": [1.5, -2.0], "pred": [1e-7]}}),
                       (run_id, step, "predictions/r1", {"outputs": {"x": [0.25]}})])
    assert ingested == []  # the index rows came from the batch itself
    written = _index_rows(store, run_id)
    assert len(written[0]) == 6 and len(written[1]) == 4
    monkeypatch.setattr(RunStore, "_ingest", ingest)
    rebuilt = _rebuilt(store)  # the folder's lines, read and parsed
    rebuilt.get_run(run_id)
    assert _index_rows(rebuilt, run_id) == written  # same ids, values, payload text


def test_lines_of_an_earlier_writer_are_indexed_before_a_batch_and_none_twice(store):
    run_id = store.create_run(config())
    store.add_metrics(run_id, [(1, 0.0, "val", "x", "loss", 1.0)])
    folder = store.run_dir(run_id)
    # a writer that died between its append and its index transaction
    store_module.append(folder / "metrics.jsonl",
                        store_module.metric_line(2, 0.0, "val", "x", "loss", 2.0, 0, 1.0))
    store.add_metrics(run_id, [(3, 0.0, "val", "x", "loss", 3.0)])
    store.add_metrics(run_id, [(4, 0.0, "val", "x", "loss", 4.0)])
    rows = store.metrics(run_id)
    assert rows["step"].tolist() == [1, 2, 3, 4] and rows["value"].tolist() == [1, 2, 3, 4]
    offsets = [0]  # a line's id is 1 + its byte offset in the file
    for line in (folder / "metrics.jsonl").read_bytes().splitlines(keepends=True)[:-1]:
        offsets.append(offsets[-1] + len(line))
    assert rows["id"].tolist() == [o + 1 for o in offsets]
