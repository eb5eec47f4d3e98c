"""First paint: the app shell draws before PyTorch and the chart code are imported.

A fresh server imports torch, torchvision, torchjd, pandas and plotly (about 3 s of CPU on a
2-core machine, much more while workers start) the first time a page needs them. Instead of a
blank page for that long, the first script run of the server draws the navigation, the sidebar
and the page's title, imports the rest in a background thread, and reruns the page as soon as
the imports are done. Later sessions find everything imported and draw at once.

Served by `streamlit run app.py`, the imports start with the server instead (`at_server_start`,
the lifespan of app.py's `st.App`): the server answers once they are done, so even its first
visitor finds a warm process, and the shell-first path only remains for a process that was not
started that way (AppTest, or imports slower than `MAX_WAIT_S`).

Only the thread imports; nothing here calls `st.*` from it.
"""
from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import os
import sys
import threading
from collections.abc import AsyncIterator

import streamlit as st

# What the pages need beyond Streamlit, heaviest first (each pulls in its own imports).
HEAVY_MODULES = (
    "mtl_core.trainer",  # torch, torchvision, torchjd, every suite, model and method
    "ui.train_run", "ui.train_sections", "ui.diagram", "ui.live", "ui.charts",
    "ui.compare_charts", "ui.sweep_charts", "ui.baselines_view", "mtl_core.sweep",
    "mtl_core.lessons",
)
FIRST_WAIT_S = 0.05  # an already-warm process renders at once rather than via the rerun
MAX_WAIT_S = 60.0  # how long the first paint's script run waits for the imports itself
POLL_S = 1.0  # then (a very slow machine) a fragment looks again this often

_done = threading.Event()
_started = threading.Lock()
_thread: threading.Thread | None = None
errors: dict[str, BaseException] = {}  # module -> why it failed (the page then raises it)


def _import_all() -> None:
    # The server's own torch work is tiny (diagrams on the meta device); its threads must not
    # spin against the workers' (mtl_core.budget).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        for name in HEAVY_MODULES:
            try:
                importlib.import_module(name)
            except BaseException as exc:  # noqa: BLE001 - the page's own import reports it
                errors[name] = exc
        import torch

        torch.set_num_threads(1)
        # Streamlit runs a full garbage collection after every script run, fragments included
        # (runner.postScriptGC): with torch, pandas and plotly imported that walks ~280,000
        # objects, 0.1–0.3 s of CPU each time, several times a second per open live panel.
        # Frozen, the imported modules' objects are skipped: a collection costs milliseconds.
        gc.freeze()
    finally:
        _done.set()


def start() -> None:
    """Begin the imports in the background (once per process)."""
    global _thread
    with _started:
        if _thread is None:
            _thread = threading.Thread(target=_import_all, name="mtl-preload", daemon=True)
            if all(name in sys.modules for name in HEAVY_MODULES):
                _done.set()
            else:
                _thread.start()


def ready(wait_s: float = 0.0) -> bool:
    """Whether the heavy imports are done (after waiting up to `wait_s`)."""
    start()
    return _done.wait(wait_s) if wait_s else _done.is_set()


def wait(timeout: float | None = None) -> bool:
    """Block until the imports are done (tests, benchmarks)."""
    start()
    return _done.wait(timeout)


def first_paint(title: str) -> None:
    """The page while the imports run: its title and a line saying what is happening (sent to
    the browser at once), then this script run waits for the imports and reruns the app.
    Waiting here rather than polling from a fragment matters: a fragment rerun four times a
    second made the imports five times slower on a busy 2-core machine (the GIL)."""
    st.title(title)
    st.caption(":material/hourglass_top: Starting the lab: loading PyTorch and the charts "
               "(once per server start)…")
    if _done.wait(MAX_WAIT_S):
        st.rerun()
    st.fragment(run_every=POLL_S)(_rerun_when_ready)()


def _rerun_when_ready() -> None:
    if _done.is_set():
        st.rerun(scope="app")


@contextlib.asynccontextmanager
async def at_server_start(app: object) -> AsyncIterator[None]:
    """The server's lifespan (st.App): import before the first request is answered, for at
    most `MAX_WAIT_S` (then the server answers anyway and pages take the first-paint path)."""
    start()
    await asyncio.to_thread(_done.wait, MAX_WAIT_S)
    yield
