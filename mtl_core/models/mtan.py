"""Multi-Task Attention Network (Liu et al., CVPR 2019), simplified but faithful.

One shared trunk produces a feature after every stage. Each task has an attention module per
stage that looks at that shared feature (and at the task's own attended feature from the
previous stage, projected to the same shape) and outputs a sigmoid mask of the feature's
shape; the task keeps `mask * shared feature`. The task's head reads its last attended
feature. Shared: the trunk. Task-specific: the attention modules and the head.

Paper differences, for simplicity: the masks are computed from the stage outputs themselves
(not from a feature inside the stage); each task projects its previous attended feature with
its own small layer (the paper shares that layer between tasks) so that everything after the
shared features is task-specific; dense stages get a one-layer mask (conv stages keep the
paper's two 1×1 convs), and where the trunk goes from feature maps to dense layers the
previous attended map is averaged over space before it is projected.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mtl_core.config import ModelConfig
from mtl_core.data.base import TaskSpec
from mtl_core.models import ARCHITECTURES
from mtl_core.models.base import Block
from mtl_core.models.blocks import (
    CheckErrors,
    SplitModel,
    StageSpec,
    activation,
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


def check(model_cfg: ModelConfig, params: Params) -> CheckErrors:
    return need_depth(model_cfg, "mtan", "whose features the tasks can attend to")


class Attention(nn.Module):
    """A task's attention over one shared stage (given by its spec)."""

    def __init__(self, spec: StageSpec, first: bool) -> None:
        super().__init__()
        width = spec.out_shape[0]
        act = spec.activation or "relu"
        reads = width if first else 2 * width  # the shared feature (+ the projected previous)
        if spec.kind in ("conv", "backbone"):
            # The previous attended map has the stage's input shape: 1×1 conv + pool to match
            # (a backbone stage may keep the size or shrink it by 2 or 4).
            pool = nn.MaxPool2d(2) if spec.kind == "conv" else nn.AdaptiveMaxPool2d(
                spec.out_shape[1:])
            self.project = None if first else nn.Sequential(
                nn.Conv2d(spec.in_shape[0], width, 1), activation(act), pool)
            # Two 1×1 convs as in the paper (cheap next to the trunk's 3×3 convs).
            self.mask = nn.Sequential(nn.Conv2d(reads, width, 1), activation(act),
                                      nn.Conv2d(width, width, 1), nn.Sigmoid())
            kind = "1×1 conv"
        else:
            # After the convolutions, average the previous attended map over space first:
            # projecting the flattened map would copy the trunk's largest layer per task.
            pool = [nn.AdaptiveAvgPool2d(1)] if len(spec.in_shape) == 3 else []
            self.project = None if first else nn.Sequential(
                *pool, nn.Flatten(), nn.Linear(spec.in_shape[0], width), activation(act))
            # One layer: dense masks are as wide as the feature, a second layer would
            # make the attention far larger than the trunk it attends to.
            self.mask = nn.Sequential(nn.Linear(reads, width), nn.Sigmoid())
            kind = "Linear"
        what = f"{width}" if first else f"{width}+{width}"
        self.label = f"Attention {kind} {what}→{width} · sigmoid mask"

    def forward(self, shared: Tensor, previous: Tensor | None) -> tuple[Tensor, Tensor]:
        """(attended feature, mask) for one shared stage output."""
        reads = shared if self.project is None else torch.cat(
            [shared, self.project(previous)], dim=1)
        mask = self.mask(reads)
        return mask * shared, mask


class MTAN(SplitModel):
    """features: the output of every shared stage, grouped per input key (sorted keys):
    [key0 stage0, key0 stage1, ..., key1 stage0, ...]. They depend on one another (stage i+1
    is computed from stage i), so gradients with respect to them must be taken on detached
    copies (see `MTLModel`)."""

    def __init__(self, model_cfg: ModelConfig, tasks: list[TaskSpec],
                 input_shapes: dict[str, tuple[int, ...]]) -> None:
        super().__init__(tasks, input_shapes)
        shape = same_shape(tasks, input_shapes, "the mtan trunk is shared by all inputs")
        specs = trunk_specs(model_cfg.trunk, shape)
        self.depth = len(specs)
        self.shared = make_stages(specs)
        self.private = nn.ModuleList(
            nn.ModuleDict({
                "attention": nn.ModuleList(Attention(s, i == 0) for i, s in enumerate(specs)),
                "head": make_head(model_cfg.heads, specs[-1].out_shape, task)})
            for task in tasks)

    def features(self, inputs: dict[str, Tensor]) -> list[Tensor]:
        out = []
        for key in self.keys:
            x = inputs[key]
            for stage in self.shared:
                x = stage(x)
                out.append(x)
        return out

    def attend(self, features: list[Tensor]) -> dict[str, tuple[Tensor, list[Tensor]]]:
        """Per task: its last attended feature and its mask at every stage."""
        out = {}
        for t, own in self.owned():
            start = self.key_index(t) * self.depth
            attended, masks = None, []
            for shared, attention in zip(features[start:start + self.depth], own["attention"],
                                         strict=True):
                attended, mask = attention(shared, attended)
                masks.append(mask)
            out[t.name] = (attended, masks)
        return out

    def heads(self, features: list[Tensor]) -> dict[str, Tensor]:
        attended = self.attend(features)
        return {t.name: own["head"](attended[t.name][0])
                for t, own in self.owned()}

    def blocks(self) -> list[Block]:
        names = [f"trunk.{i}" for i in range(self.depth)]
        out = chain(names, list(self.shared), "shared", self.input_refs())
        for t, own in self.owned():
            previous: list[str] = []
            for i, attention in enumerate(own["attention"]):
                name = f"attention.{t.name}.{i}"
                out += chain([name], [attention], t.name, [names[i]] + previous)
                previous = [name]
            out += head_blocks(t.name, own["head"], previous)
        return out

    @torch.no_grad()
    def inspect(self, inputs: dict[str, Tensor]) -> dict[str, Any]:
        """{"masks": {task: mean mask value per stage over `inputs`}}: near 1 = the task keeps
        the shared feature, lower = it filters more of it out."""
        attended = self.attend(self.features(inputs))
        return {"masks": {task: [float(m.mean()) for m in masks]
                          for task, (_, masks) in attended.items()}}


@ARCHITECTURES.register(
    "mtan",
    "Attention sharing: one shared trunk, and each task learns soft masks that pick out the "
    "parts of every shared layer's features it needs.",
    params=Params, check=check)
def build(model_cfg: ModelConfig, params: Params, tasks: list[TaskSpec],
          input_shapes: dict[str, tuple[int, ...]]) -> MTAN:
    raise_on(check(model_cfg, params))
    return MTAN(model_cfg, tasks, input_shapes)
