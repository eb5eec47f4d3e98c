"""A 20-point weight sweep on a local 2-CPU Ray cluster against the local executor (MTL Lab's
own worker processes, MTL_MAX_JOBS=2) on the same machine.

    .venv/bin/python bench/ray_sweep.py [--points 20] [--repeats 3] [--json FILE]

Starts its own Ray head (`ray start --head --num-cpus 2`, tests/ray_support.py), then runs the
same sweep (synthetic_mmoe, 2 tasks, one small epoch per point) alternately with each executor,
each in one store of its own so its workers (local) or task processes (Ray) stay warm from one
repeat to the next: the first repeat is cold (process starts, torch imports), the others warm.
Reports, per executor, the sweep's wall time (first submit to last run ended) and the per-run
overhead: the wall time × 2 slots / points minus the training time of one point in this
process (trainer.train with a MemorySink, no store), and each run's own duration in the store
(claimed -> ended: training plus reporting through the store, or through the store's actor).
Results: bench/RESULTS.md, "Ray executor: a sweep on a local cluster".
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ.setdefault("OMP_NUM_THREADS", "1")

from ray_support import LocalCluster  # noqa: E402

from mtl_core import jobs  # noqa: E402
from mtl_core.store import RunStore  # noqa: E402
from mtl_core.sweep import submit_sweep, sweep_runs, wait_for_sweep  # noqa: E402

SLOTS = 2
CONFIG: dict[str, Any] = {
    "name": "bench-sweep", "seed": 0, "device": "cpu",
    "data": {"suite": "synthetic_mmoe", "params": {"n_samples": 600}},
    "model": {"trunk": {"type": "mlp", "layers": [32, 32]}, "heads": {"layers": [16]}},
    "optim": {"lr": 0.01, "batch_size": 64, "epochs": 2}, "log_every": 5,
}


def train_alone() -> float:
    """Seconds to train one sweep point in this process, without a store (median of 3)."""
    import torch

    from mtl_core import trainer
    from mtl_core.config import parse_config
    from mtl_core.sink import MemorySink

    torch.set_num_threads(1)
    cfg = parse_config(CONFIG)
    trainer.train(cfg, MemorySink())  # warm-up: lazy imports, first optimizer
    times = []
    for _ in range(3):
        start = time.perf_counter()
        trainer.train(cfg, MemorySink())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def one_sweep(runs_dir: Path, points: int) -> dict[str, float]:
    start = time.time()
    submission = submit_sweep(CONFIG, points, runs_dir)
    counts = wait_for_sweep(submission.sweep_id, runs_dir, timeout=900, poll_s=0.2)
    runs = sweep_runs(RunStore(runs_dir), submission.sweep_id)
    assert counts.get("finished") == len(runs) == points, counts
    end = max(r.ended_at or 0.0 for r in runs)
    durations = [r.ended_at - r.started_at for r in runs if r.ended_at and r.started_at]
    return {"wall_s": end - start, "run_s": statistics.median(durations),
            "executor": jobs.placement(runs[0])[0]}


def end_local_workers(runs_dir: Path) -> None:
    for pid, _, _ in RunStore(runs_dir).workers():
        if jobs.pid_alive(pid):
            os.kill(pid, signal.SIGTERM)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ["MTL_MAX_JOBS"] = str(SLOTS)
    os.environ.pop(jobs.RAY_ADDRESS_VAR, None)
    alone = train_alone()
    print(f"one point trained alone: {alone:.2f} s", file=sys.stderr)

    work = Path(tempfile.mkdtemp(prefix="mtl-raybench"))
    cluster = LocalCluster()
    results: dict[str, list[dict[str, float]]] = {"local": [], "ray": []}
    try:
        started = time.perf_counter()
        cluster.start("--head", "--num-cpus", str(SLOTS), "--port", str(cluster.port),
                      "--include-dashboard=false", "--temp-dir", cluster.temp)
        print(f"ray head up in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        for repeat in range(args.repeats):
            for executor in ("local", "ray"):
                if executor == "ray":
                    os.environ[jobs.RAY_ADDRESS_VAR] = cluster.address
                else:
                    os.environ.pop(jobs.RAY_ADDRESS_VAR, None)
                row = one_sweep(work / executor, args.points)
                assert row.pop("executor") == executor
                results[executor].append(row)
                print(f"repeat {repeat} {executor}: wall {row['wall_s']:.1f} s, "
                      f"run {row['run_s']:.2f} s", file=sys.stderr)
    finally:
        os.environ.pop(jobs.RAY_ADDRESS_VAR, None)
        end_local_workers(work / "local")
        import ray

        if ray.is_initialized():
            ray.shutdown()
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)

    summary: dict[str, Any] = {"points": args.points, "slots": SLOTS, "alone_s": alone}
    for executor, rows in results.items():
        warm = rows[1:] or rows
        wall = statistics.median(r["wall_s"] for r in warm)
        summary[executor] = {
            "cold_wall_s": rows[0]["wall_s"], "warm_wall_s": wall,
            "warm_wall_range": [min(r["wall_s"] for r in warm), max(r["wall_s"] for r in warm)],
            "overhead_per_run_s": wall * SLOTS / args.points - alone,
            "run_s": statistics.median(r["run_s"] for r in warm)}
    summary["ratio_warm_wall_ray_over_local"] = (summary["ray"]["warm_wall_s"]
                                                 / summary["local"]["warm_wall_s"])
    text = json.dumps(summary, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
