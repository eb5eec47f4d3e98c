"""Building blocks shared by every architecture: trunk stages, task heads, diagram boxes.

A *stage* is one layer of the trunk as the config counts them (`TrunkConfig.depth`), so
`hard_sharing`'s `shared_layers` counts stages:
- mlp: one stage per width in `layers + hidden`: Linear (+BatchNorm1d) + activation + dropout;
- cnn: one stage per channel count in `layers`: Conv 3×3 (+BatchNorm2d) + activation +
  MaxPool 2×2 + dropout, then one dense stage per width in `hidden`.
A dense stage flattens what it reads, so an mlp trunk takes images and the first dense stage
after the convolutions is where the feature maps are flattened.

- a torchvision backbone (`mtl_core.models.backbones`): one stage per backbone stage, then
  one dense stage per width in `hidden`.

Architectures describe their trunk as a list of `StageSpec`s (shapes worked out once) and
build as many copies of any stage as they need with `make_stages`; heads come from
`make_head` (a dense head, or an upsampling decoder for per-pixel tasks).
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from mtl_core.config import HeadConfig, ModelConfig, TrunkConfig
from mtl_core.data.base import DENSE_KINDS, TaskSpec
from mtl_core.models.base import Block, MTLModel

ACTIVATIONS: dict[str, tuple[type[nn.Module], str]] = {
    "relu": (nn.ReLU, "ReLU"),
    "leaky_relu": (nn.LeakyReLU, "LeakyReLU"),
    "gelu": (nn.GELU, "GELU"),
    "tanh": (nn.Tanh, "Tanh"),
    "sigmoid": (nn.Sigmoid, "Sigmoid"),
    "elu": (nn.ELU, "ELU"),
    "silu": (nn.SiLU, "SiLU"),
}

CheckErrors = list[tuple[str, str]]


def activation(name: str) -> nn.Module:
    return ACTIVATIONS[name][0]()


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@dataclass(frozen=True)
class StageSpec:
    """One stage: what it reads and writes per sample, and how it is built."""

    kind: Literal["dense", "conv", "backbone"]
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    activation: str | None = "relu"  # None: a plain linear output layer
    dropout: float = 0.0
    batch_norm: bool = False
    # backbone stages: which model, which stage, and the input shape of the whole backbone
    backbone: str | None = None
    index: int = 0
    backbone_input: tuple[int, ...] = ()
    weights: str | None = None
    trainable: str = "all"


def trunk_specs(trunk: TrunkConfig, in_shape: tuple[int, ...]) -> list[StageSpec]:
    """The stages of `trunk` applied to inputs of per-sample shape `in_shape`."""
    specs: list[StageSpec] = []
    shape = tuple(in_shape)
    common = dict(activation=trunk.activation, dropout=trunk.dropout,
                  batch_norm=trunk.batch_norm)
    if trunk.is_backbone:
        from mtl_core.models.backbones import stage_shapes

        if len(shape) != 3 or shape[0] not in (1, 3):
            raise ValueError(f"a {trunk.type} trunk needs 1- or 3-channel images (channels, "
                             f"height, width); got {shape}: use an mlp trunk")
        for i, out in enumerate(stage_shapes(trunk.type, shape)):
            specs.append(StageSpec("backbone", shape if i == 0 else specs[-1].out_shape, out,
                                   activation=None, backbone=trunk.type, index=i,
                                   backbone_input=tuple(in_shape), weights=trunk.weights,
                                   trainable=trunk.trainable))
        shape = specs[-1].out_shape
        widths = list(trunk.hidden)
    elif trunk.type == "cnn":
        if trunk.layers and len(shape) != 3:
            raise ValueError(f"a cnn trunk needs image inputs of shape (channels, height, "
                             f"width); got {shape}: use an mlp trunk")
        for channels in trunk.layers:
            c, h, w = shape
            if h < 2 or w < 2:
                raise ValueError(f"the cnn trunk has too many conv layers for "
                                 f"{in_shape[1]}×{in_shape[2]} images: each halves the size "
                                 f"and the {len(specs) + 1}th would get {h}×{w}")
            out = (channels, h // 2, w // 2)
            specs.append(StageSpec("conv", shape, out, **common))
            shape = out
        widths = list(trunk.hidden)
    else:
        widths = list(trunk.layers) + list(trunk.hidden)
    for width in widths:
        specs.append(StageSpec("dense", shape, (width,), **common))
        shape = (width,)
    return specs


class Stage(nn.Module):
    """One stage built from a `StageSpec`; `label` is its box text in the diagram."""

    def __init__(self, spec: StageSpec) -> None:
        super().__init__()
        self.spec = spec
        layers: list[nn.Module] = []
        parts: list[str] = []
        if spec.kind == "conv":
            c_in, c_out = spec.in_shape[0], spec.out_shape[0]
            layers.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1))
            parts.append(f"Conv {c_in}→{c_out} 3×3")
            if spec.batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
        else:
            d_in, d_out = math.prod(spec.in_shape), spec.out_shape[0]
            if len(spec.in_shape) > 1:
                layers.append(nn.Flatten())
                parts.append("Flatten")
            layers.append(nn.Linear(d_in, d_out))
            parts.append(f"Linear {d_in}→{d_out}")
            if spec.batch_norm:
                layers.append(nn.BatchNorm1d(d_out))
        if spec.batch_norm:
            parts.append("BN")
        if spec.activation is not None:
            layers.append(activation(spec.activation))
            parts.append(ACTIVATIONS[spec.activation][1])
        if spec.kind == "conv":
            layers.append(nn.MaxPool2d(2))
            parts.append("MaxPool")
        if spec.dropout > 0:
            layers.append(nn.Dropout(spec.dropout))
            parts.append(f"Dropout {spec.dropout:g}")
        self.net = nn.Sequential(*layers)
        self.label = " · ".join(parts)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def make_stages(specs: list[StageSpec]) -> nn.ModuleList:
    """The modules of `specs`; consecutive backbone stages come from one backbone build."""
    from mtl_core.models.backbones import build_stages

    out: list[nn.Module] = []
    i = 0
    while i < len(specs):
        spec = specs[i]
        if spec.kind != "backbone":
            out.append(Stage(spec))
            i += 1
            continue
        j = i
        while j < len(specs) and specs[j].kind == "backbone":
            j += 1
        out += build_stages(spec.backbone or "", [s.index for s in specs[i:j]],
                            spec.backbone_input, spec.weights, spec.trainable)
        i = j
    return nn.ModuleList(out)


def run(stages: nn.ModuleList, x: Tensor) -> Tensor:
    for stage in stages:
        x = stage(x)
    return x


class Head(nn.Module):
    """A task's head: dense stages per `HeadConfig.layers_for(task)`, then a Linear to
    `output_dim`.

    Returns logits (B, C) for classification and (B,) when `output_dim` is 1 (binary logit,
    regression value), the shapes the trainer's losses take.
    """

    def __init__(self, cfg: HeadConfig, in_shape: tuple[int, ...], task: TaskSpec) -> None:
        super().__init__()
        self.squeeze = task.output_dim == 1
        specs: list[StageSpec] = []
        shape = tuple(in_shape)
        for width in cfg.layers_for(task.name):
            specs.append(StageSpec("dense", shape, (width,), cfg.activation, cfg.dropout))
            shape = (width,)
        specs.append(StageSpec("dense", shape, (task.output_dim,), activation=None))
        self.stages = make_stages(specs)
        if task.kind == "classification":
            self.stages[-1].label += " · logits"

    def forward(self, x: Tensor) -> Tensor:
        out = run(self.stages, x)
        return out.squeeze(-1) if self.squeeze else out


def make_head(cfg: HeadConfig, in_shape: tuple[int, ...], task: TaskSpec) -> nn.Module:
    """A task's head: dense layers for per-sample outputs, an upsampling decoder
    (`DenseHead`) for per-pixel tasks."""
    if task.kind in DENSE_KINDS:
        from mtl_core.models.dense_head import DenseHead

        return DenseHead(cfg, in_shape, task)
    return Head(cfg, in_shape, task)


def chain(names: list[str], modules: list[nn.Module], owner: str,
          inputs: list[str]) -> list[Block]:
    """Diagram boxes for modules applied one after another; the first reads `inputs`."""
    blocks = []
    for name, module in zip(names, modules, strict=True):
        blocks.append(Block(name, module.label, owner, count(module), list(inputs),
                            group=getattr(module, "group", "")))
        inputs = [name]
    return blocks


def merge_groups(blocks: list[Block]) -> list[Block]:
    """The diagram's view: a run of boxes of one group (a backbone's stages) where each reads
    only the one before and nothing else reads that one becomes a single box with the run's
    parameter count ("ResNet-18 · stages 1–5")."""
    readers: dict[str, int] = {}
    for b in blocks:
        for source in b.inputs:
            readers[source] = readers.get(source, 0) + 1
    out: list[Block] = []
    rename: dict[str, str] = {}
    runs: list[list[Block]] = []  # the original blocks behind each box of `out`
    for b in blocks:
        inputs = [rename.get(s, s) for s in b.inputs]
        prev = out[-1] if out else None
        if (b.group and prev is not None and prev.group == b.group
                and prev.owner == b.owner and inputs == [prev.name]
                and readers.get(runs[-1][-1].name, 0) == 1):
            runs[-1].append(b)
            rename[b.name] = prev.name
            members = runs[-1]
            frozen = [m.label.endswith(" · frozen") for m in members]
            notes = " · frozen" if all(frozen) else " · partly frozen" if any(frozen) else ""
            shape = members[-1].label.rsplit("→", 1)[-1].split(" · ")[0].strip()
            out[-1] = Block(prev.name, f"{b.group} · {len(members)} stages → {shape}{notes}",
                            b.owner, sum(m.params for m in members), prev.inputs, b.group)
        else:
            out.append(Block(b.name, b.label, b.owner, b.params, inputs, b.group))
            runs.append([b])
    return out


def head_blocks(task: str, head: nn.Module, inputs: list[str]) -> list[Block]:
    names = [f"head.{task}.{i}" for i in range(len(head.stages) - 1)] + [f"head.{task}.out"]
    return chain(names, list(head.stages), task, inputs)


class Branch(nn.Module):
    """A task's own trunk stages followed by its head."""

    def __init__(self, stages: nn.ModuleList, head: nn.Module) -> None:
        super().__init__()
        self.stages = stages
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(run(self.stages, x))

    def blocks(self, task: str, first: int, inputs: list[str]) -> list[Block]:
        names = [f"trunk.{first + i}.{task}" for i in range(len(self.stages))]
        own = chain(names, list(self.stages), task, inputs)
        return own + head_blocks(task, self.head, [own[-1].name] if own else inputs)


def need_depth(model_cfg: ModelConfig, architecture: str, why: str) -> CheckErrors:
    """The check of architectures that make no sense without a trunk layer."""
    if model_cfg.trunk.depth == 0:
        return [("model.trunk.layers", f"{architecture} needs at least one trunk layer {why}")]
    return []


def raise_on(errors: CheckErrors) -> None:
    """`build` refuses what `check` refuses, for callers that skip `parse_config`."""
    if errors:
        raise ValueError("; ".join(f"{path}: {message}" for path, message in errors))


def same_shape(tasks: list[TaskSpec], input_shapes: dict[str, tuple[int, ...]],
               why: str) -> tuple[int, ...]:
    """The one input shape all tasks share; a shared layer cannot read two shapes."""
    shapes = {t.input: tuple(input_shapes[t.input]) for t in tasks}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{k} {s}" for k, s in sorted(shapes.items()))
        raise ValueError(f"{why}, so the inputs need the same shape; got {listed}")
    return next(iter(shapes.values()))


class SplitModel(MTLModel):
    """Common plumbing: what is shared lives in `self.shared`, task i's own modules in
    `self.private[i]` (indexed by position: task names may be any string).

    Several inputs: tasks name their input key (`TaskSpec.input`); `self.keys` are the
    distinct keys in sorted order, the order of the per-input tensors in `features`.
    """

    shared: nn.Module
    private: nn.ModuleList

    def __init__(self, tasks: list[TaskSpec], input_shapes: dict[str, tuple[int, ...]]) -> None:
        if not tasks:
            raise ValueError("a model needs at least one task")
        super().__init__([t.name for t in tasks])
        missing = sorted({t.input for t in tasks} - set(input_shapes))
        if missing:
            raise ValueError(f"no input shape for input(s) {', '.join(missing)}")
        self.tasks = list(tasks)
        self.keys = sorted({t.input for t in tasks})

    def owned(self) -> Iterator[tuple[TaskSpec, nn.Module]]:
        """(task, its private modules) in task order."""
        return zip(self.tasks, self.private, strict=True)

    def key_index(self, task: TaskSpec) -> int:
        return self.keys.index(task.input)

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.shared.parameters())

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        if task not in self.task_names:
            raise KeyError(f"unknown task {task!r}; tasks: {', '.join(self.task_names)}")
        return list(self.private[self.task_names.index(task)].parameters())

    def input_refs(self, task: TaskSpec | None = None) -> list[str]:
        """Diagram references to the inputs (all of them, or the one `task` reads)."""
        return [f"input:{task.input}"] if task else [f"input:{k}" for k in self.keys]
