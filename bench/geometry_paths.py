"""Seconds per path on the gradient geometry page (CAGrad toy, its default 800 Adam steps),
for every method; median of --repeats runs. torch on one thread, as on a loaded laptop.

    python bench/geometry_paths.py [--repeats 3] [--methods static,mgda] [--steps 800]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from mtl_core import geometry as geo  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default=",".join(geo.applicable_methods()))
    parser.add_argument("--steps", type=int, default=None, help="default: the problem's")
    args = parser.parse_args()
    torch.set_num_threads(1)
    problem = geo.get_problem("cagrad_toy")
    settings = geo.PathSettings(steps=args.steps or problem.steps, lr=problem.lr)
    base = None
    print(f"| method | s per path ({settings.steps} steps, median of {args.repeats}) | × static |")
    print("|---|---|---|")
    for method in args.methods.split(","):
        times = [geo.run_path(problem, method, problem.starts[0], settings).seconds
                 for _ in range(args.repeats)]
        median = statistics.median(times)
        base = base if base is not None else median
        print(f"| {method} | {median:.2f} | {median / base:.1f} |", flush=True)


if __name__ == "__main__":
    main()
