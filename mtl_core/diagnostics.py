"""Per-task gradient diagnostics on the shared parameters: norms and pairwise cosine.

The trainer calls these on diagnostic (logging) steps only, before the step's backward:

    G = task_gradients(raw_losses, shared + task_params)  # (T, P), graph kept
    rows = diagnostic_rows(step, epoch, task_names, gradient_stats(G[:, :n_shared]))
    method.backward(losses, features, model, known)       # a loss-level method reuses G

Everything stays on the device until `diagnostic_rows`, which reads the results back in one
transfer (it is the logging step's host sync). `jacobian` is also how the gradient-level
methods get their per-task gradients.
"""
from __future__ import annotations

import statistics
import time

import torch
from torch import Tensor, nn
from torch.autograd.graph import GradientEdge

from mtl_core.sink import MetricRow


class JacobianStrategy:
    """Computes per-task gradients (the Jacobian of a loss vector), choosing how: one vmapped
    backward for all T rows (`autograd.grad(..., is_grads_batched=True)`) or T plain backward
    calls.

    Which is faster depends on the model and the device. On the 2-core CPU (bench/
    grad_methods.py) the vmapped backward won for small MLPs at 4 and 8 tasks but lost for a
    CNN trunk at 8 tasks (batched convolution backward is slow on CPU); at 2 tasks they were
    close. So the first calls time both, alternating (the first call of each is a warm-up), and
    the faster one is kept. `jacobian` uses it on accelerators only: a timed choice is not
    reproducible (see `jacobian`), and on a CPU the loop won every case measured since.
    Timing a CUDA call needs a synchronize: only during those first
    2 + 2*trials calls.
    """

    CANDIDATES: tuple[str, ...] = ("vmap", "loop")

    def __init__(self, trials: int = 3) -> None:
        self.trials = trials
        self.choice: str = "undecided"
        self._calls = 0
        self._times: dict[str, list[float]] = {c: [] for c in self.CANDIDATES}

    def __call__(self, outputs: Tensor, inputs: list[Tensor], retain_graph: bool = False
                 ) -> Tensor:
        """The (T, N) Jacobian: row t is d outputs[t] / d inputs, each input flattened and
        concatenated in order (N = their total size); zeros where outputs[t] does not reach
        an input."""
        if self.choice != "undecided" or outputs.shape[0] < 2:
            return _JACOBIANS[self.choice if self.choice != "undecided" else "loop"](
                outputs, inputs, retain_graph)
        candidate = self.CANDIDATES[self._calls % 2]
        self._calls += 1
        _synchronize(outputs.device)
        start = time.perf_counter()
        result = _JACOBIANS[candidate](outputs, inputs, retain_graph)
        _synchronize(outputs.device)
        if self._calls > len(self.CANDIDATES):
            self._times[candidate].append(time.perf_counter() - start)
        if all(len(t) >= self.trials for t in self._times.values()):
            self.choice = min(self.CANDIDATES, key=lambda c: statistics.median(self._times[c]))
        return result


def _vmapped_jacobian(outputs: Tensor, inputs: list[Tensor], retain_graph: bool) -> Tensor:
    n = outputs.shape[0]
    eye = torch.eye(n, device=outputs.device, dtype=outputs.dtype)
    grads = torch.autograd.grad(outputs, inputs, grad_outputs=eye, is_grads_batched=True,
                                retain_graph=retain_graph, materialize_grads=True)
    # An unreached input comes back as one zero tensor without the batch dimension.
    return torch.cat([g.reshape(n, -1) if g.dim() == x.dim() + 1
                      else g.new_zeros((n, x.numel())) for g, x in zip(grads, inputs, strict=True)],
                     dim=1)


def _looped_jacobian(outputs: Tensor, inputs: list[Tensor], retain_graph: bool) -> Tensor:
    n = outputs.shape[0]
    matrix = outputs.new_empty((n, sum(x.numel() for x in inputs)))
    starts = stacked_scalars(outputs) or [outputs[t] for t in range(n)]
    one = outputs.new_ones(())
    for t in range(n):  # each row written once, straight into its place
        grads = torch.autograd.grad(starts[t], inputs, grad_outputs=one,
                                    retain_graph=retain_graph or t < n - 1,
                                    materialize_grads=True)
        torch.cat([g.reshape(-1) for g in grads], out=matrix[t])
    return matrix


def stacked_scalars(outputs: Tensor) -> list[GradientEdge] | None:
    """When `outputs` is `torch.stack` of scalars (the trainer's task losses), the graph edge
    into each one. A backward from `outputs[t]` would push zeros through every other task's
    head too (stack's backward is dense): T² head passes for T rows instead of T."""
    node = outputs.grad_fn
    if outputs.dim() != 1 or node is None or node.name() != "StackBackward0":
        return None
    edges = node.next_functions
    if len(edges) != outputs.shape[0] or any(n is None for n, _ in edges):
        return None  # an entry that needs no gradient: take the plain way
    return [GradientEdge(n, nr) for n, nr in edges]


_JACOBIANS = {"vmap": _vmapped_jacobian, "loop": _looped_jacobian}

# One strategy per (device, number of outputs, input shapes), for the life of the process: the
# next run of the same architecture (a worker runs many, a sweep more) starts decided.
_STRATEGIES: dict[tuple, JacobianStrategy] = {}


def jacobian(outputs: Tensor, inputs: list[Tensor], retain_graph: bool = False) -> Tensor:
    """The (T, N) Jacobian of `outputs` on `inputs` (see `JacobianStrategy.__call__`).

    On a CPU always the looped backward: the vmapped one rounds differently, and a loss-level
    method's update on a logging step is built from these rows, so a choice by timing made a
    run's numbers depend on the process's earlier runs and on the machine's load (the same
    config gave a different test MSE in the next run). The loop is also the faster one on CPU
    in every case measured (bench/RESULTS.md, MLP and CNN, 2 to 8 tasks). On an accelerator,
    whose kernels are not bit-for-bit reproducible anyway, `JacobianStrategy` times both."""
    if outputs.device.type == "cpu":
        return _looped_jacobian(outputs, inputs, retain_graph)
    key = (outputs.device.type, outputs.shape[0], tuple(tuple(x.shape) for x in inputs))
    strategy = _STRATEGIES.get(key)
    if strategy is None:
        strategy = _STRATEGIES[key] = JacobianStrategy()
    return strategy(outputs, inputs, retain_graph)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def task_gradients(losses: Tensor, params: list[nn.Parameter]) -> Tensor:
    """Gradient of each task loss on `params`, flattened: a (T, P) matrix.

    Row t is `autograd.grad(losses[t], params)` concatenated, computed as one vmapped backward
    or T backward calls, whichever `JacobianStrategy` measured faster for this model. The
    graph is retained so the step's backward can follow. Parameters a loss does not reach get
    zeros; with no parameters the matrix is (T, 0).
    """
    params = [p for p in params if p.requires_grad]
    n_tasks = losses.shape[0]
    n_params = sum(p.numel() for p in params)
    if not params or not losses.requires_grad:
        return losses.new_zeros((n_tasks, n_params))
    return jacobian(losses, params, retain_graph=True)


def gradient_stats(grads: Tensor) -> dict[str, Tensor]:
    """'norms' (T,): each task gradient's norm; 'cosine' (T, T): pairwise cosine similarity.
    A batch (K, T, P) of matrices (a stacked run's replicas) gives (K, T) and (K, T, T).

    A zero gradient (a task with weight 0, or no shared parameters) has cosine 0 with every
    task, itself included, rather than NaN.
    """
    grads = grads.detach()
    # the one pass over the (T, P) matrix; the rest is T x T
    gramian = grads @ grads.transpose(-1, -2)
    norms = gramian.diagonal(dim1=-2, dim2=-1).clamp_min(0.0).sqrt()
    denominator = norms[..., :, None] * norms[..., None, :]
    positive = denominator > 0
    # where() keeps the NaN of 0/0 out of the result; the clamp only removes rounding past ±1.
    cosine = torch.where(positive, gramian / torch.where(positive, denominator, 1.0), 0.0)
    return {"norms": norms, "cosine": cosine.clamp(-1.0, 1.0)}


def diagnostic_rows(step: int, epoch: float, task_names: list[str],
                    stats: dict[str, Tensor], split: str = "diag",
                    replica: int = 0) -> list[MetricRow]:
    """Metric rows for the sink: per task 'grad_norm', per pair 'a|b' 'cosine'."""
    norms = stats["norms"].tolist()  # the one host transfer of a diagnostic step
    cosine = stats["cosine"].tolist()
    rows: list[MetricRow] = [(step, epoch, split, task, "grad_norm", float(norms[i]), replica)
                             for i, task in enumerate(task_names)]
    for i, a in enumerate(task_names):
        for j in range(i + 1, len(task_names)):
            rows.append((step, epoch, split, f"{a}|{task_names[j]}", "cosine",
                         float(cosine[i][j]), replica))
    return rows
