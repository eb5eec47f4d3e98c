"""Vision suites with localisation and per-pixel tasks: `digit_boxes` and `scenes`.

digit_boxes: MNIST digits resized to a random size and placed at a random position on a
larger canvas (64×64 by default); `digit` is the class of the first digit and `box` its
tight box (the ink's extent) as normalised [x0, y0, x1, y1]. Extra digits (`n_digits` > 1)
are distractors of independent sizes and places; the target is drawn last (on top of them),
so it is the one that is never covered.

scenes: generated images of circles, squares and triangles in random colours at random
depths. Shapes are drawn far to near (painter's order), so nearer shapes occlude farther
ones; a shape's size and brightness fall with its depth (perspective and haze), which is
what makes depth readable from a single image. Tasks: `segmentation` (per pixel: background,
circle, square, triangle), `depth` (per pixel, in scene units; the background is at
`FAR`), and with `count: true` the number of shapes.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import Field, ValidationInfo, field_validator
from torch import Tensor

from mtl_core.data import SUITES
from mtl_core.data.base import Split, SuiteData, TaskSpec
from mtl_core.data.mnist import DIGIT_NAMES, MnistParams, _load, _normalize
from mtl_core.registry import Params

DIGIT = 28  # MNIST's side
INK = 64  # pixel value above which a resized digit's pixel counts as ink (for its box)


# --- digit_boxes ----------------------------------------------------------------------------


class DigitBoxesParams(MnistParams):
    n_train: int = Field(5_000, ge=0, le=60_000, description=(
        "Training images to use, picked at random; 0 uses all 60,000."))
    n_test: int = Field(1_000, ge=0, le=10_000, description=(
        "Test images to use, picked at random; 0 uses all 10,000."))
    min_size: int = Field(16, ge=8, le=256, description=(
        "Smallest side in pixels a digit is resized to."))
    max_size: int = Field(32, ge=8, le=256, description=(
        "Largest side in pixels a digit is resized to."))
    canvas: int = Field(64, ge=8, le=256, description=(
        "Side of the square image the digits are placed on; at least max_size."))
    n_digits: int = Field(1, ge=1, le=4, description=(
        "Digits per image; the first (drawn on top) is the one to classify and locate."))

    @field_validator("max_size")
    @classmethod
    def _sizes(cls, value: int, info: ValidationInfo) -> int:
        low = info.data.get("min_size")
        if low is not None and value < low:
            raise ValueError(f"max_size must be at least min_size ({low}); got {value}")
        return value

    @field_validator("canvas")
    @classmethod
    def _fits(cls, value: int, info: ValidationInfo) -> int:
        top = info.data.get("max_size")
        if top is not None and value < top:
            raise ValueError(f"the canvas must be at least as large as the largest digit "
                             f"(max_size {top} px); got {value}")
        return value


def _resized(digits: Tensor, size: int) -> Tensor:
    """uint8 (n, 28, 28) -> uint8 (n, size, size), bilinear (antialiased when shrinking)."""
    out = F.interpolate(digits[:, None].float(), size=(size, size), mode="bilinear",
                        align_corners=False, antialias=size < DIGIT)
    return out[:, 0].round().clamp(0, 255).to(torch.uint8)


def _place(images: Tensor, params: DigitBoxesParams, g: torch.Generator
           ) -> tuple[Tensor, Tensor]:
    """Canvases (N, C, C) uint8 and the first digit's box (N, 4) normalised. Digit k of image
    i is images[(i + k * stride) % N]; digits are drawn last to first, so the target (the
    first) ends on top."""
    n, c = len(images), params.canvas
    canvas = torch.zeros(n, c, c, dtype=torch.uint8)
    boxes = torch.zeros(n, 4)
    stride = max(1, n // params.n_digits)
    for k in reversed(range(params.n_digits)):
        sizes = torch.randint(params.min_size, params.max_size + 1, (n,), generator=g)
        corners = (torch.rand(n, 2, generator=g) * (c - sizes + 1)[:, None]).floor().long()
        source = images[(torch.arange(n) + k * stride) % n]
        for size in sizes.unique().tolist():  # one resize per distinct size
            rows = (sizes == size).nonzero().flatten()
            resized = _resized(source[rows], size)
            for j, i in enumerate(rows.tolist()):
                y, x = corners[i].tolist()
                patch = canvas[i, y:y + size, x:x + size]
                canvas[i, y:y + size, x:x + size] = torch.maximum(patch, resized[j])
                if k == 0:
                    ink = resized[j] > INK
                    ys, xs = ink.any(1).nonzero().flatten(), ink.any(0).nonzero().flatten()
                    if len(ys) == 0:  # an empty digit: its whole square
                        ys, xs = torch.tensor([0, size - 1]), torch.tensor([0, size - 1])
                    boxes[i] = torch.tensor([x + xs[0], y + ys[0], x + xs[-1] + 1,
                                             y + ys[-1] + 1], dtype=torch.float32) / c
    return canvas, boxes


def _digit_boxes_tasks() -> list[TaskSpec]:
    return [
        TaskSpec("digit", "classification", num_classes=10, class_names=DIGIT_NAMES,
                 description="which digit (the first one)"),
        TaskSpec("box", "box", description="where it is: its box [x0, y0, x1, y1] / canvas"),
    ]


def _digit_boxes_shapes(params: DigitBoxesParams
                        ) -> tuple[list[TaskSpec], dict[str, tuple[int, ...]]]:
    """What the params promise, without MNIST: sizes the model at submit (mtl_core.limits)."""
    return _digit_boxes_tasks(), {"x": (1, params.canvas, params.canvas)}


@SUITES.register(
    "digit_boxes",
    "A handwritten digit somewhere on a larger canvas: say which digit it is and draw its box.",
    params=DigitBoxesParams, task_names=lambda p: ["digit", "box"], input_kind="image",
    reads_files=True, describe=_digit_boxes_shapes,
)
def build_digit_boxes(params: DigitBoxesParams, *, seed: int, data_dir: Path) -> SuiteData:
    (train_x, train_y), (test_x, test_y) = _load(params, data_dir, seed)
    g = torch.Generator().manual_seed(seed + 1)  # independent of the subsampling stream

    def split(images: Tensor, labels: Tensor) -> Split:
        canvas, boxes = _place(images, params, g)
        return Split({"x": _normalize(canvas, "MNIST")}, {"digit": labels, "box": boxes})

    tasks, input_shapes = _digit_boxes_shapes(params)
    train = split(train_x, train_y)
    return SuiteData(
        suite="digit_boxes", tasks=tasks, train=train, val=train, test=split(test_x, test_y),
        input_shapes=input_shapes, input_kind="image",
    )


# --- scenes ---------------------------------------------------------------------------------

SHAPE_NAMES = ["background", "circle", "square", "triangle"]
NEAR, FAR = 1.0, 4.0  # shapes' depth range; the background sits at FAR + 1
BACKGROUND_DEPTH = FAR + 1.0


class ScenesParams(Params):
    n_samples: int = Field(2_000, ge=10, le=50_000, description=(
        "Training scenes to generate."))
    n_test: int = Field(400, ge=10, le=10_000, description="Test scenes to generate.")
    size: int = Field(48, ge=16, le=128, description="Side of each image in pixels.")
    max_shapes: int = Field(3, ge=1, le=6, description=(
        "Most shapes per scene (each scene has 1 to this many)."))
    count: bool = Field(False, description=(
        "Add a third task: how many shapes the scene has (classification)."))


def make_scenes(n: int, params: ScenesParams, g: torch.Generator
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(images (n, 3, S, S) in [0, 1], class maps (n, S, S) int64, depth maps (n, S, S),
    shape counts (n,) int64)."""
    s, m = params.size, params.max_shapes
    counts = torch.randint(1, m + 1, (n,), generator=g)
    active = torch.arange(m)[None, :] < counts[:, None]  # (n, m)
    kind = torch.randint(1, 4, (n, m), generator=g)
    depth = NEAR + (FAR - NEAR) * torch.rand(n, m, generator=g)
    depth = torch.where(active, depth, torch.full_like(depth, float("inf")))
    # Far to near: the painter's algorithm gives the occlusion.
    order = depth.argsort(dim=1, descending=True)
    kind, depth, active = (t.gather(1, order) for t in (kind, depth, active))
    # perspective (softened so far shapes stay a few pixels wide)
    radius = s * (0.24 / depth ** 0.6) * (0.8 + 0.4 * torch.rand(n, m, generator=g))
    centre = torch.rand(n, m, 2, generator=g) * s
    colour = 0.35 + 0.65 * torch.rand(n, m, 3, generator=g)
    haze = (1.15 - 0.25 * depth.clamp(max=FAR)).clamp(0.2, 1.0)  # farther = dimmer

    yy, xx = torch.meshgrid(torch.arange(s) + 0.5, torch.arange(s) + 0.5, indexing="ij")
    image = 0.05 + 0.05 * torch.rand(n, 3, s, s, generator=g)
    classes = torch.zeros(n, s, s, dtype=torch.long)
    depth_map = torch.full((n, s, s), BACKGROUND_DEPTH)
    for k in range(m):
        cx, cy = centre[:, k, 0, None, None], centre[:, k, 1, None, None]
        r = radius[:, k, None, None]
        dx, dy = xx[None] - cx, yy[None] - cy
        circle = dx ** 2 + dy ** 2 <= r ** 2
        square = (dx.abs() <= 0.85 * r) & (dy.abs() <= 0.85 * r)
        triangle = (dy <= r) & (dx.abs() <= (dy + r) / 2)  # apex up, base at cy + r
        kk = kind[:, k, None, None]
        mask = torch.where(kk == 1, circle, torch.where(kk == 2, square, triangle))
        mask &= active[:, k, None, None]
        classes = torch.where(mask, kk, classes)
        depth_map = torch.where(mask, depth[:, k, None, None], depth_map)
        paint = (colour[:, k] * haze[:, k, None])[:, :, None, None]
        image = torch.where(mask[:, None], paint.expand(-1, -1, s, s), image)
    return image, classes, depth_map, counts


def _scenes_shapes(params: ScenesParams) -> tuple[list[TaskSpec], dict[str, tuple[int, ...]]]:
    """Task specs (with the dense tasks' out_size) and input shapes, without generating a
    scene: sizes the model at submit (mtl_core.limits) and draws the Train page's diagram."""
    size = (params.size, params.size)
    tasks = [
        TaskSpec("segmentation", "dense_classification", num_classes=len(SHAPE_NAMES),
                 class_names=SHAPE_NAMES, out_size=size,
                 description="which shape each pixel belongs to"),
        TaskSpec("depth", "dense_regression", out_size=size,
                 description=f"how far each pixel is ({NEAR:g}–{FAR:g}; background "
                             f"{BACKGROUND_DEPTH:g})"),
    ]
    if params.count:
        tasks.append(TaskSpec("count", "classification", num_classes=params.max_shapes + 1,
                              class_names=[str(i) for i in range(params.max_shapes + 1)],
                              description="how many shapes"))
    return tasks, {"x": (3, params.size, params.size)}


@SUITES.register(
    "scenes",
    "Generated scenes of overlapping shapes: label every pixel (which shape) and say how far "
    "away it is.",
    params=ScenesParams,
    task_names=lambda p: ["segmentation", "depth"] + (["count"] if p.count else []),
    input_kind="image", describe=_scenes_shapes,
)
def build_scenes(params: ScenesParams, *, seed: int, data_dir: Path) -> SuiteData:
    g = torch.Generator().manual_seed(seed)

    def split(n: int) -> Split:
        image, classes, depth, counts = make_scenes(n, params, g)
        targets = {"segmentation": classes, "depth": depth}
        if params.count:
            targets["count"] = counts
        return Split({"x": (image - 0.25) / 0.25}, targets)

    tasks, input_shapes = _scenes_shapes(params)
    train = split(params.n_samples)
    return SuiteData(
        suite="scenes", tasks=tasks, train=train, val=train, test=split(params.n_test),
        input_shapes=input_shapes, input_kind="image",
    )
