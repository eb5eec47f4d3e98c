"""One interface over every loss-weighting and gradient-combination method.

A method is a small object the trainer calls once per step, after the forward pass:

    result = method.backward(losses, features, model)   # fills .grad of every parameter
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
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from mtl_core.models.base import MTLModel
from mtl_core.registry import Params


@dataclass
class StepResult:
    weights: Tensor  # (T,) effective weight per task, on the device
    update_norm: Tensor | None = None  # norm of the combined shared update (gradient-level)


class WeightingMethod:
    kind: str = "loss"  # "loss" (scalarises the losses) or "gradient" (combines gradients)

    def __init__(self, task_names: list[str], params: Params, model: MTLModel) -> None:
        self.task_names = list(task_names)
        self.params = params

    def extra_parameters(self) -> list[nn.Parameter]:
        """Learnable parameters of the method itself (e.g. log-variances); the trainer adds
        them to the optimizer."""
        return []

    def backward(self, losses: Tensor, features: list[Tensor], model: MTLModel) -> StepResult:
        raise NotImplementedError

    def end_epoch(self, mean_losses: Tensor) -> None:
        """Called with the epoch's mean per-task (weighted) training losses (T,). DWA uses it."""

    def state_dict(self) -> dict:
        """Method state for checkpoints (tensors or JSON-able values)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned (resuming from a checkpoint)."""
