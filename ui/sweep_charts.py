"""Pure figures of a loss-weight sweep, drawn from `mtl_core.sweep.sweep_table`.

The table already says which runs are on the Pareto front (`on_front`) and which grid point
validation chose (`chosen`); the figures only draw those marks, so the page, the CLI and the
tests agree on them. Runs without finished validation metrics (NaN) are left out.

- `front_figure`: one task's validation metric against another's. Traces, by name: "weight
  grid" (the static runs), "Pareto front" (a line through the front's points when there are
  two tasks; markers only in a pairwise view of three), "chosen by validation" (a star), and
  one trace per extra method (e.g. "pcgrad"). Hovering a point shows its weights.
- `ternary_figure`: for three tasks, the grid's weights on the simplex coloured by one task's
  validation metric, the chosen point starred and the front's points outlined.

Task and method names and run ids are escaped (`ui.text.plot_text`) where they enter a
figure, next to our own `<b>` and `<br>`.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ui.text import plot_text

GRID_COLOR = "#7f9cbf"
FRONT_COLOR = "#ff7f0e"
CHOSEN_COLOR = "#d62728"
METHOD_SYMBOLS = ("diamond", "square", "triangle-up", "cross", "x", "pentagon", "hexagon",
                  "triangle-down", "star-triangle-up", "hourglass")
METHOD_COLORS = ("#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
STATIC = "static"


def direction_text(table: pd.DataFrame, task: str) -> str:
    higher = table.attrs.get("higher_is_better", {}).get(task, True)
    return "higher is better" if higher else "lower is better"


def axis_title(table: pd.DataFrame, task: str) -> str:
    metric = table.attrs.get("metrics", {}).get(task, "metric")
    return plot_text(f"{task}: val {metric} ({direction_text(table, task)})")


def hover_text(table: pd.DataFrame) -> list[str]:
    """Per row: the method, its weights and the run, for hover labels (Plotly text)."""
    tasks = table.attrs.get("tasks", [])
    out = []
    for _, row in table.iterrows():
        weights = plot_text(", ".join(f"w {t} = {row[f'w_{t}']:.3g}" for t in tasks))
        vals = plot_text(", ".join(f"val {t} = {row[f'val_{t}']:.4g}" for t in tasks))
        out.append(f"<b>{plot_text(row['method'])}</b><br>{weights}<br>{vals}"
                   f"<br>run {plot_text(row['run_id'])}")
    return out


def _finite(table: pd.DataFrame, columns: Sequence[str]) -> pd.Series:
    return np.isfinite(table[list(columns)].to_numpy(dtype=float)).all(axis=1)


def _error_bars(rows: pd.DataFrame, x_task: str, y_task: str) -> dict:
    """±1 sd over a stacked run's seeds on both axes (sweep_table's valsd_ columns); nothing
    for runs of one seed."""
    out = {}
    for axis, task in (("error_x", x_task), ("error_y", y_task)):
        column = f"valsd_{task}"
        if column in rows.columns and rows[column].notna().any():
            out[axis] = {"type": "data", "array": rows[column].fillna(0.0).tolist(),
                         "thickness": 1.2, "width": 3}
    return out


def front_figure(table: pd.DataFrame, x_task: str, y_task: str, *,
                 line_front: bool = True, split: str = "val") -> go.Figure:
    """Metric of `y_task` against that of `x_task` on `split` ("val", or "test": the same
    runs on the test set, with the test front and the point validation chose)."""
    x_col, y_col = f"{split}_{x_task}", f"{split}_{y_task}"
    front_col = "on_front" if split == "val" else "on_test_front"
    text = pd.Series(hover_text(table), index=table.index)
    done = table[_finite(table, [x_col, y_col])]
    fig = go.Figure()

    def add(rows: pd.DataFrame, name: str, bars: bool = True, **kwargs) -> None:
        fig.add_trace(go.Scatter(x=rows[x_col].tolist(), y=rows[y_col].tolist(),
                                 name=plot_text(name),
                                 text=text[rows.index].tolist(),
                                 hovertemplate="%{text}<extra></extra>",
                                 **(_error_bars(rows, x_task, y_task) if bars else {}),
                                 **kwargs))

    grid = done[done["method"] == STATIC]
    if not grid.empty:
        add(grid, "weight grid", mode="markers",
            marker={"size": 10, "color": GRID_COLOR, "line": {"width": 1, "color": "#fff"}})
    extras = [m for m in dict.fromkeys(done["method"]) if m != STATIC]
    for i, method in enumerate(extras):
        add(done[done["method"] == method], method, mode="markers",
            marker={"size": 13, "symbol": METHOD_SYMBOLS[i % len(METHOD_SYMBOLS)],
                    "color": METHOD_COLORS[i % len(METHOD_COLORS)],
                    "line": {"width": 1, "color": "#333"}})
    chosen = done[done["chosen"]]
    if not chosen.empty:
        add(chosen, "chosen by validation", bars=False, mode="markers",
            marker={"size": 17, "symbol": "star", "color": CHOSEN_COLOR,
                    "line": {"width": 1, "color": "#fff"}})
    front = done[done[front_col]].sort_values([x_col, y_col], kind="stable")
    if not front.empty:
        add(front, "Pareto front", bars=False,
            mode="lines+markers" if line_front else "markers",
            line={"color": FRONT_COLOR, "width": 2, "shape": "linear"},
            marker={"size": 24, "color": "rgba(0,0,0,0)",
                    "line": {"width": 2.5, "color": FRONT_COLOR}})
    if not fig.data:
        fig.add_annotation(text="no finished run yet", showarrow=False, x=0.5, y=0.5,
                           xref="paper", yref="paper", font={"size": 14, "color": "#888"})
    split_name = "validation" if split == "val" else "test"
    fig.update_layout(title=plot_text(f"{y_task} vs {x_task} ({split_name})"), height=500,
                      xaxis_title=axis_title(table, x_task),
                      yaxis_title=axis_title(table, y_task),
                      uirevision=f"sweep:{table.attrs.get('sweep_id')}:{x_task}:{y_task}:{split}",
                      margin={"l": 60, "r": 20, "t": 50, "b": 40},
                      legend={"orientation": "h", "yanchor": "top", "y": -0.2, "x": 0})
    return fig


def ternary_figure(table: pd.DataFrame, color_task: str) -> go.Figure:
    """The static runs' weights (w1, w2, w3) on the simplex, coloured by `color_task`'s
    validation metric; not yet finished runs grey, the chosen point starred."""
    tasks = table.attrs.get("tasks", [])
    if len(tasks) != 3:
        raise ValueError(f"a ternary plot needs 3 tasks (the sweep has {len(tasks)})")
    a, b, c = (f"w_{t}" for t in tasks)
    grid = table[table["method"] == STATIC]
    text = pd.Series(hover_text(table), index=table.index)
    value = f"val_{color_task}"
    done = grid[np.isfinite(grid[value].to_numpy(dtype=float))]
    waiting = grid.drop(done.index)
    fig = go.Figure()

    def add(rows: pd.DataFrame, name: str, marker: dict) -> None:
        fig.add_trace(go.Scatterternary(a=rows[a].tolist(), b=rows[b].tolist(),
                                        c=rows[c].tolist(), mode="markers",
                                        name=plot_text(name),
                                        cliponaxis=False,
                                        marker=marker, text=text[rows.index].tolist(),
                                        hovertemplate="%{text}<extra></extra>"))

    if not waiting.empty:
        add(waiting, "not finished", {"size": 9, "color": "#cccccc"})
    if not done.empty:
        reverse = not table.attrs.get("higher_is_better", {}).get(color_task, True)
        bar_title = f"{plot_text(color_task)}<br>({direction_text(table, color_task)})"
        add(done, f"val {color_task}", {
            "size": 13, "color": done[value].tolist(), "colorscale": "Viridis",
            "reversescale": reverse, "showscale": True, "colorbar": {"title": {"text": bar_title}},
            "line": {"width": [2.5 if f else 0.5 for f in done["on_front"]],
                     "color": FRONT_COLOR}})
    chosen = grid[grid["chosen"]]
    if not chosen.empty:
        add(chosen, "chosen by validation", {"size": 20, "symbol": "star",
                                             "color": CHOSEN_COLOR})
    fig.update_layout(title=f"Weights on the simplex, coloured by val {plot_text(color_task)} "
                            "(orange ring: on the Pareto front)", height=480,
                      ternary={"aaxis": {"title": {"text": plot_text(f"w {tasks[0]}")}},
                               "baxis": {"title": {"text": plot_text(f"w {tasks[1]}")}},
                               "caxis": {"title": {"text": plot_text(f"w {tasks[2]}")}}},
                      uirevision=f"sweep-ternary:{table.attrs.get('sweep_id')}",
                      legend={"orientation": "h", "yanchor": "top", "y": -0.08, "x": 0},
                      margin={"l": 60, "r": 60, "t": 80, "b": 60})
    return fig


def progress_text(counts: dict[str, int]) -> tuple[float, str]:
    """(fraction of runs that have ended, "3 of 6 ended · 2 running · 1 queued")."""
    total = sum(counts.values())
    live = {s: counts.get(s, 0) for s in ("running", "paused", "queued") if counts.get(s)}
    ended = total - sum(live.values())
    parts = [f"{ended} of {total} ended"]
    parts += [f"{n} {status}" for status, n in live.items()]
    parts += [f"{n} {s}" for s, n in counts.items()
              if s not in ("running", "paused", "queued", "finished") and n]
    return (ended / total if total else 0.0), " · ".join(parts)
