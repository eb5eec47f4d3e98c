"""A/B of two code trees in the same browser, alternating, for a loaded machine.

    .venv/bin/python bench/ui_ab.py start  TREE_A TREE_B [--rounds 4]
    .venv/bin/python bench/ui_ab.py visit  TREE_A TREE_B [TREE_C …] [--rounds 5]

Each TREE is a checkout of MTL Lab (e.g. `git archive <commit> | tar -x -C /tmp/base`) or a
folder holding a `hello_app.py` (a reference app with a button keyed `train-start`); each is
served by its own `streamlit run` from its own folder, so its own `ui/` and `mtl_core/` run.

- `start`: the default config with 2000 epochs (still training when measured), the page opened,
  the worker idle and 1.5 s of "reading"; then the CPU seconds of the browser, the server and
  the workers, and the wall time, from the click on Start until the live loss chart holds
  points. CPU seconds of a fixed piece of work move much less with the machine's load than
  the wall time of a 1 s run does (bench/ui_latency.py's browser-run section).
- `visit`: a new browser session on a warm server until Start is enabled (the first visit of
  each server is left out): wall time and the browser's and the server's CPU seconds.

Medians per tree. Results: bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

import browser_support as bs  # noqa: E402
from ui_latency import cpu_by_role, end_runs, open_app  # noqa: E402


def _serve(tree: Path, tmp: Path, name: str) -> bs.AppServer:
    bs.ROOT = tree  # AppServer.start runs streamlit from bs.ROOT
    script = "app.py" if (tree / "app.py").exists() else tree / "hello_app.py"
    try:
        return bs.AppServer.start(tmp / name / "runs", script=script,
                                  env={"MTL_DATA_DIR": str(tmp / "data")})
    finally:
        bs.ROOT = ROOT


def _start_cost(browser: Any, server: bs.AppServer) -> dict[str, float]:
    context, page = open_app(browser, server)
    try:
        page.get_by_role("tab", name="Training").click()
        box = bs.element(page, "cfg-optim-epochs").locator("input")
        box.fill("2000")
        box.press("Enter")
        bs.settle(page)
        for pid in server.worker_pids():
            bs.wait_idle_process(pid, timeout=60)
        page.wait_for_timeout(1500)
        before, began = cpu_by_role(server), time.time()
        bs.button(page, "train-start").click()
        bs.wait_until(lambda: (bs.trace_points(page, "live_loss") or {}).get("task1 · train"),
                      60, "points on the live loss chart", interval=0.02)
        after, ended = cpu_by_role(server), time.time()
        return {**{k: after[k] - before[k] for k in after}, "wall": ended - began}
    finally:
        context.close()
        end_runs(server)


def _visit_cost(browser: Any, server: bs.AppServer) -> dict[str, float]:
    context = browser.new_context(viewport=bs.VIEWPORT)
    try:
        page = context.new_page()
        page.set_default_timeout(120_000)
        before = cpu_by_role(server)
        wall = bs.seconds_until_start_enabled(page, server.url)
        after = cpu_by_role(server)
        return {"wall": wall, "browser": after["browser"] - before["browser"],
                "server": after["server"] - before["server"]}
    finally:
        context.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("start", "visit"))
    parser.add_argument("trees", nargs="+", type=Path)
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args(argv)
    rounds = args.rounds or (4 if args.mode == "start" else 5)
    measure = _start_cost if args.mode == "start" else _visit_cost
    chromium = bs.find_chromium()
    if chromium is None:
        print("Chromium not found (apt-get install chromium, or set MTL_CHROMIUM)",
              file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    rows: dict[str, list[dict[str, float]]] = {str(t): [] for t in args.trees}
    with tempfile.TemporaryDirectory(prefix="ui_ab_") as tmp, sync_playwright() as pw:
        browser = bs.launch_chromium(pw, chromium)
        servers = {str(t): _serve(t.resolve(), Path(tmp), f"tree{i}")
                   for i, t in enumerate(args.trees)}
        try:
            for i in range(rounds + (args.mode == "visit")):
                for name, server in servers.items():
                    got = measure(browser, server)
                    if args.mode == "start" or i:  # a server's first visit is no later visit
                        rows[name].append(got)
                        print(f"#{len(rows[name])} {name}: "
                              + ", ".join(f"{k} {v:.2f}" for k, v in got.items()), flush=True)
        finally:
            for server in servers.values():
                server.stop()
            browser.close()
    print("\nmedians (min–max):")
    for name, got in rows.items():
        print(f"  {name}: " + ", ".join(
            f"{k} {statistics.median(r[k] for r in got):.2f} "
            f"({min(r[k] for r in got):.2f}–{max(r[k] for r in got):.2f})" for k in got[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
