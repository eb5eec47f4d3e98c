"""The head of a per-pixel task: a small upsampling decoder on the shared features.

It reads whatever the trunk ends with: feature maps (C, h, w) go through a 1×1 conv to the
decoder width; a vector (an mlp trunk, dense layers after a cnn, mmoe's mixed experts) is
mapped by a Linear to a coarse (width, s, s) map first. Then each step doubles the size
(bilinear upsampling + 3×3 conv + activation, halving the width down to 8) until the map
is at least the task's size, and a 1×1 conv gives the outputs per pixel, resized to exactly
(H, W). Output: (B, C, H, W) logits for dense classification, (B, H, W) for dense regression.
The decoder width is the first of the head's `layers` (32 when empty).
"""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from mtl_core.config import HeadConfig
from mtl_core.data.base import TaskSpec
from mtl_core.models.blocks import ACTIVATIONS, activation

DEFAULT_WIDTH = 32
MIN_WIDTH = 8


class _Step(nn.Module):
    def __init__(self, layers: list[nn.Module], label: str) -> None:
        super().__init__()
        self.net = nn.Sequential(*layers)
        self.label = label

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class _ToMap(nn.Module):
    """A vector (B, d) to a coarse map (B, width, s, s)."""

    def __init__(self, d_in: int, width: int, side: int, act: str) -> None:
        super().__init__()
        self.width, self.side = width, side
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(d_in, width * side * side),
                                 activation(act))
        self.label = f"Linear {d_in}→{width}×{side}×{side} · {ACTIVATIONS[act][1]}"

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).view(x.shape[0], self.width, self.side, self.side)


class _Out(nn.Module):
    def __init__(self, width: int, channels: int, size: tuple[int, int], squeeze: bool,
                 what: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, channels, kernel_size=1)
        self.size, self.squeeze = size, squeeze
        self.label = f"Conv {width}→{channels} 1×1 · {what} {size[0]}×{size[1]}"

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return x.squeeze(1) if self.squeeze else x


class DenseHead(nn.Module):
    def __init__(self, cfg: HeadConfig, in_shape: tuple[int, ...], task: TaskSpec) -> None:
        super().__init__()
        if task.out_size is None:
            raise ValueError(f"task {task.name!r} is per-pixel but has no out_size")
        height, width_px = task.out_size
        widths = cfg.layers_for(task.name)
        width = widths[0] if widths else DEFAULT_WIDTH
        act = cfg.activation
        steps: list[nn.Module] = []
        if len(in_shape) == 3:
            steps.append(_Step([nn.Conv2d(in_shape[0], width, 1), activation(act)],
                               f"Conv {in_shape[0]}→{width} 1×1 · {ACTIVATIONS[act][1]}"))
            side = min(in_shape[1:])
        else:
            side = max(1, min(height, width_px) // 8)
            steps.append(_ToMap(math.prod(in_shape), width, side, act))
        while side < max(height, width_px):
            nxt = max(MIN_WIDTH, width // 2)
            steps.append(_Step([nn.Upsample(scale_factor=2, mode="bilinear",
                                            align_corners=False),
                                nn.Conv2d(width, nxt, 3, padding=1), activation(act)],
                               f"Upsample ×2 · Conv {width}→{nxt} 3×3 · "
                               f"{ACTIVATIONS[act][1]}"))
            width, side = nxt, side * 2
        dense_cls = task.kind == "dense_classification"
        steps.append(_Out(width, task.output_dim, (height, width_px), squeeze=not dense_cls,
                          what="logits per pixel" if dense_cls else "value per pixel"))
        self.stages = nn.ModuleList(steps)

    def forward(self, x: Tensor) -> Tensor:
        for stage in self.stages:
            x = stage(x)
        return x
