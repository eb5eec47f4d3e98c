"""How far the stacked step is from the arithmetic floor of K replicas (issue 12's targets).

Per training step of the Train page's default model (synthetic_mmoe, hard sharing, MLP
16-64-64, heads [32], 2 tasks, batch 128, fused Adam), one torch thread, CPU:

- one run: the trainer's step (`Split.take`, the model's forward, the task losses, backward,
  Adam) on one model;
- stacked K: the stacked engine's step (`StackedBatches.take`, the folded template, one
  backward, Adam on the stacked leaves), as `replicas.train_slots` runs it for static weights;
- floor K: the same arithmetic with no per-replica cost at all: one model on K·B rows, and Adam
  over K copies of its parameters. No stacking of K different models can do less work, so
  "one run + (floor K − floor 1)" bounds what K replicas can cost.

Each figure is the minimum over rounds of the mean of a block of steps (interleaved, so that
a busy machine slows all variants alike); the minimum is what the code costs when nothing
else runs.

    python bench/replica_floor.py [--rounds 20] [--steps 100] [--ks 5,11]
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.replicas import config  # noqa: E402
from mtl_core.metrics import task_loss  # noqa: E402
from mtl_core.replicas import StackedBatches, StackedModel, build_replicas  # noqa: E402
from mtl_core.trainer import make_optimizer  # noqa: E402

BATCH = 128
DEVICE = torch.device("cpu")


def one_run_step() -> Callable[[], None]:
    cfg = config("mlp-static", 10)
    names = [t.name for t in cfg.tasks or []]
    (rep,) = build_replicas(cfg, DEVICE, names, 32)
    specs = [rep.data.task(n) for n in names]
    optimizer = make_optimizer(cfg.optim, list(rep.model.parameters()), DEVICE)
    order = torch.randperm(len(rep.data.train))[:BATCH]

    def step() -> None:
        batch = rep.data.train.take(order)
        outputs = rep.model.heads(rep.model.features(batch.inputs))
        losses = torch.stack([task_loss(s, outputs[s.name], batch.targets[s.name])
                              for s in specs])
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        optimizer.step()
    return step


def stacked_step(k: int) -> Callable[[], None]:
    cfg = config("mlp-static", 10, replicas=k)
    names = [t.name for t in cfg.tasks or []]
    replicas = build_replicas(cfg, DEVICE, names, 32)
    specs = [replicas[0].data.task(n) for n in names]
    stacked = StackedModel.build([r.model for r in replicas], specs)
    assert stacked is not None
    batches = StackedBatches(replicas)
    optimizer = make_optimizer(cfg.optim, stacked.params, DEVICE)
    orders = torch.stack([torch.randperm(len(r.data.train))[:BATCH] for r in replicas])

    def step() -> None:
        raw = stacked(*batches.take(orders))
        optimizer.zero_grad(set_to_none=True)
        raw.sum().backward()
        optimizer.step()
    return step


def floor_step(k: int) -> Callable[[], None]:
    trunk = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
    heads = [nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1)) for _ in range(2)]
    params = list(trunk.parameters()) + [p for h in heads for p in h.parameters()]
    # the other K-1 replicas' parameters: Adam's work on them, with gradients of their size
    others = [nn.Parameter(torch.zeros(k - 1, *p.shape)) for p in params] if k > 1 else []
    for p in others:
        p.grad = torch.zeros_like(p)
    optimizer = torch.optim.Adam(params + others, fused=True)
    x = torch.randn(k * BATCH, 16)
    targets = [torch.randn(k * BATCH, 1) for _ in heads]

    def step() -> None:
        features = trunk(x)
        loss = sum(nn.functional.mse_loss(h(features), y) for h, y in zip(heads, targets,
                                                                           strict=True))
        for p in params:
            p.grad = None
        loss.backward()
        optimizer.step()
    return step


def measure(variants: dict[str, Callable[[], None]], rounds: int, steps: int
            ) -> dict[str, float]:
    """ms per step: the minimum over rounds of a block's mean, variants interleaved."""
    for step in variants.values():
        for _ in range(30):
            step()
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(rounds):
        for name, step in variants.items():
            start = time.perf_counter()
            for _ in range(steps):
                step()
            best[name] = min(best[name], (time.perf_counter() - start) / steps * 1e3)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--ks", default="5,11")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ks = [int(k) for k in args.ks.split(",")]
    variants = {"one run": one_run_step(), "floor 1": floor_step(1)}
    for k in ks:
        variants[f"stacked {k}"] = stacked_step(k)
        variants[f"floor {k}"] = floor_step(k)
    ms = measure(variants, args.rounds, args.steps)
    print("| K | one run (ms/step) | stacked (ms/step) | stacked ÷ one | floor: one + (floor K − "
          "floor 1) (ms/step) | floor ÷ one |")
    print("|---|---|---|---|---|---|")
    for k in ks:
        bound = ms["one run"] + ms[f"floor {k}"] - ms["floor 1"]
        print(f"| {k} | {ms['one run']:.3f} | {ms[f'stacked {k}']:.3f} | "
              f"{ms[f'stacked {k}'] / ms['one run']:.2f} | {bound:.3f} | "
              f"{bound / ms['one run']:.2f} |")


if __name__ == "__main__":
    main()
