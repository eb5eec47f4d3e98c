"""A class on one machine: N browser sessions against one MTL Lab server, each pressing Start on
its own config (the Train page's default with its own seed, opened from a `?cfg=` link).

    .venv/bin/python bench/class_load.py [--sessions 10] [--json FILE]

Records, per session: the time from navigation until Start is enabled (all sessions arrive at
once), the run's queue wait (created → claimed, store timestamps), its training time (claimed →
ended) against the same config trained alone on the same server afterwards, and the live
panel's refresh cadence: the largest gap between the server's updates of the page (websocket
frames) while its run was queued or training, and between visible changes of the panel's
progress text while it trained. Also the peak resident memory of the server and of each
worker process. First, the floor of "until interactive" on this machine: the same N sessions
arriving at once at a hello-world Streamlit app (title, slider, button; `--no-floor` skips it).
The server runs on its defaults (MTL_MAX_JOBS from the hardware, the core budget of
mtl_core.budget). Results: bench/RESULTS.md, "A class on one machine".
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from browser_support import (  # noqa: E402
    HELLO_APP,
    VIEWPORT,
    AppServer,
    button,
    find_chromium,
    launch_chromium,
    wait_until,
)

from mtl_core.store import RunStore  # noqa: E402

# Timestamps of every visible change of the live panel's progress text ("epoch … · step …"),
# polled (a MutationObserver misses text that React sets on an attribute-only update).
WATCH_PROGRESS_JS = """() => {
  window.__changes = [];
  let last = null;
  setInterval(() => {
    const bars = document.querySelectorAll('[data-testid="stMain"] [data-testid="stProgress"]');
    const bar = Array.from(bars).find(p => p.innerText.includes('step'));
    const now = bar ? bar.innerText : null;
    if (now !== null && now !== last) { last = now; window.__changes.push(Date.now() / 1000); }
  }, 50);
}"""
START_ENABLED = '.st-key-train-start:not([data-stale="true"]) button:enabled'


def _token(seed: int) -> str:
    from mtl_core.config import parse_config
    from ui.share import encode_config

    return encode_config(parse_config({"seed": seed}))


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class MemorySampler(threading.Thread):
    """Peak RSS of the server and of every worker, sampled twice a second."""

    def __init__(self, server: AppServer) -> None:
        super().__init__(daemon=True)
        self.server, self.stop_event = server, threading.Event()
        self.server_mb = 0.0
        self.workers_mb: dict[int, float] = {}

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.server_mb = max(self.server_mb, _rss_mb(self.server.proc.pid) or 0.0)
            for pid in self.server.worker_pids():
                self.workers_mb[pid] = max(self.workers_mb.get(pid, 0.0), _rss_mb(pid) or 0.0)
            time.sleep(0.5)


def _max_gap(times: list[float], start: float, end: float) -> float | None:
    inside = [t for t in times if start <= t <= end]
    if len(inside) < 2:
        return None
    return max(b - a for a, b in zip(inside, inside[1:], strict=False))


def _new_runs(store: RunStore, before: set[str], count: int) -> list[str] | None:
    ids = [r.id for r in store.list_runs() if r.id not in before]
    return ids if len(ids) == count else None


def _ended(store: RunStore, run_id: str) -> Any:
    run = store.get_run(run_id)
    return None if run.is_live else run


def arrive_at_once(browser: Any, urls: list[str]) -> tuple[list, list, list[float], list]:
    """One new browser session per URL, their navigations started together (a class
    arriving): (contexts, pages, when each navigation began, per page the times the server
    sent it a websocket frame)."""
    contexts, pages, opened = [], [], []
    frames: list[list[float]] = []
    for url in urls:
        context = browser.new_context(viewport=VIEWPORT)
        page = context.new_page()
        page.set_default_timeout(300_000)
        frames.append([])
        page.on("websocket", lambda ws, got=frames[-1]: ws.on(
            "framereceived", lambda _payload, got=got: got.append(time.time())))
        opened.append(time.perf_counter())
        page.goto(url, wait_until="commit")
        contexts.append(context)
        pages.append(page)
    return contexts, pages, opened, frames


def until_interactive(pages: list, opened: list[float]) -> list[float]:
    """Per page, seconds from its navigation until its Start button is enabled."""
    interactive = []
    for began, page in zip(opened, pages, strict=True):
        page.locator(START_ENABLED).first.wait_for()
        interactive.append(time.perf_counter() - began)
    return interactive


def hello_floor(browser: Any, tmp: Path, sessions: int) -> list[float]:
    """The same arrival at a hello-world app: what any Streamlit page costs N browsers on
    this machine before MTL Lab adds anything."""
    script = tmp / "hello_app.py"
    script.write_text(HELLO_APP)
    server = AppServer.start(tmp / "hello_runs", script=script)
    try:
        contexts, pages, opened, _ = arrive_at_once(browser, [server.url] * sessions)
        interactive = until_interactive(pages, opened)
        for context in contexts:
            context.close()
        return interactive
    finally:
        server.stop()


def class_load(browser: Any, server: AppServer, sessions: int) -> dict[str, Any]:
    store = RunStore(server.runs_dir)
    contexts, pages, opened, frames = arrive_at_once(
        browser, [f"{server.url}/?cfg={_token(100 + i)}" for i in range(sessions)])
    interactive = until_interactive(pages, opened)
    for page in pages:
        page.evaluate(WATCH_PROGRESS_JS)
    before = {r.id for r in store.list_runs()}
    for page in pages:
        button(page, "train-start").click()
    run_ids = wait_until(lambda: _new_runs(store, before, sessions), 300, "every session's run")
    wait_until(lambda: all(not store.get_run(i).is_live for i in run_ids), 1800,
               "every run to end", interval=0.5)
    runs = [store.get_run(i) for i in run_ids]
    by_seed = {r.config["seed"]: r for r in runs}
    gaps, update_gaps = [], []
    for i, page in enumerate(pages):
        run = by_seed[100 + i]
        changes = page.evaluate("window.__changes")
        gaps.append(_max_gap(changes, run.started_at or 0, run.ended_at or 0))
        update_gaps.append(_max_gap(frames[i], run.created_at, run.ended_at or 0))
    for context in contexts:
        context.close()
    return {"interactive": interactive, "runs": runs, "gaps": gaps, "update_gaps": update_gaps}


def alone(browser: Any, server: AppServer, seed: int) -> float:
    """The same config, one session, nothing else on the server."""
    store = RunStore(server.runs_dir)
    context = browser.new_context(viewport=VIEWPORT)
    try:
        page = context.new_page()
        page.set_default_timeout(300_000)
        page.goto(f"{server.url}/?cfg={_token(seed)}")
        page.locator(START_ENABLED).first.wait_for()
        before = {r.id for r in store.list_runs()}
        button(page, "train-start").click()
        run_id = wait_until(lambda: next((r.id for r in store.list_runs()
                                          if r.id not in before), None), 120, "the run")
        run = wait_until(lambda: _ended(store, run_id), 600, "the run to end", interval=0.2)
        return (run.ended_at or 0) - (run.started_at or 0)
    finally:
        context.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    parser.add_argument("--no-floor", dest="floor", action="store_false",
                        help="skip the hello-world sessions")
    args = parser.parse_args(argv)
    chromium = find_chromium()
    if chromium is None:
        print("Chromium not found (apt-get install chromium, or set MTL_CHROMIUM)",
              file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    began = time.time()
    with tempfile.TemporaryDirectory(prefix="class_load_") as tmp, sync_playwright() as pw:
        browser = launch_chromium(pw, chromium)
        floor = hello_floor(browser, Path(tmp), args.sessions) if args.floor else []
        env = {"MTL_DATA_DIR": str(Path(tmp) / "data")}
        server = AppServer.start(Path(tmp) / "runs", env=env)
        sampler = MemorySampler(server)
        sampler.start()
        try:
            load = class_load(browser, server, args.sessions)
            solo = [alone(browser, server, 100 + i) for i in range(3)]
        finally:
            sampler.stop_event.set()
            server.stop()
            browser.close()
    runs = load["runs"]
    waits = [(r.started_at or 0) - r.created_at for r in runs]
    trains = [(r.ended_at or 0) - (r.started_at or 0) for r in runs]
    solo_s = statistics.median(solo)
    gaps = [g for g in load["gaps"] if g is not None]
    result = {
        "sessions": args.sessions, "cpus": os.cpu_count(), "load_avg": os.getloadavg(),
        "interactive_s": load["interactive"], "hello_interactive_s": floor,
        "queue_wait_s": waits, "train_s": trains,
        "alone_train_s": solo, "statuses": [r.status for r in runs],
        "max_refresh_gap_s": load["gaps"], "max_update_gap_s": load["update_gaps"],
        "server_peak_rss_mb": sampler.server_mb,
        "worker_peak_rss_mb": sorted(sampler.workers_mb.values()), "seconds": time.time() - began,
    }
    print(f"{args.sessions} sessions on one server, {os.cpu_count()} CPUs:")
    print(f"  until Start is enabled: median {statistics.median(load['interactive']):.1f} s, "
          f"max {max(load['interactive']):.1f} s")
    if floor:
        print(f"  the same sessions at a hello-world app: median {statistics.median(floor):.1f}"
              f" s, max {max(floor):.1f} s (MTL Lab "
              f"{statistics.median(load['interactive']) / statistics.median(floor):.2f}× of it)")
    print(f"  queue wait: median {statistics.median(waits):.1f} s, max {max(waits):.1f} s")
    print(f"  training time: median {statistics.median(trains):.2f} s against {solo_s:.2f} s "
          f"alone ({statistics.median(trains) / solo_s:.2f}×; max {max(trains) / solo_s:.2f}×)")
    print(f"  runs: {', '.join(sorted(set(result['statuses'])))} "
          f"({result['statuses'].count('finished')}/{len(runs)} finished)")
    if gaps:
        print(f"  live panel: largest gap between refreshes while its run trained: median "
              f"{statistics.median(gaps):.2f} s, max {max(gaps):.2f} s "
              f"({len(gaps)} of {len(runs)} panels saw two or more refreshes)")
    updates = [g for g in load["update_gaps"] if g is not None]
    if updates:
        print(f"  page updates from the server while its run was queued or training: largest "
              f"gap median {statistics.median(updates):.2f} s, max {max(updates):.2f} s")
    print(f"  peak RSS: server {sampler.server_mb:.0f} MB; workers "
          + ", ".join(f"{mb:.0f}" for mb in result["worker_peak_rss_mb"]) + " MB")
    print(f"took {result['seconds']:.0f} s; load average at the end {result['load_avg'][0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
