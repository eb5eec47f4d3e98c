"""First paint: the first script run of a fresh server draws the app shell without importing
torch (ui.preload), then the page itself once the background imports are done.

Each check runs in a fresh interpreter: this test process has imported torch long ago.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Holds the background imports until told to go on, so the first run surely finds them
# unfinished (on a fast machine they could otherwise finish within the first run).
SCRIPT = r"""
import json, sys, threading
from streamlit.testing.v1 import AppTest
from ui import preload

go = threading.Event()
real = preload._import_all
preload._import_all = lambda: (go.wait(120), real())
preload.MAX_WAIT_S = 0.2  # the first run gives up waiting: AppTest returns with the shell

at = AppTest.from_file(sys.argv[1], default_timeout=120)
at.run()
first = {
    "torch": "torch" in sys.modules,
    "heavy": sorted(m for m in preload.HEAVY_MODULES if m in sys.modules),
    "titles": [t.value for t in at.title],
    "captions": [c.value for c in at.caption],
    "buttons": [b.key for b in at.button],
    "exception": [e.value for e in at.exception],
}
go.set()
preload.wait(120)
at.run()
then = {
    "titles": [t.value for t in at.title],
    "buttons": [b.key for b in at.button],
    "exception": [e.value for e in at.exception],
}
print(json.dumps({"first": first, "then": then}))
"""


def _run(script_path: str, tmp_path: Path) -> dict:
    env = {"MTL_RUNS_DIR": str(tmp_path / "runs"), "MTL_DATA_DIR": str(tmp_path / "data"),
           "MTL_WARM_UP": "0", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, script_path], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_first_run_draws_the_shell_without_torch_then_the_page(tmp_path: Path):
    out = _run("app.py", tmp_path)
    first, then = out["first"], out["then"]
    assert first["torch"] is False, "the first script run imported torch"
    assert first["heavy"] == []
    assert first["exception"] == []
    assert first["titles"] == ["Build & Train"]  # the page's title, at once
    assert any("Starting the lab" in c for c in first["captions"])
    assert "train.start" not in first["buttons"]
    # Once the imports are in, the same session draws the real page.
    assert then["exception"] == []
    assert "Build & Train" in then["titles"]
    assert "train.start" in then["buttons"]


SERVER_START = r"""
import asyncio, gc, json, sys, threading
from ui import preload

go = threading.Event()
real = preload._import_all
preload._import_all = lambda: (go.wait(120), real())
order = []

async def main():
    async def serve():
        async with preload.at_server_start(None):
            order.append(("serving", preload.ready(), "torch" in sys.modules,
                          gc.get_freeze_count() > 100_000))
    task = asyncio.create_task(serve())
    await asyncio.sleep(0.3)
    order.append(("waiting", task.done()))
    go.set()
    await task

asyncio.run(main())
print(json.dumps(order))
"""


def test_the_server_answers_only_once_the_imports_are_done():
    """app.py's st.App lifespan: the imports run when the server starts, before it serves."""
    done = subprocess.run([sys.executable, "-c", SERVER_START], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={"PATH": "/usr/bin:/bin",
                                                       "MTL_WARM_UP": "0"})
    assert done.returncode == 0, done.stderr[-3000:]
    order = json.loads(done.stdout.strip().splitlines()[-1])
    # ... and leaves the imported objects out of the garbage collector's full collections
    # (Streamlit runs one after every script run: 0.1-0.3 s each with torch imported).
    assert order == [["waiting", False], ["serving", True, True, True]]


def test_streamlit_run_serves_app_py_as_an_st_app():
    from streamlit.web.server.app_discovery import discover_asgi_app

    found = discover_asgi_app(ROOT / "app.py")
    assert found.is_asgi_app and found.import_string == "app:app"
