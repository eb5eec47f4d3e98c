"""Where a later visit's time goes in the browser: the page's main thread, by kind of work.

Serves the hello-world app (title, slider, button) and MTL Lab, one after the other, and traces
`--visits` later visits of each (new browser sessions on a warm server, until Start is
enabled; the server's first session is not traced) with Chrome's timeline. Sums, per visit, the
time of the renderer's main thread in its tasks and in the kinds of work inside them: script
(React, Streamlit's frontend), module evaluation, style, layout, paint, garbage collection.

    .venv/bin/python bench/ui_trace.py [--visits 3]

Results: bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import browser_support as bs  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

# Trace event -> what it is; "task" holds all the others (they do not nest in one another,
# except style and layout a script forces, which then count in both)
KINDS = {"RunTask": "main thread busy (all tasks)", "FunctionCall": "script",
         "v8.evaluateModule": "module evaluation", "UpdateLayoutTree": "style",
         "Layout": "layout", "PrePaint": "pre-paint", "Paint": "paint",
         "MinorGC": "garbage collection (minor)", "MajorGC": "garbage collection (major)"}
CATEGORIES = ["devtools.timeline", "v8", "disabled-by-default-devtools.timeline"]


def main_thread_seconds(trace: bytes) -> Counter:
    """Seconds per trace event name on the renderer's main thread(s)."""
    data = json.loads(trace)
    events = data["traceEvents"] if isinstance(data, dict) else data
    main = {(e["pid"], e["tid"]) for e in events if e.get("name") == "thread_name"
            and e.get("args", {}).get("name") == "CrRendererMain"}
    totals: Counter = Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("name") in KINDS and (e.get("pid"), e.get("tid")) in main:
            totals[e["name"]] += e.get("dur", 0) / 1e6
    return totals


def traced_visit(browser: Any, url: str, trace: bool) -> tuple[float, Counter]:
    context = browser.new_context(viewport=bs.VIEWPORT)
    try:
        page = context.new_page()
        if trace:
            browser.start_tracing(page=page, categories=CATEGORIES)
        wall = bs.seconds_until_start_enabled(page, url)
        return wall, main_thread_seconds(browser.stop_tracing()) if trace else Counter()
    finally:
        context.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visits", type=int, default=3)
    args = parser.parse_args(argv)
    rows: dict[str, tuple[list[float], Counter]] = {}
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        hello = Path(tmp) / "hello_app.py"
        hello.write_text(bs.HELLO_APP)
        browser = bs.launch_chromium(pw, bs.require_chromium())
        try:
            for name, script in (("hello-world", hello), ("MTL Lab", "app.py")):
                server = bs.AppServer.start(Path(tmp) / name.replace(" ", "_") / "runs",
                                            script=script)
                try:
                    traced_visit(browser, server.url, trace=False)  # the first session
                    walls, totals = [], Counter()
                    for _ in range(args.visits):
                        wall, seconds = traced_visit(browser, server.url, trace=True)
                        walls.append(wall)
                        totals.update(seconds)
                    rows[name] = walls, totals
                finally:
                    server.stop()
        finally:
            browser.close()
    names = list(rows)
    print(f"{'per later visit (mean), seconds':40s}" + "".join(f"{n:>14s}" for n in names))
    print(f"{'until Start is enabled (median)':40s}"
          + "".join(f"{statistics.median(rows[n][0]):14.2f}" for n in names))
    for event, label in KINDS.items():
        print(f"{label:40s}" + "".join(f"{rows[n][1][event] / args.visits:14.3f}"
                                       for n in names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
