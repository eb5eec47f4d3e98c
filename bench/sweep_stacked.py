"""An N-point weight sweep trained as one stacked run, against separate runs and one run.

End to end through the store and real worker processes, as the CLI and the pages do it:
submit → every run finished (worker start, torch import, data, training, evaluation, store
writes). Each round times, interleaved, in a fresh store each: one run (`jobs.submit`), the
sweep stacked (`submit_sweep`, MTL_STACK_SWEEPS=1) and the sweep as separate runs
(MTL_STACK_SWEEPS=0), both with MTL_MAX_JOBS workers. Also, in this process (one torch
thread, training only): `stacked_sweep.train_points` of the N points against one `train`.
Reported: medians over rounds, and each ratio against the one run of the same round, and
per round where the one run's and the stacked sweep's time went (submit → claim → first row
→ last row → ended → seen here, from the store's timestamps).

    python bench/sweep_stacked.py [--rounds 3] [--grid 11] [--epochs 10] [--max-jobs 2]

The config is the Train page's default model (synthetic_mmoe, MLP 16-64-64, heads [32],
2 tasks, batch 128, Adam).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mtl_core import jobs  # noqa: E402
from mtl_core.config import parse_config  # noqa: E402
from mtl_core.sink import MemorySink  # noqa: E402
from mtl_core.stacked_sweep import train_points  # noqa: E402
from mtl_core.store import LIVE_STATUSES, RunStore  # noqa: E402
from mtl_core.sweep import submit_sweep, sweep_configs, wait_for_sweep  # noqa: E402
from mtl_core.trainer import train  # noqa: E402


def base(epochs: int):
    return parse_config({"device": "cpu", "seed": 0, "optim": {"epochs": epochs}})


def end_workers(runs_dir: Path) -> None:
    """SIGTERM the store's workers and wait until they are gone: a worker's exit (torch's
    teardown) costs CPU, which the in-process timings right after would otherwise share."""
    pids = [pid for pid, _, _ in RunStore(runs_dir).workers() if jobs.pid_alive(pid)]
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(jobs.pid_alive(pid) for pid in pids):
        jobs._reap_children()
        time.sleep(0.05)


def warm_workers(runs_dir: Path, n: int) -> None:
    """`--warm`: n idle workers with torch imported before the clock starts (the app keeps
    one warm, `jobs.warm_up`); the timing is then submit → finished alone."""
    store = RunStore(runs_dir)
    for _ in range(n):
        jobs._spawn_worker(store, 600.0, n)
    spawned = {pid: seen for pid, _, seen in store.workers()}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # a worker re-registers once its imports are done
        ready = [pid for pid, _, seen in store.workers() if seen > spawned.get(pid, 0)]
        if len(ready) >= n:
            return
        time.sleep(0.1)
    raise RuntimeError("workers did not start within 120 s")


def phases(store: RunStore, run_ids: list[str], start: float, seen: float) -> str:
    """Where the time went, from the store's own timestamps (epoch seconds after the submit):
    claim (started_at), first and last metric row written, ended (ended_at), seen by this
    process; the spread over the points where there are several."""
    runs = [store.get_run(i) for i in run_ids]
    rows = [(store.run_dir(i) / "metrics.jsonl").read_bytes().splitlines() for i in run_ids]
    first = [json.loads(r[0])[-1] for r in rows if r]
    last = [json.loads(r[-1])[-1] for r in rows if r]

    def span(values: list[float]) -> str:
        lo, hi = min(values) - start, max(values) - start
        return f"{lo:.2f}" if hi - lo < 0.005 else f"{lo:.2f}–{hi:.2f}"

    return (f"claim +{span([r.started_at for r in runs])}, first row +{span(first)}, "
            f"last row +{span(last)}, ended +{span([r.ended_at for r in runs])}, "
            f"seen +{seen - start:.2f}")


def one_run(cfg, runs_dir: Path) -> tuple[float, str]:
    start, wall = time.perf_counter(), time.time()
    run_id = jobs.submit(cfg, runs_dir)
    store = RunStore(runs_dir)
    while (run := store.get_run(run_id)).status in LIVE_STATUSES:
        time.sleep(0.05)
    elapsed = time.perf_counter() - start
    if run.status != "finished":
        raise RuntimeError(f"one run: {run.status} {run.message}")
    return elapsed, phases(store, [run_id], wall, wall + elapsed)


def sweep(cfg, grid: int, runs_dir: Path, stack: bool) -> tuple[float, str]:
    os.environ["MTL_STACK_SWEEPS"] = "1" if stack else "0"  # the spawned workers inherit it
    start, wall = time.perf_counter(), time.time()
    sub = submit_sweep(cfg, grid, runs_dir)
    counts = wait_for_sweep(sub.sweep_id, runs_dir, poll_s=0.05)
    elapsed = time.perf_counter() - start
    if counts != {"finished": len(sub.run_ids)}:
        raise RuntimeError(f"sweep (stack={stack}): {counts}")
    store = RunStore(runs_dir)
    if stack:  # every point carried by one worker, or the figure is not what it says
        pids = {r.pid for r in store.list_runs()}
        if len(pids) != 1:
            print(f"  note: the stacked sweep ran in {len(pids)} workers", flush=True)
    return elapsed, phases(store, sub.run_ids, wall, wall + elapsed)


def in_process(cfg, grid: int) -> tuple[float, float]:
    start = time.perf_counter()
    train(cfg, MemorySink())
    one = time.perf_counter() - start
    configs = sweep_configs(cfg, grid)
    start = time.perf_counter()
    train_points(configs, [MemorySink() for _ in configs])
    return one, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--grid", type=int, default=11)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--max-jobs", type=int, default=2)
    parser.add_argument("--warm", action="store_true",
                        help="start the workers before each timing (else their start counts)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ.update(MTL_MAX_JOBS=str(args.max_jobs), MTL_WARM_UP="0")
    cfg = base(args.epochs)
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}; {args.rounds} rounds, {args.grid}-point sweep, "
          f"{args.epochs} epochs, MTL_MAX_JOBS={args.max_jobs}, "
          f"{'warm' if args.warm else 'cold'} workers", flush=True)
    train(base(1), MemorySink())  # warm-up of this process
    train_points(sweep_configs(base(1), 2), [MemorySink(), MemorySink()])
    # As a worker does (worker.preload): the imported modules' objects out of the garbage
    # collector, or its full collections make this process's in-process timings slower
    # than a worker's (the one run here took 1.0–1.5 s against 0.5 s in a worker).
    gc.freeze()
    ones, stacked, separate, ip_ratio = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            dirs = {k: Path(tmp) / f"{k}{r}" for k in ("one", "stacked", "separate")}
            try:
                for key, d in dirs.items():
                    d.mkdir()
                    if args.warm:
                        os.environ["MTL_STACK_SWEEPS"] = "0" if key == "separate" else "1"
                        warm_workers(d, 1 if key == "one" else args.max_jobs)
                one, one_phases = one_run(cfg, dirs["one"])
                st, st_phases = sweep(cfg, args.grid, dirs["stacked"], stack=True)
                sep, _ = sweep(cfg, args.grid, dirs["separate"], stack=False)
            finally:
                for d in dirs.values():
                    if (d / "runs.db").exists():
                        end_workers(d)
            ip_one, ip_stacked = in_process(cfg, args.grid)
            ones.append(one)
            stacked.append(st / one)
            separate.append(sep / one)
            ip_ratio.append(ip_stacked / ip_one)
            print(f"  round {r}: one {one:.2f} s, stacked {st:.2f} s, separate {sep:.2f} s; "
                  f"in-process one {ip_one:.2f} s, stacked {ip_stacked:.2f} s; load "
                  f"{os.getloadavg()[0]:.1f}", flush=True)
            print(f"    one run: {one_phases}\n    stacked: {st_phases}", flush=True)
    med = statistics.median
    print("| end to end | one run (s) | stacked sweep ÷ one | separate sweep ÷ one "
          "| stacked ÷ separate | training only: stacked ÷ one |")
    print("|---|---|---|---|---|---|")
    print(f"| {args.grid} points | {med(ones):.2f} | {med(stacked):.2f} | {med(separate):.2f} "
          f"| {med(stacked) / med(separate):.2f} | {med(ip_ratio):.2f} |")


if __name__ == "__main__":
    main()
