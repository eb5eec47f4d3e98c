"""Hard parameter sharing: one trunk shared by every task, then a branch per task.

`shared_layers = k` shares the first k trunk stages; each task gets a private copy of the
remaining stages before its head (k = 0: nothing shared; k = depth, the default: classic
hard sharing with only the heads task-specific).
"""
from __future__ import annotations

from pydantic import Field
from torch import Tensor, nn

from mtl_core.config import ModelConfig
from mtl_core.data.base import TaskSpec
from mtl_core.models import ARCHITECTURES
from mtl_core.models.base import Block
from mtl_core.models.blocks import (
    Branch,
    CheckErrors,
    SplitModel,
    chain,
    make_head,
    make_stages,
    raise_on,
    run,
    same_shape,
    trunk_specs,
)
from mtl_core.registry import Params


class HardSharingParams(Params):
    shared_layers: int | None = Field(
        None, ge=0, le=32,
        description="How many trunk layers all tasks share before they branch into their own "
                    "copies (0 = nothing shared; empty = the whole trunk).")


def check(model_cfg: ModelConfig, params: HardSharingParams) -> CheckErrors:
    depth = model_cfg.trunk.depth
    if params.shared_layers is not None and params.shared_layers > depth:
        return [("model.params.shared_layers", f"shared_layers is {params.shared_layers} but "
                 f"the trunk has {depth} layers; allowed 0..{depth}")]
    return []


class HardSharing(SplitModel):
    """features: one tensor per input key (sorted), the output of the last shared stage
    (the inputs themselves when shared_layers = 0)."""

    def __init__(self, model_cfg: ModelConfig, tasks: list[TaskSpec],
                 input_shapes: dict[str, tuple[int, ...]], shared_layers: int) -> None:
        super().__init__(tasks, input_shapes)
        self.shared_layers = shared_layers
        if shared_layers > 0:
            same_shape(tasks, input_shapes, f"hard_sharing shares {shared_layers} trunk "
                       "layer(s) across all inputs")
        specs = {t.name: trunk_specs(model_cfg.trunk, input_shapes[t.input]) for t in tasks}
        self.shared = make_stages(specs[tasks[0].name][:shared_layers])
        branches = []
        for task in tasks:
            own = specs[task.name]
            shape = own[-1].out_shape if own else input_shapes[task.input]
            branches.append(Branch(make_stages(own[shared_layers:]),
                                   make_head(model_cfg.heads, shape, task)))
        self.private = nn.ModuleList(branches)

    def features(self, inputs: dict[str, Tensor]) -> list[Tensor]:
        return [run(self.shared, inputs[key]) for key in self.keys]

    def heads(self, features: list[Tensor]) -> dict[str, Tensor]:
        return {t.name: branch(features[self.key_index(t)])
                for t, branch in self.owned()}

    def blocks(self) -> list[Block]:
        names = [f"trunk.{i}" for i in range(self.shared_layers)]
        shared = chain(names, list(self.shared), "shared", self.input_refs())
        out = list(shared)
        for task, branch in self.owned():
            inputs = [shared[-1].name] if shared else self.input_refs(task)
            out += branch.blocks(task.name, self.shared_layers, inputs)
        return out


@ARCHITECTURES.register(
    "hard_sharing",
    "One trunk shared by all tasks, then a small head per task (optionally branching "
    "earlier, with the later trunk layers copied per task).",
    params=HardSharingParams, check=check)
def build(model_cfg: ModelConfig, params: HardSharingParams, tasks: list[TaskSpec],
          input_shapes: dict[str, tuple[int, ...]]) -> HardSharing:
    raise_on(check(model_cfg, params))
    depth = model_cfg.trunk.depth
    k = depth if params.shared_layers is None else params.shared_layers
    return HardSharing(model_cfg, tasks, input_shapes, k)
