"""Compare runs: pick runs in a table, then overlay their curves, compare their final metrics,
see settings → results as parallel coordinates, and judge one against its single-task
baselines (Δm).

The table lists runs oldest first, so a run started meanwhile is added at the bottom and the
rows already ticked keep meaning the same runs. Curves get a chart per task, a colour per run
and a dash per split. While a compared run is live the charts refresh (a fragment that stops
polling once they have ended). Pure parts: ui.compare_charts.
"""
from __future__ import annotations

from ui.state import through_app

through_app()  # first, before the heavy imports: a link straight here reruns through app.py

from typing import Any

import streamlit as st

from mtl_core.store import RunInfo, RunStore
from ui import charts
from ui import compare_charts as cc
from ui.baselines_view import baselines_view
from ui.live import cached_metrics
from ui.run_table import runs_frame
from ui.state import current_run_id, get_store
from ui.text import md_code

REFRESH_S = 2.0
TABLE_KEY = "cmp_table"
PLOTLY_CONFIG = {"displaylogo": False}
SPLITS = ("train", "val", "test")


def _chart(fig: Any, key: str) -> None:
    st.plotly_chart(fig, key=key, config=PLOTLY_CONFIG)


def _pick_runs(runs: list[RunInfo]) -> list[RunInfo]:
    """The runs ticked in the table (oldest first)."""
    frame = runs_frame(runs)
    event = st.dataframe(
        frame, key=TABLE_KEY, on_select="rerun", selection_mode="multi-row", hide_index=True,
        width="stretch", height=min(400, 38 + 35 * len(frame)),
        column_config={"progress": st.column_config.ProgressColumn(
            "progress", min_value=0.0, max_value=1.0, format="percent")}
        | {c: st.column_config.NumberColumn(c, format="%.3f") for c in frame.columns
           if " · " in c})
    rows = list(getattr(getattr(event, "selection", None), "rows", []) or [])
    by_id = {r.id: r for r in runs}
    return [by_id[str(frame.iloc[i]["id"])] for i in sorted(rows) if i < len(frame)]


def _curves(store: RunStore, runs: list[RunInfo], labels: dict[str, str],
            colors: dict[str, str], tasks: list[str]) -> None:
    frames = {r.id: cached_metrics(store, r.id) for r in runs}
    logged = [df for df in frames.values() if not df.empty]
    names = ["loss"] + sorted({m for df in logged for m in charts.metric_names(df, SPLITS)},
                              key=lambda m: (cc.METRIC_ORDER.index(m)
                                             if m in cc.METRIC_ORDER else 99, m))
    c1, c2, c3, c4, c5 = st.columns([2, 2, 3, 1.2, 2])
    name = c1.selectbox("Curve", names, key="cmp_metric") or "loss"
    splits = c2.segmented_control("Splits", list(SPLITS), default=["train", "val"],
                                  selection_mode="multi", key="cmp_splits") or ["val"]
    # Keyed by the task list: runs with other tasks start again from all of theirs.
    shown = c3.multiselect("Tasks", tasks, default=tasks, key=f"cmp_tasks_{'|'.join(tasks)}")
    log_y = c4.toggle("Log scale", key="cmp_log")
    smoothing = c5.slider("Smoothing", 0.0, 0.99, 0.0, 0.01, key="cmp_smooth",
                          help="Exponential moving average of the per-step (train) curves.")
    st.caption("Colour: the run · line: solid train, dashed validation, dotted test.")
    for start in range(0, len(shown), 2):
        for col, task in zip(st.columns(2), shown[start:start + 2], strict=False):
            with col:
                _chart(cc.overlay_figure(frames, labels, colors, task, name, splits,
                                         log_y=log_y, smoothing=smoothing),
                       f"cmp_curve_{task}")


def _finals(runs: list[RunInfo], labels: dict[str, str], colors: dict[str, str],
            tasks: list[str]) -> None:
    table = cc.final_table(runs, tasks)
    st.dataframe(table, key="cmp_final", hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(c, format="%.4g")
                                for c in cc.metric_columns(table)})
    st.caption("Final metrics: the test set when the run reached it, else its best (or "
               "last) validation. w_<task>: the configured weight (0: the task is not "
               "trained).")
    st.download_button("Download this table (CSV)", cc.table_csv(table),
                       file_name="compare.csv", mime="text/csv", key="cmp_csv",
                       on_click="ignore", icon="⬇️")
    metrics = sorted({c.rsplit(cc.METRIC_SEP, 1)[1] for c in cc.metric_columns(table)},
                     key=lambda m: (cc.METRIC_ORDER.index(m)
                                    if m in cc.METRIC_ORDER else 99, m))
    if not metrics:
        st.caption("No final metrics yet: they appear after the first evaluation.")
        return
    metric = st.radio("Bars", metrics, horizontal=True, key="cmp_bar_metric") or metrics[0]
    _chart(cc.bars_figure(table, metric, labels, colors), "cmp_bars")

    st.markdown("**Settings → results**")
    primary = cc.primary_columns(table, tasks)
    color_by = st.selectbox("Colour the lines by", primary, key="cmp_color_by") \
        if primary else None
    _chart(cc.parcoords_figure(table, tasks, color_by), "cmp_parcoords")
    st.caption("Each line is a run. Drag along an axis to keep only the runs in a range "
               "(e.g. the best accuracies) and see which settings they share.")


def _body(store: RunStore, run_ids: list[str], was_live: bool) -> None:
    runs = []
    for run_id in run_ids:
        try:
            runs.append(store.get_run(run_id))
        except KeyError:
            continue
    if was_live and not any(r.is_live for r in runs):
        st.rerun()  # every compared run has ended: stop polling
    if not runs:
        return
    labels = cc.run_labels(runs)
    colors = cc.run_colors([r.id for r in runs])
    tasks = cc.run_tasks(runs)
    curves, finals, baselines = st.tabs(["Curves", "Final metrics", "Baselines & Δm"])
    with curves:
        _curves(store, runs, labels, colors, tasks)
    with finals:
        _finals(runs, labels, colors, tasks)
    with baselines:
        target = st.selectbox("Run", [r.id for r in runs], key="cmp_bl_run",
                              format_func=lambda i: labels[i])
        baselines_view(store, target, key="cmp_bl")  # polls while its baselines train


st.title("Compare runs")
_store = get_store()
_runs = sorted(_store.list_runs(), key=lambda r: r.created_at)  # oldest first: stable rows
if not _runs:
    st.info("No runs yet. Train a few on the Build & Train page (or load a lesson), then "
            "compare them here.")
else:
    st.caption("Tick the runs to compare (the box left of each row).")
    _picked = _pick_runs(_runs)
    if not _picked:
        current = current_run_id()
        hint = f" The current run is {md_code(current)}." if current else ""
        st.info("Select one or more runs in the table to compare them." + hint)
    else:
        _live = any(r.is_live for r in _picked)
        st.fragment(run_every=REFRESH_S if _live else None)(_body)(
            _store, [r.id for r in _picked], _live)
