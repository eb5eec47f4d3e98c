"""Per-task gradient diagnostics on the shared parameters: norms and pairwise cosine.

The trainer calls these on diagnostic (logging) steps only, before the step's normal backward:

    G = task_gradients(losses, model.shared_parameters())   # (T, P), graph kept
    rows = diagnostic_rows(step, epoch, task_names, gradient_stats(G))
    method.backward(losses, features, model)                # the normal step follows

Everything stays on the device until `diagnostic_rows`, which reads the results back in one
transfer (it is the logging step's host sync).
"""
from __future__ import annotations

import statistics
import time

import torch
from torch import Tensor, nn
from torchjd.autojac import jac

from mtl_core.sink import MetricRow


class JacobianStrategy:
    """Computes per-task gradients with torchjd's `jac`, choosing how: one vmapped backward for
    all T rows (`parallel_chunk_size=None`) or T plain backward calls (`=1`).

    Which is faster depends on the model and the device. On the 2-core CPU (bench/
    grad_methods.py) the vmapped backward won for small MLPs at 8 tasks but was 1.5-2x slower
    for a CNN trunk (batched convolution backward is slow on CPU) and for 2 tasks. So the first
    calls time both, alternating (the first call of each is a warm-up), and the faster one is
    kept. Timing a CUDA call needs a synchronize: only during those first 2 + 2*trials calls.
    """

    CANDIDATES: tuple[int | None, ...] = (None, 1)

    def __init__(self, trials: int = 3) -> None:
        self.trials = trials
        self.choice: int | None | str = "undecided"
        self._calls = 0
        self._times: dict[int | None, list[float]] = {c: [] for c in self.CANDIDATES}

    def __call__(self, outputs: Tensor, inputs: list[Tensor],
                 retain_graph: bool = False) -> tuple[Tensor, ...]:
        if self.choice != "undecided" or outputs.shape[0] < 2:
            chunk = None if self.choice == "undecided" else self.choice
            return jac(outputs, inputs, retain_graph=retain_graph,
                       parallel_chunk_size=chunk)  # type: ignore[arg-type]
        candidate = self.CANDIDATES[self._calls % 2]
        self._calls += 1
        _synchronize(outputs.device)
        start = time.perf_counter()
        result = jac(outputs, inputs, retain_graph=retain_graph, parallel_chunk_size=candidate)
        _synchronize(outputs.device)
        if self._calls > len(self.CANDIDATES):
            self._times[candidate].append(time.perf_counter() - start)
        if all(len(t) >= self.trials for t in self._times.values()):
            self.choice = min(self.CANDIDATES, key=lambda c: statistics.median(self._times[c]))
        return result


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# One strategy per parameter list the trainer asks about (normally one: the shared parameters).
_STRATEGIES: dict[tuple[int, ...], JacobianStrategy] = {}


def task_gradients(losses: Tensor, params: list[nn.Parameter]) -> Tensor:
    """Gradient of each task loss on `params`, flattened: a (T, P) matrix.

    Row t is `autograd.grad(losses[t], params)` concatenated, computed by torchjd's `jac` as
    one vmapped backward or T backward calls, whichever `JacobianStrategy` measured faster for
    this model. The graph is retained so the step's normal backward can follow. Parameters a
    loss does not reach get zeros; with no parameters the matrix is (T, 0).
    """
    params = [p for p in params if p.requires_grad]
    n_tasks = losses.shape[0]
    n_params = sum(p.numel() for p in params)
    if not params or not losses.requires_grad:
        return losses.new_zeros((n_tasks, n_params))
    strategy = _STRATEGIES.setdefault(tuple(id(p) for p in params), JacobianStrategy())
    jacobians = strategy(losses, params, retain_graph=True)
    return torch.cat([j.detach().reshape(n_tasks, -1) for j in jacobians], dim=1)


def gradient_stats(grads: Tensor) -> dict[str, Tensor]:
    """'norms' (T,): each task gradient's norm; 'cosine' (T, T): pairwise cosine similarity.

    A zero gradient (a task with weight 0, or no shared parameters) has cosine 0 with every
    task, itself included, rather than NaN.
    """
    grads = grads.detach()
    gramian = grads @ grads.T
    norms = torch.linalg.vector_norm(grads, dim=1)
    denominator = norms[:, None] * norms[None, :]
    positive = denominator > 0
    # where() keeps the NaN of 0/0 out of the result; the clamp only removes rounding past ±1.
    cosine = torch.where(positive, gramian / torch.where(positive, denominator, 1.0), 0.0)
    return {"norms": norms, "cosine": cosine.clamp(-1.0, 1.0)}


def diagnostic_rows(step: int, epoch: float, task_names: list[str],
                    stats: dict[str, Tensor], split: str = "diag") -> list[MetricRow]:
    """Metric rows for the sink: per task 'grad_norm', per pair 'a|b' 'cosine'."""
    norms = stats["norms"].tolist()  # the one host transfer of a diagnostic step
    cosine = stats["cosine"].tolist()
    rows: list[MetricRow] = [(step, epoch, split, task, "grad_norm", float(norms[i]))
                             for i, task in enumerate(task_names)]
    for i, a in enumerate(task_names):
        for j in range(i + 1, len(task_names)):
            rows.append((step, epoch, split, f"{a}|{task_names[j]}", "cosine",
                         float(cosine[i][j])))
    return rows
