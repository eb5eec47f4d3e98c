"""User-chosen text shows as text on every page (a run, owner or task name, a display name):
thirty students see each other's runs, so a name such as `![x](http://host/t.png)` must not
become an image every viewer's browser fetches, nor LaTeX, a Streamlit directive or a link.

Each test puts such a name where a page writes Markdown and checks the element's Markdown
body: it holds the escaped form (`ui.text.md_text`), never the raw syntax, and what a reader
sees (escapes resolved, word joiners invisible) is the name itself."""
from __future__ import annotations

import time
from pathlib import Path

from app_support import open_at_run, visible
from streamlit.testing.v1 import AppTest

from mtl_core.config import DataConfig, ExperimentConfig, TaskConfig, parse_config
from mtl_core.owners import Actor, browser_owner_id
from mtl_core.store import RunStore
from ui.text import md_text

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
RUNS = str(ROOT / "pages" / "runs.py")
COMPARE = str(ROOT / "pages" / "compare.py")
SWEEP = str(ROOT / "pages" / "sweep.py")
EVIL = "![x](http://h/i.png) **b** $x$ :red[r]"
RAW = ("![x](", "(http://", "**b**", "$x$", ":red[")  # Markdown syntax that must not survive
KINDS = ("markdown", "caption", "info", "warning", "error", "success", "toast", "subheader",
         "header", "title")


def bodies(at: AppTest) -> list[str]:
    """The Markdown body of every Markdown-rendering element on the page (main and sidebar)."""
    return [e.value for kind in KINDS for e in getattr(at, kind)]


def shown_as_text(at: AppTest, text: str = EVIL) -> list[str]:
    """The bodies that show `text`; each holds it escaped and none holds raw Markdown."""
    found = [b for b in bodies(at) if md_text(text) in b]
    for body in bodies(at):
        assert not any(raw in body for raw in RAW), body
    for body in found:
        assert text in visible(body), body
    return found


def run_page(path: str, run_id: str | None = None, **state) -> AppTest:
    return open_at_run(AppTest.from_file(path, default_timeout=60), run_id, state)


def toy_run(store: RunStore, name: str = EVIL, owner: Actor | None = None,
            status: str = "finished", tasks: tuple[str, ...] = ("circle", "xor")) -> str:
    cfg = ExperimentConfig(name=name, data=DataConfig(suite="toy_2d"),
                           tasks=[TaskConfig(name=t) for t in tasks])
    run_id = store.create_run(cfg, status="running", **({"owner": owner} if owner else {}))
    store.set_status(run_id, status, summary={})
    time.sleep(0.01)
    return run_id


def test_sidebar_caption_of_the_current_run_shows_its_name_as_text(store: RunStore) -> None:
    run_id = toy_run(store)
    at = run_page(APP, run_id)
    found = shown_as_text(at)
    assert any(b.startswith(md_text(EVIL) + " · `" + run_id + "`") for b in found), found
    assert found[0] in [c.value for c in at.sidebar.caption]


def test_runs_page_shows_the_owners_name_and_the_run_name_as_text(store: RunStore) -> None:
    evil_owner = Actor(browser_owner_id("e" * 43), EVIL)
    theirs = toy_run(store, owner=evil_owner)
    at = run_page(RUNS, theirs)  # someone else's run: "Started by <owner>" and the details
    found = shown_as_text(at)
    assert any(f"owner **{md_text(EVIL)}**" in b for b in found), bodies(at)
    assert any(b.startswith(f":material/lock: Started by {md_text(EVIL)}:") for b in found)
    assert md_text(EVIL) in at.button(key="runs_stop").help  # tooltips render Markdown too
    mine = toy_run(store)
    at = run_page(RUNS, mine, **{"_identity.teacher": True, "runs_confirm_delete": mine})
    assert any(b.startswith(f"Delete **{md_text(EVIL)}**") for b in shown_as_text(at))


def test_runs_page_shows_a_failed_runs_message_as_text(store: RunStore) -> None:
    run_id = toy_run(store, name="plain")
    store.set_status(run_id, "failed", message=f"unknown task {EVIL!r}")
    at = run_page(RUNS, run_id)
    assert any(md_text(f"unknown task {EVIL!r}") == e.value for e in at.error), \
        [e.value for e in at.error]
    shown_as_text(at)


def test_compare_page_shows_a_task_name_quoted_in_a_message_as_text(store: RunStore) -> None:
    toy_run(store, tasks=(EVIL, "xor"))  # a task name is a CSV header a student chose
    at = AppTest.from_file(COMPARE, default_timeout=60)
    at.session_state["cmp_table"] = {"selection": {"rows": [0], "columns": []}}
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    found = shown_as_text(at)
    assert found, bodies(at)  # the baselines tab: the config names the unknown task


def test_sweep_page_base_run_caption_shows_its_name_as_text(store: RunStore) -> None:
    cfg = parse_config({"name": EVIL, "data": {"suite": "toy_2d"}, "device": "cpu"})
    run_id = store.create_run(cfg, status="running")
    store.set_status(run_id, "finished", summary={})
    at = run_page(SWEEP, **{"sweep_src": "A finished run"})
    found = shown_as_text(at)
    assert any(b.startswith(f"Base: **{md_text(EVIL)}** · toy_2d") for b in found), bodies(at)


SIGNED_IN = f"""
import ui.identity as identity
from mtl_core.owners import Actor
from ui.state import get_store

saved = identity._signed_in_email, identity.current_actor
identity._signed_in_email = lambda: "dana@example.org"
identity.current_actor = lambda: Actor("acct-dana", {EVIL!r})
try:
    identity.identity_sidebar(get_store())
finally:
    identity._signed_in_email, identity.current_actor = saved
"""


def test_sidebar_shows_a_signed_in_display_name_as_text(store: RunStore) -> None:
    at = AppTest.from_string(SIGNED_IN, default_timeout=60).run()
    assert not at.exception, [e.message for e in at.exception]
    assert [c.value for c in at.caption] == [
        f":material/person: Signed in as **{md_text(EVIL)}**"]
    shown_as_text(at)
