"""End to end in a real browser: Playwright drives Chromium against `streamlit run app.py`.

One Streamlit server per module, on a free port, with its own run store and a pre-started
worker (MTL_WARM_UP on, as a user gets it). Before it starts, a run is trained to the end with
the CLI, so one test opens a finished run by its link. Screenshots go to
test-artifacts/browser/. Without Chromium these tests skip, except under CI=true, where a
missing browser is a failure.
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import yaml
from browser_support import (
    ROOT,
    VIEWPORT,
    WATCH_FILE_NAV_JS,
    AppServer,
    alert,
    button,
    element,
    nav_link,
    open_page,
    screenshot,
    scroll_to_top_of,
    selectbox_text,
    settle,
    trace_points,
    train_loss_points,
    wait_until,
)

from mtl_core.store import RunStore

pytestmark = pytest.mark.browser

TOY_TASKS = ["circle", "xor", "spiral", "distance"]  # the toy_2d suite's tasks, in order
CLI_CONFIG = {
    "name": "cli-finished",
    "seed": 0,
    "device": "cpu",
    "data": {"suite": "toy_2d", "params": {"n_samples": 300, "n_test": 100}},
    "model": {"trunk": {"type": "mlp", "layers": [16]}, "heads": {"layers": [8]}},
    "optim": {"lr": 0.01, "batch_size": 64, "epochs": 3},
    "log_every": 2,
}


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory, chromium: str) -> tuple[Path, str]:
    """A run store holding one run trained to the end with `python -m mtl_core train`."""
    base = tmp_path_factory.mktemp("browser")
    runs = base / "runs"
    config = base / "cli.yaml"
    config.write_text(yaml.safe_dump(CLI_CONFIG))
    env = dict(os.environ, MTL_WARM_UP="0", MTL_DATA_DIR=str(base / "data"))
    done = subprocess.run([sys.executable, "-m", "mtl_core", "train", str(config),
                           "--runs-dir", str(runs)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, f"the CLI run failed:\n{done.stdout}\n{done.stderr}"
    run_id = done.stdout.strip().splitlines()[-1].strip()
    assert RunStore(runs).get_run(run_id).status == "finished"
    return runs, run_id


@pytest.fixture(scope="module")
def app(cli_run: tuple[Path, str]) -> Iterator[AppServer]:
    """The app on a free port over the CLI run's store, with a pre-started worker."""
    runs, _ = cli_run
    server = AppServer.start(runs, env={"MTL_WARM_UP": "1", "MTL_MAX_JOBS": "2",
                                        "MTL_DATA_DIR": str(runs.parent / "data")})
    try:
        yield server
    finally:
        server.stop()  # the server's process group and every worker it started
        assert not server.worker_pids(), "worker processes outlived the server"


@pytest.fixture
def page(browser: Any, app: AppServer, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(60_000)  # 2 shared cores: a rerun can take a few seconds
    try:
        yield page
    finally:
        try:  # what the page showed last, for a test that failed
            screenshot(page, f"last_{request.node.name}")
        finally:
            context.close()


# ---------------------------------------------------------------- helpers


def boundary_charts(page: Any, tasks: list[str]) -> bool:
    """Whether the Predictions page shows a decision-boundary chart with data per task."""
    return all((trace_points(page, f"pred_grid_{t}") or {}) for t in tasks)


def status_of(runs: Path, run_id: str) -> str:
    return RunStore(runs).get_run(run_id).status


def logged_points(runs: Path, run_id: str) -> dict[str, int]:
    """Train-loss points per task in the store: what a complete chart draws."""
    df = RunStore(runs).metrics(run_id)
    train = df[(df["split"] == "train") & (df["name"] == "loss")]
    return train.groupby("task").size().to_dict()


def wait_for_ended_run(page: Any, run_id: str, banner: str, status: str) -> None:
    """The live panel's box for the run says `banner`, the sidebar shows the run as `status`;
    then scroll to the box (for the screenshot that follows)."""
    wait_until(lambda: banner in alert(page, run_id).inner_text(), 30,
               f"the live panel to say {banner!r}")
    sidebar = page.locator('[data-testid="stSidebar"]')
    sidebar.get_by_text(status, exact=True).wait_for()
    assert run_id in sidebar.inner_text()
    scroll_to_top_of(alert(page, run_id))


# ---------------------------------------------------------------- tests


def test_link_to_a_cli_run_shows_its_curves_and_predictions(app: AppServer, page: Any,
                                                           cli_run: tuple[Path, str]) -> None:
    runs, run_id = cli_run
    page.goto(f"{app.url}/?run={run_id}")
    points = wait_until(lambda: train_loss_points(page, TOY_TASKS), 60, "the run's loss curves")
    info = RunStore(runs).get_run(run_id)
    logged = logged_points(runs, run_id)
    assert points == {t: logged[t] for t in TOY_TASKS}  # every logged point is drawn
    assert min(points.values()) >= info.step // CLI_CONFIG["log_every"]  # and there are many
    wait_for_ended_run(page, run_id, "Finished in", "finished")
    screenshot(page, "cli_run_curves")

    open_page(page, "Predictions")
    page.get_by_text("Decision boundaries").wait_for()
    wait_until(lambda: boundary_charts(page, TOY_TASKS), 60, "a decision boundary per task")
    assert run_id in selectbox_text(page, "pred_run")
    page.get_by_text(f"Showing the evaluation at step {info.step}").wait_for()
    screenshot(page, "cli_run_predictions")


def test_new_user_trains_watches_stops_and_finds_the_run_again(app: AppServer,
                                                               page: Any) -> None:
    page.goto(app.url)
    # A new user: the default suite's form, then they pick toy_2d (four tasks).
    element(page, "cfg-tasks-task1-weight").locator("input[type=range]").wait_for()
    settle(page)
    element(page, "cfg-data-suite").click()
    page.get_by_role("option", name="toy_2d", exact=True).click()
    weight = element(page, "cfg-tasks-circle-weight").locator("input[type=range]")
    weight.wait_for(state="attached")
    settle(page)

    # The task weight slider: 1.00 → 0.50 with the keyboard (step 0.05).
    weight.focus()
    for _ in range(10):
        weight.press("ArrowLeft")
    wait_until(lambda: weight.input_value() == "0.5", 30, "the circle weight to read 0.5")
    settle(page)

    # A layer width of the shared trunk: 64 → 48.
    page.get_by_role("tab", name="Architecture").click()
    width = element(page, "cfg-model-trunk-layers-0").locator("input")
    width.fill("48")
    width.press("Enter")
    settle(page)
    page.get_by_text("Linear 2→48").first.wait_for()  # the architecture diagram follows

    # Long enough to watch (stopped below), with a point every 5 steps.
    page.get_by_role("tab", name="Training").click()
    for key, value in (("cfg-optim-epochs", "2000"), ("cfg-log_every", "5")):
        box = element(page, key).locator("input")
        box.fill(value)
        box.press("Enter")
        settle(page)
        assert box.input_value() == value
    screenshot(page, "e2e_1_form")

    # The page pre-started a worker (torch imported) that waits for this run.
    waiting = wait_until(app.worker_pids, 60, "a pre-started worker")
    # And the browser loaded the charts' code while the form was filled (ui.chart_warmup).
    wait_until(lambda: page.evaluate("window.__mtlChartsLoaded === true"), 60,
               "the chart code to be loaded before Start")
    button(page, "train-start").click()
    page.wait_for_url(lambda url: "run" in parse_qs(urlparse(url).query), timeout=60_000)
    run_id = parse_qs(urlparse(page.url).query)["run"][0]
    runs = app.runs_dir
    cfg = RunStore(runs).get_run(run_id).config
    assert cfg["data"]["suite"] == "toy_2d"
    assert cfg["model"]["trunk"]["layers"][0] == 48
    assert {t["name"]: t["weight"] for t in cfg["tasks"]} == {
        "circle": 0.5, "xor": 1.0, "spiral": 1.0, "distance": 1.0}
    assert (cfg["optim"]["epochs"], cfg["log_every"]) == (2000, 5)
    claimed_by = wait_until(lambda: RunStore(runs).get_run(run_id).pid, 60, "a worker to claim")
    assert claimed_by in waiting, (claimed_by, waiting)

    # Curves for every task grow over at least two refreshes.
    seen: list[dict[str, int]] = []

    def grown_twice() -> bool:
        now = train_loss_points(page, TOY_TASKS)
        if now and (not seen or now != seen[-1]):
            seen.append(now)
        return len(seen) >= 3

    element(page, "live_loss").wait_for(timeout=120_000)
    # The live chart used the module loaded beforehand: Plotly's code was fetched once.
    assert page.evaluate("performance.getEntriesByType('resource')"
                         ".filter(e => e.name.includes('/PlotlyChart.')).length") == 1
    scroll_to_top_of(alert(page, run_id))
    screenshot(page, "e2e_2_first_points")
    wait_until(grown_twice, 120, "three successive states of the loss chart", interval=0.1)
    for task in TOY_TASKS:
        counts = [s[task] for s in seen]
        assert all(a < b for a, b in zip(counts, counts[1:], strict=False)), (task, counts)
    screenshot(page, "e2e_3_curves_grew")

    # The Predictions page of the live run: a decision boundary per task.
    open_page(page, "Predictions")
    page.get_by_text("Decision boundaries").wait_for()
    wait_until(lambda: boundary_charts(page, TOY_TASKS), 60, "a decision boundary per task")
    page.get_by_text("refreshing while the run is live").wait_for()
    assert run_id in selectbox_text(page, "pred_run")
    screenshot(page, "e2e_4_predictions")

    # Back to Build & Train, Stop.
    open_page(page, "Build & Train")
    stop = button(page, "train-stop")
    wait_until(stop.is_enabled, 30, "an enabled Stop button")
    assert status_of(runs, run_id) == "running", "the run ended before the test could stop it"
    stop.click()
    wait_until(lambda: status_of(runs, run_id) == "stopped", 60, "the run to be stopped")
    wait_until(lambda: "Stopped" in alert(page, run_id).inner_text(), 60,
               "the live panel to say Stopped")
    before = wait_until(lambda: train_loss_points(page, TOY_TASKS), 60, "the stopped run's curves")
    scroll_to_top_of(alert(page, run_id))
    screenshot(page, "e2e_5_stopped")

    # Reload: the run is still the current one, stopped, its curves drawn.
    page.reload()
    after = wait_until(lambda: train_loss_points(page, TOY_TASKS), 60, "the curves after reload")
    logged = logged_points(runs, run_id)
    assert after == {t: logged[t] for t in TOY_TASKS}, (after, logged)  # every logged point
    assert all(after[t] >= before[t] >= 3 for t in TOY_TASKS), (before, after)
    wait_for_ended_run(page, run_id, "Stopped", "stopped")
    screenshot(page, "e2e_6_after_reload")

    # The Runs page lists it, stopped.
    open_page(page, "Runs")
    element(page, "runs_target").wait_for()
    label = wait_until(lambda: run_id in selectbox_text(page, "runs_target")
                       and selectbox_text(page, "runs_target"), 30, "the run on the Runs page")
    assert "stopped" in label, label
    screenshot(page, "e2e_7_runs_page")


def test_a_link_straight_to_a_page_as_the_first_request_opens_it_inside_the_app(
        cli_run: tuple[Path, str], browser: Any) -> None:
    # Until app.py's st.navigation has run once in a server's life, Streamlit treats pages/ as
    # old-style pages: a shared link to one, opened first, ran that file alone (no sidebar,
    # file names for a menu). So this needs a server nobody has visited yet.
    runs, run_id = cli_run
    server = AppServer.start(runs, env={"MTL_WARM_UP": "0",
                                        "MTL_DATA_DIR": str(runs.parent / "data")})
    context = browser.new_context(viewport=VIEWPORT)
    try:
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.add_init_script(WATCH_FILE_NAV_JS)
        page.goto(f"{server.url}/predictions?run={run_id}")
        nav_link(page, "Build & Train").wait_for()  # the app's menu, from the first paint on
        sidebar = page.locator('[data-testid="stSidebar"]')
        sidebar.get_by_text("Current run").wait_for()
        assert run_id in sidebar.inner_text()
        page.get_by_text("Decision boundaries").wait_for()
        assert run_id in selectbox_text(page, "pred_run")
        assert urlparse(page.url).path == "/predictions"
        assert page.evaluate("window.__fileNavSeen") == [], "the file-name listing showed"
        nav_link(page, "Runs").click()
        page.get_by_role("heading", name="Runs").first.wait_for()
        assert urlparse(page.url).path == "/runs"
        screenshot(page, "deep_link_first_request")
    finally:
        context.close()
        server.stop()
