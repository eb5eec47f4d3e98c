"""Generated suites: `synthetic_mmoe`, `toy_2d`, `synthetic_tabular`.

Each builder draws everything (task functions, then the training pool and the test set) from
one `torch.Generator` seeded with `seed`, so a seed fixes the data exactly and never touches
global RNG state. The task functions are drawn once and shared by the pool and the test set.

Regression targets are standardised with the pool's mean and std so losses of different tasks
start on the same scale; `TaskSpec.target_scale` is that std (the target's unit in original
terms) and `meta["target_mean"]` the mean, so original values are `y * scale + mean`.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from mtl_core.data import SUITES
from mtl_core.data.base import Split, SuiteData, TaskSpec, shapes_only
from mtl_core.registry import Params


def _standardize(values: Tensor, n_pool: int) -> tuple[Tensor, float, float]:
    """Standardise with the statistics of the first `n_pool` rows (the training pool)."""
    mean = values[:n_pool].mean().item()
    std = values[:n_pool].std().item()
    std = std if std > 0 else 1.0  # a constant target stays constant rather than NaN
    return (values - mean) / std, mean, std


def _pool_and_test(x: dict[str, Tensor], y: dict[str, Tensor], n_pool: int
                   ) -> tuple[Split, Split]:
    full = Split(x, y)
    return full.take(slice(0, n_pool)), full.take(slice(n_pool, None))


# --- synthetic_mmoe -----------------------------------------------------------------------


class MmoeParams(Params):
    correlation: float = Field(0.5, ge=-1.0, le=1.0, description=(
        "Correlation of the two tasks' linear parts: 1 same task, 0 unrelated, -1 opposite."))
    n_samples: int = Field(4000, ge=20, le=200_000, description=(
        "Training samples; the validation split is taken from these."))
    n_test: int = Field(1000, ge=1, le=100_000, description="Held-out test samples.")
    n_features: int = Field(16, ge=2, le=1024, description="Input features per sample.")
    noise: float = Field(0.1, ge=0.0, le=5.0, description=(
        "Std of the Gaussian noise added to each label."))
    n_sin_terms: int = Field(10, ge=0, le=50, description=(
        "Sine terms that make each task nonlinear; 0 gives linear tasks."))


@SUITES.register(
    "synthetic_mmoe",
    "Two regression tasks on random features whose relatedness is a slider (Ma et al. 2018).",
    params=MmoeParams, task_names=lambda p: ["task1", "task2"], input_kind="vector",
    describe=lambda p: shapes_only({t: ("regression", None, "x") for t in ("task1", "task2")},
                                   {"x": (p.n_features,)}),
)
def build_synthetic_mmoe(params: MmoeParams, *, seed: int, data_dir: Path) -> SuiteData:
    """The MMoE paper's generator (Ma et al., KDD 2018), scale c = 1.

    u1, u2 orthonormal; w1 = u1, w2 = p*u1 + sqrt(1-p^2)*u2, so cos(w1, w2) = p and, with
    x ~ N(0, I), corr(w1'x, w2'x) = p. y_k = w_k'x + sum_i sin(a_i w_k'x + b_i) + eps with
    a_i, b_i ~ N(0, 1) shared by both tasks. `meta` holds `weights` ([w1, w2]), `alpha` and
    `beta`, so the linear parts and clean labels can be recomputed from any split's inputs.
    """
    g = torch.Generator().manual_seed(seed)
    d, p = params.n_features, params.correlation
    u, _ = torch.linalg.qr(torch.randn(d, 2, generator=g))  # orthonormal columns
    u1, u2 = u[:, 0], u[:, 1]
    weights = torch.stack([u1, p * u1 + math.sqrt(max(0.0, 1.0 - p * p)) * u2])  # (2, d)
    alpha = torch.randn(params.n_sin_terms, generator=g)
    beta = torch.randn(params.n_sin_terms, generator=g)

    n = params.n_samples + params.n_test
    x = torch.randn(n, d, generator=g)
    linear = x @ weights.T  # (n, 2)
    waves = torch.sin(linear.unsqueeze(-1) * alpha + beta).sum(-1)  # (n, 2)
    labels = linear + waves + params.noise * torch.randn(n, 2, generator=g)

    targets: dict[str, Tensor] = {}
    tasks, means = [], {}
    for k, name in enumerate(["task1", "task2"]):
        targets[name], means[name], scale = _standardize(labels[:, k], params.n_samples)
        tasks.append(TaskSpec(name, "regression", target_scale=scale,
                              description=f"w{k + 1}'x plus sine terms plus noise"))
    train, test = _pool_and_test({"x": x}, targets, params.n_samples)
    return SuiteData(
        suite="synthetic_mmoe", tasks=tasks, train=train, val=train, test=test,
        input_shapes={"x": (d,)}, input_kind="vector",
        meta={"weights": weights.tolist(), "alpha": alpha.tolist(), "beta": beta.tolist(),
              "correlation": p, "target_mean": means},
    )


# --- toy_2d -------------------------------------------------------------------------------

TOY_TASKS = ["circle", "xor", "spiral", "distance"]
_CIRCLE_RADIUS = math.sqrt(2.0 / math.pi)  # encloses half of the square [-1, 1]^2


class Toy2dParams(Params):
    n_samples: int = Field(1000, ge=20, le=100_000, description=(
        "Training points; the validation split is taken from these."))
    n_test: int = Field(500, ge=1, le=100_000, description="Held-out test points.")
    noise: float = Field(0.05, ge=0.0, le=0.5, description=(
        "How far points are jittered after their labels are set."))
    distance_scale: float = Field(1.0, gt=0.0, le=10_000.0, description=(
        "Unit of the distance task: its standardised values are multiplied by this, so its "
        "MSE loss grows by the square (1 = standardised; 100 = a task in large units)."))


@SUITES.register(
    "toy_2d",
    "Points in a square with several tasks each: inside a circle, XOR, a spiral, and distance.",
    params=Toy2dParams, task_names=lambda p: list(TOY_TASKS), input_kind="vector",
    describe=lambda p: shapes_only({t: ("regression" if t == "distance" else "binary", None, "x")
                                    for t in TOY_TASKS}, {"x": (2,)}),
)
def build_toy_2d(params: Toy2dParams, *, seed: int, data_dir: Path) -> SuiteData:
    """Uniform points in [-1, 1]^2; labels come from the clean point, then the point is
    jittered by `noise`, so noise blurs the boundaries like in the TensorFlow Playground.

    circle: 1 inside radius sqrt(2/pi) (balanced); xor: 1 where x*y > 0; spiral: two
    interleaved arms, 1 where sin(angle - 2*pi*radius) > 0; distance: radius (regression).
    circle and distance are closely related, xor and spiral are unrelated to them.
    `distance_scale` stretches the distance target (its target_scale shrinks to match, so
    y * target_scale + mean is still the radius): the loss-scale lesson needs a task whose
    loss is orders of magnitude larger than the others'.
    """
    g = torch.Generator().manual_seed(seed)
    n = params.n_samples + params.n_test
    clean = torch.rand(n, 2, generator=g) * 2 - 1
    radius = clean.norm(dim=1)
    angle = torch.atan2(clean[:, 1], clean[:, 0])
    x = clean + params.noise * torch.randn(n, 2, generator=g)

    distance, mean, scale = _standardize(radius, params.n_samples)
    distance, scale = distance * params.distance_scale, scale / params.distance_scale
    targets = {
        "circle": (radius < _CIRCLE_RADIUS).float(),
        "xor": (clean[:, 0] * clean[:, 1] > 0).float(),
        "spiral": (torch.sin(angle - 2 * math.pi * radius) > 0).float(),
        "distance": distance,
    }
    yes_no = ["outside", "inside"]
    tasks = [
        TaskSpec("circle", "binary", class_names=yes_no, description="inside the circle?"),
        TaskSpec("xor", "binary", class_names=["x*y<0", "x*y>0"],
                 description="same sign on both axes?"),
        TaskSpec("spiral", "binary", class_names=["arm 0", "arm 1"],
                 description="which spiral arm?"),
        TaskSpec("distance", "regression", target_scale=scale,
                 description="distance from the centre"),
    ]
    half = round(1.1 + 2 * params.noise, 2)  # the square plus room for jittered points
    train, test = _pool_and_test({"x": x}, targets, params.n_samples)
    return SuiteData(
        suite="toy_2d", tasks=tasks, train=train, val=train, test=test,
        input_shapes={"x": (2,)}, input_kind="vector", plane=(-half, half, -half, half),
        meta={"target_mean": {"distance": mean}},
    )


# --- synthetic_tabular --------------------------------------------------------------------


class TabularParams(Params):
    n_samples: int = Field(4000, ge=20, le=200_000, description=(
        "Training rows; the validation split is taken from these."))
    n_test: int = Field(1000, ge=1, le=100_000, description="Held-out test rows.")
    n_features: int = Field(10, ge=1, le=512, description="Observed features per row.")
    n_tasks: int = Field(2, ge=2, le=8, description="Number of tasks.")
    n_shared_factors: int = Field(4, ge=1, le=64, description=(
        "Hidden factors that every task depends on."))
    n_private_factors: int = Field(2, ge=1, le=64, description=(
        "Hidden factors that only one task depends on, per task."))
    relatedness: float = Field(0.8, ge=0.0, le=1.0, description=(
        "Share of each task's signal that is common to all tasks (1 = same signal)."))
    noise: float = Field(0.1, ge=0.0, le=5.0, description=(
        "Std of the noise added to the observed features."))
    task_kind: Literal["classification", "binary", "regression"] = Field(
        "classification", description="What every task predicts.")
    n_classes: int = Field(3, ge=2, le=10, description=(
        "Classes per task when the task kind is classification."))


def _tabular_task_names(params: TabularParams) -> list[str]:
    return [f"task{k + 1}" for k in range(params.n_tasks)]


def _random_net(z: Tensor, g: torch.Generator, hidden: int = 16) -> Tensor:
    """A random one-hidden-layer tanh net of the factors: a smooth nonlinear signal."""
    w1 = torch.randn(z.shape[1], hidden, generator=g) / math.sqrt(z.shape[1])
    w2 = torch.randn(hidden, generator=g) / math.sqrt(hidden)
    return torch.tanh(z @ w1 * 1.5) @ w2


@SUITES.register(
    "synthetic_tabular",
    "Table-like rows whose tasks share some hidden factors and keep others to themselves.",
    params=TabularParams, task_names=_tabular_task_names, input_kind="vector",
    describe=lambda p: shapes_only(
        {t: (p.task_kind, p.n_classes if p.task_kind == "classification" else None, "x")
         for t in _tabular_task_names(p)}, {"x": (p.n_features,)}),
)
def build_synthetic_tabular(params: TabularParams, *, seed: int, data_dir: Path) -> SuiteData:
    """Shared factors s and private factors q_k ~ N(0, I); features are a random linear mix of
    all factors plus noise. Task k's score is sqrt(r)*S(s) + sqrt(1-r)*P_k(q_k), with S and P_k
    random tanh nets standardised on the pool, so corr(score_j, score_k) is about r.
    regression: the score itself; binary / classification: the score cut at its pool quantiles
    into 2 / n_classes equally frequent classes (class 0 = lowest scores).
    """
    g = torch.Generator().manual_seed(seed)
    n, n_pool, k_tasks = params.n_samples + params.n_test, params.n_samples, params.n_tasks
    shared = torch.randn(n, params.n_shared_factors, generator=g)
    private = torch.randn(k_tasks, n, params.n_private_factors, generator=g)

    factors = torch.cat([shared, *private], dim=1)
    mix = torch.randn(factors.shape[1], params.n_features, generator=g)
    x = factors @ mix / math.sqrt(factors.shape[1])
    x = x + params.noise * torch.randn(n, params.n_features, generator=g)
    x = (x - x[:n_pool].mean(0)) / x[:n_pool].std(0).clamp_min(1e-8)

    common, _, _ = _standardize(_random_net(shared, g), n_pool)
    r = params.relatedness
    n_levels = {"binary": 2, "classification": params.n_classes}.get(params.task_kind)
    targets: dict[str, Tensor] = {}
    tasks: list[TaskSpec] = []
    means: dict[str, float] = {}
    for k, name in enumerate(_tabular_task_names(params)):
        own, _, _ = _standardize(_random_net(private[k], g), n_pool)
        score = math.sqrt(r) * common + math.sqrt(1 - r) * own
        if n_levels is None:
            targets[name], means[name], scale = _standardize(score, n_pool)
            tasks.append(TaskSpec(name, "regression", target_scale=scale,
                                  description="shared signal plus the task's own"))
            continue
        cuts = torch.quantile(score[:n_pool], torch.arange(1, n_levels) / n_levels)
        labels = torch.bucketize(score, cuts)
        if params.task_kind == "binary":
            targets[name] = labels.float()
            tasks.append(TaskSpec(name, "binary", class_names=["low", "high"],
                                  description="is the task's score above its median?"))
        else:
            targets[name] = labels.long()
            tasks.append(TaskSpec(name, "classification", num_classes=n_levels,
                                  class_names=[f"level {c}" for c in range(n_levels)],
                                  description="which quantile band the task's score is in"))
    train, test = _pool_and_test({"x": x}, targets, n_pool)
    return SuiteData(
        suite="synthetic_tabular", tasks=tasks, train=train, val=train, test=test,
        input_shapes={"x": (params.n_features,)}, input_kind="vector",
        meta={"target_mean": means, "relatedness": r},
    )
