"""Pure functions behind the Compare page: runs in, tables and Plotly figures out.

Nothing here touches Streamlit or the store. A "run" is anything with the `RunInfo` fields
`id`, `name`, `status`, `config` and `summary`; metrics frames have the store's long format
(`step, epoch, split, task, name, value`).

- `overlay_figure`: one task's curves for several runs, a colour per run and a dash per split
  (solid train, dashed val, dotted test: `charts.SPLIT_DASH`), one trace per (run, split).
- `final_table`: a row per run with the config values worth comparing (task weights, method,
  architecture, shared layers, train fraction) and every final metric ("task · metric").
- `bars_figure`: one final metric per task, a bar per run.
- `parcoords_figure`: parallel coordinates from those config values to each task's primary
  final metric, a line per run.

Run labels and task names come in as chosen and are escaped (`ui.text.plot_text`) where they
enter a figure; `run_labels` stays plain text for the page's own widgets.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from mtl_core.baselines import primary_metric
from mtl_core.config import BACKBONE_STAGES
from ui import charts
from ui.run_table import final_metrics
from ui.text import plot_text

METRIC_ORDER = ("accuracy", "iou", "acc50", "miou", "pixel_acc", "r2", "abs_rel", "rmse", "mse",
                "mae", "loss")
CONFIG_COLUMNS = ("method", "architecture", "shared layers", "train fraction")
WEIGHT_PREFIX = "w_"
METRIC_SEP = " · "


# ---------------------------------------------------------------- labels and colours


def run_labels(runs: Sequence[Any]) -> dict[str, str]:
    """A short, unique legend label per run id: "name · abcd" (the id's last 4 characters),
    the full id where two runs would otherwise share a label."""
    short = {r.id: f"{r.name} · {r.id[-4:]}" for r in runs}
    counts = pd.Series(list(short.values())).value_counts()
    return {rid: label if counts[label] == 1 else f"{label.rsplit(METRIC_SEP, 1)[0]} · {rid}"
            for rid, label in short.items()}


def run_colors(run_ids: Sequence[str]) -> dict[str, str]:
    """A colour per run, in the given order (the compare page's runs are told apart by
    colour; tasks get a chart each)."""
    return {rid: charts.PALETTE[i % len(charts.PALETTE)] for i, rid in enumerate(run_ids)}


def run_tasks(runs: Sequence[Any]) -> list[str]:
    """Every task any of the runs trains, in first-seen order."""
    tasks: list[str] = []
    for run in runs:
        for task in run.config.get("tasks") or []:
            name = task.get("name") if isinstance(task, Mapping) else None
            if name and name not in tasks:
                tasks.append(name)
        for task in final_metrics(run.summary):
            if task not in tasks:
                tasks.append(task)
    return tasks


# ---------------------------------------------------------------- curves


def overlay_figure(frames: Mapping[str, pd.DataFrame], labels: Mapping[str, str],
                   colors: Mapping[str, str], task: str, name: str,
                   splits: Sequence[str], *, log_y: bool = False, smoothing: float = 0.0,
                   max_points: int = charts.MAX_POINTS, band: str = "sd") -> go.Figure:
    """`name` (loss, accuracy, ...) of one task over steps: a trace per (run, split) that has
    data, named "label · split", coloured by run, dashed by split. A stacked run's trace is
    the mean over its seeds, with their spread as `band` (charts.BANDS)."""
    fig = go.Figure()
    for run_id, df in frames.items():
        if df is None or df.empty:
            continue
        df = df[(df["name"] == name) & (df["task"] == task)]
        for split in splits:
            x, y = charts.series(df, split, task, name)
            charts.add_band(fig, df, split, task, name,
                            label=f"{labels.get(run_id, run_id)} · {split}",
                            color=colors.get(run_id, charts.TOTAL_COLOR), band=band,
                            smoothing=smoothing, log_y=log_y, max_points=max_points)
            charts.add_series(fig, x, y, label=f"{labels.get(run_id, run_id)} · {split}",
                               color=colors.get(run_id, charts.TOTAL_COLOR), split=split,
                               smoothing=smoothing, log_y=log_y, max_points=max_points)
    title = f"{task} · {name}"
    if not fig.data:
        return charts.empty_figure(f"no {name} logged for {task}", title)
    fig.update_layout(title=plot_text(title), height=360, uirevision=f"compare:{task}:{name}",
                      hovermode="x unified", margin={"l": 50, "r": 20, "t": 50, "b": 40},
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "x": 0},
                      xaxis_title="step", yaxis_title=name)
    fig.update_yaxes(type="log" if log_y else "linear")
    if name in charts.UNIT_METRICS and not log_y:
        fig.update_yaxes(range=[0, 1.02])
    return fig


# ---------------------------------------------------------------- final table


def shared_layers(config: Mapping[str, Any]) -> float:
    """How many trunk layers all tasks share: hard sharing's `shared_layers` (default the
    whole trunk), 0 for single-task models, NaN for soft sharing (no single branch point)."""
    model = config.get("model") or {}
    architecture = model.get("architecture")
    trunk = model.get("trunk") or {}
    depth = len(trunk.get("layers") or []) + len(trunk.get("hidden") or [])
    if trunk.get("type") in BACKBONE_STAGES:  # a backbone's stages replace the conv layers
        depth = BACKBONE_STAGES[str(trunk["type"])] + len(trunk.get("hidden") or [])
    if architecture == "single_task":
        return 0.0
    if architecture == "hard_sharing":
        value = (model.get("params") or {}).get("shared_layers")
        return float(depth if value is None else value)
    return math.nan


def config_row(config: Mapping[str, Any], tasks: Sequence[str]) -> dict[str, Any]:
    """The config values compared across runs; a task the run does not train has weight 0."""
    weights = {t.get("name"): float(t.get("weight", 1.0))
               for t in config.get("tasks") or [] if isinstance(t, Mapping)}
    row: dict[str, Any] = {
        "method": (config.get("weighting") or {}).get("method", ""),
        "architecture": (config.get("model") or {}).get("architecture", ""),
        "shared layers": shared_layers(config),
        "train fraction": float((config.get("data") or {}).get("train_fraction", 1.0)),
    }
    for task in tasks:
        row[f"{WEIGHT_PREFIX}{task}"] = weights.get(task, 0.0)
    return row


def metric_column(task: str, metric: str) -> str:
    return f"{task}{METRIC_SEP}{metric}"


def final_table(runs: Sequence[Any], tasks: Sequence[str] | None = None) -> pd.DataFrame:
    """A row per run (in the given order): id, name, status, the config values, then each
    task's final metrics ("task · metric": test, else best validation, else last validation,
    as on the Runs page). NaN where a run has no such number."""
    tasks = list(tasks) if tasks is not None else run_tasks(runs)
    finals = {r.id: final_metrics(r.summary) for r in runs}
    columns: list[str] = []
    for task in tasks:
        present = {m for f in finals.values() for m in (f.get(task) or {})}
        names = [m for m in METRIC_ORDER if m in present] + sorted(present - set(METRIC_ORDER))
        columns += [metric_column(task, m) for m in names]
    rows = []
    for run in runs:
        row: dict[str, Any] = {"id": run.id, "name": run.name, "status": run.status}
        row.update(config_row(run.config, tasks))
        for column in columns:
            task, metric = column.rsplit(METRIC_SEP, 1)
            value = (finals[run.id].get(task) or {}).get(metric)
            row[column] = float(value) if value is not None else math.nan
        rows.append(row)
    fixed = ["id", "name", "status", *CONFIG_COLUMNS, *(f"{WEIGHT_PREFIX}{t}" for t in tasks)]
    return pd.DataFrame(rows, columns=fixed + columns)


def metric_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if METRIC_SEP in c]


def primary_columns(table: pd.DataFrame, tasks: Sequence[str]) -> list[str]:
    """Each task's primary metric column (accuracy, else MSE; `baselines.primary_metric`),
    for tasks that have one."""
    out = []
    for task in tasks:
        names = {c.rsplit(METRIC_SEP, 1)[1] for c in metric_columns(table)
                 if c.rsplit(METRIC_SEP, 1)[0] == task}
        if names:
            name = primary_metric(dict.fromkeys(names, 0.0))
            if name in names:
                out.append(metric_column(task, name))
    return out


def bars_figure(table: pd.DataFrame, metric: str, labels: Mapping[str, str],
                colors: Mapping[str, str]) -> go.Figure:
    """One final metric per task (x), a bar per run (legend), NaN bars left out."""
    columns = [c for c in metric_columns(table) if c.rsplit(METRIC_SEP, 1)[1] == metric]
    tasks = [plot_text(c.rsplit(METRIC_SEP, 1)[0]) for c in columns]
    fig = go.Figure()
    for _, row in table.iterrows():
        values = [row[c] for c in columns]
        if all(pd.isna(v) for v in values):
            continue
        fig.add_trace(go.Bar(x=tasks, y=values, name=plot_text(labels.get(row["id"], row["id"])),
                             marker_color=colors.get(row["id"], charts.TOTAL_COLOR),
                             hovertemplate="%{x}: %{y:.4g}<extra>%{fullData.name}</extra>"))
    if not fig.data:
        return charts.empty_figure(f"no final {metric} yet", f"final {metric}")
    fig.update_layout(barmode="group", title=f"Final {metric} per task", height=360,
                      yaxis_title=metric, uirevision=f"compare-bars:{metric}",
                      margin={"l": 50, "r": 20, "t": 50, "b": 40},
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "x": 0})
    return fig


def parcoords_figure(table: pd.DataFrame, tasks: Sequence[str],
                     color_by: str | None = None) -> go.Figure:
    """Parallel coordinates, a line per run: task weights, method, shared layers and train
    fraction, then each task's primary final metric. Categorical values (the method) are
    numbered with their names as tick labels. Lines are coloured by `color_by` (a metric
    column; default the first one)."""
    dims: list[dict[str, Any]] = []
    for task in tasks:
        dims.append(_numeric_dim(f"w {task}", table[f"{WEIGHT_PREFIX}{task}"]))
    dims.append(_categorical_dim("method", table["method"]))
    dims.append(_numeric_dim("shared layers", table["shared layers"]))
    dims.append(_numeric_dim("train fraction", table["train fraction"]))
    metrics = primary_columns(table, tasks)
    for column in metrics:
        dims.append(_numeric_dim(column, table[column]))
    color_by = color_by if color_by in table.columns else (metrics[0] if metrics else None)
    line: dict[str, Any] = {"color": "#1f77b4"}
    if color_by is not None and table[color_by].notna().any():
        values = table[color_by].to_numpy(dtype=float)
        line = {"color": np.where(np.isnan(values), np.nanmin(values), values).tolist(),
                "colorscale": "Viridis", "showscale": True,
                "colorbar": {"title": {"text": plot_text(color_by)}, "x": 1.04,
                             "thickness": 14}}
    fig = go.Figure(go.Parcoords(dimensions=dims, line=line))
    fig.update_layout(title="From settings to results: one line per run", height=420,
                      margin={"l": 60, "r": 130, "t": 80, "b": 30})
    return fig


def _numeric_dim(label: str, column: pd.Series) -> dict[str, Any]:
    values = column.to_numpy(dtype=float)
    dim: dict[str, Any] = {"label": plot_text(label), "values": values.tolist()}
    finite = values[np.isfinite(values)]
    if finite.size and finite.min() == finite.max():  # one value: give the axis some room
        value = float(finite.min())
        span = abs(value) * 0.1 or 0.5
        dim["range"] = [value - span, value + span]
    return dim


def _categorical_dim(label: str, column: pd.Series) -> dict[str, Any]:
    names = sorted({str(v) for v in column})
    code = {name: i for i, name in enumerate(names)}
    # parcoords draws its tick labels as plain text (d3 axis), its axis titles as Plotly text
    dim: dict[str, Any] = {"label": plot_text(label), "values": [code[str(v)] for v in column],
                           "tickvals": list(range(len(names))), "ticktext": names}
    if len(names) == 1:
        dim["range"] = [-0.5, 0.5]
    return dim


def table_csv(table: pd.DataFrame) -> bytes:
    """The final-metrics table as CSV (what the Download button gives)."""
    return table.to_csv(index=False).encode()
