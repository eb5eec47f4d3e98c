"""One interface over every loss-weighting and gradient-combination method.

A method is a small object the trainer calls once per step, after the forward pass:

    result = method.backward(losses, features, model, known)  # fills .grad of every parameter
    optimizer.step()

`losses` is a 1-D tensor of the per-task losses already multiplied by the configured task
weights w_i (so a weight of 0 removes a task from every method), in `task_names` order.
`features` is `model.features(inputs)`, for methods that work on the shared representation.
The method must leave `.grad` set (accumulated, like `loss.backward()`) on every trainable
parameter of the model and on its own `extra_parameters()`.

`StepResult.weights` are the effective weights (T,) this step applied to the `losses` it was
given, i.e. ∂(total)/∂losses_i (for gradient-level methods, the weights of the combined gradient
when the aggregator has them, else NaN). Since `losses` already carry w_i, static reports 1 for
every task; the weight on the raw task loss is w_i · weights_i, and that product is what the
trainer logs as the effective weight. They stay on the device: the trainer reads them only on
logging steps.

`known` is None except on diagnostic steps, where the trainer has already computed every task's
gradient for its diagnostics (`TaskGradients`). A loss-level method passes its total to
`backprop(total, known)` instead of calling `total.backward()`: the gradient is then assembled
from those rows rather than back-propagated through the model a second time, so a diagnostic
step costs T backward passes (one per task) instead of T + 1. A gradient-level method on the
shared parameters takes them as its Jacobian (T passes instead of 2T).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mtl_core.models.base import MTLModel
from mtl_core.registry import Params


@dataclass
class StepResult:
    weights: Tensor  # (T,) effective weight per task, on the device
    # The combined shared update of a gradient-level method, in pieces (None for loss-level).
    update_parts: list[Tensor] | None = None

    @property
    def update_norm(self) -> Tensor | None:
        """Norm of the combined shared update. On demand: the trainer asks on logging steps
        only, so other steps pay nothing for it."""
        if self.update_parts is None:
            return None
        if not self.update_parts:
            return self.weights.new_zeros(())
        return torch.linalg.vector_norm(torch.cat([p.reshape(-1) for p in self.update_parts]))


@dataclass
class TaskGradients:
    """Per-task gradients the trainer computed for its diagnostics, on the shared parameters and
    on each task's own parameters (which only that task's loss reaches)."""

    losses: list[Tensor]  # the T scalar task losses they are gradients of (unweighted)
    params: list[nn.Parameter]  # shared, then task parameters: the matrix's columns in order
    matrix: Tensor  # (T, P): row t is d losses[t] / d params, flattened
    others: list[Tensor]  # every other trainable leaf a total may reach (the method's own)


# Inside `deferred_backward()`: the totals `backprop` was given, to back-propagate together.
_deferred: list[Tensor] | None = None


@contextmanager
def deferred_backward() -> Iterator[list[Tensor]]:
    """Collect instead of back-propagating: a stacked run (mtl_core.replicas) calls each
    replica's method inside this and then back-propagates the collected totals in ONE pass
    through the stacked graph (replicas share no parameter, so each still gets only its own
    total's gradient). Only `backprop` without `known` defers; a method that sets `.grad`
    itself (GradNorm's weights, FAMO's logits) does so on tensors the total does not reach."""
    global _deferred
    outer, _deferred = _deferred, []
    try:
        yield _deferred
    finally:
        _deferred = outer


def backprop(total: Tensor, known: TaskGradients | None = None) -> None:
    """`total.backward()`, for a total that reaches the model only through the task losses
    (any loss-level method). With `known`, the model's gradient is assembled from its rows:
    d total/d params = Σ_t (d total/d losses_t) · row_t, and the model is not visited again."""
    if known is None:
        if _deferred is not None:
            _deferred.append(total)
            return
        total.backward()
        return
    # d total / d losses_t: a backward through the task weights and the scalarisation only.
    coefficients = torch.stack(torch.autograd.grad(
        total, known.losses, retain_graph=bool(known.others), materialize_grads=True))
    if known.others:
        torch.autograd.backward(total, inputs=known.others)
    update = coefficients.to(known.matrix.dtype) @ known.matrix
    for param, grad in zip(known.params, update.split([p.numel() for p in known.params]),
                           strict=True):
        grad = grad.view_as(param)
        if param.grad is None:
            param.grad = grad
        else:
            param.grad.add_(grad)


class WeightingMethod:
    kind: str = "loss"  # "loss" (scalarises the losses) or "gradient" (combines gradients)
    constant_weights = False  # True: every step returns the same weights (no per-step log)
    # True: a loss-level `backward` differentiates model parameters itself (GradNorm's norms);
    # a stacked run (mtl_core.replicas) then gives each replica its own forward graph.
    differentiates_parameters = False
    # True: `backward` is exactly backprop(losses.sum(), known) with weights 1 and no state
    # (static); a stacked run then sums every replica's losses in one op.
    sums_losses = False

    def __init__(self, task_names: list[str], params: Params, model: MTLModel) -> None:
        self.task_names = list(task_names)
        self.params = params

    @property
    def reuses_task_gradients(self) -> bool:
        """Whether `backward` can use `known`; the trainer then computes the diagnostics'
        per-task gradients on the task parameters as well as the shared ones."""
        return self.kind == "loss"

    def extra_parameters(self) -> list[nn.Parameter]:
        """Learnable parameters of the method itself (e.g. log-variances); the trainer adds
        them to the optimizer."""
        return []

    def backward(self, losses: Tensor, features: list[Tensor], model: MTLModel,
                 known: TaskGradients | None = None) -> StepResult:
        raise NotImplementedError

    def end_epoch(self, mean_losses: Tensor) -> None:
        """Called with the epoch's mean per-task (weighted) training losses (T,). DWA uses it."""

    def state_dict(self) -> dict:
        """Method state for checkpoints (tensors or JSON-able values)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned (resuming from a checkpoint)."""
