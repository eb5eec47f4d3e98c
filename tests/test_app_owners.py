"""AppTest: owners on the pages. The Runs page shows every run but offers Stop, Delete and
Rename only to the run's owner and the teacher, says why to the others, and tells where a queued
run stands; the sidebar names the viewer and unlocks the teacher; a damaged index is rebuilt
with one line instead of a traceback."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from mtl_core.config import ExperimentConfig
from mtl_core.owners import Actor, browser_owner_id
from mtl_core.store import RunStore

ROOT = Path(__file__).resolve().parents[1]
RUNS_PAGE = str(ROOT / "pages" / "runs.py")
APP = str(ROOT / "app.py")
SECRET = "v" * 43  # the viewer's browser secret (the cookie's value)
VIEWER = Actor(browser_owner_id(SECRET), "Viewer")
ALICE = Actor(browser_owner_id("a" * 43), "Alice")


def config(name: str) -> ExperimentConfig:
    return ExperimentConfig.model_validate({"name": name, "data": {"suite": "toy_2d"}})



SIDEBAR_SCRIPT = """
from ui.identity import identity_sidebar
from ui.state import get_store
identity_sidebar(get_store())
"""


def page(path: str, run_id: str | None = None, teacher: bool = False) -> AppTest:
    at = (AppTest.from_string(SIDEBAR_SCRIPT, default_timeout=60) if path == "sidebar"
          else AppTest.from_file(path, default_timeout=60))
    at.session_state["_identity.secret"] = SECRET  # as if the browser sent its cookie
    if teacher:
        at.session_state["_identity.teacher"] = True
    if run_id:
        at.query_params["run"] = run_id
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def test_runs_page_hides_actions_from_someone_elses_run(store: RunStore) -> None:
    theirs = store.create_run(config("alice-run"), status="running", owner=ALICE)
    at = page(RUNS_PAGE, theirs)
    assert at.button(key="runs_stop").disabled and at.button(key="runs_delete").disabled
    assert "Started by Alice" in at.button(key="runs_stop").help
    assert any("Started by Alice: only they or the teacher can stop, delete or rename it"
               in c.value for c in at.caption)
    assert not at.button(key="runs_open").disabled  # looking is for everyone
    assert "runs_rename_save" not in [b.key for b in at.button]
    table = at.dataframe[0].value
    assert table.set_index("id").loc[theirs, "owner"] == "Alice"


def test_runs_page_offers_actions_to_the_owner_and_the_teacher(store: RunStore) -> None:
    mine = store.create_run(config("mine"), status="running", owner=VIEWER)
    at = page(RUNS_PAGE, mine)
    assert not at.button(key="runs_stop").disabled
    at.button(key="runs_stop").click().run()
    assert store.pending_controls(mine) == ["stop"]

    theirs = store.create_run(config("alice-run"), status="running", owner=ALICE)
    at = page(RUNS_PAGE, theirs, teacher=True)
    assert not at.button(key="runs_stop").disabled
    at.button(key="runs_stop").click().run()
    assert store.pending_controls(theirs) == ["stop"]


def test_owner_renames_a_finished_run(store: RunStore) -> None:
    mine = store.create_run(config("old name"), status="finished", owner=VIEWER)
    at = page(RUNS_PAGE, mine)
    at.text_input(key=f"runs_rename_{mine}").set_value("new name")
    at.button(key="runs_rename_save").click().run()
    assert not at.exception
    assert store.get_run(mine).name == "new name"


def test_a_queued_run_says_where_it_stands_and_why(store: RunStore) -> None:
    for name in ("a", "b"):  # MTL_MAX_JOBS=2 in the tests: both slots busy
        store.claim_run(os.getpid(), run_id=store.create_run(config(name), owner=ALICE))
    first = store.create_run(config("first"), owner=ALICE)
    mine = store.create_run(config("mine"), owner=VIEWER)
    store.create_run(config("later"), owner=ALICE)
    at = page(RUNS_PAGE, mine)
    texts = [i.value for i in at.info]
    # The viewer was never served, Alice was: the viewer's run goes first.
    assert "1st in line of 3 queued; waiting for a free slot: 2 of 2 running." in texts, texts
    at = page(RUNS_PAGE, first)
    assert any(t.startswith("2nd in line of 3 queued") for t in (i.value for i in at.info))


def test_sidebar_names_the_viewer_and_unlocks_the_teacher(store: RunStore,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    monkeypatch.setenv("MTL_TEACHER_KEY", "open-sesame")
    mine = store.create_run(config("mine"), status="finished", owner=VIEWER)
    at = page("sidebar")  # (under AppTest only a first run goes through app.py)
    assert at.text_input(key="identity.name").value == f"guest-{VIEWER.id[-4:]}"
    at.text_input(key="identity.name").set_value("Dana").run()
    assert store.get_run(mine).owner_name == "Dana"
    at.text_input(key="identity.teacher_key").set_value("wrong")
    at.button(key="identity.unlock").click().run()
    assert any("not the teacher key" in e.value for e in at.error)
    assert "_identity.teacher" not in at.session_state
    at.text_input(key="identity.teacher_key").set_value("open-sesame")
    at.button(key="identity.unlock").click().run()
    assert at.session_state["_identity.teacher"] is True
    at.number_input(key="identity.max_queued_per_owner").set_value(4)
    at.button(key="identity.save_limits").click().run()
    assert store.limits().max_queued_per_owner == 4


def test_app_rebuilds_a_damaged_index_and_says_so_in_one_line(store: RunStore) -> None:
    run_id = store.create_run(config("kept"), status="finished", owner=ALICE)
    store.add_metrics(run_id, [(1, 0.0, "train", "a", "loss", 0.5)])
    store.db_path.write_bytes(b"this is not a database" * 100)
    at = page(APP)  # one line, and the page renders
    toasts = [t.value for t in at.toast]
    assert any("runs.db was damaged" in t and "rebuilt" in t for t in toasts), toasts
    assert len(toasts) == 1 and "\n" not in toasts[0]
    at = page(RUNS_PAGE)
    assert set(at.dataframe[0].value["id"]) == {run_id}



OIDC_SCRIPT = """
import streamlit as st
import ui.identity as identity
identity._signed_in_email = lambda: "T.Eacher@School.example"  # as st.user would say
actor = identity.current_actor()
st.write(f"{actor.id}|{actor.teacher}")
"""


def test_a_signed_in_account_is_the_owner_and_listed_emails_are_teachers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import ui.identity as identity

    real = identity._signed_in_email
    try:
        at = AppTest.from_string(OIDC_SCRIPT, default_timeout=60).run()
        assert at.markdown[0].value == "user:t.eacher@school.example|False"
        monkeypatch.setenv("MTL_TEACHERS", "someone@else.example, t.eacher@school.example")
        at = AppTest.from_string(OIDC_SCRIPT, default_timeout=60).run()
        assert at.markdown[0].value == "user:t.eacher@school.example|True"
    finally:
        identity._signed_in_email = real
