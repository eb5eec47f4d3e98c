"""Plotly figures of the gradient geometry page: contours in parameter space with the Pareto
set, each method's paths and the update arrows at a picked point; and the same paths in loss
space next to the Pareto front."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from mtl_core.geometry import Path, PointView, Problem, Surface

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b",
           "#e377c2", "#7f7f7f", "#bcbd22"]
MAX_POINTS = 1500  # per trace (Plotly stays responsive)
ARROW_FRACTION = 0.12  # the longest arrow spans this share of the plot's width


def colour(methods: list[str], method: str) -> str:
    return PALETTE[methods.index(method) % len(PALETTE)]


def _thin(points: np.ndarray) -> np.ndarray:
    if len(points) <= MAX_POINTS:
        return points
    idx = np.unique(np.r_[np.linspace(0, len(points) - 1, MAX_POINTS).astype(int),
                          len(points) - 1])
    return points[idx]


def landscape(problem: Problem, surf: Surface, shown: str, weights: tuple[float, float],
              pareto: np.ndarray, paths: list[Path], methods: list[str],
              view: PointView | None) -> go.Figure:
    """`shown`: "sum" (the weighted sum w1·f1 + w2·f2), "task1" or "task2"."""
    z = {"task1": surf.losses[0], "task2": surf.losses[1],
         "sum": weights[0] * surf.losses[0] + weights[1] * surf.losses[1]}[shown]
    fig = go.Figure()
    fig.add_trace(go.Contour(x=surf.xs, y=surf.ys, z=z, ncontours=30, colorscale="Viridis",
                             opacity=0.75, name=shown, showscale=True,
                             contours={"coloring": "heatmap"}, hoverinfo="skip"))
    if len(pareto):
        p = _thin(pareto)
        fig.add_trace(go.Scatter(x=p[:, 0], y=p[:, 1], mode="markers", name="Pareto set",
                                 marker={"color": "lightgray", "size": 4}))
    seen: set[str] = set()
    for path in paths:
        pts = _thin(path.points)
        c = colour(methods, path.method)
        _method_line(fig, pts, path.method, seen, {"color": c, "width": 2})
        fig.add_trace(go.Scatter(x=[path.start[0], path.end[0]], y=[path.start[1], path.end[1]],
                                 mode="markers", legendgroup=path.method, showlegend=False,
                                 marker={"color": ["black", c], "symbol": ["circle", "x"],
                                         "size": [9, 11]}))
    if view is not None:
        _arrows(fig, problem, view, methods)
    (x0, x1), (y0, y1) = problem.bounds
    fig.update_layout(height=620, margin={"l": 10, "r": 10, "t": 30, "b": 10},
                      xaxis={"range": [x0, x1], "title": "x₁"},
                      yaxis={"range": [y0, y1], "title": "x₂", "scaleanchor": "x"},
                      legend={"orientation": "h", "y": -0.12})
    return fig


def _method_line(fig: go.Figure, points: np.ndarray, method: str, seen: set[str],
                 line: dict) -> None:
    """One method's path as a line; the legend names each method once (`seen`)."""
    fig.add_trace(go.Scatter(x=points[:, 0], y=points[:, 1], mode="lines", name=method,
                             legendgroup=method, showlegend=method not in seen, line=line))
    seen.add(method)


def _arrows(fig: go.Figure, problem: Problem, view: PointView, methods: list[str]) -> None:
    """Each task's descent direction (−gradient) and each method's update at the point; the
    lengths are scaled together so the longest spans ARROW_FRACTION of the plot."""
    vectors = [(f"−∇f{t + 1}", -view.task_grads[t], "white") for t in range(2)]
    vectors += [(m, u, colour(methods, m)) for m, u in view.updates.items()]
    px, py = view.point
    fig.add_trace(go.Scatter(x=[px], y=[py], mode="markers", name="picked point",
                             marker={"color": "white", "size": 10, "symbol": "diamond",
                                     "line": {"color": "black", "width": 1}}))
    longest = max((np.linalg.norm(v) for _, v, _ in vectors), default=0.0)
    if longest == 0:  # a flat point: nothing to draw but the point
        return
    width = problem.bounds[0][1] - problem.bounds[0][0]
    scale = ARROW_FRACTION * width / longest
    for label, v, c in vectors:
        fig.add_annotation(x=px + scale * v[0], y=py + scale * v[1], ax=px, ay=py,
                           xref="x", yref="y", axref="x", ayref="y", showarrow=True,
                           arrowhead=3, arrowwidth=2.5, arrowcolor=c, text=label,
                           font={"color": c}, bgcolor="rgba(0,0,0,0.4)")


def loss_space(problem: Problem, front: np.ndarray, paths: list[Path], methods: list[str]
               ) -> go.Figure:
    """The paths as (f1, f2) pairs, with the Pareto front (the image of the Pareto set)."""
    fig = go.Figure()
    if len(front):
        f = _thin(front[np.argsort(front[:, 0])])
        fig.add_trace(go.Scatter(x=f[:, 0], y=f[:, 1], mode="markers", name="Pareto front",
                                 marker={"color": "gray", "size": 4}))
    seen: set[str] = set()
    for path in paths:
        ls = _thin(path.losses)
        c = colour(methods, path.method)
        _method_line(fig, ls, path.method, seen, {"color": c})
        fig.add_trace(go.Scatter(x=[ls[-1, 0]], y=[ls[-1, 1]], mode="markers",
                                 legendgroup=path.method, showlegend=False,
                                 marker={"color": c, "symbol": "x", "size": 10}))
    fig.update_layout(height=420, margin={"l": 10, "r": 10, "t": 30, "b": 10},
                      xaxis={"title": "task 1 loss", "type": "log"},
                      yaxis={"title": "task 2 loss", "type": "log"})
    return fig
