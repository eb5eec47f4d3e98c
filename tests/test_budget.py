"""The core budget (mtl_core.budget): runs at once, torch threads per run, the worker's
environment, and that a worker's run really trains with the threads the budget gives it."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from mtl_core import budget, jobs
from mtl_core.config import parse_config
from mtl_core.store import RunStore
from mtl_core.trainer import TrainResult
from mtl_core.worker import Worker

GiB = 1 << 30
SMALL = {"model": {"trunk": {"type": "mlp", "layers": [64, 64]}}}  # the Train page's default
LARGE = {"data": {"suite": "mnist_attributes"}, "model": {"trunk": {"type": "cnn"}}}


@pytest.fixture(autouse=True)
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("cores, memory, gpus, expected", [
    (2, 24 * GiB, 0, 2),     # this machine: one run per core
    (16, 128 * GiB, 0, 8),   # capped at MAX_DEFAULT_JOBS
    (16, 6 * GiB, 0, 3),     # memory-bound: about 2 GiB per worker
    (1, 8 * GiB, 0, 1),
    (2, 24 * GiB, 4, 4),     # at least one run per GPU
])
def test_default_max_jobs_follows_cores_memory_and_gpus(cores, memory, gpus, expected):
    assert budget.default_max_jobs(cores, memory, gpus) == expected


def test_max_concurrent_defaults_from_the_hardware_and_still_takes_the_variable(monkeypatch):
    monkeypatch.delenv("MTL_MAX_JOBS", raising=False)
    monkeypatch.setattr(jobs, "gpu_count", lambda: 0)
    monkeypatch.setattr(budget, "available_cores", lambda: 6)
    monkeypatch.setattr(budget, "total_memory", lambda: 64 * GiB)
    assert jobs.max_concurrent() == 6
    monkeypatch.setenv("MTL_MAX_JOBS", "3")
    assert jobs.max_concurrent() == 3
    monkeypatch.setenv("MTL_MAX_JOBS", "0")
    with pytest.raises(ValueError, match="MTL_MAX_JOBS must be a positive integer"):
        jobs.max_concurrent()


@pytest.mark.parametrize("cores, max_jobs, active, macs, expected", [
    (2, 2, 1, 4e6, 1),     # a small model: one thread, however idle the machine
    (8, 4, 1, 4e6, 1),
    (8, 4, 1, None, 8),    # a large model alone takes every core
    (8, 4, 2, None, 4),    # two active: half each
    (8, 4, 4, None, 2),    # every slot busy: its share
    (8, 4, 6, None, 2),    # never below the share of a full machine
    (2, 2, 2, 5e8, 1),
    (3, 2, 2, None, 1),
])
def test_threads_for_run(cores, max_jobs, active, macs, expected):
    assert budget.threads_for_run(cores, max_jobs, active, macs) == expected


@pytest.mark.parametrize("cores, max_jobs", [(2, 2), (8, 4), (16, 8), (6, 4), (32, 3)])
def test_active_runs_never_oversubscribe_the_cores(cores, max_jobs):
    for active in range(1, max_jobs + 1):
        total = active * budget.threads_for_run(cores, max_jobs, active, None)
        assert total <= max(cores, active), (cores, max_jobs, active, total)


def test_step_estimate_tells_the_default_model_from_a_wide_one():
    small = budget.estimate_step_macs(parse_config(SMALL))
    wide = budget.estimate_step_macs(parse_config(
        {"model": {"trunk": {"layers": [1024, 1024, 1024]}}}))
    assert small is not None and small < budget.SMALL_STEP_MACS < wide
    assert budget.estimate_step_macs(parse_config({"data": {"suite": "mnist_attributes"},
                                                   "model": {"trunk": {"type": "cnn"}}})) is None


def test_worker_env_makes_openmp_wait_passively_with_its_share():
    env = budget.worker_env({"PATH": "/bin"}, cores=8, max_jobs=4)
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert env["OMP_NUM_THREADS"] == "2"
    assert env["MTL_CORES"] == "8" and env["PATH"] == "/bin"
    own = budget.worker_env({"OMP_NUM_THREADS": "3"}, cores=8, max_jobs=4)
    assert own["OMP_NUM_THREADS"] == "3"  # the operator's setting wins
    assert own[budget.FIXED_THREADS_VAR] == "3"
    assert budget.FIXED_THREADS_VAR not in env


def test_the_operators_thread_count_is_left_alone(monkeypatch):
    monkeypatch.setenv(budget.FIXED_THREADS_VAR, "3")
    torch.set_num_threads(3)
    threads = budget.ThreadBudget(cores=8, max_jobs=1, active=lambda: 1)
    threads.apply(force=True)
    assert torch.get_num_threads() == 3


def test_thread_budget_shrinks_when_other_runs_start_and_grows_back():
    active = [1]
    threads = budget.ThreadBudget(cores=4, max_jobs=4, active=lambda: active[0])
    assert threads.apply(force=True) == 4 and torch.get_num_threads() == 4
    active[0] = 2
    assert threads.apply() == 4  # re-read at most every REFRESH_EVERY_S
    threads._checked_at -= budget.REFRESH_EVERY_S
    assert threads.apply() == 2 and torch.get_num_threads() == 2
    active[0] = 1
    threads._checked_at -= budget.REFRESH_EVERY_S
    assert threads.apply() == 4


def _recording_train(seen: list[int], polls: int = 3):
    """A train function that polls its sink like the trainer and records torch's threads."""

    def train(cfg: Any, sink: Any) -> TrainResult:
        for _ in range(polls):
            sink.control()
            seen.append(torch.get_num_threads())
        return TrainResult("finished", None, 1)

    return train


@pytest.mark.parametrize("doc, cores, expected", [(SMALL, 4, 1), (LARGE, 4, 4)])
def test_a_workers_run_trains_with_the_threads_of_the_budget(tmp_path: Path, monkeypatch,
                                                             doc, cores, expected):
    monkeypatch.setenv("MTL_CORES", str(cores))
    store = RunStore(tmp_path / "runs")
    run_id = store.create_run(parse_config(doc))
    seen: list[int] = []
    worker = Worker(store, train=_recording_train(seen), resolve_device=lambda spec: "cpu",
                    max_jobs=2)
    assert store.claim_run(worker.pid, run_id) == run_id
    assert worker.run_one(run_id) == "finished"
    assert seen and set(seen) == {expected}


def test_a_large_run_gives_back_cores_when_a_second_run_starts(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("MTL_CORES", "4")
    monkeypatch.setattr(budget, "REFRESH_EVERY_S", 0.0)
    store = RunStore(tmp_path / "runs")
    first = store.create_run(parse_config(LARGE))
    second = store.create_run(parse_config(LARGE))
    seen: list[int] = []

    def train(cfg: Any, sink: Any) -> TrainResult:
        sink.control()
        seen.append(torch.get_num_threads())  # alone
        store.claim_run(12345, second)  # another worker takes the second run
        sink.control()
        seen.append(torch.get_num_threads())
        return TrainResult("finished", None, 1)

    worker = Worker(store, train=train, resolve_device=lambda spec: "cpu", max_jobs=2)
    store.claim_run(worker.pid, first)
    worker.run_one(first)
    assert seen == [4, 2]


def test_a_spawned_worker_gets_the_budget_in_its_environment(end_workers: Path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv(budget.FIXED_THREADS_VAR, raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    store = RunStore(end_workers)
    pid = jobs._spawn_worker(store, idle_timeout=5.0, max_jobs=2)
    environ = dict(item.split("=", 1) for item in
                   Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
    assert environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert environ["OMP_NUM_THREADS"] == str(budget.cores_per_job(budget.available_cores(), 2))
    assert environ["MTL_CORES"] == str(budget.available_cores())
    os.kill(pid, 15)


def test_warm_up_keeps_an_idle_worker_that_was_about_to_leave(tmp_path: Path):
    """A worker dispatched with a short idle timeout (the CLI's, say) stays while a page's
    warm-up promised one, instead of leaving the page with none (the flaky browser test)."""
    store = RunStore(tmp_path / "runs")
    jobs._write_warm_until(store.runs_dir, time.time() + 1.5)
    worker = Worker(store, train=_recording_train([]), resolve_device=lambda spec: "cpu",
                    max_jobs=1)
    began = time.monotonic()
    done = threading.Event()
    threading.Thread(target=lambda: (worker.serve(None, 0.1, 1), done.set()),
                     daemon=True).start()
    assert not done.wait(1.0), "the idle worker left before the warm-up's deadline"
    assert done.wait(10.0)
    assert time.monotonic() - began >= 1.5
    assert jobs.warm_until(store.runs_dir) > 0
    assert jobs.warm_until(tmp_path / "nowhere") == 0.0
