"""What every multi-task architecture provides to the trainer, the weighting methods and the UI."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn


@dataclass
class Block:
    """One box of the architecture diagram."""

    name: str  # unique id, e.g. "trunk.0" or "head.left.1"
    label: str  # what the box says, e.g. "Linear 64→128 + ReLU"
    owner: str  # "shared" or a task name
    params: int
    inputs: list[str] = field(default_factory=list)  # names of blocks (or "input:x") feeding it
    group: str = ""  # boxes of one group (a backbone's stages) may be drawn as one box


class MTLModel(nn.Module):
    """A network with one output per task.

    The forward pass is split at the shared representation so that gradient-combination
    methods can work on it (MGDA-UB style): `forward(x) == heads(features(x))`.
    - `features(inputs)` returns the shared representation: a list of tensors, each
      requiring grad whenever the part before it has shared parameters.
    - `heads(features)` maps those tensors to `{task: output}`; only task-specific parameters
      (and, for soft-sharing designs, coupling parameters) are used after the split.
    Architectures without a single shared representation (e.g. cross_stitch) set
    `supports_representation = False`; then `features` returns the inputs unchanged.

    Outputs: classification -> logits (B, C); binary -> one logit (B,); regression -> (B,)
    (every task with `output_dim == 1` comes back squeezed to (B,)).
    The feature tensors may depend on one another (mtan returns every shared stage's output):
    for the gradient of a loss with respect to the representation, run `heads` on detached
    copies (`f.detach().requires_grad_()`) and push the result back with
    `torch.autograd.backward(features, grads)`. (`autograd.grad(loss, features)` on the
    attached tensors would include, for an earlier stage, the paths through the later ones,
    and pushing that back counts them twice.)
    Call `heads` on (copies of) the features of the latest `features` call: mmoe's gates read
    the raw inputs, which `features` keeps for that call.
    Ownership in soft sharing: a cross_stitch column is listed under its task (it is that
    task's network) although other tasks' losses reach it through the mixing weights.
    """

    supports_representation: bool = True

    def __init__(self, task_names: list[str]) -> None:
        super().__init__()
        self.task_names = list(task_names)

    def features(self, inputs: dict[str, Tensor]) -> list[Tensor]:
        raise NotImplementedError

    def heads(self, features: list[Tensor]) -> dict[str, Tensor]:
        raise NotImplementedError

    def forward(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        return self.heads(self.features(inputs))

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters that more than one task's loss reaches."""
        raise NotImplementedError

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """Parameters only `task`'s loss reaches."""
        raise NotImplementedError

    def all_task_parameters(self) -> list[nn.Parameter]:
        """Every task's trainable parameters, in task order, each once."""
        unique: dict[int, nn.Parameter] = {}
        for task in self.task_names:
            for p in self.task_parameters(task):
                if p.requires_grad:
                    unique.setdefault(id(p), p)
        return list(unique.values())

    def parameter_counts(self) -> dict[str, int]:
        counts = {"shared": sum(p.numel() for p in self.shared_parameters())}
        for task in self.task_names:
            counts[task] = sum(p.numel() for p in self.task_parameters(task))
        return counts

    def blocks(self) -> list[Block]:
        """Every block: shared blocks and each task's blocks, in data-flow order."""
        raise NotImplementedError

    def diagram_blocks(self) -> list[Block]:
        """The blocks as the diagram draws them: a backbone's stages in a row as one box."""
        from mtl_core.models.blocks import merge_groups

        return merge_groups(self.blocks())

    @torch.no_grad()
    def inspect(self, inputs: dict[str, Tensor]) -> dict[str, Any]:
        """Architecture-specific state worth showing (JSON-able): e.g. cross-stitch mixing
        matrices or MMoE gate weights averaged over `inputs`. Empty by default."""
        return {}
