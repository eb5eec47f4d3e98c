"""AppTest: "Run this lesson" on the Lessons page queues the lesson's presets and baselines as
the viewer's runs (nothing trains: jobs.dispatch is recorded), and once they have finished
(summaries with replicas written into the store by hand) the lesson's card shows the
comparison and the claim's verdict."""
from __future__ import annotations

import time

from app_support import visible
from test_app_teach import app, dispatched  # noqa: F401 - fixtures

from mtl_core.baselines import baseline_configs
from mtl_core.lessons import get_lesson, load_preset
from ui.lesson_run import RUNS_KEY


def _entries(per_seed: list[dict[str, float]], metric: str = "mse") -> dict:
    mean = {t: {metric: sum(s[t] for s in per_seed) / len(per_seed)} for t in per_seed[0]}
    return {"test": mean, "val": mean, "replicas": [
        {"seed": i, "test": {t: {metric: v} for t, v in s.items()},
         "val": {t: {metric: v} for t, v in s.items()}, "best_val": {}}
        for i, s in enumerate(per_seed)]}


def _finish(runs, run_id: str, summary: dict) -> None:
    runs.set_status(run_id, "running", heartbeat_at=time.time())
    runs.set_status(run_id, "finished", summary=summary)


def _open(monkeypatch, lesson_id: str):
    at = app(monkeypatch)
    at.run()
    at.switch_page("pages/lessons.py").run()
    assert not at.exception, [e.message for e in at.exception]
    at.button(key=f"lesson_run_{lesson_id}").click().run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def _shown(at) -> str:
    return " ".join([m.value for m in at.markdown] + [e.value for e in at.success]
                    + [e.value for e in at.error] + [c.value for c in at.caption])


def test_run_this_lesson_queues_presets_and_baselines_then_shows_the_verdict(
        monkeypatch, store, dispatched):  # noqa: F811
    lesson = get_lesson("relatedness")
    at = _open(monkeypatch, lesson.id)

    ids = at.session_state[RUNS_KEY][lesson.id]
    presets = {label: load_preset(lesson, i) for i, label in enumerate("AB")}
    assert set(ids) == {"A", "B"} | {f"baseline:{v}:{t}" for v in "AB"
                                     for t in ("task1", "task2")}
    assert dispatched  # handed to the workers, not trained in the page
    runs = {label: store.get_run(run_id) for label, run_id in ids.items()}
    for label, cfg in presets.items():
        assert runs[label].config == cfg.to_dict() and runs[label].config["replicas"] == 5
        for task, base in baseline_configs(cfg).items():
            assert runs[f"baseline:{label}:{task}"].config == base.to_dict()
            assert base.replicas == 5
    owners = {r.owner for r in runs.values()}
    assert len(owners) == 1 and owners != {""}  # the viewer's runs
    assert all(r.status == "queued" for r in runs.values())
    assert "Training: 0 of 6 runs finished" in _shown(at)
    assert not at.success and not [e for e in at.error if "Claim" in e.value]

    # They finish: A gains 10 % on its baselines in every seed; B (unrelated) loses in 4 of 5.
    b_task1 = [1.2, 1.4, 1.0, 0.6, 1.2]
    _finish(store, ids["A"], _entries([{"task1": 0.9, "task2": 0.9}] * 5))
    _finish(store, ids["B"], _entries([{"task1": v, "task2": 1.0} for v in b_task1]))
    for v in "AB":
        for t in ("task1", "task2"):
            _finish(store, ids[f"baseline:{v}:{t}"], _entries([{t: 1.0}] * 5))
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    rows = next(t.value for t in at.table if "per seed" in t.value.columns)
    column = "Δm against its baselines (%), mean ± sd"
    assert rows.loc["A: correlation 1.0", column] == "-10 ± 0"
    assert rows.loc["A: correlation 1.0", "status"] == "finished"
    assert rows.loc["B: correlation 0.0", column] == "+4 ± 15.2"  # +10 +20 0 −20 +10: sd √(920/4)
    assert rows.loc["claim", "per seed"] == "-20, -30, -10, +10, -20"
    verdict = " ".join(e.value for e in at.success)
    assert "Claim passed: 4 of 5 seeds" in verdict and "holds (4 of 5 seeds)" in verdict


def test_a_failed_claim_is_shown_failed_with_its_figures(monkeypatch, store, dispatched):  # noqa: F811
    lesson = get_lesson("loss_scales")
    at = _open(monkeypatch, lesson.id)
    ids = at.session_state[RUNS_KEY][lesson.id]
    assert set(ids) == {"A", "B"}  # this claim needs no baselines
    mse = [{"xor": 0.3, "distance": 96.0}] * 5
    _finish(store, ids["A"], _entries(mse))
    _finish(store, ids["B"], _entries([{"xor": 0.3, "distance": d}
                                       for d in (20.0, 99.0, 97.0, 25.0, 30.0)]))
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert not at.success
    verdict = " ".join(e.value for e in at.error)
    assert "Claim failed: 3 of 5 seeds" in verdict
    assert "+76, -3, -1, +71, +66" in verdict


def test_presets_sharing_a_data_set_share_their_baselines(monkeypatch, store, dispatched):  # noqa: F811
    at = _open(monkeypatch, "data_efficiency")  # B is single_task on A's data: same baselines
    ids = at.session_state[RUNS_KEY]["data_efficiency"]
    assert ids["baseline:A:task1"] == ids["baseline:B:task1"]
    assert len(store.list_runs()) == 4  # A, B and one baseline per task, not two
    assert "Training: 0 of 4 runs finished (2 of them single-task baselines)" in _shown(at)


def test_a_lesson_over_the_queue_quota_says_so_next_to_the_button(
        monkeypatch, store, dispatched):  # noqa: F811
    from mtl_core.owners import Actor

    store.set_limits(Actor("teacher", "T", teacher=True), max_queued_per_owner=3)
    at = _open(monkeypatch, "relatedness")  # 6 runs
    errors = " ".join(visible(e.value) for e in at.error)  # the message is escaped Markdown
    assert "Could not start the lesson" in errors and "max_queued_per_owner" in errors
    assert store.list_runs() == [] and not dispatched
    assert "relatedness" not in (at.session_state[RUNS_KEY] if RUNS_KEY in at.session_state
                                 else {})
