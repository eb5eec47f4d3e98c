"""No sharing: an independent trunk and head per task (the single-task baseline, trained
side by side so it sees exactly the same batches as the multi-task models)."""
from __future__ import annotations

from torch import Tensor, nn

from mtl_core.config import ModelConfig
from mtl_core.data.base import TaskSpec
from mtl_core.models import ARCHITECTURES
from mtl_core.models.base import Block
from mtl_core.models.blocks import Branch, SplitModel, make_head, make_stages, trunk_specs
from mtl_core.registry import Params


class SingleTask(SplitModel):
    """features: the inputs unchanged, one tensor per input key (sorted); nothing is shared."""

    supports_representation = False

    def __init__(self, model_cfg: ModelConfig, tasks: list[TaskSpec],
                 input_shapes: dict[str, tuple[int, ...]]) -> None:
        super().__init__(tasks, input_shapes)
        self.shared = nn.ModuleList()
        branches = []
        for task in tasks:
            shape = input_shapes[task.input]
            specs = trunk_specs(model_cfg.trunk, shape)
            head = make_head(model_cfg.heads, specs[-1].out_shape if specs else shape, task)
            branches.append(Branch(make_stages(specs), head))
        self.private = nn.ModuleList(branches)

    def features(self, inputs: dict[str, Tensor]) -> list[Tensor]:
        return [inputs[key] for key in self.keys]

    def heads(self, features: list[Tensor]) -> dict[str, Tensor]:
        return {t.name: branch(features[self.key_index(t)])
                for t, branch in self.owned()}

    def blocks(self) -> list[Block]:
        out: list[Block] = []
        for task, branch in self.owned():
            out += branch.blocks(task.name, 0, self.input_refs(task))
        return out


@ARCHITECTURES.register(
    "single_task",
    "No sharing: every task gets its own separate network, the baseline that multi-task "
    "models are compared against.",
    params=Params)
def build(model_cfg: ModelConfig, params: Params, tasks: list[TaskSpec],
          input_shapes: dict[str, tuple[int, ...]]) -> SingleTask:
    return SingleTask(model_cfg, tasks, input_shapes)
