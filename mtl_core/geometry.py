"""Gradient geometry: two tasks' losses over a plane of two shared parameters.

Every gradient-method paper draws this picture: the contours of each task's loss, the Pareto
set, and each method's path to it. Here the paths come from the very method objects the
trainer uses (`mtl_core.weighting.build_method`), driven through their public interface: the
two coordinates are the model's only (shared) parameters, the per-task losses arrive already
multiplied by the task weights w_i, `method.backward` fills `.grad`, and the trainer's own
`make_optimizer` takes the step. Swap a method in the registry and the path changes with it.

Losses are shifted by a constant so they stay positive (loss-level methods treat a loss of
exactly 0 as a switched-off task, and FAMO, GLS take logarithms); a constant changes no
gradient, so static and every gradient-level method follow exactly the published paths.
FAMO's own toy code does the same (`set_min_losses(-21)`).

torch is imported inside the functions: a page importing this module paints at once.
"""
from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mtl_core.pareto import pareto_mask

if TYPE_CHECKING:
    from torch import Tensor

TASKS = ("task1", "task2")
EPOCH_STEPS = 50  # a path has no epochs: DWA-style methods see one every this many steps
MAX_STEPS = 5000
MAX_STARTS = 8
_LOWER = 5e-6  # the clamp inside the CAGrad toy's logarithms


# ---------------------------------------------------------------------------- the problems


def _cagrad_toy(x: Tensor, scale: float = 1.0) -> Tensor:
    """Liu et al. 2021 (CAGrad, toy.py), reused by Nash-MTL and FAMO: a log valley per task
    above x2 = 0, two shifted quadratics below; the Pareto set is x1 ∈ [-7, 7] at x2 ≈ -8.36."""
    import torch

    x1, x2 = x[..., 0], x[..., 1]
    f1 = torch.clamp((0.5 * (-x1 - 7) - torch.tanh(-x2)).abs(), _LOWER).log() + 6
    f2 = torch.clamp((0.5 * (-x1 + 3) + torch.tanh(-x2) + 2).abs(), _LOWER).log() + 6
    c1 = torch.clamp(torch.tanh(x2 * 0.5), 0)
    f1_sq = ((-x1 + 7).pow(2) + 0.1 * (-x2 - 8).pow(2)) / 10 - 20
    f2_sq = ((-x1 - 7).pow(2) + 0.1 * (-x2 - 8).pow(2)) / 10 - 20
    c2 = torch.clamp(torch.tanh(-x2 * 0.5), 0)
    f1 = f1 * c1 + f1_sq * c2
    f2 = f2 * c1 + f2_sq * c2
    return torch.stack([scale * (f1 + 21.0), f2 + 21.0], dim=-1)


def _rotation(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


def _quadratic_pair(x: Tensor, a1: np.ndarray, c1: np.ndarray, a2: np.ndarray, c2: np.ndarray,
                    scales: tuple[float, float]) -> Tensor:
    """f_t = scale_t · (½ (x − c_t)ᵀ A_t (x − c_t) + 1)."""
    import torch

    out = []
    for a, c, s in ((a1, c1, scales[0]), (a2, c2, scales[1])):
        d = x - torch.as_tensor(c, dtype=x.dtype)
        q = torch.einsum("...i,ij,...j->...", d, torch.as_tensor(a, dtype=x.dtype), d)
        out.append(s * (0.5 * q + 1.0))
    return torch.stack(out, dim=-1)


_R = _rotation(math.radians(35))
CONFLICT = {"a1": _R @ np.diag([1.0, 12.0]) @ _R.T, "c1": np.array([-3.0, 0.0]),
            "a2": _R.T @ np.diag([1.0, 12.0]) @ _R, "c2": np.array([3.0, 0.0])}
SCALES = {"a1": np.eye(2), "c1": np.array([-2.0, -2.0]),
          "a2": np.eye(2), "c2": np.array([2.0, 2.0])}
SCALE_RATIO = 100.0


@dataclass(frozen=True)
class Problem:
    name: str
    title: str
    description: str
    source: str
    fn: Callable[[Tensor], Tensor]  # (..., 2) points -> (..., 2) losses of task1, task2
    bounds: tuple[tuple[float, float], tuple[float, float]]
    starts: tuple[tuple[float, float], ...]  # the published starts where there are some
    lr: float = 0.02
    steps: int = 1500
    quadratic: dict[str, Any] | None = None  # A_t, c_t, scales when the problem is quadratic

    def losses(self, points: np.ndarray) -> np.ndarray:
        """Both tasks' (unweighted) losses at `points` (..., 2)."""
        import torch

        with torch.no_grad():
            return self.fn(torch.as_tensor(np.asarray(points, dtype=float))).numpy()


PROBLEMS: dict[str, Problem] = {p.name: p for p in [
    Problem(
        "cagrad_toy", "CAGrad toy (Liu et al. 2021)",
        "Above x₂ = 0 each task is a narrow log valley; below, two quadratics whose minima sit "
        "at x₁ = ±7. Plain gradient descent on the average gets stuck in a valley from the "
        "upper starts; the Pareto set is the segment x₁ ∈ [−7, 7] at x₂ ≈ −8.36.",
        "Liu et al., Conflict-Averse Gradient Descent, NeurIPS 2021, Fig. 1 (toy.py); the "
        "same functions and starts in Navon et al. 2022 (Nash-MTL) and Liu et al. 2023 (FAMO).",
        _cagrad_toy, ((-10.0, 10.0), (-10.0, 10.0)),
        ((-8.5, 7.5), (-8.5, -5.0), (9.0, 9.0), (0.0, 0.0), (-7.5, -0.5), (9.0, -1.0)),
        lr=0.1, steps=800),
    Problem(
        "cagrad_toy_imbalanced", "CAGrad toy, task 1 × 0.1 (Navon et al. 2022)",
        "The same landscape with task 1's loss ten times smaller, as in the Nash-MTL and FAMO "
        "papers: methods that follow the raw gradients favour task 2; scale-invariant ones "
        "(MGDA's direction aside, Nash-MTL, IMTL, FAMO) spread along the Pareto set.",
        "Navon et al., Multi-Task Learning as a Bargaining Game, ICML 2022, Fig. 2 "
        "(scale 0.1); Liu et al., FAMO, NeurIPS 2023, Fig. 2.",
        lambda x: _cagrad_toy(x, 0.1), ((-10.0, 10.0), (-10.0, 10.0)),
        ((-8.5, 7.5), (0.0, 0.0), (9.0, 9.0), (-7.5, -0.5), (9.0, -1.0)),
        lr=0.1, steps=800),
    Problem(
        "conflict", "Strong conflict: two crossed ravines",
        "Two narrow quadratic ravines tilted ±35° with minima at (∓3, 0). Between them the "
        "tasks' gradients point almost opposite ways (cosine near −1): whatever helps one "
        "task hurts the other, and the Pareto set is the curve joining the two minima.",
        "MTL Lab (made for this page): ½(x − cₜ)ᵀAₜ(x − cₜ) + 1 with Aₜ = R(±35°) diag(1, 12) "
        "R(±35°)ᵀ.",
        lambda x: _quadratic_pair(x, CONFLICT["a1"], CONFLICT["c1"], CONFLICT["a2"],
                                  CONFLICT["c2"], (1.0, 1.0)),
        ((-6.0, 6.0), (-6.0, 6.0)),
        ((-5.0, 5.0), (5.0, 5.0), (0.0, -5.0), (5.0, -4.0)),
        lr=0.05, steps=400, quadratic={**CONFLICT, "scales": (1.0, 1.0)}),
    Problem(
        "scales", f"Loss scales: task 1 × {SCALE_RATIO:g}",
        f"Two round bowls at (−2, −2) and (2, 2); task 1's loss is {SCALE_RATIO:g} times larger. "
        "The plain sum ends next to task 1's minimum; the Pareto set is the segment between "
        "the two minima, and methods that look past the scale land further along it.",
        "MTL Lab (made for this page): scaleₜ · (½‖x − cₜ‖² + 1).",
        lambda x: _quadratic_pair(x, SCALES["a1"], SCALES["c1"], SCALES["a2"], SCALES["c2"],
                                  (SCALE_RATIO, 1.0)),
        ((-5.0, 5.0), (-5.0, 5.0)),
        ((-4.0, 4.0), (4.0, -4.0), (4.0, 4.0), (-4.0, -4.0)),
        lr=0.05, steps=400, quadratic={**SCALES, "scales": (SCALE_RATIO, 1.0)}),
]}


def get_problem(name: str) -> Problem:
    try:
        return PROBLEMS[name]
    except KeyError:
        raise ValueError(f"problem: unknown {name!r}; allowed: {', '.join(PROBLEMS)}") from None


# ------------------------------------------------------------------------ surfaces and sets


@dataclass
class Surface:
    xs: np.ndarray  # (n,)
    ys: np.ndarray  # (n,)
    losses: np.ndarray  # (2, n, n): task t's loss at (xs[j], ys[i]) is losses[t, i, j]


def surface(problem: Problem, n: int = 121) -> Surface:
    (x0, x1), (y0, y1) = problem.bounds
    xs, ys = np.linspace(x0, x1, n), np.linspace(y0, y1, n)
    gx, gy = np.meshgrid(xs, ys)
    values = problem.losses(np.stack([gx, gy], axis=-1))  # (n, n, 2)
    return Surface(xs, ys, np.moveaxis(values, -1, 0))


def pareto_set(problem: Problem, n: int = 401) -> np.ndarray:
    """Points (m, 2) of an n × n grid over the problem's bounds whose losses no other grid
    point dominates (mtl_core.pareto: at least as good on both, strictly better on one)."""
    grid = surface(problem, n)
    gx, gy = np.meshgrid(grid.xs, grid.ys)
    values = grid.losses.reshape(2, -1).T
    mask = pareto_mask(values)
    return np.stack([gx.reshape(-1)[mask], gy.reshape(-1)[mask]], axis=1)


def task_gradients(problem: Problem, point: Sequence[float]) -> np.ndarray:
    """(2, 2): row t is the gradient of task t's (unweighted) loss at `point`."""
    import torch

    x = torch.tensor([float(v) for v in point], dtype=torch.float64, requires_grad=True)
    f = problem.fn(x)
    return np.stack([torch.autograd.grad(f[t], x, retain_graph=t == 0)[0].numpy()
                     for t in range(2)])


def pareto_stationarity(problem: Problem, point: Sequence[float]) -> float:
    """Norm of the smallest vector in the convex hull of the two task gradients, over the
    larger gradient norm: 0 exactly at a Pareto-stationary point (where MGDA's update
    vanishes), 1 where the gradients agree."""
    g1, g2 = task_gradients(problem, point)
    diff = g1 - g2
    denom = float(diff @ diff)
    a = 0.5 if denom == 0 else float(np.clip((g2 - g1) @ g2 / denom, 0.0, 1.0))
    smallest = np.linalg.norm(a * g1 + (1 - a) * g2)
    scale = max(np.linalg.norm(g1), np.linalg.norm(g2))
    return float(smallest / scale) if scale > 0 else 0.0


def static_optimum(problem: Problem, weights: Sequence[float]) -> np.ndarray | None:
    """Where Σ wₜ fₜ's gradient vanishes, in closed form for the quadratic problems."""
    q = problem.quadratic
    if q is None:
        return None
    s1, s2 = q["scales"]
    a = weights[0] * s1 * q["a1"] + weights[1] * s2 * q["a2"]
    b = weights[0] * s1 * q["a1"] @ q["c1"] + weights[1] * s2 * q["a2"] @ q["c2"]
    return np.linalg.solve(a, b)


# ------------------------------------------------------------------------- the method paths


def applicable_methods() -> list[str]:
    """Every registered method that works on two shared parameters (all of them, today)."""
    from mtl_core.weighting import METHODS

    return METHODS.names()


def _point_model(start: Sequence[float]):
    """A model whose only parameters are the two coordinates, all shared (no heads)."""
    import torch
    from torch import nn

    from mtl_core.models.base import MTLModel

    class PointModel(MTLModel):
        def __init__(self) -> None:
            super().__init__(list(TASKS))
            self.x = nn.Parameter(torch.tensor([float(v) for v in start], dtype=torch.float32))

        def features(self, inputs: dict) -> list[Tensor]:
            return [self.x]

        def heads(self, features: list[Tensor]) -> dict:
            return {}

        def shared_parameters(self) -> list[nn.Parameter]:
            return [self.x]

        def task_parameters(self, task: str) -> list[nn.Parameter]:
            return []

    return PointModel()


@dataclass
class Path:
    method: str
    start: tuple[float, float]
    points: np.ndarray  # (steps + 1, 2)
    losses: np.ndarray  # (steps + 1, 2), unweighted
    weights: np.ndarray  # (steps, 2) effective weight on each raw loss (w_t × the method's)
    seconds: float
    error: str | None = None
    note: str = ""  # e.g. a solver's warnings along the way

    @property
    def end(self) -> np.ndarray:
        return self.points[-1]


@dataclass
class PathSettings:
    steps: int = 800
    lr: float = 0.1
    weights: tuple[float, float] = (1.0, 1.0)
    optimizer: str = "adam"
    params: dict[str, dict] = field(default_factory=dict)  # per-method params
    seed: int = 0


def check_settings(s: PathSettings) -> list[tuple[str, str]]:
    """(field, message) for every setting out of range."""
    errors = []
    if not 1 <= s.steps <= MAX_STEPS:
        errors.append(("steps", f"must be between 1 and {MAX_STEPS} (got {s.steps})"))
    if not (s.lr > 0 and math.isfinite(s.lr)) or s.lr > 10:
        errors.append(("lr", f"must be > 0 and at most 10 (got {s.lr})"))
    if len(s.weights) != 2 or any(not (w >= 0 and math.isfinite(w)) for w in s.weights):
        errors.append(("weights", f"need two finite values ≥ 0 (got {list(s.weights)})"))
    elif not any(w > 0 for w in s.weights):
        errors.append(("weights", "at least one task weight must be above 0 (got 0 and 0)"))
    return errors


def run_path(problem: Problem, method: str, start: Sequence[float],
             settings: PathSettings | None = None) -> Path:
    """Optimise the two coordinates from `start` with `method`, as the trainer would: the
    method's `backward` on the weighted losses, then the configured optimizer's step."""
    import torch

    from mtl_core.config import OptimConfig
    from mtl_core.trainer import make_optimizer
    from mtl_core.weighting import build_method

    s = settings or PathSettings(steps=problem.steps, lr=problem.lr)
    errors = check_settings(s)
    if errors:
        raise ValueError("; ".join(f"{f}: {m}" for f, m in errors))
    torch.manual_seed(s.seed)  # RLW draws from a generator seeded from the run seed
    model = _point_model(start)
    m = build_method(method, s.params.get(method, {}), list(TASKS), model)
    optimizer = make_optimizer(OptimConfig(optimizer=s.optimizer, lr=s.lr),
                               list(model.parameters()) + m.extra_parameters(),
                               torch.device("cpu"))
    w = [float(v) for v in s.weights]
    points = np.empty((s.steps + 1, 2))
    losses = np.empty((s.steps + 1, 2))
    weights = np.full((s.steps, 2), np.nan)
    t0 = time.perf_counter()
    step = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        step, error = _descend(problem, model, m, optimizer, w, s.steps, points, losses,
                               weights)
    note = (f"{len(caught)} warnings, e.g. {str(caught[0].message)[:120]}" if caught else "")
    with torch.no_grad():
        points[step] = model.x.numpy()
        losses[step] = problem.fn(model.x).numpy()
    n = step + 1
    return Path(method, (float(start[0]), float(start[1])), points[:n], losses[:n],
                weights[:step], time.perf_counter() - t0, error, note)


def _descend(problem: Problem, model, m, optimizer, w: list[float], steps: int,
             points: np.ndarray, losses: np.ndarray, weights: np.ndarray
             ) -> tuple[int, str | None]:
    """The trainer's step, `steps` times: the method's backward on the weighted losses, then
    the optimizer. Returns the number of steps taken and why it stopped early, if it did."""
    import torch

    epoch_sum = torch.zeros(2)
    for step in range(steps):
        raw = problem.fn(model.x)
        points[step] = model.x.detach().numpy()
        losses[step] = raw.detach().numpy()
        weighted = torch.stack([raw[t] * w[t] for t in range(2)])
        optimizer.zero_grad(set_to_none=True)
        try:
            result = m.backward(weighted, [model.x], model)
        except Exception as exc:  # a solver failing on a degenerate point ends the path
            return step, f"failed at step {step}: {exc}"
        weights[step] = np.asarray(w) * result.weights.detach().double().numpy()
        optimizer.step()
        epoch_sum += weighted.detach()
        if (step + 1) % EPOCH_STEPS == 0:
            m.end_epoch(epoch_sum / EPOCH_STEPS)
            epoch_sum.zero_()
        if not torch.isfinite(model.x).all():
            return step + 1, f"diverged at step {step}"
    return steps, None


def run_paths(problem: Problem, methods: Sequence[str], starts: Sequence[Sequence[float]],
              settings: PathSettings | None = None) -> list[Path]:
    if len(starts) > MAX_STARTS:
        raise ValueError(f"starts: at most {MAX_STARTS} (got {len(starts)})")
    return [run_path(problem, m, st, settings) for m in methods for st in starts]


@dataclass
class PointView:
    point: tuple[float, float]
    task_grads: np.ndarray  # (2, 2) raw task gradients
    updates: dict[str, np.ndarray]  # method -> (2,) the direction it moves (−.grad it left)


def updates_at(problem: Problem, point: Sequence[float], methods: Sequence[str],
               settings: PathSettings | None = None) -> PointView:
    """Each task's gradient at `point` and the first update of each (freshly built) method
    there: minus the `.grad` its `backward` leaves on the two coordinates."""
    import torch

    from mtl_core.weighting import build_method

    s = settings or PathSettings()
    w = [float(v) for v in s.weights]
    updates = {}
    for method in methods:
        torch.manual_seed(s.seed)
        model = _point_model(point)
        m = build_method(method, s.params.get(method, {}), list(TASKS), model)
        raw = problem.fn(model.x)
        m.backward(torch.stack([raw[t] * w[t] for t in range(2)]), [model.x], model)
        grad = model.x.grad
        updates[method] = np.zeros(2) if grad is None else -grad.detach().numpy()
    return PointView((float(point[0]), float(point[1])), task_gradients(problem, point),
                     updates)
