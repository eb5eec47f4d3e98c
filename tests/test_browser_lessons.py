"""Browser test: open a lesson, load it, start it, see it train.

Playwright drives Chromium against `streamlit run app.py` (tests/browser_support.py) in class
mode, as a teacher would on a projector: the Lessons page, "Load preset" of a lesson, the
Build & Train page with that lesson's knobs, Start, then the live loss curves grow until the
run finishes. The queued run's config must be exactly the preset's. Screenshots go to
test-artifacts/browser/. Without Chromium this skips, except under CI=true (then it fails).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from browser_support import (
    VIEWPORT,
    AppServer,
    element,
    open_page,
    screenshot,
    settle,
    train_loss_points,
    wait_until,
)

from mtl_core.lessons import get_lesson, load_preset
from mtl_core.store import RunStore

pytestmark = pytest.mark.browser

LESSON = "relatedness"  # synthetic data (no files needed), a few seconds of training


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, chromium: str) -> Iterator[AppServer]:
    runs = tmp_path_factory.mktemp("lessons") / "runs"
    server = AppServer.start(runs, env={"MTL_WARM_UP": "1", "MTL_MAX_JOBS": "1",
                                        "MTL_DATA_DIR": str(runs.parent / "data")})
    try:
        yield server
    finally:
        server.stop()  # the server and every worker it started
        assert not server.worker_pids(), "worker processes outlived the server"


@pytest.fixture
def page(app: AppServer, browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(60_000)  # 2 shared cores: a rerun can take seconds
    try:
        yield page
    finally:
        context.close()


def test_open_a_lesson_load_it_start_it_and_watch_it_train(app: AppServer, page: Any) -> None:
    lesson = get_lesson(LESSON)
    preset = load_preset(lesson, 0)
    tasks = list(preset.task_weights())

    # The Lessons page in class mode: open the lesson's card.
    page.goto(f"{app.url}/?mode=class")
    page.get_by_text("Class mode").first.wait_for()
    settle(page)
    open_page(page, "Lessons")
    page.get_by_role("heading", name="Lessons").wait_for()
    settle(page)
    page.get_by_text(lesson.title).first.click()
    page.get_by_text(lesson.question).first.wait_for()
    screenshot(page, "lesson_1_card")

    # Load preset A: the Train page opens with the lesson's knobs, still in class mode.
    element(page, f"lesson_load_{lesson.id}_0").locator("button").first.click()
    page.get_by_text("This lesson's knobs").wait_for()
    settle(page)
    # the address bar follows the page switch a moment after the page has drawn
    page.wait_for_url(lambda url: "mode=class" in url and "/lessons" not in url,
                      timeout=30_000)
    banner = page.get_by_text("This lesson's knobs").inner_text()
    assert all(knob in banner for knob in lesson.knobs), banner
    screenshot(page, "lesson_2_loaded")

    # Start: a run with exactly the preset's config becomes the current run.
    page.get_by_role("button", name="Start").click()
    page.wait_for_url("**run=*", timeout=60_000)
    run_id = page.url.split("run=", 1)[1].split("&", 1)[0]
    store = RunStore(app.runs_dir)
    assert store.get_run(run_id).config == preset.to_dict()

    # See it train: every task's loss curve grows, then the run finishes.
    seen: list[dict[str, int]] = []

    def grew() -> bool:
        now = train_loss_points(page, tasks)
        if now and (not seen or now != seen[-1]):
            seen.append(now)
        return len(seen) >= 2 or (bool(seen) and store.get_run(run_id).status == "finished")

    element(page, "live_loss").wait_for(timeout=120_000)
    wait_until(grew, 120, "the live loss curves to grow", interval=0.1)
    screenshot(page, "lesson_3_training")
    wait_until(lambda: store.get_run(run_id).status == "finished", 180, "the run to finish")
    page.get_by_text("Finished in").first.wait_for(timeout=60_000)
    final = wait_until(lambda: train_loss_points(page, tasks), 60, "the finished run's curves")
    info = store.get_run(run_id)
    logged = info.step // preset.log_every  # a point every log_every steps
    assert all(n >= logged for n in final.values()), (final, info.step)
    # The curves were drawn while it trained: two states of them seen, each task's grown.
    # A fast machine may end the run (a second or so) before the page's next refresh, so that
    # one state is all there is to see; tests/test_browser.py's longer run covers the live
    # drawing over several refreshes.
    assert all(seen[0][t] <= seen[-1][t] <= final[t] for t in tasks), (seen, final)
    if len(seen) >= 2:
        assert all(seen[0][t] < seen[-1][t] for t in tasks), (seen, final)
    assert set(info.summary["test"]) == set(tasks)
    screenshot(page, "lesson_4_finished")


def test_run_this_lesson_trains_its_presets_and_shows_the_comparison_and_verdict(
        app: AppServer, page: Any) -> None:
    """The "Run this lesson" button: the lesson's presets train in the workers (5 stacked
    seeds each), and the card itself shows the comparison table and the claim's verdict, the
    same verdict mtl_core.lesson_claims finds on the stored runs."""
    from mtl_core.lesson_claims import CLAIMS, evaluate

    lesson = get_lesson("loss_scales")  # no baselines needed: two runs
    claim = CLAIMS[lesson.id]
    page.goto(f"{app.url}/")
    settle(page)
    open_page(page, "Lessons")
    page.get_by_role("heading", name="Lessons").wait_for()
    settle(page)
    page.get_by_text(lesson.title).first.click()
    page.get_by_text(lesson.question).first.wait_for()
    settle(page)  # the card's rerun ends before the click (a click during it can be lost)
    before = {r.id for r in RunStore(app.runs_dir).list_runs()}
    element(page, f"lesson_run_{lesson.id}").locator("button").first.click()

    store = RunStore(app.runs_dir)
    new = wait_until(lambda: [r for r in store.list_runs() if r.id not in before]
                     if len(store.list_runs()) >= len(before) + 2 else None,
                     60, "the lesson's two runs to be queued")
    by_name = {r.name: r for r in new}
    assert set(by_name) == {load_preset(lesson, i).name for i in (0, 1)}
    table = element(page, f"lesson_table_{lesson.id}")
    wait_until(lambda: "A: static" in table.inner_text(), 60, "the comparison table")
    page.get_by_text("Training:").first.wait_for(timeout=60_000)  # the card polls meanwhile
    screenshot(page, "lesson_run_1_training")

    wait_until(lambda: all(store.get_run(r.id).status == "finished" for r in new), 300,
               "the lesson's runs to finish")
    verdict = page.locator('[data-testid="stAlert"]', has_text="Claim").first
    verdict.wait_for(timeout=60_000)
    expected = evaluate(lesson.id, {("A" if r.name == load_preset(lesson, 0).name else "B"): r.id
                                    for r in new}, app.runs_dir).check
    assert expected is not None and len(expected.figures) == 5
    word = "passed" if expected.passed else "failed"
    text = verdict.inner_text()
    assert f"Claim {word}: {expected.held} of 5 seeds" in text, text
    assert f"{expected.figures[0]:+.4g}" in text, text  # the per-seed figures are shown
    shown = table.inner_text()
    assert "finished" in shown and claim.figure in shown, shown
    assert "A: static" in shown and "B: uncertainty" in shown, shown
    screenshot(page, "lesson_run_2_verdict")
