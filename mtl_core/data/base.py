"""The types every task suite returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

TaskKind = Literal["classification", "binary", "regression", "box", "dense_classification",
                   "dense_regression"]
TASK_KINDS: tuple[str, ...] = TaskKind.__args__  # type: ignore[attr-defined]
DENSE_KINDS: tuple[str, ...] = ("dense_classification", "dense_regression")  # one per pixel


@dataclass
class TaskSpec:
    """One task: what it predicts and from which input.

    Targets: classification -> int64 class ids (N,); binary -> float32 0/1 (N,);
    regression -> float32 (N,), standardised on the training pool; `target_scale` is the std
    of the target in its original units (for display and for lessons on loss scales);
    box -> float32 (N, 4), the normalised box [x0, y0, x1, y1] in [0, 1];
    dense_classification -> int64 class ids per pixel (N, H, W); dense_regression -> float32
    per pixel (N, H, W), in its own units (positive for depth: abs_rel divides by it).
    Dense tasks say their map size in `out_size` (H, W).
    """

    name: str
    kind: TaskKind
    num_classes: int | None = None  # classification only
    class_names: list[str] | None = None
    input: str = "x"  # key into Split.inputs
    target_scale: float | None = None
    description: str = ""
    out_size: tuple[int, int] | None = None  # dense kinds: (H, W) of the predicted map

    @property
    def output_dim(self) -> int:
        """Outputs per sample (per pixel for dense kinds)."""
        if self.kind in ("classification", "dense_classification"):
            return self.num_classes  # type: ignore[return-value]
        return 4 if self.kind == "box" else 1


@dataclass
class Split:
    """Tensors of one split. All inputs and targets share the first dimension N."""

    inputs: dict[str, Tensor]
    targets: dict[str, Tensor]

    def __len__(self) -> int:
        return next(iter(self.inputs.values())).shape[0]

    def to(self, device: torch.device | str) -> Split:
        return Split(
            {k: v.to(device) for k, v in self.inputs.items()},
            {k: v.to(device) for k, v in self.targets.items()},
        )

    def take(self, index: Tensor | slice) -> Split:
        return Split(
            {k: v[index] for k, v in self.inputs.items()},
            {k: v[index] for k, v in self.targets.items()},
        )


@dataclass
class SuiteData:
    """What a suite builder returns.

    `train` is the full training pool; `mtl_core.data.load_suite` carves the validation split
    out of it and applies `train_fraction`. `test` is held out by the suite itself.
    """

    suite: str
    tasks: list[TaskSpec]
    train: Split
    val: Split
    test: Split
    input_shapes: dict[str, tuple[int, ...]]  # per-sample shape of each input
    input_kind: Literal["vector", "image"]
    # 2-D suites: (xmin, xmax, ymin, ymax) of the plane to draw decision boundaries on.
    plane: tuple[float, float, float, float] | None = None
    meta: dict = field(default_factory=dict)

    def task(self, name: str) -> TaskSpec:
        return next(t for t in self.tasks if t.name == name)


class DataError(ValueError):
    """A suite cannot be built from what is on disk or in its params; the message says why
    and what to do."""


def shapes_only(kinds: dict[str, tuple[str, int | None, str]],
                input_shapes: dict[str, tuple[int, ...]]
                ) -> tuple[list[TaskSpec], dict[str, tuple[int, ...]]]:
    """A suite's `describe` answer: {task: (kind, classes, input key)} and the input shapes,
    for sizing a model (mtl_core.limits) without reading or generating any data."""
    tasks = [TaskSpec(name, kind, num_classes=classes, input=key)  # type: ignore[arg-type]
             for name, (kind, classes, key) in kinds.items()]
    return tasks, dict(input_shapes)
