"""A weight sweep's grid points as one stacked run (issue 12, item 4; mtl_core.stacked_sweep)."""
from __future__ import annotations

import math

import pytest

from mtl_core import jobs
from mtl_core.config import parse_config
from mtl_core.fair_queue import CARRIED_PREFIX
from mtl_core.replicas import train_replicas
from mtl_core.sink import MemorySink
from mtl_core.stacked_sweep import PointSink, claim_carried, stack_key, train_points
from mtl_core.store import RunStore
from mtl_core.sweep import submit_sweep, sweep_configs, sweep_table, wait_for_sweep
from mtl_core.trainer import train

REL = 1e-5  # floating-point reordering only


def sweep_doc(tiny_doc, **changes):
    doc = tiny_doc({"data": {"params": {"n_samples": 300, "n_test": 100}},
                    "tasks": [{"name": "circle"}, {"name": "distance"}],
                    "optim": {"epochs": 3, "lr": 0.03}, **changes})
    return doc


def assert_same_metrics(got: dict, want: dict) -> None:
    """Every split's task metrics equal within REL (NaN equals NaN)."""
    for split in ("test", "val", "best_val"):
        assert set(got.get(split) or {}) == set(want.get(split) or {}), split
        for task, values in (want.get(split) or {}).items():
            assert set(got[split][task]) == set(values), (split, task)
            for name, value in values.items():
                mine = got[split][task][name]
                assert (math.isnan(value) and math.isnan(mine)) or \
                    math.isclose(mine, value, rel_tol=REL, abs_tol=1e-7), (split, task, name)


def rows_of(sink: MemorySink) -> dict[tuple, float]:
    return {(r[0], r[2], r[3], r[4], r[6]): r[5] for r in sink.rows}


def test_stacked_points_give_each_point_its_separate_run(tiny_doc):
    configs = sweep_configs(sweep_doc(tiny_doc), 3)
    sinks = [MemorySink() for _ in configs]
    results = train_points(configs, sinks)
    for cfg, sink, result in zip(configs, sinks, results, strict=True):
        alone = MemorySink()
        expected = train(cfg, alone)
        assert result.status == expected.status == "finished"
        assert result.steps == expected.steps
        assert set(result.summary) == set(expected.summary)  # no "replicas" for one seed
        assert_same_metrics(result.summary, expected.summary)
        mine, theirs = rows_of(sink), rows_of(alone)
        assert set(mine) == set(theirs)  # the same rows, all as replica 0
        for key, value in theirs.items():
            assert math.isclose(mine[key], value, rel_tol=1e-4, abs_tol=1e-6), key
        assert {k for _, k, _ in sink.snapshots} == {k for _, k, _ in alone.snapshots}
        assert set(sink.checkpoints) == {"last", "final"}
    # the weights made a difference: the points are not one run copied
    assert results[0].summary["val"]["circle"] != results[2].summary["val"]["circle"]


def test_stacked_points_with_replicas_match_each_points_stacked_run(tiny_doc):
    configs = sweep_configs(sweep_doc(tiny_doc, replicas=2), 2)
    sinks = [MemorySink() for _ in configs]
    results = train_points(configs, sinks)
    for cfg, sink, result in zip(configs, sinks, results, strict=True):
        expected = train_replicas(cfg, MemorySink())
        assert_same_metrics(result.summary, expected.summary)
        assert [e["seed"] for e in result.summary["replicas"]] == [0, 1]
        for got, want in zip(result.summary["replicas"], expected.summary["replicas"],
                             strict=True):
            assert_same_metrics(got, want)
        assert {r[6] for r in sink.rows} == {0, 1}
        assert {k for _, k, _ in sink.snapshots} >= {"predictions", "predictions/r1"}


def test_point_sink_routes_each_slot_to_its_point_as_its_replica():
    sinks = [MemorySink(), MemorySink()]
    demux = PointSink(sinks, 2, [None, f"{CARRIED_PREFIX}abc"])
    demux.metrics([(1, 0.0, "val", "a", "loss", 0.5, 3), (1, 0.0, "val", "a", "loss", 0.7, 0)])
    demux.snapshot(1, "predictions/r3", {"x": 1})
    demux.snapshot(1, "predictions/r2", {"x": 2})
    demux.progress(1, 10, 0.1)
    assert sinks[0].rows == [(1, 0.0, "val", "a", "loss", 0.7, 0)]  # the carrier: at once
    assert sinks[0].last_progress == (1, 10, 0.1)
    assert sinks[1].rows == [] and sinks[1].last_progress == (0, 0, 0.0)  # batched
    demux.flush()
    assert sinks[1].rows == [(1, 0.0, "val", "a", "loss", 0.5, 1)]
    assert sinks[1].last_progress == (1, 10, 0.1)
    demux.metrics([(2, 0.0, "val", "a", "loss", 0.4, 2)])
    assert sinks[1].snapshots == [(1, "predictions/r1", {"x": 1}), (1, "predictions", {"x": 2})]
    demux.status("paused")
    assert sinks[0].statuses == [("paused", None)]
    assert sinks[1].statuses == [("paused", f"{CARRIED_PREFIX}abc")]  # keeps its marker
    sinks[1].requests.append("stop")
    assert demux.control() == "stop"  # a request on any point acts on the stacked run
    entries = [{"model": {"w": i}, "weighting": {}} for i in range(4)]
    demux.checkpoint({"model": {}, "optimizer": {"o": 1}, "weighting": {}, "step": 5,
                      "epoch": 1, "replicas": entries}, "final")
    assert sinks[1].rows[-1] == (2, 0.0, "val", "a", "loss", 0.4, 0)  # flushed first
    assert sinks[1].checkpoints["final"]["model"] == {"w": 2}
    assert sinks[1].checkpoints["final"]["replicas"] == entries[2:]
    assert "optimizer" in sinks[0].checkpoints["final"]
    assert "optimizer" not in sinks[1].checkpoints["final"]


def test_only_static_points_of_one_config_stack(tiny_doc):
    static, other = (c.to_dict() for c in sweep_configs(sweep_doc(tiny_doc), 2)[:2])
    assert stack_key(static) is not None and stack_key(static) == stack_key(other)
    adaptive = sweep_configs(sweep_doc(tiny_doc), 2, ["uncertainty"])[-1].to_dict()
    assert stack_key(adaptive) is None
    wider = dict(static, model={**static["model"], "heads": {"layers": [16]}})
    assert stack_key(parse_config(wider).to_dict()) != stack_key(static)


def test_claim_takes_queued_stackable_points_and_they_count_once(tiny_doc, monkeypatch):
    monkeypatch.setattr(jobs, "dispatch", lambda *a, **k: None)  # queue only
    sub = submit_sweep(sweep_doc(tiny_doc), 3, extra_methods=["uncertainty"])
    store = RunStore()
    grid, adaptive = sub.run_ids[:3], sub.run_ids[3]
    assert store.claim_run(7001, grid[1]) == grid[1]  # another worker took point 1
    assert store.claim_run(7002, grid[0]) == grid[0]
    assert claim_carried(store, 7002, grid[0]) == [grid[2]]  # not point 1, not uncertainty
    carried = store.get_run(grid[2])
    assert carried.status == "running" and carried.pid == 7002
    assert carried.message == f"{CARRIED_PREFIX}{grid[0]}"
    assert store.get_run(adaptive).status == "queued"
    assert jobs.active_count(store) == 2  # the two workers, not three runs
    # the concurrency limit counts the carrier only: a third slot is still free
    assert store.claim_run(7003, max_active=3) == adaptive
    assert claim_carried(store, 7003, adaptive) == []


def test_stacking_can_be_turned_off(tiny_doc, monkeypatch):
    monkeypatch.setattr(jobs, "dispatch", lambda *a, **k: None)
    monkeypatch.setenv("MTL_STACK_SWEEPS", "0")
    sub = submit_sweep(sweep_doc(tiny_doc), 3)
    store = RunStore()
    store.claim_run(7002, sub.run_ids[0])
    assert claim_carried(store, 7002, sub.run_ids[0]) == []


@pytest.mark.slow
def test_a_sweep_through_the_workers_stacks_its_grid_and_runs_the_rest_alone(
        tiny_doc, end_workers, monkeypatch):
    monkeypatch.setenv("MTL_MAX_JOBS", "1")  # one worker: it carries the whole grid
    doc = sweep_doc(tiny_doc)
    sub = submit_sweep(doc, 3, end_workers, extra_methods=("uncertainty",))
    counts = wait_for_sweep(sub.sweep_id, end_workers, timeout=150)
    assert counts == {"finished": 4}, counts
    store = RunStore(end_workers)
    runs = [store.get_run(i) for i in sub.run_ids]
    assert len({r.pid for r in runs[:3]}) == 1  # the grid: one stacked run
    log = (end_workers / "workers.log").read_text()
    assert f"run {sub.run_ids[0]}: carries {sub.run_ids[1]}, {sub.run_ids[2]}" in log
    assert "carries" not in log.split(f"run {sub.run_ids[3]}: started")[1]  # alone
    for run, cfg in zip(runs, sweep_configs(doc, 3, ("uncertainty",)), strict=True):
        assert run.message is None and (end_workers / run.id / "run.json").exists()
        assert run.device == "cpu"
        assert run.step == 15 and store.checkpoints(run.id)
        assert_same_metrics(run.summary, train(cfg, MemorySink()).summary)
    table = sweep_table(store, sub.sweep_id)
    assert list(table["run_id"]) == sub.run_ids
    assert table[[c for c in table if c.startswith(("val_", "test_"))]].notna().all().all()
    assert table["chosen"].sum() == 1


@pytest.mark.slow
def test_the_cli_prints_the_same_sweep_table_stacked_or_not(tmp_path, end_workers, tiny_doc):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(sweep_doc(tiny_doc)))
    root = Path(__file__).resolve().parent.parent

    def sweep(stack: str, runs_dir: Path) -> list[str]:
        env = {**os.environ, "PYTHONPATH": str(root), "MTL_MAX_JOBS": "2",
               "MTL_STACK_SWEEPS": stack}
        proc = subprocess.run([sys.executable, "-m", "mtl_core", "sweep", str(config),
                               "--runs-dir", str(runs_dir), "--grid", "3",
                               "--methods", "uncertainty"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip().splitlines()[:-1]  # the last line is the sweep id

    apart = tmp_path / "apart"  # its own store: the stacking workers never see it
    try:
        separate = sweep("0", apart)
    finally:
        for pid, _, _ in RunStore(apart).workers():
            if jobs.pid_alive(pid):
                os.kill(pid, signal.SIGTERM)
    stacked = sweep("1", end_workers)
    assert stacked == separate
    assert len(stacked) == 1 + 4 + 1 and sum("chosen" in line for line in stacked) == 1
    assert "carries" in (end_workers / "workers.log").read_text()
    assert "carries" not in (apart / "workers.log").read_text()


def test_a_sweep_is_queued_in_one_index_transaction(tiny_doc, monkeypatch):
    # a worker polling meanwhile sees every point or none, so it stacks them all
    monkeypatch.setattr(jobs, "dispatch", lambda *a, **k: None)
    calls: list[int] = []
    original = RunStore._index_new_runs

    def counted(self, docs):
        calls.append(len(docs))
        return original(self, docs)

    monkeypatch.setattr(RunStore, "_index_new_runs", counted)
    sub = submit_sweep(sweep_doc(tiny_doc), 3, extra_methods=["uncertainty"])
    assert calls == [4]
    assert [r.status for r in map(RunStore().get_run, sub.run_ids)] == ["queued"] * 4


def test_a_stack_holds_no_more_slots_than_one_run_may(tiny_doc, monkeypatch):
    monkeypatch.setattr(jobs, "dispatch", lambda *a, **k: None)
    store = RunStore()
    # replicas: 2 and a cap of 4 slots: the carrier takes one more point of the three left
    monkeypatch.setattr("mtl_core.stacked_sweep.MAX_STACK_SLOTS", 4)
    sub = submit_sweep(sweep_doc(tiny_doc, replicas=2), 4)
    store.claim_run(7002, sub.run_ids[0])
    assert claim_carried(store, 7002, sub.run_ids[0]) == [sub.run_ids[1]]
    monkeypatch.setattr("mtl_core.stacked_sweep.MAX_STACK_SLOTS", 32)
    # a model near the parameter limit: two copies fit in max_params, three do not
    from mtl_core import limits

    wide = sweep_doc(tiny_doc, model={"trunk": {"type": "mlp", "layers": [2048, 2048, 2048]},
                                      "heads": {"layers": [8]}})
    per_model = sum(limits.count_parameters(parse_config(wide)).values())
    assert 2 * per_model <= limits.current().max_params < 3 * per_model
    sub = submit_sweep(wide, 4)
    store.claim_run(7003, sub.run_ids[0])
    assert claim_carried(store, 7003, sub.run_ids[0]) == [sub.run_ids[1]]
    for left in map(store.get_run, sub.run_ids[2:]):  # claimed at once, then given back
        assert (left.status, left.pid, left.started_at, left.message) == \
            ("queued", None, None, None)


def test_a_stacked_run_that_fails_fails_every_point_it_carried(tiny_doc, monkeypatch):
    from mtl_core import stacked_sweep
    from mtl_core.worker import Worker

    monkeypatch.setattr(jobs, "dispatch", lambda *a, **k: None)
    sub = submit_sweep(sweep_doc(tiny_doc), 3)
    store = RunStore()

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory in the stacked step")

    monkeypatch.setattr(stacked_sweep, "train_points", broken)
    worker = Worker(store, announce=False)
    assert store.claim_run(worker.pid, sub.run_ids[0]) == sub.run_ids[0]
    assert worker.run_one(sub.run_ids[0]) == "failed"
    for run in map(store.get_run, sub.run_ids):
        assert run.status == "failed" and "out of memory" in (run.message or ""), run
    assert jobs.active_count(store) == 0
