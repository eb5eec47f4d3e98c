"""Runs: every run in the store, and what can be done with one (open, stop, delete, rename,
export, compare with its single-task baselines: Δm).

Everyone sees every run; Stop, Delete and Rename are offered only to the run's owner and the
teacher (the others see them disabled, with the reason), and mtl_core checks again. A queued
run says where it stands in the fair queue and why it waits.

The page only reads the store and writes control requests through `mtl_core.jobs`. While any
run is live the body refreshes every few seconds (a fragment) so statuses and progress move;
baselines are runs too, so the "Baselines & Δm" view follows them the same way.
"""
from __future__ import annotations

from ui.state import through_app

through_app()  # first, before the heavy imports: a link straight here reruns through app.py

from typing import Any

import pandas as pd
import streamlit as st
from streamlit.errors import StreamlitAPIException

from mtl_core import jobs
from mtl_core.owners import Actor, may_act, ordinal
from mtl_core.store import LIVE_STATUSES, RunInfo, RunStore
from ui.baselines_view import baselines_view
from ui.identity import current_actor
from ui.run_table import STATUS_ICONS, format_duration, metrics_csv, run_json, runs_frame
from ui.state import current_run_id, get_store, set_current_run
from ui.text import md_code, md_text

REFRESH_S = 2.0
TRAIN_PAGE = "pages/train.py"
TARGET_KEY = "runs_target"  # the selectbox naming the run the buttons act on
CONFIRM_KEY = "runs_confirm_delete"


def _label(run: RunInfo) -> str:
    return f"{run.name} · {run.id} · {STATUS_ICONS.get(run.status, '')} {run.status}"


def _pick_target(frame: pd.DataFrame, event: Any, by_id: dict[str, RunInfo]) -> str:
    """The run the actions apply to: a clicked table row wins, else the selectbox keeps its
    value, else the current run (?run=ID), else the newest run."""
    rows = list(getattr(getattr(event, "selection", None), "rows", []) or [])
    clicked = str(frame.iloc[rows[0]]["id"]) if rows and rows[0] < len(frame) else None
    if clicked and clicked != st.session_state.get("_runs_clicked"):
        st.session_state[TARGET_KEY] = clicked
    st.session_state["_runs_clicked"] = clicked
    if st.session_state.get(TARGET_KEY) not in by_id:
        current = current_run_id()
        st.session_state[TARGET_KEY] = current if current in by_id else next(iter(by_id))
    else:  # set it anyway: the browser shows the label anew (the run's status may have moved)
        st.session_state[TARGET_KEY] = st.session_state[TARGET_KEY]
    return st.selectbox("Run", list(by_id), key=TARGET_KEY,
                        format_func=lambda rid: _label(by_id[rid]))


def _open(run_id: str) -> None:
    set_current_run(run_id)
    try:  # keep ?run=ID: switch_page clears query params unless given
        st.switch_page(TRAIN_PAGE, query_params={"run": run_id})
    except StreamlitAPIException:
        st.info(f"Run {md_code(run_id)} is now the current run (the Train page is not available).")


def not_yours(run: RunInfo) -> str:
    return (f"Started by {md_text(run.owner_label)}: only they or the teacher can stop, delete or "
            "rename it. You can look at it, open it and export it.")


def _actions(store: RunStore, run: RunInfo, actor: Actor) -> None:
    mine = may_act(actor, run.owner)
    c_open, c_stop, c_del, c_csv, c_json = st.columns(5)
    if c_open.button("Open", icon="📈", key="runs_open", width="stretch",
                     help="Make this the current run and show it on the Train page"):
        _open(run.id)
    if c_stop.button("Stop", icon="⏹️", key="runs_stop", disabled=not run.is_live or not mine,
                     width="stretch", help="Stop the run; its metrics so far are kept" if mine
                     else not_yours(run)):
        try:
            outcome = jobs.stop(run.id, store.runs_dir, actor=actor)
            st.toast("Stopped." if outcome == "stopped" else "Stop requested.")
        except (KeyError, ValueError, PermissionError) as exc:
            st.error(md_text(exc))
    if c_del.button("Delete", icon="🗑️", key="runs_delete", disabled=run.is_live or not mine,
                    width="stretch", help="Stop a live run before deleting it" if mine
                    else not_yours(run)):
        st.session_state[CONFIRM_KEY] = run.id
    # Exports are built only when clicked (callable data): a big run costs nothing to list.
    c_csv.download_button("CSV", data=lambda: metrics_csv(store.metrics(run.id)),
                          file_name=f"{run.id}-metrics.csv", mime="text/csv", icon="⬇️",
                          key="runs_csv", on_click="ignore", width="stretch",
                          help="Every logged metric row (step, epoch, split, task, name, value)")
    c_json.download_button("JSON", data=lambda: run_json(store.get_run(run.id),
                                                         store.metrics(run.id)),
                           file_name=f"{run.id}.json", mime="application/json", icon="⬇️",
                           key="runs_json", on_click="ignore", width="stretch",
                           help="The run's config, status, summary and every metric row")
    if not mine:
        st.caption(f":material/lock: {not_yours(run)}")
    else:
        _rename(store, run, actor)
    if st.session_state.get(CONFIRM_KEY) == run.id and mine:
        _confirm_delete(store, run, actor)


def _rename(store: RunStore, run: RunInfo, actor: Actor) -> None:
    with st.popover("Rename", icon=":material/edit:"):
        name = st.text_input("New name", value=run.name, key=f"runs_rename_{run.id}",
                             max_chars=100)
        if st.button("Save name", key="runs_rename_save"):
            try:
                store.rename_run(run.id, name, actor)
            except (KeyError, ValueError, PermissionError) as exc:
                st.error(md_text(exc))  # it may quote the name
                return
            st.toast(f"Renamed to {md_text(name.strip())}.")
            st.rerun()


def queue_text(store: RunStore, run: RunInfo) -> str | None:
    """Where a queued run stands and why it waits, e.g. "3rd in line; waiting for a free
    slot: 2 of 2 running"."""
    try:
        limit: int | None = jobs.max_concurrent()
    except ValueError:
        limit = None
    place = store.queue_place(run.id, limit)
    if place is None:
        return None
    if place.owner_cap and place.owner_active >= place.owner_cap:
        why = (f"waiting for one of {md_text(run.owner_label)}'s runs to end: "
               f"{place.owner_active} of {place.owner_cap} allowed per person are running")
    elif limit is not None and place.active >= limit:
        why = f"waiting for a free slot: {place.active} of {limit} running"
    else:
        why = "starting as soon as a worker picks it up"
    return f"{ordinal(place.position)} in line of {place.queued} queued; {why}."


def _confirm_delete(store: RunStore, run: RunInfo, actor: Actor) -> None:
    st.warning(f"Delete **{md_text(run.name)}** (`{run.id}`) with all its metrics, predictions and "
               "checkpoints? This cannot be undone.")
    yes, no, _ = st.columns([1, 1, 4])
    if yes.button("Yes, delete", type="primary", key="runs_delete_yes"):
        st.session_state.pop(CONFIRM_KEY, None)
        try:
            store.delete_run(run.id, actor)
        except (KeyError, ValueError, PermissionError) as exc:
            st.error(md_text(exc))
            return
        if current_run_id() == run.id:
            set_current_run(None)
        st.session_state.pop(TARGET_KEY, None)
        st.toast(f"Deleted {md_text(run.name)}.")
        st.rerun()
    if no.button("Cancel", key="runs_delete_no"):
        st.session_state.pop(CONFIRM_KEY, None)
        st.rerun()


def _details(store: RunStore, run: RunInfo) -> None:
    bits = [f"owner **{md_text(run.owner_label)}**", f"suite **{run.suite}**",
            f"architecture **{run.architecture}**",
            f"method **{run.method}**", f"duration {format_duration(run.duration)}"]
    if run.device:
        bits.append(f"device {run.device}")
    executor, node = jobs.placement(run)
    bits.append(f"executor {executor}" + (f" on node {node}" if node else ""))
    st.caption(" · ".join(bits))
    if run.status == "queued":
        text = queue_text(store, run)
        if text:
            st.info(text, icon=":material/hourglass_top:")
    if run.message:
        (st.error if run.status in ("failed", "diverged") else st.caption)(md_text(run.message))


def _body(store: RunStore, was_live: bool) -> None:
    runs = store.list_runs()
    if was_live and not any(r.status in LIVE_STATUSES for r in runs):
        st.rerun()  # every run has ended: a full rerun declares the fragment without polling
    if not runs:
        st.info("No runs yet. Start one on the Train page, or from a terminal with "
                "`python -m mtl_core train examples/<config>.yaml`.")
        return
    query = st.text_input("Filter", key="runs_filter", placeholder="name, suite, method, status…")
    frame = runs_frame(runs)
    if query:
        cols = ["id", "name", "owner", "suite", "architecture", "method", "status"]
        text = frame[cols].fillna("").astype(str).agg(" ".join, axis=1).str.lower()
        frame = frame[text.str.contains(query.lower(), regex=False)].reset_index(drop=True)
    metric_cols = [c for c in frame.columns if " · " in c]
    config = {"progress": st.column_config.ProgressColumn("progress", min_value=0.0,
                                                          max_value=1.0, format="percent"),
              "id": st.column_config.TextColumn("id", help="use with `python -m mtl_core show`")}
    config.update({c: st.column_config.NumberColumn(c, format="%.3f") for c in metric_cols})
    event = st.dataframe(frame, key="runs_table", on_select="rerun",
                         selection_mode="single-row", hide_index=True, width="stretch",
                         column_config=config)
    st.download_button("Download this table (CSV)", frame.to_csv(index=False).encode(),
                       file_name="runs.csv", mime="text/csv", key="runs_table_csv",
                       on_click="ignore")
    st.divider()
    by_id = {r.id: r for r in runs}
    target = _pick_target(frame, event, by_id)
    run = by_id[target]
    _details(store, run)
    _actions(store, run, current_actor())
    st.subheader("Baselines & Δm", anchor="baselines")
    st.caption("Does sharing help? Each task of this run against a single-task model trained "
               "alone with the same settings.")
    baselines_view(store, run.id, key="runs_bl", poll=False)  # this fragment already polls


st.title("Runs")
st.caption("Every experiment run from this lab or the command line. Click a row to pick it.")
_store = get_store()  # (app.py reconciles dead workers for every page, throttled)
_live = any(r.status in LIVE_STATUSES for r in _store.list_runs())
st.fragment(run_every=REFRESH_S if _live else None)(_body)(_store, _live)
