"""Why replica 1 of `loss_scales_a` with seeds 3-4 ends far from seed 4 trained alone.

The issue demands replica i equal the run of seed + i "up to floating-point reordering". On the
loss_scales lesson (plain SGD with momentum on a 100x loss scale) seed 4 sits on a knife-edge:
float32 rounding alone decides whether the distance task stalls at the mean or is learned.
This script shows it in four measurements (one torch thread, in-process, MemorySinks):

1. the per-step distance loss of seed 4 alone against replica 1 of seeds 3-4 (log_every 1):
   the first step that differs and the relative difference at chosen steps;
2. the same for seed 4 alone against itself with its weights multiplied by (1 + 6e-8·N(0, 1))
   after every optimizer step (about one float32 ulp, a stand-in for reordering noise), for a
   few noise seeds, and those runs' final test MSE;
3. seed 4's final distance test MSE alone, as replica 1 of K = 2, 3 and 5 stacked runs, and in
   the stacked engine with K = 1 (batched matmuls of one replica);
4. steps 1 and 3 in float64 (`torch.set_default_dtype`), where the rounding is 1e-16.

    python bench/replica_knife_edge.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mtl_core import replicas as R  # noqa: E402
from mtl_core import trainer  # noqa: E402
from mtl_core.config import parse_config  # noqa: E402
from mtl_core.sink import MemorySink  # noqa: E402

PRESET = Path(__file__).resolve().parents[1] / "examples" / "lessons" / "loss_scales_a.yaml"
MARKS = [1, 20, 50, 100, 150, 200, 500, 1000, 1140]
BUILD_OPTIMIZER = trainer.make_optimizer


def config(seed: int, replicas: int, log_every: int = 1):
    doc = yaml.safe_load(PRESET.read_text())
    return parse_config({**doc, "seed": seed, "replicas": replicas, "log_every": log_every})


def nudged(eps: float, noise_seed: int):
    """make_optimizer whose step multiplies every parameter by (1 + eps·N(0, 1)) after it."""
    def make(*args, **kwargs):
        optimizer = BUILD_OPTIMIZER(*args, **kwargs)
        generator, step = torch.Generator().manual_seed(noise_seed), optimizer.step

        def noisy_step(*a, **k):
            out = step(*a, **k)
            with torch.no_grad():
                for group in optimizer.param_groups:
                    for p in group["params"]:
                        p.mul_(1 + eps * torch.randn(p.shape, generator=generator))
            return out

        optimizer.step = noisy_step
        return optimizer
    return make


def distance_losses(sink: MemorySink, replica: int) -> list[float]:
    return [v for _, v in sink.series("train", "distance", "loss", replica)]


def test_mse(result, replica: int | None = None) -> float:
    summary = result.summary if replica is None else result.summary["replicas"][replica]
    return summary["test"]["distance"]["mse"]


def compare(label: str, alone: list[float], other: list[float]) -> None:
    first = next((i + 1 for i, (a, b) in enumerate(zip(alone, other, strict=True)) if a != b), None)
    diffs = "  ".join(f"{m}: {abs(other[m - 1] - alone[m - 1]) / abs(alone[m - 1]):.1e}"
                      for m in MARKS if m <= len(alone))
    print(f"  {label}: first differing step {first}; relative difference at step {diffs}")


def trajectories() -> list[float]:
    alone_sink, stacked_sink = MemorySink(), MemorySink()
    alone = trainer.train(config(4, 1), alone_sink)
    stacked = trainer.train(config(3, 2), stacked_sink)
    reference = distance_losses(alone_sink, 0)
    compare("replica 1 of seeds 3-4", reference, distance_losses(stacked_sink, 1))
    print(f"  final distance test MSE: alone {test_mse(alone):.2f}, "
          f"replica {test_mse(stacked, 1):.2f}")
    return reference


def main() -> None:
    torch.set_num_threads(1)
    print(f"float32, {PRESET.name}, seed 4")
    reference = trajectories()
    outcomes = []
    for noise_seed in range(4):
        trainer.make_optimizer = nudged(6e-8, noise_seed)
        sink = MemorySink()
        outcomes.append(test_mse(trainer.train(config(4, 1), sink)))
        trainer.make_optimizer = BUILD_OPTIMIZER
        compare(f"alone, one-ulp nudges #{noise_seed}", reference, distance_losses(sink, 0))
    print("  final distance test MSE with one-ulp nudges:", [round(x, 2) for x in outcomes])
    for k, seed in [(2, 4), (3, 2), (5, 0)]:
        result = trainer.train(config(seed, k, 10), MemorySink())
        print(f"  seed 4 as replica {4 - seed} of K = {k}: {test_mse(result, 4 - seed):.2f}")
    one = R.train_slots(config(4, 1, 10), MemorySink(), [(4, [1.0, 1.0])])
    print(f"  seed 4 in the stacked engine, K = 1: {one.tests[0]['distance']['mse']:.2f}")
    torch.set_default_dtype(torch.float64)
    print("float64")
    trajectories()


if __name__ == "__main__":
    main()
