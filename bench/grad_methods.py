"""Step time of every gradient-level method, relative to a plain `static` step.

A step is forward + backward + Adam step. `static` is `losses.sum().backward()`; every
gradient method runs `method.backward(losses, features, model)` in both `parameters` and
`representation` mode; `libmtl_pcgrad` is PCGrad done the LibMTL way (T backward calls with
retain_graph, flatten the shared grads, project pairwise, write the sum back). Models are a
small MLP trunk and a small CNN trunk with one 2-layer head per task, at 2, 4 and 8 tasks.

All variants of one (trunk, tasks) cell are timed in interleaved rounds in one process (so
load from other processes hits them alike); each round times `--steps` consecutive steps after
warm-up, and the table reports the median round, divided by the median of `static`.
`per_task_passes` is forward + one backward pass per task + optimizer step with no combination:
the floor under every exact `parameters` method.
A second table compares the two ways `JacobianStrategy` (used by the gradient methods and by
the diagnostics' `task_gradients`) chooses between: one vmapped backward for the T per-task
gradients, or a loop of T `autograd.grad` calls. A third times each Gramian-based method's
weighting alone (torchjd's solver or loop on the T x T Gramian): a cost per step that does not
shrink with the model.

    python bench/grad_methods.py [--device cpu|cuda] [--quick] [--repeats 5] [--threads 1]

Targets: parameters <= 3x static, representation <= 1.5x static, and beat the LibMTL loop.
"""
from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mtl_core.config import OptimConfig  # noqa: E402
from mtl_core.diagnostics import JacobianStrategy, stacked_scalars  # noqa: E402
from mtl_core.models.base import MTLModel  # noqa: E402
from mtl_core.trainer import make_optimizer  # noqa: E402
from mtl_core.weighting import build_method  # noqa: E402

BASELINES = ("static", "per_task_passes", "libmtl_pcgrad")
METHODS = ["pcgrad", "mgda", "cagrad", "imtl_g", "nash_mtl", "upgrad", "aligned_mtl",
           "graddrop", "gradvac", "dualproj"]


class BenchModel(MTLModel):
    """A shared trunk and one `Linear-ReLU-Linear` head per task."""

    def __init__(self, trunk: nn.Module, feature_dim: int, n_tasks: int, head_width: int,
                 out_dim: int) -> None:
        super().__init__([f"task{i}" for i in range(n_tasks)])
        self.trunk = trunk
        self.task_heads = nn.ModuleList(
            nn.Sequential(nn.Linear(feature_dim, head_width), nn.ReLU(),
                          nn.Linear(head_width, out_dim)) for _ in range(n_tasks))

    def features(self, inputs: dict[str, Tensor]) -> list[Tensor]:
        return [self.trunk(inputs["x"])]

    def heads(self, features: list[Tensor]) -> dict[str, Tensor]:
        return {n: h(features[0]) for n, h in zip(self.task_names, self.task_heads, strict=True)}

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.trunk.parameters())

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return list(self.task_heads[self.task_names.index(task)].parameters())


def make_setup(trunk: str, n_tasks: int, device: torch.device
               ) -> tuple[BenchModel, dict[str, Tensor], Tensor]:
    """The app's defaults, roughly: MLP trunk [128, 128] on 32 features (batch 128, regression
    heads); CNN trunk [16, 32] + [64] on 28x28 images (batch 32, 10-class heads)."""
    torch.manual_seed(0)
    if trunk == "mlp":
        net = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU())
        model = BenchModel(net, 128, n_tasks, 32, 1)
        x, y = torch.randn(128, 32), torch.randn(n_tasks, 128, 1)
    else:
        net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU())
        model = BenchModel(net, 64, n_tasks, 32, 10)
        x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (n_tasks, 32))
    return model.to(device), {"x": x.to(device)}, y.to(device)


def task_losses(model: BenchModel, out: dict[str, Tensor], y: Tensor) -> Tensor:
    losses = []
    for i, name in enumerate(model.task_names):
        if y.dtype == torch.long:
            losses.append(nn.functional.cross_entropy(out[name], y[i]))
        else:
            losses.append(nn.functional.mse_loss(out[name], y[i]))
    return torch.stack(losses)


def libmtl_pcgrad(losses: Tensor, model: BenchModel) -> None:
    """PCGrad as LibMTL does it: one backward per task, flatten, project, write back."""
    shared = model.shared_parameters()
    n = losses.shape[0]
    grads = []
    for t in range(n):
        losses[t].backward(retain_graph=t < n - 1)  # task params accumulate their own grad
        grads.append(torch.cat([p.grad.flatten() for p in shared]))
        for p in shared:
            p.grad = None
    grads = torch.stack(grads)
    pc = grads.clone()
    for i in range(n):
        order = list(range(n))
        random.shuffle(order)
        for j in order:
            dot = pc[i] @ grads[j]
            if dot < 0:  # a host sync per pair, as in LibMTL
                pc[i] -= dot * grads[j] / (grads[j].norm().pow(2) + 1e-8)
    combined = pc.sum(0)
    for p, g in zip(shared, combined.split([p.numel() for p in shared]), strict=True):
        p.grad = g.reshape(p.shape).clone()


def per_task_passes(losses: Tensor, model: BenchModel) -> None:
    """The floor of every exact `parameters` method: one backward pass per task from that
    task's loss (over the shared and its own parameters), no combination; the plain sum is
    written back so the optimizer step does the same work."""
    starts = stacked_scalars(losses)
    params = model.shared_parameters()
    for t, start in enumerate(starts):
        own = model.task_parameters(model.task_names[t])
        grads = torch.autograd.grad(start, [*params, *own], grad_outputs=losses.new_ones(()),
                                    retain_graph=t < len(starts) - 1)
        for p, g in zip([*params, *own], grads, strict=True):
            p.grad = g if p.grad is None else p.grad + g


def make_step(variant: str, trunk: str, n_tasks: int, device: torch.device) -> Callable[[], None]:
    model, inputs, y = make_setup(trunk, n_tasks, device)
    optimizer = make_optimizer(OptimConfig(), list(model.parameters()), device)  # the trainer's
    method = None
    if variant not in BASELINES:
        name, mode = variant.split("/")
        method = build_method(name, {"gradients": mode}, model.task_names, model)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        features = model.features(inputs)
        losses = task_losses(model, model.heads(features), y)
        if method is not None:
            method.backward(losses, features, model)
        elif variant == "static":
            losses.sum().backward()
        elif variant == "per_task_passes":
            per_task_passes(losses, model)
        else:
            libmtl_pcgrad(losses, model)
        optimizer.step()

    return step


def time_rounds(steps: dict[str, Callable[[], None]], repeats: int, n_steps: int,
                warmup: int, device: torch.device) -> dict[str, float]:
    """Median seconds per step of each variant over `repeats` interleaved rounds."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for step in steps.values():
        for _ in range(warmup):
            step()
    sync()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(n_steps):
                step()
            sync()
            times[name].append((time.perf_counter() - start) / n_steps)
    return {name: statistics.median(values) for name, values in times.items()}


def diagnostics_timing(trunk: str, n_tasks: int, device: torch.device, repeats: int
                       ) -> tuple[float, float]:
    """Seconds per call of the per-task gradients on the shared parameters, both ways
    `JacobianStrategy` chooses between: one vmapped backward, and T backward calls (each
    starting at its task's loss)."""
    model, inputs, y = make_setup(trunk, n_tasks, device)
    shared = model.shared_parameters()
    losses = task_losses(model, model(inputs), y)
    reference = torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(
        losses[t], shared, retain_graph=True)]) for t in range(n_tasks)])
    ways = {}
    for choice in JacobianStrategy.CANDIDATES:
        strategy = JacobianStrategy()
        strategy.choice = choice
        torch.testing.assert_close(strategy(losses, shared, retain_graph=True), reference)
        ways[choice] = lambda s=strategy: s(losses, shared, retain_graph=True)
    result = time_rounds(ways, repeats, 5, 3, device)
    return result["vmap"], result["loop"]


def weighting_timing(trunk: str, n_tasks: int, device: torch.device, repeats: int,
                     methods: list[str]) -> dict[str, float]:
    """Seconds per call of each Gramian-based method's weighting alone (torchjd's solver or
    loop on the T x T Gramian, on the CPU), on the Gramian of this cell's per-task gradients on
    the shared representation: the part of a step that does not shrink with the model."""
    model, inputs, y = make_setup(trunk, n_tasks, device)
    features = model.features(inputs)
    losses = task_losses(model, model.heads(features), y)
    rows = torch.stack([torch.autograd.grad(losses[t], features[0], retain_graph=True)[0]
                        .flatten() for t in range(n_tasks)])
    gramian = (rows @ rows.T).to("cpu", torch.float64)
    calls = {}
    for name in methods:
        method = build_method(name, {}, model.task_names, model)
        if method.gramian_based:
            calls[name] = lambda m=method: m.weights_from_gramian(gramian)
    return time_rounds(calls, repeats, 5, 3, torch.device("cpu"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--quick", action="store_true", help="2 and 4 tasks, fewer repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 9)")
    parser.add_argument("--steps", type=int, default=5, help="steps per round")
    parser.add_argument("--warmup", type=int, default=10,
                        help="untimed steps first (the Jacobian strategy settles in 8)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--tasks", type=int, nargs="*", default=None)
    parser.add_argument("--trunks", nargs="*", default=["mlp", "cnn"])
    parser.add_argument("--methods", nargs="*", default=METHODS)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    tasks = args.tasks or ([2, 4] if args.quick else [2, 4, 8])
    repeats = args.repeats or (5 if args.quick else 9)
    n_steps = args.steps
    random.seed(0)

    variants = list(BASELINES) + [f"{m}/{mode}" for mode in ("parameters", "representation")
                                  for m in args.methods]
    cells = [(trunk, n) for trunk in args.trunks for n in tasks]
    ratios: dict[str, dict[tuple[str, int], float]] = {v: {} for v in variants}
    static_ms: dict[tuple[str, int], float] = {}
    started = time.perf_counter()
    for trunk, n in cells:
        steps = {v: make_step(v, trunk, n, device) for v in variants}
        seconds = time_rounds(steps, repeats, n_steps, args.warmup, device)
        static_ms[(trunk, n)] = seconds["static"] * 1e3
        for v in variants:
            ratios[v][(trunk, n)] = seconds[v] / seconds["static"]
        print(f"  timed {trunk} x {n} tasks ({time.perf_counter() - started:.0f} s)",
              file=sys.stderr)

    device_name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"CPU, {args.threads} thread(s)")
    print(f"torch {torch.__version__}, {device_name}, {platform.machine()}, "
          f"median of {repeats} rounds x {n_steps} steps after {args.warmup} warm-up steps; "
          f"total {time.perf_counter() - started:.0f} s\n")
    header = " | ".join(f"{t} T={n}" for t, n in cells)
    print(f"| step time / static | {header} |")
    print("|---" * (len(cells) + 1) + "|")
    print("| static (ms per step) | "
          + " | ".join(f"{static_ms[c]:.2f} ms" for c in cells) + " |")
    for v in variants[1:]:
        print(f"| {v} | " + " | ".join(f"{ratios[v][c]:.2f}" for c in cells) + " |")

    print("\n| per-task gradients on the shared parameters: vmapped / loop of T autograd.grad | "
          + " | ".join(f"{t} T={n}" for t, n in cells) + " |")
    print("|---" * (len(cells) + 1) + "|")
    cols = []
    for trunk, n in cells:
        vmap_s, loop_s = diagnostics_timing(trunk, n, device, repeats)
        cols.append(f"{vmap_s * 1e3:.2f} / {loop_s * 1e3:.2f} ms")
    print("| ms per call | " + " | ".join(cols) + " |")

    print("\n| weighting alone, ms per call (T x T Gramian, CPU) | "
          + " | ".join(f"{t} T={n}" for t, n in cells) + " |")
    print("|---" * (len(cells) + 1) + "|")
    weighting = {cell: weighting_timing(*cell, device, repeats, args.methods) for cell in cells}
    for name in weighting[cells[0]]:
        print(f"| {name} | " + " | ".join(f"{weighting[c][name] * 1e3:.2f}" for c in cells)
              + " |")


if __name__ == "__main__":
    main()
