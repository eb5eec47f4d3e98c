"""Is a later visit waiting for the frontend's code? Load the Train page's element code early.

Streamlit's frontend loads each element type's code (a JavaScript chunk) when the page first
draws one. This bench serves MTL Lab, records which chunks a later visit (a new browser
session on a warm server, until Start is enabled) requests after the main bundle, then
alternates later visits in three ways, each with the index page passed through the same
interception (so that only the added tags differ):

- `plain`: the index page unchanged;
- `preload`: `<link rel="modulepreload">` for every recorded chunk in its `<head>` (fetched and
  compiled while the browser waits for the websocket);
- `import`: a module script in its `<head>` that imports every recorded chunk (also evaluated).

    .venv/bin/python bench/ui_chunks.py [--rounds 8]

A fulfilled page counts as a public origin for Chromium's local-network checks, which would
then refuse the websocket to 127.0.0.1: the browser here runs with those checks off.
Results: bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import browser_support as bs  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

INDEX = re.compile(r"^http://[^/]+/(\?.*)?$")
CHUNK = re.compile(r"/static/js/([\w.-]+\.js)$")
NO_LOCAL_NETWORK_CHECKS = "--disable-features=LocalNetworkAccessChecks"
MODES = ("plain", "preload", "import")


def _head_tags(mode: str, chunks: list[str]) -> str:
    if mode == "preload":
        return "".join(f'<link rel="modulepreload" href="./static/js/{c}">' for c in chunks)
    if mode == "import":
        imports = ";".join(f'import("./static/js/{c}")' for c in chunks)
        return f"<script type=module>{imports}</script>"
    return ""


def later_visit(browser: Any, url: str, mode: str | None, chunks: list[str]
                ) -> tuple[float, list[str]]:
    """Seconds until Start is enabled, and the chunks requested after the main bundle.
    `mode` None: no interception at all."""
    context = browser.new_context(viewport=bs.VIEWPORT)
    try:
        page = context.new_page()
        requested: list[str] = []
        main_done = False

        def on_request(request: Any) -> None:
            found = CHUNK.search(request.url)
            if found and main_done and found.group(1) not in requested:
                requested.append(found.group(1))

        def on_response(response: Any) -> None:
            nonlocal main_done
            main_done = main_done or "/_stcore/host-config" in response.url

        page.on("request", on_request)
        page.on("response", on_response)
        if mode is not None:
            def rewrite(route: Any) -> None:
                response = route.fetch()
                body = response.text().replace("</head>", _head_tags(mode, chunks) + "</head>")
                route.fulfill(response=response, body=body)

            page.route(INDEX, rewrite)
        return bs.seconds_until_start_enabled(page, url), requested
    finally:
        context.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        server = bs.AppServer.start(Path(tmp) / "runs")
        browser = pw.chromium.launch(executable_path=bs.require_chromium(), headless=True,
                                     args=[*bs.CHROMIUM_ARGS, NO_LOCAL_NETWORK_CHECKS])
        try:
            later_visit(browser, server.url, None, [])  # the server's first session
            _, chunks = later_visit(browser, server.url, None, [])
            print(f"{len(chunks)} chunks after the main bundle: {', '.join(chunks)}")
            times: dict[str, list[float]] = {m: [] for m in MODES}
            for _ in range(args.rounds):
                for mode in MODES:
                    times[mode].append(later_visit(browser, server.url, mode, chunks)[0])
        finally:
            browser.close()
            server.stop()
    for mode in MODES:
        print(f"{mode:8s} median {statistics.median(times[mode]):.2f} s  "
              f"({', '.join(f'{t:.2f}' for t in times[mode])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
