"""MTL Lab: the Streamlit entry point (`streamlit run app.py`).

Page config, navigation over pages/, and the sidebar every page shares: the current run with
its status, a run picker, and where runs and data live. Runs dir: $MTL_RUNS_DIR (default
./runs); data dir: $MTL_DATA_DIR. `?run=ID` in the URL opens that run (ui.state); `?cfg=TOKEN`
loads a shared config into the Train page and `?mode=class` turns on class mode, which also
keeps the sidebar to the current run (ui.train_run.follow_url).

`streamlit run app.py` finds the `st.App` at the bottom and serves it: the server imports torch
and the chart code before it answers (ui.preload.at_server_start), and each session runs this
file as `__main__` (main()).
"""
from __future__ import annotations

import time
from pathlib import Path

import streamlit as st

from ui import preload
from ui.identity import identity_sidebar
from ui.state import APP_RAN_KEY, current_run_id, get_store, runs_dir, set_current_run
from ui.text import md_code, md_text

# Only light modules above: the shell (navigation, sidebar, title) draws before torch and the
# chart code are imported (ui.preload); the functions below import the rest once it is there.

PAGES_DIR = Path(__file__).parent / "pages"
# One line per page (file, title, icon); the first is the default. A listed page appears as
# soon as its file exists, so a page under construction never breaks the app.
PAGES = [
    ("train.py", "Build & Train", ":material/model_training:"),
    ("predictions.py", "Predictions", ":material/image_search:"),
    ("runs.py", "Runs", ":material/list_alt:"),
    ("compare.py", "Compare runs", ":material/compare_arrows:"),
    ("sweep.py", "Weight sweep", ":material/tune:"),
    ("lessons.py", "Lessons", ":material/school:"),
    ("geometry.py", "Gradient geometry", ":material/insights:"),
    ("papers.py", "Paper checks", ":material/menu_book:"),
]
BADGE_COLOURS = {"queued": "gray", "running": "blue", "paused": "orange", "finished": "green",
                 "stopped": "gray", "diverged": "red", "failed": "red"}
RECONCILE_EVERY_S = 10.0  # dead workers are found within this, without a query per rerun
PICKER_RUNS = 50
PICK_KEY = "sidebar.run_pick"
RECOVERY_NOTICE_S = 3600.0  # a rebuild of the index is mentioned for this long
_MISSING_RUN = "_missing_run"  # the current run the store no longer has (said once)


def _reconcile() -> None:
    """Mark runs whose worker died as failed (cheap; throttled per session)."""
    last = st.session_state.get("_reconciled_at", 0.0)
    if time.time() - last < RECONCILE_EVERY_S:
        return
    st.session_state["_reconciled_at"] = time.time()
    from mtl_core import jobs

    try:
        jobs.reconcile(runs_dir())
    except Exception as exc:  # the sidebar must render even if the store is unhappy
        st.sidebar.warning(f"Could not check the workers: {exc}")


def _label(run) -> str:
    from ui.run_table import STATUS_ICONS

    return f"{STATUS_ICONS.get(run.status, '')} {run.name} · {run.id}"


def _on_pick() -> None:
    picked = st.session_state.get(PICK_KEY)
    # A rerun the browser sent with the label it showed before the run's status (and so its
    # label) moved comes back as that label itself (Streamlit returns an unknown formatted
    # option as is): the run id is its last part.
    if isinstance(picked, str) and " · " in picked:
        picked = picked.rsplit(" · ", 1)[-1]
    set_current_run(picked)


def _current_run(run_id: str | None) -> None:
    if not run_id:
        st.caption("None yet: press Start on Build & Train, or pick a run below.")
        return
    try:
        run = get_store().get_run(run_id)
    except KeyError:
        st.caption(f"Run {md_code(run_id)} was deleted.")
        return
    st.badge(run.status, color=BADGE_COLOURS.get(run.status, "gray"))
    st.caption(f"{md_text(run.name)} · `{run.id}`  \n"
               f"{run.suite} · {run.architecture} · {run.method}")
    if run.total_steps:
        st.progress(min(1.0, run.step / run.total_steps),
                    text=f"step {run.step} / {run.total_steps}")


def _navigation_links(pages: list) -> None:
    """The page menu (`client.showSidebarNavigation` is off in .streamlit/config.toml, so that
    Streamlit's own listing of pages/ by file name never shows on a fresh server)."""
    for p in pages:
        st.page_link(p)
def _recovery_notice(store) -> None:
    """One line when the run index was rebuilt lately (by any process), once per session."""
    note = store.recovery_note()
    if note and time.time() - note[0] < RECOVERY_NOTICE_S \
            and st.session_state.get("_recovery_seen") != note[0]:
        st.session_state["_recovery_seen"] = note[0]
        st.toast(note[1], icon=":material/build:")


def _sidebar() -> None:
    from mtl_core.data import data_dir
    from mtl_core.jobs import budget_text
    from ui.live import STATUS_REFRESH_S
    from ui.train_run import LEAVE_CLASS_MODE, TRAIN_PAGE, class_mode, devices

    store = get_store()
    _recovery_notice(store)
    identity_sidebar(store)
    run_id = current_run_id()
    runs = store.list_runs()[:PICKER_RUNS]
    by_id = {r.id: r for r in runs}
    missing = st.session_state.pop(_MISSING_RUN, None)
    if missing:
        st.warning(f"Run {md_code(missing)} was not found in {runs_dir()}.")  # from the URL
    if run_id and run_id not in by_id:  # deleted while the page ran
        try:
            by_id[run_id] = store.get_run(run_id)
            runs.append(by_id[run_id])
        except KeyError:
            set_current_run(None)
            run_id = None
    st.markdown("**Current run**")
    live = run_id is not None and by_id[run_id].is_live
    # Refreshed on its own while the run is live (the page around it is not); the live panel
    # beside it shows every step at its own, faster pace.
    st.fragment(run_every=STATUS_REFRESH_S if live else None)(_current_run)(run_id)
    if class_mode():  # lean: the class needs its current run, not the machine's details
        st.divider()
        st.caption(":material/school: Class mode")
        st.page_link(TRAIN_PAGE, label="Show all controls", icon=":material/tune:",
                     query_params=LEAVE_CLASS_MODE)
        return
    st.session_state[PICK_KEY] = run_id  # the picker follows the current run
    st.selectbox("Open a run", [r.id for r in runs], key=PICK_KEY, on_change=_on_pick,
                 format_func=lambda i: _label(by_id[i]), placeholder="Pick a run…")
    active = sum(1 for r in runs if r.status in ("running", "paused"))
    queued = sum(1 for r in runs if r.status == "queued")
    try:
        cores = budget_text()
    except ValueError as exc:
        cores = f"invalid MTL_MAX_JOBS ({exc})"
    st.divider()
    st.caption(f"Training: {active} active, {queued} queued  \nBudget: {cores}  \n"
               f"Devices: {', '.join(devices())}  \n"
               f"Runs: `{runs_dir().resolve()}`  \nData: `{data_dir()}`")


def _forget_missing_run() -> None:
    """A current run that is not in the store (deleted, a stale link) is dropped before the
    page runs; the sidebar says so."""
    run_id = current_run_id()
    if not run_id:
        return
    try:
        get_store().get_run(run_id)
    except KeyError:
        st.session_state[_MISSING_RUN] = run_id
        set_current_run(None)


def _full_page(page) -> None:
    from ui.train_run import follow_url  # imported by now (ui.preload)

    follow_url()
    _reconcile()
    _forget_missing_run()
    with st.sidebar:
        st.divider()
        sidebar = st.container()
    page.run()
    # Filled after the page: what its script run changed (a run just queued with Start, a run
    # deleted) shows in this same run; Start needs no second script run for the browser to
    # draw while the run trains.
    with sidebar:
        _sidebar()


def main() -> None:
    """One script run: the navigation and sidebar of every page, then the page itself."""
    st.set_page_config(page_title="MTL Lab", page_icon="🧪", layout="wide",
                       initial_sidebar_state="expanded")
    pages = [st.Page(PAGES_DIR / file, title=title, icon=icon, default=i == 0)
             for i, (file, title, icon) in enumerate(PAGES) if (PAGES_DIR / file).exists()]
    page = st.navigation(pages, position="hidden")
    st.session_state[APP_RAN_KEY] = True
    with st.sidebar:
        _navigation_links(pages)
    if preload.ready(wait_s=preload.FIRST_WAIT_S):
        _full_page(page)
    else:
        preload.first_paint(page.title)


if __name__ == "__main__":  # a session's script run (Streamlit runs this file as __main__)
    main()
else:  # `streamlit run app.py` imports this file once to serve it: the server's st.App
    app = st.App(__file__, lifespan=preload.at_server_start)
