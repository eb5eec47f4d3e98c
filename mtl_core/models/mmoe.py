"""Multi-gate Mixture-of-Experts (Ma et al., KDD 2018).

Several experts (each a copy of the configured trunk, mlp or cnn) read the input; every task
has its own softmax gate, a linear map of the flattened input to one weight per expert, and
its head reads the gate-weighted sum of the expert outputs. Experts are shared; gates and
heads are task-specific.
"""
from __future__ import annotations

import math
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
    count,
    head_blocks,
    make_head,
    make_stages,
    need_depth,
    raise_on,
    run,
    same_shape,
    trunk_specs,
)
from mtl_core.registry import Params


class MMoEParams(Params):
    n_experts: int = Field(
        4, ge=1, le=16,
        description="How many expert networks (each a copy of the trunk) the tasks share; "
                    "each task's gate decides how much it listens to each expert.")


def check(model_cfg: ModelConfig, params: MMoEParams) -> CheckErrors:
    return need_depth(model_cfg, "mmoe", "to build its experts from")


class MMoE(SplitModel):
    """features: one tensor per input key (sorted), the stacked expert outputs (B, E, d)
    (each expert's output flattened to d).

    The gates read the raw input, which `heads` does not receive: `features` keeps the
    flattened inputs of its batch for the next `heads` call (as in `forward` and the trainer's
    step). Call `heads` only on features of the latest `features` call.
    """

    def __init__(self, model_cfg: ModelConfig, tasks: list[TaskSpec],
                 input_shapes: dict[str, tuple[int, ...]], n_experts: int) -> None:
        super().__init__(tasks, input_shapes)
        shape = same_shape(tasks, input_shapes, "the mmoe experts are shared by all inputs")
        specs = trunk_specs(model_cfg.trunk, shape)
        self.shared = nn.ModuleList(make_stages(specs) for _ in range(n_experts))
        out_dim, in_dim = math.prod(specs[-1].out_shape), math.prod(shape)
        self.private = nn.ModuleList(
            nn.ModuleDict({"gate": nn.Linear(in_dim, n_experts),
                           "head": make_head(model_cfg.heads, (out_dim,), task)})
            for task in tasks)
        self._gate_inputs: list[Tensor] | None = None

    def features(self, inputs: dict[str, Tensor]) -> list[Tensor]:
        self._gate_inputs = [inputs[key].flatten(1) for key in self.keys]
        return [torch.stack([run(expert, inputs[key]).flatten(1) for expert in self.shared], 1)
                for key in self.keys]

    def gates(self) -> dict[str, Tensor]:
        """Each task's gate weights (B, E) for the batch of the latest `features` call."""
        if self._gate_inputs is None:
            raise RuntimeError("MMoE.heads needs model.features(inputs) to be called first")
        return {t.name: torch.softmax(own["gate"](self._gate_inputs[self.key_index(t)]), -1)
                for t, own in self.owned()}

    def heads(self, features: list[Tensor]) -> dict[str, Tensor]:
        gates = self.gates()
        out = {}
        for t, own in self.owned():
            experts = features[self.key_index(t)]
            if experts.shape[0] != gates[t.name].shape[0]:
                raise RuntimeError("MMoE.heads got features of another batch than the latest "
                                   "model.features(inputs) call")
            mixture = torch.einsum("be,bed->bd", gates[t.name], experts)
            out[t.name] = own["head"](mixture)
        return out

    def blocks(self) -> list[Block]:
        out: list[Block] = []
        last = []
        for e, expert in enumerate(self.shared):
            names = [f"expert.{e}.{i}" for i in range(len(expert))]
            out += chain(names, list(expert), "shared", self.input_refs())
            last.append(names[-1])
        for t, own in self.owned():
            gate = own["gate"]
            out.append(Block(f"gate.{t.name}", f"Gate Linear {gate.in_features}→"
                             f"{gate.out_features} · softmax", t.name, count(gate),
                             self.input_refs(t)))
            out += head_blocks(t.name, own["head"], last + [f"gate.{t.name}"])
        return out

    @torch.no_grad()
    def inspect(self, inputs: dict[str, Tensor]) -> dict[str, Any]:
        """{"gates": {task: mean gate weight per expert over `inputs`, a list of E floats}}."""
        kept = self._gate_inputs  # leave a training step's pending heads call undisturbed
        self.features(inputs)
        gates = self.gates()
        self._gate_inputs = kept
        return {"gates": {task: g.mean(0).cpu().tolist() for task, g in gates.items()}}


@ARCHITECTURES.register(
    "mmoe",
    "Mixture of experts: several shared expert networks, and each task has a gate that "
    "learns how much to listen to each expert.",
    params=MMoEParams, check=check)
def build(model_cfg: ModelConfig, params: MMoEParams, tasks: list[TaskSpec],
          input_shapes: dict[str, tuple[int, ...]]) -> MMoE:
    raise_on(check(model_cfg, params))
    return MMoE(model_cfg, tasks, input_shapes, params.n_experts)
