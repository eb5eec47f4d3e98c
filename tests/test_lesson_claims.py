"""mtl_core.lesson_claims: the lessons' claim checks on hand-made summaries (no training),
fed per seed from stacked runs' `summary.replicas`."""
from __future__ import annotations

import math

import pytest

from mtl_core import lesson_claims as claims


def _reg(**mse):
    return {"test": {t: {"mse": v} for t, v in mse.items()}, "cosine": []}


def _stacked(entries, seed=0):
    """A stacked run's summary: the mean on top, one entry per seed under "replicas"."""
    tasks = entries[0]
    mean = {t: {m: sum(e[t][m] for e in entries) / len(entries) for m in tasks[t]}
            for t in tasks}
    return {"test": mean, "val": mean,
            "replicas": [{"seed": seed + i, "test": e, "val": e, "best_val": e}
                         for i, e in enumerate(entries)]}


def test_loss_scales_claim_per_seed_and_four_of_five_rule():
    seeds = [{"A": _reg(xor=0.3, distance=a), "B": _reg(xor=0.3, distance=b)}
             for a, b in [(96, 20), (95, 30), (97, 25), (96, 99), (90, 10)]]
    figures, verdict = claims.check("loss_scales", seeds)
    assert figures == [76, 65, 72, -3, 80]
    assert verdict == "holds (4 of 5 seeds)"
    seeds[0]["B"] = _reg(xor=0.3, distance=100)
    assert claims.check("loss_scales", seeds)[1] == "does not hold (3 of 5 seeds)"


def test_data_efficiency_uses_delta_m_against_the_presets_own_baselines():
    runs = {"A": _reg(task1=0.5, task2=0.5), "B": _reg(task1=0.7, task2=0.7),
            "baseline:A:task1": _reg(task1=1.0), "baseline:A:task2": _reg(task2=0.5)}
    # Δm = 100/2 · ((0.5 − 1)/1 + (0.5 − 0.5)/0.5) = −25 %: sharing helped.
    figures, verdict = claims.check("data_efficiency", [runs])
    assert figures == [pytest.approx(-25.0)] and verdict.startswith("holds")


def test_gradient_conflict_claim_reads_the_logged_cosines():
    runs = {"A": {"test": {}, "cosine": [0.2, -0.2, 0.05, -0.01]},
            "B": {"test": {}, "cosine": []}}
    figures, verdict = claims.check("gradient_conflict", [runs])
    assert figures == [pytest.approx(0.01)] and verdict.startswith("holds")
    runs["A"]["cosine"] = [-0.5, -0.4]
    assert claims.check("gradient_conflict", [runs])[1].startswith("does not hold")


def _relatedness_summaries(b_task1):
    """Stacked A and B over 5 seeds with their own baselines (B's are a different data set);
    A beats its baselines by 10 % in every seed, B's task1 MSE per seed is `b_task1`."""
    a = _stacked([{"task1": {"mse": 0.9}, "task2": {"mse": 0.9}}] * 5)
    b = _stacked([{"task1": {"mse": v}, "task2": {"mse": 1.0}} for v in b_task1])
    base = {f"baseline:{v}:{t}": _stacked([{t: {"mse": 1.0}}] * 5)
            for v in "AB" for t in ("task1", "task2")}
    return {"A": a, "B": b, **base}


def test_relatedness_passes_from_replicas_and_reads_each_seed():
    summaries = _relatedness_summaries([1.2, 1.4, 1.0, 0.6, 1.2])
    per_seed = claims.per_seed_runs(summaries)
    assert [r["A"]["seed"] for r in per_seed] == [0, 1, 2, 3, 4]
    result = claims.check_claim("relatedness", per_seed)
    # Δm(A) = −10 % everywhere; Δm(B) = 100/2·(b − 1) = +10, +20, 0, −20, +10.
    assert result.figures == pytest.approx([-20, -30, -10, 10, -20])
    assert result.seeds == [0, 1, 2, 3, 4]
    assert (result.held, result.needed, result.passed) == (4, 4, True)
    assert result.verdict() == "holds (4 of 5 seeds)"
    assert "in at least 4 of 5 seeds" in result.text() and "-30" in result.text()
    table = claims.preset_figures("relatedness", per_seed, ["A", "B"])
    assert table["A"] == pytest.approx([-10] * 5)
    assert table["B"] == pytest.approx([10, 20, 0, -20, 10])


def test_relatedness_fails_when_two_seeds_disagree():
    summaries = _relatedness_summaries([1.2, 0.6, 1.0, 0.6, 1.2])
    result = claims.check_claim("relatedness", claims.per_seed_runs(summaries))
    assert (result.held, result.passed) == (3, False)
    assert result.verdict() == "does not hold (3 of 5 seeds)"


def test_a_diverged_seed_counts_against_the_claim():
    a = _stacked([{"distance": {"mse": 96.0}}] * 5)
    b = _stacked([{"distance": {"mse": 20.0}}] * 5)
    b["replicas"][1]["test"] = {}  # diverged: no test metrics
    b["replicas"][2]["test"] = {"distance": {"mse": float("nan")}}
    result = claims.check_claim("loss_scales", claims.per_seed_runs({"A": a, "B": b}))
    assert math.isnan(result.figures[1]) and math.isnan(result.figures[2])
    assert (result.held, result.passed) == (3, False)


def test_per_seed_runs_of_a_single_seed_run_and_cosines_per_replica():
    one = {"test": {"xor": {"accuracy": 0.9}}, "val": {}}
    stacked = _stacked([{"xor": {"accuracy": 0.8}}, {"xor": {"accuracy": 0.7}}])
    per_seed = claims.per_seed_runs({"A": stacked, "B": one},
                                    {"A": {0: [0.5], 1: [-0.5, 0.1]}})
    assert len(per_seed) == 1  # only as many seeds as every run has
    assert per_seed[0]["A"]["cosine"] == [0.5] and per_seed[0]["B"]["cosine"] == []
    per_seed = claims.per_seed_runs({"A": stacked}, {"A": {0: [0.5], 1: [-0.5, 0.1]}})
    assert [r["A"]["cosine"] for r in per_seed] == [[0.5], [-0.5, 0.1]]


def test_every_claimed_lessons_presets_train_five_replicas():
    from mtl_core.lessons import get_lesson

    for lesson_id in claims.CLAIMS:
        configs = claims.lesson_configs(lesson_id)
        assert len(configs) == len(get_lesson(lesson_id).presets)
        assert {cfg.replicas for cfg in configs.values()} == {5}, lesson_id


def test_a_lesson_that_does_not_fit_the_owners_queue_quota_queues_nothing(
        isolated_dirs, monkeypatch):
    from mtl_core import jobs
    from mtl_core.owners import Actor
    from mtl_core.store import QuotaError, RunStore

    monkeypatch.setattr(jobs, "dispatch", lambda runs_dir=None, idle_timeout=None: None)
    store = RunStore(isolated_dirs)
    store.set_limits(Actor("teacher", "T", teacher=True), max_queued_per_owner=5)
    alice = Actor("browser:alice", "Alice")
    # relatedness: 2 presets + 2 baselines each (different data) = 6 runs > 5
    with pytest.raises(QuotaError, match="these 6 would make 6"):
        claims.lesson_runs("relatedness", isolated_dirs, owner=alice)
    assert store.list_runs() == []
    ids = claims.lesson_runs("loss_scales", isolated_dirs, owner=alice)  # 2 runs fit
    assert {store.get_run(i).owner for i in ids.values()} == {"browser:alice"}
