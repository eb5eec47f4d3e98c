"""Cross-stitch networks (Misra et al., CVPR 2016): soft parameter sharing.

Each task has its own column, a copy of the trunk. After every trunk stage a learned T×T
cross-stitch matrix mixes the columns' activations: the input of column t's next stage is
sum_s alpha[t, s] · (output of column s). Starting near the identity, the network learns how
much each task borrows from the others.

Ownership: in the diagram a column belongs to its task (it is that task's network). For
gradients it is shared: another task's loss reaches every column through the off-diagonal
mixing weights, so `shared_parameters` holds the mixing matrices *and* the columns, and
`task_parameters` only the head (the one part no other task's loss reaches). That keeps the
gradient-combination methods and the conflict diagnostics correct.
"""
from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn

from mtl_core.config import ModelConfig
from mtl_core.data.base import TaskSpec
from mtl_core.models import ARCHITECTURES
from mtl_core.models.base import Block
from mtl_core.models.blocks import (
    CheckErrors,
    SplitModel,
    chain,
    head_blocks,
    make_head,
    make_stages,
    need_depth,
    raise_on,
    same_shape,
    trunk_specs,
)
from mtl_core.registry import Params


class CrossStitchParams(Params):
    init_self: float = Field(
        0.9, ge=0.0, le=1.0,
        description="Starting weight a column gives its own activations in each cross-stitch "
                    "unit; the rest is split evenly over the other tasks' columns "
                    "(1 = start as separate networks).")


def check(model_cfg: ModelConfig, params: CrossStitchParams) -> CheckErrors:
    return need_depth(model_cfg, "cross_stitch", "to put cross-stitch units after")


def initial_mixing(n_tasks: int, init_self: float) -> Tensor:
    if n_tasks == 1:
        return torch.ones(1, 1)  # a lone column has nothing to mix with
    other = (1.0 - init_self) / (n_tasks - 1)
    return torch.full((n_tasks, n_tasks), other).fill_diagonal_(init_self)


class Stitch(nn.Module):
    """One cross-stitch unit: a T×T matrix; row t says how column t's next input mixes the
    columns' current outputs."""

    def __init__(self, n_tasks: int, init_self: float) -> None:
        super().__init__()
        self.alpha = nn.Parameter(initial_mixing(n_tasks, init_self))
        self.label = f"Cross-stitch {n_tasks}×{n_tasks}"

    def forward(self, columns: list[Tensor]) -> list[Tensor]:
        mixed = torch.einsum("ts,s...->t...", self.alpha, torch.stack(columns))
        return list(mixed.unbind(0))


class CrossStitch(SplitModel):
    """features: the inputs unchanged, one per input key (sorted); there is no single shared
    representation, the coupling runs through every stage."""

    supports_representation = False

    def __init__(self, model_cfg: ModelConfig, tasks: list[TaskSpec],
                 input_shapes: dict[str, tuple[int, ...]], init_self: float) -> None:
        super().__init__(tasks, input_shapes)
        # Mixing adds the columns' activations, so every column must see the same shape.
        shape = same_shape(tasks, input_shapes, "cross_stitch mixes the task columns")
        specs = trunk_specs(model_cfg.trunk, shape)
        self.depth = len(specs)
        self.private = nn.ModuleList(
            nn.ModuleDict({"column": make_stages(specs),
                           "head": make_head(model_cfg.heads, specs[-1].out_shape, task)})
            for task in tasks)
        self.shared = nn.ModuleList(Stitch(len(tasks), init_self) for _ in specs)

    def features(self, inputs: dict[str, Tensor]) -> list[Tensor]:
        return [inputs[key] for key in self.keys]

    def shared_parameters(self) -> list[nn.Parameter]:
        columns = [p for own in self.private for p in own["column"].parameters()]
        return list(self.shared.parameters()) + columns

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        if task not in self.task_names:
            raise KeyError(f"unknown task {task!r}; tasks: {', '.join(self.task_names)}")
        return list(self.private[self.task_names.index(task)]["head"].parameters())

    def heads(self, features: list[Tensor]) -> dict[str, Tensor]:
        xs = [features[self.key_index(t)] for t in self.tasks]
        for i, stitch in enumerate(self.shared):
            xs = stitch([own["column"][i](x) for own, x in zip(self.private, xs, strict=True)])
        return {t.name: own["head"](x)
                for t, own, x in zip(self.tasks, self.private, xs, strict=True)}

    def blocks(self) -> list[Block]:
        out: list[Block] = []
        inputs = {t.name: self.input_refs(t) for t in self.tasks}
        for i, stitch in enumerate(self.shared):
            names = []
            for t, own in self.owned():
                names.append(f"trunk.{i}.{t.name}")
                out += chain(names[-1:], [own["column"][i]], t.name, inputs[t.name])
            out += chain([f"stitch.{i}"], [stitch], "shared", names)
            inputs = {t.name: [f"stitch.{i}"] for t in self.tasks}
        for t, own in self.owned():
            out += head_blocks(t.name, own["head"], inputs[t.name])
        return out

    @torch.no_grad()
    def inspect(self, inputs: dict[str, Tensor]) -> dict[str, Any]:
        """{"mixing": one T×T matrix (nested lists, rows and columns in task order) per stage}."""
        return {"mixing": [stitch.alpha.detach().cpu().tolist() for stitch in self.shared]}


@ARCHITECTURES.register(
    "cross_stitch",
    "Soft sharing: each task has its own network, and after every layer learned "
    "cross-stitch weights let each network mix in the other tasks' activations.",
    params=CrossStitchParams, check=check)
def build(model_cfg: ModelConfig, params: CrossStitchParams, tasks: list[TaskSpec],
          input_shapes: dict[str, tuple[int, ...]]) -> CrossStitch:
    raise_on(check(model_cfg, params))
    return CrossStitch(model_cfg, tasks, input_shapes, params.init_self)
