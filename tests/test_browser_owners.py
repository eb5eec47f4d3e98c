"""Owners in real browsers: two browser contexts (two students' browsers) against one server.

A starts a run; B sees it on the Runs page (with where it stands in the queue) but cannot stop
or delete it, and is told why; A, after a reload (same browser, same identity), stops it; B
unlocks the teacher with the operator's key and deletes it. The one training slot is held by a
run of the operator's (its "worker" is this test process), so A's run waits in the queue and
nothing trains: the test checks ownership, not training.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from browser_support import (
    VIEWPORT,
    AppServer,
    button,
    element,
    screenshot,
    settle,
    wait_until,
)

from mtl_core.config import ExperimentConfig
from mtl_core.store import RunStore

pytestmark = pytest.mark.browser
TEACHER_KEY = "class-key-123"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, chromium: str) -> Iterator[AppServer]:
    runs = tmp_path_factory.mktemp("owners") / "runs"
    store = RunStore(runs)
    busy = store.create_run(ExperimentConfig.model_validate(
        {"name": "holds the slot", "data": {"suite": "toy_2d"}}))
    store.claim_run(os.getpid(), run_id=busy)  # alive pid: reconcile leaves it running
    app = AppServer.start(runs, env={"MTL_WARM_UP": "0", "MTL_MAX_JOBS": "1",
                                     "MTL_TEACHER_KEY": TEACHER_KEY,
                                     "MTL_DATA_DIR": str(runs.parent / "data")})
    try:
        yield app
    finally:
        app.stop()
        store.set_status(busy, "finished")


def new_page(browser: Any) -> tuple[Any, Any]:
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(60_000)
    return context, page


def open_runs(page: Any, server: AppServer, run_id: str) -> None:
    page.goto(f"{server.url}/runs?run={run_id}")
    element(page, "runs_stop").wait_for()
    settle(page)


def enter_key(page: Any, box: Any, text: str) -> None:
    box.fill(text)
    box.press("Enter")
    settle(page)


def test_a_starts_b_cannot_stop_or_delete_the_teacher_can(server: AppServer,
                                                          browser: Any) -> None:
    store = RunStore(server.runs_dir)
    ctx_a, a = new_page(browser)
    ctx_b, b = new_page(browser)
    try:
        # A starts a run from the Train page (the default config): it waits for the slot.
        a.goto(server.url)
        button(a, "train-start").wait_for()
        settle(a)
        button(a, "train-start").click()
        a.wait_for_url(lambda url: "run" in parse_qs(urlparse(url).query), timeout=60_000)
        run_id = parse_qs(urlparse(a.url).query)["run"][0]
        run = store.get_run(run_id)
        assert run.status == "queued" and run.owner.startswith("b-")
        owner_name = run.owner_name
        assert owner_name and owner_name.startswith("guest-")
        cookies = {c["name"]: c["value"] for c in ctx_a.cookies()}
        assert "mtl_lab_id" in cookies and cookies["mtl_lab_id"] not in run.owner  # hashed

        # B sees it, where it stands, and that it is not B's to change.
        open_runs(b, server, run_id)
        assert button(b, "runs_stop").is_disabled() and button(b, "runs_delete").is_disabled()
        b.get_by_text(f"Started by {owner_name}: only they or the teacher can stop").first \
            .wait_for()
        b.get_by_text("1st in line of 1 queued; waiting for a free slot: 1 of 1 running") \
            .wait_for()
        screenshot(b, "owners_1_b_sees_a_run_it_cannot_change")

        # A reloads (same browser, same identity) and stops its own run.
        open_runs(a, server, run_id)
        wait_until(button(a, "runs_stop").is_enabled, 30, "A's Stop to be enabled")
        button(a, "runs_stop").click()
        wait_until(lambda: store.get_run(run_id).status == "stopped", 30, "A's run stopped")
        assert store.get_run(run_id).owner == run.owner

        # B, now looking at a stopped run: Delete is still not B's.
        open_runs(b, server, run_id)
        assert button(b, "runs_delete").is_disabled()
        # B unlocks the teacher with the operator's key: B may delete it now.
        sidebar = b.locator('[data-testid="stSidebar"]')
        sidebar.get_by_text("Teacher", exact=True).click()
        key_box = element(b, "identity-teacher_key").locator("input")
        # Enter commits the key in a rerun of its own; a click straight after fill() can
        # land while that rerun replaces the button, and the click is lost (seen in CI).
        enter_key(b, key_box, "a wrong key")
        button(b, "identity-unlock").click()
        b.get_by_text("That is not the teacher key.").wait_for()
        enter_key(b, key_box, TEACHER_KEY)
        button(b, "identity-unlock").click()
        wait_until(lambda: sidebar.get_by_text("Teacher: class limits").count() > 0, 30,
                   "the teacher's box")
        wait_until(button(b, "runs_delete").is_enabled, 30, "the teacher's Delete")
        button(b, "runs_delete").click()
        button(b, "runs_delete_yes").click()
        wait_until(lambda: run_id not in {r.id for r in store.list_runs()}, 30,
                   "the run to be deleted")
        assert not (server.runs_dir / run_id).exists()
        time.sleep(0.5)
        screenshot(b, "owners_2_teacher_deleted_it")
    finally:
        ctx_a.close()
        ctx_b.close()


HOSTILE_NAME = "![x](http://probe.invalid/x.png) **b** $x^2$ :red[r] www.probe.invalid"


def test_a_run_name_with_markdown_shows_as_text_and_fetches_nothing(server: AppServer,
                                                                     browser: Any) -> None:
    """A student names a run with Markdown: every viewer's page shows the name's characters,
    and no browser fetches the image or gets a link or formula out of it (ui.text.md_text)."""
    store = RunStore(server.runs_dir)
    run_id = store.create_run(ExperimentConfig.model_validate(
        {"name": HOSTILE_NAME, "data": {"suite": "toy_2d"}}))  # queued: the slot is held
    context, page = new_page(browser)
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    try:
        open_runs(page, server, run_id)
        sidebar = page.locator('[data-testid="stSidebar"]')
        shown = sidebar.inner_text().replace("\u2060", "")  # the escapes' word joiners
        assert HOSTILE_NAME in shown
        assert not [url for url in requested if "probe.invalid" in url]
        # (the page's own Δm formula is LaTeX too: only the name's must not be)
        for selector in ('img[src*="probe"]', 'a[href*="probe"]',
                         '.katex annotation:has-text("x^2")',
                         '[data-testid="stMarkdownContainer"] strong:text-is("b")'):
            assert page.locator(selector).count() == 0, selector
        screenshot(page, "owners_3_markdown_name_as_text")
    finally:
        context.close()
        store.set_status(run_id, "stopped")
