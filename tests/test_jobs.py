"""Jobs and workers: the queue and its limit, stop/pause/resume, crashes and their repair.

The first tests drive the worker's own loop in threads with a fake train function (fast, and
precise about ordering); the last ones start real worker processes running the real trainer.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_support import wait_until

from mtl_core import jobs
from mtl_core import worker as worker_module
from mtl_core.config import ExperimentConfig
from mtl_core.store import RunStore
from mtl_core.trainer import TrainResult
from mtl_core.worker import Worker

TINY = {"data": {"suite": "toy_2d"}, "optim": {"epochs": 1}}
# Runs until stopped: many short epochs, logged every 2 steps, evaluated only at the end.
LONG = {"data": {"suite": "toy_2d", "params": {"n_samples": 200, "n_test": 50}},
        "optim": {"epochs": 5000, "batch_size": 16, "eval_every": 10_000_000}, "log_every": 2}


def unchecked(document: dict[str, Any]) -> ExperimentConfig:
    return ExperimentConfig.model_validate(document)


def wait_for(condition: Callable[[], Any], timeout: float = 120.0,
             what: str = "the condition") -> Any:
    return wait_until(condition, timeout, what, interval=0.1)



@pytest.fixture
def own_workers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Real worker processes this test starts; any still running at the end are killed."""
    monkeypatch.setattr(jobs, "IDLE_TIMEOUT_S", 20.0)
    started = len(jobs._children)
    yield
    for proc in jobs._children[started:]:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def fake_worker(store: RunStore, train: Callable[..., Any], pid: int = 90_001) -> Worker:
    worker = Worker(store, train=train, resolve_device=lambda spec: "cpu")
    worker.pid = pid  # threads share the test's pid; the store only needs distinct ids
    return worker


# -- the worker loop, with a fake trainer ----------------------------------------------------------

def test_worker_records_result_summary_and_device(store: RunStore) -> None:
    run_id = store.create_run(unchecked(TINY))

    def train(cfg: ExperimentConfig, sink: Any) -> TrainResult:
        assert store.get_run(sink.run_id).status == "running"
        sink.metrics([(1, 0.5, "train", "circle", "loss", 0.7)])
        return TrainResult("finished", None, 8, {"test": {"circle": {"accuracy": 0.9}}})

    assert fake_worker(store, train).serve(None, idle_timeout=0.0, max_jobs=2) == 0
    run = store.get_run(run_id)
    assert (run.status, run.step, run.device, run.pid) == ("finished", 8, "cpu", 90_001)
    assert run.summary == {"test": {"circle": {"accuracy": 0.9}}}
    assert run.ended_at is not None and store.workers() == []


def test_worker_marks_exceptions_failed_with_traceback(store: RunStore) -> None:
    run_id = store.create_run(unchecked(TINY))

    def train(cfg: ExperimentConfig, sink: Any) -> TrainResult:
        sink.metrics([(1, 0.5, "train", "circle", "loss", 0.7)])
        raise RuntimeError("CUDA out of memory\nTried to allocate 2 GiB")

    status = fake_worker(store, train).run_one(store.claim_run(90_001) or "")
    run = store.get_run(run_id)
    assert status == run.status == "failed"
    assert run.message == "Tried to allocate 2 GiB"  # the exception's last line
    error = (store.run_dir(run_id) / "error.txt").read_text()
    assert "Traceback" in error and "in train" in error and "CUDA out of memory" in error
    assert store.metrics(run_id)["value"].tolist() == [0.7]  # what it wrote is kept


def test_worker_records_divergence_and_bad_stored_configs(store: RunStore) -> None:
    diverging = store.create_run(unchecked(TINY))
    worker = fake_worker(store, lambda cfg, sink: TrainResult(
        "diverged", "loss of task 'xor' became nan at step 12", 12, {}))
    worker.run_one(store.claim_run(90_001) or "")
    run = store.get_run(diverging)
    assert (run.status, run.message, run.step) == (
        "diverged", "loss of task 'xor' became nan at step 12", 12)

    broken = store.create_run(unchecked({"data": {"suite": "no_such_suite"}}))
    worker.run_one(store.claim_run(90_001) or "")
    run = store.get_run(broken)
    assert run.status == "failed" and "data.suite" in run.message and "toy_2d" in run.message


def test_worker_keeps_a_status_set_elsewhere_meanwhile(store: RunStore) -> None:
    run_id = store.create_run(unchecked(TINY))

    def train(cfg: ExperimentConfig, sink: Any) -> TrainResult:
        store.set_status(sink.run_id, "failed", "reconciled")  # e.g. judged dead meanwhile
        return TrainResult("finished", None, 8, {})

    fake_worker(store, train).run_one(store.claim_run(90_001) or "")
    assert store.get_run(run_id).status == "failed"


def test_worker_with_a_run_that_is_not_queued(store: RunStore) -> None:
    run_id = store.create_run(unchecked(TINY))
    store.set_status(run_id, "stopped")
    worker = fake_worker(store, lambda cfg, sink: pytest.fail("must not train"))
    assert worker.serve(run_id, idle_timeout=0.0, max_jobs=2) == 1


def test_a_worker_that_cannot_start_fails_one_queued_run(store: RunStore,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    first = store.create_run(unchecked(TINY))
    second = store.create_run(unchecked(TINY))

    def broken(store: RunStore, **options: object) -> Worker:
        raise ImportError("cannot import name 'diagnostics' from 'mtl_core'")

    monkeypatch.setattr(worker_module, "Worker", broken)
    assert worker_module.main(["--runs-dir", str(store.runs_dir), "--idle-timeout", "0"]) == 3
    run = store.get_run(first)
    assert run.status == "failed"
    assert run.message == ("worker could not start: ImportError: cannot import name "
                           "'diagnostics' from 'mtl_core'")
    assert "Traceback" in (store.run_dir(first) / "error.txt").read_text()
    assert store.get_run(second).status == "queued"  # one failed start, one run consumed


def test_queue_respects_the_limit_and_starts_runs_as_slots_free(store: RunStore) -> None:
    ids = [store.create_run(unchecked({**TINY, "name": f"r{i}"})) for i in range(3)]
    gates = {run_id: threading.Event() for run_id in ids}
    lock = threading.Lock()
    active: set[str] = set()
    peak = [0]

    def train(cfg: ExperimentConfig, sink: Any) -> TrainResult:
        with lock:
            active.add(sink.run_id)
            peak[0] = max(peak[0], len(active))
        gates[sink.run_id].wait(timeout=60)
        with lock:
            active.discard(sink.run_id)
        return TrainResult("finished", None, 1, {})

    workers = [fake_worker(store, train, pid=90_001 + i) for i in range(3)]
    threads = [threading.Thread(target=w.serve, args=(None, 1.0, 2)) for w in workers]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(active) == 2, 30, "two runs to start")
        time.sleep(0.6)  # the idle third worker polls meanwhile, but the limit holds
        statuses = {r.id: r.status for r in store.list_runs()}
        assert statuses == {ids[0]: "running", ids[1]: "running", ids[2]: "queued"}
        gates[ids[0]].set()  # a slot frees: the queued run starts
        wait_for(lambda: store.get_run(ids[2]).status == "running", 30, "the queued run")
        assert store.get_run(ids[0]).status == "finished"
    finally:
        for gate in gates.values():
            gate.set()
        for t in threads:
            t.join(timeout=60)
    assert [store.get_run(i).status for i in ids] == ["finished"] * 3
    assert peak[0] == 2


# -- dispatch, controls, reconcile -----------------------------------------------------------------

def test_max_concurrent_reads_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MTL_MAX_JOBS", raising=False)
    assert jobs.max_concurrent() == 2
    monkeypatch.setenv("MTL_MAX_JOBS", "3")
    assert jobs.max_concurrent() == 3
    for bad in ("0", "two"):
        monkeypatch.setenv("MTL_MAX_JOBS", bad)
        with pytest.raises(ValueError, match=f"positive integer \\(got '{bad}'\\)"):
            jobs.max_concurrent()


def test_dispatch_starts_only_the_workers_needed(store: RunStore,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    spawned: list[int] = []

    def spawn(s: RunStore, idle_timeout: float, max_jobs: int) -> int:
        pid = 50_000 + len(spawned)
        s.add_worker(pid, replace=False)
        spawned.append(pid)
        return pid

    monkeypatch.setattr(jobs, "_spawn_worker", spawn)
    monkeypatch.setattr(jobs, "pid_alive", lambda pid: True)
    monkeypatch.setenv("MTL_MAX_JOBS", "2")
    jobs.dispatch(store.runs_dir)
    assert spawned == []  # nothing queued
    for i in range(3):
        store.create_run(unchecked({**TINY, "name": f"r{i}"}))
    jobs.dispatch(store.runs_dir)
    assert len(spawned) == 2  # the limit, not the queue length
    jobs.dispatch(store.runs_dir)
    assert len(spawned) == 2  # those two are still waiting to claim
    jobs.warm_up(store.runs_dir)
    assert len(spawned) == 2  # an idle worker exists already
    for pid in spawned:
        store.remove_worker(pid)
    store.claim_run(40_000)
    jobs.dispatch(store.runs_dir)
    assert len(spawned) == 3  # one run active: one free slot


def test_stop_pause_resume_by_status(store: RunStore) -> None:
    queued = store.create_run(unchecked(TINY))
    with pytest.raises(ValueError, match="queued and has not started"):
        jobs.pause(queued, store.runs_dir)
    assert jobs.stop(queued, store.runs_dir) == "stopped"
    run = store.get_run(queued)
    assert (run.status, run.message) == ("stopped", "stopped before it started")
    with pytest.raises(ValueError, match=r"already ended \(stopped\)"):
        jobs.stop(queued, store.runs_dir)
    with pytest.raises(ValueError, match="already ended"):
        jobs.resume(queued, store.runs_dir)

    running = store.create_run(unchecked(TINY))
    store.claim_run(os.getpid())
    assert jobs.resume(running, store.runs_dir) == "already running"
    assert jobs.pause(running, store.runs_dir) == "requested"
    assert jobs.resume(running, store.runs_dir) == "requested"  # cancels the pending pause
    assert store.pending_controls(running) == ["pause", "resume"]
    assert store.take_control(running) == "pause"  # the trainer pauses; resume still pending
    store.set_status(running, "paused")
    assert jobs.pause(running, store.runs_dir) == "requested"  # cancels the pending resume
    assert store.take_control(running) == "resume" and store.take_control(running) == "pause"
    assert jobs.pause(running, store.runs_dir) == "already paused"
    assert jobs.stop(running, store.runs_dir) == "requested"
    assert store.pending_controls(running)[-1] == "stop"
    assert store.get_run(running).status == "paused"  # the worker ends it, not the caller
    with pytest.raises(KeyError, match="unknown run"):
        jobs.stop("nope", store.runs_dir)


def _exited_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()  # reaped: the pid no longer exists
    return proc.pid


def test_reconcile_marks_dead_pid_runs_failed(store: RunStore) -> None:
    old = time.time() - 120
    dead_run = store.create_run(unchecked(TINY))
    paused_dead = store.create_run(unchecked(TINY))
    alive_run = store.create_run(unchecked(TINY))
    fresh_dead = store.create_run(unchecked(TINY))
    pid = _exited_pid()
    store.set_status(dead_run, "running", pid=pid, heartbeat_at=old, step=42)
    store.add_metrics(dead_run, [(40, 1.0, "train", "circle", "loss", 0.5)])
    store.set_status(paused_dead, "paused", pid=pid, heartbeat_at=old)
    store.set_status(alive_run, "running", pid=os.getpid(), heartbeat_at=old)
    store.set_status(fresh_dead, "running", pid=pid, heartbeat_at=time.time())

    assert sorted(jobs.reconcile(store.runs_dir)) == sorted([dead_run, paused_dead])
    run = store.get_run(dead_run)
    assert run.status == "failed" and run.ended_at is not None
    assert run.message == (f"worker process died (pid {pid}) at step 42; "
                           "metrics up to there are kept")
    assert store.metrics(dead_run)["value"].tolist() == [0.5]
    assert store.get_run(alive_run).status == "running"  # slow, but its process lives
    assert store.get_run(fresh_dead).status == "running"  # within the heartbeat grace
    assert jobs.reconcile(store.runs_dir, stale_after=0.0) == [fresh_dead]
    assert jobs.reconcile(store.runs_dir) == []


def test_pid_alive_sees_through_zombies() -> None:
    assert jobs.pid_alive(os.getpid())
    assert not jobs.pid_alive(_exited_pid())
    proc = subprocess.Popen(["true"])  # exits, and stays a zombie until waited for
    stat = Path(f"/proc/{proc.pid}/stat")
    wait_for(lambda: stat.read_text().rsplit(")", 1)[-1].split()[0] == "Z", 30, "a zombie")
    assert not jobs.pid_alive(proc.pid)
    proc.wait()


# -- real worker processes, real trainer -----------------------------------------------------------

def test_sigkilled_worker_leaves_run_failed_with_metrics(store: RunStore,
                                                         own_workers: None) -> None:
    run_id = jobs.submit(LONG, store.runs_dir)
    run = wait_for(lambda: (r := store.get_run(run_id)).step >= 30 and r, what="30 steps")
    assert run.status == "running" and run.device == "cpu" and run.pid != os.getpid()

    os.kill(run.pid, signal.SIGKILL)
    wait_for(lambda: not jobs.pid_alive(run.pid), 30, "the worker to die")
    kept = store.metrics(run_id)
    assert len(kept) > 0 and store.get_run(run_id).status == "running"
    assert jobs.reconcile(store.runs_dir) == []  # heartbeat still fresh: ~30 s of grace
    assert jobs.reconcile(store.runs_dir, stale_after=0.0) == [run_id]
    run = store.get_run(run_id)
    assert run.status == "failed" and f"worker process died (pid {run.pid})" in run.message
    after = store.metrics(run_id)
    assert after["id"].tolist() == kept["id"].tolist()
    assert after["value"].equals(kept["value"])
    assert set(after["task"]) >= {"circle", "xor", "spiral", "distance", "total"}
    assert store.load_checkpoint(run_id, "last")["step"] >= 12  # written each epoch, intact


def test_pause_resume_stop_then_sigterm(store: RunStore, own_workers: None) -> None:
    run_id = jobs.submit(LONG, store.runs_dir)
    wait_for(lambda: store.get_run(run_id).step >= 6, what="6 steps")

    assert jobs.pause(run_id, store.runs_dir) == "requested"
    wait_for(lambda: store.get_run(run_id).status == "paused", 30, "paused")
    time.sleep(0.3)  # let a write racing the pause land
    rows, step = len(store.metrics(run_id)), store.get_run(run_id).step
    time.sleep(1.5)
    assert len(store.metrics(run_id)) == rows and store.get_run(run_id).step == step
    assert store.get_run(run_id).heartbeat_at > time.time() - 5  # alive while paused

    assert jobs.resume(run_id, store.runs_dir) == "requested"
    wait_for(lambda: store.get_run(run_id).step > step + 4, 60, "training to go on")
    assert store.get_run(run_id).status == "running"

    assert jobs.stop(run_id, store.runs_dir) == "requested"
    run = wait_for(lambda: (r := store.get_run(run_id)).status == "stopped" and r, 60, "stopped")
    assert run.message.startswith("stopped by request at step")
    assert set(run.summary["test"]) == {"circle", "xor", "spiral", "distance"}
    assert len(store.metrics(run_id)) > rows
    assert store.load_checkpoint(run_id, "final")["step"] == run.step

    # The same worker, now idle, takes the next run; SIGTERM ends that run as stopped.
    worker_pid = run.pid
    second = jobs.submit(LONG, store.runs_dir)
    wait_for(lambda: store.get_run(second).step >= 4, what="the second run")
    assert store.get_run(second).pid == worker_pid
    os.kill(worker_pid, signal.SIGTERM)
    run = wait_for(lambda: (r := store.get_run(second)).status == "stopped" and r, 60, "stop")
    assert run.message.startswith("worker terminated (SIGTERM)")
    assert set(run.summary["test"]) == {"circle", "xor", "spiral", "distance"}
    wait_for(lambda: not jobs.pid_alive(worker_pid), 30, "the worker to exit")
