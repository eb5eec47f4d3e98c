"""Pictures of the vision task kinds: boxes drawn on probe images, and true vs predicted
per-pixel maps (segmentation masks, depth maps). Pure functions, like ui.charts."""
from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ui.text import plot_text

TRUE_BOX, PRED_BOX = "#1a7f37", "#d6336c"  # green = truth, magenta = the model's box
MASK_COLOURS = ("#222222", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
                "#e377c2")
DENSE_SAMPLES = 6  # probe samples per map figure


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two boxes [x0, y0, x1, y1]."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = (max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
            + max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1]))
    union = area - inter
    return inter / union if union > 0 else 0.0


def _rect(box: Sequence[float], width: int, height: int, colour: str, cls: str,
          dash: str = "") -> str:
    x0, y0, x1, y1 = (float(v) for v in box)
    style = f' stroke-dasharray="{dash}"' if dash else ""
    return (f'<rect class="{cls}" x="{x0 * width:.2f}" y="{y0 * height:.2f}" '
            f'width="{max(0.0, x1 - x0) * width:.2f}" height="{max(0.0, y1 - y0) * height:.2f}" '
            f'fill="none" stroke="{colour}" stroke-width="{max(1.0, width / 48):.2f}"{style}/>')


def boxes_svg(src: str, boxes: Sequence[tuple[str, Any, Any]], size: tuple[int, int]) -> str:
    """The image `src` (a data: URL) with each box task's true box (green) and predicted box
    (magenta, dashed) on top, as inline SVG in the image's own pixel coordinates."""
    height, width = size
    rects = []
    for _task, true, pred in boxes:
        if true is not None:
            rects.append(_rect(true, width, height, TRUE_BOX, "mtl-box-true"))
        if pred is not None:
            rects.append(_rect(pred, width, height, PRED_BOX, "mtl-box-pred",
                               dash=f"{max(1, width // 24)}"))
    title = html.escape(", ".join(task for task, *_ in boxes))
    return (f'<svg viewBox="0 0 {width} {height}" style="width:100%;border-radius:4px" '
            f'xmlns="http://www.w3.org/2000/svg"><title>{title}: green true, magenta '
            f'predicted</title><image href="{src}" width="{width}" height="{height}" '
            f'style="image-rendering:pixelated"/>{"".join(rects)}</svg>')


def _class_scale(k: int) -> list[list[Any]]:
    scale: list[list[Any]] = []
    for i in range(k):
        colour = MASK_COLOURS[i % len(MASK_COLOURS)]
        scale += [[i / k, colour], [(i + 1) / k, colour]]
    return scale


def dense_figure(targets: Sequence[Any], outputs: Sequence[Any] | None, task: str, kind: str,
                 class_names: Sequence[str] | None = None, n: int = DENSE_SAMPLES,
                 num_classes: int | None = None) -> go.Figure:
    """True (top row) and predicted (bottom row) maps of the first `n` probe samples: class
    maps in flat colours (one per class), value maps (depth) on one shared scale, near =
    bright."""
    outputs = outputs or []
    k = min(n, len(targets))
    fig = make_subplots(rows=2, cols=max(1, k), horizontal_spacing=0.01, vertical_spacing=0.06,
                        row_titles=["true", "predicted"])
    true_maps = [np.asarray(t, dtype=float) for t in targets[:k]]
    pred_maps = [np.asarray(p, dtype=float) for p in outputs[:k]]
    if kind == "dense_classification":
        classes = num_classes or len(class_names or []) or int(
            max([m.max() for m in true_maps + pred_maps if m.size] + [1])) + 1
        common: dict[str, Any] = dict(zmin=-0.5, zmax=classes - 0.5,
                                      colorscale=_class_scale(classes))
        bar: dict[str, Any] = {"title": {"text": "class"}, "tickvals": list(range(classes))}
        if class_names:
            bar["ticktext"] = [plot_text(c) for c in list(class_names)[:classes]]
    else:
        values = np.concatenate([m.ravel() for m in true_maps + pred_maps]) if k else np.zeros(1)
        common = dict(zmin=float(values.min()), zmax=float(values.max()),
                      colorscale="Viridis", reversescale=True)  # near = bright
        bar = {"title": {"text": "depth"}}
    for row, maps in ((1, true_maps), (2, pred_maps)):
        for col, z in enumerate(maps, start=1):
            fig.add_trace(go.Heatmap(z=z, showscale=row == 1 and col == 1, colorbar=bar,
                                     hovertemplate="x %{x}, y %{y}: %{z}<extra></extra>",
                                     **common), row=row, col=col)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, autorange="reversed")
    for i in range(1, 2 * max(1, k) + 1):  # square pixels in every panel
        suffix = "" if i == 1 else str(i)
        fig.layout[f"yaxis{suffix}"].scaleanchor = f"x{suffix}"
    what = "segmentation masks" if kind == "dense_classification" else "depth maps"
    fig.update_layout(title=f"{plot_text(task)}: {what}, true vs predicted", height=340,
                      margin={"l": 10, "r": 10, "t": 50, "b": 10}, uirevision=f"dense:{task}")
    return fig


def dense_tasks(info: Mapping[str, Mapping[str, Any]], tasks: Sequence[str]) -> list[str]:
    """The per-pixel tasks among `tasks` (info: charts.probe_tasks)."""
    return [t for t in tasks if (info.get(t) or {}).get("kind") in
            ("dense_classification", "dense_regression")]
