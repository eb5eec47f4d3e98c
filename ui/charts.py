"""Pure chart functions: long-format metric rows and snapshot payloads in, Plotly figures out.

Nothing here touches Streamlit or the store, so every figure can be unit-tested on a
hand-made DataFrame. The metrics frame has the store's long format: one row per logged value
with columns `step, epoch, split, task, name, value` (extra columns such as `id` are ignored).

Conventions shared by the curve figures:
- one trace per (task, split) that has data, named "task" or "task · split"; train lines are
  solid, val/test dashed with markers (they are sparse);
- `smoothing` is a TensorBoard-style debiased EMA weight in [0, 1) applied to the dense
  per-step series (train and diag); when it is > 0 the raw series is drawn faintly underneath
  as an extra trace with `showlegend=False` (TensorBoard's look);
- every trace is downsampled to at most `max_points` points (first, last and extremes kept);
- `layout.uirevision` is fixed per figure so a refresh keeps the user's zoom.

Names (tasks, runs, classes) come in as they were chosen and go through `ui.text.plot_text`
where they enter a figure (trace names, titles, axis categories), so they are drawn as text.
"""
from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ui.text import plot_text

MAX_POINTS = 1500
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")
TOTAL_COLOR = "#222222"
# Playground-like diverging scale: orange (0 / low) .. light grey .. blue (1 / high).
BOUNDARY_SCALE = [[0.0, "#f59322"], [0.5, "#e8eaeb"], [1.0, "#0877bd"]]
DENSE_SPLITS = ("train", "diag")  # logged every `log_every` steps: the noisy ones
SPLIT_DASH = {"train": "solid", "diag": "solid", "val": "dash", "test": "dot"}
PAIR_SEP = "|"
DENSE_KINDS = ("dense_classification", "dense_regression")
UNIT_METRICS = ("accuracy", "iou", "acc50", "miou", "pixel_acc")  # shares: drawn on [0, 1]


# ---------------------------------------------------------------- series helpers


def ema(values: Sequence[float] | np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard's debiased exponential moving average.

    s_t = w * s_{t-1} + (1 - w) * v_t, started at 0 and divided by (1 - w^n) where n counts
    the finite values seen so far, so the first point is not dragged towards 0. Non-finite
    values do not enter the average; they keep the previous smoothed value (NaN before any).
    """
    v = np.asarray(values, dtype=float)
    if weight <= 0 or v.size == 0:
        return v.copy()
    if not 0 <= weight < 1:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    # pandas' adjusted EWM is exactly this debiased form (sum of w^i x_{t-i} / sum of w^i);
    # ignore_na=True counts only finite values, as TensorBoard does. Vectorised: no Python loop.
    finite = np.where(np.isfinite(v), v, np.nan)
    return pd.Series(finite).ewm(alpha=1 - weight, adjust=True, ignore_na=True).mean().to_numpy()


def downsample(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray,
               max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Reduce a series to at most `max_points` points, keeping its shape.

    Min-max bucketing: the first and last points are always kept, the interior is cut into
    equal buckets and each bucket keeps its lowest and highest point (in x order), so spikes
    and dips survive. Non-finite y values are dropped first (Plotly cannot draw them).
    """
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(ya)
    xa, ya = xa[keep], ya[keep]
    n = xa.size
    if n <= max_points:
        return xa, ya
    if max_points < 4:
        idx = np.unique(np.linspace(0, n - 1, max(max_points, 2)).round().astype(int))
        return xa[idx], ya[idx]
    n_buckets = (max_points - 2) // 2
    interior = np.arange(1, n - 1)
    bucket = (interior - 1) * n_buckets // (n - 2)
    # Sort interior points by (bucket, value): each bucket's first is its min, last its max.
    order = interior[np.lexsort((ya[interior], bucket))]
    sorted_bucket = bucket[order - 1]
    starts = np.flatnonzero(np.r_[True, sorted_bucket[1:] != sorted_bucket[:-1]])
    ends = np.r_[starts[1:], order.size] - 1
    idx = np.unique(np.concatenate(([0], order[starts], order[ends], [n - 1])))
    return xa[idx], ya[idx]


def has_replicas(df: pd.DataFrame | None) -> bool:
    """Whether a metrics frame holds several seeds of a stacked run (`replicas: K`)."""
    return (df is not None and not df.empty and "replica" in df.columns
            and df["replica"].nunique() > 1)


def series(df: pd.DataFrame, split: str, task: str, name: str,
           replica: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Steps and values of one logged series, in step order. A stacked run: the mean over
    its replicas at each step (or the one `replica`)."""
    if df is None or df.empty:
        return np.array([]), np.array([])
    sel = df[(df["split"] == split) & (df["task"] == task) & (df["name"] == name)]
    if "replica" in sel.columns:
        if replica is not None:
            sel = sel[sel["replica"] == replica]
        elif sel["replica"].nunique() > 1:
            mean = sel.groupby("step", sort=True)["value"].mean()
            return mean.index.to_numpy(dtype=float), mean.to_numpy(dtype=float)
    sel = sel.sort_values("step", kind="stable")
    return sel["step"].to_numpy(dtype=float), sel["value"].to_numpy(dtype=float)


# How a stacked run's spread over seeds is drawn around its mean curve.
BANDS = {"sd": "mean ± 1 sd", "range": "min – max", "lines": "every seed", "none": "mean only"}


def spread(df: pd.DataFrame, split: str, task: str, name: str,
           band: str = "sd") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps and the band's lower and upper edge over the replicas ("sd" or "range")."""
    sel = df[(df["split"] == split) & (df["task"] == task) & (df["name"] == name)]
    grouped = sel.groupby("step", sort=True)["value"]
    if band == "range":
        low, high = grouped.min(), grouped.max()
    else:
        mean, sd = grouped.mean(), grouped.std(ddof=1).fillna(0.0)
        low, high = mean - sd, mean + sd
    return low.index.to_numpy(dtype=float), low.to_numpy(dtype=float), high.to_numpy(dtype=float)


def _faint(color: str, alpha: float) -> str:
    """An rgba() of a #rrggbb colour."""
    value = color.lstrip("#")
    r, g, b = (int(value[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def add_band(fig: go.Figure, df: pd.DataFrame, split: str, task: str, name: str, *,
             label: str, color: str, band: str, smoothing: float, log_y: bool,
             max_points: int) -> None:
    """The spread of a stacked run's seeds under its mean curve: a filled band (±1 sd or
    min–max), or every replica as a thin line."""
    if band == "none" or not has_replicas(df):
        return
    dash = SPLIT_DASH.get(split, "dash")
    smooth = smoothing if split in DENSE_SPLITS else 0.0
    if band == "lines":
        for replica in sorted(pd.unique(df["replica"])):
            x, y = series(df, split, task, name, replica=int(replica))
            if log_y:
                x, y = x[y > 0], y[y > 0]
            if x.size == 0:
                continue
            x, y = downsample(x, ema(y, smooth) if smooth > 0 else y, max_points)
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines",
                                     name=plot_text(f"{label} · seed {replica}"),
                                     legendgroup=label, showlegend=False, opacity=0.45,
                                     line={"color": color, "width": 0.8, "dash": dash}))
        return
    x, low, high = spread(df, split, task, name, band)
    if smooth > 0:
        low, high = ema(low, smooth), ema(high, smooth)
    if log_y:
        keep = low > 0
        x, low, high = x[keep], low[keep], high[keep]
    if x.size == 0:
        return
    _, low = downsample(x, low, max_points)
    x, high = downsample(x, high, max_points)
    fig.add_trace(go.Scatter(x=np.r_[x, x[::-1]], y=np.r_[high, low[::-1]], mode="lines",
                             fill="toself", fillcolor=_faint(color, 0.18), line={"width": 0},
                             name=plot_text(f"{label} ({BANDS[band]})"), legendgroup=label,
                             showlegend=False, hoverinfo="skip"))


def task_colors(tasks: Iterable[str]) -> dict[str, str]:
    """A stable colour per task (in the given order) so every chart agrees; "total" is dark."""
    colors: dict[str, str] = {}
    i = 0
    for task in tasks:
        if task == "total":
            colors[task] = TOTAL_COLOR
        elif task not in colors:
            colors[task] = PALETTE[i % len(PALETTE)]
            i += 1
    return colors


def tasks_in(df: pd.DataFrame) -> list[str]:
    """Task names in a metrics frame, in first-logged order, without pairs and "total"."""
    if df is None or df.empty:
        return []
    names = pd.unique(df["task"])
    return [t for t in names if t != "total" and PAIR_SEP not in str(t)]


def pairs_in(df: pd.DataFrame) -> list[str]:
    """Task pairs ("a|b") that have cosine rows, in first-logged order."""
    if df is None or df.empty:
        return []
    sel = df[(df["split"] == "diag") & (df["name"] == "cosine")]
    return [p for p in pd.unique(sel["task"]) if PAIR_SEP in str(p)]


def metric_names(df: pd.DataFrame, splits: Sequence[str] = ("val", "test")) -> list[str]:
    """Evaluation metric names present (loss excluded), most teachable first."""
    if df is None or df.empty:
        return []
    present = set(df.loc[df["split"].isin(splits), "name"]) - {"loss"}
    preferred = ["accuracy", "iou", "acc50", "miou", "pixel_acc", "r2", "abs_rel", "rmse",
                 "mse", "mae"]
    return [m for m in preferred if m in present] + sorted(present - set(preferred))


# ---------------------------------------------------------------- curve figures


def empty_figure(message: str, title: str = "") -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=plot_text(message), showarrow=False, x=0.5, y=0.5, xref="paper",
                       yref="paper", font={"size": 14, "color": "#888"})
    fig.update_layout(title=plot_text(title) if title else None,
                      xaxis={"visible": False}, yaxis={"visible": False},
                      height=320, margin={"l": 40, "r": 20, "t": 50, "b": 40})
    return fig


def _layout(fig: go.Figure, title: str, y_title: str, revision: str, log_y: bool = False,
            height: int = 360) -> go.Figure:
    fig.update_layout(
        title=plot_text(title), height=height, uirevision=revision, hovermode="x unified",
        margin={"l": 50, "r": 20, "t": 50, "b": 40},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "x": 0},
        xaxis_title="step", yaxis_title=plot_text(y_title),
    )
    fig.update_yaxes(type="log" if log_y else "linear")
    return fig


def add_series(fig: go.Figure, x: np.ndarray, y: np.ndarray, *, label: str, color: str,
                split: str, smoothing: float, log_y: bool, max_points: int,
                width: float = 2.0) -> None:
    """Add one series (smoothed + faint raw when smoothing, else raw) to `fig`."""
    if log_y:  # a log axis cannot show values <= 0
        keep = y > 0
        x, y = x[keep], y[keep]
    if x.size == 0:
        return
    dense = split in DENSE_SPLITS
    dash = SPLIT_DASH.get(split, "dash")
    mode = "lines" if dense and x.size > 1 else "lines+markers"
    if dense and smoothing > 0:
        rx, ry = downsample(x, y, max_points)
        fig.add_trace(go.Scatter(x=rx, y=ry, mode="lines", name=plot_text(f"{label} (raw)"),
                                 legendgroup=label, showlegend=False, hoverinfo="skip",
                                 opacity=0.25, line={"color": color, "width": 1, "dash": dash}))
        y = ema(y, smoothing)
    sx, sy = downsample(x, y, max_points)
    fig.add_trace(go.Scatter(x=sx, y=sy, mode=mode, name=plot_text(label), legendgroup=label,
                             line={"color": color, "width": width, "dash": dash},
                             marker={"size": 5}))


def curves_figure(df: pd.DataFrame, tasks: Sequence[str], name: str,
                  splits: Sequence[str] = ("train",), *, log_y: bool = False,
                  smoothing: float = 0.0, max_points: int = MAX_POINTS, title: str = "",
                  y_title: str | None = None, colors: Mapping[str, str] | None = None,
                  empty_message: str = "nothing logged yet", band: str = "sd") -> go.Figure:
    """The generic curve chart: `name` over steps for each task and split; a stacked run's
    curves are the mean over its seeds with their spread drawn as `band` (see BANDS)."""
    colors = dict(colors or task_colors(tasks))
    fig = go.Figure()
    show_split = len(splits) > 1
    if df is not None and not df.empty:
        df = df[df["name"] == name]  # one pass over the big frame, not one per trace
    for split in splits:
        for task in tasks:
            x, y = series(df, split, task, name)
            label = f"{task} · {split}" if show_split else task
            add_band(fig, df, split, task, name, label=label,
                     color=colors.get(task, TOTAL_COLOR), band=band, smoothing=smoothing,
                     log_y=log_y, max_points=max_points)
            add_series(fig, x, y, label=label, color=colors.get(task, TOTAL_COLOR),
                        split=split, smoothing=smoothing, log_y=log_y, max_points=max_points,
                        width=3.0 if task == "total" else 2.0)
    if not fig.data:
        return empty_figure(empty_message, title)
    return _layout(fig, title, y_title or name, revision=f"{title}:{name}", log_y=log_y)


def loss_figure(df: pd.DataFrame, tasks: Sequence[str],
                splits: str | Sequence[str] = ("train", "val"), *, log_y: bool = False,
                smoothing: float = 0.0, max_points: int = MAX_POINTS,
                colors: Mapping[str, str] | None = None, band: str = "sd") -> go.Figure:
    """Per-task loss curves; include "total" in `tasks` for the weighted total."""
    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    return curves_figure(df, tasks, "loss", splits, log_y=log_y, smoothing=smoothing,
                         max_points=max_points, title="Loss", y_title="loss", colors=colors,
                         empty_message="no loss logged yet", band=band)


def metric_figure(df: pd.DataFrame, tasks: Sequence[str], metric: str,
                  splits: str | Sequence[str] = ("val", "test"), *, log_y: bool = False,
                  smoothing: float = 0.0, max_points: int = MAX_POINTS,
                  colors: Mapping[str, str] | None = None, band: str = "sd") -> go.Figure:
    """One evaluation metric (accuracy, r2, mse, ...) per task; tasks without it are skipped."""
    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    if df is not None and not df.empty:  # name traces "task · test" only once a test exists
        logged = set(df.loc[df["name"] == metric, "split"])
        splits = tuple(s for s in splits if s in logged) or splits[:1]
    fig = curves_figure(df, tasks, metric, splits, log_y=log_y, smoothing=smoothing,
                        max_points=max_points, title=metric, y_title=metric, colors=colors,
                        empty_message=f"no {metric} logged yet", band=band)
    if metric in UNIT_METRICS and fig.data and not log_y:
        fig.update_yaxes(range=[0, 1.02])
    return fig


def weights_figure(df: pd.DataFrame, tasks: Sequence[str], *, smoothing: float = 0.0,
                   max_points: int = MAX_POINTS,
                   colors: Mapping[str, str] | None = None) -> go.Figure:
    """Effective task weights w_i over time (split "train", name "weight")."""
    return curves_figure(df, tasks, "weight", ("train",), smoothing=smoothing,
                         max_points=max_points, title="Effective task weights",
                         y_title="weight", colors=colors,
                         empty_message="no task weights logged (this method may not have any)")


def grad_norm_figure(df: pd.DataFrame, tasks: Sequence[str], *, log_y: bool = False,
                     smoothing: float = 0.0, max_points: int = MAX_POINTS,
                     colors: Mapping[str, str] | None = None) -> go.Figure:
    """Per-task gradient norm on the shared parameters (split "diag")."""
    return curves_figure(df, tasks, "grad_norm", ("diag",), log_y=log_y, smoothing=smoothing,
                         max_points=max_points, title="Gradient norm on shared parameters",
                         y_title="‖∇ L_i‖", colors=colors,
                         empty_message="no gradient norms logged yet")


def update_norm_figure(df: pd.DataFrame, *, log_y: bool = False, smoothing: float = 0.0,
                       max_points: int = MAX_POINTS) -> go.Figure:
    """Norm of the combined shared update (gradient-level methods; diag/total/update_norm)."""
    return curves_figure(df, ["total"], "update_norm", ("diag",), log_y=log_y,
                         smoothing=smoothing, max_points=max_points,
                         title="Norm of the combined update", y_title="‖update‖",
                         empty_message="no combined update logged (loss-level method)")


def cosine_figure(df: pd.DataFrame, pairs: Sequence[str] | None = None, *,
                  smoothing: float = 0.0, max_points: int = MAX_POINTS) -> go.Figure:
    """Pairwise cosine of task gradients over time; below 0 the tasks pull apart (conflict)."""
    pairs = list(pairs) if pairs is not None else pairs_in(df)
    colors = {p: PALETTE[i % len(PALETTE)] for i, p in enumerate(pairs)}
    fig = curves_figure(df, pairs, "cosine", ("diag",), smoothing=smoothing,
                        max_points=max_points, title="Gradient cosine between tasks",
                        y_title="cos(∇L_i, ∇L_j)", colors=colors,
                        empty_message="no gradient cosines logged yet")
    if fig.data:
        fig.update_yaxes(range=[-1.05, 1.05])
        fig.add_hrect(y0=-1.05, y1=0, fillcolor="#d62728", opacity=0.07, line_width=0,
                      annotation_text="conflict", annotation_position="bottom left")
        fig.add_hline(y=0, line={"color": "#888", "width": 1})
    return fig


def cosine_matrix(df: pd.DataFrame, tasks: Sequence[str] | None = None,
                  step: int | None = None) -> tuple[list[str], np.ndarray, int | None]:
    """Task order, the symmetric cosine matrix (diagonal 1, NaN where unknown) and its step.

    Uses the latest step that has cosine rows, or the latest one at or before `step`.
    """
    if df is None or df.empty:
        return list(tasks or []), np.full((len(tasks or []),) * 2, np.nan), None
    sel = df[(df["split"] == "diag") & (df["name"] == "cosine")
             & df["task"].astype(str).str.contains(PAIR_SEP, regex=False)]
    if step is not None:
        sel = sel[sel["step"] <= step]
    if tasks is None:
        order: list[str] = []
        for pair in pd.unique(sel["task"]):
            for t in str(pair).split(PAIR_SEP, 1):
                if t not in order:
                    order.append(t)
        tasks = order
    tasks = list(tasks)
    mat = np.full((len(tasks), len(tasks)), np.nan)
    np.fill_diagonal(mat, 1.0)
    if sel.empty:
        return tasks, mat, None
    last = int(sel["step"].max())
    index = {t: i for i, t in enumerate(tasks)}
    for pair, value in sel[sel["step"] == last].groupby("task")["value"].last().items():
        a, b = str(pair).split(PAIR_SEP, 1)
        if a in index and b in index:
            mat[index[a], index[b]] = mat[index[b], index[a]] = value
    return tasks, mat, last


def cosine_heatmap(df: pd.DataFrame, tasks: Sequence[str] | None = None,
                   step: int | None = None) -> go.Figure:
    """Heatmap of pairwise gradient cosine at the latest (or given) diagnostic step."""
    names, mat, at = cosine_matrix(df, tasks, step)
    if at is None or len(names) < 2:
        return empty_figure("no gradient cosines logged yet", "Gradient cosine")
    text = [["" if np.isnan(v) else f"{v:.2f}" for v in row] for row in mat]
    names = [plot_text(n) for n in names]
    fig = go.Figure(go.Heatmap(z=mat, x=names, y=names, zmin=-1, zmax=1, zmid=0,
                               colorscale="RdBu", text=text, texttemplate="%{text}",
                               hovertemplate="%{y} · %{x}: %{z:.3f}<extra></extra>"))
    fig.update_layout(title=f"Gradient cosine at step {at}", height=360, uirevision="cosine-hm",
                      margin={"l": 50, "r": 20, "t": 50, "b": 40})
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category", autorange="reversed")
    return fig


# ---------------------------------------------------------------- architecture state


def matrix_heatmap(matrix: Sequence[Sequence[float]], title: str,
                   labels: Sequence[str] | None = None, x_labels: Sequence[str] | None = None,
                   colorscale: str = "Viridis") -> go.Figure:
    """A small annotated heatmap (cross-stitch mixing matrices, confusion-like tables)."""
    z = np.asarray(matrix, dtype=float)
    if z.ndim != 2:
        z = np.atleast_2d(z)
    ys = list(labels) if labels and len(labels) == z.shape[0] else list(range(z.shape[0]))
    xs = list(x_labels) if x_labels and len(x_labels) == z.shape[1] else (
        ys if z.shape[0] == z.shape[1] else list(range(z.shape[1])))
    fig = go.Figure(go.Heatmap(z=z, x=[plot_text(v) for v in xs], y=[plot_text(v) for v in ys],
                               colorscale=colorscale, texttemplate="%{z:.2f}",
                               hovertemplate="%{y} ← %{x}: %{z:.3f}<extra></extra>"))
    fig.update_layout(title=plot_text(title), height=300, uirevision=f"mat:{title}",
                      margin={"l": 50, "r": 20, "t": 50, "b": 40})
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category", autorange="reversed")
    return fig


def bars_figure(values: Mapping[str, Sequence[float]] | Sequence[Sequence[float]],
                tasks: Sequence[str] | None = None, title: str = "Gate weights",
                x_prefix: str = "expert", y_title: str = "mean gate weight") -> go.Figure:
    """Grouped bars, one bar per task in each group (MMoE: experts; MTAN: stages)."""
    if isinstance(values, Mapping):
        rows = {str(k): np.ravel(np.asarray(v, dtype=float)) for k, v in values.items()}
    else:
        arr = np.atleast_2d(np.asarray(values, dtype=float))
        names = list(tasks) if tasks and len(tasks) == arr.shape[0] else [
            f"task {i}" for i in range(arr.shape[0])]
        rows = dict(zip(names, arr, strict=True))
    colors = task_colors(tasks or rows)
    fig = go.Figure()
    for task, weights in rows.items():
        fig.add_trace(go.Bar(x=[f"{x_prefix} {i}" for i in range(weights.size)], y=weights,
                             name=plot_text(task), marker_color=colors.get(task, PALETTE[0])))
    fig.update_layout(title=plot_text(title), barmode="group", height=320,
                      uirevision=f"bars:{title}", yaxis_title=plot_text(y_title),
                      margin={"l": 50, "r": 20, "t": 50, "b": 40})
    return fig


def gates_figure(gates: Mapping[str, Sequence[float]] | Sequence[Sequence[float]],
                 tasks: Sequence[str] | None = None, title: str = "Gate weights") -> go.Figure:
    """MMoE gate weights: grouped bars, one group per expert, one bar per task."""
    return bars_figure(gates, tasks, title, "expert", "mean gate weight")


def inspect_figures(payload: Mapping[str, Any],
                    tasks: Sequence[str] | None = None) -> list[tuple[str, go.Figure]]:
    """Figures for an "inspect" snapshot, as (key, figure): cross-stitch "mixing" (a T×T
    matrix per stage, or a mapping name → matrix) as heatmaps, MMoE "gates" ({task: weight
    per expert}) and MTAN "masks" ({task: mean mask per stage}) as grouped bars."""
    figures: list[tuple[str, go.Figure]] = []
    mixing = payload.get("mixing")
    if mixing is not None:
        mats = mixing.items() if isinstance(mixing, Mapping) else (
            (f"stage {i}", m) for i, m in enumerate(mixing))
        for i, (name, mat) in enumerate(mats):
            figures.append((f"mixing{i}", matrix_heatmap(
                mat, f"Cross-stitch mixing, {name} (row: receiving task)", tasks)))
    if payload.get("gates") is not None:
        figures.append(("gates", gates_figure(payload["gates"], tasks,
                                              "MMoE gate weight per expert")))
    if payload.get("masks") is not None:
        figures.append(("masks", bars_figure(payload["masks"], tasks,
                                             "MTAN attention: mean mask per stage",
                                             "stage", "mean mask (1 = keeps all)")))
    return figures


# ---------------------------------------------------------------- prediction figures


def confusion_figure(matrix: Sequence[Sequence[float]], class_names: Sequence[str] | None = None,
                     title: str = "", normalize: bool = False) -> go.Figure:
    """Confusion matrix: rows are the true class, columns the predicted one; the title gives
    the accuracy. `normalize` shows each row as fractions of that class."""
    counts = np.asarray(matrix, dtype=float)
    k = counts.shape[0]
    names = [plot_text(c) for c in class_names] if class_names and len(class_names) == k else [
        str(i) for i in range(k)]
    total = counts.sum()
    acc = float(np.trace(counts) / total) if total else math.nan
    if normalize:
        row = counts.sum(axis=1, keepdims=True)
        z = np.divide(counts, row, out=np.zeros_like(counts), where=row > 0)
        text = [[f"{v:.2f}" for v in r] for r in z]
    else:
        z = counts
        text = [[f"{int(v)}" if float(v).is_integer() else f"{v:.2f}" for v in r] for r in z]
    fig = go.Figure(go.Heatmap(z=z, x=names, y=names, colorscale="Blues", text=text,
                               texttemplate="%{text}",
                               hovertemplate="true %{y} → predicted %{x}: %{text}<extra></extra>"))
    head = f"{plot_text(title)} — " if title else ""
    fig.update_layout(title=f"{head}accuracy {acc:.1%}" if total else plot_text(title) or None,
                      height=380, uirevision=f"cm:{title}",
                      xaxis_title="predicted", yaxis_title="true",
                      margin={"l": 60, "r": 20, "t": 50, "b": 50})
    # Category axes: class ids "0", "1" would otherwise read as numbers (ticks at 0.5 ...).
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category", autorange="reversed")
    return fig


def r2_score(true: Sequence[float], pred: Sequence[float]) -> float:
    t, p = np.asarray(true, dtype=float), np.asarray(pred, dtype=float)
    ss_tot = float(((t - t.mean()) ** 2).sum()) if t.size else 0.0
    return 1.0 - float(((t - p) ** 2).sum()) / ss_tot if ss_tot > 0 else math.nan


def scatter_figure(true: Sequence[float], pred: Sequence[float], title: str = "",
                   max_points: int = 3000, color: str = PALETTE[0]) -> go.Figure:
    """Predicted vs true for a regression task, with the y = x line; R² in the title."""
    t, p = np.asarray(true, dtype=float), np.asarray(pred, dtype=float)
    r2 = r2_score(t, p)
    if t.size > max_points:  # a deterministic thinning; the R² above uses every point
        idx = np.linspace(0, t.size - 1, max_points).round().astype(int)
        t, p = t[idx], p[idx]
    fig = go.Figure(go.Scatter(x=t, y=p, mode="markers", name="val samples",
                               marker={"size": 5, "opacity": 0.6, "color": color}))
    if t.size:
        lo = float(np.nanmin([t.min(), p.min()]))
        hi = float(np.nanmax([t.max(), p.max()]))
        fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="y = x",
                                 line={"color": "#888", "dash": "dash"}, hoverinfo="skip"))
    head = f"{plot_text(title)} — " if title else ""
    fig.update_layout(title=f"{head}R² {r2:.3f}" if not math.isnan(r2)
                      else plot_text(title) or None,
                      height=380, uirevision=f"sc:{title}", xaxis_title="true",
                      yaxis_title="predicted", showlegend=False,
                      margin={"l": 60, "r": 20, "t": 50, "b": 50})
    return fig


def grid_values(grid: Mapping[str, Any], task: str) -> np.ndarray:
    """The task's output over the grid as (len(ys), len(xs)) — rows follow y, as Plotly wants."""
    z = np.asarray(grid["values"][task], dtype=float)
    nx, ny = len(grid["xs"]), len(grid["ys"])
    if z.shape == (nx, ny) and nx != ny:
        z = z.T
    return z


def _class_scale(k: int) -> list[list[Any]]:
    """A stepped colour scale with one flat band per class id 0..k-1 (for zmin=-0.5)."""
    scale: list[list[Any]] = []
    for i in range(k):
        color = PALETTE[i % len(PALETTE)]
        scale += [[i / k, color], [(i + 1) / k, color]]
    return scale


def boundary_figure(grid: Mapping[str, Any], task: str, kind: str | None = None,
                    title: str | None = None, max_points: int = 2000) -> go.Figure:
    """A task's decision boundary (TensorFlow Playground style): its output over the plane as
    a heatmap, the data points on top coloured by their true target on the same scale.

    binary: P(class 1) on an orange-blue scale with the p = 0.5 contour; classification: the
    predicted class id in flat colour bands; regression: the predicted value.
    """
    z = grid_values(grid, task)
    finite = z[np.isfinite(z)]
    targets = (grid.get("targets") or {}).get(task)
    t = np.asarray(targets if targets is not None else [], dtype=float)
    if kind is None:  # guess: probabilities in [0, 1] read as a binary task
        in_unit = finite.size and finite.min() >= 0 and finite.max() <= 1
        kind = "binary" if in_unit else "regression"
    smooth: Any = "best"
    if kind == "binary":
        zmin, zmax, scale, bar = 0.0, 1.0, BOUNDARY_SCALE, "p(1)"
    elif kind == "classification":
        top = max([finite.max() if finite.size else 0, t.max() if t.size else 0])
        k = int(top) + 1
        zmin, zmax, scale, bar, smooth = -0.5, k - 0.5, _class_scale(k), "class", False
    else:
        both = np.concatenate([finite, t[np.isfinite(t)]])
        zmin, zmax = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
        scale, bar = BOUNDARY_SCALE, "output"
    fig = go.Figure(go.Heatmap(
        x=grid["xs"], y=grid["ys"], z=z, zmin=zmin, zmax=zmax, colorscale=scale,
        opacity=0.85, zsmooth=smooth, colorbar={"title": {"text": bar}},
        hovertemplate="x %{x:.2f}, y %{y:.2f}: %{z:.3f}<extra></extra>"))
    if kind == "binary":
        fig.add_trace(go.Contour(x=grid["xs"], y=grid["ys"], z=z, showscale=False,
                                 contours={"start": 0.5, "end": 0.5, "size": 1,
                                           "coloring": "none"},
                                 line={"color": "#333", "width": 2}, hoverinfo="skip",
                                 name="p = 0.5"))
    points = grid.get("points") or {}
    px, py = np.asarray(points.get("x", []), float), np.asarray(points.get("y", []), float)
    if px.size:
        idx = np.arange(px.size)
        if px.size > max_points:
            idx = np.linspace(0, px.size - 1, max_points).round().astype(int)
        marker: dict[str, Any] = {"size": 6, "line": {"color": "white", "width": 0.8}}
        if t.size == px.size:
            marker.update(color=t[idx], colorscale=scale, cmin=zmin, cmax=zmax)
        else:
            marker["color"] = "#333"
        fig.add_trace(go.Scatter(x=px[idx], y=py[idx], mode="markers", marker=marker,
                                 name="points",
                                 hovertemplate="true %{marker.color}<extra></extra>"))
    fig.update_layout(title=plot_text(title if title is not None else task), height=380,
                      showlegend=False,
                      uirevision=f"grid:{task}", margin={"l": 40, "r": 20, "t": 50, "b": 40})
    fig.update_xaxes(range=[min(grid["xs"]), max(grid["xs"])], constrain="domain")
    fig.update_yaxes(range=[min(grid["ys"]), max(grid["ys"])], scaleanchor="x", scaleratio=1)
    return fig


# ---------------------------------------------------------------- probe image grid


def image_src(image: Any) -> str | None:
    """A data: URL for one probe image given as a base64 PNG (with or without the data: prefix)
    or as a nested list of pixels (H×W, 1×H×W, 3×H×W or H×W×3; scaled to 0..255)."""
    if image is None:
        return None
    if isinstance(image, str):
        return image if image.startswith("data:") else f"data:image/png;base64,{image}"
    from PIL import Image  # Pillow ships with Streamlit; only imported when images are lists

    arr = np.asarray(image, dtype=float)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
    scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo)
    img = Image.fromarray((scaled * 255).round().astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def image_size(image: Any) -> tuple[int, int]:
    """(height, width) of a probe image given as nested lists (H×W or C×H×W)."""
    arr = np.asarray(image)
    return (int(arr.shape[-2]), int(arr.shape[-1])) if arr.ndim >= 2 else (1, 1)


def probe_tasks(probe: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """{task: {"kind", "class_names", "input"}} from a probe payload.

    Accepts the trainer's shape ({"tasks": {task: {kind, class_names, input, ...}}}) and the
    older contract's ({"task_names": [...], "kinds": list or mapping, "class_names": ...}).
    """
    tasks = probe.get("tasks")
    if isinstance(tasks, Mapping):
        return {str(t): {"kind": (info or {}).get("kind", "classification"),
                         "class_names": (info or {}).get("class_names"),
                         "input": (info or {}).get("input", "x")}
                for t, info in tasks.items()}
    names = list(probe.get("task_names") or (probe.get("targets") or {}).keys())
    kinds = probe.get("kinds") or {}
    if not isinstance(kinds, Mapping):
        kinds = dict(zip(names, kinds, strict=False))
    class_names = probe.get("class_names") or {}
    return {n: {"kind": kinds.get(n, "classification"),
                "class_names": class_names.get(n) if isinstance(class_names, Mapping) else None,
                "input": "x"} for n in names}


def format_label(value: Any, kind: str, class_names: Sequence[str] | None = None) -> str:
    """How a target or prediction reads on a card: class name / id, "1 (p 0.83)", 0.42."""
    if value is None:
        return "–"
    v = float(value)
    if kind == "regression":
        return f"{v:.2f}"
    if kind == "binary" and not v.is_integer():  # the trainer sends P(class 1)
        return f"{format_label(int(v >= 0.5), kind, class_names)} (p {v:.2f})"
    cls = int(round(v))
    if class_names and 0 <= cls < len(class_names):
        return str(class_names[cls])
    return str(cls)


def is_correct(pred: Any, true: Any, kind: str) -> bool | None:
    """Whether a prediction is right; None for regression (no right or wrong there)."""
    if kind == "regression" or pred is None or true is None:
        return None
    if kind == "binary":
        return int(float(pred) >= 0.5) == int(round(float(true)))
    return int(round(float(pred))) == int(round(float(true)))


def _probe_images(probe: Mapping[str, Any], inputs: Sequence[str], i: int) -> list[Any]:
    images = probe.get("images") or []
    if isinstance(images, Mapping):  # {input key: [image, ...]}, one per distinct input
        return [images[k][i] for k in inputs if k in images and i < len(images[k])]
    return [images[i]] if i < len(images) else []


def probe_rows(probe: Mapping[str, Any], predictions: Mapping[str, Any] | None,
               tasks: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One dict per probe sample: {"images": [image, ...], "tasks": [(task, pred, true,
    correct)], "boxes": [(task, true box, predicted box)]} with labels already formatted and
    `correct` None for regression. A box task's label is its IoU (right when ≥ 0.5);
    per-pixel tasks have no label here (ui.vision_charts draws their maps)."""
    info = probe_tasks(probe)
    names = [t for t in (tasks or list(info)) if t in info]
    targets = probe.get("targets") or {}
    outputs = (predictions or {}).get("outputs") or {}
    inputs = list(dict.fromkeys(info[t]["input"] for t in names))
    n = max([len(targets.get(t, [])) for t in names] + [0])
    rows = []
    for i in range(n):
        cells, boxes = [], []
        for task in names:
            kind, cn = info[task]["kind"], info[task]["class_names"]
            truth = targets.get(task, [])
            out = outputs.get(task) or []
            true = truth[i] if i < len(truth) else None
            pred = out[i] if i < len(out) else None
            if kind in DENSE_KINDS:  # whole maps: drawn by vision_charts.dense_figure
                continue
            if kind == "box":
                from ui.vision_charts import box_iou

                boxes.append((task, true, pred))
                iou = box_iou(pred, true) if pred is not None and true is not None else None
                cells.append((task, "–" if iou is None else f"IoU {iou:.2f}", "green box",
                              None if iou is None else iou >= 0.5))
                continue
            cells.append((task, format_label(pred, kind, cn), format_label(true, kind, cn),
                          is_correct(pred, true, kind)))
        rows.append({"images": _probe_images(probe, inputs, i), "tasks": cells,
                     "boxes": boxes})
    return rows


def has_images(probe: Mapping[str, Any] | None) -> bool:
    images = (probe or {}).get("images")
    if isinstance(images, Mapping):
        return any(len(v) for v in images.values())
    return bool(images)


def image_grid_html(probe: Mapping[str, Any], predictions: Mapping[str, Any] | None,
                    tasks: Sequence[str] | None = None, max_images: int = 32,
                    min_card_px: int = 120) -> str:
    """HTML grid of probe images, each with every task's predicted and true label; wrong
    predictions are red and their card gets a red border, right ones are green."""
    from ui.vision_charts import boxes_svg

    cards = []
    for row in probe_rows(probe, predictions, tasks)[:max_images]:
        wrong = any(c is False for *_, c in row["tasks"])
        imgs = "".join(
            boxes_svg(src, row["boxes"], image_size(im)) if row["boxes"] and src else
            f'<img src="{src}" style="width:{100 // max(1, len(row["images"]))}%;'
            f'image-rendering:pixelated;border-radius:4px"/>'
            for src, im in ((image_src(im), im) for im in row["images"]) if src)
        lines = []
        for task, pred, true, correct in row["tasks"]:
            color = {True: "#1a7f37", False: "#cf222e"}.get(correct, "#444")  # type: ignore[arg-type]
            mark = {True: "✓", False: "✗"}.get(correct, "")  # type: ignore[arg-type]
            cls = "mtl-wrong" if correct is False else "mtl-ok"
            lines.append(f'<div class="{cls}" style="color:{color}">{html.escape(task)}: '
                         f"<b>{html.escape(pred)}</b> <span style=\"color:#777\">"
                         f"(true {html.escape(true)})</span> {mark}</div>")
        border = "#cf222e" if wrong else "#d0d7de"
        cards.append(f'<div class="mtl-card" style="border:2px solid {border};border-radius:6px;'
                     f'padding:4px;font-size:12px;line-height:1.3">{imgs}{"".join(lines)}</div>')
    # auto-fill: as many columns as fit, so a projector and a laptop both get readable cards
    return (f'<div style="display:grid;grid-template-columns:'
            f'repeat(auto-fill,minmax({min_card_px}px,1fr));'
            f'gap:8px">{"".join(cards)}</div>')
