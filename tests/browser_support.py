"""Helpers shared by the browser tests (tests/test_browser.py) and bench/ui_latency.py.

- `find_chromium()`: the Chromium binary Playwright drives ($MTL_CHROMIUM, else `chromium` or
  `chromium-browser` on the PATH, else /usr/bin/chromium); `launch_chromium` starts it headless
  with the flags a container needs.
- `AppServer.start(...)`: `streamlit run app.py` on a free port with its own MTL_RUNS_DIR, in a
  process group of its own; `stop()` ends it and every worker process it started (workers run
  in sessions of their own, so they are found by parent pid and by their --runs-dir).
- Page helpers: wait for a script run to finish, read the number of points of every trace of a
  keyed Plotly chart, click through the sidebar.

Nothing here imports torch or streamlit: the bench and the tests import it cheaply.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-dev-shm-usage"]
VIEWPORT = {"width": 1400, "height": 1000}
ARTIFACTS = ROOT / "test-artifacts" / "browser"
# The floor the benchmarks compare a page against: a hello-world Streamlit app (title, slider,
# button) whose button has the Train page's Start key, so one selector finds both.
HELLO_APP = """import streamlit as st
st.title("Hello")
st.slider("A number", 0, 10, 5)
st.button("Start", key="train-start")
"""
T = TypeVar("T")

# Points per trace of the Plotly chart inside `.st-key-<key>`: {trace name: point count}.
# Streamlit may keep a stale copy of an element beside the fresh one while a run replaces it.
# Plotly 6 ships arrays base64-encoded in `data`; `_fullData` holds the decoded ones.
TRACE_POINTS_JS = """(key) => {
  const el = document.querySelector(`.st-key-${key}:not([data-stale="true"]) .js-plotly-plot`);
  if (!el || !el._fullData) return null;
  const out = {};
  for (const t of el._fullData) {
    if (t.visible === false) continue;
    out[t.name] = t.x ? t.x.length : 0;
  }
  return out;
}"""


# ---------------------------------------------------------------- browser


def find_chromium() -> str | None:
    """The Chromium executable to drive, or None when there is none on this machine."""
    env = os.environ.get("MTL_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None


def require_chromium() -> str:
    """The Chromium binary for a browser test: skip without one (or without the playwright
    package), except under CI=true, where that is a failure: CI must run these tests."""
    import pytest

    path = find_chromium()
    problem = None
    if path is None:
        problem = ("Chromium was not found (looked at $MTL_CHROMIUM, `chromium`, "
                   "`chromium-browser` and /usr/bin/chromium); install it with "
                   "`apt-get install chromium` (scripts/setup.sh does, as root)")
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = ("the playwright Python package is missing "
                       "(pip install -r requirements-dev.txt)")
    if problem:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"browser tests must run in CI, but {problem}", pytrace=False)
        pytest.skip(problem)
    return str(path)


def launch_chromium(playwright: Any, executable: str) -> Any:
    """A headless Chromium browser (Playwright sync API) from the system's binary."""
    return playwright.chromium.launch(executable_path=executable, headless=True,
                                      args=CHROMIUM_ARGS)


# ---------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _health(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
            return answer.read().strip() == b"ok"
    except OSError:
        return False


class AppServer:
    """`streamlit run app.py` in its own process group, with its own run store."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, runs_dir: Path,
                 log_path: Path) -> None:
        self.proc, self.port, self.runs_dir, self.log_path = proc, port, runs_dir, log_path
        self.url = f"http://127.0.0.1:{port}"
        self._workers: set[int] = set()

    @classmethod
    def start(cls, runs_dir: Path, *, env: Mapping[str, str] | None = None,
              timeout: float = 90.0, log_path: Path | None = None,
              script: str | Path = "app.py") -> AppServer:
        """Start the app (or another `script`, e.g. a benchmark's reference app) and wait until
        /_stcore/health answers ok (RuntimeError if not)."""
        runs_dir = Path(runs_dir).resolve()
        runs_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        full_env = dict(os.environ)
        full_env.update({"MTL_RUNS_DIR": str(runs_dir), "PYTHONUNBUFFERED": "1"})
        full_env.update(env or {})
        log_path = log_path or runs_dir.parent / f"streamlit-{port}.log"
        command = [sys.executable, "-m", "streamlit", "run", str(script),
                   "--server.headless", "true", "--server.port", str(port),
                   "--server.address", "127.0.0.1", "--server.fileWatcherType", "none",
                   "--browser.gatherUsageStats", "false"]
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(command, cwd=ROOT, env=full_env, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        server = cls(proc, port, runs_dir, log_path)
        deadline = time.monotonic() + timeout
        while not _health(server.url):
            if proc.poll() is not None or time.monotonic() > deadline:
                why = (f"exited with status {proc.returncode}" if proc.poll() is not None
                       else f"did not answer within {timeout:.0f} s")
                server.stop()
                raise RuntimeError(f"streamlit {why}; its log:\n{server.log_tail()}")
            time.sleep(0.25)
        return server

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def worker_pids(self) -> set[int]:
        """Live worker processes of this server: its children, and any process serving its
        run store (`mtl_core.worker --runs-dir <ours>`). Remembered, so they are found even
        after the server has gone (they are then re-parented)."""
        marker = b"\0" + str(self.runs_dir).encode() + b"\0"
        found = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                cmdline = (entry / "cmdline").read_bytes()
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if b"mtl_core.worker" in cmdline and (ppid == self.proc.pid or marker in cmdline):
                found.add(pid)
        self._workers |= found
        return {p for p in self._workers if _alive(p)}

    def kill_workers(self, timeout: float = 10.0) -> None:
        """SIGKILL every worker of this server (each leads a process group of its own)."""
        pids = self.worker_pids()
        for pid in pids:
            _kill_group(pid, signal.SIGKILL)
        _wait_gone(pids, timeout)

    def stop(self, timeout: float = 15.0) -> None:
        """End the server's process group, then every worker it started. Idempotent."""
        self.worker_pids()  # while they are still its children
        if self.proc.poll() is None:
            _kill_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _kill_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout)
        self.kill_workers(timeout)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _kill_group(pid: int, sig: int) -> None:
    """Signal the process group `pid` leads (ours: started with start_new_session), else the
    process alone."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_gone(pids: set[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (None if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_idle_process(pid: int, timeout: float = 60.0, quiet_s: float = 1.0) -> bool:
    """Wait until a process has used (almost) no CPU for `quiet_s`: e.g. a pre-started worker
    that has finished importing torch and now only polls. False on timeout."""
    deadline = time.monotonic() + timeout
    last = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = cpu_seconds(pid)
        if now is None:
            return False
        if last is not None and now - last < 0.05 * quiet_s:
            return True
        last = now
    return False


# ---------------------------------------------------------------- page


def wait_until(check: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll `check` until it returns something truthy; AssertionError naming `what` if not."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} "
                                 f"(last value: {value!r})")
        time.sleep(interval)


def wait_script_done(page: Any, timeout: float = 60.0) -> None:
    """Wait until the app is connected and no script run is in progress. Call it after an
    action has visibly started a rerun, or after a short settle (a rerun starts a few ms
    after the click)."""
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]'
                           '[data-test-connection-state="CONNECTED"]',
                           state="attached", timeout=timeout * 1000)


def settle(page: Any, timeout: float = 60.0, pause_s: float = 0.3) -> None:
    """Let the rerun an interaction started begin, then wait for it to end."""
    page.wait_for_timeout(pause_s * 1000)
    wait_script_done(page, timeout)


def trace_points(page: Any, key: str) -> dict[str, int] | None:
    """{trace name: number of points} of the Plotly chart keyed `key`, None if not drawn."""
    return page.evaluate(TRACE_POINTS_JS, key)


def train_loss_points(page: Any, tasks: list[str]) -> dict[str, int] | None:
    """Points of each task's train-loss curve on the live panel; None until all are drawn."""
    traces = trace_points(page, "live_loss")
    if not traces or any(f"{t} · train" not in traces for t in tasks):
        return None
    return {t: traces[f"{t} · train"] for t in tasks}


def element(page: Any, key: str) -> Any:
    """The (fresh, not stale) element container of the widget or chart keyed `key`."""
    return page.locator(f'.st-key-{key}:not([data-stale="true"])').first


def button(page: Any, key: str) -> Any:
    """The button of the st.button keyed `key` (the fresh copy, should a stale one linger)."""
    return element(page, key).locator("button").first


def seconds_until_start_enabled(page: Any, url: str, timeout_ms: float = 120_000) -> float:
    """Navigate `page` to `url`; seconds until its Start button (keyed `train-start`, as the
    benches' hello-world app has it too) is enabled."""
    began = time.perf_counter()
    page.goto(url, timeout=timeout_ms)
    button(page, "train-start").and_(page.locator("button:enabled")).wait_for(timeout=timeout_ms)
    return time.perf_counter() - began


def alert(page: Any, text: str) -> Any:
    """The st.info/success/warning/error box whose text contains `text` (e.g. a run id)."""
    return page.locator('[data-testid="stAlert"]', has_text=text).first


def selectbox_text(page: Any, key: str) -> str:
    """The text a keyed st.selectbox shows (its combobox input's value)."""
    return element(page, key).locator("input[role=combobox]").input_value()


def nav_link(page: Any, title: str) -> Any:
    """The link to a page in the app's sidebar menu (app.py draws it with st.page_link)."""
    return page.locator('[data-testid="stSidebar"] a[data-testid="stPageLink-NavLink"]').filter(
        has=page.get_by_text(title, exact=True)).first


def open_page(page: Any, title: str) -> None:
    """Click a page of the sidebar navigation (e.g. "Predictions")."""
    nav_link(page, title).click()


# Records whether Streamlit's own page listing (file names: "app", "compare", …) ever shows.
WATCH_FILE_NAV_JS = """
window.__fileNavSeen = [];
new MutationObserver(() => {
  const nav = document.querySelector('[data-testid="stSidebarNav"]');
  if (nav && nav.innerText) window.__fileNavSeen.push(nav.innerText);
}).observe(document, {subtree: true, childList: true, characterData: true});
"""


def scroll_to_top_of(locator: Any) -> None:
    """Scroll so the element sits at the top of the viewport (for a telling screenshot)."""
    locator.evaluate("el => el.scrollIntoView({block: 'start'})")


def screenshot(page: Any, name: str) -> Path:
    """Save test-artifacts/browser/<name>.png (the viewport; Streamlit scrolls inside it)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path
