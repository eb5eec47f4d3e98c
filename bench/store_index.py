"""What the folder-first run store costs: writes, the live panel's poll, and rebuilding the index.

    python bench/store_index.py [--runs 40] [--rows 2000] [--repeats 5]

Measured in one process on a temporary runs dir:
- write: one trainer log call (add_metrics of 20 rows + set_progress), per call; baseline in
  the same process: the same rows inserted into a bare SQLite table in WAL mode (what the index
  alone costs, without the folder files);
- poll: `metrics(run_id, after_id=last)` on a run of `--rows` rows with nothing new, the live
  panel's once-a-second read;
- rebuild: runs.db deleted, then the first call rebuilds it from `--runs` folders of `--rows`
  metric rows and 10 snapshots each.
Medians of `--repeats`. torch is not imported.
"""
from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mtl_core.config import ExperimentConfig  # noqa: E402
from mtl_core.store import RunStore  # noqa: E402

ROWS = [(1, 0.1, "train", f"t{i}", "loss", 0.5) for i in range(20)]


def config() -> ExperimentConfig:
    return ExperimentConfig.model_validate({"name": "bench", "data": {"suite": "toy_2d"}})


def bench_write(store: RunStore, calls: int) -> float:
    run_id = store.create_run(config())
    start = time.perf_counter()
    for step in range(calls):
        store.add_metrics(run_id, [(step, *r[1:]) for r in ROWS])
        store.set_progress(run_id, step, calls, 0.0)
    return (time.perf_counter() - start) / calls


def bench_bare_sqlite(path: Path, calls: int) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE m (step, epoch, split, task, name, value)")
    conn.execute("CREATE TABLE p (step)")
    conn.execute("INSERT INTO p VALUES (0)")
    conn.close()
    start = time.perf_counter()
    for step in range(calls):  # a connection per call, like the store
        for sql, args in (("INSERT INTO m VALUES (?, ?, ?, ?, ?, ?)", None),
                          ("UPDATE p SET step = ?", (step,))):
            conn = sqlite3.connect(path, isolation_level=None)
            conn.execute("BEGIN IMMEDIATE")
            if args is None:
                conn.executemany(sql, [(step, *r[1:]) for r in ROWS])
            else:
                conn.execute(sql, args)
            conn.execute("COMMIT")
            conn.close()
    return (time.perf_counter() - start) / calls


def fill(store: RunStore, runs: int, rows: int) -> list[str]:
    ids = []
    for _ in range(runs):
        run_id = store.create_run(config())
        for start in range(0, rows, 200):
            store.add_metrics(run_id, [(s, 0.0, "train", "a", "loss", 1.0 / (s + 1))
                                       for s in range(start, min(rows, start + 200))])
        for step in range(10):
            store.add_snapshot(run_id, step, "predictions", {"outputs": {"a": [0.5] * 64}})
        store.set_status(run_id, "finished")
        ids.append(run_id)
    return ids


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    writes, bare, polls, rebuilds = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(Path(tmp) / "runs")
        ids = fill(store, args.runs, args.rows)
        last = int(store.metrics(ids[0])["id"].iloc[-1])
        for i in range(args.repeats):
            writes.append(bench_write(store, 100))
            bare.append(bench_bare_sqlite(Path(tmp) / f"bare{i}.db", 100))
            start = time.perf_counter()
            for _ in range(50):
                store.metrics(ids[0], after_id=last)
            polls.append((time.perf_counter() - start) / 50)
            store.db_path.unlink()
            start = time.perf_counter()
            count = len(RunStore(store.runs_dir).list_runs())
            rebuilds.append(time.perf_counter() - start)
            assert count >= args.runs and len(store.metrics(ids[-1])) == args.rows
    med = statistics.median
    print(f"write (20 rows + progress): {med(writes) * 1e3:.2f} ms per call; bare SQLite "
          f"{med(bare) * 1e3:.2f} ms; ratio {med(writes) / med(bare):.2f}")
    print(f"poll metrics(after_id), nothing new: {med(polls) * 1e3:.2f} ms")
    print(f"rebuild from {args.runs} folders x {args.rows} rows: {med(rebuilds):.2f} s "
          f"(range {min(rebuilds):.2f}-{max(rebuilds):.2f})")


if __name__ == "__main__":
    main()
