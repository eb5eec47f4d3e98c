"""`train` without --detach trains in the calling process (no worker start on the critical
path) and leaves the store exactly as a worker would: the same rows, statuses and summary."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from mtl_core import jobs
from mtl_core.store import RunStore

ROOT = Path(__file__).resolve().parent.parent
CONFIG = {"name": "fg", "seed": 3, "device": "cpu",
          "data": {"suite": "toy_2d", "params": {"n_samples": 300}},
          "model": {"trunk": {"layers": [16]}, "heads": {"layers": [8]}},
          "optim": {"epochs": 2, "batch_size": 32}, "log_every": 3}


def _cli(runs_dir: Path, config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mtl_core", "train", str(config),
                           "--runs-dir", str(runs_dir), *extra],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=300)


def _rows(store: RunStore, run_id: str) -> pd.DataFrame:
    df = store.metrics(run_id).drop(columns=["id", "time"])
    return df.reset_index(drop=True)


def test_foreground_train_writes_what_a_worker_writes(tmp_path: Path, runs_dir: Path) -> None:
    config = tmp_path / "fg.yaml"
    config.write_text(yaml.safe_dump(CONFIG))

    here = _cli(runs_dir, config)
    assert here.returncode == 0, here.stderr
    here_id = here.stdout.strip().splitlines()[-1]
    store = RunStore(runs_dir)
    assert store.workers() == [], "a worker process was started for a foreground run"
    assert not (runs_dir / "workers.log").exists()
    assert f"run {here_id} finished" in here.stderr  # the same progress line as before

    queued = _cli(runs_dir, config, "--detach")
    assert queued.returncode == 0, queued.stderr
    worker_id = queued.stdout.strip().splitlines()[-1]
    deadline = time.monotonic() + 240
    while store.get_run(worker_id).is_live and time.monotonic() < deadline:
        jobs.dispatch(runs_dir)
        time.sleep(0.2)

    a, b = store.get_run(here_id), store.get_run(worker_id)
    assert (a.status, b.status) == ("finished", "finished")
    assert a.pid != b.pid  # one trained in the CLI process, the other in a worker
    assert (a.step, a.total_steps, a.device) == (b.step, b.total_steps, b.device)
    assert a.summary["test"] == b.summary["test"]  # same seed, same threads: same numbers
    pd.testing.assert_frame_equal(_rows(store, here_id), _rows(store, worker_id))
    kinds = lambda run_id: [k for k in ("probe", "predictions") if store.snapshots(run_id, k)]  # noqa: E731
    assert kinds(here_id) == kinds(worker_id) == ["probe", "predictions"]
    assert store.checkpoints(here_id) == store.checkpoints(worker_id)


def test_foreground_train_waits_its_turn_when_the_slots_are_busy(tmp_path: Path,
                                                                 runs_dir: Path,
                                                                 monkeypatch) -> None:
    """With every slot taken, the foreground run queues for a worker like any other run
    instead of training beside them."""
    store = RunStore(runs_dir)
    from mtl_core.config import parse_config

    busy = store.create_run(parse_config(CONFIG))
    store.claim_run(os.getpid(), busy)  # this test process "runs" it
    monkeypatch.setenv("MTL_MAX_JOBS", "1")
    mine = store.create_run(parse_config(CONFIG))
    assert jobs.train_here(mine, runs_dir) is None
    assert store.get_run(mine).status == "queued"
    store.set_status(busy, "stopped", expect=["running"])
