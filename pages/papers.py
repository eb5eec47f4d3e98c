"""Paper checks: each published figure next to the one measured here, a verdict and the
source. The same checks as `python -m mtl_core reproduce`; "Run this check" starts that
command as its own process (training never happens in the page), and its result, saved in the
run store's paper_checks/ folder, shows here when it ends.
"""
from __future__ import annotations

from ui.state import through_app

through_app()  # first, before the heavy imports: a link straight here reruns through app.py

import time

import pandas as pd
import streamlit as st

from mtl_core.reproduce import CHECKS, HOLDS, load_result, running_pid, start_background
from ui.state import runs_dir

REFRESH_S = 3.0


def _result(name: str) -> None:
    folder = runs_dir()
    pid = running_pid(folder, name)
    result = load_result(folder, name)
    if pid is not None:
        st.info(f"Running (process {pid}); the result appears here when it ends.",
                icon=":material/hourglass_top:")
    if result is None:
        if pid is None:
            st.caption("Not run here yet: press Run, or `python -m mtl_core reproduce "
                       f"{name}` (the page reads the same store).")
        return
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(result["finished_at"]))
    if result.get("error"):
        st.error(f"Could not run ({when}): {result['error']}")
        return
    holds = result["verdict"] == HOLDS
    (st.success if holds else st.warning)(
        f"**Measured here:** {result['measured']}  \n**Verdict:** {result['verdict']}",
        icon=":material/check_circle:" if holds else ":material/cancel:")
    if result.get("expected"):
        st.markdown(f"**Expected for this scaled setting:** {result['expected']}")
    st.caption(f"Setting ({result['size']}, {result['seconds']:.0f} s, {when}): "
               f"{result['setting']}")
    if result.get("rows"):
        st.dataframe(pd.DataFrame(result["rows"]), hide_index=True)


def _card(check) -> None:
    with st.container(border=True):
        st.markdown(f"#### {check.title}  \n`{check.name}`")
        left, right = st.columns(2)
        left.markdown(f"**Claim.** {check.claim}")
        right.markdown(f"**Published:** {check.published}  \n**Source:** {check.source}")
        busy = running_pid(runs_dir(), check.name) is not None
        c1, c2 = st.columns([1, 3], vertical_alignment="center")
        if c1.button("Run this check", key=f"paper_run_{check.name}", disabled=busy,
                     icon=":material/play_arrow:"):
            start_background(runs_dir(), check.name)
            st.rerun()
        c2.caption(f"CLI: `python -m mtl_core reproduce {check.name}` (add `--full` for the "
                   "published setting, on a GPU)")
        _result(check.name)


st.title("Paper checks")
st.caption("Does MTL Lab reproduce what the papers report? Each check names the published "
           "figure and where it is printed, then measures the same thing here with the same "
           "engine that trains your runs. Scaled-down settings say what they are expected to "
           "reach; `--full` runs the published setting.")


def _running() -> bool:
    return any(running_pid(runs_dir(), name) is not None for name in CHECKS)


def _cards(polling: bool) -> None:
    for check in CHECKS.values():
        _card(check)
    if polling and not _running():
        st.rerun()  # the last check ended: a full rerun stops the polling


_polling = _running()
st.fragment(run_every=REFRESH_S if _polling else None)(_cards)(_polling)
