"""Predictions of a run, live while it trains.

Image suites: a grid of probe images with each task's predicted and true label (wrong ones
marked), true and predicted boxes drawn on the images, and true vs predicted masks and depth
maps for per-pixel tasks. Classification: a confusion matrix per task. Regression:
predicted vs true. 2-D suites: each task's decision boundary over the points, like
TensorFlow Playground. Every picture says which evaluation step it is from; a slider goes
back to earlier evaluations.
"""
from __future__ import annotations

from ui.state import through_app

through_app()  # first, before the heavy imports: a link straight here reruns through app.py

from typing import Any

import streamlit as st

from mtl_core.sink import replica_kind
from mtl_core.store import RunInfo, RunStore
from ui import charts, vision_charts
from ui.live import fragment_run_info
from ui.run_table import STATUS_ICONS
from ui.state import current_run_id, get_store, set_current_run

REFRESH_S = 2.0
EVAL_KINDS = ("predictions", "grid", "confusion", "scatter")
PLOTLY_CONFIG = {"displaylogo": False}
_SNAP_CACHE = "_pred_snapshots"


# ---------------------------------------------------------------- data


def snapshot_history(store: RunStore, run_id: str, kind: str,
                     live: bool) -> list[tuple[int, dict[str, Any]]]:
    """Snapshots of one kind, cached per session. While the run is live only the newest one
    is read on each refresh (appended when it is new), so polling stays cheap; once the run
    has ended the full list is read once."""
    cache: dict[tuple[str, str], dict[str, Any]] = st.session_state.setdefault(_SNAP_CACHE, {})
    for key in [k for k in cache if k[0] != run_id]:
        del cache[key]  # keep one run's payloads in memory, not every run ever opened
    entry = cache.get((run_id, kind))
    if entry is None or (not live and not entry["complete"]):
        entry = {"complete": not live, "items": store.snapshots(run_id, kind)}
    elif live:
        latest = store.latest_snapshot(run_id, kind)
        if latest is not None and (not entry["items"] or latest[0] > entry["items"][-1][0]):
            entry["items"].append(latest)
    cache[(run_id, kind)] = entry
    return entry["items"]


def at_step(items: list[tuple[int, dict[str, Any]]], step: int) -> dict[str, Any] | None:
    """The payload of the latest snapshot at or before `step`."""
    best = None
    for s, payload in items:
        if s <= step:
            best = payload
    return best


def task_kinds(probe: dict[str, Any] | None, snaps: dict[str, dict[str, Any] | None],
               tasks: list[str]) -> dict[str, str]:
    """Each task's kind: from the probe snapshot, else guessed from which snapshots hold it."""
    kinds = {t: info["kind"] for t, info in charts.probe_tasks(probe or {}).items()}
    for task in tasks:
        if task not in kinds:
            if task in (snaps.get("scatter") or {}):
                kinds[task] = "regression"
            elif task in (snaps.get("confusion") or {}):
                kinds[task] = "classification"
    return kinds


# ---------------------------------------------------------------- page parts


def _pick() -> None:
    # A callback runs before the script, so the shared sidebar already shows the new run.
    set_current_run(st.session_state.get("pred_run"))


def _run_picker(store: RunStore) -> RunInfo | None:
    """The run to show: the current run (?run=ID, the sidebar), changeable here."""
    runs = store.list_runs()
    if not runs:
        st.info("No runs yet. Start one on the Train page; its predictions appear here while "
                "it trains.")
        return None
    by_id = {r.id: r for r in runs}
    current = current_run_id()
    if current not in by_id:
        current = runs[0].id  # no current run yet: the newest
    st.session_state["pred_run"] = current  # the picker follows the current run
    choice = st.selectbox(
        "Run", list(by_id), key="pred_run", on_change=_pick,
        format_func=lambda rid: f"{by_id[rid].name} · {rid} · "
                                f"{STATUS_ICONS.get(by_id[rid].status, '')} {by_id[rid].status}")
    return by_id[choice]


def _step_slider(run_id: str, steps: list[int]) -> int:
    """Pick an evaluation step; it follows the newest one unless the user moved it back."""
    key, latest_key = f"pred_step_{run_id}", f"_pred_latest_{run_id}"
    chosen = st.session_state.get(key)
    if chosen not in steps or chosen == st.session_state.get(latest_key):
        st.session_state[key] = steps[-1]
    st.session_state[latest_key] = steps[-1]
    if len(steps) == 1:
        return steps[0]
    return int(st.select_slider("Evaluation step", options=steps, key=key,
                                help="Look at the predictions of an earlier evaluation"))


def _chart(fig: Any, key: str) -> None:
    st.plotly_chart(fig, key=key, config=PLOTLY_CONFIG)


def _in_columns(items: list[tuple[str, Any]], n: int = 2) -> None:
    for start in range(0, len(items), n):
        for col, (key, fig) in zip(st.columns(n), items[start:start + n], strict=False):
            with col:
                _chart(fig, key)


def _boundaries(grid: dict[str, Any], tasks: list[str], kinds: dict[str, str]) -> None:
    st.subheader("Decision boundaries")
    st.caption("Each task's output over the plane — for a yes/no task orange is class 0, blue "
               "class 1 and the dark line p = 0.5; dots are validation points coloured by their "
               "true label.")
    figs = [(f"pred_grid_{t}", charts.boundary_figure(grid, t, kinds.get(t)))
            for t in tasks if t in (grid.get("values") or {})]
    _in_columns(figs, 3 if len(figs) >= 3 else max(1, len(figs)))


def _images(probe: dict[str, Any], preds: dict[str, Any] | None, tasks: list[str]) -> None:
    st.subheader("Probe images")
    rows = charts.probe_rows(probe, preds, tasks)
    wrong = sum(any(c is False for *_, c in r["tasks"]) for r in rows)
    st.caption(f"A fixed batch of {len(rows)} validation images; red marks a wrong prediction "
               f"({wrong} of {len(rows)} images have at least one).")
    st.html(charts.image_grid_html(probe, preds, tasks))


def _probe_table(probe: dict[str, Any], preds: dict[str, Any] | None, tasks: list[str]) -> None:
    rows = charts.probe_rows(probe, preds, tasks)
    if not rows:
        return
    with st.expander(f"Probe samples ({len(rows)}): predicted vs true"):
        table = []
        for i, row in enumerate(rows):
            entry: dict[str, Any] = {"#": i}
            for task, pred, true, correct in row["tasks"]:
                mark = {True: " ✓", False: " ✗"}.get(correct, "")  # type: ignore[arg-type]
                entry[f"{task} predicted"] = pred + mark
                entry[f"{task} true"] = true
            table.append(entry)
        st.dataframe(table, hide_index=True, width="stretch", key="pred_probe_table")


def _dense(probe: dict[str, Any], preds: dict[str, Any] | None, tasks: list[str]) -> None:
    info = charts.probe_tasks(probe)
    shown = vision_charts.dense_tasks(info, tasks)
    if not shown:
        return
    st.subheader("Per-pixel predictions (probe images)")
    st.caption("Top row: the truth, bottom row: the model's prediction, for the first probe "
               "images above. Masks: one colour per class; depth: brighter is nearer.")
    outputs = (preds or {}).get("outputs") or {}
    for task in shown:
        fig = vision_charts.dense_figure(
            (probe.get("targets") or {}).get(task) or [], outputs.get(task), task,
            info[task]["kind"], info[task].get("class_names"))
        _chart(fig, f"pred_dense_{task}")


def _confusions(confusion: dict[str, Any], tasks: list[str], probe: dict[str, Any]) -> None:
    st.subheader("Confusion matrices (validation set)")
    normalize = st.toggle("Show fractions of each true class", key="pred_cm_norm")
    info = charts.probe_tasks(probe)
    figs = [(f"pred_cm_{t}", charts.confusion_figure(
        confusion[t], (info.get(t) or {}).get("class_names"), t, normalize))
        for t in tasks if t in confusion]
    _in_columns(figs, 2)


def _scatters(scatter: dict[str, Any], tasks: list[str]) -> None:
    st.subheader("Regression: predicted vs true (validation set)")
    colors = charts.task_colors(tasks)
    figs = [(f"pred_sc_{t}", charts.scatter_figure(scatter[t]["true"], scatter[t]["pred"], t,
                                                   color=colors.get(t, charts.PALETTE[0])))
            for t in tasks if t in scatter]
    _in_columns(figs, 2)


def _replica_picker(run_id: str, config: dict[str, Any]) -> int:
    """Which seed of a stacked run (`replicas: K`) to show; 0 for an ordinary run."""
    k = int(config.get("replicas") or 1)
    if k < 2:
        return 0
    seed = int(config.get("seed") or 0)
    return st.selectbox("Seed (replica)", list(range(k)), key=f"pred_replica_{run_id}",
                        format_func=lambda r: f"seed {seed + r} (replica {r})",
                        help="This run trained several seeds together; each has its own "
                             "predictions.") or 0


def _view(store: RunStore, run_id: str, was_live: bool) -> None:
    info = fragment_run_info(store, run_id, was_live)
    if info is None:
        return
    live = info.is_live
    replica = _replica_picker(run_id, info.config)
    history = {kind: snapshot_history(store, run_id, replica_kind(kind, replica), live)
               for kind in EVAL_KINDS}
    steps = sorted({s for items in history.values() for s, _ in items})
    if not steps:
        if info.is_live:
            st.info("The first predictions appear after the first evaluation (by default at "
                    "the end of the first epoch).")
        else:
            st.info(f"This run ({info.status}) has no evaluation snapshots.")
        return
    step = _step_slider(run_id, steps)
    snaps = {kind: at_step(items, step) for kind, items in history.items()}
    probe_items = snapshot_history(store, run_id, replica_kind("probe", replica), live)
    probe = probe_items[-1][1] if probe_items else {}
    tasks = [t["name"] for t in info.config.get("tasks") or [] if isinstance(t, dict)]
    tasks = tasks or list(charts.probe_tasks(probe)) or list(snaps["confusion"] or {})
    kinds = task_kinds(probe, snaps, tasks)
    newest = " (newest)" if step == steps[-1] else f" (newest is {steps[-1]})"
    st.caption(f"Showing the evaluation at step **{step}**{newest}"
               + (" · refreshing while the run is live" if live else ""))

    if snaps["grid"]:
        _boundaries(snaps["grid"], tasks, kinds)
    if charts.has_images(probe):
        _images(probe, snaps["predictions"], tasks)
        _dense(probe, snaps["predictions"], tasks)
    elif probe and not snaps["grid"]:
        _probe_table(probe, snaps["predictions"], tasks)
    if snaps["confusion"]:
        _confusions(snaps["confusion"], tasks, probe)
    if snaps["scatter"]:
        _scatters(snaps["scatter"], tasks)


st.title("Predictions")
_store = get_store()
_run = _run_picker(_store)
if _run is not None:
    st.fragment(run_every=REFRESH_S if _run.is_live else None)(_view)(_store, _run.id,
                                                                      _run.is_live)
