"""Stacked replicas (`replicas: K`) against K separate runs and against one run.

For each setting (trunk × method) and each K, one round times, in this one process and
interleaved: one run (seed 0), the stacked run of K seeds, and the K separate runs of those
seeds one after another (the cost without stacking). Every variant is `trainer.train` end to
end into a `MemorySink` (data, model, logging, evaluation, checkpoints), CPU, one torch thread.
Reported: the median over rounds of each variant's time ÷ the one run's time in the same round.

    python bench/replicas.py [--rounds 3] [--ks 1,5,11,32] [--quick] [--settings mlp-static,...]

Settings: mlp-* is the Train page's default model (synthetic_mmoe, MLP 16-64-64, heads [32],
batch 128, Adam), cnn-* a small CNN (mnist_attributes from MTL_DATA_DIR, 2000 training images);
*-static is the loss-level default, *-pcgrad a gradient-level method. K separate runs at K = 32
take long: `--separate-max K` (default 11) times separate runs only up to that K and reports
K × the one run above it (marked "est.").
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mtl_core.config import parse_config  # noqa: E402
from mtl_core.sink import MemorySink  # noqa: E402
from mtl_core.trainer import train  # noqa: E402

SETTINGS = {
    "mlp-static": ({}, {"method": "static"}),
    "mlp-pcgrad": ({}, {"method": "pcgrad"}),
    "cnn-static": ({"data": {"suite": "mnist_attributes", "params": {"n_train": 2000,
                                                                   "n_test": 500}},
                    "model": {"trunk": {"type": "cnn", "layers": [8, 16], "hidden": [32]},
                              "heads": {"layers": [16]}}}, {"method": "static"}),
    "cnn-pcgrad": ({"data": {"suite": "mnist_attributes", "params": {"n_train": 2000,
                                                                   "n_test": 500}},
                    "model": {"trunk": {"type": "cnn", "layers": [8, 16], "hidden": [32]},
                              "heads": {"layers": [16]}}}, {"method": "pcgrad"}),
}


def config(setting: str, epochs: int, seed: int = 0, replicas: int = 1):
    changes, weighting = SETTINGS[setting]
    doc = {"device": "cpu", "seed": seed, "replicas": replicas, "weighting": weighting,
           "optim": {"epochs": epochs}, **changes}
    if setting.startswith("cnn"):
        doc["tasks"] = [{"name": "digit"}, {"name": "parity"}]
    return parse_config(doc)


def timed(cfg) -> float:
    start = time.perf_counter()
    result = train(cfg, MemorySink())
    elapsed = time.perf_counter() - start
    if result.status != "finished":
        raise RuntimeError(f"{cfg.name}: {result.status} {result.message}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ks", default="1,5,11,32")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--separate-max", type=int, default=11)
    parser.add_argument("--quick", action="store_true", help="1 round, 3 epochs, K = 1, 5")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.epochs, args.ks = 1, 3, "1,5"
    torch.set_num_threads(1)
    ks = [int(k) for k in args.ks.split(",")]
    print(f"torch {torch.__version__}, 1 thread, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}; {args.rounds} rounds, {args.epochs} epochs")
    print("| setting | K | one run (s) | stacked (s) | stacked ÷ one | K separate ÷ one "
          "| stacked ÷ separate |")
    print("|---|---|---|---|---|---|---|")
    for setting in args.settings.split(","):
        timed(config(setting, 1, replicas=2))  # warm-up: imports, Jacobian strategy choice
        for k in ks:
            ones, stacked, separate = [], [], []
            for _ in range(args.rounds):
                one = timed(config(setting, args.epochs))
                ones.append(one)
                stacked.append(timed(config(setting, args.epochs, replicas=k)) / one
                               if k > 1 else 1.0)
                if k <= args.separate_max:
                    total = one + sum(timed(config(setting, args.epochs, seed=s))
                                      for s in range(1, k))
                    separate.append(total / one)
            sep = f"{statistics.median(separate):.2f}" if separate else f"{k:.2f} (est.)"
            sep_value = statistics.median(separate) if separate else float(k)
            ratio = statistics.median(stacked)
            print(f"| {setting} | {k} | {statistics.median(ones):.2f} | "
                  f"{ratio * statistics.median(ones):.2f} | {ratio:.2f} | {sep} | "
                  f"{ratio / sep_value:.2f} |", flush=True)


if __name__ == "__main__":
    main()
