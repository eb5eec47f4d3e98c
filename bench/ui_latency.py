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

(c) First page: a fresh server (health ok) until a new browser session shows the enabled Start
    button, then later visits (new sessions on the same server), against a hello-world Streamlit
    app (title, slider, button) served and opened the same way in the same browser. Also the
    server's start until health ok, and until the first Start is enabled (MTL Lab's server
    imports torch before it answers: the first page no longer waits for it, the start does).
(d) A run started with Start and watched in the browser, start → finish (the store's
    timestamps, the live panel open all along), against the same config trained from the CLI
    (`python -m mtl_core train`, no browser) on the same machine: what made a 1 s run take 40 s.

    --sections start,cadence,first-page,browser-run (default: all)

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
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from browser_support import (  # noqa: E402
    HELLO_APP,
    VIEWPORT,
    AppServer,
    button,
    cpu_seconds,
    element,
    find_chromium,
    launch_chromium,
    seconds_until_start_enabled,
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


def open_app(browser: Any, server: AppServer) -> tuple[Any, Any]:
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(90_000)
    page.goto(server.url)
    button(page, "train-start").wait_for()
    settle(page)
    return context, page


def end_runs(server: AppServer) -> None:
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
    context, page = open_app(browser, server)
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
        end_runs(server)


def refresh_cadence(browser: Any, server: AppServer, seconds: float) -> dict[str, float]:
    """Two runs train; timestamps of the live panel's refreshes over `seconds`."""
    server.kill_workers()
    context, page = open_app(browser, server)
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
        end_runs(server)
    sent = [t for t in frames if start <= t <= end]
    gaps = [b - a for a, b in zip(sent, sent[1:], strict=False)]

    return {"seconds": end - start, "refreshes": len(sent),
            "per_s": len(sent) / (end - start),
            "median_gap": statistics.median(gaps) if gaps else float("nan"),
            "max_gap": max(gaps) if gaps else float("nan"),
            "visible_changes": len(changes), "visible_per_s": len(changes) / (end - start),
            "running_at_end": running}


SECTIONS = ("start", "cadence", "first-page", "browser-run")


def _until_start_enabled(browser: Any, url: str) -> float:
    """Seconds from navigation in a new session until the Start button is enabled."""
    context = browser.new_context(viewport=VIEWPORT)
    try:
        page = context.new_page()
        page.set_default_timeout(120_000)
        return seconds_until_start_enabled(page, url)
    finally:
        context.close()


def first_page(browser: Any, tmp: Path, repeats: int, visits: int = 3) -> dict[str, Any]:
    """Fresh-server first page and later visits, for MTL Lab and the hello-world app."""
    hello = tmp / "hello_app.py"
    hello.write_text(HELLO_APP)
    rows: dict[str, dict[str, list[float]]] = {}
    for i in range(repeats):
        for name, script in (("hello", hello), ("mtl_lab", "app.py")):
            runs = tmp / f"first_{name}_{i}" / "runs"
            launched = time.perf_counter()
            server = AppServer.start(runs, script=script,
                                     env={"MTL_DATA_DIR": str(tmp / "data")})
            health = time.perf_counter() - launched
            try:
                first = _until_start_enabled(browser, server.url)
                later = [_until_start_enabled(browser, server.url) for _ in range(visits)]
            finally:
                server.stop()
            entry = rows.setdefault(name, {"first": [], "later": [], "health": [],
                                           "launch_to_start": []})
            entry["first"].append(first)
            entry["later"].append(statistics.median(later))
            entry["health"].append(health)
            entry["launch_to_start"].append(health + first)
            print(f"first page #{i + 1} {name}: server answered after {health:.2f} s, "
                  f"first={first:.2f} later={later}", flush=True)
    return rows


def _duration(run: Any) -> float:
    return (run.ended_at or 0) - (run.started_at or 0)


def _wait_for_new_run_to_end(store: RunStore, before: set[str]) -> Any:
    run_id = wait_until(lambda: next((r.id for r in store.list_runs() if r.id not in before),
                                     None), 60, "the new run")

    def ended() -> Any:
        run = store.get_run(run_id)
        return None if run.is_live else run

    return wait_until(ended, 600, "the browser-started run to end", interval=0.05)


def cpu_by_role(server: AppServer) -> dict[str, float]:
    """CPU seconds used so far by the browser's processes, the server and its workers."""
    totals = {"browser": 0.0, "server": cpu_seconds(server.proc.pid) or 0.0, "workers": 0.0}
    workers = server.worker_pids()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            is_browser = b"chrom" in (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if pid in workers or is_browser:
            totals["workers" if pid in workers else "browser"] += cpu_seconds(pid) or 0.0
    return totals


def browser_run(browser: Any, server: AppServer, tmp: Path, repeats: int) -> dict[str, Any]:
    """The default config started with Start and watched until it ends, against the same
    config trained by the CLI (foreground, no browser open) on the same store, and against a
    run whose page is closed right after Start (what the browser's drawing costs the run). The
    CPU seconds each side used during the watched run say where a slowdown comes from."""
    browser_s, closed_s, cli_s, walls, cpu = [], [], [], [], []
    config = tmp / "browser_run.yaml"
    for i in range(repeats):
        for watched in (True, False):
            context, page = open_app(browser, server)
            try:
                for pid in server.worker_pids():  # a user reads the form while it imports
                    wait_idle_process(pid, timeout=60)
                store = RunStore(server.runs_dir)
                before = {r.id for r in store.list_runs()}
                cpu_before, clicked = cpu_by_role(server), time.time()
                button(page, "train-start").click()
                if not watched:
                    wait_until(lambda s=store, b=before: any(r.id not in b for r in s.list_runs()),
                               60, "the new run")
                    context.close()
                run = _wait_for_new_run_to_end(store, before)
                if watched:
                    after = cpu_by_role(server)
                    cpu.append({k: after[k] - cpu_before[k] for k in after})
                    walls.append(run.ended_at - clicked)
                    browser_s.append(_duration(run))
                    config.write_text(yaml.safe_dump(run.config))
                else:
                    closed_s.append(_duration(run))
            finally:
                context.close()
        done = subprocess.run([sys.executable, "-m", "mtl_core", "train", str(config),
                               "--runs-dir", str(server.runs_dir)], cwd=ROOT,
                              capture_output=True, text=True, timeout=600)
        cli_run = RunStore(server.runs_dir).get_run(done.stdout.strip().splitlines()[-1])
        cli_s.append(_duration(cli_run))
        print(f"browser run #{i + 1}: browser={browser_s[-1]:.2f} s (click→finished "
              f"{walls[-1]:.2f}; CPU s {_fmt_cpu(cpu[-1])}) page closed={closed_s[-1]:.2f} s "
              f"cli={cli_s[-1]:.2f} s", flush=True)
    return {"browser": browser_s, "click_to_finished": walls, "cli": cli_s,
            "page_closed": closed_s, "cpu": cpu}


def _fmt_cpu(used: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in used.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cadence-seconds", type=float, default=15.0)
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated, of: {', '.join(SECTIONS)}")
    args = parser.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    chromium = find_chromium()
    if chromium is None:
        print("Chromium not found (apt-get install chromium, or set MTL_CHROMIUM)",
              file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    began = time.time()
    results: dict[str, Any] = {"start": {}, "cadence": None, "first_page": None,
                               "browser_run": None}
    with tempfile.TemporaryDirectory(prefix="ui_latency_") as tmp, sync_playwright() as pw:
        browser = launch_chromium(pw, chromium)
        try:
            if "first-page" in sections:
                results["first_page"] = first_page(browser, Path(tmp), args.repeats)
            if "browser-run" in sections:
                server = AppServer.start(Path(tmp) / "browser_run" / "runs",
                                         env={"MTL_DATA_DIR": str(Path(tmp) / "data")})
                try:
                    results["browser_run"] = browser_run(browser, server, Path(tmp),
                                                         args.repeats)
                finally:
                    server.stop()
            for mode in [m for m in ("warm", "cold") if "start" in sections
                         or (m == "warm" and "cadence" in sections)]:
                env = {"MTL_WARM_UP": "1" if mode == "warm" else "0", "MTL_MAX_JOBS": "2",
                       "MTL_DATA_DIR": str(Path(tmp) / "data")}
                server = AppServer.start(Path(tmp) / mode / "runs", env=env)
                try:
                    rows = []
                    for i in range(args.repeats if "start" in sections else 0):
                        rows.append(start_latency(browser, server, warm=mode == "warm"))
                        print(f"{mode} #{i + 1}: " + " ".join(
                            f"{k}={_fmt(v)}" for k, v in rows[-1].items()), flush=True)
                    if rows:
                        results["start"][mode] = rows
                    if mode == "warm" and "cadence" in sections:
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


def _median_ratio(numerators: list[float], denominators: list[float]) -> str:
    num, den = statistics.median(numerators), statistics.median(denominators)
    return f"{num:.2f} s against {den:.2f} s: {num / den:.2f}×"


def _report(results: dict[str, Any]) -> None:
    fp = results.get("first_page")
    if fp:
        print("\nFirst page until Start is enabled, median over fresh servers:")
        for visit in ("first", "later", "health", "launch_to_start"):
            ratio = _median_ratio(fp["mtl_lab"][visit], fp["hello"][visit])
            label = {"health": "server start → health ok",
                     "launch_to_start": "server start → first Start enabled"}.get(
                         visit, f"{visit} visit")
            print(f"  {label}: MTL Lab {ratio} of the hello-world app")
    br = results.get("browser_run")
    if br:
        print("\nA run started and watched in the browser, start → finish (store timestamps):")
        print(f"  browser {_median_ratio(br['browser'], br['cli'])} of the same config "
              f"from the CLI; click → finished {statistics.median(br['click_to_finished']):.2f} s")
        print(f"  page closed after Start {_median_ratio(br['page_closed'], br['cli'])} of the "
              f"CLI; CPU seconds during a watched run (medians): "
              + _fmt_cpu({k: statistics.median(c[k] for c in br["cpu"]) for k in br["cpu"][0]}))
    if results["start"]:
        _report_start(results)
    _report_cadence(results["cadence"])
    _report_meta(results)


def _report_start(results: dict[str, Any]) -> None:
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


def _report_meta(results: dict[str, Any]) -> None:
    m = results["meta"]
    print(f"\n{m['cpus']} CPUs, Python {m['python']}, {m['machine']}, load average at the end "
          f"{m['load_avg'][0]:.1f}; took {m['seconds']:.0f} s")


def _report_cadence(c: dict[str, Any] | None) -> None:
    if c:
        print(f"\nLive panel while two runs train ({c['seconds']:.0f} s): {c['refreshes']} "
              f"refreshes, {c['per_s']:.2f}/s, median interval {c['median_gap']:.2f} s "
              f"(max {c['max_gap']:.2f} s); visible progress changes {c['visible_changes']} "
              f"({c['visible_per_s']:.2f}/s); runs still running at the end: "
              f"{c['running_at_end']}")


if __name__ == "__main__":
    sys.exit(main())
