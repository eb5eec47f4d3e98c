"""Load the browser's chart code while the user reads the form, not while a run trains.

Streamlit's frontend loads Plotly's code (one 4.7 MB JavaScript module) only when a page
first draws a Plotly chart. On the Train page that is the live panel, right after Start: on a
2-core machine the browser then compiles Plotly on the cores the run trains on, and a watched
run took 1.6× its CLI time. `warm_charts()` draws a tiny script, once per browser session,
that waits until the page's script run is over and the browser is idle, then imports that
same module (the URL Streamlit's own loader uses, so the live panel later finds it loaded).
Drawing an empty chart with the form instead delayed Start by 2–3 s (bench/RESULTS.md): the
chart's code loaded in the same burst as the form's.

Nothing here runs user input: the script is built from the module's file name only.
"""
from __future__ import annotations

import json
from pathlib import Path

import streamlit as st

_WARMED = "_charts_warmed"  # this session has drawn the script (its page load keeps Plotly)
_CHUNK_GLOB = "PlotlyChart.*.js"

# Runs in the page: once per page load, after the script run has ended and the main thread is
# idle; a failed import only means the chart loads its code when it is first drawn, as before.
_SCRIPT = """<script>(() => {
  if (window.__mtlChartsWarm) return;
  window.__mtlChartsWarm = true;
  const chunk = %s;
  const idle = () => {
    const app = document.querySelector('[data-testid="stApp"]');
    return !app || app.getAttribute("data-test-script-state") === "notRunning";
  };
  const load = () => {
    const main = document.querySelector('script[type="module"][src*="/static/js/index."]');
    const base = main ? main.src : new URL("static/js/", document.baseURI).href;
    import(new URL(chunk, base).href).catch(() => {});
  };
  const later = window.requestIdleCallback || ((f) => setTimeout(f, 200));
  const wait = () => idle() ? later(load, {timeout: 3000}) : setTimeout(wait, 250);
  setTimeout(wait, 250);
})();</script>"""


@st.cache_resource
def plotly_chunk() -> str | None:
    """The file name of the frontend's Plotly module (None if this Streamlit has none)."""
    js = Path(st.__file__).parent / "static" / "static" / "js"
    found = sorted(p.name for p in js.glob(_CHUNK_GLOB))
    return found[0] if len(found) == 1 else None


def warmup_script(chunk: str) -> str:
    """The page script that imports `chunk` (a file name next to Streamlit's main module)."""
    return _SCRIPT % json.dumps(chunk)


def warm_charts() -> bool:
    """Once per session, have the browser load Plotly's code in its idle time. True when the
    script was drawn by this call."""
    chunk = plotly_chunk()
    if chunk is None or st.session_state.get(_WARMED):
        return False
    st.session_state[_WARMED] = True
    st.html(warmup_script(chunk), unsafe_allow_javascript=True, width="content")
    return True
