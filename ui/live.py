"""The live panel of a run: status, progress, curves, weights and gradient conflict.

`live_panel(store, run_id)` draws what the store holds about one run inside an `st.fragment`
that refreshes every `LIVE_REFRESH_S` seconds while the run is live (queued, running,
paused) and not at all once it has ended. Because `run_every` is fixed when the fragment is
declared (on a full app run), the fragment triggers one full `st.rerun()` when it sees the run
end, so the page settles without polling. The panel only reads the store, so it shows a run
started from the CLI, in another tab or by another user just the same.

Metrics are read incrementally (`RunStore.metrics(run_id, after_id)`) and the accumulated
frame is cached in `st.session_state`, so a refresh costs one small query.
"""
from __future__ import annotations

import time
from typing import Any

import pandas as pd
import streamlit as st

from mtl_core.owners import ordinal
from mtl_core.store import ACTIVE_STATUSES, RunInfo, RunStore
from ui import charts
from ui.run_table import format_duration, latest_table
from ui.text import md_code, md_text

LIVE_REFRESH_S = 1.0
# The run's status beside the panel (the sidebar's current run, Stop/Pause) refreshes on its
# own at half that pace: each refresh is one more page update for the browser to draw while
# the run trains, and a status changes far less often than the curves.
STATUS_REFRESH_S = 2.0
RUN_EVERY_KEY = "_live_run_every"  # what the last full run chose (read by tests and pages)
_METRICS_CACHE = "_metrics_cache"
_CACHED_RUNS = 4  # frames kept per session (a class flips between a few runs)
TABS = ("Losses", "Metrics", "Weights & conflict", "Architecture state")
PLOTLY_CONFIG = {"displaylogo": False}


# ---------------------------------------------------------------- data


def cached_metrics(store: RunStore, run_id: str) -> pd.DataFrame:
    """All metric rows of a run, read incrementally and cached per session."""
    cache: dict[str, tuple[int, pd.DataFrame]] = st.session_state.setdefault(_METRICS_CACHE, {})
    last_id, frame = cache.pop(run_id, (0, None))
    new = store.metrics(run_id, after_id=last_id)
    if frame is None or frame.empty:
        frame = new
    elif not new.empty:
        frame = pd.concat([frame, new], ignore_index=True)
    if not frame.empty:
        last_id = int(frame["id"].iloc[-1])
    cache[run_id] = (last_id, frame)  # re-inserted last: most recently used
    while len(cache) > _CACHED_RUNS:
        cache.pop(next(iter(cache)))
    return frame


def run_tasks(info: RunInfo, df: pd.DataFrame) -> list[str]:
    """The run's task names: from its config, else from what has been logged."""
    tasks = [t["name"] for t in (info.config.get("tasks") or []) if isinstance(t, dict)]
    return tasks or charts.tasks_in(df)


def eta_seconds(info: RunInfo, now: float | None = None) -> float | None:
    """Time left at the current pace (running runs with some progress only)."""
    if info.status != "running" or not info.started_at or info.step <= 0:
        return None
    elapsed = (time.time() if now is None else now) - info.started_at
    return elapsed / info.step * max(0, info.total_steps - info.step)


def progress_text(info: RunInfo, now: float | None = None) -> str:
    epochs = info.config.get("optim", {}).get("epochs")
    parts = [f"epoch {info.epoch:.2f}" + (f" / {epochs}" if epochs else ""),
             f"step {info.step} / {info.total_steps or '?'}"]
    eta = eta_seconds(info, now)
    if eta is not None:
        parts.append(f"ETA {format_duration(eta)}")
    return " · ".join(parts)


def status_line(store: RunStore, info: RunInfo) -> tuple[str, str]:
    """(level, text) describing the run's state; level is an st alert name."""
    msg = f": {md_text(info.message)}" if info.message else ""  # it may quote user text
    if info.status == "queued":
        running = len(store.list_runs(ACTIVE_STATUSES))
        try:
            from mtl_core.jobs import max_concurrent  # no torch: safe in the page process

            limit: Any = max_concurrent()
        except ValueError:
            limit = "?"
        place = store.queue_place(info.id, limit if isinstance(limit, int) else None)
        where = (f"{ordinal(place.position)} in line of {place.queued}; " if place else "")
        if place and place.owner_cap and place.owner_active >= place.owner_cap:
            return "info", (f"⏳ Queued — {where}waiting for one of its owner's "
                            f"{place.owner_active} running runs to end (limit "
                            f"{place.owner_cap} per person)")
        return "info", (f"⏳ Queued — {where}waiting for a free slot ({running} running, "
                        f"limit {limit})")
    if info.status == "running":
        where = f" on {info.device}" if info.device else ""
        return "info", f"▶️ Running{where}"
    if info.status == "paused":
        return "warning", f"⏸️ Paused at step {info.step}{msg}"
    if info.status == "finished":
        took = format_duration(info.duration)
        return "success", f"✅ Finished in {took}{msg}"
    if info.status == "stopped":
        return "info", f"⏹️ Stopped{msg or ' by request'}"
    if info.status == "diverged":
        return "error", (f"💥 Diverged{msg}. A loss became NaN or infinite: try a lower "
                         "learning rate or smaller task weights.")
    if info.status == "failed":
        return "error", f"❌ Failed{msg}"
    return "info", info.status


# ---------------------------------------------------------------- panel


def live_panel(store: RunStore, run_id: str) -> None:
    """Draw the live panel of `run_id`; it polls the store only while the run is live."""
    try:
        info = store.get_run(run_id)
    except KeyError:
        st.warning(f"Run {md_code(run_id)} does not exist (it may have been deleted).")
        return
    run_every = LIVE_REFRESH_S if info.is_live else None
    st.session_state[RUN_EVERY_KEY] = run_every
    st.fragment(run_every=run_every)(_panel)(store, run_id, info.is_live)


def fragment_run_info(store: RunStore, run_id: str, was_live: bool) -> RunInfo | None:
    """The run's info, read inside a polling fragment: None (with a warning) once deleted; a
    full `st.rerun()` once the run has ended, so the fragment is declared again without
    `run_every` and stops polling."""
    try:
        info = store.get_run(run_id)
    except KeyError:
        st.warning(f"Run {md_code(run_id)} was deleted.")
        return None
    if was_live and not info.is_live:
        st.rerun()
    return info


def _panel(store: RunStore, run_id: str, was_live: bool) -> None:
    info = fragment_run_info(store, run_id, was_live)
    if info is None:
        return
    _header(store, info)
    df = cached_metrics(store, run_id)
    tasks = run_tasks(info, df)
    if df.empty:
        # No empty chart: the Train page has the browser load the charts' code beforehand
        # (ui.chart_warmup), and an empty one only cost the browser a plot to throw away.
        st.caption("No metrics yet — the first point appears after the first training step, "
                   f"then one every {info.config.get('log_every', 20)} steps.")
        return
    shown, log_y, smoothing, splits = _controls(run_id, tasks)
    band = _band_control(df)
    colors = charts.task_colors(tasks + ["total"])
    tabs = st.tabs(list(TABS), key="live_tab", on_change="rerun")
    opened = [tab.open is not False for tab in tabs]  # None (no tracking) means draw it
    with tabs[0]:
        if opened[0]:
            _losses_tab(df, shown, splits, log_y, smoothing, colors, band)
    with tabs[1]:
        if opened[1]:
            _metrics_tab(df, shown, log_y, colors, run_id, band)
    with tabs[2]:
        if opened[2]:
            _conflict_tab(df, shown, log_y, smoothing, colors)
    with tabs[3]:
        if opened[3]:
            _architecture_tab(store, run_id, tasks)
    # Formatted as text: 4 significant digits read well on a projector, and "–" beats "None".
    # A Markdown table, not st.dataframe: the data grid's code and canvas cost the browser
    # more on each refresh than the run's own curves, on the cores the run trains on.
    with st.container(key="live_latest"):
        st.markdown("**Latest numbers**\n\n" + markdown_table(latest_text(df, tasks)))


def latest_text(df: pd.DataFrame, tasks: list[str]) -> pd.DataFrame:
    """The latest numbers as text: 4 significant digits, "mean ± sd" over a stacked run's
    seeds."""
    table = latest_table(df, tasks)
    sd = latest_table(df, tasks, "sd") if charts.has_replicas(df) else None

    def cell(task: str, column: str) -> str:
        value = table.at[task, column]
        if pd.isna(value):
            return "–"
        if sd is None or task not in sd.index or column not in sd.columns \
                or pd.isna(sd.at[task, column]):
            return f"{value:.4g}"
        return f"{value:.4g} ± {sd.at[task, column]:.2g}"

    return pd.DataFrame({c: [cell(t, c) for t in table.index] for c in table.columns},
                        index=table.index)


# Characters that start Markdown's inline syntax or Streamlit's own (links, images, emphasis,
# code, HTML, LaTeX, :color[...] and :icon: directives, the table's pipes): a task name comes
# from a CSV header a student uploaded, and this table is shown to everyone watching the run.
def markdown_table(table: pd.DataFrame) -> str:
    """`table` (text cells) as a Markdown table, its index as the first column; every cell
    shows its text as it is (Markdown's special characters escaped)."""
    head = [table.index.name or ""] + [str(c) for c in table.columns]
    lines = ["| " + " | ".join(md_text(h) for h in head) + " |",
             "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(md_text(v) for v in [index, *row]) + " |"
              for index, row in zip(table.index, table.itertuples(index=False), strict=True)]
    return "\n".join(lines)


def _band_control(df: pd.DataFrame) -> str:
    """How the seeds of a stacked run are drawn around each mean curve (nothing to choose
    for one seed)."""
    if not charts.has_replicas(df):
        return "none"
    seeds = int(df["replica"].nunique())
    choice = st.segmented_control(
        f"Spread over the {seeds} seeds", list(charts.BANDS), default="sd",
        format_func=charts.BANDS.get, key="live_band",
        help="Each curve is the mean over the run's seeds (`replicas`); the band shows how "
             "much they differ: ±1 standard deviation, the lowest to the highest seed, or "
             "every seed as a thin line.")
    return choice or "sd"


def _header(store: RunStore, info: RunInfo) -> None:
    level, text = status_line(store, info)
    getattr(st, level)(f"**{md_text(info.name)}** · `{info.id}` — {text}")
    if info.total_steps:
        st.progress(min(1.0, info.step / info.total_steps), text=progress_text(info))


def _controls(run_id: str, tasks: list[str]) -> tuple[list[str], bool, float, list[str]]:
    """Widgets that shape the charts (Plotly's own legend/zoom state is lost on refresh)."""
    c1, c2, c3, c4 = st.columns([3, 2, 1.2, 2])
    shown = c1.multiselect("Tasks", tasks, default=tasks, key=f"live_tasks_{run_id}")
    splits = c2.segmented_control("Loss curves", ["train", "val"], default=["train", "val"],
                                  selection_mode="multi", key="live_splits") or []
    log_y = c3.toggle("Log scale", key="live_log")
    smoothing = c4.slider("Smoothing", 0.0, 0.99, 0.6, 0.01, key="live_smooth",
                          help="Exponential moving average of the per-step curves, like "
                               "TensorBoard's; the raw curve stays faint underneath.")
    return shown, log_y, smoothing, splits


def _chart(fig: Any, key: str) -> None:
    st.plotly_chart(fig, key=key, config=PLOTLY_CONFIG)


def _losses_tab(df: pd.DataFrame, tasks: list[str], splits: list[str], log_y: bool,
                smoothing: float, colors: dict[str, str], band: str = "none") -> None:
    with_total = st.toggle("Show the weighted total  L = Σ wᵢ·Lᵢ", value=True, key="live_total")
    _chart(charts.loss_figure(df, tasks + (["total"] if with_total else []), splits or ["train"],
                              log_y=log_y, smoothing=smoothing, colors=colors, band=band),
           "live_loss")


def _metrics_tab(df: pd.DataFrame, tasks: list[str], log_y: bool, colors: dict[str, str],
                 run_id: str, band: str = "none") -> None:
    names = charts.metric_names(df)
    if not names:
        st.caption("Validation metrics appear after the first evaluation.")
        return
    # Keyed per run: another run may log other metrics (accuracy vs r2).
    metric = st.radio("Metric", names, horizontal=True, key=f"live_metric_{run_id}")
    _chart(charts.metric_figure(df, tasks, metric or names[0], log_y=log_y, colors=colors,
                                band=band), "live_metric_chart")
    st.caption("Dashed: validation after each evaluation; dotted: the test set at the end.")


def _conflict_tab(df: pd.DataFrame, tasks: list[str], log_y: bool, smoothing: float,
                  colors: dict[str, str]) -> None:
    left, right = st.columns(2)
    with left:
        _chart(charts.weights_figure(df, tasks, smoothing=smoothing, colors=colors),
               "live_weights")
    with right:
        _chart(charts.grad_norm_figure(df, tasks, log_y=log_y, smoothing=smoothing,
                                       colors=colors), "live_grad_norm")
    pairs = [p for p in charts.pairs_in(df)
             if all(t in tasks for t in p.split(charts.PAIR_SEP, 1))]
    if pairs:
        left, right = st.columns([3, 2])
        with left:
            _chart(charts.cosine_figure(df, pairs, smoothing=smoothing), "live_cosine")
        with right:
            _chart(charts.cosine_heatmap(df, tasks), "live_cosine_heatmap")
        st.caption("Cosine of two tasks' gradients on the shared parameters: near 1 they agree, "
                   "near 0 they are unrelated, below 0 they pull the shared layers in opposite "
                   "directions (gradient conflict).")
    else:
        st.caption("Gradient cosines need at least two tasks with shared parameters.")
    if ((df["split"] == "diag") & (df["name"] == "update_norm")).any():
        _chart(charts.update_norm_figure(df, log_y=log_y, smoothing=smoothing),
               "live_update_norm")


def _architecture_tab(store: RunStore, run_id: str, tasks: list[str]) -> None:
    latest = store.latest_snapshot(run_id, "inspect")
    if latest is None:
        st.info("No architecture state to show for this run. Cross-stitch networks show their "
                "mixing matrices here, MMoE its gate weights, MTAN its attention masks.")
        return
    step, payload = latest
    st.caption(f"From the evaluation at step {step}.")
    figures = charts.inspect_figures(payload, tasks)
    if not figures:
        st.json(payload, expanded=False)
    for key, fig in figures:
        _chart(fig, f"live_inspect_{key}")
