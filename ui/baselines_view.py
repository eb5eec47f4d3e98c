"""The "Baselines & Δm" view of one run: is multi-task learning better than going alone?

`baselines_view(store, run_id)` shows, for the run's positively weighted tasks, the
single-task baseline of each (same data, trunk, heads, optimiser, seed and budget:
`mtl_core.baselines.baseline_configs`), a button that trains the missing ones (baselines whose
config matches are reused: `find_or_submit_baselines`), a table per task (metric, multi-task
value, baseline value, relative change, better/worse), bars of each task's term of Δm, and Δm
itself with its formula and what it means. Numbers come from `compare_run`, so the page, the
CLI and the tests agree. While the run or one of its baselines is live, the view refreshes
itself (a fragment that stops polling once they have all ended).

`comparison_frame` and `terms_figure` are pure, for tests.
"""
from __future__ import annotations

import math
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from mtl_core.baselines import (
    BASELINE_ARCHITECTURE,
    DELTA_M_EXPLANATION,
    DELTA_M_LATEX,
    Comparison,
    SeedSpread,
    baseline_configs,
    compare_run,
    find_baselines,
    find_or_submit_baselines,
)
from mtl_core.config import ConfigError, parse_config
from mtl_core.store import RunInfo, RunStore
from ui.run_table import STATUS_ICONS
from ui.text import md_code, md_text, plot_text

REFRESH_S = 2.0
PLOTLY_CONFIG = {"displaylogo": False}
BETTER, WORSE = "✅ better", "❌ worse"
BETTER_COLOR, WORSE_COLOR = "#2ca02c", "#d62728"
_NOTICE = "_baselines_notice"
RUN_EVERY_KEY = "_baselines_run_every"  # + "_<key>": the refresh the last full run chose


# ---------------------------------------------------------------- pure parts


def comparison_frame(comp: Comparison) -> pd.DataFrame:
    """One row per task: task, metric, direction, the multi-task and baseline values, the
    relative change in percent, the task's term of Δm and the verdict."""
    rows = []
    for r in comp.rows:
        verdict = "–" if r.better is None else (BETTER if r.better else WORSE)
        rows.append({"task": r.task, "metric": r.metric,
                     "direction": "higher is better" if r.higher_is_better
                     else "lower is better",
                     "multi-task": _num(r.value), "single-task baseline": _num(r.baseline),
                     "change (%)": _num(r.relative), "Δm term (%)": _num(r.term),
                     "verdict": verdict})
    columns = ["task", "metric", "direction", "multi-task", "single-task baseline",
               "change (%)", "Δm term (%)", "verdict"]
    return pd.DataFrame(rows, columns=columns)


def _num(value: float | None) -> float:
    return math.nan if value is None else float(value)


def terms_figure(comp: Comparison) -> go.Figure:
    """Each task's term of Δm, (−1)^δ·(M − M_STL)/M_STL in percent: below 0 (green) the
    multi-task model beats the baseline on that task. A dashed line marks Δm, their mean."""
    rows = [r for r in comp.rows if r.term is not None]
    fig = go.Figure(go.Bar(
        x=[plot_text(r.task) for r in rows], y=[r.term for r in rows], name="Δm term",
        marker_color=[BETTER_COLOR if r.term < 0 else WORSE_COLOR for r in rows],
        text=[f"{r.term:+.1f} %" for r in rows], textposition="outside",
        customdata=[[r.metric, r.value, r.baseline] for r in rows],
        hovertemplate="%{x}: %{customdata[0]} %{customdata[1]:.4g} vs baseline "
                      "%{customdata[2]:.4g}<br>term %{y:+.2f} %<extra></extra>"))
    if comp.delta_m is not None:
        fig.add_hline(y=comp.delta_m, line={"color": "#333", "dash": "dash", "width": 2},
                      annotation_text=f"Δm = {comp.delta_m:+.2f} %",
                      annotation_position="top left")
    fig.add_hline(y=0, line={"color": "#888", "width": 1})
    fig.update_layout(title="Each task against its single-task baseline (below 0: better)",
                      height=340, yaxis_title="term of Δm (%)", showlegend=False,
                      margin={"l": 50, "r": 20, "t": 50, "b": 40})
    return fig


def seeds_figure(spread: SeedSpread) -> go.Figure:
    """Δm of every seed (dots), their mean and its 95 % interval (an error bar)."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[f"seed {s}" for s in spread.seeds], y=spread.deltas,
                             mode="markers", name="Δm of a seed",
                             marker={"size": 10, "color": ["#2ca02c" if d < 0 else "#d62728"
                                                           for d in spread.deltas]}))
    interval = spread.interval
    if interval is not None:
        fig.add_trace(go.Scatter(
            x=["mean"], y=[spread.mean], mode="markers", name="mean, 95 % interval",
            marker={"size": 12, "color": "#333", "symbol": "diamond"},
            error_y={"type": "data", "symmetric": False, "array": [interval[1] - spread.mean],
                     "arrayminus": [spread.mean - interval[0]]}))
    fig.add_hline(y=0, line={"color": "#888", "width": 1})
    fig.update_layout(title=f"Δm per seed — {spread.verdict()}", height=320,
                      yaxis_title="Δm (%)", showlegend=False,
                      margin={"l": 50, "r": 20, "t": 50, "b": 40})
    return fig


def delta_m_verdict(delta_m: float) -> str:
    if delta_m < 0:
        return "below 0: on average the multi-task model beats its single-task baselines"
    if delta_m > 0:
        return "above 0: on average sharing hurt (negative transfer)"
    return "exactly 0: no difference on average"


# ---------------------------------------------------------------- the view


def baselines_view(store: RunStore, run_id: str, key: str = "bl", poll: bool = True) -> None:
    """Draw the view. `key` prefixes every widget key (the view may appear on several pages);
    `poll=False` when the caller already refreshes while runs are live (the Runs page)."""
    try:
        run = store.get_run(run_id)
    except KeyError:
        st.warning(f"Run {md_code(run_id)} does not exist (it may have been deleted).")
        return
    live = _anything_live(store, run)
    if poll:
        run_every = REFRESH_S if live else None
        st.session_state[f"{RUN_EVERY_KEY}_{key}"] = run_every  # what tests read
        st.fragment(run_every=run_every)(_view)(store, run_id, key, live)
    else:
        _view(store, run_id, key, False)


def _anything_live(store: RunStore, run: RunInfo) -> bool:
    if run.is_live:
        return True
    try:
        found = find_baselines(run.config, store.runs_dir)
    except ConfigError:
        return False
    return any(store.get_run(i).is_live for i in found.values())


def _view(store: RunStore, run_id: str, key: str, was_live: bool) -> None:
    try:
        run = store.get_run(run_id)
        cfg = parse_config(run.config)
    except KeyError:
        st.warning(f"Run {md_code(run_id)} was deleted.")
        return
    except ConfigError as exc:
        st.info(f"No baselines for this run: its config does not validate here ({md_text(exc)}).")
        return
    if was_live and not _anything_live(store, run):
        st.rerun()  # everything ended: a full rerun declares the fragment without polling
    if run.architecture == BASELINE_ARCHITECTURE and len(cfg.task_weights()) == 1:
        st.caption("This run is itself a single-task model: it is a baseline for multi-task "
                   "runs with the same settings, not something to compare with one.")
        return
    configs = baseline_configs(cfg)
    if not configs:
        st.caption("No task has a positive weight, so there is nothing to compare.")
        return
    notice = st.session_state.pop(f"{_NOTICE}_{key}", None)
    if notice:
        st.success(notice)
    found = find_baselines(cfg, store.runs_dir)
    _baseline_runs(store, configs, found)
    missing = [t for t in configs if t not in found]
    if st.button("Train single-task baselines", key=f"{key}_train", icon="🧪",
                 disabled=not missing, type="primary" if missing else "secondary",
                 help="One single-task model per task, with the same data, layer sizes, "
                      "optimiser, seed and number of epochs. Baselines that already exist "
                      "with exactly these settings are reused."
                 if missing else "Every task already has its baseline."):
        _submit(store, cfg, found, key)
    _comparison(compare_run(run_id, store.runs_dir), key)


def _baseline_runs(store: RunStore, configs: dict[str, Any], found: dict[str, str]) -> None:
    rows = []
    for task in configs:
        run_id = found.get(task)
        if run_id is None:
            rows.append({"task": task, "baseline run": "–", "status": "none yet"})
            continue
        base = store.get_run(run_id)
        rows.append({"task": task, "baseline run": f"{base.name} · {run_id}",
                     "status": f"{STATUS_ICONS.get(base.status, '')} {base.status}".strip()})
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")


def _submit(store: RunStore, cfg: Any, before: dict[str, str], key: str) -> None:
    from mtl_core import jobs

    try:
        from ui.identity import current_actor

        ids = find_or_submit_baselines(cfg, store.runs_dir, owner=current_actor())
    except (ConfigError, ValueError, OSError) as exc:
        st.error(f"Could not queue the baselines: {md_text(exc)}")
        return
    reused = [f"{md_text(t)} (`{i}`)" for t, i in ids.items() if before.get(t) == i]
    queued = [f"{md_text(t)} (`{i}`)" for t, i in ids.items() if before.get(t) != i]
    parts = []
    if queued:
        try:
            limit = jobs.max_concurrent()
        except ValueError:
            limit = "?"
        parts.append(f"Queued {len(queued)}: {', '.join(queued)} "
                     f"(up to {limit} train at a time).")
    if reused:
        parts.append(f"Reused {len(reused)} with the same settings: {', '.join(reused)}.")
    st.session_state[f"{_NOTICE}_{key}"] = " ".join(parts)
    st.rerun()  # the whole page: its refresh now follows the new runs


def _comparison(comp: Comparison, key: str) -> None:
    st.dataframe(comparison_frame(comp), hide_index=True, width="stretch", key=f"{key}_table",
                 column_config={c: st.column_config.NumberColumn(c, format="%.4g")
                                for c in ("multi-task", "single-task baseline")}
                 | {c: st.column_config.NumberColumn(c, format="%+.2f")
                    for c in ("change (%)", "Δm term (%)")})
    st.caption(f"Compared on the {comp.split} set. Primary metric: accuracy for "
               "classification, MSE for regression, IoU for boxes, mIoU for segmentation, "
               "abs_rel for per-pixel regression (depth).")
    if any(r.term is not None for r in comp.rows):
        st.plotly_chart(terms_figure(comp), key=f"{key}_bars", config=PLOTLY_CONFIG)
    if comp.delta_m is not None:
        st.metric("Δm, multi-task vs single-task", f"{comp.delta_m:+.2f} %",
                  help="Negative is better.")
        st.markdown(f"**Δm = {comp.delta_m:+.2f} %**: {delta_m_verdict(comp.delta_m)}.")
    else:
        st.info(f"No Δm yet: {md_text(comp.note)}.")  # it names tasks
    if comp.seeds is not None:  # a stacked run against baselines with the same seeds
        st.markdown(f"**Over the seeds:** {comp.seeds.text()}.")
        st.plotly_chart(seeds_figure(comp.seeds), key=f"{key}_seeds", config=PLOTLY_CONFIG)
    st.latex(DELTA_M_LATEX)
    with st.expander("What Δm means", expanded=comp.delta_m is not None):
        st.markdown(DELTA_M_EXPLANATION)
