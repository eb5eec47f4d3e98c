"""CAGrad's and Nash-MTL's weights from our own solvers (mtl_core.weighting.gramian_solvers)
against torchjd's cvxpy-based weightings, the reference they replace, on random Jacobians."""
from __future__ import annotations

import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torchjd.aggregation import MGDA, CAGrad, NashMTL, PCGrad

from mtl_core.weighting.gramian_solvers import (
    MGDASolver,
    NashMTLSolver,
    PCGradSolver,
    _cagrad_objective,
    cagrad_argmin,
    cagrad_weights,
    nash_bargaining,
)

KINDS = ["random", "conflicting", "aligned", "ill_scaled", "near_singular"]


def jacobian(kind: str, n_tasks: int, seed: int, dim: int = 20) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    j = torch.randn(n_tasks, dim, generator=gen, dtype=torch.float64)
    if kind == "conflicting":  # task 1 nearly opposite task 0 (cosine about −0.99)
        j[1] = -0.9 * j[0] + 0.1 * j[1]
    elif kind == "aligned":  # every task close to task 0 (cosines about 0.99)
        j = j[0] + 0.1 * j
    elif kind == "ill_scaled":  # norms from 0.01 to 100: a Gramian spanning 8 decades
        j = j * torch.logspace(-2, 2, n_tasks, dtype=torch.float64)[:, None]
    elif kind == "near_singular":  # all but a 1e-3 part in a 2-D plane
        j = j[:2].T @ torch.randn(2, n_tasks, generator=gen, dtype=torch.float64)
        j = j.T + 1e-3 * torch.randn(n_tasks, dim, generator=gen, dtype=torch.float64)
    return j


def _simplex_point(weights: np.ndarray) -> np.ndarray:
    """CAGrad's w* from its weights 1/T + ρ/‖g_w‖·w*; Clarabel's may stray off the simplex by
    ~1e-9 (where it beats the true minimum), so it is put back on."""
    w = np.clip(weights - 1.0 / weights.shape[0], 0.0, None)
    return w / w.sum()


def _cagrad_problem(gramian: torch.Tensor, c: float) -> tuple[np.ndarray, np.ndarray, float]:
    g = (gramian / gramian.trace()).numpy()
    n = g.shape[0]
    b = g.sum(axis=1) / n
    return g, b, c * math.sqrt(b.sum() / n)


# --------------------------------------------------------------------------------------------
# CAGrad


@pytest.mark.parametrize("n_tasks", [2, 3, 4, 6])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("c", [0.1, 0.5, 0.9])
def test_cagrad_gives_torchjds_update_and_a_dual_value_no_worse(n_tasks, kind, c):
    for seed in range(3):
        j = jacobian(kind, n_tasks, seed)
        gramian = j @ j.T
        ref_weights = CAGrad(c=c).gramian_weighting(gramian)
        ours = cagrad_weights(gramian, c, 1e-4)
        # Clarabel stops at a duality gap of ~1e-8; the dual is flat near its minimum, so its
        # w* is only good to ~1e-4 (ours is never worse in the objective, below): the updates
        # agree to that precision, not to rounding.
        torch.testing.assert_close(ours @ j, ref_weights @ j, rtol=1e-3,
                                   atol=1e-3 * float((ref_weights @ j).norm()))
        if not ours.any():  # ‖g_w‖ < norm_eps: on the Pareto front, both give 0 (checked above)
            continue
        g, b, rho = _cagrad_problem(gramian, c)
        f_ref = _cagrad_objective(g, b, rho, _simplex_point(ref_weights.numpy()))
        f_ours = _cagrad_objective(g, b, rho, _simplex_point(ours.numpy()))
        assert f_ours <= f_ref + 1e-12


@pytest.mark.parametrize("n_tasks", [2, 3, 5])
@pytest.mark.parametrize("kind", KINDS)
def test_cagrad_solution_meets_the_optimality_conditions_on_the_simplex(n_tasks, kind):
    # KKT of min bᵀw + ρ‖w‖_G on the simplex: ∂f/∂w_i equals one level λ where w_i > 0 and is
    # at least λ where w_i = 0 (checked on T = 2's closed form and the barrier-Newton solver).
    for seed in range(3):
        j = jacobian(kind, n_tasks, seed)
        gramian = j @ j.T
        g, b, rho = _cagrad_problem(gramian, 0.5)
        w = cagrad_argmin(g, b, rho)
        assert w.min() >= -1e-12 and abs(w.sum() - 1.0) < 1e-12
        grad = b + rho * (g @ w) / math.sqrt(w @ g @ w)
        support = w > 1e-9
        level = grad[support].mean()
        scale = np.abs(grad).max()
        np.testing.assert_allclose(grad[support], level, atol=1e-8 * scale)
        assert np.all(grad[~support] >= level - 1e-8 * scale)


def test_cagrad_two_tasks_closed_form_is_the_grid_minimum():
    for kind in KINDS:
        j = jacobian(kind, 2, 7)
        gramian = j @ j.T
        g, b, rho = _cagrad_problem(gramian, 0.5)
        t = _simplex_point(cagrad_weights(gramian, 0.5, 1e-4).numpy())[0]
        grid = np.linspace(0.0, 1.0, 20001)
        values = [_cagrad_objective(g, b, rho, np.array([x, 1.0 - x])) for x in grid]
        assert _cagrad_objective(g, b, rho, np.array([t, 1.0 - t])) <= min(values) + 1e-15
        assert abs(t - grid[int(np.argmin(values))]) <= 1e-4


@pytest.mark.parametrize("j", [
    [[1.0, 2.0], [-1.0, -2.0]],   # exactly opposite: on the Pareto set
    [[1.0, 2.0], [1.0, 2.0]],     # identical
    [[1.0, 0.0], [0.0, 1.0]],     # orthogonal
    [[3.0, 0.0], [0.0, 0.0001]],  # one task's gradient nearly vanished
    [[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
])
def test_cagrad_special_cases_match_torchjd(j):
    j = torch.tensor(j, dtype=torch.float64)
    gramian = j @ j.T
    expected = CAGrad(c=0.5).gramian_weighting(gramian) @ j
    torch.testing.assert_close(cagrad_weights(gramian, 0.5, 1e-4) @ j, expected,
                               atol=1e-6, rtol=1e-5)


def test_cagrad_zero_gramian_gives_zero_weights_as_torchjd():
    gramian = torch.zeros(3, 3, dtype=torch.float64)
    torch.testing.assert_close(cagrad_weights(gramian, 0.5, 1e-4),
                               CAGrad(c=0.5).gramian_weighting(gramian))
    assert cagrad_weights(gramian, 0.5, 1e-4).abs().max() == 0.0


def test_cagrad_with_c_zero_is_the_mean():
    j = jacobian("random", 4, 0)
    torch.testing.assert_close(cagrad_weights(j @ j.T, 0.0, 1e-4),
                               torch.full((4,), 0.25, dtype=torch.float64))


# --------------------------------------------------------------------------------------------
# Nash-MTL


def _torchjd_nash(j: torch.Tensor, **kwargs) -> NashMTL:
    return NashMTL(n_tasks=j.shape[0], **kwargs)


def _residual(gramian: np.ndarray, alpha: np.ndarray) -> float:
    """max_i |α_i (Gα)_i − 1|: zero at the bargaining solution."""
    return float(np.abs(alpha * (gramian @ alpha) - 1.0).max())


@pytest.mark.parametrize("n_tasks", [2, 3, 4, 6])
@pytest.mark.parametrize("kind", KINDS)
def test_nash_mtl_solves_the_bargaining_condition_exactly(n_tasks, kind):
    for seed in range(3):
        j = jacobian(kind, n_tasks, seed)
        g = (j @ j.T).numpy()
        alpha = nash_bargaining(g)
        assert alpha is not None and alpha.min() > 0
        assert _residual(g, alpha) < 1e-8


@pytest.mark.parametrize("n_tasks", [2, 3, 4, 6])
@pytest.mark.parametrize("kind", ["random", "conflicting", "aligned", "near_singular"])
def test_nash_mtl_gives_torchjds_update_where_its_solver_converges(n_tasks, kind):
    compared = 0
    for seed in range(3):
        j = jacobian(kind, n_tasks, seed)
        gramian = j @ j.T
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref_alpha = _torchjd_nash(j, max_norm=0.0).weighting(j)
        if _residual(gramian.numpy(), ref_alpha.numpy()) > 1e-4:
            continue  # ECOS stopped short of the bargaining point (the ill-scaled kind)
        compared += 1
        ours = NashMTLSolver(n_tasks, 0.0, 1).gramian_weights(gramian)
        torch.testing.assert_close(ours @ j, ref_alpha @ j, rtol=1e-4, atol=0.0)
        clipped = NashMTLSolver(n_tasks, 1.0, 1).gramian_weights(gramian)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = _torchjd_nash(j, max_norm=1.0)(j)
        torch.testing.assert_close(clipped @ j, expected, rtol=1e-4, atol=0.0)
        assert abs(float((clipped @ j).norm()) - 1.0) < 1e-9  # ‖update‖ = sqrt(T) clipped to 1
    assert compared >= 1


def test_nash_mtl_on_ill_scaled_tasks_satisfies_the_condition_torchjds_solver_misses():
    # Norms 0.01 … 100: ECOS ends away from α_i (Gα)_i = 1 (Algorithm 1's step), the Newton
    # solve does not. The two updates then differ; ours is the paper's.
    j = jacobian("ill_scaled", 3, 0)
    g = (j @ j.T).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_alpha = _torchjd_nash(j, max_norm=0.0).weighting(j).numpy()
    ours = NashMTLSolver(3, 0.0, 1).gramian_weights(j @ j.T).numpy()
    assert _residual(g, ours) < 1e-8
    assert _residual(g, ours) < _residual(g, ref_alpha)


def test_nash_mtl_reuses_its_weights_between_updates_as_torchjd():
    # update_weights_every 3: new α at calls 0 and 3, the previous α (re-clipped) otherwise.
    ref = _torchjd_nash(jacobian("random", 3, 0), max_norm=1.0, update_weights_every=3)
    ours = NashMTLSolver(3, 1.0, 3)
    for seed in range(6):
        j = jacobian("random", 3, seed) * (1.0 + seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = ref(j)
        torch.testing.assert_close(ours.gramian_weights(j @ j.T) @ j, expected, rtol=1e-4,
                                   atol=0.0)


def test_nash_mtl_keeps_the_previous_weights_where_no_bargaining_point_exists():
    j = jacobian("random", 2, 0)
    ours = NashMTLSolver(2, 0.0, 1)
    first = ours.gramian_weights(j @ j.T)
    opposite = torch.tensor([[1.0, 2.0], [-1.0, -2.0]], dtype=torch.float64)
    assert nash_bargaining((opposite @ opposite.T).numpy()) is None  # 0 in the hull
    torch.testing.assert_close(ours.gramian_weights(opposite @ opposite.T), first)
    # torchjd: its programs are infeasible there, and it too keeps the previous α
    ref = _torchjd_nash(j, max_norm=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_first = ref.weighting(j)
        torch.testing.assert_close(ref.weighting(opposite), ref_first)
    torch.testing.assert_close(first, ref_first, rtol=1e-5, atol=0.0)


def test_nash_mtl_first_step_without_a_solution_keeps_torchjds_initial_ones():
    opposite = torch.tensor([[1.0, 2.0], [-1.0, -2.0]], dtype=torch.float64)
    ours = NashMTLSolver(2, 0.0, 1).gramian_weights(opposite @ opposite.T)
    torch.testing.assert_close(ours, torch.ones(2, dtype=torch.float64))


# --------------------------------------------------------------------------------------------
# PCGrad


@pytest.mark.parametrize("n_tasks", [2, 3, 4, 6])
@pytest.mark.parametrize("kind", KINDS)
def test_pcgrad_gives_torchjds_weights_and_draws_the_same_random_numbers(n_tasks, kind):
    for seed in range(3):
        j = jacobian(kind, n_tasks, seed)
        gramian = j @ j.T
        torch.manual_seed(seed)
        expected = PCGrad().gramian_weighting(gramian)
        after_reference = torch.rand(())
        torch.manual_seed(seed)
        ours = PCGradSolver().gramian_weights(gramian)
        assert torch.rand(()) == after_reference  # the global stream is where torchjd left it
        if n_tasks == 2:  # the same operations in the same order: equal to the last bit
            assert torch.equal(ours, expected)
        else:  # dot products summed exactly (fsum) rather than in torch's order
            torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)


def test_pcgrad_two_conflicting_tasks_by_hand():
    # g1·g2 = −1 < 0: each loses its component along the other; weights 1 − (g1·g2)/|g_j|².
    gramian = torch.tensor([[2.0, -1.0], [-1.0, 4.0]], dtype=torch.float64)
    torch.testing.assert_close(PCGradSolver().gramian_weights(gramian),
                               torch.tensor([1.0 + 1.0 / 2.0, 1.0 + 1.0 / 4.0],
                                            dtype=torch.float64))


# MGDA


@pytest.mark.parametrize("n_tasks", [2, 3, 4, 6])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("epsilon,max_iters", [(0.001, 100), (1e-6, 1000), (0.1, 3)])
def test_mgda_gives_torchjds_weights(n_tasks, kind, epsilon, max_iters):
    # The same Frank-Wolfe iterations: the same vertex each step, so the same weights up to
    # the dot products' rounding (summed exactly here, in torch's order there).
    for seed in range(3):
        j = jacobian(kind, n_tasks, seed)
        gramian = j @ j.T
        expected = MGDA(epsilon=epsilon, max_iters=max_iters).gramian_weighting(gramian)
        ours = MGDASolver(epsilon=epsilon, max_iters=max_iters).gramian_weights(gramian)
        torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-12)


def test_mgda_two_tasks_by_hand():
    # g1 = (1, 0), g2 = (0, 2): the smallest vector of their hull, α1·g1 + α2·g2 = (0.8, 0.4)
    # with α = (0.8, 0.2), is orthogonal to g1 − g2 = (1, −2).
    gramian = torch.tensor([[1.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    alpha = MGDASolver(epsilon=1e-12, max_iters=1000).gramian_weights(gramian)
    torch.testing.assert_close(alpha, torch.tensor([0.8, 0.2], dtype=torch.float64))


# --------------------------------------------------------------------------------------------
# Through the trainer's method objects


def test_geometry_paths_of_our_solvers_never_import_torchjd():
    # The page's paths go through the trainer's method objects; these four no longer use
    # torchjd (importing it, and cvxpy with it, costs ~2 s), so it is never imported. Each
    # path ends without an error or a solver warning.
    code = (
        "import sys\n"
        "from mtl_core.geometry import get_problem, run_path, PathSettings\n"
        "p = get_problem('cagrad_toy')\n"
        "for name in ('cagrad', 'nash_mtl', 'pcgrad', 'mgda'):\n"
        "    path = run_path(p, name, p.starts[0], PathSettings(steps=20, lr=p.lr))\n"
        "    assert path.error is None and path.note == '', (path.error, path.note)\n"
        "print('cvxpy' in sys.modules, 'torchjd' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.split() == ["False", "False"]
