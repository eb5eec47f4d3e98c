"""Dashboard latency, measured in a real browser (Playwright + Chromium against `streamlit run`).

    .venv/bin/python bench/ui_latency.py [--repeats 5] [--cadence-seconds 15] [--json FILE]

(a) Start → first point: the time from the click on Start to the first point drawn on the
    live loss chart, for a new user's default config, measured in the browser (a click
    listener and a 10 ms poll of the Plotly chart's data, same clock). Two modes in the same
    process, each on its own server and run store:
      warm  MTL_WARM_UP on: opening the page pre-starts a worker that imports torch and waits;
      cold  MTL_WARM_UP=0: Start spawns the worker (python + torch import on the critical path).
    Before each repeat every worker of the server is killed and a fresh browser session opens
    the page, so each warm repeat gets a freshly pre-started worker (we wait until it is idle,
    i.e. done importing: a user's think time) and each cold repeat starts from nothing.
    The store's timestamps split the time: click → queued (the page's script run, submit),
    → claimed (a worker picks the run up), → first metric written (data, model, first step),
    → drawn (the live fragment's next refresh, the chart's render).
(b) Refresh cadence: two long runs train at once (both started from the page), and for
    `--cadence-seconds` we timestamp every refresh of the live panel the server sends (each
    websocket frame carrying the panel's progress text, which every fragment run re-sends)
    and every visible change of that text in the DOM (a MutationObserver).

Helpers (server, browser, DOM probes) are shared with tests/test_browser.py:
tests/browser_support.py. Results: bench/RESULTS.md, "Dashboard latency".
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from browser_support import (  # noqa: E402
    VIEWPORT,
    AppServer,
    button,
    element,
    find_chromium,
    launch_chromium,
    settle,
    wait_idle_process,
    wait_until,
)

from mtl_core import jobs  # noqa: E402  (no torch: the bench process stays light)
from mtl_core.store import RunStore  # noqa: E402

# Records the click on Start and the first moment the live loss chart holds a point.
ARM_JS = """() => {
  window.__clickAt = null; window.__firstPointAt = null;
  document.addEventListener('click', (e) => {
    if (window.__clickAt === null && e.target.closest('.st-key-train-start')) {
      window.__clickAt = Date.now();
    }
  }, true);
  const timer = setInterval(() => {
    const el = document.querySelector(
      '.st-key-live_loss:not([data-stale="true"]) .js-plotly-plot');
    if (el && el._fullData && el._fullData.some(t => t.x && t.x.length > 0)) {
      window.__firstPointAt = Date.now(); clearInterval(timer);
    }
  }, 10);
}"""

# Timestamps of visible changes of the live panel's progress text ("epoch … · step …").
OBSERVE_JS = """() => {
  window.__changes = [];
  const find = () => Array.from(document.querySelectorAll('[data-testid="stProgress"]'))
      .find(p => p.innerText.includes('epoch'));
  const target = find();
  if (!target) return false;
  let last = target.innerText;
  new MutationObserver(() => {
    const now = (find() || target).innerText;
    if (now !== last) { last = now; window.__changes.push(Date.now()); }
  }).observe(document.body, {subtree: true, childList: true, characterData: true});
  return true;
}"""


def _fmt(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds:.2f}"


def _first_time(db: Path, table: str, run_id: str, where: str = "") -> float | None:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        row = conn.execute(f"SELECT MIN(time) FROM {table} WHERE run_id = ? {where}",
                           (run_id,)).fetchone()
    return row[0] if row else None


def _open_app(browser: Any, server: AppServer) -> tuple[Any, Any]:
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(90_000)
    page.goto(server.url)
    button(page, "train-start").wait_for()
    settle(page)
    return context, page


def _end_runs(server: AppServer) -> None:
    store = RunStore(server.runs_dir)
    for run in store.list_runs(["queued", "running", "paused"]):
        try:
            jobs.stop(run.id, server.runs_dir)
        except (KeyError, ValueError):
            pass
    wait_until(lambda: not store.list_runs(["queued", "running", "paused"]), 60,
               "every run to end")


def start_latency(browser: Any, server: AppServer, warm: bool) -> dict[str, float | None]:
    """One repeat: fresh workers, fresh session, click Start, time the first point."""
    server.kill_workers()
    context, page = _open_app(browser, server)
    try:
        if warm:  # the page pre-starts a worker; a user reads the form while it imports torch
            pid = wait_until(lambda: next(iter(server.worker_pids()), None), 30,
                             "the pre-started worker")
            wait_idle_process(pid, timeout=60)
        else:
            time.sleep(2.0)
            assert not server.worker_pids(), "a cold start found a worker already running"
        page.evaluate(ARM_JS)
        before = {r.id for r in RunStore(server.runs_dir).list_runs()}
        button(page, "train-start").click()
        page.wait_for_function("window.__firstPointAt !== null", timeout=120_000)
        click = page.evaluate("window.__clickAt") / 1000
        drawn = page.evaluate("window.__firstPointAt") / 1000
        store = RunStore(server.runs_dir)
        run = next(r for r in store.list_runs() if r.id not in before)
        db = server.runs_dir / "runs.db"
        built = _first_time(db, "snapshots", run.id, "AND kind = 'probe'")
        written = _first_time(db, "metrics", run.id)
        return {"total": drawn - click, "page": run.created_at - click,
                "claim": (run.started_at or 0) - run.created_at,
                "build": (built or 0) - (run.started_at or 0),
                "first_step": (written or 0) - (built or 0),
                "draw": drawn - (written or 0)}
    finally:
        context.close()
        _end_runs(server)


def refresh_cadence(browser: Any, server: AppServer, seconds: float) -> dict[str, float]:
    """Two runs train; timestamps of the live panel's refreshes over `seconds`."""
    server.kill_workers()
    context, page = _open_app(browser, server)
    frames: list[float] = []  # the server's deltas carrying the panel's progress text

    def on_socket(ws: Any) -> None:
        def on_frame(payload: Any) -> None:
            if isinstance(payload, bytes | bytearray) and b"epoch " in payload \
                    and b" \xc2\xb7 step " in payload:
                frames.append(time.time())
        ws.on("framereceived", on_frame)

    page.on("websocket", on_socket)
    page.reload()  # reconnect so the websocket listener sees the app's socket
    button(page, "train-start").wait_for()
    settle(page)
    try:
        page.get_by_role("tab", name="Training").click()
        box = element(page, "cfg-optim-epochs").locator("input")
        box.fill("500")
        box.press("Enter")
        settle(page)
        for _ in range(2):  # two runs at once (MTL_MAX_JOBS=2); the second is shown
            button(page, "train-start").click()
            settle(page)
        store = RunStore(server.runs_dir)
        wait_until(lambda: len(store.list_runs(["running"])) == 2, 90, "two running runs")
        wait_until(lambda: page.evaluate(OBSERVE_JS), 90, "the live panel's progress text")
        page.wait_for_timeout(2000)  # let both runs get past their start
        frames.clear()
        page.evaluate("window.__changes = []")
        start = time.time()
        page.wait_for_timeout(seconds * 1000)
        end = time.time()
        changes = [t / 1000 for t in page.evaluate("window.__changes")]
        running = len(store.list_runs(["running"]))
    finally:
        context.close()
        _end_runs(server)
    sent = [t for t in frames if start <= t <= end]
    gaps = [b - a for a, b in zip(sent, sent[1:], strict=False)]

    return {"seconds": end - start, "refreshes": len(sent),
            "per_s": len(sent) / (end - start),
            "median_gap": statistics.median(gaps) if gaps else float("nan"),
            "max_gap": max(gaps) if gaps else float("nan"),
            "visible_changes": len(changes), "visible_per_s": len(changes) / (end - start),
            "running_at_end": running}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cadence-seconds", type=float, default=15.0)
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = parser.parse_args(argv)
    chromium = find_chromium()
    if chromium is None:
        print("Chromium not found (apt-get install chromium, or set MTL_CHROMIUM)",
              file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    began = time.time()
    results: dict[str, Any] = {"start": {}, "cadence": None}
    with tempfile.TemporaryDirectory(prefix="ui_latency_") as tmp, sync_playwright() as pw:
        browser = launch_chromium(pw, chromium)
        try:
            for mode in ("warm", "cold"):
                env = {"MTL_WARM_UP": "1" if mode == "warm" else "0", "MTL_MAX_JOBS": "2",
                       "MTL_DATA_DIR": str(Path(tmp) / "data")}
                server = AppServer.start(Path(tmp) / mode / "runs", env=env)
                try:
                    rows = []
                    for i in range(args.repeats):
                        rows.append(start_latency(browser, server, warm=mode == "warm"))
                        print(f"{mode} #{i + 1}: " + " ".join(
                            f"{k}={_fmt(v)}" for k, v in rows[-1].items()), flush=True)
                    results["start"][mode] = rows
                    if mode == "warm":
                        results["cadence"] = refresh_cadence(browser, server,
                                                             args.cadence_seconds)
                        print("cadence:", results["cadence"], flush=True)
                finally:
                    server.stop()
        finally:
            browser.close()
    results["meta"] = {"repeats": args.repeats, "cpus": os.cpu_count(),
                       "python": platform.python_version(), "machine": platform.machine(),
                       "load_avg": os.getloadavg(), "seconds": time.time() - began}
    _report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def _report(results: dict[str, Any]) -> None:
    parts = ("page", "claim", "build", "first_step", "draw", "total")
    print(f"\nStart → first point on the loss chart, seconds, median of "
          f"{results['meta']['repeats']} (min–max of the total):\n")
    print("| worker | " + " | ".join(parts) + " | total min–max |")
    print("|---" * (len(parts) + 2) + "|")
    med: dict[str, float] = {}
    for mode, rows in results["start"].items():
        cells = [statistics.median(r[p] for r in rows) for p in parts]
        med[mode] = cells[-1]
        totals = [r["total"] for r in rows]
        print(f"| {mode} | " + " | ".join(f"{c:.2f}" for c in cells)
              + f" | {min(totals):.2f}–{max(totals):.2f} |")
    if "warm" in med and "cold" in med:
        print(f"\ncold / warm: {med['cold'] / med['warm']:.1f}×")
    c = results["cadence"]
    if c:
        print(f"\nLive panel while two runs train ({c['seconds']:.0f} s): {c['refreshes']} "
              f"refreshes, {c['per_s']:.2f}/s, median interval {c['median_gap']:.2f} s "
              f"(max {c['max_gap']:.2f} s); visible progress changes {c['visible_changes']} "
              f"({c['visible_per_s']:.2f}/s); runs still running at the end: "
              f"{c['running_at_end']}")
    m = results["meta"]
    print(f"\n{m['cpus']} CPUs, Python {m['python']}, {m['machine']}, load average at the end "
          f"{m['load_avg'][0]:.1f}; took {m['seconds']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
