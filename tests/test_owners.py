"""Owners, the teacher and quotas: who may change a run (checked in mtl_core, not only by the
pages), per-owner queue limits refused at submit, and a claim order that serves owners in turn."""
from __future__ import annotations

import json
import os
import time

import pytest
from store_support import config

from mtl_core import jobs
from mtl_core.fair_queue import fair_order
from mtl_core.owners import (
    OPERATOR,
    Actor,
    browser_owner_id,
    clean_name,
    env_limits,
    ordinal,
    teacher_key_matches,
)
from mtl_core.store import QuotaError, RunStore

ALICE = Actor(browser_owner_id("a" * 40), "Alice")
BOB = Actor(browser_owner_id("b" * 40), "Bob")
CAROL = Actor(browser_owner_id("c" * 40), "Carol")
TEACHER = Actor(browser_owner_id("t" * 40), "Ms T", teacher=True)




def test_every_run_records_its_owner_in_the_index_and_its_folder(store: RunStore) -> None:
    mine = store.create_run(config("mine"), owner=ALICE)
    cli = store.create_run(config("cli"))
    run = store.get_run(mine)
    assert (run.owner, run.owner_name) == (ALICE.id, "Alice")
    assert store.get_run(cli).owner == "operator"
    doc = json.loads((store.run_dir(mine) / "run.json").read_text())
    assert (doc["owner"], doc["owner_name"], doc["status"]) == (ALICE.id, "Alice", "queued")
    # The owner id is a hash: the browser's secret appears nowhere in the run.
    assert "a" * 40 not in (store.run_dir(mine) / "run.json").read_text()
    assert ALICE.id.startswith("b-") and ALICE.id != BOB.id


def test_only_the_owner_or_the_teacher_may_stop_pause_resume(store: RunStore) -> None:
    queued = store.create_run(config(), owner=ALICE)
    with pytest.raises(PermissionError, match=r"only the run's owner \(Alice\) or the teacher "
                                              r"can stop .*you are Bob"):
        jobs.stop(queued, store.runs_dir, actor=BOB)
    assert store.get_run(queued).status == "queued"
    running = store.create_run(config(), owner=ALICE)
    store.claim_run(os.getpid(), run_id=running)
    for act in (jobs.pause, jobs.resume, jobs.stop):
        with pytest.raises(PermissionError, match="or the teacher can"):
            act(running, store.runs_dir, actor=BOB)
    assert store.pending_controls(running) == []  # nothing was requested for Bob
    assert jobs.pause(running, store.runs_dir, actor=ALICE) == "requested"
    assert jobs.resume(running, store.runs_dir, actor=TEACHER) == "requested"
    assert jobs.stop(running, store.runs_dir, actor=OPERATOR) == "requested"  # the CLI
    assert jobs.stop(queued, store.runs_dir, actor=TEACHER) == "stopped"


def test_only_the_owner_or_the_teacher_may_delete_or_rename(store: RunStore) -> None:
    run_id = store.create_run(config("first"), owner=ALICE)
    store.set_status(run_id, "finished")
    with pytest.raises(PermissionError, match="can rename"):
        store.rename_run(run_id, "hijacked", BOB)
    with pytest.raises(PermissionError, match="can delete"):
        store.delete_run(run_id, BOB)
    assert store.get_run(run_id).name == "first" and store.run_dir(run_id).is_dir()
    store.rename_run(run_id, "  better  ", ALICE)
    assert store.get_run(run_id).name == "better"
    assert json.loads((store.run_dir(run_id) / "run.json").read_text())["name"] == "better"
    with pytest.raises(ValueError, match="1 to 100 characters"):
        store.rename_run(run_id, "   ", ALICE)
    store.delete_run(run_id, TEACHER)
    with pytest.raises(KeyError):
        store.get_run(run_id)
    assert not store.run_dir(run_id).exists()


def test_operator_owns_the_runs_of_the_cli_and_acts_on_everything(store: RunStore) -> None:
    run_id = store.create_run(config())  # no owner given: the local operator
    with pytest.raises(PermissionError):
        jobs.stop(run_id, store.runs_dir, actor=ALICE)
    assert jobs.stop(run_id, store.runs_dir) == "stopped"  # the default actor is the operator


def test_display_name_follows_its_owner_onto_every_run(store: RunStore) -> None:
    ids = [store.create_run(config(), owner=ALICE) for _ in range(2)]
    other = store.create_run(config(), owner=BOB)
    assert store.set_owner_name(ALICE.id, "Alice L.") == 2
    assert {store.get_run(i).owner_name for i in ids} == {"Alice L."}
    assert store.get_run(other).owner_name == "Bob"
    assert clean_name("  A\x00li\nce  " + "x" * 80) == "Alice  " + "x" * 33


def test_teacher_key_is_compared_only_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MTL_TEACHER_KEY", raising=False)
    assert not teacher_key_matches("") and not teacher_key_matches("anything")
    monkeypatch.setenv("MTL_TEACHER_KEY", "s3cret-key")
    assert teacher_key_matches("s3cret-key")
    assert not teacher_key_matches("s3cret-kez") and not teacher_key_matches(None)


# ---------------------------------------------------------------- quotas


def test_queue_quota_refused_at_submit_with_a_clear_message(store: RunStore,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    monkeypatch.setenv("MTL_MAX_QUEUED_PER_OWNER", "2")
    for _ in range(2):
        store.create_run(config(), owner=ALICE)
    with pytest.raises(QuotaError, match=r"you already have 2 runs waiting in the queue; the "
                                         r"class limit is 2 per person \(max_queued_per_owner\)"):
        store.create_run(config(), owner=ALICE)
    assert len(store.list_runs()) == 2 and len(list(store.runs_dir.glob("2*"))) == 2
    store.create_run(config(), owner=BOB)  # Bob has his own quota
    store.create_run(config(), owner=TEACHER)  # the teacher and the operator have none
    for _ in range(3):
        store.create_run(config())
    # The teacher raises the limit for the whole class, at run time.
    with pytest.raises(PermissionError, match="only the teacher can change the class limits"):
        store.set_limits(ALICE, max_queued_per_owner=10)
    store.set_limits(TEACHER, max_queued_per_owner=3)
    assert store.limits().max_queued_per_owner == 3
    store.create_run(config(), owner=ALICE)
    with pytest.raises(QuotaError, match="limit is 3 per person"):
        store.create_run(config(), owner=ALICE)
    with pytest.raises(ValueError, match=r"max_queued_per_owner must be a whole number from 0 "
                                         r"\(no limit\) to 10000 \(got -1\)"):
        store.set_limits(TEACHER, max_queued_per_owner=-1)


def test_quota_through_jobs_submit_queues_nothing(store: RunStore, tiny_doc,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs, "dispatch", lambda *a, **k: None)  # no workers in this test
    store.set_limits(TEACHER, max_queued_per_owner=1)
    jobs.submit(tiny_doc(), store.runs_dir, owner=ALICE)
    with pytest.raises(QuotaError):
        jobs.submit(tiny_doc(), store.runs_dir, owner=ALICE)
    assert [r.owner for r in store.list_runs()] == [ALICE.id]


def test_env_limits_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTL_MAX_ACTIVE_PER_OWNER", "two")
    with pytest.raises(ValueError, match="MTL_MAX_ACTIVE_PER_OWNER must be a whole number"):
        env_limits()
    monkeypatch.setenv("MTL_MAX_ACTIVE_PER_OWNER", "1")
    monkeypatch.setenv("MTL_MAX_QUEUED_PER_OWNER", "0")
    assert env_limits().to_dict() == {"max_active_per_owner": 1, "max_queued_per_owner": 0}


# ---------------------------------------------------------------- the fair queue


def test_claim_serves_three_owners_in_turn(store: RunStore) -> None:
    """Alice queues five runs first, then Bob two, then Carol one: with one slot, the claims
    alternate between owners (least recently served first) instead of Alice's five first."""
    owner_of = {}
    for actor, count in ((ALICE, 5), (BOB, 2), (CAROL, 1)):
        for i in range(count):
            owner_of[store.create_run(config(f"{actor.name}{i}"), owner=actor)] = actor.name
            time.sleep(0.002)
    served = []
    while (run_id := store.claim_run(4242, max_active=1)) is not None:
        served.append(owner_of[run_id])
        assert store.claim_run(4243, max_active=1) is None  # the one slot is taken
        store.set_status(run_id, "finished")
        time.sleep(0.002)  # started_at must tell the claims apart
    assert served == ["Alice", "Bob", "Carol", "Alice", "Bob", "Alice", "Alice", "Alice"]
    # Within an owner, oldest first.
    alice = sorted((r for r in store.list_runs() if r.owner == ALICE.id),
                   key=lambda r: r.started_at or 0)
    assert [r.name for r in alice] == [f"Alice{i}" for i in range(5)]


def test_an_owner_at_the_active_quota_waits_and_the_others_go_ahead(store: RunStore) -> None:
    store.set_limits(TEACHER, max_active_per_owner=1)
    a1, a2 = (store.create_run(config(), owner=ALICE) for _ in range(2))
    b1 = store.create_run(config(), owner=BOB)
    assert store.claim_run(1, max_active=3) == a1
    assert store.claim_run(2, max_active=3) == b1  # Alice's second waits for her first
    assert store.claim_run(3, max_active=3) is None  # a free slot, but only Alice is waiting
    place = store.queue_place(a2, max_active=3)
    assert (place.position, place.owner_active, place.owner_cap) == (1, 1, 1)
    store.set_status(a1, "finished")
    assert store.claim_run(3, max_active=3) == a2


def test_queue_place_says_where_a_run_stands(store: RunStore) -> None:
    running = [store.create_run(config(), owner=CAROL) for _ in range(2)]
    for pid, run_id in enumerate(running):
        store.claim_run(100 + pid, run_id=run_id)
    waiting = [store.create_run(config(), owner=ALICE) for _ in range(3)]
    bob = store.create_run(config(), owner=BOB)
    place = store.queue_place(bob, max_active=2)
    # Alice and Bob were never served; Alice's first is older, then Bob, then Alice's others.
    assert (place.position, place.queued, place.active, place.max_active) == (2, 4, 2, 2)
    assert store.queue_place(waiting[0], max_active=2).position == 1
    assert store.queue_place(waiting[2], max_active=2).position == 4
    assert store.queue_place(running[0]) is None
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd"]


def test_fair_order_is_round_robin_by_least_recently_served() -> None:
    queued = [("a1", "A"), ("a2", "A"), ("a3", "A"), ("b1", "B"), ("c1", "C"), ("c2", "C")]
    # B was served long ago, A just now, C never: C first, then B, then A, then round again.
    order = fair_order(queued, {"A": 100.0, "B": 50.0}, {}, 0)
    assert [rid for rid, _ in order] == ["c1", "b1", "a1", "c2", "a2", "a3"]
    # With a cap of 1 active per owner and A already running one, A's runs come last, blocked.
    capped = fair_order(queued, {}, {"A": 1}, 1)
    assert capped == [("b1", False), ("c1", False), ("a1", True), ("a2", True), ("a3", True),
                      ("c2", True)]
