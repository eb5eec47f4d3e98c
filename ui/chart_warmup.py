"""Load the browser's chart code while the user reads the form, not while a run trains.

Streamlit's frontend loads Plotly's code (one 4.7 MB JavaScript module) only when a page
first draws a Plotly chart. On the Train page that is the live panel, right after Start: on a
2-core machine the browser then compiles Plotly on the cores the run trains on, and a watched
run took 1.6× its CLI time. `warm_charts()` draws a tiny script, once per browser session,
that waits until the page's script run is over and its elements are drawn, then imports that
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

# Runs in the page, once per page load: once the script run has ended and the page's main
# control (`after`, a CSS selector) is drawn, so it does not compete with the form's own code
# (React reveals lazily loaded elements together, so that control comes with the others); a
# failed import only means the chart loads its code when it is first drawn, as before.
_SCRIPT = """<script>(() => {
  if (window.__mtlChartsWarm) return;
  window.__mtlChartsWarm = true;
  const chunk = %s, after = %s;
  const drawn = () => {
    const app = document.querySelector('[data-testid="stApp"]');
    return !app || (app.getAttribute("data-test-script-state") === "notRunning"
                    && document.querySelector(after) !== null);
  };
  const load = () => {
    const main = document.querySelector('script[type="module"][src*="/static/js/index."]');
    const base = main ? main.src : new URL("static/js/", document.baseURI).href;
    import(new URL(chunk, base).href).then(() => { window.__mtlChartsLoaded = true; },
                                          () => {});
  };
  const wait = () => drawn() ? setTimeout(load, 200) : setTimeout(wait, 100);
  setTimeout(wait, 100);
})();</script>"""


@st.cache_resource
def plotly_chunk() -> str | None:
    """The file name of the frontend's Plotly module (None if this Streamlit has none)."""
    js = Path(st.__file__).parent / "static" / "static" / "js"
    found = sorted(p.name for p in js.glob(_CHUNK_GLOB))
    return found[0] if len(found) == 1 else None


def warmup_script(chunk: str, after: str) -> str:
    """The page script that imports `chunk` (a file name next to Streamlit's main module) once
    the element `after` (a CSS selector) is on the page."""
    return _SCRIPT % (json.dumps(chunk), json.dumps(after))


def warm_charts(after: str) -> bool:
    """Once per session, have the browser load Plotly's code once the page is drawn (`after`:
    a CSS selector of its main control). True when the script was drawn by this call."""
    chunk = plotly_chunk()
    if chunk is None or st.session_state.get(_WARMED):
        return False
    st.session_state[_WARMED] = True
    st.html(warmup_script(chunk, after), unsafe_allow_javascript=True, width="content")
    return True
