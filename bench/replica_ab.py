"""Stacked replicas end to end: an older commit's code against this checkout's, in ONE process.

Separate processes on the shared 2-core machine differ by more than the change being measured
(another helper's load moves a run's time by ±30 %). This bench imports the older commit's
`mtl_core` as `mtl_core_base` (a copy from `git archive` with its imports renamed) next to this
checkout's `mtl_core` and interleaves them round by round (the order alternates): one run
(K = 1) and the stacked run at each K, `trainer.train` into a `MemorySink`, the Train page's
default model (synthetic_mmoe, hard sharing MLP, static), 10 epochs, one torch thread, CPU.
Reported per code: the median over rounds of stacked ÷ one run (both from the same round),
and the ratio of the minima.

    python bench/replica_ab.py --base-rev bf36c77 [--rounds 8] [--ks 5,11]
"""
from __future__ import annotations

import argparse
import io
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def import_base(rev: str, into: Path):
    """The commit's mtl_core as the package `mtl_core_base` (config, sink, trainer)."""
    archive = subprocess.run(["git", "archive", rev, "mtl_core"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    (into / "mtl_core").rename(into / "mtl_core_base")
    for path in (into / "mtl_core_base").rglob("*.py"):
        path.write_text(re.sub(r"\bmtl_core\b", "mtl_core_base", path.read_text()))
    sys.path.insert(0, str(into))
    import mtl_core_base.config as config
    import mtl_core_base.sink as sink
    import mtl_core_base.trainer as trainer
    return config, sink, trainer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-rev", required=True, help="the commit to compare against")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--ks", default="5,11")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import mtl_core.config as config
    import mtl_core.sink as sink
    import mtl_core.trainer as trainer

    with tempfile.TemporaryDirectory() as tmp:
        code = {"base": import_base(args.base_rev, Path(tmp)), "this": (config, sink, trainer)}

        def run(variant: str, k: int) -> float:
            c, s, t = code[variant]
            cfg = c.parse_config({"device": "cpu", "seed": 0, "replicas": k,
                                  "weighting": {"method": "static"},
                                  "optim": {"epochs": args.epochs}})
            start = time.perf_counter()
            result = t.train(cfg, s.MemorySink())
            if result.status != "finished":
                raise RuntimeError(f"{variant} K={k}: {result.status} {result.message}")
            return time.perf_counter() - start

        ks = [int(k) for k in args.ks.split(",")]
        for variant in code:  # warm-up: imports, first-call costs
            run(variant, 1)
            run(variant, 2)
        print(f"torch {torch.__version__}, 1 thread, {os.cpu_count()} cores, load average "
              f"{os.getloadavg()[0]:.2f} at the start; base {args.base_rev}, {args.rounds} rounds")
        times: dict[tuple[str, int], list[float]] = {(v, k): [] for v in code for k in [1, *ks]}
        ratios: dict[tuple[str, int], list[float]] = {(v, k): [] for v in code for k in ks}
        for i in range(args.rounds):
            for variant in (list(code) if i % 2 == 0 else list(code)[::-1]):
                one = run(variant, 1)
                times[(variant, 1)].append(one)
                for k in ks:
                    elapsed = run(variant, k)
                    times[(variant, k)].append(elapsed)
                    ratios[(variant, k)].append(elapsed / one)
        print(f"load average {os.getloadavg()[0]:.2f} at the end")
        print("| code | K | one run min / median (s) | stacked min / median (s) | stacked ÷ one "
              "(median of rounds) | ratio of minima |")
        print("|---|---|---|---|---|---|")
        for variant in code:
            one = times[(variant, 1)]
            for k in ks:
                st = times[(variant, k)]
                print(f"| {variant} | {k} | {min(one):.3f} / {statistics.median(one):.3f} | "
                      f"{min(st):.3f} / {statistics.median(st):.3f} | "
                      f"{statistics.median(ratios[(variant, k)]):.2f} | "
                      f"{min(st) / min(one):.2f} |")


if __name__ == "__main__":
    main()
