"""Page state shared by every page: the run store and the run currently looked at.

The current run lives in `st.session_state["run_id"]` and is mirrored in the URL (`?run=ID`),
so a reload, a second tab or a shared link opens the same run.
"""
from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from mtl_core.store import RunStore, default_runs_dir

APP_RAN_KEY = "_app_ran"  # set by app.py in every session it runs for


def through_app() -> None:
    """Call first in every page: make sure app.py runs around it.

    Because `pages/` exists, Streamlit treats its files as old-style pages until app.py's
    `st.navigation` has run once in the server's life. Until then, a link straight to a page
    (`/predictions?run=ID` as a server's first request) runs that file alone, with no sidebar,
    page config or URL handling. Turn that mode off and rerun: the rerun goes through app.py,
    which opens the same page."""
    try:  # Streamlit internals: a version without them has no old-style mode to leave
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:
        return
    if not getattr(PagesManager, "uses_pages_directory", False):
        return
    PagesManager.uses_pages_directory = False
    # A session that has been through app.py gets here only under AppTest, which turns the mode
    # back on before every run: a rerun there would drop the button click being tested.
    if not st.session_state.get(APP_RAN_KEY):
        st.rerun()


def runs_dir() -> Path:
    return Path(os.environ.get("MTL_RUNS_DIR") or default_runs_dir())


@st.cache_resource
def _store(path: str) -> RunStore:
    return RunStore(path)


def get_store() -> RunStore:
    return _store(str(runs_dir().resolve()))


def current_run_id() -> str | None:
    if "run_id" not in st.session_state:
        st.session_state["run_id"] = st.query_params.get("run")
    run_id = st.session_state["run_id"]
    if run_id and st.query_params.get("run") != run_id:
        st.query_params["run"] = run_id  # a page switch clears the URL: a reload keeps the run
    return run_id


def set_current_run(run_id: str | None) -> None:
    st.session_state["run_id"] = run_id
    if run_id:
        st.query_params["run"] = run_id
    elif "run" in st.query_params:
        del st.query_params["run"]
