"""Trainer overhead: `mtl_core.trainer.train` (logging on) against a plain hand-written loop.

Both build the same data (load_suite), the same model (build_model, same seed), use the same
batch size, Adam, and the same number of steps; the plain loop does the bare minimum (slice,
forward, Σ losses, backward, step). Both are timed end to end, interleaved, in one process.
Target: trainer steps/s ≥ 0.95 × plain.

The trainer builds its Adam with `fused=True` (one kernel per step); a hand-written loop gets
PyTorch's default (a loop of small ops per parameter). So a second plain loop with the fused
Adam is timed too: trainer ÷ that one is the trainer's own overhead, like for like. Each
ratio is the median over repeats of the ratio within a repeat (runs side by side, so drift in
the machine's speed cancels).

    python bench/overhead.py [--device cpu|cuda] [--repeats 5] [--quick]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
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


def plain_loop(cfg, fused: bool = False) -> int:
    """The baseline: what a person writes by hand for the same experiment."""
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    names = list(cfg.task_weights())
    data = load_suite(cfg.data, cfg.seed, names, device=device)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data).to(device)
    specs = [data.task(n) for n in names]
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr,
                                 **({"fused": True} if fused else {}))
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


def plain_fused_loop(cfg) -> int:
    return plain_loop(cfg, fused=True)


def trainer_run(cfg) -> int:
    result = train(cfg, MemorySink())
    if cfg.device.startswith("cuda"):
        torch.cuda.synchronize()
    return result.steps


def timed(fn, cfg) -> tuple[float, int]:
    start = time.perf_counter()
    steps = fn(cfg)
    return time.perf_counter() - start, steps


def paired_ratio(times: dict[str, list[float]], a: str, b: str) -> float:
    """steps/s of `a` ÷ steps/s of `b`: the median over repeats of the ratio within a repeat."""
    return statistics.median(tb / ta for ta, tb in zip(times[a], times[b], strict=True))


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
    print("plain: default Adam; fused: plain with Adam(fused=True) like the trainer; "
          "sparse: the trainer logging only at the first and last step (isolates the "
          "per-task gradient diagnostics)")
    print(f"{'case':20} {'steps':>5} {'plain/s':>8} {'fused/s':>8} {'trainer/s':>9} "
          f"{'÷plain':>7} {'÷fused':>7} {'sparse÷fused':>12}")
    for label, (suite, trunk) in cases.items():
        cfg = make_config(args.device, n, suite, trunk)
        sparse = cfg.model_copy(deep=True)
        sparse.log_every = 10**9
        runs = {"plain": (plain_loop, cfg), "fused": (plain_fused_loop, cfg),
                "trainer": (trainer_run, cfg), "sparse": (trainer_run, sparse)}
        for fn, run_cfg in runs.values():  # warm-up: allocators, kernels, caches
            fn(run_cfg)
        times: dict[str, list[float]] = {k: [] for k in runs}
        steps: dict[str, int] = {}
        for _ in range(repeats):  # interleaved, so drift hits all alike
            for name, (fn, run_cfg) in runs.items():
                t, steps[name] = timed(fn, run_cfg)
                times[name].append(t)
        assert len(set(steps.values())) == 1, steps
        n_steps = steps["plain"]

        rate = {k: n_steps / statistics.median(v) for k, v in times.items()}
        ratio = partial(paired_ratio, times)
        print(f"{label:20} {n_steps:>5} {rate['plain']:>8.1f} {rate['fused']:>8.1f} "
              f"{rate['trainer']:>9.1f} {ratio('trainer', 'plain'):>7.3f} "
              f"{ratio('trainer', 'fused'):>7.3f} {ratio('sparse', 'fused'):>12.3f}")


if __name__ == "__main__":
    main()
