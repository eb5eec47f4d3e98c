"""Trainer overhead: `mtl_core.trainer.train` (logging on) against a plain hand-written loop.

Both build the same data (load_suite), the same model (build_model, same seed), use the same
batch size, Adam, and the same number of steps; the plain loop does the bare minimum (slice,
forward, Σ losses, backward, step). Both are timed end to end, interleaved, in one process,
and the median of several repeats is reported. Target: trainer steps/s ≥ 0.95 × plain.

    python bench/overhead.py [--device cpu|cuda] [--repeats 5] [--quick]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mtl_core.config import parse_config  # noqa: E402
from mtl_core.data import load_suite  # noqa: E402
from mtl_core.metrics import task_loss  # noqa: E402
from mtl_core.models import build_model  # noqa: E402
from mtl_core.sink import MemorySink  # noqa: E402
from mtl_core.trainer import train  # noqa: E402


def make_config(device: str, n_samples: int, suite: str, trunk: dict) -> dict:
    return parse_config({
        "device": device, "seed": 0,
        "data": {"suite": suite, "params": {"n_samples": n_samples}, "val_fraction": 0.05},
        "model": {"trunk": trunk, "heads": {"layers": [64]}},
        "optim": {"optimizer": "adam", "lr": 1e-3, "batch_size": 128, "epochs": 1},
        "log_every": 20,
    })


def plain_loop(cfg) -> int:
    """The baseline: what a person writes by hand for the same experiment."""
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    names = list(cfg.task_weights())
    data = load_suite(cfg.data, cfg.seed, names, device=device)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data).to(device)
    specs = [data.task(n) for n in names]
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    n, bs = len(data.train), cfg.optim.batch_size
    order = torch.randperm(n).to(device)
    steps = 0
    model.train()
    for start in range(0, n, bs):
        batch = data.train.take(order[start:start + bs])
        out = model(batch.inputs)
        loss = sum(task_loss(s, out[s.name], batch.targets[s.name]) for s in specs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps


def trainer_run(cfg) -> int:
    result = train(cfg, MemorySink())
    if cfg.device.startswith("cuda"):
        torch.cuda.synchronize()
    return result.steps


def timed(fn, cfg) -> tuple[float, int]:
    start = time.perf_counter()
    steps = fn(cfg)
    return time.perf_counter() - start, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="smaller data, 3 repeats")
    args = parser.parse_args()
    n = 8_000 if args.quick else 40_000
    repeats = 3 if args.quick else args.repeats
    cases = {
        "tabular MLP 256-256": ("synthetic_tabular", {"type": "mlp", "layers": [256, 256]}),
        "tabular MLP 64-64": ("synthetic_tabular", {"type": "mlp", "layers": [64, 64]}),
    }
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
          f"{repeats} repeats (median), n_samples {n}")
    print("ratio = trainer steps/s ÷ plain steps/s; 'sparse' logs only at the first and last "
          "step (so nearly no per-task gradient diagnostics), isolating their cost")
    print(f"{'case':22} {'steps':>5} {'plain/s':>8} {'trainer/s':>9} {'ratio':>6} "
          f"{'sparse/s':>8} {'ratio':>6}")
    for label, (suite, trunk) in cases.items():
        cfg = make_config(args.device, n, suite, trunk)
        sparse = cfg.model_copy(deep=True)
        sparse.log_every = 10**9
        plain_loop(cfg), trainer_run(cfg)  # warm-up: allocators, kernels, caches
        times: dict[str, list[float]] = {"plain": [], "trainer": [], "sparse": []}
        for _ in range(repeats):  # interleaved, so drift hits all alike
            t, steps = timed(plain_loop, cfg)
            times["plain"].append(t)
            t, trainer_steps = timed(trainer_run, cfg)
            times["trainer"].append(t)
            times["sparse"].append(timed(trainer_run, sparse)[0])
        assert steps == trainer_steps, (steps, trainer_steps)
        rate = {k: steps / statistics.median(v) for k, v in times.items()}
        print(f"{label:22} {steps:>5} {rate['plain']:>8.1f} {rate['trainer']:>9.1f} "
              f"{rate['trainer'] / rate['plain']:>6.3f} {rate['sparse']:>8.1f} "
              f"{rate['sparse'] / rate['plain']:>6.3f}")


if __name__ == "__main__":
    main()
