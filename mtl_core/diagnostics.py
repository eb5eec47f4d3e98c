"""Per-task gradient diagnostics on the shared parameters: norms and pairwise cosine.

The trainer calls these on diagnostic (logging) steps only, before the step's normal backward:

    G = task_gradients(losses, model.shared_parameters())   # (T, P), graph kept
    rows = diagnostic_rows(step, epoch, task_names, gradient_stats(G))
    method.backward(losses, features, model)                # the normal step follows

Everything stays on the device until `diagnostic_rows`, which reads the results back in one
transfer (it is the logging step's host sync).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torchjd.autojac import jac

from mtl_core.sink import MetricRow


def task_gradients(losses: Tensor, params: list[nn.Parameter]) -> Tensor:
    """Gradient of each task loss on `params`, flattened: a (T, P) matrix.

    Row t is `autograd.grad(losses[t], params)` concatenated. The T backward passes run as one
    vmapped backward (torchjd's `jac`, i.e. `autograd.grad(..., is_grads_batched=True)`), which
    measured 1.3-2x faster than a loop of T `autograd.grad` calls on CPU (bench/grad_methods.py
    models). The graph is retained so the step's normal backward can follow. Parameters a loss
    does not reach get zeros; with no parameters the matrix is (T, 0).
    """
    params = [p for p in params if p.requires_grad]
    n_tasks = losses.shape[0]
    n_params = sum(p.numel() for p in params)
    if not params or not losses.requires_grad:
        return losses.new_zeros((n_tasks, n_params))
    jacobians = jac(losses, params, retain_graph=True)
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
