"""Small exact solvers for the weights of CAGrad and Nash-MTL from the T x T Gramian.

torchjd 0.18 builds and solves a cvxpy program at every step for both (Clarabel for CAGrad,
up to `optim_niter` ECOS solves for Nash-MTL): 30 ms and 0.4 s a step on this machine, for a
problem in T unknowns. These functions solve the same problems directly, in float64 on the
host (the caller already holds G there), and give the same weights to the solvers' precision;
tests/test_gramian_solvers.py checks them against torchjd on random Jacobians.

CAGrad (Liu et al. 2021, Algorithm 1, as torchjd states it): with G normalised by its trace,
    w* = argmin over the simplex of  bᵀw + ρ·sqrt(wᵀGw),   b = G·1/T,  ρ = c·sqrt(1ᵀG1)/T,
and the weights are 1/T + ρ/‖g_w‖·w* (zero when ‖g_w‖ = sqrt(w*ᵀGw*) < norm_eps: on the
Pareto set). T = 2 is a 1-D convex problem with a closed-form minimiser; T > 2 uses a
log-barrier Newton method, then Newton steps on the face it finds.

Nash-MTL (Navon et al. 2022): the bargaining solution α > 0 with α_i·(Gα)_i = 1, i.e. Gα = 1/α,
the unique minimiser of ½αᵀGα − Σ log α_i (G positive definite); damped Newton steps on that
strictly convex function (T = 2 in closed form: α_i = 1/(‖g_i‖·sqrt(1 + cos θ))). torchjd
reaches it with a sequence of convex programs whose constraints α_i·(Gα)_i ≥ 1 bind at the end
(where ECOS converges: not on Gramians spanning many decades, where ours still solves it).
Where no solution exists (0 in the convex hull of the gradients: ψ is unbounded below, the
programs infeasible) both keep the previous α.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

# --------------------------------------------------------------------------------------------
# CAGrad


def cagrad_weights(gramian: Tensor, c: float, norm_eps: float) -> Tensor:
    """CAGrad's weights (T,) from the Gramian (T, T), as torchjd's `CAGradWeighting`."""
    g = gramian.detach().to("cpu", torch.float64).numpy()
    n = g.shape[0]
    trace = float(np.trace(g))
    if trace < norm_eps:  # torchjd's normalize: a zero Gramian, so zero weights
        return torch.zeros(n, dtype=gramian.dtype, device=gramian.device)
    g = g / trace
    g = 0.5 * (g + g.T)
    b = g.sum(axis=1) / n  # G·1/T: each task's dot product with the mean gradient
    rho = c * math.sqrt(max(float(b.sum()) / n, 0.0))  # c·‖g0‖, ‖g0‖² = 1ᵀG1/T²
    w = cagrad_argmin(g, b, rho)
    g_w_norm = math.sqrt(max(float(w @ g @ w), 0.0))
    if g_w_norm >= norm_eps:
        weights = np.full(n, 1.0 / n) + (rho / g_w_norm) * w
    else:  # approximately on the Pareto front
        weights = np.zeros(n)
    return torch.from_numpy(weights).to(device=gramian.device, dtype=gramian.dtype)


def cagrad_argmin(g: np.ndarray, b: np.ndarray, rho: float) -> np.ndarray:
    """w* = argmin over the simplex of bᵀw + ρ·sqrt(wᵀGw)."""
    return _cagrad_simplex_2(g, b, rho) if g.shape[0] == 2 else _cagrad_simplex(g, b, rho)


def _cagrad_simplex_2(g: np.ndarray, b: np.ndarray, rho: float) -> np.ndarray:
    """argmin over t in [0, 1] of f(t) = a·t + ρ·sqrt(q(t)), w = (t, 1 − t).

    q(t) = αt² + 2βt + γ = ‖g_2 + t(g_1 − g_2)‖²; with u = αt + β, q = (u² + D)/α where
    D = αγ − β² = det G. f'(t) = a + ρ·√α·u/sqrt(u² + D) runs over (a − ρ√α, a + ρ√α): it has
    a zero only if |a| < ρ√α, at u = −a·sqrt(D/(ρ²α − a²)); f is convex, so the minimiser on
    [0, 1] is that zero clipped, else the end the sign of a points away from.
    """
    a = float(b[0] - b[1])
    alpha = float(g[0, 0] - 2.0 * g[0, 1] + g[1, 1])
    beta = float(g[0, 1] - g[1, 1])
    gamma = float(g[1, 1])
    det = max(alpha * gamma - beta * beta, 0.0)
    room = rho * rho * alpha - a * a
    if alpha > 0.0 and room > 0.0:
        u = -math.copysign(math.sqrt(a * a * det / room), a) if a != 0.0 else 0.0
        t = min(max((u - beta) / alpha, 0.0), 1.0)
    elif a > 0.0:
        t = 0.0
    elif a < 0.0:
        t = 1.0
    else:  # f constant: identical gradients (or ρ = 0 with a tie); the update is the same
        t = 0.5
    return np.array([t, 1.0 - t])


def _cagrad_objective(g: np.ndarray, b: np.ndarray, rho: float, w: np.ndarray) -> float:
    return float(b @ w) + rho * math.sqrt(max(float(w @ g @ w), 0.0))


def _cagrad_simplex(g: np.ndarray, b: np.ndarray, rho: float) -> np.ndarray:
    """argmin over the simplex of f(w) = bᵀw + ρ·sqrt(wᵀGw) for any T: a log-barrier method
    (minimise s·f(w) − Σ log w_i on 1ᵀw = 1 by Newton steps, s × 10 up to 1e10, a duality
    gap of T·1e-10 with f ~ 1 after the trace normalisation) finds the face the minimum lies
    on; Newton steps on that face (an active set, checked against the optimality conditions)
    then give it to rounding, which the barrier's own s·f ~ 1e10 no longer allows."""
    n = g.shape[0]
    if rho <= 0.0:  # f is linear: a vertex with the smallest b (ties share the weight)
        w = (b <= b.min() + 1e-15).astype(float)
        return w / w.sum()
    w = np.full(n, 1.0 / n)
    ones = np.ones(n)
    s = 1.0
    while s <= 1e10:
        for _ in range(50):
            gw = g @ w
            norm = math.sqrt(max(float(w @ gw), 1e-300))
            grad = s * (b + rho * gw / norm) - 1.0 / w
            hess = (s * rho / norm) * (g - np.outer(gw, gw) / (norm * norm)) + np.diag(1.0 / w**2)
            try:  # H is positive definite (the barrier's diagonal): eliminate the multiplier
                h_grad, h_ones = np.linalg.solve(hess, np.stack([grad, ones], axis=1)).T
            except np.linalg.LinAlgError:
                break
            step = -(h_grad - (ones @ h_grad) / (ones @ h_ones) * h_ones)
            decrement = -float(grad @ step)
            if decrement / 2.0 <= 1e-9:
                break
            t = 1.0
            while np.any(w + t * step <= 0.0):
                t *= 0.5
            current = s * _cagrad_objective(g, b, rho, w) - float(np.log(w).sum())
            while t > 1e-12 and (s * _cagrad_objective(g, b, rho, w + t * step)
                                 - float(np.log(w + t * step).sum())
                                 > current - 0.25 * t * decrement):
                t *= 0.5
            w = w + t * step
            w /= w.sum()
        s *= 10.0
    return _cagrad_polish(g, b, rho, w)


def _newton_on_hyperplane(hess: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """The Newton step d minimising gradᵀd + ½dᵀHd on 1ᵀd = 0 (least squares where the KKT
    matrix is singular)."""
    n = grad.shape[0]
    kkt = np.zeros((n + 1, n + 1))
    kkt[:n, :n] = hess
    kkt[:n, n] = kkt[n, :n] = 1.0
    rhs = np.concatenate([-grad, [0.0]])
    return np.linalg.lstsq(kkt, rhs, rcond=1e-14)[0][:n]


def _cagrad_polish(g: np.ndarray, b: np.ndarray, rho: float, w: np.ndarray) -> np.ndarray:
    """Active-set rounds from the barrier's point: Newton on the face of the tasks in the
    support; a task whose weight would turn negative leaves it, a task off it whose partial
    derivative is below the support's common level joins it. The best point seen is kept
    (the barrier's, if no round improves on it)."""
    n = g.shape[0]
    best, best_f = w, _cagrad_objective(g, b, rho, w)
    support = w > 1e-6 * w.max()
    for _ in range(2 * n):
        x = _face_newton(g, b, rho, np.where(support, w, 0.0), support)
        if x is None:  # left the simplex: the smallest weight in the support leaves
            smallest = np.flatnonzero(support)[np.argmin(w[support])]
            support[smallest] = False
            if not support.any():
                break
            continue
        fx = _cagrad_objective(g, b, rho, x)
        if fx <= best_f:
            best, best_f = x, fx
        gx = g @ x
        grad = b + rho * gx / math.sqrt(max(float(x @ gx), 1e-300))
        level = float(grad[support].mean())
        below = np.where(support, np.inf, grad - level)
        if below.min() >= -1e-12 * float(np.abs(grad).max()):
            break  # optimal: nothing off the support would lower f
        support[np.argmin(below)] = True
    return best


def _face_newton(g: np.ndarray, b: np.ndarray, rho: float, x: np.ndarray, support: np.ndarray
                 ) -> np.ndarray | None:
    """f's minimum on the face (w_i = 0 off `support`) by full Newton steps from x, or None
    where a step leaves the simplex."""
    idx = np.flatnonzero(support)
    x = x / x.sum()
    for _ in range(30):
        gx = g @ x
        norm = math.sqrt(max(float(x @ gx), 0.0))
        if norm < 1e-150:
            return x
        grad = (b + rho * gx / norm)[idx]
        hess = (rho / norm) * (g - np.outer(gx, gx) / (norm * norm))[np.ix_(idx, idx)]
        step = _newton_on_hyperplane(hess, grad)
        x = x.copy()
        x[idx] += step
        if np.any(x[idx] < 0.0):
            return None
        if float(np.abs(step).max()) < 1e-14:
            break
    return x / x.sum()


# --------------------------------------------------------------------------------------------
# Nash-MTL


def nash_bargaining(gramian: np.ndarray, start: np.ndarray | None = None,
                    tol: float = 1e-10, max_iters: int = 100) -> np.ndarray | None:
    """α > 0 with α_i·(Gα)_i = 1 for every i (the Nash bargaining solution), or None where
    there is none (Newton does not converge: ψ(α) = ½αᵀGα − Σ log α_i is unbounded below).

    Solved on G/‖G‖_F (the scale torchjd's programs use), α = β/sqrt(‖G‖_F), from `start`
    when given (the previous step's α: a warm start; the solution is unique either way).
    """
    scale = float(np.linalg.norm(gramian))
    if not math.isfinite(scale) or scale <= 0.0:
        return None
    if gramian.shape[0] == 2:
        return _nash_bargaining_2(gramian)
    g = gramian / scale
    g = 0.5 * (g + g.T)
    n = g.shape[0]
    root = math.sqrt(scale)
    beta = np.ones(n) if start is None else np.asarray(start, dtype=float) * root
    if not np.all(np.isfinite(beta)) or np.any(beta <= 0.0):
        beta = np.ones(n)

    def psi(x: np.ndarray) -> float:
        return 0.5 * float(x @ g @ x) - float(np.log(x).sum())

    for _ in range(max_iters):
        gb = g @ beta
        grad = gb - 1.0 / beta
        if float(np.abs(grad * beta).max()) < tol:  # |β_i(Gβ)_i − 1| for every task
            return beta / root
        hess = g + np.diag(1.0 / beta**2)
        try:
            step = -np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            return None
        decrement = -float(grad @ step)  # λ², twice ψ's predicted decrease
        t = 1.0
        while np.any(beta + t * step <= 0.0):
            t *= 0.5
        if decrement > 1e-4 or t < 1.0:  # far from the solution: damped (Armijo) steps
            current = psi(beta)
            while psi(beta + t * step) > current - 0.25 * t * decrement and t > 1e-12:
                t *= 0.5
        # else quadratic convergence (λ < 0.01 on a self-concordant ψ): the full step, where
        # comparing ψ values would only see rounding
        beta = beta + t * step
        if decrement < 1e-14 and t == 1.0:  # the error after this step is ~ decrement²
            return beta / root
        if not np.all(np.isfinite(beta)) or float(beta.max()) > 1e7:
            return None  # running off to infinity: no bargaining solution
    return None


def _nash_bargaining_2(g: np.ndarray) -> np.ndarray | None:
    """Two tasks in closed form: α_2/α_1 = ‖g_1‖/‖g_2‖ solves both equations' ratio, and then
    α_i = 1/(‖g_i‖·sqrt(1 + cos θ)); none where a gradient vanishes or cos θ = −1 (to
    rounding)."""
    n1, n2 = math.sqrt(max(float(g[0, 0]), 0.0)), math.sqrt(max(float(g[1, 1]), 0.0))
    if n1 == 0.0 or n2 == 0.0:
        return None
    one_plus_cos = (n1 * n2 + float(g[0, 1])) / (n1 * n2)
    if not one_plus_cos > 1e-12:  # opposite to rounding (the Gramian's own error is ~1e-16)
        return None
    root = math.sqrt(one_plus_cos)
    return np.array([1.0 / (n1 * root), 1.0 / (n2 * root)])


class GramianSolver:
    """A weighting from the Gramian alone, in place of a torchjd aggregator: the methods in
    gradient_level build one per set of active tasks and call `gramian_weights`."""

    def gramian_weights(self, gramian: Tensor) -> Tensor:
        raise NotImplementedError


class NashMTLSolver(GramianSolver):
    """torchjd's `NashMTL` weighting with the bargaining solution solved by Newton steps:
    new α every `update_weights_every` calls (else the previous α is reused), the previous α
    kept where none exists, and the update's norm sqrt(αᵀGα) clipped to `max_norm` (0: off)."""

    def __init__(self, n_tasks: int, max_norm: float, update_weights_every: int) -> None:
        self.n_tasks = n_tasks
        self.max_norm = max_norm
        self.update_weights_every = update_weights_every
        self.step = 0
        self.alpha = np.ones(n_tasks)  # torchjd's initial α, kept where no solution exists

    def gramian_weights(self, gramian: Tensor) -> Tensor:
        g = gramian.detach().to("cpu", torch.float64).numpy()
        if self.step % self.update_weights_every == 0:
            found = nash_bargaining(g, self.alpha if self.step else None)
            if found is not None:
                self.alpha = found
        self.step += 1
        alpha = self.alpha
        if self.max_norm > 0:
            norm = math.sqrt(max(float(alpha @ g @ alpha), 0.0))
            if norm > self.max_norm:
                alpha = alpha / norm * self.max_norm
        return torch.from_numpy(alpha.copy()).to(device=gramian.device, dtype=gramian.dtype)


class CAGradSolver(GramianSolver):
    """CAGrad's weighting (stateless)."""

    def __init__(self, c: float, norm_eps: float) -> None:
        self.c = c
        self.norm_eps = norm_eps

    def gramian_weights(self, gramian: Tensor) -> Tensor:
        return cagrad_weights(gramian, self.c, self.norm_eps)


class PCGradSolver(GramianSolver):
    """torchjd's `PCGradWeighting` step for step, on Python floats instead of 0-d tensors (its
    loop of tiny tensor ops cost ~0.25 ms a step, and importing torchjd ~2 s per run): for each
    task i, in a random order of the others (the same `torch.randperm` draws from the global
    generator, so a run's random stream is unchanged), g_i's running projection loses its
    component along g_j whenever their dot product is negative; the weights are the sum."""

    def gramian_weights(self, gramian: Tensor) -> Tensor:
        g = gramian.detach().to("cpu", torch.float64).tolist()
        n = len(g)
        weights = [0.0] * n
        for i in range(n):
            order = torch.randperm(n).tolist()
            current = [0.0] * n
            current[i] = 1.0
            for j in order:
                if j == i:
                    continue
                row = g[j]
                inner = math.fsum(row[k] * current[k] for k in range(n)) if n > 2 \
                    else row[0] * current[0] + row[1] * current[1]
                if inner < 0.0:
                    current[j] -= inner / row[j]
            weights = [w + c for w, c in zip(weights, current, strict=True)]
        return torch.tensor(weights, dtype=gramian.dtype, device=gramian.device)


class MGDASolver(GramianSolver):
    """torchjd's `MGDAWeighting` step for step (the Frank-Wolfe solver of Sener & Koltun's
    Algorithm 2: start at the mean, move towards the vertex e_t with the smallest (Gα)_t by
    the exact line-search step γ, stop once γ < epsilon), on Python floats instead of a loop of
    0-d tensor ops (~2 ms a step, the slowest of the geometry page's paths)."""

    def __init__(self, epsilon: float, max_iters: int) -> None:
        self.epsilon = epsilon
        self.max_iters = max_iters

    def gramian_weights(self, gramian: Tensor) -> Tensor:
        g = gramian.detach().to("cpu", torch.float64).tolist()
        n = len(g)
        alpha = [1.0 / n] * n
        for _ in range(self.max_iters):
            g_alpha = [math.fsum(row[k] * alpha[k] for k in range(n)) for row in g]
            t = min(range(n), key=g_alpha.__getitem__)  # the first minimum, as torch.argmin
            a = math.fsum(alpha[i] * g[i][t] for i in range(n))  # α·(G e_t)
            b = math.fsum(alpha[i] * g_alpha[i] for i in range(n))  # α·(G α)
            c = g[t][t]
            if c <= a:
                gamma = 1.0
            elif b <= a:
                gamma = 0.0
            else:
                gamma = (b - a) / (b + c - 2 * a)
            alpha = [(1 - gamma) * x for x in alpha]
            alpha[t] += gamma
            if gamma < self.epsilon:
                break
        return torch.tensor(alpha, dtype=gramian.dtype, device=gramian.device)
